from datetime import UTC, datetime

import orjson
import pytest

from segment_ops.engine.ledger import (
    AWAITING_ACK,
    DELIVERED,
    PENDING,
    REJECTED,
    Ledger,
    LedgerCounts,
    MessageCounts,
    PlannedMessage,
    Rejection,
)
from segment_ops.engine.store import connect


@pytest.fixture
def ledger(tmp_path):
    con = connect(tmp_path / "staging.duckdb")
    yield Ledger(con)
    con.close()


def messages(n, prefix="m"):
    return [PlannedMessage(f"{prefix}{i}", f"k{i}", "identify", b'{"type":"identify","userId":"k%d"}' % i)
            for i in range(n)]


def pending_ids(ledger, sync="s"):
    """messageIds of pending messages, in planning order (read back from their payloads)."""
    return [orjson.loads(payload)["userId"].replace("k", "m")
            for chunk in ledger.iter_pending(sync, chunk_rows=3) for _, payload in chunk]


def seq_of(ledger, message_id, sync="s"):
    return ledger.con.execute(
        "SELECT seq FROM ledger WHERE sync = ? AND message_id = ?", [sync, message_id]).fetchone()[0]


def outcome(ledger, message_id, *rest):
    return (seq_of(ledger, message_id), *rest)


def test_planning_records_messages_as_pending_in_order(ledger):
    counts = ledger.add_planned("s", messages(5))
    assert counts.planned == 5 and counts.already_known == 0
    assert pending_ids(ledger) == [f"m{i}" for i in range(5)]


def test_planning_the_same_messages_again_adds_nothing(ledger):
    ledger.add_planned("s", messages(5))
    counts = ledger.add_planned("s", messages(7))
    assert counts.planned == 2 and counts.already_known == 5
    assert ledger.counts("s").pending == 7


def test_duplicates_within_one_plan_are_planned_once(ledger):
    counts = ledger.add_planned("s", messages(3) + messages(3))
    assert counts.planned == 3 and counts.duplicates_in_input == 3


def test_syncs_do_not_share_messages(ledger):
    ledger.add_planned("a", messages(2))
    assert ledger.add_planned("b", messages(2)).planned == 2


def test_latest_outcome_is_the_status(ledger):
    ledger.add_planned("s", messages(3))
    ledger.log_outcomes("s", [outcome(ledger, "m0", DELIVERED, 2, None),
                              outcome(ledger, "m1", REJECTED, 1, "too big"),
                              outcome(ledger, "m2", PENDING, 3, "503")])
    rows = dict(ledger.con.execute(
        "SELECT message_id, (status, attempts, last_error) FROM ledger").fetchall())
    assert rows["m0"] == (DELIVERED, 2, None)
    assert rows["m1"] == (REJECTED, 1, "too big")
    assert rows["m2"] == (PENDING, 3, "503")
    assert pending_ids(ledger) == ["m2"]


def test_outcomes_logged_before_a_crash_are_kept_by_the_next_connection(tmp_path):
    con = connect(tmp_path / "staging.duckdb")
    first = Ledger(con)
    first.add_planned("s", messages(4))
    first.log_outcomes("s", [outcome(first, "m0", DELIVERED, 1, None),
                             outcome(first, "m1", DELIVERED, 1, None)])
    con.close()  # the run dies here
    con = connect(tmp_path / "staging.duckdb")
    second = Ledger(con)
    assert pending_ids(second) == ["m2", "m3"]
    con.close()


def test_force_resets_delivered_messages_to_pending(ledger):
    ledger.add_planned("s", messages(2))
    ledger.log_outcomes("s", [outcome(ledger, "m0", DELIVERED, 1, None),
                              outcome(ledger, "m1", DELIVERED, 1, None)])
    counts = ledger.add_planned("s", messages(2), force=True)
    assert counts.planned == 2
    assert pending_ids(ledger) == ["m0", "m1"]


def test_rejections_are_kept_with_their_reason(ledger):
    ledger.add_rejections("s", [Rejection("k1", "file.jsonl:3", "track needs a non-empty event name", "{}")],
                          run_id="r1")
    assert ledger.rejected_since("s", "r1") == [("k1", "file.jsonl:3", "track needs a non-empty event name")]
    assert ledger.rejected_since("s", "other-run") == []


