"""State backend benchmark: a reverse-ETL run with its state in PostgreSQL against the DuckDB-state run.

Builds the warehouse of `state_growth.py` (a `customers` table of N rows) and runs its engine step (stage,
diff, plan, deliver to a destination that accepts everything, advance the snapshot) in this process:

- day 1, the first run (every row delivered), once with the state in the DuckDB file alone (the default)
  and once with SEGMENT_OPS_STATE_URL set (a fresh database and a fresh home: the run's file is adopted and
  checked in whole);
- then a different 1% of the rows changed, and day 2 run REPEAT times for each of: the DuckDB state; the
  PostgreSQL state with a warm cache (the day-1 home, its file at the database's generation); the
  PostgreSQL state with a cold cache (a fresh home: the file is rebuilt from PostgreSQL first). The three
  alternate, each from its own day-1 state (a copy of the home; the database re-made from a template
  database saved after day 1), and the medians are compared. Nothing vacuums or analyzes the database between
  the days (autovacuum would, a minute after day 1, on a server that has it on: the output names the
  server's setting).

For the PostgreSQL runs it prints the checkout (lock, rebuild when behind) and check-in (hash diff, COPY of
the changed rows) seconds and the rows the check-in wrote and deleted. The exit status is 0 when the warm
PostgreSQL run (a worker that keeps its home, the every-day case) is within 2x of the DuckDB one; the cold
run's ratio is printed beside it; a run that fails (an error in the sync, the checkout or the check-in)
is reported, the others go on, and the exit status is 1. A scratch database is created on the PostgreSQL
server and dropped.

    .venv/bin/python benchmarks/state_backend.py                  # 1,000,000 rows, 1% changed, 3 repeats
    .venv/bin/python benchmarks/state_backend.py --rows 100000
    .venv/bin/python benchmarks/state_backend.py --postgres postgresql://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reverse_etl import _BUILD, MODEL  # noqa: E402  (the same warehouse and model as the diff benchmark)
from state_growth import change_day, sync_once  # noqa: E402

from segment_ops.engine import pgstate  # noqa: E402
from segment_ops.syncs.reverse_etl.model import parse_model  # noqa: E402

TARGET_RATIO = 2.0
SYNC = "big_traits"  # the staging file's stem names the sync (and its schema in PostgreSQL)
RUNS = {"duckdb": "DuckDB state", "pg_warm": "PostgreSQL state, warm cache",
        "pg_cold": "PostgreSQL state, cold cache"}


@dataclass
class Run:
    seconds: float
    checkout: float = 0.0  # pgstate.checkout: read the file's generation, rebuild it when behind
    checkin: float = 0.0  # pgstate.checkin: hash diff in DuckDB, COPY to PostgreSQL, commit
    checkins: int = 0  # at the end, and while a long delivery runs (SEGMENT_OPS_STATE_CHECKPOINT_SECONDS)
    rows_written: int = 0  # by all the check-ins
    rows_deleted: int = 0
    error: str | None = None  # the run failed: the exception, and where


class _Phases:
    """Times pgstate's checkout and checkin (looked up as module attributes at each session and checkpoint)
    and adds up the check-ins' reports, which `store.staging` does not return."""

    def __init__(self) -> None:
        self.run = Run(0.0)
        checkout, checkin = pgstate.checkout, pgstate.checkin

        def timed_checkout(*args, **kwargs):
            started = time.perf_counter()
            try:
                return checkout(*args, **kwargs)
            except BaseException:
                self.run.error = "in the checkout"
                raise
            finally:
                self.run.checkout += time.perf_counter() - started

        def timed_checkin(*args, **kwargs):
            started = time.perf_counter()
            try:
                report = checkin(*args, **kwargs)
                self.run.checkins += 1
                self.run.rows_written += report.rows_written
                self.run.rows_deleted += report.rows_deleted
                return report
            except BaseException:
                self.run.error = "in the check-in"
                raise
            finally:
                self.run.checkin += time.perf_counter() - started

        pgstate.checkout, pgstate.checkin = timed_checkout, timed_checkin


