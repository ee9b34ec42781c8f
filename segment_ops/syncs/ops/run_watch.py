"""Dead runs: a run whose worker was killed (SIGKILL, OOM, a node restart) is failed, with nobody's help.

Under Dagster's default run launcher such a run stays STARTED for ever and keeps its pool slot: Dagster's run
monitoring cannot see the worker (`DefaultRunLauncher` has no `check_run_worker_health`; only container
launchers do), so every later run of that sync waits "blocked by limit for pool".

- Every run of this code location beats a heartbeat from its run worker (`heartbeat_executor`, Dagster's
  default executor with a beating thread around it) every RUN_HEARTBEAT_SECONDS into the deployment's own
  key-value storage (the instance's daemon cursor storage: the SQLite files locally, PostgreSQL when scaled
  out), so every machine of the deployment sees it.
- `dead_run_sensor` (every 30 s, on) fails each STARTED run of this code location whose heartbeat is older
  than RUN_HEARTBEAT_TIMEOUT_SECONDS, or that never beat that long after it started, with
  `report_run_failed` and a message naming the last beat, the worker's pid and host. Dagster's run
  monitoring then frees the run's pool slots (`free_slots_after_run_end_seconds` in dagster.yaml),
  `alert_on_run_failure` alerts, and the syncs' sensors and schedules request the work again: what the dead
  run had planned is still pending in its ledger and is sent by the next run with the same messageIds.

A worker that is only slow (a long retry, a big diff) keeps beating from its own thread and is left alone; a
worker stuck without the GIL for longer than the timeout would be failed, which is why the timeout is
minutes, not seconds. Should a worker the sensor failed still be alive (its beats could not be written for
the whole timeout), it stops itself, and the step processes it started, at its next beat: it must not
deliver beside the run that takes the work over. Runs that started before the sensor first ran (launched
by a release without heartbeats) are judged only once they beat, never for not beating.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import dagster as dg
import orjson
from dagster._core.executor.base import Executor

from segment_ops.config import load_settings
from segment_ops.resources import run_heartbeat_seconds, run_heartbeat_timeout_seconds

log = logging.getLogger(__name__)

HEARTBEAT_KEY_PREFIX = "segment_ops/run_heartbeat/"
FAILED_TAG = "segment_ops/dead_worker"
# The exit status of a run worker that found itself failed by dead_run_sensor (EX_SOFTWARE).
FENCED_EXIT_CODE = 70
SENSOR_INTERVAL_SECONDS = 30
# Runs judged per tick: each is one small read and, rarely, one failure event.
MAX_RUNS_PER_TICK = 200

_DEFAULT_EXECUTOR = dg.multi_or_in_process_executor


@dataclass(frozen=True)
class Beat:
    """One heartbeat of a run worker: when, which process on which host, and whether the run's steps ended."""

    at: float
    pid: int
    host: str
    ended: bool = False

    def dumps(self) -> str:
        return orjson.dumps({"at": self.at, "pid": self.pid, "host": self.host, "ended": self.ended}).decode()

    @staticmethod
    def loads(raw: str) -> Beat | None:
        try:
            value = orjson.loads(raw)
            return Beat(float(value["at"]), int(value["pid"]), str(value["host"]), bool(value.get("ended")))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None


def heartbeat_key(run_id: str) -> str:
    return f"{HEARTBEAT_KEY_PREFIX}{run_id}"


def stop_this_run_worker() -> None:
    """End this process and the step processes it started, at once: its run was failed as dead."""
    for child in multiprocessing.active_children():
        child.kill()
    os._exit(FENCED_EXIT_CODE)


