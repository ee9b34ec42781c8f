"""Reverse-ETL benchmark: a model of N rows (1,000,000 by default), its first run, then 1% of rows changed.

Everything is measured in this one run, each in its own process (wall time of the work after imports, peak
RSS from wait4), against peers measured beside it:

- **the receiver's ceiling** (`benchmarks/receiver.py`: an independent minimal process that counts and
  acknowledges batches): pre-built batches of about 450 KB, gzipped, over 4 connections - what the wire
  allows on this machine;
- **first run**: `dagster asset materialize` of the model on a fresh home, every row sent to that receiver;
  rows/s against the ceiling;
- **the engine after a 1% change** (stage -> diff -> plan -> advance, in-process, nothing sent) against
  - the pandas peer: what a competent engineer writes with pandas - the query read through DuckDB into
    pandas (Arrow), `hash_pandas_object` over the mapped columns, a merge on the key with the previous
    (key, hash) snapshot kept as Parquet, payloads built (orjson) only for the changed rows, the new
    snapshot written as Parquet;
  - the floor: DuckDB scanning the table and anti-joining it on (key, fingerprint) with the previous
    state, nothing else - no engine can diff with less work;
- **the whole Dagster step after the change**, sending the 10,000 changes to the receiver, against the
  pandas peer that also sends its payloads (httpx, JSON batches of at most 450 KB); Dagster's own
  overhead (process start, code location load, run storage) is reported apart.

Every run must find exactly the changed rows, and the receiver must count exactly what each sent.

    .venv/bin/python benchmarks/reverse_etl.py                  # 1,000,000 rows, 1% changed
    .venv/bin/python benchmarks/reverse_etl.py --rows 200000    # quicker
    .venv/bin/python benchmarks/reverse_etl.py --rows 10000000  # the large-model figures of the README
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

from receiver import running_receiver

ENGINE_VS_PANDAS = 2.0  # the engine at least this many times faster than the pandas peer
ENGINE_VS_FLOOR = 1.5  # and at most this many times the floor
FIRST_RUN_SHARE = 0.6  # a first run at this share of the receiver's ceiling
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
QUERY = MODEL.splitlines()[-1]
MAPPED = ["email", "name", "plan", "country", "account_id", "lifetime_value", "created_at"]
ASSET = "segment/reverse_etl/big_traits"
SYNC = "reverse_etl_big_traits"
BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Measured:
    label: str
    seconds: float  # the work after imports (SECONDS= line), or the whole process for Dagster runs
    rss_mb: float
    output: str

    def value(self, name: str) -> float:
        """A NAME=value line the child printed."""
        return next(float(line.split("=", 1)[1]) for line in self.output.splitlines()
                    if line.startswith(f"{name}="))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--changed", type=float, default=0.01,
                        help="share of rows changed after the first run")
    args = parser.parse_args()
    n, every = args.rows, max(1, round(1 / args.changed))
    changed = n // every

    with tempfile.TemporaryDirectory(prefix="segment-ops-bench-retl-") as tmp, running_receiver() as receiver:
        work = Path(tmp)
        files = {name: str(work / name)
                 for name in ("warehouse.duckdb", "floor_state.duckdb", "peer.parquet")}
        (work / "models").mkdir()
        (work / "models" / "big_traits.sql").write_text(MODEL)
        started = time.perf_counter()
        _run([sys.executable, "-c", _BUILD.format(warehouse=files["warehouse.duckdb"], n=n)])
        _run([sys.executable, "-c", _FLOOR_STATE.format(warehouse=files["warehouse.duckdb"],
                                                        floor=files["floor_state.duckdb"],
                                                        columns=", ".join(MAPPED))])
        _run([sys.executable, "-c", _PANDAS.format(warehouse=files["warehouse.duckdb"], query=QUERY,
                                                   mapped=MAPPED, snapshot=files["peer.parquet"], send="None",
                                                   write_key="bench")])
        print(f"setup: warehouse of {n:,} rows, the floor's and the peer's first states, in "
              f"{time.perf_counter() - started:.1f}s", flush=True)

        from receiver import measure_ceiling
        ceiling = measure_ceiling(receiver.port, messages=n, gzip=True)
        print(f"receiver ceiling: {ceiling:,.0f} msg/s ({n:,} identify calls, pre-built ~450 KB gzipped "
              "batches, 4 connections)", flush=True)

        env = _dagster_env(work, files["warehouse.duckdb"], receiver.url)
        before = receiver.count().messages
        first = _dagster_run("first run (dagster asset materialize)", env)
        _received(receiver, before, n, "first run")
        first_rate = n / first.value("STEP")
        print(f"{first.label}: step {first.value('STEP'):.2f}s, process {first.seconds:.2f}s, "
              f"{first_rate:,.0f} rows/s", flush=True)

        _run([sys.executable, "-c", _CHANGE.format(warehouse=files["warehouse.duckdb"], every=every)])
        staging = Path(env["SEGMENT_OPS_HOME"]) / "staging" / f"{SYNC}.duckdb"
        engine_copy = work / "engine_copy.duckdb"
        shutil.copy(staging, engine_copy)
        peer_copy = str(work / "peer_copy.parquet")
        shutil.copy(files["peer.parquet"], peer_copy)

        engine = _measured("segment-ops engine (stage, diff, plan, advance)",
                           _ENGINE.format(staging=str(engine_copy), url=f"duckdb:///{files['warehouse.duckdb']}",
                                          model=str(work / "models" / "big_traits.sql")))
        pandas = _measured("pandas peer (DuckDB -> pandas, hash, merge, payloads, Parquet)",
                           _PANDAS.format(warehouse=files["warehouse.duckdb"], query=QUERY, mapped=MAPPED,
                                          snapshot=peer_copy, send="None", write_key="bench"))
        floor = _measured("floor (DuckDB scan + key/fingerprint anti-join)",
                          _FLOOR.format(state=files["floor_state.duckdb"],
                                        warehouse=files["warehouse.duckdb"],
                                        columns=", ".join(f"c.{c}" for c in MAPPED)))
        for run in (engine, pandas, floor):
            print(f"{run.label}: {_shown(run.output)}", flush=True)
            _expect(run, changed)

        before = receiver.count().messages
        step = _dagster_run("whole Dagster step after the change, sending", env)
        _received(receiver, before, changed, "Dagster step")
        print(f"{step.label}: step {step.value('STEP'):.2f}s, process {step.seconds:.2f}s", flush=True)
        before = receiver.count().messages
        peer_step = _measured("pandas peer, sending its changes",
                              _PANDAS.format(warehouse=files["warehouse.duckdb"], query=QUERY, mapped=MAPPED,
                                             snapshot=files["peer.parquet"], send=repr(receiver.url),
                                             write_key="bench"))
        _received(receiver, before, changed, "pandas peer")
        print(f"{peer_step.label}: {_shown(peer_step.output)}", flush=True)

    print(f"\n{n:,} rows, {changed:,} changed ({args.changed:.0%}); seconds are the work after imports, "
          "Dagster runs are shown as step and whole process")
    print(f"{'run':<66} {'seconds':>8} {'peak RSS MB':>12}")
    for run in (engine, pandas, floor, peer_step):
        print(f"{run.label:<66} {run.seconds:>8.2f} {run.rss_mb:>12.0f}")
    for run in (first, step):
        print(f"{run.label + ': step':<66} {run.value('STEP'):>8.2f} {run.rss_mb:>12.0f}")
        print(f"{run.label + ': whole process':<66} {run.seconds:>8.2f}")
    print()
    overhead = step.seconds - step.value("STEP")
    sending = step.value("STEP") - step.value("ENGINE")
    print(f"info  Dagster step after the change: engine {step.value('ENGINE'):.2f}s inside a step of "
          f"{step.value('STEP'):.2f}s (sending, settling and metadata {sending:.2f}s); Dagster's own "
          f"overhead around the step {overhead:.2f}s")
    checks = [
        (f"engine >= {ENGINE_VS_PANDAS:.0f}x faster than the pandas peer", pandas.seconds / engine.seconds,
         pandas.seconds / engine.seconds >= ENGINE_VS_PANDAS, "x"),
        (f"engine within {ENGINE_VS_FLOOR}x of the floor", engine.seconds / floor.seconds,
         engine.seconds / floor.seconds <= ENGINE_VS_FLOOR, "x"),
        ("whole Dagster step (sending) no slower than the pandas peer sending (peer / step)",
         peer_step.seconds / step.value("STEP"), step.value("STEP") <= peer_step.seconds, "x"),
        (f"engine peak RSS under {TARGET_RSS_MB:.0f} MB", engine.rss_mb, engine.rss_mb < TARGET_RSS_MB,
         " MB"),
        (f"first run at >= {FIRST_RUN_SHARE:.0%} of the receiver's ceiling ({first_rate:,.0f} of "
         f"{ceiling:,.0f} msg/s)", first_rate / ceiling, first_rate / ceiling >= FIRST_RUN_SHARE, ""),
    ]
    ok = True
    for name, value, passed, unit in checks:
        ok &= passed
        shown = f"{value:.0%}" if not unit else f"{value:.2f}{unit}" if unit == "x" else f"{value:.0f}{unit}"
        print(f"{'PASS' if passed else 'MISS'}  {name}: {shown}")
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
    con.close()
""")

