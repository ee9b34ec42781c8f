"""Pendo API emulator (spec §4), mounted at `/pendo`: the Aggregation API and the entity endpoints.

`POST /api/v1/aggregation` runs the request through `pendo_pipeline.run_aggregation` over the demo
data (the `fetch` adapter below maps each pipeline source to a `DemoData` method);
`GET /api/v1/account/{id}` and `/api/v1/visitor/{id}` return one entity, `GET /api/v1/feature` the
tagged features.

A test can make an account's usage drop from a day on (`drop_usage`, reached through
`POST /__sandbox__/pendo/usage-drop`): its event rows from then on keep `factor` of their events and
minutes (rows left with no events disappear), in every event source, until the sandbox is reset.

Choices where the spec is silent or unverified:
- A missing `x-pendo-integration-key` gets 401, a wrong one 403; all error bodies are plain text.
- A Content-Type other than application/json, invalid JSON and every `PipelineError` get 400.
- Throttling is a leaky bucket per key (`rate_limit` requests/s, bursts of the same size; off by
  default); a 429 carries `Retry-After`.
- `GET /api/v1/feature` returns a JSON array of `{"id", "name", "kind": "Feature"}` (shape unverified).
- Unknown entity ids get 404. `guideEvents` (no demo data) is a 400. `pollsSeenEver` returns every
  poll answer since the demo population began; a source argument such as `{"pageId": "p1"}` or
  `{"guideId": ..., "pollId": ...}` filters the rows on those fields.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from segment_ops.sandbox.common import (
    BodyTooLarge,
    TokenBucket,
    is_json_request,
    json_response,
    read_body,
    retry_after_headers,
    text_response,
)
from segment_ops.sandbox.demo_data import PENDO_EVENT_KINDS, POPULATION_START, DemoData
from segment_ops.sandbox.pendo_pipeline import PipelineError, run_aggregation
from segment_ops.sandbox.recorder import Recorder

MAX_BODY_BYTES = 1_000_000
KEY_HEADER = "x-pendo-integration-key"
_TIMED_SOURCES = frozenset({*PENDO_EVENT_KINDS, "pollEvents"})
_FAULT_TEXT = {429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable"}


class Pendo:
    """Read-only Pendo API over the deterministic demo data."""

    name = "pendo"

    def __init__(
        self,
        recorder: Recorder,
        demo: Callable[[], DemoData],
        *,
        integration_key: str,
        rate_limit: float | None = None,
    ) -> None:
        self.recorder = recorder
        self.demo = demo
        self.integration_key = integration_key
        self._bucket = TokenBucket(rate_limit) if rate_limit else None
        self._drops: dict[str, tuple[int, float]] = {}  # accountId -> (from epoch ms, factor)
        self._drops_lock = threading.Lock()

    def routes(self) -> Sequence[BaseRoute]:
        return [
            Route("/api/v1/aggregation", self._aggregation, methods=["POST"]),
            Route("/api/v1/account/{entity_id}", self._account, methods=["GET"]),
            Route("/api/v1/visitor/{entity_id}", self._visitor, methods=["GET"]),
            Route("/api/v1/feature", self._features, methods=["GET"]),
        ]

    def fault_response(self, status: int, retry_after: int) -> Response:
        headers = retry_after_headers(retry_after) if status == 429 else None
        return text_response(_FAULT_TEXT.get(status, "Error"), status, headers)

    def reset(self) -> None:
        if self._bucket:
            self._bucket.reset()
        with self._drops_lock:
            self._drops.clear()

    def drop_usage(self, account_id: str, from_ms: int, factor: float = 0.0) -> None:
        """From `from_ms` on, `account_id` keeps only `factor` (0..1) of its events and minutes."""
        if not account_id or not isinstance(account_id, str):
            raise ValueError("accountId must be a non-empty string")
        if not 0.0 <= factor < 1.0:
            raise ValueError(f"factor must be within [0, 1), got {factor}")
        with self._drops_lock:
            self._drops[account_id] = (int(from_ms), float(factor))

    async def _aggregation(self, request: Request) -> Response:
        refused = self._admit(request)
        if refused:
            return refused
        if not is_json_request(request):
            return text_response("Content-Type must be application/json", 400)
        try:
            body = orjson.loads(await read_body(request, MAX_BODY_BYTES))
        except (BodyTooLarge, orjson.JSONDecodeError) as exc:
            return text_response(f"invalid request body: {exc}", 400)
        log = self.recorder[self.name]
        log.store(body if isinstance(body, dict) else {"body": body})
        try:
            rows = await run_in_threadpool(run_aggregation, body, self.fetch, now_ms=int(time.time() * 1000))
        except PipelineError as exc:
            return text_response(str(exc), 400)
        log.count("rows", len(rows))
        return json_response({"results": rows})

    async def _features(self, request: Request) -> Response:
        refused = self._admit(request)
        if refused:
            return refused
        return json_response(await run_in_threadpool(lambda: self.demo().pendo_features()))

    async def _account(self, request: Request) -> Response:
        return await self._entity(request, "accountId", lambda demo: demo.pendo_accounts())

    async def _visitor(self, request: Request) -> Response:
        return await self._entity(request, "visitorId", lambda demo: demo.pendo_visitors())

    async def _entity(
        self, request: Request, id_field: str, rows: Callable[[DemoData], list[dict]]
    ) -> Response:
        refused = self._admit(request)
        if refused:
            return refused
        entity_id = request.path_params["entity_id"]
        found = await run_in_threadpool(
            lambda: next((row for row in rows(self.demo()) if row.get(id_field) == entity_id), None)
        )
        if found is None:
            return text_response(f"{id_field} {entity_id} not found", 404)
        return json_response({"id": entity_id, "metadata": found.get("metadata", {})})

    def _admit(self, request: Request) -> Response | None:
        key = request.headers.get(KEY_HEADER)
        if not key:
            return text_response("Unauthorized: missing x-pendo-integration-key", 401)
        if key != self.integration_key:
            return text_response("Forbidden: invalid integration key", 403)
        if self._bucket and (wait := self._bucket.wait_time(key)):
            return text_response("Too Many Requests", 429, retry_after_headers(wait))
        return None

    def fetch(self, source: str, argument: Any, time_series: dict | None) -> Iterable[dict]:
        """The pipeline's `fetch`: raw rows of one source from the demo data (runs in a worker thread)."""
        demo = self.demo()
        if source == "visitors":
            rows = demo.pendo_visitors()
        elif source == "accounts":
            rows = demo.pendo_accounts()
        elif source == "pollsSeenEver":
            rows = demo.pendo_poll_events(_to_ms(POPULATION_START), _to_ms(demo.now) + 1)
        elif source not in _TIMED_SOURCES:
            raise PipelineError(f"source '{source}' is not available in the sandbox")
        elif time_series is None:
            raise PipelineError(f"source '{source}' requires timeSeries")
        elif source == "pollEvents":
            rows = demo.pendo_poll_events(time_series["first"], time_series["last"])
        else:
            try:
                rows = demo.pendo_events(
                    source, time_series["first"], time_series["last"], time_series["period"]
                )
            except ValueError as exc:
                raise PipelineError(str(exc)) from None
            rows = self._apply_drops(rows)
        if isinstance(argument, dict) and argument:
            rows = [row for row in rows if all(row.get(k) == v for k, v in argument.items() if v is not None)]
        return rows


    def _apply_drops(self, rows: list[dict]) -> list[dict]:
        with self._drops_lock:
            drops = dict(self._drops)
        if not drops:
            return rows
        kept = []
        for row in rows:
            drop = drops.get(row.get("accountId"))
            bucket = row.get("day", row.get("hour"))
            if drop is None or bucket is None or bucket < drop[0]:
                kept.append(row)
                continue
            events = int(row["numEvents"] * drop[1])
            if events > 0:
                kept.append({**row, "numEvents": events, "numMinutes": max(1, int(row["numMinutes"] * drop[1]))})
        return kept


def _to_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)
