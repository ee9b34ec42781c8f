"""The delivery ledger: every planned message, its status, attempts and last error, in plain SQL.

Planning writes messages as `pending` (an outbox). Delivery appends each batch's outcome to a small
log as soon as Segment answers, and `compact()` folds the log into the ledger's statuses. A run killed
at any point therefore loses at most the acknowledgements of the batches in flight; those messages are
sent again with the same messageId, which Segment deduplicates (ARCHITECTURE rules 1-3).

The SQL is kept portable (no DuckDB-only syntax outside `_load_frame`) so the state can move to
PostgreSQL by configuration when runs move to separate machines.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import duckdb
import pyarrow as pa

PENDING, DELIVERED, REJECTED = "pending", "delivered", "rejected"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger (
    sync         VARCHAR NOT NULL,
    message_id   VARCHAR NOT NULL,
    record_key   VARCHAR,
    call_type    VARCHAR,
    payload      VARCHAR NOT NULL,
    status       VARCHAR NOT NULL,
    attempts     INTEGER NOT NULL,
    last_error   VARCHAR,
    seq          BIGINT NOT NULL,
    planned_run  VARCHAR,
    planned_at   TIMESTAMPTZ NOT NULL,
    delivered_at TIMESTAMPTZ,
    PRIMARY KEY (sync, message_id)
);
CREATE TABLE IF NOT EXISTS delivery_log (
    sync       VARCHAR NOT NULL,
    message_id VARCHAR NOT NULL,
    status     VARCHAR NOT NULL,
    attempts   INTEGER NOT NULL,
    error      VARCHAR,
    logged_at  TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS rejected (
    sync        VARCHAR NOT NULL,
    run_id      VARCHAR,
    record_key  VARCHAR,
    source      VARCHAR,
    reason      VARCHAR NOT NULL,
    record      VARCHAR,
    rejected_at TIMESTAMPTZ NOT NULL
);
"""


@dataclass(frozen=True)
class PlannedMessage:
    message_id: str
    record_key: str | None
    call_type: str
    payload: bytes


@dataclass(frozen=True)
class Rejection:
    record_key: str | None
    source: str | None
    reason: str
    record: str | None


@dataclass(frozen=True)
class PlanCounts:
    planned: int  # new messages now pending
    already_known: int  # same messageId planned before (delivered, or pending from an earlier run)
    duplicates_in_input: int
    rejected: int


@dataclass(frozen=True)
class LedgerCounts:
    pending: int
    delivered: int
    rejected: int


