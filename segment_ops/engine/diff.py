"""The diff every diff sync shares: staged rows vs the last *delivered* snapshot, by key, in DuckDB SQL.

`plan_changes` turns what changed into planned ledger messages (or rejections with a reason);
`advance_snapshot` records a change once the ledger says it was delivered (ARCHITECTURE rule 2).
Set-based throughout: Python only moves counts and a few samples.
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import duckdb
import orjson
from duckdb.sqltypes import DuckDBPyType

from segment_ops.engine import store
from segment_ops.engine.calls import MAX_MESSAGE_BYTES
from segment_ops.engine.delivery import DeliveryError, DeliveryReport, Destination, deliver_pending
from segment_ops.engine.guard import GuardLimits, PlanFigures
from segment_ops.engine.ledger import (
    DELIVERED,
    HELD,
    PENDING,
    REJECTED,
    SUPERSEDED,
    VERIFIED,
    Ledger,
    LedgerCounts,
    fingerprint_sql,
)
from segment_ops.engine.progress import DeliveryProgress
from segment_ops.engine.spec import DiffSpec, SpecError
from segment_ops.engine.sql import literal, quote
from segment_ops.engine.warehouse import UNSERIALISABLE_COLUMN, StagedResult

SAMPLE_SIZE = 5
REJECTION_SAMPLE_SIZE = 20
_RECORD_CHARS = 2_000
_ISO_MS = "'%Y-%m-%dT%H:%M:%S.%gZ'"
# Spec §1: a call's `timestamp` is ISO-8601, which writes a year in four digits (a wider year needs the
# expanded form, "by agreement" only), and Python's datetime (analytics-python's, this project's) holds years
# 1-9999. DuckDB holds years up to 294247, BC dates and `infinity`: none is a moment Segment can take.
MIN_YEAR, MAX_YEAR = 1, 9999
_FLOATS = frozenset({"float", "double"})
_MOMENTS = frozenset({"date", "timestamp", "timestamp_s", "timestamp_ms", "timestamp_ns",
                      "timestamp with time zone"})
_CONTAINERS = frozenset({"struct", "list", "array", "map", "union"})
# Types (DuckDBPyType ids) whose DuckDB hash() tells apart any two values their JSON writes differently
# (`_SpecSql._hashed`); JSON's id is varchar.
_PLAIN_HASHED = frozenset({"boolean", "tinyint", "smallint", "integer", "bigint", "hugeint", "utinyint",
                           "usmallint", "uinteger", "ubigint", "uhugeint", "decimal", "varchar", "uuid",
                           "blob", "bit", "date", "timestamp", "timestamp_s", "timestamp_ms", "timestamp_ns",
                           "timestamp with time zone"})
# A bare NaN/Infinity token outside the strings of a JSON text (DuckDB's JSON type accepts them).
_BARE_NON_FINITE = r"(?i)(^|[\[:,])\s*-?(nan|inf|infinity)\s*([\],}]|$)"
_JSON_STRING = r'"([^"\\]|\\.)*"'

# The diff's state, beside the ledger in the sync's staging file:
# - `rev_snapshot`: per key, the last delivered row hash, version and ids (removed keys stay as tombstones
#   so their version keeps counting), and the fingerprint of the row that hash was taken from;
# - `rev_changes`: each planned, not yet settled change (message_id -> key, hash, kind, ids, fingerprint),
#   written before the ledger plans the message, so every pending message of the sync has its row here;
# - `rev_state`: the generation (a full resync starts a new one) and the fingerprint scheme;
# - `rev_superseded`: messages this module marked superseded, so reviving one needs no scan of the ledger.
_STATE_CREATE = """
CREATE TABLE IF NOT EXISTS rev_state (generation INTEGER NOT NULL, fingerprint_scheme VARCHAR);
CREATE TABLE IF NOT EXISTS rev_snapshot (
    record_key   VARCHAR NOT NULL,
    row_hash     VARCHAR NOT NULL,
    version      BIGINT NOT NULL,      -- deliveries of this key so far (in this generation)
    removed      BOOLEAN NOT NULL,     -- tombstone: the key's removal was delivered (mirror)
    user_id      VARCHAR,
    anonymous_id VARCHAR,
    group_id     VARCHAR,
    message_id   VARCHAR NOT NULL,     -- the delivered message that set this state
    delivered_at TIMESTAMPTZ,
    fingerprint  BIGINT                -- of the row's typed values (`_SpecSql.fingerprint`); NULL: unknown
);
CREATE TABLE IF NOT EXISTS rev_changes (
    message_id   VARCHAR NOT NULL,
    generation   INTEGER NOT NULL,
    record_key   VARCHAR NOT NULL,
    kind         VARCHAR NOT NULL,     -- added | changed | removed
    row_hash     VARCHAR NOT NULL,
    version      BIGINT NOT NULL,
    user_id      VARCHAR,
    anonymous_id VARCHAR,
    group_id     VARCHAR,
    planned_run  VARCHAR,
    planned_at   TIMESTAMPTZ NOT NULL,
    fingerprint  BIGINT
);
-- Messages this module marked superseded in the ledger, so reviving one needs no scan of the ledger.
CREATE TABLE IF NOT EXISTS rev_superseded (message_id VARCHAR NOT NULL, seq BIGINT NOT NULL);
"""
# Version 2 adds the fingerprints: a file from before has none, so its first run hashes every row's body
# once (as every run did before) and records them; nothing is sent for rows that did not change.
_FINGERPRINTS = """
ALTER TABLE rev_state ADD COLUMN IF NOT EXISTS fingerprint_scheme VARCHAR;
ALTER TABLE rev_snapshot ADD COLUMN IF NOT EXISTS fingerprint BIGINT;
ALTER TABLE rev_changes ADD COLUMN IF NOT EXISTS fingerprint BIGINT;
"""
# Erasure (`engine/erasure.py`): a key that is an erased subject leaves the snapshot and the changes; a key
# that is something else (an order, an account) keeps its row and hashes without the subject's ids, so the
# next run sends nothing for it while its row is unchanged. An erased message is never revived.
_ERASE = """
DELETE FROM rev_snapshot WHERE erased_id(record_key);
UPDATE rev_snapshot SET user_id = CASE WHEN erased_id(user_id) THEN NULL ELSE user_id END,
       anonymous_id = CASE WHEN erased_id(anonymous_id) THEN NULL ELSE anonymous_id END,
       group_id = CASE WHEN erased_id(group_id) THEN NULL ELSE group_id END
WHERE erased_id(user_id) OR erased_id(anonymous_id) OR erased_id(group_id);
DELETE FROM rev_changes WHERE erased_id(record_key);
UPDATE rev_changes SET user_id = CASE WHEN erased_id(user_id) THEN NULL ELSE user_id END,
       anonymous_id = CASE WHEN erased_id(anonymous_id) THEN NULL ELSE anonymous_id END,
       group_id = CASE WHEN erased_id(group_id) THEN NULL ELSE group_id END
