"""The state store: one DuckDB file per sync, and the registry of the state tables kept in it.

Every table a later run needs is declared once as a `StateSchema` (its tables, DDL, version and
migrations) and created or migrated by `ensure`; nothing else creates state tables.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from segment_ops.engine import pgstate

# DuckDB's memory per staging connection. A diff holds its staged rows and two hash tables at once: a
# million rows of a wide model stay in memory at 256 MB (at 128 MB they spilled, and the diff took twice as
# long). A replay streams its file through the ledger in chunks and needs half that, which keeps the whole
# process of a million-call replay under 300 MB.
DEFAULT_MEMORY_LIMIT = "256MB"
STREAMING_MEMORY_LIMIT = "128MB"
# Write-ahead log kept before DuckDB checkpoints it into the file (its default, 16 MB, checkpointed every
# ~35,000 planned messages, 0.1-1.9 s each: a third of a million-call replay's time).
CHECKPOINT_THRESHOLD = "256MB"


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
    # Tables the module makes itself (`CREATE OR REPLACE TABLE ... AS`, their columns follow their query) and
    # a later step or run reads: state like `tables` (exported, shared), but not made by `create`.
    derived: tuple[str, ...] = ()
    # Of `tables`, those whose rows are only ever added: never deleted, and changed in place only by a
    # statement that first calls `rewritten` (with the state in PostgreSQL, a check-in then reads only the
    # rows added since the last one).
    append_only: tuple[str, ...] = ()
    # How erasure (`engine/erasure.py`, after a DELETE regulation) removes data subjects from these tables:
    # SQL run with the temp table `erased_subjects(subject, digest)` and its macros in place, after the
    # ledger's own erasure in the same file and transaction (so it may find the erased messages by their
    # tombstone); it changes only this schema's tables. Or `no_subjects(why)`: the tables hold no data about
    # a person. Every schema says one or the other (a test holds them to it), so no state can forget erasure.
    erase: str | None = None

    @property
    def state_tables(self) -> tuple[str, ...]:
        """Every table (and view or sequence) of the schema that is state."""
        return self.tables + self.derived

    def __post_init__(self) -> None:
        missing = [v for v in range(1, self.version) if v not in self.migrations]
        if self.version < 1 or missing:
            raise StateSchemaError(f"state schema {self.name!r} at version {self.version} lacks the "
                                   f"migration(s) from version(s) {missing}")
        if stray := set(self.append_only) - set(self.tables):
            raise StateSchemaError(f"state schema {self.name!r} marks {sorted(stray)} append-only, which it "
                                   "does not list among its tables")
        for table in self.tables:
            if not re.search(rf"CREATE (TABLE|VIEW|SEQUENCE) IF NOT EXISTS {re.escape(table)}\b",
                             self.create):
                raise StateSchemaError(f"state schema {self.name!r} lists {table!r} but does not create it")
        if self.erase is not None:
            self._check_erase(self.erase)

    def _check_erase(self, sql: str) -> None:
        """`erase` is `no_subjects(why)` with a reason, or SQL whose every write goes to a table of this
        schema or to a temp table it makes itself."""
        if sql.startswith(NO_SUBJECTS):
            if not sql.removeprefix(NO_SUBJECTS).strip():
                raise StateSchemaError(f"state schema {self.name!r} says it holds no subject data without "
                                       "saying why")
            return
        try:
            statements = duckdb.extract_statements(sql)
        except duckdb.Error as exc:
            raise StateSchemaError(f"state schema {self.name!r}: its erase SQL does not parse: "
                                   f"{exc}") from None
        own = set(self.state_tables)
        for statement in statements:
            text = re.sub(r"--[^\n]*", "", statement.query).strip()
            if made := re.match(r"CREATE (?:OR REPLACE )?TEMP(?:ORARY)? TABLE (\w+)", text, re.IGNORECASE):
                own.add(made.group(1))
            if (table := written_table(text)) is not None and table not in own:
                raise StateSchemaError(f"state schema {self.name!r}: its erase SQL writes to {table!r}, "
                                       "which is not one of its tables")


_WRITES = re.compile(r'(?:UPDATE|DELETE FROM|INSERT INTO)\s+"?(\w+)"?', re.IGNORECASE)


def written_table(statement: str) -> str | None:
    """The table a SQL statement (UPDATE, DELETE, INSERT) writes to, its comments aside; None for another."""
    written = _WRITES.match(re.sub(r"--[^\n]*", "", statement).strip())
    return written.group(1) if written else None


# `StateSchema.erase` of a schema whose tables hold no data about a person: this, then why (a SQL comment, so
# it is never mistaken for a statement that erases something).
NO_SUBJECTS = "-- holds no data about a data subject: "


def no_subjects(why: str) -> str:
    """The `erase` of a schema whose tables hold no data about a person, saying why."""
    return NO_SUBJECTS + why


VERSIONS_TABLE = "state_schema_versions"
_REGISTRY: dict[str, StateSchema] = {}


def register(schema: StateSchema) -> StateSchema:
    """Add `schema` to the registry (at import of its module); returns it. A name or table registered by
    another schema is an error: two modules must never own one table."""
    known = _REGISTRY.get(schema.name)
    if known is not None and known != schema:
        raise StateSchemaError(f"state schema {schema.name!r} is registered twice, differently")
    for other in _REGISTRY.values():
        if other.name != schema.name and (shared := set(other.state_tables) & set(schema.state_tables)):
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
    con.execute(f"CREATE TABLE IF NOT EXISTS {VERSIONS_TABLE} (name VARCHAR NOT NULL, "
                "version INTEGER NOT NULL, applied_at TIMESTAMPTZ NOT NULL)")
    return con.execute(f"SELECT max(version) FROM {VERSIONS_TABLE} WHERE name = ?", [name]).fetchone()[0]


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
        con.execute(f"INSERT INTO {VERSIONS_TABLE} VALUES (?, ?, now())", [schema.name, schema.version])
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
    created); it still waits for a writer's lock, since DuckDB's lock is per file, not per mode. With the
    state in PostgreSQL (`pgstate`), the file is first brought to the database's state under the sync's
    shared lock. Opened for writing, it is the file alone: only `staging` checks what a run wrote in.
    """
    url = pgstate.state_url()
    if url is not None and read_only:
        opener = _file_opener(memory_limit, threads, lock_timeout)
        with pgstate.session(url, Path(path).stem, Path(path), opener, shared=True,
                             lock_timeout=lock_timeout) as own:
            if own is not None:
                return own.con
    return _connect_file(path, memory_limit=memory_limit, threads=threads, lock_timeout=lock_timeout,
                         read_only=read_only)


