"""The one runner: a sync declared with a stage and hooks is staged, diffed, planned, delivered and
advanced."""

from __future__ import annotations

from dataclasses import dataclass, field

import duckdb
import pytest

from segment_ops.engine.diff import delivered_rows, key_states
from segment_ops.engine.ledger import Ledger
from segment_ops.engine.run import DeliveryIncomplete, DiffSync, RunReport, run_diff_sync
from segment_ops.engine.spec import DiffSpec
from segment_ops.engine.store import connect
from segment_ops.engine.warehouse import StagedResult
from segment_ops_tests.engine.conftest import stage_columns

SPEC = DiffSpec(sync="plans", source="plans.test", call="identify", mode="mirror", key="user_id",
                user_id="user_id", fields=("plan",))


@dataclass(kw_only=True)
class PlansRun(RunReport):
    calls: list[str] = field(default_factory=list)  # which hooks ran, in order


def declared(rows: dict[str, str], run: PlansRun, *, fail_stage: bool = False) -> DiffSync:
    def stage(con: duckdb.DuckDBPyConnection) -> StagedResult:
        run.calls.append("stage")
        if fail_stage:
            raise RuntimeError("the source is down")
        return stage_columns(con, "plans_staged", {"user_id": ("VARCHAR", list(rows)),
                                                   "plan": ("VARCHAR", list(rows.values()))})

    def before_plan(con: duckdb.DuckDBPyConnection, ledger: Ledger) -> None:
        run.calls.append("before_plan")

    def after_delivery(con: duckdb.DuckDBPyConnection) -> None:
        run.calls.append("after_delivery")

    return DiffSync(SPEC, stage, before_plan=before_plan, after_delivery=after_delivery, label="plans")


@pytest.fixture
def con(tmp_path):
    connection = connect(tmp_path / "plans.duckdb")
    yield connection
    connection.close()


def sent(sandbox) -> list[tuple[str, object]]:
    return sorted((m["userId"], m["traits"]["plan"]) for m in sandbox.received("segment"))


def test_a_declared_sync_sends_what_changed_and_then_only_the_change(con, segment_client, clean_sandbox):
    first = run_diff_sync(con, declared({"u1": "free", "u2": "pro"}, run := PlansRun()), run, segment_client)
    assert (first.plan.added, first.delivery.delivered, first.advanced) == (2, 2, 2)
    assert run.calls == ["stage", "before_plan", "after_delivery"]

    second = run_diff_sync(con, declared({"u1": "free", "u2": "team"}, again := PlansRun()), again,
                           segment_client)

    assert (second.plan.changed, second.plan.unchanged, second.delivery.delivered) == (1, 1, 1)
    assert sent(clean_sandbox) == [("u1", "free"), ("u2", "pro"), ("u2", "team")]
    delivered = dict(con.execute(f"SELECT record_key, user_id FROM {delivered_rows()}").fetchall())
    assert delivered == {"u1": "u1", "u2": "u2"}


def test_a_dry_run_stages_and_counts_but_records_and_sends_nothing(con, segment_client, clean_sandbox):
    run = PlansRun(dry_run=True)
    run_diff_sync(con, declared({"u1": "free"}, run), run, segment_client)

    assert (run.plan.added, run.plan.planned, run.delivery) == (1, 1, None)
    assert run.calls == ["stage"]  # nothing is recorded before a plan that is not made
    assert run.ledger.pending == 0 and clean_sandbox.received("segment") == []


@pytest.mark.slow
def test_an_incomplete_delivery_raises_with_the_typed_report_after_the_hooks_ran(con, segment_client,
                                                                                 clean_sandbox):
    clean_sandbox.set_faults("segment", rate_503=1.0)
    run = PlansRun()
    with pytest.raises(DeliveryIncomplete, match=r"^plans: ") as failed:
        run_diff_sync(con, declared({"u1": "free", "u2": "pro"}, run), run, segment_client)

    assert failed.value.report is run
    assert (run.ledger.pending, run.advanced) == (2, 0)
    assert run.calls == ["stage", "before_plan", "after_delivery"]  # a reconcile still sees the outcome
    states = key_states(con, SPEC.sync, None)
    assert con.execute(f"SELECT record_key, delivered, pending FROM {states} ORDER BY 1").fetchall() == [
        ("u1", False, True), ("u2", False, True)]

    clean_sandbox.clear_faults()
    retry = run_diff_sync(con, declared({"u1": "free", "u2": "pro"}, again := PlansRun()), again,
                          segment_client)
    assert (retry.plan.already_known, retry.delivery.delivered) == (2, 2)  # same messages, sent once
    assert sent(clean_sandbox) == [("u1", "free"), ("u2", "pro")]


def test_a_stage_that_fails_stops_the_run_before_anything_is_recorded(con, segment_client, clean_sandbox):
    run = PlansRun()
    with pytest.raises(RuntimeError, match="the source is down"):
        run_diff_sync(con, declared({"u1": "free"}, run, fail_stage=True), run, segment_client)

    assert run.calls == ["stage"] and run.plan is None
    assert Ledger(con).counts(SPEC.sync).pending == 0


def test_a_full_resync_sends_every_row_again_under_new_ids(con, segment_client, clean_sandbox):
    run_diff_sync(con, declared({"u1": "free"}, run := PlansRun()), run, segment_client)
    again = PlansRun(full_resync=True)
    run_diff_sync(con, declared({"u1": "free"}, again), again, segment_client)

    ids = [m["messageId"] for m in clean_sandbox.received("segment")]
    assert again.delivery.delivered == 1 and len(set(ids)) == 2


@pytest.mark.slow
def test_a_change_verified_after_its_delivery_still_advances_the_snapshot(con, segment_client, clean_sandbox):
    clean_sandbox.set_faults("segment", rate_503=1.0)
    with pytest.raises(DeliveryIncomplete):
        run_diff_sync(con, declared({"u1": "free"}, run := PlansRun()), run, segment_client)
    clean_sandbox.clear_faults()
    ledger = Ledger(con)
    [(seq,)] = con.execute("SELECT seq FROM ledger WHERE sync = 'plans'").fetchall()
    ledger.log_outcomes("plans", [(seq, "delivered", 1, None)])
    ledger.log_outcomes("plans", [(seq, "verified", 1, None)])  # read back from Segment (issue 15)

    again = PlansRun()
    run_diff_sync(con, declared({"u1": "free"}, again), again, segment_client)

    assert again.plan.unchanged == 1 and again.plan.planned == 0
    assert clean_sandbox.received("segment") == []
