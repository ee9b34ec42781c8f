"""Chaos benchmark (issue 16): every sync run repeatedly under `dagster dev` against the sandbox with faults
on, run workers SIGKILLed at random points, recovery left to the daemon, and what each destination received.

`dagster dev` runs as `segment_ops_tests/ops/conftest.py` starts it (fresh SEGMENT_OPS_HOME with the demo
warehouse, fresh DAGSTER_HOME linking the project's dagster.yaml), with a shortened run heartbeat. The
sandbox's Segment and Splunk HEC answer a share of requests with 429/503 or slowly. Work arrives in waves:
a replay file dropped into `$SEGMENT_OPS_HOME/inbox/replay/` (its sensor starts the run), an hour of the
audit trail with events injected into the sandbox's Public API (`audit_trail_job`, launched as a schedule
would), and `reverse_etl_job` (every model; its second wave sends nothing new). A seeded RNG picks runs
and a moment to SIGKILL them, either the run worker and its step processes (the code server fails the run)
or those and the code server too (a node restart: the code location is reloaded as a platform restarts
it; `dead_run_sensor` must fail the run and run monitoring free its pool slot). A unit of work whose run
failed gets a new run of the same work once that run is finished, as its schedule or sensor would; nothing
else is done by hand.

Ground truth is the sandbox's recorder (what Segment and HEC received, per messageId / audit event id).
A message that arrived more than once is an unavoidable duplicate when a kill left its batch on the wire
(handed over, no answer: the outcome journal the killed run left, snapshotted at the kill, and the ledger's
`in_flight` outcomes logged from it), else avoidable. Expected: the replay files' messageIds, every event
the Public API lists for the audit hours, and the messages the reverse-ETL ledgers planned from the
warehouse.

    .venv/bin/pip install -e ".[bench,dev]"
    .venv/bin/python benchmarks/chaos.py                          # 8 kills within 6 minutes of chaos
    .venv/bin/python benchmarks/chaos.py --kills 20 --chaos-seconds 900
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import random
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import httpx
import orjson
import psutil
from starlette.requests import ClientDisconnect

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))  # the `dagster dev` helpers of the end-to-end tests

from segment_ops.clients.segment_public_api import SegmentPublicApiClient  # noqa: E402
from segment_ops.config import load_settings  # noqa: E402
from segment_ops.engine import journal  # noqa: E402
from segment_ops.sandbox.app import SandboxConfig  # noqa: E402
from segment_ops.sandbox.server import RunningSandbox, start_sandbox  # noqa: E402
from segment_ops.syncs.audit_trail.defs import PARTITIONS, audit_trail_job, complete_hours  # noqa: E402
from segment_ops.syncs.replay.defs import INBOX, replay_job  # noqa: E402
from segment_ops_tests.ops.conftest import (  # noqa: E402
    RUN_HEARTBEAT_SECONDS,
    RUN_HEARTBEAT_TIMEOUT_SECONDS,
    SCALE,
    SEED,
    DagsterDev,
    DagsterDevError,
    start_dagster_dev,
    stop_dagster_dev,
)
from segment_ops_tests.ops.test_alerts_e2e import LAUNCH_RUN, repository  # noqa: E402
from segment_ops_tests.ops.test_run_watch_e2e import restart_code_server, run_worker_pid  # noqa: E402

DATA_SEED = SEED  # the sandbox's and the demo warehouse's, as the end-to-end tests use
FAULTS = {  # per API: moderate throttling and unavailability, and some slow answers (batches on the wire)
    "segment": {"rate_429": 0.1, "rate_503": 0.1, "rate_slow": 0.2, "slow_seconds": 2.0,
                "retry_after_seconds": 1},
    "splunk": {"rate_429": 0.1, "rate_503": 0.1, "rate_slow": 0.2, "slow_seconds": 2.0,
               "retry_after_seconds": 1},
}
KILL_SHARE = 0.8  # of our runs seen STARTED, while the kill budget lasts
# When: half the victims at a moment 1-25 s after the run is seen STARTED (anywhere: start-up, preflight,
# reads, planning, sending), half once its destination has taken 1-4 more requests (during the send, with
# batches on the wire); the sandbox's request counter is polled every WATCH_SECONDS meanwhile.
TRIGGERS = ("moment", "delivery")
KILL_DELAY = (1.0, 25.0)
DELIVERY_REQUESTS = (1, 4)
WATCH_SECONDS = 0.05
MODES = ("worker", "worker+code server")
DESTINATION = {"replay": "segment", "reverse_etl": "segment", "audit": "splunk"}  # the sandbox's API names
AUDIT_HOURS_BACK = 100  # the first wave's hour; older ones follow. The sensor probes only the newest two.
POLL_SECONDS = 1.0
REPLAY_TAG, UNIT_TAG = "segment_ops/replay_file", "segment_ops/chaos_unit"
TERMINAL, FAILED = {"SUCCESS", "FAILURE", "CANCELED"}, {"FAILURE", "CANCELED"}
HEC_SYNC = "audit_trail"  # the ledger sync of the Splunk HEC destination (`siem.ledger_sync`)

RUNS = """
query Runs($limit: Int) {
  runsOrError(limit: $limit) {
    __typename
    ... on Runs { results { runId jobName status startTime endTime tags { key value } } }
    ... on PythonError { message }
  }
}
"""


@dataclass
class Unit:
    """One piece of work: a replay file, an audit hour or a reverse-ETL job run, and the runs that did it."""

    name: str
    kind: str  # replay, audit, reverse_etl
    job: str
    tag: tuple[str, str]  # the tag that names its runs
    run_config: dict = field(default_factory=dict)
    runs: list[dict] = field(default_factory=list)  # oldest first
    relaunches: int = 0
    launched: bool = False  # by this script (a replay file's first run is its sensor's)

    def done(self) -> bool:
        return any(run["status"] == "SUCCESS" for run in self.runs)

    def owns(self, run: dict) -> bool:
        tags = {t["key"]: t["value"] for t in run["tags"]}
        return run["jobName"] == self.job and tags.get(self.tag[0]) == self.tag[1]


@dataclass
class Plan:
    """A run picked as a victim: killed at `at` (epoch seconds), or once `api` has taken `requests`."""

    unit: Unit
    mode: str
    at: float | None = None
    api: str | None = None
    requests: int | None = None
    pid: int | None = None  # the run worker's, looked up when picked (the kill itself waits for nothing)


@dataclass
class Kill:
    number: int
    unit: Unit
    run_id: str
    mode: str
    at: float  # epoch seconds
    processes: int = 0
    trigger: str = ""
    in_flight: dict[str, list[int]] = field(default_factory=dict)  # sync -> seqs handed over, unanswered
    restart_seconds: float | None = None


class Chaos:
    def __init__(self, dev: DagsterDev, args: argparse.Namespace, rng: random.Random, workdir: Path) -> None:
        self.dev, self.args, self.rng, self.workdir = dev, args, rng, workdir
        self.repo = repository(dev)
        self.units: list[Unit] = []
        self.kills: list[Kill] = []
        self.planned: dict[str, Plan] = {}  # run id -> when and how it is killed
        self.considered: set[str] = set()
        self.replay_ids: set[str] = set()
        self.audit_hours: list[str] = []
        self.other_failures: list[str] = []

    # --- work -------------------------------------------------------------------------------------------
    def wave(self, number: int) -> None:
        self._replay_file(number)
        self._audit_hour(number)
        if number % 2 == 0:
            self._add(Unit(f"reverse_etl#{number}", "reverse_etl", "reverse_etl_job",
                           (UNIT_TAG, f"reverse_etl#{number}")), launch=True)

    def _replay_file(self, number: int) -> None:
        inbox = self.dev.segment_ops_home.joinpath(*INBOX)
        inbox.mkdir(parents=True, exist_ok=True)
        name = f"chaos_{number:02d}.jsonl"
        now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        lines = []
        for i in range(self.args.replay_lines):
            message_id = f"chaos-{number:02d}-{i:06d}"
            self.replay_ids.add(message_id)
            lines.append(orjson.dumps({"type": "identify", "userId": f"chaos-user-{number}-{i}",
                                       "messageId": message_id, "timestamp": now,
                                       "traits": {"plan": "pro", "wave": number, "n": i}}))
        hidden = inbox / f".{name}.part"  # dotfiles are not the sensor's; the rename makes it whole at once
        hidden.write_bytes(b"\n".join(lines) + b"\n")
        hidden.rename(inbox / name)
        path = str(inbox / name)
        self._add(Unit(f"replay {name}", "replay", replay_job.name, (REPLAY_TAG, name),
                       {"ops": {"segment__replayed_events": {"config": {"path": path}}}}), launch=False)

    def _audit_hour(self, number: int) -> None:
        hour = complete_hours(AUDIT_HOURS_BACK + number)[0]
        start = PARTITIONS.time_window_for_partition_key(hour).start
        step = 3_599_000 // self.args.audit_events
        self.dev.sandbox.inject_audit_events([
            {"timestamp": (start + timedelta(milliseconds=1 + i * step)).isoformat().replace("+00:00", "Z"),
             "type": "Source Modified", "resourceName": f"chaos source {i}"}
            for i in range(self.args.audit_events)])
        self.audit_hours.append(hour)
        self._add(Unit(f"audit {hour}", "audit", audit_trail_job.name, ("dagster/partition", hour)),
                  launch=True)

    def _add(self, unit: Unit, *, launch: bool) -> None:
        self.units.append(unit)
        if launch:
            self.launch(unit)

    def launch(self, unit: Unit) -> str:
        selector = {**self.repo, "jobName": unit.job}
        tags = [{"key": unit.tag[0], "value": unit.tag[1]}, {"key": UNIT_TAG, "value": unit.name}]
        launched = self.dev.graphql(LAUNCH_RUN, {"params": {
            "selector": selector, "runConfigData": unit.run_config,
            "executionMetadata": {"tags": list({t["key"]: t for t in tags}.values())}}})["launchRun"]
        if launched["__typename"] != "LaunchRunSuccess":
            raise DagsterDevError(f"launchRun {unit.name}: {launched}")
        unit.launched = True
        return launched["run"]["runId"]

    # --- the loop ---------------------------------------------------------------------------------------
    def refresh(self) -> None:
        result = self.dev.graphql(RUNS, {"limit": 500})["runsOrError"]
        if result["__typename"] != "Runs":
            raise DagsterDevError(f"runsOrError: {result}")
        runs = sorted(result["results"], key=lambda r: r["startTime"] or float("inf"))
        for unit in self.units:
            unit.runs = [run for run in runs if unit.owns(run)]

    def reschedule(self) -> None:
        """A failed unit gets a new run of the same work once nothing of it is queued or running."""
        killed = {kill.run_id for kill in self.kills}
        for unit in self.units:
            if not unit.runs and unit.kind != "replay" and not unit.launched:
                self.launch(unit)  # its first launch failed (GraphQL busy or the code server restarting)
                continue
            if unit.done() or not unit.runs or any(r["status"] not in TERMINAL for r in unit.runs):
                continue
            last = unit.runs[-1]
            if last["status"] in FAILED:
                if last["runId"] not in killed and last["runId"] not in self.other_failures:
                    self.other_failures.append(last["runId"])
                self.launch(unit)
                unit.relaunches += 1

    def maybe_kill(self, chaos_open: bool) -> None:
        now = time.time()
        for unit in self.units:
            for run in unit.runs:
                run_id = run["runId"]
                if run["status"] != "STARTED":
                    continue
                if run_id not in self.considered:
                    self.considered.add(run_id)
                    budget = self.args.kills - len(self.kills) - len(self.planned)
                    if chaos_open and budget > 0 and self.rng.random() < KILL_SHARE:
                        plan = Plan(unit, self.rng.choice(MODES))
                        if self.rng.choice(TRIGGERS) == "moment":
                            plan.at = now + self.rng.uniform(*KILL_DELAY)
                        else:
                            plan.api = DESTINATION[unit.kind]
                            plan.requests = (self.dev.sandbox.stats()[plan.api]["requests"]
                                             + self.rng.randint(*DELIVERY_REQUESTS))
                        with contextlib.suppress(DagsterDevError):
                            plan.pid = run_worker_pid(self.dev, run_id, timeout=5.0)
                        self.planned[run_id] = plan
                plan = self.planned.get(run_id)
                if plan and plan.at is not None and plan.at <= now:
                    self.fire(run_id)
        for run_id in [r for r in self.planned if not self._running(r)]:
            del self.planned[run_id]  # it finished (or failed) before its moment came

    def watch(self, seconds: float) -> None:
        """Sleep `seconds`, meanwhile killing the runs whose destination has taken their share of requests."""
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            armed = {run_id: plan for run_id, plan in self.planned.items() if plan.api}
            if not armed:
                time.sleep(max(0.0, until - time.monotonic()))
                return
            stats = self.dev.sandbox.stats()
            for run_id, plan in armed.items():
                if stats[plan.api]["requests"] >= (plan.requests or 0):
                    self.fire(run_id)
            time.sleep(WATCH_SECONDS)

    def fire(self, run_id: str) -> None:
        plan = self.planned.pop(run_id)
        if len(self.kills) < self.args.kills:
            trigger = f"{plan.api} request {plan.requests}" if plan.api else "moment"
            self.kill(plan.unit, run_id, plan.mode, trigger, plan.pid)

    def _running(self, run_id: str) -> bool:
        return any(r["runId"] == run_id and r["status"] not in TERMINAL for u in self.units for r in u.runs)

    def kill(self, unit: Unit, run_id: str, mode: str, trigger: str, pid: int | None) -> None:
        try:
            worker = psutil.Process(pid or run_worker_pid(self.dev, run_id, timeout=5.0))
            victims = worker.children(recursive=True) + [worker]
            if mode != "worker":  # the code server first, so it cannot see its child die and fail the run
                victims.insert(0, worker.parent())
        except (DagsterDevError, psutil.NoSuchProcess):
            return  # no worker to kill (it has just ended)
        at = time.time()
        for victim in victims:
            with contextlib.suppress(psutil.NoSuchProcess):
                victim.kill()
        psutil.wait_procs(victims, timeout=10)
        kill = Kill(len(self.kills) + 1, unit, run_id, mode, at, len(victims), trigger)
        kill.in_flight = self.snapshot_journals(kill)
        self.kills.append(kill)
        print(f"  {at - self.started:6.1f}s kill {kill.number}: {unit.name} run {run_id[:8]} ({mode}, "
              f"{len(victims)} processes, at {trigger}); on the wire: "
              f"{sum(map(len, kill.in_flight.values()))} messages", flush=True)
        if mode != "worker":
            began = time.monotonic()
            restart_code_server(self.dev)
            kill.restart_seconds = time.monotonic() - began

    def snapshot_journals(self, kill: Kill) -> dict[str, list[int]]:
        """Copy the outcome journals the killed run left (the next run logs and removes them) and read which
        batches it had handed over without an answer."""
        on_wire: dict[str, list[int]] = defaultdict(list)
        folder = self.workdir / f"journals_kill{kill.number:02d}"
        for staging in sorted((self.dev.segment_ops_home / "staging").glob("*.duckdb")):
            for path in journal.leftovers(staging):
                folder.mkdir(parents=True, exist_ok=True)
                copy = folder / path.name
                with contextlib.suppress(FileNotFoundError):
                    shutil.copyfile(path, copy)
                    found = journal.read(copy)
                    if found is not None and found.run_id == kill.run_id:
                        on_wire[f"{staging.stem}/{found.sync}"] += found.unanswered
        return dict(on_wire)

    def run(self) -> None:
        self.started = time.time()
        args, waves = self.args, 0
        chaos_end = self.started + args.chaos_seconds
        deadline = chaos_end + args.recovery_seconds
        while True:
            now = time.time()
            chaos_open = now < chaos_end
            try:
                if chaos_open and now >= self.started + waves * args.wave_seconds:
                    print(f"  {now - self.started:6.1f}s wave {waves}", flush=True)
                    waves += 1
                    self.wave(waves - 1)
                self.refresh()
                self.maybe_kill(chaos_open)
                self.refresh()
                self.reschedule()
            except (httpx.HTTPError, DagsterDevError) as exc:  # a busy webserver; the next round asks again
                print(f"  {now - self.started:6.1f}s (GraphQL: {str(exc)[:200]})", flush=True)
            if not chaos_open and all(unit.done() for unit in self.units):
                break
            if now > deadline:
                print(f"  recovery deadline passed; not done: {[u.name for u in self.units if not u.done()]}")
                break
            self.watch(POLL_SECONDS)
        self.finished = time.time()


class CutOff(logging.Filter):
    """Counts, instead of logging each traceback, the requests whose sender was killed mid-body (the sandbox
    reads no such body, so they cannot have delivered anything)."""

    count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], ClientDisconnect):
            CutOff.count += 1
            return False
        return True


# --- ground truth -------------------------------------------------------------------------------------
def received(sandbox: RunningSandbox, api: str, page: int = 10_000) -> list[dict]:
    items, offset = [], 0
    while batch := sandbox.received(api, limit=page, offset=offset):
        items += batch
        offset += len(batch)
    return items


def audit_event_ids(sandbox_url: str, home: Path, hours: list[str]) -> set[str]:
    settings = load_settings({"SEGMENT_OPS_SANDBOX_URL": sandbox_url, "SEGMENT_OPS_HOME": str(home)})
    client = SegmentPublicApiClient(settings["SEGMENT_PUBLIC_API_URL"], settings["SEGMENT_PUBLIC_API_TOKEN"])
    try:
        ids = set()
        for hour in hours:
            window = PARTITIONS.time_window_for_partition_key(hour)
            ids |= {str(event["id"]) for event in client.iter_audit_events(window.start, window.end)}
        return ids
    finally:
        client.close()


def read_ledgers(home: Path) -> tuple[dict[str, dict[int, str]], set[str]]:
    """Per `<staging file>/<sync>`: seq -> messageId planned; and the messageIds the ledgers logged as in
    flight when a stopped run's journal was recovered."""
    planned: dict[str, dict[int, str]] = defaultdict(dict)
    in_flight: set[str] = set()
    for path in sorted((home / "staging").glob("*.duckdb")):
        try:
            con = duckdb.connect(str(path), read_only=True)
        except duckdb.Error:
            continue
        try:
            for sync, seq, message_id in con.execute(
                    "SELECT sync, seq, message_id FROM planned_messages").fetchall():
                planned[f"{path.stem}/{sync}"][seq] = message_id
            in_flight |= {f"{path.stem}/{sync}/{message_id}" for sync, message_id in con.execute(
                "SELECT DISTINCT o.sync, m.message_id FROM outcomes o JOIN planned_messages m "
                "ON m.sync = o.sync AND m.seq = o.seq WHERE o.status = 'in_flight'").fetchall()}
        except duckdb.Error:
            pass  # not a ledger (no such tables)
        finally:
            con.close()
    return planned, in_flight


