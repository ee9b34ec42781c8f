"""Delivering pending messages to the sandbox's Segment Tracking API: faults, rejects, auth, rate and size
limits.

Messages are planned through `plan_file` (or, for a message our own validation would refuse,
`Ledger.add_planned`), delivered with `deliver_pending`, and checked at the sandbox's recorder.
"""

from __future__ import annotations

import itertools
import time
from collections import defaultdict
from datetime import UTC, datetime

import orjson
import pytest

from segment_ops.clients.base import RetryPolicy, VendorAuthError, VendorUnavailable
from segment_ops.clients.splunk_hec import HecConfigurationError, SplunkHecClient
from segment_ops.config import SANDBOX_SPLUNK_HEC_TOKEN, SANDBOX_SPLUNK_INDEX
from segment_ops.engine.delivery import (
    AwaitingAck,
    Confirmation,
    DeliveryError,
    deliver_pending,
    settle_awaiting,
)
from segment_ops.engine.ledger import PlannedMessage
from segment_ops.syncs.replay.reader import plan_file, replay_file
from segment_ops_tests.engine.conftest import ledger_counts, message_ids_received, track_calls, write_jsonl

SYNC = "replay"
# Spec §1: 500 KB per batch request (the sandbox reads it as 500 KiB, Segment may mean 500,000 bytes).
MAX_REQUEST_BYTES = 500_000


def calls_with_ids(count: int, *, pad: int = 0, prefix: str = "m") -> list[dict]:
    """Track calls carrying their own messageIds, so a test knows every id the sandbox must see."""
    return [dict(call, messageId=f"{prefix}-{i:06d}") for i, call in enumerate(track_calls(count, pad=pad))]


def plan(ledger, tmp_path, calls: list[dict], name: str = "calls.jsonl"):
    return plan_file(ledger, write_jsonl(tmp_path / name, calls))


@pytest.mark.slow
def test_faults_of_every_kind_still_deliver_each_message_once(tmp_path, ledger, segment_client,
                                                              clean_sandbox):
    count = 28_000
    calls = calls_with_ids(count, pad=400)  # ~500 bytes each: ~30 batches, so every fault kind gets its turn
    plan(ledger, tmp_path, calls)
    clean_sandbox.set_faults("segment", rate_429=0.04, rate_500=0.04, rate_503=0.04, rate_drop=0.04,
                             rate_drop_after=0.04, rate_slow=0.04, slow_seconds=0.05, retry_after_seconds=1)

    report = deliver_pending(ledger, SYNC, segment_client())

    stats = clean_sandbox.stats()["segment"]
    assert len(stats["faults"]) >= 4, stats["faults"]  # the faults really happened
    non_slow_faults = sum(n for kind, n in stats["faults"].items() if kind != "slow")
    assert report.delivered == count and report.retries == non_slow_faults
    assert ledger_counts(ledger) == (0, count, 0)
    # drop_after delivers a batch the client never hears about: it is re-sent and deduplicated by messageId.
    assert stats["received"] == count
    assert stats["messages"] - stats["received"] == stats.get("duplicates", 0)
    assert set(message_ids_received(clean_sandbox)) == {c["messageId"] for c in calls}
    assert "dropped" not in stats  # Segment dropped nothing silently


def test_segment_400_rejects_only_the_bad_message(tmp_path, ledger, segment_client, clean_sandbox):
    plan(ledger, tmp_path, calls_with_ids(200))
    # Our own validation refuses a message over 32 KB, so plant one directly in the ledger, as a
    # planner with a different size rule would: Segment answers its batch with 400.
    oversized = orjson.dumps({"type": "track", "userId": "big", "event": "Big", "messageId": "too-big",
                              "properties": {"blob": "x" * 40_000}})
    ledger.add_planned(SYNC, [PlannedMessage("too-big", "big", "track", oversized)])

    report = deliver_pending(ledger, SYNC, segment_client(), run_id="run-400")

    assert (report.delivered, report.rejected, report.failed) == (200, 1, 0)
    assert ledger_counts(ledger) == (0, 200, 1)
    assert clean_sandbox.seen("segment", "too-big") == 0
    assert clean_sandbox.stats()["segment"]["received"] == 200
    [(_, _, reason)] = ledger.rejected_since(SYNC, "run-400")
    assert "the limit is 32768" in reason  # Segment's own words


