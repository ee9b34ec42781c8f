"""The webhook receiver: a small Starlette app with `POST /webhooks/heap` and `GET /healthz`.

`POST /webhooks/heap` (spec §3):
- 413 when the body is larger than `max_body_bytes`;
- 403 with exactly `{"error": "Invalid signature"}` when `Heap-Hash` is missing, wrong, or signed
  further than `tolerance_seconds` from now (Heap retries, signing again);
- 400 `{"error": "<what is wrong>"}` for a body that is not a valid `segment.users.sync` page;
- 200 `{"stored": true|false, ...}` once the page is durably in the inbox (false: an identical repeat,
  kept once; `"done": true` when its sync was already applied - it is not applied again);
- 409 `{"error": "<what differs>"}` when the page disagrees with the copy already stored, or with its
  sync's segment id or total_pages: the first copy is kept, this one is kept aside and logged (see
  `segment_ops.webhooks.inbox`);
- 500 when the inbox cannot be written (Heap retries; nothing was acknowledged).

Production: `segment-ops webhooks --port 8080`, or any ASGI server with the factory
`segment_ops.webhooks.app:create_app_from_env` (e.g. `uvicorn --factory ...`), behind HTTPS.
The secret comes from HEAP_WEBHOOK_SECRET and never reaches a log or a response. Without it the only
secret available is the sandbox's, published in this repository, with which anyone could sign pages:
`create_app_from_env` (its bind address is unknown) and `segment-ops webhooks` on any interface but a
loopback one (127.0.0.1, ::1, localhost) refuse to start (`WebhookSecretError`); on loopback, for the
demo and tests, the sandbox secret is accepted with a warning.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from segment_ops.config import SANDBOX_HEAP_WEBHOOK_SECRET, load_settings
from segment_ops.webhooks.heap import (
    DEFAULT_TOLERANCE_SECONDS,
    InvalidPayload,
    InvalidSignature,
    parse_page,
    verify,
)
from segment_ops.webhooks.inbox import Inbox, InboxError, PageConflict

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


class WebhookSecretError(ValueError):
    """HEAP_WEBHOOK_SECRET is missing (or the sandbox's published value) where the receiver would be reachable
    from other machines. The message names the variable, never a value."""


def require_live_secret(config: WebhookConfig, host: str | None) -> None:
    """Refuse the sandbox's published secret unless the receiver is bound to a loopback `host`.

    `host` None means the bind address is unknown (an ASGI factory), which is treated as reachable.
    """
    if config.heap_secret != SANDBOX_HEAP_WEBHOOK_SECRET:
        return
    if host is not None and _is_loopback(host):
        log.warning("HEAP_WEBHOOK_SECRET is not set: the receiver on %s accepts pages signed with the sandbox's "
                    "published secret (loopback only; set HEAP_WEBHOOK_SECRET before exposing it)", host)
        return
    where = f"on {host}" if host is not None else "from an ASGI factory (the bind address is unknown)"
    raise WebhookSecretError(
        f"HEAP_WEBHOOK_SECRET is not set (or holds the sandbox's published value): a receiver {where} would "
        "accept pages anyone can sign. Set HEAP_WEBHOOK_SECRET to the secret of the Heap integration, or bind "
        "to 127.0.0.1, ::1 or localhost for a local test.")


def _is_loopback(host: str) -> bool:
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


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
        except PageConflict as exc:
            log.warning("Heap webhook page refused (409): %s (this copy: %s)", exc, exc.kept_aside or "not saved")
            return _json({"error": str(exc)}, 409)
        except InboxError as exc:
            log.error("Heap webhook page not stored (500): %s", exc)
            return _json({"error": "the page could not be stored; retry"}, 500)
        answer = {"stored": stored, "sync_task_id": page.sync_task_id, "page_number": page.page_number}
        done = not stored and inbox.is_done(page.sync_task_id)
        if done:
            answer["done"] = True
        log.info("Heap sync %s page %d/%d of segment %d: %s (%d add, %d remove)", page.sync_task_id,
                 page.page_number, page.total_pages, page.segment_id,
                 "stored" if stored else "repeat of a sync already applied, not applied again" if done
                 else "repeat, kept once", len(page.add), len(page.remove))
        return _json(answer)

    async def healthz(request: Request) -> Response:
        return _json({"ok": True, "inbox": str(inbox.root)})

    return Starlette(routes=[Route(HEAP_PATH, heap, methods=["POST"]), Route("/healthz", healthz, methods=["GET"])])


def config_from_env(*, tolerance_seconds: float | None = None) -> WebhookConfig:
    """The receiver's configuration from the environment (SEGMENT_OPS_HOME, HEAP_WEBHOOK_SECRET, ...).

    Unset HEAP_WEBHOOK_SECRET gives the sandbox's secret: whoever serves the config checks it with
    `require_live_secret` against the address it binds to."""
    settings = load_settings()
    tolerance = tolerance_seconds if tolerance_seconds is not None else float(
        settings["HEAP_WEBHOOK_TOLERANCE_SECONDS"] or DEFAULT_TOLERANCE_SECONDS)
    return WebhookConfig(home=settings.home, heap_secret=settings["HEAP_WEBHOOK_SECRET"], tolerance_seconds=tolerance)


def create_app_from_env() -> Starlette:
    """ASGI factory for production servers: `uvicorn --factory segment_ops.webhooks.app:create_app_from_env`.

    Raises `WebhookSecretError` unless HEAP_WEBHOOK_SECRET is set: the factory cannot know its bind address."""
    config = config_from_env()
    require_live_secret(config, None)
    return create_app(config)


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


