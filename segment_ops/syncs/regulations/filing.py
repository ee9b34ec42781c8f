"""Filing privacy requests with Segment exactly once, and following them to their end.

`POST /regulations` has no idempotency key, so a filing is recorded as an intent (committed) before the call
and as filed (with Segment's regulation id) or refused after it. A run that stops between the two leaves an
intent alone: the next run looks for it with `GET /regulations` (same type, same subjects, created since the
intent) and adopts what it finds, or marks it abandoned and files its requests again. A duplicate regulation
could only come from Segment's list lagging behind its create, and is harmless: deleting or suppressing a
user twice changes nothing.

Each filing carries up to `cap` subjects of one regulation type and subject type (Segment's privacy docs: up
to 5,000 userIds per Public API call; `REGULATIONS_SUBJECTS_PER_REQUEST`). Segment refuses a whole call for
one subject id it will not take (or for more ids than it takes per call), so a refused filing of several
subjects is split in halves, each filed as its own filing: only the requests at fault end refused.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import duckdb

from segment_ops.clients.base import VendorAuthError, VendorError, VendorFatalError
from segment_ops.clients.segment_public_api import SegmentPublicApiClient
from segment_ops.engine import store
from segment_ops.engine.regulations import ERASING, FAILED_STATUSES, FINAL_STATUSES, STATE, subject_hash
from segment_ops.syncs.regulations.requests import Request

INTENT, FILED, REFUSED, ABANDONED = "intent", "filed", "refused", "abandoned"
# How far before an interrupted intent a regulation found at Segment may have been created and still be taken
# for it (clocks of two machines differ).
RECONCILE_SKEW = timedelta(minutes=10)


@dataclass
class Filed:
    """What one run recorded, filed and learnt."""

    recorded: int = 0  # requests new to segment_ops
    already_recorded: int = 0
    filings: int = 0  # POST /regulations that Segment accepted
    subjects_filed: int = 0
    refused: int = 0  # filings Segment refused (4xx): their requests stay unfiled, with the error
    split: int = 0  # refused filings of several subjects, filed again in halves
    reconciled: int = 0  # interrupted filings found at Segment and adopted
    abandoned: int = 0  # interrupted filings not found at Segment: filed again
    status_changes: list[tuple[str, str, str]] = field(default_factory=list)  # (regulation id, type, status)
    errors: list[str] = field(default_factory=list)

    @property
    def newly_failed(self) -> list[tuple[str, str, str]]:
        return [change for change in self.status_changes if change[2] in FAILED_STATUSES]


def _now() -> datetime:
    return datetime.now(UTC)


def record_requests(con: duckdb.DuckDBPyConnection, requests: Sequence[Request], *, run_id: str | None,
                    filed: Filed) -> None:
    """Record the requests segment_ops has not seen (by request id), in one transaction."""
    store.ensure(con, STATE)
    if not requests:
        return
    unique = list({r.request_id: r for r in requests}.values())
    con.execute("CREATE OR REPLACE TEMP TABLE incoming_requests AS SELECT unnest(?::VARCHAR[]) AS request_id",
                [[r.request_id for r in unique]])
    known = {row[0] for row in con.execute(
        "SELECT request_id FROM regulation_requests "
        "WHERE request_id IN (SELECT request_id FROM incoming_requests)").fetchall()}
    con.execute("DROP TABLE incoming_requests")
    new = [r for r in unique if r.request_id not in known]
    filed.already_recorded += len(requests) - len(new)
    filed.recorded += len(new)
    if not new:
        return
    now = _now()
    # Requests read without a time all get `now`: their order is the order they were read in (`ordinal`).
    last = con.execute("SELECT coalesce(max(ordinal), 0) FROM regulation_requests").fetchone()[0]
    con.execute(
        "INSERT INTO regulation_requests SELECT unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), "
        "unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), "
        "unnest(?::TIMESTAMPTZ[]), unnest(?::BIGINT[]), ?, ?",
        [[r.request_id for r in new], [r.subject for r in new], [subject_hash(r.subject) for r in new],
         [r.subject_type for r in new], [r.regulation_type for r in new], [r.source for r in new],
         [r.requested_at or now for r in new], list(range(last + 1, last + 1 + len(new))), now, run_id])


def _log_filing(con: duckdb.DuckDBPyConnection, filing_id: str, kind: str, subject_type: str, state: str, *,
                regulation_id: str | None = None, error: str | None = None, run_id: str | None) -> None:
    con.execute("INSERT INTO regulation_filings VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [filing_id, kind, subject_type, state, regulation_id, error, _now(), run_id])


def _interrupted(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str, str, datetime]]:
    """Filings whose last step is the intent: (filing id, type, subject type, when intended)."""
    return con.execute(
        f"""
        SELECT filing_id, any_value(regulation_type), any_value(subject_type), min(logged_at)
        FROM regulation_filings GROUP BY filing_id HAVING arg_max(state, logged_at) = '{INTENT}'
        ORDER BY min(logged_at)
        """).fetchall()


def _subjects_of(con: duckdb.DuckDBPyConnection, filing_id: str) -> list[str]:
    return [row[0] for row in con.execute(
        "SELECT DISTINCT r.subject FROM regulation_filing_requests f "
        "JOIN regulation_requests r USING (request_id) WHERE f.filing_id = ? AND r.subject IS NOT NULL "
        "ORDER BY 1", [filing_id]).fetchall()]


def reconcile(con: duckdb.DuckDBPyConnection, client: SegmentPublicApiClient, *, run_id: str | None,
              filed: Filed) -> None:
    """Settle every interrupted filing: adopt the regulation Segment created for it, or abandon it (its
    requests are filed again). A regulation already recorded for a filing is never adopted: the same type
    for the same subjects within `RECONCILE_SKEW` is an earlier request (a SUPPRESS, an UNSUPPRESS, and an
    interrupted SUPPRESS again), whose regulation is not this one."""
    known = {row[0] for row in con.execute(
        "SELECT DISTINCT regulation_id FROM regulation_filings WHERE regulation_id IS NOT NULL").fetchall()}
    listed: dict[str, list[dict]] = {}  # each type's regulations, listed once however many filings it has
    for filing_id, kind, subject_type, intended in _interrupted(con):
        subjects = set(_subjects_of(con, filing_id))
        found = None
        if kind not in listed:
            listed[kind] = list(client.iter_regulations(regulation_types=[kind]))
        for entry in listed[kind]:
            if entry.get("id") in known:
                continue
            created = _parse_time(entry.get("createdAt"))
            same = (set(entry.get("subjects") or ()) == subjects
                    and entry.get("subjectType", subject_type) == subject_type)
            if same and (created is None or created >= intended - RECONCILE_SKEW):
                found = entry.get("id")
                break
        if found:
            known.add(found)
            _log_filing(con, filing_id, kind, subject_type, FILED, regulation_id=found, run_id=run_id,
                        error="adopted after an interrupted filing (found with GET /regulations)")
            filed.reconciled += 1
        else:
            _log_filing(con, filing_id, kind, subject_type, ABANDONED, run_id=run_id,
                        error="interrupted, and not found with GET /regulations: filed again")
            filed.abandoned += 1


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def unfiled(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str, str, str]]:
    """Requests with no filing that was accepted or is still open: (request id, subject, type, subject type),
    in the order requested (`requested_at`, then the order read: `ordinal`). A request whose filing Segment
    refused is not filed again by itself (its error stands until the request is fixed and sent anew under
    another id)."""
    return con.execute(
        f"""
        WITH last AS (
            SELECT filing_id, arg_max(state, logged_at) AS state FROM regulation_filings GROUP BY filing_id
        )
        SELECT r.request_id, r.subject, r.regulation_type, r.subject_type FROM regulation_requests r
        WHERE r.subject IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM regulation_filing_requests f JOIN last l USING (filing_id)
            WHERE f.request_id = r.request_id AND l.state IN ('{INTENT}', '{FILED}', '{REFUSED}'))
        ORDER BY r.requested_at, r.ordinal
        """).fetchall()


def file_requests(con: duckdb.DuckDBPyConnection, client: SegmentPublicApiClient, *, cap: int,
                  run_id: str | None, filed: Filed) -> None:
    """File every unfiled request, `cap` subjects per call, one regulation type and subject type per call,
    in the order they were requested (an UNSUPPRESS is never filed before the suppression it lifts).

    Raises the client's `VendorAuthError` (the token: nothing more can be filed) and `VendorError` when
    retries ran out (the intent stays, reconciled next run); a refusal (another 4xx) is recorded with its
    error (a filing of several subjects is split and filed again, `_file`) and the next batch goes on."""
    pending = unfiled(con)
    batches: list[tuple[str, str, list[tuple[str, str]]]] = []
    for request_id, subject, kind, subject_type in pending:
        if batches and batches[-1][:2] == (kind, subject_type) and len(batches[-1][2]) < cap:
            batches[-1][2].append((request_id, subject))
        else:
            batches.append((kind, subject_type, [(request_id, subject)]))
    for kind, subject_type, members in batches:
        [filing_id] = _intend(con, kind, subject_type, [members], run_id=run_id)
        _file(con, client, filing_id, kind, subject_type, members, run_id=run_id, filed=filed)


def _intend(con: duckdb.DuckDBPyConnection, kind: str, subject_type: str,
            parts: Sequence[Sequence[tuple[str, str]]], *, run_id: str | None,
            split: tuple[str, str] | None = None) -> list[str]:
    """Record an intent for each part ((request id, subject) pairs: one filing each) and commit them before
    any call; returns their filing ids. `split` (filing id, error) is the refused filing the parts were
    split from, recorded refused in the same transaction: a run stopping in between cannot leave its
    requests refused with no filing to carry them (an intent never called is abandoned by `reconcile`)."""
    filing_ids = [uuid.uuid4().hex for _ in parts]
    con.execute("BEGIN")
    try:
        if split is not None:
            _log_filing(con, split[0], kind, subject_type, REFUSED, error=split[1], run_id=run_id)
        for filing_id, members in zip(filing_ids, parts, strict=True):
            _log_filing(con, filing_id, kind, subject_type, INTENT, run_id=run_id)
            con.execute("INSERT INTO regulation_filing_requests SELECT ?, unnest(?::VARCHAR[])",
                        [filing_id, [request_id for request_id, _ in members]])
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    _share(con)  # with the state in PostgreSQL, the intent is shared before the call
    return filing_ids


def _file(con: duckdb.DuckDBPyConnection, client: SegmentPublicApiClient, filing_id: str, kind: str,
          subject_type: str, members: Sequence[tuple[str, str]], *, run_id: str | None, filed: Filed) -> None:
    """Make the intended filing `filing_id` of `members` ((request id, subject) pairs) and record what came
    of it. Segment refuses a whole call for one subject it will not take, so a refused filing of several
    subjects is recorded refused ("split and filed again in halves") and each half filed as its own filing,
    recursively: a batch of 5,000 with one bad id ends with that one request refused, not 5,000."""
    subjects = sorted({subject for _, subject in members})
    try:
        regulation_id = client.create_regulation(kind, subjects, subject_type=subject_type)
    except VendorAuthError:
        _log_filing(con, filing_id, kind, subject_type, ABANDONED, run_id=run_id,
                    error="the Public API token was refused: nothing was filed")
        raise
    except VendorFatalError as exc:
        if len(subjects) > 1:
            first = set(subjects[:len(subjects) // 2])
            halves = [[m for m in members if m[1] in first], [m for m in members if m[1] not in first]]
            split = (filing_id, f"split and filed again in halves: {exc.vendor_message}"[:500])
            filed.split += 1
            for half_id, half in zip(_intend(con, kind, subject_type, halves, run_id=run_id, split=split),
                                     halves, strict=True):
                _file(con, client, half_id, kind, subject_type, half, run_id=run_id, filed=filed)
            return
        _log_filing(con, filing_id, kind, subject_type, REFUSED, error=exc.vendor_message[:500],
                    run_id=run_id)
        filed.refused += 1
        filed.errors.append(f"{kind} for {len(subjects)} subject(s) refused: {exc.vendor_message[:200]}")
        return
    _log_filing(con, filing_id, kind, subject_type, FILED, regulation_id=regulation_id, run_id=run_id)
    _share(con)  # a regulation Segment made, known to every machine at once
    filed.filings += 1
    filed.subjects_filed += len(subjects)


def _share(con: duckdb.DuckDBPyConnection) -> None:
    """With the state in PostgreSQL, check in now what the session of `con` logged: an intent must be in the
    database before its call and a filing as soon as it is made, or a worker killed meanwhile leaves the
    next one (on any machine) to file it again. Nothing for the embedded default, whose file is the state."""
    store.checkpoint(con, force=True)


def track(con: duckdb.DuckDBPyConnection, client: SegmentPublicApiClient, *, filed: Filed,
          on_error: Callable[[str], None] | None = None) -> None:
    """Ask Segment where each open regulation stands (`GET /regulations/{id}`); record each change."""
    open_ = con.execute(
        f"""
        WITH regs AS (
            SELECT regulation_id, any_value(regulation_type) AS kind FROM regulation_filings
            WHERE state = '{FILED}' AND regulation_id IS NOT NULL GROUP BY regulation_id
        ), last AS (
            SELECT regulation_id, arg_max(status, checked_at) AS status FROM regulation_statuses GROUP BY 1
        )
        SELECT r.regulation_id, r.kind, l.status FROM regs r LEFT JOIN last l USING (regulation_id)
        WHERE l.status IS NULL OR l.status NOT IN (SELECT unnest(?::VARCHAR[]))
        ORDER BY r.regulation_id
        """, [sorted(FINAL_STATUSES)]).fetchall()
    for regulation_id, kind, before in open_:
        try:
            regulation = client.get_regulation(regulation_id)
        except VendorError as exc:
            if on_error is not None:
                on_error(f"status of regulation {regulation_id} not read: {exc}")
            continue
        status = str(regulation.get("overallStatus") or "").upper()
        if status and status != before:
            con.execute("INSERT INTO regulation_statuses VALUES (?, ?, ?, ?)",
                        [regulation_id, status, _parse_time(regulation.get("finishedAt")), _now()])
            filed.status_changes.append((regulation_id, kind, status))


def open_regulations(con: duckdb.DuckDBPyConnection) -> int:
    """Filed regulations Segment has not finished (or whose status was never read)."""
    return con.execute(
        "SELECT count(DISTINCT regulation_id) FROM regulation_record WHERE regulation_id IS NOT NULL "
        "AND (status IS NULL OR status NOT IN (SELECT unnest(?::VARCHAR[])))", [sorted(FINAL_STATUSES)]
    ).fetchone()[0]


def to_erase(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Subjects of a deleting request Segment accepted whose id segment_ops still holds: to erase."""
    return [row[0] for row in con.execute(
        "SELECT DISTINCT subject FROM regulation_record WHERE subject IS NOT NULL AND filing_state = ? "
        "AND regulation_type IN (SELECT unnest(?::VARCHAR[])) ORDER BY 1",
        [FILED, sorted(ERASING)]).fetchall()]


