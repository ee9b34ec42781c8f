"""Heap cohorts as Segment audiences: one asset per audience in `heap_audiences.toml` (beside this module,
or the file HEAP_AUDIENCES_FILE names).

- `heap/segments/<audience>`: external asset, the Heap segment (switched to sync in Heap's UI).
- `segment/heap_audiences/<audience>` (group `heap`, pool `staging_heap_<audience>`): brings Segment to
  Heap's membership through `engine.audiences.sync_audience`, by route `webhook` (complete syncs and
  drains from the inbox the receiver writes) or `reconcile` (the Heap Connect tables in the warehouse),
  with in-step checks `identity_match_rate` (WARN), `membership_drop_guard` (ERROR; a tripped guard fails
  the run and changes nothing) and `delivery_complete`, and `landed_in_segment` (a read-back of earlier
  runs' identify calls, `syncs/verification.py`).
- `heap_audiences_job`; `heap_webhook_inbox_sensor` (RUNNING by default): first moves inbox folders of the
  older layout into this one (so their pending syncs are applied; one it cannot move is reported), then
  starts one run per complete `sync_task_id` and one per `segment.users.drain` (applied by
  HEAP_DRAIN_POLICY: `exit` through the drop guard, `ignore` recorded only). A sync is held while pages are
  missing, and reported once (a warning in the sensor's log and one message to ALERT_WEBHOOK_URL) when it
  stays incomplete longer than the file's `stale_incomplete_sync_minutes`; a drain the inbox holds (the
  same drain body again after a sync of the segment was applied) is reported once and waits for a run
  launched with confirm_drop. It reads each pending sync's small `sync.json`, never its pages, and moves
  applied syncs to the inbox's archive (deleted after HEAP_INBOX_RETENTION_DAYS), so a tick costs what is
  pending; a sync or drain whose stored summary is unreadable or out of bounds (`total_pages` beyond
  `MAX_TOTAL_PAGES`) is reported once and never applied: a tick never raises on what is stored. The cursor
  holds what was already reported, so a report is never repeated; an alert that could not be posted is
  tried again on the next tick; `heap_reconcile_schedule` (STOPPED by default: it sends to Segment): the
  reconcile route for every audience, on the file's cron.

Adding an audience is adding an `[audiences.<name>]` table to the file (HEAP_AUDIENCES_FILE); no code.
A file that does not parse still loads the code location: one asset `segment/heap_audiences/_config`
says what is wrong and fails every run.
"""

import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import dagster as dg
from pydantic import Field

from segment_ops.clients.base import VendorAuthError, VendorError, tls_context
from segment_ops.clients.slack import WebhookUrlError
from segment_ops.config import load_settings
from segment_ops.engine import store
from segment_ops.engine.alerts import StaleSync, stale_sync_message
from segment_ops.engine.guard import PlanHeld
from segment_ops.engine.identity import IdentityMapError
from segment_ops.engine.run import DeliveryIncomplete
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
from segment_ops.syncs.external import HEAP_SEGMENTS, warehouse_table_key
from segment_ops.syncs.heap.audiences import (
    DEFAULT_FILE,
    DRAIN_POLICIES,
    Audience,
    AudienceConfigError,
    AudienceRun,
    AudiencesConfig,
    IncompleteSyncError,
    MembershipDropError,
    load_audiences,
    sync_audience,
)
from segment_ops.syncs.heap.inbox import DEFAULT_RETENTION, SYNC_PREFIX, Inbox
from segment_ops.syncs.heap.webhook import sync_key
from segment_ops.syncs.metadata import markdown_table, payload_samples
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
from segment_ops.syncs.verification import ReadBackTarget, read_back_defs

GROUP = "heap"
KINDS = {"heap", "segment", "duckdb"}
JOB_NAME = "heap_audiences_job"
SENSOR_NAME = "heap_webhook_inbox_sensor"
SCHEDULE_NAME = "heap_reconcile_schedule"
# Tag values are inbox keys (hashes): a sync_task_id may be any string, a drain has no id of its own.
SYNC_TAG, DRAIN_TAG, AUDIENCE_TAG = ("segment_ops/heap_sync_task", "segment_ops/heap_drain",
                                     "segment_ops/heap_audience")
MAX_AUTOMATIC_ATTEMPTS = 3
MAX_RETENTION_DAYS = 3650
# The Heap Connect tables the default reconcile and identity queries read (heap_audiences.toml).
CONNECT_TABLES = ("main_production.users", "main_production.segment_members")
log = logging.getLogger("segment_ops.heap")


