"""Reverse ETL: each SQL model in `sql/reverse_etl/` is an asset that syncs its rows to Segment by diff.

Adding a model is adding a file (header format: `segment_ops.syncs.reverse_etl.model`). For each model file
the factory declares:
- an asset `segment/reverse_etl/<model>` (group `reverse_etl`; owners, description and schedule from
  the header; `code_version` = hash of the file; its own pool, since each model has its own DuckDB
  staging file) downstream of the warehouse tables in its `depends_on:`, with in-step checks
  `rejected_ratio` (WARN) and `delivery_complete`, and for an identify model `landed_in_segment` (a read-back
  of earlier runs' calls, `syncs/verification.py`);
- a schedule from its `schedule:` cron, STOPPED by default: a sync that sends data to a live Segment
  workspace is switched on deliberately, in the UI or `dagster schedule start`.

A model file that cannot be parsed (unknown key, missing key, bad cron, ...) still becomes an asset
under the same key, whose description says what is wrong and whose every run fails with the error
naming the file: the code location always loads, the other models are untouched, and the problem is
visible in the UI where the model would be. Errors only the query can reveal (SQL errors, columns the
header names but the query lacks) fail that model's run the same way.

`reverse_etl_job` runs every model; `reverse_etl_warehouse_sensor` (STOPPED by default) probes the
upstream tables each tick - row count, and max(<probe column>) when the header names one - and
requests a run of each model whose tables changed, with the probe values as run key.
"""

import contextlib
import dataclasses
import hashlib
import json
import logging
import re
from datetime import timedelta
from pathlib import Path

import dagster as dg
from pydantic import Field

from segment_ops.clients.base import VendorAuthError, VendorError
from segment_ops.clients.fullstory import FullstoryPayloadError, FullstoryUserReader, landed_traits
from segment_ops.config import load_settings
from segment_ops.engine import store
from segment_ops.engine.diff import BaselineRefused
from segment_ops.engine.governance import Governance
from segment_ops.engine.guard import PlanHeld
from segment_ops.engine.ledger import Ledger
from segment_ops.engine.run import ConflictingOptions, DeliveryIncomplete
from segment_ops.engine.verification import draw_sample, read_back
from segment_ops.engine.warehouse import CHUNK_ROWS, WarehouseError, dialect_kind, probe_id, probe_tables
from segment_ops.resources import (
    AlertsResource,
    FullstoryResource,
    PreflightResource,
    SegmentPublicApiResource,
    SegmentTrackingResource,
    StagingResource,
    WarehouseResource,
)
from segment_ops.syncs.external import (
    FULLSTORY_GROUP,
    FULLSTORY_USERS_KEY,
    WAREHOUSE_TABLES,
    warehouse_table_key,
    warehouse_table_spec,
)
from segment_ops.syncs.metadata import diff_run_metadata, guarded, markdown_table
from segment_ops.syncs.reverse_etl.model import (
    FULLSTORY_USERS,
    SEGMENT,
    ModelError,
    ModelSpec,
    load_models,
    packaged_models_dir,
)
from segment_ops.syncs.reverse_etl.model import models_dir as configured_models_dir
from segment_ops.syncs.reverse_etl.sync import ModelRun, sync_model
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
    regulated_now,
    tracking_plan_check,
    tracking_plan_check_spec,
    tracking_plan_policy,
)
from segment_ops.syncs.verification import ReadBackTarget, read_back_defs

MODELS_DIR = packaged_models_dir()  # the project's sql/reverse_etl/
GROUP = "reverse_etl"
JOB_NAME = "reverse_etl_job"
LANDED_IN_FULLSTORY = "landed_in_fullstory"
READ_BACK_SAMPLE = 20  # users read back per run of a model with `destination: fullstory_users`
FULLSTORY_JOB_NAME = "fullstory_users_job"  # the models with `destination: fullstory_users`
SENSOR_NAME = "reverse_etl_warehouse_sensor"
log = logging.getLogger("segment_ops.reverse_etl")
# (file, problem) of each broken model already warned about: Dagster builds the definitions many times per
# process (each CLI command, the webserver, every run worker), and a broken file is worth one warning.
_warned: set[tuple[str, str]] = set()


