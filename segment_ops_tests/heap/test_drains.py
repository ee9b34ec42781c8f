"""`segment.users.drain`: stored like a page, ordered against syncs by its signed time, applied by
HEAP_DRAIN_POLICY (`exit` through the drop guard, `ignore` recorded only), end to end through the sensor."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import orjson
import pytest

from segment_ops.config import SANDBOX_SEGMENT_WRITE_KEY
from segment_ops.resources import SegmentTrackingResource
from segment_ops.syncs.heap.audiences import MembershipDropError, sync_audience
from segment_ops.syncs.heap.inbox import Inbox
from segment_ops.syncs.heap.webhook import DrainRequest, SyncPage
from segment_ops_tests.heap.conftest import (
    AT,
    POWER_USERS,
    calls,
    checks,
    evaluate_sensor,
    materialize,
    metadata,
    run_request,
    segment_stats,
    set_in_file,
    sign,
    step_failure,
)

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def store_sync(inbox: Inbox, task: str, signed: datetime, add=(), remove=()) -> None:
    inbox.store(SyncPage(task, 1, 1, POWER_USERS, "Power Users", tuple(add), tuple(remove)),
                signed_at=ms(signed))


def store_drain(inbox: Inbox, key: str, signed: datetime, segment: int = POWER_USERS) -> None:
    inbox.store_drain(DrainRequest(key, segment, "Power Users"), signed_at=ms(signed))


def run(con, audiences, inbox, warehouse, sandbox, **kwargs):
    segment = SegmentTrackingResource(base_url=f"{sandbox.url}/segment", write_key=SANDBOX_SEGMENT_WRITE_KEY)
    return sync_audience(con, audiences, audiences.by_segment(POWER_USERS), route="webhook", inbox=inbox,
                         warehouse_url=f"duckdb:///{warehouse}", client_factory=segment.get_client, **kwargs)


def members(con) -> dict[str, bool]:
    return dict(con.execute("SELECT identity, member FROM heap_membership").fetchall())


def exited(sandbox) -> set[str]:
    return {m["userId"] for m in calls(sandbox, "heap_power_users")["exited"]}


def test_a_drain_exits_every_member_stated_before_it(con, audiences, ops_env, warehouse, clean_sandbox):
    inbox = Inbox.for_home(ops_env)
    store_sync(inbox, "sync-a", T0, add=["usr_x", "usr_y"])
    run(con, audiences, inbox, warehouse, clean_sandbox)
    store_drain(inbox, "d1", T0 + timedelta(hours=1))

    drained = run(con, audiences, inbox, warehouse, clean_sandbox)

    assert members(con) == {"usr_x": False, "usr_y": False}
    assert exited(clean_sandbox) == {"usr_x", "usr_y"} and drained.drain_exits == 2
    assert [d.key for d in drained.drains] == ["d1"] and inbox.drains() == [] and inbox.drain("d1").done
    assert (con.execute("SELECT drain_key, policy, exits FROM heap_applied_drains").fetchall()
            == [("d1", "exit", 2)])


def test_a_sync_signed_after_the_drain_stands(con, audiences, ops_env, warehouse, clean_sandbox):
    inbox = Inbox.for_home(ops_env)
    store_sync(inbox, "sync-a", T0, add=["usr_x", "usr_y"])
    run(con, audiences, inbox, warehouse, clean_sandbox)
    store_sync(inbox, "sync-b", T0 + timedelta(hours=2), add=["usr_x", "usr_z"])  # stored first, signed later
    store_drain(inbox, "d1", T0 + timedelta(hours=1))

    run(con, audiences, inbox, warehouse, clean_sandbox)

    assert members(con) == {"usr_x": True, "usr_y": False, "usr_z": True}
    assert exited(clean_sandbox) == {"usr_y"}


@pytest.mark.slow
def test_a_sync_signed_before_an_applied_drain_adds_nobody_when_it_arrives_late(con, audiences, ops_env,
                                                                                 warehouse, clean_sandbox):
    inbox = Inbox.for_home(ops_env)
    store_sync(inbox, "sync-a", T0, add=["usr_x"])
    run(con, audiences, inbox, warehouse, clean_sandbox)
    store_drain(inbox, "d1", T0 + timedelta(hours=2))
    run(con, audiences, inbox, warehouse, clean_sandbox)
    store_sync(inbox, "sync-late", T0 + timedelta(hours=1), add=["usr_w", "usr_x"])  # signed before the drain

    late = run(con, audiences, inbox, warehouse, clean_sandbox)

    assert members(con) == {"usr_x": False, "usr_w": False}
    assert late.plan.added == 0 and "usr_w" not in {m["userId"]
                                                     for m in calls(clean_sandbox, "heap_power_users")["in"]}


def test_policy_ignore_records_the_drain_and_changes_nothing(con, audiences, ops_env, warehouse,
                                                             clean_sandbox):
    inbox = Inbox.for_home(ops_env)
    store_sync(inbox, "sync-a", T0, add=["usr_x"])
    run(con, audiences, inbox, warehouse, clean_sandbox)
    sent = segment_stats(clean_sandbox)
    store_drain(inbox, "d1", T0 + timedelta(hours=1))

    ignored = run(con, audiences, inbox, warehouse, clean_sandbox, drain_policy="ignore")

    assert members(con) == {"usr_x": True} and ignored.drain_exits == 0 and ignored.plan.planned == 0
    assert segment_stats(clean_sandbox) == sent and inbox.drain("d1").done
    assert con.execute("SELECT policy, exits FROM heap_applied_drains").fetchall() == [("ignore", 0)]


def test_an_ignored_drain_does_not_hold_back_a_late_sync(con, audiences, ops_env, warehouse, clean_sandbox):
    inbox = Inbox.for_home(ops_env)
    store_drain(inbox, "d1", T0 + timedelta(hours=2))
    run(con, audiences, inbox, warehouse, clean_sandbox, drain_policy="ignore")
    store_sync(inbox, "sync-late", T0 + timedelta(hours=1), add=["usr_w"])

    run(con, audiences, inbox, warehouse, clean_sandbox)

    assert members(con) == {"usr_w": True}


@pytest.mark.slow
def test_a_drain_beyond_the_drop_guard_changes_nothing_until_confirmed(con, audiences, ops_env, warehouse,
                                                                       clean_sandbox):
    inbox = Inbox.for_home(ops_env)
    many = [f"usr_{i:03d}" for i in range(12)]  # more than drop_guard_min_exits (10)
    store_sync(inbox, "sync-a", T0, add=many)
    run(con, audiences, inbox, warehouse, clean_sandbox)
    sent = segment_stats(clean_sandbox)
    store_drain(inbox, "d1", T0 + timedelta(hours=1))

    with pytest.raises(MembershipDropError,
                       match="Heap's drain of the segment would exit 12 of 12 delivered members"):
        run(con, audiences, inbox, warehouse, clean_sandbox)
    refused = (segment_stats(clean_sandbox), [d.key for d in inbox.drains()], set(members(con).values()))
    confirmed = run(con, audiences, inbox, warehouse, clean_sandbox, confirm_drop=True)

    assert refused == (sent, ["d1"], {True})
    assert confirmed.guard.confirmed and exited(clean_sandbox) == set(many) and inbox.drains() == []


def test_a_dry_run_with_a_drain_marks_nothing(con, audiences, ops_env, warehouse, clean_sandbox):
    inbox = Inbox.for_home(ops_env)
    store_sync(inbox, "sync-a", T0, add=["usr_x"])
    run(con, audiences, inbox, warehouse, clean_sandbox)
    store_drain(inbox, "d1", T0 + timedelta(hours=1))

    dry = run(con, audiences, inbox, warehouse, clean_sandbox, dry_run=True)

    assert dry.plan.removed == 1 and members(con) == {"usr_x": True}
    assert [d.key for d in inbox.drains()] == ["d1"] and exited(clean_sandbox) == set()


def test_a_drain_named_for_another_segment_is_refused(con, audiences, ops_env, warehouse, clean_sandbox):
    inbox = Inbox.for_home(ops_env)
    store_drain(inbox, "d9", T0, segment=999)

    with pytest.raises(Exception, match="drain d9 is for Heap segment 999"):
        run(con, audiences, inbox, warehouse, clean_sandbox, drain_keys=["d9"])


def test_an_unknown_drain_policy_is_refused(con, audiences, ops_env, warehouse, clean_sandbox):
    with pytest.raises(ValueError, match="drain_policy must be one of exit, ignore"):
        run(con, audiences, Inbox.for_home(ops_env), warehouse, clean_sandbox, drain_policy="purge")


# ------------------------------------------------------------------ end to end: sandbox -> receiver -> sensor


def drain(sandbox, segment: int = POWER_USERS, **spec) -> dict:
    response = httpx.post(f"{sandbox.url}/__sandbox__/heap/drain", json={"segment": segment, **spec},
                          timeout=60)
    response.raise_for_status()
    return response.json()


def apply_pending(instance, resources, home, path=None):
    sensed = evaluate_sensor(instance, home, path=path)
    return sensed, [run_request(instance, resources, r, path=path) for r in sensed.run_requests]


@pytest.mark.slow
def test_a_heap_drain_is_stored_and_applied_through_the_sensor(heap, instance, resources, ops_env, warehouse,
                                                               audiences_file):
    # a small audience
    set_in_file(audiences_file, "drop_guard_min_exits = 10", "drop_guard_min_exits = 1000")
    heap.push_heap(at=AT, segments=[POWER_USERS])
    _, first = apply_pending(instance, resources, ops_env, audiences_file)
    entered = {m["userId"] for m in calls(heap, "heap_power_users")["in"]}

    [delivery] = drain(heap)["deliveries"]
    sensed, [applied] = apply_pending(instance, resources, ops_env, audiences_file)

    assert all(r.success for r in first) and delivery["status"] == "delivered"
    [request] = sensed.run_requests
    assert request.tags["segment_ops/heap_drain"] and request.run_config["ops"][
        "segment__heap_audiences__power_users"]["config"] == {
            "route": "webhook", "sync_task_ids": [], "drain_keys": [request.tags["segment_ops/heap_drain"]]}
    assert applied.success and exited(heap) == entered
    meta = metadata(applied, "power_users")
    assert ((meta["drain_policy"], meta["drain_exits"], meta["removed"])
            == ("exit", len(entered), len(entered)))
    assert (Inbox.for_home(ops_env).drains() == []
            and evaluate_sensor(instance, ops_env, path=audiences_file).run_requests == [])


@pytest.mark.slow
def test_a_heap_drain_beyond_the_drop_guard_fails_the_run_and_waits_for_confirmation(heap, instance,
                                                                                     resources, ops_env,
                                                                                     warehouse):
    heap.push_heap(at=AT, segments=[POWER_USERS])
    apply_pending(instance, resources, ops_env)
    sent = segment_stats(heap)
    drain(heap)

    _, [guarded] = apply_pending(instance, resources, ops_env)
    [pending] = Inbox.for_home(ops_env).drains()
    confirmed = materialize(resources, "power_users", route="webhook", sync_task_ids=[],
                            drain_keys=[pending.key], confirm_drop=True)

    assert not guarded.success and ("Heap's drain of the segment would exit"
                                    in step_failure(guarded, "power_users").description)
    assert not checks(guarded)["membership_drop_guard"].passed
    assert confirmed.success and len(exited(heap)) == sent[0] // 2
    assert Inbox.for_home(ops_env).drains() == []


@pytest.mark.slow
def test_with_policy_ignore_a_heap_drain_is_recorded_and_sends_nothing(heap, instance, resources, ops_env,
                                                                       warehouse, monkeypatch):
    heap.push_heap(at=AT, segments=[POWER_USERS])
    apply_pending(instance, resources, ops_env)
    sent = segment_stats(heap)
    monkeypatch.setenv("HEAP_DRAIN_POLICY", "ignore")
    drain(heap)

    _, [ignored] = apply_pending(instance, resources, ops_env)

    assert ignored.success and metadata(ignored, "power_users")["drain_policy"] == "ignore"
    assert segment_stats(heap) == sent and Inbox.for_home(ops_env).drains() == []


def test_an_unknown_heap_drain_policy_fails_the_run_naming_the_setting(heap, instance, resources, ops_env,
                                                                      warehouse, monkeypatch):
    monkeypatch.setenv("HEAP_DRAIN_POLICY", "purge")
    drain(heap)

    _, [failed] = apply_pending(instance, resources, ops_env)

    assert not failed.success
    assert ("HEAP_DRAIN_POLICY must be one of exit, ignore, got 'purge'"
            in step_failure(failed, "power_users").description)
    assert len(Inbox.for_home(ops_env).drains()) == 1


def test_a_drain_of_a_segment_without_an_audience_is_reported_and_left_in_the_inbox(ops_env, instance):
    store_drain(Inbox.for_home(ops_env), "d9", T0, segment=999)

    sensed = evaluate_sensor(instance, ops_env)

    assert sensed.run_requests == []
    assert ("Heap drain d9 of segment 999 ('Power Users'): not an enabled audience"
            in sensed.skip_reason.skip_message)
    assert [d.key for d in Inbox.for_home(ops_env).drains()] == ["d9"]


def test_a_badly_signed_drain_never_reaches_the_inbox(heap, ops_env):
    [delivery] = drain(heap, bad_signature=True)["deliveries"]

    assert (delivery["status"], delivery["last_result"]) == ("failed", "HTTP 403")
    assert Inbox.for_home(ops_env).drains(include_done=True) == []


@pytest.mark.slow
def test_after_a_drain_the_next_push_adds_every_member_again(heap, instance, resources, ops_env, warehouse,
                                                             audiences_file):
    set_in_file(audiences_file, "drop_guard_min_exits = 10", "drop_guard_min_exits = 1000")
    [sync] = heap.push_heap(at=AT, segments=[POWER_USERS])["syncs"]
    apply_pending(instance, resources, ops_env, audiences_file)
    drain(heap)
    apply_pending(instance, resources, ops_env, audiences_file)

    [again] = heap.push_heap(at=AT, segments=[POWER_USERS])["syncs"]
    _, [rerun] = apply_pending(instance, resources, ops_env, audiences_file)

    assert again["adds"] == sync["adds"] and rerun.success
    assert metadata(rerun, "power_users")["added"] == len(exited(heap))


def post_drain(receiver, body: bytes) -> dict:
    response = httpx.post(receiver.heap_url, content=body, headers={"Heap-Hash": sign(body)}, timeout=10)
    response.raise_for_status()
    return response.json()


DRAIN_BODY = orjson.dumps({"action_type": "segment.users.drain", "customer_config": {"fields": []},
                           "data": {"segment": {"id": POWER_USERS, "name": "Power Users"}},
                           "id_token": "tok-1"})


def drain_refill_drain(heap, instance, resources, home, path) -> tuple[str, int]:
    """A sync, a drain, a sync filling the segment again (all applied), then the same drain body again (the
    sandbox sends one id_token per target, like Heap's generator); returns the first drain's key and how many
    members the first drain exited."""
    heap.push_heap(at=AT, segments=[POWER_USERS])
    apply_pending(instance, resources, home, path)
    drain(heap)
    apply_pending(instance, resources, home, path)
    [first] = Inbox.for_home(home).drains(include_done=True)
    exited_first = len(calls(heap, "heap_power_users")["exited"])
    heap.push_heap(at=AT, segments=[POWER_USERS])  # Heap fills the segment again
    _, [refilled] = apply_pending(instance, resources, home, path)
    assert refilled.success
    [delivery] = drain(heap)["deliveries"]
    assert delivery["status"] == "delivered"
    return first.key, exited_first


@pytest.mark.slow
def test_a_drain_repeated_after_a_newer_sync_was_applied_is_stored_anew_and_held(heap, instance, resources,
                                                                                ops_env, warehouse,
                                                                                audiences_file):
    set_in_file(audiences_file, "drop_guard_min_exits = 10", "drop_guard_min_exits = 1000")
    first, exited_first = drain_refill_drain(heap, instance, resources, ops_env, audiences_file)

    sensed, runs = apply_pending(instance, resources, ops_env, audiences_file)
    [held] = Inbox.for_home(ops_env).drains()
    confirmed = materialize(resources, "power_users", path=audiences_file, route="webhook", sync_task_ids=[],
                            drain_keys=[held.key], confirm_drop=True)

    assert held.key == f"{first}-1" and "after a sync of segment 1338065 was applied" in held.held
    assert runs == [] and "held, no run started" in sensed.skip_reason.skip_message
    [alert] = [m for m in heap.received("slack") if "drain" in m["text"]]  # one alert, for the held drain
    assert (f"drain `{held.key}`" in alert["text"] and "is held" in alert["text"]
            and "confirm_drop" in alert["text"])
    assert confirmed.success and metadata(confirmed, "power_users")["drains_applied"] == [held.key]
    assert (len(calls(heap, "heap_power_users")["exited"]) == 2 * exited_first
            and Inbox.for_home(ops_env).drains() == [])


@pytest.mark.slow
def test_a_held_drain_named_without_confirm_drop_fails_the_run(heap, instance, resources, ops_env, warehouse,
                                                               audiences_file):
    set_in_file(audiences_file, "drop_guard_min_exits = 10", "drop_guard_min_exits = 1000")
    drain_refill_drain(heap, instance, resources, ops_env, audiences_file)
    [held] = Inbox.for_home(ops_env).drains()

    result = materialize(resources, "power_users", path=audiences_file, route="webhook", sync_task_ids=[],
                         drain_keys=[held.key])

    assert not result.success and "is held" in step_failure(result, "power_users").description


@pytest.mark.slow
def test_a_drain_repeated_a_day_after_it_was_applied_is_a_new_drain_and_applied(heap, receiver, instance,
                                                                                resources, ops_env,
                                                                                warehouse):
    key = post_drain(receiver, DRAIN_BODY)["drain"]
    apply_pending(instance, resources, ops_env)
    done = Inbox.for_home(ops_env).drain_folder(key) / "done.json"
    done.write_bytes(orjson.dumps({**orjson.loads(done.read_bytes()),
                                   "done_at": (datetime.now(UTC) - timedelta(hours=25)).isoformat()}))

    again = post_drain(receiver, DRAIN_BODY)
    sensed, [applied] = apply_pending(instance, resources, ops_env)

    assert again == {"stored": True, "drain": f"{key}-1", "segment_id": POWER_USERS}
    assert applied.success and metadata(applied, "power_users")["drains_applied"] == [again["drain"]]


@pytest.mark.slow
def test_a_drain_repeated_soon_after_it_was_applied_without_a_sync_since_is_a_retry(heap, receiver,
                                                                                    instance, resources,
                                                                                    ops_env, warehouse):
    key = post_drain(receiver, DRAIN_BODY)["drain"]
    apply_pending(instance, resources, ops_env)

    again = post_drain(receiver, DRAIN_BODY)

    assert again == {"stored": False, "drain": key, "segment_id": POWER_USERS, "done": True}
    assert evaluate_sensor(instance, ops_env).run_requests == []
