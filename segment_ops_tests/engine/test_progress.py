"""The delivery progress bar (`engine/progress.py`): drawn on a terminal only, told once per batch, and retry
notices said at once but not per request."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time

import pytest

from segment_ops.clients.base import RetryEvent
from segment_ops.engine.delivery import deliver_pending
from segment_ops.engine.ledger import PlannedMessage
from segment_ops.engine.progress import DeliveryProgress, bar_wanted, host_of
from segment_ops_tests.engine.conftest import track_calls, write_jsonl


class FakeTty(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


class Takes:
    """A destination that takes every batch of at most 200 bytes."""

    name = "takes"
    max_batch_bytes = 200

    def __init__(self) -> None:
        self.batches = 0

    def send_batch(self, payloads, *, on_retry=None) -> None:
        self.batches += 1


class Recording(DeliveryProgress):
    def __init__(self) -> None:
        super().__init__("recording", bar=False, retry_notices=False)
        self.advances: list[int] = []

    def advance(self, messages: int, *, answered: bool = True) -> None:
        self.advances.append(messages)
        super().advance(messages, answered=answered)


def plan_messages(ledger, count: int, sync: str = "takes") -> None:
    ledger.add_planned(sync, [PlannedMessage(f"m{i}", f"k{i}", "x", b'{"n":%d,"pad":"%s"}' % (i, b"x" * 60))
                              for i in range(count)])


@pytest.fixture(autouse=True)
def _not_in_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("SEGMENT_OPS_PROGRESS", raising=False)


def test_no_bar_and_no_output_when_the_stream_is_not_a_terminal():
    stream = io.StringIO()

    with DeliveryProgress("replay", stream=stream) as progress:
        progress.start(100)
        progress.advance(60)
        progress.advance(40)

    assert not progress.bar and stream.getvalue() == ""


def test_a_bar_with_count_rate_and_eta_on_a_terminal():
    stream = FakeTty()

    with DeliveryProgress("replay", stream=stream) as progress:
        progress.start(3_766)
        progress.advance(1_883)
        time.sleep(0.6)  # past the bar's redraw interval
        progress.advance(1_883)

    drawn = stream.getvalue()
    assert progress.bar and "\r" in drawn and "replay" in drawn
    assert "3766/3766" in drawn and "msg/s" in drawn and "<00:00" in drawn  # count, rate, time left


@pytest.mark.parametrize("setting", [{"CI": "true"}, {"SEGMENT_OPS_PROGRESS": "0"},
                                     {"SEGMENT_OPS_PROGRESS": "off"}])
def test_ci_or_the_setting_turns_the_bar_off_even_on_a_terminal(monkeypatch, setting):
    for name, value in setting.items():
        monkeypatch.setenv(name, value)

    assert not bar_wanted(FakeTty())


def test_retries_are_said_at_once_then_not_per_request():
    stream = io.StringIO()
    progress = DeliveryProgress("replay", destination=host_of("https://user:s3cret@api.segment.io/v1"),
                                stream=stream, retry_notices=True)
    progress.start(3_766)

    for attempt in range(1, 6):
        progress.retrying(RetryEvent("segment", "/v1/batch", attempt, 0.5, "HTTP 503: unavailable"))

    lines = stream.getvalue().splitlines()
    assert lines == ["retrying: segment at api.segment.io /v1/batch failed (HTTP 503: unavailable); "
                     "attempt 1, next try in 0.5s; 0 of 3,766 messages settled so far"]


def test_a_retry_before_a_long_wait_is_said_after_a_short_gap(monkeypatch):
    clock = iter([0.0, 3.0, 5.0])
    monkeypatch.setattr("segment_ops.engine.progress.time.monotonic", lambda: next(clock))
    stream = io.StringIO()
    progress = DeliveryProgress("replay", stream=stream, retry_notices=True)

    progress.retrying(RetryEvent("segment", "/v1/batch", 1, 0.0, "ConnectError"))
    progress.retrying(RetryEvent("segment", "/v1/batch", 2, 0.5, "ConnectError"))  # short wait: quiet
    progress.retrying(RetryEvent("segment", "/v1/batch", 3, 8.0, "ConnectError"))  # 8 s of silence next

    said = stream.getvalue()
    assert "attempt 1," in said and "attempt 2," not in said
    assert "attempt 3, next try in 8.0s, 1 more retried request(s) since the last notice" in said


def test_without_a_terminal_a_log_gets_one_progress_line_per_interval(monkeypatch):
    clock = iter([0.0, 10.0, 31.0, 40.0, 62.0])
    monkeypatch.setattr("segment_ops.engine.progress.time.monotonic", lambda: next(clock))
    lines: list[str] = []
    progress = DeliveryProgress("reverse_etl_big", stream=io.StringIO(), log=lines.append, log_seconds=30)
    progress.start(1_000_000)  # at 0 s

    for _ in range(4):  # batches answered at 10, 31, 40 and 62 s
        progress.advance(100_000)

    assert lines == [
        "reverse_etl_big: 200,000 of 1,000,000 messages settled so far (20%), 6,452 msg/s, about 2m 04s left",
        "reverse_etl_big: 400,000 of 1,000,000 messages settled so far (40%), 6,452 msg/s, about 1m 33s left",
    ]


def test_a_log_takes_the_retry_notices_and_a_short_delivery_logs_no_progress(ledger):
    lines: list[str] = []
    progress = DeliveryProgress("takes", stream=io.StringIO(), log=lines.append)
    plan_messages(ledger, 30)

    deliver_pending(ledger, "takes", Takes(), progress=progress)
    progress.retrying(RetryEvent("segment", "/v1/batch", 1, 0.5, "HTTP 503: unavailable"))

    assert lines == ["retrying: segment /v1/batch failed (HTTP 503: unavailable); attempt 1, next try in "
                     "0.5s; 30 of 30 messages settled so far"]


def test_on_a_terminal_the_bar_wins_over_the_log():
    lines: list[str] = []
    progress = DeliveryProgress("replay", stream=FakeTty(), log=lines.append, log_seconds=0)
    progress.start(10)
    progress.advance(10)
    progress.close()

    assert lines == [] and progress.log is None


def test_the_host_keeps_no_credentials_path_or_query():
    assert host_of("https://user:pw@events.eu1.segmentapis.com/v1?key=1") == "events.eu1.segmentapis.com"
    assert host_of("http://127.0.0.1:8080/segment") == "127.0.0.1:8080"
    assert host_of("https://hooks.slack.com:x/services/T0/B0/secret") == "hooks.slack.com"  # a bad port
    assert host_of("hooks.slack.com/services/T0/B0/secret") == "?"  # no host: nothing of it is printed


def test_the_delivery_reports_each_answered_batch_and_every_message(ledger):
    plan_messages(ledger, 30)
    destination, progress = Takes(), Recording()

    report = deliver_pending(ledger, "takes", destination, progress=progress)

    assert report.delivered == 30 and sum(progress.advances) == 30
    assert len(progress.advances) == destination.batches > 1  # once per batch, not per message


def test_a_delivery_off_a_terminal_writes_nothing(ledger, capfd):
    plan_messages(ledger, 30)

    deliver_pending(ledger, "takes", Takes())

    out, err = capfd.readouterr()
    assert (out, err) == ("", "")


def test_a_delivery_on_a_terminal_draws_its_bar_toward_the_pending_count(ledger, monkeypatch):
    plan_messages(ledger, 30)
    stream = FakeTty()
    monkeypatch.setattr(sys, "stderr", stream)

    deliver_pending(ledger, "takes", Takes())

    assert "takes: 100%" in stream.getvalue() and "30/30" in stream.getvalue()


# --- as the operator sees it ------------------------------------------------------------------------------

def replay_under_a_terminal(args: list[str], env: dict[str, str], timeout: float = 60) -> str:
    """Run `segment-ops replay` with stderr on a pseudo-terminal (stdout piped); what the terminal got."""
    main, side = pty.openpty()
    fcntl.ioctl(side, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # 40 rows, 120 columns
    process = subprocess.Popen([sys.executable, "-m", "segment_ops.cli", "replay", *args], env=env,
                               stdout=subprocess.PIPE, stderr=side, stdin=subprocess.DEVNULL)
    os.close(side)
    seen = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([main], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        elif process.poll() is not None:
            break
    process.communicate(timeout=timeout)
    os.close(main)
    return seen.decode(errors="replace")


@pytest.mark.slow
def test_replay_on_a_terminal_shows_a_bar_and_in_a_pipe_none(tmp_path, ops_env, clean_sandbox):
    path = write_jsonl(tmp_path / "events.jsonl", track_calls(3_000, pad=200))
    env = {**os.environ, "CI": "", "SEGMENT_OPS_PROGRESS": ""}

    terminal = replay_under_a_terminal([str(path), "--skip-preflight", "--rate-limit", "4"], env)
    piped = subprocess.run([sys.executable, "-m", "segment_ops.cli", "replay", str(path), "--force",
                            "--skip-preflight"], env=env, capture_output=True, text=True, timeout=60)

    assert "\r" in terminal and "replay: 100%" in terminal and "3000/3000" in terminal, terminal
    assert piped.returncode == 0, piped.stderr
    assert "\r" not in piped.stderr and "%|" not in piped.stderr and "msg/s]" not in piped.stderr
