"""Read a model's query from the warehouse into a DuckDB staging table, in chunks (ARCHITECTURE rule 4).

Any SQLAlchemy URL works: rows stream through a server-side cursor (`stream_results`) and `fetchmany`,
each chunk becomes an Arrow table column by column and is appended to the staging table, so at most
one chunk is ever held in Python. A DuckDB warehouse file is ATTACHed read-only and copied by DuckDB
itself (the fast path: no Python in the loop), or streamed through DuckDB's own DB-API cursor in the
same chunks; every path gives the same typed table. A PostgreSQL warehouse through psycopg is read with
`COPY (<query>) TO STDOUT` as CSV that DuckDB parses, `COPY_SEGMENT_BYTES` at a time (`_stage_copied`:
which column types it takes, and when it leaves a query to the streaming path).

Values Arrow cannot take as they are get the explicit rules of `calls.to_json_value` (UUID to text,
dicts and lists to JSON; Decimal to a double, as the DuckDB path sends DECIMAL columns); a value no rule
covers, or a NaN or infinity inside a dict or list, leaves the row's `UNSERIALISABLE_COLUMN` set to the
reason, and the diff rejects that row.
"""

from __future__ import annotations

import datetime as dt
import decimal
import functools
import importlib.metadata
import json
import math
import os
import re
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import orjson
import pyarrow as pa
import sqlalchemy as sa

from segment_ops.engine.calls import to_json_value
from segment_ops.engine.sql import literal, quote
from segment_ops.engine.store import DEFAULT_MEMORY_LIMIT

if TYPE_CHECKING:
    import psycopg

CHUNK_ROWS = 20_000
# COPY's output goes to DuckDB in files of about this size, so one at most is on disk however big the result.
COPY_SEGMENT_BYTES = 32 * 1024 * 1024
UNSERIALISABLE_COLUMN = "_segment_ops_unserialisable"
# SQLAlchemy backend name -> the Dagster kind (icon) of the warehouse.
DIALECT_KINDS = {"postgresql": "postgres", "duckdb": "duckdb", "snowflake": "snowflake",
                 "bigquery": "bigquery", "redshift": "redshift", "mysql": "mysql", "mssql": "sqlserver",
                 "databricks": "databricks", "sqlite": "sqlite", "oracle": "oracle", "trino": "trino"}


class WarehouseError(RuntimeError):
    """The warehouse refused the query or could not be reached; the message carries its answer."""


class MissingDriverError(WarehouseError):
    """WAREHOUSE_URL's SQLAlchemy dialect or DB-API driver is not installed (or its scheme is misspelt);
    `install` is what fixes it, as a command or a sentence."""

    def __init__(self, message: str, install: str) -> None:
        super().__init__(message)
        self.install = install


class MissingWarehouseFileError(WarehouseError):
    """WAREHOUSE_URL names a DuckDB file that does not exist (a setting to fix, not an outage)."""


@dataclass(frozen=True)
class WarehouseDriver:
    """What a WAREHOUSE_URL scheme needs installed, and the `segment_ops` extra (pyproject.toml) that brings
    it."""

    extra: str
    packages: str  # the SQLAlchemy dialect and DB-API driver, as PyPI names them
    beside: str = ""  # a driver the scheme names that the extra does not bring (it brings the default one)

    @property
    def install(self) -> str:
        beside = f" {self.beside}" if self.beside else ""
        command = f"pip install 'segment_ops[{self.extra}]'{beside}"
        if checkout := _editable_checkout():  # `pip install 'segment_ops[...]'` would fetch it from an index
            command += f" (from this checkout: pip install -e '{checkout}[{self.extra}]'{beside})"
        return command


@functools.cache
def _editable_checkout() -> str | None:
    """The folder segment_ops was installed from with `pip install -e` (its direct_url.json), else None."""
    try:
        raw = importlib.metadata.distribution("segment_ops").read_text("direct_url.json")
    except importlib.metadata.PackageNotFoundError:
        return None
    direct = json.loads(raw or "{}")
    url = direct.get("url", "")
    if not direct.get("dir_info", {}).get("editable") or not url.startswith("file://"):
        return None
    return urllib.parse.unquote(urllib.parse.urlsplit(url).path)


_REDSHIFT = WarehouseDriver("redshift", "sqlalchemy-redshift and psycopg2")
# WAREHOUSE_URL scheme (SQLAlchemy's drivername) -> what it needs. DuckDB is missing on purpose: its dialect,
# duckdb-engine, is a main dependency.
WAREHOUSE_DRIVERS: dict[str, WarehouseDriver] = {
    "postgresql": WarehouseDriver("postgres", "psycopg"),  # SQLAlchemy 2.1's default PostgreSQL driver
    "postgresql+psycopg": WarehouseDriver("postgres", "psycopg"),
    "postgresql+psycopg2": WarehouseDriver("postgres", "psycopg2", beside="psycopg2-binary"),
    "snowflake": WarehouseDriver("snowflake", "snowflake-sqlalchemy and snowflake-connector-python"),
    "bigquery": WarehouseDriver("bigquery", "sqlalchemy-bigquery and google-cloud-bigquery"),
    "redshift": _REDSHIFT,  # sqlalchemy-redshift's default driver is psycopg2
    "redshift+psycopg2": _REDSHIFT,
    "redshift+redshift_connector": WarehouseDriver("redshift", "sqlalchemy-redshift and redshift_connector",
                                                   beside="redshift_connector"),
}


