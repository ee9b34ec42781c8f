"""Identity maps: a vendor's id (a Heap identity such as an email, a Pendo accountId) -> the Segment id.

A map is fed from one configurable source, staged into a DuckDB table and joined by each sync's own SQL
(resolution, fallback and rejection reasons belong to the sync, which knows what its ids mean):

- a SQL query returning `(source_id, target_id)`, run on the warehouse or any other SQLAlchemy URL
  (streamed in chunks by `warehouse.stage_query`), or
- a CSV file with a header row `source_id,target_id` (read by DuckDB, never row by row in Python).

The staged table holds one row per usable source id. Rows with an empty source or target are dropped
and counted. A source id mapped to two different targets is ambiguous: sending it to either would be a
guess, so it is left out of the map and listed, with its targets, in `<table>_ambiguous` for the sync to
reject with that reason; a row repeated with the same target counts once (Heap Connect's `users` table can
repeat a user's row: dbt-labs/heap `heap_users.sql` dedupes it). Ids are compared as text, exactly (Heap
identities are case-sensitive, spec §3).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from segment_ops.engine.sql import literal, quote
from segment_ops.engine.warehouse import stage_query

COLUMNS = ("source_id", "target_id")


class IdentityMapError(ValueError):
    """The identity map's source is misconfigured or does not return `source_id, target_id`."""


@dataclass(frozen=True)
class IdentitySource:
    """Where a map comes from: `query` run on `url` (None: the warehouse), or a `csv` file."""

    query: str | None = None
    url: str | None = None
    csv: str | None = None

    def __post_init__(self) -> None:
        if (self.query is None) == (self.csv is None):
            raise IdentityMapError("an identity source needs exactly one of `query` or `csv`")
        if self.csv is not None and self.url is not None:
            raise IdentityMapError("`url` goes with `query`, not with `csv`")

    @classmethod
    def from_config(cls, table: dict[str, Any]) -> IdentitySource:
        """From a config-file table: `{"query": ..., "url"?: ...}` or `{"csv": ...}`."""
        unknown = set(table) - {"query", "url", "csv"}
        if unknown:
            raise IdentityMapError(f"unknown identity source key(s): {', '.join(sorted(unknown))}; "
                                   "use `query` (with optional `url`) or `csv`")
        for key, value in table.items():
            if not isinstance(value, str) or not value.strip():
                raise IdentityMapError(f"identity source `{key}` must be a non-empty string")
        return cls(query=table.get("query"), url=table.get("url"), csv=table.get("csv"))

    def describe(self) -> str:
        """Where the map came from, for run metadata (a query's URL is never shown: it may hold a
        password)."""
        if self.csv is not None:
            return f"CSV {self.csv}"
        return "query on " + ("the warehouse" if self.url is None else "its own URL")


@dataclass(frozen=True)
class IdentityMapStats:
    rows: int  # rows the source returned
    mapped: int  # source ids in the map
    blank: int  # rows dropped for an empty source or target id
    ambiguous: int  # source ids mapped to more than one target (left out)
    seconds: float
    origin: str


def stage_identity_map(con: duckdb.DuckDBPyConnection, source: IdentitySource, table: str, *,
                       warehouse_url: str, temp: bool = False) -> IdentityMapStats:
    """(Re)create `table`(source_id, target_id) and `<table>_ambiguous`(source_id, targets) from `source`;
    `temp`: as temporary tables, gone with the connection (a map of personal data kept for one run only)."""
    kind = "TEMP TABLE" if temp else "TABLE"
    started = time.monotonic()
    raw = f"{table}_raw"
    if source.csv is not None:
        path = Path(source.csv).expanduser()
        if not path.is_file():
            raise IdentityMapError(f"identity map CSV {path} does not exist")
        try:
            con.execute(f"CREATE OR REPLACE TEMP TABLE {quote(raw)} AS SELECT * FROM read_csv("
                        f"{literal(str(path))}, header = true, all_varchar = true)")
        except duckdb.Error as exc:
            raise IdentityMapError(f"identity map CSV {path} cannot be read: "
                                   f"{str(exc).splitlines()[0]}") from None
    else:
        stage_query(con, source.url or warehouse_url, source.query, raw)
    columns = [row[0] for row in con.execute(f"DESCRIBE {quote(raw)}").fetchall()]
    missing = [c for c in COLUMNS if c not in columns]
    if missing:
        con.execute(f"DROP TABLE {quote(raw)}")
        raise IdentityMapError(f"the identity map ({source.describe()}) has no column(s) "
                               f"{', '.join(missing)}; it returns: {', '.join(columns)}")
    clean = f"""
        SELECT nullif(trim(source_id::VARCHAR), '') AS source_id,
               nullif(trim(target_id::VARCHAR), '') AS target_id
        FROM {quote(raw)}"""
    rows, blank = con.execute(
        "SELECT count(*), count(*) FILTER (WHERE source_id IS NULL OR target_id IS NULL) "
        f"FROM ({clean})").fetchone()
    con.execute(f"""
        CREATE OR REPLACE {kind} {quote(table + '_ambiguous')} AS
        SELECT source_id, list_sort(list(DISTINCT target_id)) AS targets
        FROM ({clean}) WHERE source_id IS NOT NULL AND target_id IS NOT NULL
        GROUP BY source_id HAVING count(DISTINCT target_id) > 1
    """)
    con.execute(f"""
        CREATE OR REPLACE {kind} {quote(table)} (source_id VARCHAR PRIMARY KEY, target_id VARCHAR NOT NULL)
    """)
    con.execute(f"""
        INSERT INTO {quote(table)}
        SELECT source_id, any_value(target_id)
        FROM ({clean}) WHERE source_id IS NOT NULL AND target_id IS NOT NULL
        GROUP BY source_id HAVING count(DISTINCT target_id) = 1
    """)
    con.execute(f"DROP TABLE {quote(raw)}")
    mapped = con.execute(f"SELECT count(*) FROM {quote(table)}").fetchone()[0]
    ambiguous = con.execute(f"SELECT count(*) FROM {quote(table + '_ambiguous')}").fetchone()[0]
    return IdentityMapStats(rows, mapped, blank, ambiguous, time.monotonic() - started, source.describe())
