"""Fixtures for delivery and replay tests: a ledger on a fresh staging file, clients on the sandbox, input
files."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import duckdb
import orjson
import pytest

from segment_ops.clients.base import RetryPolicy
from segment_ops.clients.segment_tracking import SegmentTrackingClient
from segment_ops.config import SANDBOX_SEGMENT_WRITE_KEY
from segment_ops.engine.ledger import Ledger
from segment_ops.engine.store import connect
from segment_ops.engine.warehouse import UNSERIALISABLE_COLUMN, StagedResult
from segment_ops.sandbox.server import RunningSandbox


def stage_columns(con: duckdb.DuckDBPyConnection, table: str,
                  columns: dict[str, tuple[str, Sequence[object]]]) -> StagedResult:
    """Stage `columns` ({name: (DuckDB type, values)}, values row-aligned) as the temp table `table`, as a
    warehouse stage would (with the unserialisable-column marker the diff reads)."""
    selects = ", ".join(f"unnest(?::{kind}[]) AS {name}" for name, (kind, _) in columns.items())
    con.execute(f"CREATE OR REPLACE TEMP TABLE {table} AS SELECT {selects}, "
                f"NULL::VARCHAR AS {UNSERIALISABLE_COLUMN}", [list(values) for _, values in columns.values()])
    rows = len(next(iter(columns.values()))[1])
    return StagedResult(table, rows, tuple(columns), {name: kind for name, (kind, _) in columns.items()}, 0.0,
                        "test")


# Real retries, but with backoffs short enough for a test (Retry-After is still honoured).
FAST_RETRY = RetryPolicy(backoff_initial=0.01, backoff_max=0.05)


def track_calls(count: int, *, pad: int = 0, prefix: str = "u", event: str = "Replayed") -> list[dict]:
    """`count` distinct valid track calls without messageIds; `pad` adds that many bytes of properties."""
    return [
        {"type": "track", "userId": f"{prefix}{i}", "event": event,
         "properties": {"n": i, **({"pad": "x" * pad} if pad else {})}}
        for i in range(count)
    ]


def write_jsonl(path: Path, records: Iterable[dict | bytes | str]) -> Path:
    """One line per record: dicts are JSON-encoded, bytes/str written as they are (for malformed lines)."""
    with path.open("wb") as handle:
        for record in records:
            if isinstance(record, dict):
                line = orjson.dumps(record)
            elif isinstance(record, str):
                line = record.encode()
            else:
                line = record
            handle.write(line + b"\n")
    return path


def message_ids_received(sandbox: RunningSandbox, limit: int = 200_000) -> list[str]:
    """The messageIds the sandbox stored (first arrivals only; it never stores a duplicate)."""
    return [m["messageId"] for m in sandbox.received("segment", limit=limit)]


def ledger_counts(ledger: Ledger, sync: str = "replay") -> tuple[int, int, int]:
    """(pending, delivered, rejected) of one sync."""
    counts = ledger.counts(sync)
    return counts.pending, counts.delivered, counts.rejected


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    con = connect(tmp_path / "staging" / "replay.duckdb")
    yield Ledger(con)
    con.close()


@pytest.fixture
def segment_client(clean_sandbox: RunningSandbox) -> Callable[..., SegmentTrackingClient]:
    """A factory of Segment clients on the (clean) sandbox with fast retries; keyword arguments override."""

    def make(**overrides: object) -> SegmentTrackingClient:
        options: dict = {"retry": FAST_RETRY} | overrides
        write_key = options.pop("write_key", SANDBOX_SEGMENT_WRITE_KEY)
        return SegmentTrackingClient(f"{clean_sandbox.url}/segment", write_key,
                                     **options)  # type: ignore[arg-type]

    return make