def test_a_rejected_message_is_not_sent_again_by_the_next_run(tmp_path, ledger, segment_client,
                                                              clean_sandbox):
    oversized = orjson.dumps({"type": "track", "userId": "big", "event": "Big",
                              "properties": {"b": "x" * 40_000}})
    ledger.add_planned(SYNC, [PlannedMessage("too-big", "big", "track", oversized)])
    deliver_pending(ledger, SYNC, segment_client())
    requests = clean_sandbox.stats()["segment"]["requests"]

    report = deliver_pending(ledger, SYNC, segment_client())

    assert report.requests == 0 and clean_sandbox.stats()["segment"]["requests"] == requests
    assert ledger_counts(ledger) == (0, 0, 1)


def test_a_number_segment_cannot_parse_loses_only_its_own_line(tmp_path, ledger, segment_client,
                                                               clean_sandbox):
    # 1e400 is valid JSON grammar but no double: Segment's parser refuses the request with 400.
    bad = b'{"type":"track","userId":"inf","event":"E","messageId":"huge-number","properties":{"x":1e400}}'
    path = write_jsonl(tmp_path / "calls.jsonl", [*calls_with_ids(50), bad])

    result = replay_file(ledger, path, segment_client)

    refused = result.plan.rejected + result.delivery.rejected  # by our validation, or by Segment
    assert refused == 1 and result.delivery.delivered == 50 and not result.ok
    assert clean_sandbox.stats()["segment"]["received"] == 50
    assert clean_sandbox.seen("segment", "huge-number") == 0
    assert ledger.counts(SYNC).pending == 0


def test_a_refused_credential_fails_fast_and_leaves_messages_pending(tmp_path, ledger, clean_sandbox):
    # Segment's edge answers 200 to a wrong write key (spec §7), so the credential refusal comes from a
    # destination that checks its token: Splunk HEC answers 403 code 4 "Invalid token" (spec §5).
    wrong_token = "11111111-2222-4333-8444-555555555555"
    plan(ledger, tmp_path, calls_with_ids(100))
    hec = SplunkHecClient(f"{clean_sandbox.url}/splunk", wrong_token)

    with pytest.raises(VendorAuthError) as caught:
        deliver_pending(ledger, SYNC, hec)
    hec.close()

    assert caught.value.status == 403 and caught.value.attempts == 1
    stats = clean_sandbox.stats()["splunk"]
    assert stats["requests"] == 1 and stats["status"] == {"403": 1}  # one batch, no retries
    assert ledger_counts(ledger) == (100, 0, 0)
    for text in (str(caught.value), repr(caught.value), caught.value.vendor_message):
        assert wrong_token not in text


def test_exhausted_retries_raise_and_leave_messages_pending(tmp_path, ledger, segment_client, clean_sandbox):
    plan(ledger, tmp_path, calls_with_ids(100))
    clean_sandbox.set_faults("segment", rate_503=1.0)
    impatient = RetryPolicy(max_attempts=3, backoff_initial=0.01, backoff_max=0.02)

    with pytest.raises(DeliveryError, match=r"100 message\(s\).*stay pending.*HTTP 503"):
        deliver_pending(ledger, SYNC, segment_client(retry=impatient))

    assert clean_sandbox.stats()["segment"]["requests"] == 3
    assert ledger_counts(ledger) == (100, 0, 0)


def test_messages_left_pending_by_exhausted_retries_are_delivered_by_the_next_run(
        tmp_path, ledger, segment_client, clean_sandbox):
    calls = calls_with_ids(100)
    plan(ledger, tmp_path, calls)
    clean_sandbox.set_faults("segment", rate_503=1.0)
    with pytest.raises(DeliveryError):
        deliver_pending(ledger, SYNC, segment_client(retry=RetryPolicy(max_attempts=2, backoff_initial=0.01)))
    clean_sandbox.clear_faults()

    report = deliver_pending(ledger, SYNC, segment_client())

    assert report.delivered == 100 and ledger_counts(ledger) == (0, 100, 0)
    assert set(message_ids_received(clean_sandbox)) == {c["messageId"] for c in calls}


