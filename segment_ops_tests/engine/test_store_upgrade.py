"""A staging file written by the release before the scale-out work (commit 0aafa17) opens with today's code:
every schema is brought to today's version with its rows and statuses kept, and a new run goes on from
them; a file recorded at a version newer than today's is refused (issue 17).

The file is `fixtures/store_0aafa17.duckdb.gz`, made by `fixtures/make_store_0aafa17.py` with 0aafa17's
code. The figures below are what that script printed, copied so the test never follows the code.

When this was written no schema of 0aafa17 had changed version since (ledger 3, pendo_usage 2, the rest
1; today adds delivery_overview and replay_lines, created in the old file), so no migration runs on it
yet. What catches a schema changed without a version and migration is the comparison of the upgraded
file's layout with a file today's code makes from nothing.
"""

from __future__ import annotations

import gzip
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import duckdb
import orjson
import pytest

import segment_ops.definitions  # noqa: F401  (registers every sync's state schemas, as the CLI does)
from segment_ops.clients.base import RetryEvent
from segment_ops.engine import store
from segment_ops.engine.delivery import Confirmation, settle_awaiting
from segment_ops.engine.diff import delivered_rows, ensure_state
from segment_ops.engine.ledger import Ledger, LedgerCounts
from segment_ops.engine.run import DiffSync, RunReport, run_diff_sync
from segment_ops.engine.spec import DiffSpec
from segment_ops.engine.warehouse import UNSERIALISABLE_COLUMN, StagedResult

FIXTURE = Path(__file__).parent / "fixtures" / "store_0aafa17.duckdb.gz"
SYNC = "accounts"
# The versions 0aafa17 recorded in the file (its state_schema_versions).
VERSIONS_0AAFA17 = {"audit_trail": 1, "diff": 1, "heap_membership": 1, "ledger": 3, "pendo_score": 1,
                    "pendo_usage": 2}
# Each planned message of the sync as 0aafa17 left it: (seq, record_key, status, planning run).
MESSAGES_0AAFA17 = [
    (1, "u1", "verified", "run-1"), (2, "u2", "delivered", "run-1"), (3, "u3", "delivered", "run-1"),
    (4, "u4", "rejected", "run-1"), (5, "u5", "delivered", "run-1"), (6, "u6", "awaiting_ack", "run-1"),
    (7, "u7", "pending", "run-1"), (8, "u2", "delivered", "run-2"), (12, "u7", "superseded", "run-2"),
    (13, "u8", "delivered", "run-2"), (14, "u9", "pending", "run-2"), (15, "u3", "delivered", "run-2"),
]
COUNTS_0AAFA17 = LedgerCounts(pending=2, delivered=6, rejected=1, awaiting_ack=1, verified=1, superseded=1)
LAST_OUTCOME_ID_0AAFA17 = 26  # the outcome_order sequence's value (ids 1-26 used, some as marks)
ROWS_0AAFA17 = {
    "planned_messages": 12, "outcomes": 19, "rejected": 4, "receipts": 2, "receipt_settlements": 1,
    "read_backs": 2, "rev_state": 1, "rev_snapshot": 5, "rev_changes": 2, "rev_superseded": 1,
    "audit_events": 3, "read_windows": 1, "forwarded_windows": 1, "hec_channel": 1, "heap_membership": 2,
    "heap_applied_syncs": 1, "heap_applied_drains": 1, "pendo_visitor_days": 2, "pendo_feature_days": 1,
    "pendo_poll_responses": 1, "pendo_staged_days": 1, "pendo_accounts": 1, "pendo_features": 1,
    "pendo_health_runs": 1,
}
# The sync's rows as run 3 staged them (user_id -> plan); the next run adds u10.
STAGED_0AAFA17 = {"u1": "free", "u2": "team", "u4": "pro", "u5": "free", "u6": "pro", "u7": "free",
                  "u8": "pro", "u9": "pro"}
SPEC = DiffSpec(sync=SYNC, source="accounts.sql", call="identify", mode="mirror", key="user_id",
                user_id="user_id", fields=("plan",))


def unpack(directory: Path) -> Path:
    """The fixture, gunzipped to a staging file of its own under `directory`."""
    path = directory / "staging" / f"{SYNC}.duckdb"
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(FIXTURE, "rb") as packed, path.open("wb") as raw:
        shutil.copyfileobj(packed, raw)
    return path