class ReverseEtlConfig(DiffSendConfig):
    dry_run: bool = Field(default=False, description="Diff, plan and validate; show counts and sample "
                                                     "payloads; send nothing and write no snapshot.")
    full_resync: bool = Field(default=False, description="Forget the delivered snapshot: every row counts as "
                                                         "added and is sent again under new messageIds.")
    baseline: bool = Field(default=False,
                           description="Adopt a destination that already holds these rows: record the "
                                       "current result as delivered and send nothing, so later runs send "
                                       "only real changes. Refused when the model has delivered anything "
                                       "already (`segment-ops models baseline MODEL --force` overrides).")
    chunk_rows: int = Field(default=CHUNK_ROWS, description="Rows per chunk streamed from the warehouse.")
    duckdb_fast_path: bool = Field(default=True,
                                   description="Read a DuckDB warehouse by ATTACHing it read-only and a "
                                               "PostgreSQL one (through psycopg) with COPY (false: stream "
                                               "either in chunks, as other warehouses are).")


def model_key(name: str, sends_to: str = SEGMENT) -> dg.AssetKey:
    """A model's asset key: under `segment/` or, for `destination: fullstory_users`, under `fullstory/`."""
    return dg.AssetKey(["fullstory" if sends_to == FULLSTORY_USERS else "segment", "reverse_etl", name])


def build_reverse_etl_defs(models_dir: Path | str | None = None, *,
                           warehouse_url: str | None = None) -> dg.Definitions:
    """Assets, schedules, the job and the change sensor for every model file in `models_dir` (one folder,
    or several separated by os.pathsep; default: REVERSE_ETL_MODELS_DIR, else the project's
    `sql/reverse_etl/`)."""
    settings = load_settings()
    models_dir = models_dir or configured_models_dir(settings)
    url = warehouse_url or settings["WAREHOUSE_URL"]
    kinds = {"segment", "duckdb"} | ({kind} if (kind := dialect_kind(url)) else set())
    assets: list = []
    schedules: list[dg.ScheduleDefinition] = []
    models: list[ModelSpec] = []
    broken: list[ModelError] = []
    for found in load_models(models_dir):
        try:
            schedule = _schedule(found) if isinstance(found, ModelSpec) else None
        except ModelError as exc:
            found = exc
        if isinstance(found, ModelError):
            if (str(found.path), found.problem) not in _warned:
                _warned.add((str(found.path), found.problem))
                log.warning("reverse-ETL model not loaded: %s", found)
            broken.append(found)
            continue
        models.append(found)
        assets.append(_fullstory_model_asset(found, kinds - {"segment"} | {"fullstory"})
                      if found.sends_to == FULLSTORY_USERS
                      else _model_asset(found, kinds))
        schedules += [schedule] if schedule else []
    names = {m.name for m in models}
    for error in broken:  # under a key of their own, after the valid models have theirs
        name = _unique(_safe_name(error.path.stem), names)
        names.add(name)
        assets.append(_broken_model_asset(name, error))
    extra_tables = sorted({t for m in models for t in m.depends_on} - set(WAREHOUSE_TABLES))
    to_fullstory = [model_key(m.name, m.sends_to) for m in models if m.sends_to == FULLSTORY_USERS]
    job = dg.define_asset_job(JOB_NAME, selection=dg.AssetSelection.groups(GROUP),
                              description="Sync every reverse-ETL model in sql/reverse_etl/ to Segment.")
    jobs = [job]
    fullstory_users = []
    if to_fullstory:
        jobs.append(dg.define_asset_job(
            FULLSTORY_JOB_NAME, selection=dg.AssetSelection.assets(*to_fullstory),
            description="Sync every reverse-ETL model with `destination: fullstory_users` to Fullstory's "
                        "users."))
        fullstory_users.append(dg.AssetSpec(
            FULLSTORY_USERS_KEY, deps=to_fullstory, group_name=FULLSTORY_GROUP, kinds={"fullstory"},
            owners=[OWNER], metadata={"docs": dg.MetadataValue.url(
                "https://developer.fullstory.com/server/users/create-user/")},
            description="Fullstory users, upserted through the Server API (`POST /v2/users`, batch imports) "
                        "with the warehouse traits the models send: sessions become searchable by them."))
    syncs = dg.Definitions(
        assets=[*assets, *fullstory_users, *(warehouse_table_spec(t) for t in extra_tables)],
        jobs=jobs,
        schedules=schedules,
        sensors=[_warehouse_sensor(models, jobs)],
    )
    # `landed_in_segment` on the models whose identify calls can be read back from Segment's profiles: not
    # those sending to a destination of their own (`_model_asset` says why in the asset's description).
    identify = [ReadBackTarget(model_key(m.name), m.sync) for m in models
                if m.call == "identify" and m.destination.is_default and m.sends_to == SEGMENT]
    return dg.Definitions.merge(syncs, read_back_defs(GROUP, identify))


