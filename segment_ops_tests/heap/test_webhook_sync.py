"""Webhook route end to end: sandbox Heap -> real receiver over HTTP -> inbox -> sensor -> Dagster run ->
Segment."""

from __future__ import annotations

import httpx
import orjson
import pytest

from segment_ops.resources import AlertsResource, build_resources
from segment_ops.syncs.heap.webhook import sync_key
from segment_ops_tests.heap.conftest import (
    AT,
    FREE_CUSTOMERS,
    POWER_USERS,
    calls,
    checks,
    connect_rows,
    evaluate_sensor,
    inbox,
    materialize,
    metadata,
    pages,
    resolvable,
    run_request,
    segment_stats,
    set_in_file,
    sign,
    step_failure,
)


def push_and_run(heap, instance, resources, home, **push):
    pushed = heap.push_heap(at=AT, **push)
    result = evaluate_sensor(instance, home)
    runs = [run_request(instance, resources, request) for request in result.run_requests]
    return pushed, result, runs


@pytest.mark.slow
def test_first_sync_enters_every_resolvable_member(heap, instance, resources, ops_env, warehouse):
    pushed, sensed, runs = push_and_run(heap, instance, resources, ops_env)

    assert {s["segment_id"] for s in pushed["syncs"]} == {POWER_USERS, FREE_CUSTOMERS}
    assert all(d["status"] == "delivered" for d in pushed["deliveries"])
    assert len(sensed.run_requests) == 2 and all(r.success for r in runs)
    expected = resolvable(warehouse, POWER_USERS)
    power = calls(heap, "heap_power_users")
    assert {m["userId"] for m in power["in"]} == expected and len(power["in"]) == len(expected)
    assert {m["userId"] for m in power["entered"]} == expected
    assert power["entered"][0]["properties"] == {"audience_key": "heap_power_users",
                                                 "audience_name": "Power Users",
                                                 "heap_segment_id": POWER_USERS, "source": "Heap"}
    assert power["out"] == [] and power["exited"] == []
    [power_run] = [r for r in runs if r.dagster_run.tags["segment_ops/heap_audience"] == "power_users"]
    meta = metadata(power_run, "power_users")
    assert (meta["added"], meta["delivered"], meta["unresolved"]) == (len(expected), 2 * len(expected), 0)
    assert meta["pages_received"] == pages(connect_rows(warehouse, POWER_USERS)) and meta["match_rate"] == 1.0
    assert all(c.passed for c in checks(power_run).values())


@pytest.mark.slow
def test_every_processed_sync_is_marked_done_and_not_requested_again(heap, instance, resources, ops_env,
                                                                     warehouse):
    pushed, _, runs = push_and_run(heap, instance, resources, ops_env)

    again = evaluate_sensor(instance, ops_env)

    assert all(r.success for r in runs)
    assert again.run_requests == [] and "no complete Heap sync or drain" in again.skip_reason.skip_message
    for sync in pushed["syncs"]:
        assert inbox(ops_env).is_done(sync["sync_task_id"])


@pytest.mark.slow
def test_a_redelivered_page_sends_nothing(heap, instance, resources, ops_env, warehouse, receiver):
    pushed, _, runs = push_and_run(heap, instance, resources, ops_env, duplicate_pages=[1, 2])
    sent = segment_stats(heap)
    [page] = [p for p in inbox(ops_env).pages(pushed["syncs"][0]["sync_task_id"]) if p["page_number"] == 1]
    body = orjson.dumps({"action_type": "segment.users.sync", "data": {
        "segment": page["segment"], "sync_info": {"page_number": 1, "total_pages": page["total_pages"],
                                                  "sync_task_id": page["sync_task_id"]},
        "add": [{"id": i} for i in page["add"]], "remove": [{"id": i} for i in page["remove"]]}})

    late = httpx.post(receiver.heap_url, content=body, headers={"Heap-Hash": sign(body)})
    sensed = evaluate_sensor(instance, ops_env)
    rerun = materialize(resources, "power_users", route="webhook")

    assert all(r.success for r in runs) and late.json()["stored"] is False
    assert sensed.run_requests == []
    assert rerun.success and metadata(rerun, "power_users")["planned"] == 0
    assert segment_stats(heap) == sent and sent[1] == 0


