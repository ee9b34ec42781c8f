"""`segment-ops demo`: start the sandbox, run every sync once through Dagster, print what each did, then
read a sample of the identify calls back from the sandbox's Segment profiles (`landed_in_segment`).

The demo talks to the sandbox only: vendor URL and credential variables are ignored for its runs, so
demo data can never reach a real workspace, and its state lives in `$SEGMENT_OPS_HOME/demo`, apart from
a live deployment's. Runs land in the project's Dagster instance
(`DAGSTER_HOME`, default `./.dagster_home`), so `dagster dev` shows them afterwards.
"""

from __future__ import annotations

import gc
import logging
import os
import shlex
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from segment_ops.clock import CLOCK_VARIABLE
from segment_ops.config import SETTINGS, load_settings

if TYPE_CHECKING:  # imported lazily at run time: the sandbox and Dagster are heavy imports
    import dagster as dg

    from segment_ops.sandbox.demo_data import DemoData

# The syncs the project is built to run; the demo says plainly which of them exist yet.
PLANNED_SYNC_GROUPS = ("regulations", "replay", "reverse_etl", "heap", "pendo", "audit_trail", "fullstory")
# After the syncs, the landed_in_segment checks read back the identify calls of these syncs (group: its
# read-back job); the sandbox's profiles show a call 1 s after accepting it, so this delay is past that.
READ_BACK_JOBS = {"reverse_etl": "reverse_etl_read_back_job", "heap": "heap_read_back_job"}
DEMO_READ_BACK_DELAY_SECONDS = 2.0


@dataclass(frozen=True)
class Figures:
    """One sync's counts in its own terms: what it read splits into `terms` (count, what), which add up to
    `read`; `sent` is what the destination took in this run."""

    unit: str
    read: int
    terms: tuple[tuple[int, str], ...]
    sent: int
    already_delivered: int
    pending_from_earlier: int
    rejected: int
    note: str = ""  # what else the reader needs to check the sums (e.g. calls per member)

    @property
    def adds_up(self) -> bool:
        return sum(count for count, _ in self.terms) == self.read

    def equation(self) -> str:
        """`3,770 lines read = 3,766 sent + 3 rejected + 1 duplicate in the file` (zero terms left out but the
        first); `!=` when the terms do not add up, so a wrong sum is shown, never hidden."""
        shown = [f"{count:,} {what}" for i, (count, what) in enumerate(self.terms) if count or not i]
        return (f"{self.read:,} {self.unit} {'=' if self.adds_up else '!='} " + " + ".join(shown)
                + (f"; {self.note}" if self.note else ""))


@dataclass(frozen=True)
class DemoStep:
    """One sync run by the demo: its job, how to configure it, and how to read its counts."""

    group: str
    job_name: str
    run_config: Callable[[Path], dict]
    figures: Callable[[dict[str, dict]], Figures]  # from the run's metadata per asset key
    # For single-run backfills: the (first, last) partition keys one run covers, chosen on the demo world.
    partition_range: Callable[[DemoData], tuple[str, str]] | None = None


def _replay_config(home: Path) -> dict:
    path = str(home / "demo" / "historical_events.jsonl")
    return {"ops": {"segment__replayed_events": {"config": {"path": path}}}}


def _last_pendo_days(data: DemoData) -> tuple[str, str]:
    from segment_ops.syncs.pendo.defs import latest_days

    return latest_days(60)  # 60 days: the 30-day window and the previous one the trend compares it with


def audit_window(data: DemoData) -> tuple[str, str]:
    """The complete hours (at `clock.now()`) from the newest one that holds audit events in the demo world to
    the newest complete hour, at most a day of them (one run of the backfill policy): a quiet night or
    weekend hour alone would forward nothing."""
    from segment_ops.syncs.audit_trail.defs import PARTITIONS, WINDOW_OVERLAP, complete_hours

    keys = complete_hours(24)
    for key in reversed(keys):
        window = PARTITIONS.time_window_for_partition_key(key)
        if data.audit_events(window.start - WINDOW_OVERLAP, window.end):
            return key, keys[-1]
    return keys[0], keys[-1]


# The regulations run waits this long at most for Segment to finish its regulation (the sandbox finishes one
# within seconds; a real workspace takes hours to weeks, and the scheduled runs follow it).
REGULATION_WAIT_SECONDS = 30.0


