"""The Segment Tracking API emulator over real HTTP (spec §1)."""

from __future__ import annotations

import gzip
import time
import uuid

import httpx
import orjson
import pytest

from segment_ops.config import SANDBOX_SEGMENT_WRITE_KEY

AUTH = (SANDBOX_SEGMENT_WRITE_KEY, "")


def identify(user_id: str = "u1", **extra: object) -> dict:
    return {
        "type": "identify",
        "userId": user_id,
        "messageId": str(uuid.uuid4()),
        "traits": {"plan": "pro"},
        **extra,
    }


def post_batch(http: httpx.Client, messages: list[dict], **body: object) -> httpx.Response:
    return http.post("/segment/v1/batch", json={"batch": messages, **body}, auth=AUTH)


def test_batch_with_basic_auth_is_accepted_and_recorded(sandbox_http, clean_sandbox):
    message = identify()
    response = post_batch(sandbox_http, [message], context={"ip": "10.0.0.1"}, sentAt="2024-01-01T00:00:01Z")

    assert response.status_code == 200
    assert response.json() == {"success": True}
    [stored] = clean_sandbox.received("segment")
    assert stored["messageId"] == message["messageId"]
    assert stored["context"] == {"ip": "10.0.0.1"}
    assert stored["sentAt"] == "2024-01-01T00:00:01Z"
    assert "receivedAt" in stored and "timestamp" in stored


def test_item_context_wins_over_batch_context(sandbox_http, clean_sandbox):
    post_batch(sandbox_http, [identify(context={"ip": "own"})], context={"ip": "batch", "locale": "en"})

    assert clean_sandbox.received("segment")[0]["context"] == {"ip": "own", "locale": "en"}


def test_write_key_in_body_authenticates_and_is_not_stored(sandbox_http, clean_sandbox):
    response = sandbox_http.post(
        "/segment/v1/track",
        json={"userId": "u1", "event": "Signed Up", "writeKey": SANDBOX_SEGMENT_WRITE_KEY},
    )

    assert response.status_code == 200
    [stored] = clean_sandbox.received("segment")
    assert stored["type"] == "track"
    assert "writeKey" not in stored


@pytest.mark.parametrize("key", [None, ""])
def test_missing_or_empty_write_key_is_400(sandbox_http, clean_sandbox, key):
    # analytics-go#205: "Empty keys return 400 Bad Request" (spec §7).
    body = {"batch": [identify()], **({"writeKey": key} if key is not None else {})}

    response = sandbox_http.post("/segment/v1/batch", json=body)

    assert response.status_code == 400
    assert set(response.json()) == {"code", "message"}
    assert clean_sandbox.stats()["segment"]["received"] == 0


def test_wrong_write_key_gets_200_and_the_data_is_silently_dropped(sandbox_http, clean_sandbox):
    # Spec §7 (analytics-go#205, analytics-ruby#136, analytics-node#59): the edge validates no key; a wrong
    # one is answered 200 {"success": true} and its events never appear. Our ledger cannot see this from
    # the answer; the proof-of-delivery preflight is what catches a wrong key.
    response = sandbox_http.post("/segment/v1/batch", json={"batch": [identify(), identify("u2")]},
                                 auth=("wk-not-a-source-of-this-workspace", ""))

    assert response.status_code == 200 and response.json() == {"success": True}
    stats = clean_sandbox.stats()["segment"]
    assert stats["received"] == 0 and clean_sandbox.received("segment") == []
    assert stats["dropped"] == {"unknown_write_key": 2}


def test_wrong_basic_key_drops_the_data_even_with_a_right_body_key(sandbox_http, clean_sandbox):
    response = sandbox_http.post(
        "/segment/v1/batch",
        json={"batch": [identify()], "writeKey": SANDBOX_SEGMENT_WRITE_KEY},
        auth=("nope", ""),
    )

    assert response.status_code == 200
    assert clean_sandbox.stats()["segment"]["received"] == 0


def test_wrong_body_key_drops_the_data(sandbox_http, clean_sandbox):
    response = sandbox_http.post("/segment/v1/batch", json={"batch": [identify()], "writeKey": "nope"})

    assert response.status_code == 200
    assert clean_sandbox.stats()["segment"]["dropped"] == {"unknown_write_key": 1}


def test_content_type_must_be_json(sandbox_http):
    response = sandbox_http.post(
        "/segment/v1/batch",
        content=orjson.dumps({"batch": []}),
        auth=AUTH,
        headers={"Content-Type": "text/plain"},
    )

    assert response.status_code == 400


