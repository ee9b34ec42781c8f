"""The sandbox plays Heap: paged segment-sync deltas and drains, signed as Heap's reference generator signs
them, pushed on demand or on an interval, retried."""

from __future__ import annotations

import socket
import threading

import httpx
import orjson
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from segment_ops.config import SANDBOX_HEAP_WEBHOOK_SECRET
from segment_ops.sandbox.demo_data import DemoConfig, DemoData
from segment_ops.syncs.heap.webhook import compact_json, verify
from segment_ops_tests.conftest import DEMO_SCALE, HEAP_AT
from segment_ops_tests.heap.conftest import AT, POWER_USERS, now_ms, pages, wait_for


class FlakyReceiver:
    """Answers 503 to the first `failures` requests, then verifies and keeps every body."""

    def __init__(self, failures: int) -> None:
        self.failures, self.seen, self.bodies, self.signatures, self.headers = failures, 0, [], [], []

        async def handle(request: Request) -> JSONResponse:
            body = await request.body()
            self.seen += 1
            if self.seen <= self.failures:
                return JSONResponse({"error": "busy"}, 503)
            self.signatures.append(verify(request.headers.get("heap-hash"), body,
                                          [SANDBOX_HEAP_WEBHOOK_SECRET]))
            self.headers.append(request.headers.get("heap-hash"))
            self.bodies.append(body)
            return JSONResponse({"stored": True})

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}/hook"
        self.server = uvicorn.Server(uvicorn.Config(Starlette(routes=[Route("/hook", handle,
                                                                            methods=["POST"])]),
                                                    log_config=None, lifespan="off", log_level="warning"))
        threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True).start()
        wait_for(lambda: self.server.started)

    def stop(self) -> None:
        self.server.should_exit = True


@pytest.fixture
def flaky():
    receivers: list[FlakyReceiver] = []

    def start(failures: int = 0) -> FlakyReceiver:
        receivers.append(FlakyReceiver(failures))
        return receivers[-1]

    yield start
    for receiver in receivers:
        receiver.stop()


def test_a_first_push_adds_every_member_in_signed_pages(clean_sandbox, flaky):
    receiver = flaky()
    clean_sandbox.register_heap_webhook(receiver.url, page_size=10, segments=[POWER_USERS])
    members = DemoData(DemoConfig(scale=DEMO_SCALE), now=HEAP_AT).heap_segment_members(POWER_USERS, HEAP_AT)

    [sync] = clean_sandbox.push_heap(at=AT)["syncs"]

    assert (sync["adds"], sync["removes"], sync["total_pages"]) == (len(members), 0, pages(len(members), 10))
    bodies = [orjson.loads(b) for b in receiver.bodies]
    assert (sorted(p["data"]["sync_info"]["page_number"] for p in bodies)
            == list(range(1, sync["total_pages"] + 1)))
    assert {p["data"]["sync_info"]["sync_task_id"] for p in bodies} == {sync["sync_task_id"]}
    assert all(p["action_type"] == "segment.users.sync" for p in bodies)
    assert sorted(entry["id"] for p in bodies for entry in p["data"]["add"]) == members


def test_a_second_push_in_the_same_window_sends_nothing(clean_sandbox, flaky):
    receiver = flaky()
    clean_sandbox.register_heap_webhook(receiver.url, segments=[POWER_USERS])
    clean_sandbox.push_heap(at=AT)

    again = clean_sandbox.push_heap(at=AT)

    assert again["syncs"] == [] and len(receiver.bodies) == 1


def test_a_non_2xx_answer_is_retried_with_a_fresh_signature(clean_sandbox, flaky):
    receiver = flaky(failures=2)
    clean_sandbox.register_heap_webhook(receiver.url, segments=[POWER_USERS], retry_initial_seconds=0.05)

    [delivery] = clean_sandbox.push_heap(at=AT)["deliveries"]

    assert delivery["status"] == "delivered" and delivery["attempts"] == 3 and receiver.seen == 3


def test_a_page_is_given_up_after_max_attempts(clean_sandbox, flaky):
    receiver = flaky(failures=100)
    clean_sandbox.register_heap_webhook(receiver.url, segments=[POWER_USERS], retry_initial_seconds=0.01,
                                        max_attempts=4)

    [delivery] = clean_sandbox.push_heap(at=AT)["deliveries"]

    assert (delivery["status"], delivery["attempts"], delivery["last_result"]) == ("failed", 4, "HTTP 503")


