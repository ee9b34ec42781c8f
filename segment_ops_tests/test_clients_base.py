"""The shared HTTP base of every vendor client: Retry-After, what is retried, auth errors, time caps,
pagination.

HTTP behaviour is exercised against the sandbox's fault injection. The few statuses the sandbox never
answers (408, 410, 460, 501, ...) come from an `httpx.MockTransport`, which stands in for the network,
not for our code. Sleeping is injected so tests record the delays asked for instead of waiting.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import orjson
import pytest

from segment_ops.clients import (
    PendoClient,
    SegmentTrackingClient,
    segment_public_api,
    segment_tracking,
    slack,
)
from segment_ops.clients.base import (
    HttpClient,
    RetryEvent,
    RetryPolicy,
    VendorAuthError,
    VendorError,
    VendorRequestError,
    VendorUnavailable,
    basic_auth,
    paginate,
    retry_after_seconds,
)
from segment_ops.config import SANDBOX_SEGMENT_PUBLIC_API_TOKEN, SANDBOX_SEGMENT_WRITE_KEY

NOW = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)
ONE_CALL = orjson.dumps({"batch": [{"type": "identify", "userId": "u1", "messageId": "base-1"}]})


class SleepRecorder:
    """Stands in for time.sleep: remembers each requested delay and runs an optional hook."""

    def __init__(self, hook=None) -> None:  # noqa: ANN001
        self.delays: list[float] = []
        self.hook = hook

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        if self.hook is not None:
            self.hook()


def segment_http(sandbox, *, retry: RetryPolicy | None = None, sleep=None,
                 write_key: str = SANDBOX_SEGMENT_WRITE_KEY,
                 ) -> HttpClient:
    return HttpClient("segment", f"{sandbox.url}/segment", auth=basic_auth(write_key),
                      headers={"Content-Type": "application/json"}, retry=retry or RetryPolicy(),
                      sleep=sleep or SleepRecorder())


def post_batch(http: HttpClient, **kwargs) -> httpx.Response:  # noqa: ANN003
    return http.request("POST", "/v1/batch", content=ONE_CALL, **kwargs)


@pytest.fixture
def http(clean_sandbox) -> Iterator[HttpClient]:
    client = segment_http(clean_sandbox)
    yield client
    client.close()


# --- retry_after_seconds ---------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"Retry-After": "7"}, 7.0),
        ({"Retry-After": " 1.5 "}, 1.5),
        ({"Retry-After": "Mon, 01 Jan 2024 12:00:30 GMT"}, 30.0),
        ({"Retry-After": "Mon, 01 Jan 2024 11:59:00 GMT"}, 0.0),  # a date in the past: go now
        ({"Retry-After": "-3"}, 0.0),
        ({"X-RateLimit-Reset": "12"}, 12.0),  # Tracking API: seconds until retry
        ({"X-RateLimit-Reset": "Mon, 01 Jan 2024 12:01:00 GMT"}, 60.0),  # Public API: a date
        ({"Retry-After": "2", "X-RateLimit-Reset": "50"}, 2.0),  # Retry-After wins
        ({"Retry-After": "soon", "X-RateLimit-Reset": "4"}, 4.0),  # unreadable Retry-After is skipped
    ],
)
def test_retry_after_seconds_reads_seconds_dates_and_rate_limit_reset(headers, seconds):
    assert retry_after_seconds(httpx.Headers(headers), now=NOW) == pytest.approx(seconds)


@pytest.mark.parametrize("headers", [{}, {"Retry-After": "soon"}, {"Content-Type": "application/json"}])
def test_retry_after_seconds_is_none_without_a_usable_header(headers):
    assert retry_after_seconds(httpx.Headers(headers), now=NOW) is None


# --- what is retried, over real HTTP -------------------------------------------------------------------

def test_429_retry_after_is_honoured_before_the_retry(clean_sandbox):
    clean_sandbox.set_faults("segment", rate_429=1.0, retry_after_seconds=3)
    sleep = SleepRecorder(hook=clean_sandbox.clear_faults)  # the throttle lifts while we wait

    with segment_http(clean_sandbox, sleep=sleep) as http:
        response = post_batch(http)

    assert response.status_code == 200
    assert sleep.delays == [3.0]  # the first retry would be immediate; Retry-After says wait 3 s
    assert clean_sandbox.stats()["segment"]["status"] == {"429": 1, "200": 1}


def test_retry_after_is_capped_by_the_policy(clean_sandbox):
    clean_sandbox.set_faults("segment", rate_429=1.0, retry_after_seconds=30)
    sleep = SleepRecorder(hook=clean_sandbox.clear_faults)

    with segment_http(clean_sandbox, sleep=sleep, retry=RetryPolicy(retry_after_cap=2.0)) as http:
        post_batch(http)

    assert sleep.delays == [2.0]


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/v1/shout", {}, 404),  # unknown endpoint
        ("/v1/batch", {"Content-Type": "text/plain"}, 400),  # Segment refuses the request itself
    ],
)
def test_client_errors_other_than_throttling_are_not_retried(clean_sandbox, path, headers, status):
    sleep = SleepRecorder()
    with segment_http(clean_sandbox, sleep=sleep) as http, pytest.raises(VendorRequestError) as caught:
        http.request("POST", path, content=ONE_CALL, headers=headers)

    assert (caught.value.status, caught.value.attempts) == (status, 1)
    assert clean_sandbox.stats()["segment"]["requests"] == 1 and sleep.delays == []


def test_a_wrong_write_key_is_answered_200_and_its_data_silently_lost(clean_sandbox):
    # Spec §7: Segment's edge validates no write key. The answer cannot tell a wrong key from a right one,
    # so the client reports success; only a preflight against the Public API's sources can catch it.
    client = SegmentTrackingClient(f"{clean_sandbox.url}/segment", "wk-wrong-not-a-source-key")

    client.send_batch([b'{"type":"identify","userId":"u1","messageId":"lost-1"}'])
    client.close()

    stats = clean_sandbox.stats()["segment"]
    assert (stats["status"], stats["received"]) == ({"200": 1}, 0)
    assert stats["dropped"] == {"unknown_write_key": 1}


def test_an_empty_write_key_is_refused_before_anything_is_sent(clean_sandbox):
    # Segment answers 400 to a batch without a key: the setting is wrong, not the messages.
    with pytest.raises(ValueError, match="SEGMENT_WRITE_KEY is empty"):
        SegmentTrackingClient(f"{clean_sandbox.url}/segment", "")

    assert clean_sandbox.stats()["segment"]["requests"] == 0


def test_forbidden_is_an_auth_error(clean_sandbox):
    client = PendoClient(f"{clean_sandbox.url}/pendo", "not-the-integration-key")

    with pytest.raises(VendorAuthError) as caught:
        client.aggregate([{"source": {"accounts": None}}])

    assert (caught.value.status, caught.value.attempts) == (403, 1)
    assert clean_sandbox.stats()["pendo"]["requests"] == 1


def test_dropped_connection_is_retried(http, clean_sandbox):
    clean_sandbox.set_faults("segment", rate_drop=1.0)
    events: list[RetryEvent] = []

    def on_retry(event: RetryEvent) -> None:
        events.append(event)
        clean_sandbox.clear_faults()

    response = post_batch(http, on_retry=on_retry)

    assert response.status_code == 200
    [event] = events
    assert (event.attempt, event.delay) == (1, 0.0)  # the first retry is immediate (spec §1)
    assert "RemoteProtocolError" in event.reason
    stats = clean_sandbox.stats()["segment"]
    assert stats["faults"] == {"drop": 1} and stats["received"] == 1
    assert stats["retried_requests"] == 1  # the retry said so in X-Retry-Count


def test_connection_dropped_after_processing_is_retried_and_deduplicated(http, clean_sandbox):
    clean_sandbox.set_faults("segment", rate_drop_after=1.0)

    post_batch(http, on_retry=lambda _: clean_sandbox.clear_faults())

    stats = clean_sandbox.stats()["segment"]
    assert (stats["messages"], stats["received"], stats["duplicates"]) == (2, 1, 1)


def test_server_errors_are_retried_with_growing_backoff(clean_sandbox):
    clean_sandbox.set_faults("segment", rate_503=1.0)
    sleep = SleepRecorder()
    policy = RetryPolicy(max_attempts=5, backoff_initial=0.5, backoff_max=1.5, jitter=0.0)

    with segment_http(clean_sandbox, sleep=sleep, retry=policy) as http, \
            pytest.raises(VendorUnavailable, match="after 5 attempts: gave up: HTTP 503") as caught:
        post_batch(http)

    assert caught.value.attempts == 5 and clean_sandbox.stats()["segment"]["requests"] == 5
    assert sleep.delays == [0.5, 1.0, 1.5]  # immediate first retry, then doubling up to the cap


def test_total_time_cap_stops_retrying(clean_sandbox):
    clean_sandbox.set_faults("segment", rate_503=1.0)
    policy = RetryPolicy(max_attempts=1_000, backoff_initial=0.05, backoff_max=0.05, max_elapsed=0.4)

    with segment_http(clean_sandbox, sleep=time.sleep, retry=policy) as http, \
            pytest.raises(VendorUnavailable) as caught:
        post_batch(http)

    # 0.05 s between attempts and a 0.4 s budget: the cap, not max_attempts, ends it within ~9 attempts.
    assert 2 <= caught.value.attempts <= 10


def test_retry_after_beyond_the_time_cap_gives_up_without_waiting(clean_sandbox):
    clean_sandbox.set_faults("segment", rate_429=1.0, retry_after_seconds=5)
    sleep = SleepRecorder()

    with segment_http(clean_sandbox, sleep=sleep, retry=RetryPolicy(max_elapsed=2.0)) as http, \
            pytest.raises(VendorUnavailable, match="HTTP 429"):
        post_batch(http)

    assert sleep.delays == [] and clean_sandbox.stats()["segment"]["requests"] == 1


# --- statuses the sandbox never answers ----------------------------------------------------------------

def scripted(statuses: list[int]) -> tuple[httpx.MockTransport, list[int]]:
    """A transport answering the given statuses in turn (then 200); returns it and the statuses served."""
    served: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        status = statuses[len(served)] if len(served) < len(statuses) else 200
        served.append(status)
        return httpx.Response(status, json={"code": "x", "message": f"status {status}"})

    return httpx.MockTransport(handler), served


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_retryable_statuses_are_retried(status):
    transport, served = scripted([status])
    with HttpClient("v", "http://vendor.test", transport=transport, sleep=SleepRecorder()) as http:
        assert http.request("GET", "/x").status_code == 200
    assert served == [status, 200]


@pytest.mark.parametrize("status", [400, 404, 410, 413, 422, 460, 501, 505])
def test_other_statuses_fail_at_once(status):
    transport, served = scripted([status])
    with HttpClient("v", "http://vendor.test", transport=transport, sleep=SleepRecorder()) as http, \
            pytest.raises(VendorRequestError) as caught:
        http.request("GET", "/x")
    assert served == [status] and caught.value.status == status
    assert f"status {status}" in str(caught.value)  # the vendor's own words


# Each vendor's own set: (client module's RETRYABLE, statuses retried, statuses final).
VENDOR_STATUSES = {
    # analytics-python (spec §1): 408, 410, 429, 460 and 5xx but 501/505.
    "segment": (segment_tracking.RETRYABLE, [408, 410, 429, 460, 500, 503], [400, 413, 501, 505]),
    # Slack (spec §7): 429 and 5xx; 410 channel_is_archived and every other 4xx are configuration errors.
    "slack": (slack.RETRYABLE, [429, 500, 503], [400, 403, 404, 410, 408]),
    "segment_public_api": (segment_public_api.RETRYABLE, [408, 429, 500, 503], [400, 404, 410, 422, 460]),
}


@pytest.mark.parametrize("vendor", list(VENDOR_STATUSES))
def test_each_vendor_retries_its_own_statuses(vendor):
    retryable, retried, final = VENDOR_STATUSES[vendor]
    for status in retried:
        transport, served = scripted([status])
        with HttpClient(vendor, "http://vendor.test", transport=transport, sleep=SleepRecorder(),
                        retryable=retryable) as http:
            assert http.request("GET", "/x").status_code == 200, (vendor, status)
        assert served == [status, 200], (vendor, status)
    for status in final:
        transport, served = scripted([status])
        with HttpClient(vendor, "http://vendor.test", transport=transport, sleep=SleepRecorder(),
                        retryable=retryable) as http, pytest.raises(VendorError):
            http.request("GET", "/x")
        assert served == [status], (vendor, status)


def test_public_api_429_waits_for_ms_before_next_without_retry_after(clean_sandbox):
    # Spec §7: a throttled Public API request says how long to wait in its body; Retry-After is not sent.
    clean_sandbox.set_faults("segmentapis", rate_429=1.0, retry_after_seconds=3)
    sleep = SleepRecorder(hook=clean_sandbox.clear_faults)
    client = segment_public_api.SegmentPublicApiClient(f"{clean_sandbox.url}/segmentapis",
                                                       SANDBOX_SEGMENT_PUBLIC_API_TOKEN)
    client.http.sleep = sleep

    events = list(client.iter_audit_events(NOW, NOW))
    client.close()

    assert events == [] and sleep.delays == [3.0]  # msBeforeNext 3000, not the immediate first retry
    assert clean_sandbox.stats()["segmentapis"]["status"] == {"429": 1, "200": 1}


def test_retry_after_wins_over_a_body_hint_and_a_bad_hint_is_ignored():
    answers = [httpx.Response(429, headers={"Retry-After": "2"},
                              json={"errors": [{"data": {"msBeforeNext": 9000}}]}),
               httpx.Response(429, json={"errors": [{"data": {"msBeforeNext": "soon"}}]}),
               httpx.Response(200, json={})]
    transport = httpx.MockTransport(lambda request: answers.pop(0))
    sleep = SleepRecorder()
    with HttpClient("segment_public_api", "http://vendor.test", transport=transport, sleep=sleep,
                    retry=RetryPolicy(jitter=0.0), retry_hint=segment_public_api.ms_before_next) as http:
        assert http.request("GET", "/x").status_code == 200

    assert sleep.delays == [2.0, 0.5]  # Retry-After; then no usable hint: the ordinary backoff


# --- pagination ------------------------------------------------------------------------------------------

def test_paginate_walks_every_page():
    pages = {None: ([1, 2], "a"), "a": ([3], "b"), "b": ([4, 5], None)}

    assert list(paginate(lambda cursor: pages[cursor])) == [1, 2, 3, 4, 5]


def test_paginate_stops_on_a_repeated_cursor():
    pages = {None: ([1], "a"), "a": ([2], "b"), "b": ([3], "a")}  # a vendor bug: back to "a"
    seen: list[int] = []

    with pytest.raises(VendorError, match="cursor 'a' repeated"):
        seen.extend(paginate(lambda cursor: pages[cursor]))

    assert seen == [1, 2, 3]


def test_segment_tracking_client_sends_a_batch(clean_sandbox):
    client = SegmentTrackingClient(f"{clean_sandbox.url}/segment", SANDBOX_SEGMENT_WRITE_KEY, gzip=True)
    payloads = [orjson.dumps({"type": "identify", "userId": f"u{i}", "messageId": f"g{i}",
                              "traits": {"bio": "x" * 500}}) for i in range(100)]  # > 16 KB: gzipped

    client.send_batch(payloads)
    client.close()

    stats = clean_sandbox.stats()["segment"]
    assert (stats["requests"], stats["received"]) == (1, 100)
    assert clean_sandbox.received("segment", limit=1)[0]["sentAt"]
