"""Days are the subscription's (spec §7): requests start at local midnight, `day` is read in PENDO_TIMEZONE,
DST days are whole, a zone that is not the subscription's is refused, only settled days are read, an empty day
is told from a missing one, and days staged under UTC are re-read rather than counted twice. Real HTTP
throughout."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import dagster as dg
import duckdb
import pytest

from segment_ops.clients.base import RetryPolicy
from segment_ops.clients.pendo import (
    PendoClient,
    PendoSettingError,
    last_settled_day,
    local_day_of,
    local_midnight_ms,
    subscription_zone,
)
from segment_ops.config import SANDBOX_PENDO_INTEGRATION_KEY
from segment_ops.resources import PendoResource
from segment_ops.syncs.pendo import defs as pendo
from segment_ops.syncs.pendo.extract import (
    EmptyDaysError,
    ExtractError,
    TimeZoneMismatchError,
    ensure_schema,
    extract_days,
)
from segment_ops.syncs.pendo.score import days_staged_otherwise, missing_window_days
from segment_ops_tests.pendo.conftest import (
    ZONE,
    backfill,
    checks,
    metadata,
    query,
    rerun_day,
    staging_file,
    write_config,
    yesterday,
)

HOUR = 3_600_000
BERLIN = ZoneInfo("Europe/Berlin")
TIMED = ("events", "featureEvents", "pollEvents")


def timed_sources(sandbox) -> list[tuple[str, dict]]:
    """(source name, timeSeries) of every time-sliced aggregation the sandbox received."""
    out = []
    for body in sandbox.received("pendo", limit=1000):
        source = body["request"]["pipeline"][0]["source"]
        name = next(k for k in source if k != "timeSeries")
        if name in TIMED:
            out.append((name, source["timeSeries"]))
    return out


def raw_rows(client: PendoClient, source: str, first_ms: int, last_ms: int,
             period: str = "dayRange") -> list[dict]:
    """The sandbox's rows of every app for [first_ms, last_ms) that have an account (the sync reads no
    others), asked for directly."""
    return client.aggregate([{"source": {source: {"appId": 'expandAppIds("*")'},
                                         "timeSeries": {"period": period, "first": first_ms,
                                                        "last": last_ms}}},
                             {"filter": "!isNull(accountId)"}])


# --------------------------------------------------------------------------------------- requests and days


def test_the_partitions_are_days_of_the_subscriptions_zone():
    assert pendo.TIMEZONE == "America/New_York" == pendo.PARTITIONS.timezone
    window = pendo.PARTITIONS.time_window_for_partition_key("2026-07-04")
    assert window.start.astimezone(UTC) == datetime(2026, 7, 4, 4, tzinfo=UTC)  # EDT midnight
    assert window.end.astimezone(UTC) == datetime(2026, 7, 5, 4, tzinfo=UTC)


@pytest.mark.slow
def test_each_requests_first_is_the_local_midnight_of_its_first_day_in_epoch_ms(con, pendo_client,
                                                                                config_no_identity,
                                                                                clean_sandbox):
    first, last = date(2026, 10, 20), date(2026, 11, 25)  # 37 days: two slices, the second across the DST end

    extract_days(con, pendo_client, config_no_identity, first, last, zone=ZONE)

    requested = timed_sources(clean_sandbox)
    assert len(requested) == 6
    new_york_midnights = {
        int(datetime(2026, 10, 20, tzinfo=ZONE).timestamp() * 1000): 30,  # 2026-10-20T04:00Z (EDT)
        int(datetime(2026, 11, 19, tzinfo=ZONE).timestamp() * 1000): 7,  # 2026-11-19T05:00Z (EST)
    }
    assert {ts["first"]: ts["count"] for _, ts in requested} == new_york_midnights
    assert {ts["period"] for _, ts in requested} == {"dayRange"}


def test_day_values_are_read_as_days_of_the_subscriptions_zone(con, pendo_client, config_no_identity):
    first, last = yesterday() - timedelta(days=6), yesterday()

    extract_days(con, pendo_client, config_no_identity, first, last, zone=ZONE)

    rows = raw_rows(pendo_client, "events", local_midnight_ms(first, ZONE),
                    local_midnight_ms(last + timedelta(days=1), ZONE))
    expected: dict[date, int] = defaultdict(int)
    for row in rows:
        assert local_midnight_ms(local_day_of(row["day"], ZONE), ZONE) == row["day"]  # New York midnights
        expected[local_day_of(row["day"], ZONE)] += row["numEvents"]
    staged = dict(con.execute("SELECT day, sum(events) FROM pendo_visitor_days GROUP BY day").fetchall())
    assert staged == dict(expected) and len(staged) == 7
    bounds = con.execute("SELECT day, timezone, day_start_ms, day_end_ms FROM pendo_staged_days "
                         "ORDER BY day").fetchall()
    assert [(d, tz, s, e) for d, tz, s, e in bounds] == [
        (first + timedelta(days=n), "America/New_York", local_midnight_ms(first + timedelta(days=n), ZONE),
         local_midnight_ms(first + timedelta(days=n + 1), ZONE)) for n in range(7)]


@pytest.mark.parametrize(("day", "hours"), [(date(2026, 3, 8), 23), (date(2026, 11, 1), 25)])
def test_a_dst_day_of_23_or_25_hours_is_staged_whole(con, pendo_client, config_no_identity, day, hours):
    start, end = local_midnight_ms(day, ZONE), local_midnight_ms(day + timedelta(days=1), ZONE)

    extract_days(con, pendo_client, config_no_identity, day - timedelta(days=1), day + timedelta(days=1),
                 zone=ZONE)

    assert con.execute("SELECT day_end_ms - day_start_ms FROM pendo_staged_days WHERE day = ?", [day]
                       ).fetchone()[0] == hours * HOUR
    in_its_hours = sum(r["numEvents"] for r in raw_rows(pendo_client, "events", start, end, "hourRange"))
    assert con.execute("SELECT sum(events) FROM pendo_visitor_days WHERE day = ?",
                       [day]).fetchone()[0] == in_its_hours > 0
    everything = sum(r["numEvents"] for r in raw_rows(
        pendo_client, "events", local_midnight_ms(day - timedelta(days=1), ZONE),
        local_midnight_ms(day + timedelta(days=2), ZONE), "hourRange"))
    # no hour lost
    assert con.execute("SELECT sum(events) FROM pendo_visitor_days").fetchone()[0] == everything


# ------------------------------------------------------------------------------------------- zone mismatch


def test_a_subscription_in_another_zone_than_pendo_timezone_is_refused_and_nothing_is_staged(
        con, pendo_in_zone, config_no_identity):
    # the setting says New York
    client = PendoClient(pendo_in_zone("Europe/Berlin"), SANDBOX_PENDO_INTEGRATION_KEY)

    with pytest.raises(TimeZoneMismatchError) as raised:
        extract_days(con, client, config_no_identity, yesterday() - timedelta(days=2), yesterday(), zone=ZONE)

    message = str(raised.value)
    assert "PENDO_TIMEZONE=America/New_York" in message and "Nothing of these days was staged" in message
    assert "23:00 UTC, i.e. a UTC offset of +01:00" in message  # Berlin's midnight in winter
    assert con.execute("SELECT count(*) FROM pendo_staged_days").fetchone()[0] == 0
    assert con.execute("SELECT count(*) FROM pendo_visitor_days").fetchone()[0] == 0
    client.close()


def test_a_new_york_subscription_read_as_berlin_is_refused_too(con, pendo_client, config_no_identity):
    with pytest.raises(TimeZoneMismatchError, match=r"PENDO_TIMEZONE=Europe/Berlin.*offset of -05:00"):
        extract_days(con, pendo_client, config_no_identity, yesterday() - timedelta(days=2), yesterday(),
                     zone=BERLIN)
    assert con.execute("SELECT count(*) FROM pendo_staged_days").fetchone()[0] == 0


def test_the_same_zone_on_both_sides_reads_berlin_days(con, pendo_in_zone, config_no_identity):
    client = PendoClient(pendo_in_zone("Europe/Berlin"), SANDBOX_PENDO_INTEGRATION_KEY)
    last = yesterday() - timedelta(days=1)

    report = extract_days(con, client, config_no_identity, last - timedelta(days=2), last, zone=BERLIN)

    assert report.days == 3 and report.visitor_rows > 0
    starts = [s for (s,) in con.execute("SELECT day_start_ms FROM pendo_staged_days").fetchall()]
    assert {datetime.fromtimestamp(s / 1000, UTC).hour for s in starts} == {23}  # Berlin midnight in winter
    client.close()


@pytest.mark.slow
def test_a_run_against_a_subscription_in_another_zone_fails_naming_the_setting(resources, home,
                                                                              pendo_in_zone):
    resources["pendo"] = PendoResource(base_url=pendo_in_zone("Asia/Tokyo"),
                                       integration_key=SANDBOX_PENDO_INTEGRATION_KEY)

    result = rerun_day(resources, yesterday() - timedelta(days=1))

    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    description = failure.step_failure_data.user_failure_data.description
    assert "PENDO_TIMEZONE=America/New_York" in description and "+09:00" in description
    assert query(home, "SELECT count(*) FROM pendo_staged_days") == [(0,)]


# ---------------------------------------------------------------------------------- settled, empty, missing


def test_a_day_that_has_not_ended_settle_hours_ago_is_neither_requested_nor_staged(con, pendo_client,
                                                                                   config_no_identity,
                                                                                   clean_sandbox):
    # 01:30: the 9th ended 1.5 h ago, less than settle_hours (2)
    now = datetime(2026, 11, 10, 1, 30, tzinfo=ZONE)

    report = extract_days(con, pendo_client, config_no_identity, date(2026, 11, 8), date(2026, 11, 10),
                          zone=ZONE, now=now)

    assert report.not_ended == [date(2026, 11, 9), date(2026, 11, 10)]
    assert con.execute("SELECT max(day) FROM pendo_staged_days").fetchone()[0] == date(2026, 11, 8)
    assert {ts["count"] for _, ts in timed_sources(clean_sandbox)} == {1}  # only the 8th was asked for


def test_settle_hours_counts_from_the_end_of_the_local_day(con, pendo_client, config_no_identity,
                                                           clean_sandbox):
    day = yesterday() - timedelta(days=3)
    end = datetime.fromtimestamp(local_midnight_ms(day + timedelta(days=1), ZONE) / 1000, UTC)

    too_early = extract_days(con, pendo_client, config_no_identity, day, day, zone=ZONE,
                             now=end + timedelta(hours=config_no_identity.settle_hours, minutes=-1))
    settled = extract_days(con, pendo_client, config_no_identity, day, day, zone=ZONE,
                           now=end + timedelta(hours=config_no_identity.settle_hours))

    assert (too_early.not_ended, too_early.requests, too_early.days) == ([day], 0, 0)
    assert (settled.not_ended, settled.days) == ([], 1)


@pytest.mark.slow
def test_a_partition_not_yet_settled_fails_the_run_saying_when_it_can_be_read(resources, home,
                                                                             health_config_file):
    write_config(health_config_file, {"settle_hours = 2": "settle_hours = 48"})

    result = rerun_day(resources, yesterday())

    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    description = failure.step_failure_data.user_failure_data.description
    assert f"{yesterday()} had not ended 48 h ago in America/New_York" in description
    assert "nothing was staged" in description
    assert query(home, "SELECT count(*) FROM pendo_staged_days") == [(0,)]


@pytest.mark.slow
def test_a_range_run_stages_its_settled_days_and_leaves_the_unsettled_ones_missing(resources, home,
                                                                                   health_config_file):
    write_config(health_config_file, {"settle_hours = 2": "settle_hours = 48"})
    settled = last_settled_day(ZONE, 48)
    # the newest two are not readable yet
    first, last = settled - timedelta(days=2), settled + timedelta(days=2)
    instance = dg.DagsterInstance.ephemeral()

    result = backfill(resources, 5, last=last, instance=instance, selection=[pendo.USAGE_KEY])

    assert result.success
    staged = [first + timedelta(days=n) for n in range(3)]
    assert instance.get_materialized_partitions(pendo.USAGE_KEY) == {str(d) for d in staged}
    assert query(home, "SELECT day FROM pendo_staged_days ORDER BY day") == [(d,) for d in staged]
    events = [e.materialization for e in result.get_asset_materialization_events()]
    assert sorted(e.partition for e in events) == [str(d) for d in staged]
    not_ready = f"{settled + timedelta(days=1)} .. {last}"
    assert {e.metadata["days_not_ready"].value for e in events} == {not_ready}
    assert [e.metadata["day_visitor_rows"].value > 0 for e in events] == [True] * 3  # each partition its own


def test_an_empty_completed_day_is_staged_and_a_missing_answer_is_not(con, clean_sandbox, config_no_identity):
    # 2020-12-30 and -31 lie before anyone in the demo world used the app: Pendo answers, with no rows.
    empty = [date(2020, 12, 30), date(2020, 12, 31)]
    client = PendoClient(f"{clean_sandbox.url}/pendo", SANDBOX_PENDO_INTEGRATION_KEY,
                         retry=RetryPolicy(max_attempts=2, backoff_initial=0.01, max_elapsed=5.0))
    report = extract_days(con, client, config_no_identity, empty[0], empty[1], zone=ZONE)
    assert report.days == 2 and report.visitor_rows == 0
    clean_sandbox.set_faults("pendo", rate_503=1.0)

    with pytest.raises(ExtractError, match="HTTP 503"):
        extract_days(con, client, config_no_identity, date(2021, 1, 1), date(2021, 1, 1), zone=ZONE)

    assert con.execute("SELECT day, visitor_rows, timezone FROM pendo_staged_days "
                       "ORDER BY day").fetchall() == [
        (empty[0], 0, "America/New_York"), (empty[1], 0, "America/New_York")]
    assert missing_window_days(con, date(2021, 1, 1), 3, ZONE.key, "*") == [date(2021, 1, 1)]
    client.close()


def answering_no_usage(client: PendoClient) -> PendoClient:
    """`client`, but every time-sliced aggregation comes back completed and empty, as while Pendo re-processes
    the subscription's days after a time zone change (the account list and features still answer)."""
    read = client.aggregate_raw

    def empty(pipeline, **kwargs):
        body = read(pipeline, **kwargs)
        return b'{"results": []}' if "timeSeries" in pipeline[0]["source"] else body

    client.aggregate_raw = empty
    return client


