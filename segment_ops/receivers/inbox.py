"""The durable webhook inbox on plain files: what a receiver acknowledges is on disk before it answers.

Plain files, so a receiver needs no database and any number of receiver processes can share a folder with
the runs that read it. A vendor's layout (in its sync) is made of batches, one folder each, holding items
written once (numbered parts, a summary) and a done marker; nothing here knows a vendor's format.

With the state in PostgreSQL (SEGMENT_OPS_STATE_URL), an inbox `share`d by its sync is kept there too, so
receivers on several machines (replicas behind a load balancer) and the runs that read them share one inbox
without a shared disk: an item is written first to the table `segment_ops_state.inbox_files`, whose key
makes the first copy win across machines, and committed before the receiver answers; moving a batch into
the archive and pruning it happen there as well. Each machine's folder is then a copy, brought to the
table's content by `pull` before it is read (items written, items moved or pruned elsewhere removed, each
file's time the item's), so everything above that reads files works unchanged. A file the table never held
(a folder's items from before the setting, or a receiver without it on the same folder) is uploaded by
`pull`, never deleted: only paths the table records as gone are.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import orjson

from segment_ops.engine.pgstate import CATALOG, STATE_URL

DONE_MARKER = "done.json"
CONFLICTS_FOLDER = "conflicts"
# Batches that were processed move to `<root>/.archive/<YYYY-MM-DD>/<batch>/` (the day they were archived),
# out of the live folder, so the work of whoever lists the inbox stays proportional to what is new; a day
# folder is deleted whole once it is older than the retention. Hidden: `batch_folders` never lists it.
ARCHIVE_FOLDER = ".archive"
_ARCHIVE_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


class InboxError(RuntimeError):
    """A file or folder of the inbox could not be read or written; the message names it."""


class Conflict(Exception):
    """An item disagrees with what its batch already holds: the first copy is kept and this one is never
    applied. The message says what differs (no payload, no secret: it may be the sender's answer);
    `differences` names the fields, `kept_aside` is where this copy was saved (None if it could not be)."""

    def __init__(self, message: str, *, kept_aside: Path | None, differences: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.kept_aside, self.differences = kept_aside, tuple(differences)


def store_item(target: Path, record: bytes, *, content: bytes,
               differences: Callable[[dict], Sequence[str]]) -> bool:
    """Store `record` at `target` unless an item is stored there already: the first copy wins.

    Returns True when this call stored it, False for a repeat: `differences(stored record)` is empty, so
    the item is kept once however often the sender retries. Otherwise raises `Conflict`, with `content`
    (what this copy says, without when it arrived) kept aside by `keep_aside`. Raises `InboxError` when the
    folder cannot be written."""
    if not target.exists():
        archived = make_batch_dirs(target.parent)
        if archived is None:
            if write_once(target, record):
                return True
            # Another receiver stored it in between: this copy is compared with that one.
        else:  # archived since the caller saw it: the item is answered from the archive
            target = archived / target.name
            if not target.exists():
                raise Conflict(f"{archived.name} was processed and archived without {target.name}",
                               kept_aside=keep_aside(target, content))
    differ = list(differences(read_json(target)))
    if not differ:
        return False
    raise Conflict(f"{target.name} is already stored with a different {', '.join(differ)}",
                   kept_aside=keep_aside(target, content), differences=differ)


def make_batch_dirs(batch: Path) -> Path | None:
    """Create the live folder `batch` for a new item, unless the archive holds it: a batch located as live
    may be archived (`archive_batch`) before its item is written, and `make_dirs` would then make an empty
    live batch anew. Returns the archived batch (the live folder just made removed again), else None.
    Checked after the folder is made, which is safe: only batches with a done marker are archived, so a
    folder without one, made after the check found no archive, stays live."""
    make_dirs(batch)
    archived = archived_batch(batch.parent, batch.name)
    if archived is not None:
        # OSError: removed by a concurrent receiver already (or not empty: then left as it is)
        with contextlib.suppress(OSError):
            batch.rmdir()
    return archived


def keep_aside(target: Path, content: bytes) -> Path | None:
    """Save a copy of `target` that disagrees with the stored one under its batch's `conflicts/`, named by
    a hash of `content`: one file per distinct content, so retries add nothing. Never applied. Returns
    None when it cannot be saved (the conflict is answered all the same)."""
    digest = hashlib.sha256(content).hexdigest()[:16]
    aside = target.parent / CONFLICTS_FOLDER / f"conflict-{target.stem}-{digest}{target.suffix}"
    try:
        make_dirs(aside.parent)
        write_once(aside, content)
    except InboxError:
        return None
    return aside


def mark_done(batch: Path, info: Mapping[str, object]) -> bool:
    """Write `batch`'s done marker (`info` and `done_at`): only once its processing is over, never before,
    so a crash leaves it to be processed again. A second call keeps the first marker (returns False)."""
    return write_once(batch / DONE_MARKER, orjson.dumps({**info, "done_at": datetime.now(UTC).isoformat()}))


def is_done(batch: Path) -> bool:
    return (batch / DONE_MARKER).exists()


def done_at(batch: Path) -> datetime | None:
    """When `batch` was marked done (the marker's `done_at`, else its file time), or None if it is not."""
    path = batch / DONE_MARKER
    if not path.exists():
        return None
    when = read_json(path).get("done_at")
    return datetime.fromisoformat(when) if when else datetime.fromtimestamp(path.stat().st_mtime, UTC)


def batch_folders(root: Path) -> Iterator[Path]:
    """The folders directly in `root`, in no order (hidden ones aside); none when `root` does not exist."""
    if not root.is_dir():
        return
    for entry in os.scandir(root):
        if entry.is_dir() and not entry.name.startswith("."):
            yield Path(entry.path)


def archive_batch(batch: Path, when: datetime | None = None) -> Path:
    """Move a processed `batch` into its root's archive (one atomic rename, both folders fsynced); returns
    where it now is. Raises `InboxError` when it cannot be moved (it stays, and is moved next time)."""
    day = (when or datetime.now(UTC)).date().isoformat()
    target = batch.parent / ARCHIVE_FOLDER / day / batch.name
    move_batch(batch, target)
    return target


def move_batch(batch: Path, target: Path) -> None:
    """Rename the folder `batch` to `target` (a new name under the same root): one atomic rename, both parent
    folders fsynced; in a shared inbox, in the table first. Raises `InboxError` when it cannot be moved (onto
    an existing non-empty folder it fails: never merged)."""
    if (where := _shared(batch)) is not None:
        _shared_move(where[0], where[1], _relative(where[0], target))
    make_dirs(target.parent)
    try:
        os.rename(batch, target)
    except FileNotFoundError:
        if where is None:
            raise InboxError(f"cannot move {batch} to {target}: it does not exist") from None
        # Shared: moved in the table, the only truth; the next `pull` brings this folder along.
    except OSError as exc:
        raise InboxError(f"cannot move {batch} to {target}: {exc}") from exc
    fsync_dir(batch.parent)
    fsync_dir(target.parent)


def archived_batch(root: Path, name: str) -> Path | None:
    """Where the archive of `root` keeps the batch `name` (the latest day first), or None. A stat per day
    folder: at most the retention's days."""
    for day in reversed(archive_days(root)):
        if (day / name).is_dir():
            return day / name
    return None


def archived_batches(root: Path) -> Iterator[Path]:
    """Every archived batch of `root`, in no order."""
    for day in archive_days(root):
        yield from batch_folders(day)


def archive_days(root: Path) -> list[Path]:
    """The day folders of `root`'s archive, oldest first."""
    archive = root / ARCHIVE_FOLDER
    if not archive.is_dir():
        return []
    return sorted(archive / name for name in os.listdir(archive) if _ARCHIVE_DAY.fullmatch(name))


def prune_archive(root: Path, older_than: datetime) -> list[Path]:
    """Delete the archive's day folders of days before `older_than`'s; returns those deleted. A folder that
    cannot be deleted raises `InboxError` (the rest stay for the next call)."""
    cutoff = older_than.date().isoformat()
    pruned = []
    shared = _shared(root / ARCHIVE_FOLDER)
    for day in archive_days(root):
        if day.name >= cutoff:
            break
        if shared is not None:
            _shared_delete(shared[0], f"{ARCHIVE_FOLDER}/{day.name}/", older_than)
        try:
            shutil.rmtree(day)
        except OSError as exc:
            raise InboxError(f"cannot delete the archived {day}: {exc}") from exc
        pruned.append(day)
    return pruned


def numbered_parts(batch: Path, prefix: str) -> list[tuple[int, Path]]:
    r"""The files `<prefix>-<n>.json` of `batch` with their numbers, in number order (2 before 10).

    `n` is ASCII digits without a leading zero, and the whole name must match (`fullmatch`: with `$`,
    `page-1.json\n` would pass, and `\d` takes any script's digits): one file per number."""
    if not batch.is_dir():
        return []
    pattern = re.compile(rf"{re.escape(prefix)}-(0|[1-9][0-9]*)\.json")
    return sorted((int(m.group(1)), batch / m.group(0)) for name in os.listdir(batch)
                  if (m := pattern.fullmatch(name)))


def read_json(path: Path) -> dict:
    try:
        return orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise InboxError(f"cannot read inbox file {path}: {exc}") from exc


def write_once(target: Path, data: bytes) -> bool:
    """Create `target` with `data` durably unless it exists; returns False when it already existed.

    Written to a temporary file in the same folder, fsynced, then hard-linked to its name: the link fails if
    the name exists, so the first copy wins atomically (a second receiver racing on it loses cleanly) and a
    reader never sees half a file. The folder is fsynced after the link, so the entry survives a crash.
    In a shared inbox, the table decides which copy is first (and refuses an item of a batch archived
    meanwhile), and the file is the table's copy."""
    if (where := _shared(target)) is not None:
        stored = _shared_write_once(*where, data)
        if stored is not None:
            make_dirs(target.parent)
            _write_file(target, stored)
        return stored is data
    return _write_file(target, data)


def _write_file(target: Path, data: bytes) -> bool:
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, target)  # atomic create-if-absent
        except FileExistsError:
            return False
        fsync_dir(target.parent)
        return True
    except OSError as exc:
        raise InboxError(f"cannot write {target}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)


def make_dirs(folder: Path) -> None:
    """Create `folder` and any missing parent, fsyncing each new folder's parent so the entry is durable
    before anything in it is acknowledged."""
    missing = []
    current = folder
    while not current.is_dir():
        missing.append(current)
        current = current.parent
    try:
        for path in reversed(missing):
            # exist_ok: a concurrent receiver may have created it; its parent is fsynced all the same
            path.mkdir(exist_ok=True)
            fsync_dir(path.parent)
    except OSError as exc:
        raise InboxError(f"cannot create {folder}: {exc}") from exc


def fsync_dir(folder: Path) -> None:
    """Make a new directory entry (a file linked, a folder made or renamed) durable (POSIX; a no-op where
    directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --- an inbox shared through PostgreSQL (SEGMENT_OPS_STATE_URL) ---------------------------------------------

_SHARED_ROOTS: dict[Path, str] = {}  # a shared inbox's folder (resolved) -> its name in the table
_PG = threading.local()
_FILES = f"{CATALOG}.inbox_files"  # beside pgstate's catalog, in the state database
_DDL = f"""
CREATE TABLE IF NOT EXISTS {_FILES} (
    inbox     text NOT NULL,         -- the inbox's name (its folder's, e.g. heap)
    path      text NOT NULL,         -- the item's path in the inbox, '/'-separated (batch/item, .archive/...)
    data      bytea NOT NULL,
    stored_at timestamptz NOT NULL,
    PRIMARY KEY (inbox, path)
);
-- Paths the table held and no longer holds (moved into the archive, pruned): a machine's copy of one is
-- removed, while a file the table never held (written by a receiver without the setting) is uploaded.
CREATE TABLE IF NOT EXISTS {CATALOG}.inbox_gone (
    inbox   text NOT NULL,
    path    text NOT NULL,
    gone_at timestamptz NOT NULL,
    PRIMARY KEY (inbox, path)
);
"""
_GONE = f"{CATALOG}.inbox_gone"


def share(root: Path) -> bool:
    """With SEGMENT_OPS_STATE_URL set, keep the inbox at `root` in PostgreSQL (its folder's name names it);
    returns whether it is shared. Idempotent."""
    from segment_ops.engine import pgstate

    if pgstate.state_url() is None:
        return False
    _SHARED_ROOTS[Path(root).resolve()] = Path(root).name
    return True


def _shared(path: Path) -> tuple[Path, str] | None:
    """(root, path relative to it) when `path` lies in a shared inbox (and the setting is still there)."""
    if not _SHARED_ROOTS or not os.environ.get(STATE_URL):
        return None
    resolved = Path(path).resolve()  # as `share` keeps the roots: a home reached by a symlink is the same
    for root in _SHARED_ROOTS:
        if resolved == root or root in resolved.parents:
            return root, _relative(root, resolved)
    return None


def _relative(root: Path, path: Path) -> str:
    return Path(path).resolve().relative_to(root).as_posix()


def _pg():
    """This thread's connection to the state database (receivers answer on several threads)."""
    import psycopg

    from segment_ops.engine import pgstate

    url = pgstate.state_url()
    con = getattr(_PG, "con", None)
    if con is None or con.closed or getattr(_PG, "url", None) != url:
        if con is not None:
            con.close()
        try:
            con = pgstate.connect_pg(url)
            pgstate.ensure_catalog(con)
            with con.transaction():  # receivers starting together: one makes the tables
                con.execute("SELECT pg_advisory_xact_lock(hashtext('segment_ops inbox tables'))")
                con.execute(_DDL)
        except pgstate.SharedStateError as exc:
            raise InboxError(str(exc)) from None
        except psycopg.Error as exc:
            raise InboxError(f"cannot prepare the shared inbox's tables: {type(exc).__name__}") from None
        _PG.con, _PG.url = con, url
    return con


def _bury(pg, inbox: str, like: str) -> None:
    """Record the paths matching `like` as gone (moved or pruned), in the caller's transaction."""
    pg.execute(f"INSERT INTO {_GONE} SELECT inbox, path, now() FROM {_FILES} WHERE inbox = %s "
               "AND path LIKE %s ON CONFLICT (inbox, path) DO UPDATE SET gone_at = now()", [inbox, like])


@contextlib.contextmanager
def _table(doing: str) -> Iterator:
    """This thread's connection to the state database, in a transaction; a database error becomes an
    `InboxError` saying what could not be done (its class only: a driver's words may quote data)."""
    import psycopg

    try:
        pg = _pg()
        with pg.transaction():
            yield pg
    except psycopg.Error as exc:
        raise InboxError(f"cannot {doing}: {type(exc).__name__}") from None


def _batch_lock(pg, inbox: str, batch: str) -> None:
    """Serialize writes into a batch with its move: an item never lands in a batch archived meanwhile."""
    pg.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"segment_ops inbox {inbox}/{batch}"])