def figures(name: str, expected: set[str], counts: Counter[str], on_wire: set[str]) -> dict[str, int]:
    delivered_once = sum(1 for m in expected if counts[m] == 1)
    extra = {m: counts[m] - 1 for m in expected if counts[m] > 1}
    unavoidable = sum(n for m, n in extra.items() if m in on_wire)
    avoidable = sum(n for m, n in extra.items() if m not in on_wire)
    lost = sum(1 for m in expected if counts[m] == 0)
    row = {"expected": len(expected), "delivered once": delivered_once,
           "duplicates (copies)": sum(extra.values()), "unavoidable": unavoidable, "avoidable": avoidable,
           "lost": lost, "on the wire at kills": len(on_wire & expected)}
    print(f"  {name:<14}" + "".join(f"{row[k]:>{len(k) + 2},}" for k in row))
    if avoidable:
        sample = sorted(m for m in extra if m not in on_wire)[:5]
        print(f"    avoidable duplicates, e.g. {sample}")
    if lost:
        print(f"    lost, e.g. {sorted(m for m in expected if counts[m] == 0)[:5]}")
    return row


def report(chaos: Chaos, dev: DagsterDev) -> int:
    sandbox, home = dev.sandbox, dev.segment_ops_home
    stats = sandbox.stats()
    segment_items = received(sandbox, "segment")
    splunk_items = received(sandbox, "splunk")
    splunk_counts = Counter(str((item.get("fields") or {}).get("audit_event_id")) for item in splunk_items)
    audit_ids = audit_event_ids(sandbox.url, home, chaos.audit_hours)
    print("stopping dagster dev, reading the ledgers", flush=True)
    stop_dagster_dev(dev)
    planned, ledger_in_flight = read_ledgers(home)

    # messageIds on the wire at a kill, per destination: journal snapshots and the ledgers' in_flight facts
    def ids_of(key: str, seqs: list[int]) -> set[str]:
        return {planned.get(key, {}).get(seq, f"?{key}/{seq}") for seq in seqs}

    wire: dict[str, set[str]] = {"segment": set(), "splunk": set()}
    for kill in chaos.kills:
        for key, seqs in kill.in_flight.items():
            wire["splunk" if key == f"{HEC_SYNC}/{HEC_SYNC}" else "segment"] |= ids_of(key, seqs)
    for entry in ledger_in_flight:
        staging, sync, message_id = entry.split("/", 2)
        wire["splunk" if (staging, sync) == (HEC_SYNC, HEC_SYNC) else "segment"].add(message_id)

    reverse_etl = {m for key, seqs in planned.items() if key.startswith("reverse_etl") for m in seqs.values()}
    replay_planned = set(planned.get("replay/replay", {}).values())
    segment_expected = chaos.replay_ids | reverse_etl
    segment_seen = {str(item.get("messageId")) for item in segment_items}
    segment_counts = Counter({m: 1 for m in segment_seen})
    duplicates_at_segment = stats["segment"].get("duplicates", 0) + stats["segment"].get("late_duplicates", 0)
    if duplicates_at_segment:  # which messageIds arrived again: the recorder counts each id's arrivals
        for message_id in segment_expected & segment_seen:
            segment_counts[message_id] = sandbox.seen("segment", message_id)

    print("\nper destination (ground truth: the sandbox's recorder)")
    print(f"  {'':<14}" + "".join(f"{k:>{len(k) + 2}}" for k in (
        "expected", "delivered once", "duplicates (copies)", "unavoidable", "avoidable", "lost",
        "on the wire at kills")))
    rows = {"Segment": figures("Segment", segment_expected, segment_counts, wire["segment"]),
            "Splunk HEC": figures("Splunk HEC", audit_ids, splunk_counts, wire["splunk"])}
    print(f"  of Segment's expected: {len(chaos.replay_ids):,} replay lines "
          f"({len(chaos.replay_ids - replay_planned):,} not in the replay ledger), {len(reverse_etl):,} "
          "reverse-ETL messages the ledgers planned")
    print(f"  not planned here (preflight probes, the audit sensor's own hours): Segment "
          f"{len(segment_seen - segment_expected):,} ids, Splunk "
          f"{sum(n for i, n in splunk_counts.items() if i not in audit_ids):,} events; sandbox duplicates "
          f"counted by Segment's dedupe: {duplicates_at_segment:,}")
    faults = {api: stats[api].get("faults", {}) for api in ("segment", "splunk")}
    print(f"  faults answered: {faults}; requests cut off mid-body by a kill: {CutOff.count}")

    print("\nper kill (recovered: the kill to the end of the next successful run of the same work)")
    for kill in chaos.kills:
        failed = next((r for r in kill.unit.runs if r["runId"] == kill.run_id), {})
        after = [r for r in kill.unit.runs if r["status"] == "SUCCESS" and (r["endTime"] or 0) > kill.at]
        recovered = f"{after[0]['endTime'] - kill.at:6.0f}s" if after else "   never"
        failed_after = (f"{failed['endTime'] - kill.at:5.0f}s" if failed.get("endTime") else "    ?")
        restart = f", code location reloaded in {kill.restart_seconds:.0f}s" if kill.restart_seconds else ""
        print(f"  {kill.number:>2} {kill.at - chaos.started:6.1f}s {kill.unit.name:<28} {kill.mode:<19} "
              f"at {kill.trigger:<20} "
              f"{failed.get('status', '?'):<8} failed after {failed_after}, recovered after {recovered}, "
              f"{sum(map(len, kill.in_flight.values())):>5} messages on the wire{restart}")
    runs = {r["runId"]: r for u in chaos.units for r in u.runs}
    outages = [(k.at - 2.0, k.at + k.restart_seconds + 5.0)  # the code server down until reloaded
               for k in chaos.kills if k.restart_seconds is not None]
    collateral = [r for r in chaos.other_failures
                  if any(start <= (runs.get(r, {}).get("endTime") or 0) <= end for start, end in outages)]
    others = [r for r in chaos.other_failures if r not in collateral]
    print(f"\nunits: {len(chaos.units)} ({sum(u.done() for u in chaos.units)} done), runs: {len(runs)}, "
          f"re-launched after a failure: {sum(u.relaunches for u in chaos.units)}; failures of runs not "
          f"killed: {len(collateral)} while the code server was down (launched or dequeued then), "
          f"{len(others)} other {[r[:8] for r in others[:5]]}")
    bad = sum(row["avoidable"] + row["lost"] for row in rows.values())
    not_done = [u.name for u in chaos.units if not u.done()]
    print(f"verdict: {'OK' if not bad and not not_done else 'FAILED'} (avoidable duplicates + lost = {bad}; "
          f"work not done: {not_done or 'none'})")
    return 1 if bad or not_done else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=16, help="the RNG picking runs, moments and kill modes")
    parser.add_argument("--kills", type=int, default=8, help="at most this many SIGKILLs")
    parser.add_argument("--chaos-seconds", type=float, default=360.0, help="waves and kills only this long")
    parser.add_argument("--wave-seconds", type=float, default=60.0, help="a new wave of work this often")
    parser.add_argument("--recovery-seconds", type=float, default=600.0,
                        help="after the chaos: until all work is done, at most this long")
    parser.add_argument("--replay-lines", type=int, default=6000, help="identify calls per replay file")
    parser.add_argument("--audit-events", type=int, default=2000, help="events injected per audit hour")
    parser.add_argument("--keep", action="store_true", help="keep the working folder (homes, journals, log)")
    args = parser.parse_args()
    print(f"bounds: seed {args.seed}, at most {args.kills} kills within {args.chaos_seconds:.0f}s of chaos "
          f"(a wave of work every {args.wave_seconds:.0f}s), recovery deadline {args.recovery_seconds:.0f}s "
          f"after it; each run seen STARTED is picked with p={KILL_SHARE} and killed {KILL_DELAY[0]:.0f}-"
          f"{KILL_DELAY[1]:.0f}s later or after its destination's next {DELIVERY_REQUESTS[0]}-"
          f"{DELIVERY_REQUESTS[1]} requests (even odds), mode {' or '.join(MODES)} (even odds); "
          f"data seed {DATA_SEED}")
    print(f"dagster dev: RUN_HEARTBEAT_SECONDS={RUN_HEARTBEAT_SECONDS}, "
          f"RUN_HEARTBEAT_TIMEOUT_SECONDS={RUN_HEARTBEAT_TIMEOUT_SECONDS} (dead_run_sensor every 30s; run "
          f"monitoring frees a dead run's pool slots 15s after it ended, dagster.yaml); demo scale {SCALE}")
    print(f"work per wave: a replay file of {args.replay_lines:,} identify calls, an audit hour with "
          f"{args.audit_events:,} injected events; reverse_etl_job (all models) every other wave")
    print(f"sandbox faults: {FAULTS}", flush=True)
    logging.getLogger("uvicorn.error").addFilter(CutOff())
    rng = random.Random(args.seed)
    workdir = Path(tempfile.mkdtemp(prefix="segment_ops_chaos_"))
    sandbox = start_sandbox(SandboxConfig(seed=DATA_SEED, scale=SCALE))
    dev = None
    try:
        began = time.monotonic()
        dev = start_dagster_dev(sandbox, workdir)
        print(f"dagster dev up in {time.monotonic() - began:.0f}s ({workdir})", flush=True)
        for api, spec in FAULTS.items():
            sandbox.set_faults(api, **spec)
        chaos = Chaos(dev, args, rng, workdir)
        chaos.run()
        print(f"chaos and recovery took {chaos.finished - chaos.started:.0f}s; {len(chaos.kills)} kills",
              flush=True)
        return report(chaos, dev)
    finally:
        if dev is not None:
            stop_dagster_dev(dev)
        sandbox.stop()
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
