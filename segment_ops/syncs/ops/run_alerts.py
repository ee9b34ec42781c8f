"""Run alerts: one message per failed run (a sensor, or a hook inside the run), one when the work passes.

- `alert_on_run_failure` (RUNNING by default) watches every job of this code location and posts a failure
  alert (`segment_ops.engine.alerts.failure_message`) to ALERT_WEBHOOK_URL for each failed run. The alert
  names the sync (the asset groups for backfills and UI launches, whose job is `__ASSET_JOB`), the partition
  or the partition range, the failed step and the first line of the user-code error (for a run that failed
  before any step, e.g. a resource that could not start, the run failure's own error).
- `alert_on_recovery` (RUNNING by default) posts "recovered" when a run succeeds that covers the *same work*
  as an earlier failed run that was alerted and has not recovered yet. Work = the set of asset keys the run
  targets (its asset selection, else its planned materializations) and its partition set (a single
  partition tag is a set of one; a backfill's range tags expand through the asset's partitions definition).
  A success covers a failure when it includes every asset and every partition of it, whatever the job: a
  backfill or a UI re-run recovers a failed scheduled or sensor run, a run of another day does not, and a
  canceled run in between changes nothing (fail -> cancel -> success recovers).
- `with_failure_alerts` (applied by `definitions.py`) puts `failure_alert_hook` on every asset, check and op
  job, so a run no sensor sees (`dagster asset materialize`, `dagster job execute`, no daemon) alerts too:
  the run's first failed step posts the same message and tags the run as the sensor does, so the sensor skips
  it; if that post fails, the run stays untagged and the sensor sends the alert after the run.

Both sensors return None, so one tick handles every finished run since the last one (a returned SkipReason
would end the tick after the first run). Dagster hands a run-status sensor at most 5 runs per tick and moves
its cursor past each run the function returned or raised for; a tick that raises *out of the evaluation* (a
`dg.DagsterError`) keeps the cursor where the previous tick left it.

No storm, no double send: each run alerted on is tagged (`segment_ops/alert=failure_sent:<its run id>`,
recovered failures `recovered:<id>`, recoveries `recovery_sent:<id>`). The value names the run itself, so a
re-execution, which inherits its parent's tags, is still alerted on. A repeated evaluation skips tagged runs.

Bounded: one post waits at most `AlertsResource.timeout_seconds` (4 s) per attempt and retries 429/5xx for at
most `retry_max_seconds` (8 s); a tick stops posting once TICK_BUDGET_SECONDS (40 s) are used, well inside
Dagster's 60 s evaluation limit. What happens to an alert that could not be sent:
- the webhook is unavailable (5xx/429/timeouts after the retry budget) or the tick's budget is used up: the
  evaluation raises `AlertsDeferred`; the tick is shown failed and its cursor is *not* moved, so the next tick
  (30 s later) handles the same runs again, skipping the ones already tagged: the alert is retried until sent;
- the webhook refuses the message (400/403/404/410: a wrong URL, an archived channel): retrying cannot help,
  so Dagster records the error on the tick and moves the cursor past that run: that one alert is dropped
  (the failed run is still in the run list).
"""

from __future__ import annotations

import logging
import time
import warnings
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import dagster as dg

from segment_ops.clients.base import VendorUnavailable
from segment_ops.engine.alerts import (
    RunFailure,
    RunRecovery,
    failure_message,
    recovery_message,
    redact_secrets,
)
from segment_ops.resources import AlertsResource

log = logging.getLogger("segment_ops.alerts")
ALERT_TAG = "segment_ops/alert"
FAILURE_SENT = "failure_sent"
RECOVERY_SENT = "recovery_sent"
RECOVERED = "recovered"
PARTITION_TAG = "dagster/partition"
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
ASSET_JOB_PREFIX = "__ASSET_JOB"
# How far back the recovery sensor looks for failed runs the success may recover.
PREVIOUS_RUNS_LIMIT = 50
# Dagster cuts a sensor evaluation off after 60 s; stop posting well before.
TICK_BUDGET_SECONDS = 40.0
# Dagster error classes that wrap the user-code exception ("Error occurred while executing ...").
_WRAPPER_PREFIX = "Dagster"

