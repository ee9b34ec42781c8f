"""Replay: send a JSONL or Parquet file of Segment calls through the delivery engine.

The "backfill and replay historical events" use case. Launch it from the UI with a file path in the
run config, or drop files into `$SEGMENT_OPS_HOME/inbox/replay/`: a sensor starts one run per file.
"""


import json
import time
from pathlib import Path

import dagster as dg
from pydantic import Field

from segment_ops.engine import store
from segment_ops.engine.delivery import DeliveryError
from segment_ops.engine.ledger import Ledger
from segment_ops.resources import (
    AlertsResource,
    PreflightResource,
    SegmentPublicApiResource,
    SegmentTrackingResource,
    StagingResource,
)
from segment_ops.syncs.metadata import markdown_table, payload_samples
from segment_ops.syncs.replay.reader import (
    ACCEPTED_SUFFIXES,
    REPLAY_SYNC,
    ReplayInputError,
    ReplayPlan,
    replay_file,
)
from segment_ops.syncs.shared import (
    OWNER,
    SendConfig,
    SyncFailure,
    alert_violations,
    governance_for,
    governance_metadata,
    preflight_gate,
    tracking_plan_check,
    tracking_plan_check_spec,
    tracking_plan_policy,
)

REPLAY_KEY = dg.AssetKey(["segment", "replayed_events"])
INBOX = ("inbox", "replay")
# A file must sit unchanged this long before the sensor takes it, so half-copied files are not read.
SETTLE_SECONDS = 2.0
MAX_REJECTED_RATIO = 0.01


class ReplayConfig(SendConfig):
    path: str = Field(description="JSONL/NDJSON or Parquet file of Segment calls (one call per line/row).")
    force: bool = Field(default=False, description="Send again what the ledger says was delivered.")
    dry_run: bool = Field(default=False, description="Validate and show samples; send nothing.")


@dg.asset(
    key=REPLAY_KEY,
    group_name="replay",
    kinds={"segment", "duckdb"},
    owners=[OWNER],
    pool="staging_replay",
    code_version="1",
    check_specs=[
        dg.AssetCheckSpec("delivery_complete", asset=REPLAY_KEY,
                          description="Nothing planned for the replay sync is left pending."),
        dg.AssetCheckSpec("rejected_ratio", asset=REPLAY_KEY,
                          description=f"At most {MAX_REJECTED_RATIO:.0%} of the file's lines were rejected."),
        tracking_plan_check_spec(REPLAY_KEY),
    ],
)
def replayed_events(
    context: dg.AssetExecutionContext, config: ReplayConfig, segment: SegmentTrackingResource,
    staging: StagingResource, preflight: PreflightResource, segment_public_api: SegmentPublicApiResource,
    alerts: AlertsResource,
) -> dg.MaterializeResult:
    """Historical Segment calls replayed from a file: validated, given deterministic messageIds, recorded
    in the ledger and delivered exactly once (re-running the same file sends nothing new).

    Sent to the [Segment HTTP Tracking API](https://segment.com/docs/connections/sources/catalog/libraries/server/http-api/)
    `/v1/batch`. Runs start from `replay_inbox_sensor` (a file dropped into the inbox) or by hand with a
    path; the preflight gate runs first, as for every send (run config `skip_preflight` overrides it)."""
    preflight_gate(context, preflight, segment, skip=config.skip_preflight, dry_run=config.dry_run)
    path = Path(config.path).expanduser()
    run_id = context.run.run_id
    governance = governance_for(context, staging, segment, segment_public_api, policy=tracking_plan_policy(),
                                dry_run=config.dry_run)
    with store.staging(staging.staging_db(REPLAY_SYNC), memory_limit=store.STREAMING_MEMORY_LIMIT) as con:
        ledger = Ledger(con)
        try:
            result = replay_file(ledger, path, segment.get_client, run_id=run_id, force=config.force,
                                 dry_run=config.dry_run, max_in_flight=segment.max_in_flight,
                                 governance=governance)
        except ReplayInputError as exc:
            raise SyncFailure(description=str(exc), metadata={"path": str(path)}) from None
        except DeliveryError as exc:
            counts = ledger.counts(REPLAY_SYNC)
            raise SyncFailure(description=str(exc), metadata={"pending": counts.pending,
                                                             "delivered_total": counts.delivered}) from None
        counts = ledger.counts(REPLAY_SYNC)
        rejected_rows = ledger.rejected_since(REPLAY_SYNC, run_id)
    plan = result.plan
    metadata = _plan_metadata(plan, config.dry_run) | {"path": dg.MetadataValue.path(str(path))}
    if result.delivery is not None:
        metadata |= result.delivery.as_metadata() | governance_metadata(result.governed)
    alert_violations(context, alerts, result.governed)
    if plan.changed_samples:
        metadata["changed_sample"] = dg.MetadataValue.md(
            markdown_table(["line", "why it was not sent as it reads now"],
                           [(c.source, c.reason) for c in plan.changed_samples]))
    if rejected_rows:
        metadata["rejected_sample"] = dg.MetadataValue.md(
            markdown_table(["record key", "source", "reason"], rejected_rows))
    ratio = plan.rejected / plan.lines if plan.lines else 0.0
    return dg.MaterializeResult(
        metadata=metadata,
        check_results=[
            dg.AssetCheckResult(
                check_name="delivery_complete",
                passed=config.dry_run or counts.pending == 0,
                metadata={"pending": counts.pending, "delivered_total": counts.delivered},
            ),
            dg.AssetCheckResult(
                check_name="rejected_ratio",
                passed=ratio <= MAX_REJECTED_RATIO,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"rejected": plan.rejected, "lines": plan.lines, "ratio": round(ratio, 4)},
            ),
            tracking_plan_check(result.governed),
        ],
    )


