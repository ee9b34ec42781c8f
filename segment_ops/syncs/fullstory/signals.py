"""Frustration signals: Fullstory stream events from the inbox -> Segment track calls, on the engine's diff.

A run takes every event the receiver stored since the last one (the inbox's live hours), decides once what
becomes of each, records that in `fullstory_signals` (state: the decision is never taken again, so a late
event counts against what its window already sent), and sends the signals to send through the engine in
`append` mode: each event key once, under a messageId derived from it, exactly once by the ledger.

Each event gets one status, first rule that applies:
- `rejected`: the stored body is no longer an event (an erasure removed its user, or an older release stored
  it): also recorded in the sync's rejected table with the reason;
- `not_a_signal`: its stream (`name`) is not listed in the file's `[signals.streams]`;
- `late`: it arrived more than `max_delay_hours` after it happened;
- `filtered`: the user's email or the page URL matches an `exclude_*` pattern (the reason names the pattern);
- `unidentified`: no Segment userId: no uid (or `uid_is_user_id = false`) and an email the identity map
  does not know (or an email it maps to two users: ambiguous);
- `rate_limited`: the user already has `per_user` signals of that kind sent in the event's window;
- `send`: a track call `<event>` with the user's userId, the event's time, and properties `fullstory_kind`,
  `fullstory_stream`, `session_url`, `page_url`, `fullstory_user_id`.
Duplicates (the same body again: Fullstory's rare re-delivery) have the key of the first and are not
recorded twice.
"""

from __future__ import annotations

import fnmatch
import hashlib
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import duckdb

from segment_ops import clock
from segment_ops.engine import store
from segment_ops.engine.identity import IdentityMapStats, stage_identity_map
from segment_ops.engine.ledger import Ledger
from segment_ops.engine.run import DiffSync, RunReport
from segment_ops.engine.spec import DiffSpec
from segment_ops.engine.sql import utc_timestamp
from segment_ops.engine.warehouse import (
    StagedResult,
    WarehouseError,
    describe_staged,
    dialect_of,
    stage_query,
)
from segment_ops.syncs.fullstory.inbox import Inbox
from segment_ops.syncs.fullstory.settings import FullstoryConfig, SignalsConfig
from segment_ops.syncs.fullstory.streams import InvalidEvent, event_from_body

