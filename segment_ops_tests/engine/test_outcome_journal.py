"""A delivery killed mid-way re-sends only the batches it had on the wire (issue 16): its answers are in the
outcome journal beside the staging file, which the next reader of the ledger logs first.

The kill is a real SIGKILL of a delivering process, sent by its destination right after the sandbox
acknowledged the k-th batch; the next delivery runs against the same staging file, and the sandbox counts
what arrived twice.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from segment_ops.clients.segment_tracking import SegmentTrackingClient
from segment_ops.clients.splunk_hec import SplunkHecClient, hec_event
from segment_ops.config import SANDBOX_SEGMENT_WRITE_KEY, SANDBOX_SPLUNK_HEC_TOKEN
from segment_ops.engine.delivery import deliver_pending
from segment_ops.engine.ledger import AWAITING_ACK, DELIVERED, PENDING, Ledger, PlannedMessage
from segment_ops.engine.store import connect
from segment_ops_tests.engine.conftest import FAST_RETRY

SYNC = "crash"
MESSAGES = 240
BATCH_BYTES = 1_000  # about 9 messages a batch: some 27 batches

# The delivering process: its destination SIGKILLs it right after the `kill_after`-th batch was acknowledged,
# with the other batches of `max_in_flight` still on the wire.
CHILD = textwrap.dedent("""
    import os, signal, sys, threading
    from segment_ops.clients.segment_tracking import SegmentTrackingClient
    from segment_ops.clients.splunk_hec import SplunkHecClient
    from segment_ops.engine.delivery import deliver_pending
    from segment_ops.engine.ledger import Ledger
    from segment_ops.engine.store import connect

    staging, kind, url, key, kill_after, max_in_flight, batch_bytes = sys.argv[1:]
    inner = (SegmentTrackingClient(url + "/segment", key) if kind == "segment"
             else SplunkHecClient(url + "/splunk", key))

    class KilledAfter:
        name, max_batch_bytes = inner.name, int(batch_bytes)
        lock, acknowledged = threading.Lock(), 0

        def send_batch(self, payloads, *, on_retry=None):
            result = inner.send_batch(payloads, on_retry=on_retry)
            with self.lock:
                KilledAfter.acknowledged += 1
                if KilledAfter.acknowledged == int(kill_after):
                    os.kill(os.getpid(), signal.SIGKILL)
            return result

    deliver_pending(Ledger(connect(staging)), "crash", KilledAfter(), max_in_flight=int(max_in_flight))