def _shared_write_once(root: Path, relative: str, data: bytes) -> bytes | None:
    """Store the item unless it is stored already; returns the stored copy (`data` itself when this call
    stored it), or None when its batch was archived meanwhile (the caller finds no file to compare with and
    fails; the sender's retry is answered from the archive)."""
    inbox, batch = _SHARED_ROOTS[root], relative.split("/", 1)[0]
    with _table(f"store {relative} in the shared inbox {inbox!r}") as pg:
        if not batch.startswith("."):
            _batch_lock(pg, inbox, batch)
            archived = pg.execute(f"SELECT 1 FROM {_FILES} WHERE inbox = %s AND path LIKE %s LIMIT 1",
                                  [inbox, f"{ARCHIVE_FOLDER}/%/{_like(batch)}/%"]).fetchone()
            live = pg.execute(f"SELECT 1 FROM {_FILES} WHERE inbox = %s AND path LIKE %s LIMIT 1",
                              [inbox, f"{_like(batch)}/%"]).fetchone()
            if archived and not live:
                return None
        row = pg.execute(f"INSERT INTO {_FILES} VALUES (%s, %s, %s, now()) ON CONFLICT DO NOTHING "
                         "RETURNING 1", [inbox, relative, data]).fetchone()
        if row is not None:
            pg.execute(f"DELETE FROM {_GONE} WHERE inbox = %s AND path = %s", [inbox, relative])
            return data
        return bytes(pg.execute(f"SELECT data FROM {_FILES} WHERE inbox = %s AND path = %s",
                                [inbox, relative]).fetchone()[0])


