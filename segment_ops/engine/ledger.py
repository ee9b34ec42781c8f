"""The delivery ledger: every planned message, its status, attempts and last error, in plain SQL.

Two append-only tables and a view:
- `planned_messages`: the outbox. Planning inserts each new message once (same messageId, same row).
- `outcomes`: facts, one row each time a destination answered for a message (delivered, rejected,
  awaiting ack, or still pending after retries ran out), a person reset it (`force`), or a newer plan
  superseded it.
- `ledger` (view): each planned message with its status (latest outcome, else pending), attempts,
  last error and delivery time.

Awaiting ack: a destination that confirms later (an indexer acknowledgement) took the message and gave a
receipt to ask about it with. The message is neither delivered nor pending: it is not sent again, and
`settle_receipts` later records it delivered (confirmed) or pending (never confirmed, to be sent again).

Nothing is ever updated in place, which is what DuckDB is fast at and what makes a crash harmless:
a run killed at any point has lost at most the outcomes it had not yet written; those messages are
sent again with the same messageId, which Segment deduplicates (ARCHITECTURE rules 1-3).

The SQL is kept close to portable (standard DDL and DML, a sequence; `arg_max` has PostgreSQL
equivalents) so the state can move to PostgreSQL by configuration when runs move to separate machines.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import duckdb

PENDING, DELIVERED, REJECTED = "pending", "delivered", "rejected"
# Taken by a destination that confirms later; the outcome's `receipt` is what to ask it with.
AWAITING_ACK = "awaiting_ack"
# A pending message a newer plan replaced before it was sent (e.g. the row changed again): never sent,
# and not counted as pending, delivered or rejected. Logging PENDING again revives it.
SUPERSEDED = "superseded"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS planned_messages (
    sync        VARCHAR NOT NULL,
    seq         BIGINT NOT NULL,     -- planning order within the sync
    message_id  VARCHAR NOT NULL,    -- unique per sync: planning inserts only ids the table lacks
    record_key  VARCHAR,
    call_type   VARCHAR,
    payload     VARCHAR NOT NULL,
    planned_run VARCHAR,
    planned_at  TIMESTAMPTZ NOT NULL
    -- No PRIMARY KEY: DuckDB keeps such an index in memory, which at millions of messages would break
    -- the engine's memory bound. Uniqueness holds by construction (one writer, insert-if-absent).
);
CREATE SEQUENCE IF NOT EXISTS outcome_order;
CREATE TABLE IF NOT EXISTS outcomes (
    id        BIGINT NOT NULL DEFAULT nextval('outcome_order'),
    sync      VARCHAR NOT NULL,
    seq       BIGINT NOT NULL,
    status    VARCHAR NOT NULL,
    attempts  INTEGER NOT NULL,
    error     VARCHAR,
    logged_at TIMESTAMPTZ NOT NULL,
    receipt   VARCHAR              -- awaiting_ack only: the destination's receipt (e.g. channel:ackId)
);
-- Files made before awaiting_ack existed get the column (NULL for every earlier outcome).
ALTER TABLE outcomes ADD COLUMN IF NOT EXISTS receipt VARCHAR;
CREATE TABLE IF NOT EXISTS rejected (
    sync        VARCHAR NOT NULL,
    run_id      VARCHAR,
    record_key  VARCHAR,
    source      VARCHAR,
    reason      VARCHAR NOT NULL,
    record      VARCHAR,
    rejected_at TIMESTAMPTZ NOT NULL
);
CREATE OR REPLACE VIEW ledger AS
SELECT m.sync, m.seq, m.message_id, m.record_key, m.call_type, m.payload,
       coalesce(o.status, 'pending') AS status,
       coalesce(o.attempts, 0) AS attempts,
       o.last_error,
       CASE WHEN o.status = 'delivered' THEN o.delivered_at END AS delivered_at,
       m.planned_run, m.planned_at
FROM planned_messages m
LEFT JOIN (
    SELECT sync, seq, arg_max(status, id) AS status, sum(attempts) AS attempts,
           arg_max(error, id) AS last_error, max(logged_at) FILTER (WHERE status = 'delivered') AS delivered_at
    FROM outcomes GROUP BY sync, seq
) o ON o.sync = m.sync AND o.seq = m.seq;
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
    seqs: range = range(0)  # the seq window holding this plan's new messages


@dataclass(frozen=True)
class AwaitingReceipt:
    receipt: str  # what the destination answered a batch with (e.g. an indexer-ack id), to confirm it by
    sent_at: datetime  # when the destination took the batch
    messages: int


@dataclass(frozen=True)
class LedgerCounts:
    pending: int
    delivered: int
    rejected: int
    awaiting_ack: int = 0  # taken by the destination, not yet confirmed: not delivered, not sent again


class Ledger:
    """The ledger tables of one staging connection."""

    def __init__(self, con: duckdb.DuckDBPyConnection, *, create: bool = True) -> None:
        self.con = con
        if create:
            con.execute(_SCHEMA)

    def cursor(self) -> Ledger:
        """The same ledger on a new cursor of the connection, for use from another thread."""
        return Ledger(self.con.cursor(), create=False)

    def add_planned(self, sync: str, messages: Sequence[PlannedMessage], *, run_id: str | None = None,
                    force: bool = False) -> PlanCounts:
        """Record messages built in Python as pending (see `plan_relation`)."""
        if not messages:
            return PlanCounts(0, 0, 0, 0)
        self.con.execute(
            "CREATE OR REPLACE TEMP TABLE incoming_messages AS SELECT unnest(?::VARCHAR[]) AS message_id, "
            "unnest(?::VARCHAR[]) AS record_key, unnest(?::VARCHAR[]) AS call_type, "
            "unnest(?::VARCHAR[]) AS payload, unnest(range(?)) AS ord",
            [[m.message_id for m in messages], [m.record_key for m in messages], [m.call_type for m in messages],
             [m.payload.decode() for m in messages], len(messages)])
        try:
            return self.plan_relation(sync, "incoming_messages", run_id=run_id, force=force)
        finally:
            self.con.execute("DROP TABLE incoming_messages")

    def plan_relation(self, sync: str, relation: str, *, run_id: str | None = None,
                      force: bool = False) -> PlanCounts:
        """Record the rows of `relation` (message_id, record_key, call_type, payload, ord) as pending.

        A messageId already planned is left alone, so planning the same change twice sends it once;
        `force` puts it back to pending instead. Duplicates within `relation` are planned once, in the
        order of their first `ord`.
        """
        con = self.con
        con.execute("BEGIN")
        try:
            # Only (message_id, ord) take part in the dedupe and the lookup, so no hash table or sort
            # ever carries payloads: memory stays flat however large the plan.
            con.execute(
                f"""
                CREATE OR REPLACE TEMP TABLE plan_ids AS
                SELECT message_id, min(ord) AS first_ord, count(*) AS copies,
                       EXISTS (SELECT 1 FROM planned_messages p WHERE p.sync = ? AND p.message_id = i.message_id)
                           AS known
                FROM {relation} AS i GROUP BY message_id
                """, [sync])
            total, distinct, known = con.execute(
                "SELECT coalesce(sum(copies), 0), count(*), count(*) FILTER (WHERE known) FROM plan_ids").fetchone()
            if force and known:
                con.execute(
                    "INSERT INTO outcomes (sync, seq, status, attempts, error, logged_at) "
                    "SELECT ?, p.seq, ?, 0, NULL, ? FROM planned_messages p JOIN plan_ids i "
                    "ON p.sync = ? AND p.message_id = i.message_id AND i.known", [sync, PENDING, _now(), sync])
            # seq keeps the input's order: the next free number plus the row's position in the input.
            seq0 = con.execute("SELECT coalesce(max(seq), 0) + 1 FROM planned_messages WHERE sync = ?",
                               [sync]).fetchone()[0]
            base, top = con.execute(f"SELECT coalesce(min(ord), 0), coalesce(max(ord), -1) FROM {relation}").fetchone()
            con.execute(
                f"""
                INSERT INTO planned_messages (sync, seq, message_id, record_key, call_type, payload,
                                              planned_run, planned_at)
                SELECT ?, ? + r.ord - ?, r.message_id, r.record_key, r.call_type, r.payload, ?, ?
                FROM {relation} AS r JOIN plan_ids i ON i.message_id = r.message_id AND i.first_ord = r.ord
                WHERE NOT i.known
                """,
                [sync, seq0, base, run_id, _now()],
            )
            con.execute("DROP TABLE plan_ids")
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        planned = distinct if force else distinct - known
        return PlanCounts(planned=planned, already_known=0 if force else known,
                          duplicates_in_input=total - distinct, rejected=0, seqs=range(seq0, seq0 + top - base + 1))

    def count_known(self, sync: str, messages: Sequence[PlannedMessage]) -> PlanCounts:
        """What `add_planned` would count, without writing anything (for dry runs)."""
        ids = [m.message_id for m in messages]
        distinct, known = self.con.execute(
            "SELECT count(*), count(*) FILTER (WHERE EXISTS (SELECT 1 FROM planned_messages p "
            "WHERE p.sync = ? AND p.message_id = i.id)) FROM (SELECT DISTINCT unnest(?::VARCHAR[]) AS id) i",
            [sync, ids]).fetchone()
        return PlanCounts(planned=distinct - known, already_known=known, duplicates_in_input=len(ids) - distinct,
                          rejected=0)

    def add_rejections(self, sync: str, rejections: Sequence[Rejection], *, run_id: str | None = None) -> None:
        """Keep rows that could not become a call, with their reason."""
        if not rejections:
            return
        self.con.executemany(
            "INSERT INTO rejected (sync, run_id, record_key, source, reason, record, rejected_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(sync, run_id, r.record_key, r.source, r.reason, r.record, _now()) for r in rejections],
        )

    def reject_relation(self, sync: str, relation: str, *, run_id: str | None = None) -> None:
        """Keep the rows of `relation` (record_key, source, reason, record) in the rejected table."""
        self.con.execute(
            f"INSERT INTO rejected (sync, run_id, record_key, source, reason, record, rejected_at) "
            f"SELECT ?, ?, record_key, source, reason, record, ? FROM {relation}", [sync, run_id, _now()])

    def iter_pending(self, sync: str, chunk_rows: int = 20_000,
                     seqs: range | None = None) -> Iterator[list[tuple[int, str]]]:
        """Pending (seq, payload) in planning order, a window of `seq` at a time; payloads hold their messageId.

        `seqs` limits the walk (e.g. to what one plan just added); by default it covers every pending
        message. Windows of `seq` rather than ORDER BY ... LIMIT: both tables grow in seq order, so each
        window reads only its own row groups.
        """
        if seqs is None:
            low, high = self.con.execute(
                "SELECT min(seq), max(seq) FROM ledger WHERE sync = ? AND status = ?", [sync, PENDING]).fetchone()
            if low is None:
                return
            seqs = range(low, high + 1)
        for start in range(seqs.start, seqs.stop, chunk_rows):
            end = min(start + chunk_rows, seqs.stop)
            rows = self.con.execute(
                """
                SELECT m.seq, m.payload FROM planned_messages m
                LEFT JOIN (SELECT seq, arg_max(status, id) AS status FROM outcomes
                           WHERE sync = ? AND seq >= ? AND seq < ? GROUP BY seq) o ON o.seq = m.seq
                WHERE m.sync = ? AND m.seq >= ? AND m.seq < ? AND coalesce(o.status, 'pending') = 'pending'
                ORDER BY m.seq
                """, [sync, start, end, sync, start, end]).fetchall()
            if rows:
                yield rows

    def log_outcomes(self, sync: str, outcomes: Sequence[tuple]) -> None:
        """Append (seq, status, attempts, error) for messages a destination answered for; an AWAITING_ACK
        outcome adds a fifth item, its receipt: (seq, AWAITING_ACK, attempts, None, receipt)."""
        if not outcomes:
            return
        seqs, statuses, attempts, errors, receipts = zip(*((*o, None)[:5] for o in outcomes), strict=True)
        if any(s == AWAITING_ACK and not r for s, r in zip(statuses, receipts, strict=True)):
            raise ValueError("an awaiting_ack outcome needs the receipt to confirm it by")
        self.con.execute(
            "INSERT INTO outcomes (sync, seq, status, attempts, error, logged_at, receipt) "
            "SELECT ?, unnest(?::BIGINT[]), unnest(?::VARCHAR[]), unnest(?::INTEGER[]), unnest(?::VARCHAR[]), ?, "
            "unnest(?::VARCHAR[])",
            [sync, list(seqs), list(statuses), list(attempts), list(errors), _now(), list(receipts)])

    def awaiting_receipts(self, sync: str) -> list[AwaitingReceipt]:
        """Every receipt with messages awaiting ack, oldest first (one row per receipt, not per message)."""
        rows = self.con.execute(
            f"""
            SELECT a.receipt, min(a.logged_at), count(*) FROM outcomes a
            WHERE a.sync = ? AND a.status = '{AWAITING_ACK}'
              AND NOT EXISTS (SELECT 1 FROM outcomes b WHERE b.sync = a.sync AND b.seq = a.seq AND b.id > a.id)
            GROUP BY a.receipt ORDER BY 2, 1
            """, [sync]).fetchall()
        return [AwaitingReceipt(receipt, sent_at, messages) for receipt, sent_at, messages in rows]

    def settle_receipts(self, sync: str, receipts: Sequence[str], status: str, error: str | None = None) -> int:
        """Log `status` (DELIVERED when confirmed, PENDING to send again) for every message still awaiting
        ack under one of `receipts`; returns how many messages that was."""
        if status not in (DELIVERED, PENDING):
            raise ValueError(f"an awaited message settles as delivered or pending, not {status!r}")
        if not receipts:
            return 0
        settled = self.con.execute(
            f"""
            INSERT INTO outcomes (sync, seq, status, attempts, error, logged_at)
            SELECT a.sync, a.seq, ?, 0, ?, ? FROM outcomes a
            WHERE a.sync = ? AND a.status = '{AWAITING_ACK}' AND a.receipt IN (SELECT unnest(?::VARCHAR[]))
              AND NOT EXISTS (SELECT 1 FROM outcomes b WHERE b.sync = a.sync AND b.seq = a.seq AND b.id > a.id)
            RETURNING seq
            """, [status, error, _now(), sync, list(receipts)]).fetchall()
        return len(settled)

    def reject_refused(self, sync: str, refused: Sequence[tuple[int, str]], *, destination: str,
                       run_id: str | None = None) -> None:
        """Record messages `destination` refused, (seq, reason), in the rejected table."""
        if not refused:
            return
        seqs, reasons = zip(*refused, strict=True)
        self.con.execute(
            "INSERT INTO rejected (sync, run_id, record_key, source, reason, record, rejected_at) "
            "SELECT ?, ?, m.record_key, ?, r.reason, m.payload, ? "
            "FROM (SELECT unnest(?::BIGINT[]) AS seq, unnest(?::VARCHAR[]) AS reason) r "
            "JOIN planned_messages m ON m.sync = ? AND m.seq = r.seq",
            [sync, run_id, destination, _now(), list(seqs), list(reasons), sync])

    def counts(self, sync: str) -> LedgerCounts:
        rows = dict(self.con.execute(
            "SELECT status, count(*) FROM ledger WHERE sync = ? GROUP BY status", [sync]).fetchall())
        return LedgerCounts(pending=rows.get(PENDING, 0), delivered=rows.get(DELIVERED, 0),
                            rejected=rows.get(REJECTED, 0), awaiting_ack=rows.get(AWAITING_ACK, 0))

    def rejected_since(self, sync: str, run_id: str, limit: int = 20) -> list[tuple[str | None, str | None, str]]:
        """A sample of (record_key, source, reason) rejected by one run, for run metadata."""
        return self.con.execute(
            "SELECT record_key, source, reason FROM rejected WHERE sync = ? AND run_id = ? "
            "ORDER BY rejected_at LIMIT ?", [sync, run_id, limit]).fetchall()


def _now() -> datetime:
    return datetime.now(UTC)