@dataclass(frozen=True)
class StagedResult:
    table: str
    rows: int
    columns: tuple[str, ...]
    types: dict[str, str]  # DuckDB type of each column
    seconds: float
    # "duckdb attach", "duckdb stream" (DuckDB's DB-API, chunks), "postgresql copy" or "sqlalchemy stream"
    # (with why COPY was left, in brackets, when a PostgreSQL query could not take it)
    method: str


def dialect_of(url: str) -> str:
    """The SQLAlchemy backend name of `url` ("postgresql", "duckdb", ...), or "unknown"."""
    try:
        return sa.engine.make_url(url).get_backend_name()
    except sa.exc.ArgumentError:
        return "unknown"


def dialect_kind(url: str) -> str | None:
    return DIALECT_KINDS.get(dialect_of(url))


def duckdb_file(url: str) -> str | None:
    """The database file of a `duckdb:///path` URL (None for other URLs and in-memory DuckDB)."""
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        return None
    if parsed.get_backend_name() != "duckdb" or not parsed.database or parsed.database == ":memory:":
        return None
    return parsed.database


def create_engine(url: str) -> sa.Engine:
    """A SQLAlchemy engine on a warehouse that is not a DuckDB file (those are attached directly). Nothing
    connects yet; a dialect or driver that is not installed raises `MissingDriverError` saying what to
    install."""
    try:
        return sa.create_engine(url)
    except (sa.exc.NoSuchModuleError, ImportError) as exc:  # no dialect for the scheme / its driver missing
        raise missing_driver_error(sa.engine.make_url(url).drivername, exc) from None
    except sa.exc.ArgumentError:  # the message would quote the URL, password included
        raise WarehouseError("WAREHOUSE_URL is not a valid SQLAlchemy URL") from None
    except Exception as exc:  # noqa: BLE001 (a dialect refusing its settings: BigQuery without credentials)
        scheme = sa.engine.make_url(url).drivername
        raise WarehouseError(f"WAREHOUSE_URL ({scheme}://) cannot be used: {_first_line(exc, url)}") from None


def missing_driver_error(scheme: str, exc: BaseException) -> MissingDriverError:
    """The error for a WAREHOUSE_URL whose `scheme` (e.g. "postgresql+psycopg") could not load its SQLAlchemy
    dialect or driver (`exc`): the scheme, what is missing and what to install, never the URL itself."""
    if isinstance(exc, sa.exc.NoSuchModuleError):
        missing = f"no SQLAlchemy dialect for {scheme.split('+')[0]} is installed"
    elif module := getattr(exc, "name", None) or _missing_module_name(str(exc)):
        missing = f"the Python module {module} is not installed"
    else:  # an ImportError other than a missing module (e.g. a driver too old for its dialect)
        missing = f"its import failed: {_first_line(exc)}"
    if (driver := WAREHOUSE_DRIVERS.get(scheme)) is not None:
        return MissingDriverError(f"WAREHOUSE_URL ({scheme}://) needs {driver.packages}, but {missing}; "
                                  f"install it with: {driver.install}", driver.install)
    backend = scheme.split("+")[0]
    if backend == "postgres":  # SQLAlchemy 1.4 dropped this spelling, which Heroku and others still print
        return MissingDriverError(f"WAREHOUSE_URL ({scheme}://) cannot be used: SQLAlchemy has no dialect "
                                  "named postgres; write postgresql:// instead of postgres://",
                                  "write WAREHOUSE_URL with postgresql:// instead of postgres://")
    extras = ", ".join(sorted({d.extra for d in WAREHOUSE_DRIVERS.values()}))
    install = f"the SQLAlchemy dialect package for {backend} and its driver"
    return MissingDriverError(f"WAREHOUSE_URL ({scheme}://) cannot be used: {missing}; install {install} "
                              f"in segment_ops's environment (its own extras cover {extras}; DuckDB needs "
                              "none)", f"install {install} in segment_ops's environment")


