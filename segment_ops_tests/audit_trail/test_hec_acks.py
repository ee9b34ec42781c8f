"""HEC indexer acknowledgement through the sandbox: acks that take time or never come, a channel kept across
runs and processes, and a run killed between batches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from datetime import UTC

import dagster as dg
import duckdb
import orjson
import pytest

from segment_ops.engine import store
from segment_ops.resources import build_resources
from segment_ops.syncs.audit_trail.defs import forward_window, hec_channel, pull_window
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


def staging_file(home):
    return home / "staging" / "audit_trail.duckdb"


@pytest.mark.slow
def test_a_run_does_not_wait_for_slow_acks_and_a_later_run_settles_them_without_resending(
        resources, clean_sandbox, sandbox_factory):
    delay = 6.0
    acking = sandbox_factory(splunk_ack=True, splunk_ack_delay=delay)
    resources = resources | {"splunk": splunk_resource(acking, ack_settle_seconds=0.2,
                                                       ack_timeout_seconds=300)}
    key = complete_hours(3)[0]
    inject_events(clean_sandbox, key, 5)
    expected = audit_ids(clean_sandbox, *window_of(key, key))
    sent_at = time.monotonic()

    first = run_hour(resources, key)
    first_done = time.monotonic()  # HEC took the events before this
    within_delay = run_hour(resources, key)

    assert first.success and within_delay.success
    assert time.monotonic() - sent_at < delay  # two whole runs ended before HEC acknowledged anything
    meta = metadata(first)
    assert (meta["forwarded"], meta["sent_awaiting_ack"], meta["awaiting_ack_total"]) == (0, len(expected),
                                                                                         len(expected))
    check = checks(first)["delivery_complete"]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert check.metadata["awaiting_ack_in_window"].value == len(expected)
    assert check.metadata["pending_total"].value == 0
    assert metadata(within_delay)["awaiting_ack_total"] == len(expected)
    assert metadata(within_delay)["requests"] == 0  # awaiting ack is never sent again within the timeout
    assert sorted(received_ids(acking)) == sorted(expected)

    time.sleep(max(0.0, first_done + delay + 0.2 - time.monotonic()))
    later = run_hour(resources, key)

    assert later.success and checks(later)["delivery_complete"].passed
    meta = metadata(later)
    assert ((meta["indexer_acks_confirmed"], meta["forwarded"], meta["awaiting_ack_total"])
            == (len(expected), len(expected), 0))
    assert sorted(received_ids(acking)) == sorted(expected)  # each event indexed once


@pytest.mark.slow
def test_an_ack_that_never_comes_is_sent_again_after_the_timeout(resources, clean_sandbox, sandbox_factory):
    timeout = 4.0
    never = sandbox_factory(splunk_ack=True, splunk_ack_delay=float("inf"))
    resources = resources | {"splunk": splunk_resource(never, ack_settle_seconds=0.0,
                                                       ack_timeout_seconds=timeout)}
    key = complete_hours(3)[0]
    inject_events(clean_sandbox, key, 4)
    expected = audit_ids(clean_sandbox, *window_of(key, key))
    sent_at = time.monotonic()

    first = run_hour(resources, key)
    first_done = time.monotonic()  # the ack timeout counts from HEC's answer, before this
    too_soon = run_hour(resources, key)
    assert time.monotonic() - sent_at < timeout  # the second run came within the timeout
    time.sleep(max(0.0, first_done + timeout + 0.2 - time.monotonic()))
    after_timeout = run_hour(resources, key)

    assert first.success and too_soon.success and after_timeout.success
    assert metadata(too_soon)["indexer_ack_timeouts_reopened"] == 0 and metadata(too_soon)["requests"] == 0
    meta = metadata(after_timeout)
    assert meta["indexer_ack_timeouts_reopened"] == len(expected)
    assert ((meta["sent_awaiting_ack"], meta["awaiting_ack_total"], meta["forwarded"])
            == (len(expected), len(expected), 0))
    # HEC does no dedupe: a batch re-sent after its ack timed out is indexed again (at-least-once,
    # documented).
    assert Counter(received_ids(never)) == Counter({event_id: 2 for event_id in expected})


@pytest.mark.slow
def test_the_channel_is_made_once_and_kept_in_the_sync_state(resources, clean_sandbox, sandbox_factory,
                                                              ops_env):
    acking = sandbox_factory(splunk_ack=True, splunk_ack_delay=0.0)
    resources = resources | {"splunk": splunk_resource(acking)}
    keys = complete_hours(3)[:2]
    for key in keys:
        inject_events(clean_sandbox, key, 2)

    results = [run_hour(resources, key) for key in keys]

    assert all(r.success for r in results)
    channels = {item["channel"] for item in acking.received("splunk", limit=1000)}
    with store.staging(staging_file(ops_env)) as con:
        kept = hec_channel(con)
    assert channels == {kept} and uuid.UUID(kept)
    assert [metadata(r)["hec_channel"] for r in results] == [kept, kept]


@pytest.mark.slow
def test_the_channel_and_ack_timeout_settings_are_used(ops_env, clean_sandbox, sandbox_factory, monkeypatch):
    acking = sandbox_factory(splunk_ack=True, splunk_ack_delay=0.0)
    channel = str(uuid.uuid4())
    monkeypatch.setenv("SPLUNK_HEC_URL", f"{acking.url}/splunk")
    monkeypatch.setenv("SPLUNK_HEC_CHANNEL", channel)
    monkeypatch.setenv("SPLUNK_HEC_ACK_TIMEOUT_SECONDS", "450")
    resources = build_resources()
    key = complete_hours(3)[0]
    inject_events(clean_sandbox, key, 2)

    result = run_hour(resources, key)

    assert resources["splunk"].ack_timeout_seconds == 450.0
    assert result.success and metadata(result)["hec_channel"] == channel
    assert {item["channel"] for item in acking.received("splunk")} == {channel}
    with store.staging(staging_file(ops_env)) as con:
        # none made: the setting won
        assert con.execute("SELECT count(*) FROM hec_channel").fetchone()[0] == 0


def test_the_ack_timeout_defaults_to_300_seconds(ops_env):
    assert build_resources()["splunk"].ack_timeout_seconds == 300.0


def test_a_channel_that_is_not_a_guid_fails_the_run_saying_so(ops_env, clean_sandbox, monkeypatch):
    monkeypatch.setenv("SPLUNK_HEC_CHANNEL", "audit-trail")
    key = complete_hours(3)[0]
    inject_events(clean_sandbox, key, 1)

    result = run_hour(build_resources(), key)

    assert not result.success
    [failure] = [event for event in result.all_events if event.is_step_failure]
    assert "SPLUNK_HEC_CHANNEL must be a GUID" in failure.step_failure_data.user_failure_data.description
    assert received_ids(clean_sandbox) == []


SECOND_PROCESS = """
import json, sys
import dagster as dg
from segment_ops.resources import build_resources
from segment_ops.syncs.audit_trail.defs import segment_audit_events, siem_audit_events

