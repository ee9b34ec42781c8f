"""`segment-ops status` and `segment-ops rejected` as an operator runs them: subprocesses reading a home whose
state real `segment-ops replay` runs against the sandbox produced."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from segment_ops.config import SETTINGS
from segment_ops.engine.pgstate import STATE_URL
from segment_ops.sandbox.server import RunningSandbox
from segment_ops_tests.conftest import fresh_state_database
from segment_ops_tests.engine.conftest import track_calls, write_jsonl

# What the replays of `replayed_home` leave in the replay ledger.
DELIVERED, PENDING, INPUT_REJECTED = 5, 3, 3


def segment_ops(*args: str | Path, env: dict[str, str] | None = None,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "segment_ops.cli", *map(str, args)],
                          env=env if env is not None else dict(os.environ), capture_output=True, text=True,
                          timeout=timeout)


def replay_line(stdout: str) -> str:
    """The status table's line of the replay sync."""
    return next(line for line in stdout.splitlines() if line.startswith("replay "))


@pytest.fixture(scope="module")
def replayed_home(tmp_path_factory: pytest.TempPathFactory, sandbox: RunningSandbox) -> dict[str, object]:
    """A home (built once) where one replay delivered 5 calls and refused 2 bad lines, and a later one, whose
    endpoint answered 404, left 3 calls pending and refused 1 bad line; with the time between the two."""
    folder = tmp_path_factory.mktemp("status_home")
    home = folder / "home"
    env = {k: v for k, v in os.environ.items() if k not in {s.name for s in SETTINGS}}
    env.update(SEGMENT_OPS_HOME=str(home), SEGMENT_OPS_SANDBOX_URL=sandbox.url)
    mixed = write_jsonl(folder / "mixed.jsonl",
                        [*track_calls(5), b"{oops", {"type": "track", "userId": "u9"}])
    first = segment_ops("replay", mixed, "--skip-preflight", env=env)
    assert first.returncode == 1 and "Traceback" not in first.stderr, first.stdout + first.stderr
    between = datetime.now(UTC)
    time.sleep(0.05)
    late = write_jsonl(folder / "late.jsonl", [*track_calls(3, prefix="p"), {"type": "alias"}])
    unsent = segment_ops("replay", late, "--skip-preflight",
                         env=dict(env, SEGMENT_TRACKING_URL=f"{sandbox.url}/segment/nowhere"))
    assert unsent.returncode == 1 and "404" in unsent.stderr, unsent.stdout + unsent.stderr
    return {"home": home, "between": between}


@pytest.fixture
def home(replayed_home: dict[str, object], ops_env: Path) -> Path:
    """This test's copy of the replayed home, as SEGMENT_OPS_HOME."""
    shutil.copytree(replayed_home["home"], ops_env, dirs_exist_ok=True)
    return ops_env


# --- status ----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_status_shows_a_replays_pending_delivered_and_rejected_counts(home):
    done = segment_ops("status")

    assert done.returncode == 0, done.stderr
    header, *_ = done.stdout.splitlines()
    assert header.split() == ["SYNC", "LAST", "ACTIVITY", "RUN", "PENDING", "DELIVERED", "VERIFIED",
                              "REJECTED", "OLDEST", "PENDING"]
    line = replay_line(done.stdout)
    assert re.search(rf"\bcli-[0-9a-f]{{12}}\s+{PENDING}\s+{DELIVERED}\s+0\s+{INPUT_REJECTED} rows \+ 0 by "
                     rf"destination\s+\d+s$", line), line


