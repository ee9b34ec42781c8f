"""`segment-ops demo`: start the sandbox, run every sync once through Dagster, print what each did, then
read a sample of the identify calls back from the sandbox's Segment profiles (`landed_in_segment`).

The demo talks to the sandbox only: vendor URL and credential variables are ignored for its runs, so
demo data can never reach a real workspace, and its state lives in `$SEGMENT_OPS_HOME/demo`, apart from
a live deployment's. Runs land in the project's Dagster instance
(`DAGSTER_HOME`, default `./.dagster_home`), so `dagster dev` shows them afterwards.
"""

from __future__ import annotations

import gc
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from segment_ops.config import SETTINGS, load_settings

if TYPE_CHECKING:  # imported lazily at run time: the sandbox and Dagster are heavy imports
    import dagster as dg

    from segment_ops.sandbox.demo_data import DemoData

# The syncs the project is built to run; the demo says plainly which of them exist yet.
PLANNED_SYNC_GROUPS = ("replay", "reverse_etl", "heap", "pendo", "audit_trail")
# After the syncs, the landed_in_segment checks read back the identify calls of these syncs (group: its
# read-back job); the sandbox's profiles show a call 1 s after accepting it, so this delay is past that.
READ_BACK_JOBS = {"reverse_etl": "reverse_etl_read_back_job", "heap": "heap_read_back_job"}
DEMO_READ_BACK_DELAY_SECONDS = 2.0


@dataclass(frozen=True)
class DemoStep:
    """One sync run by the demo: its job, how to configure it, and which metadata to summarise."""

    group: str
    job_name: str
    run_config: Callable[[Path], dict]
    read_key: str
    sent_key: str
    already_sent_key: str
    rejected_keys: tuple[str, ...]
    partition_key: Callable[[], str] | None = None  # for partitioned jobs: which partition the demo runs
    # For single-run backfills: the (first, last) partition keys one run covers.
    partition_range: Callable[[], tuple[str, str]] | None = None


def _replay_config(home: Path) -> dict:
    path = str(home / "demo" / "historical_events.jsonl")
    return {"ops": {"segment__replayed_events": {"config": {"path": path}}}}


def _last_pendo_days() -> tuple[str, str]:
    from segment_ops.syncs.pendo.defs import latest_days

    return latest_days(60)  # 60 days: the 30-day window and the previous one the trend compares it with


def _last_complete_audit_hour() -> str:
    from segment_ops.syncs.audit_trail.defs import complete_hours

    return complete_hours(1)[-1]


def _heap_config(home: Path) -> dict:
    from segment_ops.syncs.heap.defs import prepare_demo

    return prepare_demo()


DEMO_STEPS = (
    DemoStep("replay", "replay_job", _replay_config, "lines_read", "delivered", "planned_by_earlier_runs",
             ("rejected_lines", "rejected_by_destination")),
    # Every model in sql/reverse_etl/ against the demo warehouse, as one job; counts are summed over the
    # models.
    DemoStep("reverse_etl", "reverse_etl_job", lambda home: {}, "rows_read", "delivered", "unchanged",
             ("rejected", "rejected_by_destination")),
    # Pendo usage of the last 60 days backfilled in one run (two 30-day requests per source), every account
    # scored, and a group call for each account whose health traits changed.
    DemoStep("pendo", "pendo_account_health_job", lambda home: {}, "accounts_scored", "delivered",
             "unchanged", ("rejected", "rejected_by_destination"), partition_range=_last_pendo_days),
    # Heap: the sandbox pushes one signed segment sync per demo segment to the real receiver (in-process),
    # and each audience applies it by the webhook route; counts are summed over the audiences.
    DemoStep("heap", "heap_audiences_job", _heap_config, "heap_members", "delivered", "unchanged",
             ("newly_rejected", "rejected_by_destination")),
    # The last complete hour of the sandbox's audit trail, pulled and forwarded to Splunk HEC.
    DemoStep("audit_trail", "audit_trail_job", lambda home: {}, "events_pulled", "forwarded",
             "already_forwarded_or_pending", ("rejected_by_destination",),
             partition_key=_last_complete_audit_hour),
)


