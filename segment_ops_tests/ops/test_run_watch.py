"""Dead runs: the run worker's heartbeat, and `dead_run_sensor` failing a STARTED run whose worker stopped
beating (issue 16 part 1). The end-to-end proof, a SIGKILLed run worker under `dagster dev`, is in
test_run_watch_e2e.py."""

from __future__ import annotations

import threading
import time

import dagster as dg
import orjson
import pytest
from dagster._core.events import DagsterEvent, DagsterEventType

from segment_ops.syncs.ops.run_watch import (
    FAILED_TAG,
    Beat,
    Heartbeat,
    dead_run_sensor,
    find_dead_runs,
    heartbeat_executor,
    heartbeat_key,
)

TIMEOUT = 120.0


@dg.op
def read_own_heartbeat(context) -> None:  # unannotated: Dagster checks the annotation
    raw = context.instance.daemon_cursor_storage.get_cursor_values({heartbeat_key(context.run_id)})
    beat = Beat.loads(raw[heartbeat_key(context.run_id)])
    assert beat is not None and not beat.ended and time.time() - beat.at < 5


@dg.job(executor_def=heartbeat_executor)
def beating_job() -> None:
    read_own_heartbeat()


@dg.op
def noop() -> None:
    pass


@dg.job
def other_job() -> None:
    noop()


@pytest.fixture
def instance() -> dg.DagsterInstance:
    return dg.DagsterInstance.ephemeral()


def started_run(instance: dg.DagsterInstance, *, started_ago: float = 0.0) -> dg.DagsterRun:
    """A run of `other_job` in STARTED status, as its run worker reports it, `started_ago` seconds ago."""
    run = instance.create_run_for_job(other_job)
    instance.report_dagster_event(DagsterEvent(event_type_value=DagsterEventType.RUN_START.value,
                                               job_name=run.job_name), run.run_id,
                                  timestamp=time.time() - started_ago)
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED
    return run


def beat(instance: dg.DagsterInstance, run: dg.DagsterRun, *, ago: float, ended: bool = False) -> None:
    instance.daemon_cursor_storage.set_cursor_values(
        {heartbeat_key(run.run_id): Beat(time.time() - ago, 4242, "worker-7", ended).dumps()})


def tick(instance: dg.DagsterInstance, *, watching_since: float = 0.0) -> str:
    """One evaluation, with the sensor watching since `watching_since` (the epoch: since before every run
    of these tests); returns its skip message."""
    cursor = orjson.dumps({"watching_since": watching_since}).decode()
    return dead_run_sensor(dg.build_sensor_context(instance=instance, cursor=cursor)).skip_reason.skip_message


@pytest.mark.slow
def test_the_run_worker_beats_while_it_executes_and_marks_the_end():
    with dg.instance_for_test() as instance:  # execute_job needs a persistent instance
        result = dg.execute_job(dg.reconstructable(beating_job), instance,
                                run_config={"execution": {"config": {"in_process": {}}}})

        assert result.success  # the op found its own fresh heartbeat
        raw = instance.daemon_cursor_storage.get_cursor_values({heartbeat_key(result.run_id)})
        assert Beat.loads(raw[heartbeat_key(result.run_id)]).ended


def test_a_run_whose_worker_stopped_beating_is_failed_naming_the_worker(instance, ops_env):
    run = started_run(instance, started_ago=600)
    beat(instance, run, ago=TIMEOUT + 30)

    message = tick(instance)

    failed = instance.get_run_by_id(run.run_id)
    assert failed.status == dg.DagsterRunStatus.FAILURE and failed.tags[FAILED_TAG] == "true"
    [event] = instance.all_logs(run.run_id, of_type=DagsterEventType.RUN_FAILURE)
    assert "pid 4242 on worker-7" in event.dagster_event.message and "stopped beating" in event.message
    assert "1 dead run(s) failed" in message


def test_a_run_beating_within_the_timeout_is_left_running(instance, ops_env):
    run = started_run(instance, started_ago=3600)
    beat(instance, run, ago=TIMEOUT - 30)

    tick(instance)

    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED


def test_a_run_that_never_beat_is_failed_only_once_the_timeout_has_passed_since_it_started(instance, ops_env):
    young, old = started_run(instance, started_ago=10), started_run(instance, started_ago=TIMEOUT + 10)

    tick(instance)

    assert instance.get_run_by_id(young.run_id).status == dg.DagsterRunStatus.STARTED
    assert instance.get_run_by_id(old.run_id).status == dg.DagsterRunStatus.FAILURE


def test_the_timeout_comes_from_the_setting(instance, ops_env, monkeypatch):
    run = started_run(instance, started_ago=600)
    beat(instance, run, ago=40)
    monkeypatch.setenv("RUN_HEARTBEAT_TIMEOUT_SECONDS", "30")

    tick(instance)

    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE


def test_a_timeout_shorter_than_three_heartbeats_is_refused_naming_both_settings(instance, ops_env,
                                                                                 monkeypatch):
    monkeypatch.setenv("RUN_HEARTBEAT_SECONDS", "20")
    monkeypatch.setenv("RUN_HEARTBEAT_TIMEOUT_SECONDS", "30")

    with pytest.raises(ValueError, match="RUN_HEARTBEAT_TIMEOUT_SECONDS.*RUN_HEARTBEAT_SECONDS"):
        tick(instance)


def test_no_running_run_skips_saying_so(instance, ops_env):
    assert tick(instance) == "no run of this code location is running"


def test_a_run_that_started_before_the_sensor_first_ran_is_never_failed_for_not_beating(instance, ops_env):
    # Launched by a release without heartbeats, still running when this one was deployed.
    old = started_run(instance, started_ago=3600)

    first = dead_run_sensor(dg.build_sensor_context(instance=instance))
    tick(instance, watching_since=orjson.loads(first.cursor)["watching_since"])

    assert instance.get_run_by_id(old.run_id).status == dg.DagsterRunStatus.STARTED


def test_a_worker_its_run_was_failed_as_dead_stops_itself_at_its_next_beat(instance, ops_env):
    run = started_run(instance, started_ago=600)
    beat(instance, run, ago=TIMEOUT + 30)
    tick(instance)
    fenced = threading.Event()

    heartbeat = Heartbeat(instance, run.run_id, 0.05, on_fenced=fenced.set).start()

    assert fenced.wait(5.0)
    heartbeat.stop()


def test_a_live_worker_is_not_stopped(instance, ops_env):
    run = started_run(instance)
    fenced = threading.Event()

    heartbeat = Heartbeat(instance, run.run_id, 0.05, on_fenced=fenced.set).start()

    assert not fenced.wait(0.3)
    heartbeat.stop()


def test_an_ended_beat_long_ago_on_a_run_still_started_is_reported_as_such():
    run = dg.DagsterRun(job_name="j", run_id="r1", status=dg.DagsterRunStatus.STARTED)
    now = time.time()

    [dead] = find_dead_runs([run], {"r1": Beat(now - 500, 1, "h", ended=True)}, {"r1": now - 900},
                            now=now, timeout=TIMEOUT)

    assert "finished its steps but never ended the run" in dead.reason


def test_an_unreadable_beat_counts_as_no_beat():
    assert Beat.loads("not json") is None and Beat.loads('{"at": "x"}') is None
