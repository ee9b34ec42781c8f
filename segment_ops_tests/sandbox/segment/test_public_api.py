"""The Segment Public API emulator (audit trail) over real HTTP (spec §2)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

import httpx
import pytest

from segment_ops.config import SANDBOX_SEGMENT_PUBLIC_API_TOKEN

AUTH = {"Authorization": f"Bearer {SANDBOX_SEGMENT_PUBLIC_API_TOKEN}"}


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def get_events(http: httpx.Client, **params: object) -> httpx.Response:
    return http.get("/segmentapis/audit-events", params=params, headers=AUTH)


def walk(http: httpx.Client, count: int, **params: object) -> tuple[list[dict], list[dict]]:
    """Every event and every page's pagination, following `next` to the end."""
    events, pages = [], []
    cursor = None
    while True:
        extra = {"pagination.cursor": cursor} if cursor else {}
        body = get_events(http, **{"pagination.count": count, **params, **extra}).json()["data"]
        events += body["events"]
        pages.append(body["pagination"])
        cursor = body["pagination"].get("next")
        if cursor is None:
            return events, pages


def test_walking_the_cursor_returns_every_event_once(sandbox_http):
    # Ten days hold more than a page of events whatever the weekday (three days over a weekend may not).
    start = iso(datetime.now(UTC) - timedelta(days=10))

    events, pages = walk(sandbox_http, 50, startTime=start)

    ids = [e["id"] for e in events]
    assert len(ids) == len(set(ids)) == pages[0]["totalEntries"] > 50
    assert "previous" not in pages[0] and "previous" in pages[1]
    assert "next" not in pages[-1]


def test_events_are_newest_first_and_inside_the_window(sandbox_http):
    now = datetime.now(UTC)
    start, end = now - timedelta(days=2), now - timedelta(days=1)

    events, _ = walk(sandbox_http, 200, startTime=iso(start), endTime=iso(end))

    stamps = [datetime.fromisoformat(e["timestamp"]) for e in events]
    assert stamps == sorted(stamps, reverse=True)
    assert all(start < ts <= end for ts in stamps)
    assert {"id", "timestamp", "type", "actor", "resourceId", "resourceType", "resourceName"} <= set(
        events[0]
    )


def test_start_time_beyond_90_days_is_clamped_to_retention(sandbox_http):
    now = datetime.now(UTC)
    old = get_events(sandbox_http, **{"pagination.count": 1, "startTime": iso(now - timedelta(days=200))})
    retained = get_events(sandbox_http, **{"pagination.count": 1, "startTime": iso(now - timedelta(days=90))})

    assert old.status_code == 200
    assert (
        old.json()["data"]["pagination"]["totalEntries"]
        == retained.json()["data"]["pagination"]["totalEntries"]
    )


def test_resource_type_filter(sandbox_http):
    events, _ = walk(
        sandbox_http, 200, startTime=iso(datetime.now(UTC) - timedelta(days=7)), resourceType="source"
    )

    assert events and {e["resourceType"] for e in events} == {"source"}


@pytest.mark.parametrize("count", ["0", "201", "ten"])
def test_page_size_outside_1_to_200_is_400_with_field(sandbox_http, count):
    response = get_events(sandbox_http, **{"pagination.count": count})

    assert response.status_code == 400
    [error] = response.json()["errors"]
    assert error["field"] == "pagination.count" and error["status"] == 400


def test_pagination_object_is_required(sandbox_http):
    response = get_events(sandbox_http)

    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "pagination.count"


def test_bad_cursor_is_400(sandbox_http):
    response = get_events(sandbox_http, **{"pagination.count": 5, "pagination.cursor": "not-a-cursor"})

    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "pagination.cursor"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc="}])
def test_missing_or_wrong_token_is_401(sandbox_http, headers):
    response = sandbox_http.get("/segmentapis/audit-events", params={"pagination.count": 1}, headers=headers)

    assert response.status_code == 401
    assert response.json()["errors"][0]["status"] == 401


def test_success_carries_rate_limit_headers(sandbox_http):
    response = get_events(sandbox_http, **{"pagination.count": 1})

    assert int(response.headers["X-RateLimit-Consumed"]) >= 1
    assert int(response.headers["X-RateLimit-Remaining"]) < 600
    assert parsedate_to_datetime(response.headers["X-RateLimit-Reset"]) > datetime.now(UTC)


def test_exceeding_the_points_answers_429_with_the_documented_body(sandbox_factory):
    limited = sandbox_factory(public_api_rate_limit_per_min=2)
    with httpx.Client(base_url=limited.url) as http:
        responses = [get_events(http, **{"pagination.count": 1}) for _ in range(3)]

    assert [r.status_code for r in responses] == [200, 200, 429]
    [error] = responses[2].json()["errors"]
    assert error["type"] == "RequestError" and error["message"] == "Too many requests"
    assert error["data"]["remainingPoints"] == 0 and error["data"]["consumedPoints"] == 2
    assert 0 < error["data"]["msBeforeNext"] <= 60_000


def test_injected_event_appears_in_the_next_query(sandbox_http, clean_sandbox):
    start = iso(datetime.now(UTC) - timedelta(minutes=5))
    [injected] = clean_sandbox.inject_audit_events(
        [{"type": "Source Regulation Created", "resourceType": "regulation"}]
    )

    events, _ = walk(sandbox_http, 200, startTime=start)

    assert injected["id"] in [e["id"] for e in events]
    assert events[0]["id"] == injected["id"]  # it is the newest


def test_walk_is_stable_while_new_events_arrive(sandbox_http, clean_sandbox):
    start = iso(datetime.now(UTC) - timedelta(days=30))
    first = get_events(sandbox_http, **{"pagination.count": 20, "startTime": start}).json()["data"]
    clean_sandbox.inject_audit_events([{"type": "Source Created"}])

    rest, _ = walk(sandbox_http, 20, startTime=start, **{"pagination.cursor": first["pagination"]["next"]})

    ids = [e["id"] for e in first["events"] + rest]
    assert len(ids) == len(set(ids)) == first["pagination"]["totalEntries"]