def run_demo(*, scale: float = 1.0, seed: int = 7) -> int:
    """Returns the process exit code: 0 when every sync succeeded."""
    # A `demo` folder inside SEGMENT_OPS_HOME (or its default), never the home itself: the sandbox's ledgers
    # must not pass for what a live deployment on that home delivered (the demo's messageIds are a live
    # run's for the same rows). Refused with a HomeConflictError before anything starts when an old
    # `./.segment_ops` holds state.
    home = load_settings().home / "demo"

    import dagster as dg

    from segment_ops.sandbox import SandboxConfig, start_sandbox
    from segment_ops.sandbox.demo_data import DemoConfig, DemoData
    from segment_ops.sandbox.warehouse import build_demo_warehouse

    _use_sandbox_only(home)
    dagster_home = _ensure_dagster_home()
    print(f"segment_ops demo  (SEGMENT_OPS_HOME={home}, DAGSTER_HOME={dagster_home})")

    sandbox = start_sandbox(SandboxConfig(seed=seed, scale=scale))
    os.environ["SEGMENT_OPS_SANDBOX_URL"] = sandbox.url
    print(f"sandbox: {sandbox.url}")
    try:
        data = DemoData(DemoConfig(seed=seed, scale=scale))
        counts = build_demo_warehouse(home / "demo_warehouse.duckdb", data)
        print("demo warehouse: " + ", ".join(f"{t} {n:,}" for t, n in counts.items()))
        lines = write_demo_replay_file(home / "demo" / "historical_events.jsonl", data)
        print(f"demo replay file: {lines:,} lines")

        from segment_ops.definitions import defs

        definitions = defs()
        instance = dg.DagsterInstance.get()
        # Dagster, the definitions and the instance live until the CLI exits: frozen, their ~250,000 objects
        # are no longer walked by every full collection and again at exit (measured: 1.5 s of the demo's
        # 11.5 s of CPU time).
        gc.freeze()
        failed = 0
        rows = []
        delivered_at = 0.0  # when the last sync whose identify calls are read back finished
        for step in DEMO_STEPS:
            job = definitions.resolve_job_def(step.job_name)
            run_config = {**step.run_config(home),
                          "loggers": {"console": {"config": {"log_level": "WARNING"}}}}
            partition = step.partition_key() if step.partition_key else None
            tags = None
            if step.partition_range:
                first, last = step.partition_range()
                tags = {"dagster/asset_partition_range_start": first,
                        "dagster/asset_partition_range_end": last}
            result = job.execute_in_process(run_config=run_config, instance=instance, raise_on_error=False,
                                            partition_key=partition, tags=tags)
            if step.group in READ_BACK_JOBS:
                delivered_at = time.monotonic()
            metadata = _materialization_metadata(result)
            failed += 0 if result.success else 1
            rows.append((step.group, "ok" if result.success else "FAILED", metadata.get(step.read_key, "-"),
                         metadata.get(step.sent_key, "-"), metadata.get(step.already_sent_key, "-"),
                         sum(int(metadata.get(k, 0)) for k in step.rejected_keys), result.run_id))
        _print_summary(rows)
        stats = sandbox.stats()
        segment, splunk = stats.get("segment", {}), stats.get("splunk", {})
        dropped = sum(segment.get("dropped", {}).values())
        print(f"sandbox recorder: Segment received {segment.get('received', 0):,} unique calls "
              f"({segment.get('duplicates', 0):,} duplicate deliveries, deduplicated by messageId; "
              f"{segment.get('late_duplicates', 0):,} repeats after the ~24 h dedupe window; "
              f"{dropped:,} accepted but silently dropped); "
              f"Splunk HEC received {splunk.get('received', 0):,} events")
        failed += _read_back(instance, delivered_at)
        missing = [g for g in PLANNED_SYNC_GROUPS if g not in {step.group for step in DEMO_STEPS}]
        if missing:
            print("not built yet (so not run): " + ", ".join(missing))
        print(f"open the UI on these runs: SEGMENT_OPS_HOME={home} DAGSTER_HOME={dagster_home} "
              ".venv/bin/dagster dev")
        return 1 if failed else 0
    finally:
        sandbox.stop()