@pytest.mark.slow
def test_status_json_gives_every_count_and_the_age_of_the_oldest_pending(home, replayed_home):
    done = segment_ops("status", "--json")

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["home"] == str(home)
    (replay,) = report["syncs"]
    assert (replay["name"], replay["sync"], replay["state"]) == ("replay", "replay", "ok")
    assert (replay["pending"], replay["delivered"], replay["verified"]) == (PENDING, DELIVERED, 0)
    assert (replay["rejected_rows"], replay["rejected_by_destination"]) == (INPUT_REJECTED, 0)
    assert replay["counts"]["pending"] == PENDING and replay["counts"]["awaiting_ack"] == 0
    assert replay["last_run_id"].startswith("cli-")
    # The oldest pending message is the second replay's: the first one's were delivered.
    oldest = datetime.fromisoformat(replay["oldest_pending_at"])
    assert replayed_home["between"] < oldest <= datetime.fromisoformat(report["at"])
    assert 0 <= replay["oldest_pending_age_seconds"] < 600


@pytest.mark.slow
def test_status_of_an_empty_home_says_so_and_exits_0(ops_env):
    done = segment_ops("status")
    as_json = segment_ops("status", "--json")

    assert done.returncode == 0 and as_json.returncode == 0, done.stderr + as_json.stderr
    assert done.stdout.startswith(f"No sync has state in {ops_env / 'staging'} yet")
    assert json.loads(as_json.stdout)["syncs"] == []


@pytest.mark.slow
def test_status_names_an_unreadable_file_shows_the_others_and_exits_1(home):
    (home / "staging" / "broken.duckdb").write_text("not a database")

    done = segment_ops("status")

    assert done.returncode == 1 and "Traceback" not in done.stderr
    broken = next(line for line in done.stdout.splitlines() if line.startswith("broken "))
    assert "IO Error" in broken and "broken.duckdb" in broken  # the table cuts a long path's message short
    assert f"{INPUT_REJECTED} rows + 0 by destination" in replay_line(done.stdout)


HOLD = """
import sys, time
from segment_ops.engine.store import staging
with staging(sys.argv[1], lock_timeout=0):
    print("holding", flush=True)
    time.sleep(60)
"""


@pytest.fixture
def held_replay_ledger(home: Path) -> Iterator[Path]:
    """The replay ledger held for writing by another process, as a running replay holds it."""
    path = home / "staging" / "replay.duckdb"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        yield path
    finally:
        holder.kill()
        holder.wait(10)


@pytest.mark.slow
def test_status_shows_a_file_a_run_holds_as_busy_without_waiting(held_replay_ledger):
    started = time.monotonic()
    done = segment_ops("status", timeout=30)
    as_json = segment_ops("status", "--json", timeout=30)

    assert done.returncode == 0 and as_json.returncode == 0, done.stderr + as_json.stderr
    assert replay_line(done.stdout).split(None, 1)[1].strip() == "busy (a run holds it)"
    assert json.loads(as_json.stdout)["syncs"][0]["state"] == "busy"
    assert time.monotonic() - started < 20  # the store's wait for a lock is 60 s: not waited for


@pytest.mark.slow
def test_rejected_of_a_file_a_run_holds_says_busy_and_exits_1(held_replay_ledger):
    done = segment_ops("rejected", "replay", timeout=30)

    assert done.returncode == 1
    assert "replay: busy (a run holds it)" in done.stderr and "Traceback" not in done.stderr


# --- rejected --------------------------------------------------------------------------------------------

def table_rows(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines()[1:] if line.strip() and not line.startswith("(")]


@pytest.mark.slow
def test_rejected_lists_each_row_newest_first_with_source_reason_and_run(home):
    done = segment_ops("rejected", "replay")

    assert done.returncode == 0, done.stderr
    header = done.stdout.splitlines()[0].split()
    assert header == ["REJECTED", "AT", "SOURCE", "KEY", "REASON", "RUN", "TIMES"]
    rows = table_rows(done.stdout)
    sources = [row.split()[2] for row in rows]
    assert sources[0] == "late.jsonl:4"  # the later run's (the two of one run may share a timestamp)
    assert sorted(sources[1:]) == ["mixed.jsonl:6", "mixed.jsonl:7"]
    assert "invalid JSON" in next(r for r in rows if "mixed.jsonl:6" in r)
    assert re.search(r"mixed\.jsonl:7\s+u9\s+track needs a non-empty event name\s+cli-[0-9a-f]{12}",
                     done.stdout)


