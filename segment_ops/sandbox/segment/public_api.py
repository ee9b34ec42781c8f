"""Segment Public API emulator (spec §2), mounted at `/segmentapis`: the audit trail, `GET /audit-events`,
the workspace's sources with their write keys, `GET /sources` (spec §7; `sources.py`), its destinations,
`GET /destinations`, the Delivery Overview metrics, `GET /delivery-overview/<step>` (spec §7;
`delivery_overview.py`, counted from what the Tracking API double received), regulations, `POST|GET
/regulations...` (spec §2; `regulations.py`, each creation also an audit event), and tracking plans,
`GET /tracking-plans...` and `PUT /tracking-plans/{id}/rules` (spec §2; `tracking_plans.py`).

Events come from the demo data (`data.py`; their "now" moves with the wall clock, so new events appear
as time passes, or stands at `SEGMENT_OPS_CLOCK` when that is set: `clock.now()`) plus any injected
through the sandbox-only `POST /__sandbox__/audit-events`.

Vendor sources followed (spec §2 and §7): segment-docs' Public API pages and docs.segmentapis.com "Rate
Limits" (envelopes, pagination, the 429 body); segmentio/public-api-sdk-typescript `api/auditTrailApi.ts`,
`model/auditEventV1.ts`, `paginationInput.ts`/`paginationOutput.ts` (the audit-events query and shapes).
Where the sandbox and Segment may differ: the sort order and the edges of `startTime`/`endTime` are not
documented (spec §7; clients overlap windows and dedupe by id); the rate limit's size is invented.

Choices where the spec is silent or unverified:
- A missing or wrong Bearer token gets 401 (RFC 6750 `invalid_token`); 403 would mean a valid token
  without the needed permission, which the sandbox does not model.
- Rate limit: a fixed 60 s window of `rate_limit_per_min` points per token, one point per request (the
  600/min figure is a third-party claim). `X-RateLimit-*` headers are on every answer; a 429 has the
  documented body with `msBeforeNext` and no `Retry-After`, which Segment does not guarantee (spec §7).
  Creating a regulation counts instead against a window of its type's group (Segment-only or Segment &
  Destination, `regulation_rate_limit_per_min` each, the SDK's 600/min) whose headers it answers with;
  listing a tracking plan's rules against its own window (`rules_rate_limit_per_min`, the SDK's 200/min).
- Events are sorted newest first (then by id), or oldest first after the sandbox-only
  `POST /segmentapis/__sandbox__/audit-order` `{"order": "oldest"}` (Segment documents no order, spec §7;
  `reset` restores newest first). `startTime` is exclusive, `endTime` inclusive and capped at now; a
  `startTime` older than the 90-day retention is clamped to it.
- The cursor is opaque base64 of (offset, window, filters). The first page fixes `endTime`, so the
  walk is stable while new events arrive; the cursor's window and filters win over repeated params.
- Error types: `RequestError` for 4xx, `ServerError` for 5xx. Regulations and tracking plans answer 422 for
  a body or filter that fails validation (the SDKs' "Validation failure"), 400 for a body that is not JSON
  or a bad `pagination.*` (as every other list here), 404 for an unknown id.
- A creation's audit event: `Workspace Regulation Created` (`resourceName` the workspace) or `Source
  Regulation Created` (`resourceName` the source's slug), `resourceType` "regulation", `resourceId` the
  regulateId, `actor` "Public API token: segment-ops" (no `actorEmail`), at the creation's `createdAt`.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import formatdate

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from segment_ops import clock
from segment_ops.sandbox.common import BodyTooLarge, json_response, read_body, scheme_token
from segment_ops.sandbox.recorder import Recorder
from segment_ops.sandbox.segment.delivery_overview import (
    DeliveryPipeline,
    MetricsQueryError,
    parse_metrics_query,
)
from segment_ops.sandbox.segment.regulations import RegulationError, Regulations, rate_limit_group
from segment_ops.sandbox.segment.sources import WORKSPACE_ID, sources_page
from segment_ops.sandbox.segment.tracking_plans import TrackingPlanError, TrackingPlans

MAX_PAGE_SIZE = 200
RETENTION = timedelta(days=90)
WINDOW_SECONDS = 60.0
MAX_BODY_BYTES = 4 * 1024 * 1024  # a request body the double reads (5,000 subject ids are ~200 KB)
REGULATION_GROUPS = ("segment_only", "segment_and_destination")
REGULATION_ACTOR = "Public API token: segment-ops"

AuditSource = Callable[[datetime, datetime], list[dict]]
_NOT_JSON = object()  # a request body that did not parse


class InvalidParameter(Exception):
    """A query parameter Segment answers with 400; `field` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class _Query:
    start: datetime
    end: datetime
    resource_id: str | None
    resource_type: str | None
    offset: int
    count: int