def _model_asset(model: ModelSpec, kinds: set[str]) -> dg.AssetsDefinition:
    from segment_ops.preflight import DestinationNotSet

    key = model_key(model.name, model.sends_to)
    # Where it sends: the NAMES of the variables holding the write key and tracking URL (their values are read
    # at run time only, so no secret is in the definitions, the UI or the metadata).
    destination = model.destination
    sends_to = ("" if destination.is_default else
                f"\n\nSends to its own Segment destination: write key `{model.write_key_env}`, tracking URL "
                f"`{model.tracking_url_env}` (environment variables).")
    if not destination.is_default and model.call == "identify":
        sends_to += (" Its calls are not read back (no `landed_in_segment` check): that destination may feed "
                     "another Unify space than SEGMENT_PROFILES_SPACE_ID's, where its profiles would be "
                     "missing for nothing; see that source's debugger or Delivery Overview.")

    @dg.asset(
        key=key,
        group_name=GROUP,
        kinds=kinds,
        owners=list(model.owners),
        description=f"{model.description}\n\nModel file `{model.path.name}`: {model.call} calls, "
                    f"{model.mode} mode, one row per `{model.key}`.{sends_to}",
        code_version=model.code_version,
        pool=f"staging_{model.sync}",
        deps=[warehouse_table_key(t) for t in model.depends_on],
        metadata={**_model_metadata(model), "write_key_env": model.write_key_env,
                  "tracking_url_env": model.tracking_url_env},
        check_specs=[*_model_check_specs(model, key, "null or repeated keys, unsendable values"),
                     tracking_plan_check_spec(key)],
    )
    def reverse_etl_model(context: dg.AssetExecutionContext, config: ReverseEtlConfig,
                          warehouse: WarehouseResource, segment: SegmentTrackingResource,
                          staging: StagingResource, preflight: PreflightResource,
                          segment_public_api: SegmentPublicApiResource,
                          alerts: AlertsResource) -> dg.MaterializeResult:
        try:  # a dry run or a baseline sends nothing: it needs no destination's settings
            if not (config.dry_run or config.baseline):
                segment = segment.for_destination(destination, [model.name])
        except DestinationNotSet as exc:  # names the variable, never a value
            raise SyncFailure(description=f"{model.path.name}: {exc}",
                             metadata={"model_file": dg.MetadataValue.path(str(model.path)),
                                       "unset": ", ".join(exc.names)}) from None
        if not destination.is_default:
            context.log.info(f"{model.name} sends with the write key in {model.write_key_env} to the "
                             f"tracking URL in {model.tracking_url_env}")
        # A baseline sends nothing, as a dry run: the gate does not stand in its way.
        preflight_gate(context, preflight, segment, skip=config.skip_preflight,
                       dry_run=config.dry_run or config.baseline, destination=destination,
                       used_by=[model.name])
        return _sync(context, model, config, warehouse, segment, staging, segment_public_api, alerts)

    return reverse_etl_model


