"""Segment Tracking API emulator (spec §1), mounted at `/segment`: `POST /v1/{identify,...,alias,batch}`.

Built for volume: one orjson parse per request, O(1) work per message, and only messageId counts plus
a bounded window of bodies kept (see `../recorder.py`).

Vendor sources followed (spec §1 and §7): segment-docs' HTTP API page (endpoints, auth, limits, the
silent drops); analytics-python's request.py/consumer.py (the `/v1/batch` body, 32 KB / 500 KB);
analytics-go#205, analytics-ruby#136, analytics-node#59 (a wrong write key gets 200 and its data is
dropped; an empty key gets 400); twilio.com/docs/segment/guides/duplicate-data (messageId dedupe covers
about the last 24 hours).

- A wrong (non-empty) write key gets **200** `{"success": true}` and its messages are dropped, as the
  edge does: it is stateless and validates nothing (analytics-ruby#136). They are counted in stats under
  `dropped` as `unknown_write_key` and never stored. Only a missing or empty key is refused: 400
  `{"code": "invalid_write_key", ...}` (analytics-go#205 reports 400; the exact code string is
  unverified). The Basic-auth key wins over the body's `writeKey` when both are sent.
  Where the sandbox still differs: Segment also answers 400 to "some very short keys" (analytics-go#205,
  no rule given); the sandbox does not model that.
- messageId dedupe holds for `dedupe_window_seconds` (default 24 h; Segment: "about the last 24 hours",
  dropping about 99% of repeats): a repeat inside the window is counted under `duplicates` and not
  stored; a repeat after it is stored again and counted under `late_duplicates`, the copies that
  would reach destinations twice. The sandbox drops 100% of repeats in the window, not ~99%.
- A Content-Type other than application/json gets 400 `invalid_request`.
- 500 KB means 512,000 bytes (500 KiB) of the decoded (gunzipped) body: analytics-python adds a
  message before checking its 475,000-byte mark, so its own batches reach about 508 KB and a
  500,000-byte limit would reject them. 32 KB means 32,768 bytes (the client's `32 << 10`) of one
  message's own JSON. One oversized message fails the whole batch.
- Batch items need a known `type`, or the whole batch gets 400. The 2500-events-per-batch note is
  unverified and not enforced.
- Silently dropped messages (spec §1) still get 200 and are counted in stats under `dropped` by
  reason; a repeated messageId inside the dedupe window is counted under `duplicates`. Neither is stored.
- A stored message has the batch's `context`/`integrations` merged in (its own keys win), the batch
  `sentAt`, `receivedAt`, a `timestamp` defaulted to receipt time, and no `writeKey`.
- The optional rate limit is a token bucket per write key; a 429 carries `Retry-After` and
  `X-RateLimit-Reset` (seconds until retry).
- For the Delivery Overview double (`delivery_overview.py`), what the delivered key's source received
  (stored messages), dropped (drop reasons) and was refused with 400 (its code) is counted per minute.
- The keys delivered are those of the workspace's enabled HTTP API sources (`sources.delivered_keys`);
  what each source received is counted in stats under `by_source` (source id), so a test sees which
  write key the calls came under. Stored messages carry no write key, as Segment's do not.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from segment_ops.sandbox.common import (
    BodyTooLarge,
    TokenBucket,
    basic_credentials,
    is_json_request,
    json_response,
    read_body,
    retry_after_headers,
)
from segment_ops.sandbox.recorder import ApiLog, Recorder
from segment_ops.sandbox.segment.delivery_overview import DeliveryPipeline

MAX_REQUEST_BYTES = 500 << 10
MAX_MESSAGE_BYTES = 32 << 10
# Segment's messageId dedupe covers "about the last 24 hours" (spec §7).
DEDUPE_WINDOW_SECONDS = 24 * 3600.0
MESSAGE_TYPES = frozenset({"identify", "track", "page", "screen", "group", "alias"})
_SHARED_KEYS = ("context", "integrations")
_FAULT_CODES = {429: "too_many_requests", 500: "internal_server_error", 503: "service_unavailable"}


class InvalidRequest(Exception):
    """A request Segment answers with 400; the message says which part is wrong."""


class SegmentTracking:
    """The HTTP source: authenticates, validates, dedupes by messageId and records what was delivered."""

    name = "segment"

    def __init__(self, recorder: Recorder, *, write_key: str, rate_limit: float | None = None,
                 dedupe_window_seconds: float = DEDUPE_WINDOW_SECONDS,
                 pipeline: DeliveryPipeline | None = None,
                 delivered: Mapping[str, str] | None = None) -> None:
        self.recorder = recorder
        self.write_key = write_key
        # write key -> source id of every key delivered; default: `write_key` alone (the first HTTP source)
        self.delivered = dict(delivered) if delivered is not None else {write_key: "src_segment_ops"}
        self.pipeline = pipeline
        self.dedupe_window_seconds = dedupe_window_seconds
        self._limiter = TokenBucket(rate_limit) if rate_limit else None

    def routes(self) -> Sequence[BaseRoute]:
        return [
            Route("/v1/batch", self._batch, methods=["POST"]),
            Route("/v1/{kind}", self._single, methods=["POST"]),
        ]

    def fault_response(self, status: int, retry_after: int) -> Response:
        headers = _throttle_headers(retry_after) if status == 429 else None
        return _error(
            status, _FAULT_CODES.get(status, "error"), f"sandbox fault injection: HTTP {status}", headers
        )

    def reset(self) -> None:
        if self._limiter:
            self._limiter.reset()

    async def _batch(self, request: Request) -> Response:
        return await self._receive(request, None)

    async def _single(self, request: Request) -> Response:
        kind = request.path_params["kind"]
        if kind not in MESSAGE_TYPES:
            return _error(404, "not_found", f"no endpoint /v1/{kind}")
        return await self._receive(request, kind)

    async def _receive(self, request: Request, kind: str | None) -> Response:
        """Handle one call; `kind` is the path's message type, None for /v1/batch."""
        log = self.recorder[self.name]
        if request.headers.get("x-retry-count"):
            log.count("retried_requests")
        if not is_json_request(request):
            return _error(400, "invalid_request", "Content-Type must be application/json")
        basic = basic_credentials(request.headers.get("authorization"))
        try:
            raw = await read_body(request, MAX_REQUEST_BYTES)
            if request.headers.get("content-encoding", "").lower() == "gzip":
                raw = _gunzip(raw, MAX_REQUEST_BYTES)
            body = orjson.loads(raw)
        except BodyTooLarge:
            self._failed_on_ingest(basic and basic[0], [{}], "request_too_large")
            return _error(400, "request_too_large", f"request body exceeds {MAX_REQUEST_BYTES} bytes")
        except (zlib.error, orjson.JSONDecodeError) as exc:
            self._failed_on_ingest(basic and basic[0], [{}], "invalid_request")
            return _error(400, "invalid_request", f"invalid JSON body: {exc}")
        if not isinstance(body, dict):
            return _error(400, "invalid_request", "body must be a JSON object")
        write_key = basic[0] if basic is not None and basic[0] else body.get("writeKey")
        if not isinstance(write_key, str) or not write_key:
            return _error(400, "invalid_write_key", "An invalid write key was provided")
        if self._limiter and (wait := self._limiter.wait_time(write_key)):
            return _error(429, "too_many_requests", "rate limit exceeded", _throttle_headers(wait))
        try:
            messages = _validated_messages(body, kind)
        except InvalidRequest as exc:
            batch = body.get("batch") if kind is None else [body]
            self._failed_on_ingest(write_key, [m if isinstance(m, dict) else {} for m in batch]
                                   if isinstance(batch, list) else [{}], "invalid_request")
            return _error(400, "invalid_request", str(exc))
        if write_key not in self.delivered:  # accepted and lost: no source has this key (spec §7)
            log.count("messages", len(messages))
            log.bump("dropped", "unknown_write_key", len(messages))
        else:
            kept, dropped = _deliver(log, body, messages, kind, self.dedupe_window_seconds)
            if kept:
                log.bump("by_source", self.delivered[write_key], len(kept))
            if self.pipeline and (source := self.pipeline.source_of(write_key)):
                self.pipeline.received(source, kept)
                for reason, message in dropped:
                    self.pipeline.failed_on_ingest(source, [message], reason)
        return json_response({"success": True})

    def _failed_on_ingest(self, write_key: str | None, messages: list[dict], reason: str) -> None:
        """Count a refused request under the delivered key's source (Delivery Overview's failed on ingest)."""
        if self.pipeline and write_key in self.delivered and (source := self.pipeline.source_of(write_key)):
            self.pipeline.failed_on_ingest(source, messages, reason)


