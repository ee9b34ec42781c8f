"""Pendo account health -> Segment group calls: daily usage partitions, a health score, a diff-based sync.

- `pendo/account_usage_daily` (daily partitions in the subscription's time zone, PENDO_TIMEZONE, from
  2026-01-01 to the last complete day): reads its days from Pendo's Aggregation API (events,
  featureEvents, pollEvents of the apps in PENDO_APP_IDS; 30 days per request at most, spec §4, §7) and
  stages each day in the sync's DuckDB file, replacing that day. A day is read once it ended `[extract]
  settle_hours` ago there. `BackfillPolicy.single_run()`: a backfill of any range of days from the UI
  is one run that reads it in 30-day slices.
- `pendo/account_health`: scores every Pendo account as of the latest staged day with the model in
  `pendo_health.toml` beside this module (PENDO_HEALTH_CONFIG): score 0-100, band, reasons. Checks
  `window_complete` (blocking: every day of the scoring window is staged, unless `allow_partial_window`)
  and `band_distribution_sane` (WARN: not every account in one band).
- `segment/pendo_account_groups`: one group call per account whose traits changed since the last
  delivered state (the reverse-ETL diff), groupId through the identity map, delivered with retries;
  refuses a stale score or a partial window; checks `delivery_complete` and `no_account_missing` (every
  Pendo account delivered, unchanged, pending or rejected with a reason).

All three write one staging file (`staging/pendo_account_health.duckdb`), so they share the pool
`staging_pendo_account_health` (limit 1 in dagster.yaml): runs never collide on it. `pendo_daily_schedule`
(STOPPED by default) runs `pendo_account_health_job` each morning of the subscription's zone over the last 3
readable days (one range run, so days Pendo finished processing late are re-read), then scores and syncs.

Partition keys are dates; since PENDO_TIMEZONE they mean days of the subscription's zone (before, UTC days).
A partition materialised under UTC keeps its key: its staged day is marked as a UTC day, counts as not
staged for the score and the sync (`window_complete` names it) until it is read again, and re-reading
replaces that date's rows whole, so nothing is counted twice.
"""

import dataclasses
import hashlib
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import dagster as dg
from pydantic import Field

from segment_ops import clock
from segment_ops.clients.base import VendorAuthError
from segment_ops.clients.pendo import (
    AppScope,
    PendoSettingError,
    last_settled_day,
    local_midnight_ms,
    subscription_zone,
)
from segment_ops.config import load_settings
from segment_ops.engine import store
from segment_ops.engine.guard import PlanHeld
from segment_ops.engine.identity import IdentityMapError
from segment_ops.engine.run import DeliveryIncomplete
from segment_ops.engine.warehouse import WarehouseError
from segment_ops.resources import (
    AlertsResource,
    PendoResource,
    PreflightResource,
    SegmentPublicApiResource,
    SegmentTrackingResource,
    StagingResource,
    WarehouseResource,
)
from segment_ops.syncs.external import PENDO_ACCOUNTS
from segment_ops.syncs.metadata import diff_run_metadata, markdown_table
from segment_ops.syncs.pendo.extract import SYNC, ExtractError, ExtractReport, extract_days
from segment_ops.syncs.pendo.groups import (
    GroupSyncRun,
    NothingScoredError,
    PartialWindowError,
    StaleScoreError,
    sync_account_groups,
)
from segment_ops.syncs.pendo.score import (
    BANDS,
    DEFAULT_CONFIG_PATH,
    HEALTH_TABLE,
    SCORE_VERSION,
    HealthConfig,
    HealthConfigError,
    NothingStagedError,
    ScoreReport,
    days_staged_otherwise,
    describe_config,
    describe_days,
    describe_staged_otherwise,
    load_health_config,
    score_accounts,
)
from segment_ops.syncs.shared import (
    OWNER,
    DiffSendConfig,
    SyncFailure,
    alert_violations,
    governance_for,
    governance_metadata,
    guard_limits,
    plan_held_failure,
    plan_metadata,
    preflight_gate,
    tracking_plan_check,
    tracking_plan_check_spec,
    tracking_plan_policy,
)

