"""What the sandbox's tests share: one small demo world, seen at a fixed moment."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from segment_ops.sandbox.demo_data import DemoConfig, DemoData

NOW = datetime(2026, 11, 20, 13, 37, 12, tzinfo=UTC)  # a Friday afternoon
DAY_MS, HOUR_MS = 86_400_000, 3_600_000
NOW_MS = int(NOW.timestamp() * 1000)
SMALL = DemoConfig(seed=7, scale=0.1)


@pytest.fixture(scope="module")
def data() -> DemoData:
    return DemoData(SMALL, now=NOW)
