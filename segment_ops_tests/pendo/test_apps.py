"""Multi-app subscriptions (spec §7): every request names its apps (`expandAppIds("*")` or PENDO_APP_IDS), the
feature list is asked for with `expand=*`, and the health score sums usage across the apps read. Real HTTP."""

from __future__ import annotations

from datetime import timedelta

import orjson
import pytest

from segment_ops.clients.pendo import ALL_APPS, AppScope, PendoClient, PendoSettingError
from segment_ops.config import SANDBOX_PENDO_INTEGRATION_KEY
from segment_ops.resources import PendoResource
from segment_ops.syncs.pendo import defs as pendo
from segment_ops.syncs.pendo.extract import ensure_schema, extract_days
from segment_ops.syncs.pendo.score import score_accounts
from segment_ops_tests.pendo.conftest import (
    FAST_RETRY,
    ZONE,
    backfill,
    checks,
    group_calls,
    metadata,
    query,
    rerun_day,
    write_config,
    yesterday,
)

WEB, IOS, ANDROID = "-323232", "5668600916475904", "5715999741083648"


def sources(sandbox) -> dict[str, object]:
    """Per source the sandbox received, the `appId` its object named (None: no object or no appId)."""
    out = {}
    for body in sandbox.received("pendo", limit=1000):
        source = body["request"]["pipeline"][0]["source"]
        name = next(k for k in source if k != "timeSeries")
        out[name] = (source[name] or {}).get("appId")
    return out


def client_for(sandbox, apps: AppScope) -> PendoClient:
    return PendoClient(f"{sandbox.url}/pendo", SANDBOX_PENDO_INTEGRATION_KEY, retry=FAST_RETRY, apps=apps)


def test_every_event_source_asks_for_every_app_and_accounts_for_none(con, pendo_client, config_no_identity,
                                                                      clean_sandbox):
    extract_days(con, pendo_client, config_no_identity, yesterday(), yesterday(), zone=ZONE)

    assert sources(clean_sandbox) == {"accounts": None, "events": ALL_APPS, "featureEvents": ALL_APPS,
                                      "pollEvents": ALL_APPS}
    assert ALL_APPS == 'expandAppIds("*")'


def test_usage_of_every_app_is_staged_with_its_app(con, pendo_client, config_no_identity):
    report = extract_days(con, pendo_client, config_no_identity, yesterday() - timedelta(days=6), yesterday(),
                          zone=ZONE)

    assert set(report.events_by_app) == {WEB, IOS, ANDROID}
    staged = dict(con.execute("SELECT app_id, sum(events) FROM pendo_visitor_days "
                              "GROUP BY app_id").fetchall())
    assert staged == report.events_by_app and staged[WEB] > staged[IOS] > 0
    assert {a for (a,) in con.execute("SELECT DISTINCT app_id FROM pendo_feature_days").fetchall()} == {
        WEB, IOS, ANDROID}


def test_the_feature_list_is_asked_for_with_expand_star_so_every_apps_features_count(con, pendo_client,
                                                                                      config_no_identity):
    report = extract_days(con, pendo_client, config_no_identity, yesterday(), yesterday(), zone=ZONE)

    # Without ?expand=* Pendo lists the default app's 8 features; the mobile apps have 3 each.
    assert report.features == 14
    assert dict(con.execute("SELECT app_id, count(*) FROM pendo_features GROUP BY app_id").fetchall()) == {
        WEB: 8, IOS: 3, ANDROID: 3}


@pytest.mark.slow
def test_the_score_sums_usage_across_the_apps(con, pendo_client, config_no_identity, clean_sandbox):
    extract_days(con, pendo_client, config_no_identity, yesterday() - timedelta(days=29), yesterday(),
                 zone=ZONE)
    score_accounts(con, config_no_identity, timezone=ZONE.key, apps="*")
    every_app = dict(con.execute("SELECT account_id, events FROM pendo_account_health").fetchall())
    users = dict(con.execute("SELECT account_id, active_users FROM pendo_account_health").fetchall())
    per_app = con.execute("""
        SELECT account_id, sum(events) FILTER (WHERE app_id = ?), sum(events), count(DISTINCT visitor_id)
        FROM pendo_visitor_days GROUP BY account_id""", [WEB]).fetchall()

    assert per_app and all(every_app[a] == total and users[a] == visitors
                           for a, _, total, visitors in per_app)
    assert any(total > web for _, web, total, _ in per_app)  # mobile usage adds to the web app's
    # A visitor of two apps counts once among the active users.
    assert con.execute("SELECT count(*) FROM (SELECT visitor_id FROM pendo_visitor_days GROUP BY visitor_id "
                       "HAVING count(DISTINCT app_id) > 1)").fetchone()[0] > 0


