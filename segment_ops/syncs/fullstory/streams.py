"""Fullstory Streams (formerly Behavioral Webhooks): the bearer token, and the body a stream posts.

Sources: spec §7 "Fullstory Streams" (developer.fullstory.com/destinations/webhooks, help.fullstory.com's
Streams article).

- A stream is set up in Fullstory's app to trigger on one event (a rage click, dead click, error click, or
  any event with filters) or on a pattern of events, and POSTs to an HTTP endpoint with the authentication
  configured on the stream. Fullstory documents no signature: the receiver checks `Authorization: Bearer
  <token>` against FULLSTORY_STREAM_TOKEN (and the tokens of a rotation) in constant time
  (`hmac.compare_digest` over SHA-256 digests, so neither the length nor a prefix of a token leaks).
- The default body (v2): `{"name", "timestamp", "api_version": "v2", "signal_version": "1", "user": {"id",
  "uid", "email", "display_name"}}`. `name` is the stream's event name (what the customer named the stream,
  e.g. "Rage Click"), `user.id` Fullstory's id of the user, `user.uid` the id the app gave `FS.identify`
  (the Segment userId, where Segment's Fullstory destination identifies users), possibly empty for an
  anonymous user.
- A stream may instead post a custom body built with Field Mapping (`["var", "event.0.app_url_event"]` is
  the session replay URL, `event.0.event_time` the event's time). The README's setup asks for the v2
  fields plus `session_url` (from `event.0.app_url_event`), optionally `page_url`, `event_time` and
  `event_id`: those are read when present, anything else is kept with the stored body and never sent.
- Delivery: Fullstory "attempts to send each matching event only once", with rare duplicates, and can be
  hours late (a disconnected client). A duplicate is the same body again, so an event's key is a hash of its
  canonical body (`event_key`): stored once, applied once, sent once. Two events a default body cannot tell
  apart (same stream, same user, the same second) are one signal; a body with `event_time` or `event_id`
  keeps them apart.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

BEARER = "bearer"
MAX_NAME_CHARS = 1024
MAX_ID_CHARS = 1024
MAX_URL_CHARS = 8192
# A stream's body is one event: a few hundred bytes, a Field Mapping body a few kilobytes. Far above both.
MAX_BODY_BYTES = 256 * 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class TokenError(Exception):
    """The request's `Authorization` is missing, not a bearer token, or not a configured token; `status` is
    what the receiver answers (401). The message names no token."""

    status = 401


class InvalidEvent(ValueError):
    """An authenticated body that is not a stream event; the message says what is wrong (never a value)."""


@dataclass(frozen=True)
class TokenMatch:
    index: int  # 0: FULLSTORY_STREAM_TOKEN; n: the n-th of FULLSTORY_STREAM_PREVIOUS_TOKENS

    @property
    def name(self) -> str:
        return "FULLSTORY_STREAM_TOKEN" if self.index == 0 else \
            f"FULLSTORY_STREAM_PREVIOUS_TOKENS[{self.index - 1}]"


def check_token(authorization: str | None, tokens: Sequence[str]) -> TokenMatch:
    """Which of `tokens` `Authorization: Bearer <token>` holds, compared in constant time; `TokenError` when
    none (every token is compared, so the time taken does not say which one came close)."""
    if not authorization:
        raise TokenError("missing Authorization header (the stream's authentication must be a Bearer token)")
    scheme, _, given = authorization.strip().partition(" ")
    if scheme.lower() != BEARER or not given.strip():
        raise TokenError("Authorization is not a Bearer token (set the stream's authentication to Bearer)")
    digest = hashlib.sha256(given.strip().encode("utf-8", "surrogatepass")).digest()
    found = -1
    for index, token in enumerate(tokens):
        if hmac.compare_digest(digest, hashlib.sha256(token.encode("utf-8")).digest()) and found < 0:
            found = index
    if found < 0:
        raise TokenError("the bearer token is not FULLSTORY_STREAM_TOKEN (nor a previous token)")
    return TokenMatch(found)


@dataclass(frozen=True)
class StreamEvent:
    """One stream event as received: what the signals sync needs, and the body it came in."""

    key: str  # `event_key` of the body: the same event delivered twice has the same key
    name: str
    timestamp: datetime  # the event's time: `event_time` when the body has it, else `timestamp`
    fs_user_id: str | None
    uid: str | None
    email: str | None
    display_name: str | None
    session_url: str | None
    page_url: str | None
    body: Mapping[str, Any]


def event_key(body: Mapping[str, Any]) -> str:
    """32 hex characters of SHA-256 of the body's canonical JSON (sorted keys): equal for a re-delivery."""
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


