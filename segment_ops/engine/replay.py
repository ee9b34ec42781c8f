"""Replay a file of Segment calls (JSONL or Parquet) through the engine: plan, then deliver.

The file is read in chunks and never held whole; each chunk is validated and encoded in DuckDB
(`calls_sql`), so Python only moves raw lines. Every line is either planned (pending in the ledger),
or rejected with its line number and reason. Planning is idempotent: a messageId already in
the ledger is not planned again, so replaying the same file twice sends nothing new.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from segment_ops.clients.segment_tracking import SegmentTrackingClient
from segment_ops.engine.calls_sql import stage_json_calls
from segment_ops.engine.delivery import DeliveryReport, deliver_pending
from segment_ops.engine.ledger import Ledger, PlanCounts, Rejection

REPLAY_SYNC = "replay"
CHUNK_ROWS = 20_000


class ReplayInputError(ValueError):
    """The file itself cannot be read (missing, wrong format, corrupt); nothing was planned from it."""


@dataclass
class ReplayPlan:
    source: str
    lines: int = 0
    planned: int = 0
    already_known: int = 0
    duplicates_in_input: int = 0
    rejected: int = 0
    samples: list[bytes] = field(default_factory=list)
    rejection_samples: list[Rejection] = field(default_factory=list)

    def add(self, counts: PlanCounts) -> None:
        self.planned += counts.planned
        self.already_known += counts.already_known
        self.duplicates_in_input += counts.duplicates_in_input


@dataclass
class ReplayResult:
    plan: ReplayPlan
    delivery: DeliveryReport | None

    @property
    def ok(self) -> bool:
        return self.plan.rejected == 0 and (self.delivery is None or (self.delivery.failed == 0
                                                                      and self.delivery.rejected == 0))


def plan_file(ledger: Ledger, path: Path, *, sync: str = REPLAY_SYNC, run_id: str | None = None,
              force: bool = False, dry_run: bool = False, sample_size: int = 5) -> ReplayPlan:
    """Validate every record of `path` in DuckDB and add the valid ones to the ledger as pending.

    Chunks are staged into one table and planned in a single set operation (one join against the
    ledger, however long the file), atomically: a crash while planning leaves nothing half-planned.
    """
    plan = ReplayPlan(source=str(path))
    con = ledger.con
    con.execute("CREATE OR REPLACE TEMP TABLE replay_calls (line_no BIGINT, record_key VARCHAR, call_type VARCHAR, "
                "message_id VARCHAR, payload VARCHAR, reason VARCHAR, source VARCHAR, record VARCHAR)")
    try:
        for chunk in _read_chunks(path):
            con.register("replay_lines", chunk)
            try:
                stage_json_calls(con, sync, "replay_lines", label=path.name, target="replay_chunk")
            finally:
                con.unregister("replay_lines")
            con.execute("INSERT INTO replay_calls SELECT * FROM replay_chunk")
        valid = _count_staged(con, plan, sample_size)
        if dry_run:
            plan.planned = valid  # what would be planned on an empty ledger
            return plan
        ledger.reject_relation(sync, "(SELECT record_key, source, reason, record FROM replay_calls "
                                     "WHERE reason IS NOT NULL)", run_id=run_id)
        plan.add(ledger.plan_relation(sync, "(SELECT message_id, record_key, call_type, payload, line_no AS ord "
                                            "FROM replay_calls WHERE reason IS NULL)", run_id=run_id, force=force))
    finally:
        con.execute("DROP TABLE IF EXISTS replay_chunk")
        con.execute("DROP TABLE IF EXISTS replay_calls")
    return plan


def _count_staged(con: duckdb.DuckDBPyConnection, plan: ReplayPlan, sample_size: int) -> int:
    """Put the staged file's counts and samples in `plan`; returns its distinct valid calls."""
    lines, rejected, distinct = con.execute(
        "SELECT count(*), count(reason), count(DISTINCT message_id) FILTER (WHERE reason IS NULL) FROM replay_calls"
    ).fetchone()
    plan.lines, plan.rejected = lines, rejected
    plan.samples = [row[0].encode() for row in con.execute(
        "SELECT payload FROM replay_calls WHERE reason IS NULL ORDER BY line_no LIMIT ?", [sample_size]).fetchall()]
    plan.rejection_samples = [Rejection(*row) for row in con.execute(
        "SELECT record_key, source, reason, record FROM replay_calls WHERE reason IS NOT NULL "
        "ORDER BY line_no LIMIT 20").fetchall()]
    return distinct


def replay_file(ledger: Ledger, path: Path, client_factory: Callable[[], SegmentTrackingClient], *,
                sync: str = REPLAY_SYNC, run_id: str | None = None, force: bool = False, dry_run: bool = False,
                max_in_flight: int = 4) -> ReplayResult:
    """Plan `path`, then deliver everything pending for `sync` (including leftovers of a killed run)."""
    plan = plan_file(ledger, path, sync=sync, run_id=run_id, force=force, dry_run=dry_run)
    if dry_run:
        return ReplayResult(plan, None)
    client = client_factory()
    try:
        report = deliver_pending(ledger, sync, client, run_id=run_id, max_in_flight=max_in_flight)
    finally:
        client.close()
    return ReplayResult(plan, report)


def _read_chunks(path: Path) -> Iterator[pa.Table]:
    """(line_no, line) tables of at most CHUNK_ROWS rows; Parquet rows count as lines from 1."""
    if not path.is_file():
        raise ReplayInputError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return _jsonl_chunks(path)
    if suffix == ".parquet":
        return _parquet_chunks(path)
    raise ReplayInputError(f"{path}: unsupported file type {suffix!r}; use .jsonl, .ndjson or .parquet")


def _jsonl_chunks(path: Path) -> Iterator[pa.Table]:
    numbers: list[int] = []
    lines: list[str] = []
    with path.open("rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            if raw.isspace():
                continue  # blank lines are not calls
            numbers.append(line_no)
            lines.append(raw.decode("utf-8", errors="replace"))
            if len(lines) >= CHUNK_ROWS:
                yield _lines_table(numbers, lines)
                numbers, lines = [], []
    if lines:
        yield _lines_table(numbers, lines)


def _parquet_chunks(path: Path) -> Iterator[pa.Table]:
    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise ReplayInputError(f"{path}: not a readable Parquet file ({exc})") from None
    row = 0
    for batch in parquet.iter_batches(batch_size=CHUNK_ROWS):
        # A Parquet row carries every column; a null there means "no such field", so nulls are dropped
        # (nested ones too, as struct columns hold every key for every row).
        lines = [orjson.dumps(_without_nulls(record), default=str).decode() for record in batch.to_pylist()]
        yield _lines_table(range(row + 1, row + len(lines) + 1), lines)
        row += len(lines)


def _lines_table(numbers: Iterable[int], lines: list[str]) -> pa.Table:
    return pa.table({"line_no": pa.array(numbers, pa.int64()), "line": pa.array(lines, pa.string())})


def _without_nulls(value: object) -> object:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value