WHERE erased_id(user_id) OR erased_id(anonymous_id) OR erased_id(group_id);
DELETE FROM rev_superseded WHERE message_id IN (SELECT message_id FROM erased_messages);
"""
STATE = store.register(store.StateSchema(
    name="diff", version=2, tables=("rev_state", "rev_snapshot", "rev_changes", "rev_superseded"),
    create=_STATE_CREATE, migrations={1: _FINGERPRINTS}, erase=_ERASE))


@dataclass
class DiffPlan:
    """What one run found and planned for a spec."""

    rows_read: int = 0
    added: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0
    rejected: int = 0
    planned: int = 0  # messages newly pending (or made pending again)
    already_known: int = 0  # changes whose message the ledger already had (pending or delivered)
    superseded: int = 0
    changed_not_sent: int = 0  # append mode: a known key changed; append never re-sends
    baselined: int = 0  # baseline: keys recorded as delivered without sending (`plan_changes(baseline=True)`)
    samples: list[bytes] = field(default_factory=list)
    rejection_samples: list[tuple[str | None, str]] = field(default_factory=list)
    guard: PlanFigures | None = None  # what the plan guard weighs (not for a baseline)
    seconds: float = 0.0


def ensure_state(con: duckdb.DuckDBPyConnection) -> None:
    store.ensure(con, STATE)
    if con.execute("SELECT count(*) FROM rev_state").fetchone()[0] == 0:
        con.execute("INSERT INTO rev_state VALUES (1, NULL)")


def generation(con: duckdb.DuckDBPyConnection) -> int:
    return con.execute("SELECT max(generation) FROM rev_state").fetchone()[0]


def reset_snapshot(con: duckdb.DuckDBPyConnection) -> int:
    """Full resync: forget what was delivered and start a new generation; returns it.

    Changes still pending from the old generation stay in `rev_changes`: the next plan supersedes them.
    """
    con.execute("BEGIN")
    try:
        con.execute("UPDATE rev_state SET generation = generation + 1")
        con.execute("DELETE FROM rev_snapshot")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return generation(con)


def delivered_rows() -> str:
    """A SQL relation of the keys whose last delivered change left them present: record_key, the ids it
    was sent with (user_id, anonymous_id, group_id) and delivered_at. For syncs that build on what
    Segment holds (Heap's drop guard, Pendo's sticky userId) without knowing the diff's tables."""
    return ("(SELECT record_key, user_id, anonymous_id, group_id, delivered_at FROM rev_snapshot "
            "WHERE NOT removed)")


def key_states(con: duckdb.DuckDBPyConnection, sync: str, run_id: str | None) -> str:
    """Create the temp table `diff_key_states` and return its name: per key the sync ever planned or
    rejected, whether Segment holds it (`delivered`), whether a change of it is `pending`, its last
    message's status and planning run, and whether this run rejected it (`rejected_now`)."""
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE diff_key_states AS
        WITH last_message AS (
            SELECT record_key, arg_max(status, seq) AS last_status, arg_max(planned_run, seq) AS planned_run
            FROM ledger WHERE sync = $sync GROUP BY record_key
        ), pending AS (
            SELECT DISTINCT c.record_key FROM rev_changes c
            JOIN ledger l ON l.sync = $sync AND l.message_id = c.message_id AND l.status IN ($pending, $held)
        ), rejected_now AS (
            SELECT DISTINCT record_key FROM rejected WHERE sync = $sync AND run_id = $run_id
        ), keys AS (
            SELECT record_key FROM last_message UNION SELECT record_key FROM rejected_now
            UNION SELECT record_key FROM rev_snapshot
        )
        SELECT k.record_key,
               s.record_key IS NOT NULL AND NOT s.removed AS delivered,
               p.record_key IS NOT NULL AS pending,
               m.last_status, m.planned_run,
               j.record_key IS NOT NULL AS rejected_now,
               m.last_status = $rejected AS last_rejected
        FROM keys k
        LEFT JOIN rev_snapshot s USING (record_key)
        LEFT JOIN pending p USING (record_key)
        LEFT JOIN last_message m USING (record_key)
        LEFT JOIN rejected_now j USING (record_key)
        WHERE k.record_key IS NOT NULL
        """, {"sync": sync, "run_id": run_id, "pending": PENDING, "held": HELD, "rejected": REJECTED})
    return "diff_key_states"


def advance_snapshot(con: duckdb.DuckDBPyConnection, sync: str) -> int:
    """Move every change the ledger reports delivered into the snapshot; drop those that settled otherwise
    (rejected by Segment, superseded). Returns how many keys advanced. Safe to run at any time."""
    if con.execute("SELECT count(*) FROM rev_changes").fetchone()[0] == 0:
        return 0  # the usual start of a run: nothing in flight, no need to read the ledger
    current = generation(con)
    Ledger(con, create=False).states_of(sync, "rev_changes", "rev_states")
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE rev_settled AS
        SELECT c.*, l.status, l.seq, l.delivered_at
        FROM rev_changes c JOIN rev_states l ON l.message_id = c.message_id
        WHERE l.status NOT IN (?, ?)
        """, [PENDING, HELD])  # a held message waits for approval: not settled
    con.execute("DROP TABLE rev_states")
    in_flight, settled = con.execute("SELECT (SELECT count(*) FROM rev_changes), count(*) FROM rev_settled"
                                     ).fetchone()
    con.execute("BEGIN")
    try:
        if settled == in_flight:  # all settled (the end of a delivery that finished): every change closes
            closed = "rev_settled"
        else:
            # A change with several calls (a spec with a companion event) settles once all of them did;
            # until then its settled calls stay in rev_changes.
            con.execute(
                """
                CREATE OR REPLACE TEMP TABLE rev_closed AS
                SELECT d.* FROM rev_settled d
                WHERE NOT EXISTS (
                    SELECT 1 FROM rev_changes c
                    WHERE c.record_key = d.record_key AND c.generation = d.generation
                      AND c.version = d.version
                      AND c.message_id NOT IN (SELECT message_id FROM rev_settled))
                """)
            closed = "rev_closed"
        # A key with several closed changes (delivered, then changed and delivered again before this ran)
        # advances to its latest; one change per key, the usual case, needs no window over them.
        repeated = con.execute(f"SELECT count(*) > count(DISTINCT record_key) FROM {closed}").fetchone()[0]
        latest = ("QUALIFY row_number() OVER (PARTITION BY d.record_key "
                  "ORDER BY d.version DESC, d.seq DESC) = 1" if repeated else "")
        con.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE rev_advanced AS
            SELECT d.* FROM {closed} d LEFT JOIN rev_snapshot s ON s.record_key = d.record_key
            WHERE d.status IN (?, ?) AND d.generation = ? AND d.version > coalesce(s.version, 0)
            {latest}
            """, [DELIVERED, VERIFIED, current])
        advanced = con.execute("SELECT count(*) FROM rev_advanced").fetchone()[0]
        if advanced:
            con.execute("DELETE FROM rev_snapshot WHERE record_key IN (SELECT record_key FROM rev_advanced)")
            con.execute(
                """
                INSERT INTO rev_snapshot
                SELECT record_key, row_hash, version, kind = 'removed', user_id, anonymous_id, group_id,
                       message_id, delivered_at, fingerprint
                FROM rev_advanced
                """)
        if closed == "rev_settled":
            con.execute("DELETE FROM rev_changes")
        else:
            con.execute("DELETE FROM rev_changes WHERE message_id IN (SELECT message_id FROM rev_closed)")
            con.execute("DROP TABLE rev_closed")
        con.execute("DROP TABLE rev_advanced")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("DROP TABLE rev_settled")
    return advanced


@dataclass
class Settlement:
    """What sending a diff's pending messages did: the delivery, the keys advanced, the ledger after it."""

    delivery: DeliveryReport
    advanced: int
    ledger: LedgerCounts
    failure: DeliveryError | None  # set when messages stay pending (the next run sends them)


