"""Credentials never leak: not into logs (ours, httpx's, httpcore's), exception texts, Dagster's event log,
run records, the CLI's output, or the repr of resources and clients.

Every credential is set through the environment to a distinctive value the sandbox rejects (Segment's
Tracking API, which checks no write key, drops the data instead), so every error path runs.
"""

from __future__ import annotations

import base64
import logging
import os
import subprocess
import sys
import traceback
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from segment_ops.clients.base import VendorAuthError
from segment_ops.config import SECRET_NAMES
from segment_ops.engine.pgstate import STATE_URL
from segment_ops.resources import build_resources
from segment_ops.syncs.replay.defs import replayed_events
from segment_ops_tests.conftest import fresh_state_database

# Every secret of the configuration contract gets a distinctive value the sandbox rejects.
SECRETS = {name: f"{name.lower()}-LEAKCHECK-3f9a1c7e5b" for name in SECRET_NAMES}
BACKENDS = ["duckdb", pytest.param("postgres", marks=pytest.mark.postgres)]  # where the state is


def forbidden() -> list[str]:
    """Each secret as it is, and the forms it takes on the wire (Basic auth's base64 of 'key:')."""
    values = list(SECRETS.values())
    values += [base64.b64encode(f"{v}:".encode()).decode() for v in SECRETS.values()]
    return values


def assert_no_secret(texts: Iterable[str], where: str) -> None:
    for text in texts:
        for secret in forbidden():
            assert secret not in text, f"a credential leaked into {where}: {text[:300]!r}"


@pytest.fixture
def secret_env(ops_env: Path, monkeypatch: pytest.MonkeyPatch, clean_sandbox) -> Path:
    for name, value in SECRETS.items():
        if name != STATE_URL:  # a URL, whose password is the secret: set by `state_in_postgres`
            monkeypatch.setenv(name, value)
    return ops_env