class HeapAudienceConfig(DiffSendConfig):
    route: Literal["webhook", "reconcile"] = Field(
        default="webhook", description="webhook: apply complete syncs from the inbox; reconcile: take the "
                                       "full membership from the Heap Connect table in the warehouse.")
    sync_task_ids: list[str] | None = Field(
        default=None, description="webhook route: the syncs to apply (default: every complete, unprocessed "
                                  "one of the segment; [] for none).")
    drain_keys: list[str] | None = Field(
        default=None, description="webhook route: the Heap drains to apply, by inbox key (default: every "
                                  "unapplied drain of the segment; [] for none). HEAP_DRAIN_POLICY says what "
                                  "a drain does.")
    confirm_drop: bool = Field(default=False, description="Apply a membership drop beyond the file's "
                                                          "max_drop_ratio (the drop guard refuses it "
                                                          "otherwise).")
    dry_run: bool = Field(default=False,
                          description="Resolve, diff and count; send, record and mark nothing.")


def audience_key(name: str) -> dg.AssetKey:
    return dg.AssetKey(["segment", "heap_audiences", name])


def segment_key(name: str) -> dg.AssetKey:
    return dg.AssetKey(["heap", "segments", name])


def node(name: str) -> str:
    return f"segment__heap_audiences__{name}"


def audiences_file() -> Path:
    return Path(load_settings()["HEAP_AUDIENCES_FILE"] or DEFAULT_FILE)


def build_heap_defs(path: Path | str | None = None) -> dg.Definitions:
    """Specs, audience assets, job, sensor and schedule for the audiences file (default:
    HEAP_AUDIENCES_FILE)."""
    path = Path(path or audiences_file())
    try:
        audiences = load_audiences(path)
    except AudienceConfigError as exc:
        log.warning("Heap audiences not loaded: %s", exc)
        return dg.Definitions(assets=[_broken_config_asset(exc)])
    enabled = [a for a in audiences.audiences if a.enabled]
    job = dg.define_asset_job(JOB_NAME,
                              selection=dg.AssetSelection.assets(*(audience_key(a.key) for a in enabled)),
                              description="Bring the Segment audiences to the Heap segments' membership.")
    syncs = dg.Definitions(
        assets=[*(_segment_spec(a) for a in enabled), *(_audience_asset(a, audiences) for a in enabled)],
        jobs=[job],
        sensors=[_inbox_sensor(audiences, job)],
        schedules=[_reconcile_schedule(audiences, enabled, job)],
    )
    return dg.Definitions.merge(syncs, read_back_defs(GROUP, [ReadBackTarget(audience_key(a.key), a.sync)
                                                             for a in enabled]))


def _segment_spec(audience: Audience) -> dg.AssetSpec:
    return dg.AssetSpec(
        segment_key(audience.key), deps=[HEAP_SEGMENTS.key], group_name=GROUP, kinds={"heap"}, owners=[OWNER],
        description=f"Heap segment {audience.name!r} (id {audience.segment_id}), switched to sync: Heap "
                    "pushes its membership changes by signed webhook about every 4 hours.",
        metadata={"heap_segment_id": audience.segment_id})


