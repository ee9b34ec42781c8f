"""Fullstory + Segment, group `fullstory`: frustration signals in, the experience score out (the warehouse
traits that go to Fullstory's users API are reverse-ETL models with `destination: fullstory_users`).

- `fullstory/streams`: external asset, the Fullstory Streams posting to the receiver.
- `segment/fullstory_signals` (pool `staging_fullstory_signals`): every stream event the receiver stored
  since the last run, decided once (`signals.py`: sent, rate limited, filtered, late, unidentified, not a
  signal, rejected) and the signals sent as Segment track calls, each event once by the ledger. Checks:
  `delivery_complete`, `events_accounted` (WARN: events rejected, by the receiver or the run),
  `tracking_plan`.
- `segment/fullstory_experience_score` (daily partitions, UTC; pool `staging_fullstory_experience_score`):
  the score of `score.py` for the partition's day, sent as identify traits through the diff. Checks:
  `delivery_complete`, `tracking_plan`.
- `fullstory_stream_sensor` (RUNNING): a signals run whenever the inbox holds an event newer than the last
  one the sensor saw. `fullstory_score_schedule` (STOPPED: it sends): yesterday's score each day at 06:00 UTC.
"""


import hashlib
import json
from datetime import UTC, date, timedelta

import dagster as dg
from pydantic import Field

from segment_ops.clients.base import VendorAuthError, VendorError
from segment_ops.clients.slack import WebhookUrlError
from segment_ops.engine import store
from segment_ops.engine.alerts import governance_message, redact_secrets
from segment_ops.engine.guard import PlanHeld
from segment_ops.engine.identity import IdentityMapError
from segment_ops.engine.ledger import Ledger, Rejection
from segment_ops.engine.run import DeliveryIncomplete, run_diff_sync
from segment_ops.engine.warehouse import WarehouseError
from segment_ops.receivers.inbox import InboxError
from segment_ops.resources import (
    AlertsResource,
    PreflightResource,
    SegmentPublicApiResource,
    SegmentTrackingResource,
    StagingResource,
    WarehouseResource,
)
from segment_ops.syncs.external import (
    FULLSTORY_GROUP,
    FULLSTORY_STREAMS,
    warehouse_table_key,
)
from segment_ops.syncs.fullstory import score, signals
from segment_ops.syncs.fullstory.inbox import Inbox
from segment_ops.syncs.fullstory.receiver import archive_claimed, claim_rejected, rejected_bodies
from segment_ops.syncs.fullstory.settings import FullstoryConfig, FullstoryConfigError, load_config
from segment_ops.syncs.metadata import diff_run_metadata, markdown_table
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

GROUP = FULLSTORY_GROUP
SIGNALS_KEY = dg.AssetKey(["segment", "fullstory_signals"])
SCORE_KEY = dg.AssetKey(["segment", "fullstory_experience_score"])
SIGNALS_JOB, SCORE_JOB = "fullstory_signals_job", "fullstory_score_job"
SENSOR_NAME, SCHEDULE_NAME = "fullstory_stream_sensor", "fullstory_score_schedule"
SIGNALS_SCHEDULE_NAME = "fullstory_signals_schedule"
INBOX_TAG = "segment_ops/fullstory_inbox"  # the sensor's marker of the inbox's content a run was started for
MAX_AUTOMATIC_ATTEMPTS = 3
PARTITIONS = dg.DailyPartitionsDefinition(start_date="2026-01-01")  # UTC days; the newest: yesterday
# The Fullstory warehouse destination's raw events table the default score query reads.
FULLSTORY_EVENTS_TABLE = "fullstory.events"


def _config_version() -> str:
    """The file's version when the definitions load (a file that cannot be read fails the runs, naming it)."""
    try:
        return load_config().code_version
    except FullstoryConfigError:
        return "unreadable"


# The assets' code versions: this module's rules (bumped when they change meaning) and the config file.
SIGNALS_VERSION, SCORE_VERSION = "1", "1"
CONFIG_VERSION = _config_version()


class FullstoryRunConfig(DiffSendConfig):
    dry_run: bool = Field(default=False, description="Read, decide and diff; send, record and archive "
                                                     "nothing.")


