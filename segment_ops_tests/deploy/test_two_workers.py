"""Workers that share nothing but PostgreSQL (`SEGMENT_OPS_STATE_URL`): each its own SEGMENT_OPS_HOME and OS
process, as pods are. Two of them running one sync at once deliver each message once between them (with
lost answers, only the retries Segment dedupes), a third on a fresh home sends nothing, and a worker killed
mid-run loses nothing once another finishes the run, which sends again only what the killed one had not
checked in.

What Segment received is told per request by `Tap`, an ASGI layer in front of the sandbox (the messageIds
each request carried and whether its answer went out), checked against the sandbox's own recorder.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import orjson
import psycopg
import pytest

import segment_ops.definitions  # noqa: F401  (registers every sync's state schemas, as a run does)
from segment_ops.config import SETTINGS
from segment_ops.engine import pgstate, store
from segment_ops.engine.ledger import DELIVERED, Ledger
from segment_ops.receivers.server import serve_in_thread
from segment_ops.sandbox.app import SandboxConfig, create_app
from segment_ops.sandbox.server import RunningSandbox, _hide_intentional_drops
from segment_ops.syncs.audit_trail.defs import WINDOW_OVERLAP, complete_hours
from segment_ops_tests.audit_trail.conftest import audit_ids, inject_events, window_of
from segment_ops_tests.conftest import DEMO_SCALE, fresh_state_database
from segment_ops_tests.engine.conftest import write_jsonl
from segment_ops_tests.engine.test_replay_cli import replay_command, summary

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.slow, pytest.mark.timeout(300)]

WORKER_TIMEOUT = 120.0
# Faults that lose answers: `drop_after` lets Segment take the batch, then drops the connection instead of
# answering (the worker must retry; Segment dedupes by messageId); 503 refuses the batch without taking it.
# No `drop` (dropped before the body is taken): from outside it looks like `drop_after`, and `Tap` tells a
# taken batch by its 200 head.
LOSE_ANSWERS = {"rate_drop_after": 0.15, "rate_503": 0.1}
# The demo warehouse's reverse-ETL messages (segment_ops_tests/reverse_etl/test_assets.py): 174 identify,
# 14 group and 425 track calls.
REVERSE_ETL_MODELS = ("user_traits", "account_traits", "completed_orders")
REVERSE_ETL_MESSAGES = 174 + 14 + 425


# --- what reached Segment --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Seen:
    """One request to the Tracking API: its messageIds, the status it was answered with (the head), and
    whether the answer's body went out (False: the connection was dropped after the head)."""

    ids: tuple[str, ...]
    status: int | None
    answered: bool


class Tap:
    """ASGI layer in front of the sandbox recording every `/segment/v1/...` request as a `Seen`."""

    def __init__(self, app: Callable) -> None:
        self.app = app
        self.seen: list[Seen] = []

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/segment/v1/"):
            await self.app(scope, receive, send)
            return
        body = bytearray()
        head: dict = {}

        async def tapped_receive():
            message = await receive()
            if message["type"] == "http.request":
                body.extend(message.get("body", b""))
            return message

        async def tapped_send(message) -> None:
            if message["type"] == "http.response.start":
                head["status"] = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                head["answered"] = True
            await send(message)

        try:
            await self.app(scope, tapped_receive, tapped_send)
        finally:
            gzipped = (b"content-encoding", b"gzip") in [(k.lower(), v) for k, v in scope["headers"]]
            self.seen.append(Seen(_message_ids(bytes(body), gzipped), head.get("status"),
                                  head.get("answered", False)))

    def taken(self) -> list[Seen]:
        """The requests the Tracking API took: answered 200, or dropped after a 200 head (`drop_after`)."""
        return [s for s in self.seen if s.status == 200]


def _message_ids(body: bytes, gzipped: bool) -> tuple[str, ...]:
    try:
        call = orjson.loads(gzip.decompress(body) if gzipped else body)
    except (OSError, orjson.JSONDecodeError):  # cut off by a killed sender
        return ()
    return tuple(str(m.get("messageId")) for m in call.get("batch", [call]))


@pytest.fixture
def tapped_sandbox(stop_in_background) -> Iterator[Callable[..., tuple[RunningSandbox, Tap]]]:
    """`tapped_sandbox(faults=..., **config)`: a sandbox of its own behind a `Tap` (its Segment losing
    answers when `faults`); stopped after the test."""
    started: list[RunningSandbox] = []

    def start(*, faults: bool = False, **config: object) -> tuple[RunningSandbox, Tap]:
        _hide_intentional_drops()
        tap = Tap(create_app(SandboxConfig(scale=DEMO_SCALE, **config)))  # type: ignore[arg-type]
        started.append(RunningSandbox(serve_in_thread(tap, name="sandbox")))
        if faults:
            started[-1].set_faults("segment", **LOSE_ANSWERS)
        return started[-1], tap

    yield start
    for sandbox in started:
        stop_in_background(sandbox)


