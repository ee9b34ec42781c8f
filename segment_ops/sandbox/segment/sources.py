"""The sandbox workspace's sources as the Public API lists them: `GET /segmentapis/sources` (spec §7).

Shape from spec §7 (a segmentio public-api SDK test fixture): `{"data": {"sources": [{"id", "slug", "name",
"workspaceId", "enabled", "writeKeys", "metadata": {"id", "slug", "name", "categories"}}], "pagination":
{...}}}`, paginated like every list endpoint (spec §2; `public_api.py` reads the query): an opaque
`pagination.cursor`, `next` absent on the last page and `previous` on the first.

The workspace is in the US region (the sandbox's `/segmentapis` stands for `api.segmentapis.com`). Its HTTP
source `segment-ops` holds the configured write key, and a second HTTP source `segment-ops-b` holds
`SECOND_SOURCE_WRITE_KEY` (a reverse-ETL model may send to a source of its own); the Tracking API double
delivers the calls of both (`delivered_keys`). `legacy-import` is a disabled source
(`DISABLED_SOURCE_WRITE_KEY`), whose calls the Tracking API double answers 200 and drops like any key it
does not deliver for. The other sources' keys are never delivered either.
"""

from __future__ import annotations

import base64
import binascii

import orjson

WORKSPACE_ID = "sandbox-workspace"
DISABLED_SOURCE_WRITE_KEY = "sandbox-disabled-source-write-key"
SECOND_SOURCE_WRITE_KEY = "sandbox-second-source-write-key"


def workspace_sources(write_key: str) -> list[dict]:
    """The workspace's sources; `write_key` is the HTTP source's (what SEGMENT_WRITE_KEY should be)."""
    return [
        _source("segment-ops", "segment-ops (HTTP API)", [write_key], "http-api", "HTTP API", "Server"),
        _source("web-app", "Web app", ["sandbox-web-app-write-key"], "javascript", "Javascript", "Website"),
        _source("ios-app", "iOS app", ["sandbox-ios-app-write-key"], "ios", "iOS", "Mobile"),
        _source("legacy-import", "Legacy import (disabled)", [DISABLED_SOURCE_WRITE_KEY], "http-api",
                "HTTP API", "Server", enabled=False),
        _source("segment-ops-b", "segment-ops B (HTTP API)", [SECOND_SOURCE_WRITE_KEY], "http-api",
                "HTTP API", "Server"),
    ]


def delivered_keys(sources: list[dict]) -> dict[str, str]:
    """Write key -> source id of the enabled HTTP API sources: the keys the Tracking API double delivers."""
    return {key: source["id"] for source in sources
            if source["enabled"] and source["metadata"]["slug"] == "http-api" for key in source["writeKeys"]}


def sources_page(sources: list[dict], count: int, cursor: str | None) -> dict:
    """The `data` of one page of `GET /sources` of `count` sources from `cursor`; raises `ValueError` for a
    cursor this double did not make."""
    offset = _offset(cursor)
    pagination: dict = {"current": _cursor(offset), "totalEntries": len(sources)}
    if offset + count < len(sources):
        pagination["next"] = _cursor(offset + count)
    if offset > 0:
        pagination["previous"] = _cursor(max(0, offset - count))
    return {"sources": sources[offset:offset + count], "pagination": pagination}


def _source(slug: str, name: str, write_keys: list[str], kind: str, kind_name: str, category: str, *,
            enabled: bool = True) -> dict:
    return {"id": f"src_{slug.replace('-', '_')}", "slug": slug, "name": name, "workspaceId": WORKSPACE_ID,
            "enabled": enabled, "writeKeys": write_keys,
            "metadata": {"id": f"meta_{kind}", "slug": kind, "name": kind_name, "categories": [category]}}


def _cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(orjson.dumps({"sources": offset})).decode()


def _offset(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        offset = orjson.loads(base64.urlsafe_b64decode(cursor))["sources"]
    except (binascii.Error, orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError("pagination.cursor is not a valid cursor") from exc
    if not isinstance(offset, int) or offset < 0:
        raise ValueError("pagination.cursor is not a valid cursor")
    return offset
