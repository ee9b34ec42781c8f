"""Shared fixtures: one sandbox per test session on a free port, and a fresh SEGMENT_OPS_HOME per test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from segment_ops.config import SETTINGS
from segment_ops.sandbox.app import SandboxConfig
from segment_ops.sandbox.server import RunningSandbox, start_sandbox


@pytest.fixture(scope="session")
def sandbox() -> Iterator[RunningSandbox]:
    """The session's sandbox (small demo data); tests that count things use `clean_sandbox`."""
    running = start_sandbox(SandboxConfig(scale=0.1))
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
def sandbox_factory() -> Iterator[Callable[..., RunningSandbox]]:
    """Start extra sandboxes with their own config (rate limits, acks, record limits); stopped after the test."""
    started: list[RunningSandbox] = []

    def start(**config: object) -> RunningSandbox:
        started.append(start_sandbox(SandboxConfig(scale=0.1, **config)))  # type: ignore[arg-type]
        return started[-1]

    yield start
    for running in started:
        running.stop()


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