SYNC = "fullstory_signals"
TABLE = "fullstory_signals"
STATUSES = ("send", "rate_limited", "filtered", "late", "unidentified", "not_a_signal", "rejected")
# Signals staged for the diff: those decided in the last `SEND_HORIZON` (an older one was planned long ago:
# the ledger holds it, pending or settled), so a run's work follows what is new, not the table.
SEND_HORIZON = timedelta(days=30)
# Decisions older than this are deleted as a run ends, so the table follows the recent past: an event that
# arrived again later would be `late` anyway (the longest `max_delay_hours` is far shorter), and the ledger
# knows its key (append mode never sends a key twice).
DECISION_RETENTION = timedelta(days=90)
PROPERTIES = ("fullstory_kind", "fullstory_stream", "session_url", "page_url", "fullstory_user_id")
_CREATE = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    key          VARCHAR PRIMARY KEY,   -- streams.event_key of the body
    event_time   TIMESTAMPTZ NOT NULL,
    received_at  TIMESTAMPTZ NOT NULL,
    stream       VARCHAR,               -- the body's name
    kind         VARCHAR,               -- rage | dead | error (NULL: not a signal)
    event        VARCHAR,               -- the Segment event
    fs_user_id   VARCHAR,
    uid          VARCHAR,
    email        VARCHAR,
    user_id      VARCHAR,               -- the Segment userId it resolved to
    session_url  VARCHAR,
    page_url     VARCHAR,
    status       VARCHAR NOT NULL,
    reason       VARCHAR,
    decided_at   TIMESTAMPTZ NOT NULL,
    run_id       VARCHAR
)"""
# Erasure: an erased subject's signals go (the ledger keeps the sent calls' ids, payloads tombstoned).
STATE = store.register(store.StateSchema(
    name="fullstory_signals", version=1, tables=(TABLE,), create=_CREATE,
    erase=f"DELETE FROM {TABLE} WHERE erased_id(user_id) OR erased_id(uid) OR erased_id(email) "
          "OR erased_id(fs_user_id)"))
EMAIL_MAP = "fullstory_email_map"
# The columns of a read event (`_row`), as the decisions read them.
INCOMING = (("key", "VARCHAR"), ("event_time", "TIMESTAMPTZ"), ("received_at", "TIMESTAMPTZ"),
            ("stream", "VARCHAR"), ("fs_user_id", "VARCHAR"), ("uid", "VARCHAR"), ("email", "VARCHAR"),
            ("session_url", "VARCHAR"), ("page_url", "VARCHAR"), ("invalid", "VARCHAR"),
            ("excluded", "VARCHAR"))


@dataclass(kw_only=True)
class SignalsRun(RunReport):
    events_read: int = 0  # event files in the live hours
    new: int = 0  # of them, not decided before (the rest: re-deliveries, or read by an earlier run)
    statuses: Counter = field(default_factory=Counter)  # this run's decisions
    by_kind: Counter = field(default_factory=Counter)  # this run's signals to send, by kind
    hours_archived: list[str] = field(default_factory=list)
    read_at: datetime | None = None  # when the inbox was read
    read: dict[str, set[str]] = field(default_factory=dict)  # hour folder -> the event keys read from it
    identity: IdentityMapStats | None = None
    latest_delay_seconds: float | None = None  # the latest event's arrival after it happened
    warehouse_rows: int = 0  # frustrated clicks read from the warehouse export ([signals.warehouse])


def ingest(con: duckdb.DuckDBPyConnection, inbox: Inbox, config: FullstoryConfig, report: SignalsRun, *,
           warehouse_url: str, run_id: str | None, now: datetime | None = None) -> None:
    """Decide what becomes of every event of the inbox's live hours not decided before; on a dry run the
    decisions go to the temp table `fullstory_signals_new` only, else into `fullstory_signals`. What was read
    (`report.read`, `report.read_at`) says which hours may be archived once the run ended."""
    now = now or clock.now()  # lateness and windows on the clock the events were received by
    store.ensure(con, STATE)
    report.read_at = now
    rows = []
    excluded = _excluded(config.signals.exclude_emails, config.signals.exclude_page_urls)
    files: dict[str, str] = {}
    for hour in inbox.hours():
        found = inbox.event_files(hour)
        report.read[hour.name] = set(found)
        report.events_read += len(found)  # an event re-delivered in another hour: two files, one key
        for key, path in found.items():  # hours oldest first: a re-delivery keeps its first arrival
            files.setdefault(key, path)
    # Only the files of keys not decided yet are opened: an hour still open is listed again by every run, and
    # what an earlier run decided costs a name in a listing, not a read.
    for key in _undecided(con, files):
        stored = inbox.read_event(files[key])
        rows.append(_row(key, stored.body, stored.received_at, excluded))
    if config.signals.warehouse_query is not None:
        for key, body, received_at, invalid in warehouse_events(con, config.signals, warehouse_url, now):
            report.warehouse_rows += 1
            rows.append(_row(key, body, received_at, excluded, invalid=invalid))
    rows_table(con, "fullstory_incoming", INCOMING, rows)
    # One row per new key (a warehouse row read twice in one query: its earliest arrival).
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE fullstory_new AS
        SELECT * FROM fullstory_incoming
        WHERE key NOT IN (SELECT key FROM {TABLE})
        QUALIFY row_number() OVER (PARTITION BY key ORDER BY received_at) = 1""")
    report.new = con.execute("SELECT count(*) FROM fullstory_new").fetchall()[0][0]
    identity = config.identity
    if identity.email_source is not None and report.new:
        report.identity = stage_identity_map(con, identity.email_source, EMAIL_MAP,
                                             warehouse_url=warehouse_url, temp=True)
    else:
        con.execute(f"CREATE OR REPLACE TEMP TABLE {EMAIL_MAP} (source_id VARCHAR, target_id VARCHAR)")
        con.execute(f"CREATE OR REPLACE TEMP TABLE {EMAIL_MAP}_ambiguous (source_id VARCHAR, targets "
                    f"VARCHAR[])")
    _decide(con, config, now=now, run_id=run_id)
    if not report.dry_run:
        con.execute(f"INSERT INTO {TABLE} SELECT * FROM fullstory_signals_new")
        con.execute(f"DELETE FROM {TABLE} WHERE decided_at < ?", [now - DECISION_RETENTION])
    report.statuses = Counter(dict(con.execute(
        "SELECT status, count(*) FROM fullstory_signals_new GROUP BY 1").fetchall()))
    report.by_kind = Counter(dict(con.execute(
        "SELECT kind, count(*) FROM fullstory_signals_new WHERE status = 'send' GROUP BY 1").fetchall()))
    delay = con.execute("SELECT epoch(max_by(received_at - event_time, received_at)) "
                        "FROM fullstory_signals_new").fetchall()[0][0]
    report.latest_delay_seconds = float(delay) if delay is not None else None


