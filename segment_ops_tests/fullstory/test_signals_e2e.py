"""Frustration signals end to end: the sandbox's Fullstory Streams -> the real receiver over HTTP -> the inbox
-> `fullstory_signals_job` (Dagster, the code location's resources) -> the sandbox's Segment."""

from __future__ import annotations

import json
import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from fnmatch import fnmatchcase
from pathlib import Path

import dagster as dg
import duckdb
import httpx
import orjson
import pytest
from dagster._core.utils import make_new_run_id

from segment_ops.engine import store
from segment_ops.engine.erasure import erase_everywhere
from segment_ops.syncs.fullstory.defs import INBOX_TAG, SENSOR_NAME, SIGNALS_JOB, prepare_demo
from segment_ops.syncs.fullstory.defs import defs as fullstory_defs
from segment_ops.syncs.fullstory.inbox import Inbox
from segment_ops.syncs.fullstory.receiver import rejected_bodies
from segment_ops.syncs.fullstory.settings import load_config
from segment_ops.syncs.fullstory.signals import STATUSES, SYNC
from segment_ops.syncs.fullstory.streams import event_from_body
from segment_ops_tests.fullstory.conftest import (
    EVENTS,
    SIGNALS_NODE,
    TOKEN,
    FastRetrySegment,
    checks,
    metadata,
    parse_time,
    run_signals,
    segment_calls,
    segment_stats,
    set_in_file,
    step_failure,
)
from segment_ops_tests.reverse_etl.conftest import edit_warehouse

pytestmark = pytest.mark.slow


def inbox_events(home: Path) -> dict[str, tuple[datetime, dict]]:
    """Every event in the live inbox: key -> (earliest arrival, body)."""
    inbox = Inbox.for_home(home)
    found: dict[str, tuple[datetime, dict]] = {}
    for hour in inbox.hours():
        for stored in map(inbox.read_event, inbox.event_files(hour).values()):
            if stored.key not in found or stored.received_at < found[stored.key][0]:
                found[stored.key] = (stored.received_at, stored.body)
    return found


def max_delay() -> timedelta:
    return timedelta(hours=load_config().signals.max_delay_hours)


