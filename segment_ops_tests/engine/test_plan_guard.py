"""The plan guard on the one runner: a plan that clears, nulls or changes too much, or sends too many
messages, is held in the ledger with nothing sent, until a run approves it by its fingerprint."""

from __future__ import annotations

from dataclasses import replace

import duckdb
import pytest

from segment_ops.engine.guard import GuardLimits, PlanHeld
from segment_ops.engine.ledger import Ledger
from segment_ops.engine.run import DiffSync, RunReport, run_diff_sync
from segment_ops.engine.spec import DiffSpec
from segment_ops.engine.store import connect
from segment_ops.engine.warehouse import StagedResult
from segment_ops_tests.engine.conftest import stage_columns

SPEC = DiffSpec(sync="plans", source="plans.test", call="identify", mode="mirror", key="user_id",
                user_id="user_id", fields=("plan", "email"))
# Small enough for ten keys; the shares as the defaults.
LIMITS = GuardLimits(min_delivered=5)
KEYS = [f"u{i}" for i in range(10)]


def rows(plan: str = "free", **overrides: tuple[str, str | None]) -> dict[str, tuple[str, str | None]]:
    """user_id -> (plan, email) for the ten keys, `overrides` replacing some."""
    return {k: (plan, f"{k}@example.com") for k in KEYS} | overrides


def declared(data: dict[str, tuple[str, str | None]]) -> DiffSync:
    def stage(con: duckdb.DuckDBPyConnection) -> StagedResult:
        return stage_columns(con, "plans_staged", {
            "user_id": ("VARCHAR", list(data)), "plan": ("VARCHAR", [p for p, _ in data.values()]),
            "email": ("VARCHAR", [e for _, e in data.values()])})

    return DiffSync(SPEC, stage, label="plans")


@pytest.fixture
def con(tmp_path):
    connection = connect(tmp_path / "plans.duckdb")
    yield connection
    connection.close()


@pytest.fixture
def run(con, segment_client):
    def run(data: dict, *, guard: GuardLimits | None = LIMITS, approve: str | None = None,
            dry_run: bool = False) -> RunReport:
        report = RunReport(dry_run=dry_run)
        return run_diff_sync(con, declared(data), report, segment_client, guard=guard, approve_plan=approve)

    return run


@pytest.fixture
def delivered(run, clean_sandbox):
    """The ten keys delivered once (a first run never trips the shares)."""
    assert run(rows()).delivery.delivered == 10
    return clean_sandbox


def received(sandbox) -> list[dict]:
    return sandbox.received("segment")


def held(con, run) -> PlanHeld:
    with pytest.raises(PlanHeld) as caught:
        run()
    return caught.value


def counts(con) -> tuple[int, int]:
    """(pending, held) of the sync."""
    c = Ledger(con, create=False).counts("plans")
    return c.pending, c.held


def without(*keys: str) -> dict:
    return {k: v for k, v in rows().items() if k not in keys}


def test_a_plan_clearing_too_many_delivered_records_is_held_and_nothing_sent(con, run, delivered):
    exc = held(con, lambda: run(without("u7", "u8")))  # 20% > 10%

    assert [(t.what, t.count, t.of) for t in exc.tripped] == [("removed", 2, 10)]
    assert "clear (mirror removals) 2 of 10 delivered records (20% > 10%)" in str(exc)
    assert f"approve_plan: {exc.fingerprint}" in str(exc) and len(exc.fingerprint) == 16
    assert any('"userId":"u7"' in s for s in exc.samples)
    assert len(received(delivered)) == 10  # the first run's only
    assert counts(con) == (0, 2)


def test_a_plan_changing_too_many_records_is_held(con, run, delivered):
    exc = held(con, lambda: run(rows(**{k: ("pro", f"{k}@example.com") for k in KEYS[:6]})))  # 60% > 50%

    assert [(t.what, t.count) for t in exc.tripped] == [("changed", 6)]
    assert len(received(delivered)) == 10 and counts(con) == (0, 6)


def test_a_plan_nulling_previously_set_traits_is_held_with_the_key_and_field(con, run, delivered):
    exc = held(con, lambda: run(rows(u1=("free", None), u2=("free", None))))  # 20% > 10%

    assert [(t.what, t.count) for t in exc.tripped] == [("nulled", 2)]
    assert exc.verdict.figures.nulled_samples == [("u1", "email"), ("u2", "email")]
    assert "u1: email -> null" in exc.samples
    assert len(received(delivered)) == 10 and counts(con) == (0, 2)


