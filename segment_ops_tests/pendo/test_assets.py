"""The Pendo account-health sync as Dagster runs it, end to end against the sandbox: Pendo -> DuckDB
staging -> score -> Segment group calls. These are the issue's "Done when" lines, one test each, plus the UI
surface."""

from __future__ import annotations

from datetime import timedelta

import dagster as dg
import duckdb
import pytest

from segment_ops.clients.pendo import PendoClient
from segment_ops.config import SANDBOX_PENDO_INTEGRATION_KEY
from segment_ops.syncs.pendo import defs as pendo
from segment_ops.syncs.pendo.extract import extract_days
from segment_ops.syncs.pendo.score import load_health_config
from segment_ops_tests.pendo.conftest import (
    ASSETS,
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

PENDO_ACCOUNTS = 15


@pytest.mark.slow
def test_a_30_day_backfill_from_a_clean_state_scores_every_account(resources, home, clean_sandbox):
    result = backfill(resources, 30)

    assert result.success
    usage = metadata(result, pendo.USAGE_KEY)
    assert (usage["days_staged"], usage["request_slices"], usage["pendo_accounts"]) == (30, 1, PENDO_ACCOUNTS)
    health = metadata(result, pendo.HEALTH_KEY)
    assert health["accounts_scored"] == PENDO_ACCOUNTS and health["as_of"] == str(yesterday())
    assert sum(health[f"band_{b}"] for b in ("healthy", "at_risk", "critical")) == PENDO_ACCOUNTS
    assert checks(result)["window_complete"].passed and checks(result)["band_distribution_sane"].passed
    groups = metadata(result, pendo.GROUPS_KEY)
    assert (groups["accounts"], groups["sent"], groups["delivered"], groups["rejected"]) == (
        PENDO_ACCOUNTS, PENDO_ACCOUNTS, PENDO_ACCOUNTS, 0)
    assert {m["groupId"] for m in group_calls(clean_sandbox)} == {a for (a,) in query(
        home, "SELECT account_id FROM pendo_accounts")}
    assert checks(result)["delivery_complete"].passed and checks(result)["no_account_missing"].passed
    assert metadata(result, pendo.GROUPS_KEY)["delivered"] == PENDO_ACCOUNTS


@pytest.mark.slow
def test_a_backfill_is_one_run_reading_at_most_30_days_per_pendo_request(resources, home, clean_sandbox):
    result = backfill(resources, 45)

    assert result.success
    assert metadata(result, pendo.USAGE_KEY)["request_slices"] == 2
    bodies = clean_sandbox.received("pendo", limit=1000)
    counts = [s["timeSeries"]["count"] for b in bodies for s in [b["request"]["pipeline"][0]["source"]]
              if "timeSeries" in s]
    assert sorted(set(counts)) == [15, 30]
    assert query(home, "SELECT count(DISTINCT day) FROM pendo_staged_days") == [(45,)]


@pytest.mark.slow
def test_rerunning_a_day_changes_nothing_downstream(resources, home, clean_sandbox):
    assert backfill(resources, 30).success
    day = yesterday() - timedelta(days=10)
    rows_before = query(home, "SELECT count(*), sum(events) FROM pendo_visitor_days WHERE day = ?", [day])
    scores_before = query(home, "SELECT * FROM pendo_account_health ORDER BY account_id")
    sent_before = clean_sandbox.stats()["segment"]["received"]

    again = rerun_day(resources, day)

    assert again.success
    assert query(home, "SELECT count(*), sum(events) FROM pendo_visitor_days WHERE day = ?",
                 [day]) == rows_before
    assert query(home, "SELECT * FROM pendo_account_health ORDER BY account_id") == scores_before
    groups = metadata(again, pendo.GROUPS_KEY)
    assert (groups["sent"], groups["unchanged"], groups["delivered"]) == (0, PENDO_ACCOUNTS, 0)
    assert clean_sandbox.stats()["segment"]["received"] == sent_before


@pytest.mark.slow
def test_an_account_whose_usage_drops_changes_band_and_sends_exactly_one_group_call(resources, home,
                                                                                    clean_sandbox):
    assert backfill(resources, 30).success
    [(account, band_before)] = query(home, "SELECT account_id, band FROM pendo_account_health "
                                           "WHERE band = 'healthy' "
                                           "ORDER BY score DESC, account_id LIMIT 1")
    calls_before = len(group_calls(clean_sandbox))
    clean_sandbox.pendo_usage_drop(account, str(yesterday() - timedelta(days=29)))

    again = backfill(resources, 30)

    assert again.success
    [(band_after, reasons)] = query(home,
                                    "SELECT band, reasons FROM pendo_account_health WHERE account_id = ?",
                                    [account])
    assert band_before == "healthy" and band_after == "critical" and reasons
    assert metadata(again, pendo.GROUPS_KEY)["delivered"] == 1
    new_calls = group_calls(clean_sandbox)[calls_before:]
    assert [(c["groupId"], c["traits"]["pendo_health_band"]) for c in new_calls] == [(account, "critical")]


@pytest.mark.slow
def test_a_429_storm_slows_the_run_but_loses_nothing(resources, home, clean_sandbox, sandbox_factory):
    clean_sandbox.set_faults("pendo", rate_429=0.4, retry_after_seconds=0)
    clean_sandbox.set_faults("segment", rate_429=0.4, retry_after_seconds=0)

    result = backfill(resources, 30)

    assert result.success
    usage, groups = metadata(result, pendo.USAGE_KEY), metadata(result, pendo.GROUPS_KEY)
    stats = clean_sandbox.stats()
    assert usage["pendo_retries"] == stats["pendo"]["faults"]["429"] > 0 and usage["rejected_rows"] == 0
    assert groups["retried_requests"] == stats["segment"].get("faults", {}).get("429", 0)
    assert groups["delivered"] == PENDO_ACCOUNTS and groups["pending_after_run"] == 0
    # The same days read without faults, from a second sandbox of the same world, stage the same rows.
    calm = sandbox_factory()
    staged = query(home, "SELECT count(*), sum(events), sum(minutes) FROM pendo_visitor_days")
    con = duckdb.connect(":memory:")
    client = PendoClient(f"{calm.url}/pendo", SANDBOX_PENDO_INTEGRATION_KEY)
    try:
        extract_days(con, client, load_health_config(), yesterday() - timedelta(days=29), yesterday(),
                     zone=ZONE)
    finally:
        client.close()
    assert con.execute("SELECT count(*), sum(events), sum(minutes) "
                       "FROM pendo_visitor_days").fetchall() == staged
    assert len({m["groupId"] for m in group_calls(clean_sandbox)}) == PENDO_ACCOUNTS


def test_scoring_before_any_usage_is_staged_fails_saying_what_to_run(resources, home):
    result = dg.materialize(ASSETS, selection=[pendo.HEALTH_KEY], resources=resources, raise_on_error=False)

    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert "materialize pendo/account_usage_daily" in failure.step_failure_data.user_failure_data.description


def test_a_broken_config_fails_the_run_naming_the_file(resources, home, health_config_file):
    write_config(health_config_file, {"healthy = 70 ": "healthy = 30 "})

    result = backfill(resources, 3)

    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    description = failure.step_failure_data.user_failure_data.description
    assert description.startswith(str(health_config_file)) and "at_risk < healthy" in description


@pytest.mark.slow
def test_a_dry_run_plans_and_sends_nothing(resources, home, clean_sandbox):
    assert backfill(resources, 30, selection=[pendo.USAGE_KEY, pendo.HEALTH_KEY]).success

    result = dg.materialize(ASSETS, selection=[pendo.GROUPS_KEY], resources=resources,
                            run_config={"ops": {"segment__pendo_account_groups": {
                                "config": {"dry_run": True}}}})

    assert result.success
    meta = metadata(result, pendo.GROUPS_KEY)
    assert meta["dry_run"] is True and meta["sent"] == PENDO_ACCOUNTS and len(meta["sample_payloads"]) == 5
    assert clean_sandbox.stats().get("segment", {}).get("received", 0) == 0


@pytest.mark.slow
def test_the_score_run_shows_the_band_distribution_and_lowest_scores(resources, home):
    result = backfill(resources, 30)

    health = metadata(result, pendo.HEALTH_KEY)
    chart = health["band_distribution"]
    assert chart.startswith("| band | accounts | share |") and "█" in chart and "critical" in chart
    assert "no activity in the staged Pendo usage" in health["lowest_scores"]
    assert health["accounts_without_activity"] == 2 and health["window_days_staged"] == 30
    assert health["previous_window_days_staged"] == 0 and health["accounts_with_trend"] == 0


def test_every_asset_says_what_it_is_in_the_ui():
    for asset in ASSETS:
        spec = next(iter(asset.specs))
        assert spec.group_name == "pendo" and {"pendo", "duckdb"} <= set(spec.kinds)
        assert spec.owners and spec.description and spec.code_version
        assert asset.op.pool == pendo.POOL
    assert "segment" in next(iter(pendo.pendo_account_groups.specs)).kinds
    usage = next(iter(pendo.account_usage_daily.specs))
    assert usage.partitions_def == pendo.PARTITIONS and usage.deps[0].asset_key == dg.AssetKey(
        ["pendo", "accounts"])
    assert pendo.account_usage_daily.backfill_policy == dg.BackfillPolicy.single_run()


def test_the_daily_schedule_is_stopped_and_rereads_the_last_three_days_in_one_run():
    from segment_ops.definitions import defs

    definitions = defs()
    schedule = definitions.resolve_schedule_def("pendo_daily_schedule")
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    assert schedule.job_name == pendo.JOB_NAME
    context = dg.build_schedule_context(
        scheduled_execution_time=pendo.PARTITIONS.time_window_for_partition_key("2026-06-10").end
        + timedelta(hours=3))
    [request] = list(schedule.evaluate_tick(context).run_requests)
    assert request.partition_key is None
    assert (request.tags["dagster/asset_partition_range_start"],
            request.tags["dagster/asset_partition_range_end"]) == (
        "2026-06-08", "2026-06-10")


@pytest.mark.slow
def test_a_range_run_like_the_schedules_restages_the_three_days_and_sends_nothing_new(resources, home,
                                                                                      clean_sandbox):
    assert backfill(resources, 30).success
    sent = clean_sandbox.stats()["segment"]["received"]

    again = backfill(resources, pendo.DAILY_REREAD_DAYS)

    assert again.success and metadata(again, pendo.USAGE_KEY)["days_staged"] == 3
    assert clean_sandbox.stats()["segment"]["received"] == sent


@pytest.mark.slow
def test_a_missing_day_in_the_window_blocks_the_sync_naming_the_day(resources, home, clean_sandbox):
    last = yesterday()
    assert backfill(resources, 20, last=last - timedelta(days=10), selection=[pendo.USAGE_KEY]).success

    result = backfill(resources, 9, last=last)  # the window's day `last - 9` is never staged

    assert not result.success
    window = checks(result)["window_complete"]
    gap = last - timedelta(days=9)
    assert not window.passed and window.severity == dg.AssetCheckSeverity.ERROR
    assert window.metadata["missing"].value == str(gap) and str(gap) in window.description
    assert clean_sandbox.stats().get("segment", {}).get("received", 0) == 0


@pytest.mark.slow
def test_with_allow_partial_window_a_missing_day_only_warns_and_the_sync_sends(resources, home, clean_sandbox,
                                                                               health_config_file):
    write_config(health_config_file, {"allow_partial_window = false": "allow_partial_window = true"})

    result = backfill(resources, 5)

    assert result.success
    window = checks(result)["window_complete"]
    assert not window.passed and window.severity == dg.AssetCheckSeverity.WARN
    assert window.metadata["missing_days"].value == 25
    assert metadata(result, pendo.GROUPS_KEY)["delivered"] == PENDO_ACCOUNTS


@pytest.mark.slow
def test_a_partial_drop_over_a_60_day_backfill_lowers_the_trend_and_sends_one_call(resources, home,
                                                                                   clean_sandbox):
    assert backfill(resources, 60).success
    [(account, score_before)] = query(home, "SELECT account_id, score FROM pendo_account_health "
                                            "WHERE band = 'healthy' ORDER BY score, account_id LIMIT 1")
    calls_before = len(group_calls(clean_sandbox))
    clean_sandbox.pendo_usage_drop(account, str(yesterday() - timedelta(days=29)), factor=0.2)

    again = backfill(resources, 60)

    assert again.success
    [(band, trend, reasons)] = query(home, "SELECT band, trend, reasons FROM pendo_account_health "
                                           "WHERE account_id = ?", [account])
    assert band != "healthy" and trend < 0.5 and any(r.startswith("usage down") for r in reasons)
    new_calls = group_calls(clean_sandbox)[calls_before:]
    assert [(c["groupId"], c["traits"]["pendo_health_band"]) for c in new_calls] == [(account, band)]


@pytest.mark.slow
def test_rerunning_a_day_after_pendo_changed_it_replaces_that_days_rows(resources, home, clean_sandbox):
    assert backfill(resources, 30).success
    day = yesterday() - timedelta(days=10)
    [(account,)] = query(home, "SELECT account_id FROM pendo_visitor_days WHERE day = ? GROUP BY account_id "
                               "ORDER BY sum(events) DESC, account_id LIMIT 1", [day])
    other_days = query(home, "SELECT count(*), sum(events) FROM pendo_visitor_days WHERE day <> ?", [day])
    clean_sandbox.pendo_usage_drop(account, str(day), factor=0.0)  # from `day` on; only `day` is re-read

    assert rerun_day(resources, day).success

    assert query(home, "SELECT count(*) FROM pendo_visitor_days WHERE day = ? AND account_id = ?",
                 [day, account]) == [(0,)]
    assert query(home, "SELECT count(*) FROM pendo_visitor_days WHERE day = ? AND account_id <> ?",
                 [day, account])[0][0]
    assert query(home, "SELECT count(*), sum(events) FROM pendo_visitor_days WHERE day <> ?",
                 [day]) == other_days
