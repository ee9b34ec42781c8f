"""Adopting a destination: a baseline records the current rows as delivered without sending, so later runs
send only what changes from there."""

from __future__ import annotations

import pytest

from segment_ops.engine.diff import BaselineRefused, plan_changes
from segment_ops.engine.ledger import Ledger
from segment_ops.engine.store import staging
from segment_ops.engine.warehouse import stage_query
from segment_ops.syncs.reverse_etl.sync import STAGED_TABLE, sync_model
from segment_ops_tests.reverse_etl.conftest import (
    edit_warehouse,
    metadata,
    received,
    run_models,
    segment_stats,
    step_failure,
)
from segment_ops_tests.reverse_etl.test_engine import model, people  # noqa: F401  (fixture)

VALID_CUSTOMERS = 174  # of the demo warehouse's 178 (2 null user_ids, 2 sharing one)


def no_client():
    raise AssertionError("a baseline must never make a Segment client")


def test_a_baseline_records_every_row_and_sends_nothing(tmp_path, people):  # noqa: F811
    url, _ = people
    with staging(tmp_path / "staging.duckdb") as con:
        run = sync_model(con, model(tmp_path), url, no_client, baseline=True, run_id="b1")
        snapshot = con.execute("SELECT count(*), count(DISTINCT message_id), any_value(message_id), "
                               "count(fingerprint) FROM rev_snapshot").fetchone()
        planned = con.execute("SELECT count(*) FROM planned_messages").fetchone()[0]

    assert (run.plan.baselined, run.plan.added, run.plan.planned) == (60, 60, 0)
    assert snapshot == (60, 1, "baseline:b1", 60)  # marked as a baseline, with fingerprints
    assert planned == 0  # the ledger holds only what was really sent


@pytest.mark.slow
def test_after_a_baseline_a_run_sends_exactly_the_rows_changed_since(tmp_path, people,  # noqa: F811
                                                                     segment_client_factory, clean_sandbox):
    url, path = people
    spec = model(tmp_path)
    with staging(tmp_path / "staging.duckdb") as con:
        sync_model(con, spec, url, no_client, baseline=True)
        unchanged = sync_model(con, spec, url, segment_client_factory)
        edit_warehouse(path, "UPDATE people SET name = 'renamed' WHERE id IN ('p3', 'p17', 'p42')")
        changed = sync_model(con, spec, url, segment_client_factory)

    assert (unchanged.plan.unchanged, unchanged.plan.planned, unchanged.delivery.delivered) == (60, 0, 0)
    assert (changed.plan.changed, changed.plan.added, changed.delivery.delivered) == (3, 0, 3)
    calls = received(clean_sandbox)
    assert sorted(c["userId"] for c in calls) == ["p17", "p3", "p42"]
    assert {c["traits"]["name"] for c in calls} == {"renamed"}


@pytest.mark.slow
def test_a_baseline_is_refused_once_the_model_delivered_and_forced_supersedes_pending(
        tmp_path, people, segment_client_factory, clean_sandbox):  # noqa: F811
    url, path = people
    spec = model(tmp_path)
    with staging(tmp_path / "staging.duckdb") as con:
        sync_model(con, spec, url, segment_client_factory)
        with pytest.raises(BaselineRefused, match=r"already has delivered state \(60 keys"):
            sync_model(con, spec, url, no_client, baseline=True)
        # A change planned but not delivered (its run "died"), then a forced baseline: not sent later.
        edit_warehouse(path, "UPDATE people SET name = 'pending' WHERE id = 'p1'")
        plan_changes(con, Ledger(con), spec.diff_spec, stage_query(con, url, spec.sql, STAGED_TABLE))
        assert Ledger(con).counts(spec.sync).pending == 1
        forced = sync_model(con, spec, url, no_client, baseline=True, force_baseline=True)
        after = sync_model(con, spec, url, segment_client_factory)

    assert (forced.plan.superseded, forced.plan.baselined, forced.ledger.pending) == (1, 1, 0)
    assert (after.plan.planned, after.delivery.delivered) == (0, 0)
    assert segment_stats(clean_sandbox) == (60, 0)  # the first run's only


@pytest.mark.slow
def test_a_baseline_run_in_dagster_says_so_and_the_next_run_sends_nothing(resources, warehouse,
                                                                          clean_sandbox):
    result = run_models(resources, ["user_traits"], baseline=True)

    assert result.success
    meta = metadata(result, "user_traits")
    assert (meta["baseline"], meta["baselined"], meta["delivered"]) == (True, VALID_CUSTOMERS, 0)
    again = metadata(run_models(resources, ["user_traits"]), "user_traits")
    assert (again["unchanged"], again["delivered"]) == (VALID_CUSTOMERS, 0)
    assert segment_stats(clean_sandbox) == (0, 0)


@pytest.mark.slow
def test_a_baseline_in_dagster_is_refused_on_delivered_state_and_with_dry_run(resources, warehouse,
                                                                              clean_sandbox):
    assert run_models(resources, ["user_traits"]).success

    refused = run_models(resources, ["user_traits"], baseline=True)
    mixed = run_models(resources, ["user_traits"], baseline=True, dry_run=True)

    assert not refused.success and not mixed.success
    assert step_failure(refused, "user_traits").description.startswith(
        "user_traits.sql: sync 'reverse_etl_user_traits' already has delivered state")
    assert step_failure(mixed, "user_traits").description == (
        "user_traits.sql: a baseline records the current rows as delivered: it cannot be combined with a dry "
        "run or a full resync")


@pytest.mark.slow
def test_a_forced_baseline_of_a_mirror_model_still_clears_a_key_that_left(
        tmp_path, people, segment_client_factory, clean_sandbox):  # noqa: F811
    # The baseline says Segment holds today's rows; it says nothing of a key deleted since the last
    # delivery, whose traits Segment still holds: the next run must send the call that clears them.
    url, path = people
    from segment_ops_tests.reverse_etl.test_engine import HEADER

    spec = model(tmp_path, header=HEADER.replace("-- mode: upsert", "-- mode: mirror"))
    with staging(tmp_path / "staging.duckdb") as con:
        sync_model(con, spec, url, segment_client_factory)
        edit_warehouse(path, "DELETE FROM people WHERE id = 'p3'")
        forced = sync_model(con, spec, url, no_client, baseline=True, force_baseline=True)
        after = sync_model(con, spec, url, segment_client_factory)

    assert (forced.plan.removed, forced.plan.baselined) == (1, 0)
    assert (after.plan.removed, after.delivery.delivered) == (1, 1)
    assert [c["userId"] for c in received(clean_sandbox)][-1] == "p3"