class SegmentPublicApi:
    """Audit trail over demo plus injected events, with Segment's envelopes, cursors and rate headers."""

    name = "segmentapis"

    def __init__(
        self, recorder: Recorder, audit_source: AuditSource, *, token: str, rate_limit_per_min: int = 600,
        sources: Sequence[dict] = (), pipeline: DeliveryPipeline | None = None,
        regulations: Regulations | None = None, regulation_rate_limit_per_min: int = 600,
        tracking_plans: TrackingPlans | None = None, rules_rate_limit_per_min: int = 200,
    ) -> None:
        self.recorder = recorder
        self.audit_source = audit_source
        self.token = token
        self.sources = list(sources)
        self.pipeline = pipeline or DeliveryPipeline(self.sources, ())
        self.regulations = regulations or Regulations(WORKSPACE_ID, self.sources, self.pipeline.destinations)
        self.tracking_plans = tracking_plans or TrackingPlans((), self.sources)
        self._window = _PointsWindow(rate_limit_per_min)
        self._regulation_windows = {group: _PointsWindow(regulation_rate_limit_per_min)
                                    for group in REGULATION_GROUPS}
        self._rules_window = _PointsWindow(rules_rate_limit_per_min)
        self._injected: list[dict] = []
        self._ids = itertools.count(1)
        self._oldest_first = False

    def routes(self) -> Sequence[BaseRoute]:
        return [Route("/audit-events", self._audit_events, methods=["GET"]),
                Route("/sources", self._sources, methods=["GET"]),
                Route("/destinations", self._destinations, methods=["GET"]),
                Route("/delivery-overview/{step}", self._delivery_overview, methods=["GET"]),
                Route("/regulations", self._regulations, methods=["GET", "POST"]),
                Route("/regulations/sources/{sourceId}", self._regulations, methods=["GET", "POST"]),
                Route("/regulations/{regulateId}", self._regulation, methods=["GET"]),
                Route("/tracking-plans", self._tracking_plans, methods=["GET"]),
                Route("/tracking-plans/{trackingPlanId}", self._tracking_plan, methods=["GET"]),
                Route("/tracking-plans/{trackingPlanId}/rules", self._tracking_plan_rules,
                      methods=["GET", "PUT"]),
                Route("/tracking-plans/{trackingPlanId}/sources", self._tracking_plan_sources,
                      methods=["GET"]),
                Route("/__sandbox__/audit-order", self._audit_order, methods=["POST"])]

    def fault_response(self, status: int, retry_after: int) -> Response:
        if status == 429:
            return self._too_many(retry_after * 1000.0)
        return _error(status, "ServerError", f"sandbox fault injection: HTTP {status}")

    def reset(self) -> None:
        self._window = _PointsWindow(self._window.limit)
        self._regulation_windows = {group: _PointsWindow(window.limit)
                                    for group, window in self._regulation_windows.items()}
        self._rules_window = _PointsWindow(self._rules_window.limit)
        self._injected.clear()
        self._oldest_first = False
        self.pipeline.reset()
        self.regulations.reset()
        self.tracking_plans.reset()

    def inject(self, partial_events: list[dict]) -> list[dict]:
        """Add audit events (missing fields get defaults, `timestamp` defaults to now); returns them whole."""
        now = _iso(clock.now(), "milliseconds")
        events = []
        for partial in partial_events:
            number = next(self._ids)
            events.append(
                {
                    "id": f"sandbox-audit-{number}",
                    "timestamp": now,
                    "type": "Source Modified",
                    "actor": "sandbox@example.com",
                    "actorEmail": "sandbox@example.com",
                    "resourceId": f"sandbox-resource-{number}",
                    "resourceType": "source",
                    "resourceName": "sandbox",
                    **partial,
                }
            )
        self._injected.extend(events)
        return events

    async def _audit_events(self, request: Request) -> Response:
        if refused := self._admit(request):
            return refused
        try:
            query = _parse_query(request.query_params, clock.now())
        except InvalidParameter as exc:
            return _error(400, "RequestError", str(exc), field=exc.field)
        self.recorder[self.name].store(dict(request.query_params))
        events = await run_in_threadpool(self._events, query)
        page = events[query.offset : query.offset + query.count]
        pagination = {"current": _cursor(query, query.offset), "totalEntries": len(events)}
        if query.offset + query.count < len(events):
            pagination["next"] = _cursor(query, query.offset + query.count)
        if query.offset > 0:
            pagination["previous"] = _cursor(query, max(0, query.offset - query.count))
        return json_response(
            {"data": {"events": page, "pagination": pagination}}, headers=self._window.headers()
        )

    async def _audit_order(self, request: Request) -> Response:
        """Sandbox-only: `{"order": "newest" | "oldest"}` sets the order `/audit-events` lists in."""
        order = (await request.json()).get("order")
        if order not in ("newest", "oldest"):
            return _error(400, "RequestError", "order must be 'newest' or 'oldest'", field="order")
        self._oldest_first = order == "oldest"
        return json_response({"order": order})

    async def _sources(self, request: Request) -> Response:
        if refused := self._admit(request):
            return refused
        try:
            data = sources_page(self.sources, _page_size(request.query_params),
                                request.query_params.get("pagination.cursor"))
        except InvalidParameter as exc:
            return _error(400, "RequestError", str(exc), field=exc.field)
        except ValueError as exc:
            return _error(400, "RequestError", str(exc), field="pagination.cursor")
        return json_response({"data": data}, headers=self._window.headers())

    async def _destinations(self, request: Request) -> Response:
        """`GET /destinations` (`ListDestinationsV1Output`): paginated like `/sources`."""
        if refused := self._admit(request):
            return refused
        try:
            data = sources_page(self.pipeline.destinations, _page_size(request.query_params),
                                request.query_params.get("pagination.cursor"))
        except InvalidParameter as exc:
            return _error(400, "RequestError", str(exc), field=exc.field)
        except ValueError as exc:
            return _error(400, "RequestError", str(exc), field="pagination.cursor")
        return json_response({"data": {"destinations": data["sources"], "pagination": data["pagination"]}},
                             headers=self._window.headers())

    async def _delivery_overview(self, request: Request) -> Response:
        if refused := self._admit(request):
            return refused
        try:
            query = parse_metrics_query(request.path_params["step"], request.query_params, self.pipeline,
                                        datetime.now(UTC))
        except MetricsQueryError as exc:
            return _error(exc.status, "RequestError", str(exc), field=exc.field)
        return json_response({"data": self.pipeline.answer(query)}, headers=self._window.headers())

    async def _regulations(self, request: Request) -> Response:
        """`POST /regulations[/sources/{sourceId}]` files a regulation; `GET` lists that scope's."""
        source_id = request.path_params.get("sourceId")
        if request.method == "GET":
            if refused := self._admit(request):
                return refused
            params = request.query_params
            try:
                data = self.regulations.page(params, _page_size(params), source_id)
            except InvalidParameter as exc:
                return _error(400, "RequestError", str(exc), field=exc.field)
            except RegulationError as exc:
                return _error(exc.status, "RequestError", str(exc), field=exc.field)
            return json_response({"data": data}, headers=self._window.headers())
        if refused := self._authorise(request):
            return refused
        try:
            body = orjson.loads(await read_body(request, MAX_BODY_BYTES))
        except BodyTooLarge as exc:
            return _error(413, "RequestError", str(exc))
        except orjson.JSONDecodeError:
            body = _NOT_JSON
        # The quota of the type's group (spec §2); a body naming no known type counts against the general one.
        group = rate_limit_group(body.get("regulationType") if isinstance(body, dict) else None)
        window = self._regulation_windows[group] if group else self._window
        if not window.consume():
            return self._too_many(window.ms_before_next(), window)
        if body is _NOT_JSON:
            return _error(400, "RequestError", "the request body is not valid JSON", headers=window.headers())
        try:
            created = self.regulations.create(body, source_id)
        except RegulationError as exc:
            return _error(exc.status, "RequestError", str(exc), field=exc.field, headers=window.headers())
        self._audit_regulation(created, source_id)
        return json_response({"data": {"regulateId": created["id"]}}, headers=window.headers())

    async def _regulation(self, request: Request) -> Response:
        if refused := self._admit(request):
            return refused
        try:
            regulation = self.regulations.get(request.path_params["regulateId"])
        except RegulationError as exc:
            return _error(exc.status, "RequestError", str(exc), field=exc.field)
        return json_response({"data": {"regulation": regulation}}, headers=self._window.headers())

    def _audit_regulation(self, created: dict, source_id: str | None) -> None:
        """The audit event Segment documents for a creation (spec §2), at the regulation's `createdAt`."""
        number = next(self._ids)
        if source_id is None:
            kind, name = "Workspace Regulation Created", WORKSPACE_ID
        else:
            kind, name = "Source Regulation Created", self.regulations.source(source_id)["slug"]
        self._injected.append({"id": f"sandbox-audit-{number}", "timestamp": created["createdAt"],
                               "type": kind, "actor": REGULATION_ACTOR, "resourceId": created["id"],
                               "resourceType": "regulation", "resourceName": name})

    async def _tracking_plans(self, request: Request) -> Response:
        if refused := self._admit(request):
            return refused
        params = request.query_params
        return self._tracking_plan_answer(
            lambda: {"data": self.tracking_plans.page(params, _page_size(params))})

    async def _tracking_plan(self, request: Request) -> Response:
        if refused := self._admit(request):
            return refused
        plan_id = request.path_params["trackingPlanId"]
        return self._tracking_plan_answer(
            lambda: {"data": {"trackingPlan": self.tracking_plans.get(plan_id)}})

    async def _tracking_plan_rules(self, request: Request) -> Response:
        """`GET` lists the plan's rules (its own 200/min window); `PUT` replaces them."""
        plan_id, params = request.path_params["trackingPlanId"], request.query_params
        if request.method == "GET":
            if refused := self._admit(request, self._rules_window):
                return refused
            return self._tracking_plan_answer(
                lambda: {"data": self.tracking_plans.rules_page(plan_id, params, _page_size(params))},
                self._rules_window)
        if refused := self._admit(request):
            return refused
        try:
            body = orjson.loads(await read_body(request, MAX_BODY_BYTES))
        except BodyTooLarge as exc:
            return _error(413, "RequestError", str(exc))
        except orjson.JSONDecodeError:
            return _error(400, "RequestError", "the request body is not valid JSON")

        def replace() -> dict:
            self.tracking_plans.replace_rules(plan_id, body)
            return {"data": {"status": "SUCCESS"}}

        return self._tracking_plan_answer(replace)

    async def _tracking_plan_sources(self, request: Request) -> Response:
        if refused := self._admit(request):
            return refused
        plan_id, params = request.path_params["trackingPlanId"], request.query_params
        return self._tracking_plan_answer(
            lambda: {"data": self.tracking_plans.sources_page(plan_id, params, _page_size(params))})

    def _tracking_plan_answer(self, answer: Callable[[], dict],
                              window: _PointsWindow | None = None) -> Response:
        """`answer()` as JSON with the window's rate headers, or Segment's error for what it raised."""
        try:
            body = answer()
        except InvalidParameter as exc:
            return _error(400, "RequestError", str(exc), field=exc.field)
        except TrackingPlanError as exc:
            return _error(exc.status, "RequestError", str(exc), field=exc.field)
        return json_response(body, headers=(window or self._window).headers())

    def _authorise(self, request: Request) -> Response | None:
        if scheme_token(request.headers.get("authorization"), "Bearer") != self.token:
            return _error(401, "RequestError", "Unauthorized: missing or invalid token")
        return None

    def _admit(self, request: Request, window: _PointsWindow | None = None) -> Response | None:
        """The token check and the rate limit every endpoint shares (of `window`, by default the general
        one); None when the request may proceed."""
        if refused := self._authorise(request):
            return refused
        window = window or self._window
        if not window.consume():
            return self._too_many(window.ms_before_next(), window)
        return None

    def _events(self, query: _Query) -> list[dict]:
        """All events in (start, end] matching the filters, newest first (or oldest first)."""
        if query.start >= query.end:
            return []
        injected = [e for e in self._injected if query.start < _parse_time(e["timestamp"]) <= query.end]
        events = [*self.audit_source(query.start, query.end), *injected]
        if query.resource_id is not None:
            events = [e for e in events if e.get("resourceId") == query.resource_id]
        if query.resource_type is not None:
            events = [e for e in events if e.get("resourceType") == query.resource_type]
        return sorted(events, key=lambda e: (_parse_time(e["timestamp"]), e["id"]),
                      reverse=not self._oldest_first)

    def _too_many(self, ms_before_next: float, window: _PointsWindow | None = None) -> Response:
        window = window or self._window
        body = {
            "errors": [
                {
                    "type": "RequestError",
                    "message": "Too many requests",
                    "data": {
                        "remainingPoints": 0,
                        "msBeforeNext": int(ms_before_next),
                        "consumedPoints": window.consumed,
                    },
                }
            ]
        }
        # No `Retry-After`: Segment documents the wait only in the body (spec §7), so clients must read it.
        return json_response(body, 429, window.headers())