# The floor's previous state: (key, fingerprint) of every row as it was delivered.
_FLOOR_STATE = textwrap.dedent("""
    import duckdb
    state = duckdb.connect({floor!r})
    state.execute("ATTACH {warehouse!r} AS w (READ_ONLY)")
    state.execute("CREATE TABLE previous AS SELECT user_id AS record_key, hash({columns}) AS fingerprint "
                  "FROM w.customers")
    state.close()
""")

_CHANGE = textwrap.dedent("""
    import duckdb
    con = duckdb.connect({warehouse!r})
    con.execute("UPDATE customers SET plan = 'changed', updated_at = now() "
                "WHERE substr(user_id, 5)::INTEGER % {every} = 0")
    con.close()
""")

_ENGINE = textwrap.dedent("""
    import time
    started = time.perf_counter()
    from segment_ops.engine.diff import advance_snapshot, ensure_state, plan_changes
    from segment_ops.engine.ledger import Ledger
    from segment_ops.engine.store import staging
    from segment_ops.engine.warehouse import stage_query
    from segment_ops.syncs.reverse_etl.model import parse_model
    from segment_ops.syncs.reverse_etl.sync import STAGED_TABLE

    model = parse_model({model!r})
    imported = time.perf_counter()
    with staging({staging!r}) as con:
        ledger = Ledger(con)
        ensure_state(con)
        advance_snapshot(con, model.sync)
        staged = stage_query(con, {url!r}, model.sql, STAGED_TABLE)
        plan = plan_changes(con, ledger, model.diff_spec, staged, run_id="bench")
        advance_snapshot(con, model.sync)
    done = time.perf_counter()
    print(f"stage {{staged.seconds:.2f}}s + diff/validate/plan {{plan.seconds:.2f}}s: "
          f"rows {{plan.rows_read:,}}, changed {{plan.changed:,}}, planned {{plan.planned:,}}")
    print(f"CHANGED={{plan.changed}}")
    print(f"SECONDS={{done - imported}}")
""")

