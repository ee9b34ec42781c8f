"""Heap server-side ingest emulator (spec §3), mounted at `/heap`.

Vendor sources: spec §3, a paraphrase of Heap's server-side API reference (developers.heap.io "Server-side
APIs": track, add user properties, add account properties, the privacy auth token); its "(unverified)"
marks are the points below. Heap's segment membership is not read through this API: Heap pushes it by
signed webhook (`webhooks.py`, after heap/heap-api-reference) and exports it to Heap Connect
(`connect.py`), so there is no read API to emulate here.

`POST /api/track` (single, or bulk `events`), `/api/add_user_properties` (single, or bulk `users`),
`/api/add_account_properties` (single, or bulk `accounts`), and `/api/public/v0/auth_token` (Basic
`app_id:api_key` -> `{"access_token"}`).

Choices where the spec is silent or unverified:
- Success is 200 with an empty body. Every validation error is 400 with JSON `{"error": "<short
  message>"}` (the shape Heap's webhook spec uses); the whole request fails if one item is invalid.
- Ingest has no key: an `app_id` other than the sandbox's is a 400, like any invalid field.
- Bulk user and account requests are capped at 1000 items, like bulk track. Bodies over 10 MB: 400.
- A repeated `idempotency_key` is accepted and counted under `duplicates`, but not stored again.
- Per-identity and per-app rate limits are not emulated; use fault injection for 429s.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from datetime import datetime

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from segment_ops.sandbox.common import (
    BodyTooLarge,
    basic_credentials,
    is_json_request,
    json_response,
    read_body,
    retry_after_headers,
)
from segment_ops.sandbox.recorder import Recorder

MAX_BULK_ITEMS = 1000
MAX_EVENT_CHARS = 1024
MAX_IDENTITY_CHARS = 255
MAX_PROPERTY_CHARS = 1023  # "strings or numbers < 1024 chars"
MAX_USER_ID = 2**53 - 1
MAX_BODY_BYTES = 10_000_000


class InvalidHeapRequest(Exception):
    """A request Heap answers with 400; the message is the short error text."""


class Heap:
    """Heap's ingest API: validates like Heap, dedupes track events by idempotency_key, records the rest."""

    name = "heap"

    def __init__(self, recorder: Recorder, *, app_id: str, api_key: str) -> None:
        self.recorder = recorder
        self.app_id = app_id
        self.api_key = api_key

    def routes(self) -> Sequence[BaseRoute]:
        return [
            Route("/api/track", self._track, methods=["POST"]),
            Route("/api/add_user_properties", self._add_user_properties, methods=["POST"]),
            Route("/api/add_account_properties", self._add_account_properties, methods=["POST"]),
            Route("/api/public/v0/auth_token", self._auth_token, methods=["POST"]),
        ]

    def fault_response(self, status: int, retry_after: int) -> Response:
        headers = retry_after_headers(retry_after) if status == 429 else None
        return _error(f"sandbox fault injection: HTTP {status}", status, headers)

    def reset(self) -> None:
        """Heap keeps no per-run state beyond the recorder."""

    async def _track(self, request: Request) -> Response:
        return await self._ingest(request, "track", "events", _check_track_event)

    async def _add_user_properties(self, request: Request) -> Response:
        return await self._ingest(request, "user_properties", "users", _check_user_properties)

    async def _add_account_properties(self, request: Request) -> Response:
        return await self._ingest(request, "account_properties", "accounts", _check_account_properties)

    async def _ingest(
        self, request: Request, kind: str, bulk_key: str, check: Callable[[dict, str], None]
    ) -> Response:
        """Validate a single or bulk body completely, then record each item as `{"kind": kind, ...}`."""
        try:
            body = await _json_body(request)
            if str(body.get("app_id")) != self.app_id:
                raise InvalidHeapRequest("app_id is missing or not a known environment id")
            items = _items(body, bulk_key)
            for index, item in enumerate(items):
                check(item, f"{bulk_key}[{index}]." if bulk_key in body else "")
        except InvalidHeapRequest as exc:
            return _error(str(exc), 400)
        log = self.recorder[self.name]
        for item in items:
            key = item.get("idempotency_key") if kind == "track" else None
            if key is not None and not log.first_seen(str(key)):
                continue
            log.store({"kind": kind, **{k: v for k, v in item.items() if k != "app_id"}})
        return Response(status_code=200)

    async def _auth_token(self, request: Request) -> Response:
        credentials = basic_credentials(request.headers.get("authorization"))
        if credentials != (self.app_id, self.api_key):
            return _error("invalid app_id or api_key", 401)
        self.recorder[self.name].count("auth_tokens")
        return json_response({"access_token": f"sandbox-heap-{secrets.token_hex(16)}"})