# When the current tick started, per tick: every run of one tick shares its evaluation context's logger.
_tick_started: weakref.WeakKeyDictionary[object, list] = weakref.WeakKeyDictionary()


class AlertsDeferred(dg.DagsterError):
    """An alert could not be sent now (webhook unavailable, or the tick's time budget is used up): the tick
    fails without moving its cursor, so the next tick handles the same runs again."""


@dataclass(frozen=True)
class Work:
    """What a run does: the asset keys it targets and its partition set (None: unpartitioned)."""

    job_name: str
    keys: frozenset[dg.AssetKey]
    partitions: frozenset[str] | None

    def covers(self, other: Work) -> bool:
        """True when this run did everything `other` did (every asset, every partition)."""
        if not self.keys and not other.keys:  # op jobs: the same job
            return self.job_name == other.job_name and _partitions_cover(self.partitions, other.partitions)
        return (bool(other.keys) and other.keys <= self.keys
                and _partitions_cover(self.partitions, other.partitions))


@dg.run_failure_sensor(
    name="alert_on_run_failure",
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Watches every job of this code location and posts one alert per failed run to "
                "ALERT_WEBHOOK_URL (sync and asset groups, partition or range, failed step, first line of "
                "the error, counts, link).",
)
def alert_on_run_failure(context: dg.RunFailureSensorContext, alerts: AlertsResource) -> None:
    run = context.dagster_run
    if _already_alerted(context.instance, run.run_id, FAILURE_SENT, RECOVERED):
        context.log.info(f"run {run.run_id} was already alerted on")
        return
    failure = describe_failure(context, alerts)
    _post(context, alerts, failure_message(failure))
    context.instance.add_run_tags(run.run_id, {ALERT_TAG: f"{FAILURE_SENT}:{run.run_id}"})
    context.log.info(f"alert sent for failed run {run.run_id} of {run.job_name}")


@dg.run_status_sensor(
    name="alert_on_recovery",
    run_status=dg.DagsterRunStatus.SUCCESS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Watches every successful run of this code location and posts a recovery message to "
                "ALERT_WEBHOOK_URL when it covers the assets and partitions of an alerted failed run.",
)
def alert_on_recovery(context: dg.RunStatusSensorContext, alerts: AlertsResource) -> None:
    run = context.dagster_run
    if _already_alerted(context.instance, run.run_id, RECOVERY_SENT):
        context.log.info(f"run {run.run_id} was already announced as a recovery")
        return
    graph = _asset_graph(context.repository_def)
    failed = recovered_failures(context.instance, run, graph)
    if not failed:
        return
    work = work_of(context.instance, run, graph)
    groups = _groups(graph, work.keys)
    recovery = RunRecovery(
        run_id=run.run_id, run_url=alerts.run_url(run.run_id), job_name=sync_name(run, groups),
        failed_run_id=failed[0].run_id, failed_run_url=alerts.run_url(failed[0].run_id),
        groups=groups, partition=partition_label(run))
    _post(context, alerts, recovery_message(recovery))
    for other in failed:
        context.instance.add_run_tags(other.run_id, {ALERT_TAG: f"{RECOVERED}:{other.run_id}"})
    context.instance.add_run_tags(run.run_id, {ALERT_TAG: f"{RECOVERY_SENT}:{run.run_id}"})
    context.log.info(f"recovery sent for run {run.run_id}: recovers {', '.join(f.run_id for f in failed)}")