class ScoreRunConfig(FullstoryRunConfig):
    full_resync: bool = Field(default=False, description="Send every user's score again, as if nothing "
                                                         "had been delivered (e.g. after the traits were "
                                                         "deleted in Segment).")


def _config() -> FullstoryConfig:
    try:
        return load_config()
    except FullstoryConfigError as exc:
        raise SyncFailure(description=str(exc),
                          metadata={"config_file": dg.MetadataValue.path(str(exc.path))}) from None


@dg.asset(
    key=SIGNALS_KEY,
    group_name=GROUP,
    kinds={"fullstory", "segment", "duckdb"},
    owners=[OWNER],
    description="Fullstory frustration signals (rage, dead and error clicks from Fullstory Streams) as "
                "Segment track calls (`Rage Clicked`, `Dead Clicked`, `Error Clicked` by default) with the "
                "session replay URL: identity-mapped to the Segment userId, filtered and rate limited per "
                "user (`fullstory.toml`), each event sent once. Stream events arrive through the webhook "
                "receiver.",
    pool=f"staging_{signals.SYNC}",
    code_version=f"{SIGNALS_VERSION}-{CONFIG_VERSION}",
    deps=[FULLSTORY_STREAMS.key],
    metadata={"call": "track", "mode": "append", "key": "Fullstory event (hash of its body)"},
    check_specs=[
        dg.AssetCheckSpec("delivery_complete", asset=SIGNALS_KEY,
                          description="Nothing planned for the signals is left pending after the run."),
        dg.AssetCheckSpec("events_accounted", asset=SIGNALS_KEY,
                          description="Every stream event was recorded with a decision, and none was "
                                      "rejected (by the receiver: an authenticated body that is no event; by "
                                      "the run: a stored event that no longer parses)."),
        tracking_plan_check_spec(SIGNALS_KEY),
    ],
)
def fullstory_signals(context: dg.AssetExecutionContext, config: FullstoryRunConfig,
                      segment: SegmentTrackingResource, staging: StagingResource,
                      warehouse: WarehouseResource,
                      preflight: PreflightResource, segment_public_api: SegmentPublicApiResource,
                      alerts: AlertsResource) -> dg.MaterializeResult:
    preflight_gate(context, preflight, segment, skip=config.skip_preflight, dry_run=config.dry_run)
    fs_config = _config()
    inbox = Inbox.for_home(staging.home)
    governance = governance_for(context, staging, segment, segment_public_api, policy=tracking_plan_policy(),
                                dry_run=config.dry_run)
    report = signals.SignalsRun(dry_run=config.dry_run)
    with store.staging(staging.staging_db(signals.SYNC)) as con:
        sync = signals.diff_sync(fs_config, inbox, report, warehouse_url=warehouse.url,
                                 run_id=context.run.run_id)
        try:
            run_diff_sync(con, sync, report, segment.get_client, run_id=context.run.run_id,
                          max_in_flight=segment.max_in_flight, guard=guard_limits(),
                          approve_plan=config.approve_plan, governance=governance,
                          progress_log=context.log.info)
        except DeliveryIncomplete as exc:
            raise SyncFailure(description=str(exc), metadata=_signals_metadata(report, {}, [])) from None
        except PlanHeld as exc:
            raise plan_held_failure(exc, _signals_metadata(report, {}, []),
                                    label="Fullstory signals") from None
        except (IdentityMapError, WarehouseError, InboxError) as exc:
            raise SyncFailure(description=f"Fullstory signals: {exc}") from None
        except VendorAuthError as exc:
            raise SyncFailure(description=f"Fullstory signals: Segment refused the write key: "
                                          f"{exc}") from None
        totals = signals.decided_counts(con)
    kept_aside = rejected_bodies(staging.home) if config.dry_run else _receiver_rejections(context, staging)
    if not config.dry_run:
        try:
            if report.read_at is not None:
                report.hours_archived = inbox.close_staged(report.read, report.read_at)
            inbox.prune_archive()
        except InboxError as exc:  # housekeeping: the hours are read again (and skipped by key) next run
            context.log.warning(f"Fullstory inbox not archived (tried again next run): {exc}")
    alert_violations(context, alerts, report.governed)
    _alert_rejections(context, alerts, report, kept_aside)
    pending = report.ledger.pending if report.ledger else 0
    rejected_now = report.statuses.get("rejected", 0)
    return dg.MaterializeResult(
        metadata=_signals_metadata(report, totals, kept_aside),
        check_results=[
            dg.AssetCheckResult(check_name="delivery_complete", passed=report.dry_run or pending == 0,
                                metadata={"pending": pending}),
            dg.AssetCheckResult(
                check_name="events_accounted", passed=rejected_now == 0 and not kept_aside,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"events_read": report.events_read, "decided_now": report.new,
                          "rejected_now": rejected_now, "rejected_by_receiver": len(kept_aside)},
                description=None if rejected_now == 0 and not kept_aside else (
                    f"{rejected_now} stored event(s) rejected by this run, {len(kept_aside)} body(ies) kept "
                    "aside by the receiver (inbox/fullstory/rejected/)")),
            tracking_plan_check(report.governed),
        ],
    )


