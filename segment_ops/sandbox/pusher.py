"""What the sandbox's outbound webhooks share: a delivery log, one sender thread retrying with backoff, an
interval timer, and the control routes that register targets, act and read the log.

A vendor module (`heap/webhooks.py`, `fullstory/streams.py`) subclasses `Target`, `Delivery` and `Pusher`
and keeps what is its own: the bodies, how a request is signed or authenticated, which answers are retried
(`Pusher._attempt`), what a push sends (`Pusher._push_on_timer` and its own `push`) and its per-target
settings. Here, once: the queue ordered by when each delivery is next due, the retry delay
(`retry_initial_seconds` doubling up to `retry_max_seconds`, `max_attempts` in all), waiting for a push's
deliveries to settle, the reset, and a timer that pushes to each target every `interval_seconds`.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, NamedTuple, TypeVar

import httpx
import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from segment_ops.clients.base import tls_context
from segment_ops.sandbox.common import json_response


class PushError(ValueError):
    """A registration or push request the sandbox cannot act on; the message says why."""


@dataclass
class Target:
    """A registered receiver: where to post, how often unasked, how hard to retry."""

    id: str
    url: str
    interval_seconds: float = field(default=0.0, kw_only=True)  # 0: only on demand
    max_attempts: int = field(default=8, kw_only=True)
    retry_initial_seconds: float = field(default=1.0, kw_only=True)
    retry_max_seconds: float = field(default=60.0, kw_only=True)
    last_push: float = field(default=0.0, kw_only=True)  # time.monotonic()

    def describe(self) -> dict:
        raise NotImplementedError

    def retry_delay(self, attempts: int) -> float:
        """Seconds to wait after the `attempts`-th failed attempt."""
        return min(self.retry_initial_seconds * 2 ** (attempts - 1), self.retry_max_seconds)


def target_settings(spec: dict, *, max_attempts: int) -> dict:
    """The `Target` fields every registration takes (`url`, `interval_seconds`, `max_attempts`,
    `retry_initial_seconds`, `retry_max_seconds`), read from `spec` and checked; `PushError` if one is off."""
    url = spec.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise PushError("url must be an http(s) URL")
    try:
        interval = float(spec.get("interval_seconds", 0))
        attempts = int(spec.get("max_attempts", max_attempts))
        initial = float(spec.get("retry_initial_seconds", 1.0))
        longest = float(spec.get("retry_max_seconds", 60.0))
    except (TypeError, ValueError) as exc:
        raise PushError(f"invalid registration: {exc}") from None
    if attempts < 1 or interval < 0 or initial < 0:
        raise PushError("max_attempts must be >= 1, interval_seconds and retry_initial_seconds >= 0")
    return {"url": url, "interval_seconds": interval, "max_attempts": attempts,
            "retry_initial_seconds": initial, "retry_max_seconds": longest}


@dataclass
class Delivery:
    """One request on its way to a target; `status`: pending | delivered | failed (not retried, or attempts
    ran out). `request_id` groups the deliveries `Pusher.wait` waits for (a push, a sync task, a drain)."""

    target: Target
    request_id: str
    body: bytes
    attempts: int = field(default=0, kw_only=True)
    status: str = field(default="pending", kw_only=True)
    last_result: str = field(default="", kw_only=True)

    def describe(self) -> dict:
        raise NotImplementedError


class Attempt(NamedTuple):
    """What one POST of a delivery came to."""

    delivered: bool
    retry: bool  # when not delivered: try again later (else the delivery failed)
    result: str  # "HTTP 503", "connection error: ConnectTimeout", ...


T = TypeVar("T", bound=Target)
D = TypeVar("D", bound=Delivery)


class Pusher(Generic[T, D]):
    """Registered targets, a delivery queue retried with backoff, and an interval timer (two threads, started
    with the first target). Subclasses define `_attempt` (one POST) and `_push_on_timer` (a due push)."""

    kind = "webhook"  # in "no webhook target is registered"

    def __init__(self, thread_prefix: str) -> None:
        self._thread_prefix = thread_prefix
        self._lock = threading.Condition()
        self._targets: dict[str, T] = {}
        self._queue: list[tuple[float, int, D]] = []  # (due, tie-break, delivery)
        self._order = itertools.count()
        self._log: list[D] = []
        self._threads: list[threading.Thread] = []
        self._http = httpx.Client(timeout=10.0, verify=tls_context())

    # ------------------------------------------------------------------------------- vendor's part
    def _attempt(self, delivery: D) -> Attempt:
        """POST the delivery once (signed or authenticated as the vendor does)."""
        raise NotImplementedError

    def _push_on_timer(self, target: T) -> None:
        """Queue what an unasked push of `target` sends."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------- control
    def _add_target(self, target: T) -> dict:
        with self._lock:
            self._targets[target.id] = target
            target.last_push = time.monotonic()
            self._start_threads()
        return target.describe()

    def targets(self) -> list[dict]:
        with self._lock:
            return [t.describe() for t in self._targets.values()]

    def _chosen_targets(self, spec: dict) -> list[T]:
        """Every target, or the one `spec["target"]` names; `PushError` if there is none."""
        with self._lock:
            targets = [t for t in self._targets.values() if spec.get("target") in (None, t.id)]
        if not targets:
            raise PushError(f"no {self.kind} target is registered" if spec.get("target") is None
                            else f"unknown target {spec['target']!r}")
        return targets

    def _queue_deliveries(self, deliveries: Sequence[D]) -> None:
        """Log the deliveries and send them now, in this order (the caller may hold the lock)."""
        with self._lock:
            now = time.monotonic()
            for delivery in deliveries:
                self._log.append(delivery)
                heapq.heappush(self._queue, (now, next(self._order), delivery))
            self._lock.notify_all()

    def wait(self, request_ids: list[str], timeout: float) -> list[dict]:
        """Block until every delivery of these requests is delivered or failed (or `timeout`); their log."""
        wanted = set(request_ids)
        deadline = time.monotonic() + timeout
        with self._lock:
            while any(d.status == "pending" for d in self._log if d.request_id in wanted):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._lock.wait(min(left, 0.5))
            return [d.describe() for d in self._log if d.request_id in wanted]

    def deliveries(self) -> list[dict]:
        with self._lock:
            return [d.describe() for d in self._log]

    def reset(self) -> None:
        """Forget the targets and the log; what was still pending fails as "sandbox reset"."""
        with self._lock:
            self._targets.clear()
            self._queue.clear()
            for delivery in self._log:
                if delivery.status == "pending":
                    delivery.status, delivery.last_result = "failed", "sandbox reset"
            self._log.clear()
            self._lock.notify_all()

    # ------------------------------------------------------------------------------- threads
    def _start_threads(self) -> None:
        if self._threads:
            return
        for name, loop in (("sender", self._send_loop), ("timer", self._timer_loop)):
            thread = threading.Thread(target=loop, name=f"{self._thread_prefix}-{name}", daemon=True)
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
            attempt = self._attempt(delivery)
            with self._lock:
                delivery.attempts += 1
                delivery.last_result = attempt.result
                if attempt.delivered:
                    delivery.status = "delivered"
                elif not attempt.retry or delivery.attempts >= delivery.target.max_attempts:
                    delivery.status = "failed"
                else:
                    due = time.monotonic() + delivery.target.retry_delay(delivery.attempts)
                    heapq.heappush(self._queue, (due, next(self._order), delivery))
                self._lock.notify_all()

    def _timer_loop(self) -> None:
        while True:
            time.sleep(0.5)
            with self._lock:
                due = [t for t in self._targets.values()
                       if t.interval_seconds > 0 and time.monotonic() - t.last_push >= t.interval_seconds]
            for target in due:
                try:
                    self._push_on_timer(target)
                except Exception:  # noqa: BLE001 - a timer must not die; the next tick tries again
                    with self._lock:
                        target.last_push = time.monotonic()


