"""`segment-ops models`: the reverse-ETL model files without Dagster: list them, validate them against the
warehouse (the preflight's check), preview a run (a dry run on this home's state) and record a baseline
(adopting a destination that already holds what the warehouse says, so the first run sends only changes)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from segment_ops.commands import whole_number
from segment_ops.commands.output import render_table, still_held
from segment_ops.config import Settings, load_settings

if TYPE_CHECKING:  # the engine is imported lazily, so `segment-ops --help` stays fast
    from segment_ops.syncs.reverse_etl.model import ModelError, ModelSpec
    from segment_ops.syncs.reverse_etl.sync import ModelRun

DEFAULT_PREVIEW_SAMPLES = 5
PREVIEW_WAIT_SECONDS = 5.0  # how long a preview waits while a run of the model holds its staging file
log = logging.getLogger("segment_ops.reverse_etl")


def register(subcommands) -> None:  # noqa: ANN001  (cli._Subcommands)
    models = subcommands.add_parser(
        "models", help="list, validate, preview or baseline the reverse-ETL models (without Dagster)",
        description="The reverse-ETL models of REVERSE_ETL_MODELS_DIR (one folder, or several separated by "
                    "the path separator). Nothing here sends anything to Segment.")
    sub = subcommands.add_subcommands(models, dest="models_command", required=True)

    listing = sub.add_parser("list", help="every model: name, file, call, mode, key, schedule; the error of "
                                          "a broken one (exit 1 when one is broken)")
    listing.set_defaults(func=_run_list)

    validate = sub.add_parser("validate", help="parse each model and compile its query against WAREHOUSE_URL "
                                               "(LIMIT 0, nothing read), as the preflight does; exit 1 on a "
                                               "failure")
    validate.add_argument("models", nargs="*", metavar="MODEL", help="models to validate (none: all)")
    validate.set_defaults(func=_run_validate)

    preview = sub.add_parser("preview", help="what a run of MODEL would send now: counts and sample payloads "
                                             "from a dry run against the warehouse and this home's state; "
                                             "sends and records nothing")
    preview.add_argument("model", metavar="MODEL")
    preview.add_argument("--limit", type=whole_number, default=DEFAULT_PREVIEW_SAMPLES, metavar="N",
                         help="sample payloads (and rejected rows) to show")
    preview.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    preview.set_defaults(func=_run_preview)

    baseline = sub.add_parser("baseline", help="record MODEL's current rows as delivered without sending "
                                               "anything (adopting a destination that already holds them), "
                                               "so the next run sends only what changes")
    baseline.add_argument("model", metavar="MODEL")
    baseline.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    baseline.add_argument("--force", action="store_true",
                          help="record it even though the model has delivered state (pending messages "
                               "are superseded)")
    baseline.add_argument("--wait", type=float, default=60.0, metavar="SECONDS",
                          help="how long to wait while a run of the model holds its staging file")
    baseline.set_defaults(func=_run_baseline)


# --- list / validate ----------------------------------------------------------------------------------------

def _run_list(args: argparse.Namespace) -> int:
    found = [_with_schedule(m) for m in _load(load_settings())]
    if not found:
        print(f"no model files in {_folders_text(load_settings())}")
        return 0
    rows = []
    for model in found:
        if _is_error(model):
            rows.append((model.path.stem, str(model.path), "BROKEN", "", "", "", model.problem))
        else:
            rows.append((model.name, str(model.path), model.call, model.mode, model.key,
                         model.schedule or "none", ""))
    print(render_table(("model", "file", "call", "mode", "key", "schedule", "error"), rows, width=None))
    broken = sum(1 for m in found if _is_error(m))
    if broken:
        print(f"\n{broken} of {len(found)} models broken: fix the files named (their runs fail until then)",
              file=sys.stderr)
    return 1 if broken else 0


def _run_validate(args: argparse.Namespace) -> int:
    from segment_ops.engine.warehouse import WarehouseError
    from segment_ops.syncs.reverse_etl.model import compile_models

    settings = load_settings()
    found = _load(settings)
    if args.models:
        names = {_name(m) for m in found}
        if unknown := [n for n in args.models if n not in names]:
            return _unknown(unknown, found)
        found = [m for m in found if _name(m) in args.models]
    if not found:
        print(f"no model files in {_folders_text(settings)}")
        return 0
    try:
        checked = compile_models(settings["WAREHOUSE_URL"], [_with_schedule(m) for m in found])
    except WarehouseError as exc:
        print(f"error: cannot validate against WAREHOUSE_URL: {exc}", file=sys.stderr)
        return 1
    broken = 0
    for model in checked:
        if _is_error(model):
            broken += 1
            print(f"FAIL {model}")
        else:
            print(f"ok   {model.name} ({model.path})")
    if broken:
        print(f"{broken} of {len(checked)} models broken", file=sys.stderr)
    return 1 if broken else 0


# --- preview / baseline ---------------------------------------------------------------------------------

def _run_preview(args: argparse.Namespace) -> int:
    import duckdb

    from segment_ops.engine import store
    from segment_ops.engine.store import StagingLockedError
    from segment_ops.syncs.reverse_etl.model import ModelError
    from segment_ops.syncs.reverse_etl.sync import sync_model

    settings = load_settings()
    model = _one(settings, args.model)
    if isinstance(model, int):
        return model  # an exit code: the problem is printed
    path = store.staging_file(settings.home, model.sync)
    try:
        # A dry run on the model's own staging file (its lock, so never beside a run), or, for a model that
        # never ran, on an empty in-memory one: a preview leaves no state behind.
        if store.has_state(path):
            with store.staging(path, lock_timeout=PREVIEW_WAIT_SECONDS) as con:
                run = sync_model(con, model, settings["WAREHOUSE_URL"], _no_client, dry_run=True,
                                 run_id=_run_id("preview"), sample_size=args.limit,
                                 governance=_governance(settings, model))
        else:
            con = duckdb.connect(config={"memory_limit": store.DEFAULT_MEMORY_LIMIT})
            try:
                run = sync_model(con, model, settings["WAREHOUSE_URL"], _no_client, dry_run=True,
                                 run_id=_run_id("preview"), sample_size=args.limit,
                                 governance=_governance(settings, model))
            finally:
                con.close()
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except StagingLockedError:
        held = still_held(f"a run of {model.name}", path, PREVIEW_WAIT_SECONDS, "sent or recorded",
                          wait_option=False)
        print(f"error: {held}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(_preview_json(run, args.limit), indent=2))
    else:
        _print_preview(run, args.limit)
    return 0


def _governance(settings, model):  # -> engine.governance.Governance
    """What a preview shows and a baseline records is what a run would send: without the users a deleting
    regulation covers, and under the model's PII policy (`engine.governance`)."""
    from segment_ops.engine.governance import Governance
    from segment_ops.engine.regulations import load_regulated

    return Governance(regulated=load_regulated(settings.home), pii=model.pii)


