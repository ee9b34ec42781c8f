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
- `"mapped"`: exactly the Field Mapping body the README asks customers to configure (JSON mode), keys in
  its order: `{"name": stream.name, "timestamp": event.0.event_time, "user": {"uid": user.user_id,
  "email": user.user_email, "display_name": user.user_display_name}, "session_url": event.0.app_url_event,
  "page_url": event.0.url, "event_time": event.0.event_time}`; both times are ISO 8601 with milliseconds.
  It has no `api_version`, `signal_version` nor `user.id` (Field Mapping has no path for Fullstory's own
  user id in the reference we have).

Retries, per the vendor's Streams skill file (not the docs site): timeouts, connection errors, HTTP 5xx, 429,
302, 303 and 307 are retried ("up to 30 times over 5 hours"); any other answer ends the delivery (a 401 is
`failed` at once). The schedule itself is undocumented: here `retry_initial_seconds` doubling to
`retry_max_seconds`, `max_attempts` (30) in all. The queue, retries, timer and control routes are
`sandbox/pusher.py`'s.

Where the sandbox differs from Fullstory, or Fullstory is silent (unverified):
- That a stream can trigger on a rage, dead or error click is not stated by Fullstory (its search supports
  them as event types); Bearer authentication is named only by a third-party tutorial; the headers Fullstory
  sends are undocumented (here Content-Type and a `User-Agent: Fullstory-Streams-Sandbox`).
- An anonymous user's `uid`, `email` and `display_name` are sent as empty strings, in both bodies; what
  Field Mapping sends for `user.user_id` and the like of an anonymous visitor is unverified.
- Fullstory may deliver an event twice ("rare cases") and hours late: the test faults below make both happen.

Test faults per push: `duplicate` (an integer: that many events sent twice; a float in [0, 1]: that share),
`late_hours` with `late` (count, default 1): extra frustration events that happened `late_hours` ago, as a
disconnected client's (they are not in the demo warehouse), `bad_token` (sent with a wrong token). Anonymous
visitors' events (empty uid) and internal staff's (`@staff.example`) are part of the demo data.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from segment_ops import clock
from segment_ops.sandbox import pusher
from segment_ops.sandbox.common import json_response
from segment_ops.sandbox.fullstory.api import Fullstory
from segment_ops.sandbox.fullstory.data import STREAM_NAMES, FullstoryDemoData, FullstoryEvent
from segment_ops.sandbox.pusher import Attempt, PushError
from segment_ops.sandbox.world import iso_ms

BODY_FORMATS = ("v2", "mapped")
RETRY_STATUSES = frozenset({302, 303, 307, 429})  # and every 5xx (the Streams skill file)
MAX_ATTEMPTS = 30  # "up to 30 times over 5 hours"
USER_AGENT = "Fullstory-Streams-Sandbox"


@dataclass
class Target(pusher.Target):
    """A registered receiver and the events it has been sent."""

    token: str = field(repr=False)
    body: str = "v2"
    streams: tuple[str, ...] | None = None  # None: every demo stream
    max_attempts: int = field(default=MAX_ATTEMPTS, kw_only=True)
    sent: set[str] = field(default_factory=set)  # event_ids
    pushes: int = 0

    def describe(self) -> dict:
        return {"target": self.id, "url": self.url, "body": self.body,
                "interval_seconds": self.interval_seconds,
                "streams": list(self.streams) if self.streams else None, "max_attempts": self.max_attempts,
                "sent": len(self.sent)}


@dataclass
class Delivery(pusher.Delivery):
    """One event on its way to a target (`request_id`: its push); `status`: pending | delivered | failed."""

    target: Target
    event: FullstoryEvent
    copy: int = 1  # 2: the duplicate of a `duplicate` fault
    late: bool = False
    bad_token: bool = False

    def describe(self) -> dict:
        return {"target": self.target.id, "push": self.request_id, "event_id": self.event.event_id,
                "name": self.event.stream_name, "uid": self.event.user.uid, "copy": self.copy,
                "late": self.late, "attempts": self.attempts, "status": self.status,
                "last_result": self.last_result}


def stream_body(event: FullstoryEvent, body_format: str) -> dict:
    """The JSON a stream posts for `event`: the default v2 body, or the README's Field Mapping body."""
    user = event.user
    if body_format == "mapped":
        event_time = iso_ms(event.event_time_ms)
        return {"name": event.stream_name, "timestamp": event_time,
                "user": {"uid": user.uid, "email": user.email, "display_name": user.display_name},
                "session_url": event.session_url, "page_url": event.url, "event_time": event_time}
    return {"name": event.stream_name, "timestamp": iso_ms(event.event_time_ms)[:19] + "Z",
            "api_version": "v2", "signal_version": "1",
            "user": {"id": user.id, "uid": user.uid, "email": user.email, "display_name": user.display_name}}


