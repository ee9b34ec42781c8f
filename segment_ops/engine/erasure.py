"""Erasure at home: once Segment accepted a DELETE regulation for a data subject (a userId), segment_ops
erases that subject from its own stores (issue 20).

What each state table does is declared beside it (`StateSchema.erase`); `erase_subjects` runs those
declarations in one staging file, ledger first, and then suppresses whatever was still to be sent about the
subject; `erase_everywhere` does so in every sync's staging file of a home and rewrites the webhook inbox
files that name the subject. `find_subject` lists every place still holding the subject's text, searching
all of it rather than the places erasure knows, so that a store erasure forgets is found.

A subject is matched exactly: a column equal to it, or a JSON string equal to it inside a text (found as the
subject in quotes, so no JSON is parsed). A Heap identity (an email) that an identity map staged in a file
resolves to the subject is erased with it. Nothing here knows a sync: the engine's tables and identity maps,
the registry, and the inbox's files.
"""

from __future__ import annotations

import csv
import functools
import json
import mmap
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import duckdb
import orjson

from segment_ops.engine import identity, pgstate, store
from segment_ops.engine.journal import staging_path
from segment_ops.engine.ledger import AWAITING_ACK, HELD, PENDING, Ledger, MessageState
from segment_ops.engine.ledger import STATE as LEDGER
from segment_ops.engine.sql import literal, quote

# What a subject's text becomes inside free text that is kept (a rejection's reason, a destination's error).
REDACTED = "<erased>"
INBOX_FOLDER = "inbox"  # <home>/inbox/<name>/: the webhook and request inboxes
# The ledger's states from which a message could still be sent: an erased one is suppressed instead (those
# other than planned first become planned again, the only step to suppressed `TRANSITIONS` allows them).
_UNSENT = (PENDING, HELD, AWAITING_ACK, MessageState.IN_FLIGHT.value)
_SUPPRESSED = MessageState.SUPPRESSED.value


class ErasureIncompleteError(RuntimeError):
    """Some staging files could not be erased (another process kept them locked): what could be erased was,
    and erasing again is harmless. `report` says what was done, `missed` which files were not."""

    def __init__(self, message: str, report: ErasureReport, missed: Sequence[str]) -> None:
        super().__init__(message)
        self.report, self.missed = report, list(missed)


@dataclass
class ErasureReport:
    """What an erasure did, in counts and places only: it never names a subject (it goes to run metadata)."""

    subjects: int = 0  # distinct identifiers asked for
    aliases: int = 0  # further identifiers an identity map resolves to them (e.g. a Heap identity)
    rows: dict[str, int] = field(default_factory=dict)  # "<staging file>/<table>" -> rows erased or cleared
    suppressed: dict[str, int] = field(default_factory=dict)  # ledger sync -> messages still to be sent
    files: dict[str, int] = field(default_factory=dict)  # inbox file (from the home) -> lines, items removed
    not_rewritten: list[str] = field(default_factory=list)  # inbox files naming one in a format not known
    seconds: float = 0.0

    def add(self, other: ErasureReport) -> None:
        """Take in the places and counts of `other` (another file's erasure)."""
        for mine, theirs in ((self.rows, other.rows), (self.suppressed, other.suppressed),
                             (self.files, other.files)):
            for key, count in theirs.items():
                mine[key] = mine.get(key, 0) + count
        self.not_rewritten += other.not_rewritten
        self.seconds += other.seconds

    def as_metadata(self) -> dict[str, int]:
        return {"subjects": self.subjects, "aliases": self.aliases, "rows_erased": sum(self.rows.values()),
                "messages_suppressed": sum(self.suppressed.values()),
                "inbox_files_rewritten": len(self.files), "inbox_items_removed": sum(self.files.values()),
                "inbox_files_not_rewritten": len(self.not_rewritten)}


