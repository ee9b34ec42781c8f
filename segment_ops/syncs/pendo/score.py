"""Pendo account health: a documented, configurable score over the staged usage days, in DuckDB SQL.

Five components, each 0..1, for every account as of a day A over a window of W days (config `[window]`):

- breadth:   distinct active visitors in (A-W, A] / licensed seats (account metadata; when Pendo has no
             seat count, the visitors ever staged for the account stand in), capped at 1;
- depth:     distinct features used in the window / the tagged features of the apps the account used in
             the window (or `feature_target`), capped at 1: an account of the web app only is not
             measured against the mobile apps' features;
- trend:     events in the window / events in the W days before, capped at 1 (steady or growing = 1);
             left out until that previous window is fully staged, or when both windows are empty;
- sentiment: average NPS answer (0-10) of the last `sentiment_days` / 10; left out without answers;
- recency:   1 - (days since the last active day, in whole steps of `recency_step_days`) / W, floored at
             0: it moves once a step (a week by default), not every day, so a quiet account's score
             (and its group call) does not drift daily.

score = round(100 * sum(weight * component) / sum(weight)) over the components the account has, band by
the `[bands]` thresholds, and reasons = the (at most `[reasons] max`) components below `[reasons] below`
that cost the most points, as short text with no relative day counts ("last active on 2026-10-20") and
percentages in steps of 10, so a text only changes when something material does. An account with no
activity scores (breadth, recency and depth 0: score 0, critical, "no activity ..."), it never fails the
run. Same staged data, same config: same scores, byte for byte (every ordering has a tie-break).

Days are the Pendo subscription's (PENDO_TIMEZONE), and usage is summed over every app read (PENDO_APP_IDS:
an account active in the web app and a mobile app counts its visitors once and its events from both). A
day staged under another zone (before PENDO_TIMEZONE, every day was a UTC day) counts as not staged, and its
rows are left out of every part of the score (`usage_days_sql`) and of the default scoring day: its bounds
differ, so mixing it with local days would count some hours twice and others not at all. So does a day read
for another app set (PENDO_APP_IDS changed): it holds other apps' usage.

Accounts scored = the accounts in Pendo's account list (staged with the usage) plus any account seen in the
staged usage. The result replaces the table `pendo_account_health` in the sync's staging file, and one row
in `pendo_health_runs` records the scoring day and which days of its window were not staged (the sync
refuses to send a partial window unless `[window] allow_partial_window = true`).
"""

from __future__ import annotations

import hashlib
import time
import tomllib
from dataclasses import dataclass, field
from datetime import date, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import duckdb

from segment_ops.engine import store
from segment_ops.engine.identity import IdentityMapError, IdentitySource
from segment_ops.engine.sql import literal

# Package data (pyproject's package-data); PENDO_HEALTH_CONFIG overrides it. Installed packages sit on disk
# (Dagster cannot load zipped code), so `files()` is a real path for error messages.
DEFAULT_CONFIG_PATH = Path(resources.files("segment_ops.syncs.pendo").joinpath("pendo_health.toml"))
COMPONENTS = ("breadth", "depth", "trend", "sentiment", "recency")
BANDS = ("healthy", "at_risk", "critical")
HEALTH_TABLE = "pendo_account_health"
RUNS_TABLE = "pendo_health_runs"
# Erasure (`engine/erasure.py`): an account's scores stay, without the erased subject as its top visitor (the
# next scoring picks another from the staged usage, which no longer holds the subject).
_ERASE_TOP_VISITOR = f"UPDATE {HEALTH_TABLE} SET top_visitor_id = NULL WHERE erased_id(top_visitor_id)"
# One row per scoring: the day, the window and the days of it that were missing.
STATE = store.register(store.StateSchema(
    name="pendo_score", version=1, tables=(RUNS_TABLE,), derived=(HEALTH_TABLE,),
    create=f"CREATE TABLE IF NOT EXISTS {RUNS_TABLE} (as_of DATE NOT NULL, window_days INTEGER NOT NULL, "
           "missing_days DATE[] NOT NULL, scored_at TIMESTAMPTZ NOT NULL)", erase=_ERASE_TOP_VISITOR))
