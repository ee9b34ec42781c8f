"""What each emulated API received: exact counts, dedupe keys, and a bounded window of stored bodies.

Counts stay exact for any volume; only the newest `record_limit` bodies per API are kept (as JSON
bytes, the compact form), so a million-message benchmark runs in bounded memory. Everything runs on
the server's event loop, so no locking is needed.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict, deque
from itertools import islice

import orjson

# Every API the sandbox can record ("slack": the incoming-webhook emulator that receives alerts; "segment_eu":
# the EU region's Tracking API host, where the sandbox workspace's keys are lost; "profiles": Segment's
# Profile API; "fullstory": Fullstory's Server API v2 users endpoints).
API_NAMES = ("segment", "segment_eu", "segmentapis", "heap", "pendo", "splunk", "slack", "profiles",
             "fullstory")


class ApiLog:
    """Counters, breakdowns, dedupe keys and the newest stored items of one API."""

    def __init__(self, record_limit: int) -> None:
        self.counts: Counter[str] = Counter()
        self.breakdowns: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.items: deque[bytes] = deque(maxlen=record_limit)
        self._first: dict[str, float] = {}  # dedupe key -> when its current window opened (monotonic)
        self._repeats: Counter[str] = Counter()

    def count(self, name: str, n: int = 1) -> None:
        self.counts[name] += n

    def bump(self, group: str, key: str, n: int = 1) -> None:
        """Count `key` inside a named breakdown, e.g. faults["429"] or dropped["missing_event"]."""
        self.breakdowns[group][key] += n

    def store(self, item: bytes | dict) -> None:
        """Keep one received item (JSON bytes or a dict); `received` counts all, even evicted ones."""
        self.counts["received"] += 1
        data = item if isinstance(item, bytes) else orjson.dumps(item)
        # orjson's bytes keep its 4 KB working buffer: an exact-size copy makes 100k stored
        # messages take ~40 MB instead of ~400 MB.
        self.items.append(bytes(memoryview(data)))

    def first_seen(self, key: str, *, window: float | None = None) -> bool:
        """Remember a dedupe key (messageId, idempotency_key); a repeat counts as a duplicate.

        With `window` (seconds) a key is remembered only that long, as Segment's messageId dedupe
        (about 24 h, spec §7): a repeat after it counts as a `late_duplicates` and is let through, the
        copy a destination would receive twice; its window starts anew.
        """
        now = time.monotonic()
        first = self._first.get(key)
        if first is None:
            self._first[key] = now
            return True
        self._repeats[key] += 1
        if window is not None and now - first > window:
            self._first[key] = now
            self.counts["late_duplicates"] += 1
            return True
        self.counts["duplicates"] += 1
        return False

    def times_seen(self, key: str) -> int:
        return (key in self._first) + self._repeats[key]

    def page(self, offset: int, limit: int) -> list[bytes]:
        """Stored items, oldest kept first."""
        return list(islice(self.items, offset, offset + limit))

    def snapshot(self) -> dict:
        return {
            "requests": 0,
            "received": 0,
            **self.counts,
            **{group: dict(counter) for group, counter in self.breakdowns.items()},
            "stored": len(self.items),
        }


class Recorder:
    """One `ApiLog` per API name; `reset()` forgets everything."""

    def __init__(self, record_limit: int) -> None:
        if record_limit < 0:
            raise ValueError("record_limit must be >= 0")
        self.record_limit = record_limit
        self._logs = {name: ApiLog(record_limit) for name in API_NAMES}

    def __getitem__(self, api: str) -> ApiLog:
        return self._logs[api]

    def __contains__(self, api: object) -> bool:
        return api in self._logs

    def stats(self) -> dict[str, dict]:
        return {name: log.snapshot() for name, log in self._logs.items()}

    def reset(self) -> None:
        self._logs = {name: ApiLog(self.record_limit) for name in API_NAMES}