async def _json_body(request: Request) -> dict:
    if not is_json_request(request):
        raise InvalidHeapRequest("Content-Type must be application/json")
    try:
        body = orjson.loads(await read_body(request, MAX_BODY_BYTES))
    except BodyTooLarge as exc:
        raise InvalidHeapRequest(str(exc)) from None
    except orjson.JSONDecodeError:
        raise InvalidHeapRequest("body is not valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidHeapRequest("body must be a JSON object")
    return body


def _items(body: dict, bulk_key: str) -> list[dict]:
    if bulk_key not in body:
        return [body]
    items = body[bulk_key]
    if not isinstance(items, list) or not items:
        raise InvalidHeapRequest(f"{bulk_key} must be a non-empty array")
    if len(items) > MAX_BULK_ITEMS:
        raise InvalidHeapRequest(f"{bulk_key} has {len(items)} items; the limit is {MAX_BULK_ITEMS}")
    if not all(isinstance(item, dict) for item in items):
        raise InvalidHeapRequest(f"every item of {bulk_key} must be an object")
    return items


def _check_track_event(event: dict, where: str) -> None:
    _check_one_identity(event, where)
    name = event.get("event")
    if not isinstance(name, str) or not name:
        raise InvalidHeapRequest(f"{where}event is required")
    if len(name) > MAX_EVENT_CHARS:
        raise InvalidHeapRequest(f"{where}event is longer than {MAX_EVENT_CHARS} characters")
    _check_properties(event.get("properties"), where, required=False, forbid_id=False)
    timestamp = event.get("timestamp")
    if timestamp is not None:
        try:
            datetime.fromisoformat(str(timestamp))
        except ValueError:
            raise InvalidHeapRequest(f"{where}timestamp is not ISO-8601") from None


def _check_user_properties(user: dict, where: str) -> None:
    _check_identity(user.get("identity"), where)
    _check_properties(user.get("properties"), where, required=True, forbid_id=True)


def _check_account_properties(account: dict, where: str) -> None:
    account_id = account.get("account_id")
    if not isinstance(account_id, str | int) or isinstance(account_id, bool) or account_id == "":
        raise InvalidHeapRequest(f"{where}account_id is required")
    _check_properties(account.get("properties"), where, required=True, forbid_id=False)


def _check_one_identity(item: dict, where: str) -> None:
    """Track events name their user by exactly one of `identity` or numeric `user_id`."""
    has_identity, has_user_id = item.get("identity") is not None, item.get("user_id") is not None
    if has_identity == has_user_id:
        raise InvalidHeapRequest(f"{where}send exactly one of identity or user_id")
    if has_identity:
        _check_identity(item["identity"], where)
        return
    user_id = str(item["user_id"])
    if not user_id.isdigit() or int(user_id) > MAX_USER_ID:
        raise InvalidHeapRequest(f"{where}user_id must be a numeric string in [0, 2^53-1]")


def _check_identity(identity: object, where: str) -> None:
    if not isinstance(identity, str | int) or isinstance(identity, bool) or identity == "":
        raise InvalidHeapRequest(f"{where}identity is required")
    if len(str(identity)) > MAX_IDENTITY_CHARS:
        raise InvalidHeapRequest(f"{where}identity is longer than {MAX_IDENTITY_CHARS} characters")


def _check_properties(properties: object, where: str, *, required: bool, forbid_id: bool) -> None:
    if properties is None and not required:
        return
    if not isinstance(properties, dict):
        raise InvalidHeapRequest(f"{where}properties must be an object")
    for key, value in properties.items():
        if forbid_id and key.lower() == "id":
            raise InvalidHeapRequest(f"{where}properties may not use the key {key!r}")
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise InvalidHeapRequest(f"{where}properties.{key} must be a string or a number")
        if len(key) > MAX_PROPERTY_CHARS or len(str(value)) > MAX_PROPERTY_CHARS:
            raise InvalidHeapRequest(
                f"{where}properties.{key}: keys and values must be under 1024 characters"
            )


def _error(message: str, status: int, headers: dict[str, str] | None = None) -> Response:
    return json_response({"error": message}, status, headers)