def _run_baseline(args: argparse.Namespace) -> int:
    from segment_ops.engine import store
    from segment_ops.engine.diff import BaselineRefused
    from segment_ops.engine.store import StagingLockedError
    from segment_ops.syncs.reverse_etl.model import ModelError
    from segment_ops.syncs.reverse_etl.sync import sync_model

    settings = load_settings()
    model = _one(settings, args.model)
    if isinstance(model, int):
        return model
    if not args.yes:
        if not sys.stdin.isatty():
            print(f"error: a baseline records every current row of {model.name} as delivered to Segment "
                  "without sending it; pass --yes to confirm (see `segment-ops models preview "
                  f"{model.name}` for what that is)", file=sys.stderr)
            return 2
        answer = input(f"Record every current row of {model.name} as already delivered to Segment, sending "
                       "nothing? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing recorded")
            return 2
    path = store.staging_file(settings.home, model.sync)
    run_id = _run_id("baseline")
    try:
        # The runs' own staging session (file lock; with SEGMENT_OPS_STATE_URL the sync's advisory lock and a
        # check-in), so a baseline never races a run of the model.
        with store.staging(path, lock_timeout=args.wait) as con:
            run = sync_model(con, model, settings["WAREHOUSE_URL"], _no_client, baseline=True,
                             force_baseline=args.force, run_id=run_id,
                             governance=_governance(settings, model))
    except BaselineRefused as exc:
        print(f"error: {exc} (--force); nothing was recorded", file=sys.stderr)
        return 2
    except ModelError as exc:
        print(f"error: {exc}; nothing was recorded", file=sys.stderr)
        return 1
    except StagingLockedError:
        print(f"error: {still_held(f'a run of {model.name}', path, args.wait, 'recorded')}", file=sys.stderr)
        return 2
    plan = run.plan
    log.warning("baseline %s of reverse-ETL model %s (%s): %d rows recorded as delivered without sending",
                run_id, model.name, model.path, plan.baselined)
    print(f"{model.name}: baseline {run_id} recorded in {path}")
    print(f"  recorded as delivered (nothing sent): {plan.baselined:,}   unchanged: {plan.unchanged:,}   "
          f"rejected (not recorded): {plan.rejected:,}   rows read: {plan.rows_read:,}")
    if plan.superseded:
        print(f"  pending messages superseded: {plan.superseded:,}")
    if plan.removed:
        print(f"  left the query, not recorded: {plan.removed:,} (the next run clears them)")
    for key, reason in plan.rejection_samples[:10]:
        print(f"  rejected {'(null key)' if key is None else key}: {reason}")
    print("  the next run sends only rows that change from here")
    return 0


