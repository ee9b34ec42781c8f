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
- A destination whose setup is wrong (`VendorFatalError`) stops the delivery at once; a prefix it had
  accepted before saying so (a `PartialBatchError` that is also fatal) is still recorded as delivered.
- Outcomes are logged to the ledger at least every second (or 20,000 messages): a commit per batch
  would cost more than sending it. In between, each batch is noted in the sync's outcome journal beside
  the staging file (`engine/journal.py`) before it is sent and once it is answered, one append each; the
  next reader of the ledger logs what a killed run's journal holds (`Ledger.recover`). A killed run
  therefore re-sends only the batches that were on the wire, for every destination, with the same
  messageIds; those are logged as in flight, then planned again, and counted in `in_flight_at_stop`.
  `record_each_batch=True` also fsyncs each answer, so that holds after a crash of the machine too (for
  destinations that do not deduplicate); a ledger in memory has no journal, so it is written each batch.
- A destination that confirms later returns `AwaitingAck(receipt)` from `send_batch`, with a receipt
  unique to that send: the batch is recorded as awaiting confirmation (with when its request began), not
  delivered, and is not sent again. `settle_awaiting` asks the destination about open receipts later,
  outside the send path.
- Progress (`engine/progress.py`) is reported once per answered batch, and each retry as it happens: a bar
  on a terminal; where none watches, a `progress_log` (a Dagster run's log) takes a line every
  `LOG_SECONDS` of a long delivery and the retry notices, and without one nothing is shown.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Protocol

import duckdb

from segment_ops.clients.base import (
    PartialBatchError,
    RetryEvent,
    VendorError,
    VendorFatalError,
    VendorRequestError,
)
from segment_ops.engine import store
from segment_ops.engine.journal import Journal
from segment_ops.engine.ledger import (
    AWAITING_ACK,
    DELIVERED,
    PENDING,
    REJECTED,
    AwaitingReceipt,
    Ledger,
    retention,
)
from segment_ops.engine.progress import DeliveryProgress

FLUSH_SECONDS = 1.0
FLUSH_MESSAGES = 20_000


class Destination(Protocol):
    """Where a sync's messages go."""

    name: str
    max_batch_bytes: int

    def send_batch(self, payloads: Sequence[bytes], *,
                   on_retry: Callable[[RetryEvent], None] | None = None) -> object:
        """Send one batch; return `AwaitingAck` when the destination will confirm it later (anything else:
        delivered), raise the client errors of `clients.base` when it did not take it."""
        ...


@dataclass(frozen=True)
class AwaitingAck:
    """What `send_batch` returns when the destination took the batch but confirms it later: its messages are
    recorded as awaiting confirmation with `receipt` (unique to this send), to confirm them by."""

    receipt: str


class Confirmation(Enum):
    """A destination's answer about one receipt (`Confirm`)."""

    CONFIRMED = "confirmed"  # delivered
    WAITING = "waiting"  # not yet: ask again later, until the timeout
    LOST = "lost"  # can never be confirmed (the destination forgot it): pending again at once


Message = tuple[int, str]  # (ledger seq, encoded payload holding its messageId)
# (ledger seq, status, attempts, error), plus receipt and sent_at for AWAITING_ACK (see `Ledger.log_outcomes`)
Outcome = tuple
# Open receipts (oldest first) -> the destination's answer for each; `True` reads as CONFIRMED, a receipt
# left out or anything else as WAITING.
Confirm = Callable[[Sequence[AwaitingReceipt]], Mapping[str, Confirmation]]


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
    awaiting_ack: int = 0  # taken by the destination, confirmed later (not delivered yet)
    recovered: int = 0  # answers a stopped delivery had received but not logged, logged from its journal
    in_flight_at_stop: int = 0  # on the wire when a delivery stopped, so possibly sent twice: sent again
    compacted: int = 0  # payloads of long-settled messages dropped after this delivery (`Ledger.compact`)

    def __add__(self, other: DeliveryReport) -> DeliveryReport:
        """Two delivery passes of the same sync, as one report."""
        return DeliveryReport(
            self.sync, self.delivered + other.delivered, self.rejected + other.rejected,
            self.failed + other.failed, self.retries + other.retries, self.requests + other.requests,
            self.bytes_sent + other.bytes_sent, self.seconds + other.seconds,
            (self.errors + other.errors)[:10], self.awaiting_ack + other.awaiting_ack,
            self.recovered + other.recovered, self.in_flight_at_stop + other.in_flight_at_stop,
            self.compacted + other.compacted)

    @property
    def messages_per_second(self) -> float:
        return self.delivered / self.seconds if self.seconds > 0 else 0.0

    def as_metadata(self) -> dict[str, float | int]:
        metadata: dict[str, float | int] = {
            "delivered": self.delivered,
            "rejected_by_destination": self.rejected,
            "failed_pending": self.failed,
            "retried_requests": self.retries,
            "requests": self.requests,
            "megabytes_sent": round(self.bytes_sent / 1e6, 2),
            "delivery_seconds": round(self.seconds, 2),
            "messages_per_second": round(self.messages_per_second, 1),
        }
        if self.awaiting_ack:
            metadata["sent_awaiting_ack"] = self.awaiting_ack
        if self.recovered or self.in_flight_at_stop:
            metadata["answers_recovered_after_stop"] = self.recovered
            metadata["resent_in_flight_at_stop"] = self.in_flight_at_stop
        return metadata


@dataclass
class SettleReport:
    """What one `settle_awaiting` found out about a sync's messages awaiting confirmation."""

    sync: str
    confirmed: int = 0  # confirmed by the destination: now delivered
    expired: int = 0  # not confirmed within the timeout: pending again, sent again by the next delivery
    lost: int = 0  # the destination can no longer confirm them: pending again at once
    awaiting: int = 0  # still awaiting at the end (not confirmed yet, timeout not reached)
    queries: int = 0  # confirmation requests made
    error: str | None = None  # why the last confirmation request failed, if it did
    seconds: float = 0.0

    def __add__(self, later: SettleReport) -> SettleReport:
        """Two settle steps of one run as one: counts add up, what is still awaiting is the later's."""
        return SettleReport(self.sync, self.confirmed + later.confirmed, self.expired + later.expired,
                            self.lost + later.lost, later.awaiting, self.queries + later.queries,
                            later.error or self.error, self.seconds + later.seconds)


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
    record_each_batch: bool = False,
    progress: DeliveryProgress | None = None,
) -> DeliveryReport:
    """Send every pending message of `sync` (or those `chunks` hand over as they are planned).

    Raises `DeliveryError` at the end when messages remain undelivered (retries exhausted), after
    everything else was sent and recorded; raises `VendorFatalError` (bad credentials or setup) at once,
    after recording what the destination had taken. `record_each_batch`: fsync each batch's answer to the
    outcome journal, so not even a crash of the machine lets an acknowledged batch count as pending again
    (for destinations that do not deduplicate a re-sent message); a ledger in memory, which has no journal,
    is written after each batch instead. `progress` is told of each answered batch and each retry; by default
    a bar on a terminal (`engine/progress.py`), nothing otherwise.
    """
    report = DeliveryReport(sync)
    keep = retention()  # a setting that cannot be used stops the delivery before anything is sent
    started = time.monotonic()
    lock = threading.Lock()
    ledger.recover(sync)  # a stopped delivery's answers first, so nothing it had acknowledged is pending
    if recovered := ledger.recovered.pop(sync, None):
        report.recovered, report.in_flight_at_stop = recovered.outcomes, recovered.in_flight
    if progress is None:
        progress = DeliveryProgress(sync, destination=client.name)
    if progress.wants_total and not progress.started:  # counted only for a bar, which shows it
        progress.start(ledger.counts(sync).pending if chunks is None else None)
    journal = ledger.journal(sync, destination=client.name, run_id=run_id, fsync=record_each_batch)
    try:
        flush_seconds = 0.0 if record_each_batch and journal is None else FLUSH_SECONDS
        fatal = _deliver(ledger, sync, client, report, lock, journal, progress, run_id=run_id,
                         max_in_flight=max_in_flight, flush_seconds=flush_seconds,
                         chunks=ledger.iter_pending(sync, chunk_rows) if chunks is None else chunks)
    except BaseException:  # the next delivery (or `Ledger(con)`) logs what the journal holds
        if journal is not None:
            journal.close(remove=False)
        raise
    finally:
        progress.close()
    if journal is not None:
        journal.close(remove=True)  # everything it held is in the ledger
    # Once a day per sync: what settled more than LEDGER_RETENTION_DAYS ago keeps its id and state, not its
    # payload, so a ledger's size (and a cold start from PostgreSQL) follows what is recent. Housekeeping:
    # its failure is reported, never the delivery's (it is due again next time).
    if fatal is None:
        try:
            report.compacted = ledger.compact_if_due(sync, keep) or 0
        except duckdb.Error as exc:
            report.errors.append(f"compaction of the ledger failed (tried again next time): {exc}")
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


