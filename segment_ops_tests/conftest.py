"""Shared fixtures: one sandbox per test session on a free port, and a fresh SEGMENT_OPS_HOME per test."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import httpx
import pytest
from hypothesis import HealthCheck, settings
from starlette.applications import Starlette
from starlette.routing import Mount

from segment_ops.clients.base import tls_context
from segment_ops.config import SANDBOX_SEGMENT_PUBLIC_API_TOKEN, SETTINGS
from segment_ops.engine.pgstate import STATE_URL
from segment_ops.receivers.server import ThreadedServer, serve_in_thread
from segment_ops.resources import build_resources
from segment_ops.sandbox.app import SandboxConfig
from segment_ops.sandbox.demo_data import DemoConfig, DemoData
from segment_ops.sandbox.recorder import Recorder
from segment_ops.sandbox.segment.public_api import SegmentPublicApi
from segment_ops.sandbox.server import RunningSandbox, start_sandbox
from segment_ops.sandbox.warehouse import build_demo_warehouse

# The session sandbox's demo world, and the demo warehouse built from the same world: 178 customers (2
# without user_id, one user_id twice), 15 accounts (Pendo: acc_00012 and acc_00015 never active), 425
# completed orders.
DEMO_SCALE = 0.1
# Heap segment membership changes every 4-hour window (DemoData.heap_segment_members), so the demo warehouse
# holds it at this fixed moment and the Heap tests make the sandbox push at it too (`push_heap(at=...)`):
# counts then do not follow the clock. Its window (08:00-12:00 UTC) has what the Heap tests rely on: every
# member of Power Users (25, 5 of them by internal user id: 3 pages of 10) and Free Customers (56) is in
# the identity map, so no Heap-only identity (former.user<n>@mail.example) is among them.
HEAP_AT = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)
# How long the session sandbox's Profile API takes to show an accepted call (the sandbox's default is 1 s);
# read-back tests wait a little longer than this.
PROFILES_DELAY_SECONDS = 0.2

def status_within(url: str, expected: int, *, seconds: float = 5.0) -> int:
    """GET `url` until it answers `expected` or `seconds` have passed; returns the last status seen. For a
    server whose state follows a socket asynchronously: uvicorn counts a connection against its
    `limit_concurrency` once its event loop has accepted it, and forgets it once that loop saw it close."""
    deadline = time.monotonic() + seconds
    while True:
        status = httpx.get(url, timeout=5).status_code
        if status == expected or time.monotonic() >= deadline:
            return status
        time.sleep(0.01)


# Hypothesis: in CI (`.ci/run` sets CI=true) every run tries the same examples, chosen from a hash of each
# test (derandomize), with no example database, so a red build is reproduced by running it again; elsewhere
# ("dev", Hypothesis' defaults) each run explores anew and replays what failed before. Hypothesis 6.1xx loads
# a built-in "ci" profile of its own when it sees CI; this one replaces it, so the choice is ours, not the
# version's. The tests keep their own max_examples; the deadline is for a test that sets none (1 s, not
# 200 ms: a CI machine is slower), and too_slow is not checked there for the same reason.
settings.register_profile("ci", settings.get_profile("default"), derandomize=True, database=None,
                          deadline=timedelta(seconds=1), print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", settings.get_profile("default"))
settings.load_profile("ci" if os.environ.get("CI", "").lower() not in ("", "0", "false") else "dev")


class _WorkerInstance:
    """One ephemeral Dagster instance per test process, created on first use and wiped (runs, events, asset
    records, stored outputs) before each test that uses it. Its key-value store is kept: what segment_ops
    writes there (run heartbeats) is keyed by run id."""

    def __init__(self) -> None:
        self.instance: dg.DagsterInstance | None = None
        self.wiped_for: str | None = None

    def for_test(self, test_id: str) -> dg.DagsterInstance:
        if self.instance is None:
            self.instance = dg.DagsterInstance.ephemeral()
        if self.wiped_for != test_id:
            self.instance.wipe()
            # the filesystem IO manager's outputs live in the instance's storage folder, which wipe() keeps
            shutil.rmtree(self.instance.storage_directory(), ignore_errors=True)
            self.wiped_for = test_id
        return self.instance


_WORKER_INSTANCE = _WorkerInstance()


@pytest.fixture(autouse=True)
def one_dagster_instance_per_worker(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """`dg.materialize` without an `instance` runs on this process's one instance, empty at the start of each
    test, instead of a new ephemeral instance per call: Dagster builds each one by stamping its storages'
    migrations (about 75 ms of CPU; a tenth of the fast subset's time). The runs within one test share it,
    as runs of one deployment do; a test that passes its own instance keeps it."""
    materialize = dg.materialize

    def on_worker_instance(*args: object, instance: dg.DagsterInstance | None = None,
                           **kwargs: object) -> dg.ExecuteInProcessResult:
        return materialize(*args, instance=instance or _WORKER_INSTANCE.for_test(request.node.nodeid),
                           **kwargs)

    monkeypatch.setattr(dg, "materialize", on_worker_instance)


# `SEGMENT_OPS_TEST_STATE=postgres` runs the tests with the state in PostgreSQL (`engine/pgstate.py`): each
# test gets a database of its own on this machine's server, named in SEGMENT_OPS_STATE_URL. Unset, the state
# is in the DuckDB files alone, whatever the developer's environment says.
STATE_SERVER = "postgresql://postgres@127.0.0.1:5432"


@contextmanager
def fresh_state_database(prefix: str = "so_state") -> Iterator[str]:
    """A new, empty PostgreSQL database for state; its URL. Dropped afterwards (with its sessions)."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{STATE_SERVER}/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{STATE_SERVER}/{name}"
    finally:
        with psycopg.connect(f"{STATE_SERVER}/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(autouse=True)
def state_backend(monkeypatch: pytest.MonkeyPatch) -> Iterator[str | None]:
    """The state URL of this test: None (the embedded default), or a fresh database under
    SEGMENT_OPS_TEST_STATE=postgres."""
    if os.environ.get("SEGMENT_OPS_TEST_STATE", "duckdb") != "postgres":
        monkeypatch.delenv(STATE_URL, raising=False)
        yield None
        return
    with fresh_state_database() as url:
        monkeypatch.setenv(STATE_URL, url)
        yield url


@pytest.fixture(scope="session")
def stop_in_background() -> Iterator[Callable[[object], None]]:
    """`stop_in_background(server)` stops a server (anything with `stop()`) on a background thread. uvicorn
    takes 0.1-0.2 s to wind a server down (it checks for exit every 0.1 s, then lets connections close for
    0.1 s), which every test that started one used to wait out; the next test starts its own server on another
    free port meanwhile. Every server is stopped before the session ends, and a failed stop fails it."""
    stopping: list[Future] = []
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="stop-server") as pool:
        yield lambda server: stopping.append(pool.submit(server.stop))  # type: ignore[attr-defined]
        for future in stopping:
            future.result()


@pytest.fixture(scope="session")
def sandbox() -> Iterator[RunningSandbox]:
    """The session's sandbox (small demo data); tests that count things use `clean_sandbox`."""
    running = start_sandbox(SandboxConfig(scale=DEMO_SCALE, profiles_delay_seconds=PROFILES_DELAY_SECONDS))
    yield running
    running.stop()


@pytest.fixture
def clean_sandbox(sandbox: RunningSandbox) -> RunningSandbox:
    """The session sandbox with its recorder, faults and per-run state reset."""
    sandbox.reset()
    return sandbox


@pytest.fixture
def sandbox_http(clean_sandbox: RunningSandbox) -> Iterator[httpx.Client]:
    """A plain HTTP client on the clean session sandbox (no retries: tests see every answer)."""
    with httpx.Client(base_url=clean_sandbox.url, timeout=10.0, verify=tls_context()) as client:
        yield client


@pytest.fixture
def sandbox_factory(stop_in_background: Callable[[object], None]) -> Iterator[Callable[..., RunningSandbox]]:
    """Start extra sandboxes with their own config (rate limits, acks, record limits); stopped after the
    test."""
    started: list[RunningSandbox] = []

    def start(**config: object) -> RunningSandbox:
        started.append(start_sandbox(SandboxConfig(scale=DEMO_SCALE, **config)))  # type: ignore[arg-type]
        return started[-1]

    yield start
    for running in started:
        stop_in_background(running)


@pytest.fixture
def serve(stop_in_background: Callable[[object], None]) -> Iterator[Callable[..., ThreadedServer]]:
    """`serve(app, name)` serves an ASGI app on a free port for this test; stopped after it."""
    started: list[ThreadedServer] = []

    def start(app: object, name: str) -> ThreadedServer:
        started.append(serve_in_thread(app, name=name))
        return started[-1]

    yield start
    for served in started:
        stop_in_background(served)


def public_api_listing(sources: list[dict]) -> Starlette:
    """The sandbox's own Public API emulator (at `/segmentapis`) listing `sources`, with no audit events and a
    Delivery Overview that counts nothing: what a token with narrower rights, or another workspace, sees."""
    api = SegmentPublicApi(Recorder(100), lambda start, end: [], token=SANDBOX_SEGMENT_PUBLIC_API_TOKEN,
                           sources=sources)
    return Starlette(routes=[Mount("/segmentapis", routes=list(api.routes()))])


@pytest.fixture
def ops_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sandbox: RunningSandbox) -> Path:
    """Environment of a sandbox run: a fresh SEGMENT_OPS_HOME and every vendor URL on the sandbox."""
    for setting in SETTINGS:
        monkeypatch.delenv(setting.name, raising=False)
    home = tmp_path / "segment_ops_home"
    home.mkdir()
    monkeypatch.setenv("SEGMENT_OPS_HOME", str(home))
    monkeypatch.setenv("SEGMENT_OPS_SANDBOX_URL", sandbox.url)
    return home


