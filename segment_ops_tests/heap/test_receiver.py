"""The Heap webhook receiver over real HTTP: signature, timestamp, payload checks, and the durable inbox."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import orjson
import pytest

from segment_ops.webhooks.app import WebhookConfig
from segment_ops.webhooks.heap import SyncPage, sign
from segment_ops.webhooks.inbox import Inbox
from segment_ops.webhooks.server import start_receiver

SECRET = "test-heap-secret-value"


def page_body(task: str = "task-1", page: int = 1, total: int = 1, add=("a@x.com",), remove=()) -> bytes:
    return orjson.dumps({
        "id_token": "3f0e9c1a-0000-4000-8000-000000000001", "action_type": "segment.users.sync",
        "customer_config": {"fields": []},
        "data": {"segment": {"id": 1338065, "name": "Power Users"},
                 "sync_info": {"page_number": page, "total_pages": total, "sync_task_id": task},
                 "add": [{"id": i} for i in add], "remove": [{"id": i} for i in remove]},
    })


@pytest.fixture
def receiver(tmp_path: Path):
    running = start_receiver(WebhookConfig(home=tmp_path, heap_secret=SECRET, tolerance_seconds=300,
                                           max_body_bytes=50_000))
    yield running
    running.stop()


def post(receiver, body: bytes, header: str | None) -> httpx.Response:
    headers = {"Content-Type": "application/json"} | ({"Heap-Hash": header} if header else {})
    return httpx.post(receiver.heap_url, content=body, headers=headers, timeout=10)


def stored_files(home: Path) -> list[Path]:
    return sorted((home / "inbox" / "heap").rglob("page-*.json"))


def test_a_signed_page_is_stored_before_200(receiver, tmp_path):
    body = page_body(add=("a@x.com", "usr_1"))

    response = post(receiver, body, sign(SECRET, body))

    assert response.status_code == 200
    assert response.json() == {"stored": True, "sync_task_id": "task-1", "page_number": 1}
    [path] = stored_files(tmp_path)
    assert path == tmp_path / "inbox" / "heap" / "task-1" / "page-1.json"
    record = orjson.loads(path.read_bytes())
    assert record["add"] == ["a@x.com", "usr_1"] and record["segment"] == {"id": 1338065, "name": "Power Users"}


def test_a_retried_page_is_stored_once_and_the_first_copy_wins(receiver, tmp_path):
    first, retry = page_body(add=("a@x.com",)), page_body(add=("b@x.com",))
    assert post(receiver, first, sign(SECRET, first)).json()["stored"] is True

    again = post(receiver, retry, sign(SECRET, retry))

    assert again.status_code == 200 and again.json()["stored"] is False
    [path] = stored_files(tmp_path)
    assert orjson.loads(path.read_bytes())["add"] == ["a@x.com"]


def test_a_bad_signature_gets_403_with_the_documented_body_and_stores_nothing(receiver, tmp_path):
    body = page_body()

    response = post(receiver, body, sign("another-secret", body))

    assert response.status_code == 403
    assert response.content == b'{"error":"Invalid signature"}'
    assert stored_files(tmp_path) == []


def test_a_missing_signature_header_gets_403(receiver, tmp_path):
    response = post(receiver, page_body(), None)

    assert response.status_code == 403 and response.json() == {"error": "Invalid signature"}
    assert stored_files(tmp_path) == []


def test_a_body_changed_after_signing_gets_403(receiver, tmp_path):
    header = sign(SECRET, page_body(add=("a@x.com",)))

    response = post(receiver, page_body(add=("mallory@x.com",)), header)

    assert response.status_code == 403 and stored_files(tmp_path) == []


def test_a_stale_timestamp_gets_403(receiver, tmp_path):
    body = page_body()

    response = post(receiver, body, sign(SECRET, body, ts=int(time.time()) - 301))

    assert response.status_code == 403 and stored_files(tmp_path) == []


def test_a_timestamp_from_the_future_beyond_the_tolerance_gets_403(receiver, tmp_path):
    body = page_body()

    response = post(receiver, body, sign(SECRET, body, ts=int(time.time()) + 3600))

    assert response.status_code == 403 and stored_files(tmp_path) == []


def test_invalid_json_gets_400(receiver, tmp_path):
    body = b'{"action_type": "segment.users.sync", '

    response = post(receiver, body, sign(SECRET, body))

    assert response.status_code == 400 and response.json() == {"error": "body is not valid JSON"}


@pytest.mark.parametrize(("body", "message"), [
    (page_body(page=3, total=2), "data.sync_info.page_number 3 is beyond total_pages 2"),
    (page_body(task="../escape"), "data.sync_info.sync_task_id must be an id"),
    (orjson.dumps({"action_type": "segment.users.delete", "data": {}}), "action_type must be 'segment.users.sync'"),
    (orjson.dumps({"action_type": "segment.users.sync", "data": {"segment": {"id": 1, "name": "x"},
                   "sync_info": {"page_number": 1, "total_pages": 1, "sync_task_id": "t"},
                   "add": [{"email": "a@x.com"}]}}), "data.add[0].id must be a non-empty string or number"),
])
def test_a_malformed_payload_gets_400_naming_the_field(receiver, tmp_path, body, message):
    response = post(receiver, body, sign(SECRET, body))

    assert response.status_code == 400 and message in response.json()["error"]
    assert stored_files(tmp_path) == []


def test_an_oversized_body_gets_413(receiver, tmp_path):
    body = page_body(add=tuple(f"user{i}@example.com" for i in range(5_000)))

    response = post(receiver, body, sign(SECRET, body))

    assert response.status_code == 413 and stored_files(tmp_path) == []


def test_the_secret_never_reaches_a_log(receiver, caplog):
    caplog.set_level(logging.DEBUG)
    body = page_body()
    post(receiver, body, sign(SECRET, body))
    post(receiver, body, sign("wrong", body))
    post(receiver, b"{}", sign(SECRET, b"{}"))

    assert SECRET not in caplog.text
    assert "Invalid signature" in caplog.text or "refused (403)" in caplog.text


def test_concurrent_copies_of_a_page_store_it_exactly_once(tmp_path):
    inbox = Inbox.for_home(tmp_path)
    page = SyncPage("task-9", 1, 1, 7, "Seg", ("a",), ())
    results: list[bool] = []
    threads = [threading.Thread(target=lambda: results.append(inbox.store(page))) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert results.count(True) == 1
    assert [p.name for p in (tmp_path / "inbox" / "heap" / "task-9").iterdir()] == ["page-1.json"]


def test_the_inbox_reports_missing_pages_of_an_incomplete_sync(tmp_path):
    inbox = Inbox.for_home(tmp_path)
    for number in (1, 3):
        inbox.store(SyncPage("task-2", number, 3, 7, "Seg", (), ()))

    [sync] = inbox.syncs()

    assert not sync.complete and sync.missing_pages == (2,)


def test_the_receiver_runs_without_duckdb_or_dagster(tmp_path):
    script = f"""
import sys
sys.modules["duckdb"] = None
sys.modules["dagster"] = None
from starlette.testclient import TestClient
from segment_ops.webhooks.app import WebhookConfig, create_app
from segment_ops.webhooks.heap import sign
body = {page_body()!r}
client = TestClient(create_app(WebhookConfig(home={str(tmp_path)!r}, heap_secret="s")))
print(client.post("/webhooks/heap", content=body, headers={{"Heap-Hash": sign("s", body)}}).status_code)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "200"
