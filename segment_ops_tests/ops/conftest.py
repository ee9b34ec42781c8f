"""The real thing, once per test session: the sandbox, and `dagster dev` (webserver + daemon) on it.

`dagster_dev` starts `dagster dev -w workspace.yaml` from the project root as a user runs it, with a
fresh DAGSTER_HOME whose `dagster.yaml` is a link to the project's (queued run coordinator, run and
pool limits), a fresh SEGMENT_OPS_HOME holding the demo warehouse, and every vendor on a sandbox of
its own. The sandbox is not the session `sandbox` of the other tests: the code location's sensors
run in the daemon for the whole session and would send into a recorder that other tests count.
Tests talk to Dagster through its GraphQL API (`DagsterDev.graphql`) or a browser.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from segment_ops.config import SETTINGS
from segment_ops.sandbox.app import SandboxConfig
from segment_ops.sandbox.demo_data import DemoConfig, DemoData
from segment_ops.sandbox.server import RunningSandbox, start_sandbox
from segment_ops.sandbox.warehouse import build_demo_warehouse

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SEED, SCALE = 7, 0.1
LOAD_TIMEOUT_SECONDS = 180.0  # `dagster dev` on 2 busy cores: webserver, daemon and the code server
STOP_TIMEOUT_SECONDS = 20.0
LOG_TAIL_LINES = 60
# The daemons the tests rely on: queued runs start through the first, backfills are driven by the second.
REQUIRED_DAEMONS = ("QUEUED_RUN_COORDINATOR", "BACKFILL", "MONITORING")
# A killed run worker is found sooner than with the defaults (10 s beats, 120 s timeout): test_run_watch_e2e.
RUN_HEARTBEAT_SECONDS, RUN_HEARTBEAT_TIMEOUT_SECONDS = 2, 15

LOCATION_QUERY = """
query {
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError { __typename ... on PythonError { message } }
      }
    }
    ... on PythonError { message }
  }
}
"""

DAEMONS_QUERY = """
query { instance { daemonHealth { allDaemonStatuses { daemonType healthy } } } }
"""

RUNS_QUERY = """
query Runs($filter: RunsFilter) {
  runsOrError(filter: $filter) {
    __typename
    ... on Runs { results { runId status tags { key value } assetSelection { path } } }
    ... on PythonError { message }
  }
}
"""

TERMINAL_RUN_STATUSES = {"SUCCESS", "FAILURE", "CANCELED"}


class DagsterDevError(RuntimeError):
    """`dagster dev` did not come up, or answered a GraphQL request with an error."""


@dataclass
class DagsterDev:
    """A running `dagster dev`: its UI/GraphQL URL, the sandbox it points at and where its state lives."""

    url: str
    sandbox: RunningSandbox
    segment_ops_home: Path
    dagster_home: Path
    log_path: Path
    process: subprocess.Popen

    def graphql(self, query: str, variables: dict[str, Any] | None = None, *, timeout: float = 60.0) -> dict:
        """POST a query to `/graphql`; returns `data`, raises `DagsterDevError` on transport or GraphQL
        errors."""
        response = httpx.post(f"{self.url}/graphql", json={"query": query, "variables": variables or {}},
                              timeout=timeout)
        if response.status_code != 200:
            raise DagsterDevError(f"/graphql answered {response.status_code}: {response.text[:500]}")
        body = response.json()
        if body.get("errors"):
            raise DagsterDevError(f"/graphql errors: {body['errors']}")
        return body["data"]

    def runs(self, **runs_filter: Any) -> list[dict]:
        """Runs matching a GraphQL `RunsFilter`, e.g.
        `runs(tags=[{"key": "dagster/backfill", "value": id}])`."""
        result = self.graphql(RUNS_QUERY, {"filter": runs_filter})["runsOrError"]
        if result["__typename"] != "Runs":
            raise DagsterDevError(f"runsOrError: {result}")
        return result["results"]

    def wait_for_run(self, run_id: str, timeout: float = 120.0) -> str:
        """Poll a run until it finishes; returns its final status (SUCCESS, FAILURE or CANCELED)."""
        deadline = time.monotonic() + timeout
        status = "UNKNOWN"
        while time.monotonic() < deadline:
            [run] = self.runs(runIds=[run_id]) or [{"status": "UNKNOWN"}]
            status = run["status"]
            if status in TERMINAL_RUN_STATUSES:
                return status
            time.sleep(1.0)
        raise DagsterDevError(f"run {run_id} still {status} after {timeout:.0f}s\n{self.log_tail()}")

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "--- dagster dev log (tail) ---\n" + "\n".join(text.splitlines()[-lines:])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def dagster_dev_env(sandbox_url: str, segment_ops_home: Path, dagster_home: Path) -> dict[str, str]:
    """This process's environment without any segment_ops setting, then every vendor on the sandbox."""
    names = {setting.name for setting in SETTINGS}
    env = {key: value for key, value in os.environ.items() if key not in names}
    env |= {
        "SEGMENT_OPS_HOME": str(segment_ops_home),
        "SEGMENT_OPS_SANDBOX_URL": sandbox_url,
        "DAGSTER_HOME": str(dagster_home),
        "PYTHONUNBUFFERED": "1",
        "RUN_HEARTBEAT_SECONDS": str(RUN_HEARTBEAT_SECONDS),
        "RUN_HEARTBEAT_TIMEOUT_SECONDS": str(RUN_HEARTBEAT_TIMEOUT_SECONDS),
    }
    return env


