"""Privacy regulations (GDPR / CCPA): the requests segment_ops files with Segment, and which subjects no sync
may send to.

The `segment/regulations` sync records every request here before it files it (`regulation_requests`,
`regulation_filings`, `regulation_statuses`, in that sync's staging file); every other sync reads the
outcome, `Regulated`, once per run (`load_regulated`) and honours it before it sends (`suppress_pending`):

| regulation type | sent to again? |
|---|---|
| SUPPRESS_ONLY, SUPPRESS_WITH_DELETE, SUPPRESS_WITH_DELETE_INTERNAL | not until an UNSUPPRESS |
| DELETE_ONLY, DELETE_INTERNAL, DELETE_ARCHIVE_ONLY | never (a replay would resurrect an erased user) |
| UNSUPPRESS | lifts an earlier suppression (not a deletion) |

A subject is regulated from the moment its request is recorded, before Segment has it: the request is the
fact that binds us, Segment's processing (hours to weeks) is not. Subjects are `userId`s (subject type
USER_ID); OBJECT_ID subjects are cloud-source objects, which no sync of ours sends, so they are filed and
tracked but match nothing here. Matching is by the sha256 of the id, so the record of an erased subject
(`subject` set to NULL once Segment accepted its deletion) still suppresses it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import orjson

from segment_ops.engine import store
from segment_ops.engine.ledger import Ledger

# Spec §2 and the SDK (createWorkspaceRegulationV1Input.ts, regulationListEntryV1.ts).
SUPPRESSING = frozenset({"SUPPRESS_ONLY", "SUPPRESS_WITH_DELETE", "SUPPRESS_WITH_DELETE_INTERNAL"})
DELETING = frozenset({"DELETE_ONLY", "DELETE_INTERNAL", "DELETE_ARCHIVE_ONLY"})
LIFTING = frozenset({"UNSUPPRESS"})
# DELETE_ARCHIVE_ONLY appears only in the list output and the rate-limit notes, not in the create input's
# enum: a request may name it, and it is filed as asked (Segment refuses it if creating one is not allowed).
REGULATION_TYPES = SUPPRESSING | DELETING | LIFTING
# Types after which segment_ops erases the subject from its own stores, once Segment accepted the request.
ERASING = DELETING | frozenset({"SUPPRESS_WITH_DELETE", "SUPPRESS_WITH_DELETE_INTERNAL"})
SUBJECT_TYPES = ("USER_ID", "OBJECT_ID")
# Spec §2 (regulation.ts): a regulation's overall status; the first four are final.
FINAL_STATUSES = frozenset({"FINISHED", "FAILED", "INVALID", "NOT_SUPPORTED", "PARTIAL_SUCCESS"})
FAILED_STATUSES = frozenset({"FAILED", "INVALID", "NOT_SUPPORTED", "PARTIAL_SUCCESS"})
SYNC = "segment_regulations"  # the sync whose staging file holds the requests (and its ledger name)

_CREATE = """
-- One row per (request, subject) recorded from a source, before anything is filed. `subject` is NULL once the
-- subject was erased (a deleting type Segment accepted); `subject_hash` stays, so suppression still matches.
CREATE TABLE IF NOT EXISTS regulation_requests (
    request_id      VARCHAR NOT NULL,    -- unique: the source's own id, else derived from the row
    subject         VARCHAR,
    subject_hash    VARCHAR NOT NULL,    -- sha256 of the subject
    subject_type    VARCHAR NOT NULL,    -- USER_ID | OBJECT_ID
    regulation_type VARCHAR NOT NULL,
    source          VARCHAR NOT NULL,    -- the model, or the inbox file (name and line)
    requested_at    TIMESTAMPTZ NOT NULL,
    -- Increasing in the order the requests were read (the query's rows, then the inbox files by name, line by
    -- line), across runs: it orders requests of one `requested_at` (those read without one get the time they
    -- were read), so a SUPPRESS is followed by the UNSUPPRESS after it, whatever their ids.
    ordinal         BIGINT NOT NULL,
    recorded_at     TIMESTAMPTZ NOT NULL,
    run_id          VARCHAR
);
-- One row per step of one POST /regulations: `intent` is written and committed before the call, `filed`
-- (with Segment's regulation id), `refused` (its error) or `abandoned` after it. An intent with no later step
-- is a call that may or may not have reached Segment: reconciled with GET /regulations before filing again.
CREATE TABLE IF NOT EXISTS regulation_filings (
    filing_id       VARCHAR NOT NULL,
    regulation_type VARCHAR NOT NULL,
    subject_type    VARCHAR NOT NULL,
    state           VARCHAR NOT NULL,
    regulation_id   VARCHAR,
    error           VARCHAR,
    logged_at       TIMESTAMPTZ NOT NULL,
    run_id          VARCHAR
);
-- Which requests one filing carries.
CREATE TABLE IF NOT EXISTS regulation_filing_requests (
    filing_id  VARCHAR NOT NULL,
    request_id VARCHAR NOT NULL
);
-- Each status Segment reported for a regulation (GET /regulations/{id}), when it changed.
CREATE TABLE IF NOT EXISTS regulation_statuses (
    regulation_id VARCHAR NOT NULL,
    status        VARCHAR NOT NULL,
    finished_at   TIMESTAMPTZ,
    checked_at    TIMESTAMPTZ NOT NULL
);
-- Per recorded request, where it stands: the compliance record (requested, filed, regulation id, status).
-- `error` is that of the latest step of the latest filing, NULL when it has none (`arg_max_null`: `arg_max`
-- skips NULLs, so a request filed again after an abandoned intent would still show the old error).
CREATE VIEW IF NOT EXISTS regulation_record AS
WITH filing_steps AS (
    SELECT filing_id, arg_max(state, logged_at) AS state, arg_max(regulation_id, logged_at) AS regulation_id,
           arg_max_null(error, logged_at) AS error, max(logged_at) AS logged_at, min(logged_at) AS intended_at
    FROM regulation_filings GROUP BY filing_id
), per_request AS (
    SELECT fr.request_id, arg_max(f.state, f.logged_at) AS filing_state,
           arg_max(f.regulation_id, f.logged_at) AS regulation_id,
           arg_max_null(f.error, f.logged_at) AS error,
           max(f.logged_at) FILTER (WHERE f.state = 'filed') AS filed_at
    FROM regulation_filing_requests fr JOIN filing_steps f USING (filing_id) GROUP BY fr.request_id
), last_status AS (
    SELECT regulation_id, arg_max(status, checked_at) AS status, max(finished_at) AS finished_at,
           max(checked_at) AS checked_at
    FROM regulation_statuses GROUP BY regulation_id
)
SELECT r.request_id, r.subject, r.subject_hash, r.subject_type, r.regulation_type, r.source, r.requested_at,
       r.ordinal, r.recorded_at, coalesce(p.filing_state, 'unfiled') AS filing_state, p.regulation_id,
       p.error, p.filed_at, s.status, s.finished_at, s.checked_at
FROM regulation_requests r LEFT JOIN per_request p USING (request_id)
LEFT JOIN last_status s ON s.regulation_id = p.regulation_id;
"""
# Erasure keeps the request (its type, times, regulation and status: the compliance record) but not the id:
# `subject_hash` still matches, so the erased user stays suppressed.
_ERASE = "UPDATE regulation_requests SET subject = NULL WHERE erased_id(subject);"
STATE = store.register(store.StateSchema(
    name="regulations", version=1, create=_CREATE, erase=_ERASE,
    tables=("regulation_requests", "regulation_filings", "regulation_filing_requests", "regulation_statuses",
            "regulation_record"),
    append_only=("regulation_filings", "regulation_filing_requests", "regulation_statuses")))


def subject_hash(subject: str) -> str:
    """What a subject is matched by (the same digest as DuckDB's `sha256`)."""
    return hashlib.sha256(subject.encode()).hexdigest()


@dataclass(frozen=True)
class Regulation:
    """Why a subject is regulated: the request that decides it (the latest that counts)."""

    regulation_type: str
    request_id: str
    regulation_id: str | None  # Segment's id, once filed

    def reason(self) -> str:
        """The suppressed outcome's error: the regulation's type and id."""
        filed = f"regulation {self.regulation_id}" if self.regulation_id else "not yet filed"
        return f"suppressed by {self.regulation_type} ({filed}; request {self.request_id})"


@dataclass(frozen=True)
class Regulated:
    """Which subjects (by `subject_hash`) no sync may send to, and which an UNSUPPRESS freed again."""

    blocked: dict[str, Regulation] = field(default_factory=dict)
    lifted: dict[str, Regulation] = field(default_factory=dict)  # the UNSUPPRESS request that freed each

    @property
    def empty(self) -> bool:
        return not self.blocked and not self.lifted

    @property
    def erased(self) -> list[str]:
        """The `subject_hash` of each blocked user whose regulation deletes (`ERASING`): their rows are
        withheld before the diff, so nothing about them is planned, recorded or snapshotted again."""
        return [digest for digest, regulation in self.blocked.items()
                if regulation.regulation_type in ERASING]

    def covers(self, user_id: object) -> bool:
        return isinstance(user_id, str) and subject_hash(user_id) in self.blocked

    def shown(self, payloads: list[bytes]) -> list[bytes]:
        """The sample payloads run metadata may show: those not about a blocked subject (what a
        suppressed subject would have been sent stays out of the UI as well)."""
        if not self.blocked:
            return payloads
        return [p for p in payloads if not self.covers(_user_id(p))]

    def shown_keys(self, samples: list[tuple]) -> list[tuple]:
        """Samples whose first item is a record key (a rejection's, a nulled trait's), without those keyed by
        a blocked subject (an identify model is keyed by the userId)."""
        if not self.blocked:
            return samples
        return [s for s in samples if not self.covers(s[0])]


def _user_id(payload: bytes | str) -> object:
    try:
        return orjson.loads(payload).get("userId")
    except (orjson.JSONDecodeError, AttributeError):
        return None


def fold(requests: Iterable[tuple[str, str, str, str | None]]) -> Regulated:
    """`Regulated` from (subject_hash, regulation_type, request_id, regulation_id) rows in the order they were
    requested: a deletion blocks for ever; a suppression blocks until a later UNSUPPRESS, which lifts it."""
    blocked: dict[str, Regulation] = {}
    lifted: dict[str, Regulation] = {}
    deleted: set[str] = set()
    for digest, kind, request_id, regulation_id in requests:
        regulation = Regulation(kind, request_id, regulation_id)
        if kind in DELETING:
            deleted.add(digest)
            blocked[digest] = regulation
            lifted.pop(digest, None)
        elif digest in deleted:
            continue  # neither a suppression nor an UNSUPPRESS changes a deleted subject
        elif kind in SUPPRESSING:
            blocked[digest] = regulation
            lifted.pop(digest, None)
        elif kind in LIFTING and digest in blocked:
            del blocked[digest]
            lifted[digest] = regulation
    return Regulated(blocked, lifted)


def read_regulated(con: duckdb.DuckDBPyConnection) -> Regulated:
    """`Regulated` from the regulations state open on `con` (USER_ID subjects)."""
    if not con.execute("SELECT count(*) FROM duckdb_views() WHERE view_name = 'regulation_record' "
                       "AND NOT temporary").fetchone()[0]:
        return Regulated()  # the sync ran, but recorded nothing yet (read-only: nothing is created here)
    return fold(con.execute(
        "SELECT subject_hash, regulation_type, request_id, regulation_id FROM regulation_record "
        "WHERE subject_type = 'USER_ID' ORDER BY requested_at, ordinal").fetchall())


def load_regulated(home: str | Path, *, lock_timeout: float = 60.0) -> Regulated:
    """What the regulations sync of the home `home` recorded (empty when it never ran). Read-only, for the
    length of one query: a sync reads it once per run, before it sends."""
    path = store.staging_file(home, SYNC)
    if not store.has_state(path):
        return Regulated()
    with store.staging(path, read_only=True, threads=1, lock_timeout=lock_timeout) as con:
        return read_regulated(con)


@dataclass
class Honoured:
    """What honouring regulations did in one run of one sync."""

    suppressed: int = 0  # planned messages about a regulated subject, now suppressed
    withheld: int = 0  # staged rows of users a deleting regulation covers, left out before the diff
    lifted: int = 0  # suppressed messages an UNSUPPRESS freed (superseded: the rows decide again)
    regulated: int = 0  # subjects regulated when the run read them

    def as_metadata(self) -> dict[str, int]:
        return {"suppressed": self.suppressed, "suppression_lifted": self.lifted,
                "regulated_subjects": self.regulated, "erased_users_withheld": self.withheld}


def _register(con: duckdb.DuckDBPyConnection, name: str, regulations: dict[str, Regulation]) -> None:
    reasons = [regulation.reason() for regulation in regulations.values()]
    con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT unnest(?::VARCHAR[]) AS subject_hash, "
                "unnest(?::VARCHAR[]) AS reason", [list(regulations), reasons])


@dataclass(frozen=True)
class Suppressed:
    """Messages one call of `suppress_pending` suppressed, and the subjects of those whose regulation also
    deletes (`ERASING`): their payloads must not stay in this sync's stores either."""

    messages: int = 0
    to_erase: tuple[str, ...] = ()


def suppress_pending(ledger: Ledger, sync: str, regulated: Regulated) -> Suppressed:
    """Suppress every planned message of `sync` about a blocked subject (`Ledger.suppress_planned`). Nothing
    is read when no subject is blocked."""
    if not regulated.blocked:
        return Suppressed()
    _register(ledger.con, "regulated_now", regulated.blocked)
    try:
        rows = ledger.suppress_planned(sync, "regulated_now")
    finally:
        ledger.con.execute("DROP TABLE regulated_now")
    erase = {user_id for _, user_id in rows
             if regulated.blocked[subject_hash(user_id)].regulation_type in ERASING}
    return Suppressed(len(rows), tuple(sorted(erase)))


def honour(ledger: Ledger, sync: str, regulated: Regulated) -> int:
    """What every sending run does last before it sends: suppress the planned messages about blocked subjects
    and, for a subject whose regulation deletes, erase it from this sync's stores at once (the message was
    planned from rows that still hold the subject, after the regulations sync erased it everywhere). Returns
    how many messages were suppressed."""
    suppressed = suppress_pending(ledger, sync, regulated)
    if suppressed.to_erase:
        # Imported here: erasure reads every registered state schema, this module's among them.
        from segment_ops.engine.erasure import erase_subjects

        erase_subjects(ledger.con, suppressed.to_erase, reason="a deleting regulation (planned after it)")
    return suppressed.messages


def lift_suppressed(ledger: Ledger, sync: str, regulated: Regulated) -> list[tuple[str, int]]:
    """Supersede the suppressed messages of `sync` whose subject an UNSUPPRESS freed; returns their
    (message_id, seq). Nothing is read when no subject was freed."""
    if not regulated.lifted:
        return []
    _register(ledger.con, "lifted_now", regulated.lifted)
    try:
        return ledger.lift_suppressed(sync, "lifted_now", "suppression lifted by UNSUPPRESS")
    finally:
        ledger.con.execute("DROP TABLE lifted_now")