@pytest.mark.slow
def test_rejected_filters_by_reason_time_and_count(home, replayed_home):
    by_reason = segment_ops("rejected", "replay", "--reason", "INVALID json")
    since = segment_ops("rejected", "replay", "--since", replayed_home["between"].isoformat())
    newest = segment_ops("rejected", "replay", "--limit", "1")

    assert by_reason.returncode == since.returncode == newest.returncode == 0
    assert [r.split()[2] for r in table_rows(by_reason.stdout)] == ["mixed.jsonl:6"]
    assert [r.split()[2] for r in table_rows(since.stdout)] == ["late.jsonl:4"]
    assert [r.split()[2] for r in table_rows(newest.stdout)] == ["late.jsonl:4"]
    assert "(the newest 1; --limit 0 lists them all)" in newest.stdout


@pytest.mark.slow
def test_rejected_json_holds_every_field_and_the_stored_record(home):
    done = segment_ops("rejected", "replay", "--json")

    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert [r["source"] for r in rows][0] == "late.jsonl:4" and len(rows) == INPUT_REJECTED
    oops = next(r for r in rows if r["source"] == "mixed.jsonl:6")
    assert set(oops) == {"sync", "rejected_at", "source", "record_key", "reason", "run_id", "record", "times",
                         "by_destination"}
    assert (oops["sync"], oops["record"], oops["times"]) == ("replay", "{oops", 1)
    assert oops["by_destination"] is False
    assert oops["reason"].startswith("invalid JSON") and oops["run_id"].startswith("cli-")
    datetime.fromisoformat(oops["rejected_at"])


@pytest.mark.slow
def test_rejected_with_a_filter_matching_nothing_says_so_and_exits_0(home):
    done = segment_ops("rejected", "replay", "--reason", "no such reason")
    as_json = segment_ops("rejected", "replay", "--reason", "no such reason", "--json")

    assert done.returncode == 0 and as_json.returncode == 0
    assert done.stdout.strip() == "replay: nothing rejected matching the filters."
    assert json.loads(as_json.stdout) == []


@pytest.mark.slow
def test_rejected_of_a_sync_that_rejected_nothing_says_so(tmp_path, ops_env, clean_sandbox):
    path = write_jsonl(tmp_path / "good.jsonl", track_calls(4))
    assert segment_ops("replay", path, "--skip-preflight").returncode == 0

    done = segment_ops("rejected", "replay")

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "replay: nothing rejected."


@pytest.mark.slow
def test_rejected_of_an_unknown_sync_exits_2_listing_the_known_ones(home):
    done = segment_ops("rejected", "reverse_etl_nothing")

    assert done.returncode == 2
    assert done.stderr.strip() == ("error: no sync named 'reverse_etl_nothing' has state in this home; the "
                                   "syncs are: replay")


@pytest.mark.slow
def test_rejected_refuses_a_malformed_since_with_exit_2(home):
    done = segment_ops("rejected", "replay", "--since", "yesterday")

    assert done.returncode == 2 and "expected an ISO 8601 date or time" in done.stderr


# --- messages a destination refused -------------------------------------------------------------------

REFUSE = """
import sys
from segment_ops.engine.ledger import Ledger, PlannedMessage
from segment_ops.engine.store import staging
with staging(sys.argv[1]) as con:
    ledger = Ledger(con)
    plan = ledger.add_planned("replay", [PlannedMessage("m-1", "u1", "track", b'{"n": 1}'),
                                         PlannedMessage("m-2", "u2", "track", b'{"n": 2}')], run_id="run-a")
    seq = plan.seqs[0]
    # What a delivery records when Segment refuses a call (engine/delivery.py `_record`).
    ledger.log_outcomes("replay", [(seq, "rejected", 1, "code 6: invalid data format")])
    ledger.reject_refused("replay", [(seq, "code 6: invalid data format")],
                          destination="segment", run_id="run-a")
"""


