"""Extract daily account-level usage from Pendo's Aggregation API into the sync's DuckDB staging file.

Days are the subscription's (spec §7): each request's `first` is the epoch ms of a local midnight in the
subscription's time zone (PENDO_TIMEZONE) and every row's `day` is read in that zone; a row whose `day`
is not one of those midnights means the setting and the subscription disagree, and the slice fails with
`TimeZoneMismatchError` before anything of it is staged. Only days that ended at least `[extract]
settle_hours` ago in that zone are read. Every event source names its apps (`appId`, spec §7: without it
Pendo answers for the default app only), so usage is summed across the configured apps.

One extraction covers a range of whole days, read in slices of at most 30 days (spec §4: Pendo asks
ETL pulls to stay <= 30 days and documents no pagination). Per slice, three aggregations:

- `events` with `timeSeries` dayRange, grouped per (accountId, visitorId, appId, day): events and minutes;
- `featureEvents`, grouped per (accountId, day, appId, featureId): which features each account used;
- `pollEvents`, the NPS poll's answers (poll id from the config; spec §4 "Poll rows").

Once per extraction, the account list (`accounts` source: name, plan, licensed seats from
`metadata.custom.<seats_field>`) and the feature catalogue (`GET /api/v1/feature?expand=*`, narrowed to the
configured apps) replace their tables.

Each slice is written in one transaction that first deletes its days, then inserts them, and marks
them in `pendo_staged_days` with the zone and the app set (`AppScope.key`) they were read with: a day is
staged only when every request of its slice completed, so a staged day without rows is a day without usage
and an unstaged day is a missing answer. Re-running a day replaces it exactly (also a day staged under
another zone or app set: same date, new bounds or apps), and a run that stops after some slices keeps
those slices. Rows Pendo returns that cannot be attributed (no account, visitor or day; counts that are
not non-negative integers; an NPS answer outside 0-10; an app outside PENDO_APP_IDS) go to the ledger's
`rejected` table with the reason, never silently dropped. Each response body is written as it came to a
spool file beside the staging file and parsed there by DuckDB (`read_json_objects`): Python never builds
the rows as objects.

The `group` stage's aggregate form is unverified in spec §4; the sandbox implements it as documented in
`sandbox/pendo/pipeline.py`. No Dagster imports.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import duckdb

from segment_ops.clients.base import RetryEvent, VendorAuthError, VendorError
from segment_ops.clients.pendo import (
    MAX_DAYS_PER_AGGREGATION,
    AppScope,
    PendoClient,
    day_bounds,
    day_range_source,
    last_settled_day,
    local_day_of,
    local_midnight_ms,
)
from segment_ops.engine import store
from segment_ops.engine.ledger import Ledger
from segment_ops.engine.sql import literal
from segment_ops.syncs.pendo.score import HealthConfig

SYNC = "pendo_account_health"  # the staging file's name and the sync's name in the ledger
LEGACY_TIMEZONE = "UTC"  # the zone of days staged before PENDO_TIMEZONE existed (their `timezone` is NULL)

# Erasure (`engine/erasure.py`): an erased subject's own rows (a Pendo visitor is a Segment userId) leave the
# staged usage, so accounts count without them from then on; the staged days keep their counts as read, and
# the account and feature lists hold no person.
_ERASE_VISITORS = """
DELETE FROM pendo_visitor_days WHERE erased_id(visitor_id);
DELETE FROM pendo_poll_responses WHERE erased_id(visitor_id);
"""
# Pendo's staged days and lists. Version 1: files staged before the time zone and apps were recorded.
STATE = store.register(store.StateSchema(
    name="pendo_usage", version=2,
    tables=("pendo_visitor_days", "pendo_feature_days", "pendo_poll_responses", "pendo_staged_days",
            "pendo_accounts", "pendo_features"),
    create="""
