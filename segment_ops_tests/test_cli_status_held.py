"""`segment-ops status` names a plan the plan guard holds, with the fingerprint that approves it."""

from __future__ import annotations

from pathlib import Path

import pytest

from segment_ops.commands.status import read_status
from segment_ops.engine.guard import GuardLimits, PlanHeld
from segment_ops.engine.run import RunReport, run_diff_sync
from segment_ops.engine.store import connect
from segment_ops_tests.engine.test_plan_guard import declared, rows


def never_called():
    raise AssertionError("a held plan makes no client")


@pytest.fixture
def held(tmp_path) -> tuple[Path, str]:
    """(staging file, fingerprint) of a sync whose ten-message plan the guard held (a cap of 3)."""
    path = tmp_path / "plans.duckdb"
    con = connect(path)
    try:
        with pytest.raises(PlanHeld) as caught:
            run_diff_sync(con, declared(rows()), RunReport(), never_called, guard=GuardLimits(max_messages=3))
    finally:
        con.close()
    return path, caught.value.fingerprint


def test_status_names_the_held_plan_and_its_fingerprint(held):
    path, fingerprint = held

    [status] = read_status(path)

    assert status.counts["held"] == 10 and status.pending == 0
    assert status.detail == ("10 messages held by the plan guard: the plan waits for approval (run the sync "
                             f"with approve_plan: {fingerprint})")


def test_a_stopped_delivery_is_said_beside_the_held_plan_not_over_it(held, monkeypatch):
    path, fingerprint = held
    monkeypatch.setattr("segment_ops.engine.journal.leftovers", lambda staging_file: [staging_file])

    [status] = read_status(path)

    assert f"approve_plan: {fingerprint}" in status.detail
    assert "a stopped delivery's answers are not logged yet" in status.detail
