"""Heap's layout of the webhook inbox under `<SEGMENT_OPS_HOME>/inbox/heap/`: a folder per segment sync (its
pages) and per drain, on the durable files of `segment_ops.receivers.inbox`. The receiver stores; the
sensor reads the summaries; a run marks what it applied.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

from segment_ops.receivers import inbox as durable
from segment_ops.receivers.inbox import DONE_MARKER, Conflict, InboxError
from segment_ops.syncs.heap.webhook import (
    MAX_SAFE_INTEGER,
    MAX_TOTAL_PAGES,
    DrainRequest,
    SyncPage,
    shown,
    sync_key,
)

# A sync's folder is `sync-<key>`, its key a hash of its sync_task_id (`sync_key`): Heap's ids may be any
# string (spec §7), so no id reaches the file system; the id is kept in sync.json and in every page.
#   sync-<key>/sync.json        the summary, written with the first page: sync_task_id as Heap sent it,
#                               segment id and name, total_pages, first_received (the sensor reads only this)
#   sync-<key>/page-<n>.json    one page as validated, with when Heap signed it and when it arrived
#   sync-<key>/done.json        written once the sync's run delivered it (never before)
#   sync-<key>/conflicts/       copies that disagree with what is stored, kept aside, never applied
#   drain-<key>/drain.json      one `segment.users.drain` with its signed time (`<key>`: see `store_drain`)
#   drain-<key>/done.json       written once a run applied it (or recorded it, policy `ignore`)
#   .archive/<day>/sync-<key>/  an applied sync, moved out by the sensor (`archive_applied`) with its pages
#                               and done marker; still found by `store` (a late retry is a repeat, not a new
#                               sync), deleted whole after the retention (`prune_archive`)
SUMMARY_FILE = "sync.json"
DRAIN_FILE = "drain.json"
PAGE = "page"  # page-<n>.json
SYNC_PREFIX, DRAIN_PREFIX = "sync-", "drain-"
# Both matched with fullmatch: with `$`, "sync-<key>\n" would pass.
_SYNC_FOLDER = re.compile(r"sync-[0-9a-f]{32}")
_DRAIN_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")  # a run config's drain key: one plain folder-name part
MAX_LISTED_MISSING = 20  # missing page numbers a message lists; it counts the rest
# A repeat of an applied drain arriving this long after it was applied (and no sync since) is a new drain:
# Heap retries only a delivery it saw fail, and it syncs a segment about every 4 hours, so a day-old
# "retry" of an acknowledged drain is far likelier a second drain (Heap's retry schedule is not documented).
DRAIN_REPEAT_HORIZON = timedelta(hours=24)
# How long an applied sync is kept in the archive (HEAP_INBOX_RETENTION_DAYS): far beyond any retry (a
# retry must be signed within HEAP_WEBHOOK_MAX_AGE_SECONDS) and Heap's 4-hourly syncs, long enough to
# answer "what did Heap send last week".
DEFAULT_RETENTION = timedelta(days=30)

class PageConflict(Conflict):
    """A page disagrees with what the inbox already holds for its sync; the first copy is kept. The message
    says what differs (no payload, no secret, no path: it is the receiver's answer); `kept_aside` is where
    this copy was saved (None if it could not be)."""

    def __init__(self, message: str, *, sync_task_id: str, page_number: int, kept_aside: Path | None,
                 differences: Sequence[str] = ()) -> None:
        super().__init__(message, kept_aside=kept_aside, differences=differences)
        self.sync_task_id, self.page_number = sync_task_id, page_number


@dataclass(frozen=True)
class InboxSync:
    """What the inbox holds for one `sync_task_id`. Its work is proportional to the pages received, never
    to `total_pages` (a stored summary may predate the receiver's bounds)."""

    sync_task_id: str  # as Heap sent it (any string); the folder's name when its summary cannot be read
    segment_id: int
    segment_name: str
    total_pages: int
    pages: tuple[int, ...]  # page numbers received, sorted
    first_received: datetime
    last_received: datetime
    done: bool
    problem: str | None = None  # why it can never be applied (an unreadable or out-of-bounds summary)
    folder: str = ""  # its folder's name: the inbox key it is reported by

    @property
    def key(self) -> str:
        return self.folder.removeprefix(SYNC_PREFIX) or sync_key(self.sync_task_id)

    @property
    def received_count(self) -> int:
        """How many of pages 1..total_pages are stored (a page number beyond them is not counted)."""
        return sum(1 for n in self.pages if 1 <= n <= self.total_pages)

    @property
    def complete(self) -> bool:
        return self.problem is None and self.received_count == self.total_pages

    @property
    def missing_count(self) -> int:
        return max(self.total_pages - self.received_count, 0)

    def first_missing(self, limit: int) -> tuple[int, ...]:
        """The first `limit` page numbers not received: at most `len(pages) + limit` steps, no range built."""
        received, found, number = set(self.pages), [], 1
        while len(found) < limit and number <= self.total_pages:
            if number not in received:
                found.append(number)
            number += 1
        return tuple(found)

    @property
    def missing_pages(self) -> tuple[int, ...]:
        """The first `MAX_LISTED_MISSING` missing page numbers (`missing_count` says how many there are)."""
        return self.first_missing(MAX_LISTED_MISSING)

    def describe_missing(self) -> str:
        """E.g. `page(s) [2, 5] of 10 never arrived`, listing at most `MAX_LISTED_MISSING` and counting the
        rest."""
        shown = ", ".join(map(str, self.missing_pages))
        more = f", ... {self.missing_count:,} in all" if self.missing_count > MAX_LISTED_MISSING else ""
        return f"page(s) [{shown}{more}] of {self.total_pages} never arrived"


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
    problem: str | None = None  # why it can never be applied (an unreadable drain.json)


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
        # With SEGMENT_OPS_STATE_URL, kept in PostgreSQL: receivers on several machines and the runs share it.
        self.shared = durable.share(self.root)

    def _fresh(self) -> None:
        """Bring a shared inbox's folder to what the database holds before it is read (`durable.pull`)."""
        if self.shared:
            durable.pull(self.root)

    @classmethod
    def for_home(cls, home: str | Path) -> Inbox:
        return cls(Path(home) / "inbox" / "heap")

    def sync_folder(self, sync_task_id: str) -> Path:
        return self.root / f"{SYNC_PREFIX}{sync_key(sync_task_id)}"

    def drain_folder(self, key: str) -> Path:
        return self.root / f"{DRAIN_PREFIX}{key}"

    def store(self, page: SyncPage, *, signed_at: int | None = None,
              received_at: datetime | None = None) -> bool:
        """Write `page` durably unless that (sync_task_id, page_number) is already stored; `signed_at` is the
        `Heap-Hash` timestamp (ms). Returns True when this call stored it, False for an identical repeat.

        Against what is stored (the receiver's answer in brackets):
        - same page number, same content (segment id, total_pages, add, remove): a repeat, kept once
          [200 `{"stored": false}`];
        - same page number, different content, or a segment id or total_pages that differ from the sync's
          summary (pages of one sync must agree): `PageConflict` [409]; the first copy stays the one applied,
          this one is kept aside under `conflicts/`, once per distinct content;
        - a page of a sync marked done: a done sync is complete (a run applies only complete syncs), so the
          page is stored already and the two rules above apply: a repeat is never applied again (runs read
          only syncs without `done.json`), a different copy gets 409. Nothing late is silently dropped.
        Raises `InboxError` when the folder cannot be written.
        """
        self._fresh()
        live, name = self.sync_folder(page.sync_task_id), f"{PAGE}-{page.page_number}.json"
        folder = self._sync_located(page.sync_task_id)
        received = received_at or datetime.now(UTC)
        if folder == live and not (folder / name).exists():
            # The sensor may have archived the sync since it was located: then it is answered from there,
            # never stored anew as a pending sync (its run would apply a stale page after newer ones).
            folder = durable.make_batch_dirs(live) or live
            if folder == live:
                self._check_summary(page, folder / name, received)
        target = folder / name
        if folder != live and not target.exists():  # archived: applied, so complete
            raise _conflict(page, f"its sync was applied and archived without a page {page.page_number}",
                            durable.keep_aside(target, _content(page)))
        record = {
            "sync_task_id": page.sync_task_id, "page_number": page.page_number,
            "total_pages": page.total_pages,
            "segment": {"id": page.segment_id, "name": page.segment_name},
            "received_at": received.isoformat(), "signed_at": signed_at,
            "add": list(page.add), "remove": list(page.remove),
            "id_token": page.id_token, "customer_config": page.customer_config,
        }
        try:
            return durable.store_item(target, orjson.dumps(record), content=_content(page),
                                      differences=lambda stored: _differences(page, stored))
        except Conflict as exc:
            what = (f"page {page.page_number} is already stored with a different {', '.join(exc.differences)}"
                    if exc.differences else
                    f"its sync was applied and archived without a page {page.page_number}")
            raise _conflict(page, what, exc.kept_aside, exc.differences) from None

    def _check_summary(self, page: SyncPage, target: Path, received: datetime) -> None:
        """Write the sync's summary with its first page, or check `page` agrees with the one written."""
        path = target.parent / SUMMARY_FILE
        summary = {"sync_task_id": page.sync_task_id,
                   "segment": {"id": page.segment_id, "name": page.segment_name},
                   "total_pages": page.total_pages, "first_received": received.isoformat()}
        if durable.write_once(path, orjson.dumps(summary)):
            return
        known = durable.read_json(path)
        if known.get("sync_task_id", page.sync_task_id) != page.sync_task_id:  # a hash collision: never merge
            what = "another sync_task_id is stored under the same key"
        elif (int(known["segment"]["id"]), int(known["total_pages"])) != (page.segment_id, page.total_pages):
            what = (f"its sync has segment {known['segment']['id']} and {known['total_pages']} page(s), this "
                    f"page says segment {page.segment_id} and {page.total_pages} page(s)")
        else:
            return
        raise _conflict(page, what, durable.keep_aside(target, _content(page)))

    def store_drain(self, drain: DrainRequest, *, signed_at: int,
                    received_at: datetime | None = None) -> StoredDrain:
        """Write `drain` durably unless it is a retry of a stored one; `signed_at` (the `Heap-Hash` timestamp,
        ms) orders it against syncs. Raises `InboxError`.

        A drain has no id of its own: its key is a hash of its signed body (`DrainRequest.key`), so Heap's
        retries of it (signed again, same body) are stored once: 200 `{"stored": false}`, the first copy and
        its signed time kept. Nor does its body carry a time, so a repeat of an *applied* drain is a late
        retry or Heap draining the segment again, told apart thus:
        - a sync of the same segment was applied after the drain: stored as a new drain, `drain-<key>-<n>`
          (generation n), but **held**: the sensor reports it and starts no run; a run naming it with
          `confirm_drop` applies it (a retry Heap re-signed would exit the members that sync added);
        - more than `DRAIN_REPEAT_HORIZON` after the drain was applied, with no sync since: a new drain,
          applied like any other;
        - otherwise a retry: 200 `{"stored": false, "done": true}`, not applied again.
        """
        self._fresh()
        received = received_at or datetime.now(UTC)
        generation, key = 0, drain.key
        while (self.drain_folder(f"{drain.key}-{generation + 1}") / DRAIN_FILE).exists():
            generation, key = generation + 1, f"{drain.key}-{generation + 1}"
        held = None
        if (self.drain_folder(key) / DRAIN_FILE).exists():
            done_at = durable.done_at(self.drain_folder(key))
            if done_at is None:
                return StoredDrain(key, stored=False)  # a retry of a drain not applied yet
            resynced = self._sync_applied_since(drain.segment_id, done_at)
            if not resynced and received - done_at <= DRAIN_REPEAT_HORIZON:
                return StoredDrain(key, stored=False, done=True)  # a retry of an applied drain
            if resynced:
                held = (f"the same drain as {key}, applied at {done_at.isoformat()}, arrived again after "
                        f"a sync of segment {drain.segment_id} was applied: Heap draining again, or a late "
                        "retry Heap signed anew (applying it would then exit that sync's members)")
            generation, key = generation + 1, f"{drain.key}-{generation + 1}"
        folder = self.drain_folder(key)
        durable.make_dirs(folder)
        record = {"kind": "drain", "key": key,
                  "segment": {"id": drain.segment_id, "name": drain.segment_name},
                  "signed_at": signed_at, "received_at": received.isoformat(), "generation": generation,
                  "held": held, "id_token": drain.id_token, "customer_config": drain.customer_config}
        if durable.write_once(folder / DRAIN_FILE, orjson.dumps(record)):
            return StoredDrain(key, stored=True, held=held)
        # Another receiver stored it first.
        return StoredDrain(key, stored=False, done=self.is_drain_done(key))

    def _sync_applied_since(self, segment_id: int, since: datetime) -> bool:
        """Whether a sync of `segment_id` was marked done after `since` (a stat per sync, a read per newer
        one)."""
        for folder in (*self._sync_folders(), *durable.archived_batches(self.root)):
            try:
                done = (folder / DONE_MARKER).stat().st_mtime
            except FileNotFoundError:
                continue
            if done > since.timestamp():
                summary = self._summary(folder, True)
                if summary is not None and summary.problem is None and summary.segment_id == segment_id:
                    return True
        return False

    def is_done(self, sync_task_id: str) -> bool:
        self._fresh()
        return durable.is_done(self._sync_located(sync_task_id))

    def is_drain_done(self, key: str) -> bool:
        self._fresh()
        return durable.is_done(self.drain_folder(key))

    def syncs(self, *, include_done: bool = False) -> list[InboxSync]:
        """Every sync in the inbox (not yet processed, unless `include_done`: then the archived ones too),
        oldest first."""
        self._fresh()
        found = []
        archived = durable.archived_batches(self.root) if include_done else ()
        for folder in (*self._sync_folders(), *archived):
            done = durable.is_done(folder)
            if done and not include_done:
                continue
            summary = self._summary(folder, done)
            if summary is not None:
                found.append(summary)
        return sorted(found, key=lambda s: (s.first_received, s.sync_task_id))

    def sync(self, sync_task_id: str) -> InboxSync | None:
        self._fresh()
        folder = self._sync_located(sync_task_id)
        return self._summary(folder, durable.is_done(folder)) if folder.is_dir() else None

    def archive_applied(self, now: datetime | None = None) -> tuple[list[str], list[tuple[str, str]]]:
        """Move every applied sync (done marker written) out of the live inbox into its archive, so listing
        the inbox costs what is pending, not everything Heap ever sent. Returns the folders moved and those
        that could not be, with why (tried again next time)."""
        self._fresh()
        moved: list[str] = []
        failed: list[tuple[str, str]] = []
        for folder in self._sync_folders():
            if durable.is_done(folder):
                try:
                    durable.archive_batch(folder, now)
                    moved.append(folder.name)
                except InboxError as exc:
                    failed.append((folder.name, str(exc)))
        return moved, failed

    def prune_archive(self, retention: timedelta = DEFAULT_RETENTION,
                      now: datetime | None = None) -> list[Path]:
        """Delete archived syncs older than `retention` (whole days); returns the day folders deleted.
        Raises `InboxError`."""
        self._fresh()
        return durable.prune_archive(self.root, (now or datetime.now(UTC)) - retention)

    def _sync_located(self, sync_task_id: str) -> Path:
        """The folder holding the sync: the live one, else its archived copy, else the live one to be."""
        live = self.sync_folder(sync_task_id)
        if live.is_dir():
            return live
        return durable.archived_batch(self.root, live.name) or live

    def old_layout_folders(self) -> list[Path]:
        """Folders that are neither a sync nor a drain of this layout: a sync stored under its raw id by a
        receiver from before ids were hashed (`migrate_old_layout` moves them)."""
        self._fresh()
        return sorted(folder for folder in durable.batch_folders(self.root)
                      if not _SYNC_FOLDER.fullmatch(folder.name) and not _is_drain_folder(folder))

    def migrate_old_layout(self) -> list[tuple[Path, str]]:
        """Move every folder of the older layout (`inbox/heap/<sync_task_id>/`, its raw id, which may itself
        start with `sync-` or `drain-`) to `sync-<key of its id>`; returns those that could not be moved, with
        why. The sensor calls it every tick, so a pending sync in it is then applied like any other.

        One atomic rename each, then an fsync of `inbox/heap`. A folder of the oldest layout, without
        sync.json, gets one from its first page first."""
        failed = []
        for folder in self.old_layout_folders():
            problem = self._migrate(folder)
            if problem is not None:
                failed.append((folder, problem))
        return failed

    def _migrate(self, folder: Path) -> str | None:
        files = durable.numbered_parts(folder, PAGE)
        if not files:
            return "it holds no page-<n>.json, so it is no sync of any layout"
        try:
            summary = durable.read_json(folder / SUMMARY_FILE) if (folder / SUMMARY_FILE).exists() else None
            first = durable.read_json(files[0][1])
            task = str((summary or {}).get("sync_task_id") or first.get("sync_task_id") or folder.name)
            if summary is None:  # the oldest layout had no sync.json: its first page carries the same fields
                received = min(datetime.fromtimestamp(p.stat().st_mtime, UTC) for _, p in files)
                durable.write_once(folder / SUMMARY_FILE, orjson.dumps({
                    "sync_task_id": task, "segment": first["segment"], "total_pages": first["total_pages"],
                    "first_received": received.isoformat()}))
        except (InboxError, KeyError, TypeError, OSError) as exc:
            return f"it could not be read ({exc})"
        target = self.sync_folder(task)
        if target.exists():
            return (f"{target.name} (the same sync_task_id {task!r} in this layout) exists already; merge by "
                    "hand")
        try:
            # rename(2) is atomic; onto an existing folder it fails unless that folder is empty, which only a
            # receiver's mkdir racing this one can leave: its next write then lands in the moved folder.
            durable.move_batch(folder, target)
        except InboxError as exc:
            return f"it could not be renamed to {target.name} ({exc})"
        return None

    def drains(self, *, include_done: bool = False) -> list[InboxDrain]:
        """Every stored drain (not yet applied, unless `include_done`), in the order Heap signed them."""
        self._fresh()
        # A stat for an applied drain (its done marker), a read only for a pending one.
        found = [d for folder in durable.batch_folders(self.root) if folder.name.startswith(DRAIN_PREFIX)
                 and (include_done or not durable.is_done(folder)) and (d := self._drain(folder)) is not None]
        return sorted(found, key=lambda d: (d.signed_at, d.key))

    def drain(self, key: str) -> InboxDrain | None:
        """The drain stored under `key` (as a run's config names it), or None; a key that is no plain name
        (`../x`, a line break) is never made into a path."""
        self._fresh()
        return self._drain(self.drain_folder(key)) if _DRAIN_KEY.fullmatch(key) else None

    def page_files(self, sync_task_id: str) -> list[Path]:
        """The paths of a sync's stored pages, in page order (for a reader such as DuckDB's `read_json`)."""
        self._fresh()
        # Within the receiver's bounds: a file numbered beyond them was never written by it.
        return [path for n, path in durable.numbered_parts(self._sync_located(sync_task_id), PAGE)
                if 1 <= n <= MAX_TOTAL_PAGES]

    def pages(self, sync_task_id: str) -> Iterator[dict]:
        """The stored pages of a sync, in page order, one at a time (a page can be megabytes)."""
        for path in self.page_files(sync_task_id):
            yield durable.read_json(path)

    def mark_done(self, sync_task_id: str, info: dict) -> None:
        """Record that the sync was delivered (atomically; a second call keeps the first marker)."""
        self._fresh()
        durable.mark_done(self._sync_located(sync_task_id), info)

    def mark_drain_done(self, key: str, info: dict) -> None:
        """Record that the drain was applied or recorded (atomically; a second call keeps the first
        marker)."""
        self._fresh()
        durable.mark_done(self.drain_folder(key), info)

    def _sync_folders(self) -> Iterator[Path]:
        return (folder for folder in durable.batch_folders(self.root) if _SYNC_FOLDER.fullmatch(folder.name))

    def _summary(self, folder: Path, done: bool) -> InboxSync | None:
        files = durable.numbered_parts(folder, PAGE)
        if not files:
            return None
        pages = tuple(n for n, _ in files)
        try:
            # Arrival times from the files' mtimes (set when each page was written): a stat per page, no read.
            received = [datetime.fromtimestamp(p.stat().st_mtime, UTC) for _, p in files]
        except OSError as exc:  # a file archived or removed in between: read again next time
            return _unreadable(folder, pages, done, f"its pages cannot be listed ({exc})")
        try:
            summary = durable.read_json(folder / SUMMARY_FILE)  # a few hundred bytes, whatever pages weigh
            first = datetime.fromisoformat(summary["first_received"])
            if first.tzinfo is None:
                raise ValueError(f"first_received {shown(summary['first_received'])} has no time zone")
            # A summary of the older layout may lack the id (its folder name was the id): its pages carry it.
            task = (summary["sync_task_id"] if "sync_task_id" in summary
                    else durable.read_json(files[0][1])["sync_task_id"])
            segment, total = summary["segment"], summary["total_pages"]
            segment_id, name = segment["id"], segment["name"]
        except (InboxError, KeyError, TypeError, ValueError) as exc:
            return _unreadable(folder, pages, done, f"its {SUMMARY_FILE} cannot be read ({exc})")
        problem = None
        if not _whole(total, 1, MAX_TOTAL_PAGES):
            problem = f"its total_pages {shown(total)} is beyond 1..{MAX_TOTAL_PAGES:,} (MAX_TOTAL_PAGES)"
        elif not _whole(segment_id, 1, MAX_SAFE_INTEGER):
            problem = f"its segment id {shown(segment_id)} is no Heap segment id"
        if problem is not None:
            return _unreadable(folder, pages, done, problem, str(task))
        return InboxSync(str(task), segment_id, str(name), total, pages, min(first, min(received)),
                         max(received), done, folder=folder.name)

    @staticmethod
    def _drain(folder: Path) -> InboxDrain | None:
        path = folder / DRAIN_FILE
        if not path.exists():
            return None
        done = durable.is_done(folder)
        try:
            record = durable.read_json(path)
            segment_id, signed_at = record["segment"]["id"], record["signed_at"]
            if not _whole(segment_id, 1, MAX_SAFE_INTEGER) or not _whole(signed_at, 0, MAX_SAFE_INTEGER):
                raise ValueError(f"segment id {shown(segment_id)} or signed_at {shown(signed_at)} is out of "
                                 "range")
            return InboxDrain(str(record["key"]), segment_id, str(record["segment"]["name"]),
                              datetime.fromtimestamp(signed_at / 1000, UTC),
                              datetime.fromisoformat(record["received_at"]), done, record.get("held"))
        except (InboxError, KeyError, TypeError, ValueError, OverflowError) as exc:
            # Never applied: held with why (a run naming it fails on its segment), reported by the sensor.
            problem = f"its {DRAIN_FILE} cannot be read ({exc})"
            epoch = datetime.fromtimestamp(0, UTC)
            return InboxDrain(folder.name.removeprefix(DRAIN_PREFIX), 0, "", epoch, epoch, done, problem,
                              problem=problem)


def _whole(value: object, minimum: int, maximum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and minimum <= value <= maximum


def _unreadable(folder: Path, pages: tuple[int, ...], done: bool, problem: str, task: str | None = None,
                ) -> InboxSync:
    """A sync that can never be applied, with why: the sensor reports it, a run never takes it."""
    epoch = datetime.fromtimestamp(0, UTC)
    return InboxSync(task if task is not None else folder.name, 0, "", 0, pages, epoch, epoch, done,
                     problem=problem, folder=folder.name)


def _is_drain_folder(folder: Path) -> bool:
    # A drain folder holds drain.json, never pages; an old sync whose raw id starts with "drain-" holds pages.
    return folder.name.startswith(DRAIN_PREFIX) and not durable.numbered_parts(folder, PAGE)


def _content(page: SyncPage) -> bytes:
    """What a page says, without when it arrived or was signed: what a copy kept aside is named by."""
    return orjson.dumps({"sync_task_id": page.sync_task_id, "page_number": page.page_number,
                         "total_pages": page.total_pages,
                         "segment": {"id": page.segment_id, "name": page.segment_name},
                         "add": list(page.add), "remove": list(page.remove)})


def _differences(page: SyncPage, stored: dict) -> list[str]:
    """What makes `page` another page than the stored copy (its segment's name may change: not a conflict)."""
    return [name for name, mine, theirs in (
        ("sync_task_id", page.sync_task_id, stored["sync_task_id"]),
        ("segment id", page.segment_id, int(stored["segment"]["id"])),
        ("total_pages", page.total_pages, int(stored["total_pages"])),
        ("add", list(page.add), stored["add"]),
        ("remove", list(page.remove), stored["remove"]),
    ) if mine != theirs]


def _conflict(page: SyncPage, what: str, kept_aside: Path | None,
              differences: Sequence[str] = ()) -> PageConflict:
    return PageConflict(f"Heap sync {page.sync_task_id!r}: {what}. The first copy is kept; this one is not "
                        "applied",
                        sync_task_id=page.sync_task_id, page_number=page.page_number, kept_aside=kept_aside,
                        differences=differences)
