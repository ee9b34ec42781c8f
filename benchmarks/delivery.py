"""Delivery-engine benchmark: `segment-ops replay` vs Segment's official Python library.

Prints messages/s and peak RSS for N identify calls sent through `segment-ops replay` (each size in
its own process, measured with wait4), the delivery phase alone (the engine sending an already planned
ledger: the part comparable to the official library, which keeps no ledger), once more with each batch's
answer fsynced (`record_each_batch`, as the SIEM forwarding sends), and the same N_OFFICIAL calls sent by
segment-analytics-python with its default settings, all against one sandbox process on localhost. Every
run is checked against the sandbox's recorder: all messages arrived, none twice.

Then what a crash costs: the delivery phase of the first size is SIGKILLed once the sandbox has a
quarter, a half and three quarters of it, run again each time; the sandbox counts what arrived twice
(Segment drops those by messageId; a destination without dedupe would index them twice).

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

from segment_ops.config import SANDBOX_SEGMENT_WRITE_KEY

TARGET_RATIO = 10.0
TARGET_RSS_MB = 300.0
KILL_AT = (0.25, 0.5, 0.75)  # shares of the run received when `segment-ops replay` is SIGKILLed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated message counts for replay")
    parser.add_argument("--official", type=int, default=100_000, help="messages for the official library")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    with tempfile.TemporaryDirectory(prefix="segment-ops-bench-") as tmp:
        work = Path(tmp)
        port = _free_port()
        sandbox = subprocess.Popen(
            [sys.executable, "-m", "segment_ops.cli", "sandbox", "--port", str(port), "--scale", "0.01"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(base)
            results = []
            for n in sizes:
                path = _write_identify_file(work / f"identify_{n}.jsonl", n)
                _reset(base)
                seconds, rss = _run_measured(
                    [sys.executable, "-m", "segment_ops.cli", "replay", str(path)],
                    env={"SEGMENT_OPS_HOME": str(work / f"home_{n}"), "SEGMENT_OPS_SANDBOX_URL": base})
                _check_delivered(base, n, f"replay {n:,}")
                results.append((f"segment-ops replay, {n:,} identify", n, seconds, rss))
            n = sizes[0]
            phases = []
            for fsync, label in ((False, "engine delivery phase only"),
                                 (True, "delivery phase, record_each_batch")):
                _reset(base)
                script = _deliver_only_script(base, work / f"identify_{n}.jsonl", work / f"deliver_{fsync}",
                                              record_each_batch=fsync)
                seconds, rss = _run_measured([sys.executable, "-c", script], env={})
                _check_delivered(base, n, f"{label} {n:,}")
                phases.append((f"{label}, {n:,} identify", n, seconds, rss))
            crash = _crash_and_resume(base, work / f"identify_{n}.jsonl", work / "crash", n)
            _reset(base)
            seconds, rss = _run_measured([sys.executable, "-c", _official_script(base, args.official)],
                                         env={})
            _check_delivered(base, args.official, "official library")
            official = (f"segment-analytics-python (defaults), {args.official:,} identify", args.official,
                        seconds, rss)
        finally:
            sandbox.terminate()
            sandbox.wait(timeout=10)

    official_rate = official[1] / official[2]
    print(f"\n{'run':<52} {'msg/s':>10} {'seconds':>8} {'peak RSS MB':>12} {'vs official':>12}")
    for name, n, seconds, rss in [*results, *phases, official]:
        rate = n / seconds
        print(f"{name:<52} {rate:>10,.0f} {seconds:>8.1f} {rss:>12.0f} {rate / official_rate:>11.1f}x")
    print()
    for killed_at, twice in crash:
        print(f"delivery of {n:,} SIGKILLed at {killed_at:,} received, run again: {twice:,} sent twice")
    total = sum(twice for _, twice in crash)
    print(f"{len(crash)} kills: {total:,} sent twice, {total / len(crash):,.0f} a kill "
          f"({total / len(crash) / n:.2%} of the run)")
    print()
    ok = True
    for name, n, seconds, rss in results:
        ratio = (n / seconds) / official_rate
        rss_ok = rss < TARGET_RSS_MB
        print(f"target >= {TARGET_RATIO:.0f}x official throughput, {name}: {ratio:.1f}x "
              f"{'PASS' if ratio >= TARGET_RATIO else 'MISS'}; RSS < {TARGET_RSS_MB:.0f} MB: "
              f"{rss:.0f} MB {'PASS' if rss_ok else 'MISS'}")
        ok = ok and ratio >= TARGET_RATIO and rss_ok
    return 0 if ok else 1


def _write_identify_file(path: Path, n: int) -> Path:
    with path.open("wb") as out:
        for i in range(n):
            out.write(orjson.dumps({
                "type": "identify", "userId": f"usr_{i:08d}",
                "traits": {"email": f"user{i}@example.com", "name": f"User {i}",
                           "plan": ("free", "pro", "team")[i % 3], "seats": i % 50, "country": "DE"},
                "timestamp": "2024-06-01T12:00:00.000Z",
            }) + b"\n")
    return path


def _crash_and_resume(base: str, path: Path, home: Path, n: int,
                      kill_at: tuple[float, ...] = KILL_AT) -> list[tuple[int, int]]:
    """Deliver `path` (planned first, as in the delivery phase), SIGKILLed once the sandbox has each share of
    `kill_at` of it, then to the end: per kill, (received when killed, messages that then arrived twice)."""
    _reset(base)
    kills, duplicates = [], 0
    for share in (*kill_at, None):
        command = [sys.executable, "-c", _deliver_only_script(base, path, home, plan=not kills)]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
    if stats["received"] != n:
        raise SystemExit(f"crash and resume: sandbox received {stats['received']:,} unique, expected {n:,}")
    return kills


def _stats(base: str) -> dict:
    return httpx.get(f"{base}/__sandbox__/stats").json()["segment"]


def _deliver_only_script(base: str, path: Path, home: Path, *, record_each_batch: bool = False,
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
            client = SegmentTrackingClient({base + "/segment"!r}, {SANDBOX_SEGMENT_WRITE_KEY!r})
            started = time.perf_counter()
            deliver_pending(ledger, "replay", client, record_each_batch={record_each_batch!r})
            print(f"DELIVERY_SECONDS={{time.perf_counter() - started}}")
    """)


def _official_script(base: str, n: int) -> str:
    # Default settings; when its queue (10,000) is full the library drops messages, so the loop waits
    # for room instead: we measure what it can deliver, not what it throws away.
    return textwrap.dedent(f"""
        import time
        from segment.analytics.client import Client
        client = Client({SANDBOX_SEGMENT_WRITE_KEY!r}, host={base + "/segment"!r})
        for i in range({n}):
            traits = {{"email": f"user{{i}}@example.com", "name": f"User {{i}}",
                      "plan": ("free", "pro", "team")[i % 3], "seats": i % 50, "country": "DE"}}
            while client.queue.full():
                time.sleep(0.001)
            client.identify(f"usr_{{i:08d}}", traits, timestamp=None)
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


def _check_delivered(base: str, n: int, label: str) -> None:
    stats = _stats(base)
    unique, duplicates = stats["received"], stats.get("duplicates", 0)
    if unique != n:
        raise SystemExit(f"{label}: sandbox received {unique:,} unique messages, expected {n:,}")
    print(f"{label}: {unique:,} unique messages received, {duplicates} duplicates", flush=True)


def _reset(base: str) -> None:
    httpx.post(f"{base}/__sandbox__/reset").raise_for_status()


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
