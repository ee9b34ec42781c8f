"""`DemoData`: the demo world every double and the demo warehouse read, in one object.

It is the shared population of `world.py` seen at `now`, with each vendor's generators mixed in from
that vendor's folder (`segment/data.py`, `heap/data.py`, `pendo/data.py`,
`fullstory/data.py`).
"""

from __future__ import annotations

from segment_ops.sandbox.fullstory.data import FullstoryDemoData
from segment_ops.sandbox.heap.data import HeapDemoData
from segment_ops.sandbox.pendo.data import PendoDemoData
from segment_ops.sandbox.segment.data import SegmentDemoData
from segment_ops.sandbox.world import DemoConfig

__all__ = ["DemoConfig", "DemoData"]


class DemoData(SegmentDemoData, HeapDemoData, PendoDemoData, FullstoryDemoData):
    """The demo world for one `DemoConfig` (seed, scale), seen at `now` (tz-aware, default: the current
    UTC time): `users` and `accounts`, the audit trail, Heap's segments, Pendo's usage and Fullstory's
    sessions."""
