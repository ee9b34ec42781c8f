"""The recorder and the `/__sandbox__` control endpoints."""

from __future__ import annotations

import socket
import time
from datetime import UTC, datetime, timedelta

import httpx

from segment_ops.config import SANDBOX_SEGMENT_PUBLIC_API_TOKEN, SANDBOX_SEGMENT_WRITE_KEY, load_settings
from segment_ops.sandbox.recorder import Recorder

AUTH = (SANDBOX_SEGMENT_WRITE_KEY, "")


def send_identifies(http: httpx.Client, count: int, prefix: str = "m") -> None:
    batch = [{"type": "identify", "userId": f"u{i}", "messageId": f"{prefix}{i}"} for i in range(count)]
    assert http.post("/segment/v1/batch", json={"batch": batch}, auth=AUTH).status_code == 200


def test_record_limit_bounds_stored_bodies_but_not_counts():
    recorder = Recorder(record_limit=3)
    log = recorder["segment"]
    for i in range(5):
        log.store({"i": i})

    assert log.counts["received"] == 5
    assert log.page(0, 10) == [b'{"i":2}', b'{"i":3}', b'{"i":4}']
    assert recorder.stats()["segment"]["stored"] == 3


def test_first_seen_counts_duplicates():
    log = Recorder(record_limit=10)["heap"]

    assert [log.first_seen("k"), log.first_seen("k"), log.first_seen("other")] == [True, False, True]
    assert log.counts["duplicates"] == 1 and log.times_seen("k") == 2


def test_first_seen_forgets_a_key_after_its_window():
    log = Recorder(record_limit=10)["segment"]

    assert log.first_seen("k", window=0.05) and not log.first_seen("k", window=0.05)
    time.sleep(0.1)
    assert log.first_seen("k", window=0.05)  # a late duplicate: let through, counted apart
    assert (log.counts["duplicates"], log.counts["late_duplicates"], log.times_seen("k")) == (1, 1, 3)


def test_record_limit_over_http_keeps_the_newest(sandbox_factory):
    small = sandbox_factory(record_limit=5)
    with httpx.Client(base_url=small.url) as http:
        send_identifies(http, 8)

    stats = small.stats()["segment"]
    assert (stats["received"], stats["stored"]) == (8, 5)
    assert [m["messageId"] for m in small.received("segment")] == ["m3", "m4", "m5", "m6", "m7"]


def test_stats_cover_every_api_including_reserved_slack(clean_sandbox):
    stats = clean_sandbox.stats()

    assert stats["slack"] == {"requests": 0, "received": 0, "stored": 0}


def test_stats_count_requests_and_statuses(sandbox_http, clean_sandbox):
    send_identifies(sandbox_http, 2)
    sandbox_http.post("/segment/v1/batch", json={"batch": []})  # no write key

    stats = clean_sandbox.stats()["segment"]
    assert stats["requests"] == 2 and stats["status"] == {"200": 1, "400": 1}
    assert stats["messages"] == 2 and stats["by_type"] == {"identify": 2}


def test_received_pages_with_limit_and_offset(sandbox_http, clean_sandbox):
    send_identifies(sandbox_http, 5)

    page = sandbox_http.get("/__sandbox__/received/segment", params={"limit": 2, "offset": 1}).json()

    assert [m["messageId"] for m in page["items"]] == ["m1", "m2"]
    assert (page["received"], page["stored"], page["offset"]) == (5, 5, 1)


def test_received_for_unknown_api_is_404(sandbox_http):
    assert sandbox_http.get("/__sandbox__/received/mailchimp").status_code == 404


def test_seen_reports_message_id_counts(sandbox_http, clean_sandbox):
    send_identifies(sandbox_http, 1)
    send_identifies(sandbox_http, 1)

    assert clean_sandbox.seen("segment", "m0") == 2
    assert clean_sandbox.seen("segment", "never-sent") == 0


def test_reset_clears_recorder_faults_and_injected_events(sandbox_http, clean_sandbox):
    send_identifies(sandbox_http, 3)
    clean_sandbox.set_faults("heap", rate_500=0.5)
    [injected] = clean_sandbox.inject_audit_events([{"type": "Source Created"}])

    clean_sandbox.reset()

    recent = sandbox_http.get(
        "/segmentapis/audit-events",
        params={
            "pagination.count": 200,
            "startTime": (datetime.now(UTC) - timedelta(minutes=10)).isoformat(),
        },
        headers={"Authorization": f"Bearer {SANDBOX_SEGMENT_PUBLIC_API_TOKEN}"},
    ).json()["data"]["events"]
    assert injected["id"] not in [e["id"] for e in recent]

    assert clean_sandbox.stats()["segment"]["received"] == 0
    assert clean_sandbox.received("segment") == []
    assert sandbox_http.get("/__sandbox__/faults").json() == {}
    assert clean_sandbox.seen("segment", "m0") == 0


def test_ops_env_points_settings_at_the_sandbox(ops_env, sandbox):
    settings = load_settings()
    assert settings["SEGMENT_TRACKING_URL"] == f"{sandbox.url}/segment"
    assert settings.home == ops_env


def test_a_sender_killed_mid_body_is_an_aborted_request_not_a_server_error(clean_sandbox, sandbox_http,
                                                                            caplog):
    # As a SIGKILLed run leaves it: the request announces more body than it sends, then the socket closes.
    host, port = clean_sandbox.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"POST /segment/v1/batch HTTP/1.1\r\nHost: sandbox\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100000\r\n\r\n" + b'{"batch": [' + b" " * 1000)
    time.sleep(0.3)  # the server notices the closed socket on its own loop

    assert "Exception in ASGI application" not in caplog.text
    assert sandbox_http.get("/__sandbox__/stats").status_code == 200