def _audience_asset(audience: Audience, audiences: AudiencesConfig) -> dg.AssetsDefinition:
    key = audience_key(audience.key)

    @dg.asset(
        key=key,
        group_name=GROUP,
        kinds=KINDS,
        owners=[OWNER],
        description=f"{audience.description or audience.name}\n\nSegment audience of the Heap segment "
                    f"{audience.name!r} (id {audience.segment_id}): members get the trait "
                    f"`{audience.trait}: true` and a track {audience.entered_event!r}; leavers "
                    f"`{audience.trait}: false` and {audience.exited_event!r}. Declared in "
                    f"`{audiences.path.name}`.",
        code_version=audiences.code_version,
        pool=f"staging_{audience.sync}",
        deps=[segment_key(audience.key), *(warehouse_table_key(t) for t in CONNECT_TABLES)],
        metadata={"audiences_file": dg.MetadataValue.path(str(audiences.path)), "trait": audience.trait,
                  "heap_segment_id": audience.segment_id, "identity_fallback": audiences.fallback},
        check_specs=[
            dg.AssetCheckSpec("identity_match_rate", asset=key, description=(
                f"At least {audiences.min_match_rate:.0%} of the members' Heap identities resolve to a "
                "userId.")),
            dg.AssetCheckSpec("membership_drop_guard", asset=key, description=(
                f"The run exits at most {audiences.max_drop_ratio:.0%} of the delivered members, and a "
                "reconcile never empties an audience from an empty Heap Connect result (unless confirmed); a "
                "tripped guard fails the run and changes nothing.")),
            dg.AssetCheckSpec("delivery_complete", asset=key,
                              description="Nothing planned for this audience is left pending after the run."),
            tracking_plan_check_spec(key),
        ],
    )
    def heap_audience(context: dg.AssetExecutionContext, config: HeapAudienceConfig,
                      warehouse: WarehouseResource, segment: SegmentTrackingResource,
                      staging: StagingResource, preflight: PreflightResource,
                      segment_public_api: SegmentPublicApiResource, alerts: AlertsResource):
        preflight_gate(context, preflight, segment, skip=config.skip_preflight, dry_run=config.dry_run)
        inbox = Inbox.for_home(staging.home)
        policy = drain_policy()
        limits = guard_limits()
        governance = governance_for(context, staging, segment, segment_public_api,
                                    policy=tracking_plan_policy(), dry_run=config.dry_run)
        with store.staging(staging.staging_db(audience.sync)) as con:
            try:
                run = sync_audience(con, audiences, audience, route=config.route, inbox=inbox,
                                    warehouse_url=warehouse.url, client_factory=segment.get_client,
                                    sync_task_ids=config.sync_task_ids, drain_keys=config.drain_keys,
                                    drain_policy=policy, run_id=context.run.run_id,
                                    dry_run=config.dry_run, confirm_drop=config.confirm_drop,
                                    max_in_flight=segment.max_in_flight, guard=limits,
                                    approve_plan=config.approve_plan, governance=governance)
            except MembershipDropError as exc:
                yield _guard_result(exc.report)
                raise SyncFailure(description=str(exc), metadata=_metadata(exc.report)) from None
            except DeliveryIncomplete as exc:
                raise SyncFailure(description=str(exc), metadata=_metadata(exc.report)) from None
            except PlanHeld as exc:
                raise plan_held_failure(exc, _metadata(exc.report)) from None
            except (IncompleteSyncError, IdentityMapError, WarehouseError) as exc:
                raise SyncFailure(description=f"audience {audience.key}: {exc}") from None
            except VendorAuthError as exc:
                raise SyncFailure(description=f"audience {audience.key}: Segment refused the write key: "
                                             f"{exc}") from None
        res = run.resolution
        alert_violations(context, alerts, run.governed)
        yield dg.MaterializeResult(
            metadata=_metadata(run),
            check_results=[
                dg.AssetCheckResult(
                    check_name="identity_match_rate", passed=res.match_rate >= audiences.min_match_rate,
                    severity=dg.AssetCheckSeverity.WARN,
                    metadata={"match_rate": round(res.match_rate, 4),
                              "min_match_rate": audiences.min_match_rate, "members": res.members,
                              "mapped": res.mapped, "fallback": res.fallback, "unresolved": res.unresolved}),
                _guard_result(run),
                dg.AssetCheckResult(
                    check_name="delivery_complete", passed=run.dry_run or run.ledger.pending == 0,
                    metadata={"pending": run.ledger.pending,
                              "delivered_total": run.ledger.delivered + run.ledger.verified,
                              "verified_total": run.ledger.verified}),
                tracking_plan_check(run.governed),
            ],
        )

    return heap_audience


def inbox_retention() -> tuple[timedelta, str | None]:
    """HEAP_INBOX_RETENTION_DAYS (30 when unset), and why a value that cannot be used was replaced by 30: the
    sensor reports it and never fails on it."""
    raw = load_settings()["HEAP_INBOX_RETENTION_DAYS"].strip()
    if not raw:
        return DEFAULT_RETENTION, None
    if raw.isascii() and raw.isdigit() and 1 <= int(raw) <= MAX_RETENTION_DAYS:
        return timedelta(days=int(raw)), None
    return DEFAULT_RETENTION, (f"HEAP_INBOX_RETENTION_DAYS must be a whole number of days from 1 to "
                               f"{MAX_RETENTION_DAYS}, got {raw[:40]!r}; {DEFAULT_RETENTION.days} used")


