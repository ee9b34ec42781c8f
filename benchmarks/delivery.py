"""Delivery-engine benchmark: `segment-ops replay` and Segment's official Python library against the ceiling
of an independent minimal receiver (`receiver.py`: it counts and acknowledges `/v1/batch`, nothing else).

In one run, against one receiver process on localhost:
- the ceiling: pre-built batches of about 450 KB, gzipped as replay sends them, over 4 keep-alive
  connections from a process that does nothing else, best of 3 rounds (`receiver.measure_ceiling`);
- `segment-ops replay` of N identify calls, the whole process (read, plan, ledger, send), each size in its
  own process measured with wait4 (wall time and peak RSS), with its defaults (gzip, 4 batches in flight,
  200 requests/s); `--skip-preflight`, as the preflight gate asks Segment's Public API, which the receiver
  does not serve;
- the delivery phase alone (the engine sending an already planned ledger, gzipped: the part comparable to
  the official library, which keeps no ledger), and once more with each batch's answer fsynced
  (`record_each_batch`, as the SIEM forwarding sends);
- the same calls sent by segment-analytics-python with its default settings (uncompressed batches of 100).
Each figure is printed as a share of the ceiling, and every run is checked against the receiver's count.
The goals for replay: at least half the ceiling, and 1M messages in under 300 MB of peak RSS. Its default
request-rate cap bounds the first whatever the engine's speed, so that bound is printed beside it.

Then what a crash costs, against the sandbox (`segment-ops sandbox`), whose recorder knows which messageIds
arrived twice: the delivery phase of the first size is SIGKILLed once the sandbox has a quarter, a half and
three quarters of it, run again each time (Segment drops such repeats by messageId; a destination without
dedupe would index them twice).

    .venv/bin/pip install -e ".[bench]"
    .venv/bin/python benchmarks/delivery.py                 # 100k and 1M
    .venv/bin/python benchmarks/delivery.py --sizes 100000  # quicker
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from receiver import RunningReceiver, identify_call, measure_ceiling, running_receiver  # noqa: E402

from segment_ops.clients.segment_tracking import DEFAULT_MAX_REQUESTS_PER_SECOND  # noqa: E402
from segment_ops.config import SANDBOX_SEGMENT_WRITE_KEY  # noqa: E402

TARGET_SHARE = 0.5  # of the receiver's ceiling, whole process
TARGET_RSS_MB = 300.0
TARGET_RSS_MESSAGES = 1_000_000  # the RSS goal is for a replay of this many messages
KILL_AT = (0.25, 0.5, 0.75)  # shares of the run received when the delivery phase is SIGKILLed
# A run: (name, messages, seconds, peak RSS in MB, batches the receiver counted).
Run = tuple[str, int, float, float, int]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated message counts for replay")
    parser.add_argument("--official", type=int, default=100_000, help="messages for the official library")
    parser.add_argument("--ceiling", type=int, default=1_000_000, help="messages for the ceiling")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    with tempfile.TemporaryDirectory(prefix="segment-ops-bench-") as tmp:
        work = Path(tmp)
        for n in sizes:
            _write_identify_file(work / f"identify_{n}.jsonl", n)
        n = sizes[0]
        with running_receiver() as receiver:
            ceiling = measure_ceiling(receiver.port, messages=args.ceiling)
            print(f"receiver ceiling: {ceiling:,.0f} msg/s", flush=True)
            replays = [_replay(receiver, work, size) for size in sizes]
            phases = [_delivery_phase(receiver, work, n, record_each_batch=fsync) for fsync in (False, True)]
            official = _counted(receiver, args.official,
                                f"segment-analytics-python (defaults), {args.official:,} identify",
                                [sys.executable, "-c", _official_script(receiver.url, args.official)])
        crash = _crash_and_resume(work / f"identify_{n}.jsonl", work / "crash", n)

    official_rate = official[1] / official[2]
    print(f"\n{'run':<52} {'msg/s':>10} {'seconds':>8} {'peak RSS MB':>12} {'of ceiling':>11} "
          f"{'vs official':>12}")
    print(f"{'receiver ceiling (4 connections, 450 KB gzipped)':<52} {ceiling:>10,.0f} {'':>8} {'':>12} "
          f"{1:>11.0%} {ceiling / official_rate:>11.1f}x")
    for name, count, seconds, rss, _ in [*replays, *phases, official]:
        rate = count / seconds
        print(f"{name:<52} {rate:>10,.0f} {seconds:>8.1f} {rss:>12.0f} {rate / ceiling:>11.0%} "
              f"{rate / official_rate:>11.1f}x")
    print()
    for killed_at, twice in crash:
        print(f"delivery of {n:,} SIGKILLed at {killed_at:,} received, run again: {twice:,} sent twice")
    total = sum(twice for _, twice in crash)
    print(f"{len(crash)} kills: {total:,} sent twice, {total / len(crash):,.0f} a kill "
          f"({total / len(crash) / n:.2%} of the run)")
    print()
    ok = True
    for name, count, seconds, rss, batches in replays:
        share = count / seconds / ceiling
        cap = DEFAULT_MAX_REQUESTS_PER_SECOND * count / batches
        print(f"goal >= {TARGET_SHARE:.0%} of the receiver's ceiling, {name}: {share:.0%} "
              f"{'PASS' if share >= TARGET_SHARE else 'MISS'} (its default cap of "
              f"{DEFAULT_MAX_REQUESTS_PER_SECOND:.0f} requests/s x {count / batches:,.0f} messages a batch "
              f"allows at most {cap:,.0f} msg/s, {cap / ceiling:.0%})")
        ok = ok and share >= TARGET_SHARE
        if count >= TARGET_RSS_MESSAGES:
            print(f"goal < {TARGET_RSS_MB:.0f} MB peak RSS, {name}: {rss:.0f} MB "
                  f"{'PASS' if rss < TARGET_RSS_MB else 'MISS'}")
            ok = ok and rss < TARGET_RSS_MB
    if max(sizes) < TARGET_RSS_MESSAGES:
        print(f"goal < {TARGET_RSS_MB:.0f} MB peak RSS at {TARGET_RSS_MESSAGES:,} messages: not measured "
              f"(--sizes up to {max(sizes):,})")
    return 0 if ok else 1


def _write_identify_file(path: Path, n: int) -> None:
    with path.open("wb") as out:
        for i in range(n):
            out.write(orjson.dumps(identify_call(i)) + b"\n")


def _replay(receiver: RunningReceiver, work: Path, n: int) -> Run:
    """`segment-ops replay` of the file of `n` identify calls, whole process, to `receiver`."""
    command = [sys.executable, "-m", "segment_ops.cli", "replay", str(work / f"identify_{n}.jsonl"),
               "--skip-preflight"]
    env = {"SEGMENT_OPS_HOME": str(work / f"home_{n}"), "SEGMENT_TRACKING_URL": receiver.url,
           "SEGMENT_WRITE_KEY": SANDBOX_SEGMENT_WRITE_KEY}
    return _counted(receiver, n, f"segment-ops replay, {n:,} identify", command, env)


def _delivery_phase(receiver: RunningReceiver, work: Path, n: int, *, record_each_batch: bool) -> Run:
    """The engine delivering the file of `n` identify calls, planned beforehand (untimed), to `receiver`."""
    label = "delivery phase, record_each_batch" if record_each_batch else "engine delivery phase only"
    script = _deliver_only_script(receiver.url, work / f"identify_{n}.jsonl",
                                  work / f"deliver_{record_each_batch}", record_each_batch=record_each_batch)
    return _counted(receiver, n, f"{label}, {n:,} identify", [sys.executable, "-c", script])


def _counted(receiver: RunningReceiver, n: int, name: str, command: list[str],
             env: dict[str, str] | None = None) -> Run:
    """`_run_measured`, checked: the receiver counted exactly `n` more messages."""
    before = receiver.count()
    seconds, rss = _run_measured(command, env or {})
    after = receiver.count()
    if after.messages - before.messages != n:
        raise SystemExit(f"{name}: the receiver counted {after.messages - before.messages:,} messages, "
                         f"expected {n:,}")
    print(f"{name}: {n / seconds:,.0f} msg/s, {rss:.0f} MB peak RSS", flush=True)
    return name, n, seconds, rss, after.batches - before.batches


def _crash_and_resume(path: Path, home: Path, n: int,
                      kill_at: tuple[float, ...] = KILL_AT) -> list[tuple[int, int]]:
    """Deliver `path` (planned first, as in the delivery phase) to a sandbox, SIGKILLed once the sandbox has
    each share of `kill_at` of it, then to the end: per kill, (received when killed, messages that then
    arrived twice)."""
    port = _free_port()
    sandbox = subprocess.Popen(
        [sys.executable, "-m", "segment_ops.cli", "sandbox", "--port", str(port), "--scale", "0.01"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base)
        kills, duplicates = [], 0
        for share in (*kill_at, None):
            script = _deliver_only_script(f"{base}/segment", path, home, plan=not kills)
            process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
            while share is not None and process.poll() is None and _stats(base)["received"] < n * share:
                time.sleep(0.005)
            if share is not None:
                process.send_signal(signal.SIGKILL)
            process.wait()
            stats = _stats(base)
            if kills:  # what the run after a kill sent twice
                kills[-1] = (kills[-1][0], stats.get("duplicates", 0) - duplicates)
            duplicates = stats.get("duplicates", 0)
            if share is not None:
                kills.append((stats["received"], 0))
    finally:
        sandbox.terminate()
        sandbox.wait(timeout=10)
    if stats["received"] != n:
        raise SystemExit(f"crash and resume: sandbox received {stats['received']:,} unique, expected {n:,}")
    return kills


def _stats(base: str) -> dict:
    return httpx.get(f"{base}/__sandbox__/stats").json()["segment"]


def _deliver_only_script(tracking_url: str, path: Path, home: Path, *, record_each_batch: bool = False,
                         plan: bool = True) -> str:
    # Plans first (untimed), then times deliver_pending alone and prints its seconds for the parent.
    return textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from segment_ops.clients.segment_tracking import SegmentTrackingClient
        from segment_ops.engine.delivery import deliver_pending
        from segment_ops.engine.ledger import Ledger
        from segment_ops.syncs.replay.reader import plan_file
        from segment_ops.engine.store import staging
        with staging(Path({str(home)!r}) / "replay.duckdb") as con:
            ledger = Ledger(con)
            if {plan!r}:
                plan_file(ledger, Path({str(path)!r}))
            client = SegmentTrackingClient({tracking_url!r}, {SANDBOX_SEGMENT_WRITE_KEY!r}, gzip=True)
            started = time.perf_counter()
            deliver_pending(ledger, "replay", client, record_each_batch={record_each_batch!r})
            print(f"DELIVERY_SECONDS={{time.perf_counter() - started}}")
    """)


def _official_script(host: str, n: int) -> str:
    # Default settings; when its queue (10,000) is full the library drops messages, so the loop waits
    # for room instead: we measure what it can deliver, not what it throws away.
    return textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
        from receiver import identify_call
        from segment.analytics.client import Client
        client = Client({SANDBOX_SEGMENT_WRITE_KEY!r}, host={host!r})
        for i in range({n}):
            call = identify_call(i)
            while client.queue.full():
                time.sleep(0.001)
            client.identify(call["userId"], call["traits"], timestamp=None)
        client.flush()
        client.join()
    """)


def _run_measured(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds (or the DELIVERY_SECONDS the child printed) and peak RSS (MB) of one child process."""
    started = time.perf_counter()
    process = subprocess.Popen(command, env={**os.environ, **env}, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    output = process.stdout.read().decode() if process.stdout else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command[:4])} failed:\n{output}")
    for line in output.splitlines():
        if line.startswith("DELIVERY_SECONDS="):
            seconds = float(line.split("=", 1)[1])
    return seconds, usage.ru_maxrss / 1024


def _wait_ready(base: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{base}/__sandbox__/stats", timeout=1).raise_for_status()
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit("sandbox did not start")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    sys.exit(main())