def test_days_answered_empty_after_days_with_usage_are_not_staged(con, pendo_client, config_no_identity):
    last = yesterday()
    extract_days(con, pendo_client, config_no_identity, last - timedelta(days=5), last - timedelta(days=3),
                 zone=ZONE)
    before = con.execute("SELECT day, visitor_rows FROM pendo_staged_days ORDER BY day").fetchall()

    with pytest.raises(EmptyDaysError, match="Pendo may be re-processing") as raised:
        extract_days(con, answering_no_usage(pendo_client), config_no_identity, last - timedelta(days=3),
                     last, zone=ZONE)

    assert "allow_empty_days" in str(raised.value) and "Nothing of these days was staged" in str(raised.value)
    assert con.execute("SELECT day, visitor_rows FROM pendo_staged_days ORDER BY day").fetchall() == before


def test_allow_empty_days_stages_days_answered_empty(con, pendo_client, config_no_identity):
    last = yesterday()
    extract_days(con, pendo_client, config_no_identity, last - timedelta(days=5), last - timedelta(days=3),
                 zone=ZONE)

    report = extract_days(con, answering_no_usage(pendo_client), config_no_identity,
                          last - timedelta(days=2), last, zone=ZONE, allow_empty_days=True)

    assert (report.days, report.visitor_rows) == (3, 0)
    assert con.execute("SELECT count(*) FROM pendo_staged_days WHERE day > ? AND visitor_rows = 0",
                       [last - timedelta(days=3)]).fetchone()[0] == 3