def stage_query(con: duckdb.DuckDBPyConnection, url: str, sql: str, table: str, *,
                chunk_rows: int = CHUNK_ROWS, fast_path: bool = True) -> StagedResult:
    """Run `sql` on the warehouse at `url` and stage its rows as the temporary table `table`.

    Temporary: the rows are this run's working set, spilled to the staging file's temp directory under
    the memory limit rather than written into the file and checkpointed on every run. `fast_path`: a DuckDB
    file is ATTACHed and PostgreSQL read with COPY (false: both stream in chunks, as other warehouses do).
    """
    started = time.monotonic()
    path = duckdb_file(url)
    if fast_path and path is not None:
        _stage_attached(con, path, sql, table)
        method = "duckdb attach"
    elif fast_path and _copies(url):
        method = _stage_copied(con, url, sql, table, chunk_rows)
    else:
        _stage_streamed(con, url, sql, table, chunk_rows)
        method = "sqlalchemy stream" if path is None else "duckdb stream"
    return describe_staged(con, table, method, time.monotonic() - started)


def describe_staged(con: duckdb.DuckDBPyConnection, table: str, method: str,
                    seconds: float = 0.0) -> StagedResult:
    """`table` (already in DuckDB) as the `StagedResult` the diff reads; a table built by a sync's own SQL
    gets the (all-NULL) unserialisable-value column the diff expects."""
    described = con.execute(f"DESCRIBE {quote(table)}").fetchall()
    if all(row[0] != UNSERIALISABLE_COLUMN for row in described):
        con.execute(f"ALTER TABLE {quote(table)} ADD COLUMN {UNSERIALISABLE_COLUMN} VARCHAR")
        described = con.execute(f"DESCRIBE {quote(table)}").fetchall()
    columns = tuple(row[0] for row in described if row[0] != UNSERIALISABLE_COLUMN)
    types = {row[0]: row[1] for row in described}
    rows = con.execute(f"SELECT count(*) FROM {quote(table)}").fetchall()[0][0]
    return StagedResult(table, rows, columns, types, seconds, method)


def probe_id(table: str, column: str | None) -> str:
    """The name of one probe: `table` (row count) or `table.max(column)` (row count and max)."""
    return f"{table}.max({column})" if column else table


def probe_statement(dialect: sa.Dialect, table: str, column: str | None) -> str:
    """The query of one probe, its names quoted as `dialect` quotes them: BigQuery's backticks, and a
    lower-case name left bare, so that Snowflake folds it as it folded the table's own (unquoted) name."""
    preparer = dialect.identifier_preparer
    select = "count(*)" + (f", max({preparer.quote(column)})" if column else "")
    return f"SELECT {select} FROM {'.'.join(preparer.quote(part) for part in table.split('.'))}"


def probe_tables(url: str, probes: Sequence[tuple[str, str | None]]) -> dict[str, str]:
    """A cheap change marker per (table, column): the row count, plus max(column) when a column is given.

    Keyed by `probe_id`. A probe that fails maps to "error: <message>", so one bad table never hides the
    others; an unreachable warehouse raises `WarehouseError`.
    """
    if (path := duckdb_file(url)) is not None:
        return _probe_duckdb(path, probes)
    engine = create_engine(url)
    markers: dict[str, str] = {}
    try:
        with engine.connect() as conn:
            for table, column in probes:
                try:
                    row = conn.exec_driver_sql(probe_statement(engine.dialect, table, column)).one()
                except sa.exc.SQLAlchemyError as exc:
                    conn.rollback()
                    markers[probe_id(table, column)] = f"error: {_first_line(exc, url)}"
                    continue
                markers[probe_id(table, column)] = "|".join(_marker(v) for v in row)
    except sa.exc.SQLAlchemyError as exc:
        raise WarehouseError(f"cannot reach the warehouse: {_first_line(exc, url)}") from None
    finally:
        engine.dispose()
    return markers


def limit_zero(sql: str) -> str:
    """`sql` wrapped to return its columns and no row (the `)` on a line of its own, so that `sql` may end in
    a `--` comment)."""
    return f"SELECT * FROM ({sql}\n) AS model_query LIMIT 0"


def driver_sql(dialect: sa.Dialect, sql: str) -> str:
    """`sql` as `exec_driver_sql` must hand it to `dialect`'s DB-API driver: format-style drivers read `%` as
    a placeholder."""
    return sql.replace("%", "%%") if dialect.paramstyle in ("format", "pyformat") else sql