def _model_metadata(model: ModelSpec) -> dict:
    """What every model asset's definition shows, whatever its destination."""
    return {"model_file": dg.MetadataValue.path(str(model.path)), "call": model.call, "mode": model.mode,
            "key": model.key, "schedule": model.schedule or "none"}


def _model_check_specs(model: ModelSpec, key: dg.AssetKey, rejected_by: str) -> list[dg.AssetCheckSpec]:
    """The checks every model asset has: `delivery_complete` and `rejected_ratio` (`rejected_by`: what
    rejects a row)."""
    return [dg.AssetCheckSpec("delivery_complete", asset=key,
                              description="Nothing planned for this model is left pending after the run."),
            dg.AssetCheckSpec("rejected_ratio", asset=key,
                              description=f"At most {model.max_rejected_ratio:.0%} of the query's rows were "
                                          f"rejected ({rejected_by}).")]


def _fullstory_model_asset(model: ModelSpec, kinds: set[str]) -> dg.AssetsDefinition:
    """A model whose `destination:` is fullstory_users: its identify calls upserted as Fullstory users, in the
    `fullstory` group, downstream to `fullstory/users`, with a read-back of Fullstory's users (no Segment
    preflight or tracking plan)."""
    key = model_key(model.name, model.sends_to)

    @dg.asset(
        key=key,
        group_name=FULLSTORY_GROUP,
        kinds=kinds,
        owners=list(model.owners),
        description=f"{model.description}\n\nModel file `{model.path.name}`: identify calls upserted as "
                    f"Fullstory users (uid = `{model.user_id}`), {model.mode} mode, one row per "
                    f"`{model.key}`; "
                    "exactly once by the ledger, Fullstory's rate limits honoured (429 Retry-After).",
        code_version=model.code_version,
        pool=f"staging_{model.sync}",
        deps=[warehouse_table_key(t) for t in model.depends_on],
        metadata={**_model_metadata(model), "destination": FULLSTORY_USERS},
        check_specs=[
            *_model_check_specs(model, key, "by the diff or by Fullstory"),
            dg.AssetCheckSpec(LANDED_IN_FULLSTORY, asset=key, description=(
                f"Up to {READ_BACK_SAMPLE} of the users delivered (the oldest run not read back yet) are "
                "read back through `GET /v2/users?uid=`: each must exist with the traits sent (a trait sent "
                "as null is not compared: Fullstory keeps the old value). Warns on a missing user; a "
                "differing trait is listed.")),
        ],
    )
    def fullstory_model(context: dg.AssetExecutionContext, config: ReverseEtlConfig,
                        warehouse: WarehouseResource, fullstory: FullstoryResource,
                        staging: StagingResource, alerts: AlertsResource):
        result = _sync(context, model, config, warehouse, fullstory, staging, None, alerts)
        yield dg.MaterializeResult(metadata=result.metadata, check_results=[
            *result.check_results, _landed_in_fullstory(context, model, staging, fullstory,
                                                         skip=config.dry_run or config.baseline)])

    return fullstory_model


