"""The experience score end to end: signals received and decided by `fullstory_signals_job`, then
`fullstory_score_job` for a day (Dagster, the code location's resources) -> identify calls in the sandbox's
Segment, with the demo warehouse's `fullstory.events` read by the shipped `warehouse_query`."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta

import duckdb
import httpx
import orjson
import pytest

from segment_ops.syncs.fullstory.defs import demo_score_day
from segment_ops.syncs.fullstory.settings import load_config
from segment_ops_tests.fullstory.conftest import (
    SCORE_NODE,
    TOKEN,
    checks,
    metadata,
    run_score,
    run_signals,
    segment_calls,
    step_failure,
)
from segment_ops_tests.reverse_etl.conftest import edit_warehouse

pytestmark = pytest.mark.slow
TRAITS = ("fullstory_experience_score", "fullstory_experience_band")


def band(score: int) -> str:
    return "good" if score >= 80 else "fair" if score >= 50 else "poor"


def identifies(sandbox) -> dict[str, dict]:
    """The latest score traits Segment received per userId."""
    found: dict[str, dict] = {}
    for m in segment_calls(sandbox, "identify"):
        if "fullstory_experience_score" in m.get("traits", {}):
            found[m["userId"]] = m["traits"]
    return found


def score_identifies(sandbox) -> list[dict]:
    return [m for m in segment_calls(sandbox, "identify")
            if "fullstory_experience_score" in m.get("traits", {})]


def post_signal(url: str, uid: str, name: str, at: datetime) -> None:
    """One stream event for `uid` (a user the demo warehouse's Fullstory export does not know)."""
    body = {"name": name, "timestamp": at.strftime("%Y-%m-%dT%H:%M:%SZ"), "api_version": "v2",
            "signal_version": "1", "user": {"id": str(abs(hash(uid)) % 10**15), "uid": uid,
                                            "email": f"{uid}@customer.example", "display_name": uid},
            "session_url": f"https://app.fullstory.com/ui/o-1/session/1%3A{int(at.timestamp())}",
            "page_url": "https://app.example/reports", "event_time": at.isoformat(timespec="milliseconds")}
    answer = httpx.post(url, content=orjson.dumps(body), headers={"Authorization": f"Bearer {TOKEN}"},
                        timeout=10)
    assert answer.status_code == 200 and answer.json()["stored"], answer.text


@pytest.fixture
def day() -> str:
    return demo_score_day()


@pytest.fixture
def scored(streams, resources, ops_env, warehouse, receiver_url, day):
    """The demo's signals plus two test users' rage clicks on `day`, decided; then a score run for `day`."""
    noon = datetime.combine(date.fromisoformat(day), time(12), UTC)
    for k in range(4):
        post_signal(receiver_url, "fs_test_many_rages", "Rage Click", noon + timedelta(minutes=k))
    post_signal(receiver_url, "fs_test_one_rage", "Rage Click", noon)
    streams.push_fullstory()
    signals = run_signals(resources)
    assert signals.success
    result = run_score(resources, day)
    return result


def test_scores_land_as_identify_traits(scored, streams, day):
    assert scored.success
    meta = metadata(scored, SCORE_NODE)
    scores = identifies(streams)
    assert len(score_identifies(streams)) == len(scores) == meta["users_scored"] == meta["delivered"] > 2
    for user_id, traits in scores.items():
        value = traits["fullstory_experience_score"]
        assert isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 100, (user_id, traits)
        assert traits["fullstory_experience_band"] == band(value)
        assert set(traits) == set(TRAITS)
    assert meta["as_of"] == day and meta["sent"] is True and meta["newest_day_sent"] == "none"
    start = date.fromisoformat(day) - timedelta(days=load_config().score.window_days - 1)
    assert meta["window"] == f"{start} .. {day}"
    assert sum(meta["bands"].values()) == meta["users_scored"]
    assert meta["users_with_signals"] >= 2 and meta["pending_after_run"] == 0
    assert all(c.passed for c in checks(scored).values())


def test_the_demo_warehouse_export_is_read(scored):
    """The demo warehouse has Fullstory's `fullstory.events`: the shipped warehouse_query reads it."""
    meta = metadata(scored, SCORE_NODE)
    assert meta["warehouse_tables_read"] is True


def test_more_rage_clicks_score_lower(scored, streams):
    scores = identifies(streams)
    weights, cap = load_config().score.weights, load_config().score.max_signal_penalty

    many = scores["fs_test_many_rages"]["fullstory_experience_score"]
    one = scores["fs_test_one_rage"]["fullstory_experience_score"]

    assert many < one
    # No sessions in the warehouse for them: the signals alone, the 4th rage click (rate limited) counted too.
    assert one == round(100 - min(cap, weights["rage"]))
    assert many == round(100 - min(cap, 4 * weights["rage"]))


def test_a_second_run_for_the_same_day_sends_nothing(scored, streams, resources, day):
    before = len(score_identifies(streams))

    again = run_score(resources, day)

    assert again.success
    meta = metadata(again, SCORE_NODE)
    assert meta["planned"] == 0 and meta["unchanged"] == meta["users_scored"] > 0
    assert meta["sent"] is True and meta["newest_day_sent"] == day
    assert len(score_identifies(streams)) == before


def test_an_older_day_computes_but_sends_nothing(scored, streams, resources, day):
    before = len(score_identifies(streams))
    older = (date.fromisoformat(day) - timedelta(days=1)).isoformat()

    backfill = run_score(resources, older)

    assert backfill.success
    meta = metadata(backfill, SCORE_NODE)
    assert meta["sent"] is False and meta["newest_day_sent"] == day
    assert meta["planned"] == 0 and meta["users_scored"] > 0
    assert len(score_identifies(streams)) == before
    # The newest day is still what a rerun of it compares against: nothing changed, nothing sent.
    assert metadata(run_score(resources, day), SCORE_NODE)["planned"] == 0


def test_a_user_whose_signals_left_the_window_goes_back_up_once(streams, resources, ops_env, warehouse,
                                                               receiver_url, config_file, monkeypatch, day):
    config_file.write_text(re.sub(r"(?m)^max_delay_hours = .*$", "max_delay_hours = 1000",
                                  config_file.read_text()))
    monkeypatch.setenv("FULLSTORY_SIGNALS_FILE", str(config_file))
    window_days = load_config().score.window_days
    old = date.fromisoformat(day) - timedelta(days=window_days + 1)
    post_signal(receiver_url, "fs_test_old_rage", "Rage Click", datetime.combine(old, time(12), UTC))
    assert run_signals(resources).success

    then = run_score(resources, old.isoformat())
    low = identifies(streams)["fs_test_old_rage"]["fullstory_experience_score"]
    now = run_score(resources, day)
    again = run_score(resources, day)

    assert then.success and now.success and again.success
    assert low < 100
    calls = [m for m in score_identifies(streams) if m["userId"] == "fs_test_old_rage"]
    assert [c["traits"]["fullstory_experience_score"] for c in calls] == [low, 100]
    assert calls[-1]["traits"]["fullstory_experience_band"] == "good"
    assert metadata(again, SCORE_NODE)["planned"] == 0


def test_staff_are_not_scored(scored, streams, warehouse):
    """Staff (`exclude_emails`: "*@staff.example") are never Segment customers: their signals are filtered,
    and no score should be sent for them either, whatever their sessions in Fullstory's warehouse export."""
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        staff = {r[0] for r in con.execute(
            "SELECT DISTINCT json_extract_string(event_properties, '$.user_id') FROM fullstory.events "
            "WHERE event_type = 'identify' AND json_extract_string(event_properties, '$.user_email') "
            "LIKE '%@staff.example'").fetchall()}
    finally:
        con.close()
    assert staff
    assert not staff & set(identifies(streams))


def test_a_missing_fullstory_events_table_fails_with_a_warehouse_error(streams, resources, ops_env, warehouse,
                                                                      day):
    edit_warehouse(warehouse, "DROP TABLE fullstory.events")
    streams.push_fullstory()
    assert run_signals(resources).success

    result = run_score(resources, day)

    assert not result.success
    failure = step_failure(result, SCORE_NODE)
    assert "[score] warehouse_query" in failure.description
    assert "fullstory.events" in failure.description or "events" in failure.description
    assert score_identifies(streams) == []


def test_without_warehouse_query_the_signals_alone_are_scored(streams, resources, ops_env, warehouse,
                                                              receiver_url, config_file, monkeypatch, day):
    text = config_file.read_text()
    config_file.write_text(re.sub(r'(?ms)^warehouse_query = """.*?"""\n', "", text))
    monkeypatch.setenv("FULLSTORY_SIGNALS_FILE", str(config_file))
    assert load_config().score.warehouse_query is None
    noon = datetime.combine(date.fromisoformat(day), time(12), UTC)
    post_signal(receiver_url, "fs_test_error", "Error Click", noon)
    post_signal(receiver_url, "fs_test_dead", "Dead Click", noon)
    assert run_signals(resources).success

    result = run_score(resources, day)

    assert result.success
    meta = metadata(result, SCORE_NODE)
    assert meta["warehouse_tables_read"] is False and meta["users_with_sessions"] == 0
    weights = load_config().score.weights
    assert identifies(streams) == {
        "fs_test_error": {"fullstory_experience_score": round(100 - weights["error"]),
                          "fullstory_experience_band": band(round(100 - weights["error"]))},
        "fs_test_dead": {"fullstory_experience_score": round(100 - weights["dead"]),
                         "fullstory_experience_band": band(round(100 - weights["dead"]))}}


def test_scores_follow_the_warehouse_sessions(streams, resources, ops_env, warehouse, day):
    """Users with sessions in the window and no signal are scored from the warehouse alone (staff, whose email
    matches exclude_emails, are not); a user whose sessions all had an error and one page each scores lower
    than 100 by both penalties."""
    score = load_config().score
    start = datetime.combine(date.fromisoformat(day) - timedelta(days=score.window_days - 1), time(), UTC)
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        with_sessions = con.execute(
            "SELECT count(DISTINCT json_extract_string(event_properties, '$.user_id')) FROM fullstory.events "
            "WHERE event_type = 'identify' AND event_time >= ? AND event_time < ? "
            "AND json_extract_string(event_properties, '$.user_email') NOT LIKE '%@staff.example'",
            [start, start + timedelta(days=score.window_days)]).fetchone()[0]
    finally:
        con.close()
    assert run_signals(resources).success

    result = run_score(resources, day)

    assert result.success
    meta = metadata(result, SCORE_NODE)
    assert meta["warehouse_tables_read"] is True
    assert meta["users_with_sessions"] == with_sessions
    assert meta["users_with_signals"] == 0 and meta["users_scored"] == with_sessions
    assert len(identifies(streams)) == with_sessions