@pytest.mark.slow
def test_pages_out_of_order_give_the_same_membership(heap, instance, resources, ops_env, warehouse):
    _, _, runs = push_and_run(heap, instance, resources, ops_env, reorder=True)

    assert all(r.success for r in runs)
    assert ({m["userId"] for m in calls(heap, "heap_free_customers")["in"]}
            == resolvable(warehouse, FREE_CUSTOMERS))


def test_a_bad_signature_gets_403_and_nothing_is_stored(heap, instance, ops_env):
    pushed = heap.push_heap(at=AT, bad_signature=True)

    assert pushed["deliveries"] and all(d["status"] == "failed" and d["last_result"] == "HTTP 403"
                                        and d["attempts"] == 3 for d in pushed["deliveries"])
    assert not (ops_env / "inbox" / "heap").exists() or list((ops_env / "inbox" / "heap").iterdir()) == []
    assert evaluate_sensor(instance, ops_env).run_requests == []


def test_a_sync_missing_a_page_is_held(heap, instance, resources, ops_env, warehouse):
    pushed = heap.push_heap(at=AT, omit_pages=[2], segments=[POWER_USERS])
    [sync] = pushed["syncs"]

    sensed = evaluate_sensor(instance, ops_env)
    forced = materialize(resources, "power_users", route="webhook", sync_task_ids=[sync["sync_task_id"]])

    assert sensed.run_requests == []
    assert "1 incomplete sync(s) waiting for pages" in sensed.skip_reason.skip_message
    assert not forced.success and f"page(s) [2] of {sync['total_pages']} have not arrived" in \
        step_failure(forced, "power_users").description
    assert segment_stats(heap) == (0, 0)


def test_a_sync_incomplete_beyond_the_configured_age_is_reported_not_applied(heap, instance, ops_env,
                                                                             audiences_file):
    set_in_file(audiences_file, "stale_incomplete_sync_minutes = 60", "stale_incomplete_sync_minutes = 0")
    [sync] = heap.push_heap(at=AT, omit_pages=[3], segments=[POWER_USERS])["syncs"]
    task = sync["sync_task_id"]

    sensed = evaluate_sensor(instance, ops_env, path=audiences_file)
    again = evaluate_sensor(instance, ops_env, cursor=sensed.cursor, path=audiences_file)

    assert sensed.run_requests == []
    assert f"Heap sync {task!r}: power_users: incomplete for" in sensed.skip_reason.skip_message
    assert (f"page(s) [3] of {sync['total_pages']} never arrived; not applied"
            in sensed.skip_reason.skip_message)
    assert sync_key(task) in sensed.cursor and again.cursor == sensed.cursor


def test_a_stale_incomplete_sync_is_alerted_once(heap, instance, ops_env, audiences_file):
    set_in_file(audiences_file, "stale_incomplete_sync_minutes = 60", "stale_incomplete_sync_minutes = 0")
    [sync] = heap.push_heap(at=AT, omit_pages=[3], segments=[POWER_USERS])["syncs"]
    task = sync["sync_task_id"]

    sensed = evaluate_sensor(instance, ops_env, path=audiences_file)
    evaluate_sensor(instance, ops_env, cursor=sensed.cursor, path=audiences_file)

    [alert] = heap.received("slack")
    assert f"Heap sync `{task}` for `power_users` is incomplete" in alert["text"]
    assert f"page(s) [3] of {sync['total_pages']} never arrived" in alert["text"]
    assert "/assets/segment/heap_audiences/power_users|Open power_users>" in alert["text"]


def test_a_held_sync_younger_than_the_configured_age_is_not_alerted(heap, instance, ops_env):
    heap.push_heap(at=AT, omit_pages=[3], segments=[POWER_USERS])

    evaluate_sensor(instance, ops_env)

    assert heap.received("slack") == []