class EmptyPendoResource(PendoResource):
    def get_client(self) -> PendoClient:
        return answering_no_usage(super().get_client())


@pytest.mark.slow
def test_a_run_refuses_days_answered_empty_unless_allow_empty_days(resources, home, clean_sandbox):
    assert backfill(resources, 3, last=yesterday() - timedelta(days=1), selection=[pendo.USAGE_KEY]).success
    resources["pendo"] = EmptyPendoResource(base_url=f"{clean_sandbox.url}/pendo",
                                            integration_key=SANDBOX_PENDO_INTEGRATION_KEY,
                                            retry_backoff_seconds=0.01)

    refused = rerun_day(resources, yesterday(), selection=[pendo.USAGE_KEY])

    assert not refused.success
    [failure] = [e for e in refused.all_events if e.is_step_failure]
    assert "Pendo may be re-processing" in failure.step_failure_data.user_failure_data.description
    assert query(home, "SELECT count(*) FROM pendo_staged_days WHERE day = ?", [yesterday()]) == [(0,)]

    allowed = rerun_day(resources, yesterday(), selection=[pendo.USAGE_KEY], run_config={
        "ops": {"pendo__account_usage_daily": {"config": {"allow_empty_days": True}}}})

    assert allowed.success
    assert query(home, "SELECT visitor_rows FROM pendo_staged_days WHERE day = ?", [yesterday()]) == [(0,)]