def erase_subjects(con: duckdb.DuckDBPyConnection, subjects: Sequence[str], *, reason: str,
                   skip: Collection[str] = ()) -> ErasureReport:
    """Erase `subjects` from the staging file open (for writing) on `con`, and return what was done.

    Every registered schema the file holds runs its `erase` (the ledger's first), in one transaction, with
    the identifiers that the file's identity maps resolve to a subject erased alongside; identity maps (copies
    of the warehouse the runs leave in the file) lose their rows too. Then every erased message that could
    still be sent is suppressed, with `reason` (without any subject's text) as its error. Idempotent: a second
    erasure finds nothing more. Schemas are taken from the registry: import the syncs first (a run has).
    `skip`: schemas (by name) known to hold nothing of these subjects, left unread (e.g. the ledger and the
    diff of a run that withheld the subjects' rows before planning: the costly scans of a large file).
    """
    return _erase_file(con, _identifiers(subjects), set(), reason, skip)[0]


def erase_everywhere(home: str | Path, subjects: Sequence[str], *, reason: str,
                     lock_timeout: float = 60.0, last: Path | None = None) -> ErasureReport:
    """Erase `subjects` from every sync's staging file of the home `home` (with SEGMENT_OPS_STATE_URL, from
    PostgreSQL too: each is opened with `store.staging`), then from its inbox files (`<home>/inbox/`).

    Aliases (identities an identity map in any of the files resolves to a subject) are gathered first and
    erased everywhere. A file locked for longer than `lock_timeout` is left for now: the rest is erased, then
    `ErasureIncompleteError` says which files were missed (erasing again is harmless). `last`: a staging file
    erased only once every other one was (the regulations', whose record of the subjects is what makes the
    next run erase again a file this one missed).
    """
    started = time.monotonic()
    wanted = _identifiers(subjects)
    report = ErasureReport(subjects=len(wanted))
    if not wanted:
        return report
    files = store.staging_files(home)
    missed: list[str] = []
    aliases: set[str] = set()
    for path in files:
        try:
            with store.staging(path, read_only=True, threads=1, lock_timeout=lock_timeout) as con:
                aliases |= _aliases(con, wanted)
        except store.StagingLockedError:
            pass  # its maps are read again when it is erased
    ordered = [p for p in files if last is None or p.resolve() != last.resolve()]
    for path in ordered + ([last] if last is not None and last.resolve() in {p.resolve() for p in files}
                           else []):
        if path is last and missed:
            missed.append(path.name)  # kept until every other file is erased
            continue
        try:
            with store.staging(path, lock_timeout=lock_timeout) as con:
                done, found = _erase_file(con, wanted, aliases, reason)
        except store.StagingLockedError:
            missed.append(path.name)
            continue
        aliases |= found
        report.add(done)
    _erase_inbox(Path(home), wanted | aliases, report)
    report.aliases = len(aliases - wanted)
    report.seconds = time.monotonic() - started
    if missed:
        raise ErasureIncompleteError(f"{len(missed)} staging file(s) stayed locked for {lock_timeout:.0f}s "
                                     f"and were not erased: {', '.join(missed)}; erase again", report, missed)
    return report


def mapped_ids(con: duckdb.DuckDBPyConnection, digests: Sequence[str]) -> set[str]:
    """The ids (userIds) the identity maps a run left in this file map to whose sha256 is one of `digests`:
    the users a regulation knows only by digest, found again in a map rebuilt from the warehouse."""
    if not digests:
        return set()
    found: set[str] = set()
    for table in _identity_maps(con, _tables(con)):
        if set(_columns(con, table)) == set(identity.COLUMNS):
            found |= {row[0] for row in con.execute(
                f"SELECT DISTINCT target_id FROM {quote(table)} "
                "WHERE sha256(target_id) IN (SELECT unnest(?::VARCHAR[]))", [list(digests)]).fetchall()}
    return found


def find_subject(home: str | Path, subject: str, *, lock_timeout: float = 60.0) -> list[str]:
    """Every place in the home `home` still holding `subject`'s text (read only): each table of each staging
    file (every column as text), the other files beside them (outcome journals, write-ahead logs) and every
    file under `<home>/inbox/`. Text, not ids: a longer id containing it is found as well."""
    home = Path(home)
    places: list[str] = []
    for path in store.staging_files(home):
        with store.staging(path, read_only=True, threads=1, lock_timeout=lock_timeout) as con:
            places += [f"staging/{path.name}: {table} ({rows} rows)"
                       for table, rows in _holding(con, subject)]
    staging = home / "staging"
    if staging.is_dir():
        places += [f"staging/{p.name}" for p in sorted(staging.iterdir())
                   if p.is_file() and p.suffix != ".duckdb" and _file_mentions(p, [subject])]
    places += [str(p.relative_to(home)) for p in _inbox_files(home) if _file_mentions(p, [subject])]
    return places


