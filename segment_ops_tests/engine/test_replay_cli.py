"""`segment-ops replay` as a user runs it: a subprocess against the sandbox, judged by exit code and
summary."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from segment_ops_tests.engine.conftest import track_calls, write_jsonl

PLAN_LINE = re.compile(r"^\S+: ([\d,]+) lines read = (.+)$", re.MULTILINE)
DELIVERY_LINE = re.compile(r"^  ([\d,]+)(?: of [\d,]+)? sent = (.+?);", re.MULTILINE)
TERM = re.compile(r"([\d,]+) ([^+]+?)(?: \+ |$)")


def replay_command(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "segment_ops.cli", "replay", *map(str, args)]


def run_replay(*args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the CLI with the test's environment (`ops_env` put SEGMENT_OPS_HOME and the sandbox URL in it)."""
    return subprocess.run(replay_command(*args), env=dict(os.environ), capture_output=True, text=True,
                          timeout=timeout)


def equation(total: str, terms: str) -> dict[str, int]:
    """The terms of a printed equation ("3,770 lines read = 3,766 to send + 3 rejected"), by what they count,
    checked: they add up to its left side."""
    parts = {what: int(count.replace(",", "")) for count, what in TERM.findall(terms)}
    assert sum(parts.values()) == int(total.replace(",", "")), (total, terms)
    return parts


def summary(output: str) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    """((to send, known from earlier runs, duplicates, rejected), (delivered, rejected by Segment, pending) or
    None), read from the two equations replay prints."""
    planned = PLAN_LINE.search(output)
    assert planned, output
    lines = equation(*planned.groups())
    known = sum(count for what, count in lines.items()
                if what.startswith(("already", "pending from", "planned earlier")))
    duplicates = lines.get("duplicate in the file", lines.get("duplicates in the file", 0))
    plan = (lines.get("to send", lines.get("would send", 0)), known, duplicates, lines.get("rejected", 0))
    if (delivered := DELIVERY_LINE.search(output)) is None:
        # "nothing to send": no delivery ran (another worker had planned and sent every line first).
        return plan, (0, 0, 0) if re.search(r"^nothing to send$", output, re.MULTILINE) else None
    sent = equation(*delivered.groups())
    return plan, (sent["delivered"], sent["rejected by Segment"], sent["still pending"])


@pytest.mark.slow
def test_all_lines_delivered_exits_0_with_a_summary(tmp_path, ops_env, clean_sandbox):
    path = write_jsonl(tmp_path / "events.jsonl", track_calls(120))

    done = run_replay(path)

    assert done.returncode == 0, done.stderr
    assert f"{path}: 120 lines read" in done.stdout
    assert summary(done.stdout) == ((120, 0, 0, 0), (120, 0, 0))
    assert clean_sandbox.stats()["segment"]["received"] == 120


def demo_like_file(path: Path) -> Path:
    """3,770 lines: 3,766 calls, 3 bad lines near the top, one call repeated (same messageId) at the end."""
    calls = track_calls(3_766)
    calls[5]["messageId"] = "repeated-once"
    return write_jsonl(path, [*calls[:11], b"{oops", {"type": "track", "userId": "u9"}, {"type": "nope"},
                              *calls[11:], calls[5]])


