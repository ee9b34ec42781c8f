"""Splunk HTTP Event Collector emulator (spec §5), mounted at `/splunk`.

`POST /services/collector/event` (also `/services/collector` and `/services/collector/event/1.0`),
`/services/collector/raw`, `/services/collector/ack`, and `GET /services/collector/health`. Every
answer is `{"text": ..., "code": n}` with the HTTP status of the spec's code table.

Choices where the spec is silent or unverified:
- Events are checked one by one and each valid one is indexed before the next is read, so on a
  failing batch (codes 6, 7, 12, 13, 15) the events *before* `invalid-event-number` ARE recorded,
  as real HEC may do. A retried batch is therefore indexed twice, as HEC does no dedupe.
- `event` that is null, an empty/blank string or an empty object is "blank" (code 13); `time` must
  be epoch seconds (number or numeric string) and `fields` an object without nested objects (15).
- Without an Authorization header, `?token=` gets code 16 (query-string auth off) with HTTP 400.
- A body over `max_content_length` (default 1,000,000 bytes: the old Splunk default and Splunk
  Cloud's advice) gets 413 `{"text": "Content too large"}`; HEC's own table has no code for it.
- A channel must be a GUID (code 11 otherwise). With ack off, channels are accepted and ignored and
  the ack endpoint answers code 14.
- Injected 429s use HEC's busy body (code 9): HEC itself signals overload with 503 code 9.
- Health (code 17) needs no token.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Collection, Sequence

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from segment_ops.sandbox.common import (
    BodyTooLarge,
    basic_credentials,
    json_response,
    read_body,
    retry_after_headers,
    scheme_token,
)
from segment_ops.sandbox.recorder import Recorder

# code -> (HTTP status, text), spec §5.
HEC_CODES: dict[int, tuple[int, str]] = {
    0: (200, "Success"),
    1: (403, "Token disabled"),
    2: (401, "Token is required"),
    3: (401, "Invalid authorization"),
    4: (403, "Invalid token"),
    5: (400, "No data"),
    6: (400, "Invalid data format"),
    7: (400, "Incorrect index"),
    8: (500, "Internal server error"),
    9: (503, "Server is busy"),
    10: (400, "Data channel is missing"),
    11: (400, "Invalid data channel"),
    12: (400, "Event field is required"),
    13: (400, "Event field cannot be blank"),
    14: (400, "ACK is disabled"),
    15: (400, "Error in handling indexed fields"),
    16: (400, "Query string authorization is not enabled"),
    17: (200, "HEC is healthy"),
}
_FAULT_CODES = {429: 9, 500: 8, 503: 9}
_WHITESPACE = re.compile(r"\s*")
_DECODER = json.JSONDecoder()


class SplunkHec:
    """One HEC token with its allowed indexes and, optionally, indexer acknowledgement."""

    name = "splunk"

    def __init__(
        self,
        recorder: Recorder,
        *,
        token: str,
        indexes: Collection[str],
        default_index: str,
        ack: bool = False,
        max_content_length: int = 1_000_000,
    ) -> None:
        self.recorder = recorder
        self.token = token
        self.indexes = frozenset(indexes)
        self.default_index = default_index
        self.ack = ack
        self.max_content_length = max_content_length
        self._next_ack: dict[str, int] = {}

    def routes(self) -> Sequence[BaseRoute]:
        return [
            *(
                Route(path, self._event, methods=["POST"])
                for path in (
                    "/services/collector",
                    "/services/collector/event",
                    "/services/collector/event/1.0",
                )
            ),
            Route("/services/collector/raw", self._raw, methods=["POST"]),
            Route("/services/collector/ack", self._ack_status, methods=["POST"]),
            Route("/services/collector/health", self._health, methods=["GET"]),
        ]

    def fault_response(self, status: int, retry_after: int) -> Response:
        code = _FAULT_CODES.get(status, 8)
        headers = retry_after_headers(retry_after) if status == 429 else None
        return json_response({"text": HEC_CODES[code][1], "code": code}, status, headers)

    def reset(self) -> None:
        self._next_ack.clear()

    async def _event(self, request: Request) -> Response:
        refused, channel = self._admit(request)
        if refused:
            return refused
        text, refused = await self._text_body(request)
        if refused:
            return refused
        log = self.recorder[self.name]
        number, position = 0, _WHITESPACE.match(text).end()
        while position < len(text):
            try:
                event, position = _DECODER.raw_decode(text, position)
            except json.JSONDecodeError:
                return _reply(6, number)
            code = self._event_error(event)
            if code:
                return _reply(code, number)
            log.store(self._indexed(event, event["event"], channel))
            number += 1
            position = _WHITESPACE.match(text, position).end()
        return self._success(channel)

    async def _raw(self, request: Request) -> Response:
        refused, channel = self._admit(request)
        if refused:
            return refused
        meta = dict(request.query_params)
        if meta.get("index", self.default_index) not in self.indexes:
            return _reply(7)
        text, refused = await self._text_body(request)
        if refused:
            return refused
        log = self.recorder[self.name]
        for line in filter(str.strip, text.splitlines()):
            log.store(self._indexed(meta, line, channel))
        return self._success(channel)

    async def _ack_status(self, request: Request) -> Response:
        refused, channel = self._admit(request)
        if refused:
            return refused
        if not self.ack:
            return _reply(14)
        try:
            ack_ids = orjson.loads(await read_body(request, self.max_content_length))["acks"]
            issued = self._next_ack.get(channel or "", 0)
            return json_response({"acks": {str(int(i)): 0 <= int(i) < issued for i in ack_ids}})
        except (BodyTooLarge, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return _reply(6)

    async def _health(self, request: Request) -> Response:
        return _reply(17)

    def _admit(self, request: Request) -> tuple[Response | None, str | None]:
        """(refusal, channel): token check (codes 2/3/4/16) then channel check (codes 10/11)."""
        header = request.headers.get("authorization")
        if header is None:
            return _reply(16 if "token" in request.query_params else 2), None
        token = scheme_token(header, "Splunk")
        if token is None and (basic := basic_credentials(header)):
            token = basic[1]
        if token is None:
            return _reply(3), None
        if token != self.token:
            return _reply(4), None
        channel = request.headers.get("x-splunk-request-channel") or request.query_params.get("channel")
        if channel is None:
            return (_reply(10) if self.ack else None), None
        try:
            uuid.UUID(channel)
        except ValueError:
            return _reply(11), None
        return None, channel

    async def _text_body(self, request: Request) -> tuple[str, Response | None]:
        try:
            text = (await read_body(request, self.max_content_length)).decode("utf-8")
        except BodyTooLarge:
            return "", json_response({"text": "Content too large"}, 413)
        except UnicodeDecodeError:
            return "", _reply(6, 0)
        return text, (None if text.strip() else _reply(5))

    def _event_error(self, event: object) -> int | None:
        """The HEC code that rejects this event object, or None."""
        if not isinstance(event, dict):
            return 6
        if "event" not in event:
            return 12
        body = event["event"]
        if body is None or body == {} or (isinstance(body, str) and not body.strip()):
            return 13
        if event.get("index", self.default_index) not in self.indexes:
            return 7
        if "time" in event and not _is_epoch(event["time"]):
            return 6
        fields = event.get("fields", {})
        if not isinstance(fields, dict) or any(isinstance(v, dict) for v in fields.values()):
            return 15
        return None

    def _indexed(self, meta: dict, event: object, channel: str | None) -> dict:
        """What the index would hold: the event plus its metadata, defaulted like the token would."""
        return {
            "time": float(meta["time"]) if meta.get("time") is not None else time.time(),
            "host": meta.get("host", "sandbox"),
            "source": meta.get("source", "http:sandbox"),
            "sourcetype": meta.get("sourcetype", "httpevent"),
            "index": meta.get("index", self.default_index),
            "event": event,
            "fields": meta.get("fields", {}),
            "channel": channel,
        }

    def _success(self, channel: str | None) -> Response:
        if not (self.ack and channel):
            return _reply(0)
        ack_id = self._next_ack.get(channel, 0)
        self._next_ack[channel] = ack_id + 1
        return json_response({"text": "Success", "code": 0, "ackId": ack_id})


def _is_epoch(value: object) -> bool:
    if isinstance(value, bool):
        return False
    try:
        float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return True


def _reply(code: int, invalid_event_number: int | None = None) -> Response:
    status, text = HEC_CODES[code]
    body: dict = {"text": text, "code": code}
    if invalid_event_number is not None:
        body["invalid-event-number"] = invalid_event_number
    return json_response(body, status)
