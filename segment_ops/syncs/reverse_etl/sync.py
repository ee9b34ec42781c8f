"""One reverse-ETL run of one model, declared on the engine's runner: the model's query is the stage.

Everything for a model lives in its own staging file (`reverse_etl_<model>.duckdb`): the staged rows,
the snapshot and the ledger.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import duckdb

from segment_ops.clients.segment_tracking import SegmentTrackingClient
from segment_ops.engine.diff import SAMPLE_SIZE
from segment_ops.engine.governance import Governance
from segment_ops.engine.guard import GuardLimits
from segment_ops.engine.run import DiffSync, RunReport, run_diff_sync
from segment_ops.engine.spec import SpecError
from segment_ops.engine.warehouse import CHUNK_ROWS, StagedResult, WarehouseError, dialect_of, stage_query
from segment_ops.syncs.reverse_etl.model import ModelError, ModelSpec

STAGED_TABLE = "rev_staged"


@dataclass(kw_only=True)
class ModelRun(RunReport):
    model: ModelSpec
    dialect: str
    staged: StagedResult | None = None


def sync_model(con: duckdb.DuckDBPyConnection, model: ModelSpec, warehouse_url: str,
               client_factory: Callable[[], SegmentTrackingClient], *, run_id: str | None = None,
               dry_run: bool = False, full_resync: bool = False, baseline: bool = False,
               force_baseline: bool = False, max_in_flight: int = 4, chunk_rows: int = CHUNK_ROWS,
               fast_path: bool = True, sample_size: int = SAMPLE_SIZE,
               progress_log: Callable[[str], None] | None = None, guard: GuardLimits | None = None,
               approve_plan: str | None = None, governance: Governance | None = None) -> ModelRun:
    """Sync `model` from the warehouse to Segment; `dry_run` plans and counts, sends and records nothing;
    `baseline` records the current rows as delivered and sends nothing (`run_diff_sync`); `progress_log`
    takes a long delivery's progress lines where no terminal shows a bar (a run's log); `guard` and
    `approve_plan`: the plan guard; `governance`: regulations, tracking plan (`run_diff_sync`).

    Raises `ModelError` (naming the model file) when the query fails or the header does not fit its
    result, `DeliveryIncomplete` when messages stay pending, `BaselineRefused` when a baseline meets delivered
    state (unless `force_baseline`), `PlanHeld` when the guard holds the plan, and the client's
    `VendorFatalError` as it is.
    """
    run = ModelRun(model=model, dialect=dialect_of(warehouse_url), dry_run=dry_run, full_resync=full_resync,
                   baseline=baseline)

    def stage(con: duckdb.DuckDBPyConnection) -> StagedResult:
        try:
            run.staged = stage_query(con, warehouse_url, model.sql, STAGED_TABLE, chunk_rows=chunk_rows,
                                     fast_path=fast_path)
        except WarehouseError as exc:
            raise ModelError(model.path, str(exc)) from None
        return run.staged

    try:
        return run_diff_sync(con, DiffSync(model.diff_spec, stage), run, client_factory, run_id=run_id,
                             max_in_flight=max_in_flight, force_baseline=force_baseline,
                             sample_size=sample_size, progress_log=progress_log, guard=guard,
                             approve_plan=approve_plan, governance=governance)
    except SpecError as exc:
        raise ModelError(model.path, exc.problem) from None
