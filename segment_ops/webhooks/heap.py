"""Heap's segment-sync webhook (spec §3): the `Heap-Hash` signature and the page payload.

- Signature: `Heap-Hash: ts:<unix seconds>,hmac:<hex>` with hmac = HMAC-SHA256(secret, f"{ts}{raw_body}").
  A timestamp further than `tolerance` from now (either way) is refused, so a captured request cannot
  be replayed later.
- Payload: `{"id_token", "action_type": "segment.users.sync", "customer_config", "data": {"segment":
  {"id", "name"}, "sync_info": {"page_number", "total_pages", "sync_task_id"}, "add": [{"id"}],
  "remove": [{"id"}]}}`. `id` is the value of the identity property the customer chose in Heap.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from dataclasses import dataclass
from typing import Any

SYNC_ACTION = "segment.users.sync"
DEFAULT_TOLERANCE_SECONDS = 300
MAX_IDENTITY_CHARS = 255  # Heap's identity limit (spec §3, ingest)
_HEADER = re.compile(r"^\s*ts:(?P<ts>\d{1,12})\s*,\s*hmac:(?P<hmac>[0-9a-fA-F]{64})\s*$")
_TASK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class InvalidSignature(Exception):
    """The `Heap-Hash` header is missing, malformed, stale or does not match; the reason is for logs only."""


class InvalidPayload(ValueError):
    """A signed body that is not a valid segment-sync page; the message says what is wrong."""


@dataclass(frozen=True)
class SyncPage:
    """One validated page of a segment sync."""

    sync_task_id: str
    page_number: int
    total_pages: int
    segment_id: int
    segment_name: str
    add: tuple[str, ...]
    remove: tuple[str, ...]


def sign(secret: str, body: bytes, ts: int | None = None) -> str:
    """The `Heap-Hash` header value for `body`, as Heap computes it."""
    ts = int(time.time()) if ts is None else ts
    digest = hmac.new(secret.encode(), str(ts).encode() + body, hashlib.sha256).hexdigest()
    return f"ts:{ts},hmac:{digest}"


def verify(header: str | None, body: bytes, secret: str, *, tolerance: float = DEFAULT_TOLERANCE_SECONDS,
           now: float | None = None) -> int:
    """Check `Heap-Hash` against `body`; returns the signed timestamp or raises `InvalidSignature`."""
    if not header:
        raise InvalidSignature("no Heap-Hash header")
    match = _HEADER.match(header)
    if match is None:
        raise InvalidSignature("Heap-Hash header is not 'ts:<unix>,hmac:<hex sha256>'")
    ts = int(match["ts"])
    expected = hmac.new(secret.encode(), match["ts"].encode() + body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, match["hmac"].lower()):
        raise InvalidSignature("HMAC does not match the body")
    now = time.time() if now is None else now
    if abs(now - ts) > tolerance:
        raise InvalidSignature(f"timestamp {ts} is {now - ts:+.0f}s from now; the tolerance is {tolerance:.0f}s")
    return ts


def parse_page(payload: Any) -> SyncPage:
    """Validate a decoded body as a `segment.users.sync` page; raises `InvalidPayload` naming the field."""
    if not isinstance(payload, dict):
        raise InvalidPayload("body must be a JSON object")
    if payload.get("action_type") != SYNC_ACTION:
        raise InvalidPayload(f"action_type must be {SYNC_ACTION!r}, got {payload.get('action_type')!r}")
    data = _object(payload.get("data"), "data")
    segment = _object(data.get("segment"), "data.segment")
    info = _object(data.get("sync_info"), "data.sync_info")
    segment_id = _integer(segment.get("id"), "data.segment.id", minimum=1)
    name = segment.get("name")
    if not isinstance(name, str):
        raise InvalidPayload("data.segment.name must be a string")
    task = info.get("sync_task_id")
    if not isinstance(task, str) or not _TASK_ID.match(task):
        raise InvalidPayload("data.sync_info.sync_task_id must be an id of letters, digits, '-', '_' or '.' "
                             "(at most 128 characters)")
    page = _integer(info.get("page_number"), "data.sync_info.page_number", minimum=1)
    total = _integer(info.get("total_pages"), "data.sync_info.total_pages", minimum=1)
    if page > total:
        raise InvalidPayload(f"data.sync_info.page_number {page} is beyond total_pages {total}")
    return SyncPage(task, page, total, segment_id, name, _ids(data.get("add", []), "data.add"),
                    _ids(data.get("remove", []), "data.remove"))


def _object(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise InvalidPayload(f"{where} must be an object")
    return value


def _integer(value: Any, where: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidPayload(f"{where} must be an integer >= {minimum}, got {value!r}")
    return value


def _ids(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise InvalidPayload(f"{where} must be an array of {{\"id\": ...}} objects")
    ids = []
    for index, item in enumerate(value):
        raw = item.get("id") if isinstance(item, dict) else None
        if isinstance(raw, bool) or not isinstance(raw, str | int) or raw == "":
            raise InvalidPayload(f"{where}[{index}].id must be a non-empty string or number")
        text = str(raw)
        if len(text) > MAX_IDENTITY_CHARS:
            raise InvalidPayload(f"{where}[{index}].id is longer than {MAX_IDENTITY_CHARS} characters")
        ids.append(text)
    return tuple(ids)
