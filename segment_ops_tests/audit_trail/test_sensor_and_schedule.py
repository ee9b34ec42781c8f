"""The audit-trail sensor (near-real-time runs, cursor kept, no pile-up) and the safety-net schedule."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime

import dagster as dg
import pytest
from dagster._core.storage.dagster_run import DagsterRun

from segment_ops.resources import SegmentPublicApiResource, StagingResource
from segment_ops.syncs.audit_trail import defs as audit_trail_defs
from segment_ops.syncs.audit_trail.defs import (
    PARTITIONS,
    audit_events_sensor,
    audit_trail_job,
    audit_trail_safety_net,
)
from segment_ops_tests.audit_trail.conftest import (
    complete_hours,
    inject_events,
    metadata,
    received_ids,
    run_hour,
    splunk_resource,
    tick,
)


@pytest.mark.slow
def test_a_new_event_is_forwarded_by_the_run_of_the_next_tick(resources, clean_sandbox, instance):
    baseline = tick(instance, resources, None)
    [new] = clean_sandbox.inject_audit_events([{"type": "Destination Deleted"}])

    result = tick(instance, resources, baseline.cursor)

    current = PARTITIONS.get_partition_keys(current_time=datetime.now(UTC))[-1]
    [request] = result.run_requests
    assert request.partition_key == current and request.run_key.startswith(f"{current}:")
    assert request.run_key not in [r.run_key for r in baseline.run_requests]
    assert json.loads(result.cursor)["prints"][current] != json.loads(baseline.cursor)["prints"].get(current)
    run = run_hour(resources, request.partition_key, instance, tags=request.tags)
    assert run.success and new["id"] in received_ids(clean_sandbox)


def test_a_tick_without_new_events_requests_nothing(resources, clean_sandbox, instance):
    clean_sandbox.inject_audit_events([{}])
    first = tick(instance, resources, None)

    second = tick(instance, resources, first.cursor)

    assert first.run_requests and not second.run_requests
    assert "no change" in second.skip_reason.skip_message
    before, after = json.loads(first.cursor)["prints"], json.loads(second.cursor)["prints"]
    assert {key: after[key] for key in before} == before


def test_no_run_is_requested_for_an_hour_whose_run_is_still_in_flight(resources, clean_sandbox, instance):
    current = PARTITIONS.get_partition_keys(current_time=datetime.now(UTC))[-1]
    instance.add_run(DagsterRun(job_name=audit_trail_job.name, run_id=str(uuid.uuid4()),
                                status=dg.DagsterRunStatus.STARTED, tags={"dagster/partition": current}))
    clean_sandbox.inject_audit_events([{}])

    result = tick(instance, resources, None)

    assert current not in [r.partition_key for r in result.run_requests]
    assert current not in json.loads(result.cursor)["prints"]  # so the next tick asks again


@pytest.mark.slow
def test_an_unreachable_public_api_skips_the_tick_and_keeps_the_cursor(instance, tmp_path):
    unreachable = SegmentPublicApiResource(base_url="http://127.0.0.1:9/segmentapis", token="t")
    current = PARTITIONS.get_partition_keys(current_time=datetime.now(UTC))[-1]
    cursor = json.dumps({"prints": {current: "x-1"}, "open": {}, "turn": 0, "swept": ""})
    context = dg.build_sensor_context(instance=instance, cursor=cursor,
                                      resources={"segment_public_api": unreachable,
                                                 "staging": StagingResource(home=str(tmp_path))})

    result = audit_events_sensor(context)

    assert not result.run_requests and "Public API probe failed" in result.skip_reason.skip_message
    assert json.loads(result.cursor)["prints"] == json.loads(cursor)["prints"]


@pytest.mark.slow  # each probe answers after 0.5 s
def test_a_slow_public_api_stops_probing_at_the_budget_and_keeps_the_cursor_and_the_turn(
        resources, clean_sandbox, instance, monkeypatch):
    monkeypatch.setattr(audit_trail_defs, "PROBE_BUDGET_SECONDS", 1.5, raising=False)
    clean_sandbox.set_faults("segmentapis", rate_slow=1.0, slow_seconds=1.0)  # 0.5 s of margin
    newest = PARTITIONS.get_partition_keys(current_time=datetime.now(UTC))[-2:]

    result = tick(instance, resources, json.dumps({"prints": {}, "open": {}, "turn": 0, "swept": ""}))

    assert clean_sandbox.stats()["segmentapis"]["requests"] == 2  # the two newest hours, then the budget
    cursor = json.loads(result.cursor)
    assert set(cursor["prints"]) == set(newest)
    assert cursor["turn"] == 0  # the older hours not probed come first next tick


def test_the_safety_net_rereads_the_last_two_complete_hours_and_is_off_by_default():
    context = dg.build_schedule_context(scheduled_execution_time=datetime(2026, 11, 23, 16, 20, tzinfo=UTC))

    requests = list(audit_trail_safety_net(context))

    assert [r.partition_key for r in requests] == ["2026-11-23-14:00", "2026-11-23-15:00"]
    assert audit_trail_safety_net.default_status == dg.DefaultScheduleStatus.STOPPED


@pytest.mark.slow
def test_while_acks_are_awaited_a_quiet_workspace_gets_a_run_each_tick_that_settles_them(
        resources, clean_sandbox, sandbox_factory, instance):
    acking = sandbox_factory(splunk_ack=True, splunk_ack_delay=1.0)
    resources = resources | {"splunk": splunk_resource(acking, ack_settle_seconds=0.0)}
    key = complete_hours(3)[0]
    inject_events(clean_sandbox, key, 2)
    quiet = tick(instance, resources, None)  # nothing awaited yet: only the probe's requests
    sent = run_hour(resources, key, instance)
    assert sent.success and metadata(sent)["awaiting_ack_total"] > 0
    time.sleep(1.1)
    # The demo's newest hours gain events as the wall clock moves: take in what changed meanwhile, so the
    # next tick sees a quiet workspace (a tick that requests an hour's run asks for no settle run: that run
    # polls the acks too) whatever the hour of day.
    quiet = tick(instance, resources, quiet.cursor)

    first = tick(instance, resources, quiet.cursor)
    second = tick(instance, resources, first.cursor)  # still awaited (no run happened): asks again

    [request] = first.run_requests
    assert (request.partition_key == complete_hours(1)[0]
            and request.tags["segment_ops/trigger"].endswith("settle_acks"))
    assert len(second.run_requests) == 1 and second.run_requests[0].run_key != request.run_key
    # The settle run may also forward the newest hour's own demo events: it waits for their acks (1 s here),
    # so what it leaves awaiting does not depend on the hour of day the test runs at.
    patient = resources | {"splunk": splunk_resource(acking, ack_settle_seconds=5.0)}
    settled = run_hour(patient, request.partition_key, instance, tags=request.tags)
    assert settled.success and metadata(settled)["awaiting_ack_total"] == 0
    assert metadata(settled)["indexer_acks_confirmed"] >= metadata(sent)["awaiting_ack_total"]
    after = tick(instance, resources, first.cursor)
    assert not after.run_requests  # nothing awaited any more


@pytest.mark.slow
def test_no_settle_run_is_requested_while_a_run_of_the_job_is_going(resources, clean_sandbox, sandbox_factory,
                                                                    instance):
    acking = sandbox_factory(splunk_ack=True, splunk_ack_delay=60.0)
    key = complete_hours(3)[0]
    inject_events(clean_sandbox, key, 1)
    assert run_hour(resources | {"splunk": splunk_resource(acking, ack_settle_seconds=0.0)}, key,
                    instance).success
    quiet = tick(instance, resources, None)
    instance.add_run(DagsterRun(job_name=audit_trail_job.name, run_id=str(uuid.uuid4()),
                                status=dg.DagsterRunStatus.STARTED, tags={"dagster/partition": key}))

    result = tick(instance, resources, quiet.cursor)

    assert not result.run_requests and "await an ack" in result.skip_reason.skip_message