_PANDAS = textwrap.dedent("""
    import time
    started = time.perf_counter()
    import uuid
    import duckdb
    import httpx
    import orjson
    import pandas as pd
    imported = time.perf_counter()
    MAPPED = {mapped!r}
    con = duckdb.connect({warehouse!r}, read_only=True)
    current = con.execute({query!r}).df()
    con.close()
    loaded = time.perf_counter()
    # One 64-bit hash per row over the mapped columns, compared by key with the last delivered hashes.
    hashes = pd.DataFrame({{"user_id": current["user_id"],
                           "h": pd.util.hash_pandas_object(current[MAPPED], index=False).to_numpy()}})
    try:
        previous = pd.read_parquet({snapshot!r})
    except FileNotFoundError:
        previous = pd.DataFrame({{"user_id": pd.Series(dtype=object), "h": pd.Series(dtype="uint64")}})
    merged = hashes.merge(previous, on="user_id", how="left", suffixes=("", "_prev"))
    mask = (merged["h_prev"].isna() | (merged["h"] != merged["h_prev"])).to_numpy()
    changes = current[mask]
    payloads = []
    for row, h in zip(changes.itertuples(index=False), hashes["h"].to_numpy()[mask]):
        traits = {{"email": row.email, "name": row.name, "plan": row.plan, "country": row.country,
                  "account_id": row.account_id, "lifetime_value": float(row.lifetime_value),
                  "created_at": row.created_at.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"}}
        message_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{{row.user_id}}:{{h}}"))
        payloads.append(orjson.dumps({{"type": "identify", "userId": row.user_id, "traits": traits,
                                      "messageId": message_id}}))
    send = {send}
    if send is not None:
        with httpx.Client(base_url=send, auth=({write_key!r}, ""), timeout=30) as client:
            batch, size = [], 0
            for payload in payloads + [None]:
                if payload is None or size + len(payload) > 450_000:
                    if batch:
                        client.post("/v1/batch", content=b'{{"batch":[' + b",".join(batch) + b"]}}",
                                    headers={{"Content-Type": "application/json"}}).raise_for_status()
                    batch, size = [], 0
                if payload is not None:
                    batch.append(payload)
                    size += len(payload) + 1
    hashes.to_parquet({snapshot!r}, index=False)
    done = time.perf_counter()
    print(f"load {{loaded - imported:.2f}}s + hash, merge, payloads, snapshot{{' and send' if send else ''}} "
          f"{{done - loaded:.2f}}s: rows {{len(current):,}}, changed {{int(mask.sum()):,}}")
    print(f"CHANGED={{int(mask.sum())}}")
    print(f"SECONDS={{done - imported}}")
""")