def compile_queries(url: str, queries: Mapping[str, str]) -> dict[str, tuple[str, ...] | WarehouseError]:
    """Run each query as `limit_zero` wraps it, over one connection: the columns it returns, or the
    warehouse's refusal. Nothing is read, so it shows cheaply that the queries compile against the warehouse
    as it is now. Raises `WarehouseError` when the warehouse cannot be reached at all."""
    wrapped = {name: limit_zero(sql) for name, sql in queries.items()}
    found: dict[str, tuple[str, ...] | WarehouseError] = {}
    if (path := duckdb_file(url)) is not None:
        try:
            con = duckdb.connect(path, read_only=True, config={"memory_limit": DEFAULT_MEMORY_LIMIT})
        except duckdb.Error as exc:
            raise WarehouseError(f"cannot open the DuckDB warehouse {path}: {_first_line(exc)}") from None
        try:
            for name, sql in wrapped.items():
                try:
                    found[name] = tuple(d[0] for d in con.execute(sql).description)
                except duckdb.Error as exc:
                    found[name] = WarehouseError(f"the warehouse refused the query: {_first_line(exc)}")
        finally:
            con.close()
        return found
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1").all()
            for name, sql in wrapped.items():
                try:
                    found[name] = tuple(conn.exec_driver_sql(driver_sql(engine.dialect, sql)).keys())
                except sa.exc.SQLAlchemyError as exc:
                    conn.rollback()
                    found[name] = WarehouseError(f"the warehouse refused the query: {_first_line(exc, url)}")
    except sa.exc.SQLAlchemyError as exc:
        raise WarehouseError(f"cannot reach the warehouse: {_first_line(exc, url)}") from None
    finally:
        engine.dispose()
    return found


def _probe_duckdb(path: str, probes: Sequence[tuple[str, str | None]]) -> dict[str, str]:
    """`probe_tables` on a DuckDB file, opened read-only by DuckDB itself."""
    try:
        con = duckdb.connect(path, read_only=True, config={"memory_limit": DEFAULT_MEMORY_LIMIT})
    except duckdb.Error as exc:
        raise WarehouseError(f"cannot reach the warehouse: {_first_line(exc)}") from None
    markers: dict[str, str] = {}
    try:
        for table, column in probes:
            select = "count(*)" + (f", max({quote(column)})" if column else "")
            try:
                row = con.execute(f"SELECT {select} FROM {_table(table)}").fetchall()[0]
            except duckdb.Error as exc:
                markers[probe_id(table, column)] = f"error: {_first_line(exc)}"
                continue
            markers[probe_id(table, column)] = "|".join(_marker(v) for v in row)
    finally:
        con.close()
    return markers


def _stage_attached(con: duckdb.DuckDBPyConnection, path: str, sql: str, table: str) -> None:
    """DuckDB warehouse: ATTACH it read-only and let DuckDB copy the query's result (no Python per row)."""
    home = con.execute("SELECT current_database()").fetchall()[0][0]
    try:
        con.execute(f"ATTACH {literal(path)} AS segment_ops_warehouse (READ_ONLY)")
    except duckdb.Error as exc:
        raise WarehouseError(f"cannot open the DuckDB warehouse {path}: {_first_line(exc)}") from None
    try:
        con.execute("USE segment_ops_warehouse")  # unqualified names in the model resolve in the warehouse
        con.execute(f"CREATE OR REPLACE TEMP TABLE {quote(table)} AS "
                    f"SELECT *, NULL::VARCHAR AS {UNSERIALISABLE_COLUMN} FROM ({sql}\n) AS model_query")
    except duckdb.Error as exc:
        raise WarehouseError(f"the warehouse refused the query: {_first_line(exc)}") from None
    finally:
        con.execute(f"USE {quote(home)}")
        con.execute("DETACH segment_ops_warehouse")


# PostgreSQL type OID -> the DuckDB type the streaming path gives psycopg's values of it (`_to_arrow`), so
# that a table staged either way, and the diff's row hashes, are the same. Any other type leaves the query
# to the streaming path: json and jsonb (orjson re-serialises what PostgreSQL prints: spacing, numbers,
# repeated keys), time (24:00), arrays, intervals, bytea, ranges, money, network types... Domains arrive as
# their base type; enums (looked up) are text.
_COPY_TYPES = {
    16: "BOOLEAN",  # bool
    19: "VARCHAR", 25: "VARCHAR", 1042: "VARCHAR", 1043: "VARCHAR",  # name, text, bpchar (padded), varchar
    2950: "VARCHAR",  # uuid: its text, as str(UUID) writes it
    20: "BIGINT", 21: "BIGINT", 23: "BIGINT",  # int8, int2, int4: Python ints become int64
    700: "DOUBLE", 701: "DOUBLE",  # float4, float8: the same text psycopg parses (extra_float_digits as is)
    1700: "DOUBLE",  # numeric: a double, as the streaming path sends Decimals (the diff rejects NaN)
    1082: "DATE", 1114: "TIMESTAMP", 1184: "TIMESTAMP WITH TIME ZONE",
}
# psycopg reads dates and timestamps of years 1-9999 only (not `infinity`), so the streaming path fails on any
# other; a result holding one is left to it, to fail the same way. timestamptz keeps a day's margin: psycopg
# converts it to the session's time zone.
_IN_RANGE = {
    1082: "{c} BETWEEN DATE '0001-01-01' AND DATE '9999-12-31'",
    1114: "{c} >= TIMESTAMP '0001-01-01' AND {c} < TIMESTAMP '10000-01-01'",
    1184: "{c} >= TIMESTAMPTZ '0001-01-02 00:00+00' AND {c} < TIMESTAMPTZ '9999-12-31 00:00+00'",
}