def build_file(path: Path, fill: Callable[[duckdb.DuckDBPyConnection], None]) -> None:
    """Make a new file at `path` (anything there is removed first) and `fill` it. On any error the file is
    removed again: built beside its target and renamed into place (`put_in_place`), a stopped build never
    leaves a half-made store to be taken for one."""
    path.unlink(missing_ok=True)
    path.with_name(path.name + ".wal").unlink(missing_ok=True)
    con = _connect_file(path)
    try:
        fill(con)
        con.execute("CHECKPOINT")
    except BaseException:
        con.close()
        path.unlink(missing_ok=True)
        raise
    con.close()


def put_in_place(built: Path, target: Path) -> None:
    """Rename the file `built` over `target` (dropping `target`'s write-ahead log, which belongs to it)."""
    target.with_name(target.name + ".wal").unlink(missing_ok=True)
    os.replace(built, target)


def _file_opener(memory_limit: str, threads: int,
                 lock_timeout: float) -> Callable[..., duckdb.DuckDBPyConnection]:
    """`_connect_file` with these settings: how `pgstate` opens the file (`opener(path, read_only=...)`)."""
    return functools.partial(_connect_file, memory_limit=memory_limit, threads=threads,
                             lock_timeout=lock_timeout)


def _connect_file(path: str | Path, *, memory_limit: str = DEFAULT_MEMORY_LIMIT, threads: int = 2,
                  lock_timeout: float = 60.0, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """The DuckDB file at `path`, opened as `connect` describes, without the shared state."""
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
            if not read_only:
                con.execute(f"SET checkpoint_threshold = '{CHECKPOINT_THRESHOLD}'")
            return con


@contextmanager
def staging(path: str | Path, *, memory_limit: str = DEFAULT_MEMORY_LIMIT, threads: int = 2,
            lock_timeout: float = 60.0, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    """`connect` as a context manager that always closes (releasing the file lock).

    With the state in PostgreSQL (SEGMENT_OPS_STATE_URL), a session for writing runs its body under the
    sync's advisory lock, on the file brought to the database's state, and checks in what it wrote when
    the body ends, also when it raised (what was logged before the error is true: another machine must not
    send it again)."""
    url = pgstate.state_url()
    if url is None or read_only:
        con = connect(path, memory_limit=memory_limit, threads=threads, lock_timeout=lock_timeout,
                      read_only=read_only)
        try:
            yield con
        finally:
            con.close()
        return
    opener = _file_opener(memory_limit, threads, lock_timeout)
    sync = Path(path).stem
    with pgstate.session(url, sync, Path(path), opener, shared=False, lock_timeout=lock_timeout) as own:
        con = own.con if own is not None else opener(Path(path))
        try:
            try:
                yield con
            except BaseException as exc:
                if own is not None:
                    try:
                        with contextlib.suppress(duckdb.Error):  # a transaction the body left open
                            con.execute("ROLLBACK")
                        pgstate.checkin(own.pg, sync, con)
                    except Exception as failed:  # the body's error is the one to see; this one is noted
                        exc.add_note(f"and its state could not be checked in: {failed}")
                raise
            if own is not None:
                pgstate.checkin(own.pg, sync, con)
        finally:
            con.close()


def checkpoint(con: duckdb.DuckDBPyConnection, *, force: bool = False) -> None:
    """With the state in PostgreSQL, check in what the session of `con` logged so far, when it is due, or at
    once with `force` (`pgstate.checkpoint`: e.g. an intent that must be shared before the call it announces);
    nothing for the embedded default, whose file is the state already."""
    if pgstate.state_url() is not None:
        pgstate.checkpoint(con, force=force)


def rewritten(con: duckdb.DuckDBPyConnection, table: str) -> None:
    """Say that rows of `table` (one of a schema's `append_only`) are about to change in place, so that the
    next check-in compares all of its rows (`pgstate.mark_rewritten`; nothing for the embedded default)."""
    pgstate.mark_rewritten(con, table)


def holds_state(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether the file open on `con` holds a row in any registered state table."""
    names = {t for schema in registered() for t in schema.state_tables}
    present = [row[0] for row in con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main' "
        "AND database_name = current_database() AND NOT temporary").fetchall() if row[0] in names]
    return any(con.execute(f'SELECT 1 FROM "{t}" LIMIT 1').fetchone() for t in present)


def has_state(path: str | Path) -> bool:
    """Whether the sync of the staging file at `path` has state: the file exists, or (SEGMENT_OPS_STATE_URL)
    the database holds the sync."""
    if Path(path).exists():
        return True
    url = pgstate.state_url()
    return url is not None and pgstate.pg_has(url, Path(path).stem)


def staging_paths(folder: str | Path) -> list[Path]:
    """The staging file of every sync with state: the files in `folder`, and (SEGMENT_OPS_STATE_URL) the
    syncs the database holds, at the path their file has or will have there."""
    folder = Path(folder)
    found = set(folder.glob("*.duckdb")) if folder.is_dir() else set()
    if (url := pgstate.state_url()) is not None:
        found |= {folder / f"{sync}.duckdb" for sync in pgstate.syncs_in(url)}
    return sorted(found)


def staging_file(home: str | Path, sync: str) -> Path:
    """The staging file of `sync` in the home `home`, `<home>/staging/<sync>.duckdb`, where its runs keep
    their state (the path only: nothing is created)."""
    return Path(home) / "staging" / f"{sync}.duckdb"


def staging_files(home: str | Path) -> list[Path]:
    """Every sync's staging file in the home `home` (`staging_paths` of `<home>/staging/`: with the state in
    PostgreSQL, also those of the syncs only the database holds yet, which reading one brings here). A hidden
    file (a name starting with ".") is never a sync's."""
    return [p for p in staging_paths(Path(home) / "staging") if not p.name.startswith(".")]


def open_read_only(path: str | Path, lock_timeout: float) -> duckdb.DuckDBPyConnection | None:
    """The staging file at `path` opened read-only on one thread, or None while another process keeps it
    locked for longer than `lock_timeout` seconds (0: not waited for at all). Any other error (a file DuckDB
    cannot read, `pgstate.SharedStateError`) is raised."""
    try:
        return connect(path, read_only=True, threads=1, lock_timeout=lock_timeout)
    except StagingLockedError:
        return None