def _signals_metadata(report: signals.SignalsRun, totals: dict[str, int], kept_aside: list[dict]) -> dict:
    metadata: dict = {
        "events_read": report.events_read,
        "warehouse_clicks_read": report.warehouse_rows,
        "new_events": report.new,
        **{f"now_{status}": report.statuses.get(status, 0) for status in signals.STATUSES},
        "signals_by_kind": dg.MetadataValue.json(dict(report.by_kind)),
        "totals_by_status": dg.MetadataValue.json(totals),
        "hours_archived": len(report.hours_archived),
        "rejected_by_receiver": len(kept_aside),
    }
    if report.latest_delay_seconds is not None:
        metadata["latest_event_delay_seconds"] = round(report.latest_delay_seconds, 1)
    if report.identity is not None:
        metadata |= {"email_map": report.identity.origin, "email_map_rows": report.identity.mapped,
                     "email_map_ambiguous": report.identity.ambiguous}
    if kept_aside:
        metadata["receiver_rejections"] = dg.MetadataValue.md(markdown_table(
            ["received_at", "reason"],
            [(r.get("received_at", ""), r.get("reason", "")) for r in kept_aside[-10:]]))
    if report.plan is not None:
        metadata |= diff_run_metadata(report.plan, dry_run=report.dry_run, delivery=report.delivery,
                                      pending=report.ledger.pending if report.ledger else 0,
                                      advanced=report.advanced, key_label="event")
    return metadata | plan_metadata(report.verdict) | governance_metadata(report.governed)


def _receiver_rejections(context: dg.AssetExecutionContext, staging: StagingResource) -> list[dict]:
    """The bodies the receiver refused since the last run: claimed (so one the receiver keeps meanwhile waits
    for the next run), recorded in the sync's rejected table (the reason and the file, never the body, which
    may hold personal data) once each, then moved to the inbox's archive for its retention. Returns those
    this run reports; a claimed folder it could not record or move is reported by the next run, not twice."""
    try:
        claimed = claim_rejected(staging.home)
        kept_aside = rejected_bodies(staging.home, claimed)
        if kept_aside:
            # keyed by the file (a hash of the body) and its arrival: the same body refused again later is
            # a new refusal, the same one claimed twice (a run stopped before archiving) is not
            keyed = {f"{r.get('file')}@{r.get('received_at', '')}": r for r in kept_aside}
            with store.staging(staging.staging_db(signals.SYNC)) as con:
                new = Ledger(con).add_new_rejections(signals.SYNC, [
                    Rejection(record_key=key, source="Fullstory receiver", record=None,
                              reason=f"{r.get('reason', 'refused')} (the body is in the Fullstory inbox's "
                                     "archive)")
                    for key, r in keyed.items()], run_id=context.run.run_id)
            kept_aside = [keyed[n.record_key] for n in new]
    except InboxError as exc:
        context.log.warning(f"the receiver's refused bodies were not reported (tried again next run): {exc}")
        return []
    try:
        archive_claimed(staging.home, claimed)
    except InboxError as exc:  # recorded already: the next run moves them, and records none twice
        context.log.warning(f"the receiver's refused bodies stay claimed (moved next run): {exc}")
    return kept_aside


