"""Fullstory frustration-signals benchmark: N stream events from the inbox, decided and planned as track calls

Input: N Field Mapping bodies (the README's, as the sandbox's `stream_body(event, "mapped")` posts them) from
about 20,000 users over the last 3 days, generated deterministically (seeded, fixed clock): rage, dead and
error clicks plus other streams the file does not list, a few users with many clicks (so the rate limit
bites), ~1% re-deliveries (the same body again, minutes to hours later), ~2% anonymous visitors (empty uid
and email), ~1% staff (`@staff.example`), ~0.5% on `/internal/` pages, ~3% delayed by hours and ~0.5% late
(arrived more than `max_delay_hours` after they happened). They are stored in arrival order into a fresh
inbox as the receiver does (`Inbox.store(parse_event(raw))`). The receiver's durable write (fsync per event)
is timed on the first `--store-sample` events; the rest are written the same way with fsync skipped, so the
setup stays short (the files are the same).

Then, each in its own process (seconds: the work after imports; peak RSS from wait4), best of 3, alternated
(the engine stops after one round when a round takes over `ROUND_BUDGET` seconds: that keeps the 100k run
within minutes, and one round's noise is far smaller than what such a round measures):

- the engine: `run_diff_sync` of `signals.diff_sync` on a fresh DuckDB staging file as a dry run (every
  event decided into the temp table, the track calls planned through the diff, nothing sent), with the
  shipped `fullstory.toml` but no identity email map (no warehouse: events without a uid are unidentified);
- the pandas peer: what a competent engineer writes instead - every inbox file read with orjson into a
  DataFrame, deduplicated by key (earliest arrival), the same rules in the same order (not a signal, late,
  staff/page filter by fnmatch, unidentified, per user/kind/UTC-window rate limit in arrival order), and the
  Segment track payloads (orjson) with messageId = sha256(key) built for the events to send.

Both must decide the same number of events of every status (`send` above all), or the run fails.

    .venv/bin/python benchmarks/fullstory.py                    # 100,000 events
    .venv/bin/python benchmarks/fullstory.py --events 20000     # quicker
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from unittest import mock

import orjson

from segment_ops.syncs.fullstory import settings
from segment_ops.syncs.fullstory.inbox import Inbox
from segment_ops.syncs.fullstory.streams import parse_event

# The engine at least as fast as the pandas peer, although it also validates every body (a bad one is
# rejected with its reason), keeps its decisions durable and plans through the ledger: the bar to reach.
ENGINE_VS_PANDAS = 1.0
TARGET_RSS_MB = 300.0  # and its peak RSS under this, at the default size
TARGET_EVENTS = 100_000  # the size the goals are stated for
ROUNDS = 3
ROUND_BUDGET = 30.0  # seconds: an engine round longer than this is not repeated
USERS = 20_000
DAYS = 3
# A fixed clock, so the same seed gives byte-identical bodies and keys (the rules only compare times
# with each other, never with the run's clock).
ANCHOR = datetime(2026, 12, 7, tzinfo=UTC)
OTHER_STREAMS = ("Checkout Viewed", "Form Abandoned")
PAGES = ("/", "/pricing", "/checkout", "/checkout/payment", "/settings/billing", "/reports", "/search",
         "/onboarding/step-2")


@dataclass(frozen=True)
class Measured:
    label: str
    rounds: int
    seconds: float  # best of the rounds: the work after imports (the child's SECONDS= line)
    process_seconds: float  # the same round's whole process
    rss_mb: float  # the highest peak RSS of the rounds
    output: str  # the best round's

    def value(self, name: str) -> str:
        """A NAME=value line the child printed."""
        return next(line.split("=", 1)[1] for line in self.output.splitlines() if line.startswith(f"{name}="))


def iso_ms(moment: datetime) -> str:
    """ISO 8601 with milliseconds and a Z, as the sandbox's stream bodies write times."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def generate(n: int, seed: int) -> list[tuple[datetime, bytes]]:
    """n deliveries (received_at, raw body), in arrival order; about 1% of them re-deliveries."""
    rng = random.Random(seed)
    start = ANCHOR - timedelta(days=DAYS)
    span_ms = DAYS * 24 * 3600 * 1000
    max_delay = timedelta(hours=settings.load_config(settings.DEFAULT_FILE).signals.max_delay_hours)
    originals = n - n // 100
    deliveries: list[tuple[datetime, bytes]] = []
    for i in range(originals):
        draw = rng.random()
        if draw < 0.02:  # anonymous visitor: the sandbox sends empty strings
            user = {"uid": "", "email": "", "display_name": ""}
        elif draw < 0.03:  # internal staff
            j = rng.randrange(40)
            user = {"uid": f"staff_{j:02d}", "email": f"QA.Tester{j}@staff.example",
                    "display_name": f"QA {j}"}
        else:  # a few users click in frustration far more than the rest (the rate limit's work)
            u = int(USERS * rng.random() ** 2.5)
            user = {"uid": f"usr_{u:05d}", "email": f"user{u}@customer{u % 700}.example",
                    "display_name": f"User {u}"}
        stream = rng.random()
        name = ("Rage Click" if stream < 0.35 else "Dead Click" if stream < 0.65 else
                "Error Click" if stream < 0.85 else OTHER_STREAMS[i % 2])
        delay = rng.random()
        if delay < 0.005:  # a client that was offline past max_delay_hours: late
            received = start + timedelta(milliseconds=rng.randrange(span_ms))
            happened = received - max_delay - timedelta(seconds=rng.uniform(60, 72 * 3600))
        else:
            happened = start + timedelta(milliseconds=rng.randrange(span_ms))
            lag = rng.uniform(60, 36 * 3600) if delay < 0.035 else rng.uniform(0.3, 8)
            received = happened + timedelta(seconds=lag)
        page = "/internal/admin/users" if rng.random() < 0.005 else PAGES[rng.randrange(len(PAGES))]
        stamp = iso_ms(happened)
        body = {"name": name, "timestamp": stamp, "user": user,
                "session_url": f"https://app.fullstory.com/ui/o-BENCH-na1/session/{rng.getrandbits(40)}%3A"
                               f"{rng.getrandbits(40)}",
                "page_url": f"https://app.example.com{page}", "event_time": stamp}
        deliveries.append((received, orjson.dumps(body)))
    for _ in range(n - originals):  # Fullstory's rare re-delivery: the same body, minutes to hours later
        received, raw = deliveries[rng.randrange(originals)]
        deliveries.append((received + timedelta(seconds=rng.uniform(1, 3 * 3600)), raw))
    deliveries.sort(key=lambda d: d[0])
    return deliveries