def drain_policy() -> str:
    """HEAP_DRAIN_POLICY (`exit` when unset); any other value fails the run naming the variable."""
    value = load_settings()["HEAP_DRAIN_POLICY"].strip().lower() or DRAIN_POLICIES[0]
    if value not in DRAIN_POLICIES:
        raise SyncFailure(description=f"HEAP_DRAIN_POLICY must be one of {', '.join(DRAIN_POLICIES)}, "
                                     f"got {value!r}")
    return value


def _guard_result(run: AudienceRun) -> dg.AssetCheckResult:
    guard = run.guard
    return dg.AssetCheckResult(
        check_name="membership_drop_guard", passed=not guard.tripped or guard.confirmed,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"delivered_members": guard.delivered_members, "exits": guard.exits,
                  "drop_ratio": round(guard.ratio, 4), "max_drop_ratio": guard.max_drop_ratio,
                  "min_exits": guard.min_exits, "empty_heap_connect_result": guard.empty_export,
                  "confirmed": guard.confirmed})


def _metadata(run: AudienceRun) -> dict:
    res = run.resolution
    metadata: dict = {
        "route": run.route,
        "dry_run": run.dry_run,
        "syncs_applied": dg.MetadataValue.json([s.sync_task_id for s in run.syncs]),
        "drains_applied": dg.MetadataValue.json([d.key for d in run.drains]),
        "drain_policy": run.drain_policy,
        "drain_exits": run.drain_exits,
        "pages_received": run.pages,
        "adds_received": run.adds_received,
        "removes_received": run.removes_received,
        "heap_members": res.members,
        "resolved_users": res.users,
        "mapped": res.mapped,
        "fallback_user_ids": res.fallback,
        "unresolved": res.unresolved,
        "newly_rejected": res.newly_rejected,
        "match_rate": round(res.match_rate, 4),
        "delivered_members_before": run.guard.delivered_members,
        "total_seconds": round(run.seconds, 3),
        **plan_metadata(run.verdict),
        **governance_metadata(run.governed),
    }
    if run.connect_rows is not None:
        metadata["heap_connect_rows"] = run.connect_rows
    if run.identity_map is not None:
        metadata["identity_map"] = (f"{run.identity_map.origin}: {run.identity_map.mapped:,} ids mapped, "
                                    f"{run.identity_map.ambiguous:,} ambiguous, "
                                    f"{run.identity_map.blank:,} blank")
    if run.plan is not None:
        metadata |= {"added": run.plan.added, "removed": run.plan.removed, "unchanged": run.plan.unchanged,
                     "planned": run.plan.planned, "already_planned": run.plan.already_known,
                     "sample_payloads": payload_samples(run.plan.samples)}
    if run.delivery is not None:
        metadata |= run.delivery.as_metadata()
    if run.ledger is not None and not run.dry_run:
        metadata |= {"pending_after_run": run.ledger.pending, "snapshot_advanced": run.advanced}
    if res.samples:
        metadata["unresolved_sample"] = dg.MetadataValue.md(markdown_table(["Heap identity", "reason"],
                                                                           res.samples))
    return metadata


