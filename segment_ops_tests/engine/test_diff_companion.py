"""The diff with a companion track call beside each change (Heap's entered/exited): two calls, settled
together."""

from __future__ import annotations

import duckdb
import pytest

from segment_ops.engine.diff import advance_snapshot, ensure_state, plan_changes
from segment_ops.engine.ledger import DELIVERED, Ledger
from segment_ops.engine.spec import Companion, DiffSpec
from segment_ops.engine.warehouse import UNSERIALISABLE_COLUMN, StagedResult

MODEL = DiffSpec(sync="heap_vip", source="vip.toml", call="identify", mode="mirror", key="user_id",
                 user_id="user_id", fields=("vip",), removal_fields={"vip": False},
                 companion=Companion("Audience Entered", "Audience Exited", {"audience_key": "vip"}))


@pytest.fixture
def con():
    connection = duckdb.connect()
    ensure_state(connection)
    yield connection
    connection.close()


def stage(con: duckdb.DuckDBPyConnection, users: list[str]) -> StagedResult:
    con.execute(f"CREATE OR REPLACE TEMP TABLE staged AS SELECT unnest(?::VARCHAR[]) AS user_id, "
                f"true AS vip, "
                f"NULL::VARCHAR AS {UNSERIALISABLE_COLUMN}", [users])
    return StagedResult("staged", len(users), ("user_id", "vip"), {"user_id": "VARCHAR", "vip": "BOOLEAN"},
                        0.0, "t")


def deliver(ledger: Ledger, call_type: str | None = None) -> None:
    rows = ledger.con.execute("SELECT seq FROM ledger WHERE sync = 'heap_vip' AND status = 'pending'"
                              + (f" AND call_type = '{call_type}'" if call_type else "")).fetchall()
    ledger.log_outcomes("heap_vip", [(seq, DELIVERED, 1, None) for (seq,) in rows])


def payloads(con: duckdb.DuckDBPyConnection) -> list[str]:
    return [p for (p,) in con.execute("SELECT payload FROM ledger ORDER BY seq").fetchall()]


def test_an_added_key_plans_its_call_and_its_entered_event(con):
    ledger = Ledger(con)

    plan = plan_changes(con, ledger, MODEL, stage(con, ["u1"]))

    assert (plan.added, plan.planned) == (1, 2)
    identify, track = payloads(con)
    assert identify.startswith('{"type":"identify","userId":"u1","traits":{"vip":true}')
    assert track.startswith('{"type":"track","userId":"u1","event":"Audience Entered",'
                            '"properties":{"audience_key":"vip"}')


def test_a_removed_key_sends_the_removal_traits_and_its_exited_event(con):
    ledger = Ledger(con)
    plan_changes(con, ledger, MODEL, stage(con, ["u1"]))
    deliver(ledger)
    advance_snapshot(con, "heap_vip")

    plan = plan_changes(con, ledger, MODEL, stage(con, []))

    assert (plan.removed, plan.planned) == (1, 2)
    assert payloads(con)[2].startswith('{"type":"identify","userId":"u1","traits":{"vip":false}')
    assert payloads(con)[3].startswith('{"type":"track","userId":"u1","event":"Audience Exited"')


def test_a_change_advances_only_once_both_calls_are_delivered(con):
    ledger = Ledger(con)
    plan_changes(con, ledger, MODEL, stage(con, ["u1"]))
    deliver(ledger, "track")

    assert advance_snapshot(con, "heap_vip") == 0
    deliver(ledger, "identify")
    assert advance_snapshot(con, "heap_vip") == 1


def test_replanning_a_half_delivered_change_sends_only_the_missing_call(con):
    ledger = Ledger(con)
    plan_changes(con, ledger, MODEL, stage(con, ["u1"]))
    deliver(ledger, "track")
    advance_snapshot(con, "heap_vip")

    again = plan_changes(con, ledger, MODEL, stage(con, ["u1"]))

    assert (again.planned, again.already_known) == (0, 2)
    assert ledger.counts("heap_vip").pending == 1


def snapshot_of(con: duckdb.DuckDBPyConnection, key: str) -> tuple | None:
    return con.execute("SELECT removed, version FROM rev_snapshot WHERE record_key = ?", [key]).fetchone()


@pytest.mark.parametrize("delivered_part", ["identify", "track"])
def test_half_delivered_then_the_key_leaves_sends_the_exit_in_the_same_run(con, delivered_part):
    """Run 1 delivers one of u1's two entered calls; before the other is sent, Heap says u1 left. What
    Segment got must be undone: the next plan sends the trait false and "Audience Exited"."""
    ledger = Ledger(con)
    plan_changes(con, ledger, MODEL, stage(con, ["u1"]))
    deliver(ledger, delivered_part)
    advance_snapshot(con, "heap_vip")

    plan = plan_changes(con, ledger, MODEL, stage(con, []))

    assert (plan.removed, plan.superseded, plan.planned) == (1, 1, 2)
    pending = [p for (p,) in con.execute("SELECT payload FROM ledger WHERE status = 'pending' ORDER BY seq")
               .fetchall()]
    assert pending[0].startswith('{"type":"identify","userId":"u1","traits":{"vip":false}')
    assert pending[1].startswith('{"type":"track","userId":"u1","event":"Audience Exited"')


@pytest.mark.parametrize("delivered_part", ["identify", "track"])
def test_half_delivered_then_the_key_leaves_ends_with_the_key_removed_in_the_snapshot(con, delivered_part):
    ledger = Ledger(con)
    plan_changes(con, ledger, MODEL, stage(con, ["u1"]))
    deliver(ledger, delivered_part)
    advance_snapshot(con, "heap_vip")
    plan_changes(con, ledger, MODEL, stage(con, []))
    deliver(ledger)
    advance_snapshot(con, "heap_vip")

    again = plan_changes(con, ledger, MODEL, stage(con, []))

    assert snapshot_of(con, "u1") == (True, 2)
    assert (again.planned, ledger.counts("heap_vip").pending) == (0, 0)


def test_half_delivered_exit_then_the_key_returns_sends_it_entered_again(con):
    ledger = Ledger(con)
    plan_changes(con, ledger, MODEL, stage(con, ["u1"]))
    deliver(ledger)
    advance_snapshot(con, "heap_vip")
    plan_changes(con, ledger, MODEL, stage(con, []))
    deliver(ledger, "identify")  # trait false reached Segment, "Audience Exited" did not
    advance_snapshot(con, "heap_vip")

    plan = plan_changes(con, ledger, MODEL, stage(con, ["u1"]))

    assert (plan.added, plan.planned) == (1, 2)
    assert payloads(con)[-2].startswith('{"type":"identify","userId":"u1","traits":{"vip":true}')
    assert payloads(con)[-1].startswith('{"type":"track","userId":"u1","event":"Audience Entered"')


def test_a_half_delivered_change_still_wanted_keeps_its_missing_call_pending(con):
    ledger = Ledger(con)
    plan_changes(con, ledger, MODEL, stage(con, ["u1"]))
    deliver(ledger, "identify")

    plan = plan_changes(con, ledger, MODEL, stage(con, ["u1", "u2"]))

    assert (plan.superseded, plan.added) == (0, 2)
    assert snapshot_of(con, "u1") is None
    assert con.execute("SELECT call_type FROM ledger WHERE record_key = 'u1' "
                       "AND status = 'pending'").fetchall() == [("track",)]
