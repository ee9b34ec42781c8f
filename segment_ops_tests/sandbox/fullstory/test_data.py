"""Fullstory's demo data and its raw warehouse export (`fullstory.events`)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import duckdb
import orjson
import pytest

from segment_ops.sandbox.demo_data import DemoData
from segment_ops.sandbox.fullstory.data import INTERNAL_EMAIL_DOMAIN, WINDOW_DAYS
from segment_ops.sandbox.fullstory.streams import stream_body
from segment_ops.sandbox.warehouse import build_demo_warehouse
from segment_ops_tests.sandbox.conftest import NOW, SMALL

# dbt_fullstory's source columns of the raw `events` table, in order.
RAW_COLUMNS = ["event_id", "event_time", "processed_time", "updated_time", "device_id", "session_id",
               "view_id", "event_type", "event_properties", "source_type", "source_properties"]


@pytest.fixture(scope="module")
def con(data: DemoData, tmp_path_factory: pytest.TempPathFactory) -> duckdb.DuckDBPyConnection:
    path: Path = tmp_path_factory.mktemp("fullstory") / "wh.duckdb"
    build_demo_warehouse(path, data)
    connection = duckdb.connect(str(path), read_only=True)
    yield connection
    connection.close()


def test_frustration_events_cover_the_last_week_for_customers_staff_and_anonymous(data: DemoData):
    events = data.fullstory_frustration_events()

    assert 20 < len(events) < 200
    assert {e.stream_name for e in events} == {"Rage Click", "Dead Click", "Error Click"}
    kinds = Counter(e.user.kind for e in events)
    assert kinds["customer"] > kinds["staff"] > 0 and kinds["anonymous"] > 0
    assert all(e.user.email.endswith(INTERNAL_EMAIL_DOMAIN) for e in events if e.user.kind == "staff")
    start = NOW.timestamp() - WINDOW_DAYS * 86_400
    assert all(start < e.event_time_ms / 1000 <= NOW.timestamp() for e in events)


def test_customers_uids_are_segment_user_ids_of_the_world(data: DemoData):
    known = set(data.users["user_id"].dropna())

    uids = {u.uid for u in data.fullstory_users() if u.kind == "customer"}

    assert uids and uids <= known


def test_the_same_seed_and_moment_give_the_same_events(data: DemoData):
    again = DemoData(SMALL, now=NOW)

    assert [stream_body(e, "mapped") for e in again.fullstory_frustration_events()] == \
        [stream_body(e, "mapped") for e in data.fullstory_frustration_events()]


def test_no_two_default_bodies_are_alike(data: DemoData):
    bodies = [orjson.dumps(stream_body(e, "v2")) for e in data.fullstory_frustration_events()]

    assert len(set(bodies)) == len(bodies)


def test_the_raw_events_table_has_fullstorys_columns(con: duckdb.DuckDBPyConnection):
    columns = con.execute("""
        SELECT column_name, data_type FROM information_schema.columns
        WHERE table_schema = 'fullstory' AND table_name = 'events' ORDER BY ordinal_position
    """)
    types = dict(columns.fetchall())

    assert list(types) == RAW_COLUMNS
    assert types["event_time"] == "TIMESTAMP WITH TIME ZONE" and types["session_id"] == "BIGINT"
    assert types["event_properties"] == "JSON"


def test_the_warehouse_holds_every_streamed_frustration_click(data: DemoData, con: duckdb.DuckDBPyConnection):
    frustrated = con.execute("""
        SELECT event_id FROM fullstory.events
        WHERE event_type = 'click' AND (event_properties->>'fs_rage_count' IS NOT NULL
              OR event_properties->>'fs_dead_count' IS NOT NULL
              OR event_properties->>'fs_error_kind' IS NOT NULL)
    """).fetchall()

    assert sorted(i for (i,) in frustrated) == sorted(e.event_id for e in data.fullstory_frustration_events())
    types = {t for (t,) in con.execute("SELECT DISTINCT event_type FROM fullstory.events").fetchall()}
    assert types == {"identify", "navigate", "click", "exception"}


def test_identify_events_name_customers_of_the_warehouse(con: duckdb.DuckDBPyConnection):
    unknown = con.execute("""
        SELECT count(*) FROM fullstory.events e
        WHERE event_type = 'identify' AND event_properties->>'user_email' NOT LIKE '%@staff.example'
          AND event_properties->>'user_id' NOT IN (SELECT user_id FROM customers WHERE user_id IS NOT NULL)
    """).fetchone()[0]

    assert unknown == 0
