"""The Heap webhook receiver over real HTTP: signature, timestamp, payload checks, and the durable inbox."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from segment_ops.webhooks.app import WebhookConfig
from segment_ops.webhooks.heap import SyncPage, sign
from segment_ops.webhooks.inbox import Inbox, PageConflict
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


def test_a_retried_identical_page_is_stored_once(receiver, tmp_path):
    body = page_body(add=("a@x.com",))
    assert post(receiver, body, sign(SECRET, body)).json()["stored"] is True

    again = post(receiver, body, sign(SECRET, body, ts=int(time.time()) + 1))

    assert again.status_code == 200 and again.json()["stored"] is False
    [path] = stored_files(tmp_path)
    assert orjson.loads(path.read_bytes())["add"] == ["a@x.com"]


def test_a_page_stored_again_with_different_content_gets_409_and_the_first_copy_wins(receiver, tmp_path, caplog):
    first, other = page_body(add=("a@x.com",)), page_body(add=("b@x.com",))
    post(receiver, first, sign(SECRET, first))

    response = post(receiver, other, sign(SECRET, other))

    assert response.status_code == 409
    assert "page 1 is already stored with a different add" in response.json()["error"]
    [path] = stored_files(tmp_path)
    assert orjson.loads(path.read_bytes())["add"] == ["a@x.com"]
    assert "refused (409)" in caplog.text and SECRET not in caplog.text


def test_a_conflicting_copy_is_kept_aside_once_however_often_heap_retries_it(receiver, tmp_path):
    first, other = page_body(add=("a@x.com",)), page_body(add=("b@x.com",))
    post(receiver, first, sign(SECRET, first))

    for _ in range(3):
        post(receiver, other, sign(SECRET, other))

    [aside] = (tmp_path / "inbox" / "heap" / "task-1" / "conflicts").iterdir()
    assert orjson.loads(aside.read_bytes())["add"] == ["b@x.com"]


def test_a_page_disagreeing_with_its_syncs_total_pages_gets_409(receiver, tmp_path):
    first, second = page_body(page=1, total=2), page_body(page=2, total=3)
    post(receiver, first, sign(SECRET, first))

    response = post(receiver, second, sign(SECRET, second))

    assert response.status_code == 409
    assert "its sync has segment 1338065 and 2 page(s), this page says segment 1338065 and 3" in \
        response.json()["error"]
    assert [p.name for p in stored_files(tmp_path)] == ["page-1.json"]


def test_a_page_of_another_segment_under_the_same_sync_id_gets_409(tmp_path):
    inbox = Inbox.for_home(tmp_path)
    inbox.store(SyncPage("task-3", 1, 2, 7, "Seg", ("a",), ()))

    with pytest.raises(PageConflict, match="its sync has segment 7 .* this page says segment 8"):
        inbox.store(SyncPage("task-3", 2, 2, 8, "Other", ("b",), ()))

    assert inbox.sync("task-3").pages == (1,)


def test_a_repeat_of_a_page_of_an_applied_sync_is_answered_done_and_not_applied_again(receiver, tmp_path):
    body = page_body()
    post(receiver, body, sign(SECRET, body))
    inbox = Inbox.for_home(tmp_path)
    inbox.mark_done("task-1", {"audience": "x"})

    response = post(receiver, body, sign(SECRET, body, ts=int(time.time()) + 1))

    assert response.status_code == 200 and response.json()["stored"] is False and response.json()["done"] is True
    assert inbox.syncs() == []


def test_a_different_page_for_an_applied_sync_gets_409(receiver, tmp_path):
    body, other = page_body(), page_body(add=("z@x.com",))
    post(receiver, body, sign(SECRET, body))
    Inbox.for_home(tmp_path).mark_done("task-1", {"audience": "x"})

    response = post(receiver, other, sign(SECRET, other))

    assert response.status_code == 409


def test_the_first_page_of_a_sync_writes_its_summary(tmp_path):
    inbox = Inbox.for_home(tmp_path)

    inbox.store(SyncPage("task-4", 2, 3, 7, "Seg", ("a",), ()))

    summary = orjson.loads((tmp_path / "inbox" / "heap" / "task-4" / "sync.json").read_bytes())
    assert summary["segment"] == {"id": 7, "name": "Seg"} and summary["total_pages"] == 3
    assert "first_received" in summary


def test_the_inbox_lists_syncs_from_their_summaries_without_reading_pages(tmp_path):
    inbox = Inbox.for_home(tmp_path)
    inbox.store(SyncPage("task-5", 1, 2, 7, "Seg", ("a",), ()))
    (tmp_path / "inbox" / "heap" / "task-5" / "page-1.json").write_bytes(b"not json: never read by a scan")

    [sync] = inbox.syncs()

    assert (sync.segment_id, sync.total_pages, sync.missing_pages) == (7, 2, (2,))


def test_pages_are_yielded_one_at_a_time_in_page_order(tmp_path):
    inbox = Inbox.for_home(tmp_path)
    for number in (2, 1):
        inbox.store(SyncPage("task-6", number, 2, 7, "Seg", (f"u{number}",), ()))

    pages = inbox.pages("task-6")

    assert isinstance(pages, Iterator)
    assert [p["add"] for p in pages] == [["u1"], ["u2"]]


def test_a_page_that_cannot_be_stored_gets_500_and_is_not_acknowledged(receiver, tmp_path):
    (tmp_path / "inbox").write_text("a file where the inbox folder belongs")
    body = page_body()

    response = post(receiver, body, sign(SECRET, body))

    assert response.status_code == 500 and response.json() == {"error": "the page could not be stored; retry"}


def test_an_oversized_body_without_content_length_gets_413(receiver, tmp_path):
    body = page_body(add=tuple(f"user{i}@example.com" for i in range(5_000)))

    def chunks():
        for start in range(0, len(body), 4096):
            yield body[start:start + 4096]

    response = httpx.post(receiver.heap_url, content=chunks(),
                          headers={"Content-Type": "application/json", "Heap-Hash": sign(SECRET, body)}, timeout=10)

    assert response.status_code == 413 and stored_files(tmp_path) == []


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
    assert sorted(p.name for p in (tmp_path / "inbox" / "heap" / "task-9").iterdir()) == ["page-1.json", "sync.json"]


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
