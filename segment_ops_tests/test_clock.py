"""SEGMENT_OPS_CLOCK: one pinned "now" for the syncs' window choices and the sandbox's demo world."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from segment_ops import clock
from segment_ops.clients import SegmentPublicApiClient
from segment_ops.config import SANDBOX_SEGMENT_PUBLIC_API_TOKEN, SETTINGS
from segment_ops.demo import _use_sandbox_only, audit_window
from segment_ops.sandbox.demo_data import DemoConfig, DemoData
from segment_ops.syncs.audit_trail.defs import PARTITIONS, complete_hours
from segment_ops.syncs.pendo.defs import latest_days

SUNDAY = "2026-11-29T11:30:00Z"  # a Sunday; its last complete hour (10:00) holds no demo audit event


@pytest.fixture
def pinned(monkeypatch: pytest.MonkeyPatch) -> datetime:
    monkeypatch.setenv("SEGMENT_OPS_CLOCK", SUNDAY)
    return datetime(2026, 11, 29, 11, 30, tzinfo=UTC)


def test_unset_the_clock_is_the_real_time(monkeypatch):
    monkeypatch.delenv("SEGMENT_OPS_CLOCK", raising=False)

    assert abs(clock.now() - datetime.now(UTC)) < timedelta(seconds=5)


def test_a_pinned_clock_stands_still_at_its_instant(pinned):
    assert clock.now() == pinned and clock.now().tzinfo is not None


@pytest.mark.parametrize("raw", ["2026-11-29T11:30:00", "next sunday", "2026-13-01T00:00:00Z"])
def test_a_clock_without_an_offset_or_not_a_time_is_refused(monkeypatch, raw):
    monkeypatch.setenv("SEGMENT_OPS_CLOCK", raw)

    with pytest.raises(clock.ClockSettingError, match="SEGMENT_OPS_CLOCK"):
        clock.now()


def test_the_clock_is_a_documented_setting_the_demo_keeps(pinned, monkeypatch, tmp_path):
    assert "SEGMENT_OPS_CLOCK" in {s.name for s in SETTINGS}
    monkeypatch.setenv("SEGMENT_OPS_HOME", str(tmp_path))

    _use_sandbox_only(tmp_path)

    assert clock.now() == pinned


def test_window_choices_follow_the_pinned_clock(pinned):
    assert complete_hours(2) == ["2026-11-29-09:00", "2026-11-29-10:00"]
    assert latest_days(1)[1] < "2026-11-29"  # the newest settled Pendo day is before the pinned Sunday


def test_the_demo_world_is_seen_at_the_pinned_clock(pinned):
    assert DemoData(DemoConfig(scale=0.1)).now == pinned


def test_the_demo_forwards_the_newest_hours_that_hold_events_on_a_quiet_weekend_hour(pinned):
    data = DemoData(DemoConfig())
    [last] = complete_hours(1)
    quiet = PARTITIONS.time_window_for_partition_key(last)
    assert pinned.weekday() == 6 and data.audit_events(quiet.start, quiet.end) == []

    first, end = audit_window(data)

    window = PARTITIONS.time_window_for_partition_key(first)
    assert end == last and first < last
    assert data.audit_events(window.start, window.end)


def test_the_sandbox_lists_audit_events_up_to_the_pinned_clock_only(pinned, clean_sandbox):
    start, end = pinned - timedelta(days=3), pinned + timedelta(days=3)

    client = SegmentPublicApiClient(f"{clean_sandbox.url}/segmentapis", SANDBOX_SEGMENT_PUBLIC_API_TOKEN)
    try:
        stamps = [datetime.fromisoformat(e["timestamp"]) for e in client.iter_audit_events(start, end)]
    finally:
        client.close()

    assert stamps and max(stamps) <= pinned


def test_a_clock_pinned_later_than_the_real_time_is_refused(monkeypatch):
    later = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    monkeypatch.setenv("SEGMENT_OPS_CLOCK", later)

    with pytest.raises(clock.ClockSettingError, match="later than the real time"):
        clock.now()


def test_a_pinned_clock_is_refused_while_a_vendor_url_points_at_a_real_vendor(pinned, monkeypatch):
    # Left in a deployment's .env, a pin would freeze the audit trail's hours without a word.
    monkeypatch.setenv("SEGMENT_PUBLIC_API_URL", "https://api.segmentapis.com")

    with pytest.raises(clock.ClockSettingError, match="SEGMENT_PUBLIC_API_URL point"):
        clock.now()


def test_a_pinned_clock_is_honoured_while_the_vendor_urls_point_at_the_sandbox(pinned, monkeypatch):
    monkeypatch.setenv("SEGMENT_OPS_SANDBOX_URL", "http://127.0.0.1:9999")
    monkeypatch.setenv("SEGMENT_PUBLIC_API_URL", "http://127.0.0.1:9999/segmentapis")

    assert clock.now() == pinned
