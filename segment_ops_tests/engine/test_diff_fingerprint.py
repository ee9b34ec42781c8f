"""The diff's fingerprints: an equal one proves a row unchanged without building its body; one taken under
another scheme (another DuckDB, another spec) proves nothing, and the delivered hash decides instead."""

from __future__ import annotations

import duckdb
import pytest

from segment_ops.engine.diff import ensure_state, plan_changes
from segment_ops.engine.ledger import Ledger
from segment_ops.engine.run import DiffSync, RunReport, run_diff_sync
from segment_ops.engine.spec import DiffSpec
from segment_ops.engine.store import connect
from segment_ops.engine.warehouse import UNSERIALISABLE_COLUMN, StagedResult
from segment_ops_tests.engine.conftest import stage_columns

SPEC = DiffSpec(sync="plans", source="plans.test", call="identify", mode="upsert", key="user_id",
                user_id="user_id", fields=("plan", "seats"))


def staged(rows: dict[str, tuple[str, int]]):
    def stage(con: duckdb.DuckDBPyConnection) -> StagedResult:
        return stage_columns(con, "plans_staged", {
            "user_id": ("VARCHAR", list(rows)), "plan": ("VARCHAR", [p for p, _ in rows.values()]),
            "seats": ("INTEGER", [s for _, s in rows.values()])})
    return stage


def run(con, rows, client, spec: DiffSpec = SPEC, **flags) -> RunReport:
    report = RunReport(**flags)
    return run_diff_sync(con, DiffSync(spec, staged(rows)), report, client)


@pytest.fixture
def con(tmp_path):
    connection = connect(tmp_path / "plans.duckdb")
    yield connection
    connection.close()


def fingerprints(con) -> dict[str, int | None]:
    return dict(con.execute("SELECT record_key, fingerprint FROM rev_snapshot").fetchall())


ROWS = {"u1": ("free", 1), "u2": ("pro", 5), "u3": ("pro", 9)}


def test_the_first_run_records_a_fingerprint_per_delivered_key_and_the_scheme(con, segment_client,
                                                                             clean_sandbox):
    run(con, ROWS, segment_client)
    prints = fingerprints(con)
    assert set(prints) == set(ROWS) and all(isinstance(v, int) for v in prints.values())
    assert len(set(prints.values())) == 3
    scheme = con.execute("SELECT fingerprint_scheme FROM rev_state").fetchone()[0]
    assert scheme.startswith(duckdb.__version__ + ":")


def test_an_equal_fingerprint_proves_a_row_unchanged_without_its_body_being_hashed(con, segment_client,
                                                                                   clean_sandbox):
    run(con, ROWS, segment_client)
    # Were the body hashed, this stored hash (of no real body) would make u2 a change; the fingerprint,
    # equal to u2's, settles it first.
    con.execute("UPDATE rev_snapshot SET row_hash = 'not the hash of any body' WHERE record_key = 'u2'")
    again = run(con, {**ROWS, "u3": ("enterprise", 9)}, segment_client)
    assert (again.plan.changed, again.plan.unchanged) == (1, 2)
    assert [m["userId"] for m in clean_sandbox.received("segment")][-1:] == ["u3"]


def test_another_scheme_rechecks_every_row_against_the_delivered_hash_and_sends_nothing_unchanged(
        con, segment_client, clean_sandbox):
    run(con, ROWS, segment_client)
    before = fingerprints(con)
    # What a DuckDB upgrade looks like to the diff: the recorded scheme is not this one.
    con.execute("UPDATE rev_state SET fingerprint_scheme = '0.0.1:0000000000000000'")
    con.execute("UPDATE rev_snapshot SET fingerprint = fingerprint + 1")
    sent_before = len(clean_sandbox.received("segment"))
    again = run(con, ROWS, segment_client)
    assert (again.plan.added, again.plan.changed, again.plan.unchanged, again.plan.planned) == (0, 0, 3, 0)
    assert len(clean_sandbox.received("segment")) == sent_before
    assert fingerprints(con) == before  # re-taken from the rows, not kept from the old scheme
    scheme = con.execute("SELECT fingerprint_scheme FROM rev_state").fetchone()[0]
    assert scheme.startswith(duckdb.__version__)


def test_under_another_scheme_a_row_whose_delivered_hash_differs_is_sent(con, segment_client, clean_sandbox):
    run(con, ROWS, segment_client)
    con.execute("UPDATE rev_snapshot SET row_hash = 'delivered under another body' WHERE record_key = 'u2'")
    con.execute("UPDATE rev_state SET fingerprint_scheme = 'another'")
    again = run(con, ROWS, segment_client)
    assert (again.plan.changed, again.plan.unchanged) == (1, 2)
    assert clean_sandbox.received("segment")[-1]["userId"] == "u2"


