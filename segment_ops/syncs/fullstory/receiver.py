"""Fullstory Streams' endpoint on the generic receiving app: `POST /webhooks/fullstory`, authenticated by the
stream's bearer token (`streams.check_token`) and stored in Fullstory's inbox (`inbox.Inbox`).

`segment-ops webhooks` serves it beside Heap's endpoint; `create_app` serves it alone (tests, the demo).
Answers (Fullstory retries timeouts, network errors, 5xx and 429, never another 4xx: so only what can never
succeed gets a 4xx):
- 401 `{"error": ...}` for a missing, malformed or unknown bearer token, before the body is read;
- 413 for a body over `max_body_bytes`;
- 400 `{"error": ...}` for an authenticated body that is no stream event: the body is kept aside under
  `inbox/fullstory/rejected/` with the reason (never applied; the signals run counts and reports it);
- 200 `{"stored": true|false, "event": <key>}` once the event is durably in the inbox (false: the same event
  again this hour, kept once);
- 500 when the inbox cannot be written (Fullstory retries; nothing was acknowledged).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson
from starlette.applications import Starlette

from segment_ops import clock
from segment_ops.config import SANDBOX_FULLSTORY_STREAM_TOKEN, Settings, load_settings
from segment_ops.receivers import inbox as durable
from segment_ops.receivers.app import Endpoint, Refused, build_app
from segment_ops.receivers.server import is_loopback
from segment_ops.syncs.fullstory.inbox import REJECTED_FOLDER, Inbox
from segment_ops.syncs.fullstory.streams import (
    MAX_BODY_BYTES,
    InvalidEvent,
    TokenError,
    TokenMatch,
    check_token,
    parse_event,
)

FULLSTORY_PATH = "/webhooks/fullstory"
CLAIMED_FOLDER = ".rejected-claimed"  # rejected bodies a run took to report (hidden: no inbox batch)
log = logging.getLogger("segment_ops.webhooks")


@dataclass(frozen=True)
class StreamConfig:
    home: Path
    token: str = field(repr=False)
    previous_tokens: tuple[str, ...] = field(default=(), repr=False)
    max_body_bytes: int = MAX_BODY_BYTES

    @property
    def tokens(self) -> tuple[str, ...]:
        return (self.token, *self.previous_tokens)


class StreamTokenError(ValueError):
    """FULLSTORY_STREAM_TOKEN is missing, or the sandbox's published value where the receiver would be
    reachable from other machines. Names the variable, never a value."""


def config_from_env(settings: Settings | None = None) -> StreamConfig:
    """SEGMENT_OPS_HOME, FULLSTORY_STREAM_TOKEN and FULLSTORY_STREAM_PREVIOUS_TOKENS (the tokens never reach a
    log or an answer). Unset FULLSTORY_STREAM_TOKEN gives the sandbox's: see `require_live_token`."""
    settings = settings or load_settings()
    previous = tuple(t.strip() for t in settings["FULLSTORY_STREAM_PREVIOUS_TOKENS"].split(",") if t.strip())
    return StreamConfig(home=settings.home, token=settings["FULLSTORY_STREAM_TOKEN"].strip(),
                        previous_tokens=previous)


def require_live_token(config: StreamConfig, host: str | None) -> None:
    """Refuse the sandbox's token (published in this repository) unless the receiver is bound to a loopback
    `host` (None: unknown, an ASGI factory, taken as reachable)."""
    if SANDBOX_FULLSTORY_STREAM_TOKEN not in config.tokens:
        return
    if host is not None and is_loopback(host):
        log.warning("FULLSTORY_STREAM_TOKEN is not set: the receiver on %s accepts the sandbox's published "
                    "token (loopback only; set FULLSTORY_STREAM_TOKEN before exposing it)", host)
        return
    where = f"on {host}" if host is not None else "from an ASGI factory (the bind address is unknown)"
    raise StreamTokenError(
        f"FULLSTORY_STREAM_TOKEN is not set (or it, or one of FULLSTORY_STREAM_PREVIOUS_TOKENS, holds the "
        f"sandbox's published value): a receiver {where} would accept stream events from anyone. Set it to "
        "the bearer token configured on the Fullstory stream, or bind to a loopback address for a local "
        "test.")


