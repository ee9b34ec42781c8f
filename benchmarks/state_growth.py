"""State growth benchmark: does a reverse-ETL run slow down as its history accumulates?

Builds a DuckDB warehouse with a `customers` table of N rows, syncs it once (every row delivered to a
destination that accepts everything), then runs DAYS daily syncs in which a different 1% of the rows
changed (stage, diff, plan, deliver, advance the snapshot: the whole engine step, in this process). For
each day it prints the step's seconds, the staging file's size and the rows of the state tables. Then the
2nd and the last day are run three times more, alternately, each from a copy of its own starting state
(staging file and warehouse), and the medians are compared: a run should cost what the day's change costs,
not what the history holds.

    .venv/bin/python benchmarks/state_growth.py                    # 1,000,000 rows, 1% a day, 30 days
    .venv/bin/python benchmarks/state_growth.py --rows 200000 --days 10
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reverse_etl import _BUILD, MODEL  # noqa: E402  (the same warehouse and model as the diff benchmark)

from segment_ops.engine.store import staging  # noqa: E402
from segment_ops.syncs.reverse_etl.model import parse_model  # noqa: E402
from segment_ops.syncs.reverse_etl.sync import sync_model  # noqa: E402

TARGET_RATIO = 1.2
TRIES = 3
STATE_TABLES = ("planned_messages", "outcomes", "rejected", "rev_snapshot", "rev_changes")


class NullDestination:
    """Accepts every batch at once: the benchmark measures the engine, not a wire."""

    name, max_batch_bytes = "segment", 475_000

    def send_batch(self, payloads, *, on_retry=None) -> None:
        pass

    def close(self) -> None:
        pass


def change_day(warehouse: Path, day: int, every: int) -> int:
    """Change a different 1/`every` of the rows for `day` (by a hash of the key and the day)."""
    con = duckdb.connect(str(warehouse))
    try:
        return con.execute(
            "UPDATE customers SET plan = 'day ' || $day, updated_at = now() "
            "WHERE hash(user_id || $day) % $every = 0", {"day": day, "every": every}).fetchone()[0]
    finally:
        con.close()


def sync_once(staging_file: Path, model, url: str) -> float:
    started = time.perf_counter()
    with staging(staging_file) as con:
        sync_model(con, model, url, NullDestination, run_id=f"bench-{time.time_ns()}")
    seconds = time.perf_counter() - started
    return seconds


def state_rows(staging_file: Path) -> dict[str, int]:
    con = duckdb.connect(str(staging_file), read_only=True)
    try:
        tables = {row[0] for row in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in STATE_TABLES if t in tables}
    finally:
        con.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--changed", type=float, default=0.01, help="share of rows changed each day")
    parser.add_argument("--keep", type=Path, default=None, metavar="DIR",
                        help="work in DIR (a new folder) and keep the warehouse and the staging file there")
    args = parser.parse_args()
    if args.days < 3:
        parser.error("--days must be 3 or more (day 2 is compared with the last day)")
    every = max(1, round(1 / args.changed))
    with tempfile.TemporaryDirectory(prefix="segment-ops-bench-growth-") as tmp:
        work = Path(tmp) if args.keep is None else args.keep  # (the empty temporary folder goes unused)
        work.mkdir(parents=True, exist_ok=True)
        warehouse, model_file = work / "warehouse.duckdb", work / "big_traits.sql"
        staging_file = work / "staging.duckdb"
        model_file.write_text(MODEL)
        exec(_BUILD.format(warehouse=str(warehouse), n=args.rows))
        model, url = parse_model(model_file), f"duckdb:///{warehouse}"
        first = sync_once(staging_file, model, url)
        print(f"day 1: all {args.rows:,} rows delivered in {first:.1f}s", flush=True)
        print(f"{'day':>4} {'changed':>8} {'seconds':>8} {'state MB':>9}  state rows")
        kept: dict[int, tuple[Path, Path]] = {}  # day -> (staging file before it, warehouse on that day)
        for day in range(2, args.days + 1):
            changed = change_day(warehouse, day, every)
            timed = day in (2, args.days)
            if timed:
                kept[day] = (work / f"staging_before_day{day}.duckdb", work / f"warehouse_day{day}.duckdb")
                shutil.copy(staging_file, kept[day][0])
                shutil.copy(warehouse, kept[day][1])
            seconds = sync_once(staging_file, model, url)
            rows = state_rows(staging_file)
            size = staging_file.stat().st_size / 1e6
            shown = ", ".join(f"{t} {n:,}" for t, n in rows.items())
            print(f"{day:>4} {changed:>8,} {seconds:>8.2f} {size:>9.1f}  {shown}", flush=True)
        # Day 2 and the last day again, alternately, each from its own starting state: drift of the machine
        # over the whole run (other load, page cache) then falls on both alike.
        tries: dict[int, list[float]] = {day: [] for day in kept}
        for _ in range(TRIES):
            for day, (before, day_warehouse) in kept.items():
                shutil.copy(before, work / "retry.duckdb")
                tries[day].append(sync_once(work / "retry.duckdb", model, f"duckdb:///{day_warehouse}"))
        medians = {day: statistics.median(times) for day, times in tries.items()}
        print("\nagain, alternately: " + "; ".join(
            f"day {day} " + ", ".join(f"{t:.2f}" for t in times) + " s" for day, times in tries.items()))
    ratio = medians[args.days] / medians[2]
    passed = ratio <= TARGET_RATIO
    print(f"{'PASS' if passed else 'MISS'}  day {args.days} within {TARGET_RATIO}x of day 2 (medians of "
          f"{TRIES}): {medians[args.days]:.2f}s / {medians[2]:.2f}s = {ratio:.2f}x")
    print(f"peak RSS of this process (building the warehouse and day 1 included): "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
