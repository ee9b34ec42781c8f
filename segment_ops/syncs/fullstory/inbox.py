"""Fullstory's layout of the webhook inbox under `<SEGMENT_OPS_HOME>/inbox/fullstory/`, on the durable files
of `segment_ops.receivers.inbox`: what the receiver acknowledged is on disk (or, with SEGMENT_OPS_STATE_URL,
in PostgreSQL) before it answers 200.

    hour-<YYYYMMDDHH>/event-<key>.json   one stream event as received: its body, when it arrived, which token
                                         took it; `<key>` is `streams.event_key` of the body, so a re-delivery
                                         in the same hour is stored once (and one in a later hour is kept once
                                         by the signals run, which stages events by key)
    hour-<...>/done.json                 written once a run staged every event of a closed hour
    .archive/<day>/hour-<...>/           staged hours, moved out of the live inbox; deleted after the
                                         retention

A stream posts one event per request, so the inbox's batches are the hours events arrived in: a run reads the
hours not yet archived, which is what arrived since the last run and the hour still open.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

from segment_ops import clock
from segment_ops.receivers import inbox as durable
from segment_ops.receivers.inbox import Conflict, InboxError
from segment_ops.syncs.fullstory.streams import StreamEvent

HOUR_PREFIX = "hour-"
REJECTED_FOLDER = "rejected"  # bodies the receiver refused (receiver.py), until a run reports them
EVENT = "event-"
_HOUR_FOLDER = re.compile(r"hour-([0-9]{10})")
_EVENT_FILE = re.compile(r"event-([0-9a-f]{32})\.json")
# An hour is closed (its folder can be archived once staged) this long after it ended: a receiver whose clock
# runs a little behind, or a request that began in the hour, may still write to it.
CLOSE_AFTER = timedelta(hours=1)
DEFAULT_RETENTION = timedelta(days=30)


@dataclass(frozen=True)
class StoredEvent:
    """One event file read back: the body as received (parsed again by the run), and when it arrived."""

    key: str
    received_at: datetime
    body: dict


class Inbox:
    """The folder of received Fullstory stream events."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.shared = durable.share(self.root)

    @classmethod
    def for_home(cls, home: str | Path) -> Inbox:
        return cls(Path(home) / "inbox" / "fullstory")

    def refresh(self) -> None:
        """Bring a shared inbox's folder to what PostgreSQL holds (`receivers.inbox.pull`); else nothing."""
        if self.shared:
            durable.pull(self.root)

    def store(self, event: StreamEvent, *, received_at: datetime | None = None, token: str = "") -> bool:
        """Write `event` durably unless the same event is stored in its arrival hour already; True when this
        call stored it, False for a repeat (kept once). Raises `InboxError` when it cannot be written."""
        received = received_at or clock.now()  # the demo world's clock when SEGMENT_OPS_CLOCK pins it
        folder = self.root / f"{HOUR_PREFIX}{received:%Y%m%d%H}"
        record = orjson.dumps({"key": event.key, "received_at": received.isoformat(), "token": token,
                               "body": event.body})
        target = folder / f"{EVENT}{event.key}.json"
        try:
            return durable.store_item(target, record, content=orjson.dumps(event.body),
                                      differences=lambda stored: [] if stored.get("key") == event.key
                                      else ["key"])
        except Conflict as exc:
            # Only when a run archived the hour under the receiver: its clock runs over `CLOSE_AFTER` behind
            # the run's. Answered 500, so Fullstory retries (for hours) rather than the event being lost.
            raise InboxError(f"the hour {folder.name} was archived by a run whose clock is ahead of this "
                             f"receiver's by over {CLOSE_AFTER}: check both machines' clocks") from exc

    def hours(self) -> list[Path]:
        """The live hour folders, oldest first (a shared inbox is brought up to date first)."""
        self.refresh()
        return sorted(f for f in durable.batch_folders(self.root) if _HOUR_FOLDER.fullmatch(f.name))

    @staticmethod
    def event_files(hour: Path) -> dict[str, str]:
        """The paths of the event files of `hour` by event key (the key is in the file's name: nothing is
        read; plain strings, as a listing of thousands of files is built again by every run)."""
        if not hour.is_dir():
            return {}
        files = {}
        with os.scandir(hour) as entries:
            for entry in entries:
                if match := _EVENT_FILE.fullmatch(entry.name):
                    files[match.group(1)] = entry.path
        return files

    @staticmethod
    def read_event(path: str | Path) -> StoredEvent:
        """One event file; `InboxError` when it cannot be read or is not a stored stream event."""
        try:
            with open(path, "rb") as handle:
                record = orjson.loads(handle.read())
            return StoredEvent(key=str(record["key"]),
                               received_at=datetime.fromisoformat(record["received_at"]), body=record["body"])
        except (OSError, orjson.JSONDecodeError) as exc:
            raise InboxError(f"cannot read inbox file {path}: {exc}") from exc
        except (KeyError, TypeError, ValueError) as exc:
            raise InboxError(f"inbox file {path} is not a stored stream event: {exc!r}") from None

    def close_staged(self, read: Mapping[str, set[str]], read_at: datetime,
                     now: datetime | None = None) -> list[str]:
        """Mark done and archive the hours a run read (`read`: hour folder -> the event keys it read, at
        `read_at`) that were closed when it read them (ended `CLOSE_AFTER` before) and hold no event it did
        not read; any other hour stays live and is read again by the next run. Returns the hours archived."""
        closed = []
        for name, keys in sorted(read.items()):
            hour = self.root / name
            started = datetime.strptime(name.removeprefix(HOUR_PREFIX), "%Y%m%d%H").replace(tzinfo=UTC)
            if started + timedelta(hours=1) + CLOSE_AFTER > read_at or not hour.is_dir():
                continue
            # written after the run read the hour (a receiver's clock far behind)
            if set(self.event_files(hour)) - keys:
                continue
            durable.mark_done(hour, {"staged": True})
            durable.archive_batch(hour, now)
            closed.append(name)
        return closed

    def prune_archive(self, retention: timedelta = DEFAULT_RETENTION,
                      now: datetime | None = None) -> list[Path]:
        return durable.prune_archive(self.root, (now or datetime.now(UTC)) - retention)

    def counts(self) -> dict[str, int]:
        """The sensor's measure of what arrived: the events of each live hour, and under `rejected` the time
        (ns) of the newest body the receiver refused that no run claimed yet (a run reports those too; a
        time, not a count, since a run's claim empties the folder). A directory listing each."""
        counts = {hour.name: len(self.event_files(hour)) for hour in self.hours()}
        rejected = self.root / REJECTED_FOLDER
        if rejected.is_dir():
            with os.scandir(rejected) as entries:
                stamps = [e.stat().st_mtime_ns for e in entries if e.name.startswith("rejected-")]
            if stamps:
                counts[REJECTED_FOLDER] = max(stamps)
        return counts