CREATE TABLE IF NOT EXISTS pendo_visitor_days (
    day DATE NOT NULL, account_id VARCHAR NOT NULL, visitor_id VARCHAR NOT NULL,
    events BIGINT NOT NULL, minutes BIGINT NOT NULL, app_id VARCHAR
);
CREATE TABLE IF NOT EXISTS pendo_feature_days (
    day DATE NOT NULL, account_id VARCHAR NOT NULL, feature_id VARCHAR NOT NULL,
    events BIGINT NOT NULL, visitors BIGINT, app_id VARCHAR
);
CREATE TABLE IF NOT EXISTS pendo_poll_responses (
    day DATE NOT NULL, account_id VARCHAR NOT NULL, visitor_id VARCHAR, answered_at TIMESTAMPTZ NOT NULL,
    poll_id VARCHAR, response INTEGER NOT NULL
);
-- One row per staged day: when, by which run, how many rows, and the zone and bounds it was read with.
CREATE TABLE IF NOT EXISTS pendo_staged_days (
    day DATE NOT NULL, staged_at TIMESTAMPTZ NOT NULL, run_id VARCHAR,
    visitor_rows BIGINT NOT NULL, feature_rows BIGINT NOT NULL, poll_rows BIGINT NOT NULL,
    timezone VARCHAR, day_start_ms BIGINT, day_end_ms BIGINT, apps VARCHAR
);
CREATE TABLE IF NOT EXISTS pendo_accounts (
    account_id VARCHAR NOT NULL, name VARCHAR, plan VARCHAR, seats INTEGER,
    first_visit TIMESTAMPTZ, last_visit TIMESTAMPTZ, extracted_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS pendo_features (
    feature_id VARCHAR NOT NULL, name VARCHAR, extracted_at TIMESTAMPTZ NOT NULL, app_id VARCHAR
);
-- Per account and day, what the issue asks for: active visitors, events, minutes, features, NPS answers,
-- summed over the apps read.
CREATE OR REPLACE VIEW pendo_account_usage_daily AS
WITH v AS (
    SELECT day, account_id, count(DISTINCT visitor_id) AS active_visitors, sum(events) AS events,
           sum(minutes) AS minutes
    FROM pendo_visitor_days GROUP BY day, account_id
), f AS (
    SELECT day, account_id, count(DISTINCT feature_id) AS features_used
    FROM pendo_feature_days GROUP BY day, account_id
), p AS (
    SELECT day, account_id, count(*) AS nps_responses, avg(response) AS nps_average
    FROM pendo_poll_responses GROUP BY day, account_id
)
SELECT day, account_id, coalesce(v.active_visitors, 0) AS active_visitors, coalesce(v.events, 0) AS events,
       coalesce(v.minutes, 0) AS minutes, coalesce(f.features_used, 0) AS features_used,
       coalesce(p.nps_responses, 0) AS nps_responses, p.nps_average
FROM v FULL JOIN f USING (day, account_id) FULL JOIN p USING (day, account_id);
""",
    migrations={1: """
-- Files staged before the time zone and apps were recorded gain the columns (NULL: UTC days, apps unknown).
ALTER TABLE pendo_visitor_days ADD COLUMN IF NOT EXISTS app_id VARCHAR;
ALTER TABLE pendo_feature_days ADD COLUMN IF NOT EXISTS app_id VARCHAR;
ALTER TABLE pendo_features ADD COLUMN IF NOT EXISTS app_id VARCHAR;
ALTER TABLE pendo_staged_days ADD COLUMN IF NOT EXISTS timezone VARCHAR;
ALTER TABLE pendo_staged_days ADD COLUMN IF NOT EXISTS day_start_ms BIGINT;
ALTER TABLE pendo_staged_days ADD COLUMN IF NOT EXISTS day_end_ms BIGINT;
ALTER TABLE pendo_staged_days ADD COLUMN IF NOT EXISTS apps VARCHAR;
-- `apps` once held AppScope.describe(); it holds AppScope.key now (NULL: read before PENDO_APP_IDS, so the
-- default app only).
UPDATE pendo_staged_days SET apps = CASE WHEN apps LIKE 'every app%' THEN '*'
    ELSE array_to_string(list_sort(string_split(replace(substr(apps, 6), ' ', ''), ',')), ',') END
WHERE apps LIKE 'every app%' OR apps LIKE 'apps %';
"""}, erase=_ERASE_VISITORS))


class ExtractError(RuntimeError):
    """Pendo could not serve part of a range; the slices before it are staged. Carries the report so far."""

    def __init__(self, message: str, report: ExtractReport) -> None:
        super().__init__(message)
        self.report = report


class EmptyDaysError(ExtractError):
    """Pendo answered a slice with no usage at all while it lists accounts and the days staged around it had
    usage: it may be re-processing the subscription's days (after a time zone change it shows zeros for a
    while). Nothing of the slice was staged; `allow_empty_days` stages such days anyway."""


class TimeZoneMismatchError(ExtractError):
    """Pendo's day buckets do not start at midnight of PENDO_TIMEZONE: the setting is not the subscription's
    zone. Nothing of the slice was staged (the slices before it were, in the right zone)."""


@dataclass
class ExtractReport:
    first_day: date
    last_day: date
    timezone: str = LEGACY_TIMEZONE
    apps: str = ""  # the apps read, for a person (AppScope.describe)
    app_set: str = ""  # the same as staged days record it (AppScope.key)
    days: int = 0
    requests: int = 0
    retries: int = 0
    visitor_rows: int = 0
    feature_rows: int = 0
    poll_rows: int = 0
    rejected: int = 0
    accounts: int = 0
    features: int = 0
    slices: list[tuple[date, date]] = field(default_factory=list)
    # asked for, but not `settle_hours` past their end yet
    not_ended: list[date] = field(default_factory=list)
    events_by_app: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    store.ensure(con, STATE)


def slices_of(first_day: date, last_day: date,
              size: int = MAX_DAYS_PER_AGGREGATION) -> list[tuple[date, date]]:
    """[first_day, last_day] cut into consecutive (first, last) slices of at most `size` days."""
    if last_day < first_day:
        raise ValueError(f"empty day range {first_day} .. {last_day}")
    out, start = [], first_day
    while start <= last_day:
        end = min(last_day, start + timedelta(days=size - 1))
        out.append((start, end))
        start = end + timedelta(days=1)
    return out


def extract_days(con: duckdb.DuckDBPyConnection, client: PendoClient, config: HealthConfig, first_day: date,
                 last_day: date, *, zone: ZoneInfo, run_id: str | None = None,
                 on_retry: Callable[[RetryEvent], None] | None = None, now: datetime | None = None,
                 allow_empty_days: bool = False) -> ExtractReport:
    """Stage Pendo usage for every day of `zone` in [first_day, last_day] that ended at least
    `config.settle_hours` before `now`, plus the account list and feature catalogue. The days that have not
    are not requested and come back in `report.not_ended` (when none has, nothing is requested at all).

    Raises `ExtractError` (with the report of what was staged) when Pendo fails after the client's retries,
    `TimeZoneMismatchError` when Pendo's days do not start at `zone`'s midnights, `EmptyDaysError` when a
    slice comes back without any usage although Pendo lists accounts and the staged days around it had usage
    (unless `allow_empty_days`); the client's `VendorAuthError` passes through as it is.
    """
    started = time.monotonic()
    ensure_schema(con)
    ledger = Ledger(con)
    report = ExtractReport(first_day, last_day, timezone=zone.key, apps=client.apps.describe(),
                           app_set=client.apps.key)
    settled = last_settled_day(zone, config.settle_hours, now)
    if last_day > settled:
        first_unsettled = max(first_day, settled + timedelta(days=1))
        report.not_ended = [d for d, _, _ in day_bounds(first_unsettled, last_day, zone)]
    read_last = min(last_day, settled)
    if read_last < first_day:
        report.seconds = time.monotonic() - started
        return report

    def counted_retry(event: RetryEvent) -> None:
        report.retries += 1
        if on_retry is not None:
            on_retry(event)

    spool = Path(tempfile.mkdtemp(prefix="pendo-", dir=_spool_parent(con)))

    def aggregate(pipeline: list[dict], name: str, file: str) -> Path:
        report.requests += 1
        return _spool(spool / file, client.aggregate_raw(pipeline, name=name, on_retry=counted_retry))

    try:
        accounts = aggregate(_accounts_pipeline(config), "segment-ops pendo accounts", "accounts.json")
        report.requests += 1
        features = _spool(spool / "features.json", client.features_raw(on_retry=counted_retry))
        report.accounts, report.features, rejected = _stage_entities(con, accounts, features, client.apps,
                                                                     run_id)
        ledger.reject_relation(SYNC, "pendo_rejections", run_id=run_id)
        con.execute("DROP TABLE pendo_rejections")
        report.rejected += rejected
        for first, last in slices_of(first_day, read_last):
            count = (last - first).days + 1
            payloads = {
                "visitor": aggregate(_events_pipeline(first, count, zone, client.apps),
                                     f"segment-ops pendo usage {first}..{last}", "visitor.json"),
                "feature": aggregate(_features_pipeline(first, count, zone, client.apps),
                                     f"segment-ops pendo features {first}..{last}", "feature.json"),
                "poll": aggregate(_polls_pipeline(first, count, zone, client.apps, config),
                                  f"segment-ops pendo NPS {first}..{last}", "poll.json"),
            }
            counts = _stage_slice(con, ledger, day_bounds(first, last, zone), payloads, client.apps, run_id,
                                  report, allow_empty=allow_empty_days)
            report.visitor_rows += counts[0]
            report.feature_rows += counts[1]
            report.poll_rows += counts[2]
            report.rejected += counts[3]
            report.days += count
            report.slices.append((first, last))
    except VendorAuthError:
        raise
    except VendorError as exc:
        report.seconds = time.monotonic() - started
        raise ExtractError(f"Pendo failed while reading {first_day} .. {read_last}: {exc}{_staged(report)}",
                           report) from exc
    except (TimeZoneMismatchError, EmptyDaysError) as exc:
        report.seconds = time.monotonic() - started
        raise type(exc)(f"{exc}{_staged(report)}", report) from None
    finally:
        for path in spool.iterdir():
            path.unlink()
        spool.rmdir()
    report.seconds = time.monotonic() - started
    return report


def _staged(report: ExtractReport) -> str:
    return f"; staged before it: {report.slices[0][0]} .. {report.slices[-1][1]}" if report.slices else ""


# --- pipelines (spec §4, §7) ------------------------------------------------------------------------------

_HAS_ACCOUNT = {"filter": "!isNull(accountId) && accountId != \"\""}


def _events_pipeline(first: date, days: int, zone: ZoneInfo, apps: AppScope) -> list[dict]:
    return [day_range_source("events", first, days, zone, apps=apps), _HAS_ACCOUNT,
            {"group": {"group": ["accountId", "visitorId", "appId", "day"],
                       "fields": {"numEvents": {"sum": "numEvents"}, "numMinutes": {"sum": "numMinutes"}}}}]


def _features_pipeline(first: date, days: int, zone: ZoneInfo, apps: AppScope) -> list[dict]:
    return [day_range_source("featureEvents", first, days, zone, apps=apps), _HAS_ACCOUNT,
            {"group": {"group": ["accountId", "appId", "day", "featureId"],
                       "fields": {"numEvents": {"sum": "numEvents"}, "visitors": {"count": "visitorId"}}}}]


def _polls_pipeline(first: date, days: int, zone: ZoneInfo, apps: AppScope,
                    config: HealthConfig) -> list[dict]:
    argument = {"pollId": config.nps_poll_id} if config.nps_poll_id else None
    return [day_range_source("pollEvents", first, days, zone, apps=apps, argument=argument), _HAS_ACCOUNT,
            {"select": {"accountId": "accountId", "visitorId": "visitorId", "appId": "appId", "time": "time",
                        "pollId": "pollId", "response": "response"}}]


def _accounts_pipeline(config: HealthConfig) -> list[dict]:
    # Accounts belong to the subscription, not to an app ("Multi-app subscriptions"): no appId.
    return [{"source": {"accounts": None}}, {"identified": "accountId"},
            {"select": {"accountId": "accountId", "name": "metadata.agent.name",
                        "plan": "metadata.custom.planlevel", "seats": f"metadata.custom.{config.seats_field}",
                        "firstVisit": "metadata.auto.firstvisit", "lastVisit": "metadata.auto.lastvisit"}}]


# --- staging --------------------------------------------------------------------------------------------

_TEXT = "nullif(trim(j->>'{0}'), '')"
_COUNT = "TRY_CAST(j->>'{0}' AS BIGINT)"


def _missing(field: str) -> str:
    """SQL: the reason when a row's id field is absent or empty."""
    return f"CASE WHEN {_TEXT.format(field)} IS NULL THEN 'no {field}' END"