def _shared_move(root: Path, relative: str, target: str) -> None:
    inbox = _SHARED_ROOTS[root]
    with _table(f"move {relative} in the shared inbox {inbox!r}") as pg:
        _batch_lock(pg, inbox, relative.split("/", 1)[0])
        if pg.execute(f"SELECT 1 FROM {_FILES} WHERE inbox = %s AND path LIKE %s LIMIT 1",
                      [inbox, f"{_like(target)}/%"]).fetchone():
            raise InboxError(f"cannot move {relative} to {target} in the shared inbox {inbox!r}: "
                             "the target holds items already (never merged)")
        _bury(pg, inbox, f"{_like(relative)}/%")
        pg.execute(f"UPDATE {_FILES} SET path = %s || substr(path, %s) WHERE inbox = %s AND path LIKE %s",
                   [target, len(relative) + 1, inbox, f"{_like(relative)}/%"])


def _shared_delete(root: Path, prefix: str, older_than: datetime) -> None:
    inbox = _SHARED_ROOTS[root]
    with _table(f"delete {prefix} of the shared inbox {inbox!r}") as pg:
        like = _like(prefix) + "%"
        _bury(pg, inbox, like)
        pg.execute(f"DELETE FROM {_FILES} WHERE inbox = %s AND path LIKE %s", [inbox, like])
        # Tombstones outlive what they stand for by the archive's retention: every machine pulled since.
        pg.execute(f"DELETE FROM {_GONE} WHERE inbox = %s AND gone_at < %s", [inbox, older_than])


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def pull(root: Path) -> None:
    """Bring the folder of a shared inbox to the table's content (nothing for an inbox not shared): items it
    lacks are written (with the item's time as the file's); a file the table held once and no longer holds
    (moved or pruned on another machine) is removed; a file it never held (the items a folder kept before
    the setting, or written by a receiver without it) is uploaded, never lost; folders left empty go.
    Raises `InboxError`."""
    import psycopg

    where = _shared(root)
    if where is None:
        return
    resolved, inbox = where[0], _SHARED_ROOTS[where[0]]
    local = {_relative(resolved, Path(dirpath) / name): Path(dirpath) / name
             for dirpath, _, names in os.walk(resolved) for name in names if not name.startswith(".")}
    try:
        pg = _pg()
        held = dict(pg.execute(f"SELECT path, extract(epoch FROM stored_at) FROM {_FILES} WHERE inbox = %s",
                               [inbox]).fetchall())
        extra = sorted(local.keys() - held.keys())
        gone = {row[0] for row in pg.execute(f"SELECT path FROM {_GONE} WHERE inbox = %s AND path = ANY(%s)",
                                             [inbox, extra]).fetchall()} if extra else set()
        for relative in extra:
            if relative not in gone:
                path = local.pop(relative)
                pg.execute(f"INSERT INTO {_FILES} VALUES (%s, %s, %s, to_timestamp(%s)) ON CONFLICT "
                           "DO NOTHING", [inbox, relative, path.read_bytes(), path.stat().st_mtime])
        missing = sorted(held.keys() - local.keys())
        for start in range(0, len(missing), 500):
            for relative, data in pg.execute(f"SELECT path, data FROM {_FILES} WHERE inbox = %s "
                                             "AND path = ANY(%s)", [inbox, missing[start:start + 500]]):
                target = resolved / relative
                if target.exists():
                    continue
                make_dirs(target.parent)
                _write_file(target, bytes(data))
                os.utime(target, (float(held[relative]), float(held[relative])))
    except psycopg.Error as exc:
        raise InboxError(f"cannot read the shared inbox {inbox!r}: {type(exc).__name__}") from None
    except OSError as exc:
        raise InboxError(f"cannot bring {resolved} up to date: {exc}") from exc
    for relative in gone:
        local[relative].unlink(missing_ok=True)
    for dirpath, _, _ in sorted(os.walk(resolved), key=lambda entry: -len(entry[0])):
        if Path(dirpath) != resolved:
            with contextlib.suppress(OSError):
                Path(dirpath).rmdir()  # only if empty


