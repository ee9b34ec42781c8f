"""The Heap webhook inbox: one JSON file per received page or drain, under `<SEGMENT_OPS_HOME>/inbox/heap/`.

    inbox/heap/sync-<key>/sync.json        the sync's summary, written with its first page: its sync_task_id as
                                           Heap sent it, segment id and name, total_pages, first_received (the
                                           sensor reads only this)
    inbox/heap/sync-<key>/page-<n>.json    one page, as validated, with when Heap signed it and when it arrived
    inbox/heap/sync-<key>/done.json        written once the sync's run delivered it (never before)
    inbox/heap/sync-<key>/conflicts/       copies that disagree with what is stored, kept aside, never applied
    inbox/heap/drain-<key>/drain.json      one `segment.users.drain`, with its signed time
    inbox/heap/drain-<key>/done.json       written once a run applied it (or recorded it, policy `ignore`)

A sync's `<key>` is a hash of its `sync_task_id` (`heap.sync_key`): Heap's ids may be any string (spec §7),
so no id reaches the file system; the original is kept in `sync.json` and in every page for display and
logs. Only `sync-<32 hex>` and `drain-<key>` (no pages in it) are folders of this layout: a folder of the older
layout (`inbox/heap/<sync_task_id>/`, its raw id, which may itself start with `sync-` or `drain-`) is
moved into this one by `migrate_old_layout` (the sensor calls it every tick): renamed to
`sync-<key of its id>`, atomically, its parent fsynced, so a pending sync in it is then applied like any
other; a folder that cannot be moved is reported. A drain's `<key>` is a hash of its signed body (`heap.DrainRequest.key`): a drain has no id of its
own, so Heap's retries of it (signed again, same body) are stored once.

Plain files, so the receiver needs no database and any number of receiver processes can share the
folder with the Dagster sensor and runs:
- every file is written to a temporary file in its folder, fsynced, then hard-linked to its final
  name: the link fails if the file exists, so the first copy wins atomically and a retried page is
  stored once (a second receiver racing on the same page loses cleanly);
- every folder created (`inbox/`, `inbox/heap/`, the sync's) and every file linked is followed by an
  fsync of its parent folder before the receiver answers 200, so an acknowledged page survives a crash;
- nothing is deleted: a processed sync keeps its pages beside its `done.json` marker.

What `store` does with a page that meets stored data (the receiver answers with the HTTP status shown):
- same (sync_task_id, page_number), same content (segment id, total_pages, add, remove): a repeat, kept
  once - 200 `{"stored": false}`;
- same page number, different content: `PageConflict` - 409; the first copy stays the one applied, the
  other is kept aside under `conflicts/` (one file per distinct content, so Heap's retries add nothing)
  and the receiver logs it;
- a page whose segment id or total_pages differ from its sync's `sync.json`: `PageConflict` - 409, kept
  aside the same way (pages of one sync must agree);
- a page of a sync already marked done: a done sync is complete (a run only applies complete syncs), so
  every page number is stored already and the two cases above apply: an identical repeat is answered
  200 and never re-applied (runs read only syncs without `done.json`), a different copy gets 409 and is
  kept aside. Nothing arriving late is silently dropped, and nothing is applied twice.
A drain stored again (same body) while the first copy is unapplied is a retry: 200 `{"stored": false}`, the
first copy and its signed time are kept. Heap's drain body carries no time or id, so a repeat of an
*applied* drain is either a late retry or Heap draining the segment again; it is told apart as follows
(`store_drain`):
- a sync of the same segment was applied after the drain: stored as a new drain, `drain-<key>-<n>`
  (generation n), but **held** - the sensor reports it and starts no run; a run naming it with
  `confirm_drop` applies it (a retry Heap re-signed would exit the members that sync added);
- more than `DRAIN_REPEAT_HORIZON` (24 h) after the drain was applied, with no sync since: a new drain,
  applied like any other;
- otherwise a retry: 200 `{"stored": false, "done": true}`, not applied again.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

from segment_ops.syncs.heap.webhook import DrainRequest, SyncPage, sync_key

DONE_MARKER = "done.json"
SUMMARY_FILE = "sync.json"
DRAIN_FILE = "drain.json"
CONFLICTS_FOLDER = "conflicts"
SYNC_PREFIX, DRAIN_PREFIX = "sync-", "drain-"
_PAGE_FILE = re.compile(r"^page-(\d+)\.json$")
# A repeat of an applied drain arriving this long after it was applied (and no sync since) is a new drain:
# Heap retries only a delivery it saw fail, and it syncs a segment about every 4 hours, so a day-old
# "retry" of an acknowledged drain is far likelier a second drain (Heap's retry schedule is not documented).
DRAIN_REPEAT_HORIZON = timedelta(hours=24)
_SYNC_FOLDER = re.compile(r"^sync-[0-9a-f]{32}$")


class InboxError(RuntimeError):
    """A page or marker could not be read or written; the message names the file."""


class PageConflict(Exception):
    """A page disagrees with what the inbox already holds for its sync; the first copy is kept. The message
    says what differs (no payload, no secret, no path: it is the receiver's answer); `kept_aside` is where
    this copy was saved (None if it could not be)."""

    def __init__(self, message: str, *, sync_task_id: str, page_number: int, kept_aside: Path | None) -> None:
        super().__init__(message)
        self.sync_task_id, self.page_number, self.kept_aside = sync_task_id, page_number, kept_aside


@dataclass(frozen=True)
class InboxSync:
    """What the inbox holds for one `sync_task_id`."""

    sync_task_id: str  # as Heap sent it (any string)
    segment_id: int
    segment_name: str
    total_pages: int
    pages: tuple[int, ...]  # page numbers received, sorted
    first_received: datetime
    last_received: datetime
    done: bool

    @property
    def key(self) -> str:
        return sync_key(self.sync_task_id)

    @property
    def complete(self) -> bool:
        return set(self.pages) >= set(range(1, self.total_pages + 1))

    @property
    def missing_pages(self) -> tuple[int, ...]:
        return tuple(sorted(set(range(1, self.total_pages + 1)) - set(self.pages)))


@dataclass(frozen=True)
class InboxDrain:
    """One stored `segment.users.drain`."""

    key: str
    segment_id: int
    segment_name: str
    signed_at: datetime  # when Heap signed it (its last delivery attempt): how it is ordered against syncs
    received_at: datetime
    done: bool
    held: str | None = None  # why it waits for a run with confirm_drop (a repeat after a newer sync)


@dataclass(frozen=True)
class StoredDrain:
    """What `store_drain` did: `key` is the drain's inbox key (a generation's for a repeat stored anew)."""

    key: str
    stored: bool
    done: bool = False
    held: str | None = None


class Inbox:
    """The folder of received Heap segment-sync pages and drains."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @classmethod
    def for_home(cls, home: str | Path) -> Inbox:
        return cls(Path(home) / "inbox" / "heap")

    def sync_folder(self, sync_task_id: str) -> Path:
        return self.root / f"{SYNC_PREFIX}{sync_key(sync_task_id)}"

    def drain_folder(self, key: str) -> Path:
        return self.root / f"{DRAIN_PREFIX}{key}"

    def store(self, page: SyncPage, *, signed_at: int | None = None, received_at: datetime | None = None) -> bool:
        """Write `page` durably unless that (sync_task_id, page_number) is already stored; `signed_at` is the
        `Heap-Hash` timestamp (ms).

        Returns True when this call stored it, False for an identical repeat (the first copy is kept).
        Raises `PageConflict` when the page disagrees with the stored copy or with its sync's other pages,
        `InboxError` when the folder cannot be written.
        """
        folder = self.sync_folder(page.sync_task_id)
        target = folder / f"page-{page.page_number}.json"
        if target.exists():
            return self._repeat_or_conflict(page, target)
        received = received_at or datetime.now(UTC)
        _make_dirs(folder)
        summary = {"sync_task_id": page.sync_task_id, "segment": {"id": page.segment_id, "name": page.segment_name},
                   "total_pages": page.total_pages, "first_received": received.isoformat()}
        if not _write_once(folder / SUMMARY_FILE, orjson.dumps(summary)):
            known = self._read(folder / SUMMARY_FILE)
            if known.get("sync_task_id", page.sync_task_id) != page.sync_task_id:  # a hash collision: never merge
                raise self._conflict(page, "another sync_task_id is stored under the same key")
            if (int(known["segment"]["id"]), int(known["total_pages"])) != (page.segment_id, page.total_pages):
                raise self._conflict(page, f"its sync has segment {known['segment']['id']} and "
                                           f"{known['total_pages']} page(s), this page says segment "
                                           f"{page.segment_id} and {page.total_pages} page(s)")
        record = {
            "sync_task_id": page.sync_task_id, "page_number": page.page_number, "total_pages": page.total_pages,
            "segment": {"id": page.segment_id, "name": page.segment_name},
            "received_at": received.isoformat(), "signed_at": signed_at,
            "add": list(page.add), "remove": list(page.remove),
            "id_token": page.id_token, "customer_config": page.customer_config,
        }
        if _write_once(target, orjson.dumps(record)):
            return True
        return self._repeat_or_conflict(page, target)  # another receiver stored it in between

    def store_drain(self, drain: DrainRequest, *, signed_at: int, received_at: datetime | None = None) -> StoredDrain:
        """Write `drain` durably unless it is a retry of a stored one (see the module docstring for a repeat
        of an applied drain). `signed_at` (the `Heap-Hash` timestamp, ms) orders it against syncs. Raises
        `InboxError`."""
        received = received_at or datetime.now(UTC)
        generation, key = 0, drain.key
        while (self.drain_folder(f"{drain.key}-{generation + 1}") / DRAIN_FILE).exists():
            generation, key = generation + 1, f"{drain.key}-{generation + 1}"
        held = None
        if (self.drain_folder(key) / DRAIN_FILE).exists():
            done_at = self._drain_done_at(key)
            if done_at is None:
                return StoredDrain(key, stored=False)  # a retry of a drain not applied yet
            resynced = self._sync_applied_since(drain.segment_id, done_at)
            if not resynced and received - done_at <= DRAIN_REPEAT_HORIZON:
                return StoredDrain(key, stored=False, done=True)  # a retry of an applied drain
            if resynced:
                held = (f"the same drain as {key}, applied at {done_at.isoformat()}, arrived again after a sync of "
                        f"segment {drain.segment_id} was applied: Heap draining again, or a late retry Heap "
                        "signed anew (applying it would then exit that sync's members)")
            generation, key = generation + 1, f"{drain.key}-{generation + 1}"
        folder = self.drain_folder(key)
        _make_dirs(folder)
        record = {"kind": "drain", "key": key, "segment": {"id": drain.segment_id, "name": drain.segment_name},
                  "signed_at": signed_at, "received_at": received.isoformat(), "generation": generation,
                  "held": held, "id_token": drain.id_token, "customer_config": drain.customer_config}
        if _write_once(folder / DRAIN_FILE, orjson.dumps(record)):
            return StoredDrain(key, stored=True, held=held)
        return StoredDrain(key, stored=False, done=self.is_drain_done(key))  # another receiver stored it first

    def _drain_done_at(self, key: str) -> datetime | None:
        path = self.drain_folder(key) / DONE_MARKER
        if not path.exists():
            return None
        done_at = self._read(path).get("done_at")
        return datetime.fromisoformat(done_at) if done_at else datetime.fromtimestamp(path.stat().st_mtime, UTC)

    def _sync_applied_since(self, segment_id: int, since: datetime) -> bool:
        """Whether a sync of `segment_id` was marked done after `since` (a stat per sync, a read per newer one)."""
        for folder in self._folders(SYNC_PREFIX):
            try:
                done = (folder / DONE_MARKER).stat().st_mtime
            except FileNotFoundError:
                continue
            if done > since.timestamp() and int(self._read(folder / SUMMARY_FILE)["segment"]["id"]) == segment_id:
                return True
        return False

    def is_done(self, sync_task_id: str) -> bool:
        return (self.sync_folder(sync_task_id) / DONE_MARKER).exists()

    def is_drain_done(self, key: str) -> bool:
        return (self.drain_folder(key) / DONE_MARKER).exists()

    def syncs(self, *, include_done: bool = False) -> list[InboxSync]:
        """Every sync in the inbox (not yet processed, unless `include_done`), oldest first."""
        found = []
        for folder in self._folders(SYNC_PREFIX):
            done = (folder / DONE_MARKER).exists()
            if done and not include_done:
                continue
            summary = self._summary(folder, done)
            if summary is not None:
                found.append(summary)
        return sorted(found, key=lambda s: (s.first_received, s.sync_task_id))

    def sync(self, sync_task_id: str) -> InboxSync | None:
        folder = self.sync_folder(sync_task_id)
        return self._summary(folder, (folder / DONE_MARKER).exists()) if folder.is_dir() else None

    def old_layout_folders(self) -> list[Path]:
        """Folders that are neither a sync nor a drain of this layout: a sync stored under its raw id by a
        receiver from before ids were hashed (`migrate_old_layout` moves them)."""
        if not self.root.is_dir():
            return []
        return sorted(Path(e.path) for e in os.scandir(self.root) if e.is_dir() and not e.name.startswith(".")
                      and not _SYNC_FOLDER.match(e.name) and not self._is_drain_folder(Path(e.path)))

    def _is_drain_folder(self, folder: Path) -> bool:
        # A drain folder holds drain.json, never pages; an old sync whose raw id starts with "drain-" holds pages.
        return folder.name.startswith(DRAIN_PREFIX) and not self._page_files(folder)

    def migrate_old_layout(self) -> list[tuple[Path, str]]:
        """Move every folder of the older layout to `sync-<key of its sync_task_id>` (one atomic rename each,
        then an fsync of `inbox/heap`); returns the folders that could not be moved, with why."""
        failed = []
        for folder in self.old_layout_folders():
            problem = self._migrate(folder)
            if problem is not None:
                failed.append((folder, problem))
        return failed

    def _migrate(self, folder: Path) -> str | None:
        files = self._page_files(folder)
        if not files:
            return "it holds no page-<n>.json, so it is no sync of any layout"
        try:
            summary = self._read(folder / SUMMARY_FILE) if (folder / SUMMARY_FILE).exists() else None
            first = self._read(files[0][1])
            task = str((summary or {}).get("sync_task_id") or first.get("sync_task_id") or folder.name)
            if summary is None:  # the oldest layout had no sync.json: its first page carries the same fields
                received = min(datetime.fromtimestamp(p.stat().st_mtime, UTC) for _, p in files)
                _write_once(folder / SUMMARY_FILE, orjson.dumps({
                    "sync_task_id": task, "segment": first["segment"], "total_pages": first["total_pages"],
                    "first_received": received.isoformat()}))
        except (InboxError, KeyError, TypeError, OSError) as exc:
            return f"it could not be read ({exc})"
        target = self.sync_folder(task)
        if target.exists():
            return f"{target.name} (the same sync_task_id {task!r} in this layout) exists already; merge by hand"
        try:
            # rename(2) is atomic; onto an existing folder it fails unless that folder is empty, which only a
            # receiver's mkdir racing this one can leave: its next write then lands in the moved folder.
            os.rename(folder, target)
        except OSError as exc:
            return f"it could not be renamed to {target.name} ({exc})"
        _fsync_dir(self.root)
        return None

    def drains(self, *, include_done: bool = False) -> list[InboxDrain]:
        """Every stored drain (not yet applied, unless `include_done`), in the order Heap signed them."""
        found = [d for folder in self._folders(DRAIN_PREFIX) if (d := self._drain(folder)) is not None
                 and (include_done or not d.done)]
        return sorted(found, key=lambda d: (d.signed_at, d.key))

    def drain(self, key: str) -> InboxDrain | None:
        return self._drain(self.drain_folder(key))

    def page_files(self, sync_task_id: str) -> list[Path]:
        """The paths of a sync's stored pages, in page order (for a reader such as DuckDB's `read_json`)."""
        return [path for _, path in self._page_files(self.sync_folder(sync_task_id))]

    def pages(self, sync_task_id: str) -> Iterator[dict]:
        """The stored pages of a sync, in page order, one at a time (a page can be megabytes)."""
        for path in self.page_files(sync_task_id):
            yield self._read(path)

    def mark_done(self, sync_task_id: str, info: dict) -> None:
        """Record that the sync was delivered (atomically; a second call keeps the first marker)."""
        payload = orjson.dumps({**info, "done_at": datetime.now(UTC).isoformat()})
        _write_once(self.sync_folder(sync_task_id) / DONE_MARKER, payload)

    def mark_drain_done(self, key: str, info: dict) -> None:
        """Record that the drain was applied or recorded (atomically; a second call keeps the first marker)."""
        payload = orjson.dumps({**info, "done_at": datetime.now(UTC).isoformat()})
        _write_once(self.drain_folder(key) / DONE_MARKER, payload)

    def _repeat_or_conflict(self, page: SyncPage, target: Path) -> bool:
        stored = self._read(target)
        differences = [name for name, mine, theirs in (
            ("sync_task_id", page.sync_task_id, stored["sync_task_id"]),
            ("segment id", page.segment_id, int(stored["segment"]["id"])),
            ("total_pages", page.total_pages, int(stored["total_pages"])),
            ("add", list(page.add), stored["add"]),
            ("remove", list(page.remove), stored["remove"]),
        ) if mine != theirs]
        if not differences:
            return False
        raise self._conflict(page, f"page {page.page_number} is already stored with a different "
                                   f"{', '.join(differences)}")

    def _conflict(self, page: SyncPage, what: str) -> PageConflict:
        """Keep the disagreeing copy aside (once per distinct content) and describe it."""
        body = orjson.dumps({"sync_task_id": page.sync_task_id, "page_number": page.page_number,
                             "total_pages": page.total_pages,
                             "segment": {"id": page.segment_id, "name": page.segment_name},
                             "add": list(page.add), "remove": list(page.remove)})
        folder = self.sync_folder(page.sync_task_id) / CONFLICTS_FOLDER
        aside = folder / f"conflict-page{page.page_number}-{hashlib.sha256(body).hexdigest()[:16]}.json"
        try:
            _make_dirs(folder)
            _write_once(aside, body)
        except InboxError:
            aside = None
        return PageConflict(f"Heap sync {page.sync_task_id!r}: {what}. The first copy is kept; this one is not "
                            "applied", sync_task_id=page.sync_task_id, page_number=page.page_number,
                            kept_aside=aside)

    def _folders(self, prefix: str) -> Iterator[Path]:
        if not self.root.is_dir():
            return
        for entry in os.scandir(self.root):
            if entry.is_dir() and (_SYNC_FOLDER.match(entry.name) if prefix == SYNC_PREFIX else
                                   entry.name.startswith(DRAIN_PREFIX)):
                yield Path(entry.path)

    def _summary(self, folder: Path, done: bool) -> InboxSync | None:
        files = self._page_files(folder)
        if not files:
            return None
        # Arrival times from the files' mtimes (set when each page was written): a stat per page, no read.
        received = [datetime.fromtimestamp(p.stat().st_mtime, UTC) for _, p in files]
        summary = self._read(folder / SUMMARY_FILE)  # a few hundred bytes, whatever the pages weigh
        first = datetime.fromisoformat(summary["first_received"])
        # A summary of the older layout may lack the id (its folder name was the id): its pages carry it.
        task = summary["sync_task_id"] if "sync_task_id" in summary else self._read(files[0][1])["sync_task_id"]
        return InboxSync(str(task), int(summary["segment"]["id"]), str(summary["segment"]["name"]),
                         int(summary["total_pages"]), tuple(n for n, _ in files), min(first, min(received)),
                         max(received), done)

    def _drain(self, folder: Path) -> InboxDrain | None:
        path = folder / DRAIN_FILE
        if not path.exists():
            return None
        record = self._read(path)
        return InboxDrain(str(record["key"]), int(record["segment"]["id"]), str(record["segment"]["name"]),
                          datetime.fromtimestamp(int(record["signed_at"]) / 1000, UTC),
                          datetime.fromisoformat(record["received_at"]), (folder / DONE_MARKER).exists(),
                          record.get("held"))

    @staticmethod
    def _page_files(folder: Path) -> list[tuple[int, Path]]:
        if not folder.is_dir():
            return []
        pages = [(int(m.group(1)), folder / m.group(0)) for name in os.listdir(folder)
                 if (m := _PAGE_FILE.match(name))]
        return sorted(pages)

    @staticmethod
    def _read(path: Path) -> dict:
        try:
            return orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise InboxError(f"cannot read inbox file {path}: {exc}") from exc


def _write_once(target: Path, data: bytes) -> bool:
    """Create `target` with `data` durably unless it exists (atomic: temp file, fsync, hard link, fsync of the
    folder). Returns False when it already existed."""
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, target)  # atomic create-if-absent: the first copy wins
        except FileExistsError:
            return False
        _fsync_dir(target.parent)
        return True
    except OSError as exc:
        raise InboxError(f"cannot write {target}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)


def _make_dirs(folder: Path) -> None:
    """Create `folder` and any missing parent, fsyncing each new folder's parent so the entry is durable."""
    missing = []
    current = folder
    while not current.is_dir():
        missing.append(current)
        current = current.parent
    try:
        for path in reversed(missing):
            # exist_ok: a concurrent receiver may have created it; its parent is fsynced all the same
            path.mkdir(exist_ok=True)
            _fsync_dir(path.parent)
    except OSError as exc:
        raise InboxError(f"cannot create {folder}: {exc}") from exc


def _fsync_dir(folder: Path) -> None:
    """Make a new directory entry durable (POSIX; a no-op where directories cannot be opened)."""
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
