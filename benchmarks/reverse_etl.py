"""Reverse-ETL benchmark: stage + diff + plan of a 1,000,000-row model when 1% of rows changed.

Builds a DuckDB warehouse with a `customers` table of N rows, syncs it once (delivery to a destination
that accepts everything, so the snapshot holds all N rows), changes 1% of the rows, and then measures,
each in its own process (wall time and peak RSS from wait4):

- segment-ops: stage the model's query into the staging file (DuckDB fast path), diff against the
  delivered snapshot, validate, build the payloads of the changes and plan them in the ledger;
- the same through the generic streaming path (rows through a DB-API cursor in chunks, as any other
  warehouse is read) on the DuckDB file and, with `--postgres`, on a copy of the table in PostgreSQL;
- a straightforward pandas diff of the same model: load the query's result and the previous snapshot
  (kept as Parquet), merge on the key, compare the mapped columns - once loading the result with
  `pandas.read_sql` through SQLAlchemy (the generic way), once through DuckDB -> Arrow -> pandas (the
  fastest load pandas can get from a DuckDB warehouse). The pandas runs only diff: they build no payloads
  and plan nothing, so the comparison favours pandas.

    .venv/bin/python benchmarks/reverse_etl.py                  # 1,000,000 rows, 1% changed
    .venv/bin/python benchmarks/reverse_etl.py --rows 200000    # quicker
    .venv/bin/python benchmarks/reverse_etl.py --postgres postgresql://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

TARGET_RATIO = 5.0
TARGET_SECONDS = 10.0
TARGET_RSS_MB = 500.0

MODEL = """\
-- description: Profile traits of every customer (benchmark model).
-- owner: team:data-platform
-- call: identify
-- mode: upsert
-- key: user_id
-- user_id: user_id
-- exclude: updated_at
SELECT user_id, email, name, plan, country, account_id, lifetime_value, created_at, updated_at FROM customers
"""
MAPPED = ["email", "name", "plan", "country", "account_id", "lifetime_value", "created_at"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--changed", type=float, default=0.01,
                        help="share of rows changed after the first sync")
    parser.add_argument("--postgres", default=None, metavar="URL",
                        help="also run the generic path against this PostgreSQL (a scratch schema is created "
                             "and dropped), e.g. postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    n, every = args.rows, max(1, round(1 / args.changed))

    with tempfile.TemporaryDirectory(prefix="segment-ops-bench-retl-") as tmp:
        work = Path(tmp)
        warehouse, model_file, staging_file = (work / "warehouse.duckdb", work / "big_traits.sql",
                                               work / "staging.duckdb")
        snapshot = str(work / "snapshot.parquet")
        model_file.write_text(MODEL)
        started = time.perf_counter()
        _run([sys.executable, "-c", _BUILD.format(warehouse=str(warehouse), n=n, snapshot=snapshot)])
        print(f"setup: warehouse of {n:,} rows built in {time.perf_counter() - started:.1f}s", flush=True)
        started = time.perf_counter()
        out = _run([sys.executable, "-c", _FIRST_SYNC.format(warehouse=str(warehouse), model=str(model_file),
                                                             staging=str(staging_file))])
        print(f"setup: first sync (all {n:,} rows planned, delivered to a null destination, snapshot "
              f"advanced) in {time.perf_counter() - started:.1f}s: {out.strip()}", flush=True)
        _run([sys.executable, "-c", _CHANGE.format(warehouse=str(warehouse), every=every)])
        changed = n // every
        urls = {"duckdb": f"duckdb:///{warehouse}"}
        schema = f"segment_ops_bench_{os.getpid()}"
        if args.postgres:
            started = time.perf_counter()
            _run([sys.executable, "-c", _TO_POSTGRES.format(warehouse=str(warehouse), pg=args.postgres,
                                                            schema=schema, csv=str(work / "customers.csv"))])
            urls["postgres"] = (f"{args.postgres.replace('postgresql://', 'postgresql+psycopg://')}"
                                f"?options=-csearch_path%3D{schema}")
            print(f"setup: copied to PostgreSQL schema {schema} in {time.perf_counter() - started:.1f}s",
                  flush=True)

        runs = [("ours_fast", "segment-ops, DuckDB attach (fast path)", urls["duckdb"], True),
                ("ours_generic", "segment-ops, DuckDB via DB-API stream", urls["duckdb"], False),
                ("pandas_fast", "pandas diff, DuckDB -> Arrow load", urls["duckdb"], "duckdb"),
                ("pandas_sql", "pandas diff, DuckDB via pandas.read_sql", urls["duckdb"], "read_sql")]
        if args.postgres:
            runs += [("ours_pg", "segment-ops, PostgreSQL via SQLAlchemy", urls["postgres"], False),
                     ("pandas_pg", "pandas diff, PostgreSQL via pandas.read_sql", urls["postgres"],
                      "read_sql")]
        results: dict[str, tuple[str, float, float]] = {}
        try:
            for name, label, url, option in runs:
                if name.startswith("ours"):
                    copy = work / f"staging_{name}.duckdb"
                    shutil.copy(staging_file, copy)
                    code = _OURS.format(url=url, model=str(model_file), staging=str(copy), fast=option)
                else:
                    code = _PANDAS.format(url=url, warehouse=str(warehouse), snapshot=snapshot, loader=option,
                                          mapped=MAPPED)
                seconds, rss, out = _measured([sys.executable, "-c", code])
                print(f"{label}: {_shown(out).strip()}", flush=True)
                _expect(out, changed, label)
                results[name] = (label, seconds, rss)
        finally:
            if args.postgres:
                _run([sys.executable, "-c",
                      f"import psycopg; psycopg.connect({args.postgres!r}, autocommit=True)"
                      f".execute('DROP SCHEMA IF EXISTS {schema} CASCADE')"])

    print(f"\n{n:,} rows, {changed:,} changed ({args.changed:.0%}); seconds exclude interpreter start and "
          "imports")
    print(f"{'run':<46} {'seconds':>8} {'peak RSS MB':>12}")
    for label, seconds, rss in results.values():
        print(f"{label:<46} {seconds:>8.2f} {rss:>12.0f}")
    print()
    _, fast, fast_rss = results["ours_fast"]
    checks = [
        (f"stage+diff+plan under {TARGET_SECONDS:.0f} s (DuckDB warehouse, fast path)", f"{fast:.2f} s",
         fast < TARGET_SECONDS),
        (f"peak RSS under {TARGET_RSS_MB:.0f} MB (fast path)", f"{fast_rss:.0f} MB",
         fast_rss < TARGET_RSS_MB),
        (f">= {TARGET_RATIO:.0f}x faster than the pandas diff loading with pandas.read_sql",
         f"{results['pandas_sql'][1] / fast:.1f}x", results["pandas_sql"][1] / fast >= TARGET_RATIO),
        (f">= {TARGET_RATIO:.0f}x faster than the pandas diff loading through DuckDB -> Arrow",
         f"{results['pandas_fast'][1] / fast:.1f}x", results["pandas_fast"][1] / fast >= TARGET_RATIO),
    ]
    ok = True
    for name, value, passed in checks:
        ok &= passed
        print(f"{'PASS' if passed else 'MISS'}  {name}: {value}")
    print("info  generic path (rows through a DB-API driver) vs pandas.read_sql on the same warehouse: "
          + ", ".join(f"{where} {results[p][1] / results[o][1]:.1f}x, {results[o][2]:.0f} MB vs "
                      f"{results[p][2]:.0f} MB"
                      for where, o, p in (("DuckDB", "ours_generic", "pandas_sql"),
                                          ("PostgreSQL", "ours_pg", "pandas_pg"))
                      if o in results))
    return 0 if ok else 1


_BUILD = textwrap.dedent("""
    import duckdb
    con = duckdb.connect({warehouse!r})
    con.execute('''
        CREATE TABLE customers AS
        SELECT 'usr_' || lpad(i::VARCHAR, 8, '0') AS user_id,
               'user' || i || '@example.com' AS email,
               'Name ' || i AS name,
               ['free', 'starter', 'pro', 'enterprise'][1 + i % 4] AS plan,
               ['US', 'DE', 'FR', 'GB', 'IN', 'BR'][1 + i % 6] AS country,
               'acc_' || lpad((i // 20)::VARCHAR, 6, '0') AS account_id,
               ((i * 37) % 100000 / 100.0)::DECIMAL(12, 2) AS lifetime_value,
               TIMESTAMPTZ '2024-01-01 00:00:00+00' + to_milliseconds(i * 1000 + i % 997) AS created_at,
               TIMESTAMPTZ '2025-01-01 00:00:00+00' + to_milliseconds(i * 1000) AS updated_at
        FROM range({n}) t(i)
    ''')
    # The pandas implementation keeps its "last delivered" rows as Parquet.
    con.execute("COPY customers TO {snapshot!r} (FORMAT parquet)")
    con.close()
