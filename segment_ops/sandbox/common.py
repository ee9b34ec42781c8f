"""HTTP helpers every emulator shares: JSON/text responses, auth header parsing, body reading, throttles.

Each emulator keeps only its vendor's error *shape*; how a header is parsed, how a body is read under a
size cap and how a request rate is metered is written once here.
"""

from __future__ import annotations

import base64
import binascii
import math
import time
from collections.abc import Mapping, Sequence
from typing import Protocol

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute


class Emulator(Protocol):
    """What `create_app` needs from one vendor emulator mounted under `/<name>`."""

    name: str

    def routes(self) -> Sequence[BaseRoute]: ...

    def fault_response(self, status: int, retry_after: int) -> Response:
        """The vendor's own answer for an injected 429/500/503 (429 carries Retry-After)."""
        ...

    def reset(self) -> None:
        """Forget per-run state (ack channels, throttles, injected data); the recorder is reset apart."""
        ...


class BodyTooLarge(Exception):
    """The request body is larger than the emulator's limit."""


def json_response(data: object, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status_code=status, headers=headers, media_type="application/json")


def text_response(text: str, status: int, headers: Mapping[str, str] | None = None) -> Response:
    return Response(text, status_code=status, headers=headers, media_type="text/plain")


def retry_after_headers(seconds: float) -> dict[str, str]:
    """`Retry-After` in whole seconds, at least 1 so a client never spins."""
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def basic_credentials(authorization: str | None) -> tuple[str, str] | None:
    """(user, password) of a well-formed `Basic` header, else None."""
    if not authorization or authorization[:6].lower() != "basic ":
        return None
    try:
        decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def scheme_token(authorization: str | None, scheme: str) -> str | None:
    """The credential after `<scheme> ` (case-insensitive scheme), e.g. Bearer or Splunk; else None."""
    prefix = scheme + " "
    if not authorization or authorization[: len(prefix)].lower() != prefix.lower():
        return None
    return authorization[len(prefix) :].strip() or None


def is_json_request(request: Request) -> bool:
    content_type = request.headers.get("content-type", "")
    return content_type.split(";", 1)[0].strip().lower() == "application/json"


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, raising `BodyTooLarge` past `limit` bytes.

    The rest of an oversized body is still drained (and discarded) so the client can read the error
    instead of failing on a half-written request; memory stays bounded by `limit`.
    """
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
    if size > limit:
        raise BodyTooLarge(f"request body is {size} bytes; the limit is {limit}")
    return b"".join(chunks)


class TokenBucket:
    """Allows `rate` requests/s per key with bursts up to `burst`; also serves as Pendo's leaky bucket."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.rate = rate
        self.burst = max(1.0, burst if burst is not None else rate)
        self._levels: dict[str, tuple[float, float]] = {}

    def wait_time(self, key: str) -> float:
        """0 when the request may pass (and is counted), else the seconds until it could."""
        now = time.monotonic()
        tokens, last = self._levels.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1:
            self._levels[key] = (tokens - 1, now)
            return 0.0
        self._levels[key] = (tokens, now)
        return (1 - tokens) / self.rate

    def reset(self) -> None:
        self._levels.clear()