@pytest.mark.slow
def test_request_rate_cap_holds_at_the_sandbox(tmp_path, ledger, segment_client, clean_sandbox):
    # Batches close by bytes, so 14,000 messages of ~500 bytes make ~15 requests of ~470 KB.
    plan(ledger, tmp_path, calls_with_ids(14_000, pad=400))
    cap = 5.0

    report = deliver_pending(ledger, SYNC, segment_client(max_requests_per_second=cap), max_in_flight=4)

    # Each request's arrival time at the sandbox: its messages share one receivedAt (and one sentAt).
    arrivals = sorted({(m["receivedAt"], m["sentAt"])
                       for m in clean_sandbox.received("segment", limit=20_000)})
    times = [datetime.fromisoformat(received.replace("Z", "+00:00")).timestamp() for received, _ in arrivals]
    assert len(times) == report.requests == clean_sandbox.stats()["segment"]["requests"] >= 12
    # The first `cap` requests may go at once (the bucket starts full); after that, at most `cap` per second.
    burst = int(cap)
    steady_rate = (len(times) - 1 - burst) / (times[-1] - times[burst])
    assert steady_rate <= cap * 1.1, f"{steady_rate:.2f} requests/s"
    for i, j in itertools.combinations(range(len(times)), 2):  # and no window ever beats burst + cap * length
        assert j - i + 1 <= burst + 1 + cap * (times[j] - times[i]) + 0.5


@pytest.mark.slow
def test_batches_are_packed_by_bytes_under_the_request_limit(tmp_path, ledger, segment_client, clean_sandbox):
    small = calls_with_ids(5_000, pad=100, prefix="s")  # ~200 bytes each
    large = calls_with_ids(300, pad=4_000, prefix="l")  # ~4 KB each
    plan(ledger, tmp_path, small + large)
    size = {c["messageId"]: len(orjson.dumps(c)) for c in small + large}

    deliver_pending(ledger, SYNC, segment_client(), max_in_flight=1)  # one request at a time: one sentAt each

    batches: defaultdict[str, list[str]] = defaultdict(list)
    for message in clean_sandbox.received("segment", limit=10_000):
        batches[message["sentAt"]].append(message["messageId"])
    stats = clean_sandbox.stats()["segment"]
    assert stats["status"] == {"200": len(batches)} and stats["received"] == len(size)
    envelope = len(b'{"batch":[],"sentAt":"2024-01-01T00:00:00.000+00:00"}')
    for ids in batches.values():
        body_bytes = envelope + sum(size[mid] for mid in ids) + len(ids) - 1
        assert body_bytes <= MAX_REQUEST_BYTES
    per_request: defaultdict[str, list[int]] = defaultdict(list)
    for ids in batches.values():
        kinds = {mid[0] for mid in ids}
        if len(kinds) == 1:  # leave out the one batch where small messages end and large ones begin
            per_request[kinds.pop()].append(len(ids))
    assert min(per_request["s"]) > 10 * max(per_request["l"])
    assert len(per_request["l"]) >= 2 and max(per_request["l"]) <= 120


def hec_events(count: int, bad_at: int, bad: bytes) -> list[bytes]:
    """`count` valid HEC events with `bad` at index `bad_at`."""
    events = [orjson.dumps({"event": {"n": i}, "index": SANDBOX_SPLUNK_INDEX}) for i in range(count)]
    events[bad_at] = bad
    return events


@pytest.mark.parametrize(
    ("bad", "code"),
    [(b"[3]", 6), (b'{"time": 1}', 12), (b'{"event": "  "}', 13),
     (b'{"event": "x", "fields": {"a": {"b": 1}}}', 15)],
    ids=["6-not-an-object", "12-no-event", "13-blank-event", "15-nested-fields"],
)
def test_a_siem_batch_refused_at_one_event_keeps_the_accepted_prefix_and_resends_only_the_rest(
        ledger, clean_sandbox, bad, code):
    # HEC answers these codes with invalid-event-number, after indexing the events before it (spec §7).
    # HEC does not deduplicate, so those must not be sent again.
    events = hec_events(6, 3, bad)
    ledger.add_planned("audit",
                       [PlannedMessage(f"evt-{i}", f"evt-{i}", "hec", e) for i, e in enumerate(events)])
    client = SplunkHecClient(f"{clean_sandbox.url}/splunk", SANDBOX_SPLUNK_HEC_TOKEN)

    report = deliver_pending(ledger, "audit", client, run_id="run-hec")

    assert (report.delivered, report.rejected, report.failed) == (5, 1, 0)
    received = [item["event"]["n"] for item in clean_sandbox.received("splunk", limit=100)]
    assert sorted(received) == [0, 1, 2, 4, 5]  # each accepted event exactly once
    [(record_key, source, reason)] = ledger.rejected_since("audit", "run-hec")
    assert (record_key, source) == ("evt-3", "splunk_hec") and f"code {code}" in reason


