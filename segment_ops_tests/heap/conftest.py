"""Fixtures for the Heap audience tests: the demo warehouse, the real receiver over HTTP, the sandbox
pushing signed segment syncs to it, and helpers that run the sensor and the assets through Dagster."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from segment_ops.config import SANDBOX_HEAP_WEBHOOK_SECRET
from segment_ops.resources import AlertsResource, StagingResource, build_resources
from segment_ops.sandbox.heap.webhooks import heap_hash
from segment_ops.syncs.heap.audiences import DEFAULT_FILE, AudiencesConfig, load_audiences
from segment_ops.syncs.heap.defs import SENSOR_NAME, audience_key, build_heap_defs, node
from segment_ops.syncs.heap.inbox import Inbox
from segment_ops.syncs.heap.receiver import WebhookConfig
from segment_ops.syncs.heap.server import RunningReceiver, start_receiver
from segment_ops_tests.conftest import HEAP_AT
from segment_ops_tests.reverse_etl.conftest import edit_warehouse  # noqa: F401 - shared with the heap tests

POWER_USERS, FREE_CUSTOMERS = 1338065, 1338066
# Heap "now" for every push in these tests: the moment the test warehouse's Heap Connect tables hold, so the
# sandbox and the warehouse agree and no count depends on the wall clock (see HEAP_AT in ../conftest.py).
AT = HEAP_AT.isoformat()
PAGE_SIZE = 10


@pytest.fixture
def resources(warehouse: Path, clean_sandbox) -> dict:
    return build_resources()


@pytest.fixture
def receiver(ops_env: Path, stop_in_background) -> Iterator[RunningReceiver]:
    """The real receiver on a free port, writing to this test's SEGMENT_OPS_HOME inbox."""
    running = start_receiver(WebhookConfig(home=ops_env, heap_secret=SANDBOX_HEAP_WEBHOOK_SECRET))
    yield running
    stop_in_background(running)


@pytest.fixture
def heap(clean_sandbox, receiver):
    """The sandbox registered to push Power Users and Free Customers to the receiver, 10 ids a page."""
    clean_sandbox.register_heap_webhook(receiver.heap_url, page_size=PAGE_SIZE,
                                        segments=[POWER_USERS, FREE_CUSTOMERS], max_attempts=3,
                                        retry_initial_seconds=0.05)
    return clean_sandbox


@pytest.fixture
def instance() -> dg.DagsterInstance:
    """This test's own Dagster instance, in memory: the same SQL run and event storage as the SQLite files of
    `instance_for_test`, without its temporary DAGSTER_HOME (0.4 s a test)."""
    return dg.DagsterInstance.ephemeral()


@pytest.fixture
def audiences() -> AudiencesConfig:
    """The project's audiences file, as the code location loads it."""
    return load_audiences()


@pytest.fixture
def con() -> Iterator[duckdb.DuckDBPyConnection]:
    """An in-memory DuckDB connection for engine-level tests."""
    connection = duckdb.connect()
    yield connection
    connection.close()


@pytest.fixture
def audiences_file(tmp_path: Path) -> Path:
    """A copy of the project's audiences file, for tests that change a setting."""
    path = tmp_path / "heap_audiences.toml"
    shutil.copy(DEFAULT_FILE, path)
    return path


def set_in_file(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def evaluate_sensor(instance: dg.DagsterInstance, home: Path, cursor: str | None = None,
                    path: Path | None = None, alerts: AlertsResource | None = None) -> dg.SensorResult:
    """One tick of the inbox sensor; alerts go to the sandbox's /slack unless `alerts` says otherwise."""
    [sensor] = [s for s in build_heap_defs(path).sensors if s.name == SENSOR_NAME]
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={
        "staging": StagingResource(home=str(home)), "alerts": alerts or build_resources()["alerts"]})
    return sensor(context)


def assets(path: Path | None = None) -> list[dg.AssetsDefinition]:
    return [a for a in build_heap_defs(path).assets if isinstance(a, dg.AssetsDefinition)]


def run_request(instance: dg.DagsterInstance, resources: dict, request: dg.RunRequest,
                path: Path | None = None) -> dg.ExecuteInProcessResult:
    """Execute what the sensor asked for, as the daemon would (same selection, config and tags)."""
    return dg.materialize(assets(path), selection=request.asset_selection, run_config=request.run_config,
                          tags=request.tags, instance=instance, resources=resources, raise_on_error=False)


def materialize(resources: dict, audience: str, *, instance: dg.DagsterInstance | None = None,
                path: Path | None = None, **config: object) -> dg.ExecuteInProcessResult:
    run_config = {"ops": {node(audience): {"config": dict(config)}}} if config else None
    return dg.materialize(assets(path), selection=[audience_key(audience)], run_config=run_config,
                          instance=instance, resources=resources, raise_on_error=False)


