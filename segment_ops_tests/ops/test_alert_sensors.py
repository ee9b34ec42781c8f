"""The alert sensors against a real Dagster instance with real runs: a sync that fails because the sandbox's
Splunk is down produces exactly one failure alert; the same partition passing again produces one recovery.

The sensors are evaluated the way the daemon evaluates them (`evaluate_tick` with the cursor carried from
tick to tick), and the alerts are read from the sandbox's Slack emulator.
"""

from __future__ import annotations

from datetime import timedelta

import dagster as dg
import pytest
from dagster._core.definitions.dependency import NodeHandle
from dagster._utils.error import SerializableErrorInfo

from segment_ops.config import (
    SANDBOX_SLACK_WEBHOOK_PATH,
    SANDBOX_SLACK_WEBHOOK_TOKEN,
    SANDBOX_SPLUNK_HEC_TOKEN,
    SANDBOX_SPLUNK_INDEX,
)
from segment_ops.definitions import defs
from segment_ops.resources import AlertsResource, SplunkHecResource, build_resources
from segment_ops.syncs.audit_trail.defs import (
    PARTITIONS,
    complete_hours,
    segment_audit_events,
    siem_audit_events,
)
from segment_ops.syncs.ops import run_alerts as sensors
from segment_ops.syncs.ops.run_alerts import (
    ALERT_TAG,
    PARTITION_TAG,
    RANGE_END_TAG,
    RANGE_START_TAG,
    AlertsDeferred,
    alert_on_recovery,
    alert_on_run_failure,
    user_message,
    with_failure_alerts,
)
from segment_ops_tests.audit_trail.conftest import audit_ids, window_of
from segment_ops_tests.ops.alert_hook_jobs import BARRIER_DIR, two_failing_steps_job


@pytest.fixture
def resources(ops_env, clean_sandbox) -> dict:
    # HEC with a tiny retry budget, so an outage fails the run in about a second.
    splunk = SplunkHecResource(base_url=f"{clean_sandbox.url}/splunk", token=SANDBOX_SPLUNK_HEC_TOKEN,
                               index=SANDBOX_SPLUNK_INDEX, retry_max_attempts=2, retry_max_seconds=5.0)
    return build_resources() | {"splunk": splunk}


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


@pytest.fixture
def hour(clean_sandbox) -> str:
    """A complete hour with audit events in it (injected, so the forward step has something to send)."""
    key = complete_hours(3)[0]
    start = PARTITIONS.time_window_for_partition_key(key).start
    clean_sandbox.inject_audit_events(
        [{"timestamp": (start + timedelta(minutes=m)).isoformat().replace("+00:00", "Z")}
         for m in (5, 25, 45)])
    return key


# The code location's repository, as the daemon hands it to a sensor (the alerts name asset groups from it).
REPOSITORY = defs().get_repository_def()


class Ticks:
    """Evaluates one sensor tick after tick, carrying its cursor like the daemon does."""

    def __init__(self, sensor: dg.SensorDefinition, instance: dg.DagsterInstance, resources: dict) -> None:
        self.sensor, self.instance, self.resources = sensor, instance, resources
        self.cursor: str | None = None

    def tick(self, cursor: str | None = None) -> object:
        context = dg.build_sensor_context(instance=self.instance, cursor=cursor or self.cursor,
                                          resources=self.resources, repository_def=REPOSITORY)
        result = self.sensor.evaluate_tick(context)
        self.cursor = result.cursor
        return result


def watching_failures(instance: dg.DagsterInstance, resources: dict) -> Ticks:
    """`alert_on_run_failure` after its first tick, which only places the cursor (a fresh deployment's)."""
    failures = Ticks(alert_on_run_failure, instance, resources)
    failures.tick()
    return failures


