"""`segment-ops status` and `segment-ops rejected`: what each sync's ledger holds, read from its staging file
without the `duckdb` CLI. Read-only: a file a run holds is reported busy, never waited for."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from segment_ops.commands import whole_number
from segment_ops.commands.output import render_table

if TYPE_CHECKING:  # the engine is imported lazily, so `segment-ops --help` stays fast
    import duckdb

    from segment_ops.engine.ledger import Ledger

BUSY = "busy (a run holds it)"
NO_LEDGER = "no delivery ledger"
DEFAULT_LIMIT = 50

STATUS_DESCRIPTION = """\
One line per sync with state in this home (with SEGMENT_OPS_STATE_URL, also the syncs only the state
database holds): when it last planned or recorded anything and under which run id, how many messages are
pending, delivered and verified, what was rejected, and how long the oldest pending message has waited.

rejected: "N rows" are input rows refused before sending (bad values, invalid calls), each row and reason
counted once however many runs refused it; "M by destination" are messages the destination refused.
`segment-ops rejected SYNC` lists both with their reasons.

Read-only: it never takes a sync's write lock. A staging file a running sync holds is shown as
"busy (a run holds it)"; run the command again when that run has finished.

Exit status: 0 when every sync was read or is busy; 1 when a sync's state could not be read (the line says
why); 2 when the state database cannot be reached."""

REJECTED_DESCRIPTION = """\
The rows SYNC refused, newest first: input rows that could not become a call and messages a destination
refused, each with its reason, source (file:line, model, or the destination), record key, when and the run
id. A row refused the same way by several runs is listed once, with how many times (`x3`). Payloads are
shown as the engine stored them (redacted where the sync redacts); a setting's secret is never printed.

