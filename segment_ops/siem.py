"""SIEM destinations for the audit trail: one interface, Splunk HEC first, a generic JSON-lines endpoint second.

A `SiemDestination` is a delivery-engine destination (`name`, `max_batch_bytes`, `send_batch`, see
`engine.delivery.Destination`) that also knows how to frame one audit event as its own payload
(`frame`). The sync plans the framed payloads into the ledger, one per audit event id, and
`deliver_pending` sends them; each destination has its own ledger sync (`ledger_sync`), so each gets
every event exactly once on its own schedule.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Protocol

import orjson

from segment_ops.clients.base import (
    HttpClient,
    RetryEvent,
    RetryPolicy,
    VendorUnavailable,
    bearer_auth,
)
from segment_ops.clients.splunk_hec import SplunkHecClient, hec_event

AUDIT_SOURCE = "segment:audit"
AUDIT_SOURCETYPE = "segment:audit"
# Generic JSON-lines collectors (Vector, Fluent Bit, Logstash http input) commonly cap bodies at 1 MB.
JSONL_MAX_BATCH_BYTES = 900_000


class SiemDestination(Protocol):
    """Where audit events go: a delivery-engine destination that frames its own payloads."""

    name: str
    max_batch_bytes: int

    def frame(self, event: dict) -> bytes:
        """The encoded payload for one (already redacted) audit event; deterministic."""
        ...

    def send_batch(self, payloads: Sequence[bytes], *,
                   on_retry: Callable[[RetryEvent], None] | None = None) -> object:
        ...

    def close(self) -> None:
        ...


def ledger_sync(destination: SiemDestination) -> str:
    """The ledger's sync name for one destination: each destination's exactly-once is tracked apart."""
    return "audit_trail" if destination.name == SplunkHecDestination.name else f"audit_trail.{destination.name}"


def event_epoch(event: dict) -> float:
    """The audit event's ISO `timestamp` as epoch seconds (with milliseconds)."""
    return round(datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp(), 3)


class AckTimeoutError(VendorUnavailable):
    """HEC accepted a batch but the indexers did not acknowledge it in time: it stays pending."""


class SplunkHecDestination:
    """Splunk HEC: each audit event as one HEC event, with indexer acknowledgement when the token has it on.

    With ack on, HEC's 200 only means "received"; an event counts as delivered once the indexers
    acknowledge its ackId (spec §5). The engine takes a returning `send_batch` as delivered, so the
    polling happens here, inside `send_batch`, with a bounded wait: a batch not acknowledged in time
    raises `AckTimeoutError` (retryable) and stays pending. Trade-off: a worker waits for the ack
    instead of sending more (raise `max_in_flight` to overlap), and a batch acknowledged only after the
    wait is sent again on the next run (HEC does no dedupe; each event carries `fields.audit_event_id`
    so a Splunk search can `dedup` that rare case).
    """

    name = "splunk_hec"

    def __init__(self, client: SplunkHecClient, *, index: str | None, host: str, source: str = AUDIT_SOURCE,
                 sourcetype: str = AUDIT_SOURCETYPE, ack_timeout: float = 60.0, ack_poll_initial: float = 0.1,
                 ack_poll_max: float = 5.0, sleep: Callable[[float], None] = time.sleep) -> None:
        self.client = client
        self.max_batch_bytes = client.max_batch_bytes
        self.index = index or None
        self.host = host
        self.source = source
        self.sourcetype = sourcetype
        self.ack_timeout = ack_timeout
        self.ack_poll_initial = ack_poll_initial
        self.ack_poll_max = ack_poll_max
        self._sleep = sleep
        self.acks_confirmed = 0

    def frame(self, event: dict) -> bytes:
        return hec_event(event, time=event_epoch(event), host=self.host, source=self.source,
                         sourcetype=self.sourcetype, index=self.index,
                         fields={"audit_event_id": str(event["id"])})

    def send_batch(self, payloads: Sequence[bytes], *,
                   on_retry: Callable[[RetryEvent], None] | None = None) -> int | None:
        ack_id = self.client.send_batch(payloads, on_retry=on_retry)
        if ack_id is not None:
            self._wait_for_ack(ack_id)
        return ack_id

    def _wait_for_ack(self, ack_id: int) -> None:
        deadline = time.monotonic() + self.ack_timeout
        delay = self.ack_poll_initial
        while True:
            if self.client.query_acks([ack_id]).get(ack_id):
                self.acks_confirmed += 1
                return
            if time.monotonic() + delay > deadline:
                raise AckTimeoutError(self.client.http.vendor, "POST", "/services/collector/ack",
                                      f"ackId {ack_id} on channel {self.client.channel} not acknowledged "
                                      f"within {self.ack_timeout:.0f}s")
            self._sleep(delay)
            delay = min(delay * 2, self.ack_poll_max)

    def close(self) -> None:
        self.client.close()


class JsonLinesDestination:
    """A generic HTTPS endpoint taking newline-delimited JSON (`POST`, `Authorization: Bearer`).

    Each line is `{"id", "time", "source", "sourcetype", "event"}`. 5xx/429/network errors are retried by
    the base client; a 400/413 is a request error, which the engine isolates down to the bad line.
    """

    name = "jsonl"
    max_batch_bytes = JSONL_MAX_BATCH_BYTES

    def __init__(self, url: str, token: str, *, source: str = AUDIT_SOURCE, sourcetype: str = AUDIT_SOURCETYPE,
                 timeout: float = 30.0, retry: RetryPolicy | None = None, transport: object = None) -> None:
        base, _, path = url.partition("://")
        host, slash, rest = path.partition("/")
        self.path = slash + rest or "/"
        self.source = source
        self.sourcetype = sourcetype
        self.http = HttpClient("siem_jsonl", f"{base}://{host}", auth=bearer_auth(token),
                               headers={"Content-Type": "application/x-ndjson"}, timeout=timeout,
                               retry=retry or RetryPolicy(), transport=transport)  # type: ignore[arg-type]

    def frame(self, event: dict) -> bytes:
        return orjson.dumps({"id": str(event["id"]), "time": event_epoch(event), "source": self.source,
                             "sourcetype": self.sourcetype, "event": event})

    def send_batch(self, payloads: Sequence[bytes], *,
                   on_retry: Callable[[RetryEvent], None] | None = None) -> None:
        if not payloads:
            return
        body = b"\n".join(payloads) + b"\n"
        self.http.request("POST", self.path, content=body, on_retry=on_retry)

    def close(self) -> None:
        self.http.close()