# --- one staging file ---------------------------------------------------------------------------------------

def _erase_file(con: duckdb.DuckDBPyConnection, wanted: set[str], aliases: set[str],
                reason: str, skip: Collection[str] = ()) -> tuple[ErasureReport, set[str]]:
    """`erase_subjects` with `aliases` found elsewhere; returns the report and the aliases found here."""
    started = time.monotonic()
    report = ErasureReport(subjects=len(wanted))
    if not wanted:
        return report, set()
    name = _file_name(con)
    present = [schema for schema in _present_schemas(con) if schema.name not in skip]
    for schema in present:
        store.ensure(con, schema)  # a file of an older layout is brought up to date, as a run would
    with_ledger = LEDGER in present
    if with_ledger:
        Ledger(con)  # logs what journals of stopped deliveries hold first: their outcomes are the ledger's
    found = _aliases(con, wanted) - wanted
    identifiers = wanted | aliases | found
    report.aliases = len(identifiers - wanted)
    tables = _tables(con)
    _prepare(con, identifiers)
    try:
        con.execute("BEGIN")
        try:
            for schema in present:
                if schema.erase is None or schema.erase.startswith(store.NO_SUBJECTS):
                    continue
                if any(t not in tables for t in schema.derived):
                    continue  # not made in this file yet: nothing of anyone in it
                for table in schema.append_only:
                    store.rewritten(con, table)
                for statement in duckdb.extract_statements(schema.erase):
                    _count(report, name, statement, con.execute(statement.query))
            for table in _identity_maps(con, tables):
                rows = _delete_identities(con, table)
                if rows:
                    report.rows[f"{name}/{table}"] = rows
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        if with_ledger:
            report.suppressed = _suppress_erased(Ledger(con, create=False), _scrubbed(reason, identifiers))
    finally:
        _unprepare(con)
    con.execute("CHECKPOINT")  # the erased values leave the write-ahead log
    report.seconds = time.monotonic() - started
    return report, found


def _identifiers(subjects: Iterable[str]) -> set[str]:
    return {s.strip() for s in subjects if isinstance(s, str) and s.strip()}


def _file_name(con: duckdb.DuckDBPyConnection) -> str:
    path = staging_path(con)
    return path.stem if path is not None else "memory"


def _tables(con: duckdb.DuckDBPyConnection) -> set[str]:
    return {row[0] for row in con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main' "
        "AND database_name = current_database() AND NOT temporary").fetchall()}


def _present_schemas(con: duckdb.DuckDBPyConnection) -> list[store.StateSchema]:
    """The registered schemas of which the file holds a table, the ledger's first (the others may find the
    erased messages by their tombstone)."""
    tables = _tables(con)
    present = [schema for schema in store.registered() if tables & set(schema.tables)]
    return sorted(present, key=lambda schema: schema != LEDGER)