SCORE_VERSION = "3"  # bump when the SQL below changes meaning (3: depth per account's apps)
# Pendo's anonymous visitor ids (pendo-io/pendo-ETL-API-calls); never a Segment userId.
ANONYMOUS_PREFIX = "_PENDO_T_"


class HealthConfigError(ValueError):
    """The health config file cannot be used as written; the message starts with its path."""

    def __init__(self, path: Path | str, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class NothingStagedError(RuntimeError):
    """No Pendo usage is staged yet, so there is nothing to score."""


# A staged day's zone; NULL: staged before the zone was recorded, when every day was a UTC day.
STAGED_ZONE = "coalesce(timezone, 'UTC')"
# A day staged in the zone $zone for the app set $apps (AppScope.key; NULL apps: read before PENDO_APP_IDS,
# for the default app only, so never the configured set). Only such days are staged for the score.
STAGED_HERE = f"({STAGED_ZONE} = $zone AND apps IS NOT DISTINCT FROM $apps)"


def missing_window_days(con: duckdb.DuckDBPyConnection, as_of: date, window_days: int, timezone: str,
                        apps: str) -> list[date]:
    """The days of the window of `window_days` ending on `as_of` that `pendo_staged_days` does not hold as
    days of `timezone` read for the app set `apps` (a day staged under another zone or for other apps is
    missing until it is read again)."""
    rows = con.execute(
        "SELECT d::DATE FROM generate_series($first::DATE, $last::DATE, INTERVAL 1 DAY) t(d) "
        f"WHERE d::DATE NOT IN (SELECT day FROM pendo_staged_days WHERE {STAGED_HERE}) ORDER BY 1",
        {"first": as_of - timedelta(days=window_days - 1), "last": as_of, "zone": timezone,
         "apps": apps}).fetchall()
    return [d for (d,) in rows]


def days_staged_otherwise(con: duckdb.DuckDBPyConnection, days: list[date], timezone: str,
                          apps: str) -> list[tuple[date, str]]:
    """Of `days`, those staged under a zone other than `timezone` or for an app set other than `apps`, with
    how they were staged ("as days of UTC", "for apps *", "for the default app only", or both)."""
    if not days:
        return []
    return con.execute(f"""
        SELECT day, concat_ws(' ', CASE WHEN {STAGED_ZONE} <> $zone THEN 'as days of ' || {STAGED_ZONE} END,
                              CASE WHEN apps IS NULL THEN 'for the default app only'
                                   WHEN apps <> $apps THEN 'for apps ' || apps END)
        FROM pendo_staged_days WHERE day IN (SELECT unnest($days)) AND NOT {STAGED_HERE} ORDER BY day""",
                       {"days": days, "zone": timezone, "apps": apps}).fetchall()


def describe_staged_otherwise(other: list[tuple[date, str]]) -> str:
    """`days_staged_otherwise`'s answer as text: "29 of them staged as days of UTC; 1 staged for apps *"."""
    counts: dict[str, int] = {}
    for _, how in other:
        counts[how] = counts.get(how, 0) + 1
    return "; ".join(f"{n} {'of them ' if i == 0 else ''}staged {how}"
                     for i, (how, n) in enumerate(counts.items()))


def describe_days(days: list[date], limit: int = 10) -> str:
    """Days as a short text: ranges of consecutive days joined, at most `limit` items then '...'."""
    ranges: list[list[date]] = []
    for day in days:
        if ranges and (day - ranges[-1][1]).days == 1:
            ranges[-1][1] = day
        else:
            ranges.append([day, day])
    items = [str(a) if a == b else f"{a} .. {b}" for a, b in ranges]
    return ", ".join(items[:limit]) + (f" (and {len(items) - limit} more)" if len(items) > limit else "")


@dataclass(frozen=True)
class HealthConfig:
    """The parsed `pendo_health.toml` (see the file's comments and the README for each value)."""

    path: Path
    window_days: int = 30
    sentiment_days: int = 90
    recency_step_days: int = 7
    allow_partial_window: bool = False
    weights: dict[str, float] = field(default_factory=lambda: {
        "breadth": 0.30, "depth": 0.20, "trend": 0.20, "sentiment": 0.15, "recency": 0.15})
    healthy: int = 70
    at_risk: int = 40
    max_reasons: int = 3
    reason_below: float = 0.7
    seats_field: str = "seats"
    nps_poll_id: str = ""
    feature_target: int = 0
    settle_hours: int = 2
    trait_prefix: str = "pendo_"
    service_user: str = ""
    require_mapping: bool = False
    identity: IdentitySource | None = None
    digest: str = ""  # sha256 of the file: part of the score asset's code_version

    @property
    def window_label(self) -> str:
        return f"{self.window_days} days"


_SECTIONS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "window": {"days": int, "sentiment_days": int, "recency_step_days": int, "allow_partial_window": bool},
    "weights": dict.fromkeys(COMPONENTS, (int, float)),
    "bands": {"healthy": int, "at_risk": int},
    "reasons": {"max": int, "below": (int, float)},
    "extract": {"seats_field": str, "nps_poll_id": str, "feature_target": int, "settle_hours": int},
    "sync": {"trait_prefix": str, "service_user": str, "require_mapping": bool},
    "identity": {"query": str, "url": str, "csv": str},
}