_FLOOR = textwrap.dedent("""
    import time
    import duckdb
    imported = time.perf_counter()
    con = duckdb.connect({state!r}, read_only=True)
    con.execute("ATTACH {warehouse!r} AS w (READ_ONLY)")
    changed = con.execute("SELECT count(*) FROM w.customers c ANTI JOIN previous p "
                          "ON p.record_key = c.user_id AND p.fingerprint = hash({columns})").fetchone()[0]
    done = time.perf_counter()
    print(f"changed {{changed:,}}")
    print(f"CHANGED={{changed}}")
    print(f"SECONDS={{done - imported}}")
""")


def _dagster_env(work: Path, warehouse: str, receiver_url: str) -> dict[str, str]:
    home = work / "dagster_home"
    home.mkdir()
    return {**os.environ, "DAGSTER_HOME": str(home), "SEGMENT_OPS_HOME": str(work / "home"),
            "REVERSE_ETL_MODELS_DIR": str(work / "models"), "WAREHOUSE_URL": f"duckdb:///{warehouse}",
            "SEGMENT_TRACKING_URL": receiver_url, "SEGMENT_WRITE_KEY": "bench-write-key",
            # No Public API here to read a tracking plan from (the receiver takes batches only): the check's
            # own cost per call is benchmarks/tracking_plan.py's.
            "TRACKING_PLAN_POLICY": "off"}


_STEP = re.compile(r'Finished execution of step "[^"]+" in ([0-9.]+)(ms|s|m)')
_METADATA = textwrap.dedent("""
    import dagster as dg
    event = dg.DagsterInstance.get().get_latest_materialization_event(dg.AssetKey({key!r}))
    metadata = event.asset_materialization.metadata
    print(metadata["stage_seconds"].value + metadata["diff_and_plan_seconds"].value)
""")


def _dagster_run(label: str, env: dict[str, str]) -> Measured:
    """`dagster asset materialize` of the model: whole-process seconds, peak RSS; STEP= (Dagster's step
    duration) and ENGINE= (stage + diff + plan, from the materialization's metadata) in the output."""
    started = time.perf_counter()
    process = subprocess.Popen([str(BIN / "dagster"), "asset", "materialize", "-m", "segment_ops.definitions",
                                "--select", ASSET], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    output = process.stdout.read().decode() if process.stdout else ""
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{label} failed:\n{output[-4000:]}")
    found = _STEP.search(output)
    if found is None:
        raise SystemExit(f"{label}: no step duration in Dagster's output:\n{output[-2000:]}")
    step = float(found.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0}[found.group(2)]
    engine = float(subprocess.run([sys.executable, "-c", _METADATA.format(key=ASSET.split("/"))], env=env,
                                  check=True, capture_output=True, text=True).stdout)
    lines = f"STEP={step}\nENGINE={engine}\n"
    return Measured(label, seconds, usage.ru_maxrss / 1024, lines + output)


def _run(command: list[str]) -> str:
    process = subprocess.run(command, capture_output=True, text=True)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command[:2])} failed:\n{process.stdout}\n{process.stderr}")
    return process.stdout


def _measured(label: str, code: str) -> Measured:
    """One child running `code`: its SECONDS= line (work after imports) and its peak RSS (MB)."""
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = process.stdout.read().decode() if process.stdout else ""
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{label} failed:\n{output}")
    run = Measured(label, 0.0, usage.ru_maxrss / 1024, output)
    return Measured(label, run.value("SECONDS"), run.rss_mb, output)


def _shown(output: str) -> str:
    return "\n".join(line for line in output.splitlines() if "=" not in line.split(" ", 1)[0]).strip()


def _expect(run: Measured, changed: int) -> None:
    """Every implementation must find the same changes, or the comparison means nothing."""
    if (found := int(run.value("CHANGED"))) != changed:
        raise SystemExit(f"{run.label}: found {found:,} changed rows, expected {changed:,}")


def _received(receiver, before: int, expected: int, label: str) -> None:
    taken = receiver.count().messages - before
    if taken != expected:
        raise SystemExit(f"{label}: the receiver counted {taken:,} messages, expected {expected:,}")


if __name__ == "__main__":
    sys.exit(main())