def _prepare(con: duckdb.DuckDBPyConnection, identifiers: set[str]) -> None:
    """The temp tables and macros the schemas' `erase` SQL is written with:

    - `erased_subjects(subject, digest)`: the identifiers, with their sha256 (what the regulations keep);
    - `erased_id(t)`: `t` is one of them (surrounding blanks aside);
    - `erased_in(t)`: `t` is one, or holds one as a JSON string (the subject in quotes, in each form a JSON
      writer may escape it: no JSON is parsed);
    - `names_erased(t)`: `t` holds one's text anywhere; `erased_text(t)`: `t` with that text as REDACTED;
    - `erased_key(t)`: a key naming one becomes `erased:<sha256 of the key>` (distinct keys stay distinct);
    - `erased_messages(sync, seq, message_id, status)`: empty here; the ledger's erasure fills it with every
      erased message of the file, for the schemas after it (and for `_suppress_erased`).

    Text is searched with one regular expression of every identifier (RE2, linear in the text whatever their
    number), never a join of the texts with the identifiers: a scan of a million payloads stays in the
    memory a streaming scan needs.
    """
    ordered = sorted(identifiers, key=lambda s: (-len(s), s))  # a longer id first: its text holds a shorter
    forms = {f for s in ordered for f in (orjson.dumps(s).decode(), json.dumps(s))}
    forms |= {row[0] for row in con.execute("SELECT to_json(unnest(?::VARCHAR[]))::VARCHAR", [ordered]
                                            ).fetchall()}
    ids, quoted = _pattern(ordered), _pattern(sorted(forms, key=lambda f: (-len(f), f)))
    con.execute("CREATE OR REPLACE TEMP TABLE erased_subjects AS SELECT s.subject, "
                "sha256(s.subject) AS digest FROM (SELECT unnest(?::VARCHAR[]) AS subject) s", [ordered])
    con.execute("CREATE OR REPLACE TEMP MACRO erased_id(t) AS "
                "trim(t) IN (SELECT subject FROM erased_subjects)")
    con.execute(f"CREATE OR REPLACE TEMP MACRO erased_in(t) AS erased_id(t) OR regexp_matches(t, {quoted})")
    con.execute(f"CREATE OR REPLACE TEMP MACRO names_erased(t) AS regexp_matches(t, {ids})")
    con.execute(f"CREATE OR REPLACE TEMP MACRO erased_text(t) AS regexp_replace(t, {ids}, "
                f"{literal(REDACTED)}, 'g')")
    con.execute("CREATE OR REPLACE TEMP MACRO erased_key(t) AS "
                "CASE WHEN names_erased(t) THEN 'erased:' || sha256(t) ELSE t END")
    # Replaced by the ledger's erasure where the file has a ledger (its erased messages, for the others').
    con.execute("CREATE OR REPLACE TEMP TABLE erased_messages (sync VARCHAR, seq BIGINT, message_id VARCHAR, "
                "status VARCHAR)")


def _pattern(texts: Sequence[str]) -> str:
    """A SQL literal of the regular expression matching any of `texts` (the first that matches wins: longer
    ones come first)."""
    return literal("|".join(re.escape(text) for text in texts))


def _unprepare(con: duckdb.DuckDBPyConnection) -> None:
    for macro in ("erased_key", "erased_text", "names_erased", "erased_in", "erased_id"):
        con.execute(f"DROP MACRO IF EXISTS {macro}")
    con.execute("DROP TABLE IF EXISTS erased_messages")
    con.execute("DROP TABLE IF EXISTS erased_subjects")


def _count(report: ErasureReport, name: str, statement: duckdb.Statement,
           result: duckdb.DuckDBPyConnection) -> None:
    """Add the rows an UPDATE, DELETE or INSERT of an `erase` changed to its table's count."""
    if statement.type not in (duckdb.StatementType.UPDATE, duckdb.StatementType.DELETE,
                              duckdb.StatementType.INSERT):
        return
    changed = result.fetchone()[0]
    written = store.written_table(statement.query)
    if changed and written:
        key = f"{name}/{written}"
        report.rows[key] = report.rows.get(key, 0) + changed


def _aliases(con: duckdb.DuckDBPyConnection, wanted: set[str]) -> set[str]:
    """The vendor ids that the file's identity maps (`engine/identity.py`) resolve to one of `wanted`."""
    found: set[str] = set()
    for table in _identity_maps(con, _tables(con)):
        columns = _columns(con, table)
        if "target_id" in columns:
            found |= {row[0] for row in con.execute(
                f"SELECT DISTINCT trim(source_id) FROM {quote(table)} WHERE trim(target_id) IN "
                "(SELECT unnest(?::VARCHAR[])) AND source_id IS NOT NULL", [sorted(wanted)]).fetchall()}
        else:  # `<map>_ambiguous`: a source id with several targets, one of them a subject's
            found |= {row[0] for row in con.execute(
                f"SELECT DISTINCT trim(source_id) FROM {quote(table)} "
                "WHERE list_has_any(targets, ?::VARCHAR[]) AND source_id IS NOT NULL",
                [sorted(wanted)]).fetchall()}
    return found