def fill_inbox(inbox: Inbox, deliveries: list[tuple[datetime, bytes]], sample: int) -> tuple[int, float, int]:
    """Store every delivery as the receiver does; returns (events timed, their seconds, files stored)."""
    stored = 0
    sample = min(sample, len(deliveries))
    started = time.perf_counter()
    for received, raw in deliveries[:sample]:
        stored += inbox.store(parse_event(raw), received_at=received, token="FULLSTORY_STREAM_TOKEN")
    seconds = time.perf_counter() - started
    with mock.patch.object(os, "fsync", lambda fd: None):  # the same files, without the wait for the disk
        for received, raw in deliveries[sample:]:
            stored += inbox.store(parse_event(raw), received_at=received, token="FULLSTORY_STREAM_TOKEN")
    return sample, seconds, stored


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=TARGET_EVENTS)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--store-sample", type=int, default=5_000,
                        help="events whose durable store (fsync per event) is timed")
    args = parser.parse_args()
    n = args.events
    signals = settings.load_config(settings.DEFAULT_FILE).signals
    # Local state only (no PostgreSQL), and the shipped file whatever the environment says.
    env = {k: v for k, v in os.environ.items()
           if k not in ("SEGMENT_OPS_STATE_URL", "FULLSTORY_SIGNALS_FILE")}

    print(f"load average at start: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)", flush=True)
    with tempfile.TemporaryDirectory(prefix="segment-ops-bench-fullstory-") as tmp:
        work = Path(tmp)
        inbox = Inbox(work / "inbox" / "fullstory")
        started = time.perf_counter()
        deliveries = generate(n, args.seed)
        generated = time.perf_counter() - started
        timed, store_seconds, files = fill_inbox(inbox, deliveries, args.store_sample)
        hours = len(inbox.hours())
        print(f"setup: {n:,} deliveries generated in {generated:.1f}s, stored as {files:,} event files in "
              f"{hours} hour folders in {time.perf_counter() - started - generated:.1f}s "
              f"({n - files:,} re-deliveries in the same hour kept once by the inbox)", flush=True)
        store_rate = timed / store_seconds
        print(f"receiver's durable store (parse_event + Inbox.store, fsync per event): {timed:,} events in "
              f"{store_seconds:.2f}s = {store_rate:,.0f} events/s", flush=True)

        engine_code = _ENGINE.format(inbox=str(inbox.root), staging=str(work / "staging-{round}.duckdb"))
        peer_code = _PEER.format(
            inbox=str(inbox.root), kinds={s.name: s.kind for s in signals.streams.values()},
            events={s.name: s.event for s in signals.streams.values()},
            max_delay_hours=signals.max_delay_hours,
            exclude_emails=signals.exclude_emails, exclude_pages=signals.exclude_page_urls,
            per_user=signals.per_user, window_hours=signals.window_hours)
        engine_runs, peer_runs = [], []
        for round_ in range(ROUNDS):
            if not engine_runs or engine_runs[0][0] <= ROUND_BUDGET:
                engine_runs.append(_child(engine_code.replace("{round}", str(round_)), env))
            peer_runs.append(_child(peer_code, env))
            print(f"round {round_ + 1}: engine {engine_runs[-1][0]:.2f}s, peer {peer_runs[-1][0]:.2f}s",
                  flush=True)
        engine = _best("segment-ops engine (run_diff_sync dry run: ingest, decide, diff, plan)", engine_runs)
        peer = _best("pandas peer (orjson read, DataFrame rules, payloads)", peer_runs)

    for run in (engine, peer):
        print(f"{run.label}: {_shown(run.output)}")
    engine_statuses = orjson.loads(engine.value("STATUSES"))
    peer_statuses = orjson.loads(peer.value("STATUSES"))
    print(f"engine decided: {_counts(engine_statuses)}")
    print(f"peer decided:   {_counts(peer_statuses)}")
    engine_send, peer_send = engine_statuses.get("send", 0), peer_statuses.get("send", 0)
    print(f"send: engine {engine_send:,}, peer {peer_send:,}; engine planned "
          f"{int(engine.value('PLANNED')):,} track calls, peer built {int(peer.value('PAYLOADS')):,} "
          "payloads")
    if engine_send != peer_send or engine_statuses != peer_statuses:
        raise SystemExit(f"MISMATCH: the engine and the pandas peer disagree (send: {engine_send:,} vs "
                         f"{peer_send:,}): the comparison means nothing")
    if int(engine.value("PLANNED")) != engine_send or int(peer.value("PAYLOADS")) != peer_send:
        raise SystemExit("MISMATCH: planned calls or built payloads differ from the events decided `send`")

    ratio = peer.seconds / engine.seconds
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    print(f"\n{n:,} events ({files:,} files); seconds: the work after imports, best of the rounds; peak RSS: "
          "the highest of the rounds")
    print(f"{'run':<72} {'rounds':>6} {'seconds':>8} {'events/s':>10} {'process s':>10} {'peak MB':>8}")
    for run in (engine, peer):
        print(f"{run.label:<72} {run.rounds:>6} {run.seconds:>8.2f} {n / run.seconds:>10,.0f} "
              f"{run.process_seconds:>10.2f} {run.rss_mb:>8.0f}")
    print(f"ratio: engine {ratio:.2f}x the pandas peer's speed (peer seconds / engine seconds; the peer is "
          f"{1 / ratio:.1f}x faster)" if ratio < 1 else
          f"ratio: engine {ratio:.2f}x the pandas peer's speed (peer seconds / engine seconds)")
    print(f"store: {store_rate:,.0f} events/s (receiver's durable write, fsync per event, {timed:,} events)")
    passed = ratio >= ENGINE_VS_PANDAS and engine.rss_mb <= TARGET_RSS_MB
    scope = "" if n == TARGET_EVENTS else f" (stated for {TARGET_EVENTS:,} events; this run has {n:,})"
    print(f"{'PASS' if passed else 'MISS'}  goal: engine >= {ENGINE_VS_PANDAS}x the pandas peer and <= "
          f"{TARGET_RSS_MB:.0f} MB peak RSS{scope}: {ratio:.2f}x, {engine.rss_mb:.0f} MB")
    return 0 if passed else 1