def _alert_rejections(context: dg.AssetExecutionContext, alerts: AlertsResource, report: signals.SignalsRun,
                      kept_aside: list[dict]) -> None:
    """One Slack message when the receiver refused stream bodies since the last run (answered 400, which
    Fullstory does not retry: the stream's body mapping is probably wrong) or this run rejected stored events;
    the reasons are in the sync's rejected table."""
    rejected = report.statuses.get("rejected", 0)
    if report.dry_run or not (rejected or kept_aside):
        return
    lines = []
    if kept_aside:
        lines.append(f"the receiver refused {len(kept_aside)} Fullstory stream body(ies) since the last run, "
                     f"e.g. {kept_aside[-1].get('reason', '')!r}: check the stream's Field Mapping")
    if rejected:
        lines.append(f"{rejected} stored event(s) could not be read as stream events")
    try:
        with alerts.get_client() as client:
            client.post_message(governance_message(
                "Fullstory stream events rejected",
                [*lines, "The reasons are in the sync's rejected table (`segment-ops rejected "
                         "fullstory_signals`)."], alerts.run_url(context.run.run_id)))
    except (VendorError, WebhookUrlError) as exc:
        context.log.error(f"Fullstory rejection alert not sent: {redact_secrets(str(exc))}")


@dg.asset(
    key=SCORE_KEY,
    group_name=GROUP,
    kinds={"fullstory", "segment", "duckdb"},
    owners=[OWNER],
    description="The Fullstory experience score (0-100) of each user for the partition's day, from the "
                "frustration signals of the window and Fullstory's warehouse tables (error rate, pages per "
                "session), sent as identify traits `fullstory_experience_score` and "
                "`fullstory_experience_band` "
                "through the diff: only changes are sent; a day older than the newest sent sends nothing.",
    partitions_def=PARTITIONS,
    # The signals sync's pool: a score run reads its staging file too, so the two never wait on each other's
    # file lock (its own file is written by score runs only, which the pool also serialises).
    pool=f"staging_{signals.SYNC}",
    code_version=f"{SCORE_VERSION}-{CONFIG_VERSION}",
    deps=[SIGNALS_KEY, warehouse_table_key(FULLSTORY_EVENTS_TABLE)],
    metadata={"call": "identify", "mode": "upsert", "key": "userId", "traits": ", ".join(score.TRAITS)},
    check_specs=[
        dg.AssetCheckSpec("delivery_complete", asset=SCORE_KEY,
                          description="Every changed score was sent, and nothing is left pending."),
        tracking_plan_check_spec(SCORE_KEY),
    ],
)
def fullstory_experience_score(context: dg.AssetExecutionContext, config: ScoreRunConfig,
                               segment: SegmentTrackingResource, staging: StagingResource,
                               warehouse: WarehouseResource, preflight: PreflightResource,
                               segment_public_api: SegmentPublicApiResource,
                               alerts: AlertsResource) -> dg.MaterializeResult:
    preflight_gate(context, preflight, segment, skip=config.skip_preflight, dry_run=config.dry_run)
    fs_config = _config()
    as_of = date.fromisoformat(context.partition_key)
    start, end = score.window(as_of, fs_config.score.window_days)
    with store.staging(staging.staging_db(signals.SYNC)) as con:
        counts = score.signal_counts(con, start, end)
    governance = governance_for(context, staging, segment, segment_public_api, policy=tracking_plan_policy(),
                                dry_run=config.dry_run)
    report = score.ScoreRun(as_of=as_of, dry_run=config.dry_run, full_resync=config.full_resync)
    with store.staging(staging.staging_db(score.SYNC)) as con:
        try:
            sync = score.diff_sync(fs_config.score, counts, report, warehouse_url=warehouse.url,
                                   exclude_emails=fs_config.signals.exclude_emails)
            run_diff_sync(con, sync,
                          report, segment.get_client, run_id=context.run.run_id,
                          max_in_flight=segment.max_in_flight, guard=guard_limits(),
                          approve_plan=config.approve_plan, governance=governance,
                          progress_log=context.log.info)
        except DeliveryIncomplete as exc:
            raise SyncFailure(description=str(exc), metadata=_score_metadata(report)) from None
        except PlanHeld as exc:
            raise plan_held_failure(exc, _score_metadata(report), label="Fullstory experience "
                                                                        "score") from None
        except WarehouseError as exc:
            raise SyncFailure(description=f"Fullstory experience score: the warehouse query ([score] "
                                          f"warehouse_query) failed: {exc}") from None
        except VendorAuthError as exc:
            raise SyncFailure(description=f"Fullstory experience score: Segment refused the write key: "
                                          f"{exc}") from None
        if not config.dry_run:
            score.record_run(con, fs_config.score, report, context.run.run_id)
    if governance.regulated is not None:  # the lowest scores shown name no regulated user
        report.lowest = [r for r in report.lowest if not governance.regulated.covers(r["user_id"])]
    if not report.sent:
        context.log.warning(f"{as_of} is older than {report.newest_sent}, the newest day already sent: its "
                            "scores are computed and shown, not sent")
    alert_violations(context, alerts, report.governed)
    pending = report.ledger.pending if report.ledger else 0
    return dg.MaterializeResult(
        metadata=_score_metadata(report),
        check_results=[
            dg.AssetCheckResult(check_name="delivery_complete", passed=report.dry_run or pending == 0,
                                metadata={"pending": pending}),
            tracking_plan_check(report.governed),
        ],
    )