# ------------------------------------------------------------------------- days staged under UTC, re-read

OLD_SCHEMA = """
CREATE TABLE pendo_visitor_days (day DATE NOT NULL, account_id VARCHAR NOT NULL, visitor_id VARCHAR NOT NULL,
                                 events BIGINT NOT NULL, minutes BIGINT NOT NULL);
CREATE TABLE pendo_feature_days (day DATE NOT NULL, account_id VARCHAR NOT NULL, feature_id VARCHAR NOT NULL,
                                 events BIGINT NOT NULL, visitors BIGINT);
CREATE TABLE pendo_staged_days (day DATE NOT NULL, staged_at TIMESTAMPTZ NOT NULL, run_id VARCHAR,
                                visitor_rows BIGINT NOT NULL, feature_rows BIGINT NOT NULL,
                                poll_rows BIGINT NOT NULL);
CREATE TABLE pendo_features (feature_id VARCHAR NOT NULL, name VARCHAR, extracted_at TIMESTAMPTZ NOT NULL);
"""


def stage_as_before(con, pendo_client, first: date, last: date) -> None:
    """What the UTC-only extraction left: the old tables, UTC days of the default app, no zone recorded."""
    con.execute(OLD_SCHEMA)
    start = int(datetime(first.year, first.month, first.day, tzinfo=UTC).timestamp() * 1000)
    rows = pendo_client.aggregate([{"source": {"events": None, "timeSeries": {
        "period": "hourRange", "first": start, "last": start + ((last - first).days + 1) * 86_400_000}}}])
    per_day: dict[tuple, int] = defaultdict(int)
    for row in rows:
        if row["accountId"]:
            per_day[(datetime.fromtimestamp(row["hour"] / 1000, UTC).date(), row["accountId"],
                     row["visitorId"])] += row["numEvents"]
    con.executemany("INSERT INTO pendo_visitor_days VALUES (?, ?, ?, ?, ?)",
                    [[*key, events, events] for key, events in per_day.items()])
    con.executemany("INSERT INTO pendo_staged_days VALUES (?, now(), 'utc-run', 0, 0, 0)",
                    [[first + timedelta(days=n)] for n in range((last - first).days + 1)])