class SegmentTrackingEu(SegmentTracking):
    """The EU region's Tracking API host (`events.eu1.segmentapis.com`, spec §1), mounted at `/segment_eu`.

    The sandbox's workspace lives in the US region (its Public API is `/segmentapis`, standing for
    `api.segmentapis.com`), so no key is delivered here: every call with a write key gets the same 200 and
    is dropped and counted under `unknown_write_key`, as Segment loses a key sent to the other region's host
    (spec §1, §7). Every other answer (400s, size limits) is the US host's.
    """

    name = "segment_eu"

    def __init__(self, recorder: Recorder, *, rate_limit: float | None = None) -> None:
        # An empty known key matches no request: an empty key is refused with 400 before the comparison.
        super().__init__(recorder, write_key="", rate_limit=rate_limit, delivered={})


def _validated_messages(body: dict, kind: str | None) -> list[dict]:
    """The request's messages, after the checks that fail the whole request with 400."""
    if kind is not None:
        messages = [body]
    else:
        messages = body.get("batch")
        if not isinstance(messages, list):
            raise InvalidRequest("batch must be an array of messages")
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequest(f"batch[{index}] is not an object")
        if kind is None and message.get("type") not in MESSAGE_TYPES:
            raise InvalidRequest(f"batch[{index}] needs a type, one of {sorted(MESSAGE_TYPES)}")
        size = len(orjson.dumps(message))
        if size > MAX_MESSAGE_BYTES:
            raise InvalidRequest(
                f"message {index} (messageId {message.get('messageId')!r}) is {size} bytes; "
                f"the limit is {MAX_MESSAGE_BYTES}"
            )
    return messages