def assert_each_message_taken_once(sandbox: RunningSandbox, tap: Tap, expected: set[str] | int,
                                   *, faults: bool) -> None:
    """Every expected message reached Segment (its recorder stored each once). With faults off none arrived
    twice; with answers lost, a message arrived again only in retries of requests whose answer was lost:
    never once a worker had Segment's 200 for it."""
    stats = sandbox.stats()["segment"]
    stored = [m["messageId"] for m in sandbox.received("segment", limit=100_000)]
    assert len(stored) == len(set(stored)) == stats["received"]
    assert (len(stored) if isinstance(expected, int) else set(stored)) == expected
    taken: Counter[str] = Counter()
    answered: Counter[str] = Counter()
    for seen in tap.taken():
        taken.update(seen.ids)
        answered.update(seen.ids if seen.answered else ())
    assert set(taken) == set(stored)  # the tap saw what the recorder stored...
    assert stats.get("duplicates", 0) == taken.total() - len(taken)  # ...and every repeat it counted
    assert stats.get("late_duplicates", 0) == 0
    if not faults:
        assert stats.get("duplicates", 0) == 0, f"{stats.get('duplicates')} messages arrived twice"
        assert not stats.get("faults") and all(s.answered for s in tap.seen)
    again = sorted(m for m, n in answered.items() if n > 1)
    assert not again, (f"{len(again)} messages were sent again after Segment's 200 for them reached a "
                       f"worker, e.g. {again[:3]}")
    if faults:  # answers were lost, and retried
        assert stats["faults"].get("drop_after", 0) > 0 and stats.get("duplicates", 0) > 0


# --- workers ---------------------------------------------------------------------------------------------

@dataclass
class Workers:
    """Worker processes: each its own SEGMENT_OPS_HOME under `root`, all on one sandbox and one state
    database, the rest of the environment the test's (without any segment_ops setting)."""

    root: Path
    sandbox_url: str
    state_url: str
    extra: dict[str, str]
    started: list[subprocess.Popen[str]] = field(default_factory=list)

    def env(self, home: str) -> dict[str, str]:
        (self.root / home).mkdir(parents=True)
        env = {k: v for k, v in os.environ.items() if k not in {s.name for s in SETTINGS}}
        return env | self.extra | {"SEGMENT_OPS_HOME": str(self.root / home),
                                   "SEGMENT_OPS_SANDBOX_URL": self.sandbox_url,
                                   pgstate.STATE_URL: self.state_url}

    def start(self, home: str, command: list[str], **env: str) -> subprocess.Popen[str]:
        """`command` as a worker on a new `home` (`env`: more variables)."""
        self.started.append(subprocess.Popen(command, env=self.env(home) | env, stdout=subprocess.PIPE,
                                             stderr=subprocess.PIPE, text=True))
        return self.started[-1]

    def replay(self, home: str, path: Path) -> subprocess.Popen[str]:
        """`segment-ops replay path` on a new `home`."""
        return self.start(home, replay_command(path))

    def dagster_run(self, home: str, *args: str) -> subprocess.Popen[str]:
        """A Dagster run of `DAGSTER_WORKER` (`args`: what to run) on a new `home`."""
        return self.start(home, [sys.executable, "-c", DAGSTER_WORKER, *args])

    def staging_file(self, home: str, sync: str) -> Path:
        return self.root / home / "staging" / f"{sync}.duckdb"


@pytest.fixture
def state_url() -> Iterator[str]:
    with fresh_state_database("so_two_workers") as url:
        yield url


@pytest.fixture
def workers(tmp_path: Path, state_url: str) -> Iterator[Callable[..., Workers]]:
    """`workers(sandbox, **env)`: workers on `sandbox` and the test's state database; any still running at
    the end of the test is killed."""
    made: list[Workers] = []

    def make(sandbox: RunningSandbox, **extra: str) -> Workers:
        made.append(Workers(tmp_path / "homes", sandbox.url, state_url, extra))
        return made[-1]

    yield make
    for worker in (w for each in made for w in each.started if w.poll() is None):
        worker.kill()
        worker.communicate()


def finish(worker: subprocess.Popen[str]) -> tuple[str, str]:
    """Wait for `worker`; its (stdout, stderr), after asserting it exited 0."""
    try:
        out, err = worker.communicate(timeout=WORKER_TIMEOUT)
    except subprocess.TimeoutExpired:
        worker.kill()
        out, err = worker.communicate()
        raise AssertionError(f"worker still running after {WORKER_TIMEOUT:.0f}s\n{out}\n{err}") from None
    assert worker.returncode == 0, f"exit {worker.returncode}\n{out}\n{err}"
    return out, err