@pytest.mark.slow
def test_days_staged_under_utc_count_as_missing_until_re_read_and_re_reading_replaces_them(
        con, pendo_client, config_no_identity, tmp_path):
    first, last = yesterday() - timedelta(days=4), yesterday()
    stage_as_before(con, pendo_client, first, last)
    ensure_schema(con)  # the files of the UTC days gain the new columns

    assert missing_window_days(con, last, 5, ZONE.key, "*") == [first + timedelta(days=n) for n in range(5)]
    assert days_staged_otherwise(con, [last], ZONE.key, "*") == [
        (last, "as days of UTC for the default app only")]

    extract_days(con, pendo_client, config_no_identity, first, last, zone=ZONE)

    fresh = duckdb.connect(str(tmp_path / "fresh.duckdb"))
    extract_days(fresh, pendo_client, config_no_identity, first, last, zone=ZONE)
    totals = ("SELECT day, count(*), sum(events), sum(minutes) FROM pendo_visitor_days "
              "GROUP BY day ORDER BY day")
    assert con.execute(totals).fetchall() == fresh.execute(totals).fetchall()  # replaced, never added to
    assert con.execute("SELECT day, count(*), any_value(timezone) FROM pendo_staged_days "
                       "GROUP BY day ORDER BY day"
                       ).fetchall() == [(first + timedelta(days=n), 1, "America/New_York") for n in range(5)]
    assert missing_window_days(con, last, 5, ZONE.key, "*") == []
    fresh.close()


