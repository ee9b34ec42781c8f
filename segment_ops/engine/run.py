"""The one runner of every diff sync: stage → diff → plan → deliver → advance.

A sync declares what differs (`DiffSync`: its spec, how its rows are staged, what it records before
planning and checks after delivery); the runner does the rest the same way for all of them. A run that
stops anywhere is safe to repeat: planning is idempotent by messageId, delivery sends what is still
pending, and the snapshot only records what the ledger says was delivered.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import duckdb

from segment_ops.engine.delivery import DeliveryReport, Destination
from segment_ops.engine.diff import (
    SAMPLE_SIZE,
    BaselineRefused,
    DiffPlan,
    advance_snapshot,
    deliver_changes,
    delivered_state,
    ensure_state,
    plan_changes,
    remember_superseded,
    reset_snapshot,
)
from segment_ops.engine.governance import (
    Governance,
    Governed,
    before_delivery,
    before_sending,
    erase_withheld,
    lift,
    protect,
)
from segment_ops.engine.guard import GuardLimits, PlanHeld, Verdict, judge
from segment_ops.engine.ledger import Ledger, LedgerCounts
from segment_ops.engine.spec import DiffSpec
from segment_ops.engine.warehouse import StagedResult


@dataclass(kw_only=True)
class RunReport:
    """What one run of a diff sync did; a sync's own report adds its fields to these."""

    plan: DiffPlan | None = None
    delivery: DeliveryReport | None = None
    ledger: LedgerCounts | None = None  # filled before the run is returned or raised
    advanced: int = 0  # keys whose delivered change moved into the snapshot
    dry_run: bool = False
    full_resync: bool = False
    baseline: bool = False  # record the current rows as delivered, send nothing (adopting a destination)
    verdict: Verdict | None = None  # the plan guard's, when the run was guarded (dry runs too)
    approved: int = 0  # held messages an approval released to be sent
    governed: Governed | None = None  # what regulations and the tracking plan did in this run (`Governance`)
    seconds: float = 0.0


class DeliveryIncomplete(RuntimeError):
    """Some planned messages could not be delivered; they stay pending for the next run, which sends them
    under the same messageIds. `report` is the run's report (for metadata)."""

    def __init__(self, message: str, report: RunReport) -> None:
        super().__init__(message)
        self.report = report


class ConflictingOptions(ValueError):
    """A run asked for options that exclude each other (a baseline with a dry run or a full resync)."""


@dataclass(frozen=True)
class DiffSync:
    """A diff sync, declared.

    - `stage(con)` stages the rows to diff and returns them (called after the snapshot has settled, so it
      may read `diff.delivered_rows()`); it may raise to stop the run before anything is written.
    - `before_plan(con, ledger)` records what must be recorded before the plan (not on dry runs): e.g. the
      rows rejected before the diff, or Heap's new membership.
    - `after_delivery(con)` runs once delivery ended, also when it stopped part-way (e.g. a reconcile).
    - `label` prefixes the error of an incomplete delivery.
    """

    spec: DiffSpec
    stage: Callable[[duckdb.DuckDBPyConnection], StagedResult]
    before_plan: Callable[[duckdb.DuckDBPyConnection, Ledger], None] | None = None
    after_delivery: Callable[[duckdb.DuckDBPyConnection], None] | None = None
    label: str = ""


R = TypeVar("R", bound=RunReport)