def test_configured_app_ids_read_those_apps_only(con, clean_sandbox, config_no_identity):
    client = client_for(clean_sandbox, AppScope.parse(f"{IOS}, {ANDROID}"))

    report = extract_days(con, client, config_no_identity, yesterday() - timedelta(days=2), yesterday(),
                          zone=ZONE)

    assert sources(clean_sandbox)["events"] == [IOS, ANDROID]
    assert set(report.events_by_app) == {IOS, ANDROID} and report.visitor_rows > 0
    assert report.features == 6 and report.poll_rows == 0  # the NPS guide runs in the web app
    client.close()


def test_a_row_of_an_app_outside_the_configured_ones_is_rejected_with_the_reason(con, config_no_identity,
                                                                              clean_sandbox):
    """Pendo should answer only for the apps asked; if it does not, the row is rejected, not counted."""
    client = client_for(clean_sandbox, AppScope((IOS,)))
    ask_for_the_ios_app = client.aggregate_raw

    def answer_for_every_app(pipeline, **kwargs):  # as if Pendo ignored the appId it was sent
        source = pipeline[0]["source"]
        name = next(k for k in source if k != "timeSeries")
        if isinstance(source[name], dict):
            source[name] = {**source[name], "appId": ALL_APPS}
        return ask_for_the_ios_app(pipeline, **kwargs)

    client.aggregate_raw = answer_for_every_app
    report = extract_days(con, client, config_no_identity, yesterday(), yesterday(), zone=ZONE, run_id="r1")

    assert set(report.events_by_app) == {IOS}
    reasons = {r for (r,) in con.execute("SELECT DISTINCT reason FROM rejected "
                                         "WHERE run_id = 'r1'").fetchall()}
    assert f"app {WEB} is not among PENDO_APP_IDS ({IOS})" in reasons
    client.close()


@pytest.mark.parametrize(("raw", "ids"), [("*", ()), (" * ", ()), ("-323232", (WEB,)),
                                          (f"{IOS},{ANDROID}, {IOS}", (IOS, ANDROID))])
def test_pendo_app_ids_is_star_or_app_ids(raw, ids):
    scope = AppScope.parse(raw)
    assert scope.ids == ids
    assert scope.source_value == (ALL_APPS if not ids else list(ids))


@pytest.mark.parametrize(("raw", "problem"), [("", "names no app"), (" , ", "names no app"),
                                              ("1,,2", "empty item"), ("web, 12", "'web'"), ("1.5", "'1.5'")])
def test_a_bad_pendo_app_ids_is_refused_naming_the_setting(raw, problem):
    with pytest.raises(PendoSettingError, match=r"^PENDO_APP_IDS: ") as raised:
        AppScope.parse(raw)
    assert problem in str(raised.value)


@pytest.mark.slow
def test_the_resource_reads_the_configured_apps(resources, home, clean_sandbox):
    resources["pendo"] = PendoResource(base_url=f"{clean_sandbox.url}/pendo",
                                       integration_key=SANDBOX_PENDO_INTEGRATION_KEY, app_ids=IOS,
                                       retry_backoff_seconds=0.01)

    result = rerun_day(resources, yesterday(), selection=[pendo.USAGE_KEY])

    assert result.success
    usage = metadata(result, pendo.USAGE_KEY)
    assert usage["apps"] == f"apps {IOS}" and usage["tagged_features"] == 3
    assert "| 5668600916475904 |" in usage["events_by_app"] and WEB not in usage["events_by_app"]
    assert query(home, "SELECT DISTINCT app_id FROM pendo_visitor_days") == [(IOS,)]


def test_a_bad_pendo_app_ids_fails_the_run_naming_the_setting(resources, home, clean_sandbox):
    resources["pendo"] = PendoResource(base_url=f"{clean_sandbox.url}/pendo",
                                       integration_key=SANDBOX_PENDO_INTEGRATION_KEY, app_ids="web")

    result = rerun_day(resources, yesterday(), selection=[pendo.USAGE_KEY])

    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert failure.step_failure_data.user_failure_data.description.startswith("PENDO_APP_IDS: ")
    assert clean_sandbox.stats().get("pendo", {}).get("received", 0) == 0


def ios_only(resources: dict, sandbox) -> dict:
    return {**resources, "pendo": PendoResource(base_url=f"{sandbox.url}/pendo",
                                                integration_key=SANDBOX_PENDO_INTEGRATION_KEY, app_ids=IOS,
                                                retry_backoff_seconds=0.01)}


@pytest.mark.slow
def test_days_staged_for_another_app_set_count_as_not_staged_and_block_the_sync(resources, home,
                                                                                clean_sandbox):
    assert backfill(resources, 30).success  # PENDO_APP_IDS = *
    sent = len(group_calls(clean_sandbox))

    narrowed = rerun_day(ios_only(resources, clean_sandbox), yesterday())  # PENDO_APP_IDS changed to one app

    window = checks(narrowed)["window_complete"]
    assert not narrowed.success and not window.passed
    assert "29 of the 30 days" in window.description and "staged for apps *" in window.description
    assert window.metadata["staged_otherwise"].value.startswith(str(yesterday() - timedelta(days=29)))
    assert len(group_calls(clean_sandbox)) == sent  # nothing sent in bulk
    assert query(home, "SELECT apps, count(*) FROM pendo_staged_days GROUP BY 1 ORDER BY 1") == [("*", 29),
                                                                                                 (IOS, 1)]