def _identity_maps(con: duckdb.DuckDBPyConnection, tables: set[str]) -> list[str]:
    """The identity maps a run staged in the file (`identity.stage_identity_map`: a map and its
    `_ambiguous` list), which are not state and so have no `erase` of their own."""
    state = pgstate.state_names()
    maps = []
    for table in sorted(tables - state):
        columns = set(_columns(con, table))
        if columns == set(identity.COLUMNS) or columns == {"source_id", "targets"}:
            maps.append(table)
    return maps


def _delete_identities(con: duckdb.DuckDBPyConnection, table: str) -> int:
    """Delete the rows of an identity map whose source or target is an identifier; returns how many."""
    if "target_id" in _columns(con, table):
        target = "erased_id(target_id)"
    else:
        target = "list_has_any(targets, (SELECT list(subject) FROM erased_subjects))"
    return con.execute(f"DELETE FROM {quote(table)} WHERE erased_id(source_id) OR {target}").fetchone()[0]


def _columns(con: duckdb.DuckDBPyConnection, table: str, schema: str = "main") -> dict[str, str]:
    return dict(con.execute("SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = ? "
                            "AND schema_name = ? AND database_name = current_database() "
                            "ORDER BY column_index", [table, schema]).fetchall())


def _suppress_erased(ledger: Ledger, reason: str) -> dict[str, int]:
    """Suppress every erased message that could still be sent (planned, held, awaiting confirmation: the
    ledger's erasure lists them all in `erased_messages`, by their tombstone), so that no delivery ever meets
    one; returns how many per sync. Those not planned are planned again first, just before
    (the only step to suppressed that `TRANSITIONS` allows them). By the tombstone, not the subject: a stop
    between the erasure and these steps is completed by the next erasure, whatever its subjects."""
    why = f"erased at home: {reason}"
    found: dict[str, int] = {}
    unsent = ledger.con.execute("SELECT sync, seq, status FROM erased_messages WHERE status IN "
                                "(SELECT unnest(?::VARCHAR[])) ORDER BY sync, seq", [list(_UNSENT)]
                                ).fetchall()
    for sync in sorted({row[0] for row in unsent}):
        mine = [(seq, status) for s, seq, status in unsent if s == sync]
        ledger.log_outcomes(sync, [(seq, PENDING, 0, why) for seq, status in mine if status != PENDING])
        ledger.log_outcomes(sync, [(seq, _SUPPRESSED, 0, why) for seq, _ in mine])
        found[sync] = len(mine)
    return found


def _scrubbed(text: str, identifiers: Iterable[str]) -> str:
    for subject in sorted(identifiers, key=lambda s: (-len(s), s)):
        text = text.replace(subject, REDACTED)
    return text


def _holding(con: duckdb.DuckDBPyConnection, subject: str) -> Iterator[tuple[str, int]]:
    """(table, rows) of every table of the file (any schema) whose rows hold `subject`'s text in a column."""
    for schema, table in con.execute(
            "SELECT schema_name, table_name FROM duckdb_tables() WHERE database_name = current_database() "
            "AND NOT temporary ORDER BY schema_name, table_name").fetchall():
        columns = _columns(con, table, schema)
        if not columns:
            continue
        where = " OR ".join(f"contains(CAST({quote(c)} AS VARCHAR), $s)" for c in columns)
        rows = con.execute(f"SELECT count(*) FROM {quote(schema)}.{quote(table)} WHERE {where}",
                           {"s": subject}).fetchone()[0]
        if rows:
            yield (table if schema == "main" else f"{schema}.{table}"), rows


# --- the inbox's files -------------------------------------------------------------------------------------

def _inbox_files(home: Path) -> list[Path]:
    """Every file under `<home>/inbox/`, archived and kept-aside ones too."""
    root = home / INBOX_FOLDER
    if not root.is_dir():
        return []
    return sorted(Path(folder) / name for folder, _, names in os.walk(root) for name in names)


