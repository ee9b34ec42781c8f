"""Read-back verification in the engine: which delivered messages are drawn, what is recorded, and what the
sandbox's Profile API (real HTTP) says about calls Segment kept, dropped or saw overwritten."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import httpx
import orjson
import pytest

from segment_ops.clients.base import RetryPolicy, VendorUnavailable
from segment_ops.clients.segment_profiles import SegmentProfilesClient
from segment_ops.config import (
    SANDBOX_SEGMENT_PROFILES_SPACE_ID,
    SANDBOX_SEGMENT_PROFILES_TOKEN,
    SANDBOX_SEGMENT_WRITE_KEY,
)
from segment_ops.engine.calls import prepare_call
from segment_ops.engine.delivery import deliver_pending
from segment_ops.engine.ledger import (
    DELIVERED,
    MATCHED,
    MISSING,
    LedgerCounts,
    PlannedMessage,
    ReadBack,
)
from segment_ops.engine.verification import same_value, verify_sample
from segment_ops_tests.conftest import PROFILES_DELAY_SECONDS

SYNC = "reverse_etl_user_traits"
LATER = timedelta(hours=1)  # "now" for drawing: everything delivered is old enough


def plan(ledger, run: str, users: dict[str, dict], *, call: str = "identify") -> list[int]:
    """Plan one identify (or track) per user with its traits, as run `run`; returns the seqs."""
    messages = []
    for user, traits in users.items():
        extra = {"traits": traits} if call == "identify" else {"event": "E"}
        body = {"type": call, "userId": user, **extra}
        message_id, payload = prepare_call(body, sync=SYNC, record_key=user)
        messages.append(PlannedMessage(message_id, user, call, payload))
    return list(ledger.add_planned(SYNC, messages, run_id=run).seqs)


def deliver(ledger, seqs: list[int]) -> None:
    ledger.log_outcomes(SYNC, [(seq, DELIVERED, 1, None) for seq in seqs])


def drawn(ledger, *, per_run: int = 20, before: datetime | None = None) -> list[str]:
    before = before or datetime.now(UTC) + LATER
    sample = ledger.read_back_sample(SYNC, delivered_before=before, per_run=per_run)
    return [m.record_key for m in sample.messages]


# --- what is drawn (the ledger alone) -----------------------------------------------------------------


def test_only_delivered_identify_calls_delivered_before_the_cutoff_are_drawn(ledger):
    delivered = plan(ledger, "r1", {"u1": {"a": 1}, "u2": {"a": 2}})
    plan(ledger, "r1", {"u3": {"a": 3}})  # still pending
    deliver(ledger, plan(ledger, "r1", {"u4": {}}, call="track"))
    deliver(ledger, delivered)

    assert sorted(drawn(ledger)) == ["u1", "u2"]
    sample = ledger.read_back_sample(SYNC, delivered_before=datetime.now(UTC) - LATER, per_run=20)
    assert (sample.messages, sample.too_recent) == ([], 2)  # delivered too recently: a later check's


def test_the_oldest_unsampled_run_is_drawn_first_and_the_sample_is_bounded_and_repeatable(ledger):
    deliver(ledger, plan(ledger, "r1", {f"a{i}": {"n": i} for i in range(5)}))
    deliver(ledger, plan(ledger, "r2", {f"b{i}": {"n": i} for i in range(5)}))

    first = drawn(ledger, per_run=3)
    assert len(first) == 3 and all(key.startswith("a") for key in first)
    assert drawn(ledger, per_run=3) == first  # nothing recorded: the same sample again
    assert len(drawn(ledger, per_run=7)) == 7  # run r1 (5), then r2 fills the rest


def test_a_sampled_run_is_not_drawn_again_and_its_matches_become_verified(ledger):
    deliver(ledger, plan(ledger, "r1", {"u1": {"a": 1}, "u2": {"a": 2}, "u3": {"a": 3}}))
    deliver(ledger, plan(ledger, "r2", {"v1": {"a": 1}}))
    sample = ledger.read_back_sample(SYNC, delivered_before=datetime.now(UTC) + LATER, per_run=2)
    one, two = sample.messages

    ledger.record_read_backs(SYNC, [ReadBack(one.seq, MATCHED), ReadBack(two.seq, MISSING, "user_id:x")])

    assert ledger.counts(SYNC) == LedgerCounts(pending=0, delivered=3, rejected=0, verified=1)
    assert drawn(ledger) == ["v1"]  # r1 is sampled: its third message is not drawn, nor the missing one
    assert sample.runs == 1 and sample.runs_waiting == 1


def test_only_the_latest_delivered_message_of_a_record_is_drawn(ledger):
    deliver(ledger, plan(ledger, "r1", {"u1": {"plan": "free"}}))
    deliver(ledger, plan(ledger, "r2", {"u1": {"plan": "pro"}}))  # overwrote what r1 set

    [message] = ledger.read_back_sample(SYNC, delivered_before=datetime.now(UTC) + LATER, per_run=20).messages
    assert orjson.loads(message.payload)["traits"] == {"plan": "pro"}


def test_an_unknown_read_back_outcome_records_nothing(ledger):
    deliver(ledger, seqs := plan(ledger, "r1", {"u1": {"a": 1}}))

    with pytest.raises(ValueError, match="landed"):
        ledger.record_read_backs(SYNC, [ReadBack(seqs[0], "landed")])
    assert ledger.counts(SYNC).verified == 0 and drawn(ledger) == ["u1"]


def test_health_figures_count_what_was_read_back(ledger):
    deliver(ledger, seqs := plan(ledger, "r1", {"u1": {}, "u2": {}, "u3": {}, "u4": {}}))
    ledger.record_read_backs(SYNC, [ReadBack(seqs[0], MATCHED), ReadBack(seqs[1], MATCHED),
                                    ReadBack(seqs[2], MISSING, "user_id:u3")])

    [figures] = ledger.delivery_figures(datetime.now(UTC) - timedelta(hours=1))
    assert (figures.delivered, figures.read_back, figures.verified, figures.missing) == (4, 3, 2, 1)


@pytest.mark.parametrize(("sent", "found", "same"), [
    (1, 1.0, True), (True, 1, False), ("1", 1, False), (None, None, True),
    ({"a": [1, {"b": None}]}, {"a": [1.0, {}]}, True), ({"a": 1}, {"a": 1, "b": 2}, False),
    ([1, 2], [2, 1], False),
])
def test_a_trait_reads_back_unchanged_by_json_equality(sent, found, same):
    assert same_value(sent, found) is same


# --- against the sandbox's Profile API ----------------------------------------------------------------


@pytest.fixture
def profiles(clean_sandbox):
    with SegmentProfilesClient(f"{clean_sandbox.url}/profiles", SANDBOX_SEGMENT_PROFILES_SPACE_ID,
                               SANDBOX_SEGMENT_PROFILES_TOKEN) as client:
        yield client


def send_and_settle(ledger, segment_client, seqs: list[int], **client_options: object) -> None:
    deliver_pending(ledger, SYNC, segment_client(**client_options))
    assert ledger.counts(SYNC).delivered == len(seqs)
    time.sleep(PROFILES_DELAY_SECONDS + 0.15)  # Segment's profiles update asynchronously


def verify(ledger, profiles, size: int = 20):
    return verify_sample(ledger, SYNC, profiles, sample_size=size, delay=timedelta(0))


@pytest.mark.slow
def test_calls_delivered_under_the_right_key_are_found_and_become_verified(ledger, segment_client, profiles):
    users = {f"u{i}": {"plan": "pro", "seats": i, "email": None} for i in range(5)}
    send_and_settle(ledger, segment_client, plan(ledger, "r1", users))

    report = verify(ledger, profiles, size=3)

    assert (report.sample_size, report.profiles_found, report.profiles_missing) == (3, 3, 0)
    assert report.verified == 3
    assert (report.traits_compared, report.traits_matching, report.mismatches) == (9, 9, [])
    assert ledger.counts(SYNC).verified == 3 and ledger.counts(SYNC).delivered == 2
    assert verify(ledger, profiles).sample_size == 0  # the run is sampled: nothing is read twice


@pytest.mark.slow
def test_calls_segment_dropped_under_a_wrong_write_key_are_missing(ledger, segment_client, profiles,
                                                                   clean_sandbox):
    seqs = plan(ledger, "r1", {"u1": {"plan": "pro"}, "u2": {"plan": "free"}})
    send_and_settle(ledger, segment_client, seqs, write_key="a-key-no-source-has")

    report = verify(ledger, profiles)

    assert clean_sandbox.stats()["segment"]["dropped"] == {"unknown_write_key": 2}  # answered 200, lost
    assert (report.sample_size, report.profiles_missing, report.missing_share) == (2, 2, 1.0)
    assert sorted(report.missing_profiles) == [("u1", "user_id:u1"), ("u2", "user_id:u2")]
    assert ledger.counts(SYNC).verified == 0 and ledger.counts(SYNC).delivered == 2


@pytest.mark.slow
def test_a_trait_another_source_overwrote_is_a_mismatch_not_a_missing_profile(ledger, segment_client,
                                                                              profiles, clean_sandbox):
    send_and_settle(ledger, segment_client, plan(ledger, "r1", {"u1": {"plan": "pro", "seats": 3}}))
    with httpx.Client(base_url=clean_sandbox.url) as http:  # another source of the workspace writes later
        http.post("/segment/v1/identify", auth=(SANDBOX_SEGMENT_WRITE_KEY, ""),
                  json={"userId": "u1", "traits": {"plan": "enterprise"}, "messageId": "other-source-1"})
    time.sleep(PROFILES_DELAY_SECONDS + 0.15)

    report = verify(ledger, profiles)

    assert (report.profiles_found, report.profiles_missing) == (1, 0)
    assert (report.mismatched, report.verified) == (1, 0)
    assert (report.traits_compared, report.traits_matching) == (2, 1)
    [mismatch] = report.mismatches
    assert (mismatch.record_key, mismatch.trait) == ("u1", "plan")
    assert (mismatch.sent, mismatch.found) == ("pro", "enterprise")
    assert ledger.counts(SYNC).delivered == 1  # not verified, and not read again
    assert verify(ledger, profiles).sample_size == 0


@pytest.mark.slow
def test_a_profile_api_failure_records_nothing(ledger, segment_client, profiles, clean_sandbox):
    send_and_settle(ledger, segment_client, plan(ledger, "r1", {"u1": {"plan": "pro"}}))
    clean_sandbox.set_faults("profiles", rate_503=1.0)
    profiles.http.retry = RetryPolicy(max_attempts=1)

    with pytest.raises(VendorUnavailable, match="503"):
        verify(ledger, profiles)

    assert drawn(ledger) == ["u1"]  # drawn again next time
    assert ledger.counts(SYNC) == LedgerCounts(pending=0, delivered=1, rejected=0)