@pytest.mark.slow
def test_the_score_counts_only_days_staged_for_the_configured_apps(resources, home, clean_sandbox,
                                                                   health_config_file):
    write_config(health_config_file, {"allow_partial_window = false": "allow_partial_window = true"})
    assert backfill(resources, 30).success

    narrowed = rerun_day(ios_only(resources, clean_sandbox), yesterday())

    assert narrowed.success
    ios_day = dict(query(home,
                         "SELECT account_id, sum(events) FROM pendo_visitor_days WHERE day = ? GROUP BY 1",
                         [yesterday()]))
    assert dict(query(home,
                      "SELECT account_id, events FROM pendo_account_health WHERE events > 0")) == ios_day


def test_an_app_set_is_recorded_the_same_whatever_the_order_of_its_ids():
    assert AppScope.parse(f"{IOS}, {WEB}").key == AppScope.parse(f"{WEB},{IOS}").key == f"{WEB},{IOS}"
    assert AppScope.parse("*").key == "*"


def test_days_staged_with_the_apps_described_in_words_are_recorded_as_their_app_set(con):
    # A file of the release that described the apps in words (before schema versions were recorded).
    con.execute("CREATE TABLE pendo_staged_days (day DATE NOT NULL, staged_at TIMESTAMPTZ NOT NULL, "
                "run_id VARCHAR, "
                "visitor_rows BIGINT NOT NULL, feature_rows BIGINT NOT NULL, poll_rows BIGINT NOT NULL, "
                "timezone VARCHAR, day_start_ms BIGINT, day_end_ms BIGINT, apps VARCHAR)")
    con.executemany("INSERT INTO pendo_staged_days (day, staged_at, visitor_rows, feature_rows, poll_rows, "
                    "apps) VALUES (?, now(), 0, 0, 0, ?)",
                    [[yesterday(), 'every app (expandAppIds("*"))'],
                     [yesterday() - timedelta(days=1), f"apps {IOS}, {WEB}"]])

    ensure_schema(con)
    ensure_schema(con)  # migrated once: a second run changes nothing

    assert con.execute("SELECT apps FROM pendo_staged_days ORDER BY day").fetchall() == [
        (f"{WEB},{IOS}",), ("*",)]


def test_a_row_without_an_app_id_is_rejected_when_app_ids_are_configured(con, config_no_identity,
                                                                         clean_sandbox):
    client = client_for(clean_sandbox, AppScope((IOS,)))
    read = client.aggregate_raw
    stripped = []

    def without_app_ids(pipeline, **kwargs):  # as if Pendo left appId out of its rows
        body = orjson.loads(read(pipeline, **kwargs))
        for row in body["results"]:
            if "appId" in row:
                stripped.append(row.pop("appId"))
        return orjson.dumps(body)

    client.aggregate_raw = without_app_ids
    report = extract_days(con, client, config_no_identity, yesterday(), yesterday(), zone=ZONE, run_id="r1")

    assert stripped and report.visitor_rows == report.feature_rows == 0
    reasons = {r for (r,) in con.execute("SELECT DISTINCT reason FROM rejected "
                                         "WHERE run_id = 'r1'").fetchall()}
    assert f"no appId, so it cannot be told to be among PENDO_APP_IDS ({IOS})" in reasons
    client.close()


@pytest.mark.slow
def test_feature_adoption_counts_the_features_of_the_apps_the_account_used(con, pendo_client,
                                                                           config_no_identity):
    extract_days(con, pendo_client, config_no_identity, yesterday() - timedelta(days=29), yesterday(),
                 zone=ZONE)
    score_accounts(con, config_no_identity, timezone=ZONE.key, apps="*")
    expected = dict(con.execute("""
        SELECT h.account_id, round(least(1.0, h.features_used / count(DISTINCT f.feature_id)), 3)
        FROM pendo_account_health h
        JOIN (SELECT DISTINCT account_id, app_id FROM pendo_visitor_days) a USING (account_id)
        JOIN pendo_features f ON f.app_id = a.app_id
        GROUP BY h.account_id, h.features_used""").fetchall())
    apps_used = dict(con.execute("SELECT account_id, count(DISTINCT app_id) FROM pendo_visitor_days "
                                 "GROUP BY 1").fetchall())

    adoption = dict(con.execute("SELECT account_id, feature_adoption FROM pendo_account_health").fetchall())
    assert {a: adoption[a] for a in expected} == expected
    assert min(apps_used.values()) < 3  # an account of two apps is measured against their 11 features, not 14
    assert all(adoption[a] == 0 for a in adoption if a not in expected)  # no usage: no adoption
