"""What a sending run honours besides its own spec (issue 20): privacy regulations, the destination source's
tracking plan and the sync's PII policy, declared once as `Governance` and applied by the runner
(`engine.run.run_diff_sync`) and the replay at the same points:

1. after staging, before the diff: the PII policy hashes or drops the staged PII fields (`engine.pii`), so
   what it removes never reaches the ledger, the snapshots or Segment;
2. before planning: suppressed messages of users an UNSUPPRESS freed are superseded, for the plan to revive;
3. after planning, before the plan guard weighs and holds the plan: planned messages about regulated users
   are suppressed (and, for a deleting regulation, erased from the sync's stores), then the rest is checked
   against the tracking plan (`block` rejects what breaks it);
4. right before delivery: suppression once more, for messages an approval released.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import duckdb

from segment_ops.engine.ledger import Ledger
from segment_ops.engine.pii import PiiPolicy, PiiReport, apply_pii_policy
from segment_ops.engine.regulations import Honoured, Regulated, honour, lift_suppressed
from segment_ops.engine.spec import DiffSpec
from segment_ops.engine.sql import quote
from segment_ops.engine.tracking_plan import TrackingPlan, TrackingPlanReport, check_pending, check_policy
from segment_ops.engine.warehouse import StagedResult


@dataclass(frozen=True)
class Governance:
    """What one run of one sync honours; each part is optional (None: not applied)."""

    regulated: Regulated | None = None
    tracking_plan: TrackingPlan | None = None
    tracking_policy: str = "off"  # off | warn | block (`engine.tracking_plan.POLICIES`)
    pii: PiiPolicy | None = None  # applied on every run, dry runs and baselines too

    def __post_init__(self) -> None:
        check_policy(self.tracking_policy)


@dataclass
class Governed:
    """What governance did in one run: regulations honoured, the tracking plan's check."""

    honoured: Honoured | None = None
    tracking: TrackingPlanReport | None = None
    pii: PiiReport | None = None


def protect(con: duckdb.DuckDBPyConnection, staged: StagedResult, spec: DiffSpec,
            governance: Governance | None, governed: Governed) -> tuple[StagedResult, DiffSpec]:
    """Step 1: the rows of users a deleting regulation covers are withheld (their keys would otherwise come
    back into the snapshot with the next delivered change), then the PII policy applied to the rest; returns
    them and the spec without dropped fields. Also on dry runs and baselines: what a preview shows and a
    baseline records is what would be sent."""
    if governance is None:
        return staged, spec
    if governance.regulated is not None and (erased := governance.regulated.erased) and spec.user_id:
        withheld = con.execute(
            f"DELETE FROM {quote(staged.table)} WHERE sha256(CAST({quote(spec.user_id)} AS VARCHAR)) "
            "IN (SELECT unnest(?::VARCHAR[]))", [erased]).fetchone()[0]
        if governed.honoured is None:
            governed.honoured = Honoured(regulated=len(governance.regulated.blocked))
        governed.honoured.withheld = withheld
        staged = dataclasses.replace(staged, rows=staged.rows - withheld)
    if governance.pii is None:
        return staged, spec
    staged, governed.pii = apply_pii_policy(con, staged, spec, governance.pii)
    return staged, governed.pii.spec_without_dropped(spec)


def lift(ledger: Ledger, sync: str, governance: Governance | None,
         governed: Governed) -> list[tuple[str, int]]:
    """Step 2: supersede the suppressed messages of users an UNSUPPRESS freed; returns them (message_id, seq)
    for the diff to revive those its rows still want."""
    if governance is None or governance.regulated is None:
        return []
    governed.honoured = Honoured(regulated=len(governance.regulated.blocked))
    lifted = lift_suppressed(ledger, sync, governance.regulated)
    governed.honoured.lifted = len(lifted)
    return lifted


def before_sending(ledger: Ledger, sync: str, governance: Governance | None, governed: Governed, *,
                   run_id: str | None) -> None:
    """Step 3: suppress the planned messages about regulated users, then check the rest against the tracking
    plan under its policy."""
    if governance is None:
        return
    if governance.regulated is not None:
        if governed.honoured is None:
            governed.honoured = Honoured(regulated=len(governance.regulated.blocked))
        governed.honoured.suppressed += honour(ledger, sync, governance.regulated)
    if governance.tracking_plan is not None and governance.tracking_policy != "off":
        governed.tracking = check_pending(ledger, sync, governance.tracking_plan, governance.tracking_policy,
                                          run_id=run_id)


def before_delivery(ledger: Ledger, sync: str, governance: Governance | None, governed: Governed) -> None:
    """Step 4: suppress what an approval released (nothing is read when no user is regulated)."""
    if governance is not None and governance.regulated is not None and governance.regulated.blocked:
        assert governed.honoured is not None
        governed.honoured.suppressed += honour(ledger, sync, governance.regulated)