def load_health_config(path: Path | str | None = None) -> HealthConfig:
    """Read and validate the config (default: `pendo_health.toml` beside this module)."""
    path = Path(path or DEFAULT_CONFIG_PATH).expanduser()
    try:
        raw = path.read_bytes()
        data = tomllib.loads(raw.decode())
    except OSError as exc:
        raise HealthConfigError(path, f"cannot read the file: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise HealthConfigError(path, f"not valid TOML: {exc}") from None
    _check_shape(path, data)
    window, weights = data.get("window", {}), data.get("weights", {})
    bands, reasons = data.get("bands", {}), data.get("reasons", {})
    extract, sync = data.get("extract", {}), data.get("sync", {})
    defaults = HealthConfig(path)
    try:
        identity = IdentitySource.from_config(data["identity"]) if "identity" in data else None
    except IdentityMapError as exc:
        raise HealthConfigError(path, f"[identity]: {exc}") from None
    config = HealthConfig(
        path=path,
        window_days=window.get("days", defaults.window_days),
        sentiment_days=window.get("sentiment_days", defaults.sentiment_days),
        recency_step_days=window.get("recency_step_days", defaults.recency_step_days),
        allow_partial_window=window.get("allow_partial_window", defaults.allow_partial_window),
        weights={c: float(weights.get(c, defaults.weights[c])) for c in COMPONENTS},
        healthy=bands.get("healthy", defaults.healthy),
        at_risk=bands.get("at_risk", defaults.at_risk),
        max_reasons=reasons.get("max", defaults.max_reasons),
        reason_below=float(reasons.get("below", defaults.reason_below)),
        seats_field=extract.get("seats_field", defaults.seats_field),
        nps_poll_id=extract.get("nps_poll_id", defaults.nps_poll_id),
        feature_target=extract.get("feature_target", defaults.feature_target),
        settle_hours=extract.get("settle_hours", defaults.settle_hours),
        trait_prefix=sync.get("trait_prefix", defaults.trait_prefix),
        service_user=sync.get("service_user", defaults.service_user).strip(),
        require_mapping=sync.get("require_mapping", defaults.require_mapping),
        identity=identity,
        digest=hashlib.sha256(raw).hexdigest(),
    )
    _check_values(config)
    return config


def _check_shape(path: Path, data: dict[str, Any]) -> None:
    for section, value in data.items():
        if section not in _SECTIONS:
            raise HealthConfigError(path, f"unknown section [{section}]; known: {', '.join(_SECTIONS)}")
        if not isinstance(value, dict):
            raise HealthConfigError(path, f"[{section}] must be a table")
        for key, item in value.items():
            expected = _SECTIONS[section].get(key)
            if expected is None:
                raise HealthConfigError(path, f"unknown key {key!r} in [{section}]; known: "
                                              f"{', '.join(_SECTIONS[section])}")
            if isinstance(item, bool) and expected is not bool or not isinstance(item, expected):
                types = expected if isinstance(expected, tuple) else (expected,)
                names = " or ".join(t.__name__ for t in types)
                raise HealthConfigError(path, f"[{section}] {key} must be {names}, got {item!r}")


def _check_values(c: HealthConfig) -> None:
    def fail(problem: str) -> None:
        raise HealthConfigError(c.path, problem)

    if not 1 <= c.window_days <= 365:
        fail(f"[window] days must be 1..365, got {c.window_days}")
    if not 1 <= c.sentiment_days <= 730:
        fail(f"[window] sentiment_days must be 1..730, got {c.sentiment_days}")
    if not 1 <= c.recency_step_days <= c.window_days:
        fail(f"[window] recency_step_days must be 1..days ({c.window_days}), got {c.recency_step_days}")
    negative = [k for k, w in c.weights.items() if w < 0]
    if negative:
        fail(f"[weights] must not be negative: {', '.join(negative)}")
    if c.weights["breadth"] + c.weights["recency"] <= 0:
        fail("[weights] breadth or recency must be positive: they are the components every account has, "
             "so without them an account with no NPS answer and no trend could not be scored")
    if not 0 < c.at_risk < c.healthy <= 100:
        fail(f"[bands] need 0 < at_risk < healthy <= 100, got at_risk={c.at_risk}, healthy={c.healthy}")
    if not 0 <= c.max_reasons <= len(COMPONENTS):
        fail(f"[reasons] max must be 0..{len(COMPONENTS)}, got {c.max_reasons}")
    if not 0 < c.reason_below <= 1:
        fail(f"[reasons] below must be within (0, 1], got {c.reason_below}")
    if c.feature_target < 0:
        fail(f"[extract] feature_target must be >= 0, got {c.feature_target}")
    if not 0 <= c.settle_hours <= 72:
        fail(f"[extract] settle_hours must be 0..72, got {c.settle_hours}")
    if not c.seats_field.replace("_", "").isalnum():
        fail(f"[extract] seats_field must be a metadata field name (letters, digits, _), "
             f"got {c.seats_field!r}")
    if c.trait_prefix and not c.trait_prefix.replace("_", "").isalnum():
        fail(f"[sync] trait_prefix must be letters, digits and _, got {c.trait_prefix!r}")


# --------------------------------------------------------------------------------------------- scoring


@dataclass
class ScoreReport:
    as_of: date
    window_days: int
    accounts: int
    bands: dict[str, int]
    window_days_staged: int  # staged days in the current window (of window_days)
    previous_days_staged: int  # staged days in the previous window (trend needs all of them)
    missing_days: list[date]  # days of the current window that are not staged
    with_trend: int
    with_sentiment: int
    no_activity: int
    score_min: int | None
    score_median: float | None
    score_max: int | None
    lowest: list[tuple]  # (account_id, name, score, band, reasons) of the lowest scores
    seconds: float


def latest_staged_day(con: duckdb.DuckDBPyConnection, timezone: str, apps: str) -> date | None:
    """The newest usage day staged as a day of `timezone` for the app set `apps`, or None when there is none
    (or no tables yet): a day staged under another zone or for other apps is not a day the score can use, so
    it never sets the scoring day."""
    if not con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'pendo_staged_days'"
                       ).fetchone()[0]:
        return None
    return con.execute(f"SELECT max(day) FROM pendo_staged_days WHERE {STAGED_HERE}",
                       {"zone": timezone, "apps": apps}).fetchone()[0]