@pytest.mark.slow
def test_the_counts_add_up_and_say_what_each_line_became(tmp_path, ops_env, clean_sandbox):
    path = demo_like_file(tmp_path / "events.jsonl")

    first = run_replay(path)
    again = run_replay(path)

    assert first.returncode == again.returncode == 1  # rejected lines
    assert f"{path}: 3,770 lines read = 3,766 to send + 3 rejected + 1 duplicate in the file\n" in (
        first.stdout)
    assert "  3,766 sent = 3,766 delivered + 0 rejected by Segment + 0 still pending;" in first.stdout
    assert (f"{path}: 3,770 lines read = 0 to send + 3,766 already delivered + 3 rejected + 1 duplicate in "
            "the file\n") in again.stdout
    assert "nothing to send" in again.stdout and " sent = " not in again.stdout
    assert clean_sandbox.stats()["segment"]["received"] == 3_766


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_an_unreachable_destination_is_named_within_seconds_after_the_validation_report(tmp_path, ops_env):
    path = demo_like_file(tmp_path / "events.jsonl")
    port = closed_port()
    env = dict(os.environ, SEGMENT_TRACKING_URL=f"http://someone:hunter2@127.0.0.1:{port}/")
    started = time.monotonic()
    replay = subprocess.Popen(replay_command(path, "--skip-preflight"), env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, bufsize=1)
    said: list[str] = []
    try:
        while not any(line.startswith("retrying: ") for line in said):
            assert time.monotonic() - started < 20, said  # not after 96 s of retries in silence
            line = replay.stdout.readline()
            assert line, said  # it ended without saying it retries
            said.append(line)
        seconds = time.monotonic() - started
    finally:
        replay.kill()
        replay.wait(10)

    report = next(i for i, line in enumerate(said) if " lines read = " in line)
    retrying = next(i for i, line in enumerate(said) if line.startswith("retrying: "))
    assert report < retrying and "3,766 to send" in said[report]  # what the file holds comes first
    assert said[retrying].startswith(f"retrying: segment at 127.0.0.1:{port} /v1/batch failed (ConnectError")
    assert "attempt 1, next try in" in said[retrying] and "0 of 3,766 messages settled" in said[retrying]
    assert "hunter2" not in "".join(said) and "\r" not in "".join(said)
    assert seconds < 15  # the process start and planning included; the first retry comes at once


@pytest.mark.slow
def test_ctrl_c_while_retrying_says_nothing_is_lost_and_a_rerun_sends_it(tmp_path, ops_env, clean_sandbox):
    path = demo_like_file(tmp_path / "events.jsonl")
    env = dict(os.environ, SEGMENT_TRACKING_URL=f"http://127.0.0.1:{closed_port()}/")
    replay = subprocess.Popen(replay_command(path, "--skip-preflight"), env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, bufsize=1)
    said: list[str] = []
    try:
        while not any(line.startswith("retrying: ") for line in said):
            line = replay.stdout.readline()
            assert line, said
            said.append(line)
        replay.send_signal(signal.SIGINT)
        rest, _ = replay.communicate(timeout=60)
    finally:
        replay.kill()

    assert replay.returncode == 130
    assert "interrupted: nothing is lost" in rest and "Traceback" not in rest
    again = run_replay(path)  # the sandbox this time: what the stopped run planned is sent now
    assert "3,766 pending from an earlier run" in again.stdout
    assert "3,766 sent = 3,766 delivered" in again.stdout


@pytest.mark.slow
def test_rejected_lines_exit_1_and_are_listed_with_line_numbers(tmp_path, ops_env, clean_sandbox):
    path = write_jsonl(tmp_path / "mixed.jsonl",
                       [*track_calls(5), b"{oops", {"type": "track", "userId": "u9"}])

    done = run_replay(path)

    assert done.returncode == 1, done.stderr
    assert summary(done.stdout) == ((5, 0, 0, 2), (5, 0, 0))
    assert "rejected mixed.jsonl:6: invalid JSON" in done.stdout
    assert "rejected mixed.jsonl:7: track needs a non-empty event name" in done.stdout
    assert clean_sandbox.stats()["segment"]["received"] == 5


@pytest.mark.slow
def test_missing_file_exits_2(tmp_path, ops_env, clean_sandbox):
    done = run_replay(tmp_path / "nowhere.jsonl")

    assert done.returncode == 2
    assert "no such file" in done.stderr and "Traceback" not in done.stderr
    assert clean_sandbox.stats()["segment"]["requests"] == 0


@pytest.mark.slow
def test_an_unreachable_state_database_exits_2_with_a_one_line_error(tmp_path, ops_env, clean_sandbox,
                                                                     monkeypatch):
    path = tmp_path / "calls.jsonl"
    path.write_text('{"type": "identify", "userId": "u1"}\n')
    monkeypatch.setenv("SEGMENT_OPS_STATE_URL", "postgresql://someone:hunter2@127.0.0.1:1/nowhere")

    done = run_replay(path, "--skip-preflight")

    assert done.returncode == 2 and "Traceback" not in done.stderr and "hunter2" not in done.stderr
    assert "error: cannot reach the state database postgresql://127.0.0.1:1/nowhere" in done.stderr
    assert clean_sandbox.stats()["segment"]["requests"] == 0