def _regulations_config(home: Path) -> dict:
    return {"ops": {"segment__regulations": {"config": {"wait_seconds": REGULATION_WAIT_SECONDS}}}}


def _regulations_figures(by_asset: dict[str, dict]) -> Figures:
    """Privacy requests read from the warehouse and the inbox: filed now, filed before, or rejected."""
    m = by_asset.get("segment/regulations", {})
    terms = ((m.get("recorded", 0), "new, filed with Segment"),
             (m.get("already_recorded", 0), "filed before"), (m.get("rejected", 0), "rejected"))
    note = (f"{m.get('finished_requests', 0):,} finished at Segment, {m.get('open_requests', 0):,} still "
            f"running, {m.get('failed_requests', 0):,} failed; {m.get('erased_subjects', 0):,} subject(s) "
            "erased from segment_ops's stores; every later sync suppresses the regulated users")
    return Figures("requests read", m.get("requests_read", 0) + m.get("rejected", 0), terms,
                   m.get("subjects_filed", 0), m.get("already_recorded", 0), 0, m.get("rejected", 0), note)


def _replay_figures(by_asset: dict[str, dict]) -> Figures:
    m = by_asset.get("segment/replayed_events", {})
    planned, known, sent = m.get("planned", 0), m.get("planned_by_earlier_runs", 0), m.get("delivered", 0)
    # the plan's own split of what earlier runs planned
    delivered_before, pending = m.get("already_delivered", 0), m.get("pending_from_earlier", 0)
    rejected, suppressed = m.get("rejected_lines", 0), m.get("suppressed", 0)
    planned -= suppressed
    terms = ((planned, _sent_or_new(planned, sent, m)), (suppressed, "suppressed (a regulated user)"),
             (rejected, "rejected"),
             (m.get("duplicates_in_input", 0), "duplicate in the file"),
             (delivered_before, "already delivered"), (pending, "pending from earlier (sent now)"),
             (known - delivered_before - pending, "planned earlier, rejected, suppressed or awaiting"),
             (m.get("changed_skipped", 0), "changed since planned, not sent"))
    return Figures("lines read", m.get("lines_read", 0), terms, sent, delivered_before, pending,
                   rejected + m.get("rejected_by_destination", 0), _sent_note(planned + pending, sent, m))


def _diff_figures(by_asset: dict[str, dict], prefix: str, unit: str) -> Figures:
    """A sync that diffs rows against what was delivered (reverse ETL, Pendo's group calls), summed over its
    assets whose key starts with `prefix`: rows = added or changed + unchanged + rejected."""
    m = _summed(by_asset, prefix)
    changed, pending = m.get("added", 0) + m.get("changed", 0), m.get("already_planned", 0)
    suppressed = m.get("suppressed", 0)
    new, sent = changed - pending - suppressed, m.get("delivered", 0)
    terms = ((new, _sent_or_new(new, sent, m, "added or changed")),
             (suppressed, "suppressed (a regulated user)"),
             (pending, "pending from earlier (sent now)"),
             (m.get("unchanged", 0), "unchanged since delivered"), (m.get("rejected", 0), "rejected"))
    note = _sent_note(new + pending + m.get("removed", 0), sent, m)
    if withheld := m.get("erased_users_withheld", 0):  # left out before the diff: not among the rows read
        withheld_note = f"{withheld:,} row(s) of a user erased by a regulation withheld"
        note = f"{note}; {withheld_note}" if note else withheld_note
    return Figures(unit, m.get("rows_read", 0), terms, sent, m.get("unchanged", 0), pending,
                   m.get("rejected", 0) + m.get("rejected_by_destination", 0), note)


def _heap_figures(by_asset: dict[str, dict]) -> Figures:
    m = _summed(by_asset, "segment/heap_audiences/")
    sent, unresolved = m.get("delivered", 0), m.get("unresolved", 0)
    terms = ((m.get("added", 0), "entered"), (m.get("unchanged", 0), "unchanged since delivered"),
             (unresolved, "unresolved (rejected)"),
             (m.get("erased_users_withheld", 0), "withheld (a user erased by a regulation)"))
    note = (f"{sent:,} calls sent: an identify and an \"Audience Entered/Exited\" track for each of "
            f"{m.get('added', 0):,} entered and {m.get('removed', 0):,} exited")
    if m.get("suppressed"):
        note += f", less {m['suppressed']:,} suppressed (a regulated user)"
    return Figures("Heap members", m.get("heap_members", 0), terms, sent, m.get("unchanged", 0),
                   m.get("already_planned", 0), unresolved + m.get("rejected_by_destination", 0), note)


