"""What a long delivery shows while it runs: a `tqdm` bar (rate, ETA) and "retrying" notices, on stderr.

The bar is drawn only on a terminal: never when stderr is a file or a pipe (logs, CI, a Dagster run's
captured output), nor when `CI` is set or SEGMENT_OPS_PROGRESS is 0/false/no/off. The delivery loop updates
it once per answered batch, so it costs nothing per message. Where no terminal watches (a Dagster run), a
`log` may take its place: one line per LOG_SECONDS of a long delivery (count, share, rate, time left), so a
big first run says how far it is in the run's log without filling it.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO
from urllib.parse import urlsplit

from segment_ops.clients.base import RetryEvent

PROGRESS_SETTING = "SEGMENT_OPS_PROGRESS"
RETRY_NOTICE_SECONDS = 10.0  # while a destination keeps failing, about one "retrying" line this often
NOTICE_GAP = 2.0  # and never two within this many seconds (several batches retry at once)
LOG_SECONDS = 30.0  # a logged delivery's progress line, at most this often (a short delivery logs none)
_OFF = {"0", "false", "no", "off"}


def bar_wanted(stream: TextIO | None = None) -> bool:
    """Whether a progress bar belongs on `stream` (default stderr): a terminal, outside CI, not turned off."""
    stream = sys.stderr if stream is None else stream
    if os.environ.get("CI") or os.environ.get(PROGRESS_SETTING, "").strip().lower() in _OFF:
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def host_of(url: str) -> str:
    """The host (and port) of `url`, without credentials, path or query: safe to print ("?" for a URL without
    a host, which may be anything; no port when its port is not a number)."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    host = parts.hostname or "?"
    return f"{host}:{port}" if port else host


class DeliveryProgress:
    """A delivery's progress: `start(total)`, `advance(messages)` per answered batch, `retrying(event)` from
    any sending thread, `close()`. With `bar=False` and `retry_notices=False` it shows nothing.

    `bar`/`retry_notices` None: only on a terminal (`bar_wanted`). A replay from the command line passes
    `retry_notices=True`, so a failing destination is named within seconds in logs and CI too.
    """

    def __init__(self, label: str, *, destination: str | None = None, stream: TextIO | None = None,
                 bar: bool | None = None, retry_notices: bool | None = None,
                 notice_seconds: float = RETRY_NOTICE_SECONDS, log: Callable[[str], None] | None = None,
                 log_seconds: float | None = None) -> None:
        self.label = label
        self.destination = destination
        self.stream = sys.stderr if stream is None else stream
        self.bar = bar_wanted(self.stream) if bar is None else bar
        # Without a bar, `log` (e.g. a Dagster run's `context.log.info`) takes progress and retry lines.
        self.log = None if self.bar else log
        self.log_seconds = LOG_SECONDS if log_seconds is None else log_seconds
        self.retry_notices = (self.bar or self.log is not None) if retry_notices is None else retry_notices
        self.notice_seconds = notice_seconds
        self.done = 0
        self.total: int | None = None
        self.started = False
        self._tqdm = None
        self._lock = threading.Lock()
        self._last_notice: float | None = None
        self._retries_since_notice = 0
        self._failing = False
        self._began = 0.0
        self._last_log = 0.0

    @property
    def wants_total(self) -> bool:
        """Whether counting what is pending is worth it (only a bar or a log shows a total)."""
        return self.bar or self.log is not None

    def start(self, total: int | None) -> None:
        """Begin showing progress toward `total` messages (None: unknown, a count without ETA); once."""
        if self.started:
            return
        self.started, self.total = True, total
        self._began = self._last_log = time.monotonic()
        if not self.bar:
            return
        from tqdm import tqdm  # only a terminal pays for the import

        scaled = total is None or total >= 10_000  # 3766/3766, but 1.00M/1.00M
        self._tqdm = tqdm(total=total, desc=self.label, unit="msg", unit_scale=scaled, file=self.stream,
                          dynamic_ncols=True, mininterval=0.5, smoothing=0.1, leave=True)

    def advance(self, messages: int, *, answered: bool = True) -> None:
        """`messages` more settled (delivered, rejected, or left pending after retries); called once per
        batch. `answered`: the destination took or refused some of them (it is reachable again)."""
        self.done += messages
        if self._failing and answered:
            with self._lock:
                if self._failing:
                    self._failing = False
                    self._write(f"{self.destination or self.label} answering again; {self._so_far()}")
        if self._tqdm is not None:
            self._tqdm.update(messages)
        elif self.log is not None:
            self._log_progress()

    def _log_progress(self) -> None:
        now = time.monotonic()
        if now - self._last_log < self.log_seconds:
            return
        self._last_log = now
        rate = self.done / max(now - self._began, 1e-9)
        line = f"{self.label}: {self._so_far()}"
        if self.total:
            line += f" ({min(self.done / self.total, 1):.0%})"
        line += f", {rate:,.0f} msg/s"
        if self.total and rate > 0 and self.done < self.total:
            line += f", about {_duration((self.total - self.done) / rate)} left"
        self.log(line)

    def retrying(self, event: RetryEvent) -> None:
        """A request failed and will be tried again: say so at once, then about every `notice_seconds` (or
        sooner when a long wait begins)."""
        if not self.retry_notices:
            return
        with self._lock:
            self._retries_since_notice += 1
            now = time.monotonic()
            if self._last_notice is not None:
                since = now - self._last_notice
                # Quiet for `notice_seconds` after a notice, unless this retry waits past that: no other
                # event may come before then, so this one is said (never twice within NOTICE_GAP).
                if since < NOTICE_GAP or (since < self.notice_seconds
                                          and since + event.delay < self.notice_seconds):
                    return
            self._last_notice, self._failing = now, True
            more = self._retries_since_notice - 1
            self._retries_since_notice = 0
            also = f", {more} more retried request(s) since the last notice" if more > 0 else ""
            at = f" at {self.destination}" if self.destination else ""
            self._write(f"retrying: {event.vendor}{at} {event.path} failed ({event.reason}); attempt "
                        f"{event.attempt}, next try in {event.delay:.1f}s{also}; {self._so_far()}")

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None

    def __enter__(self) -> DeliveryProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _so_far(self) -> str:
        of = f" of {self.total:,}" if self.total is not None else ""
        return f"{self.done:,}{of} messages settled so far"

    def _write(self, line: str) -> None:
        if self.log is not None:
            self.log(line)
        elif self._tqdm is not None:
            self._tqdm.write(line, file=self.stream)  # above the bar, which is drawn again below it
        else:
            print(line, file=self.stream, flush=True)



def _duration(seconds: float) -> str:
    """`42s`, `3m 05s`, `1h 02m`: a time left, to the precision a person reads it."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
