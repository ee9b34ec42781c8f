"""Fixtures for the Pendo account-health sync: a fresh SEGMENT_OPS_HOME with the demo warehouse (the default
identity map reads its `accounts` table), a health config of the test's own, Dagster runs over real HTTP."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import duckdb
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from segment_ops.clients.base import RetryPolicy
from segment_ops.clients.pendo import PendoClient, last_settled_day
from segment_ops.clients.segment_tracking import SegmentTrackingClient
from segment_ops.config import SANDBOX_PENDO_INTEGRATION_KEY, SANDBOX_SEGMENT_WRITE_KEY
from segment_ops.receivers.server import serve_in_thread
from segment_ops.resources import PendoResource, build_resources
from segment_ops.sandbox.app import DemoSource
from segment_ops.sandbox.demo_data import DemoConfig
from segment_ops.sandbox.pendo.api import Pendo
from segment_ops.sandbox.recorder import Recorder
from segment_ops.syncs.pendo import defs as pendo
from segment_ops.syncs.pendo.extract import SYNC
from segment_ops.syncs.pendo.score import DEFAULT_CONFIG_PATH, HealthConfig, load_health_config
from segment_ops_tests.conftest import DEMO_SCALE

ZONE = pendo.SUBSCRIPTION_ZONE  # PENDO_TIMEZONE is unset in tests: the sandbox subscription's zone
FAST_RETRY = RetryPolicy(max_attempts=8, backoff_initial=0.01, backoff_max=0.05, max_elapsed=30.0)


@pytest.fixture
def home(ops_env: Path, warehouse: Path, clean_sandbox) -> Path:
    """SEGMENT_OPS_HOME with this test's copy of the demo warehouse (WAREHOUSE_URL's default)."""
    return ops_env


def write_config(path: Path, replacements: dict[str, str] | None = None, *,
                 drop_identity: bool = False) -> Path:
    """The project's config with some lines replaced (`old line` -> `new line`)."""
    text = DEFAULT_CONFIG_PATH.read_text()
    for old, new in (replacements or {}).items():
        assert old in text, old
        text = text.replace(old, new)
    if drop_identity:
        text = text[: text.index("[identity]")]
    path.write_text(text)
    return path


@pytest.fixture
def health_config_file(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """PENDO_HEALTH_CONFIG pointing at a copy of the project's config, which a test may rewrite."""
    path = write_config(tmp_path / "pendo_health.toml")
    monkeypatch.setenv("PENDO_HEALTH_CONFIG", str(path))
    return path


@pytest.fixture
def resources(health_config_file: Path, clean_sandbox) -> dict:
    """The code location's resources, with a Pendo retry budget that keeps storms short."""
    bound = build_resources()
    bound["pendo"] = PendoResource(base_url=f"{clean_sandbox.url}/pendo",
                                   integration_key=SANDBOX_PENDO_INTEGRATION_KEY, retry_backoff_seconds=0.01)
    return bound


@pytest.fixture
def pendo_in_zone(stop_in_background) -> Iterator[Callable[[str], str]]:
    """Serve the Pendo emulator alone for a subscription in another time zone (the session sandbox's is New
    York); returns its `/pendo` base URL. Same demo world as the session sandbox."""
    started = []

    def start(timezone: str) -> str:
        emulator = Pendo(Recorder(1000), DemoSource(DemoConfig(scale=DEMO_SCALE)).recent,
                         integration_key=SANDBOX_PENDO_INTEGRATION_KEY, timezone=timezone)
        started.append(serve_in_thread(Starlette(routes=[Mount("/pendo", routes=list(emulator.routes()))]),
                                       name=f"pendo {timezone}"))
        return f"{started[-1].url}/pendo"

    yield start
    for server in started:
        stop_in_background(server)


@pytest.fixture
def pendo_client(clean_sandbox) -> PendoClient:
    client = PendoClient(f"{clean_sandbox.url}/pendo", SANDBOX_PENDO_INTEGRATION_KEY, retry=FAST_RETRY)
    yield client
    client.close()


@pytest.fixture
def segment_factory(clean_sandbox) -> Callable[[], SegmentTrackingClient]:
    return lambda: SegmentTrackingClient(f"{clean_sandbox.url}/segment", SANDBOX_SEGMENT_WRITE_KEY,
                                         retry=FAST_RETRY)


@pytest.fixture
def config_no_identity(tmp_path: Path) -> HealthConfig:
    return load_health_config(write_config(tmp_path / "no_identity.toml", drop_identity=True))


@pytest.fixture
def con(tmp_path: Path):
    connection = duckdb.connect(str(tmp_path / "staging.duckdb"))
    yield connection
    connection.close()


def yesterday() -> date:
    """The newest day the sync can read now: a day of the subscription's zone (the sandbox's, New York) that
    ended `settle_hours` ago."""
    return last_settled_day(ZONE, load_health_config().settle_hours)


ASSETS = [pendo.account_usage_daily, pendo.account_health, pendo.pendo_account_groups]


def backfill(resources: dict, days: int, *, last: date | None = None,
             instance: dg.DagsterInstance | None = None, **kwargs: object) -> dg.ExecuteInProcessResult:
    """One run over the `days` newest complete days (a single-run backfill), then score and sync."""
    last = last or yesterday()
    first = last - timedelta(days=days - 1)
    return dg.materialize(ASSETS, resources=resources, instance=instance, raise_on_error=False,
                          tags={"dagster/asset_partition_range_start": str(first),
                                "dagster/asset_partition_range_end": str(last)}, **kwargs)


def rerun_day(resources: dict, day: date, **kwargs: object) -> dg.ExecuteInProcessResult:
    """One partition of the usage asset, then score and sync (as the daily schedule's run does)."""
    return dg.materialize(ASSETS, resources=resources, partition_key=str(day), raise_on_error=False, **kwargs)


def metadata(result: dg.ExecuteInProcessResult, key: dg.AssetKey) -> dict:
    """Metadata of `key`'s materialization (a range run records one per partition, all with the same
    metadata)."""
    events = [e for e in result.get_asset_materialization_events() if e.asset_key == key]
    assert events and all(e.materialization.metadata == events[0].materialization.metadata for e in events)
    event = events[0]
    return {k: getattr(v, "value", v) for k, v in event.materialization.metadata.items()}


def checks(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def staging_file(home: Path) -> Path:
    return home / "staging" / f"{SYNC}.duckdb"


def query(home: Path, sql: str, params: list | None = None) -> list[tuple]:
    connection = duckdb.connect(str(staging_file(home)), read_only=True)
    try:
        return connection.execute(sql, params or []).fetchall()
    finally:
        connection.close()


def group_calls(sandbox) -> list[dict]:
    return [m for m in sandbox.received("segment", limit=10_000) if m["type"] == "group"]
