"""Replaying a file of Segment calls over real HTTP to the sandbox: planned, delivered once, rejects
explained.

Only public behaviour is asserted: `plan_file` / `replay_file` results, `Ledger.counts`, and what the
sandbox received.
"""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from segment_ops.engine.calls import MAX_MESSAGE_BYTES
from segment_ops.engine.ledger import Ledger
from segment_ops.engine.store import staging
from segment_ops.syncs.replay.reader import ReplayInputError, plan_file, replay_file
from segment_ops_tests.engine.conftest import ledger_counts, message_ids_received, track_calls, write_jsonl

SYNC = "replay"


def test_every_valid_line_is_delivered_exactly_once(tmp_path, ledger, segment_client, clean_sandbox):
    path = write_jsonl(tmp_path / "events.jsonl", track_calls(500))

    result = replay_file(ledger, path, segment_client)

    assert (result.plan.lines, result.plan.planned, result.plan.rejected) == (500, 500, 0)
    assert result.delivery.delivered == 500 and result.ok
    stats = clean_sandbox.stats()["segment"]
    assert (stats["received"], stats["messages"], stats.get("duplicates", 0)) == (500, 500, 0)
    assert ledger_counts(ledger) == (0, 500, 0)  # pending, delivered, rejected


def test_delivered_calls_keep_their_content(tmp_path, ledger, segment_client, clean_sandbox):
    call = {"type": "identify", "userId": 42, "traits": {"plan": "pro", "seats": 3},
            "timestamp": "2024-03-01T12:00:00+02:00"}
    path = write_jsonl(tmp_path / "one.jsonl", [call])

    replay_file(ledger, path, segment_client)

    [stored] = clean_sandbox.received("segment")
    assert stored["userId"] == "42"  # numeric ids become strings
    assert stored["traits"] == {"plan": "pro", "seats": 3}
    assert stored["timestamp"] == "2024-03-01T10:00:00.000Z"  # historical time kept, in UTC
    assert stored["messageId"]


def test_replaying_the_same_file_again_sends_nothing_new(tmp_path, ledger, segment_client, clean_sandbox):
    path = write_jsonl(tmp_path / "events.jsonl", track_calls(300))
    replay_file(ledger, path, segment_client)
    requests_after_first = clean_sandbox.stats()["segment"]["requests"]

    again = replay_file(ledger, path, segment_client)

    assert (again.plan.planned, again.plan.already_known) == (0, 300)
    assert again.delivery.delivered == 0
    stats = clean_sandbox.stats()["segment"]
    assert stats["requests"] == requests_after_first
    assert (stats["received"], stats.get("duplicates", 0)) == (300, 0)


def test_message_ids_are_the_same_when_the_file_is_replayed_into_a_new_ledger(
        tmp_path, segment_client, clean_sandbox):
    path = write_jsonl(tmp_path / "events.jsonl", track_calls(50))
    for name in ("first", "second"):  # e.g. the ledger file was lost: Segment's dedupe still holds
        with staging(tmp_path / f"{name}.duckdb") as con:
            replay_file(Ledger(con), path, segment_client)

    stats = clean_sandbox.stats()["segment"]
    assert (stats["messages"], stats["received"], stats["duplicates"]) == (100, 50, 50)


def test_force_resends_with_the_same_message_ids(tmp_path, ledger, segment_client, clean_sandbox):
    path = write_jsonl(tmp_path / "events.jsonl", track_calls(200))
    replay_file(ledger, path, segment_client)
    first_ids = set(message_ids_received(clean_sandbox))

    forced = replay_file(ledger, path, segment_client, force=True)

    assert forced.plan.planned == 200 and forced.delivery.delivered == 200
    stats = clean_sandbox.stats()["segment"]
    assert (stats["messages"], stats["received"], stats["duplicates"]) == (400, 200, 200)
    assert all(clean_sandbox.seen("segment", mid) == 2 for mid in sorted(first_ids)[:20])
    assert ledger_counts(ledger) == (0, 200, 0)


def test_dry_run_sends_nothing_and_writes_no_ledger_rows(tmp_path, ledger, segment_client, clean_sandbox):
    path = write_jsonl(tmp_path / "events.jsonl", [*track_calls(40), b"{not json"])

    result = replay_file(ledger, path, segment_client, dry_run=True)

    assert result.delivery is None
    assert (result.plan.lines, result.plan.planned, result.plan.rejected) == (41, 40, 1)
    assert len(result.plan.samples) == 5 and b'"event":"Replayed"' in result.plan.samples[0]
    assert result.plan.rejection_samples[0].source == "events.jsonl:41"
    assert clean_sandbox.stats()["segment"]["requests"] == 0
    assert ledger_counts(ledger) == (0, 0, 0)
    # Nothing was recorded, so the real run afterwards plans everything.
    assert replay_file(ledger, path, segment_client).plan.planned == 40


