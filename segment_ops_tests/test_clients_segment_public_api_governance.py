"""The Segment Public API client's regulations and tracking plans over real HTTP against the sandbox: a
regulation is filed once (retried only when nothing can have been filed), refusals are final and name
Segment's reason without the token, lists are walked to the end with their filters."""

from __future__ import annotations

import pytest

from segment_ops.clients.base import (
    RetryPolicy,
    VendorAuthError,
    VendorFatalError,
    VendorRequestError,
    VendorUnavailable,
)
from segment_ops.clients.segment_public_api import RegulationOutcomeUnknown, SegmentPublicApiClient
from segment_ops.config import SANDBOX_SEGMENT_PUBLIC_API_TOKEN, SANDBOX_SEGMENT_WRITE_KEY
from segment_ops.sandbox.segment.data import DEMO_TRACKING_PLAN_ID
from segment_ops_tests.test_clients_base import SleepRecorder

SOURCE = "src_segment_ops"


def client(sandbox, *, token: str = SANDBOX_SEGMENT_PUBLIC_API_TOKEN, sleep=None,
           retry: RetryPolicy | None = None) -> SegmentPublicApiClient:
    made = SegmentPublicApiClient(f"{sandbox.url}/segmentapis", token,
                                  retry=retry or RetryPolicy(max_attempts=4))
    made.http.sleep = sleep or SleepRecorder()
    return made


@pytest.fixture
def instant(clean_sandbox):
    """The clean session sandbox, its regulations finishing as soon as they are filed."""
    clean_sandbox.regulation_settings(running_after_seconds=0, finished_after_seconds=0)
    return clean_sandbox


def filed_count(sandbox) -> int:
    with client(sandbox) as api:
        return len(list(api.iter_regulations())) + len(list(api.iter_regulations(source_id=SOURCE)))


def test_a_filed_regulation_reads_back_and_is_listed(instant):
    with client(instant) as api:
        regulate_id = api.create_regulation("SUPPRESS_WITH_DELETE", ["usr_1", "usr_2"])
        found = api.get_regulation(regulate_id)
        [entry] = api.iter_regulations()

    assert found["id"] == regulate_id and found["overallStatus"] == "FINISHED"
    assert (entry["id"], entry["subjects"], entry["regulationType"], entry["subjectType"]) == (
        regulate_id, ["usr_1", "usr_2"], "SUPPRESS_WITH_DELETE", "USER_ID")


def test_a_source_regulation_is_listed_under_its_source(instant):
    with client(instant) as api:
        regulate_id = api.create_regulation("DELETE_INTERNAL", ["obj-1"], source_id=SOURCE)
        in_workspace = list(api.iter_regulations())
        [under_source] = api.iter_regulations(source_id=SOURCE)

    assert in_workspace == [] and under_source["id"] == regulate_id


def test_the_list_is_walked_page_by_page_with_its_filters(instant):
    instant.regulation_settings(outcomes=[{"pattern": "^broken", "status": "FAILED"}])
    with client(instant) as api:
        suppressions = [api.create_regulation("SUPPRESS_ONLY", [f"usr_{n}"]) for n in range(3)]
        deletion = api.create_regulation("DELETE_ONLY", ["usr_9"])
        failed = api.create_regulation("DELETE_ONLY", ["broken-1"])

        every = [r["id"] for r in api.iter_regulations(page_size=2)]
        typed = [r["id"] for r in api.iter_regulations(regulation_types=["SUPPRESS_ONLY", "DELETE_INTERNAL"],
                                                       page_size=1)]
        finished_deletions = [r["id"] for r in api.iter_regulations(status="FINISHED",
                                                                    regulation_types=["DELETE_ONLY"])]

    assert every == [failed, deletion, *suppressions[::-1]]
    assert typed == suppressions[::-1]
    assert finished_deletions == [deletion]


def test_a_throttled_filing_is_retried_and_files_once(instant):
    instant.set_faults("segmentapis", rate_429=1.0, retry_after_seconds=2)
    retries = []
    sleep = SleepRecorder(hook=instant.clear_faults)

    with client(instant, sleep=sleep) as api:
        regulate_id = api.create_regulation("SUPPRESS_ONLY", ["usr_1"], on_retry=retries.append)

    assert len(retries) == 1 and retries[0].reason.startswith("HTTP 429") and sleep.delays == [2.0]
    assert filed_count(instant) == 1 and regulate_id


@pytest.mark.parametrize("fault", ["rate_503", "rate_drop", "rate_drop_after"])
def test_a_filing_that_may_have_reached_segment_is_not_retried(instant, fault):
    instant.set_faults("segmentapis", **{fault: 1.0})

    with client(instant) as api, pytest.raises(RegulationOutcomeUnknown, match="reconcile") as raised:
        api.create_regulation("DELETE_ONLY", ["usr_1"])
    instant.clear_faults()

    assert raised.value.attempts == 1
    assert instant.stats()["segmentapis"]["requests"] == 1  # no second POST
    # drop_after: Segment filed it though the answer was lost; reconciling finds exactly that one.
    assert filed_count(instant) == (1 if fault == "rate_drop_after" else 0)