def _copies(url: str) -> bool:
    """Whether `url` reaches PostgreSQL through psycopg 3 (also `postgresql://`: SQLAlchemy 2.1's default
    driver), whose connection runs COPY. psycopg2 and other drivers stream."""
    try:
        parsed = sa.engine.make_url(url)
        return parsed.get_backend_name() == "postgresql" and parsed.get_dialect().driver == "psycopg"
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError):
        return False


def _stage_copied(con: duckdb.DuckDBPyConnection, url: str, sql: str, table: str, chunk_rows: int) -> str:
    """PostgreSQL: the query's rows as CSV from `COPY (<query>) TO STDOUT`, parsed by DuckDB into the types
    the streaming path gives them; no Python per value. A query COPY cannot read as the streaming path does
    (see `_copy_query`) is streamed instead. Returns the method, with the reason when COPY was left."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            reason = _copy_query(con, conn.connection.driver_connection, url, sql, table)
    except sa.exc.SQLAlchemyError as exc:
        raise WarehouseError(f"reading from the warehouse failed: {_first_line(exc, url)}") from None
    finally:
        engine.dispose()
    if reason is None:
        return "postgresql copy"
    _stage_streamed(con, url, sql, table, chunk_rows)
    return f"sqlalchemy stream ({reason})"


def _copy_query(con: duckdb.DuckDBPyConnection, pg: psycopg.Connection, url: str, sql: str,
                table: str) -> str | None:
    """Stage `sql` through COPY into `table`: None when done, else why the streaming path must read it (a
    query that cannot be wrapped, a column type outside `_COPY_TYPES`, a date psycopg could not read, a row
    DuckDB's CSV reader refuses). A query that fails while COPY runs raises `WarehouseError`."""
    import psycopg

    try:
        # COPY's bytes as DuckDB reads them, for this transaction only. Settings that change what the
        # query computes (TimeZone, DateStyle, extra_float_digits) stay the session's, as the streaming path
        # has them: DuckDB reads timestamptz at any offset; dates must print as ISO.
        pg.execute("SELECT set_config('client_encoding', 'UTF8', true)")
        try:
            described = pg.execute(f"SELECT * FROM ({sql}\n) AS model_query LIMIT 0").description
        except psycopg.Error as exc:  # also a query only the streaming path runs (a trailing `;`)
            return f"COPY cannot run the query: {_first_line(exc, url)}"
        if not described:
            return "the query returns no columns"
        names, oids = [c.name for c in described], [c.type_code for c in described]
        _refuse_repeated_names(names)
        types: list[str] = []
        others = _type_names(pg, {oid for oid in oids if oid not in _COPY_TYPES})
        for name, oid in zip(names, oids, strict=True):
            duck_type = _COPY_TYPES.get(oid) or ("VARCHAR" if others[oid][1] == "e" else None)
            if duck_type is None:
                return f"column {name!r} is {others[oid][0]}, which COPY does not read"
            types.append(duck_type)
        checks = [_IN_RANGE[oid].format(c=f"model_query.{quote(name)}")
                  for name, oid in zip(names, oids, strict=True) if oid in _IN_RANGE]
        if checks and not (style := pg.execute("SHOW DateStyle").fetchall()[0][0]).startswith("ISO"):
            return f"DateStyle is {style}, not ISO"
        # The last CSV column marks a row with a date out of range; it is read into the (otherwise all-NULL)
        # unserialisable-value column, and looked for once all is read.
        marker = f", CASE WHEN NOT ({' AND '.join(checks)}) THEN 'out of range' END" if checks else ""
        statement = f"COPY (SELECT *{marker} FROM ({sql}\n) AS model_query) TO STDOUT (FORMAT csv)"
        target = quote(table)
        con.execute(f"CREATE OR REPLACE TEMP TABLE {target} ("
                    + "".join(f"{quote(n)} {t}, " for n, t in zip(names, types, strict=True))
                    + f"{UNSERIALISABLE_COLUMN} VARCHAR)")
        insert = (f"INSERT INTO {target} SELECT *{'' if checks else ', NULL'} FROM "
                  f"{_csv_reader([*types, 'VARCHAR'] if checks else types)}")
        with tempfile.TemporaryDirectory(prefix="segment_ops_copy_", dir=_spill_dir(con)) as folder:
            try:
                _copy_into(con, pg, statement, insert, folder)
            except duckdb.Error as exc:
                return f"DuckDB cannot read COPY's output: {_first_line(exc)}"
    except psycopg.Error as exc:
        raise WarehouseError(f"the warehouse refused the query: {_first_line(exc, url)}") from None
    counts = con.execute(f"SELECT {', '.join(f'count({quote(n)})' for n in names)}, "
                         f"count({UNSERIALISABLE_COLUMN}) FROM {target}").fetchall()[0]
    if counts[-1]:
        return "a date or timestamp at or beyond the ends of years 1-9999, which psycopg reads"
    for name, count in zip(names, counts[:-1], strict=True):
        if not count:  # the streaming path settles a column's type on its values: none, no type
            con.execute(f'ALTER TABLE {target} ALTER {quote(name)} TYPE "NULL"')
    return None


def _type_names(pg: psycopg.Connection, oids: set[int]) -> dict[int, tuple[str, str]]:
    """(name, pg_type.typtype) of each type OID."""
    if not oids:
        return {}
    rows = pg.execute("SELECT oid::int8, format_type(oid, NULL), typtype::text FROM pg_type "
                      "WHERE oid = ANY(%s::int8[]::oid[])", [sorted(oids)]).fetchall()
    return {oid: (str(oid), "") for oid in oids} | {oid: (name, kind) for oid, name, kind in rows}


def _csv_reader(types: list[str]) -> str:
    """DuckDB's reader of PostgreSQL's CSV (the file a `?`): "" is the empty string, nothing is NULL; rows end
    in \n, which must be said (DuckDB would take a \r inside a value for the line ending); rows up to 4 MiB,
    read 8 MiB at a time (as `pgstate` reads it)."""
    fields = ", ".join(f"'c{i}': {literal(t)}" for i, t in enumerate(types))
    return ("read_csv(?, header = false, auto_detect = false, delim = ',', quote = '\"', escape = '\"', "
            "new_line = '\\n', allow_quoted_nulls = false, max_line_size = 4194304, buffer_size = 8388608, "
            f"columns = {{{fields}}})")


def _spill_dir(con: duckdb.DuckDBPyConnection) -> str | None:
    """DuckDB's temp directory of the staging file (where it spills), made if need be; None (the system's
    temp directory) for an in-memory DuckDB."""
    database = con.execute("SELECT path FROM duckdb_databases() WHERE database_name = current_database()"
                           ).fetchall()[0][0]
    folder = con.execute("SELECT current_setting('temp_directory')").fetchall()[0][0]
    if not database or not folder:
        return None
    Path(folder).mkdir(parents=True, exist_ok=True)
    return folder


def _copy_into(con: duckdb.DuckDBPyConnection, pg: psycopg.Connection, statement: str, insert: str,
               folder: str) -> None:
    """Run `statement` (a COPY TO STDOUT), writing its rows into a file in `folder` that `insert` (its `?`)
    adds to DuckDB each time it holds `COPY_SEGMENT_BYTES`, then deletes. One after the other: a thread
    writing the next file while DuckDB reads one made both slower on two cores (the writer holds the GIL)."""
    number, size, out = 0, 0, None
    try:
        with pg.cursor() as cursor, cursor.copy(statement) as copy:
            while row := copy.read():  # PostgreSQL sends COPY's output a row at a time
                if out is None:
                    out = open(os.path.join(folder, f"{number}.csv"), "wb", buffering=1 << 20)  # noqa: SIM115
                    number, size = number + 1, 0
                size += out.write(row)
                if size >= COPY_SEGMENT_BYTES:
                    _insert_segment(con, insert, out)
                    out = None
        if out is not None:
            _insert_segment(con, insert, out)
            out = None
    finally:
        if out is not None:
            out.close()


def _insert_segment(con: duckdb.DuckDBPyConnection, insert: str, out: Any) -> None:
    out.close()
    con.execute(insert, [out.name])
    os.remove(out.name)


def _stage_streamed(con: duckdb.DuckDBPyConnection, url: str, sql: str, table: str, chunk_rows: int) -> None:
    """Rows through a DB-API cursor, `chunk_rows` at a time, appended to `table`.

    Any SQLAlchemy URL streams through a server-side cursor (`stream_results`). A DuckDB file is read
    with DuckDB's own DB-API cursor instead of the duckdb-engine dialect: the same rows and chunks,
    without a second DuckDB binding layer in the run's process.
    """
    if (path := duckdb_file(url)) is not None:
        _write_chunks(con, table, *_duckdb_rows(path, sql, chunk_rows))
        return
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            try:
                streaming = conn.execution_options(stream_results=True, max_row_buffer=chunk_rows)
                result = streaming.exec_driver_sql(driver_sql(engine.dialect, sql))
            except sa.exc.SQLAlchemyError as exc:
                raise WarehouseError(f"the warehouse refused the query: {_first_line(exc, url)}") from None
            _write_chunks(con, table, list(result.keys()), _chunks(result.fetchmany, chunk_rows))
    except sa.exc.SQLAlchemyError as exc:
        raise WarehouseError(f"reading from the warehouse failed: {_first_line(exc, url)}") from None
    finally:
        engine.dispose()


def _duckdb_rows(path: str, sql: str, chunk_rows: int) -> tuple[list[str], Iterator[Sequence[Sequence[Any]]]]:
    try:
        warehouse = duckdb.connect(path, read_only=True, config={"memory_limit": DEFAULT_MEMORY_LIMIT})
    except duckdb.Error as exc:
        raise WarehouseError(f"cannot open the DuckDB warehouse {path}: {_first_line(exc)}") from None
    try:
        warehouse.execute("SET enable_progress_bar = false")
        cursor = warehouse.execute(sql)
    except duckdb.Error as exc:
        warehouse.close()
        raise WarehouseError(f"the warehouse refused the query: {_first_line(exc)}") from None
    names = [d[0] for d in cursor.description]
    try:
        _refuse_repeated_names(names)
    except WarehouseError:
        warehouse.close()
        raise

    def rows() -> Iterator[Sequence[Sequence[Any]]]:
        try:
            yield from _chunks(cursor.fetchmany, chunk_rows)
        finally:
            warehouse.close()

    return names, rows()


def _refuse_repeated_names(names: Sequence[str]) -> None:
    """A result with a column name twice (DuckDB's names ignore case: `id` and `ID` are one) cannot be
    staged."""
    if len({n.lower() for n in names}) != len(names):
        raise WarehouseError(f"the query returns a column name twice: {', '.join(names)}")


def _write_chunks(con: duckdb.DuckDBPyConnection, table: str, names: list[str],
                  chunks: Iterator[Sequence[Sequence[Any]]]) -> None:
    _refuse_repeated_names(names)
    # Chunk by chunk, each insert committed on its own: one transaction over the whole result would
    # keep every row in memory until its commit. A failure leaves a partial table that nothing reads
    # (the run fails) and the next run replaces.
    writer = _ChunkWriter(con, quote(table), names)
    for chunk in chunks:
        writer.append(chunk)
    writer.finish()


def _chunks(fetchmany: Any, size: int) -> Iterator[Sequence[Sequence[Any]]]:
    while rows := fetchmany(size):
        yield rows


class _ChunkWriter:
    """Appends row chunks to a staging table, settling each column's type on the first non-null chunk."""

    def __init__(self, con: duckdb.DuckDBPyConnection, target: str, names: list[str]) -> None:
        self.con, self.target, self.names = con, target, names
        self.types: dict[str, str | None] = dict.fromkeys(names)  # None: no non-null value seen yet
        self.created = False

    def append(self, rows: Sequence[Sequence[Any]]) -> None:
        columns = list(zip(*rows, strict=True)) if rows else [() for _ in self.names]
        arrays, json_columns = [], set()
        bad: list[str | None] = [None] * len(rows)
        for name, values in zip(self.names, columns, strict=True):
            array, is_json = _to_arrow(name, values, bad)
            arrays.append(array)
            if is_json:
                json_columns.add(name)
        arrays.append(pa.array(bad, pa.string()))
        chunk = pa.Table.from_arrays(arrays, names=[*self.names, UNSERIALISABLE_COLUMN])
        self.con.execute("SELECT 1").fetchall()  # `register` refuses while a caller's result is still open
        self.con.register("segment_ops_chunk", chunk)
        try:
            incoming = {row[0]: row[1] for row in self.con.execute("DESCRIBE segment_ops_chunk").fetchall()}
            for name in json_columns:
                incoming[name] = "JSON"
            if not self.created:
                select = ", ".join(f"{_cast(name, incoming[name])} AS {quote(name)}"
                                   for name in [*self.names, UNSERIALISABLE_COLUMN])
                self.con.execute(f"CREATE OR REPLACE TEMP TABLE {self.target} AS SELECT {select} "
                                 "FROM segment_ops_chunk")
                self.created = True
                for name in self.names:
                    self.types[name] = None if incoming[name] == '"NULL"' else incoming[name]
                return
            self._widen(incoming)
            select = ", ".join(
                f"{_cast(name, self.types[name] or incoming[name])} AS {quote(name)}"
                if incoming[name] != '"NULL"' else f"NULL AS {quote(name)}" for name in [*self.names])
            self.con.execute(f"INSERT INTO {self.target} BY NAME SELECT {select}, {UNSERIALISABLE_COLUMN} "
                             f"FROM segment_ops_chunk")
        finally:
            self.con.unregister("segment_ops_chunk")

    def _widen(self, incoming: dict[str, str]) -> None:
        """Give a column its first real type, or a common supertype (INTEGER then DOUBLE -> DOUBLE)."""
        for name in self.names:
            seen, new = self.types[name], incoming[name]
            if new == '"NULL"' or new == seen:
                continue
            if seen is None:
                wanted = new
            else:
                try:
                    wanted = self.con.execute(
                        f"SELECT typeof([NULL::{seen}, NULL::{new}][1])").fetchall()[0][0]
                except duckdb.Error:
                    raise WarehouseError(f"column {name!r} has values of different types ({seen}, then {new})"
                                         ) from None
            if wanted != seen:
                self.con.execute(f"ALTER TABLE {self.target} ALTER {quote(name)} TYPE {wanted}")
                self.types[name] = wanted

    def finish(self) -> None:
        if not self.created:  # no rows: still a table with the query's columns
            self.append([])


def _to_arrow(name: str, values: Sequence[Any], bad: list[str | None]) -> tuple[pa.Array, bool]:
    """One column of a chunk as an Arrow array (vectorised when Arrow takes the values as they are)."""
    sample = next((v for v in values if v is not None), None)
    if isinstance(sample, dict | list | tuple):
        return pa.array([_json_text(name, v, i, bad) for i, v in enumerate(values)], pa.string()), True
    try:
        # a double, as the DuckDB path sends DECIMAL (NaN is rejected later)
        if isinstance(sample, decimal.Decimal):
            return pa.array([None if v is None else float(v) for v in values], pa.float64()), False
        if isinstance(sample, uuid.UUID):
            return pa.array([None if v is None else str(v) for v in values], pa.string()), False
        return pa.array(values), False
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError, ValueError, AttributeError):
        pass
    # Values Arrow cannot take directly: the explicit JSON rules of `calls.to_json_value`, one by one.
    converted = [_plain(name, v, i, bad) for i, v in enumerate(values)]
    try:
        return pa.array(converted), False
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError):
        return pa.array([None if v is None else str(v) for v in converted], pa.string()), False


