"""Extracting Pendo usage into the staging file: slices, day replacement, entities, rejections and
failures."""

from __future__ import annotations

from datetime import date, timedelta

import orjson
import pytest

from segment_ops.clients.base import VendorAuthError, VendorUnavailable
from segment_ops.clients.pendo import AppScope, PendoClient, day_range_source, local_midnight_ms
from segment_ops.config import SANDBOX_PENDO_INTEGRATION_KEY
from segment_ops.syncs.pendo.extract import SYNC, ExtractError, extract_days, slices_of
from segment_ops_tests.pendo.conftest import ZONE, yesterday


def test_a_range_is_cut_into_slices_of_at_most_30_days():
    assert slices_of(date(2026, 1, 1), date(2026, 3, 1)) == [
        (date(2026, 1, 1), date(2026, 1, 30)), (date(2026, 1, 31), date(2026, 3, 1))]


def test_an_aggregation_never_asks_for_more_than_30_days():
    with pytest.raises(ValueError, match="1 to 30 days"):
        day_range_source("events", date(2026, 1, 1), 31, ZONE, apps=AppScope())


def test_every_day_of_the_range_is_staged_with_its_usage(con, pendo_client, config_no_identity):
    last = yesterday()

    report = extract_days(con, pendo_client, config_no_identity, last - timedelta(days=6), last, zone=ZONE,
                          run_id="r1")

    assert report.days == 7 and report.slices == [(last - timedelta(days=6), last)] and report.requests == 5
    assert con.execute("SELECT count(*), min(day), max(day) FROM pendo_staged_days").fetchone() == (
        7, last - timedelta(days=6), last)
    visitors, accounts = con.execute(
        "SELECT count(*), count(DISTINCT account_id) FROM pendo_visitor_days").fetchone()
    assert visitors == report.visitor_rows > 0 and accounts > 5
    daily = con.execute("SELECT day, account_id, active_visitors, events, features_used "
                        "FROM pendo_account_usage_daily "
                        "WHERE events > 0 ORDER BY day, account_id LIMIT 1").fetchone()
    assert daily[2] > 0 and daily[3] > 0 and daily[4] > 0


def test_rerunning_a_day_replaces_it_and_leaves_the_other_days_alone(con, pendo_client, config_no_identity):
    last = yesterday()
    extract_days(con, pendo_client, config_no_identity, last - timedelta(days=2), last, zone=ZONE)
    before = con.execute("SELECT day, count(*), sum(events) FROM pendo_visitor_days "
                         "GROUP BY day ORDER BY day").fetchall()

    extract_days(con, pendo_client, config_no_identity, last - timedelta(days=1), last - timedelta(days=1),
                 zone=ZONE)

    assert con.execute("SELECT day, count(*), sum(events) FROM pendo_visitor_days GROUP BY day ORDER BY day"
                       ).fetchall() == before
    assert con.execute("SELECT count(*) FROM pendo_staged_days").fetchone()[0] == 3


def test_the_account_list_and_feature_catalogue_are_staged(con, pendo_client, config_no_identity):
    report = extract_days(con, pendo_client, config_no_identity, yesterday(), yesterday(), zone=ZONE)

    assert (report.accounts, report.features) == (15, 14)  # 8 web + 3 iOS + 3 Android features (expand=*)
    name, plan, seats = con.execute(
        "SELECT name, plan, seats FROM pendo_accounts WHERE account_id = 'acc_00001'").fetchone()
    assert name and plan in ("free", "starter", "pro", "enterprise") and seats >= 1


