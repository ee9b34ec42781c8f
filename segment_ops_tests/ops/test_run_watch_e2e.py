"""Issue 16 part 1, end to end through `dagster dev`: a run whose worker dies with its machine (a node
restart, an OOM kill of the container) is failed, alerted on and its pool slot freed with nobody's help; the
same work then runs.

The victim: `audit_trail_job` for an hour four days back (no other test or sensor touches it), launched while
the sandbox's Splunk answers 503, so the run keeps retrying long enough to be killed mid-send. Its code
server, its worker and the worker's children are SIGKILLed; Splunk comes back; the code server is started
again, as a container platform restarts it. Such a run stays STARTED: no process is left to fail it. Then,
without any step by the test: `dead_run_sensor` fails the run (`dagster dev` runs with
RUN_HEARTBEAT_TIMEOUT_SECONDS=15, see conftest), `alert_on_run_failure` posts the alert, Dagster's run
monitoring frees the audit-trail pool's slot (`free_slots_after_run_end_seconds` in dagster.yaml), and a
second run of the hour, launched at once, succeeds.
"""

from __future__ import annotations

import contextlib
import re
import time
from datetime import timedelta

import psutil
import pytest

from segment_ops.syncs.audit_trail.defs import PARTITIONS, complete_hours
from segment_ops_tests.ops.conftest import RUN_HEARTBEAT_TIMEOUT_SECONDS, DagsterDev, DagsterDevError
from segment_ops_tests.ops.test_alerts_e2e import (
    failures,
    launch_hour,
    repository,
    wait_for_audit_runs_to_finish,
    wait_for_messages,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

HOURS_BACK = 96
SENSOR_INTERVAL_SECONDS = 30.0  # dead_run_sensor's minimum interval
# Dagster's run monitoring polls every 15 s and frees a finished run's slots 15 s after it ended.
SLOT_FREED_SECONDS = 15.0 + 15.0
POLL_SECONDS = 1.0


def restart_code_server(dev: DagsterDev, timeout: float = 180.0) -> None:
    """What a container platform does after a node restart: start the code location's server again. `dagster
    dev` does not restart a killed code server by itself, so the test asks for a reload, as its UI's Reload
    button does, and waits until the location is LOADED."""
    name = repository(dev)["repositoryLocationName"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = dev.graphql(RELOAD_LOCATION, {"name": name})["reloadRepositoryLocation"]
        if entry.get("loadStatus") == "LOADED":
            return
        time.sleep(5.0)
    raise DagsterDevError(f"code location {name} not LOADED again after {timeout:.0f}s\n{dev.log_tail()}")


def wait_for_status(dev: DagsterDev, run_id: str, wanted: set[str], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    status = "UNKNOWN"
    while time.monotonic() < deadline:
        [run] = dev.runs(runIds=[run_id]) or [{"status": "UNKNOWN"}]
        if (status := run["status"]) in wanted:
            return status
        time.sleep(POLL_SECONDS)
    raise DagsterDevError(f"run {run_id} still {status} after {timeout:.0f}s, wanted {wanted}\n"
                          f"{dev.log_tail()}")


RUN_LOGS = """
query Logs($runId: ID!) {
  logsForRun(runId: $runId) {
    __typename
    ... on EventConnection { events { __typename ... on MessageEvent { message } } }
    ... on Error { message }
  }
}
"""
# What Dagster's code server logs when it starts a run worker (dagster/_grpc/impl.py).
STARTED_PROCESS = re.compile(r"Started process for run \(pid: (\d+)\)")


def run_worker_pid(dev: DagsterDev, run_id: str, timeout: float = 60.0) -> int:
    """The run worker's pid, from the run's own event log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        logs = dev.graphql(RUN_LOGS, {"runId": run_id})["logsForRun"]
        if logs["__typename"] != "EventConnection":
            raise DagsterDevError(f"logsForRun: {logs}")
        for event in logs["events"]:
            if found := STARTED_PROCESS.search(event.get("message") or ""):
                return int(found.group(1))
        time.sleep(POLL_SECONDS)
    raise DagsterDevError(f"run {run_id} logged no 'Started process for run' in {timeout:.0f}s")


RELOAD_LOCATION = """
mutation Reload($name: String!) {
  reloadRepositoryLocation(repositoryLocationName: $name) {
    __typename
    ... on WorkspaceLocationEntry { loadStatus }
    ... on Error { message }
  }
}
"""


def kill_like_a_node_restart(pid: int) -> int:
    """SIGKILL the run worker `pid`, every process it started, and the code server that started it (first, so
    that it cannot see its child die and fail the run itself, which it does when it survives: a run worker
    killed alone is failed by the code server within a second); returns how many processes were killed."""
    worker = psutil.Process(pid)
    victims = [worker.parent(), *worker.children(recursive=True), worker]
    for victim in victims:
        with contextlib.suppress(psutil.NoSuchProcess):
            victim.kill()
    return len(victims)


@pytest.fixture(scope="module")
def killed(dagster_dev: DagsterDev) -> dict:
    sandbox = dagster_dev.sandbox
    hour = complete_hours(HOURS_BACK)[0]
    start = PARTITIONS.time_window_for_partition_key(hour).start
    sandbox.inject_audit_events([
        {"timestamp": (start + timedelta(minutes=23)).isoformat().replace("+00:00", "Z"),
         "type": "Destination Updated"}])
    wait_for_audit_runs_to_finish(dagster_dev)
    seconds: dict[str, float] = {}

    sandbox.set_faults("splunk", rate_503=1.0)
    try:
        victim = launch_hour(dagster_dev, hour)
        wait_for_status(dagster_dev, victim, {"STARTED"}, 120.0)
        time.sleep(5.0)  # into the send, retrying Splunk's 503s
        processes = kill_like_a_node_restart(run_worker_pid(dagster_dev, victim))
    finally:
        sandbox.set_faults("splunk")
    killed_at = time.monotonic()
    restart_code_server(dagster_dev)
    seconds["code server back"] = time.monotonic() - killed_at

    status = wait_for_status(dagster_dev, victim, {"FAILURE", "SUCCESS", "CANCELED"},
                             RUN_HEARTBEAT_TIMEOUT_SECONDS + 2 * SENSOR_INTERVAL_SECONDS + 60)
    seconds["failed after kill"] = time.monotonic() - killed_at
    alerts = wait_for_messages(dagster_dev, (victim,), lambda found: bool(failures(found)),
                               f"failure alert for the killed run {victim}")
    seconds["alerted after kill"] = time.monotonic() - killed_at

    again = launch_hour(dagster_dev, hour)
    again_status = dagster_dev.wait_for_run(again, SLOT_FREED_SECONDS + 120)
    seconds["work done again after kill"] = time.monotonic() - killed_at
    print(f"\nkilled run worker ({processes} processes) of {hour}: "
          + ", ".join(f"{k} {v:.0f}s" for k, v in seconds.items()))
    return {"victim": victim, "status": status, "alerts": failures(alerts), "again": again,
            "again_status": again_status, "hour": hour, "seconds": seconds}


def test_the_killed_run_is_failed_by_the_dead_run_sensor(killed):
    assert killed["status"] == "FAILURE"


def test_the_killed_run_is_alerted_naming_the_lost_worker(killed):
    [alert] = killed["alerts"]

    assert f"/runs/{killed['victim']}" in alert and "Run worker lost" in alert


def test_the_same_hour_runs_again_once_the_pool_slot_is_freed(killed):
    assert killed["again_status"] == "SUCCESS"
