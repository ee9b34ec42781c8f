"""Fullstory Streams pushed by the sandbox to a local receiver (spec §7 "Fullstory Streams")."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from segment_ops.config import SANDBOX_FULLSTORY_STREAM_TOKEN

V2_KEYS = ["name", "timestamp", "api_version", "signal_version", "user"]


@dataclass
class Receiver:
    """A stream endpoint that answers `fail_first` 5xx to each body before 200, keeping what it accepted."""

    fail_first: int = 0
    status: int = 503
    accepted: list[tuple[dict, bytes]] = field(default_factory=list)  # (headers, body)
    attempts: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def app(self) -> Starlette:
        async def hook(request: Request) -> Response:
            body = await request.body()
            with self.lock:
                self.attempts[body] += 1
                if self.attempts[body] <= self.fail_first:
                    return Response(status_code=self.status)
                self.accepted.append((dict(request.headers), body))
            return Response(status_code=200)

        return Starlette(routes=[Route("/fullstory", hook, methods=["POST"])])

    def bodies(self) -> list[dict]:
        return [orjson.loads(body) for _, body in self.accepted]


def start(serve, receiver: Receiver) -> str:
    return f"{serve(receiver.app(), 'fullstory-receiver').url}/fullstory"


def test_each_event_is_one_post_with_the_bearer_token_and_the_v2_body(serve, clean_sandbox):
    receiver = Receiver()
    clean_sandbox.register_fullstory_stream(start(serve, receiver))

    pushed = clean_sandbox.push_fullstory()

    assert pushed["sent"] == len(receiver.accepted) > 10
    assert {d["status"] for d in pushed["deliveries"]} == {"delivered"}
    headers, _ = receiver.accepted[0]
    assert headers["authorization"] == f"Bearer {SANDBOX_FULLSTORY_STREAM_TOKEN}"
    assert headers["content-type"] == "application/json"
    bodies = receiver.bodies()
    assert all(list(b) == V2_KEYS for b in bodies)
    assert all(list(b["user"]) == ["id", "uid", "email", "display_name"] for b in bodies)
    assert {b["name"] for b in bodies} <= {"Rage Click", "Dead Click", "Error Click"}
    assert all((b["api_version"], b["signal_version"]) == ("v2", "1") for b in bodies)
    assert all(len(b["timestamp"]) == 20 and b["timestamp"].endswith("Z") for b in bodies)


def test_the_mapped_body_is_the_readmes_field_mapping_body(serve, clean_sandbox):
    receiver = Receiver()
    clean_sandbox.register_fullstory_stream(start(serve, receiver), body="mapped", token="my-token")

    clean_sandbox.push_fullstory()

    bodies = receiver.bodies()
    body = bodies[0]
    assert list(body) == ["name", "timestamp", "user", "session_url", "page_url", "event_time"]
    assert all(list(b["user"]) == ["uid", "email", "display_name"] for b in bodies)  # no Fullstory user id
    assert body["name"] in {"Rage Click", "Dead Click", "Error Click"}
    assert body["session_url"].startswith("https://app.fullstory.com/ui/")
    assert "/session/" in body["session_url"]
    assert body["event_time"] == body["timestamp"] and len(body["event_time"]) == 24
    assert body["event_time"].endswith("Z") and datetime.fromisoformat(body["event_time"])
    anonymous = [b["user"] for b in bodies if not b["user"]["uid"]]  # sent as empty strings (unverified)
    assert anonymous and all(u == {"uid": "", "email": "", "display_name": ""} for u in anonymous)
    assert receiver.accepted[0][0]["authorization"] == "Bearer my-token"


def test_a_second_push_sends_only_events_not_yet_sent(serve, clean_sandbox):
    receiver = Receiver()
    clean_sandbox.register_fullstory_stream(start(serve, receiver))
    first = clean_sandbox.push_fullstory()

    second = clean_sandbox.push_fullstory()

    assert first["sent"] > 0 and second["sent"] == 0
    assert len(receiver.accepted) == first["sent"]


def test_a_5xx_is_retried_until_delivered(serve, clean_sandbox):
    receiver = Receiver(fail_first=2)
    clean_sandbox.register_fullstory_stream(start(serve, receiver), streams=["Error Click"],
                                            retry_initial_seconds=0.01)

    pushed = clean_sandbox.push_fullstory()

    assert pushed["sent"] > 0 and {d["status"] for d in pushed["deliveries"]} == {"delivered"}
    assert {d["attempts"] for d in pushed["deliveries"]} == {3}
    assert len(receiver.accepted) == pushed["sent"]


def test_a_refused_token_is_not_retried(serve, clean_sandbox):
    receiver = Receiver(fail_first=99, status=401)
    clean_sandbox.register_fullstory_stream(start(serve, receiver), streams=["Error Click"],
                                            retry_initial_seconds=0.01)

    deliveries = clean_sandbox.push_fullstory(bad_token=True)["deliveries"]

    assert {(d["status"], d["attempts"], d["last_result"]) for d in deliveries} == {("failed", 1, "HTTP 401")}
    assert clean_sandbox.fullstory_deliveries() == deliveries


def test_bad_token_sends_another_token(serve, clean_sandbox):
    receiver = Receiver()
    clean_sandbox.register_fullstory_stream(start(serve, receiver), streams=["Error Click"])

    clean_sandbox.push_fullstory(bad_token=True)

    assert {h["authorization"] for h, _ in receiver.accepted} != {f"Bearer {SANDBOX_FULLSTORY_STREAM_TOKEN}"}


def test_duplicate_sends_that_many_events_twice(serve, clean_sandbox):
    receiver = Receiver()
    clean_sandbox.register_fullstory_stream(start(serve, receiver))

    pushed = clean_sandbox.push_fullstory(duplicate=3)

    assert len(receiver.accepted) == pushed["sent"] + 3
    assert sum(e["duplicated"] for e in pushed["events"]) == 3
    assert sorted(Counter(body for _, body in receiver.accepted).values())[-4:] == [1, 2, 2, 2]


def test_late_events_are_hours_old(serve, clean_sandbox):
    receiver = Receiver()
    clean_sandbox.register_fullstory_stream(start(serve, receiver))
    clean_sandbox.push_fullstory()

    pushed = clean_sandbox.push_fullstory(late_hours=6, late=2)

    assert pushed["sent"] == 2 and all(e["late"] for e in pushed["events"])
    late = receiver.bodies()[-2:]
    assert all(b["user"]["uid"].startswith("usr_") for b in late)
    for body in late:
        age = datetime.now(UTC) - datetime.fromisoformat(body["timestamp"])
        assert timedelta(hours=5.9) < age < timedelta(hours=6.1)


def test_registration_is_validated(clean_sandbox, sandbox_http):
    for spec in ({"url": "ftp://x"}, {"url": "http://x", "body": "v1"},
                 {"url": "http://x", "streams": ["Click"]}):
        assert sandbox_http.post("/__sandbox__/fullstory/streams", json=spec).status_code == 400
    assert sandbox_http.post("/__sandbox__/fullstory/push", json={}).status_code == 400  # no target
