"""Fault injection over real HTTP: vendor-shaped 429/500/503, dropped connections, slow answers."""

from __future__ import annotations

import argparse
import time
import uuid
from collections.abc import Callable

import httpx
import pytest

from segment_ops.config import (
    SANDBOX_HEAP_APP_ID,
    SANDBOX_PENDO_INTEGRATION_KEY,
    SANDBOX_SEGMENT_PUBLIC_API_TOKEN,
    SANDBOX_SEGMENT_WRITE_KEY,
    SANDBOX_SPLUNK_HEC_TOKEN,
)
from segment_ops.sandbox import cli
from segment_ops.sandbox.faults import FaultSpec, FaultSpecError, parse_fault_spec


def segment_batch(http: httpx.Client, message_id: str | None = None) -> httpx.Response:
    message = {"type": "identify", "userId": "u1", "messageId": message_id or str(uuid.uuid4())}
    return http.post("/segment/v1/batch", json={"batch": [message]}, auth=(SANDBOX_SEGMENT_WRITE_KEY, ""))


# One valid request per API, so a normal answer would be 2xx.
REQUESTS: dict[str, Callable[[httpx.Client], httpx.Response]] = {
    "segment": segment_batch,
    "segmentapis": lambda http: http.get(
        "/segmentapis/audit-events",
        params={"pagination.count": 1},
        headers={"Authorization": f"Bearer {SANDBOX_SEGMENT_PUBLIC_API_TOKEN}"},
    ),
    "heap": lambda http: http.post(
        "/heap/api/track", json={"app_id": SANDBOX_HEAP_APP_ID, "identity": "a@b.com", "event": "E"}
    ),
    "pendo": lambda http: http.post(
        "/pendo/api/v1/aggregation",
        json={"request": {"pipeline": [{"source": {"accounts": None}}]}},
        headers={"x-pendo-integration-key": SANDBOX_PENDO_INTEGRATION_KEY},
    ),
    "splunk": lambda http: http.post(
        "/splunk/services/collector/event",
        content=b'{"event": "x"}',
        headers={"Authorization": f"Splunk {SANDBOX_SPLUNK_HEC_TOKEN}"},
    ),
}


def error_detail(api: str, response: httpx.Response) -> object:
    """The part of each vendor's error body that identifies it."""
    if api == "segment":
        return sorted(response.json())
    if api == "segmentapis":
        return sorted(response.json()["errors"][0])
    if api == "heap":
        return sorted(response.json())
    if api == "splunk":
        return response.json()["code"]
    return response.headers["content-type"].split(";")[0]


EXPECTED_429 = {
    "segment": ["code", "message"],
    "segmentapis": ["data", "message", "type"],
    "heap": ["error"],
    "pendo": "text/plain",
    "splunk": 9,
}
EXPECTED_5XX = {
    "segment": ["code", "message"],
    "segmentapis": ["message", "status", "type"],
    "heap": ["error"],
    "pendo": "text/plain",
}


@pytest.mark.parametrize("api", list(REQUESTS))
def test_injected_429_says_when_to_retry_and_has_the_vendor_body(sandbox_http, clean_sandbox, api):
    clean_sandbox.set_faults(api, rate_429=1.0, retry_after_seconds=3)

    response = REQUESTS[api](sandbox_http)

    assert response.status_code == 429
    if api == "segmentapis":  # spec §7: the wait is in the body; Retry-After is not guaranteed (not sent)
        assert "Retry-After" not in response.headers
        assert response.json()["errors"][0]["data"]["msBeforeNext"] == 3000
    else:
        assert response.headers["Retry-After"] == "3"
    assert error_detail(api, response) == EXPECTED_429[api]
    assert clean_sandbox.stats()[api]["faults"] == {"429": 1}
    assert clean_sandbox.stats()[api]["received"] == 0


@pytest.mark.parametrize("status", [500, 503])
@pytest.mark.parametrize("api", list(REQUESTS))
def test_injected_5xx_has_the_vendor_body(sandbox_http, clean_sandbox, api, status):
    clean_sandbox.set_faults(api, **{f"rate_{status}": 1.0})

    response = REQUESTS[api](sandbox_http)

    assert response.status_code == status
    expected = {500: 8, 503: 9}[status] if api == "splunk" else EXPECTED_5XX[api]
    assert error_detail(api, response) == expected