def deliver_changes(con: duckdb.DuckDBPyConnection, ledger: Ledger, sync: str,
                    client_factory: Callable[[], Destination], *, run_id: str | None = None,
                    max_in_flight: int = 4, progress_log: Callable[[str], None] | None = None) -> Settlement:
    """Send everything pending for `sync`, then advance the snapshot for what was acknowledged, also when
    delivery stopped part-way (a fatal client error, e.g. a bad write key, still propagates).
    `progress_log`: where a long delivery's progress goes when no terminal shows its bar (a run's log)."""
    client = client_factory()
    failure: DeliveryError | None = None
    progress = DeliveryProgress(sync, destination=client.name, log=progress_log) if progress_log else None
    try:
        delivery = deliver_pending(ledger, sync, client, run_id=run_id, max_in_flight=max_in_flight,
                                   progress=progress)
    except DeliveryError as exc:
        failure, delivery = exc, exc.report
    finally:
        client.close()
        advanced = advance_snapshot(con, sync)
    return Settlement(delivery, advanced, ledger.counts(sync), failure)


def plan_changes(con: duckdb.DuckDBPyConnection, ledger: Ledger, spec: DiffSpec, staged: StagedResult, *,
                 run_id: str | None = None, dry_run: bool = False, ignore_snapshot: bool = False,
                 baseline: bool = False, sample_size: int = SAMPLE_SIZE,
                 guard: GuardLimits | None = None) -> DiffPlan:
    """Diff `staged` against the snapshot and plan the changes in the ledger (counts only when `dry_run`).

    1. Fingerprint: each staged row's mapped typed values get a 64-bit hash (`_SpecSql.fingerprint`). A key
       whose fingerprint equals the snapshot's is unchanged, with no JSON built: work beyond one scan is
       proportional to what changed.
    2. Hash the rest: the other rows (new keys, other fingerprints) become their Segment call body, built
       from typed columns (`to_json`, `struct_pack`; timestamps as UTC ISO-8601 with milliseconds), and
       `row_hash = md5(body)`, which covers exactly what is sent. Diff: added (key unknown, or removed
       before), changed (hash differs from the delivered one), unchanged (same hash: only the snapshot's
       fingerprint is brought up to date), and in mirror mode removed (delivered before, absent now).
    3. Reject, with the reason, into the ledger: null or repeated keys, values JSON cannot represent (also
       nested: `value_problem`), dates and timestamps ISO-8601 cannot write, calls Segment would drop (no
       userId/anonymousId, groupId or event name), messages over 32 KB. A rejected row's key still counts
       as present, so mirror mode never "removes" a merely broken row.
    4. Plan one message per change (plus its companion track call, if the spec has one), with a
       deterministic messageId (`_SpecSql.id_hash`).

    A pending message that no longer matches the rows (changed again before it was delivered) is
    superseded, so stale values are never sent after newer ones; if the row returns to that state the
    message is made pending again. `ignore_snapshot` diffs against an empty snapshot without touching it
    (a dry run of a full resync). `baseline` plans the same changes and records them in the snapshot as
    delivered instead of planning messages (`_record_baseline`): nothing is sent, the ledger gets nothing.
    """
    started = time.monotonic()
    sql = _SpecSql(spec, staged, generation(con) + (1 if ignore_snapshot else 0))
    snapshot = "(SELECT * FROM rev_snapshot WHERE false)" if ignore_snapshot else "rev_snapshot"
    table = quote(staged.table)
    plan = DiffPlan(rows_read=staged.rows)
    writes = not dry_run and not ignore_snapshot
    trusted = _fingerprints_usable(con, sql.scheme, adopt=writes)
    diff = functools.partial(_diff, con, spec, sql, snapshot, table, plan, trusted=trusted, refresh=writes)

    null_rows, duplicate_rows = diff()
    if writes:
        # A change of two calls, one delivered and one still pending, that this run no longer wants (the key
        # left, or changed again): its pending call is superseded, so the change settles as what Segment did
        # get; the snapshot then records it and the diff, run again, undoes it (the trait false and the
        # exited event after a half-sent entry) instead of losing it.
        plan.superseded = _settle_half_delivered(con, ledger, spec.sync)
        if plan.superseded and advance_snapshot(con, spec.sync):
            null_rows, duplicate_rows = diff()
    # Counts of what will be sent; a rejected row counts as rejected only, so that
    # rows_read = added + changed + unchanged + rejected.
    added, changed, plan.removed = con.execute(
        "SELECT count(*) FILTER (WHERE kind = 'added'), count(*) FILTER (WHERE kind = 'changed'), "
        "count(*) FILTER (WHERE kind = 'removed') FROM rev_wanted WHERE part = 0").fetchone()
    plan.added = added
    plan.changed = plan.changed if spec.mode == "append" else changed
    _collect_rejections(con, spec, sql, table, null_rows, duplicate_rows)
    plan.rejected = con.execute("SELECT count(*) FROM rev_rejections").fetchone()[0]
    plan.rejection_samples = con.execute(
        "SELECT record_key, reason FROM rev_rejections LIMIT ?",
        [max(REJECTION_SAMPLE_SIZE, sample_size)]).fetchall()
    plan.samples = [p.encode() for (p,) in con.execute(
        "SELECT payload FROM rev_wanted ORDER BY ord LIMIT ?", [sample_size]).fetchall()]

    if not baseline:
        plan.guard = _guard_figures(con, ledger, spec, sql, snapshot, plan, sample_size,
                                    count_nulled=lambda delivered: dry_run or _nulled_may_trip(
                                        guard, delivered, plan.changed))
    if dry_run:
        ledger.states_of(spec.sync, "rev_wanted", "rev_wanted_states")
        wanted, known = con.execute(
            "SELECT count(*), count(*) FILTER (WHERE EXISTS (SELECT 1 FROM rev_wanted_states l "
            "WHERE l.message_id = w.message_id AND l.status <> ?)) FROM rev_wanted w",
            [SUPERSEDED]).fetchone()
        # What planning would leave to send: the wanted messages not settled or in a destination's hands.
        con.execute(
            "CREATE OR REPLACE TEMP TABLE rev_would_send AS SELECT w.message_id, "
            "coalesce(l.status, ?) AS status FROM rev_wanted w "
            "LEFT JOIN rev_wanted_states l ON l.message_id = w.message_id "
            "WHERE coalesce(l.status, ?) IN (?, ?, ?)", [PENDING, PENDING, PENDING, HELD, SUPERSEDED])
        figures = plan.guard
        figures.messages, figures.held_before, figures.fingerprint = con.execute(
            fingerprint_sql("rev_would_send")).fetchone()
        con.execute("DROP TABLE rev_would_send")
        con.execute("DROP TABLE rev_wanted_states")
        plan.planned, plan.already_known = wanted - known, known
    elif baseline:
        plan.superseded += _supersede_in_flight(con, ledger, spec.sync)
        plan.baselined = _record_baseline(con, run_id)
        # Its rejected rows are kept as a run's are (`segment-ops rejected` lists them); nothing is planned.
        ledger.reject_relation(spec.sync, "rev_rejections", run_id=run_id)
    else:
        ledger.reject_relation(spec.sync, "rev_rejections", run_id=run_id)
        # Recorded before the ledger plans them: a run killed in between leaves a row whose message is
        # unknown to the ledger (harmless: planned next time, or dropped as stale), never the reverse.
        # With nothing in flight (the usual start, and every first run), no change is recorded already and
        # none can be stale.
        in_flight = con.execute("SELECT count(*) FROM rev_changes").fetchone()[0]
        new = ("WHERE NOT EXISTS (SELECT 1 FROM rev_changes c WHERE c.message_id = w.message_id)"
               if in_flight else "")
        con.execute(
            f"""
            INSERT INTO rev_changes
            SELECT message_id, ?, record_key, kind, row_hash, version, user_id, anonymous_id, group_id,
                   ?, now(), fingerprint
            FROM rev_wanted w {new}
            """, [sql.generation, run_id])
        if in_flight:
            plan.superseded += _supersede_stale(con, ledger, spec.sync)
        revived = _revive(con, ledger, spec.sync)
        counts = ledger.plan_relation(spec.sync, "rev_wanted", run_id=run_id)
        plan.planned, plan.already_known = counts.planned + revived, counts.already_known - revived
        # What a delivery would send, from the ledger's running counts; the fingerprint (a scan of the
        # sync's messages) is taken only when a plan is held or approved (`engine.run`).
        settled = ledger.counts(spec.sync)
        plan.guard.messages, plan.guard.held_before = settled.pending + settled.held, settled.held
    con.execute("DROP VIEW IF EXISTS rev_candidates")  # a view over rev_hashed: no copy of the bodies
    for name in ("rev_current", "rev_suspects", "rev_prior", "rev_hashed", "rev_wanted", "rev_oversize",
                 "rev_rejections"):
        con.execute(f"DROP TABLE IF EXISTS {name}")
    plan.seconds = time.monotonic() - started
    return plan


