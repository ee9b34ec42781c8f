"""Replay a file of Segment calls (JSONL or Parquet) through the engine: plan, then deliver.

The file is read in chunks and never held whole, nor is any line over MAX_LINE_BYTES. Every line is
either planned (pending in the ledger), or rejected with its line number and reason. Planning is
idempotent: a messageId already in the ledger is not planned again, so replaying the same file twice
sends nothing new; a line edited since it was planned is reported, not sent (`lines`). The whole file is
planned before anything is sent, so the counts of what it holds are known (and shown) before sending.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import orjson

from segment_ops.clients.segment_tracking import SegmentTrackingClient
from segment_ops.engine import governance as governing
from segment_ops.engine import store
from segment_ops.engine.calls import MAX_MESSAGE_BYTES, InvalidCall, prepare_call
from segment_ops.engine.delivery import DeliveryReport, deliver_pending
from segment_ops.engine.ledger import (
    DELIVERED,
    PENDING,
    REJECTED,
    VERIFIED,
    Ledger,
    MessageState,
    PlanCounts,
    PlannedMessage,
    Rejection,
)
from segment_ops.engine.progress import DeliveryProgress
from segment_ops.syncs.replay.lines import STATE as LINES_STATE
from segment_ops.syncs.replay.lines import ChangedLine, ReplayLine, find_changed, is_new_file, record_lines

REPLAY_SYNC = "replay"
CHUNK_ROWS = 10_000
CHUNK_BYTES = 16 * 1024 * 1024  # a chunk also ends at this many bytes of lines, so wide lines stay bounded
# A call is at most MAX_MESSAGE_BYTES (spec §1). A line may be longer than the call it becomes (spaces,
# nulls dropped, \u escapes: json.dumps writes an emoji in 12 bytes), hence four times that. A longer line
# cannot be a sendable call: it is rejected while it streams past, never held whole.
MAX_LINE_BYTES = 4 * MAX_MESSAGE_BYTES
ACCEPTED_SUFFIXES = (".jsonl", ".ndjson", ".parquet")
IN_FLIGHT = MessageState.IN_FLIGHT.value


class ReplayInputError(ValueError):
    """The file itself cannot be read (missing, wrong format, corrupt); nothing was planned from it."""


@dataclass
class ReplayPlan:
    """What a file held. Each line is counted once: `lines` = planned + already_known + duplicates_in_input
    + rejected + changed_skipped (`terms`)."""

    source: str
    lines: int = 0
    planned: int = 0  # new messages, now pending
    already_known: int = 0  # messageIds an earlier run planned: already_delivered + pending_earlier + ...
    already_delivered: int = 0  # of those, delivered (or verified)
    pending_earlier: int = 0  # of those, still pending (sent by this run's delivery)
    rejected_earlier: int = 0  # of those, refused by the destination before
    duplicates_in_input: int = 0  # a messageId that an earlier line of this file has
    rejected: int = 0  # lines that are no sendable call (with line number and reason)
    changed: int = 0  # lines whose content differs from what was planned for them (`lines.find_changed`)
    changed_unsent: int = 0  # of those, the ones whose new content was not planned (all, unless forced)
    changed_skipped: int = 0  # changed lines left out of the plan (all changed ones, unless forced)
    sending: int | None = None  # pending when sending began: this file's and any an earlier run left
    samples: list[bytes] = field(default_factory=list)
    rejection_samples: list[Rejection] = field(default_factory=list)
    changed_samples: list[ChangedLine] = field(default_factory=list)

    def add(self, counts: PlanCounts) -> None:
        self.planned += counts.planned
        self.already_known += counts.already_known
        self.duplicates_in_input += counts.duplicates_in_input
        self.rejected += counts.rejected  # a forced line whose compacted payload cannot be restored

    @property
    def known_otherwise(self) -> int:
        """Planned by an earlier run and neither delivered, pending nor rejected: awaiting confirmation,
        superseded, held or suppressed."""
        return self.already_known - self.already_delivered - self.pending_earlier - self.rejected_earlier

    def terms(self) -> list[tuple[int, str]]:
        """The parts `lines` splits into, each (count, what), none left out: they add up to `lines`."""
        return [(self.planned, "new"), (self.pending_earlier, "pending from an earlier run"),
                (self.already_delivered, "already delivered"),
                (self.rejected_earlier, "already rejected by the destination"),
                (self.known_otherwise, "planned earlier, awaiting confirmation or held"),
                (self.rejected, "rejected"), (self.duplicates_in_input, "duplicate in the file"),
                (self.changed_skipped, "changed since planned, not sent")]


@dataclass
class ReplayResult:
    plan: ReplayPlan
    delivery: DeliveryReport | None
    governed: governing.Governed | None = None  # what regulations and the tracking plan did

    @property
    def suppressed(self) -> int:
        """Planned messages about a regulated user, suppressed instead of sent."""
        honoured = self.governed.honoured if self.governed is not None else None
        return honoured.suppressed if honoured is not None else 0

    @property
    def ok(self) -> bool:
        """Every line sent or known: none rejected, no edit left unsent, nothing failed."""
        delivered = self.delivery is None or (self.delivery.failed == 0 and self.delivery.rejected == 0)
        return self.plan.rejected == 0 and self.plan.changed_unsent == 0 and delivered


def plan_file(ledger: Ledger, path: Path, *, sync: str = REPLAY_SYNC, run_id: str | None = None,
              force: bool = False, dry_run: bool = False, sample_size: int = 5) -> ReplayPlan:
    """Validate every record of `path` and add the valid ones to the ledger as pending.

    Chunk by chunk: planning is idempotent by messageId, so a run that dies halfway through a file
    plans the rest next time and nothing twice. A line whose content changed since it was planned is
    counted and not planned (`lines`), unless `force`.
    """
    plan = ReplayPlan(source=str(path))
    chunks = _read_chunks(path)
    store.ensure(ledger.con, LINES_STATE)
    new_file = is_new_file(ledger.con, sync, path.name)
    first_seq: int | None = None  # the first seq this plan gave: known from here on means this file's
    for chunk in chunks:
        planned: list[PlannedMessage] = []
        lines: list[ReplayLine] = []
        rejections: list[Rejection] = []
        for line_no, raw in chunk:
            if isinstance(raw, LongLine):
                rejections.append(Rejection(None, f"{path.name}:{line_no}", raw.reason, _excerpt(raw.head)))
                continue
            try:
                record = raw if isinstance(raw, dict) else orjson.loads(raw)
                message_id, encoded = prepare_call(record, sync=sync)
            except orjson.JSONDecodeError as exc:
                rejections.append(Rejection(None, f"{path.name}:{line_no}", f"invalid JSON: {exc}",
                                            _excerpt(raw)))
                continue
            except InvalidCall as exc:
                rejections.append(Rejection(_record_key(record), f"{path.name}:{line_no}", str(exc),
                                            _excerpt(raw)))
                continue
            planned.append(PlannedMessage(message_id, _record_key(record), record["type"], encoded))
            lines.append(ReplayLine(line_no, message_id, record.get("messageId") is not None, encoded))
        plan.lines += len(chunk)
        plan.rejected += len(rejections)
        plan.rejection_samples += rejections[: max(0, 20 - len(plan.rejection_samples))]
        if changed := find_changed(ledger.con, sync, path.name, lines, new_file=new_file):
            plan.changed += len(changed)
            plan.changed_samples += [ChangedLine(f"{path.name}:{lines[i].line_no}",
                                                 lines[i].message_id if lines[i].own_id else None)
                                     for i in sorted(changed)[: max(0, 20 - len(plan.changed_samples))]]
            sent = {i for i in changed if force and not lines[i].own_id}  # forced: a new message
            plan.changed_unsent += len(changed) - len(sent)
            if not force:
                planned = [m for i, m in enumerate(planned) if i not in changed]
                plan.changed_skipped += len(changed)
        plan.samples += [m.payload for m in planned[: sample_size - len(plan.samples)]]
        if dry_run:
            ledger.con.execute("DROP TABLE replay_chunk")
            counts = ledger.count_known(sync, planned)
            plan.add(counts)
            if counts.already_known:
                _split_known(ledger, sync, planned, plan, first_seq=None, chunk_seq=None)
            continue
        ledger.add_rejections(sync, rejections, run_id=run_id)
        counts = ledger.add_planned(sync, planned, run_id=run_id, force=force)
        record_lines(ledger.con, sync, path.name, force=force, run_id=run_id)
        plan.add(counts)
        if planned and first_seq is None:
            first_seq = counts.seqs.start
        if counts.already_known:
            _split_known(ledger, sync, planned, plan, first_seq=first_seq, chunk_seq=counts.seqs.start)
    return plan


def replay_file(ledger: Ledger, path: Path, client_factory: Callable[[], SegmentTrackingClient], *,
                sync: str = REPLAY_SYNC, run_id: str | None = None, force: bool = False,
                dry_run: bool = False, max_in_flight: int = 4,
                before_sending: Callable[[ReplayPlan], None] | None = None,
                progress: DeliveryProgress | None = None,
                governance: governing.Governance | None = None) -> ReplayResult:
    """Plan the whole of `path`, then deliver everything pending for `sync`: the file's new messages, and
    what earlier runs left (a killed run's, messages reset by `force`).

    `before_sending` gets the plan (with `sending`, the number about to be sent) once the file is planned
    and before the first request. `progress`: see `deliver_pending`. `governance`: before anything is sent,
    every pending message about a regulated user is suppressed (replaying history never resurrects a deleted
    or suppressed user) and the rest is checked against the tracking plan (`engine.governance`); before
    planning, the suppressed messages of users an UNSUPPRESS freed are superseded (`force` sends them again).
    Sample payloads about regulated users are left out of the plan.
    """
    regulated = governance.regulated if governance is not None else None
    if dry_run:
        plan = plan_file(ledger, path, sync=sync, run_id=run_id, dry_run=True)
        plan.samples = regulated.shown(plan.samples) if regulated is not None else plan.samples
        return ReplayResult(plan, None)
    ledger.recover(sync)  # a killed run's answers first, so what it had delivered counts as delivered
    governed = governing.Governed()
    governing.lift(ledger, sync, governance, governed)
    plan = plan_file(ledger, path, sync=sync, run_id=run_id, force=force)
    if regulated is not None:
        plan.samples = regulated.shown(plan.samples)
    governing.before_sending(ledger, sync, governance, governed, run_id=run_id)
    plan.sending = ledger.counts(sync).pending
    if before_sending is not None:
        before_sending(plan)
    if progress is not None:
        progress.start(plan.sending)
    client = client_factory()
    try:
        report = deliver_pending(ledger, sync, client, run_id=run_id, max_in_flight=max_in_flight,
                                 progress=progress)
    finally:
        client.close()
    return ReplayResult(plan, report, governed)


def _split_known(ledger: Ledger, sync: str, messages: list[PlannedMessage], plan: ReplayPlan, *,
                 first_seq: int | None, chunk_seq: int | None) -> None:
    """Where this chunk's already-known messageIds stand, added to `plan`. One planned from `first_seq` on
    (by this plan) but before `chunk_seq` (this chunk's) is a duplicate of an earlier chunk's line. Run only
    when the chunk had known ones, so a first replay of a file pays nothing for it."""
    con = ledger.con
    con.execute("CREATE OR REPLACE TEMP TABLE replay_known AS "
                "SELECT DISTINCT unnest(?::VARCHAR[]) AS message_id", [[m.message_id for m in messages]])
    try:
        ledger.states_of(sync, "replay_known", "replay_known_states")
        delivered, pending, rejected, repeated = con.execute(
            f"""
            SELECT count(*) FILTER (WHERE seq < $first AND status IN ('{DELIVERED}', '{VERIFIED}')),
                   count(*) FILTER (WHERE seq < $first AND status IN ('{PENDING}', '{IN_FLIGHT}')),
                   count(*) FILTER (WHERE seq < $first AND status = '{REJECTED}'),
                   count(*) FILTER (WHERE seq >= $first AND seq < $chunk)
            FROM replay_known_states
            """,  # a dry run plans nothing (no first_seq): every known one is an earlier run's
            {"first": 2**62 if first_seq is None else first_seq, "chunk": chunk_seq or 0}).fetchone()
    finally:
        con.execute("DROP TABLE IF EXISTS replay_known")
        con.execute("DROP TABLE IF EXISTS replay_known_states")
    plan.already_known -= repeated
    plan.duplicates_in_input += repeated
    plan.already_delivered += delivered
    plan.pending_earlier += pending
    plan.rejected_earlier += rejected


@dataclass(frozen=True)
class LongLine:
    """A line over MAX_LINE_BYTES: its size and its first bytes, all that was kept of it."""

    size: int
    head: bytes

    @property
    def reason(self) -> str:
        return (f"line is over {MAX_LINE_BYTES:,} bytes ({self.size:,} bytes); a call may be at most "
                f"{MAX_MESSAGE_BYTES:,} bytes (spec §1), so it was skipped unread")


Chunk = list[tuple[int, bytes | dict | LongLine]]  # (line number, raw line, Parquet record or long line)


def _read_chunks(path: Path) -> Iterator[Chunk]:
    """Records CHUNK_ROWS (or CHUNK_BYTES) at a time, with their line numbers; Parquet rows count as lines
    from 1."""
    if not path.is_file():
        raise ReplayInputError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return _jsonl_chunks(path)
    if suffix == ".parquet":
        return _parquet_chunks(path)
    accepted = ", ".join(ACCEPTED_SUFFIXES[:-1]) + " or " + ACCEPTED_SUFFIXES[-1]
    if suffix == ".json":  # often one JSON array, which only a whole-file parse could read
        raise ReplayInputError(
            f"{path}: .json files are not replayed: replay reads one call per line from {accepted}; rename "
            f"a file of JSON lines to .jsonl, or convert a JSON array with `jq -c '.[]' {path.name} > "
            f"{path.stem}.jsonl`")
    raise ReplayInputError(f"{path}: unsupported file type {suffix!r}; use {accepted}")


def _jsonl_chunks(path: Path) -> Iterator[Chunk]:
    chunk: Chunk = []
    size = 0
    with path.open("rb") as handle:
        for line_no, raw in _lines(handle):
            if isinstance(raw, bytes):
                if raw.isspace():
                    continue  # blank lines are not calls
                size += len(raw)
            chunk.append((line_no, raw))  # bytes: orjson refuses invalid UTF-8 itself, so nothing is altered
            if len(chunk) >= CHUNK_ROWS or size >= CHUNK_BYTES:
                yield chunk
                chunk, size = [], 0
    if chunk:
        yield chunk


def _lines(handle: BinaryIO) -> Iterator[tuple[int, bytes | LongLine]]:
    """Each line with its number, read at most MAX_LINE_BYTES + 1 bytes at a time: a longer line comes as
    a `LongLine`, read past in such steps and never held whole."""
    line_no = 0
    while raw := handle.readline(MAX_LINE_BYTES + 1):
        line_no += 1
        if len(raw) <= MAX_LINE_BYTES or raw.endswith(b"\n"):
            yield line_no, raw
            continue
        head, size = raw[:2_000], len(raw)
        while raw and not raw.endswith(b"\n"):
            raw = handle.readline(MAX_LINE_BYTES + 1)
            size += len(raw)
        yield line_no, LongLine(size - raw.endswith(b"\n"), head)


def _parquet_chunks(path: Path) -> Iterator[Chunk]:
    import pyarrow.parquet as pq  # only Parquet input needs pyarrow (about 40 MB of memory)

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise ReplayInputError(f"{path}: not a readable Parquet file ({exc})") from None
    row = 0
    for batch in parquet.iter_batches(batch_size=CHUNK_ROWS):
        # A Parquet row carries every column; a null there means "no such field", so nulls are dropped
        # (nested ones too, as struct columns hold every key for every row).
        records = batch.to_pylist()
        yield [(row + i + 1, _without_nulls(record)) for i, record in enumerate(records)]
        row += len(records)


def _without_nulls(value: object) -> object:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _record_key(record: object) -> str | None:
    if isinstance(record, dict):
        key = record.get("userId") or record.get("anonymousId") or record.get("groupId")
        return None if key is None else str(key)
    return None


def _excerpt(raw: bytes | dict) -> str:
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else orjson.dumps(raw, default=str).decode()
    return text.strip()[:2_000]
