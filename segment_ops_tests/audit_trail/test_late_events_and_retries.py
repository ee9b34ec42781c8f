"""Late audit events and failed runs (issue 16 part 3): every event the Public API lists for an hour within
the lateness horizon reaches the SIEM once, whatever the listing's order, and a failed run is requested
again by the next tick, with no operator action. The re-reads happen in runs the sensor requests."""

from __future__ import annotations

import json
from collections import Counter
from datetime import timedelta

import dagster as dg
import httpx
import pytest

from segment_ops.config import SANDBOX_SPLUNK_INDEX
from segment_ops.resources import SplunkHecResource
from segment_ops.syncs.audit_trail.defs import PARTITIONS, lateness_horizon
from segment_ops_tests.audit_trail.conftest import (
    complete_hours,
    inject_events,
    received_ids,
    run_hour,
    segment_audit_events,
    siem_audit_events,
    tick,
)


def run_request(resources: dict, request: dg.RunRequest, instance: dg.DagsterInstance
                ) -> dg.ExecuteInProcessResult:
    """Run what the sensor asked for, as the daemon would: its partition (or range) and its tags."""
    if request.partition_key:
        return run_hour(resources, request.partition_key, instance, tags=request.tags)
    return dg.materialize([segment_audit_events, siem_audit_events], resources=resources, instance=instance,
                          tags=request.tags, raise_on_error=False)


def assert_the_hours_run_forwards_each_event_once(resources: dict, instance: dg.DagsterInstance, sandbox,
                                                  tick_result: dg.SensorResult, key: str,
                                                  late_id: str) -> None:
    """The tick asked for a run of hour `key`; that run forwards the late event, and the SIEM holds every
    event it received once."""
    [request] = [r for r in tick_result.run_requests if r.partition_key == key]
    assert run_request(resources, request, instance).success
    counts = Counter(received_ids(sandbox))
    assert counts[late_id] == 1 and set(counts.values()) == {1}


def late_event(sandbox, key: str, minute: int = 20) -> dict:
    """An event whose timestamp lies inside hour `key`, listed only from now on."""
    moment = PARTITIONS.time_window_for_partition_key(key).start + timedelta(minutes=minute)
    [event] = sandbox.inject_audit_events([{"timestamp": moment.isoformat().replace("+00:00", "Z"),
                                            "type": "Source Deleted"}])
    return event


def set_order(sandbox, order: str) -> None:
    httpx.post(f"{sandbox.url}/segmentapis/__sandbox__/audit-order", json={"order": order}).raise_for_status()


@pytest.fixture
def short_horizon(monkeypatch: pytest.MonkeyPatch, ops_env) -> None:
    """A 6-hour horizon: the older hours fit in one tick's probes."""
    monkeypatch.setenv("AUDIT_TRAIL_LATENESS_HOURS", "6")


@pytest.mark.slow
def test_a_late_event_of_an_already_forwarded_hour_reaches_the_siem_once(resources, clean_sandbox, instance,
                                                                        short_horizon):
    key = complete_hours(4)[0]  # older than the two hours probed every tick
    inject_events(clean_sandbox, key, 2)
    assert run_hour(resources, key, instance).success
    baseline = tick(instance, resources, None)
    late = late_event(clean_sandbox, key)

    result = tick(instance, resources, baseline.cursor)

    assert_the_hours_run_forwards_each_event_once(resources, instance, clean_sandbox, result, key, late["id"])


@pytest.mark.slow
def test_with_an_oldest_first_listing_a_late_event_of_the_newest_hour_reaches_the_siem_once(
        resources, clean_sandbox, instance, short_horizon):
    set_order(clean_sandbox, "oldest")
    key = complete_hours(1)[0]
    inject_events(clean_sandbox, key, 3)
    first = tick(instance, resources, None)
    for request in first.run_requests:  # the newest hours, and the sweep of the horizon
        assert run_request(resources, request, instance).success
    late = late_event(clean_sandbox, key, minute=30)  # neither the oldest nor the newest of the hour

    result = tick(instance, resources, first.cursor)

    assert_the_hours_run_forwards_each_event_once(resources, instance, clean_sandbox, result, key, late["id"])


@pytest.mark.slow
def test_a_failed_run_is_requested_again_by_the_next_tick_and_then_forwards(resources, clean_sandbox,
                                                                           instance, short_horizon):
    key = complete_hours(1)[0]
    ids = inject_events(clean_sandbox, key, 2)
    first = tick(instance, resources, None)
    [request] = [r for r in first.run_requests if r.partition_key == key]
    down = resources | {"splunk": SplunkHecResource(base_url="http://127.0.0.1:9/splunk", token="t",
                                                     index=SANDBOX_SPLUNK_INDEX, retry_max_attempts=1,
                                                     retry_max_seconds=0.5)}
    assert not run_request(down, request, instance).success

    second = tick(instance, resources, first.cursor)

    [again] = [r for r in second.run_requests if r.partition_key == key]
    assert again.run_key != request.run_key
    assert run_request(resources, again, instance).success
    assert set(ids) <= set(received_ids(clean_sandbox))
    third = tick(instance, resources, second.cursor)  # succeeded: not requested a third time
    assert key not in [r.partition_key for r in third.run_requests]
    assert not json.loads(third.cursor)["open"] or all(
        run["partition"] != key for run in json.loads(third.cursor)["open"].values())


@pytest.mark.slow
def test_the_sweep_rereads_the_whole_horizon_in_one_run_once_an_hour(resources, clean_sandbox, instance,
                                                                      short_horizon):
    first = tick(instance, resources, None)
    [sweep] = [r for r in first.run_requests if r.partition_key is None]
    keys = complete_hours(6)
    assert (sweep.tags["dagster/asset_partition_range_start"], sweep.tags["dagster/asset_partition_range_end"]
            ) == (keys[0], keys[-1])
    late = late_event(clean_sandbox, keys[1])  # an hour the probes did not see change (first look)

    assert run_request(resources, sweep, instance).success
    second = tick(instance, resources, first.cursor)

    assert received_ids(clean_sandbox).count(late["id"]) == 1
    assert not [r for r in second.run_requests if r.partition_key is None]  # once per hour


def test_the_lateness_horizon_defaults_to_72_hours_and_is_configurable(ops_env, monkeypatch):
    assert lateness_horizon() == timedelta(hours=72)
    monkeypatch.setenv("AUDIT_TRAIL_LATENESS_HOURS", "12")
    assert lateness_horizon() == timedelta(hours=12)
