"""`compile_queries`: each model query run as `LIMIT 0` over one connection (DuckDB file and SQLAlchemy); and
a model query ending in a comment, compiled and staged as a run stages it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import duckdb
import pytest

from segment_ops.engine.warehouse import WarehouseError, compile_queries, stage_query
from segment_ops.syncs.reverse_etl.model import parse_model

QUERIES = {"good": "SELECT id, name FROM people", "typo": "SELECT id, nmae FROM people"}


@pytest.fixture(params=["duckdb", "sqlite"])
def url(request, tmp_path: Path) -> str:
    path = tmp_path / f"warehouse.{request.param}"
    connect = duckdb.connect if request.param == "duckdb" else sqlite3.connect
    con = connect(str(path))
    con.execute("CREATE TABLE people (id INTEGER, name VARCHAR)")
    con.execute("INSERT INTO people VALUES (1, 'Ada')")
    con.commit()
    con.close()
    return f"{request.param}:///{path}"


def test_each_query_answers_its_columns_or_the_warehouses_refusal(url: str):
    found = compile_queries(url, QUERIES)

    assert found["good"] == ("id", "name")
    assert isinstance(found["typo"], WarehouseError) and "nmae" in str(found["typo"])


def test_an_unreachable_warehouse_raises(tmp_path: Path):
    with pytest.raises(WarehouseError, match="cannot"):
        compile_queries(f"duckdb:///{tmp_path}/missing/warehouse.duckdb", QUERIES)


COMMENTED_MODEL = """-- description: Traits of the people table, for the tests.
-- owner: team:growth
-- call: identify
-- mode: upsert
-- key: id
-- user_id: id
SELECT id, name FROM people
-- note: a comment on the query's last line
"""


@pytest.fixture
def commented_sql(tmp_path: Path) -> str:
    (tmp_path / "models").mkdir()
    path = tmp_path / "models" / "people.sql"
    path.write_text(COMMENTED_MODEL)
    sql = parse_model(path).sql
    assert sql.endswith("-- note: a comment on the query's last line")
    return sql


def test_a_model_query_ending_in_a_comment_compiles(url: str, commented_sql: str):
    assert compile_queries(url, {"people": commented_sql}) == {"people": ("id", "name")}


@pytest.mark.parametrize("fast_path", [True, False], ids=["attach", "stream"])
def test_a_model_query_ending_in_a_comment_is_staged(url: str, commented_sql: str, fast_path: bool):
    con = duckdb.connect()
    try:
        staged = stage_query(con, url, commented_sql, "staged", fast_path=fast_path)

        assert (staged.rows, staged.columns) == (1, ("id", "name"))
        assert con.execute("SELECT id, name FROM staged").fetchall() == [(1, "Ada")]
    finally:
        con.close()
