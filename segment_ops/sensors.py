"""Run-status sensors that alert: one message per failed run, one when the same work passes again.

- `alert_on_run_failure` (RUNNING by default) watches every job of this code location and posts a failure
  alert (`segment_ops.alerts.failure_message`) to ALERT_WEBHOOK_URL for each failed run.
- `alert_on_recovery` (RUNNING by default) posts "recovered" when a run succeeds and the previous finished
  run of the *same work* failed. Same work = same job, same partition (for partitioned jobs) and same asset
  selection: a failed audit-trail hour recovers when that hour passes (a backfill, a re-run), not when the
  next hour does, and one reverse-ETL model's run does not "recover" another's. A replay run recovers a
  failed replay run (each file is a run of the same job, so a good file after a bad one counts).

Both return None, so one tick handles every finished run since the last one (a returned SkipReason would
end the tick after the first run). No storm, no double send: Dagster's run-status cursor hands each run to
a sensor once; in case an evaluation is repeated (a daemon restart between the post and the cursor commit),
each run that was alerted on is tagged (`segment_ops/alert`) in the instance, and a tagged run is never
alerted on again. A webhook that stays down beyond the client's short retry budget (20 s) fails that run's
evaluation: Dagster shows the error on the sensor's tick and moves its cursor on, so that one alert is not
retried (the run's own failure is still in the run list).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import dagster as dg

from segment_ops.alerts import RunFailure, RunRecovery, failure_message, recovery_message
from segment_ops.resources import AlertsResource

ALERT_TAG = "segment_ops/alert"
FAILURE_SENT = "failure_sent"
RECOVERY_SENT = "recovery_sent"
PARTITION_TAG = "dagster/partition"
FINISHED = [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]
# How far back the recovery sensor looks for the previous run of the same work.
PREVIOUS_RUNS_LIMIT = 50


@dg.run_failure_sensor(
    name="alert_on_run_failure",
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Watches every job of this code location and posts one alert per failed run to ALERT_WEBHOOK_URL "
                "(job and asset groups, failed step, first line of the error, counts, link to the run).",
)
def alert_on_run_failure(context: dg.RunFailureSensorContext, alerts: AlertsResource) -> None:
    run = context.dagster_run
    if _already_alerted(context.instance, run.run_id, FAILURE_SENT):
        context.log.info(f"run {run.run_id} was already alerted on")
        return
    failure = describe_failure(context, alerts)
    _post(alerts, failure_message(failure))
    context.instance.add_run_tags(run.run_id, {ALERT_TAG: FAILURE_SENT})
    context.log.info(f"alert sent for failed run {run.run_id} of {run.job_name}")


@dg.run_status_sensor(
    name="alert_on_recovery",
    run_status=dg.DagsterRunStatus.SUCCESS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Watches every successful run of this code location and posts a recovery message to "
                "ALERT_WEBHOOK_URL when the previous finished run of the same job, partition and asset selection "
                "had failed.",
)
def alert_on_recovery(context: dg.RunStatusSensorContext, alerts: AlertsResource) -> None:
    run = context.dagster_run
    failed = previous_run_of_same_work(context.instance, run)
    if failed is None or failed.status != dg.DagsterRunStatus.FAILURE:
        return
    if _already_alerted(context.instance, run.run_id, RECOVERY_SENT):
        context.log.info(f"run {run.run_id} was already announced as a recovery")
        return
    recovery = RunRecovery(
        run_id=run.run_id, run_url=alerts.run_url(run.run_id), job_name=run.job_name,
        failed_run_id=failed.run_id, failed_run_url=alerts.run_url(failed.run_id),
        groups=_groups(context, run), partition=run.tags.get(PARTITION_TAG))
    _post(alerts, recovery_message(recovery))
    context.instance.add_run_tags(run.run_id, {ALERT_TAG: RECOVERY_SENT})
    context.log.info(f"recovery sent for run {run.run_id} of {run.job_name}")


def describe_failure(context: dg.RunFailureSensorContext, alerts: AlertsResource) -> RunFailure:
    """The failed run as `alerts.RunFailure`: first failed step, its error's first line and its counts."""
    run = context.dagster_run
    step, error, counts = None, context.failure_event.message or "the run failed", {}
    steps = context.get_step_failure_events()
    if steps:
        event = steps[0]
        data = event.step_failure_data
        step = event.step_key
        if data.user_failure_data is not None and data.user_failure_data.description:
            error = data.user_failure_data.description  # a dg.Failure's own words
            counts = numeric_counts(data.user_failure_data.metadata)
        elif data.error is not None:
            error = _innermost_message(data.error)
    return RunFailure(run_id=run.run_id, run_url=alerts.run_url(run.run_id), job_name=run.job_name,
                      groups=_groups(context, run), partition=run.tags.get(PARTITION_TAG), step=step, error=error,
                      counts=counts)