def test_dry_run_counts_what_a_real_run_would_send(tmp_path, ledger, segment_client, clean_sandbox):
    path = write_jsonl(tmp_path / "events.jsonl", track_calls(30) + track_calls(10))  # 10 repeated lines
    real = replay_file(ledger, path, segment_client)
    assert (real.plan.planned, real.plan.duplicates_in_input) == (30, 10)

    dry = plan_file(ledger, path, dry_run=True)

    assert (dry.planned, dry.already_known) == (0, 30)


def test_duplicate_lines_in_a_file_are_sent_once(tmp_path, ledger, segment_client, clean_sandbox):
    calls = track_calls(20)
    path = write_jsonl(tmp_path / "events.jsonl", calls + calls[:5])

    result = replay_file(ledger, path, segment_client)

    assert (result.plan.lines, result.plan.planned, result.plan.duplicates_in_input) == (25, 20, 5)
    stats = clean_sandbox.stats()["segment"]
    assert (stats["messages"], stats["received"]) == (20, 20)


def test_malformed_lines_are_rejected_with_line_number_and_reason(tmp_path, ledger, segment_client,
                                                                  clean_sandbox):
    good = track_calls(3)
    lines = [
        good[0],                                                                   # 1
        b'{"type": "track", "userId": "u9", "event": ',                            # 2 bad JSON
        b"",                                                                       # 3 blank: ignored
        {"type": "identify", "traits": {"plan": "pro"}},                           # 4 no userId/anonymousId
        {"type": "track", "userId": "u8"},                                         # 5 track without event
        b"   ",                                                                    # 6 blank: ignored
        {"type": "track", "userId": "u7", "event": "Big",                          # 7 oversized
         "properties": {"blob": "x" * MAX_MESSAGE_BYTES}},
        {"type": "identify", "userId": "u6", "traits": ["plan", "pro"]},           # 8 traits as list
        {"type": "identify", "userId": {"id": 6}},                                 # 9 userId as object
        good[1],                                                                   # 10
        b"[1, 2, 3]",                                                              # 11 not an object
        {"type": "shout", "userId": "u5"},                                         # 12 unknown type
        good[2],                                                                   # 13
    ]
    path = write_jsonl(tmp_path / "mixed.jsonl", lines)

    result = replay_file(ledger, path, segment_client)

    reasons = {r.source: r.reason for r in result.plan.rejection_samples}
    assert set(reasons) == {f"mixed.jsonl:{n}" for n in (2, 4, 5, 7, 8, 9, 11, 12)}
    assert reasons["mixed.jsonl:2"].startswith("invalid JSON")
    assert "userId or an anonymousId" in reasons["mixed.jsonl:4"]
    assert "event name" in reasons["mixed.jsonl:5"]
    assert f"{MAX_MESSAGE_BYTES:,} bytes" in reasons["mixed.jsonl:7"]
    assert "traits must be an object" in reasons["mixed.jsonl:8"]
    assert "userId must be a string" in reasons["mixed.jsonl:9"]
    assert "must be a JSON object" in reasons["mixed.jsonl:11"]
    assert "type must be one of" in reasons["mixed.jsonl:12"]
    assert (result.plan.lines, result.plan.planned, result.plan.rejected) == (11, 3, 8)
    assert result.delivery.delivered == 3 and not result.ok
    assert sorted(m["userId"] for m in clean_sandbox.received("segment")) == ["u0", "u1", "u2"]
    assert ledger_counts(ledger) == (0, 3, 0)  # rejected lines never become ledger messages


def test_rejected_lines_of_a_run_are_kept_with_their_source(tmp_path, ledger, segment_client, clean_sandbox):
    path = write_jsonl(tmp_path / "mixed.jsonl", [*track_calls(2), {"type": "track", "userId": "u8"}])

    replay_file(ledger, path, segment_client, run_id="run-1")

    [(record_key, source, reason)] = ledger.rejected_since(SYNC, "run-1")
    assert (record_key, source) == ("u8", "mixed.jsonl:3") and "event name" in reason


