"""Tracking plans end to end, through Dagster against the sandbox: the plan connected to the destination
source is read with the Public API before a reverse-ETL model sends; a call that breaks it is sent and
reported under `warn`, rejected with the schema error under `block`; either way the check fails and Slack
hears of it."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import duckdb
import pytest

from segment_ops.clients.segment_public_api import SegmentPublicApiClient
from segment_ops.config import SANDBOX_SEGMENT_PUBLIC_API_TOKEN
from segment_ops.engine.store import staging_file
from segment_ops.resources import build_resources
from segment_ops.syncs.reverse_etl.defs import build_reverse_etl_defs, model_key

pytestmark = pytest.mark.slow
MODEL = "completed_orders"  # track "Order Completed"
PLAN = "tp_sandbox_segment_ops"  # the sandbox's plan of the demo source


def run_model(resources: dict) -> dg.ExecuteInProcessResult:
    assets = [a for a in build_reverse_etl_defs().assets if isinstance(a, dg.AssetsDefinition)]
    return dg.materialize(assets, selection=[model_key(MODEL)], resources=resources, raise_on_error=False)


def metadata(result: dg.ExecuteInProcessResult) -> dict:
    [event] = result.asset_materializations_for_node(f"segment__reverse_etl__{MODEL}")
    return {k: v.value for k, v in event.metadata.items()}


def check(result: dg.ExecuteInProcessResult, name: str) -> dg.AssetCheckEvaluation:
    [evaluation] = [e for e in result.get_asset_check_evaluations() if e.check_name == name]
    return evaluation


def orders_sent(sandbox) -> list[dict]:
    return [m for m in sandbox.received("segment", limit=100_000) if m.get("event") == "Order Completed"]


@pytest.fixture
def resources(warehouse: Path, clean_sandbox) -> dict:
    return build_resources()


@pytest.fixture
def yen_only(clean_sandbox):
    """The plan's "Order Completed" rule now takes only JPY: every demo order (USD, EUR, GBP) breaks it."""
    url = f"{clean_sandbox.url}/segmentapis"
    with SegmentPublicApiClient(url, SANDBOX_SEGMENT_PUBLIC_API_TOKEN) as client:
        rules = list(client.iter_tracking_plan_rules(PLAN))
        [order] = [r for r in rules if r["type"] == "TRACK" and r.get("key") == "Order Completed"]
        order["jsonSchema"]["properties"]["properties"]["properties"]["currency"] = {"enum": ["JPY"]}
        client.replace_tracking_plan_rules(PLAN, rules)
    return clean_sandbox


def test_the_shipped_models_pass_the_sandbox_plan(resources, clean_sandbox):
    result = run_model(resources)
    assert result.success
    meta = metadata(result)
    assert meta["tracking_plan_checked"] == meta["planned"] > 0
    assert meta["tracking_plan_violating"] == 0 and check(result, "tracking_plan").passed
    assert not clean_sandbox.received("slack")


def test_under_warn_a_violation_is_sent_reported_and_alerted(resources, yen_only):
    result = run_model(resources)

    assert result.success
    meta = metadata(result)
    assert meta["tracking_plan_policy"] == "warn"
    assert meta["tracking_plan_violating"] == meta["planned"] == len(orders_sent(yen_only)) > 0
    assert meta["tracking_plan_blocked"] == 0
    assert "properties.currency" in meta["tracking_plan_violations"]
    evaluation = check(result, "tracking_plan")
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.WARN
    [alert] = yen_only.received("slack")
    assert "tracking plan violations" in alert["text"] and "Order Completed" in alert["text"]
    assert "properties.currency" in alert["text"] and "USD" not in alert["text"]  # no values


def test_under_block_a_violation_is_rejected_with_the_schema_error(resources, yen_only, ops_env, monkeypatch):
    monkeypatch.setenv("TRACKING_PLAN_POLICY", "block")

    result = run_model(resources)

    assert result.success  # the run did its work: nothing that breaks the plan left
    meta = metadata(result)
    assert meta["tracking_plan_blocked"] == meta["tracking_plan_violating"] == meta["planned"] > 0
    assert orders_sent(yen_only) == []
    assert not check(result, "tracking_plan").passed
    con = duckdb.connect(str(staging_file(ops_env, f"reverse_etl_{MODEL}")), read_only=True)
    try:
        reasons = [row[0] for row in con.execute("SELECT DISTINCT reason FROM rejected").fetchall()]
        counts = con.execute("SELECT status, count(*) FROM ledger GROUP BY 1").fetchall()
    finally:
        con.close()
    assert dict(counts) == {"rejected": meta["planned"]}
    why = 'rejected by tracking plan: TRACK "Order Completed" properties.currency'
    assert reasons and all(r.startswith(why) for r in reasons)


def test_under_block_an_unreadable_plan_stops_the_run_before_anything_is_sent(resources, clean_sandbox,
                                                                              monkeypatch):
    monkeypatch.setenv("TRACKING_PLAN_POLICY", "block")
    monkeypatch.setenv("SEGMENT_PUBLIC_API_TOKEN", "sgp_wrong_token")

    result = run_model(build_resources())

    assert not result.success
    assert orders_sent(clean_sandbox) == []
    failure = next(e for e in result.all_events if e.is_step_failure)
    text = failure.step_failure_data.error.message if failure.step_failure_data.error else ""
    description = failure.step_failure_data.user_failure_data.description
    assert "tracking plan could not be read, so nothing was sent" in (description or text)
    assert "sgp_wrong_token" not in (description or "") + text
