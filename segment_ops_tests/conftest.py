"""Shared fixtures: one sandbox per test session on a free port, and a fresh SEGMENT_OPS_HOME per test."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from segment_ops.config import SETTINGS
from segment_ops.sandbox.app import SandboxConfig
from segment_ops.sandbox.demo_data import DemoConfig, DemoData
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
    with httpx.Client(base_url=clean_sandbox.url, timeout=10.0) as client:
        yield client


@pytest.fixture
def sandbox_factory(stop_in_background: Callable[[object], None]) -> Iterator[Callable[..., RunningSandbox]]:
    """Start extra sandboxes with their own config (rate limits, acks, record limits); stopped after the test."""
    started: list[RunningSandbox] = []

    def start(**config: object) -> RunningSandbox:
        started.append(start_sandbox(SandboxConfig(scale=DEMO_SCALE, **config)))  # type: ignore[arg-type]
        return started[-1]

    yield start
    for running in started:
        stop_in_background(running)


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
