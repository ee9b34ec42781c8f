"""Heap's webhook endpoint on the generic receiving app: `POST /webhooks/heap`, verified by `Heap-Hash`
(`segment_ops.syncs.heap.webhook`) and stored in Heap's inbox (`segment_ops.syncs.heap.inbox`), and its
settings from the environment.

Production: `segment-ops webhooks --port 8080`, or any ASGI server with the factory
`segment_ops.syncs.heap.receiver:create_app_from_env` (e.g. `uvicorn --factory ...`), behind HTTPS.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from starlette.applications import Starlette

from segment_ops.config import SANDBOX_HEAP_WEBHOOK_SECRET, Settings, load_settings
from segment_ops.receivers.app import DEFAULT_MAX_BODY_BYTES, Endpoint, Refused, build_app
from segment_ops.receivers.server import is_loopback
from segment_ops.syncs.heap.inbox import Inbox
from segment_ops.syncs.heap.webhook import (
    DEFAULT_MAX_AGE_SECONDS,
    DEFAULT_MAX_FUTURE_SECONDS,
    DrainRequest,
    InvalidPayload,
    Signature,
    SignatureError,
    SyncPage,
    check_header,
    parse_request,
    verify,
)

HEAP_PATH = "/webhooks/heap"
DEFAULT_MAX_CONNECTIONS = 64
INVALID_SIGNATURE_BODY = {"error": "Invalid signature"}  # the body Heap's webhook spec documents for a 403
log = logging.getLogger("segment_ops.webhooks")


@dataclass(frozen=True)
class WebhookConfig:
    home: Path
    heap_secret: str = field(repr=False)
    # Secrets still accepted while Heap's webhook secret is rotated (HEAP_WEBHOOK_PREVIOUS_SECRETS).
    previous_secrets: tuple[str, ...] = field(default=(), repr=False)
    max_age_seconds: float = DEFAULT_MAX_AGE_SECONDS
    max_future_seconds: float = DEFAULT_MAX_FUTURE_SECONDS
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    # Connections (open, plus requests in progress) the server takes before it answers 503, which Heap
    # retries (spec §3): HEAP_WEBHOOK_MAX_CONNECTIONS. Heap posts one sync's pages a few at a time.
    max_connections: int = DEFAULT_MAX_CONNECTIONS

    @property
    def secrets(self) -> tuple[str, ...]:
        return (self.heap_secret, *self.previous_secrets)


class WebhookSecretError(ValueError):
    """HEAP_WEBHOOK_SECRET is missing (or the sandbox's published value) where the receiver would be reachable
    from other machines. The message names the variable, never a value."""


class WebhookConfigError(ValueError):
    """A receiver setting cannot be used as written; the message names the variable (never a secret)."""


def require_live_secret(config: WebhookConfig, host: str | None) -> None:
    """Refuse the sandbox's secret, published in this repository (anyone could sign pages with it), unless the
    receiver is bound to a loopback `host`: there, for the demo and tests, it is accepted with a warning.

    `host` None means the bind address is unknown (an ASGI factory), which is treated as reachable.
    """
    if SANDBOX_HEAP_WEBHOOK_SECRET not in config.secrets:
        return
    if host is not None and is_loopback(host):
        log.warning("HEAP_WEBHOOK_SECRET is not set: the receiver on %s accepts pages signed with the "
                    "sandbox's published secret (loopback only; set HEAP_WEBHOOK_SECRET before exposing it)",
                    host)
        return
    where = f"on {host}" if host is not None else "from an ASGI factory (the bind address is unknown)"
    raise WebhookSecretError(
        f"HEAP_WEBHOOK_SECRET is not set (or it, or one of HEAP_WEBHOOK_PREVIOUS_SECRETS, holds the "
        f"sandbox's published value): a receiver {where} would accept pages anyone can sign. Set "
        "HEAP_WEBHOOK_SECRET to the secret of the Heap integration, or bind to 127.0.0.1, ::1 or localhost "
        "for a local test.")


def heap_endpoint(config: WebhookConfig) -> Endpoint:
    """The endpoint for one inbox (`<home>/inbox/heap`), answering `POST /webhooks/heap` (Heap's reference
    validator and webhook spec, see `segment_ops.syncs.heap.webhook`) with:
    - 413 when the body is larger than `max_body_bytes`;
    - 400 `{"error": "<what is wrong>"}` when `Heap-Hash` is missing or malformed, or its timestamp is older
      than `max_age_seconds` or more than `max_future_seconds` ahead (that Heap signs every retry anew is
      inferred from the reference's 60 s window, unverified);
    - 403 with exactly `{"error": "Invalid signature"}` when the HMAC matches neither the body nor its
      compact form under any configured secret (`heap.compact_form`);
    - 400 `{"error": "<what is wrong>"}` for a signed body that is not a valid sync page or drain;
    - 200 `{"stored": true|false, ...}` once the page or drain is durably in the inbox (false: an identical
      repeat, kept once; `"done": true` when it was already applied - it is not applied again; `"held": true`
      for a drain repeated after a newer sync was applied - see `Inbox.store_drain`);
    - 409 `{"error": "<what differs>"}` when a page disagrees with the stored copy or with its sync: the
      first copy is kept, this one kept aside and logged (see `Inbox.store`);
    - 500 when the inbox cannot be written (Heap retries; nothing was acknowledged).
    """
    if not all(config.secrets):
        raise ValueError("HEAP_WEBHOOK_SECRET is empty: the receiver cannot verify Heap's signatures")
    for name in ("max_age_seconds", "max_future_seconds"):
        if not getattr(config, name) > 0:  # the window's limits are exclusive: 0 refuses every request
            raise ValueError(f"WebhookConfig.{name} must be > 0 (HEAP_WEBHOOK_{name.upper()}), got "
                             f"{getattr(config, name)!r}")
    inbox = Inbox.for_home(config.home)

    def check_heap_hash(headers: Mapping[str, str]) -> None:
        try:
            check_header(headers.get("heap-hash"), max_age_seconds=config.max_age_seconds,
                         max_future_seconds=config.max_future_seconds)
        except SignatureError as exc:
            raise _refused(exc) from None

    def verify_heap_hash(headers: Mapping[str, str], body: bytes) -> Signature:
        try:
            return verify(headers.get("heap-hash"), body, config.secrets,
                          max_age_seconds=config.max_age_seconds,
                          max_future_seconds=config.max_future_seconds)
        except SignatureError as exc:
            raise _refused(exc) from None

    def store(signature: Signature) -> dict:
        try:
            # The bytes that were signed, not a second parse of the body: what is applied is what Heap
            # signed.
            received = parse_request(orjson.loads(signature.signed_body))
        except orjson.JSONDecodeError:
            raise Refused(400, "body is not valid JSON") from None
        except InvalidPayload as exc:
            raise Refused(400, str(exc)) from None
        if signature.secret_index:
            log.info("Heap webhook signed with %s (HEAP_WEBHOOK_PREVIOUS_SECRETS): finish the rotation once "
                     "Heap signs with HEAP_WEBHOOK_SECRET", signature.secret_name)
        if isinstance(received, DrainRequest):
            return _store_drain(inbox, received, signature)
        return _store_page(inbox, received, signature)

    return Endpoint(HEAP_PATH, "Heap webhook", verify_heap_hash, store, config.max_body_bytes, item="page",
                    check_headers=check_heap_hash)


def create_app(config: WebhookConfig, *, also: Sequence[Endpoint] = ()) -> Starlette:
    """The receiving app with Heap's endpoint (`heap_endpoint`), and `also` other vendors' (the Fullstory
    Streams endpoint, under `segment-ops webhooks`)."""
    webhooks = ["heap", *(e.name.split()[0].lower() for e in also)]
    # no path: /healthz answers anyone
    return build_app([heap_endpoint(config), *also], health={"webhook": ",".join(webhooks)})


def _refused(exc: SignatureError) -> Refused:
    return Refused(exc.status, str(exc), answer=INVALID_SIGNATURE_BODY if exc.status == 403 else None)


def _store_page(inbox: Inbox, page: SyncPage, signature: Signature) -> dict:
    stored = inbox.store(page, signed_at=signature.timestamp_ms)  # PageConflict: 409 by the app
    answer: dict = {"stored": stored, "sync_task_id": page.sync_task_id, "page_number": page.page_number}
    done = not stored and inbox.is_done(page.sync_task_id)
    if done:
        answer["done"] = True
    # %r: a sync_task_id is any string Heap chose, so it is quoted (no line breaks reach the log).
    log.info("Heap sync %r page %d/%d of segment %d: %s (%d add, %d remove)", page.sync_task_id,
             page.page_number, page.total_pages, page.segment_id,
             "stored" if stored else "repeat of a sync already applied, not applied again" if done
             else "repeat, kept once", len(page.add), len(page.remove))
    return answer


def _store_drain(inbox: Inbox, drain: DrainRequest, signature: Signature) -> dict:
    outcome = inbox.store_drain(drain, signed_at=signature.timestamp_ms)
    answer: dict = {"stored": outcome.stored, "drain": outcome.key, "segment_id": drain.segment_id}
    if outcome.done:
        answer["done"] = True
        log.info("Heap drain %s of segment %d arrived again soon after it was applied, with no sync since: a "
                 "retry, not applied again", outcome.key, drain.segment_id)
    elif outcome.held:
        answer["held"] = True
        log.warning("Heap drain %s of segment %d stored but held until a run confirms it (confirm_drop): %s",
                    outcome.key, drain.segment_id, outcome.held)
    else:
        log.info("Heap drain %s of segment %d (%r): %s", outcome.key, drain.segment_id, drain.segment_name,
                 "stored" if outcome.stored else "repeat, kept once")
    return answer


def config_from_env(settings: Settings | None = None) -> WebhookConfig:
    """The receiver's configuration from the environment (SEGMENT_OPS_HOME, HEAP_WEBHOOK_SECRET,
    HEAP_WEBHOOK_PREVIOUS_SECRETS, HEAP_WEBHOOK_MAX_AGE_SECONDS, HEAP_WEBHOOK_MAX_FUTURE_SECONDS,
    HEAP_WEBHOOK_MAX_CONNECTIONS). The
    secrets never reach a log or a response.

    Unset HEAP_WEBHOOK_SECRET gives the sandbox's secret: whoever serves the config checks it with
    `require_live_secret` against the address it binds to. Raises `WebhookConfigError` for a value that
    cannot be used, naming the variable."""
    settings = settings or load_settings()
    previous = tuple(s.strip() for s in settings["HEAP_WEBHOOK_PREVIOUS_SECRETS"].split(",") if s.strip())
    return WebhookConfig(
        home=settings.home, heap_secret=settings["HEAP_WEBHOOK_SECRET"], previous_secrets=previous,
        max_age_seconds=_seconds(settings, "HEAP_WEBHOOK_MAX_AGE_SECONDS", DEFAULT_MAX_AGE_SECONDS),
        max_future_seconds=_seconds(settings, "HEAP_WEBHOOK_MAX_FUTURE_SECONDS", DEFAULT_MAX_FUTURE_SECONDS),
        max_connections=_count(settings, "HEAP_WEBHOOK_MAX_CONNECTIONS", DEFAULT_MAX_CONNECTIONS))


def _count(settings: Settings, name: str, default: int) -> int:
    raw = settings[name].strip()
    if not raw:
        return default
    if not raw.isascii() or not raw.isdigit() or int(raw) < 1:
        raise WebhookConfigError(f"{name} must be a whole number >= 1, got {raw!r}")
    return int(raw)


def _seconds(settings: Settings, name: str, default: float) -> float:
    raw = settings[name].strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    # > 0: both limits are exclusive, so 0 would refuse every request with 400.
    if not math.isfinite(value) or value <= 0:
        raise WebhookConfigError(f"{name} must be a number of seconds > 0, got {raw!r}")
    return value


def create_app_from_env() -> Starlette:
    """ASGI factory for production servers:
    `uvicorn --factory segment_ops.syncs.heap.receiver:create_app_from_env`.

    Raises `WebhookSecretError` unless HEAP_WEBHOOK_SECRET is set: the factory cannot know its bind
    address."""
    config = config_from_env()
    require_live_secret(config, None)
    return create_app(config)