def _deliver(ledger: Ledger, sync: str, client: Destination, report: DeliveryReport, lock: threading.Lock,
             journal: Journal | None, progress: DeliveryProgress, *, run_id: str | None, max_in_flight: int,
             flush_seconds: float, chunks: Iterable[list[Message]]) -> VendorFatalError | None:
    """The send loop of `deliver_pending`; returns the `VendorFatalError` that stopped it, once what was
    taken is logged."""

    def count_retry(event: RetryEvent) -> None:
        with lock:
            report.retries += 1
        progress.retrying(event)

    def send(batch: list[Message], number: int) -> tuple[list[Outcome], VendorFatalError | None]:
        outcomes: list[Outcome] = []
        stopped = None
        try:
            _send_isolating(client, batch, count_retry, report, lock, outcomes)
        except VendorFatalError as exc:  # what was taken before it is in `outcomes`, and is recorded
            stopped = exc
        if journal is not None:  # at once, not when the main thread gets to it
            journal.answered(number, outcomes)
        return outcomes, stopped

    in_flight: dict[Future[tuple[list[Outcome], VendorFatalError | None]], int] = {}  # -> journal batch
    fatal: VendorFatalError | None = None
    unlogged: list[Outcome] = []
    unlogged_batches: list[int] = []
    last_flush = time.monotonic()

    def flush() -> None:
        nonlocal last_flush
        _record(ledger, sync, unlogged, client.name, run_id)
        if journal is not None:
            journal.flushed(unlogged_batches)
        unlogged.clear()
        unlogged_batches.clear()
        last_flush = time.monotonic()
        store.checkpoint(ledger.con)  # state in PostgreSQL: shared every so often, not only at the end

    def drain(block_until_below: int) -> None:
        nonlocal fatal
        while len(in_flight) >= block_until_below and in_flight:
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                unlogged_batches.append(in_flight.pop(future))
                outcomes, stopped = future.result()
                fatal = fatal or stopped
                failed = report.failed
                _count(outcomes, report)
                progress.advance(len(outcomes), answered=report.failed - failed < len(outcomes))
                unlogged.extend(outcomes)
            if len(unlogged) >= FLUSH_MESSAGES or time.monotonic() - last_flush >= flush_seconds:
                flush()

    with ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix=f"deliver-{sync}") as pool:
        for chunk in chunks:
            for batch in pack_batches(chunk, client.max_batch_bytes):
                drain(max_in_flight)
                if fatal is not None:
                    break
                number = journal.handed_over([seq for seq, _ in batch]) if journal is not None else 0
                in_flight[pool.submit(send, batch, number)] = number
            if fatal is not None:
                break
        drain(1)
    flush()
    return fatal


