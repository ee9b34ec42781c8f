"""Scored Pendo accounts -> Segment group calls, declared on the engine's runner (upsert, key account_id).

The scored table becomes one row per account with its Segment ids and traits; rows that cannot be sent
are rejected with a reason a person can act on; `reconcile` then accounts for every Pendo account.
Id resolution and the checks before sending are documented where they happen (`_build_rows`,
`check_sendable_score`). No Dagster imports.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta

import duckdb

from segment_ops.clients.segment_tracking import SegmentTrackingClient
from segment_ops.engine.diff import DiffPlan, delivered_rows, key_states
from segment_ops.engine.governance import Governance
from segment_ops.engine.guard import GuardLimits
from segment_ops.engine.identity import IdentityMapStats, stage_identity_map
from segment_ops.engine.ledger import Ledger
from segment_ops.engine.run import DiffSync, RunReport, run_diff_sync
from segment_ops.engine.spec import DiffSpec
from segment_ops.engine.sql import literal, quote
from segment_ops.engine.warehouse import StagedResult, describe_staged
from segment_ops.syncs.pendo.extract import SYNC
from segment_ops.syncs.pendo.score import (
    HEALTH_TABLE,
    HealthConfig,
    days_staged_otherwise,
    describe_days,
    describe_staged_otherwise,
    latest_staged_day,
    missing_window_days,
    usage_days_sql,
)

IDENTITY_TABLE = "pendo_identity_map"
ROWS_TABLE = "pendo_group_rows"
SENDABLE_TABLE = "pendo_group_sendable"
# Trait name (after the configured prefix) -> its value over the score table `h`. Only values that change
# when something material does: ratios to 2 decimals, the NPS average to 1 (rounded when scored), reasons
# without relative day counts. Events, minutes, usage_change and the components stay in the score table.
TRAITS = {
    "health_score": "h.score", "health_band": "h.band", "health_reasons": "h.reasons",
    "active_users": "h.active_users", "licensed_seats": "h.licensed_seats",
    "seat_utilisation": "round(h.seat_utilisation, 2)", "features_used": "h.features_used",
    "feature_adoption": "round(h.feature_adoption, 2)", "nps_average": "h.nps_average",
    "last_active_date": "h.last_active_date",
}
RECONCILE_STATES = ("delivered", "unchanged", "pending", "rejected", "missing")


class NothingScoredError(RuntimeError):
    """The score table is missing: the score asset has not run against this staging file yet."""


class StaleScoreError(RuntimeError):
    """The score table is older than the latest staged usage day: sending it would send yesterday's health."""


class PartialWindowError(RuntimeError):
    """Days of the scoring window are not staged; a missing day reads as "no usage" and lowers real scores."""

    def __init__(self, message: str, missing: list) -> None:
        super().__init__(message)
        self.missing = missing


@dataclass(kw_only=True)
class GroupSyncRun(RunReport):
    accounts: int = 0
    identity: IdentityMapStats | None = None
    mapped: int = 0  # groupId from the identity map
    unmapped_sent_as_is: int = 0
    rejected_here: int = 0  # no userId, unmapped (require_mapping), ambiguous
    rejection_samples: list[tuple[str, str]] = field(default_factory=list)
    plan: DiffPlan = field(default_factory=DiffPlan)
    as_of: date | None = None  # the score table's day
    reconciled: dict[str, int] = field(default_factory=dict)  # RECONCILE_STATES -> accounts (after a send)
    missing: list[tuple[str, str]] = field(default_factory=list)  # (account, why) of accounts in none of them

    @property
    def rejected(self) -> int:
        return self.rejected_here + self.plan.rejected

    @property
    def sent(self) -> int:
        """Accounts whose group call this run planned (new messages, or ones an earlier run planned)."""
        return self.plan.added + self.plan.changed

    @property
    def accounted_for(self) -> bool:
        """Every scored account is sent, unchanged or rejected: none is silently missing."""
        return self.accounts == self.sent + self.plan.unchanged + self.rejected


