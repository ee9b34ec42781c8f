"""The Public API double's Delivery Overview (spec §7) over real HTTP: its counts come from real Tracking API
calls, injected destination failures appear with their discard reason, and its errors are Segment's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest

from segment_ops.config import SANDBOX_SEGMENT_PUBLIC_API_TOKEN, SANDBOX_SEGMENT_WRITE_KEY

AUTH = {"Authorization": f"Bearer {SANDBOX_SEGMENT_PUBLIC_API_TOKEN}"}
SOURCE, AMPLITUDE, WEBHOOKS = "src_segment_ops", "dst_amplitude", "dst_webhooks"


def track(http: httpx.Client, *events: str, key: str = SANDBOX_SEGMENT_WRITE_KEY, prefix: str = "m") -> None:
    batch = [{"type": "track", "event": event, "userId": f"u{i}", "messageId": f"{prefix}{i}"}
             for i, event in enumerate(events)]
    assert http.post("/segment/v1/batch", auth=(key, ""), json={"batch": batch}).status_code == 200


def this_hour() -> tuple[str, str]:
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    return start.isoformat(), (start + timedelta(hours=1)).isoformat()


def metrics(http: httpx.Client, step: str, headers: dict | None = None, **params: object) -> httpx.Response:
    start, end = this_hour()
    query = {"sourceId": SOURCE, "startTime": start, "endTime": end, "granularity": "HOUR", **params}
    return http.get(f"/segmentapis/delivery-overview/{step}", params=query,
                    headers=AUTH if headers is None else headers)


def test_successfully_received_counts_the_tracked_events_in_their_hour(sandbox_http):
    track(sandbox_http, "Signed Up", "Signed Up", "Order Completed")

    data = metrics(sandbox_http, "successfully-received").json()["data"]

    assert data["total"] == 3
    [dataset] = data["dataset"]
    assert dataset["series"] == [{"time": this_hour()[0].replace("+00:00", "Z"), "count": 3}]
    assert set(data["pagination"]) >= {"current", "totalEntries"}


def test_group_by_event_name_splits_the_counts(sandbox_http):
    track(sandbox_http, "Signed Up", "Signed Up", "Order Completed")

    dataset = metrics(sandbox_http, "successfully-received", groupBy="eventName").json()["data"]["dataset"]

    assert {d["eventName"]: d["total"] for d in dataset} == {"Signed Up": 2, "Order Completed": 1}


def test_a_batch_under_an_unknown_write_key_is_not_received(sandbox_http):
    track(sandbox_http, "Signed Up", key="not-a-source-key")

    assert metrics(sandbox_http, "successfully-received").json()["data"]["total"] == 0


def test_refused_and_dropped_calls_fail_on_ingest_with_their_reason(sandbox_http):
    bad_batch = {"batch": [{"type": "nope", "userId": "u1"}, {"type": "track", "event": "x", "userId": "u2"}]}
    assert sandbox_http.post("/segment/v1/batch", auth=(SANDBOX_SEGMENT_WRITE_KEY, ""),
                             json=bad_batch).status_code == 400
    track(sandbox_http, "")  # a track without `event`: 200, then dropped

    data = metrics(sandbox_http, "failed-on-ingest", groupBy="discardReason").json()["data"]

    assert {d["discardReason"]: d["total"] for d in data["dataset"]} == {"invalid_request": 2,
                                                                          "track_without_event": 1}


def test_every_received_event_is_delivered_to_each_destination(sandbox_http):
    track(sandbox_http, "Signed Up", "Order Completed")

    for destination in (AMPLITUDE, WEBHOOKS):
        delivered = metrics(sandbox_http, "successful-delivery", destinationConfigId=destination).json()
        assert delivered["data"]["total"] == 2


def test_an_injected_failure_shows_in_failed_delivery_by_discard_reason(sandbox_http):
    injected = sandbox_http.post("/__sandbox__/segment/destination-failures",
                                 json={"destinationId": WEBHOOKS, "share": 0.5, "reason": "Unauthorized"})
    assert injected.status_code == 200
    track(sandbox_http, "a", "b", "c", "d")

    failed = metrics(sandbox_http, "failed-delivery", destinationConfigId=WEBHOOKS,
                     groupBy="discardReason").json()["data"]
    delivered = metrics(sandbox_http, "successful-delivery", destinationConfigId=WEBHOOKS).json()["data"]
    other = metrics(sandbox_http, "failed-delivery", destinationConfigId=AMPLITUDE).json()["data"]

    assert [(d["discardReason"], d["total"]) for d in failed["dataset"]] == [("Unauthorized", 2)]
    assert delivered["total"] == 2 and other["total"] == 0


def test_integrations_false_filters_at_that_destination_only(sandbox_http):
    message = {"type": "track", "event": "a", "userId": "u1", "integrations": {"Amplitude (sandbox)": False}}
    sandbox_http.post("/segment/v1/track", auth=(SANDBOX_SEGMENT_WRITE_KEY, ""), json=message)

    filtered = metrics(sandbox_http, "filtered-at-destination", destinationConfigId=AMPLITUDE).json()
    webhooks = metrics(sandbox_http, "successful-delivery", destinationConfigId=WEBHOOKS).json()

    assert filtered["data"]["total"] == 1 and webhooks["data"]["total"] == 1


def test_destinations_are_listed_with_their_source(sandbox_http):
    response = sandbox_http.get("/segmentapis/destinations", params={"pagination.count": 10}, headers=AUTH)

    destinations = response.json()["data"]["destinations"]
    assert {d["id"] for d in destinations} == {AMPLITUDE, WEBHOOKS}
    assert all(d["sourceId"] == SOURCE and d["enabled"] for d in destinations)


@pytest.mark.parametrize(("granularity", "hours"), [("MINUTE", 5), ("HOUR", 15 * 24), ("DAY", 31 * 24)])
def test_a_range_longer_than_the_granularity_allows_is_422(sandbox_http, granularity, hours):
    end = datetime.now(UTC)
    response = metrics(sandbox_http, "successfully-received", granularity=granularity,
                       startTime=(end - timedelta(hours=hours)).isoformat(), endTime=end.isoformat())

    assert response.status_code == 422
    assert response.json()["errors"][0]["type"] == "RequestError"


def test_a_start_older_than_the_granularity_allows_is_422(sandbox_http):
    start = datetime.now(UTC) - timedelta(hours=49)
    response = metrics(sandbox_http, "successfully-received", granularity="MINUTE",
                       startTime=start.isoformat(), endTime=(start + timedelta(hours=1)).isoformat())

    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "startTime"


def test_an_egress_step_without_destination_is_422(sandbox_http):
    response = metrics(sandbox_http, "failed-delivery")

    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "destinationConfigId"


def test_an_unknown_source_is_404(sandbox_http):
    response = metrics(sandbox_http, "successfully-received", sourceId="src_nope")

    assert response.status_code == 404 and response.json()["errors"][0]["field"] == "sourceId"


def test_a_destination_of_no_such_source_is_404(sandbox_http):
    response = metrics(sandbox_http, "successful-delivery", destinationConfigId="dst_nope")

    assert response.status_code == 404


def test_a_wrong_token_is_401(sandbox_http):
    response = metrics(sandbox_http, "successfully-received", headers={"Authorization": "Bearer wrong"})

    assert response.status_code == 401


def test_an_unknown_destination_failure_target_is_404(sandbox_http):
    response = sandbox_http.post("/__sandbox__/segment/destination-failures",
                                 json={"destinationId": "dst_nope", "share": 1.0})

    assert response.status_code == 404


def test_reset_clears_counts_and_injected_failures(sandbox, sandbox_http):
    sandbox_http.post("/__sandbox__/segment/destination-failures",
                      json={"destinationId": WEBHOOKS, "share": 1.0, "reason": "invalid settings"})
    track(sandbox_http, "a")

    sandbox.reset()

    assert metrics(sandbox_http, "successfully-received").json()["data"]["total"] == 0
    assert sandbox_http.get("/__sandbox__/segment/destination-failures").json()["failures"] == {}