GROUP = "pendo"
POOL = f"staging_{SYNC}"
USAGE_KEY = dg.AssetKey(["pendo", "account_usage_daily"])
HEALTH_KEY = dg.AssetKey(["pendo", "account_health"])
GROUPS_KEY = dg.AssetKey(["segment", "pendo_account_groups"])
JOB_NAME = "pendo_account_health_job"
PARTITIONS_START = "2026-01-01"
# The subscription's zone, read when the definitions load (partitions must exist then); a zone that is not
# an IANA name or not whole-hour from PARTITIONS_START on (earlier days are never read) stops the load with
# an error naming PENDO_TIMEZONE.
SUBSCRIPTION_ZONE = subscription_zone(load_settings()["PENDO_TIMEZONE"],
                                      since=date.fromisoformat(PARTITIONS_START))
TIMEZONE = SUBSCRIPTION_ZONE.key
# PENDO_APP_IDS is the resource's; a bad value stops the load too
AppScope.parse(load_settings()["PENDO_APP_IDS"])
# end_offset 0: the newest partition is yesterday in the subscription's zone (readable `settle_hours` after it
# ends).
PARTITIONS = dg.DailyPartitionsDefinition(start_date=PARTITIONS_START, timezone=TIMEZONE)
MIN_ACCOUNTS_FOR_BAND_CHECK = 5
DAILY_REREAD_DAYS = 3  # the daily run re-reads this many days: Pendo may finish processing a day late


def health_config_path() -> Path:
    """PENDO_HEALTH_CONFIG, else the `pendo_health.toml` shipped beside this module."""
    return Path(load_settings()["PENDO_HEALTH_CONFIG"] or DEFAULT_CONFIG_PATH)


def _config() -> HealthConfig:
    try:
        return load_health_config(health_config_path())
    except HealthConfigError as exc:
        raise SyncFailure(description=str(exc), metadata={"config_file": dg.MetadataValue.path(str(exc.path))}
                         ) from None


def _app_set(pendo: PendoResource) -> str:
    """PENDO_APP_IDS as staged days record it (`AppScope.key`): the score and the sync count only days read
    for the apps configured now."""
    try:
        return AppScope.parse(pendo.app_ids).key
    except PendoSettingError as exc:
        raise SyncFailure(description=str(exc)) from None


def _config_version() -> str:
    try:
        digest = hashlib.sha256(health_config_path().read_bytes()).hexdigest()[:12]
    except OSError:
        digest = "unreadable"
    return f"{SCORE_VERSION}-{digest}"


# ------------------------------------------------------------------------------------------- usage days


class UsageDailyConfig(dg.Config):
    allow_empty_days: bool = Field(
        default=False, description="Stage days Pendo answers with no usage at all even though it lists "
                                   "accounts and the days before had usage (by default refused: Pendo may "
                                   "be re-processing after a time zone change).")


