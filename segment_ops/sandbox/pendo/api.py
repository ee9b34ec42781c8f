"""Pendo API emulator (spec §4, §7), mounted at `/pendo`: the Aggregation API and the entity endpoints.

`POST /api/v1/aggregation` runs the request through `pipeline.run_aggregation` over the demo
data (the `fetch` adapter below maps each pipeline source to a `PendoDemoData` method, `data.py`);
`GET /api/v1/account/{id}` and `/api/v1/visitor/{id}` return one entity, `GET /api/v1/feature` the
tagged features.

Vendor sources it follows:
- spec §4 (Pendo's v1 API as developers.pendo.io and pendo-io/pendo-ETL-API-calls show it): the
  integration-key header, the aggregation body and sources, `timeSeries`, `{"results": [...]}`.
- The subscription's time zone (support.pendo.io "Change your Subscription Time Zone"; Pendo's sample
  rows `day=1540008000000`, New York midnight): every `day` is a local midnight of `timezone` (default
  America/New_York, the sandbox subscription's; whole-hour zones only, as Pendo offers), and a
  `dayRange` day runs from local midnight to local midnight (23 or 25 hours across DST).
- Multi-app subscriptions (support.pendo.io tech note "The API response only contains data from one
  application in my subscription"; "Multi-app subscriptions"): the demo subscription has a web app
  (the default) and two mobile apps. An event source answers for the default app unless its object
  says `"appId": "expandAppIds(\"*\")"` or names app ids; every event row carries `appId`; visitors
  and accounts belong to the subscription, so `appId` does not narrow them. `GET /api/v1/feature`
  lists the default app's features unless asked `?expand=*`.
- Throttling: a leaky bucket answering 429 (DataGrail's Pendo integration docs).

A test can make an account's usage drop from a day on (`drop_usage`, reached through
`POST /__sandbox__/pendo/usage-drop`): its event rows from then on keep `factor` of their events and
minutes (rows left with no events disappear), in every event source, until the sandbox is reset.

Where the sandbox and Pendo still differ, or the spec is silent (choices, not vendor facts):
- A missing `x-pendo-integration-key` gets 401, a wrong one 403; all error bodies are plain text.
- A Content-Type other than application/json, invalid JSON and every `PipelineError` get 400.
- Throttling is a leaky bucket per key (`rate_limit` requests/s, bursts of the same size; off by
  default); a 429 carries `Retry-After` (Pendo publishes no numbers and no header).
- `GET /api/v1/feature` returns a JSON array of `{"id", "name", "kind": "Feature", "appId"}` (shape
  unverified); an `expand` other than `*` is a 400.
- Explicit app ids: a number or a list of numbers / numeric strings (tap-pendo's form); an unknown id
  yields no rows; `expandAppIds` with a pattern other than `"*"` is a 400.
- Pendo re-processes every day after a time zone change (showing zeros meanwhile); the sandbox's zone is
  fixed for its lifetime.
- Unknown entity ids get 404. `guideEvents` (no demo data) is a 400. `pollsSeenEver` returns every
  poll answer since the demo population began; a source argument such as `{"pageId": "p1"}` or
  `{"guideId": ..., "pollId": ...}` filters the rows on those fields.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Iterable, Sequence
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from segment_ops import clock
from segment_ops.clients.pendo import fractional_offset
from segment_ops.config import SANDBOX_PENDO_TIMEZONE
from segment_ops.sandbox.common import (
    BodyTooLarge,
    TokenBucket,
    is_json_request,
    json_response,
    read_body,
    retry_after_headers,
    text_response,
)
from segment_ops.sandbox.pendo.data import PENDO_DEFAULT_APP_ID, PENDO_EVENT_KINDS, PendoDemoData
from segment_ops.sandbox.pendo.pipeline import ALL_APPS, PipelineError, app_ids_of, run_aggregation
from segment_ops.sandbox.recorder import Recorder
from segment_ops.sandbox.world import POPULATION_START

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
        demo: Callable[[], PendoDemoData],
        *,
        integration_key: str,
        rate_limit: float | None = None,
        timezone: str = SANDBOX_PENDO_TIMEZONE,
    ) -> None:
        self.recorder = recorder
        self.demo = demo
        self.integration_key = integration_key
        self.timezone = timezone
        self.zone = _whole_hour_zone(timezone)
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

    def drop_usage_from_day(self, account_id: str, day: date, factor: float = 0.0) -> None:
        """From the subscription's day `day` on (its local midnight), `account_id` keeps `factor` of its
        usage."""
        midnight = datetime(day.year, day.month, day.day, tzinfo=self.zone)
        self.drop_usage(account_id, int(midnight.timestamp() * 1000), factor)

    def drop_usage(self, account_id: str, from_ms: int, factor: float = 0.0) -> None:
        """Buckets starting at `from_ms` or later: `account_id` keeps only `factor` (0..1) of its events and
        minutes."""
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
            now_ms = int(clock.now().timestamp() * 1000)  # SEGMENT_OPS_CLOCK, when set
            rows = await run_in_threadpool(run_aggregation, body, self.fetch, now_ms=now_ms,
                                           timezone=self.timezone)
        except PipelineError as exc:
            return text_response(str(exc), 400)
        log.count("rows", len(rows))
        return json_response({"results": rows})

    async def _features(self, request: Request) -> Response:
        refused = self._admit(request)
        if refused:
            return refused
        expand = request.query_params.get("expand")
        if expand not in (None, "*"):
            return text_response(f"expand must be *, not {expand!r}", 400)
        # The tech note: the default app's features unless `expand=*`.
        apps = None if expand == "*" else (PENDO_DEFAULT_APP_ID,)
        return json_response(await run_in_threadpool(lambda: self.demo().pendo_features(apps)))

    async def _account(self, request: Request) -> Response:
        return await self._entity(request, "accountId", lambda demo: demo.pendo_accounts())

    async def _visitor(self, request: Request) -> Response:
        return await self._entity(request, "visitorId", lambda demo: demo.pendo_visitors())

    async def _entity(
        self, request: Request, id_field: str, rows: Callable[[PendoDemoData], list[dict]]
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
        apps = _apps(app_ids_of(argument))
        if source == "visitors":  # visitors and accounts belong to the subscription, not to an app
            rows = demo.pendo_visitors()
        elif source == "accounts":
            rows = demo.pendo_accounts()
        elif source == "pollsSeenEver":
            rows = demo.pendo_poll_events(_to_ms(POPULATION_START), _to_ms(demo.now) + 1, apps)
        elif source not in _TIMED_SOURCES:
            raise PipelineError(f"source '{source}' is not available in the sandbox")
        elif time_series is None:
            raise PipelineError(f"source '{source}' requires timeSeries")
        elif source == "pollEvents":
            rows = demo.pendo_poll_events(time_series["first"], time_series["last"], apps)
        else:
            try:
                rows = demo.pendo_events(source, time_series["first"], time_series["last"],
                                         time_series["period"], timezone=self.timezone, apps=apps)
            except ValueError as exc:
                raise PipelineError(str(exc)) from None
            rows = self._apply_drops(rows)
        if isinstance(argument, dict) and argument:
            rows = [row for row in rows
                    if all(row.get(k) == v for k, v in argument.items() if v is not None and k != "appId")]
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
                minutes = max(1, int(row["numMinutes"] * drop[1]))
                kept.append({**row, "numEvents": events, "numMinutes": minutes})
        return kept


def _apps(named: str | frozenset[int] | None) -> Collection[int] | None:
    """The app ids a source answers for: the default app when it names none, all for expandAppIds("*")."""
    if named is None:
        return (PENDO_DEFAULT_APP_ID,)
    return None if named == ALL_APPS else named


def _whole_hour_zone(name: str) -> ZoneInfo:
    """The subscription's zone; Pendo offers whole-hour zones only (support.pendo.io), so the sandbox does
    too, over the days its demo data spans (a zone that was half-hour before them, such as America/Caracas,
    is one)."""
    zone = ZoneInfo(name)
    offset = fractional_offset(zone, POPULATION_START.date())
    if offset is not None:
        raise ValueError(f"Pendo offers whole-hour time zones only; {name} is not one (UTC offset {offset})")
    return zone


def _to_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)
