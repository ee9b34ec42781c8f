"""The demo warehouse that reverse-ETL models run against: a DuckDB file built from `DemoData`.

Tables (schema `main` unless noted; every timestamp is TIMESTAMPTZ, money is DECIMAL as in a real
warehouse):

* `customers`: one row per known user (a user_id or at least an email), with the demo data's
  malformed rows kept on purpose: NULL user_id leads, a duplicated user_id, a bad email;
* `accounts`: the demo accounts;
* `orders`: about 3 per identified user, status completed / pending / refunded (pending orders have
  no `completed_at`); `customers.lifetime_value` is the sum of the user's completed orders;
* `main_production.users` and `main_production.segment_members`: Heap Connect's tables
  (`heap/connect.py`);
* `identity_map`: Heap identity (email or internal id) -> Segment user_id for every known user, a
  customer-kept mapping table (the default identity query reads Heap Connect's `users` instead); the few
  Heap-only identities are deliberately absent;
* `privacy_requests`: the privacy team's deletion and suppression requests (one, for the demo), read by
  `sql/regulations/privacy_requests.sql`;
* `fullstory.events`: Fullstory's raw warehouse export of the demo's sessions (`fullstory/export.py`), the
  same page views, clicks and errors whose rage, dead and error clicks the sandbox's Streams send.

The file is built next to its destination and moved into place with `os.replace`, so a reader
never sees a half-built warehouse.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from segment_ops.config import DEMO_WAREHOUSE_TABLES
from segment_ops.sandbox.demo_data import DemoData
from segment_ops.sandbox.fullstory.export import FULLSTORY_TABLES, create_fullstory_tables
from segment_ops.sandbox.heap.connect import create_heap_connect_tables
from segment_ops.sandbox.world import POPULATION_AS_OF

_SALT_ORDERS = 501  # `default_rng` salt of the order stream (see world.py)
# The declared tables (`syncs/external.py`'s assets) and Fullstory's export, unless already declared.
TABLES = DEMO_WAREHOUSE_TABLES + tuple(t for t in FULLSTORY_TABLES if t not in DEMO_WAREHOUSE_TABLES)


def build_demo_warehouse(path: str | Path, data: DemoData, *, overwrite: bool = True) -> dict[str, int]:
    """Write the demo warehouse for `data` to `path` atomically; returns the row count of each table."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"demo warehouse {path} exists and overwrite=False")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        con = duckdb.connect(str(tmp))
        try:
            _create_tables(con, data)
            counts = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}
            con.execute("CHECKPOINT")
        finally:
            con.close()
        # A WAL left by an old writer of `path` must not be replayed against the new file.
        _wal(path).unlink(missing_ok=True)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        _wal(tmp).unlink(missing_ok=True)
    return counts