def _nulled_may_trip(guard: GuardLimits | None, delivered: int, changed: int) -> bool:
    """Whether counting nulled traits can matter: only changed keys can be nulled, so with changed keys at
    most `max_nulled_share` of the delivered ones (or the limit off, or too few delivered) it cannot trip."""
    return (guard is not None and guard.max_nulled_share < 1 and delivered >= max(guard.min_delivered, 1)
            and changed > guard.max_nulled_share * delivered)


def _guard_figures(con: duckdb.DuckDBPyConnection, ledger: Ledger, spec: DiffSpec, sql: _SpecSql,
                   snapshot: str, plan: DiffPlan, sample_size: int,
                   count_nulled: Callable[[int], bool]) -> PlanFigures:
    """What the plan guard weighs of `rev_wanted` (`engine.guard`): the keys delivered before, the removals
    and changes, and the changed keys whose call sets a trait/property to null that the key's last
    delivered call (its snapshot message's payload in the ledger; none for a baseline's or a compacted one)
    had non-null. JSON is read for the changed keys only. The messages and fingerprint are filled once the
    plan is in the ledger."""
    figures = PlanFigures(removed=plan.removed, changed=0 if spec.mode == "append" else plan.changed)
    figures.delivered_keys = con.execute(f"SELECT count(*) FROM {snapshot} WHERE NOT removed").fetchone()[0]
    figures.removal_samples = [p.encode() for (p,) in con.execute(
        "SELECT payload FROM rev_wanted WHERE kind = 'removed' AND part = 0 ORDER BY ord LIMIT ?",
        [sample_size]).fetchall()]
    figures.change_samples = [p.encode() for (p,) in con.execute(
        "SELECT payload FROM rev_wanted WHERE kind = 'changed' AND part = 0 ORDER BY ord LIMIT ?",
        [sample_size]).fetchall()]
    if not plan.changed or not sql.fields or spec.mode == "append":
        figures.nulled = 0
        return figures
    if not count_nulled(figures.delivered_keys):  # reading every changed key's last payload would be wasted
        return figures
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE rev_guard_prior AS
        SELECT w.record_key, w.payload AS new_payload, s.message_id
        FROM rev_wanted w JOIN {snapshot} s ON s.record_key = w.record_key
        WHERE w.kind = 'changed' AND w.part = 0
    """)
    ledger.payloads_of(spec.sync, "rev_guard_prior", "rev_guard_payloads")
    nulled = ", ".join(
        f"CASE WHEN json_extract_string(o.payload, {literal(path)}) IS NOT NULL "
        f"AND json_extract_string(c.new_payload, {literal(path)}) IS NULL THEN {literal(name)} END"
        for name in sql.fields
        for path in ['$.' + spec.fields_name + '."' + name.replace('"', '\\"') + '"'])
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE rev_guard_nulled AS
        SELECT record_key, fields FROM (
            SELECT c.record_key, list_filter([{nulled}], lambda x: x IS NOT NULL) AS fields
            FROM rev_guard_prior c JOIN rev_guard_payloads o ON o.message_id = c.message_id)
        WHERE len(fields) > 0
    """)
    figures.nulled = con.execute("SELECT count(*) FROM rev_guard_nulled").fetchone()[0]
    figures.nulled_samples = [(key, name) for key, fields in con.execute(
        "SELECT record_key, fields FROM rev_guard_nulled ORDER BY record_key LIMIT ?", [sample_size]
    ).fetchall() for name in fields[:3]]
    for name in ("rev_guard_prior", "rev_guard_payloads", "rev_guard_nulled"):
        con.execute(f"DROP TABLE {name}")
    return figures


class BaselineRefused(RuntimeError):
    """A baseline cannot be recorded: the sync has messages a destination may hold or be holding."""


def delivered_state(con: duckdb.DuckDBPyConnection, ledger: Ledger, sync: str) -> tuple[int, int]:
    """(keys in the snapshot, messages the ledger ever planned) of `sync`: (0, 0) for a sync that never
    delivered nor planned anything, the only state a baseline is recorded on without being forced."""
    keys = con.execute("SELECT count(*) FROM rev_snapshot").fetchone()[0]
    return keys, ledger.ever_planned(sync)


def _supersede_in_flight(con: duckdb.DuckDBPyConnection, ledger: Ledger, sync: str) -> int:
    """Baseline: every change still pending is superseded (the baseline says the destination holds the
    current rows already) and `rev_changes` is emptied; returns how many were superseded. Refuses
    (`BaselineRefused`, nothing changed) while a message is handed over or awaiting its acknowledgement."""
    if con.execute("SELECT count(*) FROM rev_changes").fetchone()[0] == 0:
        return 0
    ledger.states_of(sync, "rev_changes", "rev_baseline_states")
    try:
        busy = con.execute("SELECT count(*) FROM rev_baseline_states WHERE status NOT IN (?, ?, ?)",
                           [PENDING, HELD, SUPERSEDED]).fetchone()[0]
        if busy:
            raise BaselineRefused(f"sync {sync!r}: {busy} message(s) are in flight or awaiting the "
                                  "destination's acknowledgement; run the sync to settle them, then record "
                                  "the baseline")
        pending = con.execute("SELECT message_id, seq FROM rev_baseline_states WHERE status IN (?, ?)",
                              [PENDING, HELD]).fetchall()
    finally:
        con.execute("DROP TABLE rev_baseline_states")
    _mark_superseded(con, ledger, sync, pending)
    con.execute("DELETE FROM rev_changes")
    return len(pending)


def _record_baseline(con: duckdb.DuckDBPyConnection, run_id: str | None) -> int:
    """Record every change `rev_wanted` holds (the call of each key, not a companion event) in the
    snapshot as delivered, under `baseline:<run>` instead of a messageId; returns how many keys. The next
    run's diff then finds these rows unchanged, by fingerprint, and sends only what changed since. A key
    that left the query (a mirror model's removal) is not recorded: its snapshot row stays, so the next run
    still sends the call that clears it, as a baseline says nothing about what Segment holds for it."""
    con.execute("BEGIN")
    try:
        con.execute("DELETE FROM rev_snapshot WHERE record_key IN "
                    "(SELECT record_key FROM rev_wanted WHERE part = 0 AND kind <> 'removed')")
        con.execute(
            """
            INSERT INTO rev_snapshot
            SELECT record_key, row_hash, version, kind = 'removed', user_id, anonymous_id, group_id,
                   'baseline:' || ?, now(), fingerprint
            FROM rev_wanted WHERE part = 0 AND kind <> 'removed'
            """, [run_id or "manual"])
        recorded = con.execute("SELECT count(*) FROM rev_wanted WHERE part = 0 AND kind <> 'removed'"
                               ).fetchone()[0]
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return recorded