def _bad_count(field: str) -> str:
    """SQL: the reason when a count field is not a non-negative whole number."""
    value = _COUNT.format(field)
    return (f"CASE WHEN {value} IS NULL OR {value} < 0 THEN '{field} is ' "
            f"|| coalesce(j->>'{field}', 'missing') || ', not a non-negative whole number' END")


def _spool_parent(con: duckdb.DuckDBPyConnection) -> str | None:
    """The staging file's folder (the spool files sit beside it), or the system's temp folder in memory."""
    path = con.execute("SELECT path FROM duckdb_databases() "
                       "WHERE database_name = current_database()").fetchone()[0]
    return os.path.dirname(path) if path else None


def _spool(path: Path, body: bytes) -> Path:
    path.write_bytes(body)
    return path


def _rows(con: duckdb.DuckDBPyConnection, table: str, path: Path, *, array: bool = False) -> None:
    """The JSON file at `path` - an aggregation's `{"results": [...]}` or a bare array - as a temp table of
    one JSON value per row, parsed by DuckDB from the file. An aggregation's body is one JSON object, so
    DuckDB's object size limit (16 MB by default) is raised to the file's size, no further (it sizes its
    buffer by it)."""
    rows = "json" if array else "unnest(CAST(json->'results' AS JSON[]))"
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE {table} AS
        SELECT {rows} AS j
        FROM read_json_objects(?, format = '{"array" if array else "unstructured"}',
                               maximum_object_size = {max(path.stat().st_size + 1, 1 << 20)})
    """, [str(path)])


def _app_outside(apps: AppScope) -> str:
    """SQL: the reason when a row's appId is not among the configured apps (never, for every app). A row
    without an appId is rejected too: it cannot be told to belong to them (and `NULL NOT IN (...)` is NULL,
    which would let it through)."""
    if apps.every_app:
        return "NULL"
    allowed = ", ".join(literal(a) for a in apps.ids)
    listed = ", ".join(apps.ids)
    return (f"CASE WHEN {_TEXT.format('appId')} IS NULL THEN 'no appId, so it cannot be told to be among "
            f"PENDO_APP_IDS ({listed})' WHEN {_TEXT.format('appId')} NOT IN ({allowed}) THEN 'app ' "
            f"|| (j->>'appId') || ' is not among PENDO_APP_IDS ({listed})' END")


def _stage_entities(con: duckdb.DuckDBPyConnection, accounts: Path, features: Path, apps: AppScope,
                    run_id: str | None) -> tuple[int, int, int]:
    """Replace the account list and the feature catalogue (the configured apps' features, and those Pendo
    gives no app); `pendo_rejections` holds the unusable rows."""
    _rows(con, "pendo_raw_accounts", accounts)
    _rows(con, "pendo_raw_features", features, array=True)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE pendo_rejections AS
        SELECT j->>'accountId' AS record_key, 'pendo accounts' AS source,
               'account row without an accountId' AS reason, left(j::VARCHAR, 2000) AS record
        FROM pendo_raw_accounts WHERE {_TEXT.format('accountId')} IS NULL
    """)
    seats = "TRY_CAST(j->>'seats' AS DOUBLE)"
    in_scope = "true" if apps.every_app else (
        f"coalesce({_TEXT.format('appId')} IN ({', '.join(literal(a) for a in apps.ids)}), true)")
    con.execute("BEGIN")
    try:
        con.execute("DELETE FROM pendo_accounts")
        con.execute(f"""
            INSERT INTO pendo_accounts
            SELECT {_TEXT.format('accountId')}, any_value(j->>'name'), any_value(j->>'plan'),
                   -- licensed seats: a positive whole number, else unknown (breadth then uses known users)
                   any_value(CASE WHEN {seats} >= 1 THEN floor({seats})::INTEGER END),
                   any_value(to_timestamp(TRY_CAST(j->>'firstVisit' AS BIGINT) / 1000)),
                   any_value(to_timestamp(TRY_CAST(j->>'lastVisit' AS BIGINT) / 1000)), now()
            FROM pendo_raw_accounts WHERE {_TEXT.format('accountId')} IS NOT NULL
            GROUP BY 1
        """)
        con.execute("DELETE FROM pendo_features")
        con.execute(f"""
            INSERT INTO pendo_features (feature_id, name, extracted_at, app_id)
            SELECT {_TEXT.format('id')}, any_value(j->>'name'), now(), any_value({_TEXT.format('appId')})
            FROM pendo_raw_features WHERE {_TEXT.format('id')} IS NOT NULL AND {in_scope} GROUP BY 1
        """)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    accounts_n = con.execute("SELECT count(*) FROM pendo_accounts").fetchone()[0]
    features_n = con.execute("SELECT count(*) FROM pendo_features").fetchone()[0]
    rejected = con.execute("SELECT count(*) FROM pendo_rejections").fetchone()[0]
    con.execute("DROP TABLE pendo_raw_accounts")
    con.execute("DROP TABLE pendo_raw_features")
    return accounts_n, features_n, rejected