def calls(count: int, pad: int) -> list[dict]:
    """`count` valid track calls with their own messageIds and `pad` bytes of properties each."""
    return [{"type": "track", "messageId": f"msg-{i:06d}", "userId": f"u{i}", "event": "Replayed",
             "properties": {"n": i, "pad": "x" * pad}} for i in range(count)]


def ledger_counts(path: Path) -> tuple[int, int]:
    """(pending, delivered) of the replay sync in the staging file at `path`, read as it is."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        counts = Ledger(con, create=False).counts("replay")
        return counts.pending, counts.delivered
    finally:
        con.close()


def shared_ledger_counts(state_url: str, home: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[int, int]:
    """(pending, delivered) of the replay sync as the state database holds it, read from a fresh `home`."""
    with monkeypatch.context() as env:
        env.setenv(pgstate.STATE_URL, state_url)
        con = store.connect(home / "staging" / "replay.duckdb", read_only=True)
    try:
        counts = Ledger(con, create=False).counts("replay")
        return counts.pending, counts.delivered
    finally:
        con.close()


# --- 1. replay: two workers at once, then a third --------------------------------------------------------

@pytest.mark.parametrize("faults", [False, True], ids=["faults_off", "answers_lost"])
def test_two_workers_replaying_one_file_at_once_send_each_message_once_and_a_third_sends_nothing(
        tmp_path, tapped_sandbox, workers, faults):
    sandbox, tap = tapped_sandbox(faults=faults)
    on = workers(sandbox)
    records = calls(2_000, pad=2_000)  # about 4 MB: 9 batches of up to 475 KB
    path = write_jsonl(tmp_path / "history.jsonl", records)

    both = [on.replay(home, path) for home in ("a", "b")]
    outputs = [finish(worker) for worker in both]

    plans = [summary(out) for out, _ in outputs]
    planned = [plan[0] for plan, _ in plans]
    assert sum(planned) == len(records), f"planned {planned}: the workers did not share one ledger"
    assert sum(delivered[0] for _, delivered in plans) == len(records)
    assert all(delivered[2] == 0 for _, delivered in plans)  # nothing left pending
    assert_each_message_taken_once(sandbox, tap, {r["messageId"] for r in records}, faults=faults)
    requests = len(tap.seen)

    out, _ = finish(on.replay("c", path))

    assert summary(out)[0][:2] == (0, len(records))  # planned none: all known to the database
    assert len(tap.seen) == requests, "the third worker sent again"  # not one request reached Segment


# --- 2. Dagster runs: reverse ETL and an audit-trail hour -----------------------------------------------

# One worker's Dagster run, as `dg.materialize` in a process of its own (an ephemeral instance, the code
# location's resources from the environment); prints each materialization's plain metadata as JSON.
DAGSTER_WORKER = textwrap.dedent("""
    import json, sys
    import dagster as dg
    from segment_ops.resources import build_resources

    what = sys.argv[1]
    if what == "reverse_etl":
        from segment_ops.syncs.reverse_etl.defs import build_reverse_etl_defs, model_key
        assets = [a for a in build_reverse_etl_defs().assets if isinstance(a, dg.AssetsDefinition)]
        result = dg.materialize(assets, selection=[model_key(m) for m in sys.argv[2:]],
                                resources=build_resources(), raise_on_error=False)
    else:
        from segment_ops.syncs.audit_trail.defs import segment_audit_events, siem_audit_events
        result = dg.materialize([segment_audit_events, siem_audit_events], partition_key=sys.argv[2],
                                resources=build_resources(), raise_on_error=False)
    failures = [str(e.event_specific_data.error) for e in result.all_events if e.is_step_failure]
    metadata = {}
    for event in result.get_asset_materialization_events():
        m = event.event_specific_data.materialization
        metadata[m.asset_key.to_user_string()] = {k: v.value for k, v in m.metadata.items()
                                                  if isinstance(v.value, (int, float, str, bool))}
    print(json.dumps({"success": result.success, "failures": failures, "metadata": metadata}))