Exit status: 0 (also when nothing was rejected); 1 when the state cannot be read; 2 for an unknown SYNC
(the message lists the known ones) or a state database that cannot be reached."""


def register(subcommands) -> None:  # noqa: ANN001  (cli._Subcommands)
    """Add `status` and `rejected` to the `segment-ops` parser."""
    status = subcommands.add_parser("status", help="per sync: last run, pending, delivered, verified, "
                                                   "rejected, oldest pending", description=STATUS_DESCRIPTION)
    status.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    status.set_defaults(func=run_status)

    rejected = subcommands.add_parser("rejected", help="list the rows a sync rejected, with their reasons",
                                      description=REJECTED_DESCRIPTION)
    rejected.add_argument("sync", metavar="SYNC",
                          help="a staging file's name without .duckdb, as `segment-ops status` lists them, "
                               "e.g. replay, audit_trail, reverse_etl_user_traits")
    rejected.add_argument("--limit", type=whole_number, default=DEFAULT_LIMIT, metavar="N",
                          help="at most N rows (0: all of them)")
    rejected.add_argument("--since", type=_timestamp, metavar="ISO",
                          help="only rows rejected at or after this time (ISO 8601, e.g. 2026-05-01 or "
                               "2026-05-01T08:00; UTC unless it has an offset)")
    rejected.add_argument("--reason", metavar="TEXT",
                          help="only rows whose reason contains TEXT (case-insensitive)")
    rejected.add_argument("--json", action="store_true",
                          help="print a JSON array of the rows (with the stored record) instead of the table")
    rejected.set_defaults(func=run_rejected)


# --- status ----------------------------------------------------------------------------------------------

@dataclass
class SyncStatus:
    """One ledger sync of one staging file, or the file itself when it could not be read."""

    name: str  # the staging file's name (what `rejected` and `state export` take)
    sync: str | None = None  # the ledger's sync: the file's name, or one of several (audit_trail: per SIEM)
    state: str = "ok"  # ok | busy | no ledger | error
    detail: str | None = None
    last_activity_at: datetime | None = None
    last_run_id: str | None = None
    pending: int = 0
    delivered: int = 0
    verified: int = 0
    rejected_rows: int = 0  # distinct (record key, source, reason) refused before sending
    rejected_by_destination: int = 0  # messages whose state is rejected
    oldest_pending_at: datetime | None = None
    counts: dict[str, int] = field(default_factory=dict)  # every ledger state


def run_status(args: argparse.Namespace) -> int:
    from segment_ops.config import load_settings
    from segment_ops.engine.store import staging_files

    home = load_settings().home
    paths = staging_files(home)  # a SharedStateError is `cli.main`'s: exit 2
    now = datetime.now(UTC)
    rows = [row for path in paths for row in read_status(path)]
    if args.json:
        print(json.dumps({"home": str(home), "at": now.isoformat(),
                          "syncs": [_status_json(r, now) for r in rows]}, indent=2))
    elif not rows:
        print(f"No sync has state in {home / 'staging'} yet: nothing has run in this home "
              "(SEGMENT_OPS_HOME). Run a sync, e.g. `segment-ops replay FILE`, or `segment-ops demo`.")
    else:
        print(render_table(["SYNC", "LAST ACTIVITY", "RUN", "PENDING", "DELIVERED", "VERIFIED", "REJECTED",
                            "OLDEST PENDING"], [_status_cells(r, now) for r in rows], numeric={3, 4, 5}))
        if notes := [r for r in rows if r.state == "ok" and r.detail]:
            print()
            for row in notes:
                print(f"* {row.name}: {row.detail}")
        if any(r.state == "busy" for r in rows):
            print("\nbusy: a running sync holds its staging file; run the command again when it ends.")
    return 1 if any(r.state == "error" for r in rows) else 0


def read_status(path: Path) -> list[SyncStatus]:
    """The status of every ledger sync in the staging file at `path`, or one row saying why there is none."""
    from segment_ops.engine import journal
    from segment_ops.engine.ledger import Ledger
    from segment_ops.engine.store import open_read_only

    name = path.stem
    try:
        con = open_read_only(path, lock_timeout=0)  # a file a run holds is busy, never waited for
    except Exception as exc:  # SharedStateError, or a file DuckDB cannot read: that line says so
        return [SyncStatus(name, state="error", detail=_one_line(exc))]
    if con is None:
        return [SyncStatus(name, state="busy", detail=BUSY)]
    try:
        ledger = Ledger(con, create=False)
        if not ledger.holds_ledger():
            return [SyncStatus(name, state="no ledger", detail=NO_LEDGER)]
        rows = [_sync_status(ledger, name, sync) for sync in ledger.syncs() or [name]]
    except Exception as exc:
        return [SyncStatus(name, state="error", detail=_one_line(exc))]
    finally:
        con.close()
    if journal.leftovers(path.resolve()):  # not busy, so no run is writing them: a delivery stopped
        stopped = "a stopped delivery's answers are not logged yet: the sync's next run logs them"
        for row in rows:  # beside what the row already says (a held plan's approval), not over it
            row.detail = f"{row.detail}; {stopped}" if row.detail else stopped
    return rows


def _sync_status(ledger: Ledger, name: str, sync: str) -> SyncStatus:
    counts = asdict(ledger.counts_as_read(sync))
    activity = ledger.activity(sync)
    held = None
    if counts["held"]:  # the plan guard held a plan: say what approves it
        _, _, fingerprint = ledger.plan_digest(sync)
        held = (f"{counts['held']:,} messages held by the plan guard: the plan waits for approval (run the "
                f"sync with approve_plan: {fingerprint})")
    notes = [held] if held else []
    if counts["suppressed"]:  # counted apart from rejections: a regulation, not a fault
        notes.append(f"{counts['suppressed']:,} messages suppressed: about users a privacy regulation "
                     "covers, never sent")
    return SyncStatus(name, sync, last_activity_at=activity.at, last_run_id=activity.run_id,
                      pending=counts["pending"], delivered=counts["delivered"], verified=counts["verified"],
                      rejected_rows=ledger.rejected_input_rows(sync),
                      rejected_by_destination=counts["rejected"],
                      oldest_pending_at=ledger.oldest_pending(sync), counts=counts,
                      detail="; ".join(notes) or None)


def _status_cells(row: SyncStatus, now: datetime) -> list[str]:
    label = row.name if row.sync in (None, row.name) else f"{row.name}/{row.sync}"
    if row.state != "ok":
        return [label, row.detail or row.state]
    rejected = f"{row.rejected_rows:,} rows + {row.rejected_by_destination:,} by destination"
    cells = [label, _when(row.last_activity_at), _short_run(row.last_run_id), f"{row.pending:,}",
             f"{row.delivered:,}", f"{row.verified:,}", rejected,
             _age(now - row.oldest_pending_at) if row.oldest_pending_at else "-"]
    if row.detail:  # said in full below the table, where no column width cuts it
        cells[-1] += " *"
    return cells


def _status_json(row: SyncStatus, now: datetime) -> dict:
    out = asdict(row)
    for key in ("last_activity_at", "oldest_pending_at"):
        out[key] = out[key].isoformat() if out[key] else None
    out["oldest_pending_age_seconds"] = (round((now - row.oldest_pending_at).total_seconds())
                                         if row.oldest_pending_at else None)
    return out


# --- rejected --------------------------------------------------------------------------------------------

def run_rejected(args: argparse.Namespace) -> int:
    from segment_ops.config import load_settings
    from segment_ops.engine.store import open_read_only, staging_files

    home = load_settings().home
    paths = {path.stem: path for path in staging_files(home)}  # a SharedStateError is `cli.main`'s: exit 2
    path = paths.get(args.sync)
    if path is None:
        known = ", ".join(sorted(paths)) or f"none: nothing has run in {home}"
        print(f"error: no sync named {args.sync!r} has state in this home; the syncs are: {known}",
              file=sys.stderr)
        return 2
    try:
        con = open_read_only(path, lock_timeout=0)  # a file a run holds is busy, never waited for
    except Exception as exc:
        print(f"error: cannot read {args.sync}: {_one_line(exc)}", file=sys.stderr)
        return 1
    if con is None:
        print(f"{args.sync}: {BUSY}; run again when that run has finished.", file=sys.stderr)
        return 1
    try:
        rows = read_rejected(con, since=args.since, reason=args.reason, limit=args.limit)
    finally:
        con.close()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        filters = " matching the filters" if args.since or args.reason else ""
        print(f"{args.sync}: nothing rejected{filters}.")
        return 0
    several = len({r["sync"] for r in rows}) > 1
    header = ["REJECTED AT", "SOURCE", "KEY", "REASON", "RUN", "TIMES"]
    cells = [[_when(datetime.fromisoformat(r["rejected_at"])), r["source"] or "", r["record_key"] or "",
              r["reason"], _short_run(r["run_id"]), f"x{r['times']}" if r["times"] > 1 else ""]
             for r in rows]
    if several:  # audit_trail: one ledger sync per SIEM
        header.insert(1, "LEDGER SYNC")
        for cell, r in zip(cells, rows, strict=True):
            cell.insert(1, r["sync"])
    print(render_table(header, cells))
    if args.limit and len(rows) == args.limit:
        print(f"\n(the newest {args.limit}; --limit 0 lists them all)")
    return 0


def read_rejected(con: duckdb.DuckDBPyConnection, *, since: datetime | None = None,
                  reason: str | None = None, limit: int = DEFAULT_LIMIT) -> list[dict]:
    """The file's rejected rows, newest first, one per (sync, record key, source, reason) with the newest
    run's id and record and how many times it was rejected; as JSON-ready dicts, secrets redacted."""
    from segment_ops.engine.alerts import redact_secrets, secret_values
    from segment_ops.engine.ledger import Ledger

    secrets = secret_values()  # once, not per field: each lookup reads the settings
    out = []
    for found in Ledger(con, create=False).rejected_rows(since=since, reason=reason, limit=limit):
        row = asdict(found)
        row["rejected_at"] = row["rejected_at"].isoformat()
        for key in ("source", "record_key", "reason", "record"):
            row[key] = redact_secrets(row[key], secrets) if row[key] is not None else None
        out.append(row)
    return out


# --- shared ----------------------------------------------------------------------------------------------

def _redact(text: str) -> str:
    from segment_ops.engine.alerts import redact_secrets

    return redact_secrets(text)


def _one_line(exc: BaseException) -> str:
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    return _redact(first)


def _when(at: datetime | None) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if at else "-"


def _short_run(run_id: str | None) -> str:
    """A Dagster run id by its first 8 characters, as the UI shows it; a CLI run id (`cli-...`) whole."""
    if not run_id:
        return "-"
    return run_id if run_id.startswith("cli-") or len(run_id) <= 12 else run_id[:8]


def _age(age: timedelta) -> str:
    seconds = max(int(age.total_seconds()), 0)
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {seconds}s" if minutes else f"{seconds}s"


def _timestamp(value: str) -> datetime:
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an ISO 8601 date or time, e.g. 2026-05-01T08:00, "
                                         f"not {value!r}") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)
