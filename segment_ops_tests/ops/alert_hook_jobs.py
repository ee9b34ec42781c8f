"""A job whose two steps fail at the same moment in two processes (the multiprocess executor, as `dagster
job execute` and `dagster asset materialize` run a job), for the alert hook's one-alert-per-run test. The
step processes import this small module, not the test module."""

from __future__ import annotations

import os
import time
from pathlib import Path

import dagster as dg

from segment_ops.resources import build_resources
from segment_ops.syncs.ops.run_alerts import with_failure_alerts

BARRIER_DIR = "SEGMENT_OPS_TEST_BARRIER_DIR"
BARRIER_TIMEOUT_SECONDS = 60.0
STEPS = ("left_broken", "right_broken")


def fail_together(name: str) -> None:
    """Wait until both steps have started (each leaves a file in BARRIER_DIR), then fail."""
    folder = Path(os.environ[BARRIER_DIR])
    (folder / name).touch()
    deadline = time.monotonic() + BARRIER_TIMEOUT_SECONDS
    while not all((folder / step).exists() for step in STEPS) and time.monotonic() < deadline:
        time.sleep(0.01)
    raise RuntimeError(f"{name} failed")


@dg.asset
def left_broken() -> None:
    fail_together("left_broken")


@dg.asset
def right_broken() -> None:
    fail_together("right_broken")


def two_failing_steps_job() -> dg.JobDefinition:
    """Both assets in their asset job, with the alert hook as `definitions.py` adds it."""
    job = dg.define_asset_job("two_failing_steps", executor_def=dg.multiprocess_executor)
    defs = with_failure_alerts(dg.Definitions(assets=[left_broken, right_broken], jobs=[job],
                                              resources=build_resources()))
    return defs.resolve_job_def(job.name)
