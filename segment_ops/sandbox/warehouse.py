"""The demo warehouse that reverse-ETL models run against: a DuckDB file built from `DemoData`.

Tables (schema `main` unless noted; every timestamp is TIMESTAMPTZ, money is DECIMAL as in a real
warehouse):

* `customers`: one row per known user (a user_id or at least an email), with the demo data's
  malformed rows kept on purpose: NULL user_id leads, a duplicated user_id, a bad email;
* `accounts`: the demo accounts;
* `orders`: about 3 per identified user, status completed / pending / refunded (pending orders have
  no `completed_at`); `customers.lifetime_value` is the sum of the user's completed orders;
* `main_production.users` and `main_production.segment_members`: Heap Connect's tables (below);
* `identity_map`: Heap identity (email or internal id) -> Segment user_id for every known user, a
  customer-kept mapping table (the default identity query reads Heap Connect's `users` instead); the few
  Heap-only identities are deliberately absent.

Heap Connect, as its documents describe it: one schema per Heap environment, named `<project>_<environment>`
(`main_production` for the main project's production environment; docs.heapanalytics.com "Overview and
Schema - Redshift", heapanalytics.com/docs/sql), holding a `users` table whose rows are joined to other
tables by Heap's own numeric `user_id` ("Heap Connect: Table Relationships and Joining with Other Data",
help.heap.io), with `identity` (what `heap.identify` received), `joindate` and `last_modified` (the columns
dbt-labs/heap `macros/base/heap_users.sql` reads; Fivetran's Heap schema lists the same) and one column per
user property ("Heap Connect: Managing Data Syncing"): here `email` (Heap's built-in property) and
`app_user_id` (a custom property standing for the userId the app sends to Segment; NULL for Heap-only
identities, which map to no Segment user). Anonymous Heap users have no identity.

Where this double departs from Heap (unverified): Heap documents that segments can be synced to Heap
Connect (Redshift and Snowflake only, help.heap.io "Data warehouses overview": "Segment Syncing") but not
the layout. `main_production.segment_members` (segment_id, user_id, synced_at) is this sandbox's guess: one
row per member of each segment in the 4-hour sync window containing `data.now`, keyed by Heap's user_id,
`synced_at` being that window's start. Every timestamp is TIMESTAMPTZ (Heap's Redshift columns are
TIMESTAMP without a zone; the reconcile reads such values as UTC).

The file is built next to its destination and moved into place with `os.replace`, so a reader
never sees a half-built warehouse.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from segment_ops.config import DEMO_WAREHOUSE_TABLES
from segment_ops.sandbox.demo_data import DemoData
from segment_ops.sandbox.heap.data import HEAP_SYNC_WINDOW
from segment_ops.sandbox.world import POPULATION_AS_OF, POPULATION_START

_SALT_ORDERS = 501  # `default_rng` salt of the order stream (see world.py)
TABLES = DEMO_WAREHOUSE_TABLES
HEAP_CONNECT_SCHEMA = "main_production"  # <project>_<environment>, Heap Connect's naming


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
    heap_users, members = _heap_connect(data)
    identity_map = pa.Table.from_pandas(data.heap_identity_map(), preserve_index=False)
    for name, frame in (("users_df", users), ("accounts_df", data.accounts), ("orders_df", orders),
                        ("heap_users_df", heap_users), ("members_df", members), ("identity_df", identity_map)):
        con.register(name, frame)
    con.execute(f"CREATE SCHEMA {HEAP_CONNECT_SCHEMA}")
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
               amount::DECIMAL(10, 2) AS amount, currency::VARCHAR AS currency, completed_at::TIMESTAMPTZ AS completed_at,
               updated_at::TIMESTAMPTZ AS updated_at
        FROM orders_df
    """)
    con.execute("""
        CREATE TABLE customers AS
        WITH ltv AS (
            SELECT user_id, sum(amount) FILTER (WHERE status = 'completed') AS value FROM orders GROUP BY user_id
        )
        SELECT u.user_id, u.email, u.name, u.account_id, u.plan, u.country,
               coalesce(ltv.value, 0)::DECIMAL(12, 2) AS lifetime_value,
               u.created_at::TIMESTAMPTZ AS created_at, u.updated_at::TIMESTAMPTZ AS updated_at
        FROM users_df u LEFT JOIN ltv ON ltv.user_id = u.user_id
        WHERE u.user_id IS NOT NULL OR u.email IS NOT NULL
    """)
    con.execute(f"""
        CREATE TABLE {HEAP_CONNECT_SCHEMA}.users AS
        SELECT user_id::BIGINT AS user_id, identity::VARCHAR AS identity, joindate::TIMESTAMPTZ AS joindate,
               last_modified::TIMESTAMPTZ AS last_modified, email::VARCHAR AS email,
               app_user_id::VARCHAR AS app_user_id
        FROM heap_users_df
    """)
    con.execute(f"""
        CREATE TABLE {HEAP_CONNECT_SCHEMA}.segment_members AS
        SELECT segment_id::BIGINT AS segment_id, user_id::BIGINT AS user_id, synced_at::TIMESTAMPTZ AS synced_at
        FROM members_df
    """)
    con.execute("CREATE TABLE identity_map AS SELECT identity, user_id FROM identity_df")


def heap_user_id(key: str) -> int:
    """A stable Heap-style numeric user id (below 2^53) for an identity or anonymous id."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:13], 16)


def _heap_connect(data: DemoData) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Heap Connect's `users` (identified, Heap-only and anonymous Heap users) and the membership of every
    Heap segment in the sync window containing `data.now`."""
    window = HEAP_SYNC_WINDOW.total_seconds() * 1000
    synced_ms = int(int(data.now.timestamp() * 1000) // window * window)
    mapped = data.heap_identity_map()
    people = data.users.drop_duplicates("user_id").set_index("user_id")
    identified = pd.DataFrame({
        "identity": mapped["identity"], "app_user_id": mapped["user_id"],
        "email": people["email"].reindex(mapped["user_id"]).to_numpy(),
        "joindate": people["created_at"].reindex(mapped["user_id"]).to_numpy(),
        "last_modified": people["updated_at"].reindex(mapped["user_id"]).to_numpy(),
    })
    members = {s["id"]: data.heap_segment_members(s["id"], data.now) for s in data.heap_segments()}
    known = set(identified["identity"])
    heap_only = sorted({i for ids in members.values() for i in ids} - known)
    only = pd.DataFrame({"identity": heap_only, "app_user_id": None, "email": heap_only,
                         "joindate": POPULATION_START, "last_modified": POPULATION_START})
    unknown = data.users[data.users["user_id"].isna() & data.users["email"].isna()]
    anonymous = pd.DataFrame({"identity": None, "app_user_id": None, "email": None,
                              "joindate": unknown["created_at"].to_numpy(),
                              "last_modified": unknown["updated_at"].to_numpy(),
                              "key": unknown["anonymous_id"].to_numpy()})
    users = pd.concat([identified.assign(key=identified["identity"]), only.assign(key=only["identity"]), anonymous],
                      ignore_index=True)
    users["user_id"] = [heap_user_id(str(k)) for k in users.pop("key")]
    for column in ("joindate", "last_modified"):
        users[column] = pd.to_datetime(users[column], utc=True)
    by_identity = dict(zip(users["identity"], users["user_id"], strict=True))
    rows = [(segment_id, by_identity[i]) for segment_id, ids in members.items() for i in ids]
    membership = pd.DataFrame(rows, columns=["segment_id", "user_id"], dtype="int64")
    membership["synced_at"] = pd.Timestamp(synced_ms, unit="ms", tz="UTC")
    return users, membership


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
