"""The plan guard: a diff sync's plan that would clear, null or change too much at once, or send too many
messages, is held before anything is sent, until a person approves it by its fingerprint.

`judge` weighs a plan's figures (`PlanFigures`, taken by `engine.diff.plan_changes`) against `GuardLimits`;
the runner (`engine.run.run_diff_sync`) holds the plan in the ledger and raises `PlanHeld`. Heap's drop guard
(`syncs/heap/audiences.py`) was the first of these; this one serves every diff sync.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

FINGERPRINT_CHARS = 16


@dataclass(frozen=True)
class GuardLimits:
    """Above these a plan is held. Shares are of the keys the sync has delivered (present in its snapshot)
    and apply only from `min_delivered` such keys on, so first runs and small syncs never trip; a share of
    1 or more never trips. `max_messages` 0: no cap on the messages one run sends."""

    max_removed_share: float = 0.10  # mirror removals (their traits cleared)
    max_changed_share: float = 0.50
    max_nulled_share: float = 0.10  # changed keys with a trait/property non-null before and null now
    max_messages: int = 0
    min_delivered: int = 100


@dataclass
class PlanFigures:
    """What the guard weighs of one plan, after planning (a dry run: what planning would leave)."""

    delivered_keys: int = 0  # keys present in the snapshot before the run
    removed: int = 0
    changed: int = 0
    nulled: int | None = None  # None: not counted (it cannot pass its limit: changed keys are too few)
    messages: int = 0  # the messages a delivery would send: planned, and held by an earlier run
    held_before: int = 0  # of those, held by an earlier run (waiting for approval)
    fingerprint: str = ""  # of the sorted messageIds of those messages; taken when a plan is held or approved
    nulled_samples: list[tuple[str, str]] = field(default_factory=list)  # (record key, field)
    removal_samples: list[bytes] = field(default_factory=list)
    change_samples: list[bytes] = field(default_factory=list)


@dataclass(frozen=True)
class Tripped:
    """One limit a plan passes: `count` of `of` (share) against `limit`."""

    what: str  # removed | changed | nulled | messages
    count: int
    of: int
    limit: float

    def describe(self) -> str:
        if self.what == "messages":
            return f"it would send {self.count:,} messages (cap {int(self.limit):,})"
        share = self.count / self.of if self.of else 0.0
        verb = {"removed": "clear (mirror removals)", "changed": "change",
                "nulled": "set a previously non-null trait to null for"}[self.what]
        return (f"it would {verb} {self.count:,} of {self.of:,} delivered records "
                f"({share:.0%} > {self.limit:.0%})")


@dataclass(frozen=True)
class Verdict:
    """What the guard found: the limits passed, the plan's fingerprint and size."""

    figures: PlanFigures
    limits: GuardLimits
    tripped: tuple[Tripped, ...] = ()

    @property
    def fingerprint(self) -> str:
        return self.figures.fingerprint

    @property
    def holds(self) -> bool:
        """The plan waits for approval: a limit is passed, or an earlier run's held messages are part of it
        (held messages are released only by an approval, also when the plan no longer trips)."""
        return bool(self.tripped) or self.figures.held_before > 0

    def reasons(self) -> str:
        parts = [t.describe() for t in self.tripped]
        if self.figures.held_before:
            parts.append(f"{self.figures.held_before:,} messages held by an earlier run wait for approval")
        return "; ".join(parts)

    def as_metadata(self) -> dict[str, Any]:
        f = self.figures
        return {**({"plan_fingerprint": f.fingerprint} if f.fingerprint else {}), "plan_messages": f.messages,
                "plan_delivered_keys": f.delivered_keys, "plan_removed": f.removed, "plan_changed": f.changed,
                **({"plan_nulled": f.nulled} if f.nulled is not None else {}),
                "plan_held_before": f.held_before,
                "plan_guard_tripped": ", ".join(t.what for t in self.tripped) or "none"}


def judge(figures: PlanFigures, limits: GuardLimits) -> Verdict:
    """Weigh `figures` against `limits`."""
    tripped: list[Tripped] = []
    of = figures.delivered_keys
    if of >= max(limits.min_delivered, 1):
        for what, count, limit in (("removed", figures.removed, limits.max_removed_share),
                                   ("changed", figures.changed, limits.max_changed_share),
                                   ("nulled", figures.nulled, limits.max_nulled_share)):
            if count is not None and limit < 1 and count / of > limit:
                tripped.append(Tripped(what, count, of, limit))
    if limits.max_messages > 0 and figures.messages > limits.max_messages:
        tripped.append(Tripped("messages", figures.messages, figures.messages, limits.max_messages))
    return Verdict(figures, limits, tuple(tripped))


class PlanHeld(RuntimeError):
    """The plan was held before anything was sent: its messages wait in the ledger as held until a run
    approves it by `fingerprint`. `report` is the run's report; `stale_approval` the fingerprint a run was
    given that no longer matches the plan (the data changed since)."""

    def __init__(self, verdict: Verdict, report: Any, *, label: str = "",
                 stale_approval: str | None = None) -> None:
        self.verdict, self.report, self.stale_approval = verdict, report, stale_approval
        self.fingerprint = verdict.fingerprint
        self.tripped: Sequence[Tripped] = verdict.tripped
        f = verdict.figures
        self.samples: list[Any] = ([f"{key}: {name} -> null" for key, name in f.nulled_samples]
                                   + [s.decode("utf-8", "replace") for s in
                                      (f.removal_samples or f.change_samples)])
        prefix = f"{label}: " if label else ""
        stale = (f" (approve_plan {stale_approval} names an earlier plan: the data changed since)"
                 if stale_approval else "")
        super().__init__(f"{prefix}plan held, nothing sent: {verdict.reasons()}{stale}. "
                         f"Plan fingerprint {self.fingerprint} ({f.messages:,} messages); to send exactly "
                         f"this plan, run again with approve_plan: {self.fingerprint}")
