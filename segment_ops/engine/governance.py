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
from typing import TYPE_CHECKING

import duckdb

from segment_ops.engine.ledger import Ledger
from segment_ops.engine.regulations import Honoured, Regulated, honour, lift_suppressed
from segment_ops.engine.spec import DiffSpec
from segment_ops.engine.sql import quote

# The tracking plan's validator and the PII policy's warehouse readers are imported when a run uses them: a
# replay (a CLI process) imports neither.
if TYPE_CHECKING:
    from segment_ops.engine.pii import PiiPolicy, PiiReport
    from segment_ops.engine.tracking_plan import TrackingPlan, TrackingPlanReport
    from segment_ops.engine.warehouse import StagedResult


@dataclass(frozen=True)
class Governance:
    """What one run of one sync honours; each part is optional (None: not applied)."""

    regulated: Regulated | None = None
    tracking_plan: TrackingPlan | None = None
    tracking_policy: str = "off"  # off | warn | block (`engine.tracking_plan.POLICIES`)
    pii: PiiPolicy | None = None  # applied on every run, dry runs and baselines too
    tracking_unchecked: str | None = None  # why a plan the policy asks to check could not be read (warn)

    def __post_init__(self) -> None:
        if self.tracking_policy != "off":
            from segment_ops.engine.tracking_plan import check_policy

            check_policy(self.tracking_policy)


@dataclass
class Governed:
    """What governance did in one run: regulations honoured, the tracking plan's check."""

    honoured: Honoured | None = None
    tracking: TrackingPlanReport | None = None
    pii: PiiReport | None = None
    tracking_unchecked: str | None = None  # `Governance.tracking_unchecked`, once the run would have checked
    # The erased users whose rows this run withheld (never in metadata): what else the sync stored of them in
    # this run (Heap membership, identity maps) is erased when the run ends (`erase_withheld`).
    withheld_ids: tuple[str, ...] = ()


def protect(con: duckdb.DuckDBPyConnection, staged: StagedResult, spec: DiffSpec,
            governance: Governance | None, governed: Governed) -> tuple[StagedResult, DiffSpec]:
    """Step 1: the rows of users a deleting regulation covers are withheld (their keys would otherwise come
    back into the snapshot with the next delivered change), then the PII policy applied to the rest; returns
    them and the spec without dropped fields. Also on dry runs and baselines: what a preview shows and a
    baseline records is what would be sent."""
    if governance is None:
        return staged, spec
    if governance.regulated is not None and (erased := governance.regulated.erased) and spec.user_id:
        user_id = f"CAST({quote(spec.user_id)} AS VARCHAR)"
        gone = [row[0] for row in con.execute(
            f"DELETE FROM {quote(staged.table)} WHERE sha256({user_id}) IN (SELECT unnest(?::VARCHAR[])) "
            f"RETURNING {user_id}", [erased]).fetchall()]
        governed.withheld_ids, withheld = tuple(sorted(set(gone))), len(gone)
        if governed.honoured is None:
            governed.honoured = Honoured(regulated=len(governance.regulated.blocked))
        governed.honoured.withheld = withheld
        staged = dataclasses.replace(staged, rows=staged.rows - withheld)
    if governance.pii is None:
        return staged, spec
    from segment_ops.engine.pii import apply_pii_policy  # the warehouse readers: not for a replay's import

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
        from segment_ops.engine.tracking_plan import check_pending

        governed.tracking = check_pending(ledger, sync, governance.tracking_plan, governance.tracking_policy,
                                          run_id=run_id)
    governed.tracking_unchecked = governance.tracking_unchecked


def erase_withheld(con: duckdb.DuckDBPyConnection, governance: Governance | None, governed: Governed) -> None:
    """Step 5, once the run has ended: erase from this sync's stores whatever it recorded in the run about
    erased users (what a sync keeps beside the diff, from its own source: Heap's membership, the identity map
    rebuilt from the warehouse), so an erased user never comes back while a source still names them: those
    whose rows it withheld, and those its identity maps name (known to the regulations by digest only)."""
    if governance is None or governance.regulated is None or not governance.regulated.erased:
        return
    # Imported here: erasure reads every registered state schema.
    from segment_ops.engine.diff import STATE as DIFF
    from segment_ops.engine.erasure import erase_subjects, mapped_ids
    from segment_ops.engine.ledger import STATE as LEDGER

    ids = set(governed.withheld_ids) | mapped_ids(con, governance.regulated.erased)
    if ids:
        # Their rows were withheld before the diff, and what was planned of them before is erased when it is
        # suppressed (`honour`): the ledger and the diff hold nothing of them, and are not scanned.
        erase_subjects(con, sorted(ids), reason="a deleting regulation (still in the sync's source)",
                       skip=(LEDGER.name, DIFF.name))


def before_delivery(ledger: Ledger, sync: str, governance: Governance | None, governed: Governed, *,
                    run_id: str | None) -> None:
    """Step 4, for the messages an approval released (held before step 3 reached them, or planned by an
    earlier run): suppressed when about a regulated user, then checked against the tracking plan."""
    if governance is None:
        return
    if governance.regulated is not None and governance.regulated.blocked:
        assert governed.honoured is not None
        governed.honoured.suppressed += honour(ledger, sync, governance.regulated)
    if governance.tracking_plan is not None and governance.tracking_policy != "off":
        from segment_ops.engine.tracking_plan import check_pending

        released = check_pending(ledger, sync, governance.tracking_plan, governance.tracking_policy,
                                 run_id=run_id)
        governed.tracking = released if governed.tracking is None else governed.tracking.merged(released)
