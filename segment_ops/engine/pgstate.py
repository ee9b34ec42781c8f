"""State in PostgreSQL (`SEGMENT_OPS_STATE_URL`): a sync's staging file becomes a cache of its state there.

With the setting, every piece of state a later run needs (the tables, views and sequences registered with
the store, and `state_schema_versions`) lives in PostgreSQL, one schema per sync; the DuckDB file under
`SEGMENT_OPS_HOME/staging/` is where the run computes, as in the embedded default. A staging session:

1. takes the sync's PostgreSQL advisory lock (exclusive to write, shared to read), so one sync never runs on
   two machines at once while different syncs run in parallel. PostgreSQL drops the lock with the session,
   so a killed worker frees it: its state is what it last checked in;
2. checks out: when the file is not the copy of PostgreSQL's last check-in (a random token, new at each
   check-in that changed something, says which; a fresh pod, or another machine ran the sync since), it is
   rebuilt from PostgreSQL (`COPY ... TO STDOUT`, read by DuckDB) beside itself and renamed into place; a
   file holding that token is used as it is;
3. runs the sync against the file, DuckDB doing the work;
4. checks in: for each state table, the rows whose content hash (`hash(...)` of every column) is not in
   what PostgreSQL holds are written (`COPY ... FROM STDIN`) and those no longer in the file are deleted,
   in one PostgreSQL transaction that also advances the generation. What is compared is a table of
   (hash, count) kept in the file, so a run that changed 1% of a table sends 1% of its rows; a collision
   costs nothing but rewriting the colliding rows. A changed table definition (a migration) rewrites that
   table whole.

How DuckDB and PostgreSQL meet: psycopg's COPY in CSV, not DuckDB's postgres extension (the package index
offers it only up to DuckDB 1.5.x, and it refuses sequences and `INSERT ... RETURNING`, which the ledger
uses). Types: PostgreSQL gets the same scalar types; anything else (lists, structs, blobs) is kept as DuckDB's
text form of the value and cast back when read.

A file made without the setting (the embedded default) and never checked in is adopted by the first session
when PostgreSQL holds nothing for the sync: that is how a home moves to PostgreSQL without re-sending. A
file that is a cache of another database, or holds state of its own while PostgreSQL holds the sync's, is
refused (`SharedStateError`).
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the webhook receiver uses this module and runs without DuckDB
    import duckdb

STATE_URL = "SEGMENT_OPS_STATE_URL"
LAYOUT_VERSION = 1  # of the catalog below; a database holding a newer one is refused
CATALOG = "segment_ops_state"  # the PostgreSQL schema of the catalog
LOCAL = "_shared_state"  # the DuckDB schema, inside each staging file, that records what it is a cache of
_LOCK_CLASS = 0x5E9  # first key of every advisory lock taken here (the second is the sync's)
_CHUNK = 1 << 20
CHECKPOINT_SETTING = "SEGMENT_OPS_STATE_CHECKPOINT_SECONDS"
DEFAULT_CHECKPOINT_SECONDS = 30.0

_SCALAR_TYPES = {
    "VARCHAR": "text", "BOOLEAN": "boolean", "TINYINT": "smallint", "SMALLINT": "smallint",
    "INTEGER": "integer", "BIGINT": "bigint", "HUGEINT": "numeric", "UTINYINT": "smallint",
    "USMALLINT": "integer", "UINTEGER": "bigint", "UBIGINT": "numeric", "FLOAT": "real",
    "DOUBLE": "double precision", "DATE": "date", "TIME": "time", "TIMESTAMP": "timestamp",
    "TIMESTAMP WITH TIME ZONE": "timestamptz", "UUID": "uuid",  # INTERVAL as text: PostgreSQL writes some
    # (negative, mixed signs) in a form DuckDB does not read back
}
_DECIMAL = re.compile(r"DECIMAL\((\d+),(\d+)\)")


class SharedStateError(RuntimeError):
    """The state in PostgreSQL and the staging file cannot be reconciled without a person deciding."""


def state_url() -> str | None:
    """SEGMENT_OPS_STATE_URL, or None for the embedded default (state in the DuckDB files alone)."""
    return os.environ.get(STATE_URL) or None


_SANE_HOST = re.compile(r"[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\]")
_SANE_NAME = re.compile(r"[A-Za-z0-9._-]+")


def redacted(url: str) -> str:
    """Where `url` points, for messages: host, port and database, and only when each looks like one (a
    password with an unescaped `@` or `/` would otherwise be read as part of the host or the database)."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        parts = conninfo_to_dict(url)
    except Exception:  # noqa: BLE001 (whatever psycopg says of it may quote the value)
        return "(a value that is no PostgreSQL URL)"
    host, port, name = (str(parts.get(k, d)) for k, d in (("host", "localhost"), ("port", 5432),
                                                              ("dbname", "")))
    if not (_SANE_HOST.fullmatch(host) and port.isdigit() and (not name or _SANE_NAME.fullmatch(name))):
        return "(a URL that cannot be told apart safely: percent-encode the password's special characters)"
    return f"postgresql://{host}:{port}/{name}"