def _child(code: str, env: dict[str, str]) -> tuple[float, float, float, str]:
    """One child running `code`: (its SECONDS= line, whole-process seconds, peak RSS in MB, its output)."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               env=env)
    output = process.stdout.read().decode() if process.stdout else ""
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"a child failed:\n{output[-4000:]}")
    seconds = next(float(line.split("=", 1)[1]) for line in output.splitlines()
                   if line.startswith("SECONDS="))
    return seconds, wall, usage.ru_maxrss / 1024, output


def _best(label: str, runs: list[tuple[float, float, float, str]]) -> Measured:
    seconds, wall, _, output = min(runs, key=lambda r: r[0])
    return Measured(label, len(runs), seconds, wall, max(r[2] for r in runs), output)


def _shown(output: str) -> str:
    return "\n".join(line for line in output.splitlines() if "=" not in line.split(" ", 1)[0]).strip()


def _counts(statuses: dict[str, int]) -> str:
    return ", ".join(f"{status} {count:,}" for status, count in sorted(statuses.items(), key=lambda s: -s[1]))


_ENGINE = textwrap.dedent("""
    import time
    from dataclasses import replace
    import orjson
    from segment_ops.engine import store
    from segment_ops.engine.run import run_diff_sync
    from segment_ops.syncs.fullstory import settings, signals
    from segment_ops.syncs.fullstory.inbox import Inbox

    config = settings.load_config(settings.DEFAULT_FILE)
    config = replace(config, identity=settings.IdentityConfig(
        uid_is_user_id=config.identity.uid_is_user_id, email_source=None))  # no warehouse

    def no_client():
        raise AssertionError("a dry run makes no client")

    imported = time.perf_counter()
    report = signals.SignalsRun(dry_run=True)
    with store.staging({staging!r}) as con:
        sync = signals.diff_sync(config, Inbox({inbox!r}), report, warehouse_url="duckdb:///:memory:",
                                 run_id="bench")
        run_diff_sync(con, sync, report, no_client, run_id="bench")
    done = time.perf_counter()
    plan = report.plan
    print(f"{{report.events_read:,}} files read, {{report.new:,}} new events; open + ingest + decide "
          f"{{done - imported - plan.seconds:.2f}}s, diff + plan {{plan.seconds:.2f}}s: {{plan.added:,}} "
          f"added, {{plan.planned:,}} planned, {{plan.rejected:,}} rejected")
    print("STATUSES=" + orjson.dumps(dict(report.statuses)).decode())
    print(f"PLANNED={{plan.planned}}")
    print(f"SECONDS={{done - imported}}")
