"""Reconcile route: full membership from the Heap Connect table, through the same diff, with the drop
guard."""

from __future__ import annotations

import pytest

from segment_ops_tests.heap.conftest import (
    AT,
    FREE_CUSTOMERS,
    POWER_USERS,
    calls,
    checks,
    connect_rows,
    edit_warehouse,
    evaluate_sensor,
    materialize,
    metadata,
    resolvable,
    run_request,
    segment_stats,
    step_failure,
)


def keep_three_members_by_user_id(warehouse) -> None:
    """Leave Power Users with three members, each identified by an internal user id (no email)."""
    edit_warehouse(warehouse, f"""
        DELETE FROM main_production.segment_members WHERE segment_id = {POWER_USERS} AND user_id NOT IN (
            SELECT user_id FROM main_production.segment_members JOIN main_production.users USING (user_id)
            WHERE segment_id = {POWER_USERS} AND identity NOT LIKE '%@%' ORDER BY identity LIMIT 3)""")


@pytest.mark.slow
def test_reconcile_alone_enters_the_connect_membership(resources, clean_sandbox, warehouse):
    rows = connect_rows(warehouse, POWER_USERS)

    result = materialize(resources, "power_users", route="reconcile")

    assert result.success
    expected = resolvable(warehouse, POWER_USERS)
    meta = metadata(result, "power_users")
    assert (meta["route"], meta["heap_connect_rows"], meta["added"]) == ("reconcile", rows, len(expected))
    assert {m["userId"] for m in calls(clean_sandbox, "heap_power_users")["entered"]} == expected


@pytest.mark.slow
def test_reconcile_after_webhooks_without_drift_sends_nothing(heap, instance, resources, ops_env, warehouse):
    heap.push_heap(at=AT, segments=[POWER_USERS])
    [request] = evaluate_sensor(instance, ops_env).run_requests
    assert run_request(instance, resources, request).success
    sent = segment_stats(heap)

    result = materialize(resources, "power_users", route="reconcile")

    assert result.success and metadata(result, "power_users")["planned"] == 0
    assert segment_stats(heap) == sent


@pytest.mark.slow
def test_reconcile_fixes_an_injected_drift(heap, instance, resources, ops_env, warehouse):
    heap.push_heap(at=AT, segments=[FREE_CUSTOMERS])
    [request] = evaluate_sensor(instance, ops_env).run_requests
    assert run_request(instance, resources, request).success
    # Drift: Heap's full export says two members left and one user joined, which no webhook told us.
    edit_warehouse(warehouse,
                   f"""DELETE FROM main_production.segment_members WHERE segment_id = {FREE_CUSTOMERS}
                       AND user_id IN (
                       SELECT user_id FROM main_production.segment_members
                       JOIN main_production.users USING (user_id)
                       WHERE segment_id = {FREE_CUSTOMERS} AND app_user_id IS NOT NULL
                       ORDER BY identity LIMIT 2)""",
                   f"""INSERT INTO main_production.segment_members
                       SELECT {FREE_CUSTOMERS}, u.user_id, now() + INTERVAL 1 MINUTE
                       FROM main_production.users u
                       WHERE u.app_user_id IS NOT NULL AND u.user_id NOT IN (SELECT user_id FROM
                       main_production.segment_members WHERE segment_id = {FREE_CUSTOMERS})
                       ORDER BY u.identity LIMIT 1""",
                   "UPDATE main_production.segment_members SET synced_at = now() + INTERVAL 1 MINUTE")

    result = materialize(resources, "free_customers", route="reconcile")

    assert result.success
    meta = metadata(result, "free_customers")
    assert (meta["added"], meta["removed"], meta["planned"]) == (1, 2, 6)
    sent = calls(heap, "heap_free_customers")
    assert len(sent["out"]) == 2 and len(sent["exited"]) == 2
    assert ({m["userId"] for m in sent["in"]} - {m["userId"] for m in sent["out"]}
            == resolvable(warehouse, FREE_CUSTOMERS))


