"""The Public API double's `GET /sources` (spec §7 shape, spec §2 pagination) over real HTTP."""

from __future__ import annotations

import httpx
import pytest

from segment_ops.config import SANDBOX_SEGMENT_PUBLIC_API_TOKEN, SANDBOX_SEGMENT_WRITE_KEY
from segment_ops.sandbox.segment.sources import DISABLED_SOURCE_WRITE_KEY

AUTH = {"Authorization": f"Bearer {SANDBOX_SEGMENT_PUBLIC_API_TOKEN}"}


def get_sources(http: httpx.Client, headers: dict | None = None, **params: object) -> httpx.Response:
    return http.get("/segmentapis/sources", params=params, headers=AUTH if headers is None else headers)


def walk(http: httpx.Client, count: int) -> tuple[list[dict], list[dict]]:
    sources, pages, cursor = [], [], None
    while True:
        extra = {"pagination.cursor": cursor} if cursor else {}
        data = get_sources(http, **{"pagination.count": count, **extra}).json()["data"]
        sources += data["sources"]
        pages.append(data["pagination"])
        cursor = data["pagination"].get("next")
        if not cursor:
            return sources, pages


def test_sources_carry_their_write_keys_and_enabled_flag(sandbox_http):
    response = get_sources(sandbox_http, **{"pagination.count": 200})

    assert response.status_code == 200
    sources = response.json()["data"]["sources"]
    by_slug = {s["slug"]: s for s in sources}
    assert by_slug["segment-ops"]["writeKeys"] == [SANDBOX_SEGMENT_WRITE_KEY]
    assert by_slug["segment-ops"]["enabled"] is True
    assert by_slug["legacy-import"]["writeKeys"] == [DISABLED_SOURCE_WRITE_KEY]
    assert by_slug["legacy-import"]["enabled"] is False
    assert set(by_slug["segment-ops"]) == {"id", "slug", "name", "workspaceId", "enabled", "writeKeys",
                                           "metadata"}
    assert set(by_slug["segment-ops"]["metadata"]) == {"id", "slug", "name", "categories"}


def test_pages_of_one_walk_every_source_once(sandbox_http):
    everything = get_sources(sandbox_http, **{"pagination.count": 200}).json()["data"]["sources"]

    sources, pages = walk(sandbox_http, 1)

    assert sources == everything and len(pages) == len(everything) > 1
    assert "previous" not in pages[0] and "next" not in pages[-1]
    assert all(page["totalEntries"] == len(everything) for page in pages)


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer sgp_wrong"}])
def test_a_missing_or_wrong_token_gets_401_in_segments_error_envelope(sandbox_http, headers):
    response = get_sources(sandbox_http, headers=headers, **{"pagination.count": 1})

    assert response.status_code == 401
    assert response.json()["errors"][0]["type"] == "RequestError"


@pytest.mark.parametrize("params", [{}, {"pagination.count": 0}, {"pagination.count": 201},
                                    {"pagination.count": 1, "pagination.cursor": "not-a-cursor"}])
def test_a_bad_pagination_query_gets_400_naming_the_field(sandbox_http, params):
    response = get_sources(sandbox_http, **params)

    assert response.status_code == 400
    assert response.json()["errors"][0]["field"].startswith("pagination.")