@dg.asset(
    key=USAGE_KEY,
    group_name=GROUP,
    kinds={"pendo", "duckdb"},
    owners=[OWNER],
    code_version="1",
    partitions_def=PARTITIONS,
    backfill_policy=dg.BackfillPolicy.single_run(),
    pool=POOL,
    deps=[PENDO_ACCOUNTS.key],
    # A range whose newest days are not settled yet materializes its settled days only (see below).
    output_required=False,
    metadata={"staging_table": "pendo_visitor_days, pendo_feature_days, pendo_poll_responses (view "
                               "pendo_account_usage_daily)", "max_days_per_request": 30},
)
def account_usage_daily(context: dg.AssetExecutionContext, config: UsageDailyConfig, pendo: PendoResource,
                        staging: StagingResource) -> Iterator[dg.MaterializeResult]:
    """Per account and day of the Pendo subscription's time zone: active visitors, events, minutes, features
    used and NPS answers, summed over the configured apps, read from Pendo's Aggregation API and staged in
    DuckDB. Re-running a day replaces it; a backfill of a range is one run (30 days per Pendo request).

    Days that ended less than `[extract] settle_hours` ago are not read: when some days of the range are, the
    run materializes exactly the staged days' partitions (each with its own figures), lists the others as
    `days_not_ready` and succeeds, leaving them missing for a later run (the score and the sync do not run
    after it); when none is, it fails saying when they can be read."""
    window = context.partition_time_window
    first_day = window.start.astimezone(SUBSCRIPTION_ZONE).date()
    last_day = window.end.astimezone(SUBSCRIPTION_ZONE).date() - timedelta(days=1)
    health = _config()
    try:
        client = pendo.get_client()
    except PendoSettingError as exc:
        raise SyncFailure(description=str(exc)) from None
    try:
        with store.staging(staging.staging_db(SYNC)) as con:
            report = extract_days(con, client, health, first_day, last_day, zone=SUBSCRIPTION_ZONE,
                                  run_id=context.run.run_id, allow_empty_days=config.allow_empty_days,
                                  now=clock.now())  # settled days as latest_days chose them
            days = con.execute(
                "SELECT s.day, s.visitor_rows, s.feature_rows, s.poll_rows, "
                "(SELECT count(DISTINCT account_id) FROM pendo_visitor_days v WHERE v.day = s.day) "
                "FROM pendo_staged_days s WHERE s.day BETWEEN ? AND ? ORDER BY s.day DESC",
                [first_day, last_day]).fetchall()
    except VendorAuthError as exc:
        raise SyncFailure(description=f"Pendo refused the integration key: {exc}") from None
    except ExtractError as exc:
        raise SyncFailure(description=str(exc), metadata=_usage_metadata(exc.report, [])) from None
    finally:
        client.close()
    metadata = _usage_metadata(report, days[:31])
    if not report.not_ended:
        context.log.info(f"staged {report.days} day(s) {first_day} .. {last_day} of {TIMEZONE} in "
                         f"{len(report.slices)} request slice(s), {report.apps}")
        yield dg.MaterializeResult(metadata=metadata)
        return
    readable = datetime.fromtimestamp(
        local_midnight_after(report.not_ended[-1]) / 1000, UTC) + timedelta(hours=health.settle_hours)
    not_ready = (f"{describe_days(report.not_ended)} had not ended {health.settle_hours} h ago in {TIMEZONE} "
                 f"([extract] settle_hours): Pendo may still be processing them, so they are not read before "
                 f"{readable:%Y-%m-%d %H:%M} UTC")
    if not report.slices:
        raise SyncFailure(description=f"{not_ready}; nothing was staged", metadata=metadata)
    # Only the staged days' partitions are materialized, each with its own row counts; the unsettled ones stay
    # missing (a later "materialize missing" picks them up), and no output means the score does not run on
    # them.
    context.log.warning(f"{not_ready}; staged {first_day} .. {report.slices[-1][1]}: their partitions are "
                        "materialized, the others stay missing")
    for day, visitor_rows, feature_rows, poll_rows, accounts in sorted(days):
        if any(first <= day <= last for first, last in report.slices):
            context.log_event(dg.AssetMaterialization(
                asset_key=USAGE_KEY, partition=str(day),
                metadata={**metadata, "day_visitor_rows": visitor_rows, "day_feature_rows": feature_rows,
                          "day_nps_answers": poll_rows, "day_active_accounts": accounts}))


def local_midnight_after(day: date) -> int:
    """Epoch ms of the end of the subscription's day `day` (the next local midnight)."""
    return local_midnight_ms(day + timedelta(days=1), SUBSCRIPTION_ZONE)