""")


def plan(staging: Path, kind: str) -> list[str]:
    """Plan MESSAGES messages for `kind` in a fresh staging file; returns their ids."""
    ids = [f"msg-{i:04d}" for i in range(MESSAGES)]
    if kind == "segment":
        payloads = [orjson.dumps({"type": "track", "userId": f"u{i}", "event": "Crashed", "messageId": id_,
                                  "properties": {"n": i, "pad": "x" * 40}}) for i, id_ in enumerate(ids)]
    else:
        payloads = [hec_event({"id": id_, "n": i, "pad": "x" * 70}) for i, id_ in enumerate(ids)]
    assert min(map(len, payloads)) >= 100  # at most BATCH_BYTES // 100 a batch
    con = connect(staging)
    Ledger(con).add_planned(SYNC, [PlannedMessage(id_, id_, "x", p) for id_, p in zip(ids, payloads,
                                                                                        strict=True)])
    con.close()
    return ids


def kill_while_delivering(staging: Path, kind: str, url: str, *, kill_after: int, max_in_flight: int) -> None:
    key = SANDBOX_SEGMENT_WRITE_KEY if kind == "segment" else SANDBOX_SPLUNK_HEC_TOKEN
    child = subprocess.run([sys.executable, "-c", CHILD, str(staging), kind, url, key, str(kill_after),
                            str(max_in_flight), str(BATCH_BYTES)], capture_output=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-2000:]


def arrivals(sandbox, kind: str) -> Counter:
    """How many times each message arrived at the sandbox."""
    if kind == "segment":
        items = sandbox.received("segment", limit=10_000)
        got = Counter(m["messageId"] for m in items)
        for id_ in list(got):
            got[id_] = sandbox.seen("segment", id_)
        return got
    return Counter(item["event"]["id"] for item in sandbox.received("splunk", limit=10_000))


def destination(kind: str, url: str):
    if kind == "segment":
        return SegmentTrackingClient(f"{url}/segment", SANDBOX_SEGMENT_WRITE_KEY, retry=FAST_RETRY)
    return SplunkHecClient(f"{url}/splunk", SANDBOX_SPLUNK_HEC_TOKEN, retry=FAST_RETRY)


class Small:
    """A destination in batches of BATCH_BYTES."""

    def __init__(self, inner) -> None:
        self.inner, self.name, self.max_batch_bytes = inner, inner.name, BATCH_BYTES

    def send_batch(self, payloads, *, on_retry=None):
        return self.inner.send_batch(payloads, on_retry=on_retry)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["segment", "splunk"])
def test_a_delivery_killed_after_acknowledged_batches_sends_again_only_the_batch_on_the_wire(
        tmp_path, clean_sandbox, kind):
    staging = tmp_path / "staging" / "crash.duckdb"
    ids = plan(staging, kind)
    kill_while_delivering(staging, kind, clean_sandbox.url, kill_after=8, max_in_flight=1)
    before = arrivals(clean_sandbox, kind)

    con = connect(staging)
    report = deliver_pending(Ledger(con), SYNC, Small(destination(kind, clean_sandbox.url)))
    counts = Ledger(con, create=False).counts(SYNC)
    con.close()

    got = arrivals(clean_sandbox, kind)
    twice = sorted(id_ for id_, n in got.items() if n > 1)
    # One batch at a time: seven answered and journaled, the eighth acknowledged as the process died.
    assert sum(before.values()) == len(before) and 8 <= len(before) < MESSAGES
    assert sorted(got) == ids and 0 < len(twice) <= BATCH_BYTES // 100 and max(got.values()) == 2
    assert report.in_flight_at_stop == len(twice)
    assert report.recovered == len(before) - len(twice)
    assert report.delivered == MESSAGES - report.recovered
    assert (counts.pending, counts.delivered, counts.in_flight) == (0, MESSAGES, 0)


@pytest.mark.slow
def test_a_delivery_killed_with_batches_in_flight_sends_again_at_most_those_batches(tmp_path, clean_sandbox):
    staging = tmp_path / "staging" / "crash.duckdb"
    ids = plan(staging, "segment")
    kill_while_delivering(staging, "segment", clean_sandbox.url, kill_after=12, max_in_flight=4)

    con = connect(staging)
    report = deliver_pending(Ledger(con), SYNC, Small(destination("segment", clean_sandbox.url)))
    con.close()

    got = arrivals(clean_sandbox, "segment")
    twice = sum(n - 1 for n in got.values())
    # Re-sent: only the batches handed over without a journaled answer, at most the four on the wire.
    assert sorted(got) == ids and twice <= 4 * (BATCH_BYTES // 100)
    assert twice <= report.in_flight_at_stop <= 4 * (BATCH_BYTES // 100)
    assert report.recovered >= 8 and report.delivered == MESSAGES - report.recovered


# The journal itself, written through the delivery's own `Journal` and read by `Ledger.recover`.

def journal_of_two_batches(ledger: Ledger) -> Path:
    """A stopped delivery's journal of `SYNC`: batch 1 (seqs 1-3) delivered, batch 2 (seqs 4-5) one
    delivered and one rejected, batch 3 (seq 6) handed over without an answer."""
    ledger.add_planned(SYNC, [PlannedMessage(f"m{i}", f"k{i}", "x", b'{"n":%d}' % i) for i in range(6)])
    journal = ledger.journal(SYNC, destination="splunk_hec", run_id="run-1")
    assert journal is not None
    journal.answered(journal.handed_over([1, 2, 3]), [(seq, DELIVERED, 1, None) for seq in (1, 2, 3)])
    second = journal.handed_over([4, 5])
    journal.handed_over([6])
    journal.answered(second, [(4, DELIVERED, 1, None), (5, "rejected", 1, "code 6: invalid data format")])
    journal.close(remove=False)
    return journal.path


def statuses(ledger: Ledger) -> dict[int, str]:
    return dict(ledger.con.execute("SELECT seq, status FROM ledger WHERE sync = ? ORDER BY seq",
                                   [SYNC]).fetchall())


def test_a_journal_left_by_a_stopped_delivery_is_logged_and_removed(ledger):
    path = journal_of_two_batches(ledger)

    ledger.recover()

    assert statuses(ledger) == {1: DELIVERED, 2: DELIVERED, 3: DELIVERED, 4: DELIVERED, 5: "rejected",
                                6: PENDING}
    assert not path.exists()
    assert ledger.recovered[SYNC].outcomes == 5 and ledger.recovered[SYNC].in_flight == 1
    # The unanswered batch is on record as handed over, then planned again.
    assert ledger.con.execute("SELECT list(status ORDER BY id) FROM outcomes WHERE sync = ? AND seq = 6",
                              [SYNC]).fetchone()[0] == ["in_flight", PENDING]
    [(key, source, reason)] = ledger.rejected_since(SYNC, "run-1")
    assert (key, source) == ("k4", "splunk_hec") and "code 6" in reason


def test_a_torn_last_line_is_replayed_up_to_the_last_complete_record(ledger):
    path = journal_of_two_batches(ledger)
    with path.open("r+b") as handle:  # the process died writing batch 2's answer
        handle.truncate(path.stat().st_size - 20)

    ledger.recover()

    assert statuses(ledger) == {1: DELIVERED, 2: DELIVERED, 3: DELIVERED, 4: PENDING, 5: PENDING, 6: PENDING}
    assert ledger.recovered[SYNC].in_flight == 3 and ledger.recovered[SYNC].torn == 1


@pytest.mark.parametrize("bad_line", [b'{"b": 2}', b'{"b": "two", "done": [[4]]}', b'{"done": []}',
                                      b'{"b": 2, "done": [[4, "delivered", 1, null, "r", "not a time"]]}'])
def test_a_line_no_delivery_writes_ends_the_replay_there_and_never_blocks_the_ledger(ledger, bad_line):
    path = journal_of_two_batches(ledger)
    header, sent, answered, *_ = path.read_bytes().split(b"\n")  # batch 1 handed over, then its answer
    path.write_bytes(b"\n".join([header, sent, answered, bad_line, b'{"b": 9, "sent": [6]}', b""]))

    again = Ledger(ledger.con)  # recovers; must not raise

    assert statuses(again) == {1: DELIVERED, 2: DELIVERED, 3: DELIVERED, 4: PENDING, 5: PENDING, 6: PENDING}
    assert again.recovered[SYNC].torn == 1 and not path.exists()


@pytest.mark.parametrize("header", [b'{"sync": "s"}', b'{"sync": "s", "mark": "x", "destination": "d"}',
                                    b"[1, 2]"])
def test_a_journal_whose_header_is_not_ours_is_removed_without_blocking_the_ledger(ledger, header):
    path = journal_of_two_batches(ledger)
    path.write_bytes(header + b"\n")

    Ledger(ledger.con)

    assert not path.exists() and set(statuses(ledger).values()) == {PENDING}


def test_recovering_a_journal_again_logs_nothing_twice(ledger, tmp_path):
    path = journal_of_two_batches(ledger)
    shutil.copy(path, tmp_path / "copy")
    ledger.recover()
    logged = ledger.con.execute("SELECT count(*) FROM outcomes").fetchone()[0]
    shutil.copy(tmp_path / "copy", path)  # the process died after logging the journal, before removing it

    again = Ledger(ledger.con)

    assert ledger.con.execute("SELECT count(*) FROM outcomes").fetchone()[0] == logged
    assert again.recovered[SYNC].skipped == 6 and not path.exists()
    assert len(ledger.rejected_since(SYNC, "run-1")) == 1


def test_answers_the_stopped_delivery_had_logged_are_not_logged_again(ledger):
    ledger.add_planned(SYNC, [PlannedMessage(f"m{i}", f"k{i}", "x", b'{"n":%d}' % i) for i in range(4)])
    journal = ledger.journal(SYNC, destination="segment", run_id=None)
    journal.answered(journal.handed_over([1, 2]), [(1, DELIVERED, 1, None), (2, DELIVERED, 1, None)])
    ledger.log_outcomes(SYNC, [(1, DELIVERED, 1, None), (2, DELIVERED, 1, None)])  # its periodic write
    journal.answered(journal.handed_over([3, 4]), [(3, DELIVERED, 1, None), (4, DELIVERED, 1, None)])
    journal.close(remove=False)  # killed before it cut the journal back

    ledger.recover()

    assert ledger.con.execute("SELECT count(*) FROM outcomes WHERE sync = ?", [SYNC]).fetchone()[0] == 4
    assert ledger.recovered[SYNC].outcomes == 2 and ledger.recovered[SYNC].skipped == 2


def test_a_journal_being_written_is_not_recovered_under_its_delivery(ledger):
    ledger.add_planned(SYNC, [PlannedMessage("m0", "k0", "x", b'{"n":0}')])
    journal = ledger.journal(SYNC, destination="segment", run_id=None)
    journal.handed_over([1])

    Ledger(ledger.con)  # another reader of the same file, while the batch is on the wire

    assert journal.path.exists() and statuses(ledger) == {1: PENDING}
    journal.close(remove=True)


def test_a_delivery_leaves_no_journal(ledger, tmp_path):
    ledger.add_planned(SYNC, [PlannedMessage(f"m{i}", f"k{i}", "x", b'{"n":%d}' % i) for i in range(5)])

    class Takes:
        name, max_batch_bytes = "test", 20

        def send_batch(self, payloads, *, on_retry=None):
            return None

    report = deliver_pending(ledger, SYNC, Takes())

    assert report.delivered == 5 and not list((tmp_path / "staging").glob("*.outcomes.jsonl"))


def test_a_flush_keeps_in_the_journal_the_batches_not_yet_in_the_ledger(ledger):
    ledger.add_planned(SYNC, [PlannedMessage(f"m{i}", f"k{i}", "x", b'{"n":%d}' % i) for i in range(3)])
    journal = ledger.journal(SYNC, destination="segment", run_id=None)
    first, second, third = (journal.handed_over([seq]) for seq in (1, 2, 3))
    journal.answered(first, [(1, DELIVERED, 1, None)])
    journal.answered(second, [(2, DELIVERED, 1, None)])  # answered, but the flush below predates it
    ledger.log_outcomes(SYNC, [(1, DELIVERED, 1, None)])
    journal.flushed([first])
    journal.close(remove=False)

    ledger.recover()

    assert statuses(ledger) == {1: DELIVERED, 2: DELIVERED, 3: PENDING}
    assert (ledger.recovered[SYNC].outcomes, ledger.recovered[SYNC].in_flight) == (1, 1)


def test_a_receipt_in_the_journal_is_an_open_receipt_after_recovery(ledger):
    ledger.add_planned(SYNC, [PlannedMessage(f"m{i}", f"k{i}", "x", b'{"n":%d}' % i) for i in range(2)])
    sent_at = datetime(2026, 12, 6, 17, 0, 0, 123456, tzinfo=UTC)
    journal = ledger.journal(SYNC, destination="splunk_hec", run_id=None, fsync=True)
    journal.answered(journal.handed_over([1, 2]), [(seq, AWAITING_ACK, 1, None, "ack-7", sent_at)
                                                   for seq in (1, 2)])
    journal.close(remove=False)

    ledger.recover()

    [receipt] = ledger.awaiting_receipts(SYNC)
    assert (receipt.receipt, receipt.messages, receipt.sent_at) == ("ack-7", 2, sent_at)
    assert statuses(ledger) == {1: AWAITING_ACK, 2: AWAITING_ACK}