def group_spec(config: HealthConfig) -> DiffSpec:
    """What the diff runs with: key account_id, group calls, upsert, the traits with their prefix."""
    return DiffSpec(sync=SYNC, source=config.path.name, call="group", mode="upsert", key="account_id",
                    user_id="user_id", group_id="group_id",
                    fields=tuple(config.trait_prefix + t for t in TRAITS))


def sync_account_groups(con: duckdb.DuckDBPyConnection, config: HealthConfig,
                        client_factory: Callable[[], SegmentTrackingClient], *, warehouse_url: str,
                        timezone: str, apps: str, run_id: str | None = None, dry_run: bool = False,
                        max_in_flight: int = 4, guard: GuardLimits | None = None,
                        approve_plan: str | None = None,
                        governance: Governance | None = None) -> GroupSyncRun:
    """Send the scored accounts whose traits changed as group calls; `dry_run` plans and counts only.

    Raises `NothingScoredError` when nothing is scored yet, `StaleScoreError` / `PartialWindowError` when the
    score is older than the staged usage or its window has days not staged as days of `timezone` for `apps`,
    `DeliveryIncomplete` when calls stay pending, `PlanHeld` when the plan guard (`guard`) holds the plan
    (`approve_plan` sends a held plan; `governance`, regulations and the tracking plan: `run_diff_sync`),
    `identity.IdentityMapError` for a broken map source
    and the client's `VendorFatalError`.
    """
    run = GroupSyncRun(dry_run=dry_run, as_of=check_sendable_score(con, config, timezone, apps))
    spec = group_spec(config)
    as_of = run.as_of

    def stage(con: duckdb.DuckDBPyConnection) -> StagedResult:
        if config.identity is not None:
            run.identity = stage_identity_map(con, config.identity, IDENTITY_TABLE,
                                              warehouse_url=warehouse_url)
        _build_rows(con, config, with_map=config.identity is not None, as_of=as_of, timezone=timezone,
                    apps=apps)
        run.accounts, run.mapped, run.unmapped_sent_as_is, run.rejected_here = con.execute(f"""
            SELECT count(*), count(*) FILTER (WHERE mapped AND reject_reason IS NULL),
                   count(*) FILTER (WHERE NOT mapped AND reject_reason IS NULL), count(reject_reason)
            FROM {ROWS_TABLE}""").fetchone()
        run.rejection_samples = con.execute(
            f"SELECT account_id, reject_reason FROM {ROWS_TABLE} WHERE reject_reason IS NOT NULL "
            "ORDER BY account_id LIMIT 20").fetchall()
        return _sendable(con, spec)

    def reject_unsendable(con: duckdb.DuckDBPyConnection, ledger: Ledger) -> None:
        if run.rejected_here:
            con.execute(f"""
                CREATE OR REPLACE TEMP TABLE pendo_group_rejections AS
                SELECT account_id AS record_key, {literal(config.path.name)} AS source,
                       reject_reason AS reason, left(to_json(r)::VARCHAR, 2000) AS record
                FROM {ROWS_TABLE} r WHERE reject_reason IS NOT NULL""")
            ledger.reject_relation(spec.sync, "pendo_group_rejections", run_id=run_id)
            con.execute("DROP TABLE pendo_group_rejections")

    def reconcile_accounts(con: duckdb.DuckDBPyConnection) -> None:
        run.reconciled, run.missing = reconcile(con, spec.sync, as_of, run_id=run_id, timezone=timezone,
                                                apps=apps)

    declared = DiffSync(spec, stage, before_plan=reject_unsendable, after_delivery=reconcile_accounts)
    return run_diff_sync(con, declared, run, client_factory, run_id=run_id, max_in_flight=max_in_flight,
                         guard=guard, approve_plan=approve_plan, governance=governance)


