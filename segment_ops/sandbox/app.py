"""The sandbox as one Starlette app: every vendor emulator under its own prefix, plus `/__sandbox__`.

`/segment`, `/segment_eu` (the EU region's tracking host), `/segmentapis`, `/profiles` (Segment's Profile API,
built from what `/segment` accepted), `/heap`, `/pendo`, `/splunk`, `/slack` and `/fullstory` (Fullstory's
Server API v2 users, `fullstory/api.py`) each sit behind a `FaultGate`; the control endpoints under
`/__sandbox__` are never faulted:

- `GET  /__sandbox__/stats`                      counts per API
- `GET  /__sandbox__/received/{api}?limit&offset` stored items (oldest kept first)
- `GET  /__sandbox__/seen/{api}/{key}`            times a dedupe key (messageId, idempotency_key) arrived
- `GET|POST /__sandbox__/faults`                  POST `{"segment": {"rate_429": 0.2}}` replaces that
  API's spec, `{"segment": {}}` clears it, `{}` clears all
- `POST /__sandbox__/reset`                       clears the recorder, faults and per-run emulator state
- `POST /__sandbox__/audit-events`                injects audit events (a list of partial events)
- `POST /__sandbox__/pendo/usage-drop`            `{"accountId", "from_day": "YYYY-MM-DD", "factor"?: 0}`:
  that account's Pendo usage drops to `factor` from that UTC day on (until reset)
- `GET|POST /__sandbox__/heap/webhooks`           register a Heap segment-sync webhook target
  (`{"url", "secret"?, "interval_seconds"?, "page_size"?}`; see `heap/webhooks.py`)
- `POST /__sandbox__/heap/push`                   push signed segment-sync deltas now; returns their
  sync_task_ids
- `GET  /__sandbox__/heap/deliveries`             each pushed page's attempts and outcome
- `GET|POST /__sandbox__/fullstory/streams`       register a Fullstory Streams target (`{"url", "token"?,
  "body"?: "v2"|"mapped", "interval_seconds"?, "streams"?}`; see `fullstory/streams.py`)
- `POST /__sandbox__/fullstory/push`              send now the demo frustration events not yet sent
  (`duplicate`, `late_hours`/`late`, `bad_token` faults); returns their event_ids
- `GET  /__sandbox__/fullstory/deliveries`        each stream event's attempts and outcome
- `GET  /__sandbox__/fullstory/users`, `/jobs`    the users the Fullstory API holds (`?all=true`: the demo's
  too) and its batch import jobs
- `GET|POST /__sandbox__/segment/destination-failures` make a Segment destination fail a share of its events
  (`{"destinationId", "share", "reason"}`; see `segment/delivery_overview.py`)
- `GET|POST /__sandbox__/segment/regulations`       how regulations progress and end until reset
  (`{"running_after_seconds", "finished_after_seconds", "max_subject_ids", "outcomes": [{"pattern",
  "status"}]}`; see `segment/regulations.py`)
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import orjson
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route, Router

from segment_ops import clock
from segment_ops.config import (
    SANDBOX_FULLSTORY_API_KEY,
    SANDBOX_FULLSTORY_STREAM_TOKEN,
    SANDBOX_HEAP_API_KEY,
    SANDBOX_HEAP_APP_ID,
    SANDBOX_HEAP_WEBHOOK_SECRET,
    SANDBOX_PENDO_INTEGRATION_KEY,
    SANDBOX_PENDO_TIMEZONE,
    SANDBOX_SEGMENT_PROFILES_SPACE_ID,
    SANDBOX_SEGMENT_PROFILES_TOKEN,
    SANDBOX_SEGMENT_PUBLIC_API_TOKEN,
    SANDBOX_SEGMENT_WRITE_KEY,
    SANDBOX_SLACK_WEBHOOK_TOKEN,
    SANDBOX_SPLUNK_HEC_TOKEN,
    SANDBOX_SPLUNK_INDEX,
)
from segment_ops.sandbox.common import Emulator, json_response
from segment_ops.sandbox.demo_data import DemoConfig, DemoData
from segment_ops.sandbox.faults import FaultGate, FaultInjector, FaultSpec, FaultSpecError, check_fault_apis
from segment_ops.sandbox.fullstory.api import Fullstory
from segment_ops.sandbox.fullstory.streams import StreamPusher
from segment_ops.sandbox.fullstory.streams import control_routes as fullstory_routes
from segment_ops.sandbox.heap.api import Heap
from segment_ops.sandbox.heap.webhooks import HeapWebhookPusher
from segment_ops.sandbox.heap.webhooks import control_routes as heap_webhook_routes
from segment_ops.sandbox.pendo.api import Pendo
from segment_ops.sandbox.recorder import Recorder
from segment_ops.sandbox.segment import delivery_overview, regulations
from segment_ops.sandbox.segment.data import demo_tracking_plans
from segment_ops.sandbox.segment.profiles import SegmentProfiles
from segment_ops.sandbox.segment.public_api import SegmentPublicApi
from segment_ops.sandbox.segment.sources import WORKSPACE_ID, delivered_keys, workspace_sources
from segment_ops.sandbox.segment.tracking import DEDUPE_WINDOW_SECONDS, SegmentTracking, SegmentTrackingEu
from segment_ops.sandbox.segment.tracking_plans import TrackingPlans
from segment_ops.sandbox.slack import SlackWebhook
from segment_ops.sandbox.splunk_hec import SplunkHec

# Pendo answers from demo data at most this stale; audit events always see the request's "now".
PENDO_DATA_MAX_AGE = timedelta(seconds=60)


@dataclass
class SandboxConfig:
    """Everything the sandbox can be started with; credentials default to `segment_ops.config`."""

    seed: int = 7
    scale: float = 1.0
    faults: dict[str, FaultSpec] = field(default_factory=dict)  # per API name
    segment_rate_limit: float | None = None  # requests/s per write key before 429 (Segment advises <= 1000)
    segment_dedupe_window_seconds: float = DEDUPE_WINDOW_SECONDS  # messageId dedupe, about 24 h (spec §7)
    public_api_rate_limit_per_min: int = 600  # points/min per token (a third-party claim, unverified)
    # Regulations (spec §2, `segment/regulations.py`): creations per minute of each rate-limit group (the
    # SDK's 600), seconds from creation to RUNNING and from RUNNING to FINISHED, subject ids per request (the
    # docs' 5,000), and outcome rules that end a regulation FAILED, INVALID, NOT_SUPPORTED or
    # PARTIAL_SUCCESS.
    regulation_rate_limit_per_min: int = 600
    regulation_running_after_seconds: float = 5.0
    regulation_finished_after_seconds: float = 5.0
    regulation_max_subject_ids: int = regulations.MAX_SUBJECT_IDS
    regulation_outcomes: tuple[regulations.RegulationOutcome, ...] = ()
    tracking_plan_rules_rate_limit_per_min: int = 200  # `GET /tracking-plans/{id}/rules` (the SDK's 200/min)
    pendo_rate_limit: float | None = None  # requests/s per key before 429 (Pendo's numbers are unpublished)
    pendo_timezone: str = SANDBOX_PENDO_TIMEZONE  # the subscription's: Pendo's days start at its midnight
    splunk_ack: bool = False  # indexer acknowledgement on the HEC token
    splunk_ack_delay: float = 2.0  # seconds until an ackId turns true (indexing takes time: even minutes)
    splunk_max_content_length: int = 1_000_000
    splunk_max_idle_time: float | None = 600.0  # HEC's maxIdleTime: seconds before it forgets a channel
    record_limit: int = 100_000  # stored bodies per API; counts stay exact beyond it
    # Seconds before a profile shows a call the Tracking API took (Segment updates profiles asynchronously).
    profiles_delay_seconds: float = 1.0
    profiles_rate_limit: float | None = None  # requests/s per space before 429 (Segment's default: 100)
    profiles_space_id: str = SANDBOX_SEGMENT_PROFILES_SPACE_ID
    profiles_token: str = field(default=SANDBOX_SEGMENT_PROFILES_TOKEN, repr=False)
    segment_write_key: str = field(default=SANDBOX_SEGMENT_WRITE_KEY, repr=False)
    public_api_token: str = field(default=SANDBOX_SEGMENT_PUBLIC_API_TOKEN, repr=False)
    heap_app_id: str = SANDBOX_HEAP_APP_ID
    heap_api_key: str = field(default=SANDBOX_HEAP_API_KEY, repr=False)
    pendo_integration_key: str = field(default=SANDBOX_PENDO_INTEGRATION_KEY, repr=False)
    splunk_hec_token: str = field(default=SANDBOX_SPLUNK_HEC_TOKEN, repr=False)
    splunk_indexes: tuple[str, ...] = (SANDBOX_SPLUNK_INDEX, "main")
    slack_webhook_token: str = field(default=SANDBOX_SLACK_WEBHOOK_TOKEN, repr=False)
    # Fullstory (`fullstory/api.py`): requests/s per API key before 429 (Fullstory publishes no number), its
    # burst, how long a batch import job runs (real seconds), and the items one batch may hold (the docs'
    # 50,000).
    fullstory_rate_limit: float | None = None
    fullstory_rate_burst: float | None = None
    fullstory_batch_delay_seconds: float = 0.2
    fullstory_batch_max_items: int = 50_000
    fullstory_api_key: str = field(default=SANDBOX_FULLSTORY_API_KEY, repr=False)
    fullstory_stream_token: str = field(default=SANDBOX_FULLSTORY_STREAM_TOKEN, repr=False)

    def __post_init__(self) -> None:
        check_fault_apis(self.faults)


def create_app(config: SandboxConfig | None = None) -> Starlette:
    """Build the sandbox app; its state lives in the app, so two apps never share anything."""
    config = config or SandboxConfig()
    recorder = Recorder(config.record_limit)
    injector = FaultInjector(config.seed, config.faults)
    demo = DemoSource(DemoConfig(seed=config.seed, scale=config.scale))
    sources = workspace_sources(config.segment_write_key)
    # What the Tracking API receives, counted for the Public API's Delivery Overview (spec §7).
    pipeline = delivery_overview.DeliveryPipeline(
        sources, delivery_overview.workspace_destinations(sources[0]["id"]))
    regulation_store = regulations.Regulations(
        WORKSPACE_ID, sources, pipeline.destinations, seed=config.seed,
        settings=regulations.RegulationSettings(
            running_after_seconds=config.regulation_running_after_seconds,
            finished_after_seconds=config.regulation_finished_after_seconds,
            max_subject_ids=config.regulation_max_subject_ids, outcomes=tuple(config.regulation_outcomes)))
    public_api = SegmentPublicApi(
        recorder,
        demo.audit_events,
        token=config.public_api_token,
        rate_limit_per_min=config.public_api_rate_limit_per_min,
        sources=sources,
        pipeline=pipeline,
        regulations=regulation_store,
        regulation_rate_limit_per_min=config.regulation_rate_limit_per_min,
        # The demo plan is connected to the HTTP source the reverse-ETL models send to (`segment-ops`).
        tracking_plans=TrackingPlans(demo_tracking_plans(
            sources[0]["id"], next(s["id"] for s in sources if s["slug"] == "web-app")), sources),
        rules_rate_limit_per_min=config.tracking_plan_rules_rate_limit_per_min,
    )
    fullstory = Fullstory(recorder, api_key=config.fullstory_api_key, seed=config.seed,
                          demo_users=lambda: demo.recent().fullstory_users(),
                          rate_limit=config.fullstory_rate_limit, rate_burst=config.fullstory_rate_burst,
                          batch_delay_seconds=config.fullstory_batch_delay_seconds,
                          batch_max_items=config.fullstory_batch_max_items)
    emulators: list[Emulator] = [
        SegmentTracking(recorder, write_key=config.segment_write_key, rate_limit=config.segment_rate_limit,
                        dedupe_window_seconds=config.segment_dedupe_window_seconds, pipeline=pipeline,
                        delivered=delivered_keys(sources)),
        SegmentTrackingEu(recorder, rate_limit=config.segment_rate_limit),
        public_api,
        Heap(recorder, app_id=config.heap_app_id, api_key=config.heap_api_key),
        Pendo(
            recorder,
            demo.recent,
            integration_key=config.pendo_integration_key,
            rate_limit=config.pendo_rate_limit,
            timezone=config.pendo_timezone,
        ),
        SplunkHec(
            recorder,
            token=config.splunk_hec_token,
            indexes=config.splunk_indexes,
            default_index=config.splunk_indexes[0],
            ack=config.splunk_ack,
            ack_delay=config.splunk_ack_delay,
            max_content_length=config.splunk_max_content_length,
            max_idle_time=config.splunk_max_idle_time,
        ),
        SlackWebhook(recorder, token=config.slack_webhook_token),
        SegmentProfiles(recorder, space_id=config.profiles_space_id, token=config.profiles_token,
                        delay_seconds=config.profiles_delay_seconds, rate_limit=config.profiles_rate_limit,
                        profile_limit=config.record_limit),
        fullstory,
    ]
    control = _Control(recorder, injector, emulators, public_api)
    routes: list[BaseRoute] = [Mount("/__sandbox__", routes=control.routes())]
    for emulator in emulators:
        gate = FaultGate(
            Router(list(emulator.routes())), emulator.name, injector, recorder, emulator.fault_response
        )
        routes.append(Mount(f"/{emulator.name}", app=gate))
    # Heap's outbound segment-sync webhooks (spec §3); mounted ahead of `/__sandbox__`, which would shadow it.
    heap_pusher = HeapWebhookPusher(demo.at_least, SANDBOX_HEAP_WEBHOOK_SECRET)
    routes.insert(0, Mount("/__sandbox__/heap", routes=heap_webhook_routes(heap_pusher)))
    routes.insert(0, Mount("/__sandbox__/segment", routes=[*delivery_overview.control_routes(pipeline),
                                                           *regulations.control_routes(regulation_store)]))
    control.on_reset.append(heap_pusher.reset)
    # Fullstory Streams posting to a receiver (spec §7), and reads of what the users API holds.
    stream_pusher = StreamPusher(demo.at_least, config.fullstory_stream_token)
    routes.insert(0, Mount("/__sandbox__/fullstory", routes=fullstory_routes(stream_pusher, fullstory)))
    control.on_reset.append(stream_pusher.reset)
    return Starlette(routes=routes, exception_handlers={ClientDisconnect: _client_gone})


async def _client_gone(request: Request, exc: Exception) -> Response:
    """A client that went away mid-body (a killed sender) is an aborted request, not a server error: answered
    (to nobody) with nginx's 499 "client closed request", without a traceback in the log."""
    return Response(status_code=499)


