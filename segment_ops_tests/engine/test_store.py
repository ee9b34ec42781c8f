"""The state registry: schemas are created once, migrated in order, and never silently mixed."""

from __future__ import annotations

import duckdb
import pytest

from segment_ops.engine import store
from segment_ops.engine.store import StateSchema, StateSchemaError

V1 = "CREATE TABLE IF NOT EXISTS t_items (id INTEGER NOT NULL)"
V2 = ("CREATE TABLE IF NOT EXISTS t_items (id INTEGER NOT NULL, note VARCHAR); "
      "CREATE TABLE IF NOT EXISTS t_extra (x INTEGER)")


@pytest.fixture
def registry(monkeypatch):
    monkeypatch.setattr(store, "_REGISTRY", {})
    return store


def columns(con, table):
    return [r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()]


def test_a_new_file_gets_the_current_version_and_ensuring_again_changes_nothing(registry):
    schema = registry.register(StateSchema("items", 2, ("t_items", "t_extra"), V2,
                                           {1: "ALTER TABLE t_items ADD COLUMN note VARCHAR"}))
    con = duckdb.connect()
    registry.ensure(con, schema)
    registry.ensure(con, schema)

    assert registry.schema_version(con, "items") == 2
    assert columns(con, "t_items") == ["id", "note"]
    assert con.execute("SELECT count(*) FROM state_schema_versions").fetchone()[0] == 1


def test_a_file_of_an_older_version_is_migrated_in_order_keeping_its_rows(registry):
    con = duckdb.connect()
    old = StateSchema("items", 1, ("t_items",), V1)
    registry.register(old)
    registry.ensure(con, old)
    con.execute("INSERT INTO t_items VALUES (7)")
    registry._REGISTRY.clear()
    new = registry.register(StateSchema("items", 3, ("t_items", "t_extra"),
                                        V2 + "; CREATE TABLE IF NOT EXISTS "
                                             "t_more (y INTEGER)",
                                        {1: "ALTER TABLE t_items ADD COLUMN note VARCHAR",
                                         2: "UPDATE t_items SET note = 'v3'"}))
    registry.ensure(con, new)

    assert con.execute("SELECT id, note FROM t_items").fetchall() == [(7, "v3")]
    assert registry.schema_version(con, "items") == 3


def test_a_file_made_before_versions_were_recorded_counts_as_version_one_and_gets_its_missing_tables(
        registry):
    con = duckdb.connect()
    con.execute(V1)
    con.execute("INSERT INTO t_items VALUES (1)")
    schema = registry.register(StateSchema(
        "items", 2, ("t_items", "t_extra"), V2,
        {1: "ALTER TABLE t_items ADD COLUMN IF NOT EXISTS note VARCHAR; "
            "UPDATE t_items SET note = 'migrated'"}))
    registry.ensure(con, schema)

    assert con.execute("SELECT id, note FROM t_items").fetchall() == [(1, "migrated")]
    assert con.execute("SELECT count(*) FROM t_extra").fetchone()[0] == 0
    assert registry.schema_version(con, "items") == 2


def test_a_file_from_a_newer_release_is_refused(registry):
    con = duckdb.connect()
    newer = StateSchema("items", 2, ("t_items",), V2, {1: "SELECT 1"})
    registry.register(newer)
    registry.ensure(con, newer)
    registry._REGISTRY.clear()
    older = registry.register(StateSchema("items", 1, ("t_items",), V1))

    with pytest.raises(StateSchemaError, match="newer than this release"):
        registry.ensure(con, older)


def test_a_failed_migration_leaves_the_file_as_it_was(registry):
    con = duckdb.connect()
    registry.register(StateSchema("items", 1, ("t_items",), V1))
    registry.ensure(con, StateSchema("items", 1, ("t_items",), V1))
    registry._REGISTRY.clear()
    broken = registry.register(StateSchema("items", 2, ("t_items",), V2,
                                           {1: "ALTER TABLE no_such_table ADD x INT"}))

    with pytest.raises(duckdb.Error):
        registry.ensure(con, broken)
    assert registry.schema_version(con, "items") == 1
    assert columns(con, "t_items") == ["id"]


def test_registration_refuses_gaps_unlisted_tables_shared_tables_and_unregistered_schemas(registry):
    with pytest.raises(StateSchemaError, match="lacks the migration"):
        StateSchema("items", 2, ("t_items",), V1)
    with pytest.raises(StateSchemaError, match="does not create it"):
        StateSchema("items", 1, ("t_items", "t_other"), V1)
    registry.register(StateSchema("items", 1, ("t_items",), V1))
    with pytest.raises(StateSchemaError, match="already belong to 'items'"):
        registry.register(StateSchema("thieves", 1, ("t_items",), V1))
    with pytest.raises(StateSchemaError, match="registered twice"):
        registry.register(StateSchema("items", 1, ("t_items",), V1 + " "))
    with pytest.raises(StateSchemaError, match="not registered"):
        loose = StateSchema("loose", 1, ("t_loose",), "CREATE TABLE IF NOT EXISTS t_loose (x INT)")
        registry.ensure(duckdb.connect(), loose)