def with_failure_alerts(defs: dg.Definitions) -> dg.Definitions:
    """`defs` with `failure_alert_hook` on every asset, asset check and op job, so every run of the code
    location alerts from within, whatever launched it: the implicit asset job of `dagster asset materialize`
    and every `define_asset_job` job take the hooks of their assets (`AssetsDefinition.with_hooks`)."""
    groups = {key: group for item in defs.assets or [] if isinstance(item, dg.AssetsDefinition)
              for key, group in item.group_names_by_key.items()}
    hook = failure_alert_hook(groups)

    def hooked(item: object) -> object:
        if isinstance(item, dg.AssetChecksDefinition):
            # `with_hooks` returns a plain AssetsDefinition, which the repository converts back with a
            # BetaWarning (its `execution_type` parameter) at every load: convert it here, quietly.
            try:  # `get_attributes_dict` is not public API: if a Dagster release changes it, load unhooked
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", dg.BetaWarning)
                    return dg.AssetChecksDefinition(**item.with_hooks({hook}).get_attributes_dict())
            except Exception as exc:  # noqa: BLE001 - the sensor still alerts on such a check's runs
                log.warning("asset check %s loads without the in-run failure alert (%s: %s); the sensor "
                            "alert_on_run_failure still alerts on its failed runs", item.node_def.name,
                            type(exc).__name__, exc)
                return item
        executable = isinstance(item, dg.AssetsDefinition) and item.is_executable
        return item.with_hooks({hook}) if executable or isinstance(item, dg.JobDefinition) else item

    return dg.Definitions(
        assets=[hooked(item) for item in defs.assets or []],
        asset_checks=[hooked(item) for item in defs.asset_checks or []],
        jobs=[hooked(item) for item in defs.jobs or []],
        schedules=defs.schedules, sensors=defs.sensors, resources=defs.resources, executor=defs.executor,
        loggers=defs.loggers, metadata=defs.metadata, component_tree=defs.component_tree)


def failure_alert_hook(groups_by_key: Mapping[dg.AssetKey, str]) -> dg.HookDefinition:
    """The in-run side of `alert_on_run_failure`: the run's first failed step posts the failure alert and
    tags the run the way the sensor does, so the sensor skips it. Other failed steps of the run post
    nothing. A post that fails leaves the run untagged: the sensor sends the alert once the run has ended."""

    @dg.failure_hook(name="alert_on_step_failure", required_resource_keys={"alerts"})
    def alert_on_step_failure(context: dg.HookContext) -> None:
        instance, run_id = context.instance, context.run_id
        run = instance.get_run_by_id(run_id)
        if run is None or _already_alerted(instance, run_id, FAILURE_SENT, RECOVERED):
            return
        # This step's failure is stored before its hooks run; the oldest failure of the run posts the alert.
        first = [record.event_log_entry.dagster_event for record in instance.get_records_for_run(
            run_id, of_type=dg.DagsterEventType.STEP_FAILURE, limit=1).records]
        if first and first[0].step_key != context.step_key:
            context.log.info(f"run {run_id} is alerted on by its first failed step, {first[0].step_key}")
            return
        keys = work_of(instance, run, None).keys
        groups = sorted({groups_by_key[key] for key in keys if key in groups_by_key})
        alerts: AlertsResource = context.resources.alerts
        try:
            with alerts.get_client() as client:
                client.post_message(failure_message(failure_of(run, alerts, groups, first)))
        except Exception as exc:  # never fail the hook over an alert: the sensor is the fallback
            context.log.warning(f"failure alert for run {run_id} not sent from the run "
                                f"({type(exc).__name__}: {redact_secrets(str(exc))}); the sensor "
                                f"alert_on_run_failure sends it once the run has ended")
            return
        try:
            instance.add_run_tags(run_id, {ALERT_TAG: f"{FAILURE_SENT}:{run_id}"})
        except Exception as exc:  # noqa: BLE001 - sent, untagged: the sensor may send it once more
            context.log.warning(f"failure alert for run {run_id} sent, but the run could not be tagged "
                                f"({type(exc).__name__}); the sensor may send it again")
            return
        context.log.info(f"alert sent for failed run {run_id} of {run.job_name}")

    return alert_on_step_failure