def run_diff_sync(con: duckdb.DuckDBPyConnection, sync: DiffSync, report: R,
                  client_factory: Callable[[], Destination], *, run_id: str | None = None,
                  max_in_flight: int = 4, force_baseline: bool = False, sample_size: int = SAMPLE_SIZE,
                  progress_log: Callable[[str], None] | None = None, guard: GuardLimits | None = None,
                  approve_plan: str | None = None, governance: Governance | None = None) -> R:
    """Run `sync` and fill `report` (its `dry_run`, `full_resync` and `baseline` say how); returns it.

    A dry run stages, diffs and counts; it sends and records nothing. A baseline stages, diffs and records
    what would be sent as delivered (the snapshot only; the client is never made): for a destination that
    already holds what the rows say. It refuses (`BaselineRefused`) when the sync has delivered or planned
    anything, unless `force_baseline` (then pending messages are superseded). `progress_log` takes a long
    delivery's progress lines where no terminal shows its bar (a Dagster run's log).

    `guard`: the plan is judged (`engine.guard`) after planning, before any client is made. A plan that
    passes a limit, or holds messages an earlier run held, is held (its planned messages become held, which
    no delivery sends) and `PlanHeld` is raised, unless `approve_plan` is its fingerprint: then the held
    messages are planned again and the plan is sent. A dry run reports the verdict and holds nothing; a
    baseline is not judged (it sends nothing).

    `governance` (`engine.governance`, not on dry runs or baselines): before planning, suppressed messages of
    users an UNSUPPRESS freed are superseded (the plan revives those its rows still want); after planning and
    before the guard, planned messages about regulated users are suppressed and the rest checked against the
    tracking plan; before delivery, what an approval released is suppressed too. Raises
    `ConflictingOptions` (a ValueError, nothing done) for a baseline with a dry run or a full resync,
    `DeliveryIncomplete` (carrying the report) when messages stay pending, and whatever `stage` or the
    client raise as it is.
    """
    if report.baseline and (report.dry_run or report.full_resync):
        raise ConflictingOptions("a baseline records the current rows as delivered: it cannot be combined "
                                 "with a dry run or a full resync")
    started = time.monotonic()
    name = sync.spec.sync
    ledger = Ledger(con)
    ensure_state(con)
    if report.baseline and not force_baseline and any(held := delivered_state(con, ledger, name)):
        raise BaselineRefused(f"sync {name!r} already has delivered state ({held[0]:,} keys in its snapshot, "
                              f"{held[1]:,} messages in its ledger): a baseline would hide what was sent; "
                              "force it to record the current rows as delivered anyway")
    if not report.dry_run:
        advance_snapshot(con, name)  # settle what an earlier, interrupted run delivered
        if report.full_resync:
            reset_snapshot(con)
    governing = governance is not None and not report.dry_run and not report.baseline
    report.governed = Governed() if governance is not None else None
    if governing:
        remember_superseded(con, lift(ledger, name, governance, report.governed))
    staged, spec = sync.stage(con), sync.spec
    if report.governed is not None:
        staged, spec = protect(con, staged, spec, governance, report.governed)
    if not report.dry_run and not report.baseline and sync.before_plan is not None:
        sync.before_plan(con, ledger)
    report.plan = plan_changes(con, ledger, spec, staged, run_id=run_id, dry_run=report.dry_run,
                               ignore_snapshot=report.dry_run and report.full_resync,
                               baseline=report.baseline, sample_size=sample_size, guard=guard)
    if governance is not None and (regulated := governance.regulated) is not None:
        plan = report.plan  # samples the metadata would show: none about a regulated user
        plan.samples = regulated.shown(plan.samples)
        plan.rejection_samples = regulated.shown_keys(plan.rejection_samples)
        if plan.guard is not None:
            plan.guard.removal_samples = regulated.shown(plan.guard.removal_samples)
            plan.guard.change_samples = regulated.shown(plan.guard.change_samples)
            plan.guard.nulled_samples = regulated.shown_keys(plan.guard.nulled_samples)
    if governing:
        before_sending(ledger, name, governance, report.governed, run_id=run_id)
        if report.plan.guard is not None:  # the guard weighs what is left to send
            left = ledger.counts(name)
            report.plan.guard.messages = left.pending + left.held
    if guard is not None and report.plan.guard is not None:
        report.verdict = judge(report.plan.guard, guard)
    if report.dry_run or report.baseline:
        report.ledger = ledger.counts(name)
        report.seconds = time.monotonic() - started
        return report
    if report.verdict is not None and report.verdict.holds:
        report.plan.guard.fingerprint = ledger.plan_digest(name)[2]
        _hold_or_release(ledger, name, sync, report, approve_plan, run_id, started)
    if governing and report.approved:
        before_delivery(ledger, name, governance, report.governed, run_id=run_id)
    settled = deliver_changes(con, ledger, name, client_factory, run_id=run_id, max_in_flight=max_in_flight,
                              progress_log=progress_log)
    report.delivery, report.advanced, report.ledger = settled.delivery, settled.advanced, settled.ledger
    if sync.after_delivery is not None:
        sync.after_delivery(con)
    if governing:
        erase_withheld(con, governance, report.governed)
    report.seconds = time.monotonic() - started
    if settled.failure is not None:
        prefix = f"{sync.label}: " if sync.label else ""
        raise DeliveryIncomplete(f"{prefix}{settled.failure}", report)
    return report


def _hold_or_release(ledger: Ledger, name: str, sync: DiffSync, report: RunReport, approve_plan: str | None,
                     run_id: str | None, started: float) -> None:
    """A plan the guard holds: released when `approve_plan` is its fingerprint, else held and raised."""
    verdict = report.verdict
    assert verdict is not None
    approval = (approve_plan or "").strip() or None
    if approval == verdict.fingerprint:
        report.approved = ledger.release_held(name, f"plan {verdict.fingerprint} approved (run {run_id})")
        return
    ledger.hold_planned(name, f"plan {verdict.fingerprint} held (run {run_id}): {verdict.reasons()}")
    report.ledger = ledger.counts(name)
    report.seconds = time.monotonic() - started
    raise PlanHeld(verdict, report, label=sync.label, stale_approval=approval)