@pytest.mark.slow
def test_a_registered_interval_pushes_without_being_asked(clean_sandbox, flaky):
    receiver = flaky()
    clean_sandbox.register_heap_webhook(receiver.url, segments=[POWER_USERS], interval_seconds=0.5)

    wait_for(lambda: receiver.bodies, timeout=10)
    # The pusher records the delivery once it has read the receiver's answer, a moment after the body landed.
    wait_for(lambda: [d["status"] for d in clean_sandbox.heap_deliveries()][:1] == ["delivered"], timeout=10)

    assert receiver.bodies and clean_sandbox.heap_deliveries()[0]["status"] == "delivered"


def test_a_registration_without_a_url_is_refused(sandbox_http):
    response = sandbox_http.post("/__sandbox__/heap/webhooks", json={"secret": "x"})

    assert response.status_code == 400 and response.json() == {"error": "url must be an http(s) URL"}


def test_a_push_with_nothing_registered_is_refused(sandbox_http):
    response = sandbox_http.post("/__sandbox__/heap/push", json={})

    assert response.status_code == 400 and "no webhook target is registered" in response.json()["error"]


def test_reset_forgets_the_targets(clean_sandbox, flaky):
    clean_sandbox.register_heap_webhook(flaky().url)

    clean_sandbox.reset()

    assert httpx.get(f"{clean_sandbox.url}/__sandbox__/heap/webhooks").json() == {"targets": []}



def test_pages_are_signed_as_heaps_reference_generator_signs(clean_sandbox, flaky):
    receiver = flaky()
    clean_sandbox.register_heap_webhook(receiver.url, segments=[POWER_USERS])
    before = now_ms()

    clean_sandbox.push_heap(at=AT)

    [signature] = receiver.signatures
    assert (signature.encoding, signature.body_form, signature.secret_index) == ("base64", "raw", 0)
    assert before - 1000 <= signature.timestamp_ms <= now_ms()  # milliseconds, from the clock
    body = receiver.bodies[0]
    assert body == compact_json(orjson.loads(body))  # what JSON.stringify sends
    assert list(orjson.loads(body)) == ["id_token", "action_type", "customer_config", "data"]
    assert list(orjson.loads(body)["data"]) == ["segment", "sync_info", "remove", "add"]


def test_every_page_of_a_target_carries_its_one_id_token(clean_sandbox, flaky):
    receiver = flaky()
    clean_sandbox.register_heap_webhook(receiver.url, page_size=10, segments=[POWER_USERS])

    clean_sandbox.push_heap(at=AT)

    tokens = {orjson.loads(b)["id_token"] for b in receiver.bodies}
    assert len(receiver.bodies) > 1 and len(tokens) == 1 and all(isinstance(t, str) for t in tokens)


def test_a_drain_is_sent_as_the_reference_generator_sends_drain_json(clean_sandbox, flaky):
    receiver = flaky()
    clean_sandbox.register_heap_webhook(receiver.url, segments=[POWER_USERS])

    answer = httpx.post(f"{clean_sandbox.url}/__sandbox__/heap/drain", json={"segment": POWER_USERS}).json()

    [delivery] = answer["deliveries"]
    assert delivery["status"] == "delivered" and delivery["drain"] == answer["drains"][0]["drain"]
    body = orjson.loads(receiver.bodies[0])
    assert list(body) == ["action_type", "customer_config", "data", "id_token"]
    assert body["action_type"] == "segment.users.drain" and body["data"] == {
        "segment": {"id": POWER_USERS, "name": "Power Users"}}


def test_a_drain_of_an_unknown_segment_is_refused(clean_sandbox, flaky):
    clean_sandbox.register_heap_webhook(flaky().url)

    response = httpx.post(f"{clean_sandbox.url}/__sandbox__/heap/drain", json={"segment": 42})

    assert response.status_code == 400 and response.json() == {"error": "unknown segment 42"}


@pytest.mark.parametrize("adjust", ["past", "future"])
def test_pages_signed_five_minutes_off_are_refused_by_the_receiver(heap, ops_env, adjust):
    pushed = heap.push_heap(at=AT, segments=[POWER_USERS], time_adjust=adjust)

    assert pushed["deliveries"] and all(d["status"] == "failed" and d["last_result"] == "HTTP 400"
                                        for d in pushed["deliveries"])
    assert not (ops_env / "inbox" / "heap").exists() or list((ops_env / "inbox" / "heap").iterdir()) == []


def test_an_unknown_time_adjust_is_refused(clean_sandbox, flaky):
    clean_sandbox.register_heap_webhook(flaky().url)

    response = httpx.post(f"{clean_sandbox.url}/__sandbox__/heap/push", json={"time_adjust": "yesterday"})

    assert (response.status_code == 400
            and "time_adjust must be one of now, past, future" in response.json()["error"])