result = dg.materialize([segment_audit_events, siem_audit_events], partition_key=sys.argv[1],
                        resources=build_resources(), raise_on_error=False)
[materialization] = result.asset_materializations_for_node("siem__audit_events")
print(json.dumps({"success": result.success,
                  **{k: v.value for k, v in materialization.metadata.items()
                     if isinstance(v.value, int | str)}}))
"""


@pytest.mark.slow
def test_ack_ids_left_by_a_run_are_settled_by_a_new_process_on_the_same_channel(
        resources, clean_sandbox, sandbox_factory, ops_env):
    acking = sandbox_factory(splunk_ack=True, splunk_ack_delay=1.0)
    key = complete_hours(3)[0]
    inject_events(clean_sandbox, key, 3)
    expected = audit_ids(clean_sandbox, *window_of(key, key))
    first = run_hour(resources | {"splunk": splunk_resource(acking, ack_settle_seconds=0.0)}, key)
    assert first.success and metadata(first)["awaiting_ack_total"] == len(expected)
    time.sleep(1.1)

    # Another Python process, with nothing but the environment and the staging file in common.
    env = {**os.environ, "SPLUNK_HEC_URL": f"{acking.url}/splunk"}
    done = subprocess.run([sys.executable, "-c", SECOND_PROCESS, key], env=env, capture_output=True,
                          text=True, timeout=120)

    assert done.returncode == 0, done.stderr[-2000:]
    meta = json.loads(done.stdout.strip().splitlines()[-1])
    assert meta["success"] and meta["hec_channel"] == metadata(first)["hec_channel"]
    assert ((meta["indexer_acks_confirmed"], meta["awaiting_ack_total"], meta["requests"])
            == (len(expected), 0, 0))
    assert sorted(received_ids(acking)) == sorted(expected)


class DiesBeforeBatch:
    """The real HEC destination in small batches, in a process that is killed before its `batch`-th
    request."""

    def __init__(self, destination, batch: int, max_batch_bytes: int) -> None:
        self.inner, self.batch, self.sent = destination, batch, 0
        self.name, self.max_batch_bytes = destination.name, max_batch_bytes

    def frame(self, event: dict) -> bytes:
        return self.inner.frame(event)

    def send_batch(self, payloads, *, on_retry=None):
        self.sent += 1
        if self.sent == self.batch:
            raise SystemExit("killed")
        return self.inner.send_batch(payloads, on_retry=on_retry)

    def close(self) -> None:
        self.inner.close()


def staged_hour(resources, sandbox, events: int):
    """An hour of `events` injected audit events, pulled into a fresh staging connection: (connection, window
    start, end, the event ids, the redaction rules, the HEC destination, a batch size that holds two or three
    framed events), so a run of it goes over several HEC requests."""
    key = complete_hours(3)[0]
    inject_events(sandbox, key, events)
    start, end = window_of(key, key)
    expected = audit_ids(sandbox, start, end)
    con = duckdb.connect()
    pull_window(resources["segment_public_api"].get_client(), con, start, end)
    rules = resources["audit_redaction"].get_rules()
    splunk = resources["splunk"].get_destination()
    largest = max(len(splunk.frame(rules.redact(orjson.loads(event))))
                  for (event,) in con.execute("SELECT event FROM audit_events").fetchall())
    return con, start, end, expected, rules, splunk, 2 * (largest + 1)


def test_a_run_killed_between_batches_sends_no_batch_hec_took_again(resources, clean_sandbox):
    con, start, end, expected, rules, splunk, small_batch = staged_hour(resources, clean_sandbox, 12)
    dying = DiesBeforeBatch(splunk, batch=4, max_batch_bytes=small_batch)  # two or three events a batch

    with pytest.raises(SystemExit):
        forward_window(con, [dying], start, end, rules=rules, max_in_flight=1)
    taken_before_the_kill = len(received_ids(clean_sandbox))
    again = forward_window(con, [resources["splunk"].get_destination()], start, end, rules=rules)

    assert 0 < taken_before_the_kill < len(expected)
    assert (again.complete
            and again.deliveries["audit_trail"].delivered == len(expected) - taken_before_the_kill)
    got = received_ids(clean_sandbox)
    assert sorted(got) == sorted(expected) and len(got) == len(set(got))



def ledger_statuses(home, ids) -> Counter:
    with store.staging(staging_file(home)) as con:
        return Counter(dict(con.execute(
            "SELECT status, count(*) FROM ledger WHERE sync = 'audit_trail' AND message_id IN "
            "(SELECT unnest(?::VARCHAR[])) GROUP BY status", [list(ids)]).fetchall()))


@pytest.mark.slow
def test_after_hec_forgets_the_channel_an_old_receipt_is_never_confirmed_by_a_new_send_with_its_ack_id(
        resources, clean_sandbox, sandbox_factory, ops_env):
    acking = sandbox_factory(splunk_ack=True, splunk_ack_delay=1.0)
    resources = resources | {"splunk": splunk_resource(acking, ack_settle_seconds=0.0,
                                                       ack_timeout_seconds=300)}
    old_key, new_key = complete_hours(3)[:2]
    inject_events(clean_sandbox, old_key, 3)
    inject_events(clean_sandbox, new_key, 3)
    old_ids = audit_ids(clean_sandbox, *window_of(old_key, old_key))

    first = run_hour(resources, old_key)  # ackId 0 on the channel, not acknowledged yet
    acking.splunk_restart()  # HEC forgets the channel: its next request gets ackId 0 again
    second = run_hour(resources, new_key)
    time.sleep(1.2)  # the new ackId 0 turns true
    third = run_hour(resources, new_key)

    assert first.success and second.success and third.success
    # re-sent, not delivered
    assert ledger_statuses(ops_env, old_ids) == Counter({"awaiting_ack": len(old_ids)})
    assert (metadata(third)["indexer_acks_confirmed"]
            == len(audit_ids(clean_sandbox, *window_of(new_key, new_key))))
    assert Counter(received_ids(acking))[old_ids[0]] == 2
    # re-opened when the new send on its channel got its ackId again (end of the second run), then sent again
    assert metadata(second)["indexer_ack_channel_resets_reopened"] == len(old_ids)
    time.sleep(1.2)
    fourth = run_hour(resources, new_key)
    assert fourth.success and ledger_statuses(ops_env, old_ids) == Counter({"delivered": len(old_ids)})


@pytest.mark.slow
def test_ack_turned_off_on_the_token_never_stops_sending_and_awaiting_batches_expire(
        resources, clean_sandbox, sandbox_factory):
    timeout = 3.0
    acking = sandbox_factory(splunk_ack=True, splunk_ack_delay=float("inf"))
    resources = resources | {"splunk": splunk_resource(acking, ack_settle_seconds=0.0,
                                                       ack_timeout_seconds=timeout)}
    old_key, new_key = complete_hours(3)[:2]
    inject_events(clean_sandbox, old_key, 2)
    inject_events(clean_sandbox, new_key, 2)
    old_ids = audit_ids(clean_sandbox, *window_of(old_key, old_key))
    new_ids = audit_ids(clean_sandbox, *window_of(new_key, new_key))

    first = run_hour(resources, old_key)
    first_done = time.monotonic()
    acking.splunk_ack(False)  # an admin turns indexer ack off: every ack query is now code 14
    second = run_hour(resources, new_key)
    time.sleep(max(0.0, first_done + timeout + 0.2 - time.monotonic()))
    third = run_hour(resources, new_key)

    assert first.success and second.success and third.success
    assert metadata(second)["delivered"] == len(new_ids)  # sent although the settle before it was refused
    assert "ACK is disabled" in metadata(second)["indexer_ack_query_error"]
    assert metadata(third)["indexer_ack_timeouts_reopened"] == len(old_ids)
    assert metadata(third)["awaiting_ack_total"] == 0 and checks(third)["delivery_complete"].passed
    assert Counter(received_ids(acking)) == Counter({**dict.fromkeys(old_ids, 2),
                                                     **dict.fromkeys(new_ids, 1)})


class SmallBatches:
    """The real HEC destination, in batches of about `events` events."""

    def __init__(self, destination, max_batch_bytes: int) -> None:
        self.inner, self.max_batch_bytes, self.name = destination, max_batch_bytes, destination.name

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_concurrent_batches_on_one_channel_are_all_confirmed_and_none_read_as_a_reset(resources,
                                                                                      clean_sandbox,
                                                                                      sandbox_factory):
    acking = sandbox_factory(splunk_ack=True, splunk_ack_delay=0.0)
    key = complete_hours(3)[0]
    inject_events(clean_sandbox, key, 40)
    start, end = window_of(key, key)
    expected = audit_ids(clean_sandbox, start, end)
    con = duckdb.connect()
    pull_window(resources["segment_public_api"].get_client(), con, start, end)
    rules = resources["audit_redaction"].get_rules()
    splunk = splunk_resource(acking, ack_settle_seconds=5.0).get_destination(channel=str(uuid.uuid4()))
    largest = max(len(splunk.frame(rules.redact(orjson.loads(event))))
                  for (event,) in con.execute("SELECT event FROM audit_events").fetchall())

    report = forward_window(con, [SmallBatches(splunk, 2 * (largest + 1))], start, end, rules=rules,
                            max_in_flight=4)

    settled = report.settles["audit_trail"]
    assert report.deliveries["audit_trail"].requests >= 15 and report.complete
    assert (settled.confirmed, settled.lost, settled.expired) == (len(expected), 0, 0)
    assert sorted(received_ids(acking)) == sorted(expected)


def forwarded_hours(home) -> set[str]:
    with store.staging(staging_file(home)) as con:
        return {row[0].astimezone(UTC).strftime("%Y-%m-%d-%H:00")
                for row in con.execute("SELECT window_start FROM forwarded_windows").fetchall()}


@pytest.mark.slow
def test_an_hour_counts_as_forwarded_only_once_its_acks_are_in_and_a_later_run_records_it(
        resources, clean_sandbox, sandbox_factory, ops_env):
    acking = sandbox_factory(splunk_ack=True, splunk_ack_delay=1.0)
    resources = resources | {"splunk": splunk_resource(acking, ack_settle_seconds=0.0)}
    first_key, later_key = complete_hours(3)[:2]
    inject_events(clean_sandbox, first_key, 2)

    awaiting = run_hour(resources, first_key)
    assert first_key not in forwarded_hours(ops_env)  # handed over, but HEC has not acknowledged it yet
    time.sleep(1.2)
    # The later hour may hold demo events of its own, whatever the hour of day: this run waits for their acks.
    patient = resources | {"splunk": splunk_resource(acking, ack_settle_seconds=5.0)}
    later = run_hour(patient, later_key)

    assert awaiting.success and later.success
    assert metadata(awaiting)["awaiting_ack_total"] > 0 and metadata(later)["indexer_acks_confirmed"] > 0
    assert forwarded_hours(ops_env) == {first_key, later_key}
    assert checks(later)["no_gap_between_forwarded_windows"].passed


class DiesWithBatchesInFlight(DiesBeforeBatch):
    """`DiesBeforeBatch` for concurrent senders: counts under a lock and keeps the ids each request
    carried."""

    def __init__(self, destination, batch: int, max_batch_bytes: int) -> None:
        super().__init__(destination, batch, max_batch_bytes)
        self.lock, self.batches = threading.Lock(), []

    def send_batch(self, payloads, *, on_retry=None):
        with self.lock:
            self.sent += 1
            number = self.sent
            if number != self.batch:  # the others in flight still reach HEC
                self.batches.append([orjson.loads(p)["event"]["id"] for p in payloads])
        if number == self.batch:
            raise SystemExit("killed")
        return self.inner.send_batch(payloads, on_retry=on_retry)


def test_a_run_killed_with_concurrent_batches_in_flight_sends_again_only_batches_it_had_not_recorded(
        resources, clean_sandbox):
    in_flight = 3
    con, start, end, expected, rules, splunk, small_batch = staged_hour(resources, clean_sandbox, 24)
    dying = DiesWithBatchesInFlight(splunk, batch=6, max_batch_bytes=small_batch)

    with pytest.raises(SystemExit):
        forward_window(con, [dying], start, end, rules=rules, max_in_flight=in_flight)
    again = forward_window(con, [resources["splunk"].get_destination()], start, end, rules=rules)

    got = Counter(received_ids(clean_sandbox))
    twice = {event_id for event_id, n in got.items() if n > 1}
    resent = [batch for batch in dying.batches if twice & set(batch)]
    assert again.complete and sorted(got) == sorted(expected) and max(got.values()) <= 2
    # only whole batches that were still in flight when the run died: at most in_flight - 1 of them
    assert len(resent) <= in_flight - 1 and twice == {i for batch in resent for i in batch}
