"""Heap audiences benchmark: the webhook receiver's throughput, and apply + resolve + diff + plan at scale.

1. Receiver: signed pages of `--page-ids` ids POSTed over HTTP (one client, sequential, as Heap sends a
   sync) to the real receiver; prints pages/s and ids/s (each page fsynced before its 200). Pages are signed
   as Heap's reference generator signs them (ms timestamp, Base64 HMAC over the compact body), and a second
   pass sends them indented, so the receiver verifies each by its JSON.stringify re-serialisation.
2. Engine: one webhook sync of `--members` members (pages of 10,000 ids) applied to an audience whose
   identity map (CSV) maps every member, then a second sync with 1% churn. Delivery goes to a destination
   that accepts every batch without sending it, so the figures are the engine's own (plan, ledger,
   batching, snapshot) and peak RSS of the process.

    .venv/bin/python benchmarks/heap.py                       # 1M members
    .venv/bin/python benchmarks/heap.py --members 100000      # quicker
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import httpx
import orjson

from segment_ops.engine import store
from segment_ops.engine.identity import IdentitySource
from segment_ops.sandbox.heap.webhooks import heap_hash
from segment_ops.syncs.heap.audiences import Audience, AudiencesConfig, sync_audience
from segment_ops.syncs.heap.inbox import Inbox
from segment_ops.syncs.heap.receiver import WebhookConfig
from segment_ops.syncs.heap.server import start_receiver
from segment_ops.syncs.heap.webhook import SyncPage

SECRET = "benchmark-secret"


class NullDestination:
    """Accepts every batch (the engine's cost without the network)."""

    name, max_batch_bytes = "segment", 475_000

    def send_batch(self, payloads, *, on_retry=None) -> None:
        return None

    def close(self) -> None:
        return None


def bench_receiver(home: Path, pages: int, page_ids: int) -> None:
    for label, option in (("raw bytes signed", None), ("indented, compact form signed", orjson.OPT_INDENT_2)):
        task = f"bench-receiver {label}"
        with start_receiver(WebhookConfig(home=home, heap_secret=SECRET)) as receiver, httpx.Client() as http:
            started = time.perf_counter()
            for number in range(1, pages + 1):
                payload = {"action_type": "segment.users.sync", "data": {
                    "segment": {"id": 1, "name": "Bench"},
                    "sync_info": {"page_number": number, "total_pages": pages, "sync_task_id": task},
                    "add": [{"id": f"user{number}_{i}@example.com"} for i in range(page_ids)], "remove": []}}
                signed = orjson.dumps(payload)
                sent = signed if option is None else orjson.dumps(payload, option=option)
                header = heap_hash(SECRET, signed, time.time_ns() // 1_000_000)
                response = http.post(receiver.heap_url, content=sent, headers={"Heap-Hash": header})
                response.raise_for_status()
            seconds = time.perf_counter() - started
        print(f"receiver, {label}: {pages} pages of {page_ids:,} ids in {seconds:.2f}s = "
              f"{pages / seconds:,.0f} pages/s, {pages * page_ids / seconds:,.0f} ids/s")


def write_sync(inbox: Inbox, task: str, adds: list[str], removes: list[str], page_size: int = 10_000) -> None:
    changes = [("a", i) for i in adds] + [("r", i) for i in removes]
    chunks = [changes[i:i + page_size] for i in range(0, len(changes), page_size)]
    for number, chunk in enumerate(chunks, 1):
        inbox.store(SyncPage(task, number, len(chunks), 1, "Bench", tuple(i for k, i in chunk if k == "a"),
                             tuple(i for k, i in chunk if k == "r")))


def bench_engine(home: Path, members: int) -> None:
    ids = [f"member{i}@example.com" for i in range(members)]
    csv = home / "map.csv"
    with csv.open("w") as handle:
        handle.write("source_id,target_id\n")
        handle.writelines(f"{identity},usr_{i}\n" for i, identity in enumerate(ids))
    audience = Audience("bench", 1, "Bench", "heap_bench")
    config = AudiencesConfig(path=home / "bench.toml", audiences=(audience,),
                             identity=IdentitySource(csv=str(csv)), drop_guard_min_exits=members)
    inbox = Inbox.for_home(home)
    started = time.perf_counter()
    write_sync(inbox, "sync-1", ids, [])
    print(f"inbox: {members:,} ids written as pages in {time.perf_counter() - started:.2f}s")
    churn = members // 100
    for label, task, adds, removes in (("first sync", "sync-1", ids, []),
                                       ("1% churn", "sync-2", [f"new{i}@example.com" for i in range(churn)],
                                        ids[:churn])):
        if task == "sync-2":
            with csv.open("a") as handle:
                handle.writelines(f"new{i}@example.com,usr_new_{i}\n" for i in range(churn))
            write_sync(inbox, task, adds, removes)
        started = time.perf_counter()
        with store.staging(home / "staging" / "heap_bench.duckdb") as con:
            run = sync_audience(con, config, audience, route="webhook", inbox=inbox, warehouse_url="duckdb://",
                                client_factory=NullDestination)
        seconds = time.perf_counter() - started
        messages = run.delivery.delivered
        print(f"engine, {label}: {run.plan.added:,} entered, {run.plan.removed:,} exited, {messages:,} "
              f"messages in {seconds:.2f}s ({messages / seconds:,.0f} msg/s incl. apply, identity map, "
              "diff, ledger)")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of the process: {rss:,.0f} MB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=1_000_000)
    parser.add_argument("--pages", type=int, default=200)
    parser.add_argument("--page-ids", type=int, default=1_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        bench_receiver(Path(folder) / "receiver", args.pages, args.page_ids)
    with tempfile.TemporaryDirectory() as folder:
        bench_engine(Path(folder), args.members)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
