"""`sync_audience` on pages written straight to the inbox: ordering across pages and syncs, time zones, and
syncs left unprocessed when Segment does not accept the run."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from segment_ops.config import SANDBOX_SEGMENT_WRITE_KEY
from segment_ops.engine.run import DeliveryIncomplete
from segment_ops.resources import SegmentTrackingResource
from segment_ops.syncs.heap.audiences import sync_audience
from segment_ops.syncs.heap.inbox import Inbox
from segment_ops.syncs.heap.webhook import SyncPage
from segment_ops_tests.heap.conftest import POWER_USERS, edit_warehouse

T0 = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)


def segment(sandbox, write_key: str = SANDBOX_SEGMENT_WRITE_KEY) -> SegmentTrackingResource:
    return SegmentTrackingResource(base_url=f"{sandbox.url}/segment", write_key=write_key)


def store(inbox: Inbox, task: str, number: int, total: int, at: datetime, add=(), remove=()) -> None:
    inbox.store(SyncPage(task, number, total, POWER_USERS, "Power Users", tuple(add), tuple(remove)),
                received_at=at)


def run_webhook(con, audiences, inbox: Inbox, warehouse: Path, sandbox, **kwargs):
    return sync_audience(con, audiences, audiences.by_segment(POWER_USERS), route="webhook", inbox=inbox,
                         warehouse_url=f"duckdb:///{warehouse}", client_factory=segment(sandbox).get_client,
                         **kwargs)


def members(con) -> dict[str, bool]:
    return dict(con.execute("SELECT identity, member FROM heap_membership").fetchall())


def test_two_syncs_in_one_run_apply_in_arrival_order(con, audiences, ops_env, warehouse, clean_sandbox):
    inbox = Inbox.for_home(ops_env)
    store(inbox, "sync-b", 1, 1, T0 + timedelta(hours=4), remove=["usr_x"])  # stored first, arrived later
    store(inbox, "sync-a", 1, 1, T0, add=["usr_x", "usr_y"])

    run = run_webhook(con, audiences, inbox, warehouse, clean_sandbox)

    assert [s.sync_task_id for s in run.syncs] == ["sync-a", "sync-b"]
    assert members(con) == {"usr_x": False, "usr_y": True}
    assert {m["userId"] for m in clean_sandbox.received("segment") if m["type"] == "identify"} == {"usr_y"}
    assert inbox.syncs() == []


def test_a_later_syncs_remove_in_its_second_page_wins_over_an_add_in_an_earlier_syncs_first_page(
        con, audiences, ops_env, warehouse, clean_sandbox):
    inbox = Inbox.for_home(ops_env)
    # Interleaved and out of order: the later sync's page 2 is stored before the earlier sync's page 1.
    store(inbox, "sync-b", 1, 2, T0 + timedelta(hours=4), add=["usr_z"])
    store(inbox, "sync-b", 2, 2, T0 + timedelta(hours=4, seconds=5), remove=["usr_x"])
    store(inbox, "sync-a", 2, 2, T0 + timedelta(seconds=5), add=["usr_y"])
    store(inbox, "sync-a", 1, 2, T0, add=["usr_x"])

    run_webhook(con, audiences, inbox, warehouse, clean_sandbox)

    assert members(con) == {"usr_x": False, "usr_y": True, "usr_z": True}


def test_an_identity_added_in_page_1_and_removed_in_page_2_of_one_sync_ends_removed(
        con, audiences, ops_env, warehouse, clean_sandbox):
    inbox = Inbox.for_home(ops_env)
    store(inbox, "sync-a", 2, 2, T0 + timedelta(seconds=1), remove=["usr_x"])  # page 2 arrives first
    store(inbox, "sync-a", 1, 2, T0 + timedelta(seconds=2), add=["usr_x", "usr_y"])

    run = run_webhook(con, audiences, inbox, warehouse, clean_sandbox)

    assert members(con) == {"usr_x": False, "usr_y": True}
    assert (run.pages, run.adds_received, run.removes_received) == (2, 2, 1)


def test_a_run_segment_does_not_accept_leaves_the_syncs_unprocessed(con, audiences, ops_env, warehouse,
                                                                    clean_sandbox):
    inbox = Inbox.for_home(ops_env)
    store(inbox, "sync-a", 1, 1, T0, add=["usr_x"])
    # A wrong write key no longer gets a refusal: Segment answers it 200 and drops the data (spec §7). A wrong
    # SEGMENT_TRACKING_URL path is refused (404): the messages stay pending.
    misconfigured = SegmentTrackingResource(base_url=f"{clean_sandbox.url}/segment/not-the-api",
                                            write_key=SANDBOX_SEGMENT_WRITE_KEY)

    with pytest.raises(DeliveryIncomplete):
        sync_audience(con, audiences, audiences.by_segment(POWER_USERS), route="webhook", inbox=inbox,
                      warehouse_url=f"duckdb:///{warehouse}", client_factory=misconfigured.get_client)

    assert [(s.sync_task_id, s.done) for s in inbox.syncs()] == [("sync-a", False)]


def test_heap_connect_synced_at_without_a_zone_is_read_as_utc(con, audiences, ops_env, warehouse,
                                                              clean_sandbox):
    # Like Snowflake TIMESTAMP_NTZ: the column holds UTC wall-clock times with no zone.
    edit_warehouse(warehouse, "CREATE TABLE main_production.members_ntz AS SELECT m.segment_id, u.identity, "
                              "TIMESTAMP '2025-03-01 12:00:00' AS synced_at "
                              "FROM main_production.segment_members m "
                              "JOIN main_production.users u USING (user_id)")
    con.execute("SET TimeZone = 'America/New_York'")  # a machine whose local zone is not UTC
    naive = replace(audiences,
                    members_query="SELECT segment_id, identity, synced_at FROM main_production.members_ntz")

    sync_audience(con, naive, naive.by_segment(POWER_USERS), route="reconcile", inbox=Inbox.for_home(ops_env),
                  warehouse_url=f"duckdb:///{warehouse}", client_factory=segment(clean_sandbox).get_client)

    [(as_of,)] = con.execute("SELECT DISTINCT epoch(as_of) FROM heap_membership").fetchall()
    assert as_of == datetime(2025, 3, 1, 12, tzinfo=UTC).timestamp()