@pytest.fixture
def state_in_postgres(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """With the parameter "postgres", the state is in a fresh database of this machine's PostgreSQL, reached
    with the LEAKCHECK value as the password (its trust authentication accepts any)."""
    if request.param != "postgres":
        yield
        return
    with fresh_state_database("so_secrets") as url:
        monkeypatch.setenv(STATE_URL, url.replace("postgres@", f"postgres:{SECRETS[STATE_URL]}@", 1))
        yield


@pytest.fixture
def all_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    for name in ("httpx", "httpcore", "segment_ops", "dagster"):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


def log_texts(caplog: pytest.LogCaptureFixture) -> list[str]:
    texts = [caplog.text]
    for record in caplog.records:
        texts += [record.getMessage(), repr(record.args), str(record.__dict__)]
    return texts


def exception_texts(exc: BaseException) -> list[str]:
    return [str(exc), repr(exc), repr(exc.args), "".join(traceback.format_exception(exc)), str(vars(exc))]


def failing_calls(resources: dict) -> dict[str, object]:
    """One call per vendor client that checks its credential, each rejected by the sandbox for it. (Segment's
    Tracking API checks none: a wrong write key is answered 200, spec §7; see the test below.)"""
    now = datetime.now(UTC)
    return {
        "segment_public_api": lambda: list(
            resources["segment_public_api"].get_client().iter_audit_events(now - timedelta(hours=1), now)),
        "pendo": lambda: resources["pendo"].get_client().aggregate([{"source": {"accounts": None}}]),
        "splunk": lambda: resources["splunk"].get_client().send_batch([b'{"event": "hello"}']),
        "segment_profiles": lambda: resources["segment_profiles"].get_client().get_traits("user_id:u1"),
    }


def test_client_auth_failures_leak_no_credential(secret_env, all_logs):
    with dg.build_resources(build_resources()) as built:
        resources = {name: getattr(built, name) for name in ("segment", "segment_public_api", "pendo",
                                                             "splunk", "segment_profiles")}
        for vendor, call in failing_calls(resources).items():
            with pytest.raises(VendorAuthError) as caught:
                call()
            assert caught.value.status in (401, 403), vendor
            assert_no_secret(exception_texts(caught.value), f"the {vendor} exception")

    assert any(r.name.startswith("httpx") for r in all_logs.records)  # the HTTP layer did log
    assert_no_secret(log_texts(all_logs), "the logs")


def test_a_silently_dropped_batch_leaks_no_write_key(secret_env, all_logs, clean_sandbox):
    with dg.build_resources(build_resources()) as built:
        built.segment.get_client().send_batch([b'{"type":"identify","userId":"u1"}'])

    assert clean_sandbox.stats()["segment"]["dropped"] == {"unknown_write_key": 1}
    assert any(r.name.startswith("httpx") for r in all_logs.records)
    assert_no_secret(log_texts(all_logs), "the logs")


def test_clients_repr_shows_no_credential(secret_env):
    with dg.build_resources(build_resources()) as built:
        clients = [built.segment.get_client(), built.segment_public_api.get_client(),
                   built.pendo.get_client(), built.splunk.get_client()]
    texts = []
    for client in clients:
        texts += [repr(client), str(client), repr(client.http), repr(client.http.auth), str(client.http.auth)]
    assert_no_secret(texts, "a client repr")


def test_unresolved_resources_show_env_var_names_not_values(secret_env):
    resources = build_resources()

    assert_no_secret([repr(resources), str(resources)], "a resource repr")
    assert resources["segment"].write_key == "SEGMENT_WRITE_KEY"


def test_resolved_resources_repr_shows_no_credential(secret_env):
    with dg.build_resources(build_resources()) as built:
        texts = [repr(built.segment), str(built.segment), repr(built.segment_public_api), repr(built.pendo),
                 repr(built.splunk)]

    assert_no_secret(texts, "a resolved resource repr")


@pytest.fixture
def unreachable_segment(secret_env: Path, monkeypatch: pytest.MonkeyPatch, clean_sandbox) -> None:
    """Segment's Tracking URL points at a path the sandbox does not serve (404): the batch fails with the
    write key on the request, since a wrong write key alone fails nothing (spec §7)."""
    monkeypatch.setenv("SEGMENT_TRACKING_URL", f"{clean_sandbox.url}/segment/no-such-prefix")


@pytest.mark.slow
@pytest.mark.parametrize("state_in_postgres", BACKENDS, indirect=True)
def test_failed_replay_materialization_leaks_no_credential(tmp_path, unreachable_segment, all_logs,
                                                           clean_sandbox, state_in_postgres):
    path = tmp_path / "calls.jsonl"
    path.write_text('{"type": "identify", "userId": "u1", "traits": {"plan": "pro"}}\n')
    instance = dg.DagsterInstance.ephemeral()

    result = dg.materialize([replayed_events], resources=build_resources(), instance=instance,
                            run_config={"ops": {"segment__replayed_events": {"config": {"path": str(path)}}}},
                            raise_on_error=False)

    assert not result.success
    assert clean_sandbox.stats()["segment"]["received"] == 0
    events = instance.all_logs(result.run_id)
    failures = [e for e in events if e.dagster_event and e.dagster_event.is_step_failure]
    assert failures and "HTTP 404" in str(failures[0])
    assert_no_secret([str(event) for event in events], "Dagster's event log")
    run = instance.get_run_by_id(result.run_id)
    assert_no_secret([str(run), str(run.run_config), str(run.tags)], "the run record")
    assert_no_secret(log_texts(all_logs), "the logs")


@pytest.mark.slow
@pytest.mark.parametrize("state_in_postgres", BACKENDS, indirect=True)
def test_cli_failure_prints_no_credential(tmp_path, unreachable_segment, clean_sandbox, state_in_postgres):
    path = tmp_path / "calls.jsonl"
    path.write_text('{"type": "identify", "userId": "u1"}\n')

    done = subprocess.run([sys.executable, "-m", "segment_ops.cli", "-v", "replay", str(path)],
                          env=dict(os.environ), capture_output=True, text=True, timeout=60)

    assert done.returncode != 0 and "404" in (done.stdout + done.stderr)
    assert_no_secret([done.stdout, done.stderr], "the CLI's output")
