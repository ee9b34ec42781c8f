"""The UI bar, over the whole loaded code location (so every sync that lands is held to it): every asset
says what it is, every job is started by a schedule or a sensor, every schedule and sensor is named and
described."""

from __future__ import annotations

from collections import Counter

import dagster as dg
import pytest

from segment_ops.definitions import defs

IMPLICIT_JOB = "__ASSET_JOB"


@pytest.fixture(scope="module")
def definitions() -> dg.Definitions:
    return defs()


@pytest.fixture(scope="module")
def repository(definitions):
    return definitions.get_repository_def()


def test_every_asset_has_group_kinds_owners_and_a_description(definitions):
    missing = []
    for spec in definitions.resolve_all_asset_specs():
        name = spec.key.to_user_string()
        if not spec.group_name or spec.group_name == "default":
            missing.append(f"{name}: group")
        if not spec.kinds:
            missing.append(f"{name}: kinds")
        if not spec.owners:
            missing.append(f"{name}: owners")
        if not spec.description or len(spec.description.strip()) < 30:
            missing.append(f"{name}: description")
    assert not missing, missing


def test_every_materializable_asset_has_a_code_version(definitions):
    graph = definitions.resolve_asset_graph()
    # External AssetSpecs (what lives at the vendors) have no code of ours, so no code version.
    missing = [key.to_user_string() for key in graph.get_all_asset_keys()
               if graph.get(key).is_executable and not graph.get(key).code_version]
    assert not missing, missing


def test_every_job_is_started_by_a_schedule_or_a_sensor(repository):
    triggered = {s.job_name for s in repository.schedule_defs}
    triggered |= {target.job_name for s in repository.sensor_defs for target in s.targets}
    jobs = {job.name for job in repository.get_all_jobs() if job.name != IMPLICIT_JOB}
    assert jobs - triggered == set()


def test_every_schedule_and_sensor_has_a_unique_name_and_a_description(repository):
    automations = [*repository.schedule_defs, *repository.sensor_defs]
    names = Counter(a.name for a in automations)
    assert [name for name, n in names.items() if n > 1] == []
    assert [a.name for a in automations if not a.description or len(a.description) < 30] == []


def test_every_job_has_a_description(repository):
    assert [j.name for j in repository.get_all_jobs()
            if j.name != IMPLICIT_JOB and not j.name.startswith("__anonymous") and not j.description] == []


def test_alerting_and_delivery_health_are_on_by_default(repository):
    assert repository.get_sensor_def("alert_on_run_failure").default_status == dg.DefaultSensorStatus.RUNNING
    assert repository.get_sensor_def("alert_on_recovery").default_status == dg.DefaultSensorStatus.RUNNING
    assert (repository.get_schedule_def("delivery_health_schedule").default_status
            == dg.DefaultScheduleStatus.RUNNING)


def test_the_alert_sensors_watch_every_job_of_the_code_location(repository):
    for name in ("alert_on_run_failure", "alert_on_recovery"):
        sensor = repository.get_sensor_def(name)
        assert sensor.targets == [] and not sensor._monitor_all_code_locations  # noqa: SLF001
