"""`stage_query` on PostgreSQL through psycopg: `COPY (<query>) TO STDOUT` read by DuckDB must stage the same
table, type for type and value for value, as the streaming path (rows through a server-side cursor, the
reference), so that the diff's row hashes do not change with the path; what COPY cannot read as the streaming
path does is streamed, and the method says why.

Each test works in a schema of its own on the PostgreSQL server of this machine, dropped afterwards."""

from __future__ import annotations

import datetime as dt
import math
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pytest

from segment_ops.engine import warehouse
from segment_ops.engine.warehouse import UNSERIALISABLE_COLUMN, WarehouseError, stage_query

pytestmark = pytest.mark.postgres

PG = "postgresql://postgres@127.0.0.1:5432/test"

TRICKY = """
CREATE TYPE mood AS ENUM ('ok', 'sad');
CREATE DOMAIN email AS text;
CREATE TABLE tricky (id int4, t text, vc varchar(12), bp char(5), nm name, i2 int2, i8 int8, f4 float4,
                     f8 float8, n numeric, n2 numeric(12,2), b bool, d date, ts timestamp, tstz timestamptz,
                     u uuid, m mood, e email, nothing text);
INSERT INTO tricky VALUES
 (1, '', '', '', '', 0, 0, 0, 0, 0, 0, false, '2024-02-29', '2024-02-29 23:59:59.999999',
  '2024-03-01 12:00:00.123456+02', '7e1b1a3e-8a44-4a5e-9d0a-2b8f1f0c0c01', 'ok', '', NULL),
 (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL),
 (3, E'one\\rtwo\\nthree\\r\\nfour', 'a,b', 'x', 'nm', -32768, 9223372036854775807, 0.1, 0.1,
  123456789012345678901234567890.123456789, 12.5, true, '0001-01-01', '0001-01-01 00:00:00',
  '2024-06-30 23:30:00-09:30', '00000000-0000-0000-0000-000000000000', 'sad', 'a@b.c', NULL),
 (4, 'say "hi", \\N and \\. and \\\\', '"', '" ,\\', '', 32767, -9223372036854775808, 'NaN', 'NaN', 'NaN',
  -0.01, NULL, '9999-12-31', '9999-12-31 23:59:59.999999', '2024-12-31 23:59:59.999999+14', NULL, NULL,
  'x', NULL),
 (5, 'ünïcødé ☃ 😀 and a tab	here', 'NULL', '', '', 1, 1, 'Infinity', '-Infinity', 'Infinity', 0, true,
  '1970-01-01', '1970-01-01 00:00:00', '1970-01-01 00:00:00+05:45', NULL, NULL, NULL, NULL),
 (6, '"', '""', 'null', 'NULL', 2, 2, 3.4e38, 1.7976931348623157e308, '-Infinity', 99999999.99, false,
  '2000-01-01', '2000-01-01 12:00:00', '1900-01-01 00:00:00+00', NULL, NULL, NULL, NULL),
 (7, ',', ' padded ', ' ', 'x', 3, 3, 1e-45, 5e-324, 1e400, NULL, true, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL),
 (8, 'x', NULL, NULL, NULL, NULL, NULL, -0.0, -0.0, 0.000000000000000000000000000000000000001, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL);
-- and many generated rows: numerics of many digits, timestamps at every microsecond and offset, long text
INSERT INTO tricky (id, t, n, n2, f4, f8, tstz, ts, d, u)
SELECT 100 + i, repeat(chr(65 + i % 26) || E',"\\n', i % 50),
       (i * 7919)::numeric / 9973 * 10 ^ (i % 40 - 20), (i * 37 % 100000 / 100.0)::numeric(12,2),
       (i / 7.0)::float4, i / 7.0 * 1e-10, timestamptz '2024-01-01 00:00:00+00' + i * interval '37.000001 s',
       timestamp '1999-12-31 23:00:00' + i * interval '1.234567 s', date '2000-01-01' + i, gen_random_uuid()
FROM generate_series(1, 3000) AS s(i);
"""
EVERY_COLUMN = "SELECT * FROM tricky"


@pytest.fixture
def schema() -> Iterator[str]:
    name = f"segment_ops_copy_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG, autocommit=True) as pg:
        pg.execute(f"CREATE SCHEMA {name}")
    try:
        yield name
    finally:
        with psycopg.connect(PG, autocommit=True) as pg:
            pg.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


@pytest.fixture
def url(schema: str) -> str:
    """A warehouse URL whose search_path is a fresh schema holding `tricky`."""
    with psycopg.connect(PG, autocommit=True, options=f"-csearch_path={schema}") as pg:
        pg.execute(TRICKY)
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/test?options=-csearch_path%3D{schema}"