""")

_PEER = textwrap.dedent("""
    import time
    import fnmatch
    import hashlib
    import os
    import numpy as np
    import orjson
    import pandas as pd

    KINDS = {kinds!r}
    EVENTS = {events!r}
    MAX_DELAY = pd.Timedelta(hours={max_delay_hours!r})
    EXCLUDE_EMAILS = {exclude_emails!r}
    EXCLUDE_PAGES = {exclude_pages!r}
    PER_USER = {per_user!r}
    WINDOW = pd.Timedelta(hours={window_hours!r})
    EPOCH = pd.Timestamp(0, tz="UTC")

    imported = time.perf_counter()
    columns = {{c: [] for c in ("key", "received_at", "name", "event_time", "fs_user_id", "uid", "email",
                                "session_url", "page_url")}}
    for hour in sorted(os.scandir({inbox!r}), key=lambda e: e.name):
        if not hour.name.startswith("hour-") or not hour.is_dir():
            continue
        for entry in os.scandir(hour.path):
            if not (entry.name.startswith("event-") and entry.name.endswith(".json")):
                continue
            with open(entry.path, "rb") as handle:
                record = orjson.loads(handle.read())
            body = record["body"]
            user = body.get("user") or {{}}
            columns["key"].append(record["key"])
            columns["received_at"].append(record["received_at"])
            columns["name"].append(body.get("name"))
            columns["event_time"].append(body.get("event_time") or body.get("timestamp"))
            columns["fs_user_id"].append(user.get("id") or None)
            columns["uid"].append(user.get("uid") or None)
            columns["email"].append(user.get("email") or None)
            columns["session_url"].append(body.get("session_url") or None)
            columns["page_url"].append(body.get("page_url") or None)
    read = time.perf_counter()
    df = pd.DataFrame(columns)
    df["received_at"] = pd.to_datetime(df["received_at"], format="ISO8601", utc=True)
    df["event_time"] = pd.to_datetime(df["event_time"], format="ISO8601", utc=True)
    # A re-delivery in a later hour is a second file with the same key: the earliest arrival counts.
    df = df.sort_values(["received_at", "key"], kind="stable").drop_duplicates("key", keep="first")
    df["email"] = df["email"].str.strip().str.lower()
    df["kind"] = df["name"].map(KINDS)
    df["event"] = df["name"].map(EVENTS)

    def matches(values, patterns):
        unique = values.dropna().unique()
        hit = {{v for v in unique if any(fnmatch.fnmatchcase(v.lower(), p) for p in patterns)}}
        return values.isin(hit)

    filtered = matches(df["email"], EXCLUDE_EMAILS) | matches(df["page_url"], EXCLUDE_PAGES)
    late = (df["received_at"] - df["event_time"]) > MAX_DELAY
    df["status"] = np.select([df["kind"].isna().to_numpy(), late.to_numpy(), filtered.to_numpy(),
                              df["uid"].isna().to_numpy()],
                             ["not_a_signal", "late", "filtered", "unidentified"], "candidate")
    candidates = df[df["status"] == "candidate"].copy()
    candidates["bucket"] = (candidates["event_time"] - EPOCH) // WINDOW
    candidates = candidates.sort_values(["received_at", "event_time", "key"], kind="stable")
    rank = candidates.groupby(["uid", "kind", "bucket"], sort=False).cumcount() + 1
    df.loc[candidates.index, "status"] = np.where(rank.to_numpy() <= PER_USER, "send", "rate_limited")
    send = df[df["status"] == "send"]
    stamps = send["event_time"].dt.strftime("%Y-%m-%dT%H:%M:%S.%f").str[:-3] + "Z"
    payload_columns = send[["key", "uid", "event", "kind", "name", "session_url", "page_url", "fs_user_id"]]
    payload_columns = payload_columns.astype(object).where(payload_columns.notna(), None)
    payloads = []
    for (key, uid, event, kind, name, session, page, fs_id), stamp in zip(
            payload_columns.itertuples(index=False, name=None), stamps.tolist()):
        payloads.append(orjson.dumps({{
            "type": "track", "userId": uid, "event": event, "timestamp": stamp,
            "properties": {{"fullstory_kind": kind, "fullstory_stream": name, "session_url": session,
                           "page_url": page, "fullstory_user_id": fs_id}},
            "messageId": hashlib.sha256(key.encode()).hexdigest()}}))
    done = time.perf_counter()
    statuses = {{k: int(v) for k, v in df["status"].value_counts().items()}}
    print(f"read {{len(columns['key']):,}} files in {{read - imported:.2f}}s + rules and payloads "
          f"{{done - read:.2f}}s: {{len(df):,}} events")
    print("STATUSES=" + orjson.dumps(statuses).decode())
    print(f"PAYLOADS={{len(payloads)}}")
    print(f"SECONDS={{done - imported}}")
""")


if __name__ == "__main__":
    sys.exit(main())