class Databases:
    """Scratch databases on the server of `admin_url` (connected to a maintenance database)."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.admin = psycopg.connect(admin_url, autocommit=True)
        self.made: list[str] = []

    def url(self, name: str) -> str:
        return make_conninfo(self.admin_url, dbname=name)

    def create(self, name: str, template: str | None = None) -> None:
        self.admin.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        self.made.append(name)

    def drop(self, name: str) -> None:
        self.admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def server(self) -> str:
        version, autovacuum = self.admin.execute("SELECT current_setting('server_version'), "
                                                 "current_setting('autovacuum')").fetchone()
        return f"PostgreSQL {version}, autovacuum {autovacuum}"

    def size(self, name: str) -> int:
        return self.admin.execute("SELECT pg_database_size(%s)", [name]).fetchone()[0]

    def state(self, name: str) -> tuple[int, dict[str, int]]:
        """Bytes of the sync's schema (tables with their indexes and TOAST) and the rows of each table."""
        with psycopg.connect(self.url(name), autocommit=True) as con:
            size = con.execute("SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                               "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s "
                               "AND c.relkind = 'r'", [pgstate.pg_schema(SYNC)]).fetchone()
            rows = con.execute(f"SELECT name, rows FROM {pgstate.CATALOG}.objects WHERE sync = %s "
                               "AND kind = 'table' AND rows > 0 ORDER BY rows DESC", [SYNC]).fetchall()
        return int(size[0]), dict(rows)

    def close(self) -> None:
        for name in reversed(self.made):
            self.drop(name)
        self.admin.close()


def staging_file(home: Path) -> Path:
    return home / "staging" / f"{SYNC}.duckdb"


def file_mb(home: Path) -> float:
    path = staging_file(home)
    wal = path.with_name(path.name + ".wal")
    return (path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)) / 1e6


def run(phases: _Phases, home: Path, model, warehouse_url: str, state_url: str | None) -> Run:
    """One engine step on `home`'s staging file, with the state in PostgreSQL when `state_url` is set. A
    failed run is returned with its error (and the seconds until it failed), not raised."""
    phases.run = Run(0.0)
    if state_url is None:
        os.environ.pop(pgstate.STATE_URL, None)
    else:
        os.environ[pgstate.STATE_URL] = state_url
    started = time.perf_counter()
    try:
        phases.run.seconds = sync_once(staging_file(home), model, warehouse_url)
    except Exception as exc:
        phases.run.seconds = time.perf_counter() - started
        first = (str(exc).strip().splitlines() or [""])[0]
        where = f" {phases.run.error}" if phases.run.error else ""
        phases.run.error = f"{type(exc).__name__}{where}: {first}"
    finally:
        os.environ.pop(pgstate.STATE_URL, None)
    return phases.run


