"""The Heap ingest emulator over real HTTP (spec §3)."""

from __future__ import annotations

import pytest

from segment_ops.config import SANDBOX_HEAP_API_KEY, SANDBOX_HEAP_APP_ID

APP = {"app_id": SANDBOX_HEAP_APP_ID}


def track(**fields: object) -> dict:
    return {"identity": "a@b.com", "event": "Phone Call", "properties": {"Duration": "15 minutes"}, **fields}


def test_track_is_200_with_empty_body_and_recorded(sandbox_http, clean_sandbox):
    response = sandbox_http.post(
        "/heap/api/track", json={**APP, **track(timestamp="2024-01-01T00:00:00+00:00")}
    )

    assert response.status_code == 200 and response.content == b""
    [stored] = clean_sandbox.received("heap")
    assert stored["kind"] == "track" and stored["identity"] == "a@b.com" and "app_id" not in stored


def test_bulk_track_records_every_event(sandbox_http, clean_sandbox):
    events = [track(identity=f"u{i}@b.com") for i in range(3)]

    assert sandbox_http.post("/heap/api/track", json={**APP, "events": events}).status_code == 200
    assert [e["identity"] for e in clean_sandbox.received("heap")] == ["u0@b.com", "u1@b.com", "u2@b.com"]


def test_bulk_over_1000_events_is_400(sandbox_http, clean_sandbox):
    response = sandbox_http.post("/heap/api/track", json={**APP, "events": [track()] * 1001})

    assert response.status_code == 400
    assert "1000" in response.json()["error"]
    assert clean_sandbox.stats()["heap"]["received"] == 0


def test_unknown_app_id_is_400(sandbox_http):
    assert sandbox_http.post("/heap/api/track", json={"app_id": "999", **track()}).status_code == 400


@pytest.mark.parametrize(
    "event",
    [
        track(user_id="123"),  # both identity and user_id
        {"event": "Phone Call"},  # neither
        track(identity=None, user_id="12.5"),
        track(event="x" * 1025),
        track(event=""),
        track(properties={"nested": {"a": 1}}),
        track(properties={"long": "x" * 1024}),
        track(timestamp="yesterday"),
    ],
    ids=[
        "both-ids",
        "no-id",
        "bad-user-id",
        "long-event",
        "no-event",
        "nested-prop",
        "long-prop",
        "bad-timestamp",
    ],
)
def test_invalid_track_event_is_400(sandbox_http, clean_sandbox, event):
    response = sandbox_http.post("/heap/api/track", json={**APP, **event})

    assert response.status_code == 400 and response.json()["error"]
    assert clean_sandbox.stats()["heap"]["received"] == 0


def test_numeric_user_id_is_accepted(sandbox_http):
    response = sandbox_http.post(
        "/heap/api/track", json={**APP, "user_id": "9007199254740991", "event": "Login"}
    )

    assert response.status_code == 200


def test_repeated_idempotency_key_is_stored_once(sandbox_http, clean_sandbox):
    for _ in range(2):
        sandbox_http.post("/heap/api/track", json={**APP, **track(idempotency_key="evt-1")})

    assert len(clean_sandbox.received("heap")) == 1
    assert clean_sandbox.stats()["heap"]["duplicates"] == 1
    assert clean_sandbox.seen("heap", "evt-1") == 2


def test_user_properties_single_and_bulk(sandbox_http, clean_sandbox):
    single = {**APP, "identity": "a@b.com", "properties": {"email": "a@b.com", "plan": "pro"}}
    bulk = {**APP, "users": [{"identity": "c@d.com", "properties": {"seats": 3}}]}

    assert sandbox_http.post("/heap/api/add_user_properties", json=single).status_code == 200
    assert sandbox_http.post("/heap/api/add_user_properties", json=bulk).status_code == 200
    assert [(u["kind"], u["identity"]) for u in clean_sandbox.received("heap")] == [
        ("user_properties", "a@b.com"),
        ("user_properties", "c@d.com"),
    ]


@pytest.mark.parametrize("key", ["id", "Id", "ID"])
def test_user_property_named_id_is_400(sandbox_http, key):
    body = {**APP, "identity": "a@b.com", "properties": {key: "1"}}

    assert sandbox_http.post("/heap/api/add_user_properties", json=body).status_code == 400


def test_account_properties_need_an_account_id(sandbox_http, clean_sandbox):
    good = {**APP, "account_id": "acme", "properties": {"plan": "pro"}}

    assert sandbox_http.post("/heap/api/add_account_properties", json=good).status_code == 200
    assert (
        sandbox_http.post("/heap/api/add_account_properties", json={**APP, "properties": {}}).status_code
        == 400
    )
    assert clean_sandbox.received("heap")[0]["kind"] == "account_properties"


def test_content_type_must_be_json(sandbox_http):
    response = sandbox_http.post("/heap/api/track", content=b"{}", headers={"Content-Type": "text/plain"})

    assert response.status_code == 400


def test_auth_token_needs_app_id_and_api_key(sandbox_http):
    good = sandbox_http.post(
        "/heap/api/public/v0/auth_token", auth=(SANDBOX_HEAP_APP_ID, SANDBOX_HEAP_API_KEY)
    )
    bad = sandbox_http.post("/heap/api/public/v0/auth_token", auth=(SANDBOX_HEAP_APP_ID, "wrong"))

    assert good.status_code == 200 and good.json()["access_token"]
    assert bad.status_code == 401