replay_job = dg.define_asset_job("replay_job", selection=[REPLAY_KEY],
                                 description="Replay one file of Segment calls (path in the run config).")


@dg.sensor(job=replay_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Starts a replay run for each new file dropped into $SEGMENT_OPS_HOME/inbox/replay/.")
def replay_inbox_sensor(context: dg.SensorEvaluationContext, staging: StagingResource) -> dg.SensorResult:
    inbox = staging.path(*INBOX, ".keep").parent
    seen: set[str] = set(json.loads(context.cursor)) if context.cursor else set()
    present: set[str] = set()
    requests, ignored = [], []
    for file in sorted(p for p in inbox.iterdir() if p.is_file() and not p.name.startswith(".")):
        if file.suffix.lower() not in ACCEPTED_SUFFIXES:
            ignored.append(file.name)
            continue
        stat = file.stat()
        if time.time() - stat.st_mtime < SETTLE_SECONDS:
            continue  # still being written; look again next tick
        key = f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}"
        present.add(key)
        if key in seen:
            continue
        requests.append(dg.RunRequest(
            run_key=key,
            run_config=dg.RunConfig(ops={"segment__replayed_events": ReplayConfig(path=str(file))}),
            tags={"segment_ops/replay_file": file.name},
        ))
    skip = None
    if not requests:
        skip = dg.SkipReason(
            f"no new files in {inbox}"
            + (f"; ignored (not .jsonl/.ndjson/.parquet): {', '.join(ignored)}" if ignored else ""))
    # Remember only files still in the inbox: the cursor stays small, and a removed file is forgotten.
    return dg.SensorResult(run_requests=requests, skip_reason=skip, cursor=json.dumps(sorted(present)))


def _plan_metadata(plan: ReplayPlan, dry_run: bool) -> dict:
    return {
        "dry_run": dry_run,
        "lines_read": plan.lines,
        "planned": plan.planned,
        "planned_by_earlier_runs": plan.already_known,
        "duplicates_in_input": plan.duplicates_in_input,
        "rejected_lines": plan.rejected,
        "changed_since_planned": plan.changed,
        "sample_payloads": payload_samples(plan.samples),
        # planned_by_earlier_runs split by where those messages stood (`segment-ops demo` reads these)
        "already_delivered": plan.already_delivered,
        "pending_from_earlier": plan.pending_earlier,
        "rejected_earlier": plan.rejected_earlier,
        "changed_skipped": plan.changed_skipped,
    }


defs = dg.Definitions(assets=[replayed_events], jobs=[replay_job], sensors=[replay_inbox_sensor])
