"""The Heap slice of the code location: one asset per audience in the file, sensor, schedule, checks."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from segment_ops.resources import build_resources
from segment_ops.syncs.heap.audiences import AudienceConfigError, load_audiences
from segment_ops.syncs.heap.defs import JOB_NAME, SCHEDULE_NAME, SENSOR_NAME, audience_key, build_heap_defs
from segment_ops_tests.heap.conftest import set_in_file

AUDIENCES = ("churn_risk", "enterprise_admins", "free_customers", "power_users")


def bound(defs: dg.Definitions) -> dg.Definitions:
    return dg.Definitions.merge(defs, dg.Definitions(resources=build_resources()))


def specs(defs: dg.Definitions) -> dict[dg.AssetKey, dg.AssetSpec]:
    return {s.key: s for s in bound(defs).resolve_all_asset_specs()}


def test_every_configured_audience_is_an_asset_with_its_checks():
    raw = build_heap_defs()
    by_key, defs = specs(raw), bound(raw)

    for name in AUDIENCES:
        spec = by_key[audience_key(name)]
        assert spec.group_name == "heap" and set(spec.kinds) == {"heap", "segment", "duckdb"}
        assert spec.owners and spec.code_version and len(spec.description) > 30
        assert dg.AssetKey(["heap", "segments", name]) in {d.asset_key for d in spec.deps}
        deps = {d.asset_key for d in spec.deps}
        assert {dg.AssetKey(["warehouse", "main_production", t])
                for t in ("users", "segment_members")} <= deps
    check_names = {key.name for key in defs.resolve_asset_graph().asset_check_keys
                   if key.asset_key == audience_key("power_users")}
    assert check_names == {"identity_match_rate", "membership_drop_guard", "delivery_complete",
                           "landed_in_segment", "tracking_plan"}


def test_each_audience_runs_in_its_own_staging_pool():
    [asset] = [a for a in build_heap_defs().assets if isinstance(a, dg.AssetsDefinition)
               and a.key == audience_key("power_users")]

    assert asset.op.pool == "staging_heap_power_users"


def test_the_sensor_is_on_and_the_reconcile_schedule_off_by_default():
    defs = bound(build_heap_defs())

    assert defs.resolve_sensor_def(SENSOR_NAME).default_status == dg.DefaultSensorStatus.RUNNING
    schedule = defs.resolve_schedule_def(SCHEDULE_NAME)
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    assert schedule.cron_schedule == "0 5 * * *" and schedule.job_name == JOB_NAME


def test_adding_an_audience_is_adding_a_table_to_the_file(audiences_file):
    with audiences_file.open("a") as handle:
        handle.write('\n[audiences.trial_paywall]\nsegment_id = 2000001\nname = "Trial Hit Paywall"\n'
                     'trait = "heap_trial_paywall"\n')

    defs = build_heap_defs(audiences_file)

    assert audience_key("trial_paywall") in specs(defs)
    assert dg.AssetKey(["heap", "segments", "trial_paywall"]) in specs(defs)


def test_a_disabled_audience_is_not_an_asset(audiences_file):
    set_in_file(audiences_file, 'trait = "heap_churn_risk"\n', 'trait = "heap_churn_risk"\nenabled = false\n')

    assert audience_key("churn_risk") not in specs(build_heap_defs(audiences_file))


@pytest.mark.slow
def test_a_broken_file_still_loads_and_its_asset_fails_with_the_reason(tmp_path):
    path = tmp_path / "heap_audiences.toml"
    path.write_text('[identity]\ncsv = "map.csv"\n'
                    '[audiences.x]\nsegment_id = "abc"\nname = "X"\ntrait = "t"\n')

    defs = build_heap_defs(path)
    result = dg.materialize([a for a in defs.assets if isinstance(a, dg.AssetsDefinition)],
                            raise_on_error=False)

    assert not result.success
    assert "segment_id must be Heap's numeric segment id" in specs(defs)[audience_key("_config")].description


@pytest.mark.parametrize(("text", "problem"), [
    ("[audiences.a]\nname = 'A'\ntrait = 't'\n", "audiences.a lacks segment_id"),
    ("[audiences.a]\nsegment_id = 1\nname = 'A'\ntrait = 'has space'\n", "trait must be a trait name"),
    ("[audiences.a]\nsegment_id = 1\nname = 'A'\ntrait = 't'\ncolour = 'red'\n", "unknown key(s) colour"),
    ("[audiences.a]\nsegment_id = 1\nname = 'A'\ntrait = 't'\n[audiences.b]\nsegment_id = 1\nname = 'B'\n"
     "trait = 'u'\n", "two audiences share the segment_id 1"),
    ("[identity]\nfallback = 'guess'\n[audiences.a]\nsegment_id = 1\nname = 'A'\ntrait = 't'\n",
     "identity.fallback must be one of"),
    ("[reconcile]\nmax_drop_ratio = 2\n[audiences.a]\nsegment_id = 1\nname = 'A'\ntrait = 't'\n",
     "reconcile.max_drop_ratio must be a number within [0, 1]"),
    ("[reconcile]\nmax_drop_ratio = 1\n[audiences.a]\nsegment_id = 1\nname = 'A'\ntrait = 't'\n",
     "reconcile.max_drop_ratio must be below 1"),
    ("[identity]\nquery = 'SELECT 1'\n", "no [audiences.<name>] table"),
    ("[audiences.a\n", "cannot read the audiences file"),
])
def test_a_file_that_cannot_be_used_is_an_error_naming_the_problem(tmp_path: Path, text: str, problem: str):
    path = tmp_path / "heap_audiences.toml"
    path.write_text(("[identity]\nquery = 'SELECT 1 AS source_id, 2 AS target_id'\n"
                     if "[identity]" not in text else "") + text)

    with pytest.raises(AudienceConfigError) as raised:
        load_audiences(path)

    assert str(raised.value).startswith(str(path)) and problem in str(raised.value)


def test_the_heap_audiences_file_setting_picks_the_file(audiences_file, monkeypatch):
    set_in_file(audiences_file, "[audiences.power_users]", "[audiences.power_users_v2]")
    monkeypatch.setenv("HEAP_AUDIENCES_FILE", str(audiences_file))

    assert audience_key("power_users_v2") in specs(build_heap_defs())