""")


def run_result(worker: subprocess.Popen[str]) -> dict:
    out, err = finish(worker)
    result = json.loads(out.strip().splitlines()[-1])
    assert result["success"], f"{result['failures']}\n{err[-3000:]}"
    return result["metadata"]


@pytest.mark.parametrize("faults", [False, True], ids=["faults_off", "answers_lost"])
def test_two_workers_running_the_reverse_etl_models_at_once_send_each_row_once_and_a_third_sends_nothing(
        tapped_sandbox, workers, demo_warehouse_file, faults):
    sandbox, tap = tapped_sandbox(faults=faults)
    on = workers(sandbox, WAREHOUSE_URL=f"duckdb:///{demo_warehouse_file}")  # one warehouse, read by all

    both = [on.dagster_run(home, "reverse_etl", *REVERSE_ETL_MODELS) for home in ("a", "b")]
    runs = [run_result(worker) for worker in both]

    for model in REVERSE_ETL_MODELS:
        planned = [run[f"segment/reverse_etl/{model}"]["planned"] for run in runs]
        assert min(planned) == 0, f"{model}: planned {planned}: the workers did not share its state"
    assert sum(meta["delivered"] for run in runs for meta in run.values()) == REVERSE_ETL_MESSAGES
    assert_each_message_taken_once(sandbox, tap, REVERSE_ETL_MESSAGES, faults=faults)
    requests = len(tap.seen)

    third = run_result(on.dagster_run("c", "reverse_etl", *REVERSE_ETL_MODELS))

    assert [meta["planned"] for meta in third.values()] == [0, 0, 0]
    assert len(tap.seen) == requests, "the third worker sent again"


def test_two_workers_running_one_audit_hour_at_once_forward_each_event_once_and_a_third_sends_nothing(
        tapped_sandbox, workers):
    sandbox, _ = tapped_sandbox()
    on = workers(sandbox)
    key = complete_hours(2)[0]  # a complete hour, before the last one
    inject_events(sandbox, key, 40)
    window_start, window_end = window_of(key, key)
    # what the hour's run forwards: its window, and the second before it that its pull reads too
    expected = audit_ids(sandbox, window_start - WINDOW_OVERLAP, window_end)

    both = [on.dagster_run(home, "audit_trail", key) for home in ("a", "b")]
    runs = [run_result(worker) for worker in both]

    forwarded = [item["event"]["id"] for item in sandbox.received("splunk", limit=100_000)]
    assert len(expected) >= 40 and sorted(forwarded) == sorted(expected)  # each audit event exactly once
    assert sorted(run["siem/audit_events"]["forwarded"] for run in runs) == [0, len(expected)]
    requests = sandbox.stats()["splunk"]["requests"]

    third = run_result(on.dagster_run("c", "audit_trail", key))

    assert third["siem/audit_events"]["forwarded"] == 0
    assert sandbox.stats()["splunk"]["requests"] == requests  # HEC got nothing from it


# --- 3. a worker killed mid-run --------------------------------------------------------------------------

def test_a_worker_killed_while_replaying_loses_nothing_once_another_finishes(
        tmp_path, tapped_sandbox, workers, state_url, monkeypatch):
    sandbox, _ = tapped_sandbox()
    sandbox.set_faults("segment", rate_slow=1.0, slow_seconds=0.4)  # every batch takes 0.4 s
    on = workers(sandbox)
    records = calls(20_000, pad=900)  # about 20 MB: some 45 batches, 4 in flight
    path = write_jsonl(tmp_path / "history.jsonl", records)

    first = on.start("a", replay_command(path), **{pgstate.CHECKPOINT_SETTING: "0"})  # each flush checks in
    # Kill it once a fifth was delivered and a checkpoint reached the database.
    while sandbox.stats()["segment"]["received"] < 4_000 or not delivered_in_database(state_url):
        if first.poll() is not None:
            raise AssertionError(f"the first worker ended before it was killed: {first.communicate()}")
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert sandbox.stats()["segment"]["received"] < len(records)  # killed while delivering
    checked_in = delivered_in_database(state_url)  # delivered by the killed worker, as it last checked in
    sandbox.clear_faults()

    out, err = finish(on.replay("b", path))

    assert "another replay holds" not in err  # the killed worker's lock went with its process
    delivered, _, pending = summary(out)[1]
    assert (delivered, pending) == (len(records) - checked_in, 0)  # the rest, and only the rest
    arrived = {m["messageId"] for m in sandbox.received("segment", limit=100_000)}
    assert arrived == {r["messageId"] for r in records}  # every message arrived at least once
    assert ledger_counts(on.staging_file("b", "replay")) == (0, len(records))
    assert shared_ledger_counts(state_url, tmp_path / "reader", monkeypatch) == (0, len(records))


def delivered_in_database(state_url: str, sync: str = "replay") -> int:
    """How many of `sync`'s messages the state database records as delivered (0: it holds nothing of it)."""
    with psycopg.connect(state_url, autocommit=True) as pg:
        if not pg.execute(f"SELECT to_regclass('{pgstate.CATALOG}.syncs') IS NOT NULL").fetchone()[0]:
            return 0
        row = pg.execute(f"SELECT pg_schema FROM {pgstate.CATALOG}.syncs WHERE sync = %s", [sync]).fetchone()
        if row is None:
            return 0
        return pg.execute(f'SELECT count(DISTINCT seq) FROM "{row[0]}".outcomes WHERE status = %s',
                          [DELIVERED]).fetchone()[0]
