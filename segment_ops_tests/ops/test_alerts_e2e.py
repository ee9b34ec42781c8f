"""Issue 9, "done when": a failure forced in the sandbox produces exactly one alert and one recovery, end to
end through `dagster dev`: runs launched with GraphQL `launchRun`, started by its daemon, alerted on by the
code location's run-status sensors (`alert_on_run_failure`, `alert_on_recovery`, ticking every 30 s in the
daemon) into the sandbox's Slack webhook.

The forced failure: the sandbox's Splunk HEC answers every request with 429 and `Retry-After: 3600`, beyond
the client's 300 s retry budget, so `siem_audit_events` gives up at once and leaves the hour's events pending
(a 503 would be retried for about 90 s: 10 attempts, backoff capped at 30 s). Splunk back, the same hour is
launched again and forwards them. The hour is 90 hours back: outside the backfill test's window (the 26
newest complete hours) and the audit sensor's lateness horizon (AUDIT_TRAIL_LATENESS_HOURS, 72: the hours it
probes and sweeps), so no other run covers it.
Other runs of the session (the backfill test, the UI test, sensor runs) may alert too: only messages naming
our runs are counted, and the sandbox's recorder is never reset (the backfill test reads what Splunk
received). Splunk is throttled only once no other audit run is in flight, and only Splunk's fault spec is
touched, so no other run fails.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

import pytest

from segment_ops.syncs.audit_trail.defs import (
    PARTITIONS,
    audit_events_sensor,
    audit_trail_job,
    complete_hours,
)
from segment_ops_tests.ops.conftest import DagsterDev, DagsterDevError

# The module's first test may also wait for `dagster dev` to start (the first ops module that needs it).
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

HOURS_BACK = 90  # beyond the audit sensor's 72 h lateness horizon, which would forward it first
# minimum_interval_seconds of both alert sensors (segment_ops/syncs/ops/run_alerts.py)
SENSOR_INTERVAL_SECONDS = 30.0
ALERT_TIMEOUT_SECONDS = 90.0  # three sensor intervals: a tick may be busy with other runs' alerts
QUIET_SECONDS = SENSOR_INTERVAL_SECONDS + 10.0  # one more tick of each sensor after the recovery, with margin
RUN_TIMEOUT_SECONDS = 150.0  # the run may queue behind a sensor run in the audit-trail pool (limit 1)
POLL_SECONDS = 2.0
AUDIT_SENSOR = audit_events_sensor.name
IN_FLIGHT_STATUSES = ["QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING"]
FAILURE_PREFIX = ":red_circle:"
RECOVERY_PREFIX = ":large_green_circle:"

REPOSITORIES = """
query {
  repositoriesOrError {
    __typename
    ... on RepositoryConnection { nodes { name location { name } jobs { name } } }
    ... on PythonError { message }
  }
}
"""

SENSOR_TICKS = """
query Ticks($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    __typename
    ... on Sensor { sensorState { ticks(limit: 1, statuses: [SUCCESS, SKIPPED, FAILURE]) { status } } }
    ... on Error { message }
  }
}
"""

LAUNCH_RUN = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on Error { message }
  }
}
"""


@dataclass
class Scenario:
    """What the sandbox's Slack received about our two runs at each point, and how long each stage took."""

    hour: str
    failed_run_id: str
    failed_status: str
    passed_run_id: str
    passed_status: str
    after_failure: list[dict]
    after_recovery: list[dict]
    after_another_tick: list[dict]
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def run_ids(self) -> tuple[str, str]:
        return self.failed_run_id, self.passed_run_id


def repository(dev: DagsterDev) -> dict[str, str]:
    """`repositoryLocationName` and `repositoryName` of the code location that has `audit_trail_job`."""
    repositories = dev.graphql(REPOSITORIES)["repositoriesOrError"]
    if repositories["__typename"] != "RepositoryConnection":
        raise DagsterDevError(f"repositoriesOrError: {repositories}")
    [node] = [node for node in repositories["nodes"]
              if audit_trail_job.name in {job["name"] for job in node["jobs"]}]
    return {"repositoryLocationName": node["location"]["name"], "repositoryName": node["name"]}