def _usage_metadata(report: ExtractReport, days: list[tuple]) -> dict:
    metadata: dict = {
        "first_day": str(report.first_day),
        "last_day": str(report.last_day),
        "timezone": report.timezone,
        "apps": report.apps,
        "days_staged": report.days,
        "days_not_ready": describe_days(report.not_ended) or "none",
        "request_slices": len(report.slices),
        "pendo_requests": report.requests,
        "pendo_retries": report.retries,
        "visitor_day_rows": report.visitor_rows,
        "feature_day_rows": report.feature_rows,
        "nps_answers": report.poll_rows,
        "rejected_rows": report.rejected,
        "pendo_accounts": report.accounts,
        "tagged_features": report.features,
        "seconds": round(report.seconds, 3),
    }
    if report.events_by_app:
        metadata["events_by_app"] = dg.MetadataValue.md(markdown_table(
            ["appId", "events"], sorted(report.events_by_app.items())))
    if days:
        metadata["days"] = dg.MetadataValue.md(markdown_table(
            ["day", "active accounts", "visitor-day rows", "feature-day rows", "NPS answers"],
            [(d, accounts, v, f, p) for d, v, f, p, accounts in days]))
    return metadata


# ------------------------------------------------------------------------------------------------ score


class HealthScoreConfig(dg.Config):
    as_of: str = Field(default="", description="Score as of this day of the Pendo subscription's time zone "
                                                "(YYYY-MM-DD); empty: the latest staged day.")


@dg.asset(
    key=HEALTH_KEY,
    group_name=GROUP,
    kinds={"pendo", "duckdb"},
    owners=[OWNER],
    code_version=_config_version(),
    pool=POOL,
    deps=[USAGE_KEY],
    metadata={"config_file": dg.MetadataValue.path(str(health_config_path())), "table": HEALTH_TABLE},
    check_specs=[
        dg.AssetCheckSpec("band_distribution_sane", asset=HEALTH_KEY,
                          description=f"With {MIN_ACCOUNTS_FOR_BAND_CHECK}+ accounts, they are not all in "
                                      "one band (a broken extract or config tends to put everyone in one)."),
        dg.AssetCheckSpec("window_complete", asset=HEALTH_KEY, blocking=True,
                          description="Every day of the scoring window is staged (a missing day would read "
                                      "as no usage); blocks the sync unless [window] allow_partial_window = "
                                      "true."),
    ],
)
def account_health(context: dg.AssetExecutionContext, config: HealthScoreConfig, pendo: PendoResource,
                   staging: StagingResource) -> dg.MaterializeResult:
    """Health score 0-100 of every Pendo account, its band (healthy / at_risk / critical) and the main
    reasons, from breadth, depth, trend, sentiment and recency over the staged usage days (weights and bands
    in pendo_health.toml)."""
    health = _config()
    apps = _app_set(pendo)
    try:
        as_of = date.fromisoformat(config.as_of) if config.as_of else None
    except ValueError:
        raise SyncFailure(description=f"as_of must be a day as YYYY-MM-DD, got {config.as_of!r}") from None
    with store.staging(staging.staging_db(SYNC)) as con:
        try:
            report = score_accounts(con, health, as_of=as_of, timezone=TIMEZONE, apps=apps)
        except NothingStagedError as exc:
            raise SyncFailure(description=str(exc)) from None
        otherwise = days_staged_otherwise(con, report.missing_days, TIMEZONE, apps)
    missing = report.missing_days
    window_note = "complete"
    if missing:
        zones = (f" ({describe_staged_otherwise(otherwise)}, not as days of PENDO_TIMEZONE={TIMEZONE} for "
                 f"PENDO_APP_IDS {apps}: re-reading replaces them)" if otherwise else "")
        window_note = (f"{len(missing)} of the {report.window_days} days up to {report.as_of} are not "
                       f"staged: {describe_days(missing)}{zones}; materialize them on "
                       "pendo/account_usage_daily and re-score"
                       + (" (allow_partial_window = true: the sync sends anyway)"
                          if health.allow_partial_window else " (the sync refuses to send until then)"))
        context.log.warning(window_note)
    populated = [band for band in BANDS if report.bands[band]]
    one_band = report.accounts >= MIN_ACCOUNTS_FOR_BAND_CHECK and len(populated) == 1
    return dg.MaterializeResult(
        metadata=_health_metadata(report, health),
        check_results=[
            dg.AssetCheckResult(
                check_name="band_distribution_sane", passed=not one_band, severity=dg.AssetCheckSeverity.WARN,
                metadata={"bands": dg.MetadataValue.md(band_chart(report)), "accounts": report.accounts,
                          "note": (f"all {report.accounts} accounts are {populated[0]}" if one_band
                                   else "ok")}),
            dg.AssetCheckResult(
                check_name="window_complete", passed=not missing,
                severity=(dg.AssetCheckSeverity.WARN if health.allow_partial_window
                          else dg.AssetCheckSeverity.ERROR),
                description=window_note,
                metadata={"missing_days": len(missing), "window_days": report.window_days,
                          "missing": describe_days(missing) or "none",
                          "staged_otherwise": describe_days([d for d, _ in otherwise]) or "none",
                          "allow_partial_window": health.allow_partial_window}),
        ],
    )


