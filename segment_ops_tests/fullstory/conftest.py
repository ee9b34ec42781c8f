"""Fixtures for the Fullstory tests: the real Fullstory receiver over HTTP, the sandbox's Streams posting to
it, and helpers that run the Fullstory assets through Dagster."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest

from segment_ops.clients.base import RetryPolicy
from segment_ops.clients.segment_tracking import SegmentTrackingClient
from segment_ops.resources import SegmentTrackingResource, build_resources
from segment_ops.syncs.fullstory.defs import SCORE_JOB, SIGNALS_JOB
from segment_ops.syncs.fullstory.defs import defs as fullstory_defs
from segment_ops.syncs.fullstory.receiver import FULLSTORY_PATH, StreamConfig, create_app
from segment_ops.syncs.fullstory.settings import DEFAULT_FILE

TOKEN = "test-fullstory-stream-token"
SIGNALS_NODE = "segment__fullstory_signals"
SCORE_NODE = "segment__fullstory_experience_score"
EVENTS = {"Rage Click": "Rage Clicked", "Dead Click": "Dead Clicked", "Error Click": "Error Clicked"}
FAST_RETRY = RetryPolicy(max_attempts=2, backoff_initial=0.01, backoff_max=0.02, max_elapsed=2.0)


class FastRetrySegment(SegmentTrackingResource):
    """The Segment resource with a retry budget of two quick attempts: a 500 storm fails a run in a second."""

    def get_client(self) -> SegmentTrackingClient:
        return SegmentTrackingClient(self.base_url, self.write_key, retry=FAST_RETRY)


@pytest.fixture
def resources(warehouse: Path, clean_sandbox) -> dict:
    """The code location's resources on the clean sandbox, the test's demo warehouse and SEGMENT_OPS_HOME."""
    return build_resources()


@pytest.fixture
def receiver_url(ops_env: Path, serve) -> str:
    """The real Fullstory receiver (bearer token `TOKEN`) on a free port, storing in this test's home."""
    served = serve(create_app(StreamConfig(home=ops_env, token=TOKEN)), "fullstory receiver")
    return f"{served.url}{FULLSTORY_PATH}"


@pytest.fixture
def streams(clean_sandbox, receiver_url: str):
    """The sandbox's Fullstory Streams posting the Field Mapping body to the receiver (as `prepare_demo`),
    retrying quickly."""
    clean_sandbox.register_fullstory_stream(receiver_url, token=TOKEN, body="mapped", max_attempts=3,
                                            retry_initial_seconds=0.05, retry_max_seconds=0.2)
    return clean_sandbox


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    """A copy of the shipped fullstory.toml, for tests that change a setting (FULLSTORY_SIGNALS_FILE)."""
    path = tmp_path / "fullstory.toml"
    shutil.copy(DEFAULT_FILE, path)
    return path


def set_in_file(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new))


def job(name: str, resources: dict) -> dg.JobDefinition:
    """A job of the Fullstory definitions, with `resources` bound (as the code location binds its own)."""
    return dg.Definitions.merge(fullstory_defs, dg.Definitions(resources=resources)).resolve_job_def(name)


def run_signals(resources: dict, instance: dg.DagsterInstance | None = None,
                **config: object) -> dg.ExecuteInProcessResult:
    """One run of `fullstory_signals_job`."""
    run_config = {"ops": {SIGNALS_NODE: {"config": dict(config)}}} if config else None
    return job(SIGNALS_JOB, resources).execute_in_process(run_config=run_config, instance=instance,
                                                          raise_on_error=False)


def run_score(resources: dict, day: str, instance: dg.DagsterInstance | None = None,
              **config: object) -> dg.ExecuteInProcessResult:
    """One run of `fullstory_score_job` for the partition `day`."""
    run_config = {"ops": {SCORE_NODE: {"config": dict(config)}}} if config else None
    return job(SCORE_JOB, resources).execute_in_process(run_config=run_config, partition_key=day,
                                                        instance=instance, raise_on_error=False)


def metadata(result: dg.ExecuteInProcessResult, node: str) -> dict:
    [materialization] = result.asset_materializations_for_node(node)
    return {key: value.value for key, value in materialization.metadata.items()}


def checks(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def step_failure(result: dg.ExecuteInProcessResult, node: str):
    [failure] = [e for e in result.all_events if e.is_step_failure and e.step_key == node]
    return failure.step_failure_data.user_failure_data


def segment_calls(sandbox, call: str = "track") -> list[dict]:
    return [m for m in sandbox.received("segment", limit=100_000) if m["type"] == call]


def segment_stats(sandbox) -> tuple[int, int]:
    """(unique messages received, duplicate deliveries) by the sandbox's Segment."""
    stats = sandbox.stats()["segment"]
    return stats.get("received", 0), stats.get("duplicates", 0)


def parse_time(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    yield dg.DagsterInstance.ephemeral()