def _landed_in_fullstory(context: dg.AssetExecutionContext, model: ModelSpec, staging: StagingResource,
                         fullstory: FullstoryResource, *, skip: bool) -> dg.AssetCheckResult:
    """Read back a sample of the users delivered (`engine.verification` with a Fullstory reader) and record
    the proof in the ledger; never passed on a read-back that read nothing it should have."""
    if skip:
        return dg.AssetCheckResult(check_name=LANDED_IN_FULLSTORY, passed=True,
                                   description="dry run or baseline: nothing was delivered")
    with store.staging(staging.staging_db(model.sync)) as con:
        sample = draw_sample(Ledger(con), model.sync, sample_size=READ_BACK_SAMPLE, delay=timedelta(0))
    if not sample.messages:
        return dg.AssetCheckResult(check_name=LANDED_IN_FULLSTORY, passed=True,
                                   description="no delivered user is waiting to be read back")
    # Compared with what the upsert sent (`landed_traits`): a trait sent as null was left out of it (Fullstory
    # keeps the old value), so it is not compared either.
    sample = dataclasses.replace(sample, messages=[
        dataclasses.replace(m, payload=_as_landed(m.payload)) for m in sample.messages])
    try:
        with fullstory.get_api() as client:
            report, results = read_back(model.sync, sample, FullstoryUserReader(client))
    except VendorError as exc:
        return dg.AssetCheckResult(check_name=LANDED_IN_FULLSTORY, passed=False,
                                   severity=dg.AssetCheckSeverity.WARN,
                                   description=f"not read back: Fullstory did not answer ({exc}); the same "
                                               "users are read back by the next run")
    with store.staging(staging.staging_db(model.sync)) as con:
        Ledger(con).record_read_backs(model.sync, results)
    context.log.info(f"read back {report.sample_size} Fullstory user(s): {report.profiles_found} found, "
                     f"{report.verified} with every trait as sent")
    mismatches = [(m.record_key, m.trait, _json(m.sent), _json(m.found)) for m in report.mismatches]
    return dg.AssetCheckResult(
        check_name=LANDED_IN_FULLSTORY, passed=report.profiles_missing == 0,
        severity=dg.AssetCheckSeverity.WARN,
        description=None if not report.profiles_missing else
        f"{report.profiles_missing} of {report.sample_size} users delivered are not in Fullstory",
        metadata={"read_back": report.sample_size, "found": report.profiles_found,
                  "missing": report.profiles_missing, "verified": report.verified,
                  "traits_compared": report.traits_compared, "traits_matching": report.traits_matching,
                  "differing_traits": dg.MetadataValue.md(markdown_table(
                      ["key", "trait", "sent", "found"], mismatches) if mismatches else "none")})


def _as_landed(payload: str) -> str:
    call = json.loads(payload)
    with contextlib.suppress(FullstoryPayloadError):  # delivered, so the upsert took it: compared as it is
        call["traits"] = landed_traits(call)
    return json.dumps(call)


def _json(value: object) -> str:
    return json.dumps(value, default=str)[:200]


