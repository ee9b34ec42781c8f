"""The delivery ledger: every message a sync planned, where it stands, its attempts and last error.

An append-only outbox of planned messages and the facts logged about them (outcomes, receipts), whose
tables are registered with the state store (`STATE`). A message's state is its latest outcome; the one
state machine (`MessageState`, `TRANSITIONS`) says which outcome may follow which, and logging enforces it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from types import MappingProxyType

import duckdb

from segment_ops.engine import journal, store


class MessageState(StrEnum):
    """Where a planned message stands. The value is the word stored in `outcomes.status`: files hold
    these words, so a value never changes (a state's name may)."""

    # In the outbox, to be sent: no outcome yet, retries ran out, revived, or reset by a person. Stored as
    # "pending", the word that predates the state's name.
    PLANNED = "pending"
    # Handed to a destination by a run that stopped before its answer was known (issue 16): logged when the
    # run's outcome journal is recovered, then planned again at once, so the ledger says what a destination
    # without dedupe may already hold. (A live delivery notes its batches on the wire in the journal only.)
    IN_FLIGHT = "in_flight"
    # Taken by a destination that confirms later; the outcome's `receipt` is what to ask it with. Neither
    # delivered nor planned: not sent again until `settle_receipts` records the answer.
    AWAITING_ACK = "awaiting_ack"
    # Acknowledged by the destination.
    DELIVERED = "delivered"
    # Read back from the destination after delivery: landed, not only accepted (issue 15).
    VERIFIED = "verified"
    # Refused by the destination, with its reason (also in the `rejected` table): never sent again.
    REJECTED = "rejected"
    # Replaced by a newer plan before it was sent (the row changed again): never sent, unless revived.
    SUPERSEDED = "superseded"
    # Part of a plan waiting for approval (governance: a destructive plan is held until a person approves).
    HELD = "held"
    # About a regulated subject (governance): never sent.
    SUPPRESSED = "suppressed"


_S = MessageState
# Which states may follow which: an outcome whose step is not here is refused by `log_outcomes`. Every
# step the code takes today is here; later issues add behaviour to these states, not new states.
TRANSITIONS: Mapping[MessageState, frozenset[MessageState]] = MappingProxyType({
    # A destination's answer (delivery); planned again with the error when retries ran out; superseded by
    # a newer plan (diff); held or suppressed (governance); handed over (issue 16).
    _S.PLANNED: frozenset({_S.PLANNED, _S.IN_FLIGHT, _S.AWAITING_ACK, _S.DELIVERED, _S.REJECTED,
                           _S.SUPERSEDED, _S.HELD, _S.SUPPRESSED}),
    # The answer, or planned again: retries ran out, or the run died before the answer was recorded.
    _S.IN_FLIGHT: frozenset({_S.AWAITING_ACK, _S.DELIVERED, _S.REJECTED, _S.PLANNED}),
    # Confirmed; or planned again: the destination lost the receipt, or did not confirm in time.
    _S.AWAITING_ACK: frozenset({_S.DELIVERED, _S.PLANNED}),
    _S.DELIVERED: frozenset({_S.VERIFIED}),
    _S.VERIFIED: frozenset(),
    _S.REJECTED: frozenset(),
    # Revived: the row is back to what the message says (same messageId).
    _S.SUPERSEDED: frozenset({_S.PLANNED}),
    # Approved; or replaced by a newer plan while it waited.
    _S.HELD: frozenset({_S.PLANNED, _S.SUPERSEDED}),
    # Lifted (an UNSUPPRESS of its subject): superseded, so the rows decide again what is sent (a diff sync
    # revives it if its row still wants it; a replay sends it again with --force).
    _S.SUPPRESSED: frozenset({_S.SUPERSEDED}),
})
# States no outcome may follow, save a person's reset.
TERMINAL = frozenset(state for state, following in TRANSITIONS.items() if not following)
# A person's reset (`plan_relation(force=True)`, `segment-ops replay --force`) plans a message again from
# any of these, whatever `TRANSITIONS` says. Not from SUPPRESSED: only an UNSUPPRESS lifts that, never a
# person's re-send.
RESETTABLE = frozenset(MessageState) - {_S.SUPPRESSED}

# The stored words, importable as they always were (diff, delivery and the syncs use them).
PENDING, DELIVERED, REJECTED = _S.PLANNED.value, _S.DELIVERED.value, _S.REJECTED.value
AWAITING_ACK, SUPERSEDED, VERIFIED = _S.AWAITING_ACK.value, _S.SUPERSEDED.value, _S.VERIFIED.value
HELD, SUPPRESSED = _S.HELD.value, _S.SUPPRESSED.value


class UnknownStateError(ValueError):
    """An outcome names a state the ledger does not know."""


class IllegalTransitionError(ValueError):
    """An outcome would move a message from its state to one that may not follow it (`TRANSITIONS`)."""

    def __init__(self, sync: str, before: str, after: str, *, seq: int | None = None,
                 message_id: str | None = None, others: int = 0) -> None:
        self.sync, self.before, self.after, self.seq, self.message_id = sync, before, after, seq, message_id
        subject = "a message" if seq is None else f"message {message_id!r} (seq {seq})"
        more = f"; {others} other outcome(s) of the same call are illegal too" if others else ""
        super().__init__(f"sync {sync!r}: {subject} cannot go from {_name(before)} to {_name(after)}{more}; "
                         "nothing of that call was logged")


_STORED = frozenset(state.value for state in MessageState)  # the words `outcomes.status` may hold


def _steps_sql(steps: Mapping[MessageState, frozenset[MessageState]]) -> str:
    """`steps` as SQL rows (before, after), for the anti-join that finds an illegal step."""
    return ", ".join(f"('{before}', '{after}')" for before, following in steps.items() for after in following)


_LEGAL_STEPS = _steps_sql(TRANSITIONS)
_LEGAL_OR_RESET_STEPS = _steps_sql({state: following | ({_S.PLANNED} if state in RESETTABLE else set())
                                    for state, following in TRANSITIONS.items()})

# The latest outcome of each message that has one, defined once for every reader: its status, the
# attempts of all its outcomes, its last error (`arg_max` passes over NULLs), when it was logged, when it
# was delivered, and `last_id` (the outcome's id, to read its other columns such as its receipt). A reader
# filters it by `sync` and a seq range from outside; DuckDB pushes such filters on the grouping columns
# down to the scan of `outcomes`, so only that range's row groups are read. (`arg_max` has PostgreSQL
# equivalents: the SQL stays close to portable, so the state can move there by configuration.)
_LATEST_OUTCOME = """
SELECT sync, seq, arg_max(status, id) AS status, sum(attempts) AS attempts, arg_max(error, id) AS last_error,
       max(id) AS last_id, max(logged_at) AS last_at,
       max(logged_at) FILTER (WHERE status = 'delivered') AS delivered_at
FROM outcomes GROUP BY sync, seq
"""
# The seqs of a sync's pending messages (`$sync`), without aggregating every outcome: those with no outcome
# at all (an anti-join on seq), and those whose latest outcome is `pending` (a reset, retries run out),
# looked for only among the messages that ever had such an outcome.
_PENDING_SEQS = """
SELECT m.seq FROM planned_messages m
WHERE m.sync = $sync AND m.seq NOT IN (SELECT seq FROM outcomes WHERE sync = $sync)
UNION ALL
SELECT seq FROM outcomes
WHERE sync = $sync AND seq IN (SELECT seq FROM outcomes WHERE sync = $sync AND status = 'pending')
GROUP BY seq HAVING arg_max(status, id) = 'pending'
"""


def _seqs_now(state: str) -> str:
    """SQL: the seqs of a sync's messages (`$sync`) whose latest outcome is `state` (held, suppressed), looked
    for only among the messages that ever had such an outcome."""
    return f"""
SELECT seq FROM outcomes
WHERE sync = $sync AND seq IN (SELECT seq FROM outcomes WHERE sync = $sync AND status = '{state}')
GROUP BY seq HAVING arg_max(status, id) = '{state}'
"""


_HELD_SEQS, _SUPPRESSED_SEQS = _seqs_now("held"), _seqs_now("suppressed")


def fingerprint_sql(relation: str) -> str:
    """SQL of (messages, held, fingerprint) of `relation` (message_id, status): the plan guard's
    fingerprint (`engine.guard`), the first 16 hex digits of a sha256 over the sorted messageIds, taken per
    leading two hex digits of the id and then over those 256 digests, so no one string holds every id."""
    return f"""
        SELECT coalesce(sum(n), 0), coalesce(sum(held), 0),
               left(sha256(coalesce(string_agg(digest, '' ORDER BY bucket), '')), 16)
        FROM (SELECT left(message_id, 2) AS bucket, count(*) AS n,
                     count(*) FILTER (WHERE status = 'held') AS held,
                     sha256(string_agg(message_id, chr(10) ORDER BY message_id)) AS digest
              FROM {relation} GROUP BY bucket)
    """


# Messages whose latest outcome is awaiting_ack, with that outcome's receipt and when it was logged.
# (The join on the message as well as the id lets a reader's seq range reach both scans of `outcomes`.)
_AWAITING = f"""
SELECT o.sync, o.seq, a.receipt, a.logged_at
FROM ({_LATEST_OUTCOME}) o JOIN outcomes a ON a.sync = o.sync AND a.seq = o.seq AND a.id = o.last_id
WHERE o.status = 'awaiting_ack'
"""

# One row per send a destination took and confirms later (the open ones are those without a settlement).
_RECEIPTS = """
CREATE TABLE IF NOT EXISTS receipts (
    sync     VARCHAR NOT NULL,
    receipt  VARCHAR NOT NULL,      -- unique per send (the destination makes it so)
    seq_low  BIGINT NOT NULL,       -- the batch's messages lie in [seq_low, seq_high]
    seq_high BIGINT NOT NULL,
    messages INTEGER NOT NULL,
    sent_at  TIMESTAMPTZ NOT NULL,  -- when the request carrying the batch began
    taken_at TIMESTAMPTZ NOT NULL   -- when its answer was recorded
);
"""

# One row per delivered message read back from the destination (issue 15): was it there as sent? A matched
# one also gets the `verified` outcome; a missing or mismatched one stays delivered, and its row here keeps
# it from being sampled again.
_READ_BACKS = """
CREATE TABLE IF NOT EXISTS read_backs (
    sync       VARCHAR NOT NULL,
    seq        BIGINT NOT NULL,
    outcome    VARCHAR NOT NULL,    -- matched | mismatched | missing
    detail     VARCHAR,             -- what differed (JSON), or which profile was missing
    checked_at TIMESTAMPTZ NOT NULL
);
"""

# One row per compaction of a sync's ledger (`Ledger.compact`): when, up to when, how many payloads dropped.
_COMPACTIONS = """
CREATE TABLE IF NOT EXISTS ledger_compactions (
    sync         VARCHAR NOT NULL,
    settled_before TIMESTAMPTZ NOT NULL,  -- payloads of messages settled before this were dropped
    messages     BIGINT NOT NULL,
    compacted_at TIMESTAMPTZ NOT NULL
);
"""

# Per sync, how many messages stood in each state once every outcome up to `through_id` and every message
# planned up to `through_seq` was counted (`Ledger.counts` brings it forward by what was planned and
# answered since, so counting costs what changed, not the ledger's history). A cache: deleting its rows
# only makes the next count read everything once.
_COUNTS = """
CREATE TABLE IF NOT EXISTS ledger_counts (
    sync        VARCHAR NOT NULL,
    through_id  BIGINT NOT NULL,
    through_seq BIGINT NOT NULL,
    status      VARCHAR NOT NULL,
    messages    BIGINT NOT NULL
);
"""
# The change in those counts between (through_id, through_seq) = ($last_id, $last_seq) and
# ($new_id, $new_seq): a message answered since counts -1 in its state then and +1 in its state now; a
# message planned since, +1 in its state now.
_COUNTS_DELTA = """
WITH touched AS (
    SELECT DISTINCT seq FROM outcomes WHERE sync = $sync AND id > $last_id AND id <= $new_id
), now AS (
    SELECT seq, arg_max(status, id) AS status FROM outcomes
    WHERE sync = $sync AND id <= $new_id AND seq IN (SELECT seq FROM touched) GROUP BY seq
), before AS (
    SELECT seq, arg_max(status, id) AS status FROM outcomes
    WHERE sync = $sync AND id <= $last_id AND seq IN (SELECT seq FROM touched) GROUP BY seq
)
SELECT status, sum(d) FROM (
    SELECT coalesce(b.status, 'pending') AS status, -1 AS d
    FROM touched t LEFT JOIN before b ON b.seq = t.seq WHERE t.seq <= $last_seq
    UNION ALL
    SELECT n.status, 1 FROM now n WHERE n.seq <= $last_seq
    UNION ALL
    SELECT coalesce(n.status, 'pending'), 1 FROM planned_messages m LEFT JOIN now n ON n.seq = m.seq
    WHERE m.sync = $sync AND m.seq > $last_seq AND m.seq <= $new_seq
) GROUP BY status
"""

# Append-only tables and a view. Nothing is ever updated in place, which is what DuckDB is fast at and
# what makes a crash harmless: what a run killed at any point had not yet written here is in its outcome
# journal (`engine/journal.py`), logged by `Ledger.recover` before anything reads the ledger again; only
# the batches it had on the wire are sent again, with the same messageIds (ARCHITECTURE rules 1-4, 6).
_CREATE = f"""
-- The outbox: planning inserts each new message once (same messageId, same row).
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
-- Facts: one row per step of a message's state (`TRANSITIONS`): a destination answered for it (delivered,
-- rejected, awaiting confirmation, or still pending after retries ran out), a person reset it (`force`),
-- a newer plan superseded it. The latest (highest id) is the message's state.
CREATE TABLE IF NOT EXISTS outcomes (
    id        BIGINT NOT NULL DEFAULT nextval('outcome_order'),
    sync      VARCHAR NOT NULL,
    seq       BIGINT NOT NULL,
    status    VARCHAR NOT NULL,
    attempts  INTEGER NOT NULL,
    error     VARCHAR,
    logged_at TIMESTAMPTZ NOT NULL,
    receipt   VARCHAR              -- awaiting_ack only: the receipt of the send that took it
);
{_RECEIPTS}
-- One row per receipt settled. Open receipts are `receipts` minus this: two small tables, never a scan
-- of `outcomes`.
CREATE TABLE IF NOT EXISTS receipt_settlements (
    sync       VARCHAR NOT NULL,
    receipt    VARCHAR NOT NULL,
    status     VARCHAR NOT NULL,     -- delivered (confirmed) or pending (re-opened, to be sent again)
    error      VARCHAR,
    settled_at TIMESTAMPTZ NOT NULL
);
-- Rows that could not become a call, and messages a destination refused, with the reason.
CREATE TABLE IF NOT EXISTS rejected (
    sync        VARCHAR NOT NULL,
    run_id      VARCHAR,
    record_key  VARCHAR,
    source      VARCHAR,
    reason      VARCHAR NOT NULL,
    record      VARCHAR,
    rejected_at TIMESTAMPTZ NOT NULL
);
{_READ_BACKS}
{_COMPACTIONS}
{_COUNTS}
-- Each planned message with its status (latest outcome, else pending), attempts, last error and
-- delivery time.
CREATE VIEW IF NOT EXISTS ledger AS
SELECT m.sync, m.seq, m.message_id, m.record_key, m.call_type, m.payload,
       coalesce(o.status, 'pending') AS status,
       coalesce(o.attempts, 0) AS attempts,
       o.last_error,
       CASE WHEN o.status IN ('delivered', 'verified') THEN o.delivered_at END AS delivered_at,
       m.planned_run, m.planned_at
FROM planned_messages m LEFT JOIN ({_LATEST_OUTCOME}) o ON o.sync = m.sync AND o.seq = m.seq;
"""

# Version 1: files made before versions were recorded (some before the receipt column). Version 2 adds
# the receipt column, fills `receipts` once from the awaiting outcomes of a file made before that table
# (the only full scan, at migration; a receipt already there is not added twice), and drops the view,
# which `create` makes again from this release's SQL.
_TO_VERSION_2 = f"""
ALTER TABLE outcomes ADD COLUMN IF NOT EXISTS receipt VARCHAR;
{_RECEIPTS}
INSERT INTO receipts
SELECT w.sync, w.receipt, min(w.seq), max(w.seq), count(*), min(w.logged_at), min(w.logged_at)
FROM ({_AWAITING}) w
WHERE w.receipt IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM receipts r WHERE r.sync = w.sync AND r.receipt = w.receipt)
GROUP BY w.sync, w.receipt;
DROP VIEW IF EXISTS ledger;
"""

# What erasure (`engine/erasure.py`: a DELETE regulation) leaves of a message about an erased data subject,
# the one sanctioned rewrite of the outbox besides compaction: a compacted payload (COMPACTED + "erased")
# without even the digest of its body, so every reader that skips compacted payloads skips it, a forced
# re-send cannot take its body back (`plan_relation` restores only a payload whose digest matches: it rejects
# this one instead), and nothing can send it. Its id, seq, call type and outcomes stay (never planned twice,
# every count as it was); its key only when it does not name the subject.
ERASED = "compacted:erased"
_ERASE = f"""
-- The messages about an erased subject: keyed by it, or naming it as a JSON string (found as text, no JSON
-- parsed).
CREATE OR REPLACE TEMP TABLE erasing_messages AS
SELECT sync, seq FROM planned_messages
WHERE payload <> '{ERASED}' AND (erased_id(record_key) OR erased_in(payload));
UPDATE planned_messages p SET payload = '{ERASED}', record_key = erased_key(p.record_key)
FROM erasing_messages e WHERE p.sync = e.sync AND p.seq = e.seq;
-- A destination's words about one of them (e.g. 'userId ... is invalid'), without the subject.
UPDATE outcomes o SET error = erased_text(o.error)
FROM erasing_messages e WHERE o.sync = e.sync AND o.seq = e.seq AND names_erased(o.error);
-- What a read-back found different (trait values as Segment holds them).
UPDATE read_backs r SET detail = NULL
FROM erasing_messages e WHERE r.sync = e.sync AND r.seq = e.seq AND r.detail IS NOT NULL;
-- Rows refused about the subject keep their reason (without the subject), source, run and time.
UPDATE rejected SET record = '{ERASED}', record_key = erased_key(record_key), reason = erased_text(reason)
WHERE erased_id(record_key) OR erased_in(record);
DROP TABLE erasing_messages;
-- Every erased message of the file (of this erasure or an earlier one) with where it stands: the other
-- schemas' erasure finds their rows about one by its id, and erasure suppresses those that could still be
-- sent (`engine/erasure.py`).
CREATE OR REPLACE TEMP TABLE erased_messages AS
WITH erased AS (SELECT sync, seq, message_id FROM planned_messages WHERE payload = '{ERASED}'),
latest AS (SELECT o.sync, o.seq, arg_max(o.status, o.id) AS status
           FROM outcomes o JOIN erased e ON o.sync = e.sync AND o.seq = e.seq GROUP BY o.sync, o.seq)
SELECT e.sync, e.seq, e.message_id, coalesce(l.status, '{_S.PLANNED.value}') AS status
FROM erased e LEFT JOIN latest l ON l.sync = e.sync AND l.seq = e.seq;
"""

# Version 3 adds `read_backs` (read-back verification, issue 15); version 4 `ledger_compactions` (issue 17).
STATE = store.register(store.StateSchema(
    name="ledger", version=5, create=_CREATE,
    migrations={1: _TO_VERSION_2, 2: _READ_BACKS, 3: _COMPACTIONS, 4: _COUNTS},
    tables=("planned_messages", "outcome_order", "outcomes", "receipts", "receipt_settlements", "rejected",
            "read_backs", "ledger_compactions", "ledger_counts", "ledger"),
    append_only=("planned_messages", "outcomes"), erase=_ERASE))

# A compacted message's payload (`Ledger.compact`) starts with this, followed by the MD5 of the body it
# replaced: settled long ago, the body is no longer kept, but a forced re-send can tell whether its input
# is still that body. (No payload starts so: every one is a JSON object.)
COMPACTED = "compacted:"


def _compacted(column: str = "payload") -> str:
    """SQL: the payload in `column` was compacted."""
    return f"starts_with({column}, '{COMPACTED}')"
def _user_id(column: str) -> str:
    """SQL: the call's top-level `userId` in the payload `column` (NULL for a compacted or erased payload,
    which is not JSON, and is never parsed: SQL may evaluate a filter after the expressions it guards)."""
    return f"CASE WHEN {_compacted(column)} THEN NULL ELSE json_extract_string({column}, '$.userId') END"


# Settled states whose payloads compaction drops: never sent again unless a person forces it, and then the
# payload comes back from the input (`plan_relation`).
_COMPACTABLE = (_S.DELIVERED.value, _S.VERIFIED.value, _S.REJECTED.value)
RETENTION_SETTING = "LEDGER_RETENTION_DAYS"
DEFAULT_RETENTION_DAYS = 90
COMPACTION_INTERVAL = timedelta(days=1)
COMPACTION_WINDOW = 2_000  # messages a compaction rewrites per transaction (at most 32 KB each: 64 MB)


class CompactedPayloadError(RuntimeError):
    """A message to send lost its payload to compaction, and nothing brought it back."""


def retention() -> timedelta | None:
    """LEDGER_RETENTION_DAYS (90 when unset; 0: payloads are kept for ever), or a `ValueError` naming it."""
    raw = (os.environ.get(RETENTION_SETTING) or str(DEFAULT_RETENTION_DAYS)).strip()
    if not raw.isdigit() or int(raw) > 36_500:
        raise ValueError(f"{RETENTION_SETTING} must be a whole number of days from 0 to 36500, not {raw!r}")
    return timedelta(days=int(raw)) if int(raw) else None


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
    receipt: str  # what the destination answered one send with, to confirm it by (unique per send)
    taken_at: datetime  # when the destination's answer was recorded (timeouts count from here)
    messages: int
    sent_at: datetime | None = None  # when the request began (None: not known, a file of an older layout)


@dataclass(frozen=True)
class MessageCounts:
    """Where a set of messages stands (e.g. one hour of audit events): each message in one state, each
    state under its stored word (zero for the states nothing produces yet)."""

    total: int = 0
    unplanned: int = 0  # in the set, never planned for this sync
    pending: int = 0  # planned, to be sent
    delivered: int = 0
    rejected: int = 0
    awaiting_ack: int = 0
    superseded: int = 0
    in_flight: int = 0
    verified: int = 0
    held: int = 0
    suppressed: int = 0

    @property
    def settled(self) -> bool:
        """Every message planned and at its end (delivered, verified, rejected, superseded or suppressed):
        nothing planned, in flight, awaiting, held or unplanned."""
        return self.total == (self.delivered + self.verified + self.rejected + self.superseded
                              + self.suppressed)


@dataclass(frozen=True)
class SyncFigures:
    """One sync's delivery figures over a health window (`Ledger.delivery_figures`)."""

    sync: str
    delivered: int
    rejected: int
    failed: int
    read_back: int = 0  # delivered messages read back from the destination in the window (a sample)
    verified: int = 0  # of those, found as sent: landed, not only accepted
    missing: int = 0  # of those, not found at all (the destination dropped them)


# What reading a delivered message back from its destination found (`Ledger.record_read_backs`).
MATCHED, MISMATCHED, MISSING = "matched", "mismatched", "missing"
READ_BACK_OUTCOMES = (MATCHED, MISMATCHED, MISSING)


@dataclass(frozen=True)
class ReadBackCandidate:
    """A delivered message drawn for read-back (`Ledger.read_back_sample`)."""

    seq: int
    message_id: str
    record_key: str | None
    payload: str
    planned_run: str | None
    delivered_at: datetime


@dataclass(frozen=True)
class ReadBackSample:
    messages: list[ReadBackCandidate]
    runs: int  # runs the messages were planned by
    runs_waiting: int  # further runs with messages due for read-back: later evaluations draw from them
    too_recent: int  # delivered, never read back, but less than the delay ago: a later evaluation's


@dataclass(frozen=True)
class ReadBack:
    """What reading one delivered message back found: MATCHED (it becomes verified), MISMATCHED or MISSING."""

    seq: int
    outcome: str
    detail: str | None = None


@dataclass(frozen=True)
class LedgerCounts:
    """How many of a sync's messages stand in each state (`Ledger.counts`), each under its stored word,
    zero for the states nothing produces yet: run metadata shows them all."""

    pending: int  # planned, to be sent
    delivered: int
    rejected: int
    awaiting_ack: int = 0  # taken by the destination, not yet confirmed: not delivered, not sent again
    in_flight: int = 0
    verified: int = 0
    superseded: int = 0
    held: int = 0
    suppressed: int = 0


@dataclass
class Recovered:
    """What `Ledger.recover` found in the outcome journal(s) a stopped delivery of one sync left."""

    outcomes: int = 0  # answers the destination had given, now logged
    in_flight: int = 0  # handed over without a known answer: logged in flight, then planned again
    skipped: int = 0  # already logged (the run stopped after writing the ledger) or not a legal step now
    torn: int = 0  # journals whose last line was cut short by the stop (read up to the line before it)


@dataclass(frozen=True)
class SyncActivity:
    """The latest thing the ledger knows of a sync (`Ledger.activity`): a message planned, an answer
    recorded or a row rejected, and the run id of the latest planning or rejection (answers carry none)."""

    at: datetime | None
    run_id: str | None


@dataclass(frozen=True)
class RejectedRow:
    """Rows refused the same way, one per (sync, source, record key, reason) (`Ledger.rejected_rows`):
    when last, by which run and with which record, how many times, and whether a destination refused it."""

    sync: str
    rejected_at: datetime  # the newest time it was refused
    source: str | None  # file:line, model, or the destination
    record_key: str | None
    reason: str
    run_id: str | None  # the newest refusal's
    record: str | None  # as stored (redacted where the sync redacts)
    times: int
    by_destination: bool  # a message a destination refused, not an input row refused before sending


class Ledger:
    """The ledger tables of one staging connection.

    `Ledger(con)` (writable) first logs what journals of stopped deliveries of the file hold (`recover`);
    `create=False` (a read-only connection, or a cursor) reads the tables as they are.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, *, create: bool = True) -> None:
        self.con = con
        self.recovered: dict[str, Recovered] = {}  # per sync, until a delivery takes it into its report
        if create:
            store.ensure(con, STATE)
            self.recover()

    def journal(self, sync: str, *, destination: str, run_id: str | None,
                fsync: bool = False) -> journal.Journal | None:
        """A new outcome journal for one delivery of `sync` beside the staging file (None: the ledger is in
        memory, where a crash loses everything anyway). Outcome ids logged from here on are above its mark."""
        staging = journal.staging_path(self.con)
        if staging is None:
            return None
        mark = self.con.execute("SELECT nextval('outcome_order')").fetchone()[0]
        return journal.Journal(journal.journal_path(staging, sync), sync=sync, mark=mark,
                               destination=destination, run_id=run_id, fsync=fsync)

    def recover(self, sync: str | None = None) -> None:
        """Log what the outcome journals left by stopped deliveries hold (of `sync`, or of every sync of the
        file), then remove them; a journal a delivery of this process is writing is left alone.

        Idempotent: a message with an outcome logged after its journal began (the stopped run's own ledger
        write, or anything later) is skipped, and so is an outcome `TRANSITIONS` does not allow from the
        message's state; the rest is logged in one transaction, so a stop during recovery leaves the journal
        to be recovered again. Counts go to `recovered`.
        """
        staging = journal.staging_path(self.con)
        if staging is None:
            return
        for path in journal.leftovers(staging):
            replayed = journal.read(path)
            if replayed is not None and (sync is None or replayed.sync == sync):
                found = self._replay(replayed)
                total = self.recovered.setdefault(replayed.sync, Recovered())
                total.outcomes += found.outcomes
                total.in_flight += found.in_flight
                total.skipped += found.skipped
                total.torn += found.torn
            if replayed is None or sync is None or replayed.sync == sync:
                path.unlink(missing_ok=True)

    def _replay(self, replayed: journal.Replayed) -> Recovered:
        sync, found = replayed.sync, Recovered(torn=int(replayed.torn))
        seqs = [o[0] for o in replayed.outcomes] + replayed.unanswered
        if not seqs:
            return found
        # Each message's state now, and whether it was logged after the journal began.
        state = {seq: (status, last_id > replayed.mark) for seq, status, last_id in self.con.execute(
            f"SELECT seq, status, last_id FROM ({_LATEST_OUTCOME}) WHERE sync = ? AND seq BETWEEN ? AND ? "
            "AND seq IN (SELECT unnest(?::BIGINT[]))", [sync, min(seqs), max(seqs), seqs]).fetchall()}

        def legal(seq: int, step: MessageState) -> bool:
            status, logged_since = state.get(seq, (PENDING, False))
            return not logged_since and status in _STORED and step in TRANSITIONS[MessageState(status)]

        outcomes = [o for o in replayed.outcomes if legal(o[0], MessageState(o[1]))]
        handed = [seq for seq in dict.fromkeys(replayed.unanswered) if legal(seq, MessageState.IN_FLIGHT)]
        found.outcomes, found.in_flight = len(outcomes), len(handed)
        found.skipped = len(seqs) - len(outcomes) - len(handed)
        if not outcomes and not handed:
            return found
        again = (f"handed to {replayed.destination} by a run that stopped before its answer was known "
                 f"(run {replayed.run_id}): sent again")
        refused = [(seq, error) for seq, status, _, error, *_ in outcomes if status == REJECTED]
        con = self.con
        con.execute("BEGIN")
        try:
            mark = con.execute("SELECT nextval('outcome_order')").fetchone()[0]
            self._append_outcomes(sync, outcomes)
            self._append_outcomes(sync, [(seq, MessageState.IN_FLIGHT.value, 1, None) for seq in handed])
            self._append_outcomes(sync, [(seq, PENDING, 0, again) for seq in handed])
            self._check_steps(sync, mark, (min(seqs), max(seqs)), _LEGAL_STEPS)
            self.reject_refused(sync, refused, destination=replayed.destination, run_id=replayed.run_id)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return found

    def _has_table(self, name: str) -> bool:
        return bool(self.con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'main' AND table_name = ?",
            [name]).fetchone()[0])

    def _read_backs(self) -> str:
        """The read-backs table, or an empty stand-in in a file of an older layout (read, not migrated)."""
        if self._has_table("read_backs"):
            return "read_backs"
        return ("(SELECT NULL::VARCHAR AS sync, NULL::BIGINT AS seq, NULL::VARCHAR AS outcome, "
                "NULL::TIMESTAMPTZ AS checked_at WHERE false)")

    def add_planned(self, sync: str, messages: Sequence[PlannedMessage], *, run_id: str | None = None,
                    force: bool = False) -> PlanCounts:
        """Record messages built in Python as pending (see `plan_relation`)."""
        if not messages:
            return PlanCounts(0, 0, 0, 0)
        self.con.execute(
            "CREATE OR REPLACE TEMP TABLE incoming_messages AS SELECT unnest(?::VARCHAR[]) AS message_id, "
            "unnest(?::VARCHAR[]) AS record_key, unnest(?::VARCHAR[]) AS call_type, "
            "unnest(?::VARCHAR[]) AS payload, unnest(range(?)) AS ord",
            [[m.message_id for m in messages], [m.record_key for m in messages],
             [m.call_type for m in messages], [m.payload.decode() for m in messages], len(messages)])
        try:
            return self.plan_relation(sync, "incoming_messages", run_id=run_id, force=force)
        finally:
            self.con.execute("DROP TABLE incoming_messages")

    def plan_relation(self, sync: str, relation: str, *, run_id: str | None = None,
                      force: bool = False) -> PlanCounts:
        """Record the rows of `relation` (message_id, record_key, call_type, payload, ord) as pending.

        A messageId already planned is left alone, so planning the same change twice sends it once;
        `force` puts it back to pending instead (from any state in `RESETTABLE`). Duplicates within
        `relation` are planned once, in the order of their first `ord`.
        """
        con = self.con
        lost: list[int] = []
        kept = 0  # forced, but suppressed: left as it is
        con.execute("BEGIN")
        try:
            # Only (message_id, ord) take part in the dedupe and the lookup, so no hash table or sort
            # ever carries payloads: memory stays flat however large the plan. The lookup is a semi-join
            # built on the plan's ids and probed by the ledger's, never a hash table of the whole ledger.
            con.execute(
                f"""
                CREATE OR REPLACE TEMP TABLE plan_ids AS
                SELECT message_id, min(ord) AS first_ord, count(*) AS copies, false AS known
                FROM {relation} AS i GROUP BY message_id
                """)
            con.execute(
                """
                UPDATE plan_ids SET known = true WHERE message_id IN (
                    SELECT p.message_id FROM planned_messages p
                    WHERE p.sync = ? AND p.message_id IN (SELECT message_id FROM plan_ids))
                """, [sync])
            total, distinct, known = con.execute(
                "SELECT coalesce(sum(copies), 0), count(*), count(*) FILTER (WHERE known) FROM plan_ids"
            ).fetchone()
            if force and known:  # a person's reset: a step from any state in RESETTABLE
                mark = con.execute("SELECT nextval('outcome_order')").fetchone()[0]
                # A suppressed message stays so: a regulation, not a person, decides when it may go.
                con.execute(
                    f"INSERT INTO outcomes (sync, seq, status, attempts, error, logged_at) "
                    f"SELECT $sync, p.seq, '{PENDING}', 0, NULL, $now FROM planned_messages p "
                    f"JOIN plan_ids i ON p.sync = $sync AND p.message_id = i.message_id AND i.known "
                    f"WHERE p.seq NOT IN ({_SUPPRESSED_SEQS})",
                    {"sync": sync, "now": _now()})
                reset = con.execute("SELECT min(seq), max(seq), count(*) FROM outcomes "
                                    "WHERE sync = ? AND id > ?", [sync, mark]).fetchone()
                kept, reset = known - reset[2], reset[:2]
                self._check_steps(sync, mark, reset, _LEGAL_OR_RESET_STEPS)
                # A compacted message sent again takes its payload back from the input (the same messageId:
                # the same call).
                store.rewritten(con, "planned_messages")
                con.execute(
                    f"""
                    UPDATE planned_messages p SET payload = r.payload
                    FROM {relation} AS r
                    JOIN plan_ids i ON i.message_id = r.message_id AND i.first_ord = r.ord
                    WHERE p.sync = ? AND p.message_id = r.message_id AND p.payload = ? || md5(r.payload)
                    """, [sync, COMPACTED])
                lost = [row[0] for row in con.execute(
                    f"SELECT p.seq FROM planned_messages p JOIN plan_ids i ON i.message_id = p.message_id "
                    f"AND i.known WHERE p.sync = $sync AND {_compacted('p.payload')} "
                    f"AND p.seq NOT IN ({_SUPPRESSED_SEQS})",  # left suppressed, not sent: nothing is lost
                    {"sync": sync}).fetchall()]
            # seq keeps the input's order: the next free number plus the row's position in the input.
            seq0 = con.execute("SELECT coalesce(max(seq), 0) + 1 FROM planned_messages WHERE sync = ?",
                               [sync]).fetchone()[0]
            base, top = con.execute(
                f"SELECT coalesce(min(ord), 0), coalesce(max(ord), -1) FROM {relation}").fetchone()
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
        if lost:  # forced, compacted, and the input is no longer what was sent under that messageId
            reason = (f"this messageId was sent long ago with other content, which {RETENTION_SETTING} no "
                      "longer keeps: give the changed call a new messageId to send it")
            self.log_outcomes(sync, [(seq, REJECTED, 0, reason) for seq in lost])
            self._refuse(sync, [(seq, reason) for seq in lost], source="ledger", run_id=run_id)
        planned = (distinct - kept if force else distinct - known) - len(lost)
        return PlanCounts(planned=planned, already_known=kept if force else known,
                          duplicates_in_input=total - distinct, rejected=len(lost),
                          seqs=range(seq0, seq0 + top - base + 1))

    def ever_planned(self, sync: str) -> int:
        """How many messages the ledger ever planned for `sync`, in whatever state now: settled and compacted
        ones too (compaction keeps every message's row, dropping only its payload)."""
        return self.con.execute("SELECT count(*) FROM planned_messages WHERE sync = ?", [sync]).fetchone()[0]

    def count_known(self, sync: str, messages: Sequence[PlannedMessage]) -> PlanCounts:
        """What `add_planned` would count, without writing anything (for dry runs)."""
        ids = [m.message_id for m in messages]
        distinct, known = self.con.execute(
            "SELECT count(*), count(*) FILTER (WHERE EXISTS (SELECT 1 FROM planned_messages p "
            "WHERE p.sync = ? AND p.message_id = i.id)) FROM (SELECT DISTINCT unnest(?::VARCHAR[]) AS id) i",
            [sync, ids]).fetchone()
        return PlanCounts(planned=distinct - known, already_known=known,
                          duplicates_in_input=len(ids) - distinct, rejected=0)

    def add_rejections(self, sync: str, rejections: Sequence[Rejection], *,
                       run_id: str | None = None) -> None:
        """Keep rows that could not become a call, with their reason."""
        if not rejections:
            return
        self.con.executemany(
            "INSERT INTO rejected (sync, run_id, record_key, source, reason, record, rejected_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(sync, run_id, r.record_key, r.source, r.reason, r.record, _now()) for r in rejections],
        )

    def add_new_rejections(self, sync: str, rejections: Sequence[Rejection], *,
                           run_id: str | None = None) -> list[Rejection]:
        """Keep those of `rejections` that `sync` does not hold yet, by (source, record key, reason), and
        return them: input read again by every run (a bad row of a query, a file left in an inbox) is kept,
        and can be alerted, once."""
        held = set(self.con.execute("SELECT source, record_key, reason FROM rejected WHERE sync = ?",
                                    [sync]).fetchall())
        new: list[Rejection] = []
        for rejection in rejections:
            key = (rejection.source, rejection.record_key, rejection.reason)
            if key not in held:
                held.add(key)
                new.append(rejection)
        self.add_rejections(sync, new, run_id=run_id)
        return new

    def reject_relation(self, sync: str, relation: str, *, run_id: str | None = None,
                        once_per_reason: bool = False) -> int:
        """Keep the rows of `relation` (record_key, source, reason, record) in the rejected table; returns how
        many were kept. `once_per_reason` skips a key already rejected for the same reason (a row that every
        run would reject again, e.g. an unresolvable identity, is then kept once, not once per run)."""
        new = (" AS n WHERE NOT EXISTS (SELECT 1 FROM rejected r WHERE r.sync = $sync "
               "AND r.record_key IS NOT DISTINCT FROM n.record_key "
               "AND r.reason IS NOT DISTINCT FROM n.reason)" if once_per_reason else "")
        kept = self.con.execute(
            f"INSERT INTO rejected (sync, run_id, record_key, source, reason, record, rejected_at) "
            f"SELECT $sync, $run_id, record_key, source, reason, record, $now FROM {relation}{new}",
            {"sync": sync, "run_id": run_id, "now": _now()}).fetchone()
        return kept[0] if kept else 0

    def iter_pending(self, sync: str, chunk_rows: int = 20_000,
                     seqs: range | None = None) -> Iterator[list[tuple[int, str]]]:
        """Pending (seq, payload) in planning order, a window of `seq` at a time; payloads hold their
        messageId.

        `seqs` limits the walk (e.g. to what one plan just added); by default it covers every pending
        message. Windows of `seq` rather than ORDER BY ... LIMIT: both tables grow in seq order, so each
        window reads only its own row groups.
        """
        if seqs is None:
            low, high = self.con.execute(f"SELECT min(seq), max(seq) FROM ({_PENDING_SEQS})",
                                         {"sync": sync}).fetchone()
            if low is None:
                return
            seqs = range(low, high + 1)
        for start in range(seqs.start, seqs.stop, chunk_rows):
            end = min(start + chunk_rows, seqs.stop)
            rows = self.con.execute(
                f"""
                SELECT m.seq, m.payload FROM planned_messages m
                LEFT JOIN (SELECT seq, status FROM ({_LATEST_OUTCOME})
                           WHERE sync = ? AND seq >= ? AND seq < ?) o ON o.seq = m.seq
                WHERE m.sync = ? AND m.seq >= ? AND m.seq < ? AND coalesce(o.status, 'pending') = 'pending'
                ORDER BY m.seq
                """, [sync, start, end, sync, start, end]).fetchall()
            if lost := [seq for seq, payload in rows if payload.startswith(COMPACTED)]:
                raise CompactedPayloadError(
                    f"sync {sync!r}: {len(lost)} pending message(s) (first seq {lost[0]}) lost their payload "
                    f"to compaction ({RETENTION_SETTING}); plan them again from their input with force")
            if rows:
                yield rows

    def plan_digest(self, sync: str) -> tuple[int, int, str]:
        """(messages, held, fingerprint) of what a delivery of `sync` would send once its held messages are
        approved: its planned and held messages (`fingerprint_sql`)."""
        return self.con.execute(
            f"""
            WITH ids AS (
                SELECT m.message_id, 'pending' AS status FROM planned_messages m
                WHERE m.sync = $sync AND m.seq IN ({_PENDING_SEQS})
                UNION ALL
                SELECT m.message_id, 'held' FROM planned_messages m
                WHERE m.sync = $sync AND m.seq IN ({_HELD_SEQS}))
            {fingerprint_sql("ids")}
            """, {"sync": sync}).fetchone()

    def hold_planned(self, sync: str, reason: str) -> int:
        """Hold every planned message of `sync` (planned -> held, with `reason`): the delivery does not send
        them until `release_held`. Returns how many."""
        seqs = [row[0] for row in self.con.execute(_PENDING_SEQS, {"sync": sync}).fetchall()]
        self.log_outcomes(sync, [(seq, HELD, 0, reason) for seq in seqs])
        return len(seqs)

    def release_held(self, sync: str, reason: str) -> int:
        """Plan every held message of `sync` again (held -> planned, with `reason`: an approval). Returns how
        many."""
        seqs = [row[0] for row in self.con.execute(_HELD_SEQS, {"sync": sync}).fetchall()]
        self.log_outcomes(sync, [(seq, PENDING, 0, reason) for seq in seqs])
        return len(seqs)

    def suppress_planned(self, sync: str, regulated: str) -> list[tuple[int, str]]:
        """Suppress every planned message of `sync` about a regulated subject: the sha256 of its `userId` is a
        `subject_hash` of the relation `regulated` (subject_hash, reason); the outcome's error is that row's
        `reason`. Returns the (seq, userId) of each. Reads only the planned messages' payloads (the change,
        not the history), and parses only those that name a userId at all."""
        rows = self.con.execute(
            f"""
            WITH named AS (
                SELECT m.seq, {_user_id('m.payload')} AS user_id FROM planned_messages m
                WHERE m.sync = $sync AND m.seq IN ({_PENDING_SEQS}) AND contains(m.payload, '"userId"')
            )
            SELECT n.seq, n.user_id, r.reason FROM named n
            JOIN {regulated} r ON r.subject_hash = sha256(n.user_id) ORDER BY n.seq
            """, {"sync": sync}).fetchall()
        self.log_outcomes(sync, [(seq, SUPPRESSED, 0, reason) for seq, _, reason in rows])
        return [(seq, user_id) for seq, user_id, _ in rows]

    def lift_suppressed(self, sync: str, lifted: str, reason: str) -> list[tuple[str, int]]:
        """Supersede every suppressed message of `sync` whose subject (the sha256 of its `userId`) is a
        `subject_hash` of the relation `lifted`: an UNSUPPRESS lifted its suppression. Returns the
        (message_id, seq) of each, for a diff to revive the ones its rows still want."""
        rows = self.con.execute(
            f"""
            SELECT m.message_id, m.seq FROM planned_messages m
            WHERE m.sync = $sync AND m.seq IN ({_SUPPRESSED_SEQS})
              AND sha256({_user_id('m.payload')}) IN (SELECT subject_hash FROM {lifted})
            ORDER BY m.seq
            """, {"sync": sync}).fetchall()
        self.log_outcomes(sync, [(seq, SUPERSEDED, 0, reason) for _, seq in rows])
        return rows

    def payloads_of(self, sync: str, relation: str, into: str) -> None:
        """Create the temp table `into` (message_id, payload): the payload of each message_id of `relation`
        planned for `sync`, where compaction kept it (a compacted or unknown id, e.g. a baseline's, has no
        row)."""
        self.con.execute(
            f"CREATE OR REPLACE TEMP TABLE {into} AS SELECT p.message_id, p.payload FROM planned_messages p "
            f"WHERE p.sync = ? AND p.message_id IN (SELECT message_id FROM {relation}) "
            f"AND NOT {_compacted('p.payload')}", [sync])

    def log_outcomes(self, sync: str, outcomes: Sequence[tuple]) -> None:
        """Append (seq, status, attempts, error) for messages a destination answered for. An AWAITING_ACK
        outcome adds its receipt and, optionally, when its request began:
        (seq, AWAITING_ACK, attempts, None, receipt[, sent_at]); each receipt is recorded once.

        All or nothing: a state the ledger does not know (`UnknownStateError`), or a step `TRANSITIONS`
        does not allow (`IllegalTransitionError`), and nothing of the call is logged.
        """
        if not outcomes:
            return
        con = self.con
        con.execute("BEGIN")
        try:
            mark = con.execute("SELECT nextval('outcome_order')").fetchone()[0]
            seqs = self._append_outcomes(sync, outcomes)
            self._check_steps(sync, mark, (min(seqs), max(seqs)), _LEGAL_STEPS)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    def _append_outcomes(self, sync: str, outcomes: Sequence[tuple]) -> Sequence[int]:
        """Insert `outcomes` (see `log_outcomes`) and their receipts, in the caller's transaction, unchecked;
        returns their seqs."""
        if not outcomes:
            return ()
        rows = [(*o, None, None)[:6] for o in outcomes]
        seqs, statuses, attempts, errors, receipts, sent = zip(*rows, strict=True)
        _refuse_unknown(sync, set(statuses))
        now = _now()
        taken: dict[str, list] = {}
        if AWAITING_ACK in statuses:
            if any(s == AWAITING_ACK and not r for s, r in zip(statuses, receipts, strict=True)):
                raise ValueError("an awaiting_ack outcome needs the receipt to confirm it by")
            for seq, status, _, _, receipt, sent_at in rows:
                if status == AWAITING_ACK:
                    low, high, count, began = taken.get(receipt, (seq, seq, 0, sent_at))
                    taken[receipt] = [min(low, seq), max(high, seq), count + 1, began or sent_at]
        # Handing lists to DuckDB is most of this call's cost, so a column holding one value only (the
        # status and attempts of the messages of delivered batches, their errors and receipts: None) is
        # handed over once, as a constant, instead of as a list.
        columns, values = [], [sync, list(seqs), now]
        typed = ((statuses, "VARCHAR"), (attempts, "INTEGER"), (errors, "VARCHAR"), (receipts, "VARCHAR"))
        for column, sql_type in typed:
            constant = column.count(column[0]) == len(column)
            columns.append(f"?::{sql_type}" if constant else f"unnest(?::{sql_type}[])")
            values.append(column[0] if constant else list(column))
        self.con.execute(
            "INSERT INTO outcomes (sync, seq, logged_at, status, attempts, error, receipt) "
            "SELECT ?, unnest(?::BIGINT[]), ?, " + ", ".join(columns), values)
        if taken:
            self.con.executemany(
                "INSERT INTO receipts VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(sync, receipt, low, high, count, began or now, now)
                 for receipt, (low, high, count, began) in taken.items()])
        return seqs

    def _check_steps(self, sync: str, mark: int, seqs: tuple[int, int], steps: str) -> None:
        """Raise `IllegalTransitionError` unless every outcome of `sync` this transaction logged (id above
        `mark`, about messages in the `seqs` range) takes its message one of `steps` (SQL rows).

        Checked after the insert, so the outcomes cross from Python to DuckDB once: one query over the
        outcomes of those messages, each outcome's step being (the outcome before it, else planned) -> it,
        so several outcomes of one message in one call are checked in order. The caller rolls back.
        """
        illegal = self.con.execute(
            f"""
            WITH logged AS (
                SELECT seq, id, status AS after,
                       coalesce(lag(status) OVER (PARTITION BY seq ORDER BY id), '{PENDING}') AS before
                FROM outcomes WHERE sync = $sync AND seq BETWEEN $low AND $high
                  AND seq IN (SELECT seq FROM outcomes WHERE sync = $sync AND id > $mark)),
            legal (before, after) AS (VALUES {steps})
            SELECT seq, before, after, count(*) OVER () FROM logged s
            WHERE id > $mark
              AND NOT EXISTS (SELECT 1 FROM legal l WHERE l.before = s.before AND l.after = s.after)
            ORDER BY id LIMIT 1
            """, {"sync": sync, "mark": mark, "low": seqs[0], "high": seqs[1]}).fetchone()
        if illegal is not None:
            seq, before, after, count = illegal
            planned = self.con.execute("SELECT message_id FROM planned_messages WHERE sync = ? AND seq = ?",
                                       [sync, seq]).fetchone()
            raise IllegalTransitionError(sync, before, after, seq=seq, message_id=planned and planned[0],
                                         others=count - 1)

    def awaiting_receipts(self, sync: str) -> list[AwaitingReceipt]:
        """Every open receipt (sent, not settled), oldest first: one row per send, not per message."""
        if not self._has_table("receipts"):  # a file of an older layout, read without migrating it
            rows = self.con.execute(
                f"SELECT receipt, min(logged_at), count(*), NULL FROM ({_AWAITING}) WHERE sync = ? "
                "GROUP BY receipt ORDER BY 2, 1", [sync]).fetchall()
        else:
            rows = self.con.execute(
                """
                SELECT r.receipt, r.taken_at, r.messages, r.sent_at FROM receipts r
                WHERE r.sync = ?
                  AND NOT EXISTS (SELECT 1 FROM receipt_settlements s
                                  WHERE s.sync = r.sync AND s.receipt = r.receipt)
                ORDER BY r.taken_at, r.receipt
                """, [sync]).fetchall()
        return [AwaitingReceipt(receipt, taken_at, messages, sent_at)
                for receipt, taken_at, messages, sent_at in rows]

    def settle_receipts(self, sync: str, receipts: Sequence[str], status: str,
                        error: str | None = None) -> int:
        """Log `status` (DELIVERED when confirmed, PENDING to send again) for every message still awaiting
        confirmation under one of `receipts`, and close those receipts; returns how many messages that was.

        Each receipt is settled on its own: only the messages whose latest outcome is that very receipt,
        looked up within its seq range (so the scan of `outcomes` reads only that range's row groups).
        """
        # Only messages awaiting under one of the receipts are settled: the step is legal when `status` may
        # follow awaiting_ack.
        _refuse_unknown(sync, {status})
        if status not in TRANSITIONS[MessageState.AWAITING_ACK]:
            raise IllegalTransitionError(sync, AWAITING_ACK, status)
        wanted = list(dict.fromkeys(receipts))
        if not wanted:
            return 0
        ranges = self.con.execute(
            "SELECT receipt, min(seq_low), max(seq_high) FROM receipts WHERE sync = ? "
            "AND receipt IN (SELECT unnest(?::VARCHAR[])) GROUP BY receipt", [sync, wanted]).fetchall()
        con, now, settled = self.con, _now(), 0
        con.execute("BEGIN")
        try:
            for receipt, low, high in ranges:
                settled += len(con.execute(
                    f"""
                    INSERT INTO outcomes (sync, seq, status, attempts, error, logged_at)
                    SELECT ?, seq, ?, 0, ?, ? FROM ({_AWAITING})
                    WHERE sync = ? AND seq BETWEEN ? AND ? AND receipt = ?
                    RETURNING seq
                    """, [sync, status, error, now, sync, low, high, receipt]).fetchall())
            con.executemany("INSERT INTO receipt_settlements VALUES (?, ?, ?, ?, ?)",
                            [(sync, receipt, status, error, now) for receipt, _, _ in ranges])
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return settled

    def reject_refused(self, sync: str, refused: Sequence[tuple[int, str | None]], *, destination: str,
                       run_id: str | None = None) -> None:
        """Record messages `destination` refused, (seq, its error), in the rejected table: the source is the
        destination, the reason "rejected by <destination>: <error>" (what `_REFUSED` recognises)."""
        self._refuse(sync, [(seq, f"rejected by {destination}: {error}") for seq, error in refused],
                     source=destination, run_id=run_id)

    def _refuse(self, sync: str, refused: Sequence[tuple[int, str]], *, source: str,
                run_id: str | None) -> None:
        """Record refused messages, (seq, reason as stored), with their record key and payload: a
        destination's refusals (`reject_refused`), or the ledger's own (source "ledger") of a forced re-send
        of a compacted message."""
        if not refused:
            return
        seqs, reasons = zip(*refused, strict=True)
        self.con.execute(
            "INSERT INTO rejected (sync, run_id, record_key, source, reason, record, rejected_at) "
            "SELECT ?, ?, m.record_key, ?, r.reason, m.payload, ? "
            "FROM (SELECT unnest(?::BIGINT[]) AS seq, unnest(?::VARCHAR[]) AS reason) r "
            "JOIN planned_messages m ON m.sync = ? AND m.seq = r.seq",
            [sync, run_id, source, _now(), list(seqs), list(reasons), sync])

    # SQL telling a row of `rejected` about a message refused once it was a message, as the two methods above
    # write it (by a destination: source the destination, reason "rejected by <destination>: <error>"; by the
    # ledger, a forced re-send of a compacted message: source "ledger"), from an input row refused before it
    # became a message (`add_rejections`, `reject_relation`).
    _REFUSED = "source = 'ledger' OR starts_with(reason, 'rejected by ' || source || ': ')"

    def compact(self, sync: str, *, settled_before: datetime, now: datetime | None = None,
                window: int = COMPACTION_WINDOW) -> int:
        """Drop the payloads of `sync`'s messages settled (delivered, verified, rejected) before
        `settled_before`; returns how many. Kept: every message's id, key and state (so nothing is planned
        or sent twice), every outcome (delivery health counts them), receipts, read-backs and rejections.
        A compacted message is never read back, and one sent again by force takes its payload from its
        input. The one sanctioned rewrite of the outbox (ARCHITECTURE rule 4).

        `window` messages (by seq) at a time, each in its own transaction, with a checkpoint every ten
        windows: DuckDB keeps an update's rows in memory until a checkpoint writes them, so one statement
        over a large ledger would not fit the memory limit (200,000 payloads of 1 KB did not in 128 MB). A
        pass stopped part way leaves its windows done and is recorded only when whole."""
        con = self.con
        low = con.execute(f"SELECT min(seq) FROM planned_messages WHERE sync = ? AND NOT {_compacted()}",
                          [sync]).fetchone()[0]
        # A message whose last outcome came before `settled_before` had an outcome then: the windows end at
        # the last such message (none: nothing to look at, as on a ledger younger than the retention).
        high = None if low is None else con.execute(
            f"SELECT max(seq) FROM outcomes WHERE sync = ? AND status IN {_COMPACTABLE} AND logged_at < ?",
            [sync, settled_before]).fetchone()[0]
        done = 0
        if high is not None:
            # Once for all the windows below: no check-in may run between them (none does: check-ins run
            # on this connection, from the delivery's flush, not from here).
            store.rewritten(con, "planned_messages")
        for start in range(low or 0, (high or -1) + 1, window):
            end = start + window
            done += con.execute(
                f"""
                UPDATE planned_messages SET payload = ? || md5(payload)
                WHERE sync = ? AND seq >= ? AND seq < ? AND NOT {_compacted()} AND seq IN (
                    SELECT seq FROM ({_LATEST_OUTCOME})
                    WHERE sync = ? AND seq >= ? AND seq < ? AND status IN {_COMPACTABLE} AND last_at < ?)
                """, [COMPACTED, sync, start, end, sync, start, end, settled_before]).fetchone()[0]
            if (start - (low or 0)) // window % 10 == 9:
                con.execute("CHECKPOINT")  # DuckDB keeps updates in memory until a checkpoint writes them
        con.execute("INSERT INTO ledger_compactions VALUES (?, ?, ?, ?)",
                    [sync, settled_before, done, now or _now()])
        return done

    def compact_if_due(self, sync: str, keep: timedelta | None, *, now: datetime | None = None) -> int | None:
        """`compact` what settled more than `keep` ago, at most once a day per sync (None: not due, or
        `keep` None: payloads are kept for ever)."""
        if keep is None:
            return None
        now = now or _now()
        last = self.con.execute("SELECT max(compacted_at) FROM ledger_compactions WHERE sync = ?",
                                [sync]).fetchone()[0]
        if last is not None and now - last < COMPACTION_INTERVAL:
            return None
        return self.compact(sync, settled_before=now - keep, now=now)

    def read_back_sample(self, sync: str, *, delivered_before: datetime, per_run: int,
                         call_type: str = "identify") -> ReadBackSample:
        """Up to `per_run` delivered `call_type` messages to read back from the destination, drawn from the
        oldest run no sample was drawn from yet (then the next, while fewer were found).

        Only a message still delivered (not read back before), delivered before `delivered_before` (the
        destination shows a call only after a while) and the latest taken of its record (a later one
        overwrote what it set) is drawn. Within a run the messages are taken in messageId order: ids are
        hashes, so that is a spread over the run, and the same ledger always draws the same sample. A run
        counts as sampled once any of its messages was read back. Reads the sync's whole ledger of
        `call_type` once: the window functions need every message of a record.
        """
        params = {"sync": sync, "call": call_type, "before": delivered_before, "per_run": per_run}
        read_backs = self._read_backs()
        due = f"""
            WITH latest AS (
                SELECT seq, status, delivered_at FROM ({_LATEST_OUTCOME}) WHERE sync = $sync),
            taken AS (
                SELECT m.seq, m.message_id, m.record_key, m.payload, m.planned_run, l.status, l.delivered_at,
                       row_number() OVER (PARTITION BY coalesce(m.record_key, m.message_id)
                                          ORDER BY m.seq DESC) AS newest
                FROM planned_messages m JOIN latest l ON l.seq = m.seq
                WHERE m.sync = $sync AND m.call_type = $call AND l.status IN ('{DELIVERED}', '{VERIFIED}')),
            sampled_runs AS (
                SELECT DISTINCT m.planned_run FROM {read_backs} r
                JOIN planned_messages m ON m.sync = r.sync AND m.seq = r.seq WHERE r.sync = $sync),
            open AS (
                SELECT * FROM taken t
                WHERE t.newest = 1 AND t.status = '{DELIVERED}' AND NOT {_compacted('t.payload')}
                  AND NOT EXISTS (SELECT 1 FROM sampled_runs s
                                  WHERE s.planned_run IS NOT DISTINCT FROM t.planned_run))
        """
        rows = self.con.execute(
            f"""{due},
            ranked AS (
                SELECT *, min(delivered_at) OVER (PARTITION BY planned_run) AS run_first,
                       row_number() OVER (PARTITION BY planned_run ORDER BY message_id) AS nth
                FROM open WHERE delivered_at <= $before)
            SELECT seq, message_id, record_key, payload, planned_run, delivered_at FROM ranked
            WHERE nth <= $per_run ORDER BY run_first, planned_run, message_id LIMIT $per_run
            """, params).fetchall()
        runs_due, too_recent = self.con.execute(
            f"""{due}
            SELECT count(DISTINCT coalesce(planned_run, '')) FILTER (WHERE delivered_at <= $before),
                   count(*) FILTER (WHERE delivered_at > $before)
            FROM open
            """, {k: v for k, v in params.items() if k != "per_run"}).fetchone()
        messages = [ReadBackCandidate(*row) for row in rows]
        runs = len({m.planned_run for m in messages})
        return ReadBackSample(messages, runs, runs_due - runs, too_recent)

    def record_read_backs(self, sync: str, results: Sequence[ReadBack]) -> None:
        """Keep what reading messages back found; a MATCHED message becomes verified (delivered -> verified).

        The verified outcomes are logged first (all or nothing, `log_outcomes`), then the read-backs: a crash
        between leaves verified messages, which are never drawn again, and their run unsampled, which only
        means the next evaluation draws from it once more.
        """
        if not results:
            return
        if unknown := {r.outcome for r in results} - set(READ_BACK_OUTCOMES):
            raise ValueError(f"sync {sync!r}: read-back outcome(s) {sorted(unknown)} are none of "
                             f"{', '.join(READ_BACK_OUTCOMES)}")
        self.log_outcomes(sync, [(r.seq, VERIFIED, 0, None) for r in results if r.outcome == MATCHED])
        self.con.execute(
            "INSERT INTO read_backs (sync, seq, outcome, detail, checked_at) "
            "SELECT ?, unnest(?::BIGINT[]), unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), ?",
            [sync, [r.seq for r in results], [r.outcome for r in results], [r.detail for r in results],
             _now()])

    def counts(self, sync: str) -> LedgerCounts:
        """How many of `sync`'s messages stand in each state.

        Kept in `ledger_counts` and brought forward by the messages planned and answered since it was last
        taken (`_COUNTS_DELTA`), so a run's counts cost its own messages, not the ledger's history; on a
        file opened read-only the count is brought forward without being kept. It assumes outcome ids are
        committed in id order when it runs, as they are between deliveries (a delivery's other cursors have
        finished by then): an outcome committed later under a lower id would not be counted.
        """
        con = self.con
        cached = con.execute("SELECT status, messages, through_id, through_seq FROM ledger_counts "
                             "WHERE sync = ?", [sync]).fetchall()
        last_id, last_seq = (cached[0][2], cached[0][3]) if cached else (0, 0)
        # Outcomes first: every outcome up to new_id is about a message planned by then (up to new_seq).
        new_id = con.execute("SELECT coalesce(max(id), 0) FROM outcomes WHERE sync = ?", [sync]).fetchone()[0]
        new_seq = con.execute("SELECT coalesce(max(seq), 0) FROM planned_messages WHERE sync = ?",
                              [sync]).fetchone()[0]
        counts = {status: messages for status, messages, _, _ in cached}
        if (new_id, new_seq) != (last_id, last_seq):
            for status, change in con.execute(_COUNTS_DELTA, {"sync": sync, "last_id": last_id,
                                                              "last_seq": last_seq, "new_id": new_id,
                                                              "new_seq": new_seq}).fetchall():
                counts[status] = counts.get(status, 0) + int(change)
            if not _read_only(con):
                con.execute("BEGIN")
                try:
                    con.execute("DELETE FROM ledger_counts WHERE sync = ?", [sync])
                    con.execute("INSERT INTO ledger_counts SELECT ?, ?, ?, unnest(?::VARCHAR[]), "
                                "unnest(?::BIGINT[])",
                                [sync, new_id, new_seq, list(counts), list(counts.values())])
                    con.execute("COMMIT")
                except BaseException:
                    con.execute("ROLLBACK")
                    raise
        return LedgerCounts(**{state.value: counts.get(state.value, 0) for state in MessageState})

    def window_counts(self, sync: str, relation: str) -> dict[object, MessageCounts]:
        """Where the messages of `relation` (message_id, grp) stand in `sync`, per `grp` (e.g. an hour).

        A message_id never planned for `sync` counts as unplanned. Only the seq range the set was planned
        in is read from `outcomes`, so the cost follows the set, not the ledger's history.
        """
        self.states_of(sync, relation, "counted_states")
        try:
            per_state = ", ".join(f"count(*) FILTER (WHERE s.status = '{state.value}')"
                                  for state in MessageState)
            rows = self.con.execute(
                f"""
                SELECT r.grp, count(*), count(*) FILTER (WHERE s.seq IS NULL), {per_state}
                FROM {relation} AS r LEFT JOIN counted_states s ON s.message_id = r.message_id
                GROUP BY r.grp
                """).fetchall()
        finally:
            self.con.execute("DROP TABLE counted_states")
        names = ("total", "unplanned", *(state.value for state in MessageState))
        return {grp: MessageCounts(**dict(zip(names, figures, strict=True))) for grp, *figures in rows}

    def states_of(self, sync: str, relation: str, into: str) -> None:
        """Create the temp table `into` (message_id, seq, status, delivered_at): where each message_id of
        `relation` planned for `sync` stands, as the `ledger` view says, without that view's aggregate over
        every outcome: only the seq range of these messages is read from `outcomes`, so the cost follows
        the set, not the ledger's history. A message_id never planned for `sync` has no row."""
        con = self.con
        con.execute(f"CREATE OR REPLACE TEMP TABLE {into} AS SELECT p.message_id, p.seq "
                    f"FROM planned_messages p WHERE p.sync = ? "
                    f"AND p.message_id IN (SELECT message_id FROM {relation})", [sync])
        low, high = con.execute(f"SELECT coalesce(min(seq), 0), coalesce(max(seq), -1) "
                                f"FROM {into}").fetchone()
        con.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE {into} AS
            SELECT m.message_id, m.seq, coalesce(o.status, '{PENDING}') AS status,
                   CASE WHEN o.status IN ('{DELIVERED}', '{VERIFIED}') THEN o.delivered_at END AS delivered_at
            FROM {into} m LEFT JOIN (
                SELECT seq, status, delivered_at FROM ({_LATEST_OUTCOME})
                WHERE sync = ? AND seq BETWEEN ? AND ?) o ON o.seq = m.seq
            """, [sync, low, high])

    def delivery_figures(self, since: datetime) -> list[SyncFigures]:
        """Delivered, rejected and failed messages of every sync since `since` (none: the file has no ledger),
        and how many delivered messages were read back since then: verified, missing.

        Delivered: confirmed since `since`. Rejected: distinct (record, reason) pairs rejected since then (the
        reverse-ETL diff rejects the same bad rows on every run). Failed, once each: the latest outcome,
        logged since `since`, is "still pending after retries ran out"; or the message is "stuck": still
        pending although planned before `since`, or still awaiting confirmation although sent before
        `since`; or it was planned and never attempted (the run stopped first, e.g. at a 401). Reads any
        layout of the file, including a read-only one never migrated.
        """
        if not all(self._has_table(t) for t in ("planned_messages", "outcomes", "rejected")):
            return []
        read_backs = self._read_backs()
        rows = self.con.execute(
            f"""
            WITH delivered AS (
                SELECT sync, count(DISTINCT seq) AS n FROM outcomes
                WHERE status = '{DELIVERED}' AND logged_at >= $since GROUP BY sync),
            read_back AS (
                SELECT sync, count(DISTINCT seq) AS n,
                       count(DISTINCT seq) FILTER (WHERE outcome = '{MISSING}') AS missing
                FROM {read_backs} WHERE checked_at >= $since GROUP BY sync),
            verified AS (
                SELECT sync, count(DISTINCT seq) AS n FROM outcomes
                WHERE status = '{VERIFIED}' AND logged_at >= $since GROUP BY sync),
            rejected_rows AS (
                SELECT sync, count(DISTINCT (coalesce(record_key, record, run_id, ''), reason)) AS n
                FROM rejected WHERE rejected_at >= $since GROUP BY sync),
            failed AS (
                SELECT m.sync, count(*) AS n
                FROM planned_messages m LEFT JOIN ({_LATEST_OUTCOME}) o ON o.sync = m.sync AND o.seq = m.seq
                WHERE (coalesce(o.status, '{PENDING}') = '{PENDING}'
                       AND ((o.last_error IS NOT NULL AND o.last_at >= $since)  -- retries ran out in window
                            OR m.planned_at < $since        -- stuck: pending longer than the window
                            OR o.status IS NULL))           -- never attempted (the run stopped, e.g. 401)
                   OR (o.status = '{AWAITING_ACK}' AND o.last_at < $since)  -- stuck: never confirmed
                GROUP BY m.sync),
            syncs AS (SELECT sync FROM planned_messages UNION SELECT sync FROM rejected)  -- idle ones too
            SELECT s.sync, coalesce(d.n, 0), coalesce(r.n, 0), coalesce(f.n, 0), coalesce(b.n, 0),
                   coalesce(v.n, 0), coalesce(b.missing, 0)
            FROM syncs s LEFT JOIN delivered d USING (sync) LEFT JOIN rejected_rows r USING (sync)
            LEFT JOIN failed f USING (sync) LEFT JOIN read_back b USING (sync)
            LEFT JOIN verified v USING (sync)
            ORDER BY s.sync
            """, {"since": since}).fetchall()
        return [SyncFigures(*row) for row in rows]

    def delivered_between(self, start: datetime, end: datetime) -> dict[str, int]:
        """Messages of each sync delivered in [start, end) (by when the delivery was logged; a message counts
        once), for syncs that delivered any; none when the file has no ledger. One set query: read from a
        read-only connection too."""
        if not self._has_table("outcomes"):
            return {}
        return dict(self.con.execute(
            f"SELECT sync, count(DISTINCT seq) FROM outcomes WHERE status = '{DELIVERED}' "
            "AND logged_at >= $start AND logged_at < $end GROUP BY sync ORDER BY sync",
            {"start": start, "end": end}).fetchall())

    def rejected_since(self, sync: str, run_id: str,
                       limit: int = 20) -> list[tuple[str | None, str | None, str]]:
        """A sample of (record_key, source, reason) rejected by one run, for run metadata."""
        return self.con.execute(
            "SELECT record_key, source, reason FROM rejected WHERE sync = ? AND run_id = ? "
            "ORDER BY rejected_at LIMIT ?", [sync, run_id, limit]).fetchall()


    # Readers for `segment-ops status` and `segment-ops rejected`: each one query, writing nothing, so they
    # serve a read-only connection, and each reads a file of any layout as it is (a run migrates it).

    def holds_ledger(self) -> bool:
        """Whether the file has a delivery ledger at all (its planned messages, outcomes and rejections)."""
        return all(self._has_table(t) for t in ("planned_messages", "outcomes", "rejected"))

    def syncs(self) -> list[str]:
        """Every sync that planned or rejected anything in this file, by name (one file may hold several:
        audit_trail has one per SIEM)."""
        return [row[0] for row in self.con.execute(
            "SELECT sync FROM planned_messages UNION SELECT sync FROM rejected ORDER BY 1").fetchall()]

    def counts_as_read(self, sync: str) -> LedgerCounts:
        """`counts` for a reader: in a file of an older layout, without the `ledger_counts` cache, counted
        from the `ledger` view instead (the file is read as it is, not migrated)."""
        if self._has_table("ledger_counts"):
            return self.counts(sync)
        found = dict(self.con.execute("SELECT status, count(*) FROM ledger WHERE sync = ? GROUP BY status",
                                      [sync]).fetchall())
        return LedgerCounts(**{state.value: found.get(state.value, 0) for state in MessageState})

    def activity(self, sync: str) -> SyncActivity:
        """When `sync` last planned a message, had an answer recorded or rejected a row, and the run id of
        its latest planning or rejection (only those carry one); both None when it did none of these."""
        at, run_id = self.con.execute(
            """
            SELECT max(happened), arg_max(run_id, happened) FILTER (WHERE run_id IS NOT NULL) FROM (
                SELECT planned_at AS happened, planned_run AS run_id FROM planned_messages WHERE sync = $sync
                UNION ALL SELECT logged_at, NULL FROM outcomes WHERE sync = $sync
                UNION ALL SELECT rejected_at, run_id FROM rejected WHERE sync = $sync)
            """, {"sync": sync}).fetchone()
        return SyncActivity(at, run_id)

    def oldest_pending(self, sync: str) -> datetime | None:
        """When the longest-waiting of `sync`'s pending messages was planned (None: nothing is pending)."""
        return self.con.execute(f"SELECT min(planned_at) FROM planned_messages WHERE sync = $sync "
                                f"AND seq IN ({_PENDING_SEQS})", {"sync": sync}).fetchone()[0]

    def rejected_input_rows(self, sync: str) -> int:
        """How many input rows `sync` refused before sending (bad values, invalid calls), each distinct
        (record key, source, reason) once however many runs refused it. Messages a destination refused are
        not among them: they are the messages in the rejected state (`counts`)."""
        return self.con.execute(
            f"SELECT count(DISTINCT (coalesce(record_key, ''), coalesce(source, ''), reason)) "
            f"FROM rejected WHERE sync = $sync AND NOT ({self._REFUSED})", {"sync": sync}).fetchone()[0]

    def rejected_rows(self, sync: str | None = None, *, since: datetime | None = None,
                      reason: str | None = None, limit: int = 0) -> list[RejectedRow]:
        """The rows refused in this file (of `sync` only, when given), newest first: one per (sync, source,
        record key, reason), however many runs refused it. `since`: refused at or after it; `reason`: whose
        reason contains this text (case-insensitive); `limit`: at most that many (0: all). Empty when the
        file has no rejections table."""
        if not self._has_table("rejected"):
            return []
        found = self.con.execute(
            f"""
            SELECT sync, max(rejected_at) AS newest, source, record_key, reason, arg_max(run_id, rejected_at),
                   arg_max(record, rejected_at), count(*), bool_or({self._REFUSED})
            FROM rejected
            WHERE ($sync IS NULL OR sync = $sync)
              AND ($since IS NULL OR rejected_at >= $since)
              AND ($reason IS NULL OR contains(lower(reason), lower($reason)))
            GROUP BY sync, source, record_key, reason
            ORDER BY newest DESC, source, record_key
            {"LIMIT $limit" if limit else ""}
            """, {"sync": sync, "since": since, "reason": reason,
                  **({"limit": limit} if limit else {})}).fetchall()
        return [RejectedRow(*row) for row in found]


def _name(word: str) -> str:
    return MessageState(word).name.lower() if word in _STORED else repr(word)


def _refuse_unknown(sync: str, words: set[str]) -> None:
    if unknown := words - _STORED:
        raise UnknownStateError(f"sync {sync!r}: {', '.join(sorted(map(repr, unknown)))} is no state of the "
                                f"ledger (one of {', '.join(sorted(_STORED))})")


def _now() -> datetime:
    return datetime.now(UTC)


def _read_only(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether `con`'s database was opened read-only (a reader such as delivery health)."""
    return bool(con.execute("SELECT readonly FROM duckdb_databases() WHERE database_name = current_database()"
                            ).fetchone()[0])
