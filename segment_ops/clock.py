"""The one clock the syncs' window choices and the sandbox's demo world read: `SEGMENT_OPS_CLOCK`.

Unset, `now()` is the real time. Set to an ISO-8601 UTC instant (`2026-11-29T15:30:00Z`), time stands still
there for what "now" decides: which audit hours are complete, which Pendo days are settled, which window
the demo runs, and what the sandbox's demo world shows (its audit events, Heap members, Pendo usage). A
testing and demo aid, so a run on a given weekday or hour can be repeated; Dagster's own clock (run and
event timestamps, schedules), ledger timestamps, run keys and signed-request times stay real.

Because a clock left pinned would quietly freeze a deployment's windows (the audit trail would re-read the
same old hours and never the new ones), a pin is refused while any vendor URL points away from the sandbox,
and a pin later than the real time is refused too (Dagster, on the real clock, has no such partitions yet).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

CLOCK_VARIABLE = "SEGMENT_OPS_CLOCK"


class ClockSettingError(ValueError):
    """`SEGMENT_OPS_CLOCK` is not an ISO-8601 instant with a UTC offset, is in the future, or is set while a
    vendor URL points at a real vendor."""


def now() -> datetime:
    """The current instant (tz-aware UTC): `SEGMENT_OPS_CLOCK` when set, else the real time."""
    raw = os.environ.get(CLOCK_VARIABLE, "").strip()
    if not raw:
        return datetime.now(UTC)
    moment = parse_clock(raw)
    if moment > datetime.now(UTC):
        raise ClockSettingError(f"{CLOCK_VARIABLE}={raw} is later than the real time: pin the clock in the "
                                "past (Dagster's partitions follow the real clock)")
    if live := _live_vendor_urls():
        raise ClockSettingError(f"{CLOCK_VARIABLE} pins the clock for tests and demos against the sandbox; "
                                f"it cannot be used while {', '.join(live)} point(s) at a real vendor: "
                                "unset it")
    return moment


def _live_vendor_urls() -> list[str]:
    """The vendor URL settings (those that default into the sandbox) set to somewhere else."""
    from segment_ops.config import SETTINGS, load_settings

    sandbox = load_settings()["SEGMENT_OPS_SANDBOX_URL"]
    return [s.name for s in SETTINGS if s.sandbox_path is not None
            and (value := os.environ.get(s.name, "").strip()) and not value.startswith(sandbox)]


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
