"""Splunk HTTP Event Collector emulator (spec §5, §7), mounted at `/splunk`.

`POST /services/collector/event` (also `/services/collector` and `/services/collector/event/1.0`),
`/services/collector/raw`, `/services/collector/ack`, and `GET /services/collector/health`. Every
answer is `{"text": ..., "code": n}` with the HTTP status of the spec's code table.

Vendor sources it follows:
- Splunk docs "Format events for HTTP Event Collector" and "HTTP Event Collector REST API endpoints"
  (help.splunk.com): event envelope, concatenated events, endpoints, Splunk/Basic auth.
- Splunk docs "About HTTP Event Collector Indexer Acknowledgment": per-token ack, channel GUID in
  `X-Splunk-Request-Channel` or `?channel=`, an `ackId` per request counted per channel, and
  `POST /services/collector/ack` `{"acks": [...]}` -> `{"acks": {"<id>": true|false}}`.
- HEC's code table as in splunk/cloudfwd `ServerErrors.java` (codes 0-14; 15-20 unverified).
- Spec §7 (SplunkAdmins reply-code lookup, splunk/kafka-connect-splunk#122, splunk-otel-collector-chart
  #935): `invalid-event-number` comes with codes 6, 7, 12, 13 and 15, and the events before it were
  indexed; acks can take minutes.
- Splunk `inputs.conf.spec` `[http]`: `ackIdleCleanup = true`, `maxIdleTime = 600` (channels idle for
  10 minutes are removed, with their unacknowledged ackIds).

How it answers:
- Events are checked one by one and each valid one is indexed before the next is read, so on a
  failing batch (codes 6, 7, 12, 13, 15) the events before `invalid-event-number` ARE recorded
  (spec §7). A retried batch is therefore indexed twice, as HEC does no dedupe.
- With ack on, an ackId turns true `ack_delay` seconds (default 2) after its request was indexed,
  not at once: indexers acknowledge when the data is written, which can take minutes. A huge delay
  makes acks that never come.
- `event` that is null, an empty/blank string or an empty object is "blank" (code 13); `time` must
  be epoch seconds (number or numeric string) and `fields` an object without nested objects (15).
- Without an Authorization header, `?token=` gets code 16 (query-string auth off) with HTTP 400.
- A channel must be a GUID (code 11 otherwise). With ack off, channels are accepted and ignored and
  the ack endpoint answers code 14.
- Health (code 17) needs no token.

Where it still differs from HEC (choices where the sources are silent or unverified):
- A body over `max_content_length` (default 1,000,000 bytes: the old Splunk default and Splunk
  Cloud's advice) gets 413 `{"text": "Content too large"}`; HEC's own table has no code for it.
- Injected 429s use HEC's busy body (code 9): HEC itself signals overload with 503 code 9; a 429
  comes from a load balancer in front, whose body is not HEC's.
- A channel idle for `max_idle_time` seconds (default 600, HEC's `maxIdleTime`) is forgotten with its
  ackIds, and `restart()` (control `POST /__sandbox__/splunk/restart`, like restarting Splunk) forgets
  every channel; a forgotten channel's next request starts its ackIds at 0 again. Chosen where the
  sources are silent (unverified): every request naming the channel, ack queries included, counts as
  activity; an ack query on a channel HEC does not know (forgotten, or never used) answers HTTP 400
  code 11 "Invalid data channel"; an unknown ackId on a known channel answers false; an ackId stays
  queryable after it was reported true.
- Ack can be turned off and on for the token while the sandbox runs (`set_ack`, control
  `POST /__sandbox__/splunk/ack {"enabled": false}`); with ack off the ack endpoint answers code 14.
- Codes 18-20 (unhealthy) are only produced through fault injection (503).
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
        ack_delay: float = 2.0,
        max_content_length: int = 1_000_000,
        max_idle_time: float | None = 600.0,
    ) -> None:
        self.recorder = recorder
        self.token = token
        self.indexes = frozenset(indexes)
        self.default_index = default_index
        self.ack = self._ack_configured = ack
        self.ack_delay = ack_delay
        self.max_content_length = max_content_length
        self.max_idle_time = max_idle_time  # None: channels are never dropped for idleness
        # channel -> when each ackId (its position) turns true, on the monotonic clock
        self._acks: dict[str, list[float]] = {}
        self._last_used: dict[str, float] = {}  # channel -> its last request, on the monotonic clock

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
        self.restart()
        self.ack = self._ack_configured

    def restart(self) -> None:
        """Forget every channel and its ackIds, as HEC does when Splunk restarts."""
        self._acks.clear()
        self._last_used.clear()

    def set_ack(self, enabled: bool) -> None:
        """Turn indexer acknowledgement on or off for the token (an admin editing the HEC input)."""
        self.ack = enabled

    def _use(self, channel: str) -> list[float] | None:
        """The channel's ackIds, after forgetting it if it was idle past `max_idle_time` (None: unknown)."""
        now = time.monotonic()
        last = self._last_used.get(channel)
        if last is not None and self.max_idle_time is not None and now - last > self.max_idle_time:
            self._acks.pop(channel, None)
        self._last_used[channel] = now
        return self._acks.get(channel)

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
            body = await read_body(request, self.max_content_length)
            ack_ids = [int(i) for i in orjson.loads(body)["acks"]]
        except (BodyTooLarge, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return _reply(6)
        ready = self._use(channel) if channel else None
        if ready is None:  # a channel HEC does not know (forgotten after idling or a restart); unverified
            self._last_used.pop(channel or "", None)
            return _reply(11)
        now = time.monotonic()
        return json_response({"acks": {str(i): 0 <= i < len(ready) and ready[i] <= now for i in ack_ids}})

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
        if self._use(channel) is None:
            self._acks[channel] = []
        ready = self._acks[channel]
        ready.append(time.monotonic() + self.ack_delay)
        return json_response({"text": "Success", "code": 0, "ackId": len(ready) - 1})


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