def _erase_inbox(home: Path, identifiers: set[str], report: ErasureReport) -> None:
    """Rewrite each inbox file naming an identifier without what is about it (`_REWRITERS`), atomically, and
    in the table too where its inbox is kept in PostgreSQL. A file of a format not known is listed, left."""
    from segment_ops.receivers import inbox as durable

    root = home / INBOX_FOLDER
    if not root.is_dir():
        return
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if durable.adopt_shared(folder):
            durable.pull(folder)  # items only the table held are here now, and erased with the rest
    for path in _inbox_files(home):
        if not _file_mentions(path, identifiers):
            continue
        shown = str(path.relative_to(home))
        rewrite = _REWRITERS.get(path.suffix.lower())
        removed: list[int] = []
        try:
            if rewrite is None:
                raise _NotRewritable
            durable.rewrite_item(path, functools.partial(_rewritten, rewrite, path, identifiers, removed))
        except _NotRewritable:
            report.not_rewritten.append(shown)
            continue
        report.files[shown] = report.files.get(shown, 0) + sum(removed)


def _rewritten(rewrite: Callable[[Path, set[str], BinaryIO], int], path: Path, identifiers: set[str],
               removed: list[int], out: BinaryIO) -> None:
    removed.append(rewrite(path, identifiers, out))


class _NotRewritable(Exception):
    """The file cannot be read in its format (erasure leaves it as it is, and says so)."""


def _forms(identifiers: Iterable[str]) -> list[bytes]:
    """Each identifier as bytes a file may hold it in: UTF-8, and escaped as an ASCII JSON writer does."""
    return sorted({f for s in identifiers for f in (s.encode(), json.dumps(s)[1:-1].encode())})


def _file_mentions(path: Path, identifiers: Iterable[str]) -> bool:
    """Whether the file holds an identifier's text (searched in place, not read into memory); a Parquet
    file's compressed pages are read through DuckDB."""
    if path.suffix.lower() == ".parquet":
        return _parquet_rows(path, identifiers) > 0
    try:
        with open(path, "rb") as handle:
            if os.fstat(handle.fileno()).st_size == 0:
                return False
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
                return any(data.find(form) >= 0 for form in _forms(identifiers))
    except (OSError, ValueError):
        return False


def _json_lines(path: Path, identifiers: set[str], out: BinaryIO) -> int:
    """JSON lines: a line about an identifier becomes blank, so the other lines keep their numbers (replay and
    the request inbox report them). Streamed, a line at a time."""
    forms, removed = _forms(identifiers), 0
    with open(path, "rb") as source:
        for line in source:
            body = line.rstrip(b"\r\n")
            if any(form in body for form in forms) and _line_about(body, identifiers):
                out.write(line[len(body):])
                removed += 1
            else:
                out.write(line)
    return removed


def _line_about(line: bytes, identifiers: set[str]) -> bool:
    try:
        return _holds(orjson.loads(line), identifiers)
    except orjson.JSONDecodeError:  # not JSON: about the subject when it names one as a JSON string would
        return any(f.encode() in line for s in identifiers for f in (orjson.dumps(s).decode(), json.dumps(s)))


def _holds(value: object, identifiers: set[str]) -> bool:
    """Whether a JSON value holds an identifier as a string or a key, at any depth."""
    if isinstance(value, str):
        return value.strip() in identifiers
    if isinstance(value, dict):
        return any(k in identifiers or _holds(v, identifiers) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds(v, identifiers) for v in value)
    return False


def _json_document(path: Path, identifiers: set[str], out: BinaryIO) -> int:
    """A JSON document (a Heap page: `add` and `remove` lists of identities): list items holding an identifier
    go, keys that are one go, string values that are one become null, and an identifier inside a longer
    string (a query string, a body kept as text) becomes `REDACTED` there."""
    try:
        document = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError:
        raise _NotRewritable from None
    cleaned, removed = _without(document, identifiers, _within(identifiers))
    out.write(orjson.dumps(cleaned))
    return removed


# A character an identifier (an id, an email) is made of: an identifier inside a longer string counts only
# where none of these touches it, so `usr_1` is not found in `usr_10`, nor `a@b.com` in `xa@b.com`.
_ID_CHARS = r"A-Za-z0-9_@.+-"  # `-` last: itself, not a range