def test_a_message_awaiting_ack_is_neither_pending_nor_delivered(ledger):
    ledger.add_planned("s", messages(3))
    ledger.log_outcomes("s", [outcome(ledger, "m0", AWAITING_ACK, 1, None, "chan:0"),
                              outcome(ledger, "m1", AWAITING_ACK, 1, None, "chan:0")])
    counts = ledger.counts("s")
    assert (counts.pending, counts.delivered, counts.awaiting_ack) == (1, 0, 2)
    assert pending_ids(ledger) == ["m2"]  # not sent again
    [receipt] = ledger.awaiting_receipts("s")
    assert (receipt.receipt, receipt.messages) == ("chan:0", 2)


def test_an_awaiting_ack_outcome_needs_its_receipt(ledger):
    ledger.add_planned("s", messages(1))
    with pytest.raises(ValueError, match="receipt"):
        ledger.log_outcomes("s", [outcome(ledger, "m0", AWAITING_ACK, 1, None)])


def test_settling_a_receipt_delivers_or_reopens_only_its_awaiting_messages(ledger):
    ledger.add_planned("s", messages(4))
    ledger.log_outcomes("s", [outcome(ledger, "m0", AWAITING_ACK, 1, None, "c:0"),
                              outcome(ledger, "m1", AWAITING_ACK, 1, None, "c:0"),
                              outcome(ledger, "m2", AWAITING_ACK, 1, None, "c:1"),
                              outcome(ledger, "m3", DELIVERED, 1, None)])

    assert ledger.settle_receipts("s", ["c:0"], DELIVERED) == 2
    assert ledger.settle_receipts("s", ["c:0"], DELIVERED) == 0  # settled once
    assert ledger.settle_receipts("s", ["c:1"], PENDING, "no ack") == 1

    rows = dict(ledger.con.execute(
        "SELECT message_id, (status, attempts, last_error) FROM ledger").fetchall())
    assert rows["m0"] == (DELIVERED, 1, None) and rows["m2"] == (PENDING, 1, "no ack")
    assert ledger.awaiting_receipts("s") == [] and pending_ids(ledger) == ["m2"]
    with pytest.raises(ValueError):
        ledger.settle_receipts("s", ["c:1"], REJECTED)


def test_receipts_outlive_the_connection_that_logged_them(tmp_path):
    con = connect(tmp_path / "staging.duckdb")
    first = Ledger(con)
    first.add_planned("s", messages(2))
    first.log_outcomes("s", [outcome(first, "m0", AWAITING_ACK, 1, None, "c:7")])
    con.close()
    con = connect(tmp_path / "staging.duckdb")
    [receipt] = Ledger(con).awaiting_receipts("s")
    con.close()
    assert (receipt.receipt, receipt.messages) == ("c:7", 1)


def test_each_send_is_one_open_receipt_with_its_seq_range_and_send_time(ledger):
    ledger.add_planned("s", messages(4))
    began = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    ledger.log_outcomes("s", [outcome(ledger, "m0", AWAITING_ACK, 1, None, "c:0:a", began),
                              outcome(ledger, "m1", AWAITING_ACK, 1, None, "c:0:a", began),
                              outcome(ledger, "m3", AWAITING_ACK, 1, None, "c:0:b")])

    first, second = ledger.awaiting_receipts("s")

    assert (first.receipt, first.messages, first.sent_at) == ("c:0:a", 2, began)
    assert (second.receipt, second.messages) == ("c:0:b", 1) and second.sent_at == second.taken_at
    ranges = ledger.con.execute("SELECT receipt, seq_low, seq_high FROM receipts ORDER BY receipt").fetchall()
    assert ranges == [
        ("c:0:a", seq_of(ledger, "m0"), seq_of(ledger, "m1")),
        ("c:0:b", seq_of(ledger, "m3"), seq_of(ledger, "m3"))]


def test_two_sends_that_share_a_destination_id_settle_apart(ledger):
    # The destination made each receipt unique (e.g. channel:ackId:<send id>); settling one leaves the other.
    ledger.add_planned("s", messages(2))
    ledger.log_outcomes("s", [outcome(ledger, "m0", AWAITING_ACK, 1, None, "c:0:run1")])
    ledger.log_outcomes("s", [outcome(ledger, "m1", AWAITING_ACK, 1, None, "c:0:run2")])

    assert ledger.settle_receipts("s", ["c:0:run2"], DELIVERED) == 1

    assert [r.receipt for r in ledger.awaiting_receipts("s")] == ["c:0:run1"]
    assert ledger.counts("s") == LedgerCounts(pending=0, delivered=1, rejected=0, awaiting_ack=1)


