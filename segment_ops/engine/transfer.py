"""Backup and restore of one staging file's state: export to a folder, import into another home.

An export holds every registered state table of the file as Parquet, the sequences' positions, the files of
the sync's inbox folder, and a manifest (schema versions, row counts, SHA-256 of every file). It is what a
team moves to another machine or home: imported, the ledger there knows every message as delivered, so
nothing is sent again. Views and `state_schema_versions` are not exported: `store.ensure` remakes them.

Import checks everything before it writes: the manifest's format, every schema known and at this release's
version, every file's checksum, and a target holding no state of its own. With the state in PostgreSQL
(SEGMENT_OPS_STATE_URL), an export reads the database's state of the sync, and an import writes it there
(refused when the database holds the sync already): how a team moves from the embedded store to PostgreSQL.
It builds the store in a temporary file beside the target and renames it into place, so a stopped import
leaves no half-made store and can be run again (the inbox files, copied first, are copied again).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

import duckdb

from segment_ops.engine import journal, pgstate, store
from segment_ops.engine.ledger import STATE as LEDGER_STATE
from segment_ops.engine.ledger import Ledger

FORMAT = "segment_ops.state"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TABLES_DIR = "tables"
FILES_DIR = "files"
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # a staging file's stem, as the syncs name them


class TransferError(RuntimeError):
    """An export or import that cannot be done as asked; nothing was written."""


@dataclass(frozen=True)
class TransferReport:
    name: str
    schemas: dict[str, int]
    rows: dict[str, int]
    files: int


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _catalog(con: duckdb.DuckDBPyConnection) -> tuple[set[str], dict[str, int]]:
    """The file's base tables, and its sequences with their last value (0: never used)."""
    tables = {row[0] for row in con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE NOT temporary AND database_name = current_database()")
        .fetchall()}
    sequences = {name: last or 0 for name, last in con.execute(
        "SELECT sequence_name, last_value FROM duckdb_sequences() WHERE NOT temporary "
        "AND database_name = current_database()").fetchall()}
    return tables, sequences


def export_state(staging_file: Path, dest: Path, *, inbox: Path | None = None,
                 lock_timeout: float = 10.0) -> TransferReport:
    """Write the state of `staging_file` (and the files under `inbox`) to the new folder `dest`.

    The file is opened for writing, as a run opens it: the schemas it holds are brought to this release's
    versions first, so an export is always at the versions of the release that made it. A run holding the
    file makes this wait up to `lock_timeout` seconds, then fail. The inbox is copied while the file is
    held, and the export is built beside `dest` and renamed into place: a failed export leaves nothing."""
    if not store.has_state(staging_file):
        raise TransferError(f"no state to export: {staging_file} does not exist")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise TransferError(f"{dest} is not empty: export into a new folder")
    building = dest.with_name(f".{dest.name}.exporting")
    shutil.rmtree(building, ignore_errors=True)
    try:
        # A session, as a run's: with SEGMENT_OPS_STATE_URL the file is the database's state, under its lock.
        with store.staging(staging_file, lock_timeout=lock_timeout) as con:
            manifest = _export_into(con, staging_file.stem, building, inbox)
    except store.StagingLockedError as exc:
        shutil.rmtree(building, ignore_errors=True)
        raise TransferError(f"{exc}: a run is using it; export when it has finished") from exc
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    if dest.exists():
        dest.rmdir()  # empty, checked above
    os.replace(building, dest)
    return _report(manifest)


def _export_into(con: duckdb.DuckDBPyConnection, name: str, folder: Path, inbox: Path | None) -> dict:
    tables, _ = _catalog(con)
    present = [s for s in store.registered() if set(s.state_tables) & tables]
    for schema in present:
        store.ensure(con, schema)
    _recover_journals(con, present)
    tables, sequences = _catalog(con)
    (folder / TABLES_DIR).mkdir(parents=True)
    manifest: dict = {"format": FORMAT, "format_version": FORMAT_VERSION, "name": name,
                      "exported_at": datetime.now(UTC).isoformat(), "duckdb": duckdb.__version__,
                      "schemas": {s.name: s.version for s in present}, "tables": {}, "sequences": {},
                      "files": {}}
    for schema in present:
        for table in schema.state_tables:  # names from the registry, never from input
            if table in tables:
                target = folder / TABLES_DIR / f"{table}.parquet"
                quoted = str(target).replace("'", "''")  # COPY takes no parameter for its target
                con.execute(f"COPY (SELECT * FROM {table}) TO '{quoted}' (FORMAT parquet)")
                rows = con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                manifest["tables"][table] = {"schema": schema.name, "rows": rows, "sha256": _sha256(target)}
            elif table in sequences:
                manifest["sequences"][table] = sequences[table]
    if inbox is not None and inbox.is_dir():
        for path in sorted(p for p in inbox.rglob("*") if p.is_file()):
            relative = path.relative_to(inbox).as_posix()
            target = folder / FILES_DIR / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
            manifest["files"][relative] = _sha256(target)
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


def _recover_journals(con: duckdb.DuckDBPyConnection, present: list[store.StateSchema]) -> None:
    """Outcomes a stopped run left in journals beside the file belong to the state: log them first."""
    if LEDGER_STATE in present:
        Ledger(con)  # recovers every journal beside the file


