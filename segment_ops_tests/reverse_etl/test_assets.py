"""The reverse-ETL models as Dagster assets, end to end: demo warehouse -> DuckDB staging -> sandbox Segment.

Every run goes through Dagster's harness with the resources the code location binds, over real HTTP.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import duckdb
import pytest

from segment_ops.resources import StagingResource, build_resources
from segment_ops.syncs.reverse_etl.defs import JOB_NAME, build_reverse_etl_defs, model_key
from segment_ops_tests.reverse_etl.conftest import (
    StormAfterFirstBatch,
    checks,
    edit_warehouse,
    metadata,
    received,
    run_models,
    segment_stats,
    step_failure,
)

# Whole-model Dagster runs against the sandbox, most of them twice: the fast subset leaves the module out
# (segment_ops_tests/reverse_etl/test_engine.py covers the same diff without Dagster, and the full suite
# runs these).
pytestmark = pytest.mark.slow

VALID_CUSTOMERS = 174  # 178 rows: 2 with a null user_id, 2 sharing one user_id
ACCOUNTS_WITH_A_USER = 14  # of 15: acc_00012 has no known customer to attach the group call to
COMPLETED_ORDERS = 425


def test_first_run_sends_every_valid_row(resources, clean_sandbox):
    result = run_models(resources, ["user_traits", "account_traits", "completed_orders"])

    assert result.success
    user = metadata(result, "user_traits")
    assert ((user["rows_read"], user["added"], user["planned"], user["delivered"])
            == (178, VALID_CUSTOMERS, VALID_CUSTOMERS, VALID_CUSTOMERS))
    assert user["warehouse_dialect"] == "duckdb" and user["dry_run"] is False
    assert metadata(result, "account_traits")["delivered"] == ACCOUNTS_WITH_A_USER
    assert metadata(result, "completed_orders")["delivered"] == COMPLETED_ORDERS
    assert segment_stats(clean_sandbox) == (VALID_CUSTOMERS + ACCOUNTS_WITH_A_USER + COMPLETED_ORDERS, 0)
    for model in ("user_traits", "account_traits", "completed_orders"):
        assert checks(result, model)["delivery_complete"].passed
    by_type = clean_sandbox.stats()["segment"]["by_type"]
    assert by_type == {"identify": VALID_CUSTOMERS, "group": ACCOUNTS_WITH_A_USER, "track": COMPLETED_ORDERS}


def test_payloads_are_built_from_typed_columns(resources, clean_sandbox):
    result = run_models(resources, ["user_traits", "completed_orders"])

    [identify] = [m for m in received(clean_sandbox)
                  if m["type"] == "identify" and m["userId"] == "usr_0000001"]
    assert identify["traits"]["lifetime_value"] == 178.37 and identify["traits"]["plan"] == "starter"
    assert identify["traits"]["created_at"] == "2024-07-07T11:31:17.719Z"  # UTC, milliseconds, 'Z'
    message_id = identify["messageId"]
    assert len(message_id) == 36 and message_id[14] == "5" and message_id[19] in "89ab"
    [order] = [m for m in received(clean_sandbox)
               if m.get("properties", {}).get("order_id") == "ord_000000001"]
    assert order["event"] == "Order Completed" and order["timestamp"] == "2025-06-23T19:39:49.770Z"
    assert order["properties"] == {"order_id": "ord_000000001", "revenue": 94.24, "currency": "USD",
                                   "account_id": "acc_00002"}
    samples = metadata(result, "user_traits")["sample_payloads"]
    assert len(samples) == 5 and all(s["type"] == "identify" and s["messageId"] for s in samples)


def test_second_run_without_warehouse_change_sends_nothing(resources, clean_sandbox):
    assert run_models(resources, ["user_traits", "account_traits"]).success

    again = run_models(resources, ["user_traits", "account_traits"])

    assert again.success
    meta = metadata(again, "user_traits")
    assert (meta["added"], meta["changed"], meta["unchanged"], meta["planned"], meta["delivered"]) == (
        0, 0, VALID_CUSTOMERS, 0, 0)
    assert metadata(again, "account_traits")["delivered"] == 0
    assert segment_stats(clean_sandbox) == (VALID_CUSTOMERS + ACCOUNTS_WITH_A_USER, 0)
    assert clean_sandbox.stats()["segment"]["requests"] == 2


def test_a_changed_row_sends_exactly_one_call(resources, warehouse, clean_sandbox):
    assert run_models(resources, ["user_traits"]).success
    edit_warehouse(warehouse, "UPDATE customers SET plan = 'enterprise' WHERE user_id = 'usr_0000001'")

    result = run_models(resources, ["user_traits"])

    meta = metadata(result, "user_traits")
    assert (meta["added"], meta["changed"], meta["delivered"]) == (0, 1, 1)
    assert segment_stats(clean_sandbox) == (VALID_CUSTOMERS + 1, 0)
    latest = received(clean_sandbox)[-1]
    assert latest["userId"] == "usr_0000001" and latest["traits"]["plan"] == "enterprise"


def test_a_row_changed_back_to_an_earlier_state_is_sent_again(resources, warehouse, clean_sandbox):
    assert run_models(resources, ["user_traits"]).success
    edit_warehouse(warehouse, "UPDATE customers SET plan = 'enterprise' WHERE user_id = 'usr_0000001'")
    assert run_models(resources, ["user_traits"]).success
    edit_warehouse(warehouse, "UPDATE customers SET plan = 'starter' WHERE user_id = 'usr_0000001'")

    result = run_models(resources, ["user_traits"])

    assert metadata(result, "user_traits")["delivered"] == 1  # a new messageId: not deduplicated away
    assert segment_stats(clean_sandbox) == (VALID_CUSTOMERS + 2, 0)
    assert received(clean_sandbox)[-1]["traits"]["plan"] == "starter"


def test_mirror_mode_sends_the_removal_of_a_deleted_row(resources, warehouse, clean_sandbox):
    assert run_models(resources, ["account_traits"]).success
    edit_warehouse(warehouse, "DELETE FROM accounts WHERE account_id = 'acc_00001'")

    result = run_models(resources, ["account_traits"])
    again = run_models(resources, ["account_traits"])

    meta = metadata(result, "account_traits")
    assert (meta["removed"], meta["changed"], meta["delivered"]) == (1, 0, 1)
    removal = received(clean_sandbox)[-1]
    assert removal["type"] == "group" and removal["groupId"] == "acc_00001" and removal["userId"]
    assert removal["traits"] == {"name": None, "plan": None, "seats": None, "industry": None, "mrr": None,
                                 "created_at": None}
    assert metadata(again, "account_traits")["delivered"] == 0  # the removal is sent once
    assert segment_stats(clean_sandbox) == (ACCOUNTS_WITH_A_USER + 1, 0)


def test_a_row_that_returns_after_its_removal_is_sent_as_added(resources, warehouse, clean_sandbox):
    assert run_models(resources, ["account_traits"]).success
    edit_warehouse(warehouse, "CREATE TABLE removed AS SELECT * FROM accounts WHERE account_id = 'acc_00001'",
                   "DELETE FROM accounts WHERE account_id = 'acc_00001'")
    assert run_models(resources, ["account_traits"]).success
    edit_warehouse(warehouse, "INSERT INTO accounts SELECT * FROM removed")

    result = run_models(resources, ["account_traits"])

    assert (metadata(result, "account_traits")["added"],
            metadata(result, "account_traits")["delivered"]) == (1, 1)
    assert received(clean_sandbox)[-1]["traits"]["name"] is not None
    assert segment_stats(clean_sandbox) == (ACCOUNTS_WITH_A_USER + 2, 0)


def test_a_rejected_row_is_not_taken_for_a_removal(resources, warehouse, clean_sandbox):
    assert run_models(resources, ["account_traits"]).success
    edit_warehouse(warehouse, "INSERT INTO accounts SELECT * FROM accounts WHERE account_id = 'acc_00001'")

    result = run_models(resources, ["account_traits"])

    meta = metadata(result, "account_traits")
    assert (meta["removed"], meta["delivered"]) == (0, 0)
    assert "acc_00001 appears in 2 rows" in meta["rejected_sample"]


def test_append_sends_each_new_key_once_and_never_resends_a_change(resources, warehouse, clean_sandbox):
    assert run_models(resources, ["completed_orders"]).success
    edit_warehouse(warehouse,
                   "UPDATE orders SET amount = amount + 1 WHERE order_id = 'ord_000000001'",
                   "UPDATE orders SET status = 'completed', completed_at = updated_at "
                   "WHERE order_id = (SELECT min(order_id) FROM orders WHERE status = 'pending')")

    result = run_models(resources, ["completed_orders"])

    meta = metadata(result, "completed_orders")
    assert (meta["added"], meta["changed"], meta["changed_not_resent"], meta["delivered"]) == (1, 1, 1, 1)
    assert segment_stats(clean_sandbox) == (COMPLETED_ORDERS + 1, 0)
    assert received(clean_sandbox)[-1]["properties"]["order_id"] != "ord_000000001"


def test_rows_with_null_or_duplicate_keys_are_rejected_with_reasons(resources, ops_env, clean_sandbox):
    result = run_models(resources, ["user_traits"])

    assert result.success  # a data problem, not a model problem: the valid rows are delivered
    meta = metadata(result, "user_traits")
    assert meta["rejected"] == 4
    assert "key column 'user_id' is null" in meta["rejected_sample"]
    assert "usr_0000092 appears in 2 rows" in meta["rejected_sample"]
    ratio = checks(result, "user_traits")["rejected_ratio"]
    assert not ratio.passed and ratio.severity == dg.AssetCheckSeverity.WARN
    con = duckdb.connect(str(ops_env / "staging" / "reverse_etl_user_traits.duckdb"), read_only=True)
    try:
        rows = con.execute(
            "SELECT record_key, source, reason, record FROM rejected ORDER BY reason").fetchall()
    finally:
        con.close()
    assert len(rows) == 4 and {r[1] for r in rows} == {"user_traits.sql"}
    assert sum(r[0] is None for r in rows) == 2 and all('"email"' in r[3] for r in rows)
    assert not any(m["userId"] == "usr_0000092" for m in received(clean_sandbox))


def test_a_run_failing_halfway_sends_the_rest_next_run_and_nothing_twice(resources, clean_sandbox):
    stormy = {**resources, "segment": StormAfterFirstBatch(
        base_url=f"{clean_sandbox.url}/segment", write_key="sandbox-write-key", sandbox_url=clean_sandbox.url,
        max_in_flight=1)}

    failed = run_models(stormy, ["user_traits"])

    assert not failed.success
    failure = step_failure(failed, "user_traits")
    assert "stay pending" in failure.description and "user_traits.sql" in failure.description
    first_batch = failure.metadata["delivered"].value
    assert 0 < first_batch < VALID_CUSTOMERS
    assert failure.metadata["pending_after_run"].value == VALID_CUSTOMERS - first_batch
    assert failure.metadata["snapshot_advanced"].value == first_batch
    assert segment_stats(clean_sandbox)[0] == first_batch

    clean_sandbox.clear_faults()
    rest = run_models(resources, ["user_traits"])

    assert rest.success
    meta = metadata(rest, "user_traits")
    assert (meta["planned"], meta["already_planned"], meta["delivered"]) == (0, VALID_CUSTOMERS - first_batch,
                                                                            VALID_CUSTOMERS - first_batch)
    assert segment_stats(clean_sandbox) == (VALID_CUSTOMERS, 0)
    assert checks(rest, "user_traits")["delivery_complete"].passed
    assert metadata(run_models(resources, ["user_traits"]), "user_traits")["delivered"] == 0


def test_dry_run_sends_nothing_and_writes_no_snapshot(resources, clean_sandbox):
    dry = run_models(resources, ["user_traits"], dry_run=True)

    assert dry.success
    meta = metadata(dry, "user_traits")
    assert meta["dry_run"] is True and ((meta["added"], meta["planned"], meta["rejected"])
                                        == (VALID_CUSTOMERS, VALID_CUSTOMERS, 4))
    assert len(meta["sample_payloads"]) == 5 and "delivered" not in meta
    assert clean_sandbox.stats()["segment"]["requests"] == 0

    real = run_models(resources, ["user_traits"])

    # the dry run left no snapshot behind
    assert metadata(real, "user_traits")["delivered"] == VALID_CUSTOMERS


def test_full_resync_sends_every_row_again(resources, clean_sandbox):
    assert run_models(resources, ["user_traits"]).success

    resync = run_models(resources, ["user_traits"], full_resync=True)

    meta = metadata(resync, "user_traits")
    assert (meta["added"], meta["unchanged"], meta["delivered"]) == (VALID_CUSTOMERS, 0, VALID_CUSTOMERS)
    assert segment_stats(clean_sandbox) == (2 * VALID_CUSTOMERS, 0)  # new messageIds: Segment keeps them
    assert metadata(run_models(resources, ["user_traits"]), "user_traits")["delivered"] == 0


def test_a_bad_model_file_fails_naming_the_file_while_the_others_load_and_run(resources, models_dir,
                                                                              clean_sandbox):
    bad = models_dir / "broken_model.sql"
    bad.write_text("-- description: a model whose header has a typo in it somewhere\n-- owner: team:growth\n"
                   "-- call: identify\n-- mdoe: upsert\n-- key: user_id\n-- user_id: user_id\n"
                   "SELECT 1 AS user_id\n")
    defs = dg.Definitions.merge(build_reverse_etl_defs(models_dir), dg.Definitions(resources=resources))
    dg.Definitions.validate_loadable(defs)
    [spec] = [s for s in defs.resolve_all_asset_specs() if s.key == model_key("broken_model")]
    assert "BROKEN" in spec.description and "mdoe" in spec.description
    job = defs.resolve_job_def(JOB_NAME)

    result = job.execute_in_process(raise_on_error=False)

    assert not result.success
    failure = step_failure(result, "broken_model")
    assert failure.description.startswith(str(bad)) and "unknown header key 'mdoe'" in failure.description
    assert metadata(result, "user_traits")["delivered"] == VALID_CUSTOMERS
    assert metadata(result, "completed_orders")["delivered"] == COMPLETED_ORDERS


def test_a_mapping_naming_a_missing_column_fails_the_run_naming_the_file(resources, models_dir,
                                                                         clean_sandbox):
    path = models_dir / "user_traits.sql"
    path.write_text(path.read_text().replace("-- traits: email,", "-- traits: e_mail,"))

    result = run_models(resources, ["user_traits"], models_dir=models_dir)

    failure = step_failure(result, "user_traits")
    assert failure.description.startswith(str(path)) and "e_mail (traits)" in failure.description
    assert clean_sandbox.stats()["segment"]["requests"] == 0


def test_a_query_the_warehouse_refuses_fails_the_run_naming_the_file(resources, models_dir, clean_sandbox):
    path = models_dir / "completed_orders.sql"
    path.write_text(path.read_text().replace("FROM orders", "FROM order_lines"))

    result = run_models(resources, ["completed_orders"], models_dir=models_dir)

    failure = step_failure(result, "completed_orders")
    assert failure.description.startswith(str(path)) and "order_lines" in failure.description


def test_the_streaming_path_gives_the_same_messages_as_the_duckdb_fast_path(resources, ops_env,
                                                                           clean_sandbox):
    fast = run_models(resources, ["user_traits"])
    other_home = ops_env / "second_home"
    streamed = run_models({**resources, "staging": StagingResource(home=str(other_home))}, ["user_traits"],
                          duckdb_fast_path=False, chunk_rows=50)

    assert metadata(fast, "user_traits")["read_method"] == "duckdb attach"
    assert metadata(streamed, "user_traits")["read_method"] == "duckdb stream"
    assert metadata(streamed, "user_traits")["delivered"] == VALID_CUSTOMERS
    assert segment_stats(clean_sandbox) == (VALID_CUSTOMERS, VALID_CUSTOMERS)  # same messageIds, deduplicated


def test_the_demo_models_are_in_the_code_location(monkeypatch, tmp_path: Path):
    from segment_ops.definitions import defs

    definitions = defs()
    keys = {spec.key for spec in definitions.resolve_all_asset_specs()}
    for model in ("user_traits", "account_traits", "completed_orders"):
        assert model_key(model) in keys
        schedule = definitions.resolve_schedule_def(f"reverse_etl_{model}_schedule")
        assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    [spec] = [s for s in definitions.resolve_all_asset_specs() if s.key == model_key("account_traits")]
    assert {d.asset_key for d in spec.deps} == {dg.AssetKey(["warehouse", "accounts"]),
                                                dg.AssetKey(["warehouse", "customers"])}
    assert spec.owners == ["team:growth"] and spec.group_name == "reverse_etl" and spec.code_version
    assert definitions.resolve_job_def(JOB_NAME)
    assert build_resources()  # the resources the models need are bound by the code location