def _preview_json(run: ModelRun, limit: int) -> dict:
    plan = run.plan
    return {
        "model": run.model.name, "file": str(run.model.path), "call": run.model.call, "mode": run.model.mode,
        "rows_read": plan.rows_read, "added": plan.added, "changed": plan.changed, "removed": plan.removed,
        "unchanged": plan.unchanged, "rejected": plan.rejected, "would_send": plan.planned,
        "already_planned": plan.already_known,
        **({"changed_not_resent": plan.changed_not_sent} if run.model.mode == "append" else {}),
        "sample_payloads": [json.loads(p) for p in plan.samples[:limit]],
        "rejected_sample": [{"key": k, "reason": r} for k, r in plan.rejection_samples[:limit]],
    }


def _print_preview(run: ModelRun, limit: int) -> None:
    plan, model = run.plan, run.model
    print(f"{model.name} ({model.path}): {model.call}, {model.mode} mode; dry run, nothing sent or recorded")
    print(f"  rows read: {plan.rows_read:,}   added: {plan.added:,}   changed: {plan.changed:,}   "
          f"removed: {plan.removed:,}   unchanged: {plan.unchanged:,}   rejected: {plan.rejected:,}")
    extra = f"   changed, not re-sent (append): {plan.changed_not_sent:,}" if model.mode == "append" else ""
    print(f"  would send: {plan.planned:,}   already planned by an earlier run: "
          f"{plan.already_known:,}{extra}")
    for key, reason in plan.rejection_samples[:limit]:
        print(f"  rejected {'(null key)' if key is None else key}: {reason}")
    for sample in plan.samples[:limit]:
        print(f"  sample: {sample.decode()}")


# --- helpers --------------------------------------------------------------------------------------------

def _folders(settings: Settings) -> str | Path:
    from segment_ops.syncs.reverse_etl.model import models_dir

    return models_dir(settings)


def _folders_text(settings: Settings) -> str:
    from segment_ops.syncs.reverse_etl.model import model_folders

    return ", ".join(map(str, model_folders(_folders(settings))))


def _load(settings: Settings) -> list[ModelSpec | ModelError]:
    from segment_ops.syncs.reverse_etl.model import load_models

    return load_models(_folders(settings))


def _with_schedule(model: ModelSpec | ModelError) -> ModelSpec | ModelError:
    """A model whose `schedule:` Dagster would refuse is broken, as the code location reports it."""
    if _is_error(model) or not model.schedule:
        return model
    from segment_ops.syncs.reverse_etl.defs import _schedule
    from segment_ops.syncs.reverse_etl.model import ModelError

    try:
        _schedule(model)
    except ModelError as exc:
        return exc
    return model


def _one(settings: Settings, name: str) -> ModelSpec | int:
    """The model named `name`, or the exit code after saying why there is none."""
    found = _load(settings)
    for model in found:
        if _name(model) == name:
            if _is_error(model):
                print(f"error: {model}", file=sys.stderr)
                return 1
            return model
    return _unknown([name], found)


def _unknown(names: list[str], found: list) -> int:
    known = ", ".join(sorted({_name(m) for m in found})) or "none"
    print(f"error: no model named {', '.join(names)}; the models are: {known}", file=sys.stderr)
    return 2


def _name(model: ModelSpec | ModelError) -> str:
    return model.path.stem if _is_error(model) else model.name


def _is_error(model: object) -> bool:
    return isinstance(model, Exception)


def _run_id(kind: str) -> str:
    return f"cli-{kind}-{uuid.uuid4().hex[:12]}"


def _no_client():  # noqa: ANN202
    raise RuntimeError("segment-ops models never sends: no Segment client is made")
