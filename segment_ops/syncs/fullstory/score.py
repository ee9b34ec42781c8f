"""The Fullstory experience score: a per-user number (0-100, higher is better) from the frustration signals
received, and from Fullstory's warehouse tables where the customer syncs them, sent as identify traits
through the engine's diff (upsert): only users whose score or band changed get a call.

For the day D (a daily partition, UTC), over the window of `window_days` days ending with D:

    signal_penalty  = min(max_signal_penalty, sum over kinds of weight[kind] x signals of that kind)
    error_penalty   = error_rate_weight x error_sessions / sessions                       (warehouse; else 0)
    shallow_penalty = shallow_session_weight x max(0, 1 - (pages / sessions) / healthy_pages_per_session)
                                                                                           (warehouse; else 0)
    score = round(clamp(100 - signal_penalty - error_penalty - shallow_penalty, 0, 100))
    band  = "good" (>= 80) | "fair" (>= 50) | "poor"

Signals counted are those recorded with status `send`, `rate_limited` or `late` (a rate limit keeps Segment
quiet, not the user happy; a late event was not sent as a track call, but it happened); filtered and
unidentified ones are not a customer's experience, or not anyone's known.
The users scored are those with signals or sessions in the window, plus every user a score was delivered to:
a user whose signals left the window goes back up, once, instead of keeping a stale low score.

Only the newest day is sent: a run for a day before the newest day already sent computes and reports its
scores but sends nothing (a backfill never sends yesterday's score over today's).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime

import duckdb

from segment_ops.engine import store
from segment_ops.engine.diff import delivered_rows
from segment_ops.engine.run import DiffSync, RunReport
from segment_ops.engine.spec import DiffSpec
from segment_ops.engine.sql import literal, utc_timestamp
from segment_ops.engine.warehouse import StagedResult, describe_staged, dialect_of, stage_query
from segment_ops.syncs.fullstory.settings import ScoreConfig
from segment_ops.syncs.fullstory.signals import TABLE as SIGNALS_TABLE
from segment_ops.syncs.fullstory.signals import rows_table

SYNC = "fullstory_experience_score"
TRAITS = ("fullstory_experience_score", "fullstory_experience_band")
RUNS_TABLE = "fullstory_score_runs"
SCORES_TABLE = "fullstory_scores"
DRY_RUN_TABLE = "fullstory_scores_dry_run"  # a temp table
STATE = store.register(store.StateSchema(
    name="fullstory_score", version=1, tables=(RUNS_TABLE,), derived=(SCORES_TABLE,),
    create=f"CREATE TABLE IF NOT EXISTS {RUNS_TABLE} (as_of DATE NOT NULL, window_days INTEGER NOT NULL, "
           "fingerprint VARCHAR NOT NULL, sent BOOLEAN NOT NULL, users BIGINT NOT NULL, "
           "warehouse BOOLEAN NOT NULL, scored_at TIMESTAMPTZ NOT NULL, run_id VARCHAR)",
    erase=f"DELETE FROM {SCORES_TABLE} WHERE erased_id(user_id)"))
# One row per user with signals in the window: (user_id, rage, dead, error), from `signal_counts`.
SignalCounts = list[tuple[str, int, int, int]]
COUNT_COLUMNS = (("user_id", "VARCHAR"), ("rage", "BIGINT"), ("dead", "BIGINT"), ("error", "BIGINT"))


@dataclass(kw_only=True)
class ScoreRun(RunReport):
    as_of: date
    window_start: datetime | None = None
    window_end: datetime | None = None
    users_scored: int = 0
    users_with_signals: int = 0
    users_with_sessions: int = 0
    warehouse: bool = False
    sent: bool = True  # False: an older day than one already sent (computed, reported, not sent)
    newest_sent: date | None = None
    bands: dict[str, int] = field(default_factory=dict)
    mean_score: float | None = None
    lowest: list[dict] = field(default_factory=list)  # the lowest scores (user ids only where shown)


def window(as_of: date, days: int) -> tuple[datetime, datetime]:
    """[start, end) in UTC of the `days` days ending with `as_of`."""
    end = datetime.combine(as_of + timedelta(days=1), dtime(), UTC)
    return end - timedelta(days=days), end


def signal_counts(con: duckdb.DuckDBPyConnection, start: datetime, end: datetime) -> SignalCounts:
    """Per user, the signals of each kind in [start, end) from the signals sync's state (`con` is its staging
    connection): what the score's run takes with it (one row per user with signals)."""
    store.ensure(con, store.schema_named("fullstory_signals"))
    rows = con.execute(f"""
        SELECT user_id, count(*) FILTER (WHERE kind = 'rage') AS rage,
               count(*) FILTER (WHERE kind = 'dead') AS dead, count(*) FILTER (WHERE kind = 'error') AS error
        FROM {SIGNALS_TABLE}
        WHERE status IN ('send', 'rate_limited', 'late') AND user_id IS NOT NULL AND event_time >= $start
          AND event_time < $end
        GROUP BY user_id""", {"start": start, "end": end}).fetchall()
    return [tuple(row) for row in rows]


