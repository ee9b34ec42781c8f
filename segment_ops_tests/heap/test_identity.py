"""Identity resolution: map, documented fallback, rejections with reasons, and the match rate."""

from __future__ import annotations

import tomllib
from pathlib import Path

import duckdb
import pytest

from segment_ops.syncs.heap.audiences import DEFAULT_FILE
from segment_ops_tests.heap.conftest import (
    MEMBERS,
    POWER_USERS,
    add_heap_users,
    add_members,
    calls,
    checks,
    connect_rows,
    edit_warehouse,
    materialize,
    metadata,
    set_in_file,
)

UNMAPPED_EMAIL, UNMAPPED_ID = "former.user1@mail.example", "usr_9999001"


def rejected(home: Path) -> list[tuple[str, str]]:
    con = duckdb.connect(str(home / "staging" / "heap_power_users.duckdb"), read_only=True)
    try:
        return con.execute("SELECT record_key, reason FROM rejected WHERE sync = 'heap_power_users' "
                           "ORDER BY record_key").fetchall()
    finally:
        con.close()


def add_unmapped_members(warehouse: Path) -> None:
    add_members(warehouse, POWER_USERS, UNMAPPED_EMAIL, UNMAPPED_ID)  # Heap users without app_user_id


@pytest.mark.slow
def test_an_unmapped_email_is_rejected_with_the_reason(resources, clean_sandbox, warehouse, ops_env):
    add_unmapped_members(warehouse)

    result = materialize(resources, "power_users", route="reconcile")

    assert result.success
    assert rejected(ops_env) == [(UNMAPPED_EMAIL, "Heap identity is not in the identity map and looks like "
                                                  "an email, which is never sent as a userId")]
    assert UNMAPPED_EMAIL not in {m["userId"] for m in clean_sandbox.received("segment", limit=1000)}
    assert metadata(result, "power_users")["unresolved_sample"]


@pytest.mark.slow
def test_an_unmapped_id_that_is_not_an_email_is_sent_as_the_user_id(resources, clean_sandbox, warehouse):
    members = connect_rows(warehouse, POWER_USERS)  # every one of them is in the identity map at HEAP_AT
    add_unmapped_members(warehouse)

    result = materialize(resources, "power_users", route="reconcile")

    assert UNMAPPED_ID in {m["userId"] for m in calls(clean_sandbox, "heap_power_users")["in"]}
    meta = metadata(result, "power_users")
    assert ((meta["heap_members"], meta["mapped"], meta["fallback_user_ids"], meta["unresolved"])
            == (members + 2, members, 1, 1))
    assert meta["match_rate"] == round((members + 1) / (members + 2), 4)


@pytest.mark.slow
def test_fallback_reject_rejects_every_unmapped_id(resources, clean_sandbox, warehouse, ops_env,
                                                   audiences_file):
    set_in_file(audiences_file, 'fallback = "user_id_unless_email"', 'fallback = "reject"')
    add_unmapped_members(warehouse)

    result = materialize(resources, "power_users", path=audiences_file, route="reconcile")

    assert result.success
    assert rejected(ops_env) == [
        (UNMAPPED_EMAIL, "Heap identity is not in the identity map (fallback: reject)"),
        (UNMAPPED_ID, "Heap identity is not in the identity map (fallback: reject)")]


@pytest.mark.slow
def test_a_match_rate_below_the_minimum_warns(resources, clean_sandbox, warehouse, audiences_file):
    set_in_file(audiences_file, "min_match_rate = 0.95", "min_match_rate = 0.99")
    members = connect_rows(warehouse, POWER_USERS)
    add_unmapped_members(warehouse)

    check = checks(materialize(resources, "power_users", path=audiences_file,
                               route="reconcile"))["identity_match_rate"]

    assert not check.passed and check.severity.value == "WARN"
    assert check.metadata["match_rate"].value == round((members + 1) / (members + 2), 4)


@pytest.mark.slow
def test_an_unresolved_member_is_rejected_once_not_on_every_run(resources, clean_sandbox, warehouse, ops_env):
    add_unmapped_members(warehouse)

    first = materialize(resources, "power_users", route="reconcile")
    second = materialize(resources, "power_users", route="reconcile")

    assert metadata(first, "power_users")["newly_rejected"] == 1
    assert (metadata(second, "power_users")["newly_rejected"] == 0
            and metadata(second, "power_users")["unresolved"] == 1)
    assert len(rejected(ops_env)) == 1


@pytest.mark.slow
def test_an_identity_mapped_to_two_users_is_rejected_naming_both(resources, clean_sandbox, warehouse,
                                                                 ops_env):
    con = duckdb.connect(str(warehouse), read_only=True)
    [(identity, user)] = con.execute(
        f"SELECT identity, app_user_id FROM {MEMBERS} WHERE segment_id = {POWER_USERS} ORDER BY 1 LIMIT 1"
    ).fetchall()
    con.close()
    add_heap_users(warehouse, (identity, "usr_other"))  # a second Heap user with the same identity

    materialize(resources, "power_users", route="reconcile")

    [(key, reason)] = rejected(ops_env)
    assert key == identity and f"mapped to several Segment users ({user}, usr_other)" in reason


@pytest.mark.slow
def test_the_identity_map_can_come_from_a_csv(resources, clean_sandbox, warehouse, audiences_file, tmp_path):
    csv = tmp_path / "map.csv"
    con = duckdb.connect(str(warehouse), read_only=True)
    con.execute("COPY (SELECT identity AS source_id, 'csv_' || user_id AS target_id FROM identity_map) "
                f"TO '{csv}' (HEADER)")
    con.close()
    set_in_file(audiences_file, 'query = """\n' + default_query("identity", "query") + '"""',
                f'csv = "{csv}"')

    result = materialize(resources, "power_users", path=audiences_file, route="reconcile")

    assert result.success and "CSV" in metadata(result, "power_users")["identity_map"]
    user_ids = {m["userId"] for m in calls(clean_sandbox, "heap_power_users")["in"]}
    assert user_ids and all(u.startswith("csv_usr_") for u in user_ids)


def default_query(section: str, key: str) -> str:
    return tomllib.loads(DEFAULT_FILE.read_text())[section][key]


def test_the_default_identity_query_reads_only_identified_users_with_a_user_id(warehouse):
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        anonymous = con.execute(
            "SELECT count(*) FROM main_production.users WHERE identity IS NULL").fetchone()[0]
        incomplete = con.execute(f"SELECT count(*) FROM ({default_query('identity', 'query')}) "
                                 "WHERE source_id IS NULL OR target_id IS NULL").fetchone()[0]
    finally:
        con.close()

    assert anonymous > 0 and incomplete == 0


def test_the_default_reconcile_query_reads_no_member_without_an_identity(warehouse):
    [anonymous] = add_heap_users(warehouse, (None, None))
    edit_warehouse(warehouse,
                   f"INSERT INTO main_production.segment_members VALUES ({POWER_USERS}, {anonymous}, now())")
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        nulls = con.execute(f"SELECT count(*) FROM ({default_query('reconcile', 'members_query')}) "
                            "WHERE identity IS NULL").fetchone()[0]
    finally:
        con.close()

    assert nulls == 0