def score_accounts(con: duckdb.DuckDBPyConnection, config: HealthConfig, *, timezone: str, apps: str,
                   as_of: date | None = None, lowest: int = 10) -> ScoreReport:
    """Score every account as of `as_of` (default: the latest day staged in `timezone`) into
    `pendo_account_health`. Only days staged as days of `timezone` (PENDO_TIMEZONE) for the app set `apps`
    (PENDO_APP_IDS as `AppScope.key`) count, as staged days and in every part of the score: a day staged under
    another zone has other bounds, so adding its rows would count some hours twice and others not at all; a
    day read for other apps holds other usage.

    Raises `NothingStagedError` when no such usage day is staged (materialize the usage days first).
    """
    started = time.monotonic()
    latest = latest_staged_day(con, timezone, apps)
    as_of = as_of or latest
    if latest is None or as_of is None:
        raise NothingStagedError(f"no Pendo usage day is staged as a day of {timezone} for apps {apps} yet: "
                                 "materialize "
                                 "pendo/account_usage_daily (a backfill of the last 60 days gives the trend "
                                 "its previous window)")
    w = config.window_days
    params = {
        "as_of": as_of, "cur_start": as_of - timedelta(days=w - 1),
        "prev_start": as_of - timedelta(days=2 * w - 1), "prev_end": as_of - timedelta(days=w),
        "nps_start": as_of - timedelta(days=config.sentiment_days - 1), "zone": timezone, "apps": apps,
    }
    window_staged, previous_staged = con.execute(
        "SELECT count(DISTINCT day) FILTER (WHERE day BETWEEN $cur_start AND $as_of), "
        "count(DISTINCT day) FILTER (WHERE day BETWEEN $prev_start AND $prev_end) FROM pendo_staged_days "
        f"WHERE {STAGED_HERE}",
        {k: params[k] for k in ("cur_start", "as_of", "prev_start", "prev_end", "zone", "apps")}).fetchone()
    missing = missing_window_days(con, as_of, w, timezone, apps)
    store.ensure(con, STATE)
    con.execute("BEGIN")
    try:
        con.execute(f"CREATE OR REPLACE TABLE {HEALTH_TABLE} AS {_score_sql(config, previous_staged == w)}",
                    params)
        con.execute(f"INSERT INTO {RUNS_TABLE} VALUES (?, ?, ?, now())", [as_of, w, missing])
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    bands = dict(con.execute(f"SELECT band, count(*) FROM {HEALTH_TABLE} GROUP BY band").fetchall())
    stats = con.execute(f"""
        SELECT count(*), min(score), median(score), max(score), count(trend), count(sentiment),
               count(*) FILTER (WHERE last_active_date IS NULL OR last_active_date < $cur_start)
        FROM {HEALTH_TABLE}""", {"cur_start": params["cur_start"]}).fetchone()
    rows = con.execute(f"SELECT account_id, name, score, band, reasons FROM {HEALTH_TABLE} "
                       "ORDER BY score, account_id LIMIT ?", [lowest]).fetchall()
    return ScoreReport(
        as_of=as_of, window_days=w, accounts=stats[0], bands={b: bands.get(b, 0) for b in BANDS},
        window_days_staged=window_staged, previous_days_staged=previous_staged, missing_days=missing,
        with_trend=stats[4], with_sentiment=stats[5], no_activity=stats[6], score_min=stats[1],
        score_median=None if stats[2] is None else float(stats[2]), score_max=stats[3], lowest=rows,
        seconds=time.monotonic() - started)


