"""The reverse-ETL model with `destination: fullstory_users` end to end: `fullstory_users_job` (Dagster, the
code location's resources) reads the demo warehouse and upserts Fullstory users in the sandbox's users API."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import duckdb
import pytest

from segment_ops.clients.fullstory import FullstoryUserReader
from segment_ops.syncs.reverse_etl.defs import (
    FULLSTORY_JOB_NAME,
    MODELS_DIR,
    build_reverse_etl_defs,
    model_key,
)
from segment_ops_tests.reverse_etl.conftest import edit_warehouse

pytestmark = pytest.mark.slow
MODEL = "fullstory_user_traits"
NODE = f"fullstory__reverse_etl__{MODEL}"
FIELDS = ("plan", "account_tier", "lifecycle_stage")


def run_users(resources: dict, **config: object) -> dg.ExecuteInProcessResult:
    """One run of `fullstory_users_job`, as the code location defines it."""
    defs = dg.Definitions.merge(build_reverse_etl_defs(MODELS_DIR), dg.Definitions(resources=resources))
    job = defs.resolve_job_def(FULLSTORY_JOB_NAME)
    run_config = {"ops": {NODE: {"config": dict(config)}}} if config else None
    return job.execute_in_process(run_config=run_config, raise_on_error=False)


def metadata(result: dg.ExecuteInProcessResult) -> dict:
    [materialization] = result.asset_materializations_for_node(NODE)
    return {key: value.value for key, value in materialization.metadata.items()}


def checks(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def model_rows(warehouse: Path) -> list[dict]:
    """The shipped model's query on the warehouse, as the sync reads it."""
    query = (MODELS_DIR / f"{MODEL}.sql").read_text()
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        cursor = con.execute(query)
        columns = [d[0] for d in cursor.description]
        return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]
    finally:
        con.close()


def sendable(rows: list[dict]) -> dict[str, dict]:
    """user_id -> row for the rows the sync can send: a user_id, and one row for it."""
    counts: dict[str, int] = {}
    for row in rows:
        if row["user_id"] is not None:
            counts[row["user_id"]] = counts.get(row["user_id"], 0) + 1
    return {r["user_id"]: r for r in rows if r["user_id"] is not None and counts[r["user_id"]] == 1}


def fullstory_requests(sandbox) -> int:
    return sandbox.stats().get("fullstory", {}).get("requests", 0)


def test_the_job_selects_the_fullstory_model_only(resources):
    defs = dg.Definitions.merge(build_reverse_etl_defs(MODELS_DIR), dg.Definitions(resources=resources))
    job = defs.resolve_job_def(FULLSTORY_JOB_NAME)
    assert job.asset_layer.executable_asset_keys == {model_key(MODEL, "fullstory_users")}
    assert model_key(MODEL, "fullstory_users") == dg.AssetKey(["fullstory", "reverse_etl", MODEL])


def test_warehouse_users_land_in_fullstory_with_their_traits(resources, clean_sandbox, warehouse):
    rows = model_rows(warehouse)
    want = sendable(rows)

    result = run_users(resources)

    assert result.success
    users = {u["uid"]: u for u in clean_sandbox.fullstory_users()}
    assert set(users) == set(want) and len(want) > 100
    for uid, user in users.items():
        row = want[uid]
        properties = user["properties"]
        assert {f: properties.get(f) for f in FIELDS} == {f: row[f] for f in FIELDS}, uid
        # A NULL trait is left out (Fullstory keeps what it had: the demo's own users' emails, a bad one too).
        for field in ("email", "display_name"):
            if row[field] is not None:
                assert user[field] == row[field], (uid, field)
        assert "user_id" not in properties and "email" not in properties
    assert clean_sandbox.stats()["segment"].get("received", 0) == 0  # Fullstory only, not Segment
    meta = metadata(result)
    assert meta["rows_read"] == len(rows) and meta["planned"] == meta["delivered"] == len(want)
    assert meta["pending_after_run"] == 0 and checks(result)["delivery_complete"].passed


def test_rows_without_a_user_id_are_rejected_with_their_reason(resources, clean_sandbox, warehouse):
    rows = model_rows(warehouse)
    without = [r for r in rows if r["user_id"] is None]
    twice = len(rows) - len(without) - len(sendable(rows))

    result = run_users(resources)

    meta = metadata(result)
    assert without and meta["rejected"] == len(without) + twice
    assert meta["rejected_sample"].count("key column 'user_id' is null") == len(without)
    check = checks(result)["rejected_ratio"]
    assert check.metadata["rejected"].value == meta["rejected"]
    assert check.passed == (meta["rejected"] / meta["rows_read"] <= check.metadata["max_ratio"].value)


def test_a_second_run_sends_nothing(resources, clean_sandbox, warehouse):
    first = run_users(resources)
    requests = fullstory_requests(clean_sandbox)
    jobs = len(clean_sandbox.fullstory_jobs())

    second = run_users(resources)

    assert first.success and second.success
    meta = metadata(second)
    assert meta["planned"] == 0 and meta["delivered"] == 0 and meta["unchanged"] == metadata(first)["added"]
    assert fullstory_requests(clean_sandbox) == requests and len(clean_sandbox.fullstory_jobs()) == jobs