def _sync(context: dg.AssetExecutionContext, model: ModelSpec, config: ReverseEtlConfig,
          warehouse: WarehouseResource, segment: SegmentTrackingResource | FullstoryResource,
          staging: StagingResource, segment_public_api: SegmentPublicApiResource | None,
          alerts: AlertsResource) -> dg.MaterializeResult:
    """Run the model against `segment` (or, for `destination: fullstory_users`, Fullstory's users API: then
    regulations and the PII policy are honoured, and there is no Segment tracking plan to check)."""
    limits = guard_limits()
    if isinstance(segment, SegmentTrackingResource) and segment_public_api is not None:
        governance = governance_for(context, staging, segment, segment_public_api,
                                    policy=tracking_plan_policy(model.tracking_plan),
                                    dry_run=config.dry_run or config.baseline, pii=model.pii)
    else:
        governance = Governance(regulated=regulated_now(staging), pii=model.pii)
    with store.staging(staging.staging_db(model.sync)) as con:
        try:
            run = sync_model(con, model, warehouse.url, segment.get_client, run_id=context.run.run_id,
                             dry_run=config.dry_run, full_resync=config.full_resync, baseline=config.baseline,
                             max_in_flight=segment.max_in_flight, chunk_rows=config.chunk_rows,
                             fast_path=config.duckdb_fast_path, progress_log=context.log.info,
                             guard=limits, approve_plan=config.approve_plan, governance=governance)
        except ConflictingOptions as exc:  # the engine's check: a baseline with a dry run or a full resync
            raise SyncFailure(description=f"{model.path.name}: {exc}") from None
        except BaselineRefused as exc:
            raise SyncFailure(description=f"{model.path.name}: {exc} (`segment-ops models baseline "
                                         f"{model.name} --force`); nothing was recorded") from None
        except ModelError as exc:
            raise SyncFailure(description=str(exc),
                             metadata={"model_file": dg.MetadataValue.path(str(exc.path))}) from None
        except DeliveryIncomplete as exc:
            raise SyncFailure(description=f"{model.path.name}: {exc}",
                             metadata=_metadata(context, exc.report)) from None
        except PlanHeld as exc:
            raise plan_held_failure(exc, _metadata(context, exc.report), label=model.path.name) from None
        except VendorAuthError as exc:
            refused = ("Fullstory refused FULLSTORY_API_KEY" if model.sends_to == FULLSTORY_USERS
                       else "Segment refused the write key")
            raise SyncFailure(description=f"{model.path.name}: {refused}: {exc}") from None
    plan = run.plan
    alert_violations(context, alerts, run.governed)
    if run.approved:
        context.log.info(f"plan {run.verdict.fingerprint} approved: {run.approved:,} held messages released")
    if run.baseline:
        context.log.info(f"baseline of {model.path.name}: {plan.baselined:,} rows recorded as delivered, "
                         f"nothing sent ({plan.rejected:,} rejected, {plan.unchanged:,} unchanged)")
    ratio = plan.rejected / plan.rows_read if plan.rows_read else 0.0
    return dg.MaterializeResult(
        metadata=_metadata(context, run),
        check_results=[
            dg.AssetCheckResult(
                check_name="delivery_complete",
                passed=run.dry_run or run.ledger.pending == 0,
                metadata={"pending": run.ledger.pending,
                          "delivered_total": run.ledger.delivered + run.ledger.verified,
                          "verified_total": run.ledger.verified},
            ),
            dg.AssetCheckResult(
                check_name="rejected_ratio",
                passed=ratio <= model.max_rejected_ratio,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"rejected": plan.rejected, "rows_read": plan.rows_read, "ratio": round(ratio, 4),
                          "max_ratio": model.max_rejected_ratio},
            ),
            *([tracking_plan_check(run.governed)] if model.sends_to == SEGMENT else []),
        ],
    )


def _metadata(context: dg.AssetExecutionContext, run: ModelRun) -> dict:
    """The run's metadata; a failure to build it is logged, never raised (the run did its work)."""
    plan = run.plan
    counts = ({"rows_read": plan.rows_read, "rejected": plan.rejected, "planned": plan.planned}
              if plan is not None else {})
    return guarded(lambda: _run_metadata(run), what=f"model {run.model.name}", fallback=counts,
                   logger=context.log)


def _run_metadata(run: ModelRun) -> dict:
    metadata: dict = {
        "model_file": dg.MetadataValue.path(str(run.model.path)),
        "warehouse_dialect": run.dialect,
        "read_method": run.staged.method,
        "full_resync": run.full_resync,
        **diff_run_metadata(run.plan, dry_run=run.dry_run, delivery=run.delivery,
                            pending=run.ledger.pending if run.ledger else 0, advanced=run.advanced),
        **plan_metadata(run.verdict),
        **governance_metadata(run.governed),
        "stage_seconds": round(run.staged.seconds, 3),
        "total_seconds": round(run.seconds, 3),
    }
    if run.model.mode == "append":
        metadata["changed_not_resent"] = run.plan.changed_not_sent
    if run.baseline:
        metadata |= {"baseline": True, "baselined": run.plan.baselined}
    return metadata