def _wait_until_loaded(dev: DagsterDev, timeout: float) -> None:
    """Until the code location is LOADED and the required daemons report healthy, through GraphQL."""
    deadline = time.monotonic() + timeout
    last = "no answer from /graphql yet"
    while time.monotonic() < deadline:
        if dev.process.poll() is not None:
            raise DagsterDevError(f"dagster dev exited with {dev.process.returncode}\n{dev.log_tail()}")
        try:
            workspace = dev.graphql(LOCATION_QUERY, timeout=10.0)["workspaceOrError"]
        except (httpx.HTTPError, DagsterDevError) as exc:
            last = f"{type(exc).__name__}: {exc}"
            time.sleep(1.0)
            continue
        if workspace["__typename"] != "Workspace":
            raise DagsterDevError(f"workspace failed to load: {workspace}\n{dev.log_tail()}")
        entries = {entry["name"]: entry for entry in workspace["locationEntries"]}
        entry = entries.get("segment_ops.definitions") or next(iter(entries.values()), None)
        if entry is not None and entry["loadStatus"] == "LOADED":
            located = entry["locationOrLoadError"] or {}
            if located.get("__typename") == "PythonError":
                raise DagsterDevError(f"code location failed to load: {located['message']}\n{dev.log_tail()}")
            daemons = {d["daemonType"]: d["healthy"] for d in
                       dev.graphql(DAEMONS_QUERY)["instance"]["daemonHealth"]["allDaemonStatuses"]}
            if all(daemons.get(name) for name in REQUIRED_DAEMONS):
                return
            last = f"code location loaded; daemons {daemons}"
        else:
            last = f"locations {[(e['name'], e['loadStatus']) for e in entries.values()]}"
        time.sleep(1.0)
    raise DagsterDevError(f"dagster dev not ready after {timeout:.0f}s ({last})\n{dev.log_tail()}")


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM the process group (dagster dev stops its webserver, daemon and code server), then
    SIGKILL whatever of it or its descendants (run workers) is still alive."""
    try:
        family = [process.pid, *(child.pid for child in psutil.Process(process.pid).children(recursive=True))]
    except psutil.NoSuchProcess:
        family = [process.pid]
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(STOP_TIMEOUT_SECONDS)
    for pid in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(pid).kill()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(STOP_TIMEOUT_SECONDS)


@pytest.fixture(scope="session")
def ops_sandbox() -> Iterator[RunningSandbox]:
    """A sandbox for `dagster dev` alone (its sensors send here all session long)."""
    running = start_sandbox(SandboxConfig(seed=SEED, scale=SCALE))
    yield running
    running.stop()


@pytest.fixture(scope="package")
def dagster_dev(ops_sandbox: RunningSandbox,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[DagsterDev]:
    """`dagster dev -w workspace.yaml` on the sandbox, LOADED and with its daemons up; stopped after the ops
    tests (package scope), so it does not keep running its daemon through the rest of the session."""
    dev = start_dagster_dev(ops_sandbox, tmp_path_factory.mktemp("dagster_dev"))
    try:
        yield dev
    finally:
        stop_dagster_dev(dev)


def start_dagster_dev(sandbox: RunningSandbox, root: Path, *,
                      instance_yaml: Path = PROJECT_ROOT / "dagster.yaml",
                      env: dict[str, str] | None = None) -> DagsterDev:
    """`dagster dev -w workspace.yaml` on `sandbox`, with its homes under `root`: a fresh SEGMENT_OPS_HOME
    holding the demo warehouse and a DAGSTER_HOME whose dagster.yaml links `instance_yaml` (the project's
    by default), with `env` added to its environment; returns once the code location is LOADED and its
    daemons are up (stopped again if it never gets there)."""
    segment_ops_home, dagster_home = root / "segment_ops_home", root / "dagster_home"
    dagster_home.mkdir()
    # The instance config, as the README's `.dagster_home/dagster.yaml` link does.
    (dagster_home / "dagster.yaml").symlink_to(instance_yaml)
    build_demo_warehouse(segment_ops_home / "demo_warehouse.duckdb",
                         DemoData(DemoConfig(seed=SEED, scale=SCALE)))
    port = free_port()
    log_path = root / "dagster_dev.log"
    dagster = Path(sys.executable).with_name("dagster")
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(dagster), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
            cwd=PROJECT_ROOT, env=dagster_dev_env(sandbox.url, segment_ops_home, dagster_home) | (env or {}),
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    dev = DagsterDev(f"http://127.0.0.1:{port}", sandbox, segment_ops_home, dagster_home, log_path, process)
    try:
        _wait_until_loaded(dev, LOAD_TIMEOUT_SECONDS)
    except BaseException:
        _stop(process)
        raise
    return dev


def stop_dagster_dev(dev: DagsterDev) -> None:
    """Stop `dagster dev` and every process it started (run workers included)."""
    _stop(dev.process)
