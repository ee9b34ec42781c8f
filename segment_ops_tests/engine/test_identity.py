"""Identity maps staged from a CSV or a warehouse query: blanks dropped, ambiguous ids left out and listed."""

from pathlib import Path

import duckdb
import pytest

from segment_ops.engine.identity import IdentityMapError, IdentitySource, stage_identity_map


@pytest.fixture
def con() -> duckdb.DuckDBPyConnection:
    connection = duckdb.connect()
    yield connection
    connection.close()


def _csv(tmp_path: Path, text: str) -> str:
    path = tmp_path / "map.csv"
    path.write_text(text)
    return str(path)


def test_csv_map_keeps_one_row_per_id_and_drops_blanks(con, tmp_path):
    source = IdentitySource(csv=_csv(tmp_path, "source_id,target_id\na@x.com,u1\na@x.com,u1\n"
                                               " b@x.com ,u2\n,u3\nc@x.com,\n"))
    stats = stage_identity_map(con, source, "ids", warehouse_url="duckdb:///:memory:")
    assert (stats.rows, stats.mapped, stats.blank, stats.ambiguous) == (5, 2, 2, 0)
    assert con.execute("SELECT * FROM ids ORDER BY source_id").fetchall() == [
        ("a@x.com", "u1"), ("b@x.com", "u2")]
    assert stats.origin.startswith("CSV ")


def test_an_id_mapped_to_two_targets_is_left_out_and_listed(con, tmp_path):
    source = IdentitySource(csv=_csv(tmp_path, "source_id,target_id\na,u1\na,u2\nb,u3\n"))
    stats = stage_identity_map(con, source, "ids", warehouse_url="duckdb:///:memory:")
    assert stats.ambiguous == 1 and stats.mapped == 1
    assert con.execute("SELECT source_id FROM ids").fetchall() == [("b",)]
    assert con.execute("SELECT * FROM ids_ambiguous").fetchall() == [("a", ["u1", "u2"])]


def test_ids_are_matched_exactly_not_case_folded(con, tmp_path):
    source = IdentitySource(csv=_csv(tmp_path, "source_id,target_id\nA@x.com,u1\na@x.com,u2\n"))
    stats = stage_identity_map(con, source, "ids", warehouse_url="duckdb:///:memory:")
    assert stats.mapped == 2 and stats.ambiguous == 0


def test_query_on_a_warehouse_file(con, tmp_path):
    warehouse = tmp_path / "wh.duckdb"
    with duckdb.connect(str(warehouse)) as wh:
        wh.execute("CREATE TABLE identity_map AS SELECT * FROM (VALUES ('a@x.com', 'u1'), ('b@x.com', 'u2')) "
                   "t(identity, user_id)")
    source = IdentitySource.from_config({"query": "SELECT identity AS source_id, user_id AS target_id "
                                                  "FROM identity_map"})
    stats = stage_identity_map(con, source, "ids", warehouse_url=f"duckdb:///{warehouse}")
    assert stats.mapped == 2 and stats.origin == "query on the warehouse"


def test_a_query_without_the_two_columns_is_a_clear_error(con, tmp_path):
    warehouse = tmp_path / "wh.duckdb"
    duckdb.connect(str(warehouse)).close()
    source = IdentitySource(query="SELECT 'a' AS identity, 'u1' AS user_id")
    with pytest.raises(IdentityMapError, match="no column.*source_id, target_id.*returns: identity, user_id"):
        stage_identity_map(con, source, "ids", warehouse_url=f"duckdb:///{warehouse}")


def test_a_missing_csv_is_a_clear_error(con, tmp_path):
    with pytest.raises(IdentityMapError, match="does not exist"):
        stage_identity_map(con, IdentitySource(csv=str(tmp_path / "nope.csv")), "ids",
                           warehouse_url="duckdb:///:memory:")


@pytest.mark.parametrize("table, problem", [
    ({}, "exactly one of"),
    ({"query": "SELECT 1", "csv": "x.csv"}, "exactly one of"),
    ({"csv": "x.csv", "url": "duckdb:///x"}, "goes with `query`"),
    ({"query": "  "}, "non-empty string"),
    ({"table": "identity_map"}, "unknown identity source key"),
])
def test_config_errors_say_what_is_wrong(table, problem):
    with pytest.raises(IdentityMapError, match=problem):
        IdentitySource.from_config(table)


def test_the_origin_never_shows_a_query_url():
    source = IdentitySource(query="SELECT 1", url="postgresql://user:hunter2@db/warehouse")
    assert "hunter2" not in source.describe() and "db" not in source.describe()
