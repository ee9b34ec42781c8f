"""Heap's side of segment sync: signed, paged `segment.users.sync` webhooks (and drains) pushed to a receiver.

Vendor sources: spec §3 and §7 ("Verified 2026-12"); github heap/heap-api-reference
`bin/generateTestHeapHeaders.js` (how Heap's reference signs a request), `middleware/validateHeapHeader.ts`,
`constants.ts`, `webhook_spec.yaml` (bodies, retries on any non-2xx), `bin/data/sync.json` and
`bin/data/drain.json` (body shapes and key order).

A test or the demo registers a target (`POST /__sandbox__/heap/webhooks` with `url`, `secret`,
`interval_seconds`, `page_size`); the sandbox then pushes, for each demo segment, the difference
between its membership now (`data.HeapDemoData.heap_segment_members`) and at the target's previous push: the
first push adds every member. A push happens every `interval_seconds` (0: only on demand) and on
`POST /__sandbox__/heap/push`, which returns the new `sync_task_id`s. `POST /__sandbox__/heap/drain`
`{"segment": <id>}` sends a `segment.users.drain` of that segment.

Like Heap's reference generator: each request is signed `Heap-Hash: ts:<ms>,hmac:<Base64>` with
ts = this machine's clock in **milliseconds** and hmac = Base64(HMAC-SHA256(secret, f"{ts}{body}")), the
body being the compact JSON sent (`JSON.stringify`: orjson writes these bodies, which hold only strings
and integers, byte for byte the same); every retry is signed again. Pages share a `sync_task_id` and carry
`page_number`/`total_pages`, `id_token` (one per target: it names the customer) and an empty
`customer_config` ("empty for now", webhook_spec.yaml); keys are in the order of `sync.json` and, for a
drain, of the generator (`id_token` last). Any non-2xx answer or connection error is retried with
exponential backoff (the queue, retries, timer and control routes are `sandbox/pusher.py`'s).

Where the sandbox differs from Heap, or Heap is silent (unverified):
- Heap's retry schedule is unpublished: `retry_initial_seconds` doubling to `retry_max_seconds`,
  `max_attempts` in all. Heap computes the delta on its side, so a page that is never acknowledged is
  lost to the receiver: drift a reconcile fixes.
- The digest encoding Heap's production service uses is unverified: the reference code writes Base64
  (done here), the spec text says hex.
- A segment with no change since the previous push sends no sync; `remove` and `add` entries fill pages
  in that order, `page_size` entries per page; the sync_task_id is a UUID (any string in Heap's docs).
- After a drain the sandbox forgets what the target was told about the segment, so its next push of the
  segment adds every member again (what Heap sends after a drain is unverified).

Test faults per push or drain: `omit_pages` (never sent), `duplicate_pages` (sent twice), `reorder` (pages
sent last first), `bad_signature` (signed with a wrong secret), `time_adjust` `past` / `future` (signed
5 minutes off, the reference generator's `time_adjust` modes).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import orjson
from starlette.routing import BaseRoute

from segment_ops import clock
from segment_ops.sandbox import pusher
from segment_ops.sandbox.heap.data import HeapDemoData
from segment_ops.sandbox.pusher import Attempt, PushError

SYNC_ACTION, DRAIN_ACTION = "segment.users.sync", "segment.users.drain"  # constants.ts
DEFAULT_PAGE_SIZE = 500
TIMESTAMP_DELTA_MS = 5 * 60 * 1000  # generateTestHeapHeaders.js: "Use a 5 minute delta for past / future"
TIME_ADJUST = {"now": 0, "past": -TIMESTAMP_DELTA_MS, "future": TIMESTAMP_DELTA_MS}


def heap_hash(secret: str, body: bytes, ts_ms: int, *, encoding: str = "base64") -> str:
    """The `Heap-Hash` value Heap's reference generator sends: `ts:<ms>,hmac:<Base64 HMAC-SHA256>` over
    f"{ts}{body}" (`encoding="hex"` gives the spec's hex wording instead)."""
    digest = hmac.new(secret.encode(), str(ts_ms).encode() + body, hashlib.sha256).digest()
    text = base64.b64encode(digest).decode() if encoding == "base64" else digest.hex()
    return f"ts:{ts_ms},hmac:{text}"


@dataclass
class Target(pusher.Target):
    """A registered receiver and what Heap last told it about each segment."""

    secret: str = field(repr=False)
    page_size: int = DEFAULT_PAGE_SIZE
    segments: tuple[int, ...] | None = None  # None: every demo segment
    members: dict[int, set[str]] = field(default_factory=dict)
    id_token: str = field(default_factory=lambda: str(uuid.uuid4()), repr=False)  # names the customer

    def describe(self) -> dict:
        return {"target": self.id, "url": self.url, "interval_seconds": self.interval_seconds,
                "page_size": self.page_size, "segments": list(self.segments) if self.segments else None,
                "max_attempts": self.max_attempts}


@dataclass
class Delivery(pusher.Delivery):
    """One page (or drain) on its way to a target; `status`: pending | delivered | failed (attempts ran out).

    `request_id` is the page's sync_task_id, or the sandbox's own id of a drain (a drain has none at Heap)."""

    target: Target
    page_number: int | None  # None: a drain
    bad_signature: bool = False
    time_adjust: str = "now"

    def describe(self) -> dict:
        kind = {"drain": self.request_id} if self.page_number is None else {
            "sync_task_id": self.request_id, "page_number": self.page_number}
        return {"target": self.target.id, **kind, "attempts": self.attempts, "status": self.status,
                "last_result": self.last_result}


class HeapWebhookPusher(pusher.Pusher[Target, Delivery]):
    """Heap's pusher: delta pages and drains, signed anew at each attempt, any non-2xx retried."""

    def __init__(self, demo: Callable[[datetime], HeapDemoData], default_secret: str) -> None:
        super().__init__("heap-webhook")
        self._demo = demo
        self._default_secret = default_secret

    # ------------------------------------------------------------------------------- control
    def register(self, spec: dict) -> dict:
        settings = pusher.target_settings(spec, max_attempts=8)
        try:
            target = Target(
                id=uuid.uuid4().hex[:12], secret=str(spec.get("secret") or self._default_secret),
                page_size=int(spec.get("page_size", DEFAULT_PAGE_SIZE)),
                segments=tuple(int(s) for s in spec["segments"]) if spec.get("segments") else None,
                **settings)
        except (TypeError, ValueError) as exc:
            raise PushError(f"invalid registration: {exc}") from None
        if target.page_size < 1:
            raise PushError("page_size must be >= 1")
        return self._add_target(target)

    def push(self, spec: dict | None = None) -> list[dict]:
        """Compute and queue one sync per changed segment for each target (or the one named); returns them."""
        spec = spec or {}
        at = datetime.fromisoformat(spec["at"]) if spec.get("at") else clock.now()
        if at.tzinfo is None:
            raise PushError("at must carry a time zone, e.g. 2026-10-01T12:00:00+00:00")
        targets = self._chosen_targets(spec)
        data = self._demo(at)
        syncs = []
        for target in targets:
            syncs += self._push_target(target, data, at, spec)
        return syncs

    def drain(self, spec: dict) -> list[dict]:
        """Queue a signed `segment.users.drain` of `spec["segment"]` to each target (or the one named)."""
        try:
            segment_id = int(spec["segment"])
        except (KeyError, TypeError, ValueError):
            raise PushError("segment must be a Heap segment id") from None
        segments = self._demo(clock.now()).heap_segments()
        segment = next((s for s in segments if s["id"] == segment_id), None)
        if segment is None:
            raise PushError(f"unknown segment {segment_id}")
        time_adjust = _time_adjust(spec)
        deliveries = []
        with self._lock:
            for target in self._chosen_targets(spec):
                target.members.pop(segment_id, None)  # its next push of the segment adds every member again
                drain_id = f"drain-{uuid.uuid4().hex[:12]}"
                deliveries.append(Delivery(target, drain_id, _drain_body(segment, target), None,
                                           bool(spec.get("bad_signature")), time_adjust))
            self._queue_deliveries(deliveries)
        return [{"drain": d.request_id, "segment_id": segment_id, "target": d.target.id} for d in deliveries]

    # ------------------------------------------------------------------------------- internals
    def _push_target(self, target: Target, data: HeapDemoData, at: datetime, spec: dict) -> list[dict]:
        omit = {int(p) for p in spec.get("omit_pages", [])}
        duplicate = {int(p) for p in spec.get("duplicate_pages", [])}
        time_adjust = _time_adjust(spec)
        chosen = spec.get("segments") or target.segments
        segments = [s for s in data.heap_segments() if chosen is None or s["id"] in {int(c) for c in chosen}]
        syncs, deliveries = [], []
        with self._lock:
            for segment in segments:
                now_members = set(data.heap_segment_members(segment["id"], at))
                before = target.members.get(segment["id"], set())
                changes = [("remove", i) for i in sorted(before - now_members)] + \
                          [("add", i) for i in sorted(now_members - before)]
                target.members[segment["id"]] = now_members
                if not changes:
                    continue
                task = str(uuid.uuid4())
                pages = [changes[i:i + target.page_size] for i in range(0, len(changes), target.page_size)]
                bodies = [(n, _page_body(segment, target, task, n, len(pages), chunk))
                          for n, chunk in enumerate(pages, 1)]
                if spec.get("reorder"):
                    bodies.reverse()
                for number, body in bodies:
                    if number in omit:
                        continue
                    for _ in range(2 if number in duplicate else 1):
                        deliveries.append(Delivery(target, task, body, number,
                                                   bool(spec.get("bad_signature")), time_adjust))
                syncs.append({"sync_task_id": task, "segment_id": segment["id"],
                              "segment_name": segment["name"], "total_pages": len(pages),
                              "adds": sum(1 for k, _ in changes if k == "add"),
                              "removes": sum(1 for k, _ in changes if k == "remove"), "target": target.id})
            target.last_push = time.monotonic()
            self._queue_deliveries(deliveries)
        return syncs

    def _push_on_timer(self, target: Target) -> None:
        self._push_target(target, self._demo(clock.now()), clock.now(), {})

    def _attempt(self, delivery: Delivery) -> Attempt:
        secret = "not-the-secret" if delivery.bad_signature else delivery.target.secret
        ts_ms = time.time_ns() // 1_000_000 + TIME_ADJUST[delivery.time_adjust]  # `+Date.now()`, signed anew
        headers = {"Content-Type": "application/json", "Heap-Hash": heap_hash(secret, delivery.body, ts_ms)}
        return pusher.post(self._http, delivery, headers, retry=lambda status: True)  # any non-2xx


def _page_body(segment: dict, target: Target, task: str, number: int, total: int,
               chunk: list[tuple[str, str]]) -> bytes:
    """A `segment.users.sync` page, keys in the order of the reference's bin/data/sync.json."""
    return orjson.dumps({
        "id_token": target.id_token, "action_type": SYNC_ACTION, "customer_config": {"fields": []},
        "data": {"segment": {"id": segment["id"], "name": segment["name"]},
                 "sync_info": {"page_number": number, "total_pages": total, "sync_task_id": task},
                 "remove": [{"id": i} for k, i in chunk if k == "remove"],
                 "add": [{"id": i} for k, i in chunk if k == "add"]},
    })


def _drain_body(segment: dict, target: Target) -> bytes:
    """A `segment.users.drain` as the reference generator sends bin/data/drain.json (`id_token` set last)."""
    return orjson.dumps({"action_type": DRAIN_ACTION, "customer_config": {"fields": []},
                         "data": {"segment": {"id": segment["id"], "name": segment["name"]}},
                         "id_token": target.id_token})


def _time_adjust(spec: dict) -> str:
    value = spec.get("time_adjust", "now")
    if value not in TIME_ADJUST:
        raise PushError(f"time_adjust must be one of {', '.join(TIME_ADJUST)}")
    return value


def control_routes(webhooks: HeapWebhookPusher) -> list[BaseRoute]:
    """`/__sandbox__/heap/...`: register a target (`/webhooks`), push now (`/push`), drain (`/drain`), read
    the delivery log (`/deliveries`)."""

    def push(spec: dict) -> tuple[dict, list[str]]:
        syncs = webhooks.push(spec)
        return {"syncs": syncs}, [s["sync_task_id"] for s in syncs]

    def drain(spec: dict) -> tuple[dict, list[str]]:
        drains = webhooks.drain(spec)
        return {"drains": drains}, [d["drain"] for d in drains]

    return [*pusher.target_routes("/webhooks", webhooks.register, webhooks),
            # A malformed `at` or page number is a 400 too.
            pusher.action_route("/push", push, webhooks, errors=(ValueError, TypeError)),
            pusher.action_route("/drain", drain, webhooks)]