def run_hour(resources: dict, key: str, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    return dg.materialize([segment_audit_events, siem_audit_events], partition_key=key, resources=resources,
                          instance=instance, raise_on_error=False)


def slack_texts(sandbox) -> list[str]:
    return [message["text"] for message in sandbox.received("slack")]


@pytest.mark.slow
def test_a_failed_run_is_alerted_exactly_once(resources, instance, clean_sandbox, hour):
    failures = watching_failures(instance, resources)
    clean_sandbox.set_faults("splunk", rate_500=1.0)

    failed = run_hour(resources, hour, instance)
    failures.tick()
    failures.tick()

    assert not failed.success
    [text] = slack_texts(clean_sandbox)
    assert "failed" in text and failed.run_id[:8] in text
    assert instance.get_run_by_id(failed.run_id).tags[ALERT_TAG] == f"failure_sent:{failed.run_id}"


@pytest.mark.slow
def test_a_repeated_evaluation_does_not_send_the_alert_again(resources, instance, clean_sandbox, hour):
    failures = watching_failures(instance, resources)
    before_failure = failures.cursor
    clean_sandbox.set_faults("splunk", rate_500=1.0)
    run_hour(resources, hour, instance)

    failures.tick()
    failures.tick(cursor=before_failure)  # the daemon lost the cursor commit and evaluates the same run again

    assert len(clean_sandbox.received("slack")) == 1


@pytest.mark.slow
def test_the_same_partition_passing_again_sends_one_recovery(resources, instance, clean_sandbox, hour):
    failures = Ticks(alert_on_run_failure, instance, resources)
    recoveries = Ticks(alert_on_recovery, instance, resources)
    failures.tick()
    recoveries.tick()
    clean_sandbox.set_faults("splunk", rate_500=1.0)
    failed = run_hour(resources, hour, instance)
    failures.tick()
    clean_sandbox.clear_faults()

    passed = run_hour(resources, hour, instance)
    again = run_hour(resources, hour, instance)  # a second success is not a recovery
    for _ in range(2):
        failures.tick()
        recoveries.tick()

    assert not failed.success and passed.success and again.success
    failure_text, recovery_text = slack_texts(clean_sandbox)
    assert "failed" in failure_text
    assert ("recovered" in recovery_text and passed.run_id[:8] in recovery_text
            and failed.run_id[:8] in recovery_text)
    assert instance.get_run_by_id(passed.run_id).tags[ALERT_TAG] == f"recovery_sent:{passed.run_id}"


@pytest.mark.slow
def test_another_partition_passing_is_not_a_recovery(resources, instance, clean_sandbox, hour):
    recoveries = Ticks(alert_on_recovery, instance, resources)
    recoveries.tick()
    clean_sandbox.set_faults("splunk", rate_500=1.0)
    run_hour(resources, hour, instance)
    clean_sandbox.clear_faults()

    other = run_hour(resources, complete_hours(1)[0], instance)
    recoveries.tick()

    assert other.success
    assert clean_sandbox.received("slack") == []


@pytest.mark.slow
def test_the_alert_names_the_sync_step_error_counts_and_run_link(resources, instance, clean_sandbox, hour):
    failures = watching_failures(instance, resources)
    clean_sandbox.set_faults("splunk", rate_500=1.0)
    failed = run_hour(resources, hour, instance)

    failures.tick()

    [message] = clean_sandbox.received("slack")
    text = message["text"]
    assert "(audit_trail)" in text  # the asset group
    assert f"partition `{hour}`" in text
    assert "`siem__audit_events`" in text  # the failed step
    assert "HTTP 500" in text  # the first line of the vendor error
    in_hour = len(audit_ids(clean_sandbox, *window_of(hour, hour)))  # the 3 injected and the demo world's
    assert f"pending_total {in_hour}" in text  # counts from the step's failure metadata
    assert f"<http://127.0.0.1:3000/runs/{failed.run_id}|" in text
    assert message["blocks"][0]["type"] == "header"


@pytest.mark.slow
def test_an_alert_webhook_that_refuses_fails_the_tick_and_marks_nothing(resources, instance,
                                                                        clean_sandbox, hour,
                                                                      monkeypatch):
    monkeypatch.setenv("ALERT_WEBHOOK_URL", f"{clean_sandbox.url}/slack/services/T1/B1/not-the-token")
    resources = resources | {"alerts": build_resources()["alerts"]}
    failures = watching_failures(instance, resources)
    clean_sandbox.set_faults("splunk", rate_500=1.0)
    failed = run_hour(resources, hour, instance)

    result = failures.tick()

    [reaction] = result.dagster_run_reactions
    assert reaction.error is not None and "no_service" in reaction.error.to_string()
    assert "not-the-token" not in reaction.error.to_string()
    assert ALERT_TAG not in instance.get_run_by_id(failed.run_id).tags


@pytest.mark.slow
def test_every_run_that_failed_since_the_last_tick_is_alerted_in_one_tick(resources, instance,
                                                                          clean_sandbox, hour):
    failures = watching_failures(instance, resources)
    clean_sandbox.set_faults("splunk", rate_500=1.0)
    first, second = run_hour(resources, hour, instance), run_hour(resources, hour, instance)

    failures.tick()

    texts = slack_texts(clean_sandbox)
    assert len(texts) == 2
    assert {first.run_id[:8], second.run_id[:8]} == {t.split("|Open run ")[1][:8] for t in texts}


# --- same work across jobs, ranges, cancels and re-executions ---------------------------------------------

def run_range(resources: dict, first: str, last: str,
              instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    """A backfill-style run of several hours at once (Dagster's range tags, as a single-run backfill sets
    them)."""
    return dg.materialize([segment_audit_events, siem_audit_events], resources=resources, instance=instance,
                          tags={RANGE_START_TAG: first, RANGE_END_TAG: last}, raise_on_error=False)


def failed_and_alerted(resources, instance, sandbox, key, failures: Ticks,
                       **tags) -> dg.ExecuteInProcessResult:
    sandbox.set_faults("splunk", rate_500=1.0)
    failed = dg.materialize([segment_audit_events, siem_audit_events], partition_key=key, resources=resources,
                            instance=instance, raise_on_error=False, tags=tags or None)
    failures.tick()
    sandbox.clear_faults()
    return failed


@pytest.mark.slow
def test_a_range_run_covering_the_failed_hour_recovers_it(resources, instance, clean_sandbox, hour):
    failures, recoveries = (Ticks(alert_on_run_failure, instance, resources),
                            Ticks(alert_on_recovery, instance, resources))
    failures.tick(), recoveries.tick()
    failed = failed_and_alerted(resources, instance, clean_sandbox, hour, failures)
    hours = complete_hours(3)

    passed = run_range(resources, hours[0], hours[-1], instance)
    recoveries.tick()

    assert passed.success
    _, recovery = slack_texts(clean_sandbox)
    assert "recovered" in recovery and failed.run_id[:8] in recovery
    assert f"partition `{hours[0]}…{hours[-1]}`" in recovery


@pytest.mark.slow
def test_a_range_run_of_other_hours_is_not_a_recovery(resources, instance, clean_sandbox, hour):
    failures, recoveries = (Ticks(alert_on_run_failure, instance, resources),
                            Ticks(alert_on_recovery, instance, resources))
    failures.tick(), recoveries.tick()
    failed_and_alerted(resources, instance, clean_sandbox, hour, failures)
    later = complete_hours(2)

    other = run_range(resources, later[0], later[-1], instance)
    recoveries.tick()

    assert other.success and hour not in later
    assert len(slack_texts(clean_sandbox)) == 1  # the failure only


@pytest.mark.slow
def test_a_canceled_run_between_the_failure_and_the_success_does_not_hide_the_recovery(
        resources, instance, clean_sandbox, hour):
    failures, recoveries = (Ticks(alert_on_run_failure, instance, resources),
                            Ticks(alert_on_recovery, instance, resources))
    failures.tick(), recoveries.tick()
    failed = failed_and_alerted(resources, instance, clean_sandbox, hour, failures)
    job = dg.Definitions(assets=[segment_audit_events, siem_audit_events],
                         resources=resources).resolve_implicit_global_asset_job_def()
    canceled = instance.create_run_for_job(job, tags={PARTITION_TAG: hour})
    instance.report_run_canceled(canceled)

    run_hour(resources, hour, instance)
    recoveries.tick()

    assert instance.get_run_by_id(canceled.run_id).status == dg.DagsterRunStatus.CANCELED
    _, recovery = slack_texts(clean_sandbox)
    assert "recovered" in recovery and failed.run_id[:8] in recovery


@pytest.mark.slow
def test_a_failure_that_was_never_alerted_is_not_announced_as_recovered(resources, instance,
                                                                        clean_sandbox, hour):
    recoveries = Ticks(alert_on_recovery, instance, resources)
    recoveries.tick()
    clean_sandbox.set_faults("splunk", rate_500=1.0)
    run_hour(resources, hour, instance)  # the failure sensor never ran: no failure alert
    clean_sandbox.clear_faults()

    run_hour(resources, hour, instance)
    recoveries.tick()

    assert slack_texts(clean_sandbox) == []


@pytest.mark.slow
def test_a_failed_re_execution_carrying_its_parents_alert_tag_is_alerted(resources, instance,
                                                                         clean_sandbox, hour):
    failures = watching_failures(instance, resources)
    parent = failed_and_alerted(resources, instance, clean_sandbox, hour, failures)
    inherited = instance.get_run_by_id(parent.run_id).tags[ALERT_TAG]  # use_parent_run_tags copies it

    child = failed_and_alerted(resources, instance, clean_sandbox, hour, failures, **{ALERT_TAG: inherited})

    assert len(slack_texts(clean_sandbox)) == 2 and child.run_id[:8] in slack_texts(clean_sandbox)[1]


# --- what the failure alert says ----------------------------------------------------------------------------

class BrokenResource(dg.ConfigurableResource):
    def setup_for_execution(self, context) -> None:
        raise RuntimeError("warehouse login refused for user svc_segment")


@dg.asset
def needs_broken(broken: BrokenResource) -> None:
    """Never runs: its resource fails at setup."""


@pytest.mark.slow
def test_a_run_that_fails_before_any_step_is_alerted_with_its_real_error(resources, instance, clean_sandbox):
    failures = watching_failures(instance, resources)

    result = dg.materialize([needs_broken], resources={"broken": BrokenResource()}, instance=instance,
                            raise_on_error=False)
    failures.tick()

    assert not result.success
    [text] = slack_texts(clean_sandbox)
    assert "warehouse login refused for user svc_segment" in text
    assert "An exception was thrown during execution" not in text


def test_the_user_exception_message_is_preferred_to_dagster_wrappers_and_library_causes():
    library = SerializableErrorInfo("[Errno 111] Connection refused", [], "ConnectError")
    ours = SerializableErrorInfo("VendorUnavailable: splunk gave up after 4 attempts", [],
                                 "VendorUnavailable", cause=library)
    wrapper = SerializableErrorInfo('Error occurred while executing op "siem__audit_events":', [],
                                    "DagsterExecutionStepExecutionError", cause=ours)

    assert user_message(wrapper) == "VendorUnavailable: splunk gave up after 4 attempts"


# --- bounded ticks ------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_runs_left_when_the_tick_budget_is_used_up_are_alerted_by_the_next_tick(resources, instance,
                                                                                clean_sandbox,
                                                                               hour, monkeypatch):
    monkeypatch.setattr(sensors, "TICK_BUDGET_SECONDS", 0.0)  # only the first post of a tick fits
    failures = watching_failures(instance, resources)
    clean_sandbox.set_faults("splunk", rate_500=1.0)
    first, second = run_hour(resources, hour, instance), run_hour(resources, hour, instance)

    with pytest.raises(AlertsDeferred):
        failures.tick()
    after_first_tick = len(slack_texts(clean_sandbox))
    failures.tick()  # from the same cursor: the first run is skipped (tagged), the second is sent

    assert after_first_tick == 1
    texts = slack_texts(clean_sandbox)
    assert len(texts) == 2 and {first.run_id[:8], second.run_id[:8]} == {t.split("|Open run ")[1][:8]
                                                                          for t in texts}


@pytest.mark.slow
def test_an_alert_the_webhook_could_not_take_is_sent_by_a_later_tick(resources, instance,
                                                                     clean_sandbox, hour):
    alerts = AlertsResource(webhook_url=f"{clean_sandbox.url}/slack{SANDBOX_SLACK_WEBHOOK_PATH}",
                            retry_max_attempts=2, retry_max_seconds=1.0, timeout_seconds=2.0)
    resources = resources | {"alerts": alerts}
    failures = watching_failures(instance, resources)
    clean_sandbox.set_faults("splunk", rate_500=1.0)
    failed = run_hour(resources, hour, instance)
    clean_sandbox.set_faults("slack", rate_503=1.0)

    with pytest.raises(AlertsDeferred):
        failures.tick()
    clean_sandbox.clear_faults()
    failures.tick()

    [text] = slack_texts(clean_sandbox)
    assert failed.run_id[:8] in text


# --- the alert from within the run (`dagster asset materialize`, `dagster job execute`: no sensor sees them)

HOOK = "alert_on_step_failure"


def with_alert_hook(*assets: dg.AssetsDefinition) -> list[dg.AssetsDefinition]:
    """`assets` with the alert hook, as `definitions.py` adds it to every asset of the code location."""
    return list(with_failure_alerts(dg.Definitions(assets=list(assets))).assets or [])


def run_hour_as_deployed(resources: dict, key: str,
                         instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    return dg.materialize(with_alert_hook(segment_audit_events, siem_audit_events), partition_key=key,
                          resources=resources, instance=instance, raise_on_error=False)


class FlakyOnce:
    failed = False


@dg.asset(retry_policy=dg.RetryPolicy(max_retries=1))
def flaky_once() -> None:
    """Fails its first attempt only."""
    if not FlakyOnce.failed:
        FlakyOnce.failed = True
        raise RuntimeError("first attempt fails")


@dg.asset
def first_broken() -> None:
    raise RuntimeError("first broken step")


@dg.asset
def second_broken() -> None:
    raise RuntimeError("second broken step")


def test_every_step_of_every_job_of_the_code_location_has_the_alert_hook():
    for job in REPOSITORY.get_all_jobs():
        for node in job.graph.nodes:
            assets_def = job.asset_layer.get_assets_def_for_node(NodeHandle(node.name, parent=None))
            assert HOOK in {hook.name for hook in assets_def.hook_defs}, (job.name, node.name)


@pytest.mark.slow
def test_a_failed_run_alerts_from_within_and_the_sensor_sends_nothing_more(resources, instance,
                                                                           clean_sandbox, hour):
    failures = watching_failures(instance, resources)
    clean_sandbox.set_faults("splunk", rate_500=1.0)

    failed = run_hour_as_deployed(resources, hour, instance)
    from_the_run = slack_texts(clean_sandbox)
    failures.tick()
    failures.tick()

    assert not failed.success
    [text] = from_the_run
    assert f"/runs/{failed.run_id}|" in text
    assert "`siem__audit_events`" in text and "HTTP 500" in text  # the failed step and its error's lead
    assert slack_texts(clean_sandbox) == from_the_run  # the sensor skipped the run
    assert instance.get_run_by_id(failed.run_id).tags[ALERT_TAG] == f"failure_sent:{failed.run_id}"


@pytest.mark.slow
def test_an_alert_the_run_could_not_send_is_sent_by_the_sensor(resources, instance, clean_sandbox, hour):
    alerts = AlertsResource(webhook_url=f"{clean_sandbox.url}/slack{SANDBOX_SLACK_WEBHOOK_PATH}",
                            retry_max_attempts=2, retry_max_seconds=1.0, timeout_seconds=2.0)
    resources = resources | {"alerts": alerts}
    failures = watching_failures(instance, resources)
    clean_sandbox.set_faults("splunk", rate_500=1.0)
    clean_sandbox.set_faults("slack", rate_503=1.0)

    failed = run_hour_as_deployed(resources, hour, instance)
    clean_sandbox.clear_faults()
    untagged = ALERT_TAG not in instance.get_run_by_id(failed.run_id).tags
    failures.tick()

    assert not failed.success and untagged
    [text] = slack_texts(clean_sandbox)
    assert f"/runs/{failed.run_id}|" in text
    logs = " ".join(entry.message or "" for entry in instance.all_logs(failed.run_id))
    assert "not sent from the run" in logs and SANDBOX_SLACK_WEBHOOK_TOKEN not in logs


@pytest.mark.slow
def test_a_run_with_several_failed_steps_alerts_once_naming_the_first(ops_env, clean_sandbox, instance):
    result = dg.materialize(with_alert_hook(first_broken, second_broken), resources=build_resources(),
                            instance=instance, raise_on_error=False)

    assert len(result.get_step_failure_events()) == 2
    [text] = slack_texts(clean_sandbox)
    assert "`first_broken`" in text and "first broken step" in text and result.run_id[:8] in text


@pytest.mark.slow
def test_steps_failing_at_once_in_two_processes_send_one_alert(ops_env, clean_sandbox, instance, tmp_path,
                                                               monkeypatch):
    monkeypatch.setenv(BARRIER_DIR, str(tmp_path))

    with dg.execute_job(dg.reconstructable(two_failing_steps_job), instance=instance) as result:
        failed_steps = {event.step_key for event in result.get_step_failure_events()}

    assert failed_steps == {"left_broken", "right_broken"}
    [text] = slack_texts(clean_sandbox)
    assert result.run_id[:8] in text


@pytest.mark.slow
def test_a_failed_re_execution_carrying_its_parents_alert_tag_alerts_from_within(ops_env, clean_sandbox,
                                                                                 instance):
    assets, resources = with_alert_hook(first_broken), build_resources()
    parent = dg.materialize(assets, resources=resources, instance=instance, raise_on_error=False)
    inherited = instance.get_run_by_id(parent.run_id).tags[ALERT_TAG]

    child = dg.materialize(assets, resources=resources, instance=instance, raise_on_error=False,
                           tags={ALERT_TAG: inherited})

    texts = slack_texts(clean_sandbox)
    assert len(texts) == 2 and parent.run_id[:8] in texts[0] and child.run_id[:8] in texts[1]


@pytest.mark.slow
def test_a_step_that_passes_on_its_retry_sends_nothing(ops_env, clean_sandbox, instance):
    FlakyOnce.failed = False

    result = dg.materialize(with_alert_hook(flaky_once), resources=build_resources(), instance=instance)

    assert result.success and FlakyOnce.failed
    assert slack_texts(clean_sandbox) == []