def newest_sent(con: duckdb.DuckDBPyConnection) -> date | None:
    store.ensure(con, STATE)
    return con.execute(f"SELECT max(as_of) FROM {RUNS_TABLE} WHERE sent").fetchall()[0][0]


def spec() -> DiffSpec:
    return DiffSpec(sync=SYNC, source="Fullstory experience score", call="identify", mode="upsert",
                    key="user_id", user_id="user_id", fields=TRAITS)


def email_filter(patterns: tuple[str, ...]) -> str:
    """SQL true for an `email` matching none of the shell `patterns` ([signals.filters] exclude_emails)."""
    if not patterns:
        return "true"
    regexes = ["^" + re.escape(p).replace(r"\*", ".*").replace(r"\?", ".") + "$" for p in patterns]
    return f"NOT coalesce(regexp_full_match(lower(email), {literal('|'.join(regexes))}), false)"


def diff_sync(config: ScoreConfig, counts: SignalCounts, report: ScoreRun, *, warehouse_url: str,
              exclude_emails: tuple[str, ...] = ()) -> DiffSync:
    """The engine's view of a score run for `report.as_of`; `counts` from `signal_counts`. Sessions of users
    whose email matches `exclude_emails` (staff: their signals are filtered too) are not scored."""

    def stage(con: duckdb.DuckDBPyConnection) -> StagedResult:
        started = time.monotonic()
        store.ensure(con, STATE)
        report.window_start, report.window_end = window(report.as_of, config.window_days)
        report.newest_sent = newest_sent(con)
        report.sent = report.newest_sent is None or report.as_of >= report.newest_sent
        rows_table(con, "fullstory_counts", COUNT_COLUMNS, counts)
        sessions = "SELECT NULL::VARCHAR AS user_id, 0 AS sessions, 0 AS error_sessions, 0 AS pages LIMIT 0"
        if config.warehouse_query is not None:
            dialect = dialect_of(warehouse_url)
            start, end = (utc_timestamp(m, dialect) for m in (report.window_start, report.window_end))
            query = config.warehouse_query.replace("{window_start}", start).replace("{window_end}", end)
            stage_query(con, warehouse_url, query, "fullstory_sessions_raw")
            columns = {c for (c, *_) in con.execute("DESCRIBE fullstory_sessions_raw").fetchall()}
            staff = email_filter(exclude_emails) if "email" in columns else "true"
            sessions = ("SELECT user_id::VARCHAR AS user_id, sessions::BIGINT AS sessions, "
                        "error_sessions::BIGINT AS error_sessions, pages::BIGINT AS pages "
                        f"FROM fullstory_sessions_raw WHERE user_id IS NOT NULL AND sessions > 0 AND {staff}")
            report.warehouse = True
        weights = config.weights
        scores = DRY_RUN_TABLE if report.dry_run else SCORES_TABLE  # a dry run writes no state
        con.execute(f"""
            CREATE OR REPLACE {'TEMP TABLE' if report.dry_run else 'TABLE'} {scores} AS
            WITH sessions AS ({sessions}),
            users AS (SELECT user_id FROM fullstory_counts UNION SELECT user_id FROM sessions
                      UNION SELECT record_key FROM {delivered_rows()}),
            parts AS (
                SELECT u.user_id, coalesce(c.rage, 0) AS rage, coalesce(c.dead, 0) AS dead,
                       coalesce(c.error, 0) AS error, s.sessions, s.error_sessions, s.pages,
                       least($max_signal, {weights['rage']} * coalesce(c.rage, 0)
                             + {weights['dead']} * coalesce(c.dead, 0)
                             + {weights['error']} * coalesce(c.error, 0)) AS signal_penalty,
                       coalesce($error_weight * s.error_sessions / s.sessions, 0) AS error_penalty,
                       coalesce($shallow_weight * greatest(0, 1 - (s.pages / s.sessions) / $healthy_pages), 0)
                           AS shallow_penalty
                FROM users u LEFT JOIN fullstory_counts c USING (user_id)
                LEFT JOIN sessions s USING (user_id))
            SELECT user_id, rage, dead, error, sessions, error_sessions, pages,
                   round(greatest(0, least(100, 100 - signal_penalty - error_penalty
                                                - shallow_penalty)))::INTEGER
                       AS fullstory_experience_score
            FROM parts""",
                    {"max_signal": config.max_signal_penalty, "error_weight": config.error_rate_weight,
                     "shallow_weight": config.shallow_session_weight,
                     "healthy_pages": config.healthy_pages_per_session})
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE fullstory_score_staged AS
            SELECT user_id, fullstory_experience_score,
                   CASE WHEN fullstory_experience_score >= 80 THEN 'good'
                        WHEN fullstory_experience_score >= 50 THEN 'fair' ELSE 'poor' END
                       AS fullstory_experience_band
            FROM {scores} {'' if report.sent else 'WHERE false'}""")
        _summarise(con, report, scores)
        return describe_staged(con, "fullstory_score_staged", "fullstory signals + warehouse",
                               time.monotonic() - started)

    return DiffSync(spec=spec(), stage=stage, label=f"Fullstory experience score {report.as_of}")


def record_run(con: duckdb.DuckDBPyConnection, config: ScoreConfig, report: ScoreRun,
               run_id: str | None) -> None:
    con.execute(f"INSERT INTO {RUNS_TABLE} VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [report.as_of, config.window_days, config.fingerprint(), report.sent, report.users_scored,
                 report.warehouse, datetime.now(UTC), run_id])


def _summarise(con: duckdb.DuckDBPyConnection, report: ScoreRun, scores: str) -> None:
    report.users_scored, report.users_with_signals, report.users_with_sessions, mean = con.execute(f"""
        SELECT count(*), count(*) FILTER (WHERE rage + dead + error > 0),
               count(*) FILTER (WHERE sessions > 0), avg(fullstory_experience_score)
        FROM {scores}""").fetchall()[0]
    report.mean_score = round(mean, 1) if mean is not None else None
    report.bands = dict(con.execute(f"""
        SELECT CASE WHEN fullstory_experience_score >= 80 THEN 'good'
                    WHEN fullstory_experience_score >= 50 THEN 'fair' ELSE 'poor' END, count(*)
        FROM {scores} GROUP BY 1""").fetchall())
    columns = ("user_id", "score", "rage", "dead", "error", "sessions", "error_sessions", "pages")
    report.lowest = [dict(zip(columns, row, strict=True)) for row in con.execute(f"""
        SELECT user_id, fullstory_experience_score, rage, dead, error, sessions, error_sessions, pages
        FROM {scores} ORDER BY fullstory_experience_score, user_id LIMIT 5""").fetchall()]