def _send_isolating(client: Destination, batch: list[Message], on_retry: Callable[[RetryEvent], None],
                    report: DeliveryReport, lock: threading.Lock, out: list[Outcome]) -> None:
    """Send a batch, appending its outcomes to `out`; on 400 split it until the bad messages are alone and
    reject only those. A `VendorFatalError` propagates with `out` holding what was taken before it."""
    payloads = [p.encode() for _, p in batch]
    retries = 0

    def counting(event: RetryEvent) -> None:
        nonlocal retries
        retries += 1
        on_retry(event)

    with lock:
        report.requests += 1
        report.bytes_sent += sum(len(p) for p in payloads)
    sent_at = datetime.now(UTC)
    try:
        result = client.send_batch(payloads, on_retry=counting)
    except PartialBatchError as exc:  # the events before `accepted` were taken, whatever came after
        accepted = min(max(exc.accepted, 0), len(batch) - 1)
        taken, bad, rest = batch[:accepted], batch[accepted], batch[accepted + 1:]
        out.extend((seq, DELIVERED, 1 + retries, None) for seq, _ in taken)
        if isinstance(exc, VendorFatalError):
            raise  # the setup is wrong, not the event: it and the rest stay pending
        out.append((bad[0], REJECTED, 1 + retries, exc.vendor_message))
        if rest:
            _send_isolating(client, rest, on_retry, report, lock, out)
        return
    except VendorFatalError:
        raise
    except VendorRequestError as exc:
        if exc.status not in (400, 413):
            out.extend((seq, PENDING, 1 + retries, str(exc)) for seq, _ in batch)
        elif len(batch) == 1:
            out.append((batch[0][0], REJECTED, 1 + retries, exc.vendor_message))
        else:
            middle = len(batch) // 2
            _send_isolating(client, batch[:middle], on_retry, report, lock, out)
            _send_isolating(client, batch[middle:], on_retry, report, lock, out)
        return
    except VendorError as exc:  # retries exhausted
        out.extend((seq, PENDING, 1 + retries, str(exc)) for seq, _ in batch)
        return
    if isinstance(result, AwaitingAck):
        out.extend((seq, AWAITING_ACK, 1 + retries, None, result.receipt, sent_at) for seq, _ in batch)
    else:
        out.extend((seq, DELIVERED, 1 + retries, None) for seq, _ in batch)


