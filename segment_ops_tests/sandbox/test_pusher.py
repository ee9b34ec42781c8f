"""The outbound-webhook machinery the Heap and Fullstory pushers share (`sandbox/pusher.py`)."""

from __future__ import annotations

import re

import pytest

from segment_ops.sandbox.pusher import PushError, Target, target_settings


def test_the_retry_delay_doubles_up_to_the_most():
    target = Target("t", "http://x", retry_initial_seconds=1.0, retry_max_seconds=5.0)

    assert [target.retry_delay(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_target_settings_reads_the_shared_fields_with_the_vendors_default_attempts():
    assert target_settings({"url": "https://x/hook", "interval_seconds": "2"}, max_attempts=30) == {
        "url": "https://x/hook", "interval_seconds": 2.0, "max_attempts": 30, "retry_initial_seconds": 1.0,
        "retry_max_seconds": 60.0}


@pytest.mark.parametrize(("spec", "message"), [
    ({"url": "ftp://x"}, "url must be an http(s) URL"),
    ({"url": "http://x", "max_attempts": "many"}, "invalid registration"),
    ({"url": "http://x", "max_attempts": 0}, "max_attempts must be >= 1"),
    ({"url": "http://x", "retry_initial_seconds": -1}, "retry_initial_seconds >= 0"),
])
def test_target_settings_refuses_what_it_cannot_use(spec, message):
    with pytest.raises(PushError, match=re.escape(message)):
        target_settings(spec, max_attempts=8)