@pytest.mark.slow
def test_a_window_staged_under_utc_blocks_the_sync_until_the_days_are_re_read(resources, home, clean_sandbox,
                                                                              pendo_client):
    last = yesterday()
    staging_file(home).parent.mkdir(parents=True, exist_ok=True)
    old = duckdb.connect(str(staging_file(home)))
    stage_as_before(old, pendo_client, last - timedelta(days=29), last)
    old.close()

    blocked = backfill(resources, 1)  # only `last` is re-read: 29 days of the window are still UTC days

    window = checks(blocked)["window_complete"]
    assert not blocked.success and not window.passed
    assert "29 of the 30 days" in window.description and "staged as days of UTC" in window.description
    assert clean_sandbox.stats().get("segment", {}).get("received", 0) == 0

    again = backfill(resources, 30)

    assert again.success and checks(again)["window_complete"].passed
    assert metadata(again, pendo.GROUPS_KEY)["delivered"] == 15
    assert query(home, "SELECT count(*), count(DISTINCT day) FROM pendo_staged_days") == [(30, 30)]


@pytest.mark.slow
def test_days_staged_under_utc_are_not_added_into_a_partial_window_score(resources, home, clean_sandbox,
                                                                         pendo_client, health_config_file):
    write_config(health_config_file, {"allow_partial_window = false": "allow_partial_window = true"})
    last = yesterday()
    staging_file(home).parent.mkdir(parents=True, exist_ok=True)
    old = duckdb.connect(str(staging_file(home)))
    stage_as_before(old, pendo_client, last - timedelta(days=29), last)
    old.close()

    result = backfill(resources, 1)  # `last` re-read for New York; 29 UTC days stay in the tables

    assert result.success and not checks(result)["window_complete"].passed  # a warning only
    new_york_day = dict(query(home, "SELECT account_id, sum(events) FROM pendo_visitor_days WHERE day = ? "
                                    "GROUP BY 1", [last]))
    scored = dict(query(home, "SELECT account_id, events FROM pendo_account_health WHERE events > 0"))
    assert scored == new_york_day  # not the UTC days' events added to it
    assert query(home, "SELECT count(*) FROM pendo_account_health WHERE previous_events IS NOT NULL "
                       "OR last_active_date < ?", [last]) == [(0,)]


@pytest.mark.slow
def test_the_default_scoring_day_is_the_newest_day_staged_in_the_zone(resources, home, clean_sandbox,
                                                                       pendo_client, health_config_file):
    write_config(health_config_file, {"allow_partial_window = false": "allow_partial_window = true"})
    last = yesterday()
    staging_file(home).parent.mkdir(parents=True, exist_ok=True)
    old = duckdb.connect(str(staging_file(home)))
    stage_as_before(old, pendo_client, last - timedelta(days=4), last)
    old.close()

    result = backfill(resources, 2, last=last - timedelta(days=3))  # UTC days after it stay

    assert result.success
    assert metadata(result, pendo.HEALTH_KEY)["as_of"] == str(last - timedelta(days=3))
    assert metadata(result, pendo.GROUPS_KEY)["as_of"] == str(last - timedelta(days=3))


# ------------------------------------------------------------------------------------ the setting itself


@pytest.mark.parametrize("name", ["America/New_York", "Europe/Berlin", "Asia/Tokyo", "UTC",
                                  " Australia/Sydney ",
                                  # half-hour once, whole-hour since 2016/2018
                                  "America/Caracas", "Asia/Pyongyang"])
def test_whole_hour_zones_are_accepted(name):
    assert subscription_zone(name).key == name.strip()
    assert subscription_zone(name, since=date.fromisoformat(pendo.PARTITIONS_START)).key == name.strip()


@pytest.mark.parametrize(("name", "since", "offset"), [("America/Caracas", date(2015, 6, 1), "-04:30"),
                                                       ("Asia/Pyongyang", date(2017, 1, 1), "+08:30")])
def test_a_half_hour_offset_from_the_first_day_read_on_is_refused(name, since, offset):
    with pytest.raises(PendoSettingError, match=re.escape(f"{name} has the UTC offset {offset}")):
        subscription_zone(name, since=since)


@pytest.mark.slow
def test_a_zone_whole_hour_since_the_partitions_start_loads_the_definitions(tmp_path):
    loaded = load_pendo_sync("print(pendo.PARTITIONS.timezone)", PENDO_TIMEZONE="America/Caracas",
                             SEGMENT_OPS_HOME=str(tmp_path))

    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.split() == ["America/Caracas"]


