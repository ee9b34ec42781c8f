"""Replay input that could exhaust memory: a line far over Segment's per-call limit is rejected while it
streams past, never held whole; a `.json` file (maybe one JSON array) is refused, not read as JSON lines."""

from __future__ import annotations

import tracemalloc

import orjson
import pytest

from segment_ops.syncs.replay.reader import MAX_LINE_BYTES, ReplayInputError, plan_file, replay_file
from segment_ops_tests.engine.conftest import ledger_counts, track_calls, write_jsonl


def long_line(size: int) -> bytes:
    """A valid call of `size` bytes: only its length is wrong."""
    head = b'{"type":"track","userId":"big","event":"Huge","properties":{"blob":"'
    return head + b"x" * (size - len(head) - 3) + b'"}}'


def test_a_line_over_the_limit_is_rejected_with_its_number_and_the_lines_after_it_are_delivered(
        tmp_path, ledger, segment_client, clean_sandbox):
    calls = track_calls(4)
    path = write_jsonl(tmp_path / "events.jsonl", [*calls[:2], long_line(3_000_000), *calls[2:]])

    result = replay_file(ledger, path, segment_client)

    assert (result.plan.lines, result.plan.planned, result.plan.rejected) == (5, 4, 1)
    [rejection] = result.plan.rejection_samples
    assert (rejection.source, rejection.reason) == (
        "events.jsonl:3", f"line is over {MAX_LINE_BYTES:,} bytes (3,000,000 bytes); a call may be at most "
                          "32,768 bytes (spec §1), so it was skipped unread")
    assert result.delivery.delivered == 4
    assert sorted(m["userId"] for m in clean_sandbox.received("segment")) == ["u0", "u1", "u2", "u3"]


def test_a_line_of_exactly_the_limit_is_read(tmp_path, ledger):
    line = b'{"type":"identify","userId":"u1"}' + b" " * (MAX_LINE_BYTES - 33)
    path = write_jsonl(tmp_path / "edge.jsonl", [line, track_calls(1)[0]])

    plan = plan_file(ledger, path)

    assert (len(line), plan.lines, plan.planned, plan.rejected) == (MAX_LINE_BYTES, 2, 2, 0)


def test_a_line_over_the_limit_is_never_held_whole(tmp_path, ledger):
    path = write_jsonl(tmp_path / "huge.jsonl", [long_line(20_000_000), *track_calls(3)])

    tracemalloc.start()
    try:
        plan = plan_file(ledger, path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert (plan.lines, plan.planned, plan.rejected) == (4, 3, 1)
    assert [r.source for r in plan.rejection_samples] == ["huge.jsonl:1"]
    assert len(plan.rejection_samples[0].record) <= 2_000  # the excerpt kept is the line's head
    assert peak < 2_000_000, f"{peak:,} bytes traced while reading a 20 MB line"


@pytest.mark.parametrize("content", [
    orjson.dumps(track_calls(3)),  # a JSON array: one line
    b"\n".join(orjson.dumps(c) for c in track_calls(3)),  # JSON lines under the wrong name
])
def test_a_json_file_is_refused_naming_the_accepted_extensions(tmp_path, ledger, content):
    path = tmp_path / "calls.json"
    path.write_bytes(content)

    with pytest.raises(ReplayInputError) as raised:
        plan_file(ledger, path)

    assert str(raised.value).startswith(f"{path}: .json files are not replayed")
    assert ".jsonl, .ndjson or .parquet" in str(raised.value) and "jq -c '.[]'" in str(raised.value)
    assert ledger_counts(ledger) == (0, 0, 0)

