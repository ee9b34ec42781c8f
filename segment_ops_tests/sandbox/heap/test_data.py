"""Heap's demo data: segments, their membership per sync window, identities."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from segment_ops.sandbox.demo_data import DemoConfig, DemoData
from segment_ops.sandbox.heap.data import HEAP_SYNC_WINDOW
from segment_ops_tests.sandbox.conftest import NOW, NOW_MS


def test_heap_segments_are_a_few_with_numeric_ids(data: DemoData) -> None:
    segments = data.heap_segments()
    assert 3 <= len(segments) <= 5
    assert all(isinstance(s["id"], int) and s["name"] for s in segments)


def test_heap_membership_is_fixed_within_a_sync_window(data: DemoData) -> None:
    window_start = datetime.fromtimestamp(NOW_MS // 14_400_000 * 14_400, UTC)
    for segment in data.heap_segments():
        first = data.heap_segment_members(segment["id"], window_start)
        window_end = window_start + HEAP_SYNC_WINDOW - timedelta(seconds=1)
        last = data.heap_segment_members(segment["id"], window_end)
        assert first == last == sorted(first)


def test_heap_membership_changes_by_a_few_percent_per_window() -> None:
    data = DemoData(DemoConfig(scale=0.2), now=NOW)
    segment = data.heap_segments()[0]["id"]
    windows = [set(data.heap_segment_members(segment, NOW + k * HEAP_SYNC_WINDOW)) for k in range(12)]
    changes = [len(a ^ b) / len(a) for a, b in zip(windows, windows[1:], strict=False)]
    assert sum(changes) > 0
    assert max(changes) < 0.25
    assert windows[0] != windows[-1]


def test_heap_identities_are_mostly_emails_some_user_ids_and_a_few_unmapped(data: DemoData) -> None:
    members = {m for s in data.heap_segments() for m in data.heap_segment_members(s["id"], NOW)}
    mapped = set(data.heap_identity_map()["identity"])
    emails = {m for m in members if "@" in m}
    assert len(emails) > len(members) / 2
    assert any(re.fullmatch(r"usr_\d{7}", m) for m in members)
    unmapped = members - mapped
    assert 0 < len(unmapped) < len(members) / 10


def test_heap_identity_map_points_at_known_users(data: DemoData) -> None:
    identity_map = data.heap_identity_map()
    assert list(identity_map.columns) == ["identity", "user_id"]
    assert identity_map["identity"].is_unique
    assert set(identity_map["user_id"]) == set(data.users["user_id"].dropna())


def test_unknown_heap_segment_raises(data: DemoData) -> None:
    with pytest.raises(KeyError):
        data.heap_segment_members(42, NOW)