def check_sendable_score(con: duckdb.DuckDBPyConnection, config: HealthConfig, timezone: str,
                         apps: str) -> date:
    """The score table's day, once it is known to be current and over a complete window of days of `timezone`
    staged for the app set `apps` (see the errors)."""
    if not con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = ?",
                       [HEALTH_TABLE]).fetchone()[0]:
        raise NothingScoredError("no Pendo account is scored yet: materialize pendo/account_health first")
    as_of = con.execute(f"SELECT max(as_of) FROM {HEALTH_TABLE}").fetchone()[0]
    latest = latest_staged_day(con, timezone, apps)
    if as_of is None:
        raise NothingScoredError("the score table is empty: materialize pendo/account_health first")
    if latest is not None and as_of < latest:
        raise StaleScoreError(f"the scores are as of {as_of} but Pendo usage is staged up to {latest}: "
                              "re-materialize pendo/account_health before syncing (nothing was sent)")
    missing = missing_window_days(con, as_of, config.window_days, timezone, apps)
    if missing and not config.allow_partial_window:
        other = days_staged_otherwise(con, missing, timezone, apps)
        note = (f" ({describe_staged_otherwise(other)}, not as days of {timezone} for apps {apps}: "
                "re-read them)" if other else "")
        raise PartialWindowError(
            f"{len(missing)} of the {config.window_days} days of the window ending {as_of} are not staged: "
            f"{describe_days(missing)}{note}. Materialize those days of pendo/account_usage_daily and "
            f"re-score (or set [window] allow_partial_window = true in {config.path.name} to send anyway); "
            "nothing was sent",
            missing)
    return as_of


