"""Fixtures for reverse-ETL tests: the demo warehouse in a fresh SEGMENT_OPS_HOME, the model files, and
helpers that run models through Dagster's harness against the sandbox."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import dagster as dg
import duckdb
import httpx
import pytest

from segment_ops.clients.base import RetryPolicy
from segment_ops.clients.segment_tracking import SegmentTrackingClient
from segment_ops.config import SANDBOX_SEGMENT_WRITE_KEY
from segment_ops.resources import SegmentTrackingResource, build_resources
from segment_ops.syncs.reverse_etl.defs import MODELS_DIR, build_reverse_etl_defs, model_key

FAST_RETRY = RetryPolicy(max_attempts=2, backoff_initial=0.01, backoff_max=0.02, max_elapsed=2.0)
# The header of an identify model keyed by user_id, for tests that write a model file of their own.
IDENTIFY_HEADER = """\
-- description: Profile traits of every known customer, for tests.
-- owner: team:growth
-- call: identify
-- mode: upsert
-- key: user_id
-- user_id: user_id
"""


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    """A copy of the project's model files, for tests that add or break one."""
    folder = tmp_path / "models"
    shutil.copytree(MODELS_DIR, folder)
    return folder


@pytest.fixture
def resources(warehouse: Path, clean_sandbox) -> dict:
    return build_resources()


@pytest.fixture
def segment_client_factory(clean_sandbox) -> Callable[[], SegmentTrackingClient]:
    """Segment clients on the clean sandbox with a small retry budget (for engine-level tests)."""
    return lambda: SegmentTrackingClient(f"{clean_sandbox.url}/segment", SANDBOX_SEGMENT_WRITE_KEY,
                                         retry=FAST_RETRY)


def edit_warehouse(path: Path, *statements: str) -> None:
    """Change the DuckDB warehouse between runs (the connection is closed again, releasing the file)."""
    con = duckdb.connect(str(path))
    try:
        for statement in statements:
            con.execute(statement)
    finally:
        con.close()


def run_models(resources: dict, models: Sequence[str], *, models_dir: Path = MODELS_DIR,
               warehouse_url: str | None = None, **config: object) -> dg.ExecuteInProcessResult:
    """Materialize the named models (and only those) with `config` for each."""
    defs = build_reverse_etl_defs(models_dir, warehouse_url=warehouse_url)
    assets = [a for a in defs.assets if isinstance(a, dg.AssetsDefinition)]
    run_config = {"ops": {node(m): {"config": dict(config)} for m in models}} if config else None
    return dg.materialize(assets, selection=[model_key(m) for m in models], resources=resources,
                          run_config=run_config, raise_on_error=False)


def node(model: str) -> str:
    return f"segment__reverse_etl__{model}"


def metadata(result: dg.ExecuteInProcessResult, model: str) -> dict:
    [materialization] = result.asset_materializations_for_node(node(model))
    return {key: value.value for key, value in materialization.metadata.items()}


def checks(result: dg.ExecuteInProcessResult, model: str) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()
            if e.asset_key == model_key(model)}


def step_failure(result: dg.ExecuteInProcessResult, model: str):
    [failure] = [e for e in result.all_events if e.is_step_failure and e.step_key == node(model)]
    return failure.step_failure_data.user_failure_data


def received(sandbox, limit: int = 10_000) -> list[dict]:
    return sandbox.received("segment", limit=limit)


def segment_stats(sandbox) -> tuple[int, int]:
    """(unique messages received, duplicate deliveries)."""
    stats = sandbox.stats()["segment"]
    return stats.get("received", 0), stats.get("duplicates", 0)


class StormAfterFirstBatch(SegmentTrackingResource):
    """A Segment resource whose client switches the sandbox to a 503 storm once its first batch was accepted,
    with a retry budget too small to outlast it: a run that fails halfway, over real HTTP. Small batches
    (`batch_bytes`) so that a demo model needs several."""

    sandbox_url: str
    batch_bytes: int = 16_000

    def get_client(self) -> _StormClient:
        client = SegmentTrackingClient(self.base_url, self.write_key, retry=FAST_RETRY)
        return _StormClient(client, self.sandbox_url, self.batch_bytes)


class _StormClient:
    def __init__(self, client: SegmentTrackingClient, sandbox_url: str, batch_bytes: int) -> None:
        self.client, self.sandbox_url, self.sent = client, sandbox_url, 0
        self.name, self.max_batch_bytes = client.name, batch_bytes

    def send_batch(self, payloads, *, on_retry: Callable | None = None) -> None:
        self.client.send_batch(payloads, on_retry=on_retry)
        self.sent += 1
        if self.sent == 1:
            httpx.post(f"{self.sandbox_url}/__sandbox__/faults",
                       json={"segment": {"rate_503": 1.0}}).raise_for_status()

    def close(self) -> None:
        self.client.close()
