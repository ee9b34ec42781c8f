"""Segment's demo data: the workspace audit trail."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

import pytest

from segment_ops.sandbox.demo_data import DemoData
from segment_ops_tests.sandbox.conftest import NOW, SMALL


def test_audit_events_have_the_public_api_shape(data: DemoData) -> None:
    events = data.audit_events(NOW - timedelta(days=3), NOW)
    assert events
    required = {"id", "timestamp", "type", "actor", "resourceId", "resourceType", "resourceName"}
    for event in events:
        assert required <= event.keys() <= required | {"actorEmail"}
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", event["timestamp"])
    assert any("actorEmail" not in e for e in events) and any("actorEmail" in e for e in events)
    assert len({e["id"] for e in events}) == len(events)


def test_audit_events_are_newest_first_and_never_after_now(data: DemoData) -> None:
    events = data.audit_events(NOW - timedelta(days=2), NOW + timedelta(days=1))
    stamps = [e["timestamp"] for e in events]
    assert stamps == sorted(stamps, reverse=True)
    assert stamps[0] <= NOW.strftime("%Y-%m-%dT%H:%M:%S.999Z")


def test_audit_window_excludes_start_and_includes_end(data: DemoData) -> None:
    event = data.audit_events(NOW - timedelta(days=1), NOW)[5]
    at = datetime.fromisoformat(event["timestamp"])
    assert event["id"] not in {e["id"] for e in data.audit_events(at, at + timedelta(hours=1))}
    assert event["id"] in {e["id"] for e in data.audit_events(at - timedelta(milliseconds=1), at)}


def test_audit_events_cover_every_day_of_the_last_three_weeks(data: DemoData) -> None:
    events = data.audit_events(NOW - timedelta(days=21), NOW)
    days = {e["timestamp"][:10] for e in events}
    expected = {(NOW - timedelta(days=d)).strftime("%Y-%m-%d") for d in range(21)}
    assert expected <= days
    hours = {e["timestamp"][:13] for e in events}
    assert len(hours) < 21 * 24, "a small workspace has quiet hours"


def test_audit_events_agree_between_instances_built_at_different_times() -> None:
    early = DemoData(SMALL, now=NOW)
    later = DemoData(SMALL, now=NOW + timedelta(hours=3, minutes=11))
    window = (NOW - timedelta(days=2), NOW)
    assert early.audit_events(*window) == later.audit_events(*window)
    newer = later.audit_events(NOW, NOW + timedelta(hours=4))
    assert newer and all(e["timestamp"] > early.audit_events(*window)[0]["timestamp"] for e in newer)


def test_audit_events_older_than_retention_are_not_returned(data: DemoData) -> None:
    events = data.audit_events(NOW - timedelta(days=365), NOW)
    assert min(e["timestamp"] for e in events) >= (NOW - timedelta(days=90)).strftime("%Y-%m-%dT%H:%M:%S")


def test_naive_datetimes_are_rejected(data: DemoData) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        data.audit_events(datetime(2026, 11, 1), NOW)

