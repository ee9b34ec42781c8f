"""SIEM destinations: Splunk HEC with indexer acknowledgement, and the generic JSON-lines endpoint."""

from __future__ import annotations

import uuid

import duckdb
import httpx
import orjson
import pytest

from segment_ops.clients.base import RetryPolicy, VendorUnavailable
from segment_ops.clients.splunk_hec import RETRYABLE as HEC_RETRYABLE
from segment_ops.clients.splunk_hec import SplunkHecClient
from segment_ops.config import SANDBOX_SPLUNK_HEC_TOKEN
from segment_ops.engine.delivery import deliver_pending
from segment_ops.engine.ledger import Ledger, PlannedMessage
from segment_ops.syncs.audit_trail.defs import forward_window, pull_window
from segment_ops.syncs.audit_trail.siem import JsonLinesDestination, SplunkHecDestination, ledger_sync
from segment_ops_tests.audit_trail.conftest import (
    audit_ids,
    checks,
    complete_hours,
    inject_events,
    metadata,
    received_ids,
    run_hour,
    splunk_resource,
    window_of,
)

EVENT = {"id": "evt-1", "timestamp": "2026-11-23T10:00:00.250Z", "type": "Source Created", "actor": "x"}


@pytest.mark.slow
def test_indexer_ack_mode_delivers_once_acknowledged(resources, clean_sandbox, sandbox_factory):
    acking = sandbox_factory(splunk_ack=True, splunk_ack_delay=0.3)
    resources = resources | {"splunk": splunk_resource(acking)}
    keys = complete_hours(4)
    inject_events(clean_sandbox, keys[0], 3)

    results = [run_hour(resources, key) for key in keys]

    assert all(r.success for r in results)
    expected = audit_ids(clean_sandbox, *window_of(keys[0], keys[-1]))
    assert sorted(received_ids(acking)) == sorted(expected)
    assert sum(metadata(r)["indexer_acks_confirmed"] for r in results) == len(expected)
    assert sum(metadata(r)["forwarded"] for r in results) == len(expected)
    assert all(metadata(r)["awaiting_ack_total"] == 0 and checks(r)["delivery_complete"].passed
               for r in results)
    assert all(item["channel"] for item in acking.received("splunk", limit=1000))
    assert acking.stats()["splunk"]["requests"] > sum(metadata(r)["requests"] for r in results)  # ack polls


def test_hec_retries_what_hec_and_a_load_balancer_mean_as_try_again_and_nothing_else():
    # HEC: codes 8/9 (500/503) and 18-20 (503); a load balancer in front: 502, 504, 429
    # (clients/splunk_hec.py).
    assert all(status in HEC_RETRYABLE for status in (429, 500, 502, 503, 504))
    assert not any(status in HEC_RETRYABLE for status in (400, 401, 403, 404, 408, 410, 413, 501, 505, 507))


# 429 waits out the sandbox's Retry-After of 1 s twice (2 s): slow.
@pytest.mark.parametrize("fault", [pytest.param("rate_429", marks=pytest.mark.slow), "rate_500", "rate_503"])
def test_hec_answers_that_mean_try_again_are_retried(clean_sandbox, fault):
    clean_sandbox.set_faults("splunk", **{fault: 1.0, "retry_after_seconds": 1})
    client = SplunkHecClient(f"{clean_sandbox.url}/splunk", SANDBOX_SPLUNK_HEC_TOKEN,
                             retry=RetryPolicy(max_attempts=3, backoff_initial=0.01, backoff_max=0.02))

    with pytest.raises(VendorUnavailable):
        client.send_batch([b'{"event": "x"}'])

    assert clean_sandbox.stats()["splunk"]["requests"] == 3


def test_hec_framing_puts_the_audit_time_in_epoch_seconds():
    client = SplunkHecClient("https://hec.example", "token")
    frame = orjson.loads(SplunkHecDestination(client, index="idx", host="h").frame(EVENT))
    assert frame == {"time": 1795428000.25, "host": "h", "source": "segment:audit",
                     "sourcetype": "segment:audit", "index": "idx", "event": EVENT,
                     "fields": {"audit_event_id": "evt-1"}}


