"""The delivery ledger: every planned message, its status, attempts and last error, in plain SQL.

Planning writes messages as `pending` (an outbox). Delivery appends each batch's outcome to a small
log as soon as Segment answers, and `compact()` folds the log into the ledger's statuses. A run killed
at any point therefore loses at most the acknowledgements of the batches in flight; those messages are
sent again with the same messageId, which Segment deduplicates (ARCHITECTURE rules 1-3).

The SQL is kept close to portable (standard DDL and DML; `arg_min`/`arg_max` have PostgreSQL
equivalents) so the state can move to PostgreSQL by configuration when runs move to separate machines.
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
    delivered_at TIMESTAMPTZ
    -- (sync, message_id) is unique: planning inserts only ids the ledger lacks, inside a transaction,
    -- and a staging file has one writer. No PRIMARY KEY: DuckDB keeps such an index in memory, which
    -- at millions of messages would break the engine's memory bound.
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
        """Record messages built in Python as pending (see `plan_relation`)."""
        if not messages:
            return PlanCounts(0, 0, 0, 0)
        frame = pa.table({
            "message_id": [m.message_id for m in messages],
            "record_key": [m.record_key for m in messages],
            "call_type": [m.call_type for m in messages],
            "payload": [m.payload.decode() for m in messages],
            "ord": pa.array(range(len(messages)), pa.int64()),
        })
        self.con.register("incoming_messages", frame)
        try:
            return self.plan_relation(sync, "incoming_messages", run_id=run_id, force=force)
        finally:
            self.con.unregister("incoming_messages")

    def plan_relation(self, sync: str, relation: str, *, run_id: str | None = None,
                      force: bool = False) -> PlanCounts:
        """Record the rows of `relation` (message_id, record_key, call_type, payload, ord) as pending.

        A messageId already in the ledger is left alone, so planning the same change twice sends it
        once; `force` puts it back to pending instead. Duplicates within `relation` are planned once,
        in the order of their first `ord`.
        """
        con = self.con
        con.execute("BEGIN")
        try:
            # Only (message_id, ord) take part in the dedupe and the ledger lookup, so no hash table or
            # sort ever carries payloads: memory stays flat however large the plan.
            con.execute(
                f"""
                CREATE OR REPLACE TEMP TABLE plan_ids AS
                SELECT message_id, min(ord) AS first_ord, count(*) AS copies,
                       EXISTS (SELECT 1 FROM ledger l WHERE l.sync = ? AND l.message_id = i.message_id) AS known
                FROM {relation} AS i GROUP BY message_id
                """, [sync])
            total, distinct, known = con.execute(
                "SELECT coalesce(sum(copies), 0), count(*), count(*) FILTER (WHERE known) FROM plan_ids").fetchone()
            if force and known:
                con.execute(
                    "UPDATE ledger SET status = ?, delivered_at = NULL, last_error = NULL "
                    "WHERE sync = ? AND message_id IN (SELECT message_id FROM plan_ids WHERE known)", [PENDING, sync])
            # seq keeps the input's order: the next free number plus the row's position in the input.
            seq0 = con.execute("SELECT coalesce(max(seq), 0) + 1 FROM ledger WHERE sync = ?", [sync]).fetchone()[0]
            base = con.execute(f"SELECT coalesce(min(ord), 0) FROM {relation}").fetchone()[0]
            con.execute(
                f"""
                INSERT INTO ledger (sync, message_id, record_key, call_type, payload, status, attempts,
                                    seq, planned_run, planned_at)
                SELECT ?, i.message_id, i.record_key, i.call_type, i.payload, ?, 0, ? + i.ord - ?, ?, ?
                FROM {relation} AS i JOIN plan_ids p ON p.message_id = i.message_id AND p.first_ord = i.ord
                WHERE NOT p.known
                """,
                [sync, PENDING, seq0, base, run_id, _now()],
            )
            con.execute("DROP TABLE plan_ids")
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
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

    def reject_relation(self, sync: str, relation: str, *, run_id: str | None = None) -> int:
        """Keep the rows of `relation` (record_key, source, reason, record) in the rejected table."""
        return self.con.execute(
            f"INSERT INTO rejected (sync, run_id, record_key, source, reason, record, rejected_at) "
            f"SELECT ?, ?, record_key, source, reason, record, ? FROM {relation}", [sync, run_id, _now()]
        ).fetchone()[0]

    def iter_pending(self, sync: str, chunk_rows: int = 20_000) -> Iterator[list[tuple[str, str]]]:
        """Pending (message_id, payload) in planning order, a window of `seq` at a time.

        Windows of `seq` rather than ORDER BY ... LIMIT: seq grows with insertion, so each window reads
        only its own row groups and nothing is sorted.
        """
        low, high = self.con.execute(
            "SELECT min(seq), max(seq) FROM ledger WHERE sync = ? AND status = ?", [sync, PENDING]).fetchone()
        if low is None:
            return
        start = low
        while start <= high:
            rows = self.con.execute(
                "SELECT message_id, payload FROM ledger WHERE sync = ? AND status = ? AND seq >= ? AND seq < ? "
                "ORDER BY seq", [sync, PENDING, start, start + chunk_rows]).fetchall()
            start += chunk_rows
            if rows:
                yield rows

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
        self.con.register("outcomes", frame)
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


def _now() -> datetime:
    return datetime.now(UTC)