def _stage_slice(con: duckdb.DuckDBPyConnection, ledger: Ledger, bounds: list[tuple[date, int, int]],
                 payloads: dict[str, Path], apps: AppScope, run_id: str | None,
                 report: ExtractReport, *, allow_empty: bool = False) -> tuple[int, int, int, int]:
    """Replace the slice's days with its rows in one transaction; reject what cannot be used. `bounds` are the
    (day, start ms, end ms) of the subscription's days the requests covered: a row's `day` must be one of
    those starts, a poll answer's `time` fall within one of those days."""
    first, last = bounds[0][0], bounds[-1][0]
    con.execute("CREATE OR REPLACE TEMP TABLE pendo_slice_days (day DATE, start_ms BIGINT, end_ms BIGINT)")
    con.executemany("INSERT INTO pendo_slice_days VALUES (?, ?, ?)", [list(b) for b in bounds])
    for kind, payload in payloads.items():
        _rows(con, f"pendo_raw_{kind}", payload)
    _check_day_starts(con, report.timezone, bounds)
    if not allow_empty:
        _check_not_emptied(con, report, first, last)
    day_ms = "TRY_CAST(j->>'day' AS BIGINT)"
    answered = "TRY_CAST(j->>'time' AS BIGINT)"
    response = "TRY_CAST(j->>'response' AS DOUBLE)"
    bad_day = (f"CASE WHEN {day_ms} IS NULL THEN 'day is ' || coalesce(j->>'day', 'missing') "
               "|| ', not epoch ms' END")
    outside = (f"CASE WHEN {day_ms} IS NOT NULL AND d.day IS NULL THEN 'day ' || {day_ms} || ' ('"
               f" || strftime(epoch_ms({day_ms}), '%Y-%m-%d %H:%M')"
               " || ' UTC) is outside the requested days' END")
    app_outside = _app_outside(apps)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE pendo_checked_visitor AS
        SELECT j, {_TEXT.format('accountId')} AS account_id, {_TEXT.format('visitorId')} AS visitor_id, d.day,
               {_TEXT.format('appId')} AS app_id, {_COUNT.format('numEvents')} AS events,
               {_COUNT.format('numMinutes')} AS minutes,
               concat_ws('; ', {_missing('accountId')}, {_missing('visitorId')}, {bad_day}, {outside},
                         {app_outside}, {_bad_count('numEvents')}, {_bad_count('numMinutes')}) AS reason
        FROM pendo_raw_visitor LEFT JOIN pendo_slice_days d ON d.start_ms = {day_ms}
    """)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE pendo_checked_feature AS
        SELECT j, {_TEXT.format('accountId')} AS account_id, {_TEXT.format('featureId')} AS feature_id, d.day,
               {_TEXT.format('appId')} AS app_id, {_COUNT.format('numEvents')} AS events,
               {_COUNT.format('visitors')} AS visitors,
               concat_ws('; ', {_missing('accountId')}, {_missing('featureId')}, {bad_day}, {outside},
                         {app_outside}, {_bad_count('numEvents')}) AS reason
        FROM pendo_raw_feature LEFT JOIN pendo_slice_days d ON d.start_ms = {day_ms}
    """)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE pendo_checked_poll AS
        SELECT j, {_TEXT.format('accountId')} AS account_id, {_TEXT.format('visitorId')} AS visitor_id,
               d.day, {answered} AS answered_ms, j->>'pollId' AS poll_id, {response} AS response,
               concat_ws('; ', {_missing('accountId')},
                   CASE WHEN {answered} IS NULL
                        THEN 'time is ' || coalesce(j->>'time', 'missing') || ', not epoch ms'
                        WHEN d.day IS NULL
                        THEN 'answered at ' || strftime(epoch_ms({answered}), '%Y-%m-%d %H:%M')
                             || ' UTC, outside the requested days' END,
                   {app_outside},
                   CASE WHEN {response} IS NULL OR {response} NOT BETWEEN 0 AND 10
                             OR {response} <> floor({response})
                        THEN 'NPS response ' || coalesce(j->>'response', 'missing')
                             || ' is not a whole number 0-10' END
               ) AS reason
        FROM pendo_raw_poll LEFT JOIN pendo_slice_days d ON {answered} >= d.start_ms AND {answered} < d.end_ms
    """)
    con.execute("""
        CREATE OR REPLACE TEMP TABLE pendo_rejections AS
        SELECT coalesce(account_id, '?') || '/' || coalesce(visitor_id, '?') || '/'
                   || coalesce(day::VARCHAR, '?') AS record_key,
               'pendo events' AS source, reason, left(j::VARCHAR, 2000) AS record
        FROM pendo_checked_visitor WHERE reason <> ''
        UNION ALL
        SELECT coalesce(account_id, '?') || '/' || coalesce(feature_id, '?') || '/'
                   || coalesce(day::VARCHAR, '?'),
               'pendo featureEvents',
               reason, left(j::VARCHAR, 2000)
        FROM pendo_checked_feature WHERE reason <> ''
        UNION ALL
        SELECT coalesce(account_id, '?') || '/' || coalesce(visitor_id, '?') || '/'
                   || coalesce(answered_ms::VARCHAR, '?'),
               'pendo pollEvents', reason, left(j::VARCHAR, 2000)
        FROM pendo_checked_poll WHERE reason <> ''
    """)
    params = {"first": first, "last": last}
    con.execute("BEGIN")
    try:
        for table in ("pendo_visitor_days", "pendo_feature_days", "pendo_poll_responses",
                      "pendo_staged_days"):
            con.execute(f"DELETE FROM {table} WHERE day BETWEEN $first AND $last", params)
        # A visitor or feature may come back in several rows for one day and app (Pendo splits event rows
        # further, e.g. by server); they are summed here. Apps stay apart: the score sums them.
        con.execute("""
            INSERT INTO pendo_visitor_days (day, account_id, visitor_id, events, minutes, app_id)
            SELECT day, account_id, visitor_id, sum(events), sum(minutes), app_id FROM pendo_checked_visitor
            WHERE reason = '' GROUP BY day, account_id, visitor_id, app_id
        """)
        con.execute("""
            INSERT INTO pendo_feature_days (day, account_id, feature_id, events, visitors, app_id)
            SELECT day, account_id, feature_id, sum(events), max(visitors), app_id FROM pendo_checked_feature
            WHERE reason = '' GROUP BY day, account_id, feature_id, app_id
        """)
        con.execute("""
            INSERT INTO pendo_poll_responses
            SELECT day, account_id, visitor_id, to_timestamp(answered_ms / 1000), poll_id, response::INTEGER
            FROM pendo_checked_poll WHERE reason = ''
        """)
        con.execute("""
            INSERT INTO pendo_staged_days (day, staged_at, run_id, visitor_rows, feature_rows, poll_rows,
                                           timezone, day_start_ms, day_end_ms, apps)
            SELECT d.day, now(), $run_id,
                   (SELECT count(*) FROM pendo_visitor_days v WHERE v.day = d.day),
                   (SELECT count(*) FROM pendo_feature_days f WHERE f.day = d.day),
                   (SELECT count(*) FROM pendo_poll_responses p WHERE p.day = d.day),
                   $timezone, d.start_ms, d.end_ms, $apps
            FROM pendo_slice_days d
        """, {"run_id": run_id, "timezone": report.timezone, "apps": report.app_set})
        ledger.reject_relation(SYNC, "pendo_rejections", run_id=run_id)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    counts = con.execute("""
        SELECT sum(visitor_rows), sum(feature_rows), sum(poll_rows) FROM pendo_staged_days
        WHERE day BETWEEN $first AND $last""", params).fetchone()
    for app_id, events in con.execute("""
            SELECT coalesce(app_id, '?'), sum(events) FROM pendo_visitor_days
            WHERE day BETWEEN $first AND $last GROUP BY 1""", params).fetchall():
        report.events_by_app[app_id] = report.events_by_app.get(app_id, 0) + int(events)
    rejected = con.execute("SELECT count(*) FROM pendo_rejections").fetchone()[0]
    _drop_slice_tables(con)
    return int(counts[0] or 0), int(counts[1] or 0), int(counts[2] or 0), rejected


def _check_day_starts(con: duckdb.DuckDBPyConnection, timezone: str,
                      bounds: list[tuple[date, int, int]]) -> None:
    """Raise `TimeZoneMismatchError` when an event row's `day` is not a midnight of `timezone`: Pendo buckets
    days in another zone (spec §7). Pendo aligns a request's `first` down to its own midnight, so such rows
    may also fall just outside the requested days; either way the day values betray the zone."""
    zone = ZoneInfo(timezone)
    values = con.execute("""
        SELECT day_ms, count(*) FROM (
            SELECT TRY_CAST(j->>'day' AS BIGINT) AS day_ms FROM pendo_raw_visitor
            UNION ALL SELECT TRY_CAST(j->>'day' AS BIGINT) FROM pendo_raw_feature)
        WHERE day_ms IS NOT NULL GROUP BY day_ms ORDER BY day_ms""").fetchall()
    wrong = [(ms, n) for ms, n in values
             if _is_instant(ms) and local_midnight_ms(local_day_of(ms, zone), zone) != ms]
    if not wrong:
        return
    day_ms = wrong[0][0]
    day = local_day_of(day_ms, zone)
    seen = datetime.fromtimestamp(day_ms / 1000, UTC)
    expected = datetime.fromtimestamp(local_midnight_ms(day, zone) / 1000, UTC)
    _drop_slice_tables(con)
    raise TimeZoneMismatchError(
        f"Pendo's days do not start at midnight in PENDO_TIMEZONE={timezone}: {sum(n for _, n in wrong)} "
        f"row(s) for {bounds[0][0]} .. {bounds[-1][0]} carry a `day` such as {day_ms} "
        f"({seen:%Y-%m-%d %H:%M} UTC), but {day} starts at {expected:%Y-%m-%d %H:%M} UTC in {timezone}. "
        f"The subscription's time zone (Pendo: Settings > Subscription settings > Time Zone) puts midnight "
        f"at {seen:%H:%M} UTC, i.e. a UTC offset of {_offset_of_midnight(seen)} on that day: set "
        f"PENDO_TIMEZONE to it. Nothing of these days was staged",
        ExtractReport(bounds[0][0], bounds[-1][0], timezone=timezone))


EMPTY_LOOKBACK_DAYS = 7  # the staged days before a slice (and its own) that show whether usage is normal


def _check_not_emptied(con: duckdb.DuckDBPyConnection, report: ExtractReport, first: date,
                       last: date) -> None:
    """Raise `EmptyDaysError` when the slice's answers hold no row at all, Pendo lists accounts, and days
    staged in [first - 7 days, last] had usage: a completed empty answer would be staged as "no usage" and
    replace real usage (Pendo answers zeros while it re-processes after a time zone change)."""
    rows = con.execute("SELECT (SELECT count(*) FROM pendo_raw_visitor)"
                       " + (SELECT count(*) FROM pendo_raw_feature)"
                       " + (SELECT count(*) FROM pendo_raw_poll)").fetchone()[0]
    if rows or not report.accounts:
        return
    with_usage, newest = con.execute(
        "SELECT count(*), max(day) FROM pendo_staged_days WHERE visitor_rows > 0 AND day BETWEEN ? AND ?",
        [first - timedelta(days=EMPTY_LOOKBACK_DAYS), last]).fetchone()
    if not with_usage:
        return
    _drop_slice_tables(con)
    raise EmptyDaysError(
        f"Pendo answered no usage at all for {first} .. {last} although it lists {report.accounts} "
        f"account(s) and {with_usage} staged day(s) up to {newest} had usage: Pendo may be re-processing "
        "the subscription's days (it shows no data for a while after a change of the subscription's time "
        "zone). Nothing of these days was staged. Re-run once Pendo shows usage again, or, if these days "
        "really had no usage, run with the run config allow_empty_days: true",
        ExtractReport(first, last, timezone=report.timezone))


def _is_instant(ms: int) -> bool:
    """Whether `ms` is a plausible Pendo time, 2001..2099 (a wild value is a rejected row, not a zone)."""
    return 1_000_000_000_000 <= ms < 4_102_444_800_000


def _offset_of_midnight(moment: datetime) -> str:
    """The UTC offset (whole hours, -12..+14) of a zone whose midnight is at `moment`'s UTC time of day."""
    hours = -(moment.hour + moment.minute / 60)
    if hours < -12:
        hours += 24
    return f"{'-' if hours < 0 else '+'}{abs(int(hours)):02d}:00"


def _drop_slice_tables(con: duckdb.DuckDBPyConnection) -> None:
    for name in ("slice_days", "raw_visitor", "raw_feature", "raw_poll", "checked_visitor",
                 "checked_feature", "checked_poll", "rejections"):
        con.execute(f"DROP TABLE IF EXISTS pendo_{name}")
