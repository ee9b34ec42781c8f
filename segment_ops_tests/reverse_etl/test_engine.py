"""The reverse-ETL engine without Dagster: messageIds, rejections, and recovery from interrupted runs."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from segment_ops.engine.calls import deterministic_message_id
from segment_ops.engine.delivery import deliver_pending
from segment_ops.engine.diff import SUPERSEDED, _SpecSql, ensure_state, plan_changes
from segment_ops.engine.ledger import Ledger
from segment_ops.engine.run import DeliveryIncomplete
from segment_ops.engine.store import staging
from segment_ops.engine.warehouse import stage_query
from segment_ops.syncs.reverse_etl.model import parse_model
from segment_ops.syncs.reverse_etl.sync import STAGED_TABLE, sync_model
from segment_ops_tests.reverse_etl.conftest import edit_warehouse, received, segment_stats

HEADER = """\
-- description: Profile traits of the people table, for engine tests.
-- owner: team:growth
-- call: identify
-- mode: upsert
-- key: id
-- user_id: id
"""


@pytest.fixture
def people(tmp_path: Path) -> tuple[str, Path]:
    """(URL, path) of a small DuckDB warehouse with a `people` table."""
    path = tmp_path / "warehouse.duckdb"
    edit_warehouse(path, "CREATE TABLE people AS SELECT 'p' || i AS id, 'name ' || i AS name, i AS score "
                         "FROM range(1, 61) t(i)")
    return f"duckdb:///{path}", path


def model(tmp_path: Path, query: str = "SELECT id, name, score FROM people", header: str = HEADER):
    path = tmp_path / "people.sql"
    path.write_text(header + query + "\n")
    return parse_model(path)


def test_message_ids_have_the_layout_of_the_python_builder():
    con = duckdb.connect()
    for key in ("u1", "usr_0000042", "ünïcode"):
        payload = '{"type":"identify","userId":"' + key + '"}'
        h = f"sha256('replay' || chr(31) || '{key}' || chr(31) || '{payload}')"
        [(from_sql,)] = con.execute(f"SELECT {_SpecSql.message_id(h)}").fetchall()
        assert from_sql == deterministic_message_id("replay", key, payload.encode())


@pytest.mark.slow
def test_oversize_and_unsendable_rows_are_rejected_with_the_reason(tmp_path, people, segment_client_factory,
                                                                   clean_sandbox):
    url, path = people
    edit_warehouse(path, "UPDATE people SET name = repeat('x', 40000) WHERE id = 'p1'",
                   "UPDATE people SET score = NULL, id = ' ' WHERE id = 'p2'")
    spec = model(tmp_path, "SELECT id, name, score::DOUBLE / (score - 3) AS score FROM people")

    with staging(tmp_path / "staging.duckdb") as con:
        run = sync_model(con, spec, url, segment_client_factory)
        reasons = dict(con.execute("SELECT record_key, reason FROM rejected").fetchall())

    assert (reasons["p1"].startswith("message is 40")
            and "Segment's limit is 32,768 bytes per call" in reasons["p1"])
    assert reasons[" "] == "identify needs a userId or an anonymousId; 'id' is empty"
    assert reasons["p3"] == "column 'score' is Infinity, which JSON cannot represent"
    assert (run.plan.rows_read, run.plan.added, run.plan.rejected, run.delivery.delivered) == (60, 57, 3, 57)


@pytest.mark.slow
def test_a_run_killed_after_delivery_advances_its_snapshot_next_time(tmp_path, people, segment_client_factory,
                                                                     clean_sandbox):
    url, _ = people
    spec = model(tmp_path)
    with staging(tmp_path / "staging.duckdb") as con:  # plan and deliver, then "die" before advancing
        ledger = Ledger(con)
        ensure_state(con)
        staged = stage_query(con, url, spec.sql, STAGED_TABLE)
        plan_changes(con, ledger, spec.diff_spec, staged, run_id="killed")
        client = segment_client_factory()
        deliver_pending(ledger, spec.sync, client)
        client.close()
        assert con.execute("SELECT count(*) FROM rev_snapshot").fetchone()[0] == 0

    with staging(tmp_path / "staging.duckdb") as con:
        run = sync_model(con, spec, url, segment_client_factory)

    assert (run.plan.added, run.plan.unchanged, run.delivery.delivered) == (0, 60, 0)
    assert segment_stats(clean_sandbox) == (60, 0)


@pytest.mark.slow
def test_a_pending_change_is_superseded_when_its_row_changes_again(tmp_path, people, segment_client_factory,
                                                                   clean_sandbox):
    url, path = people
    spec = model(tmp_path)
    clean_sandbox.set_faults("segment", rate_503=1.0)
    with staging(tmp_path / "staging.duckdb") as con, pytest.raises(DeliveryIncomplete) as failed:
        sync_model(con, spec, url, segment_client_factory)
    assert failed.value.report.ledger.pending == 60
    clean_sandbox.clear_faults()
    edit_warehouse(path, "UPDATE people SET name = 'renamed' WHERE id = 'p7'")

    with staging(tmp_path / "staging.duckdb") as con:
        run = sync_model(con, spec, url, segment_client_factory)
        statuses = dict(con.execute("SELECT status, count(*) FROM ledger GROUP BY status").fetchall())

    assert (run.plan.superseded, run.plan.planned, run.delivery.delivered) == (1, 1, 60)
    assert statuses == {"delivered": 60, SUPERSEDED: 1}
    [p7] = [m for m in received(clean_sandbox) if m["userId"] == "p7"]
    assert p7["traits"]["name"] == "renamed"  # the stale value was never sent
    assert segment_stats(clean_sandbox) == (60, 0)


@pytest.mark.slow
def test_a_superseded_change_is_sent_when_its_row_returns_to_that_state(tmp_path, people,
                                                                        segment_client_factory,
                                                                        clean_sandbox):
    url, path = people
    spec = model(tmp_path)
    with staging(tmp_path / "staging.duckdb") as con:
        sync_model(con, spec, url, segment_client_factory)
    edit_warehouse(path, "UPDATE people SET name = 'B' WHERE id = 'p7'")
    clean_sandbox.set_faults("segment", rate_503=1.0)
    with staging(tmp_path / "staging.duckdb") as con, pytest.raises(DeliveryIncomplete):
        sync_model(con, spec, url, segment_client_factory)  # B pending
    edit_warehouse(path, "UPDATE people SET name = 'C' WHERE id = 'p7'")
    with staging(tmp_path / "staging.duckdb") as con, pytest.raises(DeliveryIncomplete):
        sync_model(con, spec, url, segment_client_factory)  # B superseded, C pending
    clean_sandbox.clear_faults()
    edit_warehouse(path, "UPDATE people SET name = 'B' WHERE id = 'p7'")

    with staging(tmp_path / "staging.duckdb") as con:
        run = sync_model(con, spec, url, segment_client_factory)  # back to B: C superseded, B pending again

    assert (run.plan.superseded, run.plan.planned, run.delivery.delivered) == (1, 1, 1)
    assert received(clean_sandbox)[-1]["traits"]["name"] == "B"
    assert segment_stats(clean_sandbox) == (61, 0)


@pytest.mark.slow
def test_dry_run_of_a_full_resync_counts_everything_and_changes_nothing(tmp_path, people,
                                                                        segment_client_factory,
                                                                        clean_sandbox):
    url, _ = people
    spec = model(tmp_path)
    with staging(tmp_path / "staging.duckdb") as con:
        sync_model(con, spec, url, segment_client_factory)
        dry = sync_model(con, spec, url, segment_client_factory, dry_run=True, full_resync=True)
        real = sync_model(con, spec, url, segment_client_factory)

    assert (dry.plan.added, dry.plan.planned, dry.delivery) == (60, 60, None)
    assert (real.plan.unchanged, real.delivery.delivered) == (60, 0)