def test_running_out_of_attempts_tells_a_lost_answer_from_a_throttle(instant):
    single = RetryPolicy(max_attempts=1)
    instant.set_faults("segmentapis", rate_503=1.0)
    with client(instant, retry=single) as api, pytest.raises(RegulationOutcomeUnknown):
        api.create_regulation("DELETE_ONLY", ["usr_1"])

    instant.set_faults("segmentapis", rate_429=1.0)
    with client(instant, retry=single) as api, pytest.raises(VendorUnavailable) as throttled:
        api.create_regulation("DELETE_ONLY", ["usr_1"])

    assert not isinstance(throttled.value, RegulationOutcomeUnknown) and throttled.value.status == 429


def test_a_refused_filing_is_final_with_segments_reason(instant):
    instant.regulation_settings(max_subject_ids=2)

    with client(instant) as api, pytest.raises(VendorFatalError) as raised:
        api.create_regulation("SUPPRESS_ONLY", ["a", "b", "c"])

    assert raised.value.status == 422 and "at most 2" in raised.value.vendor_message
    assert raised.value.attempts == 1 and filed_count(instant) == 0


def test_an_unknown_source_or_type_is_final(instant):
    with client(instant) as api:
        with pytest.raises(VendorFatalError) as unknown_source:
            api.create_regulation("SUPPRESS_ONLY", ["a"], source_id="src_nope")
        with pytest.raises(VendorFatalError) as unknown_type:
            api.create_regulation("FORGET_ME", ["a"])

    assert unknown_source.value.status == 404 and unknown_type.value.status == 422
    assert "regulationType" in unknown_type.value.vendor_message


def test_a_wrong_token_is_an_auth_error_that_never_shows_the_token(instant):
    token = "sgp_not_the_right_token_1234"
    with client(instant, token=token) as api, pytest.raises(VendorAuthError) as raised:
        api.create_regulation("SUPPRESS_ONLY", ["a"])

    assert raised.value.status == 401 and token not in str(raised.value) and token not in repr(raised.value)


def test_an_unknown_regulation_is_a_404_request_error(instant):
    with client(instant) as api, pytest.raises(VendorRequestError) as raised:
        api.get_regulation("no/such id")

    assert raised.value.status == 404 and raised.value.path == "/regulations/no%2Fsuch%20id"


def test_tracking_plans_their_sources_and_rules_are_walked(clean_sandbox):
    with client(clean_sandbox) as api:
        plans = list(api.iter_tracking_plans(page_size=1))
        live = list(api.iter_tracking_plans(plan_type="LIVE"))
        [source] = api.iter_tracking_plan_sources(DEMO_TRACKING_PLAN_ID)
        rules = list(api.iter_tracking_plan_rules(DEMO_TRACKING_PLAN_ID, page_size=1))
        plan = api.get_tracking_plan(DEMO_TRACKING_PLAN_ID)

    assert len(plans) == 2 and live == plans and DEMO_TRACKING_PLAN_ID in {p["id"] for p in plans}
    assert source["writeKeys"] == [SANDBOX_SEGMENT_WRITE_KEY]
    assert [(r["type"], r.get("key")) for r in rules] == [
        ("COMMON", None), ("IDENTIFY", None), ("GROUP", None), ("TRACK", "Order Completed")]
    assert plan["name"] == "segment-ops reverse ETL"


def test_replacing_rules_is_what_the_plan_then_lists(clean_sandbox):
    rule = {"type": "IDENTIFY", "version": 3, "jsonSchema": {"type": "object", "properties": {
        "traits": {"type": "object", "required": ["email"]}}}}

    with client(clean_sandbox) as api:
        api.replace_tracking_plan_rules(DEMO_TRACKING_PLAN_ID, [rule])
        [listed] = api.iter_tracking_plan_rules(DEMO_TRACKING_PLAN_ID)

    assert {k: listed[k] for k in rule} == rule


def test_a_refused_rule_set_or_unknown_plan_is_a_request_error(clean_sandbox):
    with client(clean_sandbox) as api:
        with pytest.raises(VendorRequestError) as refused:
            api.replace_tracking_plan_rules(DEMO_TRACKING_PLAN_ID, [{"type": "TRACK", "version": 1,
                                                                     "jsonSchema": {}}])
        with pytest.raises(VendorRequestError) as unknown:
            list(api.iter_tracking_plan_rules("tp_nope"))

    assert refused.value.status == 422 and "key" in refused.value.vendor_message
    assert unknown.value.status == 404


def test_a_connection_that_never_opened_is_retried_as_nothing_was_filed():
    retries = []
    api = SegmentPublicApiClient("http://127.0.0.1:9/segmentapis", SANDBOX_SEGMENT_PUBLIC_API_TOKEN,
                                 retry=RetryPolicy(max_attempts=3))
    api.http.sleep = SleepRecorder()

    with api, pytest.raises(VendorUnavailable) as raised:
        api.create_regulation("SUPPRESS_ONLY", ["a"], on_retry=retries.append)

    assert not isinstance(raised.value, RegulationOutcomeUnknown) and raised.value.attempts == 3
    assert [r.reason.split(":")[0] for r in retries] == ["ConnectError", "ConnectError"]
