"""The Splunk HEC emulator over real HTTP (spec §5)."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest

from segment_ops.clients.base import tls_context
from segment_ops.config import SANDBOX_SPLUNK_HEC_TOKEN, SANDBOX_SPLUNK_INDEX

AUTH = {"Authorization": f"Splunk {SANDBOX_SPLUNK_HEC_TOKEN}"}
EVENT_PATH = "/splunk/services/collector/event"


def post(
    http: httpx.Client, body: bytes, headers: dict | None = None, path: str = EVENT_PATH, **kw
) -> httpx.Response:
    return http.post(path, content=body, headers=AUTH if headers is None else headers, **kw)


def test_concatenated_events_are_indexed_with_metadata(sandbox_http, clean_sandbox):
    body = (
        b'{"time": 1700000000.5, "sourcetype": "audit", "index": "segment_audit", '
        b'"event": {"action": "login"}}\n'
        b'{"event": "second", "fields": {"team": "data"}}'
    )

    response = post(sandbox_http, body)

    assert response.status_code == 200 and response.json() == {"text": "Success", "code": 0}
    first, second = clean_sandbox.received("splunk")
    assert (
        first["time"] == 1700000000.5
        and first["sourcetype"] == "audit"
        and first["event"] == {"action": "login"}
    )
    assert second["index"] == SANDBOX_SPLUNK_INDEX and second["fields"] == {"team": "data"}


@pytest.mark.parametrize("path", ["/splunk/services/collector", "/splunk/services/collector/event/1.0"])
def test_event_endpoint_aliases(sandbox_http, path):
    assert post(sandbox_http, b'{"event": "x"}', path=path).json()["code"] == 0


def test_basic_auth_with_token_as_password(sandbox_http):
    response = sandbox_http.post(
        EVENT_PATH, content=b'{"event": "x"}', auth=("anyone", SANDBOX_SPLUNK_HEC_TOKEN)
    )

    assert response.json()["code"] == 0


@pytest.mark.parametrize(
    ("headers", "params", "status", "code"),
    [
        ({}, {}, 401, 2),
        ({"Authorization": SANDBOX_SPLUNK_HEC_TOKEN}, {}, 401, 3),
        ({"Authorization": "Splunk 11111111-2222-3333-4444-555555555555"}, {}, 403, 4),
        ({}, {"token": SANDBOX_SPLUNK_HEC_TOKEN}, 400, 16),
    ],
    ids=["missing", "no-prefix", "wrong-token", "query-token"],
)
def test_auth_failures(sandbox_http, headers, params, status, code):
    response = post(sandbox_http, b'{"event": "x"}', headers=headers, params=params)

    assert (response.status_code, response.json()["code"]) == (status, code)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"", 400, 5),
        (b"  \n ", 400, 5),
        (b'{"event": "x"}{"event": ', 400, 6),
        (b'{"event": "x"}["not", "an", "object"]', 400, 6),
        (b'{"event": "x"}{"time": 1}', 400, 12),
        (b'{"event": "x"}{"event": "  "}', 400, 13),
        (b'{"event": "x"}{"event": "y", "index": "secret"}', 400, 7),
        (b'{"event": "x"}{"event": "y", "time": "noon"}', 400, 6),
        (b'{"event": "x"}{"event": "y", "fields": {"a": {"b": 1}}}', 400, 15),
    ],
    ids=[
        "empty",
        "blank-body",
        "bad-json",
        "not-object",
        "no-event",
        "blank-event",
        "index",
        "bad-time",
        "fields",
    ],
)
@pytest.mark.slow
def test_invalid_bodies(sandbox_http, body, status, code):
    response = post(sandbox_http, body)

    assert (response.status_code, response.json()["code"]) == (status, code)
    if code != 5:
        assert response.json()["invalid-event-number"] == 1


def test_events_before_an_invalid_one_are_recorded(sandbox_http, clean_sandbox):
    post(sandbox_http, b'{"event": "kept"}{"event": "also kept"}{oops')

    assert [e["event"] for e in clean_sandbox.received("splunk")] == ["kept", "also kept"]


def test_raw_endpoint_indexes_one_event_per_line(sandbox_http, clean_sandbox):
    response = post(
        sandbox_http,
        b"line one\n\nline two\n",
        path="/splunk/services/collector/raw",
        params={"sourcetype": "raw"},
    )

    assert response.json()["code"] == 0
    assert [(e["event"], e["sourcetype"]) for e in clean_sandbox.received("splunk")] == [
        ("line one", "raw"),
        ("line two", "raw"),
    ]


def test_health_needs_no_token(sandbox_http):
    response = sandbox_http.get("/splunk/services/collector/health")

    assert (response.status_code, response.json()["code"]) == (200, 17)


def test_ack_query_without_ack_enabled_is_code_14(sandbox_http):
    response = post(sandbox_http, b'{"acks": [0]}', path="/splunk/services/collector/ack")

    assert (response.status_code, response.json()["code"]) == (400, 14)


def test_oversized_request_is_413(sandbox_factory):
    small = sandbox_factory(splunk_max_content_length=100)
    with httpx.Client(base_url=small.url) as http:
        response = post(http, b'{"event": "' + b"x" * 200 + b'"}')

    assert response.status_code == 413


@pytest.fixture
def ack_http(sandbox_factory):
    with httpx.Client(base_url=sandbox_factory(splunk_ack=True, splunk_ack_delay=0.0).url,
                      verify=tls_context()) as http:
        yield http


def test_ack_needs_a_channel(ack_http):
    response = post(ack_http, b'{"event": "x"}')

    assert (response.status_code, response.json()["code"]) == (400, 10)


def test_channel_must_be_a_guid(ack_http):
    response = post(ack_http, b'{"event": "x"}', headers={**AUTH, "X-Splunk-Request-Channel": "not-a-guid"})

    assert (response.status_code, response.json()["code"]) == (400, 11)


def test_ack_ids_count_per_channel_and_report_indexed(ack_http):
    channel = str(uuid.uuid4())
    headers = {**AUTH, "X-Splunk-Request-Channel": channel}

    ack_ids = [post(ack_http, b'{"event": "x"}', headers=headers).json()["ackId"] for _ in range(2)]
    other = post(ack_http, b'{"event": "x"}', params={"channel": str(uuid.uuid4())}).json()["ackId"]
    status = ack_http.post(
        "/splunk/services/collector/ack", params={"channel": channel}, json={"acks": [0, 1, 5]}, headers=AUTH
    )

    assert ack_ids == [0, 1] and other == 0
    assert status.json() == {"acks": {"0": True, "1": True, "5": False}}


@pytest.mark.parametrize(
    ("body", "code", "kept"),
    [
        (b'{"event": "a"}{"event": "b"}{oops', 6, ["a", "b"]),
        (b'{"event": "a"}{"event": "b", "index": "secret"}{"event": "c"}', 7, ["a"]),
        (b'{"event": "a"}{"event": "b"}{"time": 1}', 12, ["a", "b"]),
        (b'{"event": "a"}{"event": ""}', 13, ["a"]),
        (b'{"event": "a"}{"event": "b", "fields": {"x": {"y": 1}}}', 15, ["a"]),
    ],
    ids=["6", "7", "12", "13", "15"],
)
def test_every_answer_naming_an_invalid_event_kept_the_events_before_it(sandbox_http, clean_sandbox, body,
                                                                         code, kept):
    # Spec §7: invalid-event-number comes with codes 6, 7, 12, 13 and 15, and the events before it were
    # indexed.
    response = post(sandbox_http, body)

    assert (response.status_code, response.json()["code"]) == (400, code)
    assert response.json()["invalid-event-number"] == len(kept)
    assert [e["event"] for e in clean_sandbox.received("splunk")] == kept


@pytest.mark.slow
def test_acks_turn_true_only_after_the_configured_delay(sandbox_factory):
    channel = str(uuid.uuid4())
    headers = {**AUTH, "X-Splunk-Request-Channel": channel}
    with httpx.Client(base_url=sandbox_factory(splunk_ack=True, splunk_ack_delay=0.5).url) as http:
        ack_id = post(http, b'{"event": "x"}', headers=headers).json()["ackId"]

        def status() -> bool:
            reply = http.post("/splunk/services/collector/ack", params={"channel": channel},
                              json={"acks": [ack_id]}, headers=AUTH)
            return reply.json()["acks"][str(ack_id)]

        at_once = status()
        time.sleep(0.6)
        later = status()

    assert (at_once, later) == (False, True)


def test_acks_are_not_instant_by_default(sandbox_factory):
    channel = str(uuid.uuid4())
    with httpx.Client(base_url=sandbox_factory(splunk_ack=True).url) as http:  # SandboxConfig's own delay
        ack_id = post(http, b'{"event": "x"}',
                      headers={**AUTH, "X-Splunk-Request-Channel": channel}).json()["ackId"]
        reply = http.post("/splunk/services/collector/ack", params={"channel": channel},
                          json={"acks": [ack_id]}, headers=AUTH)

    assert reply.json() == {"acks": {str(ack_id): False}}


def query_acks(http: httpx.Client, channel: str, ack_ids: list[int]) -> httpx.Response:
    return http.post("/splunk/services/collector/ack", params={"channel": channel}, json={"acks": ack_ids},
                     headers=AUTH)


def test_a_restart_forgets_every_channel_and_numbering_starts_again(sandbox_factory):
    acking = sandbox_factory(splunk_ack=True, splunk_ack_delay=0.0)
    channel = str(uuid.uuid4())
    headers = {**AUTH, "X-Splunk-Request-Channel": channel}
    with httpx.Client(base_url=acking.url) as http:
        before = [post(http, b'{"event": "x"}', headers=headers).json()["ackId"] for _ in range(2)]
        acking.splunk_restart()
        forgotten = query_acks(http, channel, [0, 1])
        after = post(http, b'{"event": "y"}', headers=headers).json()["ackId"]
        renewed = query_acks(http, channel, [0, 1])

    assert before == [0, 1] and after == 0
    assert (forgotten.status_code, forgotten.json()["code"]) == (400, 11)
    assert renewed.json() == {"acks": {"0": True, "1": False}}


@pytest.mark.slow
def test_a_channel_idle_past_max_idle_time_is_forgotten_and_a_used_one_is_kept(sandbox_factory):
    idle, busy = str(uuid.uuid4()), str(uuid.uuid4())
    with httpx.Client(base_url=sandbox_factory(splunk_ack=True, splunk_ack_delay=0.0,
                                               splunk_max_idle_time=0.5).url) as http:
        for channel in (idle, busy):
            post(http, b'{"event": "x"}', headers={**AUTH, "X-Splunk-Request-Channel": channel})
        for _ in range(3):  # the busy channel is asked about every 0.3 s: never idle for 0.5 s
            time.sleep(0.3)
            kept = query_acks(http, busy, [0])
        dropped = query_acks(http, idle, [0])
        again = post(http, b'{"event": "y"}',
                     headers={**AUTH, "X-Splunk-Request-Channel": idle}).json()["ackId"]

    assert kept.json() == {"acks": {"0": True}}
    assert (dropped.status_code, dropped.json()["code"]) == (400, 11) and again == 0


def test_ack_can_be_turned_off_and_on_for_the_token(sandbox_factory):
    acking = sandbox_factory(splunk_ack=True, splunk_ack_delay=0.0)
    headers = {**AUTH, "X-Splunk-Request-Channel": str(uuid.uuid4())}
    with httpx.Client(base_url=acking.url) as http:
        acking.splunk_ack(False)
        off = post(http, b'{"event": "x"}', headers=headers).json()
        refused = post(http, b'{"acks": [0]}', headers=headers, path="/splunk/services/collector/ack")
        acking.splunk_ack(True)
        on = post(http, b'{"event": "x"}', headers=headers).json()

    assert off == {"text": "Success", "code": 0} and on["ackId"] == 0
    assert (refused.status_code, refused.json()["code"]) == (400, 14)