def endpoint(config: StreamConfig) -> Endpoint:
    """The Fullstory Streams endpoint, for `receivers.app.build_app`."""
    if not all(config.tokens):
        raise ValueError("FULLSTORY_STREAM_TOKEN is empty: the receiver cannot authenticate Fullstory")
    inbox = Inbox.for_home(config.home)

    def authenticate(headers: Mapping[str, str]) -> TokenMatch:
        try:
            return check_token(headers.get("authorization"), config.tokens)
        except TokenError as exc:
            raise Refused(exc.status, str(exc)) from None

    def check_headers(headers: Mapping[str, str]) -> None:
        authenticate(headers)

    def verify(headers: Mapping[str, str], body: bytes) -> tuple[TokenMatch, bytes]:
        return authenticate(headers), body

    def handle(verified: tuple[TokenMatch, bytes]) -> dict:
        match, body = verified
        try:
            event = parse_event(body)
        except InvalidEvent as exc:
            aside = _keep_rejected(inbox.root, body, str(exc))
            raise Refused(400, f"not a Fullstory stream event: {exc}"
                          + ("" if aside else " (it could not be kept aside)")) from None
        if match.index:
            log.info("Fullstory stream event authenticated by %s: finish the token rotation once every "
                     "stream sends FULLSTORY_STREAM_TOKEN", match.name)
        stored = inbox.store(event, token=match.name)
        late = clock.now() - event.timestamp
        log.info("Fullstory stream event %s (%r, %s late): %s", event.key, event.name[:80],
                 f"{late.total_seconds():.0f}s", "stored" if stored else "repeat, kept once")
        return {"stored": stored, "event": event.key}

    return Endpoint(FULLSTORY_PATH, "Fullstory stream", verify, handle, config.max_body_bytes, item="event",
                    check_headers=check_headers)


def create_app(config: StreamConfig) -> Starlette:
    """A receiving app with the Fullstory endpoint alone."""
    return build_app([endpoint(config)], health={"webhook": "fullstory"})


def create_app_from_env() -> Starlette:
    """ASGI factory: `uvicorn --factory segment_ops.syncs.fullstory.receiver:create_app_from_env`; refuses the
    sandbox's token (the factory cannot know its bind address)."""
    config = config_from_env()
    require_live_token(config, None)
    return create_app(config)


def _keep_rejected(root: Path, body: bytes, reason: str) -> Path | None:
    """Keep an authenticated body that is no event under `rejected/`, once per distinct body, with its reason
    and the body (parsed when it is JSON, so an erasure can find a person's values in it); None when it
    cannot be written (the request is answered 400 all the same). A run may be claiming the folder at that
    moment (`claim_rejected`): the write is tried once more in a folder made anew."""
    digest = hashlib.sha256(body).hexdigest()[:32]
    target = root / REJECTED_FOLDER / f"rejected-{digest}.json"
    try:
        kept: object = orjson.loads(body)
    except orjson.JSONDecodeError:
        kept = body.decode("utf-8", "replace")
    record = orjson.dumps({"reason": reason, "received_at": datetime.now(UTC).isoformat(), "body": kept})
    for _ in range(2):
        try:
            durable.make_dirs(target.parent)
            durable.write_once(target, record)
            return target
        except durable.InboxError:
            continue
    return None


def claim_rejected(home: Path, now: datetime | None = None) -> list[Path]:
    """Take what the receiver kept aside for a run to report: `rejected/` is renamed (one atomic move; the
    receiver makes a new one for what comes next) into `.rejected-claimed/`, and every claimed folder not yet
    archived is returned, a crashed run's too. Raises `InboxError` when it cannot be moved."""
    inbox = Inbox.for_home(home)
    root = inbox.root
    folder, claimed = root / REJECTED_FOLDER, root / CLAIMED_FOLDER
    inbox.refresh()  # a shared inbox: what other machines' receivers kept is here before the move
    if folder.is_dir() and any(folder.iterdir()):
        durable.move_batch(folder, claimed / f"{(now or datetime.now(UTC)):%Y%m%dT%H%M%S%f}")
        inbox.refresh()  # and every body the move took is here to be read
    return sorted(p for p in claimed.iterdir() if p.is_dir()) if claimed.is_dir() else []


def rejected_bodies(home: Path, folders: list[Path] | None = None) -> list[dict]:
    """What the receiver kept aside (reason, received_at, body, file), oldest first: in `folders` (claimed by
    `claim_rejected`), else what `rejected/` holds now (a dry run looks without claiming)."""
    if folders is None:
        folders = [Inbox.for_home(home).root / REJECTED_FOLDER]
    records = []
    for folder in folders:
        for path in sorted(folder.glob("rejected-*.json")) if folder.is_dir() else []:
            try:
                records.append(durable.read_json(path) | {"file": path.name})
            except durable.InboxError as exc:  # reported as such, never archived unreported
                records.append({"file": path.name, "reason": f"a kept body could not be read: {exc}"})
    return sorted(records, key=lambda r: r.get("received_at", ""))


def archive_claimed(home: Path, folders: list[Path], now: datetime | None = None) -> None:
    """Move claimed folders, once reported, into the inbox's archive (deleted with its day after the inbox's
    retention). Raises `InboxError` when one cannot be moved (it is reported again, once, next run)."""
    root = Inbox.for_home(home).root
    now = now or datetime.now(UTC)
    for folder in folders:
        durable.move_batch(folder, root / durable.ARCHIVE_FOLDER / now.date().isoformat()
                           / f"{REJECTED_FOLDER}-{folder.name}")