def _audit_figures(by_asset: dict[str, dict]) -> Figures:
    """The window's audit events (staged from the Public API) against where each stands in Splunk HEC's
    ledger after the run: the two are counted apart, so a sum that does not hold shows an event lost."""
    m = by_asset.get("siem/audit_events", {})
    new, sent = m.get("new_events", 0), m.get("forwarded", 0)
    delivered = m.get("window_delivered", 0)
    terms = ((delivered, "in Splunk"), (m.get("window_awaiting_ack", 0), "awaiting Splunk's ack"),
             (m.get("window_pending", 0), "pending"), (m.get("window_rejected", 0), "rejected by Splunk"),
             (m.get("window_unplanned", 0), "never planned"))
    earlier = max(0, sent - new)  # forwarded now although an earlier run planned them
    return Figures("audit events", m.get("events_in_window", 0), terms, sent, max(0, delivered - sent),
                   earlier, m.get("rejected_by_destination", 0),
                   f"{sent:,} forwarded in this run ({new:,} new)")


def _summed(by_asset: dict[str, dict], prefix: str) -> dict:
    total: dict = {}
    for key, metadata in by_asset.items():
        if key.startswith(prefix):
            for name, value in metadata.items():
                if _is_count(value):
                    total[name] = total.get(name, 0) + value
    return total


def _sent_or_new(new: int, sent: int, m: dict, what: str = "") -> str:
    """"sent" when this run sent exactly its new messages and the destination took them all."""
    clean = sent == new and not m.get("rejected_by_destination") and not m.get("failed_pending")
    return ("sent" if clean else "new") if not what else (f"{what} (sent)" if clean else what)


def _sent_note(to_send: int, sent: int, m: dict) -> str:
    if sent == to_send and not m.get("rejected_by_destination") and not m.get("failed_pending"):
        return ""
    return (f"{sent:,} sent in this run, {m.get('rejected_by_destination', 0):,} rejected by the "
            f"destination, {m.get('failed_pending', 0):,} failed and left pending")


def _fullstory_config(home: Path) -> dict:
    from segment_ops.syncs.fullstory.defs import prepare_demo

    return prepare_demo()


def _fullstory_score_day(data: DemoData) -> tuple[str, str]:
    from segment_ops.syncs.fullstory.defs import demo_score_day

    day = demo_score_day()
    return day, day


def _fullstory_signals_figures(by_asset: dict[str, dict]) -> Figures:
    """Stream events the receiver stored: each decided once (sent, rate limited, filtered, ...)."""
    m = by_asset.get("segment/fullstory_signals", {})
    terms = ((m.get("now_send", 0), "signals"), (m.get("now_rate_limited", 0), "rate limited"),
             (m.get("now_filtered", 0), "filtered (staff)"), (m.get("now_late", 0), "too late"),
             (m.get("now_unidentified", 0), "unidentified"), (m.get("now_not_a_signal", 0), "not a signal"),
             (m.get("now_rejected", 0), "rejected"),
             (m.get("events_read", 0) - m.get("new_events", 0), "re-delivered (kept once)"))
    sent, suppressed = m.get("delivered", 0), m.get("suppressed", 0)
    note = f"{sent:,} track calls sent"
    if suppressed:
        note += f", {suppressed:,} suppressed (a regulated user)"
    return Figures("stream events", m.get("events_read", 0), terms, sent, m.get("unchanged", 0),
                   m.get("already_planned", 0),
                   m.get("now_rejected", 0) + m.get("rejected_by_destination", 0), note)