def band_chart(report: ScoreReport) -> str:
    """The band distribution as a Markdown table with text bars."""
    total = max(report.accounts, 1)
    rows = [(band, report.bands[band], f"{100 * report.bands[band] / total:.0f}%",
             "█" * round(30 * report.bands[band] / total)) for band in BANDS]
    return markdown_table(["band", "accounts", "share", ""], rows)


def _health_metadata(report: ScoreReport, config: HealthConfig) -> dict:
    return {
        "as_of": str(report.as_of),
        "window_days": report.window_days,
        "accounts_scored": report.accounts,
        **{f"band_{band}": report.bands[band] for band in BANDS},
        "band_distribution": dg.MetadataValue.md(band_chart(report)),
        "score_min": report.score_min,
        "score_median": report.score_median,
        "score_max": report.score_max,
        "window_days_staged": report.window_days_staged,
        "previous_window_days_staged": report.previous_days_staged,
        "accounts_with_trend": report.with_trend,
        "accounts_with_nps": report.with_sentiment,
        "accounts_without_activity": report.no_activity,
        "lowest_scores": dg.MetadataValue.md(markdown_table(
            ["account", "name", "score", "band", "reasons"],
            [(a, n, s, b, "; ".join(r or [])) for a, n, s, b, r in report.lowest])),
        "model": describe_config(config),
        "seconds": round(report.seconds, 3),
    }


# ------------------------------------------------------------------------------------------------- sync


class PendoGroupsConfig(DiffSendConfig):
    dry_run: bool = Field(default=False, description="Plan and validate; show counts and sample payloads; "
                                                     "send nothing and write no snapshot.")