def test_a_stale_sync_alert_that_could_not_be_posted_is_posted_on_the_next_tick(heap, instance, ops_env,
                                                                                 audiences_file):
    set_in_file(audiences_file, "stale_incomplete_sync_minutes = 60", "stale_incomplete_sync_minutes = 0")
    heap.push_heap(at=AT, omit_pages=[3], segments=[POWER_USERS])
    # One attempt per post, built as a new resource: Dagster rebuilds a resource from the arguments it was
    # made with, so a `model_copy(update=...)` of it is lost in the sensor (which then retried with
    # backoff).
    sandbox_alerts = build_resources()["alerts"]
    impatient = AlertsResource(webhook_url=sandbox_alerts.webhook_url,
                               dagster_ui_url=sandbox_alerts.dagster_ui_url, retry_max_attempts=1)
    heap.set_faults("slack", rate_500=1.0)

    failed = evaluate_sensor(instance, ops_env, path=audiences_file, alerts=impatient)
    heap.clear_faults()
    posted = evaluate_sensor(instance, ops_env, cursor=failed.cursor, path=audiences_file, alerts=impatient)
    evaluate_sensor(instance, ops_env, cursor=posted.cursor, path=audiences_file, alerts=impatient)

    assert failed.cursor == "[]"
    assert len(heap.received("slack")) == 1


def to_old_layout(home, sync_task_id: str, *, folder_name: str | None = None, summary: bool = True):
    """Move a stored sync back to the layout of receivers from before ids were hashed: inbox/heap/<raw id>/,
    whose sync.json had no id (`summary` False: the oldest layout, no sync.json at all)."""
    new = inbox(home).sync_folder(sync_task_id)
    old = new.parent / (folder_name or sync_task_id)
    new.rename(old)
    known = orjson.loads((old / "sync.json").read_bytes())
    (old / "sync.json").unlink()
    if summary:
        (old / "sync.json").write_bytes(orjson.dumps({k: v for k, v in known.items() if k != "sync_task_id"}))
    return old


@pytest.mark.slow
def test_a_pending_sync_of_the_older_inbox_layout_is_migrated_and_applied(heap, instance, resources, ops_env,
                                                                         warehouse):
    pushed = heap.push_heap(at=AT, segments=[POWER_USERS])
    [task] = {s["sync_task_id"] for s in pushed["syncs"]}
    old = to_old_layout(ops_env, task)

    sensed = evaluate_sensor(instance, ops_env)
    [result] = [run_request(instance, resources, r) for r in sensed.run_requests]

    assert not old.exists() and inbox(ops_env).sync_folder(task).is_dir()
    assert result.success and inbox(ops_env).is_done(task)
    expected = resolvable(warehouse, POWER_USERS)
    assert {m["userId"] for m in calls(heap, "heap_power_users")["entered"]} == expected
    assert "folder:" not in (sensed.cursor or "")


@pytest.mark.parametrize("name", ["sync-legacy-1", "drain-legacy-1"])
def test_old_ids_that_look_like_this_layouts_prefixes_are_migrated_too(heap, ops_env, instance, name):
    pushed = heap.push_heap(at=AT, segments=[POWER_USERS])
    [task] = {s["sync_task_id"] for s in pushed["syncs"]}
    to_old_layout(ops_env, task, folder_name=name, summary=False)

    sensed = evaluate_sensor(instance, ops_env)

    [sync] = inbox(ops_env).syncs()
    assert sync.sync_task_id == task and sync.complete and len(sensed.run_requests) == 1
    assert not (ops_env / "inbox" / "heap" / name).exists() and inbox(ops_env).drains() == []


def test_a_folder_of_an_older_layout_that_cannot_be_migrated_is_reported_once(ops_env, instance):
    (ops_env / "inbox" / "heap" / "FreeCustomersSync").mkdir(parents=True)

    sensed = evaluate_sensor(instance, ops_env)
    again = evaluate_sensor(instance, ops_env, cursor=sensed.cursor)

    assert "FreeCustomersSync is a folder of an older inbox layout that could not be moved" in \
        sensed.skip_reason.skip_message
    assert "it holds no page-<n>.json" in sensed.skip_reason.skip_message
    assert "folder:FreeCustomersSync" in sensed.cursor and again.cursor == sensed.cursor
