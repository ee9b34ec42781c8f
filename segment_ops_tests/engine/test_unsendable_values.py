"""Values that would break a call for good (issue 16, part 6): NaN and infinities at any depth, `infinity` and
years outside 0001-9999 in dates and timestamps, bare NaN in JSON text. Each is found in DuckDB, set-wise, by
`diff.value_problem`, or marked while streaming (`warehouse`), and the row is rejected with the reason."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from segment_ops.engine.diff import ensure_state, plan_changes, value_problem
from segment_ops.engine.ledger import Ledger
from segment_ops.engine.spec import DiffSpec
from segment_ops.engine.store import staging
from segment_ops.engine.warehouse import UNSERIALISABLE_COLUMN, describe_staged, stage_query

CASES = [  # (DuckDB type, SQL value, reason or None)
    ("STRUCT(score DOUBLE)", "{'score': 'nan'}",
     "column 'v' holds NaN at v.score, which JSON cannot represent"),
    ("DOUBLE[]", "['1.5', '-infinity']", "column 'v' holds -Infinity at v[], which JSON cannot represent"),
    ("FLOAT[2]", "['1.5', 'infinity']", "column 'v' holds Infinity at v[], which JSON cannot represent"),
    ("MAP(VARCHAR, STRUCT(t TIMESTAMPTZ)[])", "map {'k': [{'t': '10000-01-01 00:00:00+00'}]}",
     "column 'v' holds a moment in year 10000 at v.*[].t; ISO-8601 timestamps carry years 0001-9999"),
    ("UNION(x DOUBLE, s VARCHAR)", "union_value(x := 'nan')",
     "column 'v' holds NaN at v, which JSON cannot represent"),
    ("STRUCT(d DATE)", "{'d': '-infinity'}",
     "column 'v' holds -infinity at v.d, which is not a moment ISO-8601 can write"),
    ("TIMESTAMP", "'infinity'", "column 'v' is infinity, which is not a moment ISO-8601 can write"),
    ("TIMESTAMP_NS", "'-infinity'", "column 'v' is -infinity, which is not a moment ISO-8601 can write"),
    ("DATE", "'0044-03-15 (BC)'",
     "column 'v' is a moment in year -43; ISO-8601 timestamps carry years 0001-9999"),
    ("DOUBLE", "'nan'", "column 'v' is NaN, which JSON cannot represent"),
    ("JSON", "'{\"a\": [1, NaN]}'", "column 'v' holds a bare NaN or Infinity, which JSON cannot represent"),
    ("STRUCT(j JSON)", "{'j': '[-Infinity]'}",
     "column 'v' holds a JSON text at v.j with a bare NaN or Infinity, which JSON cannot represent"),
    # fine values: nothing to reject
    ("JSON", r"""'{"a": "NaN", "b": "x\", Infinity"}'""", None),  # in strings: fine
    ("STRUCT(score DOUBLE, l DOUBLE[], t TIMESTAMP)", "{'score': 1.5, 'l': [], 't': '9999-12-31 23:59:59'}",
     None),
    ("DATE", "'0001-01-01'", None),
    ("STRUCT(score DOUBLE)", "NULL", None),
]


@pytest.mark.parametrize(("type_name", "value", "reason"), CASES)
def test_a_value_no_json_or_iso_8601_reader_can_take_has_a_reason(type_name, value, reason):
    con = duckdb.connect()
    con.execute(f"CREATE TABLE r AS SELECT ({value})::{type_name} AS v")
    problem = value_problem("r.v", type_name, "v")

    assert con.execute(f"SELECT {problem} FROM r").fetchall() == [(reason,)]


def test_columns_that_cannot_hold_such_values_cost_no_sql():
    assert all(value_problem("r.v", t, "v") is None
               for t in ("VARCHAR", "BIGINT", "DECIMAL(18,3)", "BOOLEAN", "VARCHAR[]", "STRUCT(a INTEGER[])"))


def test_the_streaming_path_marks_nested_nan_instead_of_sending_null(tmp_path: Path):
    path = tmp_path / "warehouse.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE t AS SELECT * FROM (VALUES ('a', {'x': [1.0, 'nan'::DOUBLE]}), "
                "('b', {'x': [2.0]})) v(id, attrs)")
    con.close()
    staging = duckdb.connect()

    stage_query(staging, f"duckdb:///{path}", "SELECT * FROM t", "staged", fast_path=False)

    assert staging.execute(f"SELECT id, {UNSERIALISABLE_COLUMN} FROM staged ORDER BY id").fetchall() == [
        ("a", "column 'attrs' holds NaN at attrs.x[], which JSON cannot represent"), ("b", None)]


def test_a_date_beyond_the_timestamp_range_is_rejected_rather_than_failing_the_run(tmp_path: Path):
    spec = DiffSpec(sync="people", source="people.sql", call="identify", mode="upsert", key="id",
                    user_id="id", timestamp="born")
    with staging(tmp_path / "staging.duckdb") as con:
        ensure_state(con)
        con.execute("CREATE TEMP TABLE staged AS SELECT * FROM (VALUES ('a', DATE '2024-01-02'), "
                    "('b', DATE '5000000-01-01')) t(id, born)")

        plan = plan_changes(con, Ledger(con), spec, describe_staged(con, "staged", "test"), dry_run=True)

    assert (plan.added, plan.rejected) == (1, 1)
    assert plan.rejection_samples == [
        ("b", "column 'born' is a moment in year 5000000; ISO-8601 timestamps carry years 0001-9999")]