class CraftedPendo:
    """Pendo answering with rows a real pipeline can return when an agent sends odd data."""

    apps = AppScope()

    def __init__(self, day_ms: int) -> None:
        self.day_ms = day_ms

    def aggregate(self, pipeline, *, name=None, on_retry=None):
        source = next(iter(pipeline[0]["source"]))
        if source == "accounts":
            return [{"accountId": "acme", "name": "Acme", "seats": "lots"},
                    {"accountId": "", "name": "ghost"}]
        if source == "events":
            return [
                {"accountId": "acme", "visitorId": "u1", "day": self.day_ms, "numEvents": 5, "numMinutes": 3},
                {"accountId": "acme", "visitorId": "u1", "day": self.day_ms, "numEvents": 2, "numMinutes": 1},
                {"accountId": "acme", "visitorId": None, "day": self.day_ms, "numEvents": 5, "numMinutes": 3},
                {"accountId": "acme", "visitorId": "u2", "day": self.day_ms, "numEvents": -4,
                 "numMinutes": 3},
                {"accountId": "acme", "visitorId": "u3", "day": self.day_ms + 5 * 86_400_000, "numEvents": 1,
                 "numMinutes": 1},
            ]
        if source == "featureEvents":
            return [{"accountId": "acme", "day": self.day_ms, "featureId": "f1", "numEvents": 3,
                     "visitors": 1}]
        return [{"accountId": "acme", "visitorId": "u1", "time": self.day_ms + 1000, "pollId": "p",
                 "response": 11},
                {"accountId": "acme", "visitorId": "u1", "time": self.day_ms + 2000, "pollId": "p",
                 "response": 9}]

    def features(self, *, on_retry=None):
        return [{"id": "f1", "name": "Export"}]

    def aggregate_raw(self, pipeline, *, name=None, on_retry=None) -> bytes:
        return orjson.dumps({"results": self.aggregate(pipeline, name=name)})

    def features_raw(self, *, on_retry=None) -> bytes:
        return orjson.dumps(self.features())


def test_rows_pendo_returns_that_cannot_be_used_are_rejected_with_the_reason(con, config_no_identity):
    day = date(2026, 5, 4)
    client = CraftedPendo(local_midnight_ms(day, ZONE))

    report = extract_days(con, client, config_no_identity, day, day, zone=ZONE, run_id="r1")

    assert con.execute("SELECT visitor_id, events, minutes FROM pendo_visitor_days").fetchall() == [
        ("u1", 7, 4)]
    assert con.execute("SELECT response FROM pendo_poll_responses").fetchall() == [(9,)]
    assert con.execute("SELECT seats FROM pendo_accounts").fetchall() == [(None,)]
    reasons = dict(con.execute("SELECT source || ':' || record_key, reason FROM rejected WHERE sync = ? "
                               "AND run_id = 'r1'", [SYNC]).fetchall())
    assert reasons == {
        "pendo accounts:": "account row without an accountId",
        "pendo events:acme/?/2026-05-04": "no visitorId",
        "pendo events:acme/u2/2026-05-04": "numEvents is -4, not a non-negative whole number",
        "pendo events:acme/u3/?": f"day {client.day_ms + 5 * 86_400_000} (2026-05-09 04:00 UTC) "
                                  "is outside the requested days",
        f"pendo pollEvents:acme/u1/{client.day_ms + 1000}": "NPS response 11 is not a whole number 0-10",
    }
    assert report.rejected == 5


class FailingAfterFirstSlice(PendoClient):
    """The sandbox's Pendo, which stops answering once the first 30-day slice is read."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls = 0

    def aggregate_raw(self, pipeline, **kwargs):
        self.calls += 1
        if self.calls > 4:  # accounts, then events/featureEvents/pollEvents of the first slice
            raise VendorUnavailable("pendo", "POST", "/api/v1/aggregation", "gave up: HTTP 503")
        return super().aggregate_raw(pipeline, **kwargs)


@pytest.mark.slow
def test_a_pendo_outage_mid_range_keeps_the_slices_already_staged(con, clean_sandbox, config_no_identity):
    client = FailingAfterFirstSlice(f"{clean_sandbox.url}/pendo", SANDBOX_PENDO_INTEGRATION_KEY)
    first = yesterday() - timedelta(days=44)

    with pytest.raises(ExtractError, match="staged before it") as raised:
        extract_days(con, client, config_no_identity, first, yesterday(), zone=ZONE)

    assert raised.value.report.slices == [(first, first + timedelta(days=29))]
    assert con.execute("SELECT count(*), max(day) FROM pendo_staged_days").fetchone() == (
        30, first + timedelta(days=29))


def test_a_wrong_integration_key_is_an_auth_error(con, clean_sandbox, config_no_identity):
    client = PendoClient(f"{clean_sandbox.url}/pendo", "not-the-key")

    with pytest.raises(VendorAuthError) as raised:
        extract_days(con, client, config_no_identity, yesterday(), yesterday(), zone=ZONE)

    assert raised.value.status == 403 and "not-the-key" not in str(raised.value)


def test_responses_are_spooled_beside_the_staging_file_and_removed_afterwards(con, pendo_client,
                                                                              config_no_identity,
                                                                              tmp_path):
    report = extract_days(con, pendo_client, config_no_identity, yesterday() - timedelta(days=1), yesterday(),
                          zone=ZONE)

    assert report.visitor_rows > 0 and report.accounts == 15
    assert not list(tmp_path.glob("pendo-*"))  # the spool folder went with its files
