"""Fullstory's side of Streams (formerly Behavioral Webhooks): one POST per matching event to a receiver.

Vendor sources: spec §7 "Fullstory Streams" (developer.fullstory.com/destinations/webhooks, help.fullstory.com
"Webhooks"/Streams); github fullstorydev/fullstory-anywhere-activation `.claude/skills/anywhere-streams/`
(`payload-fields.md`: Field Mapping paths; `SKILL.md`: retries), as gathered in the project's Fullstory facts
notes.

A test or the demo registers a target (`POST /__sandbox__/fullstory/streams` with `url`, `token`, `body`,
`interval_seconds`, `streams`); `POST /__sandbox__/fullstory/push` then sends it every demo frustration event
(`data.FullstoryDemoData.fullstory_frustration_events`: the rage, dead and error clicks of the last week) it
has not been sent yet, one POST each with `Authorization: Bearer <token>` and `Content-Type:
application/json`, and answers with their `event_id`s; a target with `interval_seconds` is pushed to on that
timer too. The body (`body`):
- `"v2"`: the documented default body, keys in its order: `{"name", "timestamp", "api_version": "v2",
  "signal_version": "1", "user": {"id", "uid", "email", "display_name"}}`; `name` is the stream's name
  ("Rage Click", "Dead Click", "Error Click": what a customer calls such streams), `timestamp` the event's
  time in whole seconds (`2024-01-02T03:04:05Z`, as the docs' example).
- `"mapped"`: the same plus `session_url` (Field Mapping `event.0.app_url_event`), `page_url` (`event.0.url`)
  and `event_time` (`event.0.event_time`, ISO 8601 with milliseconds): the Field Mapping body the README asks
  customers to configure.

Retries, per the vendor's Streams skill file (not the docs site): timeouts, connection errors, HTTP 5xx, 429,
302, 303 and 307 are retried ("up to 30 times over 5 hours"); any other answer ends the delivery (a 401 is
`failed` at once). The schedule itself is undocumented: here `retry_initial_seconds` doubling to
`retry_max_seconds`, `max_attempts` (30) in all.

Where the sandbox differs from Fullstory, or Fullstory is silent (unverified):
- That a stream can trigger on a rage, dead or error click is not stated by Fullstory (its search supports
  them as event types); Bearer authentication is named only by a third-party tutorial; the headers Fullstory
  sends are undocumented (here Content-Type and a `User-Agent: Fullstory-Streams-Sandbox`).
- An anonymous user's `uid`, `email` and `display_name` are sent as empty strings.
- Fullstory may deliver an event twice ("rare cases") and hours late: the test faults below make both happen.

Test faults per push: `duplicate` (an integer: that many events sent twice; a float in [0, 1]: that share),
`late_hours` with `late` (count, default 1): extra frustration events that happened `late_hours` ago, as a
disconnected client's (they are not in the demo warehouse), `bad_token` (sent with a wrong token). Anonymous
visitors' events (empty uid) and internal staff's (`@staff.example`) are part of the demo data.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import httpx
import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from segment_ops import clock
from segment_ops.clients.base import tls_context
from segment_ops.sandbox.common import json_response
from segment_ops.sandbox.fullstory.api import Fullstory
from segment_ops.sandbox.fullstory.data import STREAM_NAMES, FullstoryDemoData, FullstoryEvent
from segment_ops.sandbox.world import iso_ms

BODY_FORMATS = ("v2", "mapped")
RETRY_STATUSES = frozenset({302, 303, 307, 429})  # and every 5xx (the Streams skill file)
MAX_ATTEMPTS = 30  # "up to 30 times over 5 hours"
USER_AGENT = "Fullstory-Streams-Sandbox"


class StreamError(ValueError):
    """A registration or push request the sandbox cannot act on; the message says why."""


@dataclass
class Target:
    """A registered receiver and the events it has been sent."""

    id: str
    url: str
    token: str = field(repr=False)
    body: str = "v2"
    interval_seconds: float = 0.0
    streams: tuple[str, ...] | None = None  # None: every demo stream
    max_attempts: int = MAX_ATTEMPTS
    retry_initial_seconds: float = 1.0
    retry_max_seconds: float = 60.0
    sent: set[str] = field(default_factory=set)  # event_ids
    last_push: float = 0.0
    pushes: int = 0

    def describe(self) -> dict:
        return {"target": self.id, "url": self.url, "body": self.body,
                "interval_seconds": self.interval_seconds,
                "streams": list(self.streams) if self.streams else None, "max_attempts": self.max_attempts,
                "sent": len(self.sent)}


@dataclass
class Delivery:
    """One event on its way to a target; `status`: pending | delivered | failed."""

    target: Target
    push_id: str
    event: FullstoryEvent
    body: bytes
    copy: int = 1  # 2: the duplicate of a `duplicate` fault
    late: bool = False
    bad_token: bool = False
    attempts: int = 0
    status: str = "pending"
    last_result: str = ""

    def describe(self) -> dict:
        return {"target": self.target.id, "push": self.push_id, "event_id": self.event.event_id,
                "name": self.event.stream_name, "uid": self.event.user.uid, "copy": self.copy,
                "late": self.late, "attempts": self.attempts, "status": self.status,
                "last_result": self.last_result}


def stream_body(event: FullstoryEvent, body_format: str) -> dict:
    """The JSON a stream posts for `event`: the default v2 body, or it plus the Field Mapping fields."""
    user = event.user
    body = {"name": event.stream_name, "timestamp": iso_ms(event.event_time_ms)[:19] + "Z",
            "api_version": "v2", "signal_version": "1",
            "user": {"id": user.id, "uid": user.uid, "email": user.email, "display_name": user.display_name}}
    if body_format == "mapped":
        body |= {"session_url": event.session_url, "page_url": event.url,
                 "event_time": iso_ms(event.event_time_ms)}
    return body


class StreamPusher:
    """Registered targets, a delivery queue with Fullstory-like retries, an interval timer (two threads)."""

    def __init__(self, demo: Callable[[datetime], FullstoryDemoData], default_token: str) -> None:
        self._demo = demo
        self._default_token = default_token
        self._lock = threading.Condition()
        self._targets: dict[str, Target] = {}
        self._queue: list[tuple[float, int, Delivery]] = []
        self._order = itertools.count()
        self._log: list[Delivery] = []
        self._threads: list[threading.Thread] = []
        self._http = httpx.Client(timeout=10.0, verify=tls_context())

    # ------------------------------------------------------------------------------- control
    def register(self, spec: dict) -> dict:
        url = spec.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise StreamError("url must be an http(s) URL")
        body = spec.get("body", "v2")
        if body not in BODY_FORMATS:
            raise StreamError(f"body must be one of {', '.join(BODY_FORMATS)}")
        streams = spec.get("streams")
        if streams is not None and (not isinstance(streams, list)
                                    or not set(streams) <= set(STREAM_NAMES.values())):
            raise StreamError(f"streams must be a list of {', '.join(STREAM_NAMES.values())}")
        try:
            target = Target(
                id=uuid.uuid4().hex[:12], url=url, token=str(spec.get("token") or self._default_token),
                body=body, interval_seconds=float(spec.get("interval_seconds", 0)),
                streams=tuple(streams) if streams else None,
                max_attempts=int(spec.get("max_attempts", MAX_ATTEMPTS)),
                retry_initial_seconds=float(spec.get("retry_initial_seconds", 1.0)),
                retry_max_seconds=float(spec.get("retry_max_seconds", 60.0)))
        except (TypeError, ValueError) as exc:
            raise StreamError(f"invalid registration: {exc}") from None
        if target.max_attempts < 1 or target.interval_seconds < 0 or target.retry_initial_seconds < 0:
            raise StreamError("max_attempts must be >= 1, interval_seconds and retry_initial_seconds >= 0")
        with self._lock:
            self._targets[target.id] = target
            target.last_push = time.monotonic()
            self._start_threads()
        return target.describe()

    def targets(self) -> list[dict]:
        with self._lock:
            return [t.describe() for t in self._targets.values()]

    def push(self, spec: dict | None = None) -> list[dict]:
        """Queue, for each target (or the one named), the frustration events it was not sent; returns them."""
        spec = spec or {}
        duplicate = spec.get("duplicate", 0)
        late_hours = spec.get("late_hours")
        late_count = spec.get("late", 1 if late_hours else 0)
        if isinstance(duplicate, bool) or not isinstance(duplicate, int | float) or duplicate < 0 or (
                isinstance(duplicate, float) and duplicate > 1):
            raise StreamError("duplicate must be a count (integer) or a share (a float in [0, 1])")
        if late_hours is not None and (isinstance(late_hours, bool) or not isinstance(late_hours, int | float)
                                       or late_hours <= 0):
            raise StreamError("late_hours must be a positive number of hours")
        if isinstance(late_count, bool) or not isinstance(late_count, int) or late_count < 0:
            raise StreamError("late must be a count of events (integer >= 0)")
        with self._lock:
            targets = [t for t in self._targets.values() if spec.get("target") in (None, t.id)]
        if not targets:
            raise StreamError("no stream target is registered" if spec.get("target") is None
                              else f"unknown target {spec['target']!r}")
        data = self._demo(clock.now())
        pushed = []
        for target in targets:
            pushed += self._push_target(target, data, spec, duplicate,
                                        timedelta(hours=late_hours) if late_hours else None, late_count)
        return pushed

    def wait(self, push_ids: list[str], timeout: float) -> list[dict]:
        """Block until every delivery of these pushes is delivered or failed (or `timeout`); their log."""
        wanted = set(push_ids)
        deadline = time.monotonic() + timeout
        with self._lock:
            while any(d.status == "pending" for d in self._log if d.push_id in wanted):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._lock.wait(min(left, 0.5))
            return [d.describe() for d in self._log if d.push_id in wanted]

    def deliveries(self) -> list[dict]:
        with self._lock:
            return [d.describe() for d in self._log]

    def reset(self) -> None:
        with self._lock:
            self._targets.clear()
            self._queue.clear()
            for delivery in self._log:
                if delivery.status == "pending":
                    delivery.status, delivery.last_result = "failed", "sandbox reset"
            self._log.clear()
            self._lock.notify_all()

    # ------------------------------------------------------------------------------- internals
    def _push_target(self, target: Target, data: FullstoryDemoData, spec: dict, duplicate: float,
                     late_by: timedelta | None, late_count: int) -> list[dict]:
        with self._lock:
            target.pushes += 1
            push_id = f"{target.id}-{target.pushes}"
            wanted = set(target.streams or STREAM_NAMES.values())
            events = [e for e in data.fullstory_frustration_events()
                      if e.event_id not in target.sent and e.stream_name in wanted]
            late = data.fullstory_late_events(late_count, late_by, push_id) if late_by else []
            late = [e for e in late if e.stream_name in wanted]
            chosen = events + late
            twice = round(duplicate * len(chosen)) if isinstance(duplicate, float) else \
                min(duplicate, len(chosen))
            # The duplicated events are spread evenly over the push (deterministic).
            doubled = {chosen[int(k * len(chosen) / twice)].event_id for k in range(twice)}
            deliveries = []
            for event in chosen:
                target.sent.add(event.event_id)
                body = orjson.dumps(stream_body(event, target.body))
                is_late = event in late
                for copy in (1, 2) if event.event_id in doubled else (1,):
                    deliveries.append(Delivery(target, push_id, event, body, copy, is_late,
                                               bool(spec.get("bad_token"))))
            target.last_push = time.monotonic()
            now = time.monotonic()
            for delivery in deliveries:
                self._log.append(delivery)
                heapq.heappush(self._queue, (now, next(self._order), delivery))
            self._lock.notify_all()
        return [{"push": push_id, "target": target.id, "event_id": e.event_id, "name": e.stream_name,
                 "uid": e.user.uid, "timestamp": iso_ms(e.event_time_ms), "late": e in late,
                 "duplicated": e.event_id in doubled} for e in chosen]

    def _start_threads(self) -> None:
        if self._threads:
            return
        for name, loop in (("fullstory-stream-sender", self._send_loop),
                           ("fullstory-stream-timer", self._timer_loop)):
            thread = threading.Thread(target=loop, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def _send_loop(self) -> None:
        while True:
            with self._lock:
                while not self._queue or self._queue[0][0] > time.monotonic():
                    timeout = None if not self._queue else max(0.0, self._queue[0][0] - time.monotonic())
                    self._lock.wait(timeout)
                _, _, delivery = heapq.heappop(self._queue)
                if delivery.status != "pending":
                    continue
            retry, ok, result = self._send(delivery)
            with self._lock:
                delivery.attempts += 1
                delivery.last_result = result
                if ok:
                    delivery.status = "delivered"
                elif not retry or delivery.attempts >= delivery.target.max_attempts:
                    delivery.status = "failed"
                else:
                    target = delivery.target
                    delay = min(target.retry_initial_seconds * 2 ** (delivery.attempts - 1),
                                target.retry_max_seconds)
                    heapq.heappush(self._queue, (time.monotonic() + delay, next(self._order), delivery))
                self._lock.notify_all()

    def _send(self, delivery: Delivery) -> tuple[bool, bool, str]:
        """(retry?, delivered?, what happened) of one attempt."""
        token = "not-the-stream-token" if delivery.bad_token else delivery.target.token
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json",
                   "User-Agent": USER_AGENT}
        try:
            response = self._http.post(delivery.target.url, content=delivery.body, headers=headers)
        except httpx.HTTPError as exc:
            return True, False, f"connection error: {type(exc).__name__}"
        status = response.status_code
        return status >= 500 or status in RETRY_STATUSES, 200 <= status < 300, f"HTTP {status}"

    def _timer_loop(self) -> None:
        while True:
            time.sleep(0.5)
            with self._lock:
                due = [t for t in self._targets.values()
                       if t.interval_seconds > 0 and time.monotonic() - t.last_push >= t.interval_seconds]
            for target in due:
                try:
                    self._push_target(target, self._demo(clock.now()), {}, 0, None, 0)
                except Exception:  # noqa: BLE001 - a timer must not die; the next tick tries again
                    with self._lock:
                        target.last_push = time.monotonic()


def control_routes(pusher: StreamPusher, api: Fullstory) -> list[BaseRoute]:
    """`/__sandbox__/fullstory/...`: register a stream target, push now, read deliveries; read the users and
    batch jobs the users API holds (`?all=true`: the demo's users too; `?uid=`: one)."""

    async def streams(request: Request) -> Response:
        if request.method == "GET":
            return json_response({"targets": pusher.targets()})
        try:
            return json_response(pusher.register(await _json(request)))
        except StreamError as exc:
            return json_response({"error": str(exc)}, 400)

    async def push(request: Request) -> Response:
        try:
            spec = await _json(request)
            events = pusher.push(spec)
        except StreamError as exc:
            return json_response({"error": str(exc)}, 400)
        body: dict = {"sent": len(events), "events": events}
        if spec.get("wait", True):
            ids = sorted({e["push"] for e in events})
            body["deliveries"] = await run_in_threadpool(pusher.wait, ids, float(spec.get("timeout", 30)))
        return json_response(body)

    async def deliveries(request: Request) -> Response:
        return json_response({"deliveries": pusher.deliveries()})

    async def users(request: Request) -> Response:
        include_demo = request.query_params.get("all", "").lower() in ("true", "1")
        uid = request.query_params.get("uid")
        return json_response({"users": api.users(include_demo=include_demo, uid=uid)})

    async def jobs(request: Request) -> Response:
        return json_response({"jobs": api.jobs()})

    return [Route("/streams", streams, methods=["GET", "POST"]), Route("/push", push, methods=["POST"]),
            Route("/deliveries", deliveries, methods=["GET"]), Route("/users", users, methods=["GET"]),
            Route("/jobs", jobs, methods=["GET"])]


async def _json(request: Request) -> dict:
    raw = await request.body()
    try:
        body = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        raise StreamError("body is not valid JSON") from None
    if not isinstance(body, dict):
        raise StreamError("body must be a JSON object")
    return body