def test_invalid_json_is_400(sandbox_http):
    response = sandbox_http.post(
        "/segment/v1/batch", content=b'{"batch": [', auth=AUTH, headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 400
    assert response.json()["code"] == "invalid_request"


def test_gzip_body_is_accepted(sandbox_http, clean_sandbox):
    body = gzip.compress(orjson.dumps({"batch": [identify("gz")]}))
    response = sandbox_http.post(
        "/segment/v1/batch",
        content=body,
        auth=AUTH,
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )

    assert response.status_code == 200
    assert clean_sandbox.received("segment")[0]["userId"] == "gz"


def test_request_over_500_kb_is_400(sandbox_http, clean_sandbox):
    messages = [identify(traits={"blob": "x" * 20_000}) for _ in range(26)]

    response = post_batch(sandbox_http, messages)

    assert response.status_code == 400
    assert clean_sandbox.stats()["segment"]["received"] == 0


def test_message_over_32_kb_fails_the_whole_batch_and_says_which(sandbox_http, clean_sandbox):
    big = identify(traits={"blob": "x" * (32 << 10)})

    response = post_batch(sandbox_http, [identify(), big])

    assert response.status_code == 400
    assert "message 1" in response.json()["message"] and big["messageId"] in response.json()["message"]
    assert clean_sandbox.stats()["segment"]["received"] == 0


def test_batch_items_need_a_type(sandbox_http):
    message = identify()
    del message["type"]

    assert post_batch(sandbox_http, [message]).status_code == 400


def test_silently_dropped_messages_get_200_but_are_counted_by_reason(sandbox_http, clean_sandbox):
    messages = [
        {"type": "identify", "traits": {}},
        {"type": "track", "userId": "u1"},
        {"type": "group", "userId": "u1"},
        {"type": "alias", "userId": "u1"},
        {"type": "alias", "userId": "u2", "previousId": "anon-2"},
    ]

    response = post_batch(sandbox_http, messages)

    assert response.status_code == 200
    stats = clean_sandbox.stats()["segment"]
    assert stats["dropped"] == {
        "no_user_id_or_anonymous_id": 1,
        "track_without_event": 1,
        "group_without_group_id": 1,
        "alias_without_previous_id": 1,
    }
    assert [m["type"] for m in clean_sandbox.received("segment")] == ["alias"]


def test_repeated_message_id_is_deduplicated_and_counted(sandbox_http, clean_sandbox):
    message = identify()
    post_batch(sandbox_http, [message])
    post_batch(sandbox_http, [dict(message)])

    assert clean_sandbox.stats()["segment"]["duplicates"] == 1
    assert clean_sandbox.seen("segment", message["messageId"]) == 2
    assert len(clean_sandbox.received("segment")) == 1


@pytest.mark.slow
def test_a_repeat_after_the_dedupe_window_gets_through_as_a_late_duplicate(sandbox_factory):
    # Spec §7: messageId dedupe covers about the last 24 hours; a later re-send reaches destinations.
    short = sandbox_factory(segment_dedupe_window_seconds=0.3)
    message = identify()
    with httpx.Client(base_url=short.url) as http:
        post_batch(http, [message])
        post_batch(http, [dict(message)])  # inside the window: dropped
        time.sleep(0.5)
        post_batch(http, [dict(message)])  # after it: delivered again
        post_batch(http, [dict(message)])  # the window starts anew: dropped

    stats = short.stats()["segment"]
    assert (stats["received"], stats["duplicates"], stats["late_duplicates"]) == (2, 2, 1)
    assert [m["messageId"] for m in short.received("segment")] == [message["messageId"]] * 2


def test_retried_requests_are_counted_from_x_retry_count(sandbox_http, clean_sandbox):
    sandbox_http.post(
        "/segment/v1/batch", json={"batch": [identify()]}, auth=AUTH, headers={"X-Retry-Count": "1"}
    )

    assert clean_sandbox.stats()["segment"]["retried_requests"] == 1


def test_rate_limit_answers_429_with_retry_after_and_reset(sandbox_factory):
    limited = sandbox_factory(segment_rate_limit=2)
    with httpx.Client(base_url=limited.url) as http:
        statuses = [post_batch(http, [identify()]) for _ in range(5)]

    throttled = [r for r in statuses if r.status_code == 429]
    assert throttled, [r.status_code for r in statuses]
    assert int(throttled[0].headers["Retry-After"]) >= 1
    assert throttled[0].headers["X-RateLimit-Reset"] == throttled[0].headers["Retry-After"]
    assert throttled[0].json()["code"] == "too_many_requests"


def test_unknown_single_endpoint_is_404(sandbox_http):
    assert sandbox_http.post("/segment/v1/purchase", json={}, auth=AUTH).status_code == 404
