"""The Fullstory definitions as the code location loads them: jobs, partitions, sensor and schedule."""

from __future__ import annotations

from datetime import datetime

import dagster as dg
import pytest

from segment_ops.syncs.fullstory.defs import (
    PARTITIONS,
    SCORE_JOB,
    SCORE_KEY,
    SIGNALS_JOB,
    SIGNALS_KEY,
    defs,
    fullstory_score_schedule,
    fullstory_stream_sensor,
)


def test_the_jobs_select_their_asset():
    jobs = {j.name: j for j in defs.jobs}
    assert set(jobs) == {SIGNALS_JOB, SCORE_JOB}
    assert jobs[SCORE_JOB].partitions_def == PARTITIONS
    keys = {k for a in defs.assets if isinstance(a, dg.AssetsDefinition) for k in a.keys}
    assert {SIGNALS_KEY, SCORE_KEY} <= keys


def test_the_sensor_runs_and_the_schedule_waits_to_be_turned_on():
    assert fullstory_stream_sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert fullstory_stream_sensor.job_name == SIGNALS_JOB
    assert fullstory_score_schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    assert fullstory_score_schedule.cron_schedule == "0 6 * * *"
    assert fullstory_score_schedule.execution_timezone == "UTC"


@pytest.mark.parametrize(("at", "day"), [("2026-12-07T06:00:00+00:00", "2026-12-06"),
                                         ("2026-03-01T06:00:00+00:00", "2026-02-28"),
                                         ("2026-12-07T01:30:00-05:00", "2026-12-06")])
def test_the_schedule_scores_yesterday_in_utc(at, day):
    context = dg.build_schedule_context(scheduled_execution_time=datetime.fromisoformat(at))

    request = fullstory_score_schedule(context)

    assert request.partition_key == day and request.run_key == day