def _inbox_sensor(audiences: AudiencesConfig, job: object) -> dg.SensorDefinition:
    stale_after = timedelta(minutes=audiences.stale_incomplete_sync_minutes)

    @dg.sensor(
        name=SENSOR_NAME,
        job=job,
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Watches the Heap webhook inbox: one run per complete segment sync (all its pages "
                    "received) and one per drain; inbox folders of the older layout are moved into this "
                    "one first, applied syncs into the inbox's archive (kept HEAP_INBOX_RETENTION_DAYS), and "
                    "a stored sync or drain that breaks the receiver's bounds is reported, never applied. "
                    "An incomplete sync is held, and reported once (log and alert webhook) when "
                    "it stays incomplete longer than "
                    f"{audiences.stale_incomplete_sync_minutes:g} minutes; a held drain (repeated after a "
                    "newer sync) is reported and waits for a run with confirm_drop.",
    )
    def heap_webhook_inbox_sensor(context: dg.SensorEvaluationContext, staging: StagingResource,
                                  alerts: AlertsResource) -> dg.SensorResult:
        inbox = Inbox.for_home(staging.home)
        reported: set[str] = set(json.loads(context.cursor)) if context.cursor else set()
        # Syncs a receiver of the older layout stored under their raw ids: moved first, so they are applied.
        unmigrated = inbox.migrate_old_layout()
        now = datetime.now(UTC)
        requests, held, problems, stale = [], 0, [], []  # problems: (inbox key, what is wrong)
        # Applied syncs leave the live inbox, so a tick lists what is pending, not every sync ever received.
        _, unarchived = inbox.archive_applied(now)
        problems += [(f"archive:{name}", f"the applied Heap sync {name} could not be archived (tried again "
                                         f"next tick): {why}") for name, why in unarchived]
        retention, retention_problem = inbox_retention()
        try:
            inbox.prune_archive(retention, now)
        except InboxError as exc:
            retention_problem = f"archived Heap syncs could not be pruned (tried again next tick): {exc}"
        if retention_problem:
            problems.append(("archive:retention", retention_problem))
        for sync in inbox.syncs():
            name = f"Heap sync {sync.sync_task_id!r}"  # any string Heap chose: quoted
            if sync.problem is not None:  # stored by a receiver without today's bounds, or damaged
                problems.append((sync.key, f"{name}: {sync.problem}; never applied, left in the inbox "
                                           f"({SYNC_PREFIX}{sync.key})"))
                continue
            audience = audiences.by_segment(sync.segment_id)
            if audience is None:
                problems.append((sync.key, f"{name}: Heap segment {sync.segment_id} ({sync.segment_name!r}) "
                                           f"is not an enabled audience in {audiences.path.name}; left in "
                                           "the inbox"))
                continue
            if not sync.complete:
                age = now - sync.first_received
                if age <= stale_after:
                    held += 1
                    continue
                problem = (f"incomplete for {_minutes(age)}: {sync.describe_missing()}; not applied (the "
                           "reconcile corrects the drift)")
                problems.append((sync.key, f"{name}: {audience.key}: {problem}"))
                stale.append(StaleSync("Heap", sync.sync_task_id, audience.key, problem,
                                       str(inbox.sync_folder(sync.sync_task_id)),
                                       _asset_url(alerts, audience)))
                continue
            request = _run_request(context, SYNC_TAG, sync.key, audience, name, problems,
                                   {"sync_task_ids": [sync.sync_task_id], "drain_keys": []})
            if request is not None:
                requests.append(request)
        for drain in inbox.drains():
            if drain.problem is not None:
                problems.append((drain.key, f"Heap drain {drain.key}: {drain.problem}; never applied, left "
                                            "in the inbox"))
                continue
            name = f"Heap drain {drain.key} of segment {drain.segment_id}"
            audience = audiences.by_segment(drain.segment_id)
            if audience is None:
                problems.append((drain.key, f"{name} ({drain.segment_name!r}): not an enabled audience in "
                                            f"{audiences.path.name}; left in the inbox"))
                continue
            if drain.held:
                problem = (f"held, no run started: {drain.held}. If Heap drained the segment again, launch "
                           f"the asset with drain_keys: [{drain.key}] and confirm_drop: true")
                problems.append((drain.key, f"{name}: {audience.key}: {problem}"))
                stale.append(StaleSync("Heap", drain.key, audience.key, problem,
                                       str(inbox.drain_folder(drain.key)),
                                       _asset_url(alerts, audience), kind="drain"))
                continue
            request = _run_request(context, DRAIN_TAG, drain.key, audience, name, problems,
                                   {"sync_task_ids": [], "drain_keys": [drain.key]})
            if request is not None:
                requests.append(request)
        for folder, why in unmigrated:
            problems.append((f"folder:{folder.name}",
                             f"{folder} is a folder of an older inbox layout that could not be moved into "
                             f"this one: {why}; not applied"))
        for key, problem in problems:
            if key not in reported:
                context.log.warning(problem)
        unposted = _alert_stale(context, alerts, [s for s in stale if _inbox_key(s) not in reported])
        skip = None
        if not requests:
            parts = [f"{held} incomplete sync(s) waiting for pages"] if held else []
            parts += [problem for _, problem in problems]
            skip = dg.SkipReason("no complete Heap sync or drain to apply"
                                 + (": " + "; ".join(parts) if parts else ""))
        return dg.SensorResult(run_requests=requests, skip_reason=skip,
                               cursor=json.dumps(sorted({k for k, _ in problems} - unposted)))

    return heap_webhook_inbox_sensor


def _run_request(context: dg.SensorEvaluationContext, tag: str, key: str, audience: Audience, name: str,
                 problems: list[tuple[str, str]], choice: dict) -> dg.RunRequest | None:
    """The run that applies one sync or drain (`choice`: its run config), unless one is in progress or the
    automatic attempts are spent (then a problem is reported instead)."""
    runs = context.instance.get_runs(filters=dg.RunsFilter(tags={tag: key}))
    if any(not r.is_finished for r in runs):
        return None
    if len(runs) >= MAX_AUTOMATIC_ATTEMPTS:
        problems.append((key, f"{name}: {audience.key}: {len(runs)} runs did not process it; see their "
                              "errors, then launch the asset from the UI"))
        return None
    prefix = "heap" if tag == SYNC_TAG else "heap-drain"
    return dg.RunRequest(
        run_key=f"{prefix}:{key}:{len(runs)}",
        asset_selection=[audience_key(audience.key)],
        run_config={"ops": {node(audience.key): {"config": {"route": "webhook", **choice}}}},
        tags={tag: key, AUDIENCE_TAG: audience.key})


def _asset_url(alerts: AlertsResource, audience: Audience) -> str:
    """The audience asset's page in the Dagster UI, for the alert's link."""
    return f"{alerts.dagster_ui_url.rstrip('/')}/assets/{'/'.join(audience_key(audience.key).path)}"


def _inbox_key(item: StaleSync) -> str:
    """The inbox key the sensor's cursor remembers a reported item by: a sync's hashed id, a drain's own
    key."""
    return item.sync_task_id if item.kind == "drain" else sync_key(item.sync_task_id)


def _alert_stale(context: dg.SensorEvaluationContext, alerts: AlertsResource,
                 stale: list[StaleSync]) -> set[str]:
    """Post one alert per newly stale sync or held drain; returns the inbox keys of those not posted (tried
    again next tick). After a failed post the rest wait too: each post may retry for up to 20 s, and a tick
    has 60 s."""
    unposted: set[str] = set()
    for item in stale:
        if unposted:
            unposted.add(_inbox_key(item))
            continue
        try:
            with alerts.get_client() as client:
                client.post_message(stale_sync_message(item))
        except (VendorError, WebhookUrlError) as exc:
            context.log.error(f"alert for the Heap {item.kind} {item.sync_task_id!r} not sent (next tick "
                              f"retries): {exc}")
            unposted.add(_inbox_key(item))
    return unposted


def _reconcile_schedule(audiences: AudiencesConfig, enabled: list[Audience],
                        job: object) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name=SCHEDULE_NAME,
        cron_schedule=audiences.reconcile_schedule,
        execution_timezone="UTC",
        job=job,
        run_config={"ops": {node(a.key): {"config": {"route": "reconcile"}} for a in enabled}},
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description="Reconcile every Heap audience with the full membership in the Heap Connect tables "
                    f"({audiences.reconcile_schedule}, UTC).",
    )