def staged_both_ways(url: str, sql: str) -> tuple[tuple[str, list, list], tuple[str, list, list]]:
    """(method, DESCRIBE, rows) of `sql` staged by the default path, then by the streaming path; doubles as
    `float.hex()`, so that NaN equals NaN and -0.0 differs from 0.0."""
    con = duckdb.connect()
    results = []
    for table, fast in (("copied", True), ("streamed", False)):
        staged = stage_query(con, url, sql, table, fast_path=fast)
        described = [row[:2] for row in con.execute(f"DESCRIBE {table}").fetchall()]
        rows = [tuple(v.hex() if isinstance(v, float) else v for v in row)
                for row in con.execute(f"SELECT * FROM {table} ORDER BY ALL").fetchall()]
        results.append((staged.method, described, rows))
    return results[0], results[1]


def test_copy_stages_every_type_it_takes_as_the_streaming_path_does(url: str, monkeypatch):
    monkeypatch.setattr(warehouse, "COPY_SEGMENT_BYTES", 64 * 1024)  # a few files, rows across their ends

    (method, types, rows), (streamed_method, streamed_types, streamed_rows) = staged_both_ways(url,
                                                                                               EVERY_COLUMN)

    assert (method, streamed_method) == ("postgresql copy", "sqlalchemy stream")
    assert types == streamed_types
    assert len(rows) == 3008
    assert rows == streamed_rows


def test_copy_keeps_what_csv_could_confuse(url: str):
    """A few values spelled out, so that the comparison above cannot pass on two equally wrong tables."""
    (method, types, rows), _ = staged_both_ways(url, "SELECT id, t, vc, bp, f8, n, nothing FROM tricky "
                                                     "WHERE id < 100")

    assert method == "postgresql copy"
    assert dict(types) == {"id": "BIGINT", "t": "VARCHAR", "vc": "VARCHAR", "bp": "VARCHAR", "f8": "DOUBLE",
                           "n": "DOUBLE", "nothing": '"NULL"', UNSERIALISABLE_COLUMN: "VARCHAR"}
    by_id = {row[0]: row for row in rows}
    assert by_id[1][1:4] == ("", "", "     ") and by_id[2][1:4] == (None, None, None)
    assert by_id[3][1:3] == ("one\rtwo\nthree\r\nfour", "a,b")
    assert by_id[4][1:4] == ('say "hi", \\N and \\. and \\\\', '"', '" ,\\ ')  # char(5): padded
    assert by_id[5][1:3] == ("ünïcødé ☃ 😀 and a tab\there", "NULL")
    assert (by_id[3][5], by_id[7][5]) == ((1.2345678901234568e29).hex(), math.inf.hex())
    assert (by_id[4][4], by_id[5][4], by_id[4][5]) == ("nan", (-math.inf).hex(), "nan")


def test_a_carriage_return_in_a_value_is_no_line_ending(url: str):
    """Told nothing, DuckDB may take the \r of a short file's first row for its line ending."""
    (method, _, rows), _ = staged_both_ways(url, "SELECT id, t FROM tricky WHERE id = 3")

    assert (method, rows) == ("postgresql copy", [(3, "one\rtwo\nthree\r\nfour", None)])


def test_timestamps_and_what_the_query_computes_from_them_follow_the_sessions_time_zone(url: str):
    in_st_johns = url + "%20-cTimeZone%3DAmerica/St_Johns"
    sql = "SELECT id, tstz, tstz::date AS local_day, tstz::text AS shown, ts, d FROM tricky"

    (method, types, rows), (_, streamed_types, streamed_rows) = staged_both_ways(in_st_johns, sql)

    assert method == "postgresql copy"
    assert (types, rows) == (streamed_types, streamed_rows)
    by_id = {row[0]: row for row in rows}
    assert by_id[1][2:4] == (dt.date(2024, 3, 1), "2024-03-01 06:30:00.123456-03:30")


def test_an_empty_result_has_the_streaming_paths_types(url: str):
    (method, types, rows), (_, streamed_types, _) = staged_both_ways(url, "SELECT * FROM tricky WHERE false")

    assert (method, rows) == ("postgresql copy", [])
    assert types == streamed_types


@pytest.mark.parametrize(("sql", "shown"), [
    ("SELECT id, '{\"a\": [1, 2.0]}'::jsonb AS v FROM tricky", "jsonb"),
    ("SELECT id, ARRAY[id, 2] AS v FROM tricky", "integer[]"),
    ("SELECT id, interval '1 day' AS v FROM tricky", "interval"),
    ("SELECT id, time '12:00' AS v FROM tricky", "time without time zone"),
    ("SELECT id, '\\x00ff'::bytea AS v FROM tricky", "bytea"),
], ids=["jsonb", "array", "interval", "time", "bytea"])
def test_a_column_of_a_type_copy_does_not_read_leaves_the_query_to_the_streaming_path(url: str, sql: str,
                                                                                      shown: str):
    (method, types, rows), (_, streamed_types, streamed_rows) = staged_both_ways(url, sql)

    assert method == f"sqlalchemy stream (column 'v' is {shown}, which COPY does not read)"
    assert (types, rows) == (streamed_types, streamed_rows)


@pytest.mark.parametrize("value", ["date 'infinity'", "timestamp '-infinity'", "timestamptz 'infinity'",
                                   "date '0044-03-15 BC'", "timestamp '10000-01-01'"])