def reconcile(con: duckdb.DuckDBPyConnection, sync: str, as_of: date, *, run_id: str | None,
              timezone: str, apps: str) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """After a sync, the state of every Pendo account (the account list and any account with usage staged in
    `timezone` for `apps`, as the score counts them):
    delivered this run, unchanged since delivered, pending, rejected (here, by the diff, or by Segment, with a
    reason) or missing - with why, at most 50 listed. A missing account is a bug or a stale input, never
    normal.
    """
    states = key_states(con, sync, run_id)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE pendo_reconciled AS
        WITH {usage_days_sql()},
        accounts AS (
            SELECT account_id FROM pendo_accounts
            UNION SELECT DISTINCT account_id FROM usage_visitor_days WHERE day <= $as_of
        )
        SELECT a.account_id,
               CASE WHEN h.account_id IS NULL THEN 'missing'
                    WHEN r.reject_reason IS NOT NULL OR k.rejected_now THEN 'rejected'
                    WHEN k.pending THEN 'pending'
                    WHEN k.last_rejected THEN 'rejected'
                    WHEN k.delivered AND k.planned_run = $run_id THEN 'delivered'
                    WHEN k.delivered THEN 'unchanged'
                    ELSE 'missing' END AS state,
               CASE WHEN h.account_id IS NULL THEN 'not in the score table (scored as of ' || $as_of::VARCHAR
                        || '); re-materialize pendo/account_health'
                    WHEN r.account_id IS NULL THEN 'scored but not among the rows built for sending'
                    ELSE 'sendable, but never delivered, not pending and not rejected (last message: '
                        || coalesce(k.last_status, 'none') || ')' END AS why
        FROM accounts a
        LEFT JOIN {HEALTH_TABLE} h USING (account_id)
        LEFT JOIN {ROWS_TABLE} r USING (account_id)
        LEFT JOIN {states} k ON k.record_key = a.account_id
    """, {"as_of": as_of, "run_id": run_id, "zone": timezone, "apps": apps})
    con.execute(f"DROP TABLE {states}")
    counts = dict(con.execute("SELECT state, count(*) FROM pendo_reconciled GROUP BY state").fetchall())
    missing = con.execute("SELECT account_id, why FROM pendo_reconciled WHERE state = 'missing' "
                          "ORDER BY account_id LIMIT 50").fetchall()
    con.execute("DROP TABLE pendo_reconciled")
    return {state: counts.get(state, 0) for state in RECONCILE_STATES}, missing


def _build_rows(con: duckdb.DuckDBPyConnection, config: HealthConfig, *, with_map: bool, as_of: date,
                timezone: str, apps: str) -> None:
    """`pendo_group_rows`: each scored account with groupId, userId, traits and why it cannot be sent (or
    NULL)."""
    if with_map:
        lookup = f"""
            LEFT JOIN {IDENTITY_TABLE} m ON m.source_id = h.account_id
            LEFT JOIN {IDENTITY_TABLE}_ambiguous a ON a.source_id = h.account_id"""
        mapped, ambiguous, targets = ("m.target_id IS NOT NULL", "a.source_id IS NOT NULL",
                                      "array_to_string(a.targets, ', ')")
    else:
        lookup, mapped, ambiguous, targets = "", "false", "false", "''"
    fallback = "NULL" if config.require_mapping else "h.account_id"
    service_user = literal(config.service_user) if config.service_user else "NULL"
    traits = ", ".join(f"{value} AS {quote(config.trait_prefix + trait)}" for trait, value in TRAITS.items())
    window = f"{config.window_days} days"
    config_file = literal(config.path.name)
    # Sticky userId: the one last delivered while that visitor is still active in the window.
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE {ROWS_TABLE} AS
        WITH {usage_days_sql()},
        still_active AS (
            SELECT DISTINCT account_id, visitor_id AS user_id FROM usage_visitor_days
            WHERE day BETWEEN $first AND $as_of
        ),
        resolved AS (
            SELECT h.account_id, {mapped} AS mapped, {ambiguous} AS ambiguous, {targets} AS targets,
                   CASE WHEN {ambiguous} THEN NULL WHEN {mapped} THEN {'m.target_id' if with_map else 'NULL'}
                        ELSE {fallback} END AS group_id,
                   coalesce(sticky.user_id, h.top_visitor_id, {service_user}) AS user_id, {traits}
            FROM {HEALTH_TABLE} h {lookup}
            LEFT JOIN {delivered_rows()} s ON s.record_key = h.account_id
            LEFT JOIN still_active sticky ON sticky.account_id = h.account_id AND sticky.user_id = s.user_id
        )
        SELECT *,
               CASE WHEN ambiguous THEN 'Pendo account ' || account_id || ' maps to several Segment groups ('
                        || targets || ') in the identity map; fix the map so it names one'
                    WHEN group_id IS NULL
                        THEN 'Pendo account ' || account_id || ' is not in the identity map and '
                        || 'require_mapping = true in ' || {config_file}
                    WHEN count(*) OVER (PARTITION BY group_id) > 1
                        THEN 'Segment group ' || group_id || ' is the '
                        || 'target of ' || count(*) OVER (PARTITION BY group_id) || ' Pendo accounts ('
                        || string_agg(account_id, ', ' ORDER BY account_id) OVER (PARTITION BY group_id)
                        || '); their scores would overwrite each other, so none is sent'
                    WHEN user_id IS NULL
                        THEN 'account ' || account_id || ' has no identified visitor active in the '
                        || 'last {window} and no service user is configured ([sync] service_user in '
                        || {config_file} || '); Segment drops a group call without a userId'
               END AS reject_reason
        FROM resolved
    """, {"first": as_of - timedelta(days=config.window_days - 1), "as_of": as_of, "zone": timezone,
                                                                                 "apps": apps})


def _sendable(con: duckdb.DuckDBPyConnection, spec: DiffSpec) -> StagedResult:
    """The rows that can be sent, as the `StagedResult` the diff reads (it expects the unserialisable
    column)."""
    columns = ", ".join(quote(c) for c in ("account_id", "group_id", "user_id", *(spec.fields or ())))
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE {SENDABLE_TABLE} AS
        SELECT {columns} FROM {ROWS_TABLE} WHERE reject_reason IS NULL
    """)
    return describe_staged(con, SENDABLE_TABLE, "duckdb staging")
