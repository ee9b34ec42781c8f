"""The audit-trail sync in Dagster: hourly pull and forward assets against the sandbox's Public API and
HEC."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta

import dagster as dg
import pytest

from segment_ops.engine.redaction import HASH_PREFIX
from segment_ops.syncs.audit_trail.defs import PARTITIONS, segment_audit_events, siem_audit_events
from segment_ops.syncs.audit_trail.siem import event_epoch
from segment_ops_tests.audit_trail.conftest import (
    PULL_NODE,
    audit_ids,
    checks,
    complete_hours,
    inject_events,
    metadata,
    received_events,
    received_ids,
    run_hour,
    splunk_resource,
    window_of,
)


def busiest_hour(sandbox, keys: list[str]) -> str:
    """The hour of `keys` with the most audit events, plus three injected ones (the demo's nights can be
    empty)."""
    counts = {key: len(audit_ids(sandbox, *window_of(key, key))) for key in keys}
    key = max(counts, key=counts.get)
    inject_events(sandbox, key, 3)
    return key


@pytest.mark.slow
def test_backfill_of_24_hours_forwards_every_audit_event_exactly_once(resources, clean_sandbox, instance):
    keys = complete_hours(24)

    results = [run_hour(resources, key, instance) for key in keys]

    assert all(result.success for result in results)
    expected = audit_ids(clean_sandbox, *window_of(keys[0], keys[-1]))
    got = received_ids(clean_sandbox)
    assert expected and sorted(got) == sorted(expected)
    assert len(got) == len(set(got))
    assert sum(metadata(r)["forwarded"] for r in results) == len(expected)
    assert all(checks(r)["delivery_complete"].passed for r in results)
    assert all(checks(r)["no_gap_between_forwarded_windows"].passed for r in results)


@pytest.mark.slow
def test_a_range_run_forwards_every_hour_once_and_records_each_hour(resources, clean_sandbox, instance):
    *keys, next_hour = complete_hours(7)

    result = dg.materialize([segment_audit_events, siem_audit_events], resources=resources, instance=instance,
                            tags={"dagster/asset_partition_range_start": keys[0],
                                  "dagster/asset_partition_range_end": keys[-1]}, raise_on_error=False)
    later = run_hour(resources, next_hour, instance)  # adjacent to the range: no gap between them

    assert result.success and later.success
    expected = audit_ids(clean_sandbox, *window_of(keys[0], keys[-1]))
    got = received_ids(clean_sandbox)
    assert expected and set(expected) <= set(got) and len(got) == len(set(got))
    gap = checks(later)["no_gap_between_forwarded_windows"]
    assert gap.passed and gap.metadata["windows_forwarded"].value == len(keys) + 1


@pytest.mark.slow
def test_each_hec_event_carries_time_host_source_sourcetype_index_and_the_event(resources, clean_sandbox):
    key = busiest_hour(clean_sandbox, complete_hours(6))

    assert run_hour(resources, key).success

    [item, *_] = received_events(clean_sandbox)
    event = item["event"]
    assert (item["source"], item["sourcetype"], item["index"], item["host"]) == (
        "segment:audit", "segment:audit", "segment_audit", "segment-ops")
    assert item["time"] == event_epoch(event)
    assert item["fields"] == {"audit_event_id": event["id"]}
    assert {"id", "timestamp", "type", "resourceId", "resourceType"} <= set(event)


@pytest.mark.slow
def test_rerunning_an_hour_forwards_nothing(resources, clean_sandbox):
    key = busiest_hour(clean_sandbox, complete_hours(6))
    first = run_hour(resources, key)
    sent = len(received_ids(clean_sandbox))

    again = run_hour(resources, key)

    assert first.success and again.success and sent > 0
    meta = metadata(again)
    assert (meta["new_events"], meta["forwarded"], meta["already_forwarded_or_pending"]) == (0, 0, sent)
    assert metadata(again, PULL_NODE)["new_events"] == 0
    assert len(received_ids(clean_sandbox)) == sent


@pytest.mark.slow
def test_a_late_event_in_a_reread_hour_is_forwarded_once(resources, clean_sandbox):
    key = complete_hours(3)[0]
    assert run_hour(resources, key).success
    before = received_ids(clean_sandbox)
    start = PARTITIONS.time_window_for_partition_key(key).start
    [late] = clean_sandbox.inject_audit_events(
        [{"timestamp": (start + timedelta(minutes=17)).isoformat().replace("+00:00", "Z")}])

    again = run_hour(resources, key)
    once_more = run_hour(resources, key)

    assert again.success and once_more.success
    assert (metadata(again)["new_events"], metadata(again)["forwarded"]) == (1, 1)
    assert metadata(once_more)["forwarded"] == 0
    assert received_ids(clean_sandbox) == [*before, late["id"]]


@pytest.mark.slow
def test_a_hec_outage_fails_the_run_with_events_pending_and_the_next_run_delivers_without_duplicates(
        resources, clean_sandbox):
    keys = complete_hours(6)
    key = busiest_hour(clean_sandbox, keys)
    expected = audit_ids(clean_sandbox, *window_of(key, key))
    clean_sandbox.set_faults("splunk", rate_503=1.0)

    failed = run_hour(resources, key)

    assert not failed.success
    [failure] = [event for event in failed.all_events if event.is_step_failure]
    data = failure.step_failure_data.user_failure_data
    assert "could not be delivered and stay pending" in data.description
    assert data.metadata["pending_total"].value == len(expected)
    incomplete = checks(failed)["delivery_complete"]
    assert not incomplete.passed and incomplete.metadata["pending_total"].value == len(expected)
    assert received_ids(clean_sandbox) == []

    clean_sandbox.clear_faults()
    recovered = run_hour(resources, key)

    assert recovered.success
    assert checks(recovered)["delivery_complete"].passed
    meta = metadata(recovered)
    assert (meta["new_events"], meta["forwarded"], meta["pending_total"]) == (0, len(expected), 0)
    got = received_ids(clean_sandbox)
    assert sorted(got) == sorted(expected) and len(got) == len(set(got))


@pytest.mark.slow
def test_an_outage_of_one_hour_is_delivered_by_the_next_hours_run(resources, clean_sandbox):
    keys = complete_hours(6)
    inject_events(clean_sandbox, keys[0], 3)  # the demo's night hours can be empty
    clean_sandbox.set_faults("splunk", rate_503=1.0)
    assert not run_hour(resources, keys[0]).success
    clean_sandbox.clear_faults()

    nxt = run_hour(resources, keys[1])

    assert nxt.success and metadata(nxt)["pending_total"] == 0
    expected = audit_ids(clean_sandbox, *window_of(keys[0], keys[1]))
    assert sorted(received_ids(clean_sandbox)) == sorted(expected)


@pytest.mark.slow
def test_an_hour_never_forwarded_between_forwarded_hours_fails_the_gap_check(resources, clean_sandbox,
                                                                             instance):
    first, _, third = complete_hours(3)
    assert run_hour(resources, first, instance).success

    result = run_hour(resources, third, instance)

    gap = checks(result)["no_gap_between_forwarded_windows"]
    assert not gap.passed and gap.severity == dg.AssetCheckSeverity.WARN
    assert gap.metadata["missing_hours"].value == 1
    assert checks(result)["delivery_complete"].passed


@pytest.mark.slow
def test_a_wrong_index_stops_the_run_without_rejecting_events(resources, clean_sandbox):
    key = busiest_hour(clean_sandbox, complete_hours(6))
    resources = resources | {"splunk": splunk_resource(clean_sandbox, index="not_allowed")}

    result = run_hour(resources, key)

    assert not result.success
    [failure] = [event for event in result.all_events if event.is_step_failure]
    assert "Incorrect index (code 7)" in failure.step_failure_data.user_failure_data.description
    assert clean_sandbox.stats()["splunk"]["requests"] == 1  # not split and retried event by event


@pytest.mark.slow
def test_pull_metadata_counts_by_action_type(resources, clean_sandbox):
    key = busiest_hour(clean_sandbox, complete_hours(6))
    window = PARTITIONS.time_window_for_partition_key(key)

    result = run_hour(resources, key)

    meta = metadata(result, PULL_NODE)
    events = [e for e in received_events(clean_sandbox)]
    kinds = Counter(item["event"]["type"] for item in events)
    assert meta["events_pulled"] == meta["new_events"] == len(events)
    assert meta["window_start"] == window.start.isoformat()
    most, n = kinds.most_common(1)[0]
    assert f"| {most} | {n} | {n} |" in meta["by_action_type"]
    assert isinstance(meta["duration_seconds"], float)


@pytest.mark.slow
def test_actor_emails_leave_hashed(resources, clean_sandbox):
    keys = complete_hours(6)
    for key in keys:
        assert run_hour(resources, key).success

    events = [item["event"] for item in received_events(clean_sandbox)]
    with_email = [e for e in events if "actorEmail" in e]
    assert with_email and all(e["actorEmail"].startswith(HASH_PREFIX) for e in with_email)
    assert not any("@" in str(e.get("actor", "")) for e in events)


def test_partitions_are_hourly_and_include_the_hour_in_progress():
    keys = PARTITIONS.get_partition_keys(current_time=datetime.fromisoformat("2026-11-23T16:30:00+00:00"))
    assert keys[-1] == "2026-11-23-16:00" and keys[-2] == "2026-11-23-15:00"