""")

_FIRST_SYNC = textwrap.dedent("""
    from segment_ops.syncs.reverse_etl.model import parse_model
    from segment_ops.syncs.reverse_etl.sync import sync_model
    from segment_ops.engine.store import staging

    class NullDestination:
        name, max_batch_bytes = "segment", 475_000
        def send_batch(self, payloads, *, on_retry=None):
            pass
        def close(self):
            pass

    with staging({staging!r}) as con:
        run = sync_model(con, parse_model({model!r}), "duckdb:///{warehouse}", NullDestination)
    print(f"planned {{run.plan.planned:,}}, delivered {{run.delivery.delivered:,}}, "
          f"snapshot {{run.advanced:,}}")
""")

_CHANGE = textwrap.dedent("""
    import duckdb
    con = duckdb.connect({warehouse!r})
    con.execute("UPDATE customers SET plan = 'changed', updated_at = now() "
                "WHERE substr(user_id, 5)::INTEGER % {every} = 0")
    con.close()
""")

_OURS = textwrap.dedent("""
    import time
    started = time.perf_counter()
    from segment_ops.engine.diff import ensure_state, plan_changes
    from segment_ops.engine.ledger import Ledger
    from segment_ops.syncs.reverse_etl.model import parse_model
    from segment_ops.syncs.reverse_etl.sync import STAGED_TABLE
    from segment_ops.engine.store import staging
    from segment_ops.engine.warehouse import stage_query

    model = parse_model({model!r})
    imported = time.perf_counter()
    with staging({staging!r}) as con:
        con.execute("SET enable_progress_bar = false")
        ledger = Ledger(con)
        ensure_state(con)
        staged = stage_query(con, {url!r}, model.sql, STAGED_TABLE, fast_path={fast})
        plan = plan_changes(con, ledger, model.diff_spec, staged, run_id="bench")
    done = time.perf_counter()
    print(f"stage {{staged.seconds:.2f}}s + diff/validate/plan {{plan.seconds:.2f}}s "
          f"(imports {{imported - started:.2f}}s): rows {{plan.rows_read:,}}, changed {{plan.changed:,}}, "
          f"planned {{plan.planned:,}}")
    print(f"CHANGED={{plan.changed}}")
    print(f"SECONDS={{done - imported}}")