def describe_failure(context: dg.RunFailureSensorContext, alerts: AlertsResource) -> RunFailure:
    """The failed run as `alerts.RunFailure`, as the sensor sees it once the run has ended."""
    graph = _asset_graph(context.repository_def)
    groups = _groups(graph, work_of(context.instance, context.dagster_run, graph).keys)
    return failure_of(context.dagster_run, alerts, groups, context.get_step_failure_events(),
                      context.failure_event)


def failure_of(run: dg.DagsterRun, alerts: AlertsResource, groups: Sequence[str],
               steps: Sequence[dg.DagsterEvent], failure_event: dg.DagsterEvent | None = None) -> RunFailure:
    """`alerts.RunFailure` of `run`: its first failed step (`steps`, oldest first), that error's first line
    and its counts; for a run that failed before any step, the run failure's own error
    (`JobFailureData.error` of `failure_event`)."""
    step, error, counts = None, (failure_event.message if failure_event else None) or "the run failed", {}
    if steps:
        event = steps[0]
        data = event.step_failure_data
        step = event.step_key
        if data.user_failure_data is not None and data.user_failure_data.description:
            error = data.user_failure_data.description  # a dg.Failure's own words
            counts = numeric_counts(data.user_failure_data.metadata)
        elif data.error is not None:
            error = user_message(data.error)
    elif failure_event is not None:
        data = failure_event.event_specific_data  # JobFailureData
        if getattr(data, "error", None) is not None:
            error = user_message(data.error)
        elif getattr(data, "failure_reason", None) is not None:
            error = f"{error} ({data.failure_reason.value})"
    return RunFailure(run_id=run.run_id, run_url=alerts.run_url(run.run_id), job_name=sync_name(run, groups),
                      groups=groups, partition=partition_label(run), step=step, error=error, counts=counts)


def work_of(instance: dg.DagsterInstance, run: dg.DagsterRun, graph: object | None) -> Work:
    """The assets and partitions `run` targets."""
    keys = frozenset(run.asset_selection or ())
    if not keys:
        planned = instance.get_records_for_run(
            run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED, limit=10_000).records
        keys = frozenset(r.event_log_entry.dagster_event.asset_key for r in planned
                         if r.event_log_entry.dagster_event and r.event_log_entry.dagster_event.asset_key)
    return Work(run.job_name, keys, partitions_of(run, keys, graph))


def partitions_of(run: dg.DagsterRun, keys: frozenset[dg.AssetKey],
                  graph: object | None) -> frozenset[str] | None:
    """The run's partition keys: its partition tag, or its range tags expanded through the assets'
    partitions definition; None for an unpartitioned run."""
    if run.tags.get(PARTITION_TAG):
        return frozenset([run.tags[PARTITION_TAG]])
    start, end = run.tags.get(RANGE_START_TAG), run.tags.get(RANGE_END_TAG)
    if not (start and end):
        return None
    for key in sorted(keys):
        node = graph.get(key) if graph is not None and graph.has(key) else None  # type: ignore[attr-defined]
        partitions_def = getattr(node, "partitions_def", None)
        if partitions_def is not None:
            return frozenset(partitions_def.get_partition_keys_in_range(dg.PartitionKeyRange(start, end)))
    return frozenset([start, end]) if start != end else frozenset([start])


def recovered_failures(instance: dg.DagsterInstance, run: dg.DagsterRun,
                       graph: object | None) -> list[dg.DagsterRun]:
    """Failed runs created before `run`, alerted and not recovered yet, whose work `run` covers (newest
    first). Canceled and successful runs in between are passed over; each alerted failure recovers once."""
    [record] = instance.get_run_records(dg.RunsFilter(run_ids=[run.run_id]), limit=1) or [None]
    if record is None:
        return []
    work = work_of(instance, run, graph)
    filters = dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE], created_before=record.create_timestamp)
    found = []
    for candidate in instance.get_run_records(filters, limit=PREVIOUS_RUNS_LIMIT):
        other = candidate.dagster_run
        if other.run_id == run.run_id or other.tags.get(ALERT_TAG) != f"{FAILURE_SENT}:{other.run_id}":
            continue
        if work.covers(work_of(instance, other, graph)):
            found.append(other)
    return found