def _fingerprints_usable(con: duckdb.DuckDBPyConnection, scheme: str, *, adopt: bool) -> bool:
    """Whether the snapshot's fingerprints were taken under `scheme` (this spec, these column types, this
    DuckDB) and the session's time zone, so an equal fingerprint proves a row unchanged.

    A fingerprint is a hash whose values may differ between DuckDB versions, and a changed spec may turn the
    same values into another body: under another scheme none is trusted. With `adopt` (a run that writes),
    the old fingerprints are cleared and `scheme` recorded; the run then hashes every row's body once,
    compares it with the delivered hash (the truth, whatever the scheme) and records the new fingerprints,
    so an upgrade costs one slower run and never a re-send.
    """
    # The session's time zone too: a timestamp with time zone cast to text (an id, or inside a struct or
    # list) is written in it.
    scheme = f"{scheme}:{con.execute('SELECT current_setting(?)', ['TimeZone']).fetchone()[0]}"
    if con.execute("SELECT any_value(fingerprint_scheme) FROM rev_state").fetchone()[0] == scheme:
        return True
    if not adopt:
        return False
    con.execute("BEGIN")
    try:
        con.execute("UPDATE rev_snapshot SET fingerprint = NULL WHERE fingerprint IS NOT NULL")
        con.execute("UPDATE rev_changes SET fingerprint = NULL WHERE fingerprint IS NOT NULL")
        con.execute("UPDATE rev_state SET fingerprint_scheme = ?", [scheme])
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return True


