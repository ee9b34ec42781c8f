"""`compile_queries`: each model query run as `LIMIT 0` over one connection (DuckDB file and SQLAlchemy)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import duckdb
import pytest

from segment_ops.engine.warehouse import WarehouseError, compile_queries

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