def launch_hour(dev: DagsterDev, hour: str) -> str:
    """Launch `audit_trail_job` for one hourly partition, as the launchpad does; returns the run id."""
    launched = dev.graphql(LAUNCH_RUN, {"params": {
        "selector": {**repository(dev), "jobName": audit_trail_job.name},
        "runConfigData": {},
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": hour},
                                       {"key": "segment_ops/test", "value": "alerts_e2e"}]},
    }})["launchRun"]
    if launched["__typename"] != "LaunchRunSuccess":
        raise DagsterDevError(f"launchRun: {launched}")
    return launched["run"]["runId"]


def wait_for_audit_runs_to_finish(dev: DagsterDev) -> None:
    """Until `audit_events_sensor` has ticked and no `audit_trail_job` run is queued or running, so forcing
    Splunk's failure fails only our run (the sensor's first tick, as `dagster dev` comes up, starts runs for
    the newest hours; its next one is 3 minutes later)."""
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
    selector = {**repository(dev), "sensorName": AUDIT_SENSOR}
    while not finished_ticks(dev, selector):
        if time.monotonic() > deadline:
            raise DagsterDevError(f"{AUDIT_SENSOR} did not tick in {RUN_TIMEOUT_SECONDS:.0f}s\n"
                                  f"{dev.log_tail()}")
        time.sleep(POLL_SECONDS)
    while in_flight := dev.runs(pipelineName=audit_trail_job.name, statuses=IN_FLIGHT_STATUSES):
        if time.monotonic() > deadline:
            raise DagsterDevError(f"audit_trail_job runs still in flight after {RUN_TIMEOUT_SECONDS:.0f}s: "
                                  f"{[run['runId'] for run in in_flight]}")
        time.sleep(POLL_SECONDS)


def finished_ticks(dev: DagsterDev, selector: dict[str, str]) -> list[dict]:
    sensor = dev.graphql(SENSOR_TICKS, {"selector": selector})["sensorOrError"]
    if sensor["__typename"] != "Sensor":
        raise DagsterDevError(f"sensorOrError: {sensor}")
    return sensor["sensorState"]["ticks"]


def messages_about(dev: DagsterDev, run_ids: tuple[str, ...]) -> list[dict]:
    """Slack messages whose text or blocks link one of `run_ids` (`<DAGSTER_UI_URL>/runs/<run id>`)."""
    links = [f"/runs/{run_id}" for run_id in run_ids]
    return [message for message in dev.sandbox.received("slack", limit=10_000)
            if any(link in json.dumps(message) for link in links)]


def wait_for_messages(dev: DagsterDev, run_ids: tuple[str, ...], done: Callable[[list[dict]], bool],
                      what: str) -> list[dict]:
    """Poll the sandbox's Slack until `done(messages about run_ids)`; raise after ALERT_TIMEOUT_SECONDS."""
    deadline = time.monotonic() + ALERT_TIMEOUT_SECONDS
    while True:
        messages = messages_about(dev, run_ids)
        if done(messages):
            return messages
        if time.monotonic() > deadline:
            raise DagsterDevError(f"no {what} after {ALERT_TIMEOUT_SECONDS:.0f}s; messages about "
                                  f"{run_ids}: {[m['text'] for m in messages]}\n{dev.log_tail()}")
        time.sleep(POLL_SECONDS)


def failures(messages: list[dict]) -> list[str]:
    return [m["text"] for m in messages if m["text"].startswith(FAILURE_PREFIX)]


def recoveries(messages: list[dict]) -> list[str]:
    return [m["text"] for m in messages if m["text"].startswith(RECOVERY_PREFIX)]


