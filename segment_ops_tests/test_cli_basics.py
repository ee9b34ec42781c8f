"""The command line's own manners: `--version`, `-v` after the subcommand, every default in `--help`, and
`.env` read as `dagster dev` reads it."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from segment_ops.cli import build_parser


def _cli(*args: str, cwd: Path | None = None,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "segment_ops.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, **(env or {})}, timeout=120)


def _subparsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, parser) of every subcommand, nested ones included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield (*path, name), child
                yield from _subparsers(child, (*path, name))


@pytest.mark.slow
def test_version_is_the_installed_distributions() -> None:
    done = _cli("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"segment-ops {version('segment_ops')}"


def test_every_option_with_a_default_shows_it_in_help() -> None:
    commands = dict(_subparsers(build_parser()))
    assert {("status",), ("rejected",), ("models",), ("replay",), ("check",)} <= set(commands)
    unshown = []
    for path, parser in commands.items():
        text = " ".join(parser.format_help().split())
        for action in parser._actions:
            shown = action.default not in (None, {}, [], "", argparse.SUPPRESS) and not isinstance(
                action.default, bool)
            said = f"(default: {action.default})" in text or "default" in (action.help or "").lower()
            if action.option_strings and shown and action.help is not None and not said:
                unshown.append(f"{' '.join(path)} {action.option_strings[0]}")
    assert unshown == []
    replay = " ".join(commands[("replay",)].format_help().split())
    assert "concurrent batch requests (default: 4)" in replay


def test_every_subcommand_takes_verbose_after_its_name() -> None:
    parser = build_parser()
    assert parser.parse_args(["check", "-v"]).verbose is True
    assert parser.parse_args(["-v", "check"]).verbose is True
    assert parser.parse_args(["check"]).verbose is False
    assert parser.parse_args(["state", "export", "-v", "replay", "/tmp/x"]).verbose is True
    for path, sub in _subparsers(parser):
        assert any("-v" in a.option_strings for a in sub._actions), f"{' '.join(path)} lacks -v"


@pytest.mark.slow
def test_dotenv_of_the_current_folder_is_read_and_wins_like_dagsters(tmp_path: Path) -> None:
    # Relative warehouse paths keep the check's table cell short enough to read whole.
    secret = "dotenv-write-key-must-not-show"
    (tmp_path / ".env").write_text(f"WAREHOUSE_URL=duckdb:///dotenv.duckdb\nSEGMENT_WRITE_KEY={secret}\n")
    done = _cli("check", "--only", "warehouse", "-v", cwd=tmp_path,
                env={"WAREHOUSE_URL": "duckdb:///environ.duckdb", "SEGMENT_OPS_HOME": str(tmp_path / "home")})
    assert done.returncode == 1  # the warehouse file does not exist: the check fails, naming it
    assert "dotenv.duckdb" in done.stdout  # the table wraps its cells: the file's name is one word of them
    assert "environ" not in done.stdout
    assert "loaded SEGMENT_WRITE_KEY, WAREHOUSE_URL from" in done.stderr
    assert secret not in done.stdout + done.stderr


@pytest.mark.slow
def test_without_dotenv_the_environment_is_used(tmp_path: Path) -> None:
    done = _cli("check", "--only", "warehouse", cwd=tmp_path,
                env={"WAREHOUSE_URL": "duckdb:///environ.duckdb", "SEGMENT_OPS_HOME": str(tmp_path / "home")})
    assert done.returncode == 1
    assert "environ.duckdb" in done.stdout