def _deliver(log: ApiLog, body: dict, messages: list[dict], kind: str | None,
             dedupe_window: float) -> tuple[list[dict], list[tuple[str, dict]]]:
    """Record what Segment would keep: drops and duplicates are counted, never stored (spec §1). Returns
    the messages kept and the (reason, message) of those dropped."""
    kept: list[dict] = []
    dropped: list[tuple[str, dict]] = []
    received_at = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    shared = {} if kind is not None else {k: body[k] for k in _SHARED_KEYS if isinstance(body.get(k), dict)}
    sent_at = body.get("sentAt")
    log.count("messages", len(messages))
    for message in messages:
        message_type = kind or message["type"]
        reason = _drop_reason(message, message_type)
        if reason:
            log.bump("dropped", reason)
            dropped.append((reason, {**message, "type": message_type}))
            continue
        message_id = message.get("messageId")
        if message_id is not None and not log.first_seen(str(message_id), window=dedupe_window):
            continue
        for key, value in shared.items():
            own = message.get(key)
            message[key] = {**value, **own} if isinstance(own, dict) else value
        message["type"] = message_type
        message.pop("writeKey", None)
        if sent_at and "sentAt" not in message:
            message["sentAt"] = sent_at
        if not message.get("timestamp"):
            message["timestamp"] = received_at
        message["receivedAt"] = received_at
        log.store(orjson.dumps(message))
        log.bump("by_type", message_type)
        kept.append(message)
    return kept, dropped


def _drop_reason(message: dict, message_type: str) -> str | None:
    """Why Segment would accept this message over HTTP yet silently drop it (spec §1), or None."""
    if message_type == "alias":
        if not message.get("previousId"):
            return "alias_without_previous_id"
        return None if message.get("userId") else "alias_without_user_id"
    if not message.get("userId") and not message.get("anonymousId"):
        return "no_user_id_or_anonymous_id"
    if message_type == "track" and not message.get("event"):
        return "track_without_event"
    if message_type == "group" and not message.get("groupId"):
        return "group_without_group_id"
    return None


def _gunzip(raw: bytes, limit: int) -> bytes:
    inflater = zlib.decompressobj(wbits=31)
    data = inflater.decompress(raw, limit + 1)
    if len(data) > limit:
        raise BodyTooLarge(f"decompressed body exceeds {limit} bytes")
    if not inflater.eof:
        raise zlib.error("truncated gzip body")
    return data


def _throttle_headers(seconds: float) -> dict[str, str]:
    headers = retry_after_headers(seconds)
    return headers | {"X-RateLimit-Reset": headers["Retry-After"]}


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    """Segment's error body: JSON with `code` and `message` (what analytics-python parses, spec §1)."""
    return json_response({"code": code, "message": message}, status, headers)