class Heartbeat:
    """A daemon thread that writes a `Beat` for `run_id` every `interval` seconds until stopped; a failed
    write is logged and tried again at the next beat (the sensor allows several missed beats). At each beat
    it also reads the run: found failed by `dead_run_sensor`, it calls `on_fenced` (by default
    `stop_this_run_worker`)."""

    def __init__(self, instance: dg.DagsterInstance, run_id: str, interval: float,
                 on_fenced: Callable[[], None] = stop_this_run_worker) -> None:
        self._instance = instance
        self._run_id = run_id
        self._on_fenced = on_fenced
        self._storage = instance.daemon_cursor_storage
        self._key = heartbeat_key(run_id)
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat:{run_id[:8]}", daemon=True)
        self._pid, self._host = os.getpid(), socket.gethostname()

    def start(self) -> Heartbeat:
        self._write(ended=False)  # the first beat before any step starts
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self._interval + 5.0)
        self._write(ended=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            if self._failed_as_dead():
                log.error(f"run {self._run_id} was failed by dead_run_sensor while this worker was still "
                          "alive (its beats could not be written); stopping it so it does not deliver "
                          "beside the run that takes the work over")
                self._on_fenced()
                return
            self._write(ended=False)

    def _failed_as_dead(self) -> bool:
        try:
            run = self._instance.get_run_by_id(self._run_id)
        except Exception:  # noqa: BLE001 - storage unreachable: the beat's own write will say so
            return False
        return run is not None and run.is_finished and run.tags.get(FAILED_TAG) == "true"

    def _write(self, *, ended: bool) -> None:
        try:
            self._storage.set_cursor_values({self._key: Beat(time.time(), self._pid, self._host,
                                                             ended).dumps()})
        except Exception as exc:  # noqa: BLE001 - a beat must never fail the run; the next one may pass
            log.warning("run heartbeat not written (%s); retrying at the next beat", type(exc).__name__)


class HeartbeatExecutor(Executor):
    """Dagster's executor as configured, with the run worker's heartbeat beating while it executes."""

    def __init__(self, inner: Executor, interval: float) -> None:
        self._inner = inner
        self._interval = interval

    @property
    def retries(self):  # Dagster's RetryMode, passed through
        return self._inner.retries

    @property
    def step_dependency_config(self):
        return self._inner.step_dependency_config

    def execute(self, plan_context, execution_plan) -> Iterator[dg.DagsterEvent]:
        beat = Heartbeat(plan_context.instance, plan_context.run_id, self._interval).start()
        try:
            yield from self._inner.execute(plan_context, execution_plan)
        finally:
            beat.stop()


@dg.executor(
    name="multi_or_in_process_executor_with_heartbeat",
    config_schema=_DEFAULT_EXECUTOR.config_schema.as_field(),
    requirements=_DEFAULT_EXECUTOR.get_requirements,
)
def heartbeat_executor(init_context: dg.InitExecutorContext) -> Executor:
    """Dagster's default executor (multiprocess, or in-process by run config), beating the run's heartbeat."""
    inner = _DEFAULT_EXECUTOR.executor_creation_fn(init_context)  # type: ignore[misc]
    return HeartbeatExecutor(inner, run_heartbeat_seconds(load_settings()))


@dataclass(frozen=True)
class DeadRun:
    run_id: str
    job_name: str
    reason: str


def find_dead_runs(runs: list[dg.DagsterRun], beats: Mapping[str, Beat | None],
                   started_at: Mapping[str, float], *, now: float, timeout: float,
                   watching_since: float = 0.0) -> list[DeadRun]:
    """The runs among `runs` (all STARTED) whose worker stopped beating more than `timeout` seconds ago, or
    never beat although they started that long ago, after `watching_since` (a run started before the
    heartbeats were watched may come from a release that does not beat)."""
    dead = []
    for run in runs:
        beat = beats.get(run.run_id)
        if beat is not None:
            silent = now - beat.at
            if silent > timeout:
                what = "finished its steps but never ended the run" if beat.ended else "stopped beating"
                dead.append(DeadRun(run.run_id, run.job_name,
                                    f"its run worker (pid {beat.pid} on {beat.host}) {what} {silent:.0f} s "
                                    f"ago (RUN_HEARTBEAT_TIMEOUT_SECONDS={timeout:g})"))
        elif ((start := started_at.get(run.run_id)) is not None and start >= watching_since
              and now - start > timeout):
            dead.append(DeadRun(run.run_id, run.job_name,
                                f"its run worker never beat in the {now - start:.0f} s since the run started "
                                f"(RUN_HEARTBEAT_TIMEOUT_SECONDS={timeout:g})"))
    return dead


@dg.sensor(
    name="dead_run_sensor",
    minimum_interval_seconds=SENSOR_INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Fails runs of this code location whose run worker died (no heartbeat for "
                "RUN_HEARTBEAT_TIMEOUT_SECONDS), so their pool slots are freed, they are alerted on and the "
                "work is requested again, with nobody's help.",
)
def dead_run_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    settings = load_settings()
    timeout = run_heartbeat_timeout_seconds(settings)
    instance = context.instance
    # When this sensor first ran: the cursor keeps it (see `find_dead_runs`'s watching_since).
    watching_since = _watching_since(context.cursor)
    cursor = orjson.dumps({"watching_since": watching_since}).decode()
    runs = [run for run in instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]),
                                             limit=MAX_RUNS_PER_TICK)
            if _in_this_location(run, context)]
    if not runs:
        return dg.SensorResult(skip_reason="no run of this code location is running", cursor=cursor)
    raw = instance.daemon_cursor_storage.get_cursor_values({heartbeat_key(r.run_id) for r in runs})
    beats = {r.run_id: Beat.loads(raw[heartbeat_key(r.run_id)]) if heartbeat_key(r.run_id) in raw else None
             for r in runs}
    records = instance.get_run_records(dg.RunsFilter(run_ids=[r.run_id for r in runs]))
    started_at = {rec.dagster_run.run_id: rec.start_time for rec in records if rec.start_time is not None}
    dead = find_dead_runs(runs, beats, started_at, now=time.time(), timeout=timeout,
                          watching_since=watching_since)
    by_id = {run.run_id: run for run in runs}
    for found in dead:
        run = instance.get_run_by_id(found.run_id)
        if run is None or run.status != dg.DagsterRunStatus.STARTED:
            continue  # it ended on its own meanwhile
        instance.add_run_tags(found.run_id, {FAILED_TAG: "true"})  # a worker still alive stops on it
        instance.report_run_failed(by_id[found.run_id], f"Run worker lost: {found.reason}. Failed by "
                                   "dead_run_sensor; what it had planned is sent by the next run.")
        context.log.warning(f"failed run {found.run_id} of {found.job_name}: {found.reason}")
    alive = len(runs) - len(dead)
    return dg.SensorResult(skip_reason=f"{len(dead)} dead run(s) failed, {alive} running run(s) beating",
                           cursor=cursor)


def _watching_since(cursor: str | None) -> float:
    try:
        return float(orjson.loads(cursor)["watching_since"]) if cursor else time.time()
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return time.time()


def _in_this_location(run: dg.DagsterRun, context: dg.SensorEvaluationContext) -> bool:
    """Whether `run` was launched from this code location (runs of other code locations beat no heartbeat)."""
    origin = run.remote_job_origin
    here = context.code_location_origin
    if origin is None or here is None:
        return origin is None and here is None  # a test harness without origins: every run is ours
    return origin.location_name == here.location_name


defs = dg.Definitions(sensors=[dead_run_sensor], executor=heartbeat_executor)