@pytest.mark.slow
def test_unsupported_extension_exits_2(tmp_path, ops_env, clean_sandbox):
    path = tmp_path / "events.csv"
    path.write_text("type,userId\nidentify,u1\n")

    done = run_replay(path)

    assert done.returncode == 2
    assert "unsupported file type '.csv'" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow
def test_dry_run_prints_samples_and_sends_nothing(tmp_path, ops_env, clean_sandbox):
    path = write_jsonl(tmp_path / "events.jsonl", track_calls(25))

    done = run_replay(path, "--dry-run")

    assert done.returncode == 0, done.stderr
    planned, delivered = summary(done.stdout)
    assert planned == (25, 0, 0, 0) and delivered is None
    assert "25 lines read = 25 would send\n" in done.stdout and done.stdout.count("sample: {") == 3
    assert clean_sandbox.stats()["segment"]["requests"] == 0


@pytest.mark.slow
def test_undelivered_messages_exit_1_and_say_they_stay_pending(tmp_path, ops_env, clean_sandbox):
    path = write_jsonl(tmp_path / "events.jsonl", track_calls(10))
    # A wrong endpoint answers 404: final, not retried, so the messages stay pending (past the preflight gate,
    # which would refuse the unknown tracking host).
    env = dict(os.environ, SEGMENT_TRACKING_URL=f"{clean_sandbox.url}/segment/nowhere")
    failed = subprocess.run(replay_command(path, "--skip-preflight"), env=env, capture_output=True, text=True,
                            timeout=60)

    assert failed.returncode == 1
    assert ("10 message(s)" in failed.stderr and "stay pending" in failed.stderr
            and "HTTP 404" in failed.stderr)
    assert "Traceback" not in failed.stderr