class Ledger:
    """The ledger tables of one staging connection."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con
        con.execute(_SCHEMA)

    def add_planned(self, sync: str, messages: Sequence[PlannedMessage], *, run_id: str | None = None,
                    force: bool = False) -> PlanCounts:
        """Record messages as pending; a messageId already in the ledger is left alone (or reset with `force`)."""
        if not messages:
            return PlanCounts(0, 0, 0, 0)
        frame = pa.table({
            "message_id": [m.message_id for m in messages],
            "record_key": [m.record_key for m in messages],
            "call_type": [m.call_type for m in messages],
            "payload": [m.payload.decode() for m in messages],
            "ord": pa.array(range(len(messages)), pa.int64()),
        })
        con = self.con
        con.execute("BEGIN")
        try:
            self._load_frame("incoming", frame)
            total, distinct = con.execute("SELECT count(*), count(DISTINCT message_id) FROM incoming").fetchone()
            known = con.execute(
                "SELECT count(DISTINCT i.message_id) FROM incoming i JOIN ledger l "
                "ON l.sync = ? AND l.message_id = i.message_id", [sync]).fetchone()[0]
            if force and known:
                con.execute(
                    "UPDATE ledger SET status = ?, delivered_at = NULL, last_error = NULL "
                    "WHERE sync = ? AND message_id IN (SELECT message_id FROM incoming)", [PENDING, sync])
            seq0 = con.execute("SELECT coalesce(max(seq), 0) FROM ledger WHERE sync = ?", [sync]).fetchone()[0]
            con.execute(
                """
                INSERT INTO ledger (sync, message_id, record_key, call_type, payload, status, attempts,
                                    seq, planned_run, planned_at)
                SELECT ?, message_id, record_key, call_type, payload, ?, 0, ? + row_number() OVER (ORDER BY first_row), ?, ?
                FROM (SELECT message_id, any_value(record_key) AS record_key, any_value(call_type) AS call_type,
                             any_value(payload) AS payload, min(ord) AS first_row
                      FROM incoming GROUP BY message_id) AS i
                WHERE NOT EXISTS (SELECT 1 FROM ledger l WHERE l.sync = ? AND l.message_id = i.message_id)
                """,
                [sync, PENDING, seq0, run_id, _now(), sync],
            )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        finally:
            con.unregister("incoming")
        planned = distinct if force else distinct - known
        return PlanCounts(planned=planned, already_known=0 if force else known,
                          duplicates_in_input=total - distinct, rejected=0)

    def add_rejections(self, sync: str, rejections: Sequence[Rejection], *, run_id: str | None = None) -> None:
        if not rejections:
            return
        self.con.executemany(
            "INSERT INTO rejected (sync, run_id, record_key, source, reason, record, rejected_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(sync, run_id, r.record_key, r.source, r.reason, r.record, _now()) for r in rejections],
        )

    def iter_pending(self, sync: str, chunk_rows: int = 20_000) -> Iterator[list[tuple[str, str]]]:
        """Pending (message_id, payload) in planning order, a chunk at a time (keyset paging on seq)."""
        last = -1
        while True:
            rows = self.con.execute(
                "SELECT seq, message_id, payload FROM ledger WHERE sync = ? AND status = ? AND seq > ? "
                "ORDER BY seq LIMIT ?", [sync, PENDING, last, chunk_rows]).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            yield [(mid, payload) for _, mid, payload in rows]

    def log_outcomes(self, sync: str, outcomes: Sequence[tuple[str, str, int, str | None]]) -> None:
        """Append (message_id, status, attempts, error) as soon as the destination answered."""
        if not outcomes:
            return
        now = _now()
        frame = pa.table({
            "message_id": [o[0] for o in outcomes],
            "status": [o[1] for o in outcomes],
            "attempts": pa.array([o[2] for o in outcomes], pa.int32()),
            "error": [o[3] for o in outcomes],
        })
        self._load_frame("outcomes", frame)
        try:
            self.con.execute(
                "INSERT INTO delivery_log SELECT ?, message_id, status, attempts, error, ? FROM outcomes", [sync, now])
        finally:
            self.con.unregister("outcomes")

    def compact(self, sync: str) -> None:
        """Fold the delivery log into ledger statuses; safe to call any time, e.g. after a crash."""
        con = self.con
        con.execute("BEGIN")
        try:
            con.execute(
                """
                UPDATE ledger SET
                    status = o.status,
                    attempts = ledger.attempts + o.attempts,
                    last_error = o.error,
                    delivered_at = CASE WHEN o.status = 'delivered' THEN o.at ELSE ledger.delivered_at END
                FROM (
                    SELECT message_id, arg_max(status, logged_at) AS status, sum(attempts) AS attempts,
                           arg_max(error, logged_at) AS error, max(logged_at) AS at
                    FROM delivery_log WHERE sync = ? GROUP BY message_id
                ) AS o
                WHERE ledger.sync = ? AND ledger.message_id = o.message_id
                """,
                [sync, sync],
            )
            con.execute("DELETE FROM delivery_log WHERE sync = ?", [sync])
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    def counts(self, sync: str) -> LedgerCounts:
        rows = dict(self.con.execute(
            "SELECT status, count(*) FROM ledger WHERE sync = ? GROUP BY status", [sync]).fetchall())
        return LedgerCounts(pending=rows.get(PENDING, 0), delivered=rows.get(DELIVERED, 0),
                            rejected=rows.get(REJECTED, 0))

    def rejected_since(self, sync: str, run_id: str, limit: int = 20) -> list[tuple[str | None, str | None, str]]:
        """A sample of (record_key, source, reason) rejected by one run, for run metadata."""
        return self.con.execute(
            "SELECT record_key, source, reason FROM rejected WHERE sync = ? AND run_id = ? "
            "ORDER BY rejected_at LIMIT ?", [sync, run_id, limit]).fetchall()

    def _load_frame(self, name: str, frame: pa.Table) -> None:
        self.con.register(name, frame)


def _now() -> datetime:
    return datetime.now(UTC)
