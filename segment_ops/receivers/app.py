"""The webhook receiving app: a Starlette app with one `POST` route per vendor `Endpoint` and `GET /healthz`.

The app reads the body with a size cap, has the vendor's verifier check it, then the vendor's handler parse
and store it, and turns what they raise into the answer. Nothing reaches an inbox before it is verified.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from segment_ops.receivers.inbox import Conflict, InboxError

DEFAULT_MAX_BODY_BYTES = 10_000_000
log = logging.getLogger("segment_ops.webhooks")


class Refused(Exception):
    """A verifier or handler refuses the request: answered `status` with `answer` (by default
    `{"error": <message>}`). The message is logged, so it must hold no secret and no payload."""

    def __init__(self, status: int, message: str, *, answer: object | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.answer = {"error": message} if answer is None else answer


@dataclass(frozen=True)
class Endpoint:
    """One vendor's webhook: where it is posted, how it is verified, how it is stored.

    `check_headers(headers)`, when given, runs before the body is read and raises `Refused` for a request
    that can never verify (a malformed or expired signature header): it is answered without buffering a
    body of up to `max_body_bytes`. `verify(headers, body)` returns what `handle` needs (such as the bytes
    that were signed) or raises `Refused` (e.g. 400 for a malformed header, 403 for a wrong signature).
    `handle(verified)` parses, stores durably and returns the JSON answer of a 200; it raises `Refused` for a
    signed body that is no valid request, `Conflict` (answered 409) when it disagrees with what is stored,
    `InboxError` (500: nothing was acknowledged, the sender retries) when it cannot be stored. Both run in a
    worker thread: they may block.
    """

    path: str
    name: str  # how logs call it, e.g. "Heap webhook"
    verify: Callable[[Mapping[str, str], bytes], Any]
    handle: Callable[[Any], object]
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    item: str = "request"  # what a 500 says could not be stored
    check_headers: Callable[[Mapping[str, str]], None] | None = None


def build_app(endpoints: Sequence[Endpoint], *, health: Mapping[str, object] | None = None) -> Starlette:
    """The app serving `endpoints`; `GET /healthz` answers `{"ok": true, **health}` to anyone, so `health`
    must name no file, folder or secret."""
    status = {"ok": True, **(health or {})}

    async def healthz(request: Request) -> Response:
        return _json(status)

    routes = [Route(endpoint.path, _receiver(endpoint), methods=["POST"]) for endpoint in endpoints]
    return Starlette(routes=[*routes, Route("/healthz", healthz, methods=["GET"])])


def _receiver(endpoint: Endpoint) -> Callable[[Request], Awaitable[Response]]:
    async def receive(request: Request) -> Response:
        try:
            if endpoint.check_headers is not None:
                endpoint.check_headers(request.headers)  # cheap, no I/O: on the event loop
        except Refused as exc:
            log.warning("%s refused (%d) before its body was read: %s", endpoint.name, exc.status, exc)
            return _json(exc.answer, exc.status)
        try:
            body = await _read_body(request, endpoint.max_body_bytes)
        except _TooLarge:
            return _json({"error": f"body is larger than {endpoint.max_body_bytes} bytes"}, 413)
        try:
            verified = await run_in_threadpool(endpoint.verify, request.headers, body)
            return _json(await run_in_threadpool(endpoint.handle, verified))
        except Refused as exc:
            log.warning("%s refused (%d): %s", endpoint.name, exc.status, exc)
            return _json(exc.answer, exc.status)
        except Conflict as exc:
            log.warning("%s refused (409): %s (this copy: %s)", endpoint.name, exc,
                        exc.kept_aside or "not saved")
            return _json({"error": str(exc)}, 409)
        except InboxError as exc:
            log.error("%s not stored (500): %s", endpoint.name, exc)
            return _json({"error": f"the {endpoint.item} could not be stored; retry"}, 500)

    return receive


class _TooLarge(Exception):
    pass


async def _read_body(request: Request, limit: int) -> bytes:
    # The declared length refuses early; the count while streaming catches a chunked body or a wrong header.
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