def _score_metadata(report: score.ScoreRun) -> dict:
    metadata: dict = {
        "as_of": str(report.as_of),
        "window": f"{report.window_start:%Y-%m-%d} .. {report.window_end - timedelta(days=1):%Y-%m-%d}"
        if report.window_start and report.window_end else "",
        "sent": report.sent,
        "newest_day_sent": str(report.newest_sent) if report.newest_sent else "none",
        "users_scored": report.users_scored,
        "users_with_signals": report.users_with_signals,
        "users_with_sessions": report.users_with_sessions,
        "warehouse_tables_read": report.warehouse,
        "bands": dg.MetadataValue.json(report.bands),
    }
    if report.mean_score is not None:
        metadata["mean_score"] = report.mean_score
    if report.lowest:
        metadata["lowest_scores"] = dg.MetadataValue.md(markdown_table(
            list(report.lowest[0]), [list(r.values()) for r in report.lowest]))
    if report.plan is not None:
        metadata |= diff_run_metadata(report.plan, dry_run=report.dry_run, delivery=report.delivery,
                                      pending=report.ledger.pending if report.ledger else 0,
                                      advanced=report.advanced, key_label="user")
    return metadata | plan_metadata(report.verdict) | governance_metadata(report.governed)


fullstory_signals_job = dg.define_asset_job(
    SIGNALS_JOB, selection=[SIGNALS_KEY],
    description="Decide what becomes of the Fullstory stream events received, and send the signals to "
                "Segment.")
fullstory_score_job = dg.define_asset_job(
    SCORE_JOB, selection=[SCORE_KEY], partitions_def=PARTITIONS,
    description="Score every Fullstory user for the partition's day and send the changed scores to Segment.")


@dg.sensor(job=fullstory_signals_job, name=SENSOR_NAME, minimum_interval_seconds=30,
           default_status=dg.DefaultSensorStatus.RUNNING,
           description="Starts a signals run when the receiver stored new Fullstory stream events (the "
                       "cursor: how many events each live hour of the inbox holds), and starts it again, up "
                       f"to {MAX_AUTOMATIC_ATTEMPTS} times in all, when the run for those events failed.")