@pytest.fixture(scope="session")
def demo_warehouse_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo warehouse of the session sandbox's world with Heap membership at `HEAP_AT`, built once;
    each test gets its own copy."""
    path = tmp_path_factory.mktemp("warehouse") / "demo_warehouse.duckdb"
    build_demo_warehouse(path, DemoData(DemoConfig(scale=DEMO_SCALE), now=HEAP_AT))
    return path


@pytest.fixture
def warehouse(ops_env: Path, demo_warehouse_file: Path) -> Path:
    """This test's copy of the demo warehouse, where WAREHOUSE_URL points by default."""
    path = ops_env / "demo_warehouse.duckdb"
    shutil.copy(demo_warehouse_file, path)
    return path


@dataclass
class ReadBackEnv:
    """Resources of a sync's run and of a read-back run after the delay has passed: the sync's run has the
    default SEGMENT_PROFILES_DELAY_SECONDS (60 s), so its own `landed_in_segment` check finds nothing due; the
    later run's delay is shorter than the time gone by since (`wait()`), which is all the check's clock
    does: it reads back what was delivered at least the delay before now."""

    now: dict
    later: dict

    @staticmethod
    def wait() -> None:
        """Let the later run's delay pass (the sandbox's profiles have caught up by then)."""
        time.sleep(READ_BACK_DELAY_SECONDS + 0.05)


