"""The same models against the real PostgreSQL server on this machine (read with COPY, through psycopg).

Each test copies the demo warehouse's tables into a schema of its own and drops it afterwards;
WAREHOUSE_URL sets that schema as the search_path, so the model files run unchanged.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import dagster as dg
import duckdb
import psycopg
import pytest

from segment_ops.engine.store import staging
from segment_ops.resources import StagingResource, WarehouseResource, build_resources
from segment_ops.syncs.reverse_etl.defs import build_reverse_etl_defs, model_key
from segment_ops.syncs.reverse_etl.model import parse_model
from segment_ops.syncs.reverse_etl.sync import sync_model
from segment_ops_tests.reverse_etl.conftest import metadata, received, run_models, segment_stats
from segment_ops_tests.reverse_etl.test_assets import ACCOUNTS_WITH_A_USER, COMPLETED_ORDERS, VALID_CUSTOMERS

pytestmark = pytest.mark.postgres

PG = "postgresql://postgres@127.0.0.1:5432/test"
TABLES = {
    "customers": "user_id text, email text, name text, account_id text, plan text, country text, "
                 "lifetime_value numeric(12,2), created_at timestamptz, updated_at timestamptz",
    "accounts": "account_id text, name text, plan text, seats integer, industry text, mrr numeric(12,2), "
                "created_at timestamptz, updated_at timestamptz",
    "orders": "order_id text, user_id text, account_id text, status text, amount numeric(10,2), "
              "currency text, completed_at timestamptz, updated_at timestamptz",
}


@pytest.fixture
def postgres(warehouse: Path) -> Iterator[tuple[str, Callable[..., None]]]:
    """(WAREHOUSE_URL of a fresh schema holding the demo tables, a function running SQL in that schema)."""
    schema = f"segment_ops_test_{uuid.uuid4().hex[:10]}"

    def execute(*statements: str) -> None:
        with psycopg.connect(PG, autocommit=True, options=f"-csearch_path={schema}") as con:
            for statement in statements:
                con.execute(statement)

    try:
        with psycopg.connect(PG, autocommit=True) as pg:
            pg.execute(f"CREATE SCHEMA {schema}")
            source = duckdb.connect(str(warehouse), read_only=True)
            try:
                for table, columns in TABLES.items():
                    pg.execute(f"CREATE TABLE {schema}.{table} ({columns})")
                    names = [c.split()[0] for c in columns.split(", ")]
                    rows = source.execute(f"SELECT {', '.join(names)} FROM {table}").fetchall()
                    with pg.cursor().copy(f"COPY {schema}.{table} ({', '.join(names)}) FROM STDIN") as copy:
                        for row in rows:
                            copy.write_row(row)
            finally:
                source.close()
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/test?options=-csearch_path%3D{schema}", execute
    finally:
        with psycopg.connect(PG, autocommit=True) as pg:
            pg.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.fixture
def pg_resources(postgres, clean_sandbox, monkeypatch) -> dict:
    monkeypatch.setenv("WAREHOUSE_URL", postgres[0])
    return build_resources()


def test_models_sync_from_postgresql_with_the_same_messages_as_from_duckdb(postgres, pg_resources, ops_env,
                                                                           warehouse, clean_sandbox):
    models = ["user_traits", "account_traits", "completed_orders"]

    result = run_models(pg_resources, models, warehouse_url=postgres[0])
    from_duckdb = run_models({**pg_resources, "warehouse": WarehouseResource(url=f"duckdb:///{warehouse}"),
                              "staging": StagingResource(home=str(ops_env / "duckdb_home"))}, models)

    assert result.success and from_duckdb.success
    user = metadata(result, "user_traits")
    assert (user["warehouse_dialect"], user["read_method"]) == ("postgresql", "postgresql copy")
    assert (user["delivered"], user["rejected"]) == (VALID_CUSTOMERS, 4)
    assert metadata(result, "account_traits")["delivered"] == ACCOUNTS_WITH_A_USER
    assert metadata(result, "completed_orders")["delivered"] == COMPLETED_ORDERS
    total = VALID_CUSTOMERS + ACCOUNTS_WITH_A_USER + COMPLETED_ORDERS
    assert metadata(from_duckdb, "user_traits")["delivered"] == VALID_CUSTOMERS
    assert segment_stats(clean_sandbox) == (total, total)  # every DuckDB message had the PostgreSQL messageId
    [spec] = [s for a in build_reverse_etl_defs(warehouse_url=postgres[0]).assets
              if isinstance(a, dg.AssetsDefinition) for s in a.specs if s.key == model_key("user_traits")]
    assert spec.kinds == {"segment", "duckdb", "postgres"}


def test_postgresql_rerun_sends_nothing_and_changes_send_only_themselves(postgres, pg_resources,
                                                                          clean_sandbox):
    url, execute = postgres
    assert run_models(pg_resources, ["user_traits", "account_traits"], warehouse_url=url).success
    execute("UPDATE customers SET country = 'NZ' WHERE user_id = 'usr_0000003'",
            "DELETE FROM accounts WHERE account_id = 'acc_00002'")

    changed = run_models(pg_resources, ["user_traits", "account_traits"], warehouse_url=url)
    quiet = run_models(pg_resources, ["user_traits", "account_traits"], warehouse_url=url)

    assert (metadata(changed, "user_traits")["changed"],
            metadata(changed, "user_traits")["delivered"]) == (1, 1)
    assert (metadata(changed, "account_traits")["removed"],
            metadata(changed, "account_traits")["delivered"]) == (1, 1)
    assert metadata(quiet, "user_traits")["delivered"] == metadata(quiet, "account_traits")["delivered"] == 0
    assert segment_stats(clean_sandbox) == (VALID_CUSTOMERS + ACCOUNTS_WITH_A_USER + 2, 0)
    last_two = received(clean_sandbox)[-2:]
    assert {m.get("userId") for m in last_two if m["type"] == "identify"} == {"usr_0000003"}


def test_postgresql_values_without_a_json_form_are_rejected_and_the_rest_converted(postgres, tmp_path,
                                                                                  clean_sandbox,
                                                                                  segment_client_factory):
    url, execute = postgres
    execute("CREATE TABLE odd_values (id int8, user_id uuid, extra jsonb, score float8, blob bytea, "
            "big numeric, seen_at timestamptz)",
            "INSERT INTO odd_values VALUES "
            "(1, '7e1b1a3e-8a44-4a5e-9d0a-2b8f1f0c0c01', '{\"tier\": [1, 2]}', 0.5, NULL, 12.5, "
            "'2024-03-01 12:00:00.123456+02'),"
            "(2, '7e1b1a3e-8a44-4a5e-9d0a-2b8f1f0c0c02', NULL, 'NaN', NULL, 1, NULL),"
            "(3, '7e1b1a3e-8a44-4a5e-9d0a-2b8f1f0c0c03', NULL, 1, 'bytes', 1, NULL),"
            "(4, '7e1b1a3e-8a44-4a5e-9d0a-2b8f1f0c0c04', NULL, 1, NULL, 123456789012345678901234567890, "
            "NULL)")
    model_file = tmp_path / "odd_values.sql"
    model_file.write_text("-- description: values of every PostgreSQL type the streaming path must handle\n"
                          "-- owner: team:growth\n-- call: identify\n-- mode: upsert\n-- key: id\n"
                          "-- user_id: user_id\n"
                          "SELECT id, user_id, extra, score, blob, big, seen_at FROM odd_values\n")
    model = parse_model(model_file)

    with staging(tmp_path / "staging.duckdb") as con:
        run = sync_model(con, model, url, segment_client_factory, chunk_rows=2)
        reasons = dict(con.execute("SELECT record_key, reason FROM rejected").fetchall())

    assert (run.plan.added, run.plan.rejected, run.delivery.delivered) == (2, 2, 2)
    assert reasons == {"2": "column 'score' is NaN, which JSON cannot represent",
                       "3": "column 'blob' holds binary data, which JSON cannot carry; encode it in the "
                            "query (e.g. base64)"}
    by_user = {m["userId"]: m for m in received(clean_sandbox)}
    first = by_user["7e1b1a3e-8a44-4a5e-9d0a-2b8f1f0c0c01"]["traits"]
    assert first == {"id": 1, "extra": {"tier": [1, 2]}, "score": 0.5, "blob": None, "big": 12.5,
                     "seen_at": "2024-03-01T10:00:00.123Z"}
    assert (by_user["7e1b1a3e-8a44-4a5e-9d0a-2b8f1f0c0c04"]["traits"]["big"]
            == pytest.approx(1.2345678901234568e29))
