"""Scored Pendo accounts -> Segment group calls, through the reverse-ETL diff and the delivery engine.

The scored table becomes one row per account (key `account_id`) with its Segment ids and traits; rows
that cannot be sent are rejected here with a reason a person can act on; the rest go through
`diff.plan_changes` (upsert mode, so only accounts whose call body - ids or traits - changed since the
last *delivered* state are planned), `delivery.deliver_pending` and `diff.advance_snapshot`, exactly the
loop `reverse_etl.sync_model` runs for a SQL model.

Ids:
- groupId: the Pendo accountId looked up in the identity map (`[identity]` in the config). An account the
  map does not know is sent under its Pendo accountId (Pendo account ids are usually the CRM id), unless
  `require_mapping = true`, which rejects it. An accountId the map sends to two groups, or two accounts
  that map to one group, are rejected: either choice would be a guess.
- userId: Segment drops a group call without a userId or anonymousId (spec §1). It is the account's most
  active identified visitor in the window (Pendo visitor ids are the application's user ids), else the
  configured `service_user`; an account with neither is rejected.

No Dagster imports.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import duckdb

from segment_ops.clients.segment_tracking import SegmentTrackingClient
from segment_ops.engine.delivery import DeliveryReport
from segment_ops.engine.diff import DiffPlan, advance_snapshot, deliver_changes, ensure_state, plan_changes
from segment_ops.engine.health import HEALTH_TABLE, HealthConfig
from segment_ops.engine.identity import IdentityMapStats, stage_identity_map
from segment_ops.engine.ledger import Ledger, LedgerCounts
from segment_ops.engine.models import ModelSpec, literal, quote
from segment_ops.engine.pendo_usage import SYNC
from segment_ops.engine.warehouse import UNSERIALISABLE_COLUMN, StagedResult

IDENTITY_TABLE = "pendo_identity_map"
ROWS_TABLE = "pendo_group_rows"
SENDABLE_TABLE = "pendo_group_sendable"
# Scored column -> trait name (after the configured prefix). The component values stay in the score table.
TRAITS = {
    "score": "health_score", "band": "health_band", "reasons": "health_reasons", "active_users": "active_users",
    "licensed_seats": "licensed_seats", "seat_utilisation": "seat_utilisation", "features_used": "features_used",
    "feature_adoption": "feature_adoption", "events": "events", "minutes": "minutes", "usage_change": "usage_change",
    "nps_average": "nps_average", "last_active_date": "last_active_date",
}


class NothingScoredError(RuntimeError):
    """The score table is missing: the score asset has not run against this staging file yet."""


@dataclass
class GroupSyncRun:
    accounts: int = 0
    identity: IdentityMapStats | None = None
    mapped: int = 0  # groupId from the identity map
    unmapped_sent_as_is: int = 0
    rejected_here: int = 0  # no userId, unmapped (require_mapping), ambiguous
    rejection_samples: list[tuple[str, str]] = field(default_factory=list)
    plan: DiffPlan = field(default_factory=DiffPlan)
    delivery: DeliveryReport | None = None
    ledger: LedgerCounts | None = None
    advanced: int = 0
    dry_run: bool = False
    seconds: float = 0.0

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


class GroupSyncIncomplete(RuntimeError):
    """Some planned group calls could not be delivered; they stay pending for the next run."""

    def __init__(self, message: str, run: GroupSyncRun) -> None:
        super().__init__(message)
        self.run = run


def group_model(config: HealthConfig) -> ModelSpec:
    """The `ModelSpec` the diff runs with: key account_id, group call, upsert, traits with the prefix, and this
    sync's own name in the ledger."""
    return ModelSpec(
        name="pendo_account_groups", path=config.path, sql=f"SELECT * FROM {SENDABLE_TABLE}",
        description="Pendo account health on each account's Segment group.", owners=("team:data-platform",),
        call="group", mode="upsert", key="account_id", user_id="user_id", group_id="group_id",
        fields=tuple(config.trait_prefix + t for t in TRAITS.values()), code_version=config.digest[:16],
        sync_name=SYNC)