def test_parquet_input_is_replayed(tmp_path, ledger, segment_client, clean_sandbox):
    rows = [{"type": "identify", "userId": f"p{i}", "traits": {"plan": "pro", "seats": i}} for i in range(50)]
    rows.append({"type": "identify", "userId": None, "traits": {"plan": "free", "seats": 0}})  # row 51: no id
    path = tmp_path / "calls.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=16)

    result = replay_file(ledger, path, segment_client)

    assert (result.plan.lines, result.plan.planned, result.plan.rejected) == (51, 50, 1)
    [rejection] = result.plan.rejection_samples
    assert rejection.source == "calls.parquet:51" and "userId or an anonymousId" in rejection.reason
    received = {m["userId"]: m for m in clean_sandbox.received("segment")}
    assert len(received) == 50 and received["p7"]["traits"] == {"plan": "pro", "seats": 7}


def test_parquet_timestamps_are_sent_as_iso_utc(tmp_path, ledger, segment_client, clean_sandbox):
    when = dt.datetime(2024, 5, 1, 8, 30, tzinfo=dt.UTC)
    path = tmp_path / "calls.parquet"
    pq.write_table(pa.Table.from_pylist([{"type": "track", "userId": "p1", "event": "Old",
                                          "timestamp": when}]), path)

    replay_file(ledger, path, segment_client)

    [stored] = clean_sandbox.received("segment")
    assert stored["timestamp"] == "2024-05-01T08:30:00.000Z"


def test_missing_file_is_an_input_error_and_plans_nothing(tmp_path, ledger):
    with pytest.raises(ReplayInputError, match="no such file"):
        plan_file(ledger, tmp_path / "absent.jsonl")
    assert ledger_counts(ledger) == (0, 0, 0)


def test_unsupported_extension_is_an_input_error(tmp_path, ledger):
    path = tmp_path / "calls.csv"
    path.write_text("type,userId\nidentify,u1\n")

    with pytest.raises(ReplayInputError, match="unsupported file type '.csv'"):
        plan_file(ledger, path)


def test_corrupt_parquet_is_an_input_error(tmp_path, ledger):
    path = tmp_path / "calls.parquet"
    path.write_bytes(b"PAR1 this is not parquet")

    with pytest.raises(ReplayInputError, match="not a readable Parquet file"):
        plan_file(ledger, path)


def test_leftovers_of_an_earlier_plan_are_delivered_by_the_next_replay(
        tmp_path, ledger, segment_client, clean_sandbox):
    first = write_jsonl(tmp_path / "first.jsonl", track_calls(30, prefix="a"))
    second = write_jsonl(tmp_path / "second.jsonl", track_calls(20, prefix="b"))
    plan_file(ledger, first)  # planned, never delivered (e.g. the run died before sending)

    result = replay_file(ledger, second, segment_client)

    assert result.plan.planned == 20 and result.delivery.delivered == 50
    assert clean_sandbox.stats()["segment"]["received"] == 50
    assert ledger.counts(SYNC).pending == 0


def test_windows_line_endings_are_read_like_unix_ones(tmp_path, ledger, segment_client, clean_sandbox):
    path = tmp_path / "crlf.jsonl"
    path.write_bytes(b'{"type":"identify","userId":"w1"}\r\n\r\n{"type":"identify","userId":"w2"}\r\n')

    result = replay_file(ledger, path, segment_client)

    assert (result.plan.lines, result.plan.planned, result.plan.rejected) == (2, 2, 0)
    assert sorted(m["userId"] for m in clean_sandbox.received("segment")) == ["w1", "w2"]


def test_a_line_that_is_not_utf8_is_rejected_not_altered(tmp_path, ledger, segment_client, clean_sandbox):
    path = write_jsonl(tmp_path / "latin1.jsonl",
                       [track_calls(1)[0], b'{"type":"identify","userId":"caf\xe9"}'])

    result = replay_file(ledger, path, segment_client)

    assert [r.source for r in result.plan.rejection_samples] == ["latin1.jsonl:2"]
    assert [m["userId"] for m in clean_sandbox.received("segment")] == ["u0"]


def test_a_file_of_three_kilobyte_calls_plans_within_the_memory_limit(tmp_path, ledger):
    path = write_jsonl(tmp_path / "wide.jsonl", track_calls(2_000, pad=3_000))

    plan = plan_file(ledger, path)

    assert (plan.lines, plan.planned) == (2_000, 2_000)