def test_a_changed_row_sends_only_that_user(resources, clean_sandbox, warehouse):
    assert run_users(resources).success
    before = {u["uid"]: u for u in clean_sandbox.fullstory_users()}
    uid = next(u for u, user in before.items() if user["properties"]["plan"] != "enterprise")
    edit_warehouse(warehouse, f"UPDATE customers SET plan = 'enterprise' WHERE user_id = '{uid}'")

    result = run_users(resources)

    assert result.success
    meta = metadata(result)
    assert (meta["changed"], meta["added"], meta["planned"], meta["delivered"]) == (1, 0, 1, 1)
    after = {u["uid"]: u for u in clean_sandbox.fullstory_users()}
    assert after[uid]["properties"]["plan"] == "enterprise"
    assert after[uid]["properties"] | {"plan": None} == before[uid]["properties"] | {"plan": None}
    assert [u for u in after if after[u] != before[u]] == [uid]  # updated_at moved for that user alone


def test_429s_from_fullstory_are_retried(resources, clean_sandbox, warehouse):
    want = sendable(model_rows(warehouse))
    clean_sandbox.set_faults("fullstory", rate_429=0.4, retry_after_seconds=0)

    result = run_users(resources)

    assert result.success
    meta = metadata(result)
    answered_429 = clean_sandbox.stats()["fullstory"]["faults"]["429"]
    assert answered_429 > 0 and meta["retried_requests"] >= 1
    assert meta["delivered"] == len(want) and meta["pending_after_run"] == 0
    assert meta["rejected_by_destination"] == 0
    assert {u["uid"] for u in clean_sandbox.fullstory_users()} == set(want)


def test_fullstory_refusing_the_key_fails_the_run_and_sends_again_later(resources, clean_sandbox, warehouse,
                                                                          monkeypatch):
    from segment_ops.resources import build_resources

    monkeypatch.setenv("FULLSTORY_API_KEY", "not-the-key")
    refused = run_users(build_resources())

    assert not refused.success and clean_sandbox.fullstory_users() == []
    [failure] = [e for e in refused.all_events if e.is_step_failure]
    assert "not-the-key" not in str(failure.step_failure_data.user_failure_data)

    monkeypatch.delenv("FULLSTORY_API_KEY")
    again = run_users(build_resources())
    assert again.success
    assert {u["uid"] for u in clean_sandbox.fullstory_users()} == set(sendable(model_rows(warehouse)))


def test_a_sample_of_the_users_delivered_is_read_back_from_fullstory(resources, clean_sandbox, warehouse):
    result = run_users(resources)

    landed = checks(result)["landed_in_fullstory"]
    figures = {key: value.value for key, value in landed.metadata.items()}
    assert landed.passed
    assert figures["read_back"] == 20 and figures["found"] == 20 and figures["missing"] == 0
    assert figures["verified"] == 20  # every trait as sent (null traits are not compared)
    assert metadata(run_users(resources))["planned"] == 0  # the next run sends nothing


def test_the_reader_finds_a_user_as_the_traits_it_was_sent_with(resources, clean_sandbox):
    api = resources["fullstory"].get_api()
    with api:
        api.upsert_user({"uid": "usr_readback", "email": "rb@example.com", "display_name": "Read Back",
                         "properties": {"plan": "pro", "seats": 3}})
        reader = FullstoryUserReader(api)
        found = reader.get_traits("user_id:usr_readback")
        only = reader.get_traits("user_id:usr_readback", include=("plan",))
        missing = reader.get_traits("user_id:usr_nobody")
        anonymous = reader.get_traits("anonymous_id:a1")

    assert found == {"plan": "pro", "seats": 3, "email": "rb@example.com", "display_name": "Read Back",
                     "displayName": "Read Back"}
    assert only == {"plan": "pro"} and missing is None and anonymous is None


def test_a_trait_that_became_null_is_not_read_back_as_a_difference(resources, clean_sandbox, warehouse):
    # Fullstory keeps a property's old value when the trait becomes null (nothing documents a way to clear
    # it): the read-back does not count that as a user that landed differently.
    first = run_users(resources)
    edit_warehouse(warehouse, "UPDATE accounts SET mrr = NULL WHERE account_id = (SELECT account_id "
                              "FROM customers WHERE user_id IS NOT NULL AND account_id IS NOT NULL "
                              "ORDER BY user_id LIMIT 1)")

    second = run_users(resources)

    assert first.success and second.success
    changed = metadata(second)["planned"]
    landed = checks(second)["landed_in_fullstory"]
    figures = {key: value.value for key, value in landed.metadata.items()}
    assert changed > 0 and landed.passed
    assert figures["read_back"] == min(changed, 20) and figures["verified"] == figures["read_back"]