def sync_account_groups(con: duckdb.DuckDBPyConnection, config: HealthConfig,
                        client_factory: Callable[[], SegmentTrackingClient], *, warehouse_url: str,
                        run_id: str | None = None, dry_run: bool = False, max_in_flight: int = 4) -> GroupSyncRun:
    """Send the scored accounts whose traits changed as group calls; `dry_run` plans and counts only.

    Raises `NothingScoredError` when nothing is scored yet, `GroupSyncIncomplete` when calls stay pending,
    `identity.IdentityMapError` for a broken map source and the client's `VendorFatalError` as it is.
    """
    started = time.monotonic()
    if not con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = ?",
                       [HEALTH_TABLE]).fetchone()[0]:
        raise NothingScoredError("no Pendo account is scored yet: materialize pendo/account_health first")
    run = GroupSyncRun(dry_run=dry_run)
    ledger = Ledger(con)
    ensure_state(con)
    model = group_model(config)
    if not dry_run:
        advance_snapshot(con, model.sync)  # settle what an earlier, interrupted run delivered
    if config.identity is not None:
        run.identity = stage_identity_map(con, config.identity, IDENTITY_TABLE, warehouse_url=warehouse_url)
    _build_rows(con, config, with_map=config.identity is not None)
    run.accounts, run.mapped, run.unmapped_sent_as_is, run.rejected_here = con.execute(f"""
        SELECT count(*), count(*) FILTER (WHERE mapped AND reject_reason IS NULL),
               count(*) FILTER (WHERE NOT mapped AND reject_reason IS NULL), count(reject_reason)
        FROM {ROWS_TABLE}""").fetchone()
    run.rejection_samples = con.execute(
        f"SELECT account_id, reject_reason FROM {ROWS_TABLE} WHERE reject_reason IS NOT NULL "
        "ORDER BY account_id LIMIT 20").fetchall()
    if not dry_run and run.rejected_here:
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE pendo_group_rejections AS
            SELECT account_id AS record_key, {literal(config.path.name)} AS source, reject_reason AS reason,
                   left(to_json(r)::VARCHAR, 2000) AS record
            FROM {ROWS_TABLE} r WHERE reject_reason IS NOT NULL""")
        ledger.reject_relation(model.sync, "pendo_group_rejections", run_id=run_id)
        con.execute("DROP TABLE pendo_group_rejections")
    staged = _sendable(con, model)
    run.plan = plan_changes(con, ledger, model, staged, run_id=run_id, dry_run=dry_run)
    if dry_run:
        run.ledger = ledger.counts(model.sync)
        run.seconds = time.monotonic() - started
        return run
    settled = deliver_changes(con, ledger, model.sync, client_factory, run_id=run_id, max_in_flight=max_in_flight)
    run.delivery, run.advanced, run.ledger = settled.delivery, settled.advanced, settled.ledger
    run.seconds = time.monotonic() - started
    if settled.failure is not None:
        raise GroupSyncIncomplete(str(settled.failure), run)
    return run


def _build_rows(con: duckdb.DuckDBPyConnection, config: HealthConfig, *, with_map: bool) -> None:
    """`pendo_group_rows`: each scored account with groupId, userId, traits and why it cannot be sent (or NULL)."""
    if with_map:
        lookup = f"""
            LEFT JOIN {IDENTITY_TABLE} m ON m.source_id = h.account_id
            LEFT JOIN {IDENTITY_TABLE}_ambiguous a ON a.source_id = h.account_id"""
        mapped, ambiguous, targets = "m.target_id IS NOT NULL", "a.source_id IS NOT NULL", "array_to_string(a.targets, ', ')"
    else:
        lookup, mapped, ambiguous, targets = "", "false", "false", "''"
    fallback = "NULL" if config.require_mapping else "h.account_id"
    service_user = literal(config.service_user) if config.service_user else "NULL"
    traits = ", ".join(f"h.{quote(column)} AS {quote(config.trait_prefix + trait)}" for column, trait in TRAITS.items())
    window = f"{config.window_days} days"
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE {ROWS_TABLE} AS
        WITH resolved AS (
            SELECT h.account_id, {mapped} AS mapped, {ambiguous} AS ambiguous, {targets} AS targets,
                   CASE WHEN {ambiguous} THEN NULL WHEN {mapped} THEN {'m.target_id' if with_map else 'NULL'}
                        ELSE {fallback} END AS group_id,
                   coalesce(h.top_visitor_id, {service_user}) AS user_id, {traits}
            FROM {HEALTH_TABLE} h {lookup}
        )
        SELECT *,
               CASE WHEN ambiguous THEN 'Pendo account ' || account_id || ' maps to several Segment groups (' || targets
                        || ') in the identity map; fix the map so it names one'
                    WHEN group_id IS NULL THEN 'Pendo account ' || account_id || ' is not in the identity map and '
                        || 'require_mapping = true in {config.path.name}'
                    WHEN count(*) OVER (PARTITION BY group_id) > 1 THEN 'Segment group ' || group_id || ' is the '
                        || 'target of ' || count(*) OVER (PARTITION BY group_id) || ' Pendo accounts ('
                        || string_agg(account_id, ', ' ORDER BY account_id) OVER (PARTITION BY group_id)
                        || '); their scores would overwrite each other, so none is sent'
                    WHEN user_id IS NULL THEN 'account ' || account_id || ' has no identified visitor active in the '
                        || 'last {window} and no service user is configured ([sync] service_user in '
                        || '{config.path.name}); Segment drops a group call without a userId'
               END AS reject_reason
        FROM resolved
    """)


def _sendable(con: duckdb.DuckDBPyConnection, model: ModelSpec) -> StagedResult:
    """The rows that can be sent, as the `StagedResult` the diff reads (it expects the unserialisable column)."""
    columns = ", ".join(quote(c) for c in ("account_id", "group_id", "user_id", *model.fields))
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE {SENDABLE_TABLE} AS
        SELECT {columns}, NULL::VARCHAR AS {UNSERIALISABLE_COLUMN} FROM {ROWS_TABLE} WHERE reject_reason IS NULL
    """)
    described = con.execute(f"DESCRIBE {SENDABLE_TABLE}").fetchall()
    rows = con.execute(f"SELECT count(*) FROM {SENDABLE_TABLE}").fetchone()[0]
    return StagedResult(SENDABLE_TABLE, rows, tuple(r[0] for r in described if r[0] != UNSERIALISABLE_COLUMN),
                        {r[0]: r[1] for r in described}, 0.0, "duckdb staging")