def previous_run_of_same_work(instance: dg.DagsterInstance, run: dg.DagsterRun) -> dg.DagsterRun | None:
    """The newest finished run created before `run` with the same job, partition and asset selection."""
    [record] = instance.get_run_records(dg.RunsFilter(run_ids=[run.run_id]), limit=1) or [None]
    if record is None:
        return None
    partition = run.tags.get(PARTITION_TAG)
    filters = dg.RunsFilter(job_name=run.job_name, statuses=FINISHED, created_before=record.create_timestamp,
                            tags={PARTITION_TAG: partition} if partition else None)
    for candidate in instance.get_run_records(filters, limit=PREVIOUS_RUNS_LIMIT):
        other = candidate.dagster_run
        if other.run_id == run.run_id or other.tags.get(PARTITION_TAG) != partition:
            continue
        if (other.asset_selection or frozenset()) != (run.asset_selection or frozenset()):
            continue
        return other
    return None


def numeric_counts(metadata: Mapping[str, object]) -> dict[str, int]:
    """Whole-number entries of step metadata (delivered, pending, rejected, ...), not durations or rates."""
    counts: dict[str, int] = {}
    for key, value in metadata.items():
        raw = getattr(value, "value", value)
        if isinstance(raw, int) and not isinstance(raw, bool) and not key.endswith(("seconds", "_per_second")):
            counts[key] = raw
    return counts


def _innermost_message(error: object) -> str:
    """The user's exception message, not Dagster's "Error occurred while executing ..." wrapper."""
    while getattr(error, "cause", None) is not None:
        error = error.cause
    return getattr(error, "message", str(error))


def _already_alerted(instance: dg.DagsterInstance, run_id: str, what: str) -> bool:
    current = instance.get_run_by_id(run_id)
    return current is not None and current.tags.get(ALERT_TAG) == what


def _post(alerts: AlertsResource, message: dict) -> None:
    with alerts.get_client() as client:
        client.post_message(message)


def _groups(context: dg.RunStatusSensorContext, run: dg.DagsterRun) -> list[str]:
    """Asset groups of what the run materialises (its asset selection, else every asset of its job)."""
    groups_by_key = _groups_by_key(context.repository_def)
    keys: Sequence[dg.AssetKey] = sorted(run.asset_selection or ())
    if not keys:
        planned = context.instance.get_records_for_run(
            run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED, limit=1000).records
        keys = [r.event_log_entry.dagster_event.asset_key for r in planned if r.event_log_entry.dagster_event]
    return sorted({groups_by_key[key] for key in keys if key in groups_by_key})


def _groups_by_key(repository_def: object | None) -> dict[dg.AssetKey, str]:
    if repository_def is not None:
        graph = repository_def.asset_graph  # type: ignore[attr-defined]
        return {key: graph.get(key).group_name for key in graph.get_all_asset_keys()}
    return dict(_code_location_groups())


@functools.cache
def _code_location_groups() -> tuple[tuple[dg.AssetKey, str], ...]:
    """Asset groups of the code location, for evaluations without a repository (tests, direct calls)."""
    from segment_ops.definitions import defs  # at call time: definitions imports this module

    return tuple((spec.key, spec.group_name or "default") for spec in defs().resolve_all_asset_specs())


defs = dg.Definitions(sensors=[alert_on_run_failure, alert_on_recovery])