def test_the_sandbox_serves_a_subscription_in_a_zone_that_was_half_hour_once(con, pendo_in_zone,
                                                                             config_no_identity):
    caracas = ZoneInfo("America/Caracas")
    client = PendoClient(pendo_in_zone("America/Caracas"), SANDBOX_PENDO_INTEGRATION_KEY)
    last = yesterday() - timedelta(days=1)

    report = extract_days(con, client, config_no_identity, last - timedelta(days=2), last, zone=caracas)

    assert report.days == 3 and report.visitor_rows > 0
    starts = [s for (s,) in con.execute("SELECT day_start_ms FROM pendo_staged_days").fetchall()]
    assert {datetime.fromtimestamp(s / 1000, UTC).hour for s in starts} == {4}  # Caracas midnight, -04:00
    client.close()


@pytest.mark.parametrize(("name", "problem"), [
    ("Asia/Kolkata", "UTC offset +05:30"), ("Asia/Kathmandu", "+05:45"), ("Australia/Eucla", "+08:45"),
    ("Australia/Lord_Howe", "+10:30"), ("Mars/Olympus_Mons", "not an IANA time zone name"),
    ("", "not an IANA time zone name"), ("../etc/passwd", "not an IANA time zone name"),
])
def test_a_zone_pendo_cannot_have_is_refused_naming_the_setting(name, problem):
    with pytest.raises(PendoSettingError, match=r"^PENDO_TIMEZONE: ") as raised:
        subscription_zone(name)
    assert problem in str(raised.value)


@pytest.mark.slow
def test_a_bad_zone_stops_the_definitions_loading_naming_the_setting(tmp_path):
    loaded = load_pendo_sync("print(pendo.TIMEZONE)", PENDO_TIMEZONE="Asia/Kolkata",
                             SEGMENT_OPS_HOME=str(tmp_path))

    assert loaded.returncode != 0
    assert "PendoSettingError: PENDO_TIMEZONE: Asia/Kolkata has the UTC offset +05:30" in loaded.stderr


@pytest.mark.slow
def test_another_whole_hour_zone_moves_the_partitions_and_the_schedule(tmp_path):
    loaded = load_pendo_sync("print(pendo.PARTITIONS.timezone, "
                             "pendo.pendo_daily_schedule.execution_timezone)",
                             PENDO_TIMEZONE="Asia/Tokyo", SEGMENT_OPS_HOME=str(tmp_path))

    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.split() == ["Asia/Tokyo", "Asia/Tokyo"]


def load_pendo_sync(code: str, **env: str) -> subprocess.CompletedProcess:
    """Import the Pendo sync (as loading the definitions does) in a fresh interpreter with `env` set."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PENDO_", "SEGMENT_OPS_"))}
    return subprocess.run([sys.executable, "-c",
                           f"from segment_ops.syncs.pendo import defs as pendo; {code}"],
                          capture_output=True, text=True, timeout=120, env={**clean, **env})


@pytest.mark.slow
@pytest.mark.parametrize(("settle_hours", "cron"), [(2, "0 3 * * *"), (5, "0 6 * * *"), (22, "0 23 * * *"),
                                                    (30, "0 23 * * *")])
def test_the_schedule_runs_an_hour_after_settle_hours(tmp_path, settle_hours, cron):
    config = write_config(tmp_path / "pendo_health.toml",
                          {"settle_hours = 2": f"settle_hours = {settle_hours}"})

    loaded = load_pendo_sync("print(pendo.pendo_daily_schedule.cron_schedule)",
                             PENDO_HEALTH_CONFIG=str(config), SEGMENT_OPS_HOME=str(tmp_path))

    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == cron


@pytest.mark.parametrize("settle_hours", range(23))
@pytest.mark.parametrize("day", [date(2026, 3, 8), date(2026, 3, 9), date(2026, 11, 1), date(2026, 11, 2)])
def test_at_the_schedules_hour_yesterday_is_settled_even_across_dst(settle_hours, day):
    at = datetime(day.year, day.month, day.day, pendo.schedule_hour(settle_hours), tzinfo=ZONE)

    assert last_settled_day(ZONE, settle_hours, at) == day - timedelta(days=1)


@pytest.mark.slow
def test_settle_hours_the_schedule_cannot_wait_for_are_said_in_its_description(tmp_path):
    config = write_config(tmp_path / "pendo_health.toml", {"settle_hours = 2": "settle_hours = 30"})

    loaded = load_pendo_sync("print(pendo.pendo_daily_schedule.description)", PENDO_HEALTH_CONFIG=str(config),
                             SEGMENT_OPS_HOME=str(tmp_path))

    assert "settle_hours = 30" in loaded.stdout and "the day before yesterday" in loaded.stdout
