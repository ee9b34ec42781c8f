"""Heap's generated data: the demo environment's segments (cohorts), their members in each 4-hour sync
window, and the Heap identity of every identified user."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from segment_ops.sandbox.world import DAY_MS, DemoWorld, as_utc, to_ms, uniform

HEAP_SYNC_WINDOW = timedelta(hours=4)  # Heap segment syncs run about every 4 hours (spec §3)
_HEAP_WINDOW_MS = int(HEAP_SYNC_WINDOW.total_seconds() * 1000)
_SALT_HEAP_CYCLE, _SALT_HEAP_PHASE, _SALT_HEAP_MEMBER = 401, 402, 403  # `uniform` salts (see world.py)


class HeapDemoData(DemoWorld):
    """The demo world as Heap shows it: segments and their membership over time, identities."""

    def heap_segments(self) -> list[dict]:
        """The Heap segments (cohorts) of the demo environment: `{"id", "name"}`."""
        return [{"id": s.id, "name": s.name} for s in _HEAP_SEGMENTS]

    def heap_segment_members(self, segment_id: int, at: datetime) -> list[str]:
        """Sorted Heap identities in the segment during the 4-hour sync window containing `at`.

        Identities are what Heap's identity property holds: mostly emails, some internal user ids,
        plus a few Heap-only identities that map to no Segment user. A few % of members enter or
        exit from one window to the next; within a window membership is fixed.
        """
        segment = next((s for s in _HEAP_SEGMENTS if s.id == segment_id), None)
        if segment is None:
            raise KeyError(f"unknown Heap segment id {segment_id}")
        at_ms = to_ms(as_utc(at, "at"))
        window = at_ms // _HEAP_WINDOW_MS
        pop, seed = self._pop, self.config.seed
        users = np.flatnonzero(pop.identified & (pop.created_ms <= at_ms))
        p = np.concatenate([segment.propensity(self, users, at_ms // DAY_MS),
                            np.full(len(pop.heap_only), 0.3)])
        keys = np.concatenate([users, len(pop.identified) + np.arange(len(pop.heap_only))])
        # Each identity keeps its draw for a cycle of 2-14 days (12-84 windows) with its own phase,
        # so only the identities whose cycle rolls over in a window can enter or exit there.
        cycle = 12 + (uniform(seed, _SALT_HEAP_CYCLE, segment.id, keys) * 73).astype(np.int64)
        phase = (uniform(seed, _SALT_HEAP_PHASE, segment.id, keys) * cycle).astype(np.int64)
        member = uniform(seed, _SALT_HEAP_MEMBER, segment.id, keys, (window + phase) // cycle) < p
        identities = np.concatenate([pop.heap_identity[users], pop.heap_only])
        return sorted(identities[member].tolist())

    def heap_identity_map(self) -> pd.DataFrame:
        """Heap identity -> Segment user_id for every identified user (Heap-only identities are absent)."""
        pop = self._pop
        idx = np.flatnonzero(pop.identified)
        return pd.DataFrame(
            {"identity": pop.heap_identity[idx], "user_id": pop.user_id[idx]}, dtype="str"
        ).reset_index(drop=True)


@dataclass(frozen=True)
class _HeapSegment:
    """One demo segment; `rule` names who tends to be in it (see `propensity`)."""

    id: int
    name: str
    rule: str

    def propensity(self, data: HeapDemoData, users: np.ndarray, day: int) -> np.ndarray:
        """Probability that each of `users` is in this segment in a membership cycle drawn on `day`."""
        pop = data._pop
        if self.rule == "power":
            return np.where(pop.p_active[users] > 0, 0.03 + 0.4 * pop.p_active[users], 0.0)
        if self.rule == "free":
            return np.where(pop.plan[users] == "free", 0.9, 0.01)
        if self.rule == "enterprise_admins":
            return np.where((pop.plan[users] == "enterprise") & (pop.role[users] == "admin"), 0.8, 0.0)
        acc_idx = pop.acc_idx[users]  # churn risk: unused accounts and accounts in a usage dip
        dipping = data._acc.decline_factor(acc_idx, day) < 1
        return np.where(dipping, np.where(data._acc.dead_of(acc_idx), 0.6, 0.5), 0.03)


_HEAP_SEGMENTS = (
    _HeapSegment(1338065, "Power Users", "power"),
    _HeapSegment(1338066, "Free Customers", "free"),
    _HeapSegment(1338071, "Enterprise Admins", "enterprise_admins"),
    _HeapSegment(1338084, "Churn Risk", "churn"),
)