@dg.asset(
    key=GROUPS_KEY,
    group_name=GROUP,
    kinds={"pendo", "duckdb", "segment"},
    owners=[OWNER],
    code_version="1",
    pool=POOL,
    deps=[HEALTH_KEY],
    metadata={"call": "group", "mode": "upsert", "key": "Pendo accountId"},
    check_specs=[
        dg.AssetCheckSpec("delivery_complete", asset=GROUPS_KEY,
                          description="Every scored account was sent, unchanged or rejected with a reason, "
                                      "and nothing is left pending."),
        tracking_plan_check_spec(GROUPS_KEY),
        dg.AssetCheckSpec("no_account_missing", asset=GROUPS_KEY,
                          description="After the send, every Pendo account (the account list and every "
                                      "account with staged usage) is delivered, unchanged since delivered, "
                                      "pending, or rejected with a reason; any other is listed."),
    ],
)
def pendo_account_groups(context: dg.AssetExecutionContext, config: PendoGroupsConfig,
                         segment: SegmentTrackingResource, pendo: PendoResource, staging: StagingResource,
                         warehouse: WarehouseResource, preflight: PreflightResource,
                         segment_public_api: SegmentPublicApiResource,
                         alerts: AlertsResource) -> dg.MaterializeResult:
    """One Segment group call per Pendo account whose health traits changed since the last delivered state:
    groupId through the identity map, userId = the most active identified visitor (else the service user),
    traits = score, band, reasons, active users, adoption figures, last active date."""
    preflight_gate(context, preflight, segment, skip=config.skip_preflight, dry_run=config.dry_run)
    health = _config()
    apps = _app_set(pendo)
    # Every active account's `last_active_date` moves each day, so a daily run changes most accounts by
    # design: the changed-share limit would hold every day. The clear, null and volume limits still apply.
    limits = dataclasses.replace(guard_limits(), max_changed_share=1.0)
    governance = governance_for(context, staging, segment, segment_public_api, policy=tracking_plan_policy(),
                                dry_run=config.dry_run)
    with store.staging(staging.staging_db(SYNC)) as con:
        try:
            run = sync_account_groups(con, health, segment.get_client, warehouse_url=warehouse.url,
                                      timezone=TIMEZONE, apps=apps, run_id=context.run.run_id,
                                      dry_run=config.dry_run, max_in_flight=segment.max_in_flight,
                                      guard=limits, approve_plan=config.approve_plan, governance=governance)
        except (NothingScoredError, StaleScoreError, PartialWindowError, IdentityMapError,
                WarehouseError) as exc:
            raise SyncFailure(description=str(exc)) from None
        except DeliveryIncomplete as exc:
            raise SyncFailure(description=str(exc), metadata=_groups_metadata(exc.report)) from None
        except PlanHeld as exc:
            raise plan_held_failure(exc, _groups_metadata(exc.report), label="Pendo account groups") from None
        except VendorAuthError as exc:
            raise SyncFailure(description=f"Segment refused the write key: {exc}") from None
    pending = run.ledger.pending if run.ledger else 0
    alert_violations(context, alerts, run.governed)
    return dg.MaterializeResult(
        metadata=_groups_metadata(run),
        check_results=[
            dg.AssetCheckResult(
                check_name="delivery_complete", passed=run.accounted_for and (run.dry_run or pending == 0),
                metadata={"pending": pending, "accounts": run.accounts, "sent": run.sent,
                          "unchanged": run.plan.unchanged, "rejected": run.rejected}),
            _no_account_missing(run),
            tracking_plan_check(run.governed),
        ],
    )


def _no_account_missing(run: GroupSyncRun) -> dg.AssetCheckResult:
    if run.dry_run:
        return dg.AssetCheckResult(check_name="no_account_missing", passed=True,
                                   description="dry run: nothing was sent, so there is nothing to reconcile")
    metadata: dict = {**run.reconciled, "missing_sample": dg.MetadataValue.md(
        markdown_table(["account", "why"], run.missing) if run.missing else "none")}
    return dg.AssetCheckResult(check_name="no_account_missing", passed=not run.missing, metadata=metadata,
                               description=f"{len(run.missing)} Pendo account(s) are neither delivered, "
                                           "unchanged, pending nor rejected" if run.missing else None)


def _groups_metadata(run: GroupSyncRun) -> dict:
    metadata = diff_run_metadata(run.plan, dry_run=run.dry_run, delivery=run.delivery,
                                 pending=run.ledger.pending if run.ledger else 0, advanced=run.advanced,
                                 key_label="account")
    metadata |= {
        "as_of": str(run.as_of),
        "accounts": run.accounts,
        "sent": run.sent,  # added + changed
        "rejected": run.rejected,  # here (ids) and by the diff
        "group_id_from_map": run.mapped,
        "group_id_as_pendo_id": run.unmapped_sent_as_is,
        "seconds": round(run.seconds, 3),
        **plan_metadata(run.verdict),
        **governance_metadata(run.governed),
    }
    if run.identity is not None:
        metadata |= {"identity_map": run.identity.origin, "identity_map_rows": run.identity.mapped,
                     "identity_map_ambiguous": run.identity.ambiguous}
    rejections = run.rejection_samples + run.plan.rejection_samples
    if rejections:
        metadata["rejected_sample"] = dg.MetadataValue.md(markdown_table(["account", "reason"],
                                                                         rejections[:20]))
    return metadata