# What `[signals.warehouse] query` returns: these, and optionally uid, email, display_name, session_url,
# page_url and received_at (when the click reached the warehouse, e.g. processed_time; else the run's time).
WAREHOUSE_COLUMNS = ("event_id", "stream", "event_time")


def warehouse_events(con: duckdb.DuckDBPyConnection, signals: SignalsConfig, warehouse_url: str,
                     now: datetime) -> Iterator[tuple[str, dict, datetime, str | None]]:
    """(key, body, received_at, why it is invalid or None) of each frustrated click that
    `[signals.warehouse] query` returns from Fullstory's warehouse export, for events since `max_delay_hours`
    ago (older ones would be late): the body a stream would have posted for it, so every rule applies alike.
    The key is a hash of the export's `event_id`, so a click read again by the next run is recognised; a
    click that also came by a stream has another key (use one source or the other)."""
    since = now - timedelta(hours=signals.max_delay_hours)
    assert signals.warehouse_query is not None
    query = signals.warehouse_query.replace("{since}", utc_timestamp(since, dialect_of(warehouse_url)))
    stage_query(con, warehouse_url, query, "fullstory_warehouse_clicks")
    cursor = con.execute("SELECT * FROM fullstory_warehouse_clicks")
    columns = [d[0] for d in cursor.description]
    missing = [c for c in WAREHOUSE_COLUMNS if c not in columns]
    if missing:
        raise WarehouseError(f"[signals.warehouse] query returns no column(s) {', '.join(missing)}; it "
                             f"returns {', '.join(columns)}")
    for values in cursor.fetchall():
        row = dict(zip(columns, values, strict=True))
        stamp = row["event_time"]
        body = {"name": row["stream"],
                "event_time": stamp.isoformat() if isinstance(stamp, datetime) else stamp,
                "user": {k: row.get(k) for k in ("uid", "email", "display_name") if row.get(k) is not None},
                **{k: row[k] for k in ("session_url", "page_url") if row.get(k) is not None}}
        received = row.get("received_at")
        received = received if isinstance(received, datetime) else now
        received = received.astimezone(UTC) if received.tzinfo else received.replace(tzinfo=UTC)
        if row["event_id"] is None:  # rejected with the reason: keyed by the whole row, so once
            key = hashlib.sha256(f"warehouse-row:{sorted(row.items())!r}".encode()).hexdigest()[:32]
            yield key, body, received, "the warehouse row has no event_id (nothing tells it from the next)"
        else:
            key = hashlib.sha256(f"warehouse:{row['event_id']}".encode()).hexdigest()[:32]
            yield key, body, received, None
    con.execute("DROP TABLE fullstory_warehouse_clicks")


def rows_table(con: duckdb.DuckDBPyConnection, table: str, columns: Sequence[tuple[str, str]],
               rows: Sequence[tuple]) -> None:
    """The temp table `table` of `rows` ((name, DuckDB type) per column), inserted at once as one list per
    column: a row-by-row insert costs more than reading the inbox's files, and an Arrow table built from
    Python objects makes pyarrow import pandas (a third of a second)."""
    values = list(zip(*rows, strict=True)) if rows else [() for _ in columns]
    con.execute(f"CREATE OR REPLACE TEMP TABLE {table} AS SELECT " + ", ".join(
        f"unnest(?::{kind}[]) AS {name}" for name, kind in columns), [list(v) for v in values])