@pytest.fixture(scope="module")
def scenario(dagster_dev: DagsterDev) -> Scenario:
    """Fail one audit hour with Splunk throttling, wait for its alert; pass it again, wait for the recovery;
    then one more sensor interval."""
    sandbox = dagster_dev.sandbox
    hour = complete_hours(HOURS_BACK)[0]
    start = PARTITIONS.time_window_for_partition_key(hour).start
    # One event of our own, so the hour has something to forward on any day of the week.
    sandbox.inject_audit_events([
        {"timestamp": (start + timedelta(minutes=17)).isoformat().replace("+00:00", "Z"),
         "type": "Source Updated"}])
    seconds: dict[str, float] = {}
    began = time.monotonic()
    wait_for_audit_runs_to_finish(dagster_dev)
    seconds["other audit runs"] = time.monotonic() - began

    sandbox.set_faults("splunk", rate_429=1.0, retry_after_seconds=3600)
    try:
        failed_run_id = launch_hour(dagster_dev, hour)
        failed_status = dagster_dev.wait_for_run(failed_run_id, RUN_TIMEOUT_SECONDS)
    finally:
        sandbox.set_faults("splunk")  # Splunk only: other APIs' faults, if any, stay as they are
    seconds["failing run"] = time.monotonic() - began - seconds["other audit runs"]
    if failed_status != "FAILURE":
        raise DagsterDevError(f"run {failed_run_id} of {hour} ended {failed_status}, expected FAILURE "
                              "with Splunk throttling")

    mark = time.monotonic()
    after_failure = wait_for_messages(dagster_dev, (failed_run_id,), lambda found: bool(failures(found)),
                                      f"failure alert for run {failed_run_id}")
    seconds["failure alert"] = time.monotonic() - mark

    mark = time.monotonic()
    passed_run_id = launch_hour(dagster_dev, hour)
    passed_status = dagster_dev.wait_for_run(passed_run_id, RUN_TIMEOUT_SECONDS)
    seconds["passing run"] = time.monotonic() - mark
    if passed_status != "SUCCESS":
        raise DagsterDevError(f"run {passed_run_id} of {hour} ended {passed_status} with Splunk back")

    mark = time.monotonic()
    run_ids = (failed_run_id, passed_run_id)
    after_recovery = wait_for_messages(dagster_dev, run_ids, lambda found: bool(recoveries(found)),
                                       f"recovery message for run {passed_run_id}")
    seconds["recovery message"] = time.monotonic() - mark

    time.sleep(QUIET_SECONDS)
    after_another_tick = messages_about(dagster_dev, run_ids)
    seconds["total"] = time.monotonic() - began
    print(f"\nalerts end to end for {hour}: " + ", ".join(f"{k} {v:.1f}s" for k, v in seconds.items()))
    return Scenario(hour, failed_run_id, failed_status, passed_run_id, passed_status, after_failure,
                    after_recovery, after_another_tick, seconds)


def test_a_run_failed_by_splunk_throttling_is_alerted_exactly_once(scenario):
    [alert] = failures(scenario.after_failure)

    assert f"/runs/{scenario.failed_run_id}" in alert
    assert f"partition `{scenario.hour}`" in alert


def test_the_same_hour_passing_again_is_announced_once_as_a_recovery_of_the_failed_run(scenario):
    [recovery] = recoveries(scenario.after_recovery)

    assert f"/runs/{scenario.passed_run_id}" in recovery
    assert f"after run {scenario.failed_run_id[:8]} failed" in recovery


def test_one_more_sensor_interval_sends_nothing_more_about_either_run(scenario):
    texts = [message["text"] for message in scenario.after_another_tick]

    assert (len(failures(scenario.after_another_tick)),
            len(recoveries(scenario.after_another_tick))) == (1, 1)
    assert len(texts) == 2, texts


def test_the_passing_run_is_not_alerted_as_a_failure(scenario):
    assert all(f"/runs/{scenario.passed_run_id}" not in text
               for text in failures(scenario.after_another_tick))
