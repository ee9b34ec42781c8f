"""Ledger compaction (issue 17, growth): payloads of messages settled before the retention window are
dropped, while what exactly-once and delivery health need stays (ids, states, outcomes); nothing is sent
twice, a forced re-send takes its payload from its input again, and read-back never draws a compacted
message."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest

from segment_ops.engine.delivery import deliver_pending
from segment_ops.engine.ledger import (
    AWAITING_ACK,
    COMPACTED,
    DELIVERED,
    REJECTED,
    SUPERSEDED,
    CompactedPayloadError,
    Ledger,
    PlannedMessage,
    retention,
)
from segment_ops_tests.engine.conftest import FAST_RETRY

SYNC = "replay"
NOW = datetime.now(UTC)


def identify(i: int) -> PlannedMessage:
    return PlannedMessage(f"m{i}", f"k{i}", "identify",
                          orjson.dumps({"type": "identify", "userId": f"u{i}", "messageId": f"m{i}",
                                        "traits": {"n": i}}))


def payloads(ledger: Ledger) -> dict[str, str]:
    rows = ledger.con.execute("SELECT message_id, payload FROM planned_messages ORDER BY seq").fetchall()
    return dict(rows)


def settle(ledger: Ledger, outcomes: dict[int, str], *, days_ago: float) -> None:
    """Log `outcomes` (seq: status) as if `days_ago` days ago."""
    mark = ledger.con.execute("SELECT coalesce(max(id), 0) FROM outcomes").fetchone()[0]
    ledger.log_outcomes(SYNC, [(seq, status, 1, None) if status != AWAITING_ACK else
                               (seq, status, 1, None, f"receipt-{seq}") for seq, status in outcomes.items()])
    ledger.con.execute("UPDATE outcomes SET logged_at = ? WHERE id > ?",
                       [NOW - timedelta(days=days_ago), mark])


@pytest.fixture
def history(ledger: Ledger) -> Ledger:
    """Eight messages: 1-2 delivered and 3 rejected 100 days ago, 4 delivered 10 days ago, 5 awaiting an
    ack and 6 superseded 100 days ago, 7-8 pending."""
    ledger.add_planned(SYNC, [identify(i) for i in range(1, 9)])
    settle(ledger, {1: DELIVERED, 2: DELIVERED, 3: REJECTED, 5: AWAITING_ACK, 6: SUPERSEDED}, days_ago=100)
    settle(ledger, {4: DELIVERED}, days_ago=10)
    return ledger


def test_only_payloads_of_messages_settled_before_the_window_are_dropped(history):
    before = history.counts(SYNC)

    dropped = history.compact(SYNC, settled_before=NOW - timedelta(days=90))

    kept = payloads(history)
    assert dropped == 3
    assert [m for m, p in kept.items() if p.startswith(COMPACTED)] == ["m1", "m2", "m3"]
    assert all(orjson.loads(kept[f"m{i}"])["userId"] == f"u{i}" for i in range(4, 9))
    assert history.counts(SYNC) == before  # every message's state, and so delivery health's counts
    assert history.con.execute("SELECT count(*) FROM outcomes").fetchone()[0] == 6
    assert history.compact(SYNC, settled_before=NOW - timedelta(days=90)) == 0  # once


def test_a_compacted_message_is_never_planned_or_sent_again(history, segment_client, clean_sandbox):
    history.compact(SYNC, settled_before=NOW - timedelta(days=90))

    plan = history.add_planned(SYNC, [identify(i) for i in range(1, 4)])

    assert (plan.planned, plan.already_known) == (0, 3)
    report = deliver_pending(history, SYNC, segment_client())
    assert report.delivered == 2  # the two pending ones, not the compacted three
    sent = {m["messageId"] for m in clean_sandbox.received("segment", limit=100)}
    assert sent == {"m7", "m8"}


def test_a_forced_resend_of_a_compacted_message_takes_its_payload_from_the_input(history, segment_client,
                                                                                 clean_sandbox):
    history.compact(SYNC, settled_before=NOW - timedelta(days=90))

    history.add_planned(SYNC, [identify(1)], force=True)

    assert orjson.loads(payloads(history)["m1"])["traits"] == {"n": 1}
    deliver_pending(history, SYNC, segment_client())
    resent = [m for m in clean_sandbox.received("segment", limit=100) if m["messageId"] == "m1"]
    assert [m["traits"] for m in resent] == [{"n": 1}]


def test_a_forced_resend_whose_input_changed_since_is_rejected_not_sent_as_the_old_message(history,
                                                                                         clean_sandbox,
                                                                                         segment_client):
    """Forced, the ledger sends what it planned under a messageId (an edit needs a new one); compacted, it no
    longer has that: the edited input is refused rather than sent under the old id."""
    history.compact(SYNC, settled_before=NOW - timedelta(days=90))
    edited = PlannedMessage("m2", "k2", "identify", orjson.dumps({"type": "identify", "userId": "u2",
                                                                   "messageId": "m2", "traits": {"n": 99}}))

    plan = history.add_planned(SYNC, [identify(1), edited], force=True)

    assert (plan.planned, plan.rejected) == (1, 1)
    deliver_pending(history, SYNC, segment_client())
    assert {m["messageId"] for m in clean_sandbox.received("segment", limit=100)} == {"m1", "m7", "m8"}
    (reason,) = [r[0] for r in history.con.execute("SELECT reason FROM rejected").fetchall()]
    assert "LEDGER_RETENTION_DAYS no longer keeps: give the changed call a new messageId" in reason


def test_a_pending_message_without_its_payload_is_refused_not_sent_empty(history):
    history.con.execute("UPDATE planned_messages SET payload = ? || md5(payload) WHERE message_id = 'm7'",
                        [COMPACTED])

    with pytest.raises(CompactedPayloadError, match="1 pending message.*LEDGER_RETENTION_DAYS"):
        list(history.iter_pending(SYNC))


def test_read_back_never_draws_a_compacted_message(history):
    sample = history.read_back_sample(SYNC, delivered_before=NOW, per_run=10)
    assert {m.message_id for m in sample.messages} == {"m1", "m2", "m4"}

    history.compact(SYNC, settled_before=NOW - timedelta(days=90))

    sample = history.read_back_sample(SYNC, delivered_before=NOW, per_run=10)
    assert {m.message_id for m in sample.messages} == {"m4"}


def test_compaction_is_due_once_a_day_and_never_without_a_retention(history):
    assert history.compact_if_due(SYNC, None) is None
    assert history.compact_if_due(SYNC, timedelta(days=90), now=NOW) == 3
    assert history.compact_if_due(SYNC, timedelta(days=5), now=NOW + timedelta(hours=23)) is None
    assert history.compact_if_due(SYNC, timedelta(days=5), now=NOW + timedelta(hours=25)) == 1  # m4


def test_a_delivery_compacts_what_the_setting_says(history, segment_client, monkeypatch):
    monkeypatch.setenv("LEDGER_RETENTION_DAYS", "5")
    report = deliver_pending(history, SYNC, segment_client(retry=FAST_RETRY))
    assert report.compacted == 4 and report.delivered == 2
    monkeypatch.setenv("LEDGER_RETENTION_DAYS", "0")
    assert retention() is None


@pytest.mark.parametrize("value", ["-1", "ninety", "36501"])
def test_a_retention_that_is_no_number_of_days_is_named(monkeypatch, value):
    monkeypatch.setenv("LEDGER_RETENTION_DAYS", value)
    with pytest.raises(ValueError, match="LEDGER_RETENTION_DAYS must be a whole number of days"):
        retention()


def test_compaction_works_a_window_of_messages_at_a_time(history):
    """Each window in its own transaction (an update holds what it replaces until it commits)."""
    assert history.compact(SYNC, settled_before=NOW - timedelta(days=90), window=2) == 3
    assert [m for m, p in payloads(history).items() if p.startswith(COMPACTED)] == ["m1", "m2", "m3"]


def test_a_failed_compaction_is_reported_and_never_fails_the_delivery(history, segment_client, monkeypatch):
    import duckdb

    def broken(*args, **kwargs):
        raise duckdb.OutOfMemoryException("could not allocate block")

    monkeypatch.setattr(history, "compact_if_due", broken)
    report = deliver_pending(history, SYNC, segment_client())
    assert report.delivered == 2 and report.compacted == 0
    assert report.errors == ["compaction of the ledger failed (tried again next time): "
                             "could not allocate block"]


def test_a_retention_that_cannot_be_used_stops_the_delivery_before_it_sends(history, segment_client,
                                                                             clean_sandbox, monkeypatch):
    monkeypatch.setenv("LEDGER_RETENTION_DAYS", "soon")
    with pytest.raises(ValueError, match="LEDGER_RETENTION_DAYS"):
        deliver_pending(history, SYNC, segment_client())
    assert clean_sandbox.stats()["segment"]["requests"] == 0


def test_a_large_ledger_compacts_within_the_files_memory_limit(tmp_path):
    """DuckDB keeps updated rows in memory until a checkpoint: a single update of every old payload ran out
    of memory (200,000 payloads of 1 KB in 128 MB; here 120,000 in 64 MB)."""
    from segment_ops.engine.store import connect

    con = connect(tmp_path / "big.duckdb", memory_limit="64MB")
    ledger = Ledger(con)
    old = NOW - timedelta(days=200)
    con.execute("INSERT INTO planned_messages SELECT 'big', i, 'm' || i, 'k' || i, 'identify', "
                "repeat('x', 1000), 'r', ? FROM range(1, 120001) t(i)", [old])
    con.execute("INSERT INTO outcomes (sync, seq, status, attempts, error, logged_at) "
                "SELECT 'big', i, 'delivered', 1, NULL, ? FROM range(1, 120001) t(i)", [old])
    con.execute("CHECKPOINT")

    assert ledger.compact("big", settled_before=NOW - timedelta(days=90)) == 120_000
    con.close()