# SEGMENT_PROFILES_DELAY_SECONDS of a read-back run in the tests: past the session sandbox's profile delay.
READ_BACK_DELAY_SECONDS = PROFILES_DELAY_SECONDS + 0.1


@pytest.fixture
def read_back_env(warehouse: Path, clean_sandbox: RunningSandbox,
                  monkeypatch: pytest.MonkeyPatch) -> Callable[..., ReadBackEnv]:
    """`read_back_env(**settings)`: the resources of a sync's run and of a later read-back, `settings` set."""

    def make(**settings: str) -> ReadBackEnv:
        for name, value in settings.items():
            monkeypatch.setenv(name, value)
        now = build_resources()
        monkeypatch.setenv("SEGMENT_PROFILES_DELAY_SECONDS", str(READ_BACK_DELAY_SECONDS))
        return ReadBackEnv(now, build_resources())

    return make


def check_evaluation(result: dg.ExecuteInProcessResult, name: str,
                     asset_key: dg.AssetKey | None = None) -> dg.AssetCheckEvaluation | None:
    """The evaluation of the check `name` (of `asset_key`, when given) in a run; None when it was skipped."""
    found = [e for e in result.get_asset_check_evaluations()
             if e.check_name == name and asset_key in (None, e.asset_key)]
    assert len(found) <= 1, found
    return found[0] if found else None