def _create_tables(con: duckdb.DuckDBPyConnection, data: DemoData) -> None:
    users = data.users
    orders = _orders(data)
    identity_map = pa.Table.from_pandas(data.heap_identity_map(), preserve_index=False)
    for name, frame in (("users_df", users), ("accounts_df", data.accounts), ("orders_df", orders),
                        ("identity_df", identity_map)):
        con.register(name, frame)
    con.execute("""
        CREATE TABLE accounts AS
        SELECT account_id, name, plan, seats::INTEGER AS seats, industry, mrr::DECIMAL(12, 2) AS mrr,
               created_at::TIMESTAMPTZ AS created_at, updated_at::TIMESTAMPTZ AS updated_at
        FROM accounts_df
    """)
    con.execute("""
        CREATE TABLE orders AS
        SELECT 'ord_' || lpad(order_no::VARCHAR, 9, '0') AS order_id, user_id::VARCHAR AS user_id,
               account_id::VARCHAR AS account_id, status::VARCHAR AS status,
               amount::DECIMAL(10, 2) AS amount, currency::VARCHAR AS currency,
               completed_at::TIMESTAMPTZ AS completed_at,
               updated_at::TIMESTAMPTZ AS updated_at
        FROM orders_df
    """)
    con.execute("""
        CREATE TABLE customers AS
        WITH ltv AS (
            SELECT user_id, sum(amount) FILTER (WHERE status = 'completed') AS value
            FROM orders GROUP BY user_id
        )
        SELECT u.user_id, u.email, u.name, u.account_id, u.plan, u.country,
               coalesce(ltv.value, 0)::DECIMAL(12, 2) AS lifetime_value,
               u.created_at::TIMESTAMPTZ AS created_at, u.updated_at::TIMESTAMPTZ AS updated_at
        FROM users_df u LEFT JOIN ltv ON ltv.user_id = u.user_id
        WHERE u.user_id IS NOT NULL OR u.email IS NOT NULL
    """)
    create_heap_connect_tables(con, data)  # Heap's export into this warehouse
    con.execute("CREATE TABLE identity_map AS SELECT identity, user_id FROM identity_df")
    # One customer asked to be forgotten (suppressed and deleted) a day before the population's date: the
    # demo's regulation, filed by the `segment/regulations` sync, which every other sync then honours.
    con.execute("""
        CREATE TABLE privacy_requests AS
        SELECT 'dsr-0001' AS request_id, user_id, 'SUPPRESS_WITH_DELETE' AS regulation_type,
               ?::TIMESTAMPTZ - INTERVAL 1 DAY AS requested_at
        FROM customers WHERE user_id IS NOT NULL ORDER BY user_id LIMIT 1
    """, [POPULATION_AS_OF])
    create_fullstory_tables(con, data)  # Fullstory's export into this warehouse


def _orders(data: DemoData) -> pa.Table:
    """About 3 orders per identified user, placed between the user's signup and `POPULATION_AS_OF`."""
    users = data.users
    known = users[users["user_id"].notna()].drop_duplicates("user_id")  # the stale duplicate is not a buyer
    created_us = known["created_at"].to_numpy("datetime64[us]").astype(np.int64)
    user_ids, account_ids = (pa.array(known[c].to_numpy(), pa.string()) for c in ("user_id", "account_id"))
    as_of_us = int(POPULATION_AS_OF.timestamp()) * 1_000_000
    rng = np.random.default_rng([data.config.seed, _SALT_ORDERS])
    counts = np.where(created_us < as_of_us, rng.poisson(3, len(known)), 0)
    buyer = np.repeat(np.arange(len(known), dtype=np.int32), counts)
    n = len(buyer)
    placed = created_us[buyer] + (rng.random(n) * (as_of_us - created_us[buyer])).astype(np.int64)
    status = rng.choice(3, n, p=[0.85, 0.08, 0.07]).astype(np.int8)  # completed, pending, refunded
    day_us = 86_400 * 1_000_000
    settle = np.where(status == 2, rng.uniform(1, 20, n) * day_us, rng.uniform(0, 0.1, n) * day_us)
    return pa.table({
        "order_no": pa.array(np.arange(1, n + 1)),
        # Dictionary-encoded: DuckDB reads them as VARCHAR without a million Python strings.
        "user_id": pa.DictionaryArray.from_arrays(buyer, user_ids),
        "account_id": pa.DictionaryArray.from_arrays(buyer, account_ids),
        "status": pa.DictionaryArray.from_arrays(status, pa.array(["completed", "pending", "refunded"])),
        "amount": pa.array(np.round(rng.lognormal(np.log(80), 0.8, n), 2)),
        "currency": pa.DictionaryArray.from_arrays(
            rng.choice(3, n, p=[0.7, 0.2, 0.1]).astype(np.int8), pa.array(["USD", "EUR", "GBP"])
        ),
        "completed_at": pa.array(placed, pa.timestamp("us", tz="UTC"), mask=status == 1),
        "updated_at": pa.array(placed + settle.astype(np.int64), pa.timestamp("us", tz="UTC")),
    })


def _wal(path: Path) -> Path:
    return path.with_name(path.name + ".wal")