def _plain(name: str, value: Any, index: int, bad: list[str | None]) -> Any:
    if value is None or isinstance(value, str | bool | float | dt.date | dt.time | dt.timedelta):
        return value
    if isinstance(value, int):
        if -(2 ** 63) <= value < 2 ** 63:
            return value
        return _mark(bad, index, f"column {name!r}: integer {value} does not fit in 64 bits")
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, decimal.Decimal):
        # A double, as the DuckDB path sends DECIMAL: the same number always encodes the same way.
        return float(value) if value.is_finite() else _mark(
            bad, index, f"column {name!r} is {value}, which JSON cannot represent")
    try:
        return to_json_value(value)
    except TypeError as exc:
        return _mark(bad, index, f"column {name!r}: {exc}")


def _json_text(name: str, value: Any, index: int, bad: list[str | None]) -> str | None:
    if value is None:
        return None
    try:
        text = orjson.dumps(value, default=to_json_value)
    except (TypeError, orjson.JSONEncodeError) as exc:
        return _mark(bad, index, f"column {name!r}: not JSON-serialisable ({exc})")
    # orjson writes NaN and infinities as null: look for them only where a null was written, and reject the
    # row as the diff rejects them in DuckDB's own nested values (`diff.value_problem`), not send a null.
    if b"null" in text and (found := _non_finite(value, name)) is not None:
        return _mark(bad, index, f"column {name!r} holds {found}, which JSON cannot represent")
    return text.decode()