def sync_name(run: dg.DagsterRun, groups: Sequence[str]) -> str:
    """The job's name, or the asset groups for an ad-hoc asset run (backfills, UI launches: `__ASSET_JOB`)."""
    if run.job_name.startswith(ASSET_JOB_PREFIX):
        return ", ".join(groups) or "assets"
    return run.job_name


def partition_label(run: dg.DagsterRun) -> str | None:
    """`2026-08-01-10:00`, or `start…end` for a range run."""
    if run.tags.get(PARTITION_TAG):
        return run.tags[PARTITION_TAG]
    start, end = run.tags.get(RANGE_START_TAG), run.tags.get(RANGE_END_TAG)
    if start and end:
        return start if start == end else f"{start}…{end}"
    return None


def numeric_counts(metadata: Mapping[str, object]) -> dict[str, int]:
    """Whole-number entries of step metadata (delivered, pending, rejected, ...), not durations or rates."""
    counts: dict[str, int] = {}
    for key, value in metadata.items():
        raw = getattr(value, "value", value)
        is_count = isinstance(raw, int) and not isinstance(raw, bool)
        if is_count and not key.endswith(("seconds", "_per_second")):
            counts[key] = raw
    return counts


def user_message(error: object) -> str:
    """The message of the outermost user-code exception in a `SerializableErrorInfo` chain: not Dagster's
    "Error occurred while executing ..." wrapper, and not a library-internal cause below our own exception."""
    chain = []
    while error is not None and len(chain) < 20:
        chain.append(error)
        error = getattr(error, "cause", None) or getattr(error, "context", None)
    for item in chain:
        if not (getattr(item, "cls_name", None) or "").startswith(_WRAPPER_PREFIX):
            return getattr(item, "message", str(item))
    return getattr(chain[-1], "message", str(chain[-1])) if chain else "the run failed"


def _partitions_cover(mine: frozenset[str] | None, theirs: frozenset[str] | None) -> bool:
    if theirs is None:
        return mine is None
    return mine is not None and theirs <= mine


def _already_alerted(instance: dg.DagsterInstance, run_id: str, *what: str) -> bool:
    current = instance.get_run_by_id(run_id)
    return current is not None and current.tags.get(ALERT_TAG) in {f"{w}:{run_id}" for w in what}


def _post(context: dg.RunStatusSensorContext, alerts: AlertsResource, message: dict) -> None:
    """Post within the tick's budget; defer (fail the tick, keep its cursor) when that is not possible."""
    tick = _tick_started.setdefault(context.log, [time.monotonic(), 0])  # [started, posts so far]
    worst = alerts.timeout_seconds + alerts.retry_max_seconds
    if tick[1] and time.monotonic() - tick[0] + worst > TICK_BUDGET_SECONDS:  # the first post always goes
        raise AlertsDeferred(f"the tick's {TICK_BUDGET_SECONDS:.0f}s budget is used up; "
                             f"run {context.dagster_run.run_id} is alerted on by the next tick")
    tick[1] += 1
    try:
        with alerts.get_client() as client:
            client.post_message(message)
    except VendorUnavailable as exc:
        raise AlertsDeferred(f"alert for run {context.dagster_run.run_id} not sent, retried next tick: "
                             f"{exc}") from exc


def _groups(graph: object | None, keys: frozenset[dg.AssetKey]) -> list[str]:
    """Asset groups of `keys`."""
    if graph is None:
        return []
    return sorted({graph.get(key).group_name for key in keys if graph.has(key)})  # type: ignore[attr-defined]


def _asset_graph(repository_def: object | None) -> object | None:
    """The code location's asset graph from the sensor's own repository (the daemon always passes it); an
    evaluation without one (a direct call) reports no asset groups rather than importing the definitions
    that gather this module."""
    return repository_def.asset_graph if repository_def is not None else None  # type: ignore[attr-defined]


defs = dg.Definitions(sensors=[alert_on_run_failure, alert_on_recovery])
