"""The one clock the syncs' window choices and the sandbox's demo world read: `SEGMENT_OPS_CLOCK`.

Unset, `now()` is the real time. Set to an ISO-8601 UTC instant (`2026-11-29T15:30:00Z`), time stands still
there for what "now" decides: which audit hours are complete, which Pendo days are settled, which window
the demo runs, and what the sandbox's demo world shows (its audit events, Heap members, Pendo usage). A
testing and demo aid, so a run on a given weekday or hour can be repeated; Dagster's own clock (run and
event timestamps, schedules), ledger timestamps and signed-request times stay real.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

CLOCK_VARIABLE = "SEGMENT_OPS_CLOCK"


class ClockSettingError(ValueError):
    """`SEGMENT_OPS_CLOCK` is not an ISO-8601 instant with a UTC offset."""


def now() -> datetime:
    """The current instant (tz-aware UTC): `SEGMENT_OPS_CLOCK` when set, else the real time."""
    raw = os.environ.get(CLOCK_VARIABLE, "").strip()
    return parse_clock(raw) if raw else datetime.now(UTC)


def parse_clock(raw: str) -> datetime:
    """`raw` as a UTC instant; a value without an offset is refused rather than read in a local zone."""
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise ClockSettingError(f"{CLOCK_VARIABLE} must be an ISO-8601 instant such as 2026-11-29T15:30:00Z, "
                                f"not {raw!r}") from None
    if moment.tzinfo is None:
        raise ClockSettingError(f"{CLOCK_VARIABLE} must carry its UTC offset (Z or +00:00), got {raw!r}")
    return moment.astimezone(UTC)
