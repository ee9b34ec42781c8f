"""PostgreSQL read benchmark: a model's query staged by segment-ops against pandas `read_sql` and the floor.

Builds a `customers` table of N rows in a scratch schema of the PostgreSQL server (the shape of
`benchmarks/reverse_etl.py`'s warehouse), then reads the whole of it, each run in its own process (wall time
of the work after imports, peak RSS from wait4), `--repeat` rounds, the runs of a round one after the other:

- segment-ops: `warehouse.stage_query` into a DuckDB staging file (PostgreSQL's `COPY (query) TO STDOUT` as
  CSV, parsed by DuckDB), and the same through the streaming path (`fast_path=False`: rows through a
  server-side cursor, the way before COPY);
- pandas `read_sql` through SQLAlchemy and psycopg (`postgresql+psycopg://`), a DataFrame of the result;
- the floor: the same `COPY (query) TO STDOUT (FORMAT csv)` drained by psycopg (`copy.read()` blocks thrown
  away), and by `psql -c "\\copy (query) to /dev/null"`, the better of the two shown.

The goal: segment-ops at least 2x faster than pandas `read_sql`. The scratch schema is dropped at the end.

    .venv/bin/python benchmarks/warehouse_pg.py                 # 1,000,000 rows, 3 rounds
    .venv/bin/python benchmarks/warehouse_pg.py --rows 200000 --repeat 1
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

import psycopg

TARGET_RATIO = 2.0  # segment-ops against pandas read_sql
DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/test"

_BUILD = """
    CREATE TABLE {schema}.customers AS
    SELECT 'usr_' || lpad(i::text, 8, '0') AS user_id,
           'user' || i || '@example.com' AS email,
           'Name ' || i AS name,
           (ARRAY['free', 'starter', 'pro', 'enterprise'])[1 + i % 4] AS plan,
           (ARRAY['US', 'DE', 'FR', 'GB', 'IN', 'BR'])[1 + i % 6] AS country,
           'acc_' || lpad((i / 20)::text, 6, '0') AS account_id,
           ((i * 37) % 100000 / 100.0)::numeric(12, 2) AS lifetime_value,
           timestamptz '2024-01-01 00:00:00+00' + (i * 1000 + i % 997) * interval '1 ms' AS created_at,
           timestamptz '2025-01-01 00:00:00+00' + i * interval '1 s' AS updated_at
    FROM generate_series(0, {n} - 1) AS t(i)
"""
_COLUMNS = "user_id, email, name, plan, country, account_id, lifetime_value, created_at, updated_at"

# Each child prints SECONDS= (the work, after its imports) and ROWS=.
_OURS = textwrap.dedent("""
    import time
    from segment_ops.engine.store import staging
    from segment_ops.engine.warehouse import stage_query
    with staging({staging!r}) as con:
        started = time.perf_counter()
        staged = stage_query(con, {url!r}, {query!r}, "staged", fast_path={fast})
        seconds = time.perf_counter() - started
    print(f"method {{staged.method}}")
    print(f"ROWS={{staged.rows}}")
    print(f"SECONDS={{seconds}}")
""")
_PANDAS = textwrap.dedent("""
    import time
    import pandas as pd
    import sqlalchemy as sa
    started = time.perf_counter()
    engine = sa.create_engine({url!r})
    frame = pd.read_sql(sa.text({query!r}), engine)
    seconds = time.perf_counter() - started
    engine.dispose()
    print(f"dtypes {{', '.join(str(t) for t in frame.dtypes)}}")
    print(f"ROWS={{len(frame)}}")
    print(f"SECONDS={{seconds}}")
""")
_FLOOR = textwrap.dedent("""
    import time
    import psycopg
    started = time.perf_counter()
    rows = size = 0
    with psycopg.connect({server!r}) as pg, pg.cursor().copy({copy!r}) as copy:
        while block := copy.read():
            rows, size = rows + 1, size + len(block)
    seconds = time.perf_counter() - started
    print(f"{{size / 1e6:.0f}} MB of CSV")
    print(f"ROWS={{rows}}")
    print(f"SECONDS={{seconds}}")