class _PointsWindow:
    """Fixed one-minute window of rate-limit points, the source of the X-RateLimit-* headers."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.consumed = 0
        self._start = time.time()

    def consume(self) -> bool:
        now = time.time()
        if now >= self._start + WINDOW_SECONDS:
            self._start, self.consumed = now, 0
        if self.consumed >= self.limit:
            return False
        self.consumed += 1
        return True

    def ms_before_next(self) -> float:
        return max(0.0, (self._start + WINDOW_SECONDS - time.time()) * 1000)

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Consumed": str(self.consumed),
            "X-RateLimit-Remaining": str(max(0, self.limit - self.consumed)),
            "X-RateLimit-Reset": formatdate(self._start + WINDOW_SECONDS, usegmt=True),
        }


def _parse_query(params: Mapping[str, str], now: datetime) -> _Query:
    count = _page_size(params)
    cursor = params.get("pagination.cursor")
    if cursor:
        return _decode_cursor(cursor, count)
    start = max(_time_param(params, "startTime") or now - RETENTION, now - RETENTION)
    end = min(_time_param(params, "endTime") or now, now)
    return _Query(start, end, params.get("resourceId"), params.get("resourceType"), 0, count)


def _page_size(params: Mapping[str, str]) -> int:
    """`pagination.count`, required on every list endpoint (1-200, spec §2)."""
    raw_count = params.get("pagination.count")
    if raw_count is None:
        raise InvalidParameter("pagination.count", "pagination.count is required (1-200)")
    try:
        count = int(raw_count)
    except ValueError:
        raise InvalidParameter("pagination.count", "pagination.count must be an integer") from None
    if not 1 <= count <= MAX_PAGE_SIZE:
        raise InvalidParameter("pagination.count", f"pagination.count must be between 1 and {MAX_PAGE_SIZE}")
    return count


def _time_param(params: Mapping[str, str], name: str) -> datetime | None:
    raw = params.get(name)
    if not raw:
        return None
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise InvalidParameter(name, f"{name} must be an ISO-8601 date-time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _cursor(query: _Query, offset: int) -> str:
    state = [offset, _iso(query.start), _iso(query.end), query.resource_id, query.resource_type]
    return base64.urlsafe_b64encode(orjson.dumps(state)).decode()


def _decode_cursor(cursor: str, count: int) -> _Query:
    try:
        offset, start, end, resource_id, resource_type = orjson.loads(base64.urlsafe_b64decode(cursor))
        if not isinstance(offset, int) or offset < 0:
            raise ValueError(offset)
        return _Query(_parse_time(start), _parse_time(end), resource_id, resource_type, offset, count)
    except (binascii.Error, orjson.JSONDecodeError, TypeError, ValueError):
        raise InvalidParameter("pagination.cursor", "pagination.cursor is not a valid cursor") from None


def _parse_time(value: str) -> datetime:
    moment = datetime.fromisoformat(value)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _iso(moment: datetime, timespec: str = "microseconds") -> str:
    return moment.astimezone(UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


def _error(status: int, error_type: str, message: str, *, field: str | None = None,
           headers: Mapping[str, str] | None = None) -> Response:
    """Segment's error envelope `{"errors": [{type, message, field?, status}]}`."""
    error: dict = {"type": error_type, "message": message, "status": status}
    if field:
        error["field"] = field
    return json_response({"errors": [error]}, status, headers)
