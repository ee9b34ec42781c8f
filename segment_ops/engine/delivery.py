"""Deliver a sync's pending messages to a destination: packed by bytes, sent concurrently, outcomes logged.

A destination is anything with a `name`, a `max_batch_bytes` and `send_batch(payloads, on_retry=...)`
that raises the client errors of `clients.base` (Segment's Tracking API; a SIEM).

- Batches are closed by size (475,000 bytes, spec §1), not by count, so a request-rate cap still
  leaves high throughput.
- Up to `max_in_flight` batches are on the wire at once; 429/5xx/network errors are retried by the
  client (backoff, Retry-After, total-time cap).
- A 400 for a batch means some message in it is bad: the batch is split in halves and re-sent until
  the bad messages stand alone; only those are rejected, with the destination's reason. A destination
  that says which event was bad after accepting the ones before it (`PartialBatchError`) gets the
  rest re-sent, without the accepted prefix.
- Outcomes are logged to the ledger at least every second (or 20,000 messages): a commit per batch
  would cost more than sending it. A killed run therefore re-sends at most what was in flight plus
  about a second of acknowledged traffic, with the same messageIds, which Segment deduplicates.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Protocol

from segment_ops.clients.base import (
    PartialBatchError,
    RetryEvent,
    VendorError,
    VendorFatalError,
    VendorRequestError,
)
from segment_ops.engine.ledger import DELIVERED, PENDING, REJECTED, Ledger

FLUSH_SECONDS = 1.0
FLUSH_MESSAGES = 20_000


class Destination(Protocol):
    """Where a sync's messages go."""

    name: str
    max_batch_bytes: int

    def send_batch(self, payloads: Sequence[bytes], *, on_retry: Callable[[RetryEvent], None] | None = None) -> None:
        ...


Message = tuple[int, str]  # (ledger seq, encoded payload holding its messageId)
Outcome = tuple[int, str, int, str | None]  # (ledger seq, status, attempts, error)


class DeliveryError(RuntimeError):
    """Some messages could not be delivered; they stay pending for the next run. `report` has the counts."""

    def __init__(self, message: str, report: DeliveryReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class DeliveryReport:
    sync: str
    delivered: int = 0
    rejected: int = 0
    failed: int = 0
    retries: int = 0
    requests: int = 0
    bytes_sent: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    def __add__(self, other: DeliveryReport) -> DeliveryReport:
        """Two delivery passes of the same sync, as one report."""
        return DeliveryReport(
            self.sync, self.delivered + other.delivered, self.rejected + other.rejected, self.failed + other.failed,
            self.retries + other.retries, self.requests + other.requests, self.bytes_sent + other.bytes_sent,
            self.seconds + other.seconds, (self.errors + other.errors)[:10])

    @property
    def messages_per_second(self) -> float:
        return self.delivered / self.seconds if self.seconds > 0 else 0.0

    def as_metadata(self) -> dict[str, float | int]:
        return {
            "delivered": self.delivered,
            "rejected_by_destination": self.rejected,
            "failed_pending": self.failed,
            "retried_requests": self.retries,
            "requests": self.requests,
            "megabytes_sent": round(self.bytes_sent / 1e6, 2),
            "delivery_seconds": round(self.seconds, 2),
            "messages_per_second": round(self.messages_per_second, 1),
        }


def pack_batches(messages: Sequence[Message], max_bytes: int) -> Iterator[list[Message]]:
    """Group messages into batches whose encoded size stays under `max_bytes` (plus envelope)."""
    batch: list[Message] = []
    size = 0
    for message in messages:
        length = len(message[1]) + 1
        if batch and size + length > max_bytes:
            yield batch
            batch, size = [], 0
        batch.append(message)
        size += length
    if batch:
        yield batch


def deliver_pending(
    ledger: Ledger,
    sync: str,
    client: Destination,
    *,
    run_id: str | None = None,
    max_in_flight: int = 4,
    chunk_rows: int = 20_000,
    chunks: Iterable[list[Message]] | None = None,
) -> DeliveryReport:
    """Send every pending message of `sync` (or those `chunks` hand over as they are planned).

    Raises `DeliveryError` at the end when messages remain undelivered (retries exhausted), after
    everything else was sent and recorded; raises `VendorFatalError` (bad credentials or setup) at once.
    """
    report = DeliveryReport(sync)
    started = time.monotonic()
    lock = threading.Lock()

    def count_retry(_: RetryEvent) -> None:
        with lock:
            report.retries += 1

    def send(batch: list[Message]) -> list[Outcome]:
        return _send_isolating(client, batch, count_retry, report, lock)

    in_flight: set[Future[list[Outcome]]] = set()
    fatal: BaseException | None = None
    unlogged: list[Outcome] = []
    last_flush = time.monotonic()

    def flush() -> None:
        nonlocal last_flush
        _record(ledger, sync, unlogged, client.name, run_id)
        unlogged.clear()
        last_flush = time.monotonic()

    def drain(block_until_below: int) -> None:
        nonlocal fatal
        while len(in_flight) >= block_until_below and in_flight:
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                in_flight.discard(future)
                try:
                    outcomes = future.result()
                except VendorFatalError as exc:
                    fatal = fatal or exc
                    continue
                _count(outcomes, report)
                unlogged.extend(outcomes)
            if len(unlogged) >= FLUSH_MESSAGES or time.monotonic() - last_flush >= FLUSH_SECONDS:
                flush()

    with ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix=f"deliver-{sync}") as pool:
        for chunk in ledger.iter_pending(sync, chunk_rows) if chunks is None else chunks:
            for batch in pack_batches(chunk, client.max_batch_bytes):
                drain(max_in_flight)
                if fatal is not None:
                    break
                in_flight.add(pool.submit(send, batch))
            if fatal is not None:
                break
        drain(1)
    flush()
    report.seconds = time.monotonic() - started
    if fatal is not None:
        raise fatal
    if report.failed:
        raise DeliveryError(
            f"{report.failed} message(s) of sync {sync!r} could not be delivered and stay pending: "
            + "; ".join(report.errors[:3]),
            report,
        )
    return report