def _within(identifiers: Collection[str]) -> re.Pattern[str]:
    """An identifier standing as a token inside a longer string (the longest first)."""
    ordered = sorted(identifiers, key=lambda s: (-len(s), s))
    return re.compile(f"(?<![{_ID_CHARS}])(?:{'|'.join(map(re.escape, ordered))})(?![{_ID_CHARS}])")


def _without(value: object, identifiers: set[str], within: re.Pattern[str]) -> tuple[object, int]:
    """`value` without an identifier, and at how many places one was."""
    if isinstance(value, str):
        scrubbed, n = within.subn(REDACTED, value)
        return scrubbed, n
    if isinstance(value, list):
        kept = [v for v in value if not _holds(v, identifiers)]
        cleaned = [_without(v, identifiers, within) for v in kept]
        return [v for v, _ in cleaned], len(value) - len(kept) + sum(n for _, n in cleaned)
    if isinstance(value, dict):
        out, removed = {}, 0
        for key, item in value.items():
            if key in identifiers:
                removed += 1
            elif isinstance(item, str) and item.strip() in identifiers:
                out[key], removed = None, removed + 1
            else:
                out[key], n = _without(item, identifiers, within)
                removed += n
        return out, removed
    return value, 0


def _csv(path: Path, identifiers: set[str], out: BinaryIO) -> int:
    """CSV: a row with a field that is an identifier goes (never the header); the other rows are written as
    they were, byte for byte (a row may span lines: the raw lines each row was read from are kept)."""
    raw: list[str] = []
    removed = 0
    try:
        with open(path, encoding="utf-8", newline="") as source:
            def lines() -> Iterator[str]:
                for line in source:
                    raw.append(line)
                    yield line

            for number, row in enumerate(csv.reader(lines())):
                text, raw[:] = "".join(raw), []
                if number and any(cell.strip() in identifiers for cell in row):
                    removed += 1
                else:
                    out.write(text.encode())
            out.write("".join(raw).encode())
    except (UnicodeDecodeError, csv.Error):
        raise _NotRewritable from None
    return removed


def _row_holds(identifiers: Iterable[str]) -> str:
    """SQL: the row `t` of a Parquet file holds an identifier as a JSON string (in the row's JSON form)."""
    forms = sorted({orjson.dumps(s).decode() for s in identifiers})
    return " OR ".join(f"contains(to_json(t)::VARCHAR, {literal(f)})" for f in forms)


def _parquet_rows(path: Path, identifiers: Iterable[str]) -> int:
    """How many rows of the Parquet file hold an identifier (0 for a file DuckDB cannot read)."""
    con = duckdb.connect()
    try:
        return con.execute(f"SELECT count(*) FROM read_parquet(?) t WHERE {_row_holds(identifiers)}",
                           [str(path)]).fetchone()[0]
    except duckdb.Error:
        return 0
    finally:
        con.close()


def _parquet(path: Path, identifiers: set[str], out: BinaryIO) -> int:
    """Parquet: the rows holding an identifier go (DuckDB writes the rest to a scratch file, copied out)."""
    removed = _parquet_rows(path, identifiers)
    con = duckdb.connect()
    try:
        with tempfile.TemporaryDirectory(prefix="segment_ops_erasure_") as scratch:
            target = Path(scratch) / "rewritten.parquet"
            con.execute(f"COPY (SELECT * FROM read_parquet({literal(str(path))}) t "
                        f"WHERE NOT ({_row_holds(identifiers)})) TO {literal(str(target))} (FORMAT parquet)")
            with open(target, "rb") as rewritten:
                shutil.copyfileobj(rewritten, out)
    except duckdb.Error:
        raise _NotRewritable from None
    finally:
        con.close()
    return removed


# How each format of inbox file is rewritten without a subject: (path, identifiers, out) -> places removed.
_REWRITERS: dict[str, Callable[[Path, set[str], BinaryIO], int]] = {
    ".jsonl": _json_lines, ".ndjson": _json_lines, ".json": _json_document, ".csv": _csv,
    ".parquet": _parquet}