def settle_awaiting(ledger: Ledger, sync: str, confirm: Confirm, *, timeout: float | None, wait: float = 0.0,
                    poll_initial: float = 0.5, poll_max: float = 5.0,
                    sleep: Callable[[float], None] = time.sleep) -> SettleReport:
    """Ask the destination (`confirm`) about every open receipt of `sync`, and record the answers.

    CONFIRMED: delivered. LOST: pending again at once. Not confirmed and taken more than `timeout` seconds
    ago: pending again, whether or not the destination answered, so the next delivery sends it again (a
    destination without dedupe may then hold it twice: the price of never losing one); `timeout=None` only
    confirms. Otherwise it keeps waiting. While some still wait, asks again (0.5 s, doubling up to
    `poll_max`) until `wait` seconds have passed; `wait=0` asks once. A failed request (`error`) confirms
    nothing; only a `VendorFatalError` (credentials) propagates.
    """
    report = SettleReport(sync)
    started = time.monotonic()
    ledger.recover(sync)  # receipts a stopped delivery had received are open receipts too
    delay = poll_initial
    while True:
        awaiting = ledger.awaiting_receipts(sync)
        if not awaiting:
            report.awaiting = 0
            break
        report.queries += 1
        try:
            answers = dict(confirm(awaiting))
            report.error = None
        except VendorFatalError:
            raise
        except VendorError as exc:
            report.error = str(exc)
            answers = {}
        confirmed = [r.receipt for r in awaiting if answers.get(r.receipt) is Confirmation.CONFIRMED]
        lost = [r.receipt for r in awaiting if answers.get(r.receipt) is Confirmation.LOST]
        expired: list[str] = []
        if timeout is not None:
            cutoff = datetime.now(UTC) - timedelta(seconds=timeout)
            expired = [r.receipt for r in awaiting if r.taken_at <= cutoff
                       and answers.get(r.receipt, Confirmation.WAITING) is Confirmation.WAITING]
        report.confirmed += ledger.settle_receipts(sync, confirmed, DELIVERED)
        report.lost += ledger.settle_receipts(
            sync, lost, PENDING, "the destination forgot the receipt, so cannot confirm it: to be sent again")
        report.expired += ledger.settle_receipts(
            sync, expired, PENDING, f"not confirmed within {timeout or 0:g}s of sending: to be sent again")
        settled = {*confirmed, *lost, *expired}
        report.awaiting = sum(r.messages for r in awaiting if r.receipt not in settled)
        if not report.awaiting or time.monotonic() - started + delay > wait:
            break
        sleep(delay)
        delay = min(delay * 2, poll_max)
    report.seconds = time.monotonic() - started
    return report


def _count(outcomes: list[Outcome], report: DeliveryReport) -> None:
    for _, status, _, error, *_ in outcomes:
        if status == DELIVERED:
            report.delivered += 1
        elif status == REJECTED:
            report.rejected += 1
        elif status == AWAITING_ACK:
            report.awaiting_ack += 1
        else:
            report.failed += 1
            if error and len(report.errors) < 10 and error not in report.errors:
                report.errors.append(error)


def _record(ledger: Ledger, sync: str, outcomes: list[Outcome], destination: str, run_id: str | None) -> None:
    """Log outcomes to the ledger, and each message the destination refused to the rejected table."""
    ledger.log_outcomes(sync, outcomes)
    refused = [(seq, error) for seq, status, _, error, *_ in outcomes if status == REJECTED]
    ledger.reject_refused(sync, refused, destination=destination, run_id=run_id)