def test_an_index_refused_mid_batch_records_the_prefix_then_stops_the_run(ledger, clean_sandbox):
    # Code 7 also names the first refused event; the ones before it were indexed (spec §7). The index is
    # the token's setup, not the event's fault: nothing is rejected, the rest stays pending.
    events = hec_events(6, 2, orjson.dumps({"event": {"n": 2}, "index": "not_allowed"}))
    ledger.add_planned("audit",
                       [PlannedMessage(f"evt-{i}", f"evt-{i}", "hec", e) for i, e in enumerate(events)])
    client = SplunkHecClient(f"{clean_sandbox.url}/splunk", SANDBOX_SPLUNK_HEC_TOKEN)

    with pytest.raises(HecConfigurationError, match="Incorrect index"):
        deliver_pending(ledger, "audit", client, run_id="run-hec")

    assert [item["event"]["n"] for item in clean_sandbox.received("splunk")] == [0, 1]
    # the prefix delivered, the rest pending, none rejected
    assert ledger_counts(ledger, "audit") == (4, 2, 0)
    assert clean_sandbox.stats()["splunk"]["requests"] == 1


class TakesThenConfirms:
    """A destination that takes every batch and confirms it later under a receipt of its own."""

    name = "later"
    max_batch_bytes = 200

    def __init__(self) -> None:
        self.batches: list[list[bytes]] = []

    def send_batch(self, payloads, *, on_retry=None) -> AwaitingAck:
        self.batches.append(list(payloads))
        return AwaitingAck(f"receipt-{len(self.batches) - 1}")


def plan_small(ledger, count: int, sync: str = "later") -> None:
    ledger.add_planned(sync, [PlannedMessage(f"m{i}", f"k{i}", "x", b'{"n":%d,"pad":"%s"}' % (i, b"x" * 60))
                              for i in range(count)])


def test_a_batch_awaiting_ack_is_recorded_with_its_receipt_and_not_sent_again(ledger):
    plan_small(ledger, 6)
    destination = TakesThenConfirms()

    first = deliver_pending(ledger, "later", destination)
    again = deliver_pending(ledger, "later", destination)

    assert (first.delivered, first.awaiting_ack, again.requests) == (0, 6, 0)
    assert ledger_counts(ledger, "later") == (0, 0, 0) and ledger.counts("later").awaiting_ack == 6
    assert [r.receipt for r in ledger.awaiting_receipts("later")] == [f"receipt-{i}" for i in
                                                                      range(len(destination.batches))]


def test_settling_delivers_what_is_confirmed_and_keeps_the_rest_waiting(ledger):
    plan_small(ledger, 6)
    destination = TakesThenConfirms()
    deliver_pending(ledger, "later", destination, max_in_flight=1)
    asked: list[list[str]] = []

    def confirm(receipts):
        asked.append([r.receipt for r in receipts])
        return {"receipt-0": Confirmation.CONFIRMED}

    report = settle_awaiting(ledger, "later", confirm, timeout=300)

    assert (report.confirmed, report.expired, report.queries) == (2, 0, 1)
    assert report.awaiting == ledger.counts("later").awaiting_ack == 4
    assert asked == [[f"receipt-{i}" for i in range(3)]]
    assert ledger.counts("later").delivered == 2


def test_settling_reopens_what_stayed_unconfirmed_past_the_timeout(ledger):
    plan_small(ledger, 4)
    deliver_pending(ledger, "later", TakesThenConfirms())
    time.sleep(0.05)

    report = settle_awaiting(ledger, "later",
                             lambda receipts: {r.receipt: Confirmation.WAITING for r in receipts},
                             timeout=0.01)
    resent = deliver_pending(ledger, "later", destination := TakesThenConfirms())

    assert (report.expired, report.awaiting) == (4, 0)
    assert resent.awaiting_ack == 4 and sum(len(b) for b in destination.batches) == 4


