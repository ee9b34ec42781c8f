"""A backfill of 24 hourly audit-trail partitions, launched the way the UI launches one: Dagster's GraphQL
`launchPartitionBackfill` on `dagster dev`, run by its daemon under the project's dagster.yaml.

The window is the 24 complete hours before the newest two, which `audit_events_sensor` probes and forwards
on its own while `dagster dev` is up. Events are injected into the sandbox's Public API first: one on
the boundary between two hours of the window (it belongs to the earlier hour only, windows being
(start, end]), one in the middle of an hour, and one in every hour of the window (so the window is never
empty, whatever the day: the demo world has few events at weekends).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta

import pytest

from segment_ops.syncs.audit_trail.defs import FORWARD_KEY, PULL_KEY, complete_hours
from segment_ops_tests.audit_trail.conftest import audit_ids, received_ids, window_of
from segment_ops_tests.ops.conftest import DagsterDev, DagsterDevError

# The module's first test also waits for `dagster dev` to start and for the backfill (one run of 24 hours,
# plus the daemon's pick-up delay).
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

HOURS = 24
BACKFILL_TIMEOUT_SECONDS = 240.0  # measured 59 s on 2 cores (the daemon picks a backfill up within ~30 s)

LAUNCH_BACKFILL = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on Error { message }
  }
}
"""

BACKFILL_STATUS = """
query Backfill($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill {
      status
      numPartitions
      error { message }
      assetBackfillData {
        assetBackfillStatuses {
          ... on AssetPartitionsStatusCounts {
            assetKey { path }
            numPartitionsTargeted
            numPartitionsMaterialized
            numPartitionsFailed
          }
        }
      }
    }
    ... on Error { message }
  }
}
"""

BACKFILL_DONE = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}


@dataclass
class Backfill:
    keys: list[str]
    backfill_id: str
    status: dict
    runs: list[dict]
    injected: list[dict]
    seconds: float


def iso_z(moment) -> str:
    return moment.isoformat().replace("+00:00", "Z")


@pytest.fixture(scope="module")
def backfill(dagster_dev: DagsterDev) -> Backfill:
    """Launch the backfill of 24 hours through GraphQL and poll it until the daemon says it is done."""
    keys = complete_hours(HOURS + 2)[:HOURS]
    start, _ = window_of(keys[0], keys[-1])
    boundary = start + timedelta(hours=3)  # the end of the window's third hour, the start of its fourth
    injected = dagster_dev.sandbox.inject_audit_events([
        {"timestamp": iso_z(boundary), "type": "Source Updated"},
        {"timestamp": iso_z(start + timedelta(hours=7, minutes=41)), "type": "Destination Created"},
        # one per hour, so the window has events on any day (the demo world is quiet at weekends)
        *({"timestamp": iso_z(start + timedelta(hours=h, minutes=17)), "type": "Source Updated"}
          for h in range(HOURS)),
    ])
    started = time.monotonic()
    launched = dagster_dev.graphql(LAUNCH_BACKFILL, {"params": {
        "assetSelection": [{"path": PULL_KEY.path}, {"path": FORWARD_KEY.path}],
        "partitionNames": keys,
        "fromFailure": False,
        "title": f"test: {HOURS} hours of audit trail",
    }})["launchPartitionBackfill"]
    if launched["__typename"] != "LaunchBackfillSuccess":
        raise DagsterDevError(f"launchPartitionBackfill: {launched}")
    backfill_id = launched["backfillId"]
    deadline = started + BACKFILL_TIMEOUT_SECONDS
    status: dict = {}
    while time.monotonic() < deadline:
        status = dagster_dev.graphql(BACKFILL_STATUS, {"id": backfill_id})["partitionBackfillOrError"]
        if status.get("status") in BACKFILL_DONE:
            break
        time.sleep(2.0)
    else:
        raise DagsterDevError(f"backfill {backfill_id} still {status.get('status')} after "
                              f"{BACKFILL_TIMEOUT_SECONDS:.0f}s: {status}\n{dagster_dev.log_tail()}")
    seconds = time.monotonic() - started
    print(f"\nbackfill of {HOURS} hourly partitions: {status['status']} in {seconds:.1f}s")
    runs = dagster_dev.runs(tags=[{"key": "dagster/backfill", "value": backfill_id}])
    return Backfill(keys, backfill_id, status, runs, injected, seconds)


def test_graphql_backfill_of_24_hours_completes_successfully(backfill):
    assert backfill.status["__typename"] == "PartitionBackfill"
    assert backfill.status["error"] is None
    assert (backfill.status["status"], backfill.status["numPartitions"]) == ("COMPLETED_SUCCESS", HOURS)


def test_backfill_materializes_every_partition_of_both_audit_assets(backfill):
    counts = {tuple(s["assetKey"]["path"]): (s["numPartitionsTargeted"], s["numPartitionsMaterialized"],
                                             s["numPartitionsFailed"])
              for s in backfill.status["assetBackfillData"]["assetBackfillStatuses"]}
    assert counts == {tuple(PULL_KEY.path): (HOURS, HOURS, 0), tuple(FORWARD_KEY.path): (HOURS, HOURS, 0)}


def test_backfill_covers_every_hour_once_in_successful_runs(backfill):
    """A backfill run covers up to a day of hours (audit_trail.BACKFILL_POLICY): every hour in exactly one
    run."""
    covered: Counter[str] = Counter()
    for run in backfill.runs:
        tags = {tag["key"]: tag["value"] for tag in run["tags"]}
        if "dagster/partition" in tags:
            covered[tags["dagster/partition"]] += 1
        else:
            first, last = (tags["dagster/asset_partition_range_start"],
                           tags["dagster/asset_partition_range_end"])
            covered.update(backfill.keys[backfill.keys.index(first):backfill.keys.index(last) + 1])
    assert sorted(covered) == sorted(backfill.keys)
    assert set(covered.values()) == {1}
    assert {run["status"] for run in backfill.runs} == {"SUCCESS"}


def test_every_audit_event_of_the_24_hours_reaches_splunk_exactly_once(backfill, dagster_dev):
    start, end = window_of(backfill.keys[0], backfill.keys[-1])
    expected = audit_ids(dagster_dev.sandbox, start, end)
    in_window = set(expected)

    forwarded = Counter(event_id for event_id in received_ids(dagster_dev.sandbox) if event_id in in_window)

    assert len(expected) > HOURS  # one injected per hour, the two others, and the demo world's
    assert set(forwarded) == in_window
    assert set(forwarded.values()) == {1}


def test_an_event_on_an_hour_boundary_is_forwarded_once(backfill, dagster_dev):
    on_boundary, inside = (event["id"] for event in backfill.injected[:2])

    forwarded = Counter(received_ids(dagster_dev.sandbox))

    assert (forwarded[on_boundary], forwarded[inside]) == (1, 1)