# --- erasure of a data subject (`engine/erasure.py`) --------------------------------------------------------

def rewrite_item(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Replace the stored item at `path` with what `write` writes to the handle it is given: the one change
    an item gets after it was written once, when erasure removes a data subject from it. Atomic (written
    beside it, fsynced, renamed over it, the folder fsynced); in a shared inbox, in the table first. Another
    machine's copy of a shared item keeps its old bytes (`pull` never rewrites a file it has) until erasure
    runs there too. Raises `InboxError`; an error `write` raises leaves the item as it was."""
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if (where := _shared(path)) is not None:
            inbox, relative = _SHARED_ROOTS[where[0]], where[1]
            with _table(f"rewrite {relative} in the shared inbox {inbox!r}") as pg:
                _batch_lock(pg, inbox, relative.split("/", 1)[0])
                pg.execute(f"UPDATE {_FILES} SET data = %s WHERE inbox = %s AND path = %s",
                           [tmp.read_bytes(), inbox, relative])
        os.replace(tmp, path)
    except OSError as exc:
        raise InboxError(f"cannot rewrite {path}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def adopt_shared(root: Path) -> bool:
    """With SEGMENT_OPS_STATE_URL set, `share` the inbox at `root` when the table holds items under its name
    (its sync keeps it there), so that what is read and rewritten there is the table's; returns whether it is
    shared. An inbox the table never held stays a folder (sharing it would upload its files)."""
    from segment_ops.engine import pgstate

    if pgstate.state_url() is None:
        return False
    if Path(root).resolve() in _SHARED_ROOTS:
        return True
    with _table(f"look up the shared inbox {Path(root).name!r}") as pg:
        held = pg.execute(f"SELECT 1 FROM {_FILES} WHERE inbox = %s LIMIT 1", [Path(root).name]).fetchone()
    return held is not None and share(root)