def test_settling_without_a_timeout_only_confirms(ledger):
    plan_small(ledger, 2)
    deliver_pending(ledger, "later", TakesThenConfirms())

    report = settle_awaiting(ledger, "later", lambda receipts: {}, timeout=None)

    assert (report.confirmed, report.expired, report.awaiting) == (0, 0, 2)


def test_settling_polls_again_until_confirmed_within_its_wait(ledger):
    plan_small(ledger, 2)
    deliver_pending(ledger, "later", TakesThenConfirms())
    answers = iter([{}, {}, {"receipt-0": Confirmation.CONFIRMED}])
    naps: list[float] = []

    report = settle_awaiting(ledger, "later", lambda receipts: next(answers), timeout=300, wait=10.0,
                             sleep=naps.append)

    assert (report.confirmed, report.awaiting, report.queries) == (2, 0, 3)
    assert naps == [0.5, 1.0]


def test_a_failed_confirmation_request_confirms_nothing_and_keeps_what_is_within_the_timeout(ledger):
    plan_small(ledger, 2)
    deliver_pending(ledger, "later", TakesThenConfirms())

    def down(receipts):
        raise VendorUnavailable("later", "POST", "/ack", "HTTP 503: busy", status=503)

    report = settle_awaiting(ledger, "later", down, timeout=300)

    assert (report.confirmed, report.expired, report.awaiting) == (0, 0, 2) and "503" in report.error


def test_receipts_past_the_timeout_expire_even_when_the_confirmation_request_fails(ledger):
    plan_small(ledger, 2)
    deliver_pending(ledger, "later", TakesThenConfirms())
    time.sleep(0.05)

    def down(receipts):
        raise VendorUnavailable("later", "POST", "/ack", "HTTP 503: busy", status=503)

    report = settle_awaiting(ledger, "later", down, timeout=0.01)

    assert (report.expired, report.awaiting) == (2, 0) and "503" in report.error
    assert ledger_counts(ledger, "later")[0] == 2  # pending: the next delivery sends them again


def test_a_receipt_the_destination_lost_is_pending_again_at_once_and_the_others_are_untouched(ledger):
    plan_small(ledger, 6)
    deliver_pending(ledger, "later", TakesThenConfirms(), max_in_flight=1)

    report = settle_awaiting(ledger, "later", lambda receipts: {"receipt-0": Confirmation.LOST,
                                                                 "receipt-1": Confirmation.CONFIRMED},
                             timeout=300)

    assert (report.lost, report.confirmed, report.expired, report.awaiting) == (2, 2, 0, 2)
    assert [r.receipt for r in ledger.awaiting_receipts("later")] == ["receipt-2"]
    assert ledger_counts(ledger, "later")[:2] == (2, 2)  # (pending, delivered)


def test_open_receipts_carry_when_their_request_began(ledger):
    plan_small(ledger, 2)
    before = datetime.now(UTC)
    deliver_pending(ledger, "later", TakesThenConfirms())

    [receipt] = ledger.awaiting_receipts("later")

    assert before <= receipt.sent_at <= receipt.taken_at


class Crashes:
    """Takes batches, and the process dies before the `crash_at`-th one (a kill between two requests)."""

    name = "no-dedupe"
    max_batch_bytes = 200

    def __init__(self, crash_at: int) -> None:
        self.crash_at, self.sent = crash_at, 0

    def send_batch(self, payloads, *, on_retry=None) -> None:
        self.sent += 1
        if self.sent == self.crash_at:
            raise SystemExit("killed")


def test_recording_each_batch_keeps_every_batch_taken_before_a_crash(ledger):
    plan_small(ledger, 12, sync="no-dedupe")

    with pytest.raises(SystemExit):
        deliver_pending(ledger, "no-dedupe", Crashes(crash_at=4), max_in_flight=1, record_each_batch=True)
    ledger.recover()  # what the next run's ledger does first: the answers are in the outcome journal

    assert ledger.counts("no-dedupe").delivered == 6  # three batches of two, none to be sent again