def test_the_jsonl_endpoint_receives_every_event_once_as_json_lines(ops_env, clean_sandbox, resources):
    seen: list[httpx.Request] = []

    def collector(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202)

    jsonl = JsonLinesDestination("https://collector.example/v1/logs", "bearer-secret",
                                 transport=httpx.MockTransport(collector))
    splunk = resources["splunk"].get_destination()
    start, end = window_of(*complete_hours(6)[::5])
    con = duckdb.connect()
    pull_window(resources["segment_public_api"].get_client(), con, start, end)
    rules = resources["audit_redaction"].get_rules()

    report = forward_window(con, [splunk, jsonl], start, end, rules=rules)
    again = forward_window(con, [splunk, jsonl], start, end, rules=rules)

    expected = audit_ids(clean_sandbox, start, end)
    assert report.complete and again.complete
    assert report.deliveries[ledger_sync(jsonl)].delivered == len(expected)
    assert again.deliveries[ledger_sync(jsonl)].delivered == 0
    assert all(r.headers["authorization"] == "Bearer bearer-secret" for r in seen)
    assert all(r.headers["content-type"] == "application/x-ndjson" and r.url.path == "/v1/logs" for r in seen)
    lines = [orjson.loads(line) for r in seen for line in r.content.decode().splitlines()]
    assert sorted(line["id"] for line in lines) == sorted(expected)
    assert all(line["event"]["id"] == line["id"] and line["source"] == "segment:audit" for line in lines)
    assert sorted(received_ids(clean_sandbox)) == sorted(expected)  # Splunk got them too, once


def test_a_bad_line_is_rejected_alone_by_the_jsonl_endpoint():
    def collector(request: httpx.Request) -> httpx.Response:
        bad = any(orjson.loads(line)["id"] == "evt-2" for line in request.content.splitlines())
        return httpx.Response(400, json={"error": "bad line"}) if bad else httpx.Response(200)

    jsonl = JsonLinesDestination("https://collector.example/in", "t",
                                 transport=httpx.MockTransport(collector))
    ledger = Ledger(duckdb.connect())
    events = [dict(EVENT, id=f"evt-{i}") for i in range(4)]
    ledger.add_planned("x", [PlannedMessage(e["id"], e["id"], "audit_event", jsonl.frame(e)) for e in events])

    report = deliver_pending(ledger, "x", jsonl)

    assert (report.delivered, report.rejected) == (3, 1)


def test_acks_of_a_channel_hec_forgot_count_as_not_acknowledged(sandbox_factory):
    # HEC drops a channel idle for maxIdleTime (inputs.conf.spec [http], 600 s) or lost in a restart, with its
    # acks. The sandbox answers an ack query on it with code 11 (its choice: the sources are silent).
    acking = sandbox_factory(splunk_ack=True, splunk_ack_delay=0.0)
    client = SplunkHecClient(f"{acking.url}/splunk", SANDBOX_SPLUNK_HEC_TOKEN, channel=str(uuid.uuid4()),
                             retry=RetryPolicy(max_attempts=1))
    ack_id = client.send_batch([b'{"event": "x"}'])
    acking.splunk_restart()

    status = client.query_acks([ack_id, 3])

    assert status.acked == {ack_id: False, 3: False} and "Invalid data channel" in status.refusal


def test_an_ack_query_on_a_token_without_ack_confirms_nothing_and_raises_nothing(sandbox_factory):
    acking = sandbox_factory(splunk_ack=True, splunk_ack_delay=0.0)
    client = SplunkHecClient(f"{acking.url}/splunk", SANDBOX_SPLUNK_HEC_TOKEN, channel=str(uuid.uuid4()),
                             retry=RetryPolicy(max_attempts=1))
    ack_id = client.send_batch([b'{"event": "x"}'])
    acking.splunk_ack(False)

    status = client.query_acks([ack_id])

    assert status.acked == {ack_id: False} and "ACK is disabled" in status.refusal