def _broken_model_asset(name: str, error: ModelError) -> dg.AssetsDefinition:
    """The asset of a model file that does not parse: visible in the UI, and every run fails with the
    reason."""
    digest = hashlib.sha256(str(error).encode()).hexdigest()[:16]

    @dg.asset(
        key=model_key(name),
        group_name=GROUP,
        kinds={"segment", "duckdb"},
        owners=[OWNER],
        description=f"BROKEN reverse-ETL model: {error}\n\nFix the file; until then every run of this asset "
                    "fails and the other models are unaffected.",
        code_version=f"broken-{digest}",
        pool=f"staging_reverse_etl_{name}",
        metadata={"model_file": dg.MetadataValue.path(str(error.path)), "error": error.problem},
    )
    def broken_reverse_etl_model(context: dg.AssetExecutionContext) -> None:
        raise SyncFailure(description=str(error),
                         metadata={"model_file": dg.MetadataValue.path(str(error.path))})

    return broken_reverse_etl_model


def _schedule(model: ModelSpec) -> dg.ScheduleDefinition | None:
    if not model.schedule:
        return None
    try:
        return dg.ScheduleDefinition(
            name=f"reverse_etl_{model.name}_schedule",
            cron_schedule=model.schedule,
            execution_timezone="UTC",
            target=dg.AssetSelection.assets(model_key(model.name, model.sends_to)),
            default_status=dg.DefaultScheduleStatus.STOPPED,
            description=f"Sync the {model.name} model ({model.schedule}, UTC).",
        )
    except dg.DagsterInvalidDefinitionError as exc:
        raise ModelError(model.path, f"schedule {model.schedule!r} is not a valid cron expression "
                                     f"({exc})") from None


def _warehouse_sensor(models: list[ModelSpec], jobs: list) -> dg.SensorDefinition:
    watched = [m for m in models if m.depends_on]
    probes = sorted({(t, m.probe) for m in watched for t in m.depends_on}, key=lambda p: (p[0], p[1] or ""))

    @dg.sensor(
        name=SENSOR_NAME,
        jobs=jobs,
        minimum_interval_seconds=120,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description="Probes the warehouse tables the reverse-ETL models read (row count, max of the header's "
                    "`probe:` column) and runs the models whose tables changed since the last tick.",
    )
    def reverse_etl_warehouse_sensor(context: dg.SensorEvaluationContext,
                                     warehouse: WarehouseResource) -> dg.SensorResult:
        if not probes:
            return dg.SensorResult(
                skip_reason=dg.SkipReason("no reverse-ETL model declares `depends_on:` tables"))
        try:
            markers = probe_tables(warehouse.url, probes)
        except WarehouseError as exc:
            return dg.SensorResult(skip_reason=dg.SkipReason(str(exc)), cursor=context.cursor)
        previous: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
        requests, failing = [], sorted(p for p, marker in markers.items() if marker.startswith("error:"))
        for model in watched:
            mine = {probe_id(t, model.probe): markers[probe_id(t, model.probe)] for t in model.depends_on}
            probe_failed = any(v.startswith("error:") for v in mine.values())
            if probe_failed or all(previous.get(p) == v for p, v in mine.items()):
                continue
            digest = hashlib.sha256(json.dumps(mine, sort_keys=True).encode()).hexdigest()[:16]
            requests.append(dg.RunRequest(run_key=f"{model.name}:{digest}",
                                          job_name=FULLSTORY_JOB_NAME if model.sends_to == FULLSTORY_USERS
                                          else JOB_NAME,
                                          asset_selection=[model_key(model.name, model.sends_to)],
                                          tags={"segment_ops/reverse_etl_model": model.name}))
        for name in failing:
            context.log.warning(f"probe {name} failed: {markers[name]}")
        skip = None
        if not requests:
            skip = dg.SkipReason("no upstream warehouse table changed since the last probe"
                                 + (f"; failing probes: {', '.join(failing)}" if failing else ""))
        return dg.SensorResult(run_requests=requests, skip_reason=skip,
                               cursor=json.dumps(markers, sort_keys=True))

    return reverse_etl_warehouse_sensor


def _safe_name(stem: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_]", "_", stem)
    return name if re.match(r"^[A-Za-z]", name) else f"model_{name}"


def _unique(name: str, taken: set[str]) -> str:
    candidate, n = name, 2
    while candidate in taken:
        candidate, n = f"{name}_{n}", n + 1
    return candidate