# ------------------------------------------------------------------------------------ job and schedule

pendo_account_health_job = dg.define_asset_job(
    JOB_NAME, selection=[USAGE_KEY, HEALTH_KEY, GROUPS_KEY], partitions_def=PARTITIONS,
    description="Stage Pendo usage for the partition's day(s), score every account, sync changed accounts to "
                "Segment.")



def latest_days(count: int, now: datetime | None = None) -> tuple[str, str]:
    """The first and last partition keys of the `count` newest days that can be read at `now` (default:
    `clock.now()`, the current time unless SEGMENT_OPS_CLOCK pins it): days of the subscription's zone that
    ended `[extract] settle_hours` ago or more."""
    config = load_health_config(health_config_path())
    last = last_settled_day(SUBSCRIPTION_ZONE, config.settle_hours, now or clock.now())
    first = max(last - timedelta(days=count - 1), date.fromisoformat(PARTITIONS_START))
    return str(first), str(last)


def range_tags(first: str, last: str) -> dict[str, str]:
    """Run tags that make one run of the job cover the partitions first..last (a single-run range)."""
    return {"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last}


def schedule_hour(settle_hours: int) -> int:
    """The local hour of the daily run: an hour after yesterday is settled (`[extract] settle_hours` after the
    local midnight; the hour of slack absorbs the hour a spring-forward night lacks), at most 23:00."""
    return min(settle_hours + 1, 23)


def _schedule_description(settle_hours: int) -> str:
    hour = schedule_hour(settle_hours)
    late = (f" With [extract] settle_hours = {settle_hours} yesterday is not settled by then: each run reads "
            "up to the day before yesterday (yesterday comes a day later)." if settle_hours + 1 > 23 else "")
    return (f"Each day at {hour:02d}:00 in the Pendo subscription's zone ({TIMEZONE}), an hour after "
            f"yesterday settled ([extract] settle_hours = {settle_hours}): re-read the last "
            f"{DAILY_REREAD_DAYS} readable days of Pendo usage in one run (Pendo may finish processing a day "
            "late), re-score, send changed accounts."
            f"{late} The hour is set when the definitions load: reload the code location after changing "
            "settle_hours.")


def _settle_hours_at_load() -> int:
    """`[extract] settle_hours` when the definitions load (the default when the config cannot be read: the
    runs themselves then fail naming the config)."""
    try:
        return load_health_config(health_config_path()).settle_hours
    except HealthConfigError:
        return HealthConfig(DEFAULT_CONFIG_PATH).settle_hours


SETTLE_HOURS_AT_LOAD = _settle_hours_at_load()


@dg.schedule(job=pendo_account_health_job, cron_schedule=f"0 {schedule_hour(SETTLE_HOURS_AT_LOAD)} * * *",
             execution_timezone=TIMEZONE, name="pendo_daily_schedule",
             default_status=dg.DefaultScheduleStatus.STOPPED,
             description=_schedule_description(SETTLE_HOURS_AT_LOAD))
def pendo_daily_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    first, last = latest_days(DAILY_REREAD_DAYS, context.scheduled_execution_time)
    return dg.RunRequest(run_key=f"{first}..{last}", tags=range_tags(first, last))


defs = dg.Definitions(
    assets=[account_usage_daily, account_health, pendo_account_groups],
    jobs=[pendo_account_health_job],
    schedules=[pendo_daily_schedule],
)
