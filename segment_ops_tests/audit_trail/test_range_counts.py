"""A run over several hourly partitions (a single-run backfill) reports each partition's own counts."""

from __future__ import annotations

from datetime import timedelta

import dagster as dg
import pytest

from segment_ops.syncs.audit_trail.defs import (
    WINDOW_OVERLAP,
    HourFigures,
    figures_by_partition,
    hour_of,
    segment_audit_events,
    siem_audit_events,
)
from segment_ops_tests.audit_trail.conftest import (
    FORWARD_NODE,
    PULL_NODE,
    audit_ids,
    complete_hours,
    inject_events,
    received_ids,
    window_of,
)


def per_partition(result: dg.ExecuteInProcessResult, node: str) -> dict[str, dict]:
    return {m.partition: {k: v.value for k, v in m.metadata.items()}
            for m in result.asset_materializations_for_node(node)}


@pytest.mark.slow
def test_a_range_run_of_four_hours_reports_each_hours_own_counts(resources, clean_sandbox, instance):
    keys = complete_hours(4)
    for extra, key in enumerate(keys, 1):  # a different count in each hour, whatever the demo's quiet hours
        inject_events(clean_sandbox, key, extra)
    expected = {key: len(audit_ids(clean_sandbox, *window_of(key, key))) for key in keys}
    start, end = window_of(keys[0], keys[-1])
    total = len(audit_ids(clean_sandbox, start - WINDOW_OVERLAP, end))

    result = dg.materialize([segment_audit_events, siem_audit_events], resources=resources, instance=instance,
                            tags={"dagster/asset_partition_range_start": keys[0],
                                  "dagster/asset_partition_range_end": keys[-1]}, raise_on_error=False)

    assert result.success
    pulled, forwarded = per_partition(result, PULL_NODE), per_partition(result, FORWARD_NODE)
    assert sorted(pulled) == sorted(forwarded) == sorted(keys)
    assert {key: pulled[key]["events_pulled"] for key in keys} == expected
    assert {key: forwarded[key]["events_in_window"] for key in keys} == expected
    assert {key: forwarded[key]["forwarded"] for key in keys} == expected
    assert sum(forwarded[key]["forwarded"] for key in keys) == total == len(received_ids(clean_sandbox))
    assert all(m["run_forwarded"] == total and m["run_partitions"] == 4 for m in forwarded.values())
    assert {m["window_start"] for m in forwarded.values()} == {
        window_of(key, key)[0].isoformat() for key in keys}


@pytest.mark.slow
def test_rerunning_a_range_reports_each_hour_as_already_forwarded(resources, clean_sandbox, instance):
    keys = complete_hours(2)
    for key in keys:
        inject_events(clean_sandbox, key, 2)
    tags = {"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]}
    assert dg.materialize([segment_audit_events, siem_audit_events], resources=resources, instance=instance,
                          tags=tags).success

    again = dg.materialize([segment_audit_events, siem_audit_events], resources=resources, instance=instance,
                           tags=tags)

    forwarded = per_partition(again, FORWARD_NODE)
    for key in keys:
        events = len(audit_ids(clean_sandbox, *window_of(key, key)))
        assert (forwarded[key]["new_events"], forwarded[key]["forwarded"],
                forwarded[key]["already_forwarded_or_pending"], forwarded[key]["window_delivered"]) == (
            0, 0, events, events)


def test_an_event_on_the_hour_belongs_to_the_hour_it_ends():
    on_the_hour = 1_764_421_200 * 1_000_000  # 2025-11-29T13:00:00Z
    assert hour_of(on_the_hour).isoformat() == "2025-11-29T12:00:00+00:00"
    assert hour_of(on_the_hour + 1).isoformat() == "2025-11-29T13:00:00+00:00"


def test_the_reads_second_of_overlap_counts_for_the_first_partition():
    keys = ["2026-11-29-10:00", "2026-11-29-11:00"]
    first, _ = window_of(keys[0], keys[0])
    by_hour = {first - timedelta(hours=1): HourFigures(events=1), first: HourFigures(events=2),
               first + timedelta(hours=1): HourFigures(events=5)}

    totals = figures_by_partition(by_hour, keys)

    assert {key: figures.events for key, figures in totals.items()} == {keys[0]: 3, keys[1]: 5}