class DemoSource:
    """Builds `DemoData` on first use and again when a caller needs a later "now" (thread-safe)."""

    def __init__(self, config: DemoConfig) -> None:
        self._config = config
        self._lock = threading.Lock()
        self._data: DemoData | None = None

    def at_least(self, moment: datetime) -> DemoData:
        """Demo data whose `now` is not before `moment` (building it costs ~30 ms)."""
        with self._lock:
            if self._data is None or self._data.now < moment:
                self._data = DemoData(self._config, now=max(moment, clock.now()))
            return self._data

    def recent(self) -> DemoData:
        return self.at_least(clock.now() - PENDO_DATA_MAX_AGE)

    def audit_events(self, start: datetime, end: datetime) -> list[dict]:
        return self.at_least(end).audit_events(start, end)


class _Control:
    """The `/__sandbox__` endpoints: read the recorder, steer faults, reset, inject audit events."""

    def __init__(
        self,
        recorder: Recorder,
        injector: FaultInjector,
        emulators: list[Emulator],
        public_api: SegmentPublicApi,
    ) -> None:
        self.recorder = recorder
        self.injector = injector
        self.emulators = emulators
        self.public_api = public_api
        self.on_reset: list[Callable[[], None]] = []  # further per-run state to clear on reset

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/stats", self._stats, methods=["GET"]),
            Route("/received/{api}", self._received, methods=["GET"]),
            Route("/seen/{api}/{key:path}", self._seen, methods=["GET"]),
            Route("/faults", self._faults, methods=["GET", "POST"]),
            Route("/reset", self._reset, methods=["POST"]),
            Route("/audit-events", self._inject_audit_events, methods=["POST"]),
            Route("/pendo/usage-drop", self._pendo_usage_drop, methods=["POST"]),
            Route("/splunk/restart", self._splunk_restart, methods=["POST"]),
            Route("/splunk/ack", self._splunk_ack, methods=["POST"]),
        ]

    async def _stats(self, request: Request) -> Response:
        return json_response(self.recorder.stats())

    async def _received(self, request: Request) -> Response:
        api = request.path_params["api"]
        if api not in self.recorder:
            return _bad_request(f"unknown api {api!r}", 404)
        try:
            limit = int(request.query_params.get("limit", 100))
            offset = int(request.query_params.get("offset", 0))
        except ValueError:
            return _bad_request("limit and offset must be integers")
        log = self.recorder[api]
        items = [orjson.Fragment(item) for item in log.page(max(0, offset), max(0, limit))]
        body = {"api": api, "received": log.counts["received"], "stored": len(log.items), "offset": offset}
        return json_response(body | {"items": items})

    async def _seen(self, request: Request) -> Response:
        api, key = request.path_params["api"], request.path_params["key"]
        if api not in self.recorder:
            return _bad_request(f"unknown api {api!r}", 404)
        return json_response({"api": api, "key": key, "seen": self.recorder[api].times_seen(key)})

    async def _faults(self, request: Request) -> Response:
        if request.method == "POST":
            try:
                self._apply_faults(orjson.loads(await request.body()))
            except (orjson.JSONDecodeError, FaultSpecError) as exc:
                return _bad_request(str(exc))
        return json_response({api: spec.to_dict() for api, spec in self.injector.specs.items()})

    def _apply_faults(self, body: object) -> None:
        if not isinstance(body, dict) or not all(isinstance(v, dict) for v in body.values()):
            raise FaultSpecError('expected {"<api>": {"rate_429": 0.1, ...}, ...}')
        check_fault_apis(body)
        if not body:
            self.injector.specs.clear()
        new_specs = {api: FaultSpec.from_dict(values) for api, values in body.items()}
        for api, spec in new_specs.items():
            if body[api]:
                self.injector.specs[api] = spec
            else:
                self.injector.specs.pop(api, None)

    async def _reset(self, request: Request) -> Response:
        self.recorder.reset()
        self.injector.reset()
        for emulator in self.emulators:
            emulator.reset()
        for hook in self.on_reset:
            hook()
        return json_response({"reset": True})

    async def _inject_audit_events(self, request: Request) -> Response:
        try:
            events = orjson.loads(await request.body())
        except orjson.JSONDecodeError as exc:
            return _bad_request(str(exc))
        if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
            return _bad_request("expected a JSON array of (partial) audit events")
        return json_response({"events": self.public_api.inject(events)})

    def _splunk(self) -> SplunkHec:
        return next(e for e in self.emulators if isinstance(e, SplunkHec))

    async def _splunk_restart(self, request: Request) -> Response:
        self._splunk().restart()
        return json_response({"restarted": True})

    async def _splunk_ack(self, request: Request) -> Response:
        try:
            enabled = orjson.loads(await request.body())["enabled"]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            return _bad_request(f'expected {{"enabled": true|false}}: {exc}')
        if not isinstance(enabled, bool):
            return _bad_request('expected {"enabled": true|false}')
        self._splunk().set_ack(enabled)
        return json_response({"ack": enabled})

    async def _pendo_usage_drop(self, request: Request) -> Response:
        try:
            body = orjson.loads(await request.body())
            # A day of the subscription's zone.
            day = datetime.strptime(str(body["from_day"]), "%Y-%m-%d").date()
            pendo = next(e for e in self.emulators if isinstance(e, Pendo))
            pendo.drop_usage_from_day(body["accountId"], day, float(body.get("factor", 0.0)))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            return _bad_request(
                f'expected {{"accountId": "...", "from_day": "YYYY-MM-DD", "factor"?: 0..1}}: {exc}')
        return json_response({"accountId": body["accountId"], "from_day": body["from_day"],
                              "factor": float(body.get("factor", 0.0))})


def _bad_request(message: str, status: int = 400) -> Response:
    return json_response({"error": message}, status)