""")

_PANDAS = textwrap.dedent("""
    import time
    import warnings
    warnings.simplefilter("ignore")
    started = time.perf_counter()
    import numpy as np
    import pandas as pd
    QUERY = ("SELECT user_id, email, name, plan, country, account_id, lifetime_value, created_at, updated_at "
             "FROM customers")
    mapped = {mapped!r}
    imported = time.perf_counter()
    if {loader!r} == "duckdb":
        import duckdb
        con = duckdb.connect({warehouse!r}, read_only=True)
        current = con.execute(QUERY).df()
        con.close()
    else:
        import sqlalchemy as sa
        url = {url!r}
        engine = sa.create_engine(url,
                                  connect_args={{"read_only": True}} if url.startswith("duckdb") else {{}})
        if url.startswith("duckdb"):
            sa.event.listen(engine, "connect", lambda c, _: c.execute("SET enable_progress_bar = false"))
        with engine.connect() as conn:
            current = pd.read_sql(sa.text(QUERY), conn)
        engine.dispose()
    loaded = time.perf_counter()
    previous = pd.read_parquet({snapshot!r})
    for frame in (current, previous):  # DECIMAL arrives as float64 from DuckDB, as Decimal objects otherwise
        for column in mapped:
            if frame[column].dtype == object:
                frame[column] = pd.to_numeric(frame[column])
    null_keys = int(current["user_id"].isna().sum())
    duplicated = int(current["user_id"].duplicated(keep=False).sum())
    merged = current.merge(previous, on="user_id", how="outer", suffixes=("", "_prev"), indicator=True)
    added = int((merged["_merge"] == "left_only").sum())
    removed = int((merged["_merge"] == "right_only").sum())
    both = merged[merged["_merge"] == "both"]
    differs = np.zeros(len(both), dtype=bool)
    for column in mapped:
        now, before = both[column], both[column + "_prev"]
        differs |= ~((now == before) | (now.isna() & before.isna())).to_numpy()
    changed = int(differs.sum())
    done = time.perf_counter()
    print(f"load {{loaded - imported:.2f}}s + snapshot, merge, compare {{done - loaded:.2f}}s: "
          f"rows {{len(current):,}}, added {{added:,}}, changed {{changed:,}}, removed {{removed:,}}, "
          f"null keys {{null_keys}}, duplicated {{duplicated}}")
    print(f"CHANGED={{changed}}")
    print(f"SECONDS={{done - imported}}")
