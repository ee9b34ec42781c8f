"""Nothing lost, nothing sent twice: a killed receiver, a run that dies mid-delivery, a crash after
applying."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from segment_ops.config import SANDBOX_SEGMENT_WRITE_KEY
from segment_ops.engine import store
from segment_ops.engine.run import DeliveryIncomplete
from segment_ops.resources import build_resources
from segment_ops.syncs.heap.audiences import load_audiences, sync_audience
from segment_ops.syncs.heap.inbox import Inbox
from segment_ops_tests.conftest import HEAP_AT
from segment_ops_tests.heap.conftest import (
    AT,
    FREE_CUSTOMERS,
    POWER_USERS,
    calls,
    evaluate_sensor,
    resolvable,
    run_request,
    segment_stats,
    wait_for,
)
from segment_ops_tests.reverse_etl.conftest import StormAfterFirstBatch


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_receiver_process(home: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "SEGMENT_OPS_HOME": str(home)}
    process = subprocess.Popen([sys.executable, "-m", "segment_ops.cli", "webhooks", "--port", str(port)],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def up() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, timeout=30)
    return process


@pytest.mark.e2e
def test_a_killed_receiver_loses_no_page(clean_sandbox, ops_env, instance, resources, warehouse):
    port = free_port()
    receiver = start_receiver_process(ops_env, port)
    clean_sandbox.register_heap_webhook(f"http://127.0.0.1:{port}/webhooks/heap", page_size=10,
                                        segments=[POWER_USERS], max_attempts=40, retry_initial_seconds=0.1,
                                        retry_max_seconds=0.5)
    receiver.send_signal(signal.SIGKILL)
    receiver.wait()
    pushed = clean_sandbox.push_heap(at=AT, wait=False)
    wait_for(lambda: any(d["attempts"] >= 1 for d in clean_sandbox.heap_deliveries()))
    restarted = start_receiver_process(ops_env, port)
    try:
        wait_for(lambda: all(d["status"] != "pending" for d in clean_sandbox.heap_deliveries()))
    finally:
        restarted.send_signal(signal.SIGTERM)
        restarted.wait(10)

    deliveries = clean_sandbox.heap_deliveries()
    assert all(d["status"] == "delivered" for d in deliveries)
    assert any(d["last_result"] == "HTTP 200" and d["attempts"] > 1 for d in deliveries)
    [sync] = Inbox.for_home(ops_env).syncs()
    assert sync.sync_task_id == pushed["syncs"][0]["sync_task_id"] and sync.complete
    [request] = evaluate_sensor(instance, ops_env).run_requests
    assert run_request(instance, resources, request).success
    assert ({m["userId"] for m in calls(clean_sandbox, "heap_power_users")["in"]}
            == resolvable(warehouse, POWER_USERS))


@pytest.mark.slow
def test_a_run_that_dies_mid_delivery_is_retried_and_sends_nothing_twice(heap, instance, resources, ops_env,
                                                                         warehouse):
    heap.push_heap(at=AT, segments=[FREE_CUSTOMERS])
    [first] = evaluate_sensor(instance, ops_env).run_requests
    stormy = {**resources, "segment": StormAfterFirstBatch(base_url=f"{heap.url}/segment",
                                                           write_key=SANDBOX_SEGMENT_WRITE_KEY,
                                                           sandbox_url=heap.url, batch_bytes=2_000,
                                                           max_in_flight=1)}

    failed = run_request(instance, stormy, first)
    heap.clear_faults()
    [retry] = evaluate_sensor(instance, ops_env).run_requests
    succeeded = run_request(instance, resources, retry)

    assert not failed.success and succeeded.success
    assert retry.run_key.endswith(":1") and retry.tags == first.tags
    members = len(resolvable(warehouse, FREE_CUSTOMERS))
    assert segment_stats(heap) == (2 * members, 0)
    assert evaluate_sensor(instance, ops_env).run_requests == []


@pytest.mark.slow
def test_a_crash_after_applying_a_sync_delivers_it_once_on_the_next_run(heap, ops_env, warehouse):
    heap.push_heap(at=AT, segments=[POWER_USERS])
    audiences = load_audiences()
    audience = audiences.by_segment(POWER_USERS)
    inbox = Inbox.for_home(ops_env)
    segment = build_resources()["segment"]

    def crashing_client():
        raise ConnectionError("the run was killed before it could deliver")

    with store.staging(ops_env / "staging" / "heap_power_users.duckdb") as con:
        with pytest.raises(ConnectionError):
            sync_audience(con, audiences, audience, route="webhook", inbox=inbox,
                          warehouse_url=f"duckdb:///{warehouse}", client_factory=crashing_client)
        assert [s.done for s in inbox.syncs()] == [False]
        again = sync_audience(con, audiences, audience, route="webhook", inbox=inbox,
                              warehouse_url=f"duckdb:///{warehouse}", client_factory=segment.get_client)

    members = len(resolvable(warehouse, POWER_USERS))
    assert again.delivery.delivered == 2 * members and again.plan.already_known == 2 * members
    assert segment_stats(heap) == (2 * members, 0)
    assert inbox.syncs() == []


@pytest.mark.slow
def test_an_undeliverable_run_leaves_the_sync_unprocessed(heap, ops_env, warehouse):
    heap.push_heap(at=AT, segments=[POWER_USERS])
    heap.set_faults("segment", rate_503=1.0)
    audiences = load_audiences()
    inbox = Inbox.for_home(ops_env)
    stormy = StormAfterFirstBatch(base_url=f"{heap.url}/segment", write_key=SANDBOX_SEGMENT_WRITE_KEY,
                                  sandbox_url=heap.url, max_in_flight=1)

    with store.staging(ops_env / "staging" / "heap_power_users.duckdb") as con, \
            pytest.raises(DeliveryIncomplete) as raised:
        sync_audience(con, audiences, audiences.by_segment(POWER_USERS), route="webhook", inbox=inbox,
                      warehouse_url=f"duckdb:///{warehouse}", client_factory=stormy.get_client)

    assert raised.value.report.ledger.pending > 0
    assert [s.done for s in inbox.syncs()] == [False]


@pytest.mark.slow
def test_members_who_leave_get_the_trait_false_and_audience_exited(heap, instance, resources, ops_env,
                                                                   warehouse):
    heap.push_heap(at=AT, segments=[FREE_CUSTOMERS])
    [request] = evaluate_sensor(instance, ops_env).run_requests
    assert run_request(instance, resources, request).success
    removed = 0
    for windows in range(1, 40):  # later 4-hour windows until some members have left
        pushed = heap.push_heap(segments=[FREE_CUSTOMERS],
                                at=(HEAP_AT + timedelta(hours=4 * windows)).isoformat())
        removed += sum(s["removes"] for s in pushed["syncs"])
        if removed:
            break
    runs = [run_request(instance, resources, r) for r in evaluate_sensor(instance, ops_env).run_requests]

    assert removed and all(r.success for r in runs)
    sent = calls(heap, "heap_free_customers")
    assert len(sent["out"]) == len(sent["exited"]) == removed
    assert {m["userId"] for m in sent["out"]} == {m["userId"] for m in sent["exited"]}