def metadata(result: dg.ExecuteInProcessResult, audience: str) -> dict:
    [materialization] = result.asset_materializations_for_node(node(audience))
    return {key: value.value for key, value in materialization.metadata.items()}


def checks(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def step_failure(result: dg.ExecuteInProcessResult, audience: str) -> dg.Failure:
    [failure] = [e for e in result.all_events if e.is_step_failure and e.step_key == node(audience)]
    return failure.step_failure_data.user_failure_data


def received(sandbox, limit: int = 10_000) -> list[dict]:
    return sandbox.received("segment", limit=limit)


def calls(sandbox, trait: str) -> dict[str, list[dict]]:
    """What Segment received for one audience: identify calls and Entered/Exited tracks."""
    items = received(sandbox)
    return {
        "in": [m for m in items if m["type"] == "identify" and m["traits"].get(trait) is True],
        "out": [m for m in items if m["type"] == "identify" and m["traits"].get(trait) is False],
        "entered": [m for m in items if m["type"] == "track" and m["event"] == "Audience Entered"
                    and m["properties"]["audience_key"] == trait],
        "exited": [m for m in items if m["type"] == "track" and m["event"] == "Audience Exited"
                   and m["properties"]["audience_key"] == trait],
    }


def segment_stats(sandbox) -> tuple[int, int]:
    stats = sandbox.stats()["segment"]
    return stats.get("received", 0), stats.get("duplicates", 0)


# The demo warehouse's Heap Connect membership with each member's Heap identity (see
# sandbox/heap/connect.py).
MEMBERS = ("(SELECT m.segment_id, u.user_id, u.identity, u.app_user_id "
           "FROM main_production.segment_members m "
           "JOIN main_production.users u USING (user_id))")


def resolvable(warehouse: Path, segment_id: int) -> set[str]:
    """The Segment userIds of the segment's members in the demo warehouse's Heap Connect tables."""
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        rows = con.execute(f"SELECT DISTINCT coalesce(app_user_id, identity) FROM {MEMBERS} "
                           "WHERE segment_id = ? AND (app_user_id IS NOT NULL OR NOT identity LIKE '%@%')",
                           [segment_id]).fetchall()
    finally:
        con.close()
    return {r[0] for r in rows}


def connect_rows(warehouse: Path, segment_id: int) -> int:
    """How many rows the warehouse's Heap Connect membership holds for the segment (one per member)."""
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        return con.execute("SELECT count(*) FROM main_production.segment_members WHERE segment_id = ?",
                           [segment_id]).fetchone()[0]
    finally:
        con.close()


def add_heap_users(warehouse: Path, *rows: tuple[str | None, str | None]) -> list[int]:
    """Add Heap users (identity, app_user_id) to the demo warehouse's Heap Connect `users`; their Heap
    user_ids."""
    from segment_ops.sandbox.heap.connect import heap_user_id

    ids = [heap_user_id(f"test:{identity}:{target}") for identity, target in rows]
    values = ", ".join(f"({uid}, {_sql(identity)}, now(), now(), NULL, {_sql(target)})"
                       for uid, (identity, target) in zip(ids, rows, strict=True))
    edit_warehouse(warehouse, f"INSERT INTO main_production.users VALUES {values}")
    return ids


def add_members(warehouse: Path, segment_id: int, *identities: str, synced_at: str = "now()") -> None:
    """Make Heap users with these identities (added to `users` if new, unmapped) members of the segment."""
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        known = dict(con.execute("SELECT identity, user_id FROM main_production.users WHERE identity IN "
                                 f"({', '.join(_sql(i) for i in identities)})").fetchall())
    finally:
        con.close()
    new = [i for i in identities if i not in known]
    known |= dict(zip(new, add_heap_users(warehouse, *((i, None) for i in new)), strict=True))
    values = ", ".join(f"({segment_id}, {known[i]}, {synced_at})" for i in identities)
    edit_warehouse(warehouse, f"INSERT INTO main_production.segment_members VALUES {values}")


def _sql(value: str | None) -> str:
    return "NULL" if value is None else "'" + value.replace("'", "''") + "'"


def pages(entries: int, page_size: int = PAGE_SIZE) -> int:
    """How many webhook pages Heap needs for `entries` adds and removes."""
    return -(-entries // page_size)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def sign(body: bytes, secret: str = SANDBOX_HEAP_WEBHOOK_SECRET, *, ts_ms: int | None = None,
         encoding: str = "base64") -> str:
    """`Heap-Hash` for `body` as Heap's reference generator writes it (the sandbox's signer, itself pinned to
    Heap's reference vectors in test_signature_vectors.py), signed now unless `ts_ms` says otherwise."""
    return heap_hash(secret, body, now_ms() if ts_ms is None else ts_ms, encoding=encoding)


def wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def inbox(home: Path) -> Inbox:
    return Inbox.for_home(home)