def post(http: httpx.Client, delivery: Delivery, headers: dict[str, str],
         retry: Callable[[int], bool]) -> Attempt:
    """POST `delivery.body` to its target: a 2xx is delivered; a connection error is retried, another status
    when `retry(status)` says so."""
    try:
        response = http.post(delivery.target.url, content=delivery.body, headers=headers)
    except httpx.HTTPError as exc:
        return Attempt(False, True, f"connection error: {type(exc).__name__}")
    status = response.status_code
    return Attempt(200 <= status < 300, retry(status), f"HTTP {status}")


# ----------------------------------------------------------------------------------- control routes
async def read_json(request: Request) -> dict:
    """A control request's JSON object body ({} when empty); `PushError` if it is not one."""
    raw = await request.body()
    try:
        body = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        raise PushError("body is not valid JSON") from None
    if not isinstance(body, dict):
        raise PushError("body must be a JSON object")
    return body


def target_routes(path: str, register: Callable[[dict], dict], pusher: Pusher) -> list[BaseRoute]:
    """`path` (GET: `{"targets": [...]}`; POST: register one, its description) and `/deliveries` (GET:
    `{"deliveries": [...]}`, the whole log)."""

    async def targets(request: Request) -> Response:
        if request.method == "GET":
            return json_response({"targets": pusher.targets()})
        try:
            return json_response(register(await read_json(request)))
        except PushError as exc:
            return json_response({"error": str(exc)}, 400)

    async def deliveries(request: Request) -> Response:
        return json_response({"deliveries": pusher.deliveries()})

    return [Route(path, targets, methods=["GET", "POST"]), Route("/deliveries", deliveries, methods=["GET"])]


def action_route(path: str, act: Callable[[dict], tuple[dict, list[str]]], pusher: Pusher,
                 errors: tuple[type[Exception], ...] = (PushError,)) -> Route:
    """POST `path`: `act(spec)` queues deliveries and gives (the answer, their request ids); unless the spec
    says `"wait": false`, the answer also holds `"deliveries"`, theirs once settled (or after `"timeout"`,
    30 s). One of `errors` is a 400 `{"error": ...}`."""

    async def endpoint(request: Request) -> Response:
        try:
            spec = await read_json(request)
            answer, request_ids = act(spec)
        except errors as exc:
            return json_response({"error": str(exc)}, 400)
        if spec.get("wait", True):
            answer["deliveries"] = await run_in_threadpool(pusher.wait, request_ids,
                                                           float(spec.get("timeout", 30)))
        return json_response(answer)

    return Route(path, endpoint, methods=["POST"])