@dataclass(frozen=True)
class Standing:
    """Where every recorded request stands, for the run's metadata and checks."""

    requests: int
    by_filing: dict[str, int]  # unfiled / intent / filed / refused / abandoned
    by_status: dict[str, int]  # Segment's status of filed requests (none yet: "unknown")
    by_type: dict[str, int]
    failed: list[tuple[str, str, str, int]]  # (regulation id, type, status, subjects)


def standing(con: duckdb.DuckDBPyConnection) -> Standing:
    rows = con.execute(
        "SELECT filing_state, coalesce(status, 'unknown'), regulation_type, count(*) FROM regulation_record "
        "GROUP BY ALL").fetchall()
    by_filing: dict[str, int] = {}
    by_status: dict[str, int] = {}
    by_type: dict[str, int] = {}
    for state, status, kind, n in rows:
        by_filing[state] = by_filing.get(state, 0) + n
        by_type[kind] = by_type.get(kind, 0) + n
        if state == FILED:
            by_status[status] = by_status.get(status, 0) + n
    failed = con.execute(
        "SELECT regulation_id, any_value(regulation_type), any_value(status), count(*) "
        "FROM regulation_record WHERE status IN (SELECT unnest(?::VARCHAR[])) "
        "GROUP BY regulation_id ORDER BY 1",
        [sorted(FAILED_STATUSES)]).fetchall()
    return Standing(sum(by_filing.values()), by_filing, by_status, by_type, failed)
