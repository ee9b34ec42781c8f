"""Fullstory's warehouse export (Anywhere: Warehouse, "Raw Data") in the demo warehouse: `fullstory.events`.

Vendor sources: github fullstorydev/dbt_fullstory (`models/staging/_fullstory__sources.yml`,
`stg_fullstory__events.sql`, `seeds/fullstory_event_types.csv`, `seeds/fullstory_source_types.csv`);
developer.fullstory.com/destinations/events; help.fullstory.com "Data Destinations" (as gathered in the
project's Fullstory facts notes).

Verified: the raw table is `events` (`fullstory_events_<org>` on BigQuery) with exactly the columns
`event_id, event_time, processed_time, updated_time, device_id, session_id, view_id, event_type,
event_properties, source_type, source_properties`; device, session and view ids are int64; `event_type` is
lower case (`click`, `navigate`, `exception`, `identify`, ...: there is no rage/dead/error click type,
frustration is an attribute of a click); `source_type` `web`; `source_properties` holds `url.{full_url,
host, path, query, hash_path, hash_query}`, `user_agent.{...}` and `location.{...}`; the user is not a
column but
`event_properties` `user_id`, `user_email`, `user_display_name` (dbt carries the session's latest `user_id`
forward to its other events); a click's target is `event_properties.target.{text, masked, raw_selector}`; a
session's replay URL is `https://app.fullstory.com/ui/<org>/session/<device_id>:<session_id>`.

Unverified (inferred): `user_id` is the app's uid and only the session's `identify` event carries the user;
a frustrated click's `event_properties` hold `fs_rage_count`, `fs_dead_count` and `fs_error_kind` (the column
names of the Ready to Analyze Views' `CLICKS`; the raw keys are undocumented); an exception's text is
`event_properties.message`; rows are processed a few minutes after the event, and the export holds every event
up to `now` (Fullstory syncs hourly); the schema is named `fullstory`. The Views layout (`EVENTS`, `CLICKS`,
`USERS`, ...) is not built. Events sent by a stream's `late_hours` fault are not in this table.
"""

from __future__ import annotations

import duckdb
import orjson
import pyarrow as pa

from segment_ops.sandbox.fullstory.data import APP_HOST, FullstoryDemoData, FullstoryEvent

FULLSTORY_SCHEMA = "fullstory"
FULLSTORY_TABLES = (f"{FULLSTORY_SCHEMA}.events",)
_PROCESSING_DELAY_MS = 4 * 60 * 1000
_USER_AGENT = {"raw_user_agent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 "
                                 "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
               "device": "Desktop", "operating_system": "Mac OS X", "browser": "Chrome",
               "browser_version": "131.0.0.0"}


def create_fullstory_tables(con: duckdb.DuckDBPyConnection, data: FullstoryDemoData) -> None:
    """Create `fullstory.events` in `con`: every event of `data`'s Fullstory sessions (oldest first)."""
    events = data.fullstory_events()
    times = pa.array([e.event_time_ms for e in events], pa.int64())
    frame = pa.table({
        "event_id": pa.array([e.event_id for e in events], pa.string()),
        "event_time": times.cast(pa.timestamp("ms", tz="UTC")),
        "processed_time": pa.array([e.event_time_ms + _PROCESSING_DELAY_MS for e in events],
                                   pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
        "device_id": pa.array([e.device_id for e in events], pa.int64()),
        "session_id": pa.array([e.session_id for e in events], pa.int64()),
        "view_id": pa.array([e.view_id for e in events], pa.int64()),
        "event_type": pa.array([e.event_type for e in events], pa.string()),
        "event_properties": pa.array([orjson.dumps(_event_properties(e)).decode() for e in events],
                                     pa.string()),
        "source_properties": pa.array([orjson.dumps(_source_properties(e)).decode() for e in events],
                                      pa.string()),
    })
    con.register("fullstory_events_df", frame)
    con.execute(f"CREATE SCHEMA {FULLSTORY_SCHEMA}")
    con.execute(f"""
        CREATE TABLE {FULLSTORY_SCHEMA}.events AS
        SELECT event_id::VARCHAR AS event_id, event_time::TIMESTAMPTZ AS event_time,
               processed_time::TIMESTAMPTZ AS processed_time, processed_time::TIMESTAMPTZ AS updated_time,
               device_id::BIGINT AS device_id, session_id::BIGINT AS session_id, view_id::BIGINT AS view_id,
               event_type::VARCHAR AS event_type, event_properties::JSON AS event_properties,
               'web' AS source_type, source_properties::JSON AS source_properties
        FROM fullstory_events_df
    """)
    con.unregister("fullstory_events_df")


def _event_properties(event: FullstoryEvent) -> dict:
    if event.event_type == "identify":
        user = event.user
        return {"user_id": user.uid, "user_email": user.email, "user_display_name": user.display_name}
    if event.event_type == "click":
        properties: dict = {"target": {"text": event.target_text, "masked": False,
                                       "raw_selector": event.raw_selector}}
        if event.rage_count:
            properties["fs_rage_count"] = event.rage_count
        if event.dead_count:
            properties["fs_dead_count"] = event.dead_count
        if event.error_kind:
            properties["fs_error_kind"] = event.error_kind
        return properties
    if event.event_type == "exception":
        return {"message": event.message}
    return {}


def _source_properties(event: FullstoryEvent) -> dict:
    path = event.url.split(APP_HOST, 1)[1] or "/"
    return {"url": {"full_url": event.url, "host": APP_HOST, "path": path, "query": "", "hash_path": "",
                    "hash_query": ""},
            "user_agent": _USER_AGENT}