def written(result: Run) -> str:
    checkins = f" in {result.checkins} check-ins" if result.checkins != 1 else ""
    return f"{result.rows_written:,} rows written, {result.rows_deleted:,} deleted{checkins}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--changed", type=float, default=0.01, help="share of rows changed on day 2")
    parser.add_argument("--repeat", type=int, default=3, help="day-2 runs of each kind (the median counts)")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres", metavar="URL",
                        help="a maintenance database of the server to make the scratch databases on")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be 1 or more")
    every = max(1, round(1 / args.changed))
    os.environ.pop(pgstate.STATE_URL, None)  # the benchmark sets it around the PostgreSQL runs only
    phases = _Phases()
    dbs = Databases(args.postgres)
    db, saved = f"segment_ops_bench_{os.getpid()}", f"segment_ops_bench_{os.getpid()}_day1"
    try:
        with tempfile.TemporaryDirectory(prefix="segment-ops-bench-backend-") as tmp:
            work = Path(tmp)
            warehouse, model_file = work / "warehouse.duckdb", work / "big_traits.sql"
            model_file.write_text(MODEL)
            started = time.perf_counter()
            exec(_BUILD.format(warehouse=str(warehouse), n=args.rows))
            print(f"setup: warehouse of {args.rows:,} rows built in {time.perf_counter() - started:.1f}s",
                  flush=True)
            model, url = parse_model(model_file), f"duckdb:///{warehouse}"
            print(f"setup: {dbs.server()}; the check-ins' checkpoint every "
                  f"{pgstate.checkpoint_seconds():g} s ({pgstate.CHECKPOINT_SETTING})", flush=True)
            dbs.create(db)
            state_url = dbs.url(db)
            empty_db = dbs.size(db)

            duck_home, pg_home = work / "duckdb_day1", work / "pg_day1"
            first = {"duckdb": run(phases, duck_home, model, url, None),
                     "pg": run(phases, pg_home, model, url, state_url)}
            for kind, result in first.items():
                if result.error:
                    raise SystemExit(f"day 1 with the {kind} state failed: {result.error}")
            print(f"\nday 1, all {args.rows:,} rows delivered:")
            print(f"  {RUNS['duckdb']:<30} {first['duckdb'].seconds:7.2f} s")
            pg1 = first["pg"]
            rest = pg1.seconds - pg1.checkout - pg1.checkin
            print(f"  {'PostgreSQL state (fresh)':<30} {pg1.seconds:7.2f} s  = checkout {pg1.checkout:.2f} s"
                  f" + the rest {rest:.2f} s + check-in {pg1.checkin:.2f} s;"
                  f" {written(pg1)}", flush=True)
            ratio1 = pg1.seconds / first["duckdb"].seconds
            print(f"  PostgreSQL / DuckDB: {ratio1:.2f}x")
            sizes = {"day 1": (file_mb(duck_home), file_mb(pg_home), dbs.size(db), *dbs.state(db))}
            dbs.create(saved, template=db)  # the day-1 database, to start each day-2 run from

            changed = change_day(warehouse, 2, every)
            tries: dict[str, list[Run]] = {kind: [] for kind in RUNS}
            home = work / "home"
            sizes["day 2"] = (None, None, None, None, {})
            for _ in range(args.repeat):
                for kind in RUNS:  # alternately: drift of the machine falls on all three alike
                    shutil.rmtree(home, ignore_errors=True)
                    if kind == "duckdb":
                        shutil.copytree(duck_home, home)
                    else:
                        dbs.drop(db)
                        dbs.create(db, template=saved)
                        if kind == "pg_warm":
                            shutil.copytree(pg_home, home)
                        else:
                            home.mkdir()  # a fresh SEGMENT_OPS_HOME: the file is rebuilt from PostgreSQL
                    result = run(phases, home, model, url, None if kind == "duckdb" else state_url)
                    tries[kind].append(result)
                    if result.error:
                        print(f"  (day 2, {RUNS[kind]}: failed after {result.seconds:.2f} s: {result.error})",
                              flush=True)
                    elif kind == "duckdb":
                        sizes["day 2"] = (file_mb(home), *sizes["day 2"][1:])
                    elif kind == "pg_warm":
                        sizes["day 2"] = (sizes["day 2"][0], file_mb(home), dbs.size(db), *dbs.state(db))
    finally:
        os.environ.pop(pgstate.STATE_URL, None)
        dbs.close()

    done = {kind: [r for r in runs if not r.error] for kind, runs in tries.items()}
    medians = {kind: statistics.median(r.seconds for r in runs) for kind, runs in done.items() if runs}
    print(f"\nday 2, {changed:,} rows changed; {args.repeat} runs of each, alternately, each from its day-1 "
          "state (medians):")
    for kind, runs in tries.items():
        shown = ", ".join(f"{r.seconds:.2f}" + (" failed" if r.error else "") for r in runs)
        if kind not in medians:
            print(f"  {RUNS[kind]:<30}  failed  ({shown}): {runs[-1].error}")
            continue
        line = f"  {RUNS[kind]:<30} {medians[kind]:7.2f} s  ({shown})"
        if kind != "duckdb":
            checkout = statistics.median(r.checkout for r in done[kind])
            checkin = statistics.median(r.checkin for r in done[kind])
            line += (f"  = checkout {checkout:.2f} s + the rest {medians[kind] - checkout - checkin:.2f} s"
                     f" + check-in {checkin:.2f} s (medians); {written(done[kind][-1])}")
        print(line)
    passed = all(not r.error for runs in tries.values() for r in runs)
    for kind in ("pg_warm", "pg_cold"):
        if kind not in medians or "duckdb" not in medians:
            print(f"FAIL  {RUNS[kind]} against the DuckDB state: no ratio, every day-2 run of "
                  f"{'the DuckDB state' if kind in medians else 'it'} failed")
            continue
        ratio = medians[kind] / medians["duckdb"]
        verdict = "PASS" if ratio <= TARGET_RATIO else "MISS"
        passed &= kind != "pg_warm" or ratio <= TARGET_RATIO
        print(f"{verdict}  {RUNS[kind]} within {TARGET_RATIO}x of the DuckDB state (medians of "
              f"{len(done[kind])}): {medians[kind]:.2f}s / {medians['duckdb']:.2f}s = {ratio:.2f}x"
              + ("" if kind == "pg_warm" else "  (not the exit status)"))

    print("\nstate size:")
    for day, (duck_mb, pg_mb, db_size, schema_size, pg_rows) in sizes.items():
        if duck_mb is None or pg_mb is None:
            print(f"  after {day}: not measured (a run failed)")
            continue
        print(f"  after {day}: DuckDB file {duck_mb:.1f} MB; PostgreSQL database {db_size / 1e6:.1f} MB "
              f"(pg_database_size; {empty_db / 1e6:.1f} MB when empty), the sync's tables with their indexes "
              f"{schema_size / 1e6:.1f} MB, its cache file {pg_mb:.1f} MB")
        print("    rows in PostgreSQL: " + ", ".join(f"{t} {n:,}" for t, n in pg_rows.items()))
    print(f"peak RSS of this process (building the warehouse and all the runs included): "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
