"""The plan guard end to end through Dagster against the sandbox: a mirror model whose warehouse lost most of
its rows fails held, with the numbers and the fingerprint, sends nothing and alerts on Slack from within the
run; a run with `approve_plan` naming that fingerprint sends exactly the clearing calls."""

from __future__ import annotations

import dagster as dg
import pytest

from segment_ops.syncs.ops.run_alerts import with_failure_alerts
from segment_ops.syncs.reverse_etl.defs import build_reverse_etl_defs, model_key
from segment_ops_tests.reverse_etl.conftest import (
    edit_warehouse,
    metadata,
    node,
    received,
    step_failure,
)

pytestmark = pytest.mark.slow

MODEL = "account_traits"  # mirror mode, group calls keyed by account_id
KEPT = ("acc_00001", "acc_00002", "acc_00003")


@pytest.fixture
def guarded(monkeypatch, resources):
    """The demo's 14 accounts are below the default PLAN_GUARD_MIN_DELIVERED (100)."""
    monkeypatch.setenv("PLAN_GUARD_MIN_DELIVERED", "10")
    return resources


def run_as_deployed(resources: dict, **config: object) -> dg.ExecuteInProcessResult:
    """The model's asset with the code location's in-run failure alert, as `definitions.py` binds it."""
    assets = [a for a in build_reverse_etl_defs().assets if isinstance(a, dg.AssetsDefinition)]
    hooked = list(with_failure_alerts(dg.Definitions(assets=assets)).assets or [])
    run_config = {"ops": {node(MODEL): {"config": dict(config)}}} if config else None
    return dg.materialize(hooked, selection=[model_key(MODEL)], resources=resources, run_config=run_config,
                          raise_on_error=False)


def test_a_mass_removal_is_held_alerted_and_sent_only_once_approved(guarded, warehouse, clean_sandbox):
    first = run_as_deployed(guarded)
    assert first.success
    delivered = metadata(first, MODEL)["delivered"]
    # Every run shows what the guard weighed; the fingerprint is taken when a plan is held (a scan).
    assert metadata(first, MODEL)["plan_guard_tripped"] == "none" and "plan_fingerprint" not in metadata(
        first, MODEL)
    edit_warehouse(warehouse, f"DELETE FROM accounts WHERE account_id NOT IN {KEPT}")
    before = len(received(clean_sandbox))

    held = run_as_deployed(guarded)

    assert not held.success
    failure = step_failure(held, MODEL)
    fingerprint = failure.metadata["plan_fingerprint"].value
    removed = failure.metadata["plan_removed"].value
    assert removed == delivered - len(KEPT)
    lead = failure.description.splitlines()[0]
    assert lead.startswith(f"{MODEL}.sql: plan held, nothing sent: it would clear (mirror removals) "
                           f"{removed} of {delivered} delivered records")
    assert f"approve_plan: {fingerprint}" in lead
    assert '"groupId":' in failure.description  # a sample call
    assert len(received(clean_sandbox)) == before  # nothing new reached Segment
    [alert] = clean_sandbox.received("slack")
    assert "plan held, nothing sent" in alert["text"] and fingerprint in alert["text"]
    assert f"{removed} of {delivered} delivered records" in alert["text"]

    approved = run_as_deployed(guarded, approve_plan=fingerprint)

    assert approved.success
    sent = received(clean_sandbox)[before:]
    assert len(sent) == removed == metadata(approved, MODEL)["delivered"]
    assert all(m["type"] == "group" and m["groupId"] not in KEPT for m in sent)
    assert all(set(m["traits"].values()) == {None} for m in sent)  # the clearing calls, nothing else
    assert run_as_deployed(guarded).success  # settled: the next run has nothing held
    assert len(received(clean_sandbox)) == before + removed


def test_a_stale_approval_holds_again_naming_the_new_plan(guarded, warehouse, clean_sandbox):
    assert run_as_deployed(guarded).success
    edit_warehouse(warehouse, f"DELETE FROM accounts WHERE account_id NOT IN {KEPT}")
    first = step_failure(run_as_deployed(guarded), MODEL).metadata["plan_fingerprint"].value
    edit_warehouse(warehouse, "DELETE FROM accounts WHERE account_id = 'acc_00003'")
    before = len(received(clean_sandbox))

    again = run_as_deployed(guarded, approve_plan=first)

    failure = step_failure(again, MODEL)
    assert not again.success and failure.metadata["plan_fingerprint"].value != first
    assert f"approve_plan {first} names an earlier plan" in failure.description
    assert len(received(clean_sandbox)) == before


def test_a_dry_run_shows_the_verdict_and_fingerprint_and_holds_nothing(guarded, warehouse, clean_sandbox):
    assert run_as_deployed(guarded).success
    edit_warehouse(warehouse, f"DELETE FROM accounts WHERE account_id NOT IN {KEPT}")

    dry = run_as_deployed(guarded, dry_run=True)

    assert dry.success
    shown = metadata(dry, MODEL)
    assert shown["plan_guard_tripped"] == "removed" and shown["plan_held_before"] == 0
    held = step_failure(run_as_deployed(guarded), MODEL)
    assert held.metadata["plan_fingerprint"].value == shown["plan_fingerprint"]
    assert held.metadata["plan_held_before"].value == 0  # the dry run held nothing
