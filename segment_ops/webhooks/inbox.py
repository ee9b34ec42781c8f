"""The Heap webhook inbox: one JSON file per received page, under `<SEGMENT_OPS_HOME>/inbox/heap/`.

    inbox/heap/<sync_task_id>/page-<n>.json   one page, as validated, with when it arrived
    inbox/heap/<sync_task_id>/done.json       written once the sync's run delivered it (never before)

Plain files, so the receiver needs no database and any number of receiver processes can share the
folder with the Dagster sensor and runs:
- a page is written to a temporary file in the same folder, fsynced, then hard-linked to its final
  name: the link fails if the page exists, so the first copy of a page wins atomically and a retried
  page is stored once (a second receiver racing on the same page loses cleanly);
- the folder is fsynced before the receiver answers 200, so an acknowledged page survives a crash;
- nothing is deleted: a processed sync keeps its pages beside its `done.json` marker.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson

from segment_ops.webhooks.heap import SyncPage

DONE_MARKER = "done.json"
_PAGE_FILE = re.compile(r"^page-(\d+)\.json$")


class InboxError(RuntimeError):
    """A page or marker could not be read or written; the message names the file."""


@dataclass(frozen=True)
class InboxSync:
    """What the inbox holds for one `sync_task_id`."""

    sync_task_id: str
    segment_id: int
    segment_name: str
    total_pages: int
    pages: tuple[int, ...]  # page numbers received, sorted
    first_received: datetime
    last_received: datetime
    done: bool

    @property
    def complete(self) -> bool:
        return set(self.pages) >= set(range(1, self.total_pages + 1))

    @property
    def missing_pages(self) -> tuple[int, ...]:
        return tuple(sorted(set(range(1, self.total_pages + 1)) - set(self.pages)))


class Inbox:
    """The folder of received Heap segment-sync pages."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @classmethod
    def for_home(cls, home: str | Path) -> Inbox:
        return cls(Path(home) / "inbox" / "heap")

    def store(self, page: SyncPage, *, signed_at: int | None = None, received_at: datetime | None = None) -> bool:
        """Write `page` durably unless that (sync_task_id, page_number) is already stored.

        Returns True when this call stored it, False for a repeat (the first copy is kept).
        """
        folder = self.root / page.sync_task_id
        target = folder / f"page-{page.page_number}.json"
        if target.exists():
            return False
        new_folder = not folder.exists()
        folder.mkdir(parents=True, exist_ok=True)
        if new_folder:
            _fsync_dir(folder.parent)
        record = {
            "sync_task_id": page.sync_task_id, "page_number": page.page_number, "total_pages": page.total_pages,
            "segment": {"id": page.segment_id, "name": page.segment_name},
            "received_at": (received_at or datetime.now(UTC)).isoformat(), "signed_at": signed_at,
            "add": list(page.add), "remove": list(page.remove),
        }
        tmp = folder / f".{target.name}.{uuid.uuid4().hex}.tmp"
        try:
            with open(tmp, "wb") as handle:
                handle.write(orjson.dumps(record))
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(tmp, target)  # atomic create-if-absent: the first copy of a page wins
            except FileExistsError:
                return False
            _fsync_dir(folder)
            return True
        except OSError as exc:
            raise InboxError(f"cannot write {target}: {exc}") from exc
        finally:
            tmp.unlink(missing_ok=True)

    def syncs(self, *, include_done: bool = False) -> list[InboxSync]:
        """Every sync in the inbox (not yet processed, unless `include_done`), oldest first."""
        found = []
        for folder in self._folders():
            done = (folder / DONE_MARKER).exists()
            if done and not include_done:
                continue
            summary = self._summary(folder, done)
            if summary is not None:
                found.append(summary)
        return sorted(found, key=lambda s: (s.first_received, s.sync_task_id))

    def sync(self, sync_task_id: str) -> InboxSync | None:
        folder = self.root / sync_task_id
        return self._summary(folder, (folder / DONE_MARKER).exists()) if folder.is_dir() else None

    def pages(self, sync_task_id: str) -> list[dict]:
        """The stored pages of a sync, in page order."""
        return [self._read(path) for _, path in self._page_files(self.root / sync_task_id)]

    def mark_done(self, sync_task_id: str, info: dict) -> None:
        """Record that the sync was delivered (atomically; a second call keeps the first marker)."""
        folder = self.root / sync_task_id
        target = folder / DONE_MARKER
        if target.exists():
            return
        tmp = folder / f".{DONE_MARKER}.{uuid.uuid4().hex}.tmp"
        try:
            with open(tmp, "wb") as handle:
                handle.write(orjson.dumps({**info, "done_at": datetime.now(UTC).isoformat()}))
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(tmp, target)
            except FileExistsError:
                return
            _fsync_dir(folder)
        except OSError as exc:
            raise InboxError(f"cannot write {target}: {exc}") from exc
        finally:
            tmp.unlink(missing_ok=True)

    def _folders(self) -> Iterator[Path]:
        if not self.root.is_dir():
            return
        for entry in os.scandir(self.root):
            if entry.is_dir() and not entry.name.startswith("."):
                yield Path(entry.path)

    def _summary(self, folder: Path, done: bool) -> InboxSync | None:
        files = self._page_files(folder)
        if not files:
            return None
        first = self._read(files[0][1])  # every page of a sync carries the same segment and total_pages
        # Arrival times from the files' mtimes (set when the page was written), so a scan reads one page only.
        received = [datetime.fromtimestamp(p.stat().st_mtime, UTC) for _, p in files]
        return InboxSync(folder.name, int(first["segment"]["id"]), str(first["segment"]["name"]),
                         int(first["total_pages"]), tuple(n for n, _ in files), min(received), max(received), done)

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