def _fullstory_score_figures(by_asset: dict[str, dict]) -> Figures:
    m = by_asset.get("segment/fullstory_experience_score", {})
    figures = _diff_figures(by_asset, "segment/fullstory_experience_score", "users scored")
    bands = m.get("bands", {})
    read = "yes" if m.get("warehouse_tables_read") else "no"
    note = (f"bands: {bands.get('good', 0):,} good, {bands.get('fair', 0):,} fair, {bands.get('poor', 0):,} "
            f"poor; mean {m.get('mean_score', 0)}; warehouse sessions read: {read}")
    return Figures(figures.unit, figures.read, figures.terms, figures.sent, figures.already_delivered,
                   figures.pending_from_earlier, figures.rejected,
                   f"{figures.note}; {note}" if figures.note else note)


def _heap_config(home: Path) -> dict:
    from segment_ops.syncs.heap.defs import prepare_demo

    return prepare_demo()


DEMO_STEPS = (
    # First, the privacy team's request in the demo warehouse: filed with Segment, followed until Segment
    # finished it, the user erased from segment_ops's stores; every sync below then suppresses that user.
    DemoStep("regulations", "regulations_job", _regulations_config, _regulations_figures),
    DemoStep("replay", "replay_job", _replay_config, _replay_figures),
    # Every model in sql/reverse_etl/ against the demo warehouse, as one job; counts are summed over the
    # models.
    DemoStep("reverse_etl", "reverse_etl_job", lambda home: {},
             lambda by_asset: _diff_figures(by_asset, "segment/reverse_etl/", "rows read")),
    # Pendo usage of the last 60 days backfilled in one run (two 30-day requests per source), every account
    # scored, and a group call for each account whose health traits changed.
    DemoStep("pendo", "pendo_account_health_job", lambda home: {},
             lambda by_asset: _diff_figures(by_asset, "segment/pendo_account_groups", "accounts scored"),
             partition_range=_last_pendo_days),
    # Heap: the sandbox pushes one signed segment sync per demo segment to the real receiver (in-process),
    # and each audience applies it by the webhook route; counts are summed over the audiences.
    DemoStep("heap", "heap_audiences_job", _heap_config, _heap_figures),
    # The newest complete hours of the sandbox's audit trail that hold events, pulled and forwarded to
    # Splunk HEC in one run (each hour's partition reports its own counts).
    DemoStep("audit_trail", "audit_trail_job", lambda home: {}, _audit_figures, partition_range=audit_window),
    # Fullstory: the sandbox's Streams post the week's rage, dead and error clicks to the real receiver
    # (in-process); the signals run sends them as track calls; yesterday's experience score goes out as
    # identify traits; the warehouse-only traits model upserts Fullstory users.
    DemoStep("fullstory", "fullstory_signals_job", _fullstory_config, _fullstory_signals_figures),
    DemoStep("fullstory_score", "fullstory_score_job", lambda home: {}, _fullstory_score_figures,
             partition_range=_fullstory_score_day),
    DemoStep("fullstory_users", "fullstory_users_job", lambda home: {},
             lambda by_asset: _diff_figures(by_asset, "fullstory/reverse_etl/", "rows read")),
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
    # The demo's Heap pages are signed with the sandbox's published secret on purpose: the receiver's warning
    # about that (right for a receiver someone runs) would only alarm here.
    logging.getLogger("segment_ops.webhooks").setLevel(logging.ERROR)
    dagster_home = _ensure_dagster_home()
    print(f"segment_ops demo  (SEGMENT_OPS_HOME={home}, DAGSTER_HOME={dagster_home})")

    # Segment takes hours to weeks to finish a regulation; the demo's sandbox takes two seconds.
    sandbox = start_sandbox(SandboxConfig(seed=seed, scale=scale, regulation_running_after_seconds=1.0,
                                          regulation_finished_after_seconds=1.0))
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
        rows, counts, failed_checks = [], [], []
        delivered_at = 0.0  # when the last sync whose identify calls are read back finished
        for step in DEMO_STEPS:
            job = definitions.resolve_job_def(step.job_name)
            run_config = {**step.run_config(home),
                          "loggers": {"console": {"config": {"log_level": "WARNING"}}}}
            tags, window = None, ""
            if step.partition_range:
                first, last = step.partition_range(data)
                tags = {"dagster/asset_partition_range_start": first,
                        "dagster/asset_partition_range_end": last}
                window = (f" (partitions {first} to {last}, one run)" if first != last
                          else f" (partition {first})")
            result = job.execute_in_process(run_config=run_config, instance=instance, raise_on_error=False,
                                            tags=tags)
            if step.group in READ_BACK_JOBS:
                delivered_at = time.monotonic()
            failed += 0 if result.success else 1
            figures = step.figures(_metadata_by_asset(result))
            rows.append((step.group, "ok" if result.success else "FAILED", f"{figures.read:,}",
                         f"{figures.sent:,}", f"{figures.already_delivered:,}",
                         f"{figures.pending_from_earlier:,}", f"{figures.rejected:,}", result.run_id))
            counts.append(f"  {step.group}: {figures.equation()}{window}")
            failed_checks += [c for c in result.get_asset_check_evaluations() if not c.passed]
        _print_summary(rows)
        stats = sandbox.stats()
        segment, splunk = stats.get("segment", {}), stats.get("splunk", {})
        dropped = sum(segment.get("dropped", {}).values())
        print(f"sandbox recorder: Segment received {segment.get('received', 0):,} unique calls "
              f"({segment.get('duplicates', 0):,} duplicate deliveries, deduplicated by messageId; "
              f"{segment.get('late_duplicates', 0):,} repeats after the ~24 h dedupe window; "
              f"{dropped:,} accepted but silently dropped); "
              f"Splunk HEC received {splunk.get('received', 0):,} events")
        print("what each sync read, in its own terms:")
        print("\n".join(counts))
        _print_failed_checks(failed_checks)
        failed += _read_back(instance, delivered_at)
        failed += _delivery_health(instance, sandbox.url)
        missing = [g for g in PLANNED_SYNC_GROUPS if g not in {step.group for step in DEMO_STEPS}]
        if missing:
            print("not built yet (so not run): " + ", ".join(missing))
        print(ui_instructions(home, dagster_home, seed=seed, scale=scale))
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


def ui_instructions(home: Path, dagster_home: Path, *, seed: int = 7, scale: float = 1.0) -> str:
    """The demo's last line: the two commands that show its runs in the UI, the sandbox first (the UI's
    sensors, schedules and alerts talk to it), with the demo's world (seed, scale, SEGMENT_OPS_CLOCK)."""
    pinned = os.environ.get(CLOCK_VARIABLE, "")
    clock_env = f"{CLOCK_VARIABLE}={shlex.quote(pinned)} " if pinned else ""
    world = (f" --seed {seed}" if seed != 7 else "") + (f" --scale {scale:g}" if scale != 1.0 else "")
    # The commands of this very environment, so the line works from any folder; `-m` names the code
    # location where no workspace.yaml is.
    bin_dir = Path(sys.executable).parent
    line = (f"open the UI on these runs: start the sandbox, then Dagster: "
            f"{clock_env}{shlex.quote(str(bin_dir / 'segment-ops'))} sandbox{world} & "
            f"{clock_env}SEGMENT_OPS_HOME={shlex.quote(str(home))} "
            f"DAGSTER_HOME={shlex.quote(str(dagster_home))} "
            f"{shlex.quote(str(bin_dir / 'dagster'))} dev -m segment_ops.definitions")
    if Path(".env").is_file():  # dagster dev reads it, and its values win over the ones below
        note = ("note: dagster dev reads ./.env, whose settings win over the ones below (a live write key "
                "there would send the demo's runs to it): start it from a folder without one")
        line = f"{note}\n{line}"
    return line


def _use_sandbox_only(home: Path) -> None:
    for setting in SETTINGS:
        # SEGMENT_OPS_CLOCK is kept: it pins the demo's world and windows, never a vendor.
        if setting.name not in ("SEGMENT_OPS_HOME", "SEGMENT_OPS_SANDBOX_URL", CLOCK_VARIABLE):
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


def _metadata_by_asset(result: dg.ExecuteInProcessResult) -> dict[str, dict]:
    """Metadata of a run's materializations per asset key; a range run's partitions each report their own
    counts, which are summed, while its `run_` figures (the whole run's, on every partition) are kept once."""
    by_asset: dict[str, dict] = {}
    for event in result.get_asset_materialization_events():
        values = by_asset.setdefault(event.materialization.asset_key.to_user_string(), {})
        for key, entry in event.materialization.metadata.items():
            value, previous = getattr(entry, "value", entry), values.get(key)
            summed = _is_count(value) and _is_count(previous) and not key.startswith("run_")
            values[key] = previous + value if summed else value
    return by_asset


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _print_failed_checks(evaluations: list) -> None:
    """Each asset check that failed, with its figures (a WARN does not fail the run, so it shows only here
    and on the asset's Checks tab)."""
    if not evaluations:
        print("asset checks: all passed")
        return
    print("asset checks that failed (a check fails its run only when it is blocking; a run that failed is "
          "FAILED in the table above):")
    for check in evaluations:
        meta = {key: getattr(value, "value", value) for key, value in check.metadata.items()}
        figures = ", ".join(f"{key} {value}" for key, value in meta.items()
                            if isinstance(value, int | float) and not isinstance(value, bool))
        print(f"  {check.severity.value} {check.asset_key.to_user_string()} {check.check_name}: {figures}")


def _delivery_health(instance: dg.DagsterInstance, sandbox_url: str) -> int:
    """Run the hourly delivery-health check on the demo's ledgers now, as `dagster dev` would within the
    hour, and say what it found and why: the demo data holds rows that cannot be sent, on purpose, and a
    sync whose rejected share passes DELIVERY_HEALTH_MAX_FAILED_SHARE is alerted on Slack (the sandbox's
    here). Returns 1 when the check's run failed."""
    from segment_ops.definitions import defs

    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    result = defs().resolve_job_def("delivery_health_job").execute_in_process(
        run_config=quiet, instance=instance, raise_on_error=False)
    if not result.success:
        print("delivery health: the check's run FAILED (see it in the UI)")
        return 1
    [metadata] = _metadata_by_asset(result).values()
    state = metadata.get("state", {})
    flagged = {sync: figures for sync, figures in state.items() if figures.get("status") == "UNHEALTHY"}
    limit = float(metadata.get("max_failed_share", 0.0))
    if not flagged:
        print(f"delivery health (the hourly check, run now on the demo's ledgers): no sync above "
              f"{limit:.0%} rejected or failed, so no Slack alert")
        return 0
    alerts, unsent = metadata.get("alerts_sent", 0), metadata.get("alerts_not_sent", 0)
    said = (f"{alerts} Slack alert(s) posted to the sandbox's webhook ({sandbox_url}/slack)" if alerts else
            f"{unsent} Slack alert(s) could NOT be posted (see the run)" if unsent else
            "alerted on an earlier demo run (the state is kept, so not again)")
    print(f"delivery health (the hourly check, run now on the demo's ledgers): {len(flagged)} sync(s) above "
          f"{limit:.0%} rejected or failed; {said}:")
    for sync, figures in sorted(flagged.items()):
        total = figures["delivered"] + figures["rejected"] + figures["failed"]
        lost = figures["rejected"] + figures["failed"]
        print(f"  {sync}: {lost:,} of {total:,} messages rejected or failed ({figures['share']:.1%}); "
              f"why: {_top_rejection(figures.get('file', ''), sync)}")
    return 0


def _top_rejection(file: str, sync: str) -> str:
    """The commonest reason the sync's ledger gives for its rejections, read from its staging file."""
    from segment_ops.engine import store

    path = load_settings().home / "staging" / file
    try:
        con = store.open_read_only(path, lock_timeout=2.0)
    except Exception:  # noqa: BLE001 - the line still prints, without the reason
        con = None
    if con is None:  # unreadable, or a run held it for 2 s
        return "see its rejected table"
    try:
        from segment_ops.engine.ledger import Ledger

        reasons = Counter(row.reason for row in Ledger(con, create=False).rejected_rows(sync))
        row = reasons.most_common(1)[0] if reasons else None
    except Exception:  # noqa: BLE001
        row = None
    finally:
        con.close()
    return (f"{row[1]:,} x \"{row[0]}\" (rows the demo data holds on purpose)" if row
            else "failed deliveries (see the run)")


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
        "sync", "status", "read", "sent", "already delivered", "pending from earlier", "rejected",
        "run")) -> None:
    table = [headers, *[tuple(str(v) for v in row) for row in rows]]
    widths = [max(len(r[i]) for r in table) for i in range(len(headers))]
    for row in table:
        print("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    sys.stdout.flush()
