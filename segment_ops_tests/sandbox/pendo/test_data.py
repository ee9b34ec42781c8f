"""Pendo's demo data: visitors, accounts, usage per day and hour, per app and item, NPS answers."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from segment_ops.sandbox.demo_data import DemoConfig, DemoData
from segment_ops.sandbox.pendo.data import PENDO_APPS, PENDO_DEFAULT_APP_ID
from segment_ops.sandbox.world import PENDO_ANONYMOUS_PREFIX
from segment_ops_tests.sandbox.conftest import DAY_MS, HOUR_MS, NOW, NOW_MS, SMALL


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


NEW_YORK = ZoneInfo("America/New_York")  # the sandbox subscription's zone, DemoData's default


def _midnight(day: date, zone: ZoneInfo = NEW_YORK) -> int:
    return _ms(datetime(day.year, day.month, day.day, tzinfo=zone))


def _local_day(moment_ms: int, zone: ZoneInfo = NEW_YORK) -> date:
    return datetime.fromtimestamp(moment_ms / 1000, UTC).astimezone(zone).date()


def test_pendo_visitors_use_user_id_or_prefixed_anonymous_id(data: DemoData) -> None:
    visitors = data.pendo_visitors()
    ids = [v["visitorId"] for v in visitors]
    assert len(ids) == len(set(ids)) == len(data.users) - 2  # minus the duplicate row and the future user
    anonymous = [v for v in visitors if v["visitorId"].startswith(PENDO_ANONYMOUS_PREFIX)]
    assert anonymous and all(v["accountId"] is None for v in anonymous)
    auto = visitors[0]["metadata"]["auto"]
    assert auto["firstvisit"] <= auto["lastvisit"] <= NOW_MS
    assert visitors[0]["metadata"]["agent"].keys() == {"name", "email"}


def test_pendo_accounts_include_accounts_without_visitors(data: DemoData) -> None:
    accounts = data.pendo_accounts()
    assert {a["accountId"] for a in accounts} == set(data.accounts["account_id"])
    custom = accounts[0]["metadata"]["custom"]
    assert custom.keys() == {"planlevel", "seats"} and isinstance(custom["seats"], int)


def test_some_accounts_with_users_have_no_activity_at_all(data: DemoData) -> None:
    rows = data.pendo_events("events", NOW_MS - 60 * DAY_MS, NOW_MS)
    active = {r["accountId"] for r in rows}
    with_users = set(data.users["account_id"].dropna())
    assert with_users - active


def test_pendo_day_buckets_start_at_new_york_midnight_complete_and_in_range(data: DemoData) -> None:
    first, last = NOW_MS - 10 * DAY_MS + 5 * HOUR_MS, NOW_MS
    rows = data.pendo_events("events", first, last, "dayRange")
    days = {r["day"] for r in rows}
    assert all(d == _midnight(_local_day(d)) for d in days)  # 05:00Z in November: New York midnight
    assert all(datetime.fromtimestamp(d / 1000, UTC).hour == 5 for d in days)
    assert min(days) == _midnight(_local_day(first))  # the bucket containing `first` is included
    assert _midnight(_local_day(max(days)) + timedelta(days=1)) <= NOW_MS  # today is not complete yet
    assert all(r["numEvents"] > 0 and r["numMinutes"] > 0 for r in rows)


@pytest.mark.parametrize("zone", ["UTC", "Europe/Berlin", "Asia/Tokyo", "America/Los_Angeles"])
def test_pendo_day_buckets_follow_the_subscription_zone_given(data: DemoData, zone: str) -> None:
    first, last = NOW_MS - 5 * DAY_MS, NOW_MS - DAY_MS
    rows = data.pendo_events("events", first, last, timezone=zone)
    local = ZoneInfo(zone)
    assert rows and all(r["day"] == _midnight(_local_day(r["day"], local), local) for r in rows)


def test_pendo_hour_buckets_sum_to_the_local_day(data: DemoData) -> None:
    day = _local_day(NOW_MS) - timedelta(days=2)
    start, end = _midnight(day), _midnight(day + timedelta(days=1))
    daily = {(r["visitorId"], r["appId"]): (r["numEvents"], r["numMinutes"])
             for r in data.pendo_events("events", start, end)}
    hourly: defaultdict[tuple, list[int]] = defaultdict(lambda: [0, 0])
    for row in data.pendo_events("events", start, end, "hourRange"):
        assert row["hour"] % HOUR_MS == 0 and start <= row["hour"] < end
        hourly[(row["visitorId"], row["appId"])][0] += row["numEvents"]
        hourly[(row["visitorId"], row["appId"])][1] += row["numMinutes"]
    assert daily and {k: tuple(v) for k, v in hourly.items()} == daily


@pytest.mark.parametrize(("day", "hours"), [(date(2026, 3, 8), 23), (date(2026, 11, 1), 25)])
def test_a_dst_day_is_one_bucket_of_23_or_25_hours_holding_exactly_its_hours(data: DemoData, day: date,
                                                                            hours: int) -> None:
    start, end = _midnight(day), _midnight(day + timedelta(days=1))
    assert end - start == hours * HOUR_MS
    rows = data.pendo_events("events", start - DAY_MS, end + DAY_MS)  # the day before, the day, the day after
    assert sorted({r["day"] for r in rows}) == [_midnight(day - timedelta(days=1)), start, end]
    in_hours = sum(r["numEvents"] for r in data.pendo_events("events", start, end, "hourRange"))
    assert in_hours > 0 and sum(r["numEvents"] for r in rows if r["day"] == start) == in_hours


def test_a_day_count_is_the_same_hours_whatever_the_zone(data: DemoData) -> None:
    """Zones only move the day boundaries: 10 whole New York days hold the hours of those 10 days."""
    first, last = _local_day(NOW_MS) - timedelta(days=12), _local_day(NOW_MS) - timedelta(days=3)
    start, end = _midnight(first), _midnight(last + timedelta(days=1))
    days = data.pendo_events("featureEvents", start, end)
    hours = data.pendo_events("featureEvents", start, end, "hourRange")
    assert sum(r["numEvents"] for r in days) == sum(r["numEvents"] for r in hours) > 0
    utc_days = data.pendo_events("featureEvents", start, end, timezone="UTC")
    assert {r["day"] % DAY_MS for r in utc_days} == {0} and utc_days != days


def test_pendo_hours_of_today_stop_at_the_last_complete_hour(data: DemoData) -> None:
    today = NOW_MS // DAY_MS * DAY_MS
    rows = data.pendo_events("events", today, today + DAY_MS, "hourRange")
    assert rows and max(r["hour"] for r in rows) + HOUR_MS <= NOW_MS


def test_pendo_activity_covers_the_last_45_days_and_weekends_are_quieter(data: DemoData) -> None:
    rows = data.pendo_events("events", NOW_MS - 45 * DAY_MS, NOW_MS)
    per_day: Counter[int] = Counter()
    for row in rows:
        per_day[row["day"]] += row["numEvents"]
    assert len(per_day) == 45
    weekend = [n for d, n in per_day.items() if _local_day(d).weekday() >= 5]
    weekday = [n for d, n in per_day.items() if _local_day(d).weekday() < 5]
    assert sum(weekend) / len(weekend) < 0.6 * sum(weekday) / len(weekday)


def test_some_accounts_drop_sharply_in_the_last_ten_days() -> None:
    data = DemoData(DemoConfig(scale=0.2), now=NOW)
    recent, before = defaultdict(int), defaultdict(int)
    for row in data.pendo_events("events", NOW_MS - 38 * DAY_MS, NOW_MS):
        if row["accountId"] is None:
            continue
        (recent if row["day"] >= NOW_MS - 8 * DAY_MS else before)[row["accountId"]] += row["numEvents"]
    # events per day: the last 7 complete days against the 30 before them
    dropped = [a for a in before if recent[a] / 7 < 0.3 * before[a] / 30]
    steady = [a for a in before if recent[a] / 7 >= 0.6 * before[a] / 30]
    assert dropped and len(steady) > len(dropped)


def test_pendo_events_agree_between_instances_built_at_different_times() -> None:
    early, later = DemoData(SMALL, now=NOW), DemoData(SMALL, now=NOW + timedelta(hours=5))
    first, last = NOW_MS - 3 * DAY_MS, NOW_MS - DAY_MS
    for kind in ("events", "featureEvents"):
        assert early.pendo_events(kind, first, last) == later.pendo_events(kind, first, last)
    hours = (NOW_MS - 6 * HOUR_MS, NOW_MS - HOUR_MS)
    assert early.pendo_events("events", *hours, "hourRange") == later.pendo_events("events", *hours,
                                                                                    "hourRange")


@pytest.mark.parametrize(("kind", "field"), [("pageEvents", "pageId"), ("featureEvents", "featureId"),
                                             ("trackEvents", "trackTypeId")])
def test_pendo_item_sources_carry_their_item_id(data: DemoData, kind: str, field: str) -> None:
    rows = data.pendo_events(kind, NOW_MS - 3 * DAY_MS, NOW_MS)
    assert rows and all(r[field] and r["numEvents"] > 0 for r in rows)
    assert len({r[field] for r in rows}) > 1
    keys = [(r["visitorId"], r["day"], r[field]) for r in rows]
    assert len(keys) == len(set(keys))


def test_pendo_rejects_unknown_sources_and_periods(data: DemoData) -> None:
    with pytest.raises(ValueError, match="guideEvents"):
        data.pendo_events("guideEvents", 0, NOW_MS)
    with pytest.raises(ValueError, match="weekRange"):
        data.pendo_events("events", 0, NOW_MS, "weekRange")


def test_pendo_lastvisit_matches_the_latest_activity(data: DemoData) -> None:
    yesterday = _midnight(_local_day(NOW_MS) - timedelta(days=1))
    active = {r["visitorId"] for r in data.pendo_events("events", yesterday, yesterday + DAY_MS)}
    lastvisit = {v["visitorId"]: v["metadata"]["auto"]["lastvisit"] for v in data.pendo_visitors()}
    assert active and all(lastvisit[v] >= yesterday for v in active)


def test_pendo_nps_answers_are_scores_in_the_window(data: DemoData) -> None:
    first, last = NOW_MS - 90 * DAY_MS, NOW_MS
    answers = data.pendo_poll_events(first, last)
    assert answers
    assert all(first <= a["time"] < last and 0 <= a["response"] <= 10 for a in answers)
    keys = {"visitorId", "accountId", "appId", "time", "guideId", "pollId", "response"}
    assert all(a.keys() == keys for a in answers)
    assert len({a["response"] for a in answers}) > 3
    later = DemoData(SMALL, now=NOW + timedelta(hours=1))
    assert data.pendo_poll_events(first, last) == later.pendo_poll_events(first, last)


# ------------------------------------------------------------------------------------- Pendo apps


def test_the_subscription_has_a_default_web_app_and_two_mobile_apps() -> None:
    assert [(a.id, a.platform) for a in PENDO_APPS] == [(-323232, "web"), (5668600916475904, "ios"),
                                                         (5715999741083648, "android")]
    assert PENDO_DEFAULT_APP_ID == -323232


def test_every_event_row_carries_its_app_and_some_usage_is_in_the_mobile_apps(data: DemoData) -> None:
    rows = data.pendo_events("events", NOW_MS - 7 * DAY_MS, NOW_MS)
    per_app = Counter()
    for row in rows:
        per_app[row["appId"]] += row["numEvents"]
    assert set(per_app) == {a.id for a in PENDO_APPS}
    assert per_app[PENDO_DEFAULT_APP_ID] > per_app[5668600916475904] > 0 and per_app[5715999741083648] > 0


def test_apps_limit_the_rows_and_together_make_the_whole(data: DemoData) -> None:
    first, last = NOW_MS - 5 * DAY_MS, NOW_MS
    whole = data.pendo_events("pageEvents", first, last)
    parts = [data.pendo_events("pageEvents", first, last, apps=[app.id]) for app in PENDO_APPS]
    assert all(parts) and all({r["appId"] for r in part} == {app.id} for part, app in zip(parts, PENDO_APPS,
                                                                                          strict=True))
    assert sorted(map(str, whole)) == sorted(str(r) for part in parts for r in part)


def test_each_app_has_its_own_features(data: DemoData) -> None:
    features = data.pendo_features()
    by_app = Counter(f["appId"] for f in features)
    assert by_app == {-323232: 8, 5668600916475904: 3, 5715999741083648: 3}
    assert len({f["id"] for f in features}) == 14
    assert data.pendo_features([PENDO_DEFAULT_APP_ID]) == features[:8]


def test_nps_answers_belong_to_the_default_app(data: DemoData) -> None:
    first, last = NOW_MS - 90 * DAY_MS, NOW_MS
    assert {a["appId"] for a in data.pendo_poll_events(first, last)} == {PENDO_DEFAULT_APP_ID}
    assert data.pendo_poll_events(first, last, apps=[5668600916475904]) == []