def _diff(con: duckdb.DuckDBPyConnection, spec: DiffSpec, sql: _SpecSql, snapshot: str, table: str,
          plan: DiffPlan, *, trusted: bool, refresh: bool) -> tuple[int, int]:
    """The diff of `plan_changes` (its steps 1 and 2, and the messages of step 4): `rev_suspects` (the null
    and repeated keys also in `rev_current`), `rev_hashed`, the view `rev_candidates` and `rev_wanted` (the
    messages this run wants, oversize ones moved to `rev_oversize`); sets the plan's unchanged (and append
    mode's changed) counts. `trusted`: the snapshot's fingerprints were taken under `sql.scheme`, so an equal
    one proves a row unchanged; `refresh`: bring the snapshot's fingerprints up to date. Returns the
    null-key and repeated-key row counts."""
    # 1. One pass: per key its fingerprint and how many rows carry it (`copies`), against the snapshot's key
    #    and fingerprint only (so the hash tables stay small). Kept: null and repeated keys (no call can be
    #    made for them), and keys whose fingerprint does not prove them unchanged.
    same = "s.fingerprint = c.fingerprint" if trusted else "false"
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE rev_suspects AS
        SELECT c.record_key, c.fingerprint, c.copies
        FROM (SELECT {sql.key} AS record_key, any_value({sql.fingerprint}) AS fingerprint, count(*) AS copies
              FROM {table} AS r GROUP BY ALL) AS c
        LEFT JOIN (SELECT record_key, fingerprint, removed FROM {snapshot}) AS s
               ON s.record_key = c.record_key
        WHERE c.record_key IS NULL OR c.copies > 1 OR s.record_key IS NULL OR s.removed
           OR NOT coalesce({same}, false)
    """)
    con.execute("CREATE OR REPLACE TEMP TABLE rev_current AS SELECT record_key, copies FROM rev_suspects "
                "WHERE record_key IS NULL OR copies > 1")
    null_rows, duplicate_rows = con.execute(
        "SELECT coalesce(sum(copies) FILTER (WHERE record_key IS NULL), 0), "
        "coalesce(sum(copies) FILTER (WHERE record_key IS NOT NULL), 0) FROM rev_current").fetchone()
    if null_rows or duplicate_rows:
        con.execute("DELETE FROM rev_suspects WHERE record_key IS NULL OR copies > 1")
    # 2. Only the suspects get their body and row hash, their ids and the reason they cannot be sent (taken
    #    here, as a key is only known to be a change once its hash is). Each lookup is a semi-join or a join
    #    built on the few suspects, never another hash table over the whole snapshot.
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE rev_prior AS
        SELECT record_key, row_hash, version, removed FROM {snapshot}
        WHERE record_key IN (SELECT record_key FROM rev_suspects)
    """)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE rev_hashed AS
        SELECT *, md5(body_open || '}}') AS row_hash FROM (
            SELECT u.record_key, u.fingerprint, s.record_key IS NOT NULL AND NOT s.removed AS known,
                   s.row_hash AS old_hash, coalesce(s.version, 0) AS old_version, {sql.user_id} AS user_id,
                   {sql.anonymous_id} AS anonymous_id, {sql.group_id} AS group_id,
                   {sql.body_open} AS body_open, {sql.reason} AS reason
            FROM rev_suspects u JOIN {table} AS r ON {sql.key} = u.record_key
            LEFT JOIN rev_prior s ON s.record_key = u.record_key
        )
    """)
    valid_keys = plan.rows_read - null_rows - duplicate_rows
    delta_added, delta_changed = con.execute(
        "SELECT count(*) FILTER (WHERE NOT known), count(*) FILTER (WHERE known AND row_hash <> old_hash) "
        "FROM rev_hashed").fetchone()
    plan.unchanged = valid_keys - delta_added - delta_changed
    if refresh:
        # Unchanged rows whose fingerprint the snapshot did not have (first run of this scheme, a value that
        # changed and came back): record it, so the next run skips them without building their bodies.
        con.execute("""
            UPDATE rev_snapshot s SET fingerprint = h.fingerprint FROM rev_hashed h
            WHERE s.record_key = h.record_key AND h.known AND h.row_hash = h.old_hash
              AND s.fingerprint IS DISTINCT FROM h.fingerprint
        """)
    if spec.mode == "append":
        plan.changed = plan.changed_not_sent = delta_changed
    # 3. Candidate calls: what this run sends (append: only added keys); 4. their messages, below.
    sent = "NOT known" if spec.mode == "append" else "(NOT known OR row_hash <> old_hash)"
    con.execute(f"""
        CREATE OR REPLACE TEMP VIEW rev_candidates AS
        SELECT record_key, CASE WHEN known THEN 'changed' ELSE 'added' END AS kind, row_hash,
               old_version + 1 AS version, user_id, anonymous_id, group_id, body_open, reason, fingerprint
        FROM rev_hashed WHERE {sent}
    """)
    removals = ""
    if spec.mode == "mirror":
        removals = f"""
        UNION ALL
        SELECT s.record_key, 'removed', s.row_hash, s.version + 1, s.user_id, s.anonymous_id, s.group_id,
               {sql.removal_body_open}, NULL, NULL
        FROM {snapshot} s
        WHERE NOT s.removed AND NOT EXISTS (SELECT 1 FROM {table} AS r WHERE {sql.key} = s.record_key)
        """
    changes = f"(SELECT * FROM rev_candidates WHERE reason IS NULL {removals})"
    if spec.companion is not None:
        # Each added/removed key also gets its track call (part 1), right after its main call (part 0).
        events = [(k, e) for k, e in (("added", spec.companion.entered),
                                      ("removed", spec.companion.exited)) if e]
        changes = f"""(
            SELECT *, 0 AS part FROM {changes}
            UNION ALL
            SELECT * REPLACE ({sql.event_body_open} AS body_open), 1 AS part FROM {changes}
            WHERE kind IN ({", ".join(literal(k) for k, _ in events)})
        )"""
        order, call_type = ("ORDER BY record_key, part",
                            f"CASE part WHEN 0 THEN '{spec.call}' ELSE 'track' END")
    else:
        changes, order, call_type = f"(SELECT *, 0 AS part FROM {changes})", "", f"'{spec.call}'"
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE rev_wanted AS
        SELECT message_id, record_key, {call_type} AS call_type,
               body_open || ',"messageId":"' || message_id || '"}}' AS payload,
               row_number() OVER ({order}) AS ord, kind, row_hash, version, user_id, anonymous_id,
               group_id, part, fingerprint
        FROM (
            SELECT *, {sql.message_id("h")} AS message_id
            FROM (SELECT *, {sql.id_hash()} AS h FROM {changes})
        )
    """)
    # Segment refuses a message over 32 KB (spec §1): reject it here, with its size, rather than at send time.
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE rev_oversize AS
        SELECT record_key, strlen(payload) AS bytes FROM rev_wanted
        WHERE strlen(payload) > {MAX_MESSAGE_BYTES}
    """)
    if con.execute("SELECT count(*) FROM rev_oversize").fetchone()[0]:
        con.execute("DELETE FROM rev_wanted WHERE strlen(payload) > ?", [MAX_MESSAGE_BYTES])
    return null_rows, duplicate_rows


def _collect_rejections(con: duckdb.DuckDBPyConnection, spec: DiffSpec, sql: _SpecSql, table: str,
                        null_rows: int, duplicate_rows: int) -> None:
    """`rev_rejections` (record_key, source, reason, record): every row of this run that cannot be sent."""
    source = literal(spec.source)
    record = f"left(to_json(r), {_RECORD_CHARS})"
    parts = [f"""
        SELECT c.record_key, {source} AS source, c.reason, {record} AS record
        FROM rev_candidates c JOIN {table} AS r ON {sql.key} = c.record_key WHERE c.reason IS NOT NULL
    """, f"""
        SELECT o.record_key, {source}, 'message is ' || o.bytes || ' bytes; Segment''s limit is '
               || '{MAX_MESSAGE_BYTES:,} bytes per call', NULL
        FROM rev_oversize o
    """]
    if null_rows:
        parts.append(f"""
        SELECT NULL, {source}, {literal(f"key column {spec.key!r} is null")}, {record}
        FROM {table} AS r WHERE {sql.key} IS NULL
        """)
    if duplicate_rows:
        parts.append(f"""
        SELECT c.record_key, {source},
               'key ' || c.record_key || ' appears in ' || c.copies
               || ' rows of the result; a key must identify '
               || 'one row, so none of them is sent', {record}
        FROM rev_current c JOIN {table} AS r ON {sql.key} = c.record_key WHERE c.copies > 1
        """)
    con.execute("CREATE OR REPLACE TEMP TABLE rev_rejections AS " + " UNION ALL ".join(parts))


def _supersede_stale(con: duckdb.DuckDBPyConnection, ledger: Ledger, sync: str) -> int:
    """Pending messages this run no longer wants (their row changed again, or a resync) stop being pending.

    Every pending message has its `rev_changes` row, so only those rows are looked up in the ledger. Only
    rows whose message is pending (now superseded) or unknown to the ledger leave `rev_changes`: a part
    already settled (delivered, rejected) stays, so `advance_snapshot` records what Segment really got
    once its change has settled.
    """
    con.execute("CREATE OR REPLACE TEMP TABLE rev_stale AS SELECT message_id FROM rev_changes c "
                "WHERE NOT EXISTS (SELECT 1 FROM rev_wanted w WHERE w.message_id = c.message_id)")
    if con.execute("SELECT count(*) FROM rev_stale").fetchone()[0] == 0:
        con.execute("DROP TABLE rev_stale")
        return 0
    ledger.states_of(sync, "rev_stale", "rev_stale_states")
    # A held message (a plan waiting for approval) the rows no longer want is superseded as a pending one is.
    stale = con.execute("SELECT message_id, seq FROM rev_stale_states WHERE status IN (?, ?)",
                        [PENDING, HELD]).fetchall()
    _mark_superseded(con, ledger, sync, stale)
    # The states read before the marking: what was pending is superseded now, and leaves as well.
    con.execute(
        """
        DELETE FROM rev_changes WHERE message_id IN (
            SELECT s.message_id FROM rev_stale s WHERE NOT EXISTS (
                SELECT 1 FROM rev_stale_states l
                WHERE l.message_id = s.message_id AND l.status NOT IN (?, ?, ?)))
        """, [PENDING, HELD, SUPERSEDED])
    con.execute("DROP TABLE rev_stale_states")
    con.execute("DROP TABLE rev_stale")
    return len(stale)


def _settle_half_delivered(con: duckdb.DuckDBPyConnection, ledger: Ledger, sync: str) -> int:
    """Supersede the pending parts of half-delivered changes this run no longer wants; returns how many.

    A change of two calls (the trait and its entered/exited event) whose one call was delivered and whose
    other is still pending cannot simply be dropped when the key moves on: Segment already holds half of
    it. Superseding the pending part settles the change, and `advance_snapshot` then records the delivered
    state, so the diff sends what undoes it (e.g. "Audience Exited" after a half-sent "Audience Entered").
    """
    if con.execute("SELECT count(*) FROM rev_changes").fetchone()[0] == 0:
        return 0
    stale = con.execute(
        """
        WITH parts AS (
            SELECT c.message_id, c.record_key, c.generation, c.version, l.seq, l.status
            FROM rev_changes c JOIN ledger l ON l.sync = ? AND l.message_id = c.message_id
        )
        SELECT p.message_id, p.seq FROM parts p
        WHERE p.status = ?
          AND NOT EXISTS (SELECT 1 FROM rev_wanted w WHERE w.message_id = p.message_id)
          AND EXISTS (SELECT 1 FROM parts d WHERE d.status IN (?, ?) AND d.record_key = p.record_key
                      AND d.generation = p.generation AND d.version = p.version)
        """, [sync, PENDING, DELIVERED, VERIFIED]).fetchall()
    _mark_superseded(con, ledger, sync, stale)
    if stale:
        con.execute("DELETE FROM rev_changes WHERE message_id IN (SELECT unnest(?::VARCHAR[]))",
                    [[m for m, _ in stale]])
    return len(stale)


def _mark_superseded(con: duckdb.DuckDBPyConnection, ledger: Ledger, sync: str,
                     stale: list[tuple[str, int]]) -> None:
    """Log `superseded` for these (message_id, seq) pairs and remember them for `_revive`."""
    for start in range(0, len(stale), 20_000):  # (id, int) pairs: even a whole resync's worth is small
        chunk = stale[start:start + 20_000]
        ledger.log_outcomes(sync, [(seq, SUPERSEDED, 0, "superseded by a newer state of the row")
                                   for _, seq in chunk])
        remember_superseded(con, chunk)


def remember_superseded(con: duckdb.DuckDBPyConnection, superseded: list[tuple[str, int]]) -> None:
    """Remember messages superseded outside the diff, (message_id, seq) (a suppression an UNSUPPRESS lifted),
    so the next plan revives those its rows still want (`_revive`)."""
    for start in range(0, len(superseded), 20_000):
        chunk = superseded[start:start + 20_000]
        con.execute("INSERT INTO rev_superseded SELECT unnest(?::VARCHAR[]), unnest(?::BIGINT[])",
                    [[m for m, _ in chunk], [q for _, q in chunk]])


def _revive(con: duckdb.DuckDBPyConnection, ledger: Ledger, sync: str) -> int:
    """Superseded messages that match the warehouse again become pending again (same messageId)."""
    rows = con.execute("SELECT s.seq FROM rev_superseded s JOIN rev_wanted w ON w.message_id = s.message_id"
                       ).fetchall()
    if rows:
        ledger.log_outcomes(sync, [(seq, PENDING, 0, None) for (seq,) in rows])
        con.execute("DELETE FROM rev_superseded WHERE message_id IN (SELECT message_id FROM rev_wanted)")
    return len(rows)


class _SpecSql:
    """The SQL expressions of one spec over its staged table (aliased `r`)."""

    def __init__(self, spec: DiffSpec, staged: StagedResult, generation: int) -> None:
        self.spec, self.types, self.generation = spec, staged.types, generation
        spec.check_columns(staged.columns)
        self.fields = spec.field_columns(staged.columns)
        self.key = f"r.{quote(spec.key)}::VARCHAR"
        self.user_id = self._id(spec.user_id)
        self.anonymous_id = self._id(spec.anonymous_id)
        self.group_id = self._id(spec.group_id)
        self.body_open = self._body_open()
        self.body = f"{self.body_open} || '}}'"
        self.reason = self._reason()
        self.removal_body_open = self._removal_body_open()
        self.event_body_open = self._event_body_open()
        # Every column a call is built from (and the staging's own verdict on the row): a row whose values
        # are all the same has the same body, so an equal fingerprint proves it unchanged. 63 bits, so it
        # fits PostgreSQL's BIGINT when the state lives there.
        values = dict.fromkeys([*spec.mapped_columns, *self.fields])
        hashed = [p for c in values for p in self._hashed(c)] + [f"r.{UNSERIALISABLE_COLUMN}"]
        self.fingerprint = f"(hash({', '.join(hashed)}) >> 1)::BIGINT"
        described = "\x1f".join([duckdb.__version__, self.fingerprint, self.body_open, self.reason,
                                  *(f"{c} {self.types[c]}" for c in values)])
        self.scheme = f"{duckdb.__version__}:{hashlib.sha256(described.encode()).hexdigest()[:16]}"

    def _hashed(self, column: str) -> list[str]:
        """What the fingerprint hashes of `column`: its value where DuckDB's hash of the value tells apart
        every two values JSON writes differently, else the JSON text itself. DuckDB hashes a NULL list like
        an empty one and a NULL struct like one of NULL fields, does not mark where a nested list ends
        ([[1, 2]] like [[1], [2]]), and takes -0.0 for 0.0 and a month for 30 days, none of which JSON
        does; a float gets its sign bit beside it."""
        ref = f"r.{quote(column)}"
        try:
            type_id = DuckDBPyType(self.types[column]).id
        except (duckdb.Error, ValueError, TypeError):  # a type this DuckDB cannot name: its text is safe
            type_id = None
        if type_id in ("float", "double"):
            return [ref, f"signbit({ref})"]
        return [ref] if type_id in _PLAIN_HASHED else [f"to_json({ref})::VARCHAR"]

    def id_hash(self) -> str:
        """sha256 of (sync, key, generation, version, change, row hash) of a change row; a change's second
        call (`part` 1, its track event) hashes the same with ':event' appended.

        The version (deliveries of that key so far) lets a row legitimately return to an earlier state
        (A -> B -> A) as a new message rather than a duplicate of the first; a full resync starts a new
        generation, so every row is sent again under ids Segment will not deduplicate away.
        """
        return (f"sha256('{self.spec.sync}' || chr(31) || record_key || chr(31) || '{self.generation}:' || "
                f"version || ':' || kind || ':' || row_hash || CASE WHEN part = 0 THEN '' ELSE ':event' END)")

    @staticmethod
    def message_id(h: str) -> str:
        """The hex digest `h` as a UUID, laid out like `calls.deterministic_message_id` (v5 nibble, RFC
        variant)."""
        return (f"substr({h}, 1, 8) || '-' || substr({h}, 9, 4) || '-5' || substr({h}, 14, 3) || '-' || "
                f"substr('89ab', ((position(substr({h}, 17, 1) IN '0123456789abcdef') - 1) % 4) + 1, 1) || "
                f"substr({h}, 18, 3) || '-' || substr({h}, 21, 12)")

    def _id(self, column: str | None) -> str:
        """An id column as text, sent as it is (an id with spaces is a different id); NULL when empty."""
        return f"nullif(r.{quote(column)}::VARCHAR, '')" if column else "NULL::VARCHAR"

    def _blank(self, column: str) -> str:
        """The id or name in `column` is missing, empty or only whitespace (Segment would drop the call)."""
        return f"nullif(trim(r.{quote(column)}::VARCHAR), '') IS NULL"

    def _body_open(self) -> str:
        """The call as JSON text without its closing brace (the messageId is appended there)."""
        spec = self.spec
        parts = [literal('{"type":"' + spec.call + '"')]
        for name, column in (("userId", spec.user_id), ("anonymousId", spec.anonymous_id),
                             ("groupId", spec.group_id)):
            if column:
                parts.append(f"coalesce(',\"{name}\":' || to_json({self._id(column)}), '')")
        if spec.event:
            parts.append(literal(',"event":' + orjson.dumps(spec.event).decode()))
        elif spec.event_column:
            parts.append(f"coalesce(',\"event\":' || to_json({self._id(spec.event_column)}), '')")
        if spec.timestamp:
            parts.append(f"coalesce(',\"timestamp\":' || to_json({self._timestamp(spec.timestamp)}), '')")
        if self.fields:
            packed = ", ".join(f"{quote(c)} := {self._value(c)}" for c in self.fields)
            parts.append(f"',\"{spec.fields_name}\":' || to_json(struct_pack({packed}))")
        else:
            parts.append(literal(f',"{spec.fields_name}":{{}}'))
        return "(" + " || ".join(parts) + ")"

    def _removal_body_open(self) -> str:
        """Mirror mode: the same call type for the removed key, with every mapped trait set to null."""
        spec = self.spec
        parts = [literal('{"type":"' + spec.call + '"')]
        for name, column in (("userId", "s.user_id"), ("anonymousId", "s.anonymous_id"),
                             ("groupId", "s.group_id")):
            parts.append(f"coalesce(',\"{name}\":' || to_json({column}), '')")
        cleared = orjson.dumps(dict(spec.removal_fields) if spec.removal_fields is not None
                               else dict.fromkeys(self.fields)).decode()
        parts.append(literal(f',"{spec.fields_name}":{cleared}'))
        return "(" + " || ".join(parts) + ")"

    def _event_body_open(self) -> str:
        """The track call beside a change (over a change row): its entered or exited event, same ids."""
        spec = self.spec
        companion = spec.companion
        if companion is None:
            return "NULL"
        properties = orjson.dumps(dict(companion.properties)).decode()
        parts = [literal('{"type":"track"')]
        for name, column in (("userId", "user_id"), ("anonymousId", "anonymous_id")):
            parts.append(f"coalesce(',\"{name}\":' || to_json({column}), '')")
        names = {k: orjson.dumps(e).decode() for k, e in (("added", companion.entered),
                                                           ("removed", companion.exited)) if e}
        event = ("CASE kind " + " ".join(f"WHEN {literal(k)} THEN {literal(v)}" for k, v in names.items())
                 + " END")
        parts.append(f"',\"event\":' || {event}")
        parts.append(literal(f',"properties":{properties}'))
        return "(" + " || ".join(parts) + ")"

    def _value(self, column: str) -> str:
        """A column as the JSON value Segment should get."""
        kind = self.types[column].upper()
        ref = f"r.{quote(column)}"
        if kind.startswith("TIMESTAMP"):
            return self._timestamp(column)
        if kind.startswith("DECIMAL"):
            return f"{ref}::DOUBLE"  # JSON numbers are doubles; the streamed path sends Decimals the same way
        if kind == "INTERVAL":
            return f"epoch({ref})"
        if kind in ("BLOB", "BIT"):
            return "NULL"  # such rows are rejected (see `_reason`)
        return ref

    def _timestamp(self, column: str) -> str:
        kind = self.types[column].upper()
        ref = f"r.{quote(column)}"
        if kind in ("TIMESTAMP WITH TIME ZONE", "TIMESTAMPTZ"):
            return f"strftime(timezone('UTC', {ref}), {_ISO_MS})"
        if kind.startswith("TIMESTAMP") or kind == "DATE":
            # No zone: taken as UTC. try_cast: a DATE beyond TIMESTAMP's range (year 294247) fails the cast;
            # its row is rejected (`value_problem`), and the query must not fail before that.
            return f"strftime(try_cast({ref} AS TIMESTAMP), {_ISO_MS})"
        raise SpecError(self.spec.source, f"timestamp column {column!r} is {self.types[column]}; cast it to "
                                          "TIMESTAMP or TIMESTAMPTZ in the query")

    def _reason(self) -> str:
        """Why a row cannot become a call (NULL when it can)."""
        spec = self.spec
        checks = [f"r.{UNSERIALISABLE_COLUMN}"]
        for column in dict.fromkeys([*self.fields, *spec.mapped_columns]):
            kind, ref = self.types[column].upper(), f"r.{quote(column)}"
            if problem := value_problem(ref, self.types[column], column):
                checks.append(problem)
            elif kind in ("HUGEINT", "UHUGEINT", "UBIGINT"):
                checks.append(f"CASE WHEN {ref} > 9223372036854775807 OR {ref} < -9223372036854775808 THEN "
                              f"{literal(f'column {column!r}: integer ')} || {ref}::VARCHAR || "
                              f"' does not fit in 64 bits' END")
            elif kind in ("BLOB", "BIT"):
                binary = (f"column {column!r} holds binary data, which JSON cannot carry; encode it in the "
                          "query (e.g. base64)")
                checks.append(f"CASE WHEN {ref} IS NOT NULL THEN {literal(binary)} END")
        ids = " AND ".join(self._blank(c) for c in (spec.user_id, spec.anonymous_id) if c)
        mapped = [repr(c) for c in (spec.user_id, spec.anonymous_id) if c]
        empty = f"{' and '.join(mapped)} {'are' if len(mapped) > 1 else 'is'} empty"
        checks.append(f"CASE WHEN {ids} THEN "
                      f"{literal(f'{spec.call} needs a userId or an anonymousId; {empty}')} END")
        if spec.group_id:
            checks.append(f"CASE WHEN {self._blank(spec.group_id)} THEN "
                          f"{literal(f'group needs a groupId; {spec.group_id!r} is empty')} END")
        if spec.event_column:
            checks.append(f"CASE WHEN {self._blank(spec.event_column)} THEN "
                          f"{literal(f'track needs an event name; {spec.event_column!r} is empty')} END")
        return f"nullif(concat_ws('; ', {', '.join(checks)}), '')"



def value_problem(ref: str, type_name: str, column: str) -> str | None:
    """SQL for why the value `ref` (of DuckDB type `type_name`) of `column` cannot be sent, NULL when it can;
    None when no value of the type can be a problem (most columns: no SQL at all).

    Looked for at any depth of STRUCT, LIST, ARRAY, MAP and UNION values: NaN and infinities (not JSON, so
    Segment refuses the whole batch with 400, spec §1), `infinity` and years outside 0001-9999 in dates and
    timestamps (not ISO-8601), and bare NaN/Infinity tokens in a JSON column. Set-wise: one expression per
    column, evaluated only for the rows that changed.
    """
    if type_name.upper() == "JSON":
        return _json_problem(ref, literal(f"column {column!r} holds"))
    try:
        type_ = DuckDBPyType(type_name)
    except (duckdb.Error, ValueError, TypeError):  # a type this DuckDB cannot name: nothing to look into
        return None
    if type_.id in _CONTAINERS:
        nested = _nested_problem(ref, type_, column, 1)
        return None if nested is None else f"{literal(f'column {column!r} holds ')} || {nested}"
    leaf = _leaf_problem(ref, type_, "''")
    return None if leaf is None else f"{literal(f'column {column!r} is ')} || {leaf}"


def _leaf_problem(ref: str, type_: DuckDBPyType, at: str) -> str | None:
    """SQL text (what is wrong, `at` where, and why) for a scalar `ref`, NULL when it is fine."""
    if type_.id in _FLOATS:
        return (f"CASE WHEN isnan({ref}) THEN 'NaN' WHEN isinf({ref}) THEN "
                f"CASE WHEN {ref} > 0 THEN 'Infinity' ELSE '-Infinity' END END || {at} || "
                "', which JSON cannot represent'")
    if type_.id in _MOMENTS:
        utc = f"timezone('UTC', {ref})" if type_.id == "timestamp with time zone" else ref
        return (f"CASE WHEN NOT isfinite({ref}) THEN {ref}::VARCHAR || {at} || ', which is not a moment "
                f"ISO-8601 can write' WHEN year({utc}) NOT BETWEEN {MIN_YEAR} AND {MAX_YEAR} THEN "
                f"'a moment in year ' || year({utc}) || {at} || '; ISO-8601 timestamps carry years "
                f"{MIN_YEAR:04d}-{MAX_YEAR:04d}' END")
    if str(type_).upper() == "JSON":
        return _json_problem(ref, f"'a JSON text' || {at} || ' with'")
    return None


def _nested_problem(ref: str, type_: DuckDBPyType, path: str, depth: int) -> str | None:
    """SQL for the first problem inside the container `ref` (path as JSON would show it), or None."""
    children: Sequence[tuple[str, DuckDBPyType, str]]  # (SQL of the child, its type, its path)
    if type_.id == "struct":
        children = [(f"struct_extract({ref}, {literal(name)})", child, f"{path}.{name}")
                    for name, child in type_.children]
    elif type_.id == "union":
        children = [(f"union_extract({ref}, {literal(name)})", child, path) for name, child in type_.children]
    else:  # list, array, map: every element (a map's values; its keys become JSON keys, i.e. text)
        element = dict(type_.children)["value" if type_.id == "map" else "child"]
        values = f"map_values({ref})" if type_.id == "map" else ref
        var = f"_v{depth}"
        inner = _element_problem(var, element, f"{path}[]" if type_.id != "map" else f"{path}.*", depth + 1)
        if inner is None:
            return None
        return (f"list_filter(list_transform({values}, lambda {var}: {inner}), "
                f"lambda _p{depth}: _p{depth} IS NOT NULL)[1]")
    problems = [p for c in children if (p := _element_problem(*c, depth + 1)) is not None]
    return f"coalesce({', '.join(problems)})" if problems else None


def _element_problem(ref: str, type_: DuckDBPyType, path: str, depth: int) -> str | None:
    if type_.id in _CONTAINERS:
        return _nested_problem(ref, type_, path, depth)
    return _leaf_problem(ref, type_, literal(f" at {path}"))


def _json_problem(ref: str, prefix: str) -> str:
    return (f"CASE WHEN regexp_matches(regexp_replace({ref}::VARCHAR, {literal(_JSON_STRING)}, '\"\"', 'g'), "
            f"{literal(_BARE_NON_FINITE)}) THEN {prefix} || ' a bare NaN or Infinity, which JSON cannot "
            f"represent' END")