def _non_finite(value: Any, path: str) -> str | None:
    """The first NaN or infinity inside `value` (floats and Decimals), with its path, or None."""
    if isinstance(value, float | decimal.Decimal):
        if math.isfinite(value) if isinstance(value, float) else value.is_finite():
            return None
        nan = math.isnan(value) if isinstance(value, float) else value.is_nan()
        return f"{'NaN' if nan else 'Infinity' if value > 0 else '-Infinity'} at {path}"
    if isinstance(value, Mapping):
        children: Iterator[tuple[Any, str]] = ((v, f"{path}.{k}") for k, v in value.items())
    elif isinstance(value, list | tuple | set | frozenset):
        children = ((v, f"{path}[]") for v in value)
    else:
        return None
    return next((found for child, at in children if (found := _non_finite(child, at)) is not None), None)


def _mark(bad: list[str | None], index: int, reason: str) -> None:
    bad[index] = reason if bad[index] is None else f"{bad[index]}; {reason}"
    return None


def _cast(name: str, duck_type: str) -> str:
    return quote(name) if duck_type == '"NULL"' else f"{quote(name)}::{duck_type}"


def _table(name: str) -> str:
    return ".".join(quote(part) for part in name.split("."))


def _marker(value: Any) -> str:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return "" if value is None else str(value)


def _missing_module_name(text: str) -> str | None:
    """The module of an ImportError that names it only in its message ("No module named psycopg2", as
    sqlalchemy-redshift raises it)."""
    found = re.search(r"No module named '?(\w+(?:\.\w+)*)", text)
    return found.group(1) if found else None


def _first_line(exc: BaseException, url: str | None = None) -> str:
    """The first line of a driver's error, with the URL's password (if any) masked."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    try:
        password = sa.engine.make_url(url).password if url else None
    except sa.exc.ArgumentError:
        password = None
    return line.replace(str(password), "***") if password else line