def test_a_settled_receipt_is_closed_by_a_settlement_fact_not_an_update(ledger):
    ledger.add_planned("s", messages(1))
    ledger.log_outcomes("s", [outcome(ledger, "m0", AWAITING_ACK, 1, None, "c:0:a")])

    ledger.settle_receipts("s", ["c:0:a"], PENDING, "forgotten")

    assert ledger.awaiting_receipts("s") == []
    assert ledger.con.execute("SELECT count(*) FROM receipts").fetchone()[0] == 1  # append-only
    assert ledger.con.execute("SELECT receipt, status, error FROM receipt_settlements").fetchall() == [
        ("c:0:a", PENDING, "forgotten")]


def test_a_file_made_before_the_receipts_table_gets_its_open_receipts_once(tmp_path):
    con = connect(tmp_path / "staging.duckdb")
    old = Ledger(con)
    old.add_planned("s", messages(3))
    old.log_outcomes("s", [outcome(old, "m0", AWAITING_ACK, 1, None, "c:4"),
                           outcome(old, "m1", AWAITING_ACK, 1, None, "c:4"),
                           outcome(old, "m2", DELIVERED, 1, None)])
    con.execute("DROP TABLE receipts")  # as a file of an older layout: receipts only in `outcomes`
    con.execute("DROP TABLE receipt_settlements")
    con.execute("DROP TABLE state_schema_versions")  # and no versions recorded

    # Read-only readers see them before migration.
    [receipt] = Ledger(con, create=False).awaiting_receipts("s")
    migrated = Ledger(con)

    assert (receipt.receipt, receipt.messages, receipt.sent_at) == ("c:4", 2, None)
    assert [(r.receipt, r.messages) for r in migrated.awaiting_receipts("s")] == [("c:4", 2)]
    assert migrated.settle_receipts("s", ["c:4"], DELIVERED) == 2
    assert migrated.counts("s").delivered == 3 and migrated.awaiting_receipts("s") == []
    con.close()


def test_window_counts_say_where_each_group_of_messages_stands(ledger):
    ledger.add_planned("s", messages(5))
    ledger.log_outcomes("s", [outcome(ledger, "m0", DELIVERED, 1, None),
                              outcome(ledger, "m1", REJECTED, 1, "bad"),
                              outcome(ledger, "m2", AWAITING_ACK, 1, None, "c:0:a")])
    ledger.con.execute("CREATE TEMP TABLE hours AS SELECT * FROM (VALUES ('m0', 1), ('m1', 1), ('m2', 2), "
                       "('m3', 2), ('m4', 3), ('never-planned', 3)) t(message_id, grp)")

    counts = ledger.window_counts("s", "hours")

    assert counts[1] == MessageCounts(total=2, delivered=1, rejected=1) and counts[1].settled
    assert counts[2] == MessageCounts(total=2, pending=1, awaiting_ack=1) and not counts[2].settled
    assert counts[3] == MessageCounts(total=2, unplanned=1, pending=1) and not counts[3].settled


def test_delivered_between_counts_each_syncs_deliveries_logged_in_the_window_once(ledger):
    for sync in ("a", "b"):
        ledger.add_planned(sync, messages(3))
    ledger.log_outcomes("a", [(seq_of(ledger, "m0", "a"), DELIVERED, 1, None),
                              (seq_of(ledger, "m1", "a"), PENDING, 1, "503")])
    start = datetime.now(UTC)
    ledger.log_outcomes("a", [(seq_of(ledger, "m1", "a"), DELIVERED, 2, None),
                              (seq_of(ledger, "m2", "a"), DELIVERED, 1, None)])
    ledger.log_outcomes("b", [(seq_of(ledger, "m0", "b"), DELIVERED, 1, None)])
    end = datetime.now(UTC)
    ledger.log_outcomes("b", [(seq_of(ledger, "m1", "b"), DELIVERED, 1, None)])

    assert ledger.delivered_between(start, end) == {"a": 2, "b": 1}
    assert ledger.delivered_between(end, datetime.now(UTC)) == {"b": 1}
    assert ledger.delivered_between(end, end) == {}
