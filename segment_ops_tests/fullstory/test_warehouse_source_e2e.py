"""Frustrated clicks from Fullstory's warehouse export instead of the streams (`[signals.warehouse] query`):
the example query shipped in fullstory.toml, uncommented, against the demo warehouse's `fullstory.events`,
through `fullstory_signals_job` to the sandbox's Segment."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import duckdb
import pytest

from segment_ops.syncs.fullstory.settings import load_config
from segment_ops_tests.fullstory.conftest import (
    EVENTS,
    SIGNALS_NODE,
    metadata,
    run_signals,
    segment_calls,
)

pytestmark = pytest.mark.slow


def enable_warehouse_source(path) -> None:
    """Uncomment the shipped example `[signals.warehouse]` table (the sandbox's replay URLs carry its org)."""
    text = path.read_text()
    start = text.index("# [signals.warehouse]")
    end = text.index('# """', start) + len('# """')
    block = "\n".join(line.removeprefix("# ") for line in text[start:end].splitlines())
    block = block.replace("<your org id>", "o-SANDBOX-na1")
    path.write_text(text[:start] + block + text[end:])


def frustrated_clicks(warehouse) -> set[str]:
    """The export's frustrated clicks still worth sending (no older than max_delay_hours)."""
    since = datetime.now(UTC) - timedelta(hours=load_config().signals.max_delay_hours - 0.05)
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        return {r[0] for r in con.execute(
            "SELECT event_id FROM fullstory.events WHERE event_type = 'click' AND event_time >= ? AND "
            "(json_extract(event_properties, '$.fs_rage_count') IS NOT NULL OR "
            " json_extract(event_properties, '$.fs_dead_count') IS NOT NULL OR "
            " json_extract(event_properties, '$.fs_error_kind') IS NOT NULL)", [since]).fetchall()}
    finally:
        con.close()


def test_frustrated_clicks_from_the_warehouse_export_are_sent_once(clean_sandbox, resources, ops_env,
                                                                   warehouse, config_file, monkeypatch):
    enable_warehouse_source(config_file)
    monkeypatch.setenv("FULLSTORY_SIGNALS_FILE", str(config_file))
    clicks = frustrated_clicks(warehouse)

    first = run_signals(resources)
    second = run_signals(resources)

    assert first.success and second.success
    meta = metadata(first, SIGNALS_NODE)
    assert meta["events_read"] == 0 and meta["warehouse_clicks_read"] == len(clicks) > 10
    assert sum(meta[f"now_{s}"] for s in ("send", "rate_limited", "filtered", "late", "unidentified",
                                          "not_a_signal", "rejected")) == len(clicks)
    calls = segment_calls(clean_sandbox)
    tracks = [c for c in calls if c["type"] == "track"]
    assert len(tracks) == meta["now_send"] > 0 and {c["event"] for c in tracks} <= set(EVENTS.values())
    assert all(re.fullmatch(r"https://app\.fullstory\.com/ui/o-SANDBOX-na1/session/\d+%3A\d+",
                            c["properties"]["session_url"]) for c in tracks)
    assert all(c["properties"]["page_url"].startswith("https://") for c in tracks)
    again = metadata(second, SIGNALS_NODE)
    assert again["warehouse_clicks_read"] >= len(clicks) - 1 and again["new_events"] == 0
    assert len([c for c in segment_calls(clean_sandbox) if c["type"] == "track"]) == len(tracks)


def test_a_warehouse_query_without_the_needed_columns_fails_naming_them(clean_sandbox, resources, ops_env,
                                                                        warehouse, config_file, monkeypatch):
    text = config_file.read_text().replace("[signals.limits]", '[signals.warehouse]\nquery = """\n'
                                            "SELECT event_id, event_time FROM fullstory.events "
                                            'WHERE event_time >= {since} LIMIT 3\n"""\n\n[signals.limits]', 1)
    config_file.write_text(text)
    monkeypatch.setenv("FULLSTORY_SIGNALS_FILE", str(config_file))

    result = run_signals(resources)

    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert "[signals.warehouse] query returns no column(s) stream" in str(failure.step_failure_data.error)