def _broken_config_asset(error: AudienceConfigError) -> dg.AssetsDefinition:
    @dg.asset(
        key=audience_key("_config"), group_name=GROUP, kinds=KINDS, owners=[OWNER],
        description=f"BROKEN Heap audiences file: {error}\n\nFix the file; until then no Heap audience is "
                    "synced.",
        code_version="broken",
    )
    def heap_audiences_config(context: dg.AssetExecutionContext) -> None:
        raise SyncFailure(description=str(error))

    return heap_audiences_config


def _minutes(age: timedelta) -> str:
    return f"{age.total_seconds() / 60:.0f} min"


def prepare_demo() -> dict:
    """`segment-ops demo`: start the receiver in-process, have the sandbox push one sync per segment to it
    (signed, paged, waited for), and return the run config that applies them by the webhook route."""
    import httpx

    from segment_ops.syncs.heap.receiver import config_from_env
    from segment_ops.syncs.heap.server import start_receiver

    settings = load_settings()
    config = config_from_env(settings)
    with start_receiver(config) as receiver, \
            httpx.Client(base_url=f"{settings['SEGMENT_OPS_SANDBOX_URL']}/__sandbox__/heap",
                         timeout=60, verify=tls_context()) as http:
        http.post("/webhooks", json={"url": receiver.heap_url, "secret": config.heap_secret,
                                     "page_size": 200}).raise_for_status()
        pushed = http.post("/push", json={"wait": True})
        pushed.raise_for_status()
    refused = [d for d in pushed.json()["deliveries"] if d["status"] != "delivered"]
    if refused:
        raise RuntimeError(f"the receiver did not accept {len(refused)} Heap page(s) the sandbox pushed, "
                           f"e.g. {refused[0]}")
    audiences = load_audiences(audiences_file())
    return {"ops": {node(a.key): {"config": {"route": "webhook"}} for a in audiences.audiences if a.enabled}}


defs = build_heap_defs()