""")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows in the customers table")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; each figure is the median")
    parser.add_argument("--postgres", default=DEFAULT_SERVER, help="libpq URL of the server (trust auth)")
    args = parser.parse_args()
    n, server = args.rows, args.postgres
    schema = f"segment_ops_bench_pg_{os.getpid()}"
    query = f"SELECT {_COLUMNS} FROM {schema}.customers"
    url = server.replace("postgresql://", "postgresql+psycopg://", 1)
    copy = f"COPY ({query}) TO STDOUT (FORMAT csv)"
    env = {k: v for k, v in os.environ.items() if k != "SEGMENT_OPS_STATE_URL"}  # a plain staging file
    runs = {"ours": "segment-ops stage_query (COPY)", "stream": "segment-ops stage_query (streaming path)",
            "pandas": "pandas read_sql (SQLAlchemy, psycopg)", "floor": "floor: COPY drained by psycopg",
            "psql": "floor: psql \\copy to /dev/null"}
    if shutil.which("psql") is None:
        del runs["psql"]
    figures: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    with psycopg.connect(server, autocommit=True) as pg:
        pg.execute(f"CREATE SCHEMA {schema}")
    try:
        started = time.perf_counter()
        with psycopg.connect(server, autocommit=True) as pg:
            pg.execute(_BUILD.format(schema=schema, n=n))
            pg.execute(f"ANALYZE {schema}.customers")
        print(f"setup: {n:,} rows in {schema}.customers in {time.perf_counter() - started:.1f}s", flush=True)
        with tempfile.TemporaryDirectory(prefix="segment_ops_bench_pg_") as work:
            for round_ in range(1, args.repeat + 1):
                for name, label in runs.items():
                    if name == "psql":
                        seconds, rss, out = _psql(server, query, env)
                    else:
                        code = (_OURS.format(staging=os.path.join(work, f"{name}_{round_}.duckdb"), url=url,
                                             query=query, fast=name == "ours") if name in ("ours", "stream")
                                else _PANDAS.format(url=url, query=query) if name == "pandas"
                                else _FLOOR.format(server=server, copy=copy))
                        seconds, rss, out = _measured([sys.executable, "-c", code], env, n)
                    figures[name].append((seconds, rss))
                    print(f"round {round_}, {label}: {seconds:.2f} s, {rss:.0f} MB{out}", flush=True)
    finally:
        with psycopg.connect(server, autocommit=True) as pg:
            pg.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")

    seconds = {name: statistics.median(s for s, _ in runs_) for name, runs_ in figures.items()}
    rss = {name: max(r for _, r in runs_) for name, runs_ in figures.items()}
    print(f"\n{n:,} rows, median of {args.repeat} round(s); seconds exclude interpreter start and imports "
          "(psql: the whole command)")
    print(f"{'run':<44} {'seconds':>8} {'peak RSS MB':>12}")
    for name, label in runs.items():
        print(f"{label:<44} {seconds[name]:>8.2f} {rss[name]:>12.0f}")
    floor = min(("floor", "psql") if "psql" in runs else ("floor",), key=lambda name: seconds[name])
    ours, pandas = seconds["ours"], seconds["pandas"]
    print()
    print(f"info  {runs[floor]} is the faster floor ({seconds[floor]:.2f} s); segment-ops takes "
          f"{ours / seconds[floor]:.2f}x the floor, {ours - seconds[floor]:.2f} s above it")
    print(f"info  the streaming path (before COPY): {seconds['stream']:.2f} s, "
          f"{seconds['stream'] / ours:.1f}x slower than COPY")
    passed = pandas / ours >= TARGET_RATIO
    print(f"{'PASS' if passed else 'MISS'}  >= {TARGET_RATIO:.0f}x faster than pandas read_sql: "
          f"{pandas / ours:.1f}x ({pandas:.2f} s against {ours:.2f} s; peak RSS {rss['pandas']:.0f} MB "
          f"against {rss['ours']:.0f} MB)")
    return 0 if passed else 1


def _measured(command: list[str], env: dict[str, str], rows: int) -> tuple[float, float, str]:
    """(seconds the child reports, its peak RSS in MB, its other output as a suffix); every run must have
    read all the rows, or its figure means nothing."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    output = process.stdout.read().decode() if process.stdout else ""
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"child failed:\n{output}")
    values = dict(line.split("=", 1) for line in output.splitlines()
                  if line.startswith(("SECONDS=", "ROWS=")))
    if int(values["ROWS"]) != rows:
        raise SystemExit(f"a run read {values['ROWS']} rows of {rows}:\n{output}")
    shown = "; ".join(line for line in output.splitlines() if not line.startswith(("SECONDS=", "ROWS=")))
    return float(values["SECONDS"]), usage.ru_maxrss / 1024, f" ({shown})" if shown else ""


def _psql(server: str, query: str, env: dict[str, str]) -> tuple[float, float, str]:
    """psql's own \\copy of the query to /dev/null: the whole command's wall time and peak RSS."""
    started = time.perf_counter()
    process = subprocess.Popen(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", server, "-c",
                                f"\\copy ({query}) to /dev/null with (format csv)"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    output = process.stdout.read().decode() if process.stdout else ""
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"psql failed:\n{output}")
    return seconds, usage.ru_maxrss / 1024, ""


if __name__ == "__main__":
    sys.exit(main())
