"""Heap Connect's tables in the demo warehouse: Heap's `users` and the segments' members, as Heap exports
them to the customer's warehouse (`../warehouse.py` builds the rest of that warehouse)."""

from __future__ import annotations

import hashlib

import duckdb
import pandas as pd

from segment_ops.sandbox.heap.data import HEAP_SYNC_WINDOW, HeapDemoData
from segment_ops.sandbox.world import POPULATION_START

# Heap Connect, as its documents describe it: one schema per Heap environment, named
# `<project>_<environment>` (`main_production` for the main project's production environment;
# docs.heapanalytics.com "Overview and Schema - Redshift", heapanalytics.com/docs/sql).
HEAP_CONNECT_SCHEMA = "main_production"


def create_heap_connect_tables(con: duckdb.DuckDBPyConnection, data: HeapDemoData) -> None:
    """Create `main_production.users` and `main_production.segment_members` for `data` in `con`.

    `users` rows are joined to other tables by Heap's own numeric `user_id` ("Heap Connect: Table
    Relationships and Joining with Other Data", help.heap.io), with `identity` (what `heap.identify`
    received), `joindate` and `last_modified` (the columns dbt-labs/heap `macros/base/heap_users.sql` reads;
    Fivetran's Heap schema lists the same) and one column per user property ("Heap Connect: Managing Data
    Syncing"): here `email` (Heap's built-in property) and `app_user_id` (a custom property standing for the
    userId the app sends to Segment; NULL for Heap-only identities, which map to no Segment user). Anonymous
    Heap users have no identity.

    Where this double departs from Heap (unverified): Heap documents that segments can be synced to Heap
    Connect (Redshift and Snowflake only, help.heap.io "Data warehouses overview": "Segment Syncing") but not
    the layout. `segment_members` (segment_id, user_id, synced_at) is this sandbox's guess: one row per
    member of each segment in the 4-hour sync window containing `data.now`, keyed by Heap's user_id,
    `synced_at` being that window's start. Every timestamp is TIMESTAMPTZ (Heap's Redshift columns are
    TIMESTAMP without a zone; the reconcile reads such values as UTC).
    """
    heap_users, members = _heap_connect(data)
    con.register("heap_users_df", heap_users)
    con.register("members_df", members)
    con.execute(f"CREATE SCHEMA {HEAP_CONNECT_SCHEMA}")
    con.execute(f"""
        CREATE TABLE {HEAP_CONNECT_SCHEMA}.users AS
        SELECT user_id::BIGINT AS user_id, identity::VARCHAR AS identity, joindate::TIMESTAMPTZ AS joindate,
               last_modified::TIMESTAMPTZ AS last_modified, email::VARCHAR AS email,
               app_user_id::VARCHAR AS app_user_id
        FROM heap_users_df
    """)
    con.execute(f"""
        CREATE TABLE {HEAP_CONNECT_SCHEMA}.segment_members AS
        SELECT segment_id::BIGINT AS segment_id, user_id::BIGINT AS user_id,
               synced_at::TIMESTAMPTZ AS synced_at
        FROM members_df
    """)


def heap_user_id(key: str) -> int:
    """A stable Heap-style numeric user id (below 2^53) for an identity or anonymous id."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:13], 16)


def _heap_connect(data: HeapDemoData) -> tuple[pd.DataFrame, pd.DataFrame]:
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
    users = pd.concat([identified.assign(key=identified["identity"]), only.assign(key=only["identity"]),
                       anonymous], ignore_index=True)
    users["user_id"] = [heap_user_id(str(k)) for k in users.pop("key")]
    for column in ("joindate", "last_modified"):
        users[column] = pd.to_datetime(users[column], utc=True)
    by_identity = dict(zip(users["identity"], users["user_id"], strict=True))
    rows = [(segment_id, by_identity[i]) for segment_id, ids in members.items() for i in ids]
    membership = pd.DataFrame(rows, columns=["segment_id", "user_id"], dtype="int64")
    membership["synced_at"] = pd.Timestamp(synced_ms, unit="ms", tz="UTC")
    return users, membership
