"""The state store: one DuckDB file per sync, and the registry of the state tables kept in it.

Every table a later run needs is declared once as a `StateSchema` (its tables, DDL, version and
migrations) and created or migrated by `ensure`; nothing else creates state tables.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

DEFAULT_MEMORY_LIMIT = "128MB"


class StagingLockedError(RuntimeError):
    """Another process kept the staging file locked for longer than we were willing to wait."""


class StateSchemaError(RuntimeError):
    """A state schema cannot be registered or brought to its version (e.g. a file from a newer release)."""


@dataclass(frozen=True)
class StateSchema:
    """State tables one module owns, at a version.

    `create` builds the current version from nothing and is idempotent (`IF NOT EXISTS`), so it also adds
    tables a newer version introduced. `migrations[v]` takes a file at version `v` to `v + 1`. A file made
    before versions were recorded, which already holds one of the tables, is taken to be at version 1
    (see `ensure`).
    """

    name: str
    version: int
    tables: tuple[str, ...]
    create: str
    migrations: Mapping[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = [v for v in range(1, self.version) if v not in self.migrations]
        if self.version < 1 or missing:
            raise StateSchemaError(f"state schema {self.name!r} at version {self.version} lacks the "
                                   f"migration(s) from version(s) {missing}")
        for table in self.tables:
            if not re.search(rf"CREATE (TABLE|VIEW|SEQUENCE) IF NOT EXISTS {re.escape(table)}\b",
                             self.create):
                raise StateSchemaError(f"state schema {self.name!r} lists {table!r} but does not create it")


_VERSIONS_TABLE = "state_schema_versions"
_REGISTRY: dict[str, StateSchema] = {}


def register(schema: StateSchema) -> StateSchema:
    """Add `schema` to the registry (at import of its module); returns it. A name or table registered by
    another schema is an error: two modules must never own one table."""
    known = _REGISTRY.get(schema.name)
    if known is not None and known != schema:
        raise StateSchemaError(f"state schema {schema.name!r} is registered twice, differently")
    for other in _REGISTRY.values():
        if other.name != schema.name and (shared := set(other.tables) & set(schema.tables)):
            raise StateSchemaError(f"table(s) {sorted(shared)} of {schema.name!r} already belong to "
                                   f"{other.name!r}")
    _REGISTRY[schema.name] = schema
    return schema


def schema_named(name: str) -> StateSchema | None:
    """The registered schema called `name` (None: this release has none)."""
    return _REGISTRY.get(name)


def registered() -> tuple[StateSchema, ...]:
    """Every registered schema, by name."""
    return tuple(_REGISTRY[name] for name in sorted(_REGISTRY))


def schema_version(con: duckdb.DuckDBPyConnection, name: str) -> int | None:
    """The version of `name` recorded in this file (None: never ensured here)."""
    con.execute(f"CREATE TABLE IF NOT EXISTS {_VERSIONS_TABLE} (name VARCHAR NOT NULL, "
                "version INTEGER NOT NULL, applied_at TIMESTAMPTZ NOT NULL)")
    return con.execute(f"SELECT max(version) FROM {_VERSIONS_TABLE} WHERE name = ?", [name]).fetchone()[0]


def ensure(con: duckdb.DuckDBPyConnection, schema: StateSchema) -> None:
    """Create `schema`'s tables, or migrate them to its version, in one transaction; a no-op when current."""
    if _REGISTRY.get(schema.name) != schema:
        raise StateSchemaError(f"state schema {schema.name!r} is not registered (call store.register at "
                               "import)")
    current = schema_version(con, schema.name)
    if current == schema.version:
        return
    if current is not None and current > schema.version:
        raise StateSchemaError(f"the state file holds {schema.name!r} at version {current}, newer than this "
                               f"release's {schema.version}: upgrade segment_ops before running against it")
    unrecorded = current is None and _has_any_table(con, schema.tables)
    if unrecorded:
        current = 1  # made before versions were recorded
    con.execute("BEGIN")
    try:
        if unrecorded:
            # Such a file may lack some tables: they are created first (at the current version), so the
            # migrations from version 1 must be idempotent (`ADD COLUMN IF NOT EXISTS`, guarded updates).
            con.execute(schema.create)
        for version in range(current or schema.version, schema.version):
            con.execute(schema.migrations[version])
        con.execute(schema.create)
        con.execute(f"INSERT INTO {_VERSIONS_TABLE} VALUES (?, ?, now())", [schema.name, schema.version])
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def _has_any_table(con: duckdb.DuckDBPyConnection, tables: tuple[str, ...]) -> bool:
    return con.execute("SELECT count(*) FROM duckdb_tables() "
                       "WHERE table_name IN (SELECT unnest(?::VARCHAR[])) AND NOT temporary",
                       [list(tables)]).fetchone()[0] > 0


def connect(path: str | Path, *, memory_limit: str = DEFAULT_MEMORY_LIMIT, threads: int = 2,
            lock_timeout: float = 60.0, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open the staging file (created if missing) with a memory cap, retrying while it is locked.

    `read_only=True` opens an existing file for reading (a missing file is DuckDB's IOException, not
    created); it still waits for a writer's lock, since DuckDB's lock is per file, not per mode.
    """
    path = Path(path)
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + lock_timeout
    delay = 0.05
    while True:
        try:
            con = duckdb.connect(str(path), read_only=read_only,
                                 config={"memory_limit": memory_limit, "threads": threads})
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower():
                raise
            if time.monotonic() >= deadline:
                raise StagingLockedError(f"{path} stayed locked by another process for "
                                         f"{lock_timeout:.0f}s") from exc
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
        else:
            con.execute("SET preserve_insertion_order = false")
            con.execute("SET enable_progress_bar = false")  # long statements would draw it into run logs
            return con


@contextmanager
def staging(path: str | Path, **kwargs: object) -> Iterator[duckdb.DuckDBPyConnection]:
    """`connect` as a context manager that always closes (releasing the file lock)."""
    con = connect(path, **kwargs)  # type: ignore[arg-type]
    try:
        yield con
    finally:
        con.close()