def parse_event(raw: bytes) -> StreamEvent:
    """The event of a stream's body (JSON object); `InvalidEvent` when it is not one."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidEvent("body is not valid JSON") from None
    return event_from_body(body)


def event_from_body(body: object, *, key: str | None = None) -> StreamEvent:
    """The event a parsed body holds (also a stored one, read again by a run: `key` is then the key it was
    stored under, not computed again)."""
    if not isinstance(body, dict):
        raise InvalidEvent("body is not a JSON object")
    name = _text(body, "name", MAX_NAME_CHARS, required=True)
    stamp = _time(body, "event_time") or _time(body, "timestamp")
    if stamp is None:
        raise InvalidEvent("timestamp is missing (the v2 body's `timestamp`, or `event_time`)")
    user = body.get("user")
    if user is None:
        user = {}
    if not isinstance(user, dict):
        raise InvalidEvent("user is not an object")
    ids = {field: _text(user, field, MAX_ID_CHARS, where="user.") for field in ("id", "uid")}
    # An anonymous visitor (no uid, no email; a Field Mapping body has no path for Fullstory's own id) is an
    # event all the same: stored, then recorded by the run as unidentified, never refused (Fullstory does not
    # retry a 4xx, so a refusal would lose it without a trace).
    email = _text(user, "email", MAX_ID_CHARS, where="user.")
    return StreamEvent(
        key=key or event_key(body), name=name, timestamp=stamp, fs_user_id=ids["id"], uid=ids["uid"],
        email=email,
        display_name=_text(user, "display_name", MAX_NAME_CHARS, where="user.", control_ok=True),
        session_url=_url(body, "session_url"), page_url=_url(body, "page_url"), body=body)


def _text(body: Mapping[str, Any], field: str, limit: int, *, required: bool = False, where: str = "",
          control_ok: bool = False) -> str | None:
    value = body.get(field)
    if value is None or value == "":
        if required:
            raise InvalidEvent(f"{where}{field} is missing")
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidEvent(f"{where}{field} is not a string")
    text = str(value)
    if len(text) > limit:
        raise InvalidEvent(f"{where}{field} is longer than {limit} characters")
    if not control_ok and _CONTROL.search(text):
        raise InvalidEvent(f"{where}{field} holds a control character")
    return text


def _url(body: Mapping[str, Any], field: str) -> str | None:
    text = _text(body, field, MAX_URL_CHARS)
    if text is not None and not text.startswith(("https://", "http://")):
        raise InvalidEvent(f"{field} is not an http(s) URL")
    return text


def _time(body: Mapping[str, Any], field: str) -> datetime | None:
    """An ISO 8601 time (a `Z` or an offset; none is read as UTC), or epoch milliseconds."""
    value = body.get(field)
    if value is None or value == "":
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value / 1000, UTC)
        except (OverflowError, OSError, ValueError):
            raise InvalidEvent(f"{field} is not a time") from None
    if not isinstance(value, str) or len(value) > 64:
        raise InvalidEvent(f"{field} is not a time")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise InvalidEvent(f"{field} is not an ISO 8601 time") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