def test_a_changed_spec_is_another_scheme_so_same_values_with_another_body_are_sent(con, segment_client,
                                                                                    clean_sandbox):
    run(con, ROWS, segment_client)
    # The same columns, so the same fingerprints; but the ids now go out as anonymousId.
    anonymous = DiffSpec(sync="plans", source="plans.test", call="identify", mode="upsert", key="user_id",
                         anonymous_id="user_id", fields=("plan", "seats"))
    again = run(con, ROWS, segment_client, spec=anonymous)
    assert (again.plan.changed, again.plan.unchanged) == (3, 0)
    assert all("anonymousId" in m and "userId" not in m for m in clean_sandbox.received("segment")[-3:])


def test_a_dry_run_under_another_scheme_counts_by_the_delivered_hash_and_writes_nothing(con, segment_client,
                                                                                        clean_sandbox):
    run(con, ROWS, segment_client)
    before = fingerprints(con)
    con.execute("UPDATE rev_state SET fingerprint_scheme = 'another'")
    con.execute("UPDATE rev_snapshot SET row_hash = 'delivered under another body' WHERE record_key = 'u2'")
    dry = run(con, {**ROWS, "u1": ("pro", 1)}, segment_client, dry_run=True)
    assert (dry.plan.changed, dry.plan.unchanged) == (2, 1)
    assert con.execute("SELECT fingerprint_scheme FROM rev_state").fetchone()[0] == "another"
    assert fingerprints(con) == before


def test_a_value_that_changes_and_comes_back_before_delivery_is_unchanged_and_its_pending_change_superseded(
        con, segment_client, clean_sandbox):
    run(con, ROWS, segment_client)
    ledger = Ledger(con)
    ensure_state(con)
    stage = staged({**ROWS, "u1": ("enterprise", 1)})
    plan = plan_changes(con, ledger, SPEC, stage(con), run_id="r1")  # planned, never delivered
    assert plan.planned == 1
    back = plan_changes(con, ledger, SPEC, staged(ROWS)(con), run_id="r2")
    assert (back.changed, back.unchanged, back.superseded) == (0, 3, 1)
    assert ledger.counts("plans").pending == 0


def one_row(values_sql: str, types: dict[str, str]):
    """A stage of one row, u1, with the columns `values_sql` makes (of `types`)."""
    def stage(con: duckdb.DuckDBPyConnection) -> StagedResult:
        con.execute(f"CREATE OR REPLACE TEMP TABLE plans_staged AS SELECT 'u1' AS user_id, {values_sql}, "
                    f"NULL::VARCHAR AS {UNSERIALISABLE_COLUMN}")
        return StagedResult("plans_staged", 1, ("user_id", *types), {"user_id": "VARCHAR", **types}, 0.0,
                            "test")
    return stage


@pytest.mark.parametrize(("before", "after", "types"), [
    ("NULL::VARCHAR[] AS tags", "[]::VARCHAR[] AS tags", {"tags": "VARCHAR[]"}),
    ("['a', 'b'] AS active, ['c'] AS cancelled", "['a'] AS active, ['b', 'c'] AS cancelled",
     {"active": "VARCHAR[]", "cancelled": "VARCHAR[]"}),
    ("[[1, 2]] AS grid", "[[1], [2]] AS grid", {"grid": "INTEGER[][]"}),
    ("NULL::STRUCT(city VARCHAR) AS address", "{'city': NULL::VARCHAR} AS address",
     {"address": "STRUCT(city VARCHAR)"}),
    ("0.0::DOUBLE AS score", "-(0.0::DOUBLE) AS score", {"score": "DOUBLE"}),
], ids=["null list to empty", "an item moves between two lists", "list boundaries", "null struct to nulls",
        "zero to negative zero"])
def test_values_duckdbs_hash_takes_for_equal_but_json_writes_apart_are_a_change(con, segment_client,
                                                                                clean_sandbox, before, after,
                                                                                types):
    spec = DiffSpec(sync="plans", source="plans.test", call="identify", mode="upsert", key="user_id",
                    user_id="user_id", fields=tuple(types))
    run_diff_sync(con, DiffSync(spec, one_row(before, types)), RunReport(), segment_client)
    again = run_diff_sync(con, DiffSync(spec, one_row(after, types)), RunReport(), segment_client)
    assert (again.plan.changed, again.plan.unchanged) == (1, 0)
    assert len(clean_sandbox.received("segment")) == 2


def test_another_session_time_zone_is_another_scheme(con, segment_client, clean_sandbox):
    run(con, ROWS, segment_client)
    before = con.execute("SELECT fingerprint_scheme FROM rev_state").fetchone()[0]
    con.execute("SET TimeZone = 'America/New_York'")
    again = run(con, ROWS, segment_client)
    assert (again.plan.changed, again.plan.unchanged) == (0, 3)  # the same bodies, compared again
    after = con.execute("SELECT fingerprint_scheme FROM rev_state").fetchone()[0]
    assert after != before and after.endswith("America/New_York")