def test_a_date_psycopg_cannot_read_fails_as_on_the_streaming_path(url: str, value: str):
    sql = f"SELECT id, CASE WHEN id = 7 THEN {value} END AS v FROM tricky"

    with pytest.raises(WarehouseError) as copied:
        stage_query(duckdb.connect(), url, sql, "copied")
    with pytest.raises(WarehouseError) as streamed:
        stage_query(duckdb.connect(), url, sql, "streamed", fast_path=False)

    assert str(copied.value) == str(streamed.value)
    assert "too large" in str(copied.value) or "too small" in str(copied.value)


def test_dates_not_printed_as_iso_leave_the_query_to_the_streaming_path(url: str):
    in_sql_style = url + "%20-cDateStyle%3DSQL,DMY"

    (method, types, rows), (_, streamed_types, streamed_rows) = staged_both_ways(
        in_sql_style, "SELECT id, d FROM tricky")

    assert method == "sqlalchemy stream (DateStyle is SQL, DMY, not ISO)"
    assert (types, rows) == (streamed_types, streamed_rows)


def test_a_row_duckdb_cannot_read_leaves_the_query_to_the_streaming_path(url: str, monkeypatch):
    monkeypatch.setattr(warehouse, "COPY_SEGMENT_BYTES", 64 * 1024)  # COPY still runs when DuckDB fails
    sql = "SELECT id, CASE WHEN id = 2000 THEN repeat('x', 5000000) ELSE t END AS t FROM tricky"

    (method, types, rows), (_, streamed_types, streamed_rows) = staged_both_ways(url, sql)

    assert method.startswith("sqlalchemy stream (DuckDB cannot read COPY's output: ")
    assert (types, rows) == (streamed_types, streamed_rows)


def test_a_query_failing_while_copy_runs_raises_the_warehouses_message(url: str):
    with pytest.raises(WarehouseError) as caught:
        stage_query(duckdb.connect(), url, "SELECT id, 1 / (id - 2000) AS x FROM tricky", "staged")

    assert str(caught.value) == "the warehouse refused the query: division by zero"


def test_the_warehouses_message_never_shows_the_password(url: str):
    with_password = url.replace("postgres@", "postgres:hunter2@")  # trust auth: any password connects
    sql = "SELECT id, CASE WHEN id = 2000 THEN ('hunter' || (id - 1998))::int END AS x FROM tricky"

    with pytest.raises(WarehouseError) as caught:
        stage_query(duckdb.connect(), with_password, sql, "staged")

    assert str(caught.value) == ('the warehouse refused the query: invalid input syntax for type integer: '
                                 '"***"')


def test_a_query_with_a_typo_raises_what_the_streaming_path_raises(url: str):
    with pytest.raises(WarehouseError) as copied:
        stage_query(duckdb.connect(), url, "SELECT id, nmae FROM tricky", "copied")
    with pytest.raises(WarehouseError) as streamed:
        stage_query(duckdb.connect(), url, "SELECT id, nmae FROM tricky", "streamed", fast_path=False)

    assert str(copied.value) == str(streamed.value)
    assert 'column "nmae" does not exist' in str(copied.value)


@pytest.mark.parametrize("fast_path", [True, False], ids=["copy", "stream"])
@pytest.mark.parametrize(("select", "named"), [("id, id", "id, id"), ('id, id AS "ID"', "id, ID")])
def test_a_column_name_twice_is_refused(url: str, fast_path: bool, select: str, named: str):
    with pytest.raises(WarehouseError, match=f"returns a column name twice: {named}"):
        stage_query(duckdb.connect(), url, f"SELECT {select} FROM tricky", "staged", fast_path=fast_path)


def test_copys_files_go_to_the_staging_files_temp_directory_and_are_removed(url: str, tmp_path: Path,
                                                                             monkeypatch):
    monkeypatch.setattr(warehouse, "COPY_SEGMENT_BYTES", 64 * 1024)
    written: list[Path] = []
    insert_segment = warehouse._insert_segment

    def recorded(con: duckdb.DuckDBPyConnection, insert: str, out: Any) -> None:
        written.append(Path(out.name))
        insert_segment(con, insert, out)

    monkeypatch.setattr(warehouse, "_insert_segment", recorded)
    con = duckdb.connect(str(tmp_path / "staging.duckdb"))

    staged = stage_query(con, url, EVERY_COLUMN, "staged")
    with pytest.raises(WarehouseError):
        stage_query(con, url, "SELECT id, 1 / (id - 2000) AS x FROM tricky", "failed")

    assert staged.method == "postgresql copy" and len(written) > 2
    assert {path.parent.parent for path in written} == {tmp_path / "staging.duckdb.tmp"}
    assert not any(path.parent.exists() for path in written)


@pytest.mark.parametrize(("scheme", "method"), [("postgresql", "postgresql copy"),
                                                ("postgresql+psycopg", "postgresql copy"),
                                                ("postgresql+psycopg2", "sqlalchemy stream")])
def test_copy_is_the_path_of_psycopg_3(url: str, scheme: str, method: str):
    assert stage_query(duckdb.connect(), url.replace("postgresql+psycopg", scheme), "SELECT id FROM tricky",
                       "staged").method == method
