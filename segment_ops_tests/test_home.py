"""SEGMENT_OPS_HOME does not depend on the current directory; an old `./.segment_ops` store is refused."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from segment_ops.config import SETTINGS, HomeConflictError, load_settings
from segment_ops.resources import build_resources
from segment_ops_tests.engine.conftest import track_calls, write_jsonl
from segment_ops_tests.engine.test_replay_cli import replay_command, summary


@pytest.fixture
def user_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sandbox) -> Path:
    """A user's environment with SEGMENT_OPS_HOME unset: HOME in a tmp dir, vendors on the sandbox."""
    for setting in SETTINGS:
        monkeypatch.delenv(setting.name, raising=False)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    home = tmp_path / "user"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("SEGMENT_OPS_SANDBOX_URL", sandbox.url)
    return home


def old_store(folder: Path) -> Path:
    """A store at the old default `folder/.segment_ops`, holding a replay ledger."""
    ledger = folder / ".segment_ops" / "staging" / "replay.duckdb"
    ledger.parent.mkdir(parents=True)
    ledger.write_bytes(b"not empty")
    return ledger.parents[1]


def cli(*args: str | Path, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "segment_ops.cli", *map(str, args)], cwd=cwd,
                          env=dict(os.environ), capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_replay_from_another_folder_uses_the_same_ledger_and_sends_nothing_again(tmp_path, user_home,
                                                                                 clean_sandbox):
    path = write_jsonl(tmp_path / "events.jsonl", track_calls(30))
    first_cwd, second_cwd = tmp_path / "a", tmp_path / "b"
    first_cwd.mkdir()
    second_cwd.mkdir()

    first = subprocess.run(replay_command(path), cwd=first_cwd, env=dict(os.environ), capture_output=True,
                           text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert summary(first.stdout) == ((30, 0, 0, 0), (30, 0, 0))
    requests = clean_sandbox.stats()["segment"]["requests"]

    second = subprocess.run(replay_command(path), cwd=second_cwd, env=dict(os.environ), capture_output=True,
                            text=True, timeout=60)

    assert second.returncode == 0, second.stderr
    assert summary(second.stdout)[0] == (0, 30, 0, 0)
    assert clean_sandbox.stats()["segment"]["requests"] == requests
    assert (user_home / ".local" / "share" / "segment_ops" / "staging" / "replay.duckdb").is_file()
    assert not (first_cwd / ".segment_ops").exists() and not (second_cwd / ".segment_ops").exists()


def test_default_home_is_under_xdg_data_home_when_it_is_set(tmp_path):
    env = {"HOME": str(tmp_path / "user"), "XDG_DATA_HOME": str(tmp_path / "data")}
    assert load_settings(env).home == tmp_path / "data" / "segment_ops"


def test_a_relative_xdg_data_home_is_ignored_as_the_spec_says(tmp_path):
    env = {"HOME": str(tmp_path), "XDG_DATA_HOME": "relative/data"}
    assert load_settings(env).home == tmp_path / ".local" / "share" / "segment_ops"


@pytest.mark.slow
def test_an_old_store_in_the_current_folder_is_refused_with_one_line_naming_both_ways_out(tmp_path, user_home,
                                                                                        clean_sandbox):
    old = old_store(tmp_path)
    new = user_home / ".local" / "share" / "segment_ops"
    path = write_jsonl(tmp_path / "events.jsonl", track_calls(3))

    done = cli("replay", path, cwd=tmp_path)

    assert done.returncode == 2
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.startswith("error: SEGMENT_OPS_HOME is unset")
    assert f"export SEGMENT_OPS_HOME={old}" in done.stderr
    assert f"mkdir -p {new.parent} && mv {old} {new}" in done.stderr
    assert clean_sandbox.stats()["segment"]["requests"] == 0
    assert not new.exists()


def test_the_printed_move_makes_the_old_store_the_new_default(tmp_path, user_home, monkeypatch):
    old_store(tmp_path)
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    with pytest.raises(HomeConflictError) as refused:
        _ = settings.home
    move = str(refused.value).rsplit("move it to the new default: ", 1)[1]

    subprocess.run(move, shell=True, check=True)

    home = load_settings().home
    assert (home / "staging" / "replay.duckdb").read_bytes() == b"not empty"
    assert not (tmp_path / ".segment_ops").exists()


@pytest.mark.parametrize("command", [("demo",), ("webhooks", "--port", "0")])
def test_demo_and_webhook_receiver_refuse_an_old_store_before_starting(tmp_path, user_home, command):
    old_store(tmp_path)

    done = cli(*command, cwd=tmp_path)

    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.startswith("error: SEGMENT_OPS_HOME is unset") and "Traceback" not in done.stderr
    assert not (user_home / ".local").exists()


def test_the_code_location_refuses_an_old_store_when_it_binds_the_resources(tmp_path, user_home, monkeypatch):
    old_store(tmp_path)
    monkeypatch.chdir(tmp_path)

    with pytest.raises(HomeConflictError, match="holds state; refusing to start empty beside it"):
        build_resources()


def test_settings_that_do_not_use_the_home_still_read_beside_an_old_store(tmp_path, user_home, monkeypatch):
    old_store(tmp_path)
    monkeypatch.chdir(tmp_path)
    settings = load_settings()

    assert settings["PENDO_TIMEZONE"] == "America/New_York"
    with pytest.raises(HomeConflictError):
        settings["WAREHOUSE_URL"]  # its default is a file in the home


def test_both_stores_holding_state_are_refused(tmp_path, user_home, monkeypatch):
    old = old_store(tmp_path)
    new = user_home / ".local" / "share" / "segment_ops"
    (new / "inbox" / "replay").mkdir(parents=True)
    (new / "inbox" / "replay" / "events.jsonl").write_text("{}\n")
    monkeypatch.chdir(tmp_path)

    with pytest.raises(HomeConflictError) as refused:
        _ = load_settings().home

    message = str(refused.value)
    assert f"both its default {new} and {old}" in message
    assert f"export SEGMENT_OPS_HOME={old}" in message and f"export SEGMENT_OPS_HOME={new}" in message


def test_an_old_folder_without_files_is_not_a_store(tmp_path, user_home, monkeypatch):
    (tmp_path / ".segment_ops" / "staging").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)

    assert load_settings().home == user_home / ".local" / "share" / "segment_ops"


def test_an_explicit_home_is_used_as_is_even_beside_an_old_store(tmp_path, user_home, monkeypatch):
    old_store(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SEGMENT_OPS_HOME", str(tmp_path / "chosen"))

    assert load_settings().home == tmp_path / "chosen"


def test_a_relative_explicit_home_is_resolved_against_the_current_folder(tmp_path, user_home, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SEGMENT_OPS_HOME", "state")

    settings = load_settings()

    assert settings.home == tmp_path / "state"
    assert settings["SEGMENT_OPS_HOME"] == str(tmp_path / "state")