def _undecided(con: duckdb.DuckDBPyConnection, keys: Iterable[str]) -> list[str]:
    """Of `keys`, those `fullstory_signals` holds no decision for."""
    listed = list(keys)
    if not listed:
        return []
    return [key for (key,) in con.execute(
        f"SELECT key FROM (SELECT unnest(?::VARCHAR[]) AS key) WHERE key NOT IN (SELECT key FROM {TABLE})",
        [listed]).fetchall()]


def _row(key: str, body: dict, received_at: datetime,
         excluded: Callable[[str | None, str | None], str | None], *, invalid: str | None = None) -> tuple:
    try:
        if invalid is not None:
            raise InvalidEvent(invalid)
        event = event_from_body(body, key=key)
    except InvalidEvent as exc:
        name = body.get("name") if isinstance(body, dict) and isinstance(body.get("name"), str) else None
        return (key, received_at, received_at, name, None, None, None, None, None, str(exc), None)
    email = event.email.strip().lower() if event.email else None
    return (key, event.timestamp, received_at, event.name, event.fs_user_id, event.uid, email,
            event.session_url, event.page_url, None, excluded(email, event.page_url))


def _decide(con: duckdb.DuckDBPyConnection, config: FullstoryConfig, *, now: datetime,
            run_id: str | None) -> None:
    """`fullstory_signals_new`: each new event with its status and reason (see the module's docstring)."""
    signals = config.signals
    con.execute("CREATE OR REPLACE TEMP TABLE fullstory_streams (stream VARCHAR, kind VARCHAR, event "
                "VARCHAR)")
    con.executemany("INSERT INTO fullstory_streams VALUES (?, ?, ?)",
                    [(s.name, s.kind, s.event) for s in signals.streams.values()])
    uid_rule = "n.uid" if config.identity.uid_is_user_id else "NULL"
    window = signals.window_hours * 3600
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE fullstory_signals_pre AS
        SELECT n.key, n.event_time, n.received_at, n.stream, s.kind, s.event, n.fs_user_id, n.uid, n.email,
               coalesce({uid_rule}, m.target_id) AS user_id, n.session_url, n.page_url,
               CASE WHEN n.invalid IS NOT NULL THEN 'rejected'
                    WHEN s.kind IS NULL THEN 'not_a_signal'
                    WHEN n.received_at - n.event_time > to_seconds($max_delay) THEN 'late'
                    WHEN n.excluded IS NOT NULL THEN 'filtered'
                    WHEN coalesce({uid_rule}, m.target_id) IS NULL THEN 'unidentified'
                    ELSE 'candidate' END AS status,
               CASE WHEN n.invalid IS NOT NULL THEN n.invalid
                    WHEN s.kind IS NULL THEN 'stream ' || to_json(n.stream)::VARCHAR
                                             || ' is not listed in [signals.streams]'
                    WHEN n.received_at - n.event_time > to_seconds($max_delay)
                        THEN 'arrived more than ' || $max_delay_hours || ' h after it happened'
                    WHEN n.excluded IS NOT NULL
                        THEN n.excluded
                    WHEN coalesce({uid_rule}, m.target_id) IS NULL THEN
                        CASE WHEN a.source_id IS NOT NULL THEN 'its email maps to several userIds'
                             WHEN n.email IS NULL THEN 'no uid and no email'
                             ELSE 'no uid, and its email is not in the identity map' END
               END AS reason
        FROM fullstory_new n
        LEFT JOIN fullstory_streams s ON s.stream = n.stream
        LEFT JOIN {EMAIL_MAP} m ON {uid_rule} IS NULL AND m.source_id = n.email
        LEFT JOIN {EMAIL_MAP}_ambiguous a ON {uid_rule} IS NULL AND a.source_id = n.email""",
                {"max_delay": signals.max_delay_hours * 3600,
                 "max_delay_hours": f"{signals.max_delay_hours:g}"})
    # The rate limit: per (user, kind, window of event time), what earlier runs sent counts first, then this
    # run's candidates in order of arrival.
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE fullstory_signals_new AS
        WITH candidates AS (
            SELECT p.*, floor(epoch(p.event_time) / $window)::BIGINT AS bucket FROM fullstory_signals_pre p
            WHERE status = 'candidate'),
        sent AS (
            SELECT user_id, kind, floor(epoch(event_time) / $window)::BIGINT AS bucket, count(*) AS n
            FROM {TABLE} WHERE status = 'send'
              AND (user_id, kind) IN (SELECT (user_id, kind) FROM candidates)
            GROUP BY ALL),
        ranked AS (
            SELECT c.*, coalesce(s.n, 0) + row_number() OVER (
                PARTITION BY c.user_id, c.kind, c.bucket ORDER BY c.received_at, c.event_time, c.key) AS rank
            FROM candidates c LEFT JOIN sent s USING (user_id, kind, bucket))
        SELECT key, event_time, received_at, stream, kind, event, fs_user_id, uid, email, user_id,
               session_url, page_url,
               CASE WHEN rank <= $per_user THEN 'send' ELSE 'rate_limited' END AS status,
               CASE WHEN rank > $per_user THEN 'over ' || $per_user || ' ' || kind
                    || ' signal(s) for this user in ' || $hours || ' h' END AS reason,
               $now AS decided_at, $run_id AS run_id
        FROM ranked
        UNION ALL
        SELECT key, event_time, received_at, stream, kind, event, fs_user_id, uid, email, user_id,
               session_url, page_url, status, reason, $now, $run_id
        FROM fullstory_signals_pre WHERE status <> 'candidate'""",
                {"window": window, "per_user": signals.per_user, "hours": signals.window_hours, "now": now,
                 "run_id": run_id})