def fullstory_stream_sensor(context: dg.SensorEvaluationContext,
                            staging: StagingResource) -> dg.SensorResult | dg.SkipReason:
    try:
        counts = Inbox.for_home(staging.home).counts()
    except (OSError, InboxError) as exc:
        return dg.SkipReason(f"the Fullstory inbox cannot be read: {exc}")
    seen: dict[str, int] = json.loads(context.cursor) if context.cursor else {}
    marker = hashlib.sha256(json.dumps(counts, sort_keys=True).encode()).hexdigest()[:16]
    # An hour archived by a run leaves the counts: no new event. Only a new hour, or more events in one, is.
    arrived = any(n > seen.get(hour, 0) for hour, n in counts.items())
    runs = context.instance.get_runs(filters=dg.RunsFilter(tags={INBOX_TAG: marker}))
    if arrived:
        return dg.SensorResult(run_requests=[dg.RunRequest(run_key=f"fullstory:{marker}:{len(runs)}",
                                                           tags={INBOX_TAG: marker})],
                               cursor=json.dumps(counts, sort_keys=True))
    failed = [r for r in runs if r.status == dg.DagsterRunStatus.FAILURE]
    if runs and len(failed) == len(runs) and len(runs) < MAX_AUTOMATIC_ATTEMPTS:
        return dg.SensorResult(run_requests=[dg.RunRequest(run_key=f"fullstory:{marker}:{len(runs)}",
                                                           tags={INBOX_TAG: marker})],
                               cursor=json.dumps(counts, sort_keys=True))
    return dg.SensorResult(skip_reason=dg.SkipReason(
        "no Fullstory stream event since the last run" if not failed or len(failed) < len(runs) else
        f"{len(runs)} runs for the events received failed: see their errors, then launch the asset"),
        cursor=json.dumps(counts, sort_keys=True))


@dg.schedule(job=fullstory_signals_job, cron_schedule="15 * * * *", execution_timezone="UTC",
             name=SIGNALS_SCHEDULE_NAME, default_status=dg.DefaultScheduleStatus.STOPPED,
             description="Each hour at :15: a signals run whatever the sensor saw, for a deployment that "
                         "reads the frustrated clicks from the warehouse export ([signals.warehouse]), which "
                         "no sensor watches, and as a safety net for the streams.")
def fullstory_signals_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    return dg.RunRequest(run_key=f"fullstory-hourly:{context.scheduled_execution_time:%Y-%m-%dT%H}")


@dg.schedule(job=fullstory_score_job, cron_schedule="0 6 * * *", execution_timezone="UTC",
             name=SCHEDULE_NAME, default_status=dg.DefaultScheduleStatus.STOPPED,
             description="Each day at 06:00 UTC: yesterday's Fullstory experience scores, changes sent.")
def fullstory_score_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    day = (context.scheduled_execution_time.astimezone(UTC) - timedelta(days=1)).date().isoformat()
    return dg.RunRequest(run_key=day, partition_key=day)


defs = dg.Definitions(
    assets=[fullstory_signals, fullstory_experience_score],
    jobs=[fullstory_signals_job, fullstory_score_job],
    sensors=[fullstory_stream_sensor],
    schedules=[fullstory_signals_schedule, fullstory_score_schedule],
)


def prepare_demo() -> dict:
    """`segment-ops demo`: serve the Fullstory receiver in-process, have the sandbox's Streams post the demo's
    frustration events to it (each waited for), and return the signals run's config."""
    import httpx

    from segment_ops.clients.base import tls_context
    from segment_ops.config import load_settings
    from segment_ops.receivers.server import serve_in_thread
    from segment_ops.syncs.fullstory.receiver import FULLSTORY_PATH, config_from_env, create_app

    settings = load_settings()
    config = config_from_env(settings)
    served = serve_in_thread(create_app(config), name="fullstory receiver")
    try:
        control = f"{settings['SEGMENT_OPS_SANDBOX_URL']}/__sandbox__/fullstory"
        with httpx.Client(base_url=control, timeout=120, verify=tls_context()) as http:
            http.post("/streams", json={"url": f"{served.url}{FULLSTORY_PATH}", "token": config.token,
                                        "body": "mapped"}).raise_for_status()
            pushed = http.post("/push", json={"wait": True, "duplicate": 3})
            pushed.raise_for_status()
    finally:
        served.stop()
    refused = [d for d in pushed.json().get("deliveries", []) if d.get("status") != "delivered"]
    if refused:
        raise RuntimeError(f"the receiver did not accept {len(refused)} Fullstory stream event(s) the "
                           f"sandbox posted, e.g. {refused[0]}")
    return {}


def demo_score_day() -> str:
    from segment_ops import clock

    return (clock.now().astimezone(UTC) - timedelta(days=1)).date().isoformat()