@pytest.mark.slow
def test_status_counts_messages_a_destination_refused_apart_from_input_rows(home):
    subprocess.run([sys.executable, "-c", REFUSE, str(home / "staging" / "replay.duckdb")], check=True)

    status = json.loads(segment_ops("status", "--json").stdout)["syncs"][0]
    listed = json.loads(segment_ops("rejected", "replay", "--json").stdout)

    assert (status["rejected_rows"], status["rejected_by_destination"]) == (INPUT_REJECTED, 1)
    assert status["pending"] == PENDING + 1
    refused = next(r for r in listed if r["source"] == "segment")
    assert refused["by_destination"] is True and refused["record"] == '{"n": 1}'
    assert f"{INPUT_REJECTED} rows + 1 by destination" in replay_line(segment_ops("status").stdout)


SECRET_KEY = "wk-live-5ecret-value-0003"


@pytest.mark.slow
def test_rejected_never_prints_a_settings_secret(tmp_path, ops_env, clean_sandbox, monkeypatch):
    monkeypatch.setenv("SEGMENT_WRITE_KEY", SECRET_KEY)
    path = write_jsonl(tmp_path / "leaky.jsonl", [{"type": "track", "userId": "u1",
                                                   "properties": {"pasted": SECRET_KEY}}])
    segment_ops("replay", path, "--skip-preflight")

    table = segment_ops("rejected", "replay")
    as_json = segment_ops("rejected", "replay", "--json")

    assert table.returncode == as_json.returncode == 0, table.stderr + as_json.stderr
    assert SECRET_KEY not in table.stdout + as_json.stdout
    (row,) = json.loads(as_json.stdout)
    assert '"pasted":"***"' in row["record"].replace(" ", "")


# --- state in PostgreSQL ----------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.postgres
def test_status_reads_syncs_only_the_state_database_holds_and_a_locked_one_as_busy(
        tmp_path, ops_env, clean_sandbox, monkeypatch):
    with fresh_state_database("so_status") as url:
        monkeypatch.setenv(STATE_URL, url)
        path = write_jsonl(tmp_path / "mixed.jsonl", [*track_calls(4), b"{oops"])
        assert segment_ops("replay", path, "--skip-preflight").returncode == 1
        staging = ops_env / "staging" / "replay.duckdb"
        staging.unlink()  # another machine's home: the state is only in the database

        listed = json.loads(segment_ops("status", "--json").stdout)["syncs"]
        holder = subprocess.Popen([sys.executable, "-c", HOLD, str(staging)], stdout=subprocess.PIPE,
                                  text=True)
        try:
            assert holder.stdout.readline().strip() == "holding"
            busy = segment_ops("status", timeout=30)
        finally:
            holder.kill()
            holder.wait(10)

    assert [(s["name"], s["delivered"], s["pending"], s["rejected_rows"]) for s in listed] == [
        ("replay", 4, 0, 1)]
    assert busy.returncode == 0 and replay_line(busy.stdout).split(None, 1)[1] == "busy (a run holds it)"


def test_a_note_on_a_sync_is_said_in_full_below_the_table(monkeypatch, capsys, tmp_path):
    # A long note in the last column would be cut at the column's width; it is flagged there and said below.
    import argparse

    from segment_ops.commands import status

    note = "a stopped delivery's answers are not logged yet: the sync's next run logs them"
    monkeypatch.setenv("SEGMENT_OPS_HOME", str(tmp_path))
    monkeypatch.setattr("segment_ops.engine.store.staging_files", lambda home: [tmp_path / "replay.duckdb"])
    monkeypatch.setattr(status, "read_status", lambda path: [status.SyncStatus(
        "replay", "replay", pending=3, oldest_pending_at=datetime.now(UTC), detail=note)])

    assert status.run_status(argparse.Namespace(json=False)) == 0

    out = capsys.readouterr().out
    [line] = [text for text in out.splitlines() if text.startswith("replay ")]
    assert line.rstrip().endswith("*") and note not in line
    assert f"* replay: {note}" in out.splitlines()