def read_manifest(src: Path) -> dict:
    """The export's manifest, checked: its format, every schema known and at this release's version."""
    path = src / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise TransferError(f"{src} is not a state export: it has no {MANIFEST}") from exc
    except json.JSONDecodeError as exc:
        raise TransferError(f"{path} is not valid JSON: {exc}") from exc
    if manifest.get("format") != FORMAT:
        raise TransferError(f"{path} is not a segment_ops state export (format {manifest.get('format')!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise TransferError(f"{path} has export format version {manifest.get('format_version')}; this "
                            f"release reads version {FORMAT_VERSION}")
    try:
        _check_names(manifest)
    except (KeyError, TypeError, AttributeError) as exc:
        raise TransferError(f"{path} is malformed: {exc!r}") from exc
    for name, version in manifest["schemas"].items():
        schema = store.schema_named(name)
        if schema is None:
            raise TransferError(f"the export holds state schema {name!r}, which this release does not know: "
                                "import it with the release that exported it, or a newer one")
        if version != schema.version:
            newer = "newer" if version > schema.version else "older"
            raise TransferError(f"the export holds {name!r} at version {version}, {newer} than this "
                                f"release's {schema.version}: export and import with the same release "
                                "(opening the source store with this release upgrades it)")
    return manifest


def _check_names(manifest: dict) -> None:
    """Every name the import turns into a path or an SQL identifier is one this release could have written: a
    plain sync name, tables and sequences of the listed (registered) schemas, inbox paths inside the inbox."""
    if not isinstance(manifest["name"], str) or not NAME.fullmatch(manifest["name"]):
        raise TransferError(f"the export names its sync {manifest['name']!r}, which is not a sync name")
    listed = [store.schema_named(name) for name in manifest["schemas"]]
    allowed = {t for schema in listed if schema is not None for t in schema.state_tables}
    for table in [*manifest["tables"], *manifest["sequences"]]:
        if table not in allowed:
            raise TransferError(f"the export holds {table!r}, which is no table of the schemas it lists")
    for relative in manifest["files"]:
        parts = PurePosixPath(relative).parts
        if not parts or PurePosixPath(relative).is_absolute() or ".." in parts:
            raise TransferError(f"the export holds an inbox file outside its folder: {relative!r}")


def _verify_files(src: Path, manifest: dict) -> None:
    expected = [(src / TABLES_DIR / f"{name}.parquet", entry["sha256"])
                for name, entry in manifest["tables"].items()]
    expected += [(src / FILES_DIR / relative, digest) for relative, digest in manifest["files"].items()]
    for path, digest in expected:
        if not path.is_file():
            raise TransferError(f"the export is incomplete: {path} is missing")
        if _sha256(path) != digest:
            raise TransferError(f"{path} does not match its checksum in the manifest: the export was "
                                "changed or damaged")


def _holds_state(staging_file: Path) -> bool:
    if (url := pgstate.state_url()) is not None and pgstate.pg_has(url, staging_file.stem):
        return True
    if not staging_file.exists():
        return False
    con = store.connect(staging_file, read_only=True, threads=1)
    try:
        return store.holds_state(con)
    finally:
        con.close()


def import_state(src: Path, staging_file: Path, *, inbox: Path | None = None) -> TransferReport:
    """Make `staging_file` (which must hold no state) and `inbox` from the export in `src`."""
    manifest = read_manifest(src)
    _verify_files(src, manifest)
    try:
        if _holds_state(staging_file):
            raise TransferError(f"{staging_file} already holds state: importing would mix two histories. "
                                "Move it aside first (or export it, to keep it)")
    except store.StagingLockedError as exc:
        raise TransferError(f"{exc}: a run is using it") from exc
    if left := journal.leftovers(staging_file.resolve()):
        raise TransferError(f"outcome journals of another history lie beside {staging_file}: "
                            f"{', '.join(p.name for p in left)}; move them aside with the old file")
    if inbox is not None and inbox.is_dir():
        for path in (p for p in inbox.rglob("*") if p.is_file()):
            if manifest["files"].get(path.relative_to(inbox).as_posix()) != _sha256(path):
                raise TransferError(f"{inbox} holds {path.name}, which is not in the export: importing "
                                    "would mix two inboxes")
    staging_file.parent.mkdir(parents=True, exist_ok=True)
    building = staging_file.with_name(f".{staging_file.name}.importing")

    def fill(con: duckdb.DuckDBPyConnection) -> None:
        for name in manifest["schemas"]:
            store.ensure(con, store.schema_named(name))  # known: read_manifest checked every name
        derived = {t for s in store.registered() for t in s.derived}
        for name in manifest["tables"]:
            source = str(src / TABLES_DIR / f"{name}.parquet")
            if name in derived:  # made by its module's query, not by `create`: its columns are the export's
                con.execute(f"CREATE TABLE {name} AS SELECT * FROM read_parquet(?)", [source])
            else:
                con.execute(f"INSERT INTO {name} BY NAME SELECT * FROM read_parquet(?)", [source])
        for name, last in manifest["sequences"].items():
            if last:  # consume the used values, so new ids continue after the imported ones
                con.execute(f"SELECT max(nextval('{name}')) FROM range(?)", [int(last)])

    store.build_file(building, fill)
    if inbox is not None:  # before the store, and idempotent: an import stopped here can be run again
        for relative in manifest["files"]:
            target = inbox / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / FILES_DIR / relative, target)
    store.put_in_place(building, staging_file)
    if pgstate.state_url() is not None:
        with store.staging(staging_file):  # checked in to the state database now, not at the next run
            pass
    return _report(manifest)


def _report(manifest: dict) -> TransferReport:
    return TransferReport(manifest["name"], dict(manifest["schemas"]),
                          {name: entry["rows"] for name, entry in manifest["tables"].items()},
                          len(manifest["files"]))