def test_a_trait_that_was_null_before_is_not_counted_as_nulled(con, run, clean_sandbox):
    run(rows(u1=("free", None), u2=("free", None)))

    report = run(rows(plan="free", u1=("pro", None), u2=("pro", None)))

    assert report.verdict.figures.nulled == 0 and report.delivery.delivered == 2


def test_a_plan_over_the_message_cap_is_held_even_on_a_first_run(con, run, clean_sandbox):
    exc = held(con, lambda: run(rows(), guard=replace(LIMITS, max_messages=3)))

    assert [(t.what, t.count) for t in exc.tripped] == [("messages", 10)]
    assert "it would send 10 messages (cap 3)" in str(exc)
    assert received(clean_sandbox) == [] and counts(con) == (0, 10)


def test_below_min_delivered_no_share_trips(con, run, delivered):
    report = run(without("u1", "u2", "u3", "u4", "u5"), guard=replace(LIMITS, min_delivered=11))

    assert report.verdict.tripped == () and report.delivery.delivered == 5


def test_approval_with_the_fingerprint_sends_exactly_the_held_plan(con, run, delivered):
    exc = held(con, lambda: run(without("u7", "u8")))

    report = run(without("u7", "u8"), approve=exc.fingerprint)

    new = received(delivered)[10:]
    assert sorted(m["userId"] for m in new) == ["u7", "u8"]
    assert all(m["traits"] == {"plan": None, "email": None} for m in new)
    assert report.approved == 2 and report.delivery.delivered == 2
    assert counts(con) == (0, 0)
    assert run(without("u7", "u8")).delivery.delivered == 0  # settled: the next run sends nothing


def test_a_rerun_of_the_same_data_has_the_same_fingerprint(con, run, delivered):
    first = held(con, lambda: run(without("u7", "u8")))
    again = held(con, lambda: run(without("u7", "u8")))

    assert again.fingerprint == first.fingerprint and again.stale_approval is None
    assert counts(con) == (0, 2)


def test_a_wrong_fingerprint_holds_again_and_says_so(con, run, delivered):
    held(con, lambda: run(without("u7", "u8")))

    exc = held(con, lambda: run(without("u7", "u8"), approve="0123456789abcdef"))

    assert exc.stale_approval == "0123456789abcdef" and "names an earlier plan" in str(exc)
    assert len(received(delivered)) == 10 and counts(con) == (0, 2)


def test_a_data_change_after_holding_supersedes_the_stale_plan_and_needs_a_new_approval(con, run, delivered):
    to_pro = {k: ("pro", f"{k}@example.com") for k in KEYS[:6]}
    first = held(con, lambda: run(rows(**to_pro)))
    to_team = {k: ("team", f"{k}@example.com") for k in KEYS[:6]}

    second = held(con, lambda: run(rows(**to_team), approve=first.fingerprint))

    assert second.fingerprint != first.fingerprint and second.stale_approval == first.fingerprint
    assert Ledger(con, create=False).counts("plans").superseded == 6
    assert counts(con) == (0, 6)
    run(rows(**to_team), approve=second.fingerprint)
    assert sorted((m["userId"], m["traits"]["plan"]) for m in received(delivered)[10:]) == [
        (k, "team") for k in KEYS[:6]]


def test_held_messages_wait_for_approval_even_when_the_plan_no_longer_trips(con, run, delivered):
    exc = held(con, lambda: run(without("u7", "u8")))

    relaxed = held(con, lambda: run(without("u7", "u8"), guard=replace(LIMITS, max_removed_share=1.0)))
    unguarded = run(without("u7", "u8"), guard=None)  # a delivery never sends a held message

    assert relaxed.tripped == () and relaxed.fingerprint == exc.fingerprint
    assert "2 messages held by an earlier run wait for approval" in str(relaxed)
    assert unguarded.delivery.delivered == 0 and counts(con) == (0, 2)
    assert len(received(delivered)) == 10


def test_a_dry_run_reports_the_verdict_and_fingerprint_without_holding(con, run, delivered):
    dry = run(without("u7", "u8"), dry_run=True)

    assert dry.verdict.holds and [t.what for t in dry.verdict.tripped] == ["removed"]
    assert counts(con) == (0, 0) and len(received(delivered)) == 10
    assert held(con, lambda: run(without("u7", "u8"))).fingerprint == dry.verdict.fingerprint


def test_a_baseline_is_not_guarded(con, segment_client, clean_sandbox):
    report = run_diff_sync(con, declared(rows()), RunReport(baseline=True), segment_client,
                           guard=replace(LIMITS, max_messages=1))

    assert report.verdict is None and report.plan.baselined == 10 and received(clean_sandbox) == []