@pytest.mark.slow
def test_killed_run_resumes_sending_only_what_is_missing(tmp_path, ops_env, clean_sandbox):
    count = 20_000
    path = write_jsonl(tmp_path / "big.jsonl", track_calls(count, pad=400))  # ~500 bytes: ~950 per batch
    # 5 requests/s: about 3 s of sending, so the run can be killed in the middle with acknowledgements
    # already recorded (the engine records them at least every second).
    first = subprocess.Popen(replay_command(path, "--rate-limit", "5"), env=dict(os.environ),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while clean_sandbox.stats()["segment"]["received"] < 15_000:
            assert first.poll() is None, "the first run ended before it could be killed"
            assert time.monotonic() < deadline, "the first run was too slow to reach the kill point"
            time.sleep(0.02)
        first.send_signal(signal.SIGKILL)
    finally:
        first.kill()
        first.wait(10)
    time.sleep(0.3)  # let the sandbox finish any request that fully arrived before the kill
    received_by_kill = clean_sandbox.stats()["segment"]["received"]
    assert received_by_kill < count, "the first run finished before the kill"

    second = run_replay(path)

    assert second.returncode == 0, second.stderr
    (planned, already, _, rejected), (delivered, _, pending) = summary(second.stdout)
    assert (planned, already, rejected, pending) == (0, count, 0, 0)  # nothing new to plan, all sent now
    stats = clean_sandbox.stats()["segment"]
    assert stats["received"] == count  # every message arrived, once as far as Segment is concerned
    # The second run sent what the first had not, plus what the first sent but had not yet recorded
    # (in flight, or acknowledged less than a second before the kill): those are Segment's duplicates.
    assert count - received_by_kill <= delivered < count
    duplicates = stats.get("duplicates", 0)
    assert duplicates == delivered - (count - received_by_kill)
    assert duplicates <= received_by_kill // 2  # most of what the first run delivered was not sent again


@pytest.mark.slow
def test_a_refused_batch_exits_1_with_a_one_line_error(tmp_path, ops_env, clean_sandbox, monkeypatch):
    # A wrong write key cannot be told from the answer (Segment says 200, spec §7); a wrong URL can.
    monkeypatch.setenv("SEGMENT_TRACKING_URL", f"{clean_sandbox.url}/segment/no-such-prefix")
    path = write_jsonl(tmp_path / "events.jsonl", track_calls(3))

    done = run_replay(path, "--skip-preflight")

    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    skipped, error = done.stderr.strip().splitlines()
    assert skipped.startswith("warning: preflight skipped (--skip-preflight)")
    assert error.startswith("error: ") and "HTTP 404" in error


# --- the preflight gate ----------------------------------------------------------------------------------

WRONG_WRITE_KEY = "wk-live-5ecret-value-0002"


@pytest.mark.slow  # the gate imports Dagster in the subprocess: about 1.5 s
def test_a_replay_under_a_wrong_write_key_is_refused_with_the_table_and_sends_nothing(
        tmp_path, ops_env, clean_sandbox, monkeypatch):
    monkeypatch.setenv("SEGMENT_WRITE_KEY", WRONG_WRITE_KEY)
    path = write_jsonl(tmp_path / "events.jsonl", track_calls(5))

    done = run_replay(path)

    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout.startswith("check ") and "segment_write_key" in done.stdout  # the preflight table
    assert "FAIL (auth/config)" in done.stdout and "SEGMENT_WRITE_KEY" in done.stdout
    assert done.stderr.startswith("error: preflight refused to send: segment_write_key")
    assert "Nothing was sent" in done.stderr and "--skip-preflight" in done.stderr
    assert "5ecret" not in done.stdout + done.stderr
    assert clean_sandbox.stats()["segment"]["requests"] == 0


@pytest.mark.slow
def test_skip_preflight_replays_under_a_wrong_write_key_and_segment_drops_it(
        tmp_path, ops_env, clean_sandbox, monkeypatch):
    monkeypatch.setenv("SEGMENT_WRITE_KEY", WRONG_WRITE_KEY)
    path = write_jsonl(tmp_path / "events.jsonl", track_calls(5))

    done = run_replay(path, "--skip-preflight")

    assert done.returncode == 0, done.stderr
    assert summary(done.stdout) == ((5, 0, 0, 0), (5, 0, 0))
    stats = clean_sandbox.stats()
    assert stats["segment"]["dropped"] == {"unknown_write_key": 5} and stats["segmentapis"]["requests"] == 0


@pytest.mark.slow
def test_a_replay_while_another_holds_the_ledger_says_so_waits_then_stops_cleanly(tmp_path, ops_env,
                                                                                 clean_sandbox):
    from segment_ops_tests.ops.test_delivery_health import locked_by_another_process

    path = write_jsonl(tmp_path / "events.jsonl", track_calls(5))
    ledger_file = ops_env / "staging" / "replay.duckdb"
    ledger_file.parent.mkdir(parents=True, exist_ok=True)

    with locked_by_another_process(ledger_file):
        done = run_replay(path, "--wait", "1")

    assert done.returncode == 2
    assert "another replay holds" in done.stderr and "waiting up to 1s" in done.stderr
    assert "still holds" in done.stderr and "after 1s; nothing was sent" in done.stderr
    assert "Traceback" not in done.stderr
    assert clean_sandbox.stats()["segment"]["received"] == 0


@pytest.mark.slow
def test_a_replay_waits_for_the_other_to_finish_then_sends(tmp_path, ops_env, clean_sandbox):
    from segment_ops_tests.ops.test_delivery_health import locked_by_another_process

    path = write_jsonl(tmp_path / "events.jsonl", track_calls(5))
    ledger_file = ops_env / "staging" / "replay.duckdb"
    ledger_file.parent.mkdir(parents=True, exist_ok=True)

    with locked_by_another_process(ledger_file):
        waiting = subprocess.Popen(replay_command(path, "--wait", "60"), env=dict(os.environ),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        said = ""
        while "waiting up to" not in said and (line := waiting.stderr.readline()):
            said += line  # until it says it waits (the lock is released as the block ends)
    out, err = waiting.communicate(timeout=60)
    err = said + err

    assert waiting.returncode == 0, err
    assert "another replay holds" in err
    assert summary(out) == ((5, 0, 0, 0), (5, 0, 0))
