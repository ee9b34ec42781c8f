"""Behaviour of the demo warehouse file the reverse-ETL models read."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest

from segment_ops.sandbox import warehouse
from segment_ops.sandbox.demo_data import DemoConfig, DemoData
from segment_ops.sandbox.warehouse import TABLES, build_demo_warehouse
from segment_ops_tests.sandbox.conftest import NOW


@pytest.fixture(scope="module")
def built(data: DemoData, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    path = tmp_path_factory.mktemp("warehouse") / "demo_warehouse.duckdb"
    return path, build_demo_warehouse(path, data)


@pytest.fixture
def con(built: tuple[Path, dict[str, int]]) -> Iterator[duckdb.DuckDBPyConnection]:
    connection = duckdb.connect(str(built[0]), read_only=True)
    yield connection
    connection.close()


def _scalar(con: duckdb.DuckDBPyConnection, sql: str) -> object:
    return con.execute(sql).fetchone()[0]


def test_returns_the_row_count_of_every_table(built: tuple[Path, dict[str, int]],
                                              con: duckdb.DuckDBPyConnection) -> None:
    counts = built[1]
    assert set(counts) == set(TABLES)
    for table, count in counts.items():
        assert _scalar(con, f"SELECT count(*) FROM {table}") == count
    assert all(counts[t] > 0 for t in TABLES)


def test_timestamps_are_timestamptz_and_money_is_decimal(con: duckdb.DuckDBPyConnection) -> None:
    types = dict(con.execute("""
        SELECT table_schema || '.' || table_name || '.' || column_name, data_type
        FROM information_schema.columns
    """).fetchall())
    for column in ("main.customers.created_at", "main.customers.updated_at", "main.accounts.updated_at",
                   "main.orders.completed_at", "main.orders.updated_at",
                   "main_production.segment_members.synced_at", "main_production.users.joindate",
                   "main_production.users.last_modified"):
        assert types[column] == "TIMESTAMP WITH TIME ZONE", column
    assert types["main.orders.amount"].startswith("DECIMAL")
    assert types["main.customers.lifetime_value"].startswith("DECIMAL")
    assert types["main.accounts.seats"] == "INTEGER"
    assert types["main_production.users.user_id"] == "BIGINT"
    assert types["main_production.segment_members.user_id"] == "BIGINT"
    assert types["main_production.segment_members.segment_id"] == "BIGINT"


def test_customers_are_known_users_with_the_malformed_rows_kept(data: DemoData,
                                                                 con: duckdb.DuckDBPyConnection) -> None:
    users = data.users
    known = users[users["user_id"].notna() | users["email"].notna()]
    assert _scalar(con, "SELECT count(*) FROM customers") == len(known)
    assert _scalar(con, "SELECT count(*) FROM customers WHERE user_id IS NULL") > 0
    duplicates = "SELECT count(*) - count(DISTINCT user_id) FROM customers WHERE user_id IS NOT NULL"
    assert _scalar(con, duplicates) == 1
    assert _scalar(con, "SELECT count(*) FROM customers WHERE email = 'not-an-email'") == 1


def test_accounts_match_the_demo_accounts(data: DemoData, con: duckdb.DuckDBPyConnection) -> None:
    rows = con.execute("SELECT account_id, seats FROM accounts ORDER BY account_id").fetchall()
    expected = sorted(zip(data.accounts["account_id"], data.accounts["seats"].tolist(), strict=True))
    assert rows == expected


def test_orders_are_about_three_per_customer_with_all_statuses(con: duckdb.DuckDBPyConnection) -> None:
    per_customer = _scalar(con, "SELECT count(*) / count(DISTINCT user_id) FROM orders")
    assert 2.5 <= per_customer <= 4
    statuses = {s for (s,) in con.execute("SELECT DISTINCT status FROM orders").fetchall()}
    assert statuses == {"completed", "pending", "refunded"}
    mismatched = "SELECT count(*) FROM orders WHERE (status = 'pending') <> (completed_at IS NULL)"
    assert _scalar(con, mismatched) == 0
    assert _scalar(con, "SELECT count(*) FROM orders WHERE updated_at < completed_at") == 0
    assert _scalar(con, "SELECT count(DISTINCT order_id) = count(*) FROM orders")
    assert _scalar(con, "SELECT count(*) FROM orders o ANTI JOIN customers c USING (user_id)") == 0


def test_lifetime_value_is_the_sum_of_completed_orders(con: duckdb.DuckDBPyConnection) -> None:
    mismatches = _scalar(con, """
        SELECT count(*) FROM customers c
        LEFT JOIN (SELECT user_id, sum(amount) AS total FROM orders WHERE status = 'completed' GROUP BY 1) o
          USING (user_id)
        WHERE c.user_id IS NOT NULL AND c.lifetime_value <> coalesce(o.total, 0)
    """)
    assert mismatches == 0


MEMBERS = "main_production.segment_members m JOIN main_production.users u USING (user_id)"


def test_heap_connect_tables_reflect_membership_at_now(data: DemoData,
                                                       con: duckdb.DuckDBPyConnection) -> None:
    for segment in data.heap_segments():
        query = f"SELECT u.identity FROM {MEMBERS} WHERE m.segment_id = ? ORDER BY 1"
        members = [m for (m,) in con.execute(query, [segment["id"]]).fetchall()]
        assert members == sorted(data.heap_segment_members(segment["id"], NOW))
    synced = {s for (s,) in con.execute("SELECT DISTINCT synced_at FROM main_production.segment_members")
              .fetchall()}
    assert synced == {datetime(2026, 11, 20, 12, 0, tzinfo=UTC)}  # start of the 4-hour window holding NOW


def test_heap_connect_users_have_heaps_own_user_ids(con: duckdb.DuckDBPyConnection) -> None:
    assert _scalar(con, "SELECT count(DISTINCT user_id) = count(*) FROM main_production.users")
    assert _scalar(con, "SELECT min(user_id) > 0 AND max(user_id) < 2^53 FROM main_production.users")
    assert _scalar(con, "SELECT count(*) FROM main_production.users WHERE identity IS NULL") > 0  # anonymous
    assert _scalar(con, "SELECT count(*) FROM main_production.segment_members "
                        "ANTI JOIN main_production.users USING (user_id)") == 0


def test_the_users_table_maps_heap_identities_to_known_segment_user_ids(
        con: duckdb.DuckDBPyConnection) -> None:
    mapped = ("SELECT identity, app_user_id AS user_id FROM main_production.users "
              "WHERE app_user_id IS NOT NULL")
    identity_map = con.execute("SELECT * FROM identity_map").fetchall()
    assert sorted(con.execute(mapped).fetchall()) == sorted(identity_map)
    assert _scalar(con, f"SELECT count(*) FROM ({mapped}) ANTI JOIN customers c USING (user_id)") == 0


def test_identity_map_resolves_all_but_a_few_members(con: duckdb.DuckDBPyConnection) -> None:
    assert _scalar(con, "SELECT count(DISTINCT identity) = count(*) FROM identity_map")
    members = _scalar(con, f"SELECT count(DISTINCT u.identity) FROM {MEMBERS}")
    unmapped = _scalar(con, f"""
        SELECT count(DISTINCT u.identity) FROM {MEMBERS} ANTI JOIN identity_map i ON i.identity = u.identity
    """)
    assert 0 < unmapped < members / 10
    assert _scalar(con, "SELECT count(*) FROM identity_map i ANTI JOIN customers c USING (user_id)") == 0


def test_same_data_builds_identical_tables(data: DemoData, tmp_path: Path,
                                           con: duckdb.DuckDBPyConnection) -> None:
    again = tmp_path / "again.duckdb"
    build_demo_warehouse(again, data)
    other = duckdb.connect(str(again), read_only=True)
    try:
        for table in TABLES:
            query = f"SELECT * FROM {table} ORDER BY ALL"
            assert other.execute(query).fetchall() == con.execute(query).fetchall(), table
    finally:
        other.close()


def test_overwrite_replaces_the_file_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    path = tmp_path / "wh.duckdb"
    build_demo_warehouse(path, DemoData(DemoConfig(seed=1, scale=0.05), now=NOW))
    reader = duckdb.connect(str(path), read_only=True)
    before = reader.execute("SELECT count(*), min(email) FROM customers").fetchone()
    build_demo_warehouse(path, DemoData(DemoConfig(seed=2, scale=0.1), now=NOW))
    # A reader opened before the swap keeps its complete snapshot of the old file.
    assert reader.execute("SELECT count(*), min(email) FROM customers").fetchone() == before
    reader.close()
    with duckdb.connect(str(path), read_only=True) as fresh:
        assert fresh.execute("SELECT count(*), min(email) FROM customers").fetchone() != before
    assert [p.name for p in tmp_path.iterdir()] == ["wh.duckdb"]


def test_refuses_to_overwrite_when_asked_not_to(data: DemoData, tmp_path: Path) -> None:
    path = tmp_path / "wh.duckdb"
    path.write_bytes(b"keep me")
    with pytest.raises(FileExistsError):
        build_demo_warehouse(path, data, overwrite=False)
    assert path.read_bytes() == b"keep me"


def test_failed_build_keeps_the_old_file_and_cleans_up(data: DemoData, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "wh.duckdb"
    build_demo_warehouse(path, data)
    original = path.read_bytes()

    def explode(con: duckdb.DuckDBPyConnection, data: DemoData) -> None:
        con.execute("CREATE TABLE customers AS SELECT 1 AS half_built")
        raise RuntimeError("disk full")

    monkeypatch.setattr(warehouse, "_create_tables", explode)
    with pytest.raises(RuntimeError, match="disk full"):
        build_demo_warehouse(path, data)
    assert path.read_bytes() == original
    assert [p.name for p in tmp_path.iterdir()] == ["wh.duckdb"]


def test_creates_missing_parent_folders(data: DemoData, tmp_path: Path) -> None:
    path = tmp_path / "home" / "nested" / "wh.duckdb"
    counts = build_demo_warehouse(str(path), data)
    assert path.is_file() and counts["customers"] > 0
