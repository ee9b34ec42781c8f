"""The webhook receiver: a small Starlette app with `POST /webhooks/heap` and `GET /healthz`.

`POST /webhooks/heap` (spec §3):
- 413 when the body is larger than `max_body_bytes`;
- 403 with exactly `{"error": "Invalid signature"}` when `Heap-Hash` is missing, wrong, or signed
  further than `tolerance_seconds` from now (Heap retries, signing again);
- 400 `{"error": "<what is wrong>"}` for a body that is not a valid `segment.users.sync` page;
- 200 `{"stored": true|false, ...}` once the page is durably in the inbox (false: a repeat, kept once);
- 500 when the inbox cannot be written (Heap retries; nothing was acknowledged).

Production: `segment-ops webhooks --port 8080`, or any ASGI server with the factory
`segment_ops.webhooks.app:create_app_from_env` (e.g. `uvicorn --factory ...`), behind HTTPS.
The secret comes from HEAP_WEBHOOK_SECRET and never reaches a log or a response.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from segment_ops.config import load_settings
from segment_ops.webhooks.heap import (
    DEFAULT_TOLERANCE_SECONDS,
    InvalidPayload,
    InvalidSignature,
    parse_page,
    verify,
)
from segment_ops.webhooks.inbox import Inbox, InboxError

HEAP_PATH = "/webhooks/heap"
DEFAULT_MAX_BODY_BYTES = 10_000_000
INVALID_SIGNATURE_BODY = {"error": "Invalid signature"}  # the body Heap's webhook spec documents for a 403
log = logging.getLogger("segment_ops.webhooks")


@dataclass(frozen=True)
class WebhookConfig:
    home: Path
    heap_secret: str = field(repr=False)
    tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES


class _TooLarge(Exception):
    pass


def create_app(config: WebhookConfig) -> Starlette:
    """The receiver for one inbox (`<home>/inbox/heap`)."""
    if not config.heap_secret:
        raise ValueError("HEAP_WEBHOOK_SECRET is empty: the receiver cannot verify Heap's signatures")
    inbox = Inbox.for_home(config.home)

    async def heap(request: Request) -> Response:
        try:
            body = await _read_body(request, config.max_body_bytes)
        except _TooLarge:
            return _json({"error": f"body is larger than {config.max_body_bytes} bytes"}, 413)
        try:
            signed_at = verify(request.headers.get("heap-hash"), body, config.heap_secret,
                               tolerance=config.tolerance_seconds)
        except InvalidSignature as exc:
            log.warning("Heap webhook refused (403): %s", exc)
            return _json(INVALID_SIGNATURE_BODY, 403)
        try:
            page = parse_page(orjson.loads(body))
        except orjson.JSONDecodeError:
            return _json({"error": "body is not valid JSON"}, 400)
        except InvalidPayload as exc:
            log.warning("Heap webhook refused (400): %s", exc)
            return _json({"error": str(exc)}, 400)
        try:
            stored = await run_in_threadpool(inbox.store, page, signed_at=signed_at)
        except InboxError as exc:
            log.error("Heap webhook page not stored (500): %s", exc)
            return _json({"error": "the page could not be stored; retry"}, 500)
        log.info("Heap sync %s page %d/%d of segment %d: %s (%d add, %d remove)", page.sync_task_id,
                 page.page_number, page.total_pages, page.segment_id, "stored" if stored else "repeat, kept once",
                 len(page.add), len(page.remove))
        return _json({"stored": stored, "sync_task_id": page.sync_task_id, "page_number": page.page_number})

    async def healthz(request: Request) -> Response:
        return _json({"ok": True, "inbox": str(inbox.root)})

    return Starlette(routes=[Route(HEAP_PATH, heap, methods=["POST"]), Route("/healthz", healthz, methods=["GET"])])


def config_from_env(*, tolerance_seconds: float | None = None) -> WebhookConfig:
    """The receiver's configuration from the environment (SEGMENT_OPS_HOME, HEAP_WEBHOOK_SECRET, ...)."""
    settings = load_settings()
    tolerance = tolerance_seconds if tolerance_seconds is not None else float(
        settings["HEAP_WEBHOOK_TOLERANCE_SECONDS"] or DEFAULT_TOLERANCE_SECONDS)
    return WebhookConfig(home=settings.home, heap_secret=settings["HEAP_WEBHOOK_SECRET"], tolerance_seconds=tolerance)


def create_app_from_env() -> Starlette:
    """ASGI factory for production servers: `uvicorn --factory segment_ops.webhooks.app:create_app_from_env`."""
    return create_app(config_from_env())


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _json(data: object, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