def write_demo_replay_file(path: Path, data: DemoData) -> int:
    """Historical calls for the replay sync: an identify per user, a "Signed Up" track per known user,
    and three malformed lines that the engine must reject with their line numbers."""
    path.parent.mkdir(parents=True, exist_ok=True)
    users = data.users
    written = 0
    with path.open("wb") as out:
        for user in users.itertuples(index=False):
            ids = ({"userId": user.user_id} if isinstance(user.user_id, str)
                   else {"anonymousId": user.anonymous_id})
            traits = {"email": user.email, "name": user.name, "plan": user.plan, "country": user.country}
            stamp = user.created_at.isoformat()
            out.write(orjson.dumps({"type": "identify", **ids, "traits": traits, "timestamp": stamp}) + b"\n")
            written += 1
            if "userId" in ids:
                out.write(orjson.dumps({"type": "track", **ids, "event": "Signed Up",
                                        "properties": {"plan": user.plan}, "timestamp": stamp}) + b"\n")
                written += 1
        for bad in (b'{"type": "identify", "userId": "broken"', b'{"type": "track", "event": "Orphan Event"}',
                    b'{"type": "track", "userId": "usr_x", "properties": {}}'):
            out.write(bad + b"\n")
            written += 1
    return written


def _use_sandbox_only(home: Path) -> None:
    for setting in SETTINGS:
        if setting.name not in ("SEGMENT_OPS_HOME", "SEGMENT_OPS_SANDBOX_URL"):
            os.environ.pop(setting.name, None)
    os.environ["SEGMENT_OPS_HOME"] = str(home)


def _ensure_dagster_home() -> Path:
    """DAGSTER_HOME, or the project's `.dagster_home` whose dagster.yaml links to the top-level file."""
    dagster_home = Path(os.environ.get("DAGSTER_HOME") or ".dagster_home").resolve()
    dagster_home.mkdir(parents=True, exist_ok=True)
    config = dagster_home / "dagster.yaml"
    if not config.exists() and Path("dagster.yaml").exists():
        config.symlink_to(Path("dagster.yaml").resolve())
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    return dagster_home


def _materialization_metadata(result: dg.ExecuteInProcessResult) -> dict:
    """Metadata of a run's materializations; counts are summed when a job materializes several assets."""
    values: dict = {}
    for event in result.get_asset_materialization_events():
        for key, entry in event.materialization.metadata.items():
            value = getattr(entry, "value", entry)
            previous = values.get(key)
            both_counts = all(isinstance(v, int) and not isinstance(v, bool) for v in (value, previous))
            values[key] = previous + value if both_counts else value
    return values


def _read_back(instance: dg.DagsterInstance, delivered_at: float) -> int:
    """Read back a sample of the identify calls the demo delivered through the sandbox's Profile API (the
    `landed_in_segment` checks, run as their sensor would start them) and print what was found; returns how
    many checks failed. The demo's own runs used the default delay, so their checks found nothing due yet;
    here the delay is shortened to DEMO_READ_BACK_DELAY_SECONDS, past the sandbox's profile delay, once that
    long has gone by since the last of those calls was delivered (`delivered_at`, monotonic clock)."""
    from segment_ops.definitions import defs

    os.environ["SEGMENT_PROFILES_DELAY_SECONDS"] = str(DEMO_READ_BACK_DELAY_SECONDS)
    time.sleep(max(0.0, delivered_at + DEMO_READ_BACK_DELAY_SECONDS - time.monotonic()))
    definitions = defs()
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    rows, failed = [], 0
    for job_name in READ_BACK_JOBS.values():
        result = definitions.resolve_job_def(job_name).execute_in_process(
            run_config=quiet, instance=instance, raise_on_error=False)
        failed += 0 if result.success else 1
        for check in result.get_asset_check_evaluations():
            meta = {key: value.value for key, value in check.metadata.items()}
            failed += 0 if check.passed else 1
            figures = [meta.get(k, "-") for k in ("sample_size", "profiles_found", "profiles_missing")]
            rows.append((check.asset_key.to_user_string(), "landed" if check.passed else "FAILED", *figures,
                         f"{meta.get('traits_matching', '-')}/{meta.get('traits_compared', '-')}",
                         meta.get("messages_verified", "-")))
    print("read-back through Segment's Profile API (landed_in_segment, a sample of each run):")
    _print_summary(rows, ("asset", "status", "read back", "found", "missing", "traits as sent", "verified"))
    return failed


def _print_summary(rows: list[tuple], headers: tuple[str, ...] = (
        "sync", "status", "read", "sent", "planned before", "rejected", "run")) -> None:
    table = [headers, *[tuple(str(v) for v in row) for row in rows]]
    widths = [max(len(r[i]) for r in table) for i in range(len(headers))]
    for row in table:
        print("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    sys.stdout.flush()