def _scrub(text: str, url: str) -> str:
    """`text` (a driver's message) without anything of `url` that may be secret: its password as parsed,
    and everything between the user and the last `@`, however the URL was (mis)written."""
    from psycopg.conninfo import conninfo_to_dict

    secrets = []
    try:
        if password := conninfo_to_dict(url).get("password"):
            secrets.append(str(password))
    except Exception:  # noqa: BLE001
        pass
    if m := re.match(r"[a-z]+://[^:@/]*:(.*)@[^@]*$", url):
        secrets.append(m.group(1))
    for secret in sorted(filter(None, secrets), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def pg_type(duckdb_type: str) -> str:
    """The PostgreSQL column type holding a DuckDB column of `duckdb_type` (text: DuckDB's text form)."""
    if duckdb_type in _SCALAR_TYPES:
        return _SCALAR_TYPES[duckdb_type]
    if m := _DECIMAL.fullmatch(duckdb_type):
        return f"numeric({m.group(1)},{m.group(2)})"
    return "text"


def pg_schema(sync: str) -> str:
    """The PostgreSQL schema holding `sync`'s state: readable, at most 63 bytes, distinct per sync."""
    readable = re.sub(r"[^a-z0-9_]", "_", sync.lower())[:40]
    return f"so_{readable}_{hashlib.blake2b(sync.encode(), digest_size=5).hexdigest()}"


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lock_key(sync: str) -> int:
    return int.from_bytes(hashlib.blake2b(sync.encode(), digest_size=4).digest(), "big", signed=True)


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # DuckDB's

    @property
    def scalar(self) -> bool:
        return pg_type(self.type) != "text" or self.type == "VARCHAR"


@dataclass(frozen=True)
class Obj:
    """A state object of a staging file: a table (with its columns), a view or a sequence."""

    name: str
    kind: str  # table | view | sequence
    ddl: str
    columns: tuple[Column, ...] = ()


# --- the DuckDB side -------------------------------------------------------------------------------------

def state_names() -> set[str]:
    """Every object name the registry says is state, and the version table."""
    from segment_ops.engine import store

    return {t for s in store.registered() for t in s.state_tables} | {store.VERSIONS_TABLE}


def local_objects(con: duckdb.DuckDBPyConnection) -> dict[str, Obj]:
    """The state objects the file holds (scratch tables are left out: they are not state)."""
    names = state_names()
    found: dict[str, Obj] = {}
    columns: dict[str, list[Column]] = {}
    for table, column, kind in con.execute(
            "SELECT table_name, column_name, data_type FROM duckdb_columns() WHERE schema_name = 'main' "
            "AND database_name = current_database() ORDER BY table_name, column_index").fetchall():
        columns.setdefault(table, []).append(Column(column, kind))
    for name, ddl in con.execute("SELECT table_name, sql FROM duckdb_tables() WHERE schema_name = 'main' "
                                 "AND database_name = current_database() AND NOT temporary").fetchall():
        if name in names:
            found[name] = Obj(name, "table", ddl, tuple(columns[name]))
    for name, ddl in con.execute("SELECT view_name, sql FROM duckdb_views() WHERE schema_name = 'main' "
                                 "AND database_name = current_database() AND NOT internal "
                                 "AND NOT temporary").fetchall():
        if name in names:
            found[name] = Obj(name, "view", ddl)
    sequences = con.execute("SELECT sequence_name, sql FROM duckdb_sequences() WHERE NOT temporary "
                            "AND schema_name = 'main' AND database_name = current_database()").fetchall()
    for name, ddl in sequences:
        if name in names:
            found[name] = Obj(name, "sequence", ddl)
    return found


def _row_hash(columns: tuple[Column, ...]) -> str:
    # 63 bits, so it fits PostgreSQL's bigint; a collision only makes the rows of both hashes be rewritten.
    return f"(hash({', '.join(_q(c.name) for c in columns)}) >> 1)::BIGINT"


def _hash_table(table: str) -> str:
    return f"{LOCAL}.{_q('h_' + table)}"


def _local_meta(con: duckdb.DuckDBPyConnection) -> tuple[str, str] | None:
    """(database id, token) of the check-in the file is a cache of; None: never checked in."""
    exists = con.execute("SELECT count(*) FROM duckdb_tables() WHERE schema_name = ? AND table_name = 'meta' "
                         "AND database_name = current_database()", [LOCAL]).fetchone()[0]
    if not exists:
        return None
    row = con.execute(f"SELECT database_id, token FROM {LOCAL}.meta").fetchone()
    return None if row is None else (row[0], row[1])


# --- the PostgreSQL side ---------------------------------------------------------------------------------

_CATALOG_DDL = f"""
CREATE SCHEMA IF NOT EXISTS {CATALOG};
CREATE TABLE IF NOT EXISTS {CATALOG}.layout (version integer NOT NULL);
CREATE TABLE IF NOT EXISTS {CATALOG}.syncs (
    sync        text PRIMARY KEY,
    pg_schema   text NOT NULL UNIQUE,
    generation  bigint NOT NULL,
    token       text NOT NULL,           -- random, new at each check-in that changed something: a file is
                                         -- current only when it holds this token (generations can repeat)
    duckdb      text NOT NULL,          -- the DuckDB version that checked in last (row hashes are its)
    updated_at  timestamptz NOT NULL,
    updated_by  text NOT NULL            -- host and process
);
CREATE TABLE IF NOT EXISTS {CATALOG}.objects (
    sync        text NOT NULL REFERENCES {CATALOG}.syncs (sync) ON DELETE CASCADE,
    name        text NOT NULL,
    kind        text NOT NULL,           -- table | view | sequence
    ddl         text NOT NULL,           -- DuckDB's, to make it again in a file
    columns     text,                    -- tables: name and DuckDB type per column, one per line
    rows        bigint,
    PRIMARY KEY (sync, name)
);
"""


def connect_pg(url: str):  # -> psycopg.Connection
    """An autocommit psycopg connection with keepalives (a dead worker's lock is freed within a minute)."""
    import psycopg

    try:
        con = psycopg.connect(url, autocommit=True, keepalives=1, keepalives_idle=20, keepalives_interval=5,
                              keepalives_count=4, connect_timeout=10,
                              application_name=f"segment_ops {socket.gethostname()}:{os.getpid()}"[:63])
    except psycopg.OperationalError as exc:  # the server's or the network's answer, scrubbed all the same
        where = redacted(url)
        if not where.startswith("postgresql://"):  # parsed into odd parts: the driver's words may hold them
            raise SharedStateError(f"cannot reach the state database {where} ({STATE_URL})") from None
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SharedStateError(f"cannot reach the state database {where} ({STATE_URL}): "
                               f"{_scrub(why, url)}") from None
    except psycopg.Error:  # a malformed value: psycopg's message may quote it
        raise SharedStateError(f"{STATE_URL} is no PostgreSQL URL (postgresql://user:password@host:5432/db)"
                               ) from None
    con.execute("SET TIME ZONE 'UTC'")
    con.execute("SET DateStyle = 'ISO'")
    # The server's side too: it holds the sync's lock until it notices the session is gone, by default two
    # hours after a worker's machine vanished. (No effect over a Unix socket, where nothing can vanish.)
    for setting, value in (("tcp_keepalives_idle", 20), ("tcp_keepalives_interval", 5),
                           ("tcp_keepalives_count", 4), ("tcp_user_timeout", 40_000)):
        con.execute(f"SET {setting} = {value}")
    return con


def ensure_catalog(pg) -> None:
    """Create the catalog if the database has none; refuse one of a newer layout."""
    if pg.execute(f"SELECT to_regclass('{CATALOG}.objects') IS NOT NULL").fetchone()[0]:
        version = pg.execute(f"SELECT max(version) FROM {CATALOG}.layout").fetchone()[0]
        if version is not None and version <= LAYOUT_VERSION:
            return
    with pg.transaction():
        pg.execute("SELECT pg_advisory_xact_lock(%s, 0)", [_LOCK_CLASS])  # two first workers race here
        pg.execute(_CATALOG_DDL)
        row = pg.execute(f"SELECT max(version) FROM {CATALOG}.layout").fetchone()
        if row[0] is None:
            pg.execute(f"INSERT INTO {CATALOG}.layout VALUES (%s)", [LAYOUT_VERSION])
        elif row[0] > LAYOUT_VERSION:
            raise SharedStateError(f"the state database holds segment_ops's catalog at version {row[0]}, "
                                   f"newer than this release's {LAYOUT_VERSION}: upgrade segment_ops")


def database_id(pg) -> str:
    """Which database this is (its cluster's identifier and its name): a file remembers whose cache it is."""
    dsn = pg.info.dsn
    if dsn not in _DATABASE_IDS:
        system, name = pg.execute("SELECT system_identifier::text, current_database() "
                                  "FROM pg_control_system()").fetchone()
        _DATABASE_IDS[dsn] = f"{system}/{name}"
    return _DATABASE_IDS[dsn]


_DATABASE_IDS: dict[str, str] = {}


def _holder(pg, sync: str) -> str:
    row = pg.execute("SELECT a.application_name, a.client_addr::text, a.backend_start FROM pg_locks l "
                     "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' "
                     "AND l.classid::bigint = %s AND l.objid::bigint = %s AND l.granted "
                     "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                     "LIMIT 1",
                     [_LOCK_CLASS & 0xFFFFFFFF, _lock_key(sync) & 0xFFFFFFFF]).fetchone()
    if row is None:
        return "another worker"
    return (f"{row[0] or 'a session'} (from {row[1] or 'a local socket'}, "
            f"connected {row[2]:%Y-%m-%d %H:%M:%S}Z)")


def acquire(pg, sync: str, *, shared: bool, timeout: float) -> None:
    """Take `sync`'s advisory lock on this session, waiting up to `timeout` seconds."""
    from segment_ops.engine.store import StagingLockedError

    fn = "pg_try_advisory_lock_shared" if shared else "pg_try_advisory_lock"
    deadline = time.monotonic() + timeout
    delay = 0.05
    while not pg.execute(f"SELECT {fn}(%s, %s)", [_LOCK_CLASS, _lock_key(sync)]).fetchone()[0]:
        if time.monotonic() >= deadline:
            raise StagingLockedError(f"sync {sync!r} is in use by {_holder(pg, sync)}: its state in "
                                     f"PostgreSQL stayed locked for {timeout:g}s; run it again when that "
                                     "run has finished")
        time.sleep(delay)
        delay = min(delay * 2, 1.0)


def release(pg, sync: str, *, shared: bool) -> None:
    fn = "pg_advisory_unlock_shared" if shared else "pg_advisory_unlock"
    pg.execute(f"SELECT {fn}(%s, %s)", [_LOCK_CLASS, _lock_key(sync)])


def _entry(pg, sync: str) -> tuple[str, int, str] | None:
    return pg.execute(f"SELECT pg_schema, generation, token FROM {CATALOG}.syncs WHERE sync = %s",
                      [sync]).fetchone()


# --- checkout --------------------------------------------------------------------------------------------

def checkout(pg, sync: str, path: Path, connect, *, read_only: bool) -> duckdb.DuckDBPyConnection:
    """Make `path` the cache of `sync`'s state at PostgreSQL's generation (the lock is held); returns the file
    opened as asked (a missing file opened to read is DuckDB's IOException, as without the database)."""
    from segment_ops.engine import store

    entry = _entry(pg, sync)
    db = database_id(pg)
    con, meta, local_state = None, None, False
    if path.exists() or not read_only:
        con = connect(path, read_only=read_only)
        try:
            meta = _local_meta(con)
            local_state = meta is None and entry is not None and store.holds_state(con)
        except BaseException:
            con.close()
            raise
    problem = None
    if meta is not None and meta[0] != db:
        problem = (f"{path} is a cache of another state database; move it aside to use {STATE_URL}'s state "
                   f"for {sync!r}")
    elif entry is None and meta is not None:  # its database forgot the sync (a person dropped it)
        problem = (f"{path} was checked in to this state database, which no longer holds {sync!r}; move the "
                   "file aside (or restore the database)")
    elif local_state:
        problem = (f"{path} holds state of its own (made without {STATE_URL}) and the state database holds "
                   f"{sync!r} too: move the file aside to use the database's, or export it to compare; they "
                   "are never merged")
    if problem is not None:
        if con is not None:
            con.close()
        raise SharedStateError(problem)
    if entry is None or (meta is not None and meta[1] == entry[2]):
        # Current; or nothing shared yet: the file (empty, or made by the embedded default) is adopted at
        # check-in.
        return con if con is not None else connect(path, read_only=read_only)
    if con is not None:
        con.close()
    _rebuild(pg, sync, entry, db, path)
    return connect(path, read_only=read_only)


def _rebuild(pg, sync: str, entry: tuple[str, int, str], db: str, path: Path) -> None:
    from segment_ops.engine import store

    schema, _, token = entry
    objects = pg.execute(f"SELECT name, kind, ddl, columns FROM {CATALOG}.objects WHERE sync = %s",
                         [sync]).fetchall()
    building = path.with_name(f".{path.name}.checkout-{uuid.uuid4().hex[:12]}")
    appended = _append_only()

    def fill(con: duckdb.DuckDBPyConnection) -> None:
        _make_local_catalog(con)
        order = {"sequence": 0, "table": 1, "view": 2}
        for name, kind, ddl, columns in sorted(objects, key=lambda o: order[o[1]]):
            con.execute(ddl)  # a sequence's says where it stands (START is its next value)
            if kind == "table":
                _copy_out(pg, con, schema, name, _parse_columns(columns))
                if name in appended:
                    _mark_appended(con, name)
        con.execute(f"INSERT INTO {LOCAL}.meta VALUES (?, ?)", [db, token])

    store.build_file(building, fill)
    store.put_in_place(building, path)


def _make_local_catalog(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {LOCAL}")
    con.execute(f"CREATE TABLE IF NOT EXISTS {LOCAL}.meta (database_id VARCHAR NOT NULL, "
                "token VARCHAR NOT NULL)")
    # Per append-only table, what the last check-in (or checkout) held: its rows up to rowid `high`, `rows`
    # of them. DuckDB numbers rows as their transactions commit, so a row committed later has a higher rowid.
    con.execute(f"CREATE TABLE IF NOT EXISTS {LOCAL}.appended (name VARCHAR NOT NULL, high BIGINT NOT NULL, "
                "rows BIGINT NOT NULL)")
    # Append-only tables whose rows changed in place since (`mark_rewritten`): compared whole next time.
    con.execute(f"CREATE TABLE IF NOT EXISTS {LOCAL}.rewritten (name VARCHAR NOT NULL)")


def mark_rewritten(con: duckdb.DuckDBPyConnection, table: str) -> None:
    """Record, in the transaction about to rewrite rows of the append-only `table` in place, that its next
    check-in must compare every row rather than read only those added since the last one: with
    SEGMENT_OPS_STATE_URL set, and also without it when the file is a cache of a database (opened from a
    shell without the setting, it is still checked in later). Nothing for a file that never was."""
    cache = con.execute("SELECT count(*) FROM duckdb_schemas() WHERE schema_name = ? "
                        "AND database_name = current_database()", [LOCAL]).fetchone()[0]
    if not cache and state_url() is None:
        return
    _make_local_catalog(con)
    con.execute(f"INSERT INTO {LOCAL}.rewritten VALUES (?)", [table])


def _append_only() -> set[str]:
    from segment_ops.engine import store

    return {t for s in store.registered() for t in s.append_only}


def _mark_appended(con: duckdb.DuckDBPyConnection, table: str) -> None:
    """The file's `table` as it is now is what PostgreSQL holds: a check-in reads only rows added after."""
    con.execute(f"DELETE FROM {LOCAL}.appended WHERE name = ?", [table])
    con.execute(f"INSERT INTO {LOCAL}.appended SELECT ?, coalesce(max(rowid), -1), count(*) FROM {_q(table)}",
                [table])
    con.execute(f"DELETE FROM {LOCAL}.rewritten WHERE name = ?", [table])


def _columns_text(columns: tuple[Column, ...]) -> str:
    return "\n".join(f"{c.name}\t{c.type}" for c in columns)


def _parse_columns(text: str) -> tuple[Column, ...]:
    return tuple(Column(*line.split("\t", 1)) for line in text.splitlines())


def _copy_out(pg, con: duckdb.DuckDBPyConnection, schema: str, table: str, cols: tuple[Column, ...]) -> None:
    """PostgreSQL's rows of `table` (and their hashes) into the file's table and its hash table."""
    select = ", ".join([_q(c.name) for c in cols] + ["_h"])
    query = f"COPY (SELECT {select} FROM {_q(schema)}.{_q(table)}) TO STDOUT (FORMAT csv)"
    with tempfile.NamedTemporaryFile(suffix=".csv", delete=False) as spool, pg.cursor().copy(query) as copy:
        for block in copy:
            spool.write(block)
    try:
        # Scalars parsed as their own types (PostgreSQL's text of them is DuckDB's too); the rest as the text
        # they are kept as, cast back.
        types = [c.type if c.scalar else "VARCHAR" for c in cols] + ["BIGINT"]
        fields = ", ".join(f"'c{i}': '{kind}'" for i, kind in enumerate(types))
        # Rows up to 4 MiB (a Segment message is at most 32 KB), read 8 MiB at a time: a bigger buffer is held
        # whole in memory, past the file's memory limit at a million rows.
        # Rows end in \n, which must be said: DuckDB would take a \r inside the first value for the ending.
        reader = ("read_csv(?, header = false, auto_detect = false, delim = ',', quote = '\"', "
                  "escape = '\"', new_line = '\\n', allow_quoted_nulls = false, max_line_size = 4194304, "
                  f"buffer_size = 8388608, columns = {{{fields}}})")
        casts = ", ".join(f"c{i}" if c.scalar else f"c{i}::{c.type}" for i, c in enumerate(cols))
        con.execute(f"INSERT INTO {_q(table)} ({', '.join(_q(c.name) for c in cols)}) "
                    f"SELECT {casts} FROM {reader}", [spool.name])
        con.execute(f"CREATE OR REPLACE TABLE {_hash_table(table)} AS SELECT c{len(cols)} AS h, "
                    f"count(*)::BIGINT AS n FROM {reader} GROUP BY ALL", [spool.name])
    finally:
        os.unlink(spool.name)


# --- checkin ---------------------------------------------------------------------------------------------

@dataclass
class CheckinReport:
    generation: int
    tables_changed: int = 0
    rows_written: int = 0
    rows_deleted: int = 0


def checkin(pg, sync: str, con: duckdb.DuckDBPyConnection) -> CheckinReport:
    """Write what changed in the file's state to PostgreSQL and advance the generation (the lock is held)."""
    import duckdb

    ensure_catalog(pg)
    db = database_id(pg)
    meta = _local_meta(con)
    entry = _entry(pg, sync)
    if entry is not None and (meta is None or meta != (db, entry[2])):
        raise SharedStateError(f"{sync!r}: the file is not at the state database's generation (it was not "
                               "checked out under the sync's lock): nothing was checked in")
    schema = entry[0] if entry is not None else pg_schema(sync)
    generation, token = (entry[1], entry[2]) if entry is not None else (0, uuid.uuid4().hex)
    recorded = {r[0]: r[1:] for r in pg.execute(f"SELECT name, kind, ddl, columns FROM "
                                                f"{CATALOG}.objects WHERE sync = %s", [sync]).fetchall()}
    report = CheckinReport(generation)
    # Made before the transaction: made inside it, a cursor marking a rewrite meanwhile would conflict.
    _make_local_catalog(con)
    con.execute("BEGIN")
    try:
        # Read in the transaction: a sequence is not transactional, so its position read now is at least
        # every id the rows of this snapshot hold (another cursor may have taken more: those are skipped).
        objects = local_objects(con)
        with pg.transaction():
            if entry is None:
                pg.execute(f"CREATE SCHEMA IF NOT EXISTS {_q(schema)}")
                pg.execute(f"INSERT INTO {CATALOG}.syncs VALUES (%s, %s, 0, %s, %s, now(), %s)",
                           [sync, schema, token, duckdb.__version__, _who()])
            changed = False
            # Dropped from the file; never a name this process does not know (it may not have imported the
            # module that registers it).
            for name in (recorded.keys() - objects.keys()) & state_names():
                pg.execute(f"DROP TABLE IF EXISTS {_q(schema)}.{_q(name)}")
                pg.execute(f"DELETE FROM {CATALOG}.objects WHERE sync = %s AND name = %s", [sync, name])
                changed = True
            hashed = {row[0] for row in con.execute(
                "SELECT table_name FROM duckdb_tables() WHERE schema_name = ? "
                "AND database_name = current_database()", [LOCAL]).fetchall()}
            for obj in objects.values():
                changed |= _check_in_object(pg, con, sync, schema, obj, recorded.get(obj.name), report,
                                            hashed)
            if changed:
                report.generation, token = generation + 1, uuid.uuid4().hex
                pg.execute(f"UPDATE {CATALOG}.syncs SET generation = %s, token = %s, duckdb = %s, "
                           "updated_at = now(), updated_by = %s WHERE sync = %s",
                           [report.generation, token, duckdb.__version__, _who(), sync])
            con.execute(f"DELETE FROM {LOCAL}.meta")
            con.execute(f"INSERT INTO {LOCAL}.meta VALUES (?, ?)", [db, token])
        # PostgreSQL committed: the file follows. Should the process die here, the file's generation is
        # behind the database's and the next session rebuilds it, so nothing is lost or counted twice.
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return report


def _who() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _check_in_object(pg, con, sync: str, schema: str, obj: Obj, recorded, report: CheckinReport,
                     hashed: set[str]) -> bool:
    if obj.kind in ("sequence", "view"):  # a sequence's DDL holds its position (START is its next value)
        if recorded is not None and recorded[1] == obj.ddl:
            return False
        _record(pg, sync, obj)
        return True
    target = f"{_q(schema)}.{_q(obj.name)}"
    columns = _columns_text(obj.columns)
    hashes = _hash_table(obj.name)
    new = recorded is None or recorded[1] != obj.ddl or recorded[2] != columns
    if new:
        pg.execute(f"DROP TABLE IF EXISTS {target}")
        defs = ", ".join(f"{_q(c.name)} {pg_type(c.type)}" for c in obj.columns)
        pg.execute(f"CREATE TABLE {target} ({defs}, _h bigint NOT NULL)")
        con.execute(f"CREATE OR REPLACE TABLE {hashes} (h BIGINT, n BIGINT)")
    elif "h_" + obj.name not in hashed:
        raise SharedStateError(f"the file lacks the record of what PostgreSQL holds of {obj.name!r}")
    append_only = obj.name in _append_only()
    if not new and append_only and (added := _added_rows(con, obj)) is not None:
        done = _check_in_added(pg, con, sync, target, obj, columns, added, report)
        if done is not None:
            return done
    if append_only:  # whatever the comparison below finds, PostgreSQL then holds these very rows
        _mark_appended(con, obj.name)
    # The hashes whose count differs between the file and what the database holds (as the file last saw it).
    con.execute(f"CREATE OR REPLACE TEMP TABLE _delta AS SELECT h, coalesce(n.n, 0) AS now_n, "
                f"coalesce(o.n, 0) AS old_n FROM (SELECT {_row_hash(obj.columns)} AS h, "
                f"count(*)::BIGINT AS n "
                f"FROM {_q(obj.name)} GROUP BY ALL) n FULL JOIN {hashes} o USING (h) "
                "WHERE n.n IS DISTINCT FROM o.n")
    changed, old_rows = con.execute("SELECT count(*), coalesce(sum(old_n), 0) FROM _delta").fetchone()
    if changed == 0 and recorded is not None and recorded[1] == obj.ddl and recorded[2] == columns:
        con.execute("DROP TABLE _delta")
        return False
    before = con.execute(f"SELECT coalesce(sum(n), 0) FROM {hashes}").fetchone()[0]
    deleted = written = 0
    if changed:
        if old_rows:
            gone = [h for (h,) in con.execute("SELECT h FROM _delta WHERE old_n > 0").fetchall()]
            deleted = pg.execute(f"DELETE FROM {target} WHERE _h = ANY(%s)", [gone]).rowcount
        written = _copy_in(pg, con, target, obj)
        con.execute(f"DELETE FROM {hashes} WHERE h IN (SELECT h FROM _delta)")
        con.execute(f"INSERT INTO {hashes} SELECT h, now_n FROM _delta WHERE now_n > 0")
        report.tables_changed += 1
        report.rows_deleted += deleted
        report.rows_written += written
    if new:  # indexed after its first load: one sort, not a random insert per row
        pg.execute(f"CREATE INDEX ON {target} (_h)")
    _record_table(pg, con, sync, target, obj, columns, moved=deleted + written, before=before)
    con.execute("DROP TABLE _delta")
    return True


def _record_table(pg, con, sync: str, target: str, obj: Obj, columns: str, *, moved: int,
                  before: int) -> None:
    """Record in the catalog what PostgreSQL now holds of `obj` (its rows: the file's record of their hashes),
    once `moved` rows of the `before` it held were written or deleted."""
    rows = con.execute(f"SELECT coalesce(sum(n), 0) FROM {_hash_table(obj.name)}").fetchone()[0]
    if moved > max(1_000, before // 10):
        # The planner's statistics, so the next DELETE by hash uses the index: a server whose autovacuum is
        # off or behind would otherwise plan it as a scan of the whole table (seconds at 1M rows).
        pg.execute(f"ANALYZE {target}")
    _record(pg, sync, obj, columns=columns, rows=rows)


def _added_rows(con: duckdb.DuckDBPyConnection, obj: Obj) -> str | None:
    """For an append-only table, the condition of the rows added since the last check-in (a rowid range),
    or None when they cannot be told apart: never checked in so, rewritten in place since (marked), or a
    row gone or numbered among the old ones (the count below the mark moved). Then every row is compared."""
    mark = con.execute(f"SELECT high, rows FROM {LOCAL}.appended WHERE name = ?", [obj.name]).fetchone()
    if mark is None or con.execute(f"SELECT count(*) FROM {LOCAL}.rewritten WHERE name = ?",
                                   [obj.name]).fetchone()[0]:
        return None
    high, rows = mark
    if con.execute(f"SELECT count(*) FROM {_q(obj.name)} WHERE rowid <= ?", [high]).fetchone()[0] != rows:
        return None
    return f"rowid > {int(high)}"


def _check_in_added(pg, con, sync: str, target: str, obj: Obj, columns: str, added: str,
                    report: CheckinReport) -> bool | None:
    """Check in the rows of an append-only table added since the last check-in (`added`): their hashes join
    the file's record of what PostgreSQL holds, and they are copied in; nothing else is read. Returns whether
    anything changed, or None, reading nothing more, when a hash is one PostgreSQL holds already (the same row
    twice): the whole comparison, which rewrites all rows of a changed hash, does that case."""
    hashes = _hash_table(obj.name)
    con.execute(f"CREATE OR REPLACE TEMP TABLE _delta AS SELECT {_row_hash(obj.columns)} AS h, "
                f"count(*)::BIGINT AS now_n FROM {_q(obj.name)} WHERE {added} GROUP BY ALL")
    count, known = con.execute(f"SELECT count(*), count(*) FILTER (WHERE h IN (SELECT h FROM {hashes})) "
                               "FROM _delta").fetchone()
    if known:
        con.execute("DROP TABLE _delta")
        return None
    if count:
        before = con.execute(f"SELECT coalesce(sum(n), 0) FROM {hashes}").fetchone()[0]
        written = _copy_in(pg, con, target, obj, where=added)
        con.execute(f"INSERT INTO {hashes} SELECT h, now_n FROM _delta")
        report.tables_changed += 1
        report.rows_written += written
        _mark_appended(con, obj.name)
        _record_table(pg, con, sync, target, obj, columns, moved=written, before=before)
    con.execute("DROP TABLE _delta")
    return count > 0


def _copy_in(pg, con, target: str, obj: Obj, *, where: str | None = None) -> int:
    """The file's rows of `obj` whose hash changed (or, `where`, the rows it selects), into PostgreSQL;
    returns how many."""
    exprs = [_pg_text(c) for c in obj.columns]
    names = ", ".join([_q(c.name) for c in obj.columns] + ["_h"])
    where = where or f"{_row_hash(obj.columns)} IN (SELECT h FROM _delta WHERE now_n > 0)"
    with tempfile.NamedTemporaryFile(suffix=".csv", delete=False) as spool:
        pass  # a name for DuckDB's COPY to write to
    try:
        con.execute(f"COPY (SELECT {', '.join(exprs)}, {_row_hash(obj.columns)} AS _h FROM {_q(obj.name)} "
                    f"WHERE {where}) TO '{_sql_path(spool.name)}' (FORMAT csv, HEADER false)")
        with pg.cursor().copy(f"COPY {target} ({names}) FROM STDIN (FORMAT csv)") as copy, \
                open(spool.name, "rb") as f:
            while block := f.read(_CHUNK):
                copy.write(block)
        return int(con.execute("SELECT coalesce(sum(now_n), 0) FROM _delta").fetchone()[0])
    finally:
        os.unlink(spool.name)


def _pg_text(column: Column) -> str:
    """The DuckDB expression whose CSV text PostgreSQL takes for `column`. PostgreSQL's text cannot hold
    NUL, so a NUL in a string becomes U+FFFD there: such a row comes back changed (and is checked in again
    with each session) instead of stopping every check-in of its sync."""
    if column.type == "VARCHAR":
        return f"replace({_q(column.name)}, chr(0), '\ufffd')"
    return _q(column.name) if column.scalar else f"replace({_q(column.name)}::VARCHAR, chr(0), '\ufffd')"


def _sql_path(path: str) -> str:
    return path.replace("'", "''")


def _record(pg, sync: str, obj: Obj, *, columns: str | None = None, rows: int | None = None) -> None:
    pg.execute(f"INSERT INTO {CATALOG}.objects VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (sync, name) "
               "DO UPDATE SET kind = EXCLUDED.kind, ddl = EXCLUDED.ddl, columns = EXCLUDED.columns, "
               "rows = EXCLUDED.rows", [sync, obj.name, obj.kind, obj.ddl, columns, rows])


# --- sessions --------------------------------------------------------------------------------------------

class _Session:
    def __init__(self, pg, sync: str, shared: bool) -> None:
        self.pg, self.sync, self.shared = pg, sync, shared
        self.con: duckdb.DuckDBPyConnection | None = None  # the file, opened by the checkout
        self.checked_in = time.monotonic()


def checkpoint_seconds() -> float:
    """SEGMENT_OPS_STATE_CHECKPOINT_SECONDS: how often a long delivery checks in what it has logged."""
    raw = os.environ.get(CHECKPOINT_SETTING) or str(DEFAULT_CHECKPOINT_SECONDS)
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 3600:
        raise ValueError(f"{CHECKPOINT_SETTING} must be a number of seconds from 0 to 3600, not {raw!r}")
    return value


def checkpoint(con: duckdb.DuckDBPyConnection, *, force: bool = False) -> CheckinReport | None:
    """Check in now what the session owning `con` has logged, if it last did so at least
    `checkpoint_seconds()` ago, or at once with `force` (None: not due, or `con` is not a session's: the
    embedded default, a joined session, or a reader). Between two statements only: never inside an open
    transaction of `con`.

    So a worker killed during a long delivery costs the next worker, on any machine, at most that much of it
    to send again (Segment drops the repeats by messageId; a destination without dedupe receives them)."""
    with _GUARD:
        own = next((s for s in _SESSIONS.values() if s.con is con and not s.shared), None)
    if own is None or (not force and time.monotonic() - own.checked_in < checkpoint_seconds()):
        return None
    report = checkin(own.pg, own.sync, con)
    own.checked_in = time.monotonic()
    return report


_SESSIONS: dict[tuple[str, str, int], _Session] = {}  # (url, file, thread) -> its open session
_GUARD = threading.RLock()


@contextmanager
def session(url: str, sync: str, path: Path, connect, *, shared: bool,
            lock_timeout: float) -> Iterator[_Session | None]:
    """Hold `sync`'s lock, with `path` the copy of the database's last check-in and opened (`_Session.con`:
    read-only for a shared session), for the body; the caller checks in and closes the file.

    Within a session of this thread for the same file, an inner one joins it (None: the lock is held, the
    file current; the outer one checks in); another thread's session waits for the lock like a process.
    The inner one of a shared session must be shared too: an exclusive session inside a shared one of the
    same thread would wait for itself."""
    key = (url, str(Path(path).resolve()), threading.get_ident())  # another thread waits for the lock
    with _GUARD:
        joined = _SESSIONS.get(key)
    if joined is not None:
        if joined.shared and not shared:
            raise SharedStateError(f"{sync!r}: a session to write was opened inside one to read")
        yield None
        return
    pg = connect_pg(url)
    own = _Session(pg, sync, shared)
    try:
        ensure_catalog(pg)
        acquire(pg, sync, shared=shared, timeout=lock_timeout)
        own.con = checkout(pg, sync, Path(path), connect, read_only=shared)
        with _GUARD:
            _SESSIONS[key] = own
        try:
            yield own
        finally:
            with _GUARD:
                _SESSIONS.pop(key, None)
    finally:
        pg.close()  # ends the session: PostgreSQL releases its advisory locks


@contextmanager
def _catalog(url: str) -> Iterator:
    """A connection to the state database, its catalog made if missing; closed after."""
    pg = connect_pg(url)
    try:
        ensure_catalog(pg)
        yield pg
    finally:
        pg.close()


def pg_has(url: str, sync: str) -> bool:
    """Whether the state database holds `sync`."""
    with _catalog(url) as pg:
        return _entry(pg, sync) is not None


def syncs_in(url: str) -> list[str]:
    """Every sync the state database holds, by name."""
    with _catalog(url) as pg:
        return [row[0] for row in pg.execute(f"SELECT sync FROM {CATALOG}.syncs ORDER BY sync").fetchall()]
