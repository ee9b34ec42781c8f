"""`reverse_etl_warehouse_sensor`: probes the upstream warehouse tables and runs the models they feed."""

from __future__ import annotations

import dagster as dg
import pytest

from segment_ops.resources import WarehouseResource
from segment_ops.syncs.reverse_etl.defs import JOB_NAME, SENSOR_NAME, build_reverse_etl_defs, model_key
from segment_ops_tests.reverse_etl.conftest import edit_warehouse, metadata, node


@pytest.fixture
def sensor() -> dg.SensorDefinition:
    [definition] = [s for s in build_reverse_etl_defs().sensors if s.name == SENSOR_NAME]
    return definition


def evaluate(sensor: dg.SensorDefinition, cursor: str | None, warehouse_url: str) -> dg.SensorResult:
    context = dg.build_sensor_context(instance=dg.DagsterInstance.ephemeral(), cursor=cursor,
                                      resources={"warehouse": WarehouseResource(url=warehouse_url)})
    return sensor(context)


def models_requested(result: dg.SensorResult) -> list[str]:
    return sorted(key.path[-1] for request in result.run_requests for key in request.asset_selection)


def test_first_probe_requests_every_model_with_upstream_tables(sensor, warehouse):
    result = evaluate(sensor, None, f"duckdb:///{warehouse}")

    assert models_requested(result) == ["account_traits", "completed_orders", "fullstory_user_traits",
                                        "user_traits"]
    # each model's run goes to the job of its destination
    assert {r.tags["segment_ops/reverse_etl_model"]: r.job_name for r in result.run_requests} == {
        "account_traits": "reverse_etl_job", "completed_orders": "reverse_etl_job",
        "fullstory_user_traits": "fullstory_users_job", "user_traits": "reverse_etl_job"}
    assert all(r.run_key.startswith(r.tags["segment_ops/reverse_etl_model"] + ":")
               for r in result.run_requests)
    assert "customers.max(updated_at)" in result.cursor


def test_no_warehouse_change_skips_with_a_reason(sensor, warehouse):
    first = evaluate(sensor, None, f"duckdb:///{warehouse}")

    second = evaluate(sensor, first.cursor, f"duckdb:///{warehouse}")

    assert second.run_requests == []
    assert "no upstream warehouse table changed" in second.skip_reason.skip_message


def test_a_changed_table_requests_only_the_models_reading_it(sensor, warehouse):
    first = evaluate(sensor, None, f"duckdb:///{warehouse}")
    # The demo data already holds an updated_at in 2099 (a malformed row), so the edit moves past it.
    edit_warehouse(warehouse, "UPDATE customers SET plan = 'pro', "
                              "updated_at = TIMESTAMPTZ '2100-01-01 00:00:00+00' "
                              "WHERE user_id = 'usr_0000001'")

    second = evaluate(sensor, first.cursor, f"duckdb:///{warehouse}")
    again = evaluate(sensor, first.cursor, f"duckdb:///{warehouse}")

    # all three read customers
    assert models_requested(second) == ["account_traits", "fullstory_user_traits", "user_traits"]
    old_keys = {r.run_key for r in first.run_requests}
    assert not old_keys & {r.run_key for r in second.run_requests}
    # same probe, same key
    assert [r.run_key for r in again.run_requests] == [r.run_key for r in second.run_requests]


def test_an_unreachable_warehouse_skips_and_keeps_the_cursor(sensor, tmp_path):
    result = evaluate(sensor, '{"orders.max(updated_at)": "1|x"}', "postgresql+psycopg://nobody@127.0.0.1:1/none")

    assert result.run_requests == [] and "cannot reach the warehouse" in result.skip_reason.skip_message
    assert result.cursor == '{"orders.max(updated_at)": "1|x"}'


@pytest.mark.slow
def test_a_sensor_run_request_runs_its_model(sensor, warehouse, resources, clean_sandbox):
    [request] = [r for r in evaluate(sensor, None, f"duckdb:///{warehouse}").run_requests
                 if r.asset_selection == [model_key("completed_orders")]]
    job = dg.Definitions.merge(build_reverse_etl_defs(),
                               dg.Definitions(resources=resources)).resolve_job_def(JOB_NAME)

    result = job.execute_in_process(asset_selection=request.asset_selection, tags=request.tags)

    assert result.success
    assert [e.step_key for e in result.all_events if e.is_step_success] == [node("completed_orders")]
    assert metadata(result, "completed_orders")["delivered"] == 425