class StreamPusher(pusher.Pusher[Target, Delivery]):
    """Fullstory's pusher: one POST per frustration event with the stream's bearer token, retried as the
    Streams skill file says."""

    kind = "stream"

    def __init__(self, demo: Callable[[datetime], FullstoryDemoData], default_token: str) -> None:
        super().__init__("fullstory-stream")
        self._demo = demo
        self._default_token = default_token

    # ------------------------------------------------------------------------------- control
    def register(self, spec: dict) -> dict:
        settings = pusher.target_settings(spec, max_attempts=MAX_ATTEMPTS)
        body = spec.get("body", "v2")
        if body not in BODY_FORMATS:
            raise PushError(f"body must be one of {', '.join(BODY_FORMATS)}")
        streams = spec.get("streams")
        if streams is not None and (not isinstance(streams, list)
                                    or not set(streams) <= set(STREAM_NAMES.values())):
            raise PushError(f"streams must be a list of {', '.join(STREAM_NAMES.values())}")
        token = str(spec.get("token") or self._default_token)
        return self._add_target(Target(id=uuid.uuid4().hex[:12], token=token, body=body,
                                       streams=tuple(streams) if streams else None, **settings))

    def push(self, spec: dict | None = None) -> list[dict]:
        """Queue, for each target (or the one named), the frustration events it was not sent; returns them."""
        spec = spec or {}
        duplicate = spec.get("duplicate", 0)
        late_hours = spec.get("late_hours")
        late_count = spec.get("late", 1 if late_hours else 0)
        if isinstance(duplicate, bool) or not isinstance(duplicate, int | float) or duplicate < 0 or (
                isinstance(duplicate, float) and duplicate > 1):
            raise PushError("duplicate must be a count (integer) or a share (a float in [0, 1])")
        if late_hours is not None and (isinstance(late_hours, bool) or not isinstance(late_hours, int | float)
                                       or late_hours <= 0):
            raise PushError("late_hours must be a positive number of hours")
        if isinstance(late_count, bool) or not isinstance(late_count, int) or late_count < 0:
            raise PushError("late must be a count of events (integer >= 0)")
        targets = self._chosen_targets(spec)
        data = self._demo(clock.now())
        pushed = []
        for target in targets:
            pushed += self._push_target(target, data, spec, duplicate,
                                        timedelta(hours=late_hours) if late_hours else None, late_count)
        return pushed

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
                    deliveries.append(Delivery(target, push_id, body, event, copy, is_late,
                                               bool(spec.get("bad_token"))))
            target.last_push = time.monotonic()
            self._queue_deliveries(deliveries)
        return [{"push": push_id, "target": target.id, "event_id": e.event_id, "name": e.stream_name,
                 "uid": e.user.uid, "timestamp": iso_ms(e.event_time_ms), "late": e in late,
                 "duplicated": e.event_id in doubled} for e in chosen]

    def _push_on_timer(self, target: Target) -> None:
        self._push_target(target, self._demo(clock.now()), {}, 0, None, 0)

    def _attempt(self, delivery: Delivery) -> Attempt:
        token = "not-the-stream-token" if delivery.bad_token else delivery.target.token
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json",
                   "User-Agent": USER_AGENT}
        return pusher.post(self._http, delivery, headers,
                           retry=lambda status: status >= 500 or status in RETRY_STATUSES)


def control_routes(streams: StreamPusher, api: Fullstory) -> list[BaseRoute]:
    """`/__sandbox__/fullstory/...`: register a stream target (`/streams`), push now (`/push`), read the
    delivery log (`/deliveries`); read the users and batch jobs the users API holds (`/users`: `?all=true`
    the demo's users too, `?uid=` one; `/jobs`)."""

    def push(spec: dict) -> tuple[dict, list[str]]:
        events = streams.push(spec)
        return {"sent": len(events), "events": events}, sorted({e["push"] for e in events})

    async def users(request: Request) -> Response:
        include_demo = request.query_params.get("all", "").lower() in ("true", "1")
        uid = request.query_params.get("uid")
        return json_response({"users": api.users(include_demo=include_demo, uid=uid)})

    async def jobs(request: Request) -> Response:
        return json_response({"jobs": api.jobs()})

    return [*pusher.target_routes("/streams", streams.register, streams),
            pusher.action_route("/push", push, streams),
            Route("/users", users, methods=["GET"]), Route("/jobs", jobs, methods=["GET"])]
