"""Heap's side of segment sync (spec §3): signed, paged `segment.users.sync` webhooks pushed to a receiver.

A test or the demo registers a target (`POST /__sandbox__/heap/webhooks` with `url`, `secret`,
`interval_seconds`, `page_size`); the sandbox then pushes, for each demo segment, the difference
between its membership now (`DemoData.heap_segment_members`) and at the target's previous push: the
first push adds every member. A push happens every `interval_seconds` (0: only on demand) and on
`POST /__sandbox__/heap/push`, which returns the new `sync_task_id`s.

Like Heap: pages share a `sync_task_id` and carry `page_number`/`total_pages`; each request is signed
`Heap-Hash: ts:<unix>,hmac:<hex>` over `f"{ts}{body}"` and signed again on every retry; any non-2xx
answer or connection error is retried with exponential backoff (Heap's exact schedule is unpublished:
`retry_initial_seconds` doubling to `retry_max_seconds`, `max_attempts` in all). Heap computes the delta
on its side, so a page that is never acknowledged is lost to the receiver: drift a reconcile fixes.

Where the spec is silent: a segment with no change since the previous push sends no sync; `add` and
`remove` entries fill pages in that order, `page_size` entries per page.

Test faults per push: `omit_pages` (never sent), `duplicate_pages` (sent twice), `reorder` (pages sent
last first), `bad_signature` (signed with a wrong secret).
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx
import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from segment_ops.sandbox.common import json_response
from segment_ops.sandbox.demo_data import DemoData
from segment_ops.webhooks.heap import SYNC_ACTION, sign

DEFAULT_PAGE_SIZE = 500


class PushError(ValueError):
    """A registration or push request the sandbox cannot act on; the message says why."""


@dataclass
class Target:
    """A registered receiver and what Heap last told it about each segment."""

    id: str
    url: str
    secret: str = field(repr=False)
    interval_seconds: float = 0.0
    page_size: int = DEFAULT_PAGE_SIZE
    segments: tuple[int, ...] | None = None  # None: every demo segment
    max_attempts: int = 8
    retry_initial_seconds: float = 1.0
    retry_max_seconds: float = 60.0
    members: dict[int, set[str]] = field(default_factory=dict)
    last_push: float = 0.0

    def describe(self) -> dict:
        return {"target": self.id, "url": self.url, "interval_seconds": self.interval_seconds,
                "page_size": self.page_size, "segments": list(self.segments) if self.segments else None,
                "max_attempts": self.max_attempts}


@dataclass
class Delivery:
    """One page on its way to a target; `status`: pending | delivered | failed (attempts ran out)."""

    target: Target
    sync_task_id: str
    page_number: int
    body: bytes
    bad_signature: bool = False
    attempts: int = 0
    status: str = "pending"
    last_result: str = ""

    def describe(self) -> dict:
        return {"target": self.target.id, "sync_task_id": self.sync_task_id, "page_number": self.page_number,
                "attempts": self.attempts, "status": self.status, "last_result": self.last_result}


class HeapWebhookPusher:
    """Registered targets, a delivery queue with Heap-like retries, and an interval timer (two threads)."""

    def __init__(self, demo: Callable[[datetime], DemoData], default_secret: str) -> None:
        self._demo = demo
        self._default_secret = default_secret
        self._lock = threading.Condition()
        self._targets: dict[str, Target] = {}
        self._queue: list[tuple[float, int, Delivery]] = []
        self._order = itertools.count()
        self._log: list[Delivery] = []
        self._threads: list[threading.Thread] = []
        self._http = httpx.Client(timeout=10.0)

    # ------------------------------------------------------------------------------- control
    def register(self, spec: dict) -> dict:
        url = spec.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise PushError("url must be an http(s) URL")
        try:
            target = Target(
                id=uuid.uuid4().hex[:12], url=url, secret=str(spec.get("secret") or self._default_secret),
                interval_seconds=float(spec.get("interval_seconds", 0)), page_size=int(spec.get("page_size",
                                                                                              DEFAULT_PAGE_SIZE)),
                segments=tuple(int(s) for s in spec["segments"]) if spec.get("segments") else None,
                max_attempts=int(spec.get("max_attempts", 8)),
                retry_initial_seconds=float(spec.get("retry_initial_seconds", 1.0)),
                retry_max_seconds=float(spec.get("retry_max_seconds", 60.0)))
        except (TypeError, ValueError) as exc:
            raise PushError(f"invalid registration: {exc}") from None
        if target.page_size < 1 or target.max_attempts < 1 or target.interval_seconds < 0:
            raise PushError("page_size and max_attempts must be >= 1, interval_seconds >= 0")
        with self._lock:
            self._targets[target.id] = target
            target.last_push = time.monotonic()
            self._start_threads()
        return target.describe()

    def targets(self) -> list[dict]:
        with self._lock:
            return [t.describe() for t in self._targets.values()]

    def push(self, spec: dict | None = None) -> list[dict]:
        """Compute and queue one sync per changed segment for each target (or the one named); returns them."""
        spec = spec or {}
        at = datetime.fromisoformat(spec["at"]) if spec.get("at") else datetime.now(UTC)
        if at.tzinfo is None:
            raise PushError("at must carry a time zone, e.g. 2026-10-01T12:00:00+00:00")
        with self._lock:
            targets = [t for t in self._targets.values() if spec.get("target") in (None, t.id)]
        if not targets:
            raise PushError("no webhook target is registered" if spec.get("target") is None
                            else f"unknown target {spec['target']!r}")
        data = self._demo(at)
        syncs = []
        for target in targets:
            syncs += self._push_target(target, data, at, spec)
        return syncs

    def wait(self, sync_task_ids: list[str], timeout: float) -> list[dict]:
        """Block until every page of these syncs is delivered or failed (or `timeout`); their delivery log."""
        wanted = set(sync_task_ids)
        deadline = time.monotonic() + timeout
        with self._lock:
            while any(d.status == "pending" for d in self._log if d.sync_task_id in wanted):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._lock.wait(min(left, 0.5))
            return [d.describe() for d in self._log if d.sync_task_id in wanted]

    def deliveries(self) -> list[dict]:
        with self._lock:
            return [d.describe() for d in self._log]

    def reset(self) -> None:
        with self._lock:
            self._targets.clear()
            self._queue.clear()
            for delivery in self._log:
                if delivery.status == "pending":
                    delivery.status = "failed"
                    delivery.last_result = "sandbox reset"
            self._log.clear()
            self._lock.notify_all()

    # ------------------------------------------------------------------------------- internals
    def _push_target(self, target: Target, data: DemoData, at: datetime, spec: dict) -> list[dict]:
        omit = {int(p) for p in spec.get("omit_pages", [])}
        duplicate = {int(p) for p in spec.get("duplicate_pages", [])}
        chosen = spec.get("segments") or target.segments
        segments = [s for s in data.heap_segments() if chosen is None or s["id"] in {int(c) for c in chosen}]
        syncs, deliveries = [], []
        with self._lock:
            for segment in segments:
                now_members = set(data.heap_segment_members(segment["id"], at))
                before = target.members.get(segment["id"], set())
                changes = [("add", i) for i in sorted(now_members - before)] + \
                          [("remove", i) for i in sorted(before - now_members)]
                target.members[segment["id"]] = now_members
                if not changes:
                    continue
                task = str(uuid.uuid4())
                pages = [changes[i:i + target.page_size] for i in range(0, len(changes), target.page_size)]
                bodies = [(n, _page_body(segment, task, n, len(pages), chunk)) for n, chunk in enumerate(pages, 1)]
                if spec.get("reorder"):
                    bodies.reverse()
                for number, body in bodies:
                    if number in omit:
                        continue
                    for _ in range(2 if number in duplicate else 1):
                        deliveries.append(Delivery(target, task, number, body, bool(spec.get("bad_signature"))))
                syncs.append({"sync_task_id": task, "segment_id": segment["id"], "segment_name": segment["name"],
                              "total_pages": len(pages), "adds": sum(1 for k, _ in changes if k == "add"),
                              "removes": sum(1 for k, _ in changes if k == "remove"), "target": target.id})
            target.last_push = time.monotonic()
            for delivery in deliveries:
                self._log.append(delivery)
                heapq.heappush(self._queue, (time.monotonic(), next(self._order), delivery))
            self._lock.notify_all()
        return syncs

    def _start_threads(self) -> None:
        if self._threads:
            return
        for name, loop in (("heap-webhook-sender", self._send_loop), ("heap-webhook-timer", self._timer_loop)):
            thread = threading.Thread(target=loop, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def _send_loop(self) -> None:
        while True:
            with self._lock:
                while not self._queue or self._queue[0][0] > time.monotonic():
                    self._lock.wait(None if not self._queue else max(0.0, self._queue[0][0] - time.monotonic()))
                _, _, delivery = heapq.heappop(self._queue)
                if delivery.status != "pending":
                    continue
            ok, result = self._send(delivery)
            with self._lock:
                delivery.attempts += 1
                delivery.last_result = result
                if ok:
                    delivery.status = "delivered"
                elif delivery.attempts >= delivery.target.max_attempts:
                    delivery.status = "failed"
                else:
                    target = delivery.target
                    delay = min(target.retry_initial_seconds * 2 ** (delivery.attempts - 1), target.retry_max_seconds)
                    heapq.heappush(self._queue, (time.monotonic() + delay, next(self._order), delivery))
                self._lock.notify_all()

    def _send(self, delivery: Delivery) -> tuple[bool, str]:
        secret = "not-the-secret" if delivery.bad_signature else delivery.target.secret
        headers = {"Content-Type": "application/json", "Heap-Hash": sign(secret, delivery.body)}
        try:
            response = self._http.post(delivery.target.url, content=delivery.body, headers=headers)
        except httpx.HTTPError as exc:
            return False, f"connection error: {type(exc).__name__}"
        return 200 <= response.status_code < 300, f"HTTP {response.status_code}"

    def _timer_loop(self) -> None:
        while True:
            time.sleep(0.5)
            with self._lock:
                due = [t for t in self._targets.values()
                       if t.interval_seconds > 0 and time.monotonic() - t.last_push >= t.interval_seconds]
            for target in due:
                try:
                    self._push_target(target, self._demo(datetime.now(UTC)), datetime.now(UTC), {})
                except Exception:  # noqa: BLE001 - a timer must not die; the next tick tries again
                    with self._lock:
                        target.last_push = time.monotonic()


def _page_body(segment: dict, task: str, number: int, total: int, chunk: list[tuple[str, str]]) -> bytes:
    return orjson.dumps({
        "id_token": str(uuid.uuid4()), "action_type": SYNC_ACTION, "customer_config": {"fields": []},
        "data": {"segment": {"id": segment["id"], "name": segment["name"]},
                 "sync_info": {"page_number": number, "total_pages": total, "sync_task_id": task},
                 "add": [{"id": i} for k, i in chunk if k == "add"],
                 "remove": [{"id": i} for k, i in chunk if k == "remove"]},
    })


def control_routes(pusher: HeapWebhookPusher) -> list[BaseRoute]:
    """`/__sandbox__/heap/...`: register a target, push now, read the delivery log."""

    async def webhooks(request: Request) -> Response:
        if request.method == "GET":
            return json_response({"targets": pusher.targets()})
        try:
            return json_response(pusher.register(await _json(request)))
        except PushError as exc:
            return json_response({"error": str(exc)}, 400)

    async def push(request: Request) -> Response:
        try:
            spec = await _json(request)
            syncs = pusher.push(spec)
        except (PushError, ValueError, TypeError) as exc:
            return json_response({"error": str(exc)}, 400)
        body: dict = {"syncs": syncs}
        if spec.get("wait", True):
            ids = [s["sync_task_id"] for s in syncs]
            body["deliveries"] = await run_in_threadpool(pusher.wait, ids, float(spec.get("timeout", 30)))
        return json_response(body)

    async def deliveries(request: Request) -> Response:
        return json_response({"deliveries": pusher.deliveries()})

    return [Route("/webhooks", webhooks, methods=["GET", "POST"]), Route("/push", push, methods=["POST"]),
            Route("/deliveries", deliveries, methods=["GET"])]


async def _json(request: Request) -> dict:
    raw = await request.body()
    try:
        body = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        raise PushError("body is not valid JSON") from None
    if not isinstance(body, dict):
        raise PushError("body must be a JSON object")
    return body