def expected(home: Path) -> dict[str, tuple[str, tuple | None]]:
    """What the config's rules (FULLSTORY_SIGNALS_FILE, else the shipped file) make of each event in the
    inbox: key -> (status, the track call's (userId, event, timestamp) when sent). Computed from the
    documented rules, independently of the sync's SQL."""
    signals = load_config().signals
    per_user, window_hours, delay = signals.per_user, signals.window_hours, max_delay()
    assert signals.exclude_emails == ("*@staff.example",)
    decided: dict[str, tuple[str, tuple | None]] = {}
    candidates = []
    for key, (received_at, body) in inbox_events(home).items():
        event = event_from_body(body)
        email = (event.email or "").lower()
        if event.name not in EVENTS:
            decided[key] = ("not_a_signal", None)
        elif received_at - event.timestamp > delay:
            decided[key] = ("late", None)
        elif fnmatchcase(email, "*@staff.example") or fnmatchcase((event.page_url or "").lower(),
                                                                   "*/internal/*"):
            decided[key] = ("filtered", None)
        elif not event.uid:
            decided[key] = ("unidentified", None)  # the demo's anonymous visitors have no email either
        else:
            candidates.append((received_at, event.timestamp, key, event))
    used: Counter = Counter()
    for _, _, key, event in sorted(candidates):
        bucket = (event.uid, event.name, int(event.timestamp.timestamp()) // (window_hours * 3600))
        used[bucket] += 1
        call = (event.uid, EVENTS[event.name], event.timestamp)
        decided[key] = ("send", call) if used[bucket] <= per_user else ("rate_limited", None)
    return decided


def sent(sandbox) -> list[tuple[str, str, datetime]]:
    return [(m["userId"], m["event"], parse_time(m["timestamp"])) for m in segment_calls(sandbox)]


def statuses(meta: dict) -> dict[str, int]:
    return {s: meta[f"now_{s}"] for s in STATUSES if meta[f"now_{s}"]}


def redeliver_in_an_earlier_hour(home: Path, key: str, hours: int = 3) -> None:
    """Store an event of the inbox again, as Fullstory's rare re-delivery arriving in another hour."""
    inbox = Inbox.for_home(home)
    _, body = inbox_events(home)[key]
    assert inbox.store(event_from_body(body), received_at=datetime.now(UTC) - timedelta(hours=hours),
                       token="FULLSTORY_STREAM_TOKEN")


def test_signals_land_in_segment_once_each_with_the_session_url(streams, resources, ops_env, warehouse):
    pushed = streams.push_fullstory(duplicate=3, late_hours=max_delay() / timedelta(hours=1) + 30, late=2)
    rules = expected(ops_env)
    first_key = next(iter(rules))
    redeliver_in_an_earlier_hour(ops_env, first_key)

    result = run_signals(resources)

    assert result.success
    assert {d["status"] for d in pushed["deliveries"]} == {"delivered"}
    assert len(pushed["deliveries"]) == pushed["sent"] + 3  # three events posted twice
    meta = metadata(result, SIGNALS_NODE)
    calls = segment_calls(streams)
    # Exactly the signals the rules send, each once (the duplicates and the re-delivery: not twice).
    want = sorted(call for status, call in rules.values() if status == "send")
    assert sorted(sent(streams)) == want and len(want) > 5
    assert segment_stats(streams) == (len(want), 0)
    assert len({m["messageId"] for m in calls}) == len(calls)
    assert {m["event"] for m in calls} == set(EVENTS.values())
    for m in calls:
        props = m["properties"]
        assert props["session_url"].startswith("https://app.fullstory.com/ui/")
        assert "/session/" in props["session_url"]
        assert props["page_url"].startswith("https://app.example/")
        assert props["fullstory_stream"] in EVENTS and EVENTS[props["fullstory_stream"]] == m["event"]
        assert props["fullstory_kind"] == {"Rage Clicked": "rage", "Dead Clicked": "dead",
                                           "Error Clicked": "error"}[m["event"]]
        assert props["fullstory_user_id"] is None  # the Field Mapping body has no path for Fullstory's id
        assert m["userId"].startswith("usr_")
    # What the run decided, and its counts adding up.
    want_statuses = Counter(status for status, _ in rules.values())
    assert statuses(meta) == dict(want_statuses)
    assert want_statuses["late"] >= 2 and want_statuses["filtered"] and want_statuses["unidentified"]
    assert meta["events_read"] == len(rules) + 1  # the re-delivery in another hour is read too
    assert meta["new_events"] == sum(want_statuses.values()) == len(rules)
    assert meta["events_read"] == sum(statuses(meta).values()) + 1
    assert meta["totals_by_status"] == dict(want_statuses)
    assert meta["signals_by_kind"] == dict(Counter(m["properties"]["fullstory_kind"] for m in calls))
    assert (meta["planned"], meta["delivered"], meta["pending_after_run"]) == (len(want), len(want), 0)
    assert meta["hours_archived"] == 1  # the earlier hour of the re-delivery, closed; the current one stays
    assert meta["rejected_by_receiver"] == 0
    assert meta["email_map_rows"] > 0
    assert all(c.passed for c in checks(result).values())
    assert checks(result)["events_accounted"].metadata["rejected_now"].value == 0


def test_filtered_unidentified_and_late_events_are_not_sent(streams, resources, ops_env, warehouse):
    pushed = streams.push_fullstory(late_hours=max_delay() / timedelta(hours=1) + 30, late=3)

    result = run_signals(resources)

    assert result.success
    calls = segment_calls(streams)
    users = {m["userId"] for m in calls}
    # Staff (emails @staff.example) and anonymous visitors (no uid, no email) were pushed, never sent.
    staff = {e["uid"] for e in pushed["events"] if e["uid"].startswith("staff_")}
    assert staff and not staff & users
    assert any(e["uid"] == "" for e in pushed["events"]) and "" not in users and None not in users
    # The late events (30 h past max_delay_hours) and any demo event older than that at arrival: not sent.
    late = {(e["uid"], parse_time(e["timestamp"])) for e in pushed["events"] if e["late"]}
    assert len(late) == 3 and not late & {(u, t) for u, _, t in sent(streams)}
    now = datetime.now(UTC)
    assert all(now - t < max_delay() for _, _, t in sent(streams))
    meta = metadata(result, SIGNALS_NODE)
    assert meta["now_late"] >= 3 and meta["now_filtered"] > 0 and meta["now_unidentified"] > 0
    assert meta["latest_event_delay_seconds"] > max_delay().total_seconds()  # the late events arrived last


def test_the_per_user_limit_is_respected_per_kind_and_window(streams, resources, ops_env, warehouse,
                                                             config_file, monkeypatch):
    set_in_file(config_file, "per_user = 3", "per_user = 1")
    set_in_file(config_file, "window_hours = 24", "window_hours = 168")
    config_file.write_text(re.sub(r"(?m)^max_delay_hours = .*$", "max_delay_hours = 200",
                                  config_file.read_text()))
    monkeypatch.setenv("FULLSTORY_SIGNALS_FILE", str(config_file))
    assert load_config().signals.max_delay_hours == 200
    streams.push_fullstory()
    rules = expected(ops_env)

    result = run_signals(resources)

    assert result.success
    meta = metadata(result, SIGNALS_NODE)
    calls = sent(streams)
    window = 168 * 3600
    per_bucket = Counter((u, e, int(t.timestamp()) // window) for u, e, t in calls)
    assert per_bucket and max(per_bucket.values()) == 1
    assert sorted(calls) == sorted(c for s, c in rules.values() if s == "send")
    assert meta["now_rate_limited"] == Counter(s for s, _ in rules.values())["rate_limited"] > 0
    assert meta["now_late"] == 0  # nothing in the demo's week is 200 h old


def test_a_second_run_sends_nothing_new(streams, resources, ops_env, warehouse):
    streams.push_fullstory(duplicate=0.2)
    first = run_signals(resources)
    before = segment_stats(streams)

    second = run_signals(resources)

    assert first.success and second.success
    meta = metadata(second, SIGNALS_NODE)
    assert segment_stats(streams) == before and before[0] > 0
    assert meta["new_events"] == 0 and sum(statuses(meta).values()) == 0
    assert meta["events_read"] == metadata(first, SIGNALS_NODE)["events_read"]  # the open hour, read again
    assert (meta["planned"], meta["delivered"]) == (0, 0)
    assert meta["totals_by_status"] == metadata(first, SIGNALS_NODE)["totals_by_status"]


def test_a_redelivery_after_the_run_is_not_sent_again(streams, resources, ops_env, warehouse, receiver_url):
    streams.push_fullstory()
    run_signals(resources)
    before = segment_stats(streams)
    key, (_, body) = next((k, v) for k, v in inbox_events(ops_env).items()
                          if expected(ops_env)[k][0] == "send")
    again = httpx.post(receiver_url, content=orjson.dumps(body), headers={"Authorization": f"Bearer {TOKEN}"})
    redeliver_in_an_earlier_hour(ops_env, key, hours=5)

    result = run_signals(resources)

    assert again.json() == {"stored": False, "event": key}  # same hour: kept once by the receiver
    assert result.success and segment_stats(streams) == before
    assert metadata(result, SIGNALS_NODE)["new_events"] == 0


def test_new_events_after_a_run_are_sent_and_count_against_the_window(streams, resources, ops_env, warehouse):
    streams.push_fullstory()
    run_signals(resources)
    before = segment_stats(streams)[0]

    pushed = streams.push_fullstory(late_hours=1, late=4)  # only the new events: the rest were sent before
    result = run_signals(resources)

    assert result.success and pushed["sent"] == 4
    meta = metadata(result, SIGNALS_NODE)
    assert meta["new_events"] == 4
    assert meta["now_send"] + meta["now_rate_limited"] == 4
    assert segment_stats(streams) == (before + meta["now_send"], 0)
    # Still at most 3 per user, kind and UTC day over both runs.
    per_bucket = Counter((u, e, t.date()) for u, e, t in sent(streams))
    assert max(per_bucket.values()) <= 3


def test_a_token_other_than_the_streams_is_refused_and_nothing_runs(streams, resources, ops_env, warehouse):
    pushed = streams.push_fullstory(bad_token=True)

    result = run_signals(resources)

    assert pushed["deliveries"] and all(d["status"] == "failed" and d["last_result"] == "HTTP 401"
                                        and d["attempts"] == 1 for d in pushed["deliveries"])
    assert sum(Inbox.for_home(ops_env).counts().values()) == 0
    assert result.success
    meta = metadata(result, SIGNALS_NODE)
    assert meta["events_read"] == 0 and meta["planned"] == 0 and segment_stats(streams) == (0, 0)


def test_bodies_the_receiver_kept_aside_fail_the_events_accounted_check(streams, resources, ops_env,
                                                                        warehouse, receiver_url):
    streams.push_fullstory()
    refused = httpx.post(receiver_url, content=b'{"name": "Rage Click"}',
                         headers={"Authorization": f"Bearer {TOKEN}"})

    result = run_signals(resources)

    assert refused.status_code == 400 and result.success
    check = checks(result)["events_accounted"]
    assert not check.passed and check.severity.value == "WARN"
    assert check.metadata["rejected_by_receiver"].value == 1
    meta = metadata(result, SIGNALS_NODE)
    assert meta["rejected_by_receiver"] == 1 and "timestamp is missing" in meta["receiver_rejections"]


def test_a_refused_body_alone_wakes_the_sensor_and_is_reported_once(clean_sandbox, resources, ops_env,
                                                                    warehouse, receiver_url, instance):
    # A stream whose Field Mapping is wrong: every body is refused, no event is stored. The sensor still
    # starts a run, which records each refusal once, alerts once and moves the bodies to the archive.
    body = b'{"name": "Rage Click", "user": {"uid": "usr_0000001", "email": "refused@example.com"}}'
    refused = httpx.post(receiver_url, content=body, headers={"Authorization": f"Bearer {TOKEN}"})
    sensed = evaluate_sensor(instance)

    first = run_signals(resources)
    second = run_signals(resources)

    assert refused.status_code == 400 and [r.run_key for r in sensed.run_requests]
    assert list(json.loads(sensed.cursor)) == ["rejected"]  # the newest refused body's time, no hour
    assert first.success and second.success
    assert not checks(first)["events_accounted"].passed and checks(second)["events_accounted"].passed
    with store.staging(store.staging_file(ops_env, SYNC)) as con:
        rows = con.execute("SELECT source, reason FROM rejected WHERE sync = ?", [SYNC]).fetchall()
    assert rows == [("Fullstory receiver", "timestamp is missing (the v2 body's `timestamp`, or "
                                           "`event_time`) (the body is in the Fullstory inbox's archive)")]
    alerts = [m for m in clean_sandbox.received("slack") if "Fullstory stream events rejected" in str(m)]
    assert len(alerts) == 1 and "refused@example.com" not in str(alerts)
    root = Inbox.for_home(ops_env).root
    assert not (root / "rejected").exists() or not any((root / "rejected").iterdir())
    archived = list((root / ".archive").glob("*/rejected-*/rejected-*.json"))
    assert len(archived) == 1 and b"refused@example.com" in archived[0].read_bytes()
    assert skipped(evaluate_sensor(instance, sensed.cursor))  # the archive is no news


def test_an_erasure_removes_the_subject_from_refused_bodies(clean_sandbox, ops_env, receiver_url):
    body = b'{"name": "Rage Click", "user": {"uid": "usr_gone", "email": "gone@example.com"}}'
    httpx.post(receiver_url, content=body, headers={"Authorization": f"Bearer {TOKEN}"})

    erase_everywhere(ops_env, ["gone@example.com", "usr_gone"], reason="test erasure")

    kept = rejected_bodies(ops_env)
    assert len(kept) == 1 and "gone@example.com" not in str(kept) and "usr_gone" not in str(kept)


def test_a_stored_event_that_no_longer_parses_is_rejected_by_the_run(streams, resources, ops_env, warehouse):
    streams.push_fullstory()
    inbox = Inbox.for_home(ops_env)
    hour = inbox.hours()[0]
    path = next(hour.glob("event-*.json"))
    record = orjson.loads(path.read_bytes())
    del record["body"]["timestamp"], record["body"]["event_time"]  # stored by a release that did not check
    path.write_bytes(orjson.dumps(record))

    result = run_signals(resources)

    assert result.success
    meta = metadata(result, SIGNALS_NODE)
    assert meta["now_rejected"] == 1 and meta["new_events"] == meta["events_read"]
    assert segment_stats(streams)[0] == meta["now_send"]
    assert not checks(result)["events_accounted"].passed
    assert checks(result)["events_accounted"].metadata["rejected_now"].value == 1


def test_segment_down_leaves_the_signals_pending_and_a_later_run_sends_them_once(
        streams, resources, ops_env, warehouse):
    streams.push_fullstory(duplicate=2)
    want = sorted(c for s, c in expected(ops_env).values() if s == "send")
    streams.set_faults("segment", rate_500=1.0)
    failing = resources | {"segment": FastRetrySegment(base_url=resources["segment"].base_url,
                                                       write_key=resources["segment"].write_key)}

    down = run_signals(failing)

    assert not down.success
    failure = step_failure(down, SIGNALS_NODE)
    assert failure.metadata["pending_after_run"].value == len(want) > 0
    assert failure.metadata["delivered"].value == 0
    assert segment_stats(streams) == (0, 0)

    streams.clear_faults()
    again = run_signals(resources)
    third = run_signals(resources)

    assert again.success and third.success
    assert sorted(sent(streams)) == want and segment_stats(streams) == (len(want), 0)
    meta = metadata(again, SIGNALS_NODE)
    assert meta["new_events"] == 0  # decided once, by the failed run
    assert meta["delivered"] == len(want) and meta["pending_after_run"] == 0
    assert checks(again)["delivery_complete"].passed
    assert metadata(third, SIGNALS_NODE)["delivered"] == 0 and segment_stats(streams) == (len(want), 0)


def test_a_dry_run_decides_and_sends_nothing(streams, resources, ops_env, warehouse):
    streams.push_fullstory()
    rules = expected(ops_env)

    dry = run_signals(resources, dry_run=True)
    real = run_signals(resources)

    assert dry.success and real.success
    dry_meta, real_meta = metadata(dry, SIGNALS_NODE), metadata(real, SIGNALS_NODE)
    assert dry_meta["dry_run"] is True
    assert dry_meta["planned"] == Counter(s for s, _ in rules.values())["send"]
    assert statuses(dry_meta) == statuses(real_meta)  # the dry run recorded nothing: decided again for real
    assert real_meta["delivered"] == dry_meta["planned"]


def evaluate_sensor(instance: dg.DagsterInstance, cursor: str | None = None):
    [sensor] = [s for s in fullstory_defs.sensors if s.name == SENSOR_NAME]
    context = dg.build_sensor_context(instance=instance, cursor=cursor,
                                      resources={"staging": resources_of()["staging"]})
    return sensor(context)


def resources_of() -> dict:
    from segment_ops.resources import build_resources

    return build_resources()


def skipped(result) -> str | None:
    """The skip message of a sensor result that requested nothing, else None."""
    if isinstance(result, dg.SkipReason):
        return result.skip_message
    return None if result.run_requests else result.skip_reason.skip_message


def test_the_sensor_requests_a_run_once_per_new_event(streams, resources, ops_env, warehouse, instance):
    idle = evaluate_sensor(instance)
    assert "no Fullstory stream event" in skipped(idle)

    streams.push_fullstory()
    sensed = evaluate_sensor(instance)
    [request] = sensed.run_requests
    again = evaluate_sensor(instance, sensed.cursor)
    result = run_signals(resources)

    assert request.run_key.startswith("fullstory:") and request.tags[INBOX_TAG]
    assert sum(json.loads(sensed.cursor).values()) > 0
    assert skipped(again)
    assert result.success and segment_stats(streams)[0] > 0
    assert skipped(evaluate_sensor(instance, sensed.cursor))  # a run does not wake it


def test_the_sensor_starts_a_failed_run_again_up_to_three_times(streams, resources, ops_env, warehouse,
                                                                instance):
    streams.push_fullstory()
    sensed = evaluate_sensor(instance)
    [request] = sensed.run_requests
    marker = request.tags[INBOX_TAG]
    cursor = sensed.cursor
    keys = [request.run_key]
    for _ in range(2):  # the run for these events failed (Segment down): the sensor tries again
        instance.add_run(dg.DagsterRun(job_name=SIGNALS_JOB, run_id=make_new_run_id(),
                                       status=dg.DagsterRunStatus.FAILURE, tags={INBOX_TAG: marker}))
        retried = evaluate_sensor(instance, cursor)
        [again] = retried.run_requests
        keys.append(again.run_key)
        cursor = retried.cursor
    instance.add_run(dg.DagsterRun(job_name=SIGNALS_JOB, run_id=make_new_run_id(),
                                   status=dg.DagsterRunStatus.FAILURE, tags={INBOX_TAG: marker}))

    given_up = evaluate_sensor(instance, cursor)

    assert len(set(keys)) == 3
    assert "3 runs for the events received failed" in skipped(given_up)


def test_prepare_demo_fills_the_inbox_through_a_receiver_of_its_own(clean_sandbox, resources, ops_env,
                                                                    warehouse):
    assert prepare_demo() == {}

    inbox = Inbox.for_home(ops_env)
    deliveries = clean_sandbox.fullstory_deliveries()
    assert deliveries and all(d["status"] == "delivered" for d in deliveries)
    # 3 duplicates kept once
    assert sum(inbox.counts().values()) == len({d["event_id"] for d in deliveries})
    assert sum(d["copy"] == 2 for d in deliveries) == 3
    result = run_signals(resources)
    assert result.success
    assert metadata(result, SIGNALS_NODE)["now_send"] == segment_stats(clean_sandbox)[0] > 0
    assert all(m["properties"]["session_url"] for m in segment_calls(clean_sandbox))


def post_event(url: str, name: str, *, uid: str = "", email: str = "", page: str = "https://app.example/reports",
               at: datetime | None = None) -> str:
    at = at or datetime.now(UTC) - timedelta(hours=1)
    body = {"name": name, "timestamp": at.strftime("%Y-%m-%dT%H:%M:%SZ"), "api_version": "v2",
            "signal_version": "1", "user": {"id": "9000000000000001", "uid": uid, "email": email,
                                            "display_name": ""},
            "session_url": "https://app.fullstory.com/ui/o-1/session/1%3A2", "page_url": page,
            "event_time": at.isoformat(timespec="milliseconds")}
    answer = httpx.post(url, content=orjson.dumps(body), headers={"Authorization": f"Bearer {TOKEN}"},
                        timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()["event"]


def decisions(home: Path) -> dict[str, tuple[str, str | None, str | None]]:
    """key -> (status, reason, user_id) as the signals sync recorded them."""
    with store.staging(store.staging_file(home, SYNC), read_only=True) as con:
        rows = con.execute("SELECT key, status, reason, user_id FROM fullstory_signals").fetchall()
    return {key: (status, reason, user_id) for key, status, reason, user_id in rows}


def test_events_without_a_uid_are_matched_by_email_and_every_decision_has_its_reason(
        clean_sandbox, resources, ops_env, warehouse, receiver_url):
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        user_id, email = con.execute("SELECT user_id, lower(email) FROM customers WHERE user_id IS NOT NULL "
                                     "AND email LIKE '%_@_%._%' ORDER BY user_id LIMIT 1").fetchone()
    finally:
        con.close()
    edit_warehouse(warehouse, "INSERT INTO customers (user_id, email) VALUES ('usr_shared_1', "
                              "'shared@customer.example'), ('usr_shared_2', 'Shared@customer.example')")
    keys = {
        "by_email": post_event(receiver_url, "Rage Click", email=email.upper()),
        "unknown": post_event(receiver_url, "Rage Click", email="nobody@nowhere.example"),
        "ambiguous": post_event(receiver_url, "Dead Click", email="shared@customer.example"),
        "anonymous": post_event(receiver_url, "Dead Click"),
        "internal": post_event(receiver_url, "Error Click", uid="usr_0000001",
                               page="https://app.example/internal/admin"),
        "staff": post_event(receiver_url, "Error Click", uid="staff_0009", email="Pat@STAFF.example"),
        "other": post_event(receiver_url, "Form Abandoned", uid="usr_0000001"),
        "late": post_event(receiver_url, "Rage Click", uid="usr_0000001",
                           at=datetime.now(UTC) - max_delay() - timedelta(hours=1)),
    }

    result = run_signals(resources)

    assert result.success
    got = decisions(ops_env)
    assert got[keys["by_email"]] == ("send", None, user_id)
    assert got[keys["unknown"]] == ("unidentified", "no uid, and its email is not in the identity map", None)
    assert got[keys["ambiguous"]] == ("unidentified", "its email maps to several userIds", None)
    assert got[keys["anonymous"]] == ("unidentified", "no uid and no email", None)
    assert got[keys["internal"]][:2] == ("filtered", "the page URL matches exclude_page_urls '*/internal/*'")
    assert got[keys["staff"]][:2] == ("filtered", "the user's email matches exclude_emails '*@staff.example'")
    assert got[keys["other"]][:2] == ("not_a_signal",
                                      'stream "Form Abandoned" is not listed in [signals.streams]')
    assert got[keys["late"]][0] == "late" and "after it happened" in got[keys["late"]][1]
    [call] = segment_calls(clean_sandbox)
    assert (call["userId"], call["event"]) == (user_id, "Rage Clicked")
    meta = metadata(result, SIGNALS_NODE)
    assert statuses(meta) == {"send": 1, "unidentified": 3, "filtered": 2, "not_a_signal": 1, "late": 1}
    assert meta["email_map_ambiguous"] >= 1
    # The email map is PII: not kept in the state beyond the run.
    with store.staging(store.staging_file(ops_env, SYNC), read_only=True) as con:
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    assert not any(t.startswith("fullstory_email_map") for t in tables)


def test_a_broken_config_file_fails_the_run_naming_it(streams, resources, ops_env, warehouse, config_file,
                                                      monkeypatch):
    set_in_file(config_file, 'kind = "rage"', 'kind = "rgae"')
    monkeypatch.setenv("FULLSTORY_SIGNALS_FILE", str(config_file))
    streams.push_fullstory()

    result = run_signals(resources)

    assert not result.success
    failure = step_failure(result, SIGNALS_NODE)
    assert str(config_file) in failure.description
    assert "kind must be one of rage, dead, error" in failure.description
    assert failure.metadata["config_file"].value == str(config_file)
    # kept for later
    assert segment_stats(streams) == (0, 0) and sum(Inbox.for_home(ops_env).counts().values()) > 0