def usage_days_sql() -> str:
    """SQL common table expressions `usage_days` (the days staged as days of the zone $zone for $apps) and
    `usage_visitor_days`, `usage_feature_days`, `usage_poll_responses`: the staged rows of those days only.
    Everything that reads usage for the score or the sync reads it through these."""
    return f"""usage_days AS (SELECT day FROM pendo_staged_days WHERE {STAGED_HERE}),
    usage_visitor_days AS (SELECT * FROM pendo_visitor_days SEMI JOIN usage_days USING (day)),
    usage_feature_days AS (SELECT * FROM pendo_feature_days SEMI JOIN usage_days USING (day)),
    usage_poll_responses AS (SELECT * FROM pendo_poll_responses SEMI JOIN usage_days USING (day))"""


def _score_sql(c: HealthConfig, previous_complete: bool) -> str:
    """The whole score as one query over the staged tables ($as_of, $cur_start, $prev_start, $prev_end,
    $nps_start, $zone, $apps): only rows of days staged as days of $zone for $apps count."""
    w, wt, step = c.window_days, c.weights, c.recency_step_days
    # Full adoption: `feature_target`, else the tagged features of the apps the account used in the window
    # (plus features Pendo gives no app); an account without usage in the window is measured against all.
    target = (f"{c.feature_target}" if c.feature_target
              else "coalesce(nullif(app_features.features, 0), "
                   "(SELECT nullif(count(*), 0) FROM pendo_features))")
    # Trend needs the whole previous window staged; two empty windows say nothing about a trend.
    trend = ("CASE WHEN events = 0 AND coalesce(previous_events, 0) = 0 THEN NULL "
             "WHEN coalesce(previous_events, 0) = 0 THEN 1.0 "
             "ELSE least(1.0, events / previous_events::DOUBLE) END"
             if previous_complete else "NULL::DOUBLE")
    weighted = " + ".join(f"coalesce({wt[k]} * {k}, 0)" for k in COMPONENTS)
    weight_sum = " + ".join(f"CASE WHEN {k} IS NULL THEN 0 ELSE {wt[k]} END" for k in COMPONENTS)
    days_label = f"{w} days"
    reasons = ", ".join([
        _reason(1, "breadth", c, "format('{} of {} {} active in the last " + days_label + "', active_users, "
                "seat_base, CASE WHEN licensed_seats IS NULL THEN 'known users' ELSE 'licensed seats' END)"),
        _reason(2, "depth", c, "format('uses {} of {} features', features_used, feature_base)"),
        # In steps of 10%: the ratio of two sliding windows moves a little every day.
        _reason(3, "trend", c, "format('usage down {}% vs the previous " + days_label + "', "
                "(10 * round(10 * (1 - trend)))::INTEGER)"),
        _reason(4, "sentiment", c, "format('NPS average {} from {} answer(s)', round(nps_average, 1), "
                "nps_answers)"),
        _reason(5, "recency", c, "CASE WHEN last_active_date IS NULL "
                "THEN 'no activity seen in the staged days' "
                "ELSE format('last active on {}', strftime(last_active_date, '%Y-%m-%d')) END"),
    ])
    return f"""
    WITH {usage_days_sql()},
    accounts AS (
        SELECT account_id FROM pendo_accounts
        UNION
        SELECT DISTINCT account_id FROM usage_visitor_days WHERE day <= $as_of
    ),
    cur AS (
        SELECT account_id, count(DISTINCT visitor_id) AS active_users, sum(events) AS events,
               sum(minutes) AS minutes
        FROM usage_visitor_days WHERE day BETWEEN $cur_start AND $as_of GROUP BY account_id
    ),
    prev AS (
        SELECT account_id, sum(events) AS events
        FROM usage_visitor_days WHERE day BETWEEN $prev_start AND $prev_end GROUP BY account_id
    ),
    ever AS (
        SELECT account_id, max(day) AS last_active, count(DISTINCT visitor_id) AS visitors
        FROM usage_visitor_days WHERE day <= $as_of GROUP BY account_id
    ),
    top_visitor AS (  -- the account's most active identified visitor in the window (ties: more minutes, id)
        SELECT account_id, visitor_id FROM (
            SELECT account_id, visitor_id, sum(events) AS events, sum(minutes) AS minutes
            FROM usage_visitor_days
            WHERE day BETWEEN $cur_start AND $as_of
              AND NOT starts_with(visitor_id, {literal(ANONYMOUS_PREFIX)})
            GROUP BY account_id, visitor_id)
        QUALIFY row_number() OVER (PARTITION BY account_id ORDER BY events DESC, minutes DESC, visitor_id) = 1
    ),
    feat AS (
        SELECT account_id, count(DISTINCT feature_id) AS features_used
        FROM usage_feature_days WHERE day BETWEEN $cur_start AND $as_of GROUP BY account_id
    ),
    app_features AS (  -- per account: the tagged features of the apps it used in the window
        SELECT u.account_id, count(DISTINCT f.feature_id) AS features
        FROM (SELECT DISTINCT account_id, app_id FROM usage_visitor_days
              WHERE day BETWEEN $cur_start AND $as_of) u
        JOIN pendo_features f ON f.app_id IS NOT DISTINCT FROM u.app_id OR f.app_id IS NULL
        GROUP BY u.account_id
    ),
    nps AS (
        SELECT account_id, avg(response) AS nps_average, count(*) AS nps_answers
        FROM usage_poll_responses WHERE day BETWEEN $nps_start AND $as_of GROUP BY account_id
    ),
    measured AS (
        SELECT a.account_id, m.name, m.plan, m.seats AS licensed_seats,
               coalesce(cur.active_users, 0) AS active_users, coalesce(cur.events, 0) AS events,
               coalesce(cur.minutes, 0) AS minutes, prev.events AS previous_events,
               coalesce(feat.features_used, 0) AS features_used, {target} AS feature_base,
               nps.nps_average, coalesce(nps.nps_answers, 0) AS nps_answers,
               ever.last_active AS last_active_date, top_visitor.visitor_id AS top_visitor_id,
               CASE WHEN m.seats > 0 THEN m.seats ELSE greatest(coalesce(ever.visitors, 0), 1) END
                   AS seat_base
        FROM accounts a
        LEFT JOIN pendo_accounts m USING (account_id)
        LEFT JOIN cur USING (account_id) LEFT JOIN prev USING (account_id) LEFT JOIN ever USING (account_id)
        LEFT JOIN top_visitor USING (account_id) LEFT JOIN feat USING (account_id)
        LEFT JOIN nps USING (account_id) LEFT JOIN app_features USING (account_id)
    ),
    components AS (
        SELECT *,
               least(1.0, active_users / seat_base::DOUBLE) AS breadth,
               least(1.0, features_used / feature_base::DOUBLE) AS depth,
               {trend} AS trend,
               nps_average / 10.0 AS sentiment,
               CASE WHEN last_active_date IS NULL THEN 0.0
                    ELSE greatest(0.0, 1.0 - {step}
                                             * floor(date_diff('day', last_active_date, $as_of) / {step})
                                             / {w}.0) END AS recency
        FROM measured
    ),
    scored AS (
        SELECT *, round(100 * ({weighted}) / ({weight_sum}))::INTEGER AS score FROM components
    )
    SELECT account_id, name, plan, $as_of::DATE AS as_of, score,
           CASE WHEN score >= {c.healthy} THEN 'healthy' WHEN score >= {c.at_risk} THEN 'at_risk'
                ELSE 'critical' END AS band,
           CASE WHEN events = 0 AND coalesce(previous_events, 0) = 0 AND last_active_date IS NULL
                THEN ['no activity in the staged Pendo usage']
                ELSE list_transform(list_slice(list_sort(list_filter([{reasons}], lambda r: r.keep)), 1,
                                               {c.max_reasons}), lambda r: r.text) END AS reasons,
           active_users, licensed_seats, round(breadth, 3) AS seat_utilisation, features_used,
           round(depth, 3) AS feature_adoption, events, minutes, previous_events,
           CASE WHEN trend IS NULL THEN NULL ELSE round(events / nullif(previous_events, 0) - 1, 3) END
               AS usage_change,
           round(nps_average, 1) AS nps_average, nps_answers, last_active_date, top_visitor_id,
           round(breadth, 4) AS breadth, round(depth, 4) AS depth, round(trend, 4) AS trend,
           round(sentiment, 4) AS sentiment, round(recency, 4) AS recency
    FROM scored
    ORDER BY account_id
    """


def _reason(order: int, component: str, c: HealthConfig, text: str) -> str:
    """One candidate reason: kept when the component is below the threshold; sorted by points lost, then
    order."""
    weight = c.weights[component]
    return (f"{{'lost': -({weight} * (1 - coalesce({component}, 1)))::DOUBLE, 'ord': {order}, "
            f"'keep': coalesce({component} < {c.reason_below} AND {weight} > 0, false), 'text': {text}}}")


def describe_config(config: HealthConfig) -> str:
    """The model in one line, for run metadata."""
    weights = ", ".join(f"{k} {v:g}" for k, v in config.weights.items())
    return (f"window {config.window_days} days; weights {weights}; healthy >= {config.healthy}, "
            f"at_risk >= {config.at_risk}; config {literal(str(config.path))}")