""")


_TO_POSTGRES = textwrap.dedent("""
    import duckdb, psycopg
    duckdb.connect({warehouse!r}, read_only=True).execute("COPY customers TO {csv!r} (HEADER false)")
    with psycopg.connect({pg!r}, autocommit=True) as pg:
        pg.execute("CREATE SCHEMA {schema}")
        pg.execute("CREATE TABLE {schema}.customers (user_id text, email text, name text, plan text, "
                   "country text, account_id text, lifetime_value numeric(12,2), created_at timestamptz, "
                   "updated_at timestamptz)")
        with (pg.cursor().copy("COPY {schema}.customers FROM STDIN (FORMAT csv)") as copy,
              open({csv!r}, "rb") as f):
            while block := f.read(1 << 20):
                copy.write(block)
        pg.execute("ANALYZE {schema}.customers")
""")


def _run(command: list[str]) -> str:
    process = subprocess.run(command, capture_output=True, text=True)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command[:2])} failed:\n{process.stdout}\n{process.stderr}")
    return process.stdout


def _measured(command: list[str]) -> tuple[float, float, str]:
    """Seconds (the SECONDS= line the child prints: work after imports), peak RSS (MB), output of one
    child."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               env=os.environ.copy())
    output = process.stdout.read().decode() if process.stdout else ""
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"child failed:\n{output}")
    seconds = next(float(line.split("=", 1)[1]) for line in output.splitlines()
                   if line.startswith("SECONDS="))
    return seconds, usage.ru_maxrss / 1024, output


def _shown(output: str) -> str:
    return "\n".join(line for line in output.splitlines() if not line.startswith(("CHANGED=", "SECONDS=")))


def _expect(output: str, changed: int, label: str) -> None:
    """Both implementations must find the same changes, or the comparison means nothing."""
    found = next((int(line.split("=", 1)[1]) for line in output.splitlines()
                  if line.startswith("CHANGED=")), None)
    if found is None:
        raise SystemExit(f"{label}: no CHANGED= line in its output")
    if found != changed:
        raise SystemExit(f"{label}: found {found:,} changed rows, expected {changed:,}")


if __name__ == "__main__":
    sys.exit(main())