def _excluded(emails: tuple[str, ...],
              pages: tuple[str, ...]) -> Callable[[str | None, str | None], str | None]:
    """Why a signal is filtered out by the file's `exclude_*` patterns (None: it is not)."""

    def excluded(email: str | None, page: str | None) -> str | None:
        for pattern in emails:
            if email and fnmatch.fnmatchcase(email.lower(), pattern):
                return f"the user's email matches exclude_emails {pattern!r}"
        for pattern in pages:
            if page and fnmatch.fnmatchcase(page.lower(), pattern):
                return f"the page URL matches exclude_page_urls {pattern!r}"
        return None
    return excluded


def spec() -> DiffSpec:
    return DiffSpec(sync=SYNC, source="Fullstory streams", call="track", mode="append", key="key",
                    user_id="user_id", event_column="event", timestamp="event_time", fields=PROPERTIES)


def diff_sync(config: FullstoryConfig, inbox: Inbox, report: SignalsRun, *, warehouse_url: str,
              run_id: str | None) -> DiffSync:
    """The engine's view of a signals run: stage = ingest the inbox, then the signals to send."""

    def stage(con: duckdb.DuckDBPyConnection) -> StagedResult:
        started = time.monotonic()
        ingest(con, inbox, config, report, warehouse_url=warehouse_url, run_id=run_id)
        source = ("(SELECT * FROM fullstory_signals UNION ALL SELECT * FROM fullstory_signals_new)"
                  if report.dry_run else TABLE)
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE fullstory_to_send AS
            SELECT key, user_id, event, event_time, kind AS fullstory_kind, stream AS fullstory_stream,
                   session_url, page_url, fs_user_id AS fullstory_user_id
            FROM {source} WHERE status = 'send' AND decided_at >= $since""",
                    {"since": clock.now() - SEND_HORIZON})
        return describe_staged(con, "fullstory_to_send", "fullstory inbox", time.monotonic() - started)

    def before_plan(con: duckdb.DuckDBPyConnection, ledger: Ledger) -> None:
        con.execute("CREATE OR REPLACE TEMP VIEW fullstory_rejected AS SELECT key AS record_key, "
                    "'Fullstory stream event' AS source, reason, NULL::VARCHAR AS record "
                    "FROM fullstory_signals_new WHERE status = 'rejected'")
        ledger.reject_relation(SYNC, "fullstory_rejected", run_id=run_id)

    return DiffSync(spec=spec(), stage=stage, before_plan=before_plan, label="Fullstory signals")


def decided_counts(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Every decision recorded so far, by status (the asset's totals)."""
    store.ensure(con, STATE)
    return dict(con.execute(f"SELECT status, count(*) FROM {TABLE} GROUP BY 1").fetchall())