def ensure_all(con: duckdb.DuckDBPyConnection) -> None:
    """Open the file as today's code does: every registered schema ensured, then the ledger and diff."""
    for schema in store.registered():
        store.ensure(con, schema)
    Ledger(con)
    ensure_state(con)


def recorded_versions(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    return dict(con.execute("SELECT name, max(version) FROM state_schema_versions GROUP BY name").fetchall())


def row_counts(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    return {table: con.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in ROWS_0AAFA17}


def shape(con: duckdb.DuckDBPyConnection) -> dict[str, object]:
    """Every registered table's columns in order (positional INSERTs depend on it) with type, nullability
    and default, the registered views' SQL and the registered sequences: what `create` makes."""
    names = [t for s in store.registered() for t in s.tables]
    columns: dict[str, list[tuple]] = {}
    for table, *column in con.execute(
            "SELECT table_name, column_name, data_type, is_nullable, column_default FROM duckdb_columns() "
            "WHERE table_name IN (SELECT unnest(?::VARCHAR[])) AND NOT internal "
            "ORDER BY table_name, column_index", [names]).fetchall():
        columns.setdefault(table, []).append(tuple(column))
    views = dict(con.execute("SELECT view_name, sql FROM duckdb_views() WHERE NOT internal "
                             "AND view_name IN (SELECT unnest(?::VARCHAR[]))", [names]).fetchall())
    sequences = sorted(r[0] for r in con.execute("SELECT sequence_name FROM duckdb_sequences() "
                                                 "WHERE sequence_name IN (SELECT unnest(?::VARCHAR[]))",
                                                 [names]).fetchall())
    return {"columns": columns, "views": views, "sequences": sequences}


@pytest.fixture
def old_file(tmp_path: Path) -> Path:
    return unpack(tmp_path)


@pytest.fixture
def upgraded(old_file: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    con = store.connect(old_file)
    ensure_all(con)
    yield con
    con.close()


class Takes:
    """A destination that delivers every message (one batch each)."""

    name = "scripted"
    max_batch_bytes = 1

    def __init__(self) -> None:
        self.sent: list[str] = []

    def send_batch(self, payloads: Sequence[bytes], *,
                   on_retry: Callable[[RetryEvent], None] | None = None) -> None:
        self.sent += [orjson.loads(p)["userId"] for p in payloads]

    def close(self) -> None:
        pass


def stage(rows: dict[str, str]) -> Callable[[duckdb.DuckDBPyConnection], StagedResult]:
    def staged(con: duckdb.DuckDBPyConnection) -> StagedResult:
        con.execute("CREATE OR REPLACE TEMP TABLE accounts_staged AS SELECT unnest(?::VARCHAR[]) AS user_id, "
                    f"unnest(?::VARCHAR[]) AS plan, NULL::VARCHAR AS {UNSERIALISABLE_COLUMN}",
                    [list(rows), list(rows.values())])
        return StagedResult("accounts_staged", len(rows), ("user_id", "plan"),
                            {"user_id": "VARCHAR", "plan": "VARCHAR"}, 0.0, "test")
    return staged


def test_the_fixture_is_what_0aafa17_left(old_file):
    # DuckDB alone, read-only, nothing ensured: the file as the old release closed it.
    con = duckdb.connect(str(old_file), read_only=True)
    try:
        assert recorded_versions(con) == VERSIONS_0AAFA17
        assert con.execute("SELECT seq, record_key, status, planned_run FROM ledger WHERE sync = ? "
                           "ORDER BY seq", [SYNC]).fetchall() == MESSAGES_0AAFA17
        assert row_counts(con) == ROWS_0AAFA17
    finally:
        con.close()


def test_a_0aafa17_file_opens_at_todays_versions_keeping_its_rows_and_statuses(upgraded, tmp_path):
    con = upgraded
    today = {schema.name: schema.version for schema in store.registered()}
    assert recorded_versions(con) == today
    assert set(VERSIONS_0AAFA17) <= set(today)  # no schema of 0aafa17 was dropped
    # The old rows, with their statuses, as today's ledger and diff read them.
    assert con.execute("SELECT seq, record_key, status, planned_run FROM ledger WHERE sync = ? ORDER BY seq",
                       [SYNC]).fetchall() == MESSAGES_0AAFA17
    assert Ledger(con).counts(SYNC) == COUNTS_0AAFA17
    assert row_counts(con) == ROWS_0AAFA17
    assert sorted(r[0] for r in con.execute(f"SELECT record_key FROM {delivered_rows()}").fetchall()) == [
        "u1", "u2", "u5", "u8"]  # u3's removal was delivered: a tombstone, not a present key
    assert [(r.receipt, r.messages) for r in Ledger(con).awaiting_receipts(SYNC)] == [("receipt-u6", 1)]
    assert con.execute("SELECT account_id, active_visitors, events, nps_responses "
                       "FROM pendo_account_usage_daily").fetchall() == [("acme", 2, 13, 1)]
    # The upgraded file is laid out exactly as a file today's code makes from nothing.
    fresh = store.connect(tmp_path / "fresh.duckdb")
    try:
        ensure_all(fresh)
        assert shape(con) == shape(fresh)
    finally:
        fresh.close()
    # Opening it again migrates nothing more.
    entries = con.execute("SELECT count(*) FROM state_schema_versions").fetchone()[0]
    ensure_all(con)
    assert con.execute("SELECT count(*) FROM state_schema_versions").fetchone()[0] == entries


def test_a_run_of_todays_code_goes_on_from_a_0aafa17_file_without_colliding_with_its_ids(upgraded):
    con = upgraded
    destination = Takes()

    report = run_diff_sync(con, DiffSync(SPEC, stage(STAGED_0AAFA17 | {"u10": "team"})), RunReport(),
                           lambda: destination, run_id="run-4")
    confirmed = settle_awaiting(Ledger(con), SYNC, lambda _: {"receipt-u6": Confirmation.CONFIRMED},
                                timeout=None)

    # What 0aafa17 left pending is sent (once), with the one new key; nothing else is sent again.
    assert sorted(destination.sent) == ["u10", "u7", "u9"]
    assert (report.plan.planned, report.plan.already_known, report.delivery.delivered) == (1, 4, 3)
    assert confirmed.confirmed == 1
    new = con.execute("SELECT seq, message_id FROM planned_messages WHERE planned_run = 'run-4'").fetchall()
    assert len(new) == 1 and new[0][0] > max(m[0] for m in MESSAGES_0AAFA17)
    assert con.execute("SELECT count(*) = count(DISTINCT seq), count(DISTINCT message_id) = count(*) "
                       "FROM planned_messages WHERE sync = ?", [SYNC]).fetchone() == (True, True)
    outcome_ids = [r[0] for r in con.execute("SELECT id FROM outcomes ORDER BY id").fetchall()]
    assert len(outcome_ids) == len(set(outcome_ids))
    assert len([i for i in outcome_ids if i > LAST_OUTCOME_ID_0AAFA17]) == len(outcome_ids) - 19 == 4
    # The old messages keep their statuses; the pending ones and the open receipt are settled.
    statuses = dict(con.execute("SELECT seq, status FROM ledger WHERE sync = ? AND seq <= 15",
                                [SYNC]).fetchall())
    old = {seq: status for seq, _, status, _ in MESSAGES_0AAFA17}
    assert statuses == old | {6: "delivered", 7: "delivered", 14: "delivered"}
    assert Ledger(con).counts(SYNC) == LedgerCounts(pending=0, delivered=10, rejected=1, verified=1,
                                                    superseded=1)
    # The snapshot moved on from 0aafa17's with what this run delivered.
    present = {r[0] for r in con.execute(f"SELECT record_key FROM {delivered_rows()}").fetchall()}
    assert present >= {"u1", "u2", "u5", "u8", "u7", "u9", "u10"} and "u3" not in present


@pytest.mark.parametrize("name", sorted(schema.name for schema in store.registered()))
def test_a_file_recorded_at_a_newer_version_is_refused_and_left_alone(upgraded, name):
    con = upgraded
    schema = store.schema_named(name)
    con.execute("INSERT INTO state_schema_versions VALUES (?, ?, now())", [name, schema.version + 1])
    before = (row_counts(con), recorded_versions(con))

    with pytest.raises(store.StateSchemaError, match=re.escape(
            f"holds {name!r} at version {schema.version + 1}, newer than this release's {schema.version}: "
            "upgrade segment_ops")):
        store.ensure(con, schema)

    if name == "ledger":
        with pytest.raises(store.StateSchemaError, match="newer than this release"):
            Ledger(con)
    assert (row_counts(con), recorded_versions(con)) == before
