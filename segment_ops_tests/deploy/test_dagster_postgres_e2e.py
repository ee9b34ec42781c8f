"""Dagster on PostgreSQL: `dagster dev` under `deploy/dagster.yaml` (run, event-log and schedule storage in
a PostgreSQL database of its own on this machine's server), as a deployment runs it. The code location
loads, a reverse-ETL run and a backfill of audit hours run to success, the sensors tick, and all of it is
in PostgreSQL's tables, not in files under DAGSTER_HOME.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from segment_ops.sandbox.app import SandboxConfig
from segment_ops.sandbox.server import start_sandbox
from segment_ops.syncs.audit_trail.defs import FORWARD_KEY, PULL_KEY, audit_events_sensor, complete_hours
from segment_ops.syncs.audit_trail.defs import STAGING_SYNC as AUDIT_STAGING_SYNC
from segment_ops.syncs.reverse_etl.defs import JOB_NAME as REVERSE_ETL_JOB
from segment_ops_tests.conftest import fresh_state_database
from segment_ops_tests.ops.conftest import (
    PROJECT_ROOT,
    SCALE,
    SEED,
    DagsterDev,
    DagsterDevError,
    start_dagster_dev,
    stop_dagster_dev,
)
from segment_ops_tests.ops.test_alerts_e2e import LAUNCH_RUN, finished_ticks, repository
from segment_ops_tests.ops.test_backfill_graphql import BACKFILL_DONE, BACKFILL_STATUS, LAUNCH_BACKFILL

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.timeout(600)]

HOURS = 3
TIMEOUT_SECONDS = 240.0
POLL_SECONDS = 2.0


def wait(what: str, dev: DagsterDev, done) -> object:
    """Poll `done()` until it returns something truthy; raise naming `what` after TIMEOUT_SECONDS."""
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while not (result := done()):
        if time.monotonic() > deadline:
            raise DagsterDevError(f"{what} not done after {TIMEOUT_SECONDS:.0f}s\n{dev.log_tail()}")
        time.sleep(POLL_SECONDS)
    return result


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    """A fresh database for Dagster's storage, dropped afterwards."""
    with fresh_state_database("segment_ops_dagster") as url:
        yield url


@pytest.fixture(scope="module")
def dagster_on_postgres(database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DagsterDev]:
    sandbox = start_sandbox(SandboxConfig(seed=SEED, scale=SCALE))
    try:
        dev = start_dagster_dev(sandbox, tmp_path_factory.mktemp("dagster_pg"),
                                instance_yaml=PROJECT_ROOT / "deploy" / "dagster.yaml",
                                env=pg_env(database))
        try:
            yield dev
        finally:
            stop_dagster_dev(dev)
    finally:
        sandbox.stop()


def pg_env(database: str) -> dict[str, str]:
    """The DAGSTER_PG_* variables deploy/dagster.yaml reads, for `database` on this machine's server, and
    segment_ops's own state in the same database (SEGMENT_OPS_STATE_URL)."""
    return {"DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": "5432",
            "DAGSTER_PG_DB": database.rsplit("/", 1)[1], "DAGSTER_PG_USERNAME": "postgres",
            "DAGSTER_PG_PASSWORD": "", "SEGMENT_OPS_STATE_URL": database}


def rows(database: str, query: str, *params: object) -> list[tuple]:
    with psycopg.connect(database) as con:
        return con.execute(query, params).fetchall()


def test_the_instance_keeps_nothing_but_logs_under_dagster_home(dagster_on_postgres: DagsterDev):
    """With PostgreSQL storage no SQLite database is created: a second machine sees the same instance."""
    home: Path = dagster_on_postgres.dagster_home
    assert not [p for p in home.rglob("*.db")]


def test_a_reverse_etl_run_succeeds_and_is_stored_in_postgresql(dagster_on_postgres: DagsterDev,
                                                                database: str):
    dev = dagster_on_postgres
    launched = dev.graphql(LAUNCH_RUN, {"params": {
        "selector": {**repository(dev), "jobName": REVERSE_ETL_JOB}, "runConfigData": {}}})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]

    status = dev.wait_for_run(run_id, TIMEOUT_SECONDS)

    assert status == "SUCCESS", dev.log_tail()
    assert rows(database, "SELECT status FROM runs WHERE run_id = %s", run_id) == [("SUCCESS",)]
    materialized = rows(database, "SELECT count(*) FROM event_logs WHERE run_id = %s "
                                  "AND dagster_event_type = 'ASSET_MATERIALIZATION'", run_id)[0][0]
    assert materialized >= 1
    assert dev.sandbox.received("segment", limit=1)  # the run delivered to the sandbox's Segment


def test_a_backfill_of_audit_hours_completes_on_postgresql(dagster_on_postgres: DagsterDev, database: str):
    dev = dagster_on_postgres
    keys = complete_hours(HOURS + 2)[:HOURS]
    launched = dev.graphql(LAUNCH_BACKFILL, {"params": {
        "assetSelection": [{"path": PULL_KEY.path}, {"path": FORWARD_KEY.path}],
        "partitionNames": keys, "fromFailure": False, "title": "test: audit hours on PostgreSQL",
    }})["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched

    def finished() -> dict | None:
        status = dev.graphql(BACKFILL_STATUS, {"id": launched["backfillId"]})["partitionBackfillOrError"]
        return status if status.get("status") in BACKFILL_DONE else None

    status = wait("the backfill", dev, finished)

    assert (status["status"], status["numPartitions"]) == ("COMPLETED_SUCCESS", HOURS)
    assert rows(database, "SELECT status FROM bulk_actions WHERE key = %s",
                launched["backfillId"]) == [("COMPLETED_SUCCESS",)]


def test_the_sensors_tick_and_their_ticks_are_stored_in_postgresql(dagster_on_postgres: DagsterDev,
                                                                   database: str):
    dev = dagster_on_postgres
    selector = {**repository(dev), "sensorName": audit_events_sensor.name}

    wait(f"a tick of {audit_events_sensor.name}", dev, lambda: finished_ticks(dev, selector))

    [(ticks,)] = rows(database, "SELECT count(*) FROM job_ticks t JOIN instigators i USING (selector_id) "
                                "WHERE t.type = 'SENSOR' AND i.instigator_body LIKE %s",
                      f'%"{audit_events_sensor.name}"%')
    assert ticks >= 1


def test_the_runs_state_is_in_postgresql_too(dagster_on_postgres: DagsterDev, database: str):
    """The reverse-ETL run and the backfill above checked their syncs' state in: a run on another machine,
    with an empty SEGMENT_OPS_HOME, would find their ledgers there."""
    syncs = dict(rows(database, "SELECT sync, generation FROM segment_ops_state.syncs"))
    assert syncs.get(AUDIT_STAGING_SYNC, 0) >= 1
    [(delivered,)] = rows(database, "SELECT sum(rows) FROM segment_ops_state.objects WHERE name = 'outcomes'")
    assert delivered >= 1
    assert len(syncs) >= 2  # the audit trail and at least one reverse-ETL model