def _send_isolating(client: Destination, batch: list[Message], on_retry: Callable[[RetryEvent], None],
                    report: DeliveryReport, lock: threading.Lock) -> list[Outcome]:
    """Send a batch; on 400 split it until the bad messages are alone and reject only those."""
    payloads = [p.encode() for _, p in batch]
    retries = 0

    def counting(event: RetryEvent) -> None:
        nonlocal retries
        retries += 1
        on_retry(event)

    with lock:
        report.requests += 1
        report.bytes_sent += sum(len(p) for p in payloads)
    try:
        client.send_batch(payloads, on_retry=counting)
    except VendorFatalError:
        raise
    except PartialBatchError as exc:
        taken, bad, rest = batch[: exc.accepted], batch[exc.accepted], batch[exc.accepted + 1:]
        return ([(seq, DELIVERED, 1 + retries, None) for seq, _ in taken]
                + [(bad[0], REJECTED, 1 + retries, exc.vendor_message)]
                + (_send_isolating(client, rest, on_retry, report, lock) if rest else []))
    except VendorRequestError as exc:
        if exc.status not in (400, 413):
            return [(seq, PENDING, 1 + retries, str(exc)) for seq, _ in batch]
        if len(batch) == 1:
            return [(batch[0][0], REJECTED, 1 + retries, exc.vendor_message)]
        middle = len(batch) // 2
        return (_send_isolating(client, batch[:middle], on_retry, report, lock)
                + _send_isolating(client, batch[middle:], on_retry, report, lock))
    except VendorError as exc:  # retries exhausted
        return [(seq, PENDING, 1 + retries, str(exc)) for seq, _ in batch]
    return [(seq, DELIVERED, 1 + retries, None) for seq, _ in batch]


def _count(outcomes: list[Outcome], report: DeliveryReport) -> None:
    for _, status, _, error in outcomes:
        if status == DELIVERED:
            report.delivered += 1
        elif status == REJECTED:
            report.rejected += 1
        else:
            report.failed += 1
            if error and len(report.errors) < 10 and error not in report.errors:
                report.errors.append(error)


def _record(ledger: Ledger, sync: str, outcomes: list[Outcome], destination: str, run_id: str | None) -> None:
    """Log outcomes to the ledger, and each message the destination refused to the rejected table."""
    ledger.log_outcomes(sync, outcomes)
    ledger.reject_refused(sync, [(seq, f"rejected by {destination}: {error}")
                                 for seq, status, _, error in outcomes if status == REJECTED],
                          destination=destination, run_id=run_id)