@pytest.mark.parametrize("api", list(REQUESTS))
def test_drop_closes_the_connection_before_processing(sandbox_http, clean_sandbox, api):
    clean_sandbox.set_faults(api, rate_drop=1.0)

    with pytest.raises(httpx.RemoteProtocolError):
        REQUESTS[api](sandbox_http)

    stats = clean_sandbox.stats()[api]
    assert stats["faults"] == {"drop": 1} and stats["received"] == 0


def test_drop_after_processes_then_drops_and_a_retry_is_deduplicated(sandbox_http, clean_sandbox):
    clean_sandbox.set_faults("segment", rate_drop_after=1.0)
    message_id = str(uuid.uuid4())

    with pytest.raises(httpx.TransportError):
        segment_batch(sandbox_http, message_id)
    clean_sandbox.clear_faults()
    retried = segment_batch(sandbox_http, message_id)

    assert retried.status_code == 200
    stats = clean_sandbox.stats()["segment"]
    assert stats["received"] == 1 and stats["duplicates"] == 1
    assert stats["faults"] == {"drop_after": 1}


def test_drop_after_on_splunk_indexes_the_retry_twice(sandbox_http, clean_sandbox):
    clean_sandbox.set_faults("splunk", rate_drop_after=1.0)

    with pytest.raises(httpx.TransportError):
        REQUESTS["splunk"](sandbox_http)
    clean_sandbox.clear_faults()
    REQUESTS["splunk"](sandbox_http)

    assert clean_sandbox.stats()["splunk"]["received"] == 2  # HEC does no dedupe (spec §5)


def test_slow_answers_normally_after_the_delay(sandbox_http, clean_sandbox):
    clean_sandbox.set_faults("segment", rate_slow=1.0, slow_seconds=0.3)

    started = time.monotonic()
    response = segment_batch(sandbox_http)

    assert response.status_code == 200
    assert time.monotonic() - started >= 0.3
    assert clean_sandbox.stats()["segment"]["faults"] == {"slow": 1}


def test_faults_are_reproducible_for_the_same_seed(sandbox_http, clean_sandbox):
    def statuses() -> list[int]:
        clean_sandbox.reset()
        clean_sandbox.set_faults("heap", rate_503=0.5)
        return [REQUESTS["heap"](sandbox_http).status_code for _ in range(20)]

    first = statuses()
    assert first == statuses()
    assert {200, 503} == set(first)


def test_faults_on_one_api_leave_the_others_alone(sandbox_http, clean_sandbox):
    clean_sandbox.set_faults("segment", rate_503=1.0)

    assert REQUESTS["heap"](sandbox_http).status_code == 200


def test_faults_endpoint_replaces_clears_and_validates(clean_sandbox, sandbox_http):
    clean_sandbox.set_faults("segment", rate_429=0.2)
    clean_sandbox.set_faults("splunk", rate_503=0.1)
    assert clean_sandbox.set_faults("segment", rate_500=0.1)["segment"]["rate_429"] == 0.0
    assert set(sandbox_http.post("/__sandbox__/faults", json={"segment": {}}).json()) == {"splunk"}
    assert clean_sandbox.clear_faults() == {}
    assert sandbox_http.post("/__sandbox__/faults", json={"nope": {"rate_429": 1}}).status_code == 400
    assert sandbox_http.post("/__sandbox__/faults", json={"segment": {"rate_429": 2}}).status_code == 400


def test_parse_fault_spec_reads_the_cli_format():
    specs = parse_fault_spec("segment:429=0.1,503=0.05,drop=0.02,slow=0.05,slow_seconds=2;splunk:503=0.2")

    assert specs == {
        "segment": FaultSpec(rate_429=0.1, rate_503=0.05, rate_drop=0.02, rate_slow=0.05, slow_seconds=2.0),
        "splunk": FaultSpec(rate_503=0.2),
    }


@pytest.mark.parametrize(
    "text", ["segment", "segment:429", "segment:teapot=0.1", "segment:429=0.7,503=0.7", "mailchimp:429=0.1"]
)
def test_parse_fault_spec_rejects_bad_specs(text):
    with pytest.raises(FaultSpecError):
        parse_fault_spec(text)


def test_cli_registers_the_sandbox_command():
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())

    args = parser.parse_args(
        ["sandbox", "--port", "0", "--faults", "segment:429=0.1", "--segment-rate-limit", "50"]
    )

    assert args.func is cli.run
    assert args.faults == {"segment": FaultSpec(rate_429=0.1)}
    assert args.segment_rate_limit == 50.0
