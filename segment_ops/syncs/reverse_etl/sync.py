"""One reverse-ETL run of one model: stage the query, diff, plan, deliver, advance the snapshot.

Everything for a model lives in its own staging file (`reverse_etl_<model>.duckdb`): the staged rows,
the snapshot, and the ledger. A run that stops anywhere is safe to repeat: planning is idempotent by
messageId, delivery sends what is still pending, and the snapshot only ever records what the ledger
says was delivered - at the start of the next run if not at the end of this one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import duckdb

from segment_ops.clients.segment_tracking import SegmentTrackingClient
from segment_ops.engine.delivery import DeliveryReport
from segment_ops.engine.diff import (
    DeliveryIncomplete,
    DiffPlan,
    advance_snapshot,
    deliver_changes,
    ensure_state,
    plan_changes,
    reset_snapshot,
)
from segment_ops.engine.ledger import Ledger, LedgerCounts
from segment_ops.engine.models import ModelError, ModelSpec
from segment_ops.engine.warehouse import CHUNK_ROWS, StagedResult, WarehouseError, dialect_of, stage_query

STAGED_TABLE = "rev_staged"


@dataclass
class ModelRun:
    model: ModelSpec
    dialect: str
    staged: StagedResult
    plan: DiffPlan
    delivery: DeliveryReport | None
    ledger: LedgerCounts | None  # filled before the run is returned or raised
    advanced: int
    dry_run: bool
    full_resync: bool
    seconds: float


def sync_model(con: duckdb.DuckDBPyConnection, model: ModelSpec, warehouse_url: str,
               client_factory: Callable[[], SegmentTrackingClient], *, run_id: str | None = None,
               dry_run: bool = False, full_resync: bool = False, max_in_flight: int = 4,
               chunk_rows: int = CHUNK_ROWS, fast_path: bool = True) -> ModelRun:
    """Sync `model` from the warehouse to Segment; `dry_run` plans and counts, sends and records nothing.

    Raises `ModelError` (naming the model file) when the query fails or the header does not fit its
    result, `DeliveryIncomplete` when messages stay pending, and the client's `VendorFatalError` as it is.
    """
    started = time.monotonic()
    ledger = Ledger(con)
    ensure_state(con)
    if not dry_run:
        advance_snapshot(con, model.sync)  # settle what an earlier, interrupted run delivered
        if full_resync:
            reset_snapshot(con)
    try:
        staged = stage_query(con, warehouse_url, model.sql, STAGED_TABLE, chunk_rows=chunk_rows, fast_path=fast_path)
    except WarehouseError as exc:
        raise ModelError(model.path, str(exc)) from None
    plan = plan_changes(con, ledger, model, staged, run_id=run_id, dry_run=dry_run,
                        ignore_snapshot=dry_run and full_resync)
    run = ModelRun(model, dialect_of(warehouse_url), staged, plan, None, None, 0, dry_run, full_resync, 0.0)
    if dry_run:
        run.ledger = ledger.counts(model.sync)
        run.seconds = time.monotonic() - started
        return run

    settled = deliver_changes(con, ledger, model.sync, client_factory, run_id=run_id, max_in_flight=max_in_flight)
    run.delivery, run.advanced, run.ledger = settled.delivery, settled.advanced, settled.ledger
    run.seconds = time.monotonic() - started
    if settled.failure is not None:
        raise DeliveryIncomplete(str(settled.failure), run)
    return run