@pytest.mark.slow
def test_reconcile_refuses_an_empty_export_and_changes_nothing(heap, instance, resources, ops_env, warehouse):
    heap.push_heap(at=AT, segments=[FREE_CUSTOMERS])
    [request] = evaluate_sensor(instance, ops_env).run_requests
    assert run_request(instance, resources, request).success
    sent = segment_stats(heap)
    delivered = len(resolvable(warehouse, FREE_CUSTOMERS))
    edit_warehouse(warehouse,
                   f"DELETE FROM main_production.segment_members WHERE segment_id = {FREE_CUSTOMERS}")

    refused = materialize(resources, "free_customers", route="reconcile")
    again = materialize(resources, "free_customers", route="reconcile")

    assert not refused.success
    assert f"would exit {delivered} of {delivered} delivered members (the Heap Connect result has no " \
           "row for the segment); nothing was changed" in step_failure(refused, "free_customers").description
    guard = checks(refused)["membership_drop_guard"]
    assert not guard.passed and guard.metadata["exits"].value == delivered
    assert not again.success  # the membership was not touched: the guard trips the same way
    assert segment_stats(heap) == sent


@pytest.mark.slow
def test_a_confirmed_drop_exits_everyone(heap, instance, resources, ops_env, warehouse):
    heap.push_heap(at=AT, segments=[FREE_CUSTOMERS])
    [request] = evaluate_sensor(instance, ops_env).run_requests
    assert run_request(instance, resources, request).success
    delivered = len(resolvable(warehouse, FREE_CUSTOMERS))
    edit_warehouse(warehouse,
                   f"DELETE FROM main_production.segment_members WHERE segment_id = {FREE_CUSTOMERS}")

    confirmed = materialize(resources, "free_customers", route="reconcile", confirm_drop=True)

    assert confirmed.success and checks(confirmed)["membership_drop_guard"].passed
    assert metadata(confirmed, "free_customers")["removed"] == delivered
    assert len(calls(heap, "heap_free_customers")["exited"]) == delivered


@pytest.mark.slow
def test_a_dry_run_counts_and_sends_nothing(resources, clean_sandbox, warehouse):
    result = materialize(resources, "power_users", route="reconcile", dry_run=True)
    real = materialize(resources, "power_users", route="reconcile")

    assert (result.success
            and metadata(result, "power_users")["added"] == len(resolvable(warehouse, POWER_USERS)))
    assert metadata(real, "power_users")["added"] == metadata(result, "power_users")["added"]


@pytest.mark.slow
def test_reconcile_refuses_an_empty_export_of_a_small_audience_below_min_exits(resources, clean_sandbox,
                                                                               warehouse):
    keep_three_members_by_user_id(warehouse)
    first = materialize(resources, "power_users", route="reconcile")
    assert first.success and metadata(first, "power_users")["added"] == 3
    sent = segment_stats(clean_sandbox)
    edit_warehouse(warehouse, f"DELETE FROM main_production.segment_members WHERE segment_id = {POWER_USERS}")

    refused = materialize(resources, "power_users", route="reconcile")

    assert not refused.success
    guard = checks(refused)["membership_drop_guard"]
    assert guard.metadata["empty_heap_connect_result"].value is True and guard.metadata["exits"].value == 3
    assert segment_stats(clean_sandbox) == sent


@pytest.mark.slow
def test_a_confirmed_empty_export_of_a_small_audience_exits_its_members(resources, clean_sandbox, warehouse):
    keep_three_members_by_user_id(warehouse)
    assert materialize(resources, "power_users", route="reconcile").success
    edit_warehouse(warehouse, f"DELETE FROM main_production.segment_members WHERE segment_id = {POWER_USERS}")

    confirmed = materialize(resources, "power_users", route="reconcile", confirm_drop=True)

    assert confirmed.success and metadata(confirmed, "power_users")["removed"] == 3


@pytest.mark.slow
def test_duplicate_rows_in_heap_connects_users_table_change_nothing(resources, clean_sandbox, warehouse):
    # Heap Connect's users table can repeat a user's row (dbt-labs/heap dedupes it; BigQuery's users view
    # does too).
    edit_warehouse(warehouse, "INSERT INTO main_production.users SELECT * FROM main_production.users")

    result = materialize(resources, "power_users", route="reconcile")

    meta = metadata(result, "power_users")
    assert (result.success and meta["added"] == len(resolvable(warehouse, POWER_USERS))
            and meta["unresolved"] == 0)
    assert "0 ambiguous" in meta["identity_map"]
