"""A run no sensor sees: `dagster asset materialize` in a subprocess, no daemon, a fresh DAGSTER_HOME with the
project's dagster.yaml. The audit-trail hour fails (the sandbox's Splunk answers 429 with `Retry-After: 3600`,
beyond the client's retry budget, so the step gives up at once) and the run's own alert hook posts exactly one
message to the sandbox's Slack, naming the run, and tags the run so the sensor would skip it."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import dagster as dg
import pytest

from segment_ops.config import SANDBOX_SLACK_WEBHOOK_TOKEN
from segment_ops.syncs.audit_trail.defs import PARTITIONS, complete_hours
from segment_ops.syncs.ops.run_alerts import ALERT_TAG
from segment_ops_tests.ops.conftest import PROJECT_ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(300)]

DAGSTER = Path(sys.executable).with_name("dagster")
RUN_TIMEOUT_SECONDS = 240.0  # loading the code location and two step processes on 2 busy cores


def test_a_failed_dagster_asset_materialize_run_alerts_once(ops_env, clean_sandbox, tmp_path, monkeypatch):
    hour = complete_hours(3)[0]
    start = PARTITIONS.time_window_for_partition_key(hour).start
    clean_sandbox.inject_audit_events(  # something to forward on any day of the week
        [{"timestamp": (start + timedelta(minutes=17)).isoformat().replace("+00:00", "Z")}])
    clean_sandbox.set_faults("splunk", rate_429=1.0, retry_after_seconds=3600)
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").symlink_to(PROJECT_ROOT / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))

    completed = subprocess.run(
        [str(DAGSTER), "asset", "materialize", "-m", "segment_ops.definitions",
         "--select", "segment/audit_events,siem/audit_events", "--partition", hour],
        cwd=PROJECT_ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=RUN_TIMEOUT_SECONDS)

    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        [run] = instance.get_runs()
    assert completed.returncode != 0 and run.status == dg.DagsterRunStatus.FAILURE, completed.stderr[-3000:]
    [message] = clean_sandbox.received("slack")
    assert f"/runs/{run.run_id}|" in message["text"] and f"partition `{hour}`" in message["text"]
    assert run.tags[ALERT_TAG] == f"failure_sent:{run.run_id}"
    assert SANDBOX_SLACK_WEBHOOK_TOKEN not in completed.stdout + completed.stderr
