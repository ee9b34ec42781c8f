"""The Heap webhook receiver over real HTTP: signature, timestamp window, payload checks, and the durable
inbox."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from segment_ops.clients.base import tls_context
from segment_ops.syncs.heap.inbox import Inbox, PageConflict
from segment_ops.syncs.heap.receiver import WebhookConfig
from segment_ops.syncs.heap.server import start_receiver
from segment_ops.syncs.heap.webhook import SyncPage
from segment_ops_tests.heap.conftest import now_ms
from segment_ops_tests.heap.conftest import sign as heap_sign

SECRET = "test-heap-secret-value"


def sign(secret: str, body: bytes, *, ts_ms: int | None = None, encoding: str = "base64") -> str:
    return heap_sign(body, secret, ts_ms=ts_ms, encoding=encoding)


def page_body(task: str = "task-1", page: int = 1, total: int = 1, add=("a@x.com",), remove=()) -> bytes:
    return orjson.dumps({
        "id_token": "3f0e9c1a-0000-4000-8000-000000000001", "action_type": "segment.users.sync",
        "customer_config": {"fields": []},
        "data": {"segment": {"id": 1338065, "name": "Power Users"},
                 "sync_info": {"page_number": page, "total_pages": total, "sync_task_id": task},
                 "add": [{"id": i} for i in add], "remove": [{"id": i} for i in remove]},
    })


@pytest.fixture
def receiver(tmp_path: Path, stop_in_background):
    running = start_receiver(WebhookConfig(home=tmp_path, heap_secret=SECRET, max_age_seconds=300,
                                           max_future_seconds=30, max_body_bytes=50_000))
    yield running
    stop_in_background(running)


def post(receiver, body: bytes, header: str | None) -> httpx.Response:
    headers = {"Content-Type": "application/json"} | ({"Heap-Hash": header} if header else {})
    return httpx.post(receiver.heap_url, content=body, headers=headers, timeout=10, verify=tls_context())


def stored_files(home: Path) -> list[Path]:
    return sorted((home / "inbox" / "heap").rglob("page-*.json"))


def folder(home: Path, task: str) -> Path:
    return Inbox.for_home(home).sync_folder(task)


def test_a_signed_page_is_stored_before_200(receiver, tmp_path):
    body = page_body(add=("a@x.com", "usr_1"))

    response = post(receiver, body, sign(SECRET, body))

    assert response.status_code == 200
    assert response.json() == {"stored": True, "sync_task_id": "task-1", "page_number": 1}
    [path] = stored_files(tmp_path)
    assert path == folder(tmp_path, "task-1") / "page-1.json"
    record = orjson.loads(path.read_bytes())
    assert (record["add"] == ["a@x.com", "usr_1"]
            and record["segment"] == {"id": 1338065, "name": "Power Users"})


def test_a_retried_identical_page_is_stored_once(receiver, tmp_path):
    body = page_body(add=("a@x.com",))
    assert post(receiver, body, sign(SECRET, body)).json()["stored"] is True

    again = post(receiver, body, sign(SECRET, body, ts_ms=now_ms() + 1))

    assert again.status_code == 200 and again.json()["stored"] is False
    [path] = stored_files(tmp_path)
    assert orjson.loads(path.read_bytes())["add"] == ["a@x.com"]


def test_a_page_stored_again_with_different_content_gets_409_and_the_first_copy_wins(receiver, tmp_path,
                                                                                     caplog):
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

    [aside] = (folder(tmp_path, "task-1") / "conflicts").iterdir()
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

    response = post(receiver, body, sign(SECRET, body, ts_ms=now_ms() + 1))

    assert (response.status_code == 200 and response.json()["stored"] is False
            and response.json()["done"] is True)
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

    summary = orjson.loads((folder(tmp_path, "task-4") / "sync.json").read_bytes())
    assert summary["segment"] == {"id": 7, "name": "Seg"} and summary["total_pages"] == 3
    assert summary["sync_task_id"] == "task-4"
    assert "first_received" in summary


def test_the_inbox_lists_syncs_from_their_summaries_without_reading_pages(tmp_path):
    inbox = Inbox.for_home(tmp_path)
    inbox.store(SyncPage("task-5", 1, 2, 7, "Seg", ("a",), ()))
    (folder(tmp_path, "task-5") / "page-1.json").write_bytes(b"not json: never read by a scan")

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
                          headers={"Content-Type": "application/json", "Heap-Hash": sign(SECRET, body)},
                          timeout=10)

    assert response.status_code == 413 and stored_files(tmp_path) == []


def test_a_bad_signature_gets_403_with_the_documented_body_and_stores_nothing(receiver, tmp_path):
    body = page_body()

    response = post(receiver, body, sign("another-secret", body))

    assert response.status_code == 403
    assert response.content == b'{"error":"Invalid signature"}'
    assert stored_files(tmp_path) == []


def test_a_missing_signature_header_gets_400(receiver, tmp_path):
    response = post(receiver, page_body(), None)

    assert response.status_code == 400 and response.json() == {"error": "the Heap-Hash header is missing"}
    assert stored_files(tmp_path) == []


def test_a_body_changed_after_signing_gets_403(receiver, tmp_path):
    header = sign(SECRET, page_body(add=("a@x.com",)))

    response = post(receiver, page_body(add=("mallory@x.com",)), header)

    assert response.status_code == 403 and stored_files(tmp_path) == []


def test_a_timestamp_older_than_the_allowed_age_gets_400(receiver, tmp_path):
    body = page_body()

    response = post(receiver, body, sign(SECRET, body, ts_ms=now_ms() - 301_000))

    assert response.status_code == 400 and "s old; it must be less than 300 s" in response.json()["error"]
    assert stored_files(tmp_path) == []


def test_a_timestamp_within_the_allowed_age_is_accepted(receiver, tmp_path):
    body = page_body()

    assert post(receiver, body, sign(SECRET, body, ts_ms=now_ms() - 290_000)).status_code == 200


def test_a_timestamp_further_ahead_than_allowed_gets_400(receiver, tmp_path):
    body = page_body()

    response = post(receiver, body, sign(SECRET, body, ts_ms=now_ms() + 31_000))

    assert response.status_code == 400 and ("ahead of this machine's clock; it must be less than 30 s"
                                            in response.json()["error"])
    assert stored_files(tmp_path) == []


def test_a_timestamp_a_little_ahead_is_accepted(receiver, tmp_path):
    body = page_body()

    assert post(receiver, body, sign(SECRET, body, ts_ms=now_ms() + 20_000)).status_code == 200


def test_a_timestamp_in_seconds_gets_400_saying_heap_signs_milliseconds(receiver, tmp_path):
    body = page_body()

    response = post(receiver, body, sign(SECRET, body, ts_ms=now_ms() // 1000))

    assert (response.status_code == 400
            and "looks like seconds: Heap signs milliseconds" in response.json()["error"])


@pytest.mark.parametrize("adjust", ["past", "future"])
def test_the_reference_generators_five_minute_shifts_are_refused(receiver, tmp_path, adjust):
    body = page_body()
    shift = 5 * 60 * 1000 * (-1 if adjust == "past" else 1)  # generateTestHeapHeaders.js --time_adjust

    response = post(receiver, body, sign(SECRET, body, ts_ms=now_ms() + shift))

    assert response.status_code == 400 and stored_files(tmp_path) == []


def test_the_header_pairs_may_come_in_any_order_with_extra_pairs_and_spaces(receiver, tmp_path):
    body = page_body()
    ts, digest = (pair.split(":", 1)[1] for pair in sign(SECRET, body).split(","))

    response = post(receiver, body, f"v:2, hmac:{digest} , note:retry:3,ts:{ts}")

    assert response.status_code == 200 and response.json()["stored"] is True


def test_a_hex_digest_is_accepted(receiver, tmp_path):
    body = page_body()

    assert post(receiver, body, sign(SECRET, body, encoding="hex")).status_code == 200


@pytest.mark.parametrize(("header", "message"), [
    ("hmac:abc", "Heap-Hash has no ts:<milliseconds> pair"),
    ("ts:123", "Heap-Hash has no hmac:<digest> pair"),
    ("ts:12a,hmac:abc", "the ts of Heap-Hash is not a whole number of milliseconds"),
    ("ts:1,ts:2,hmac:abc", "Heap-Hash has more than one 'ts' pair"),
    ("garbage", "Heap-Hash must be comma-separated key:value pairs"),
])
def test_a_malformed_header_gets_400_naming_the_problem(receiver, tmp_path, header, message):
    response = post(receiver, page_body(), header)

    assert response.status_code == 400 and message in response.json()["error"]
    assert stored_files(tmp_path) == []


def test_an_hmac_that_is_no_digest_at_all_gets_403(receiver, tmp_path):
    response = post(receiver, page_body(), f"ts:{now_ms()},hmac:not-a-digest")

    assert response.status_code == 403 and response.json() == {"error": "Invalid signature"}


def test_a_pretty_printed_body_signed_over_its_compact_form_is_accepted(receiver, tmp_path):
    compact = page_body()
    pretty = orjson.dumps(orjson.loads(compact), option=orjson.OPT_INDENT_2)

    response = post(receiver, pretty, sign(SECRET, compact))

    assert response.status_code == 200 and response.json()["stored"] is True


def test_a_pretty_printed_body_whose_compact_form_was_not_signed_gets_403(receiver, tmp_path):
    pretty = orjson.dumps(orjson.loads(page_body(add=("a@x.com",))), option=orjson.OPT_INDENT_2)

    response = post(receiver, pretty, sign(SECRET, page_body(add=("b@x.com",))))

    assert response.status_code == 403 and stored_files(tmp_path) == []


def test_during_a_rotation_pages_signed_with_the_old_or_the_new_secret_are_accepted(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="segment_ops.webhooks")
    config = WebhookConfig(home=tmp_path, heap_secret="new-secret", previous_secrets=("old-secret",))
    old, new = page_body(page=1, total=2), page_body(page=2, total=2)
    with start_receiver(config) as running:
        by_old = post(running, old, sign("old-secret", old))
        by_new = post(running, new, sign("new-secret", new))
        by_other = post(running, new, sign("another-secret", new))

    assert (by_old.status_code, by_new.status_code, by_other.status_code) == (200, 200, 403)
    assert "previous secret #1" in caplog.text
    assert "old-secret" not in caplog.text and "new-secret" not in caplog.text


def test_once_the_previous_secret_is_removed_its_pages_are_refused(tmp_path):
    body = page_body()
    with start_receiver(WebhookConfig(home=tmp_path, heap_secret="new-secret")) as running:
        assert post(running, body, sign("old-secret", body)).status_code == 403


def test_any_sync_task_id_is_stored_under_a_hash_and_kept_for_display(receiver, tmp_path):
    task = "Free Customers/../x ü\n\\evil"
    body = page_body(task=task)

    response = post(receiver, body, sign(SECRET, body))

    assert response.status_code == 200 and response.json()["sync_task_id"] == task
    [sync] = Inbox.for_home(tmp_path).syncs()
    assert sync.sync_task_id == task and (tmp_path / "inbox" / "heap" / f"sync-{sync.key}").is_dir()
    assert [p.name for p in (tmp_path / "inbox" / "heap").iterdir()] == [f"sync-{sync.key}"]


def test_id_token_and_customer_config_are_accepted_and_kept(receiver, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    body = orjson.dumps({**orjson.loads(page_body()), "id_token": "tok-secretish-123",
                         "customer_config": {"fields": [{"field_id": "workspace", "value": {"id": "w1"}}]}})

    assert post(receiver, body, sign(SECRET, body)).status_code == 200

    [page] = Inbox.for_home(tmp_path).pages("task-1")
    assert (page["id_token"] == "tok-secretish-123"
            and page["customer_config"]["fields"][0]["field_id"] == "workspace")
    assert "tok-secretish-123" not in caplog.text


def drain_body(segment: int = 1338065, token: str = "tok-1") -> bytes:
    return orjson.dumps({"action_type": "segment.users.drain", "customer_config": {"fields": []},
                         "data": {"segment": {"id": segment, "name": "Power Users"}}, "id_token": token})


def test_a_signed_drain_is_stored_before_200(receiver, tmp_path):
    body = drain_body()

    response = post(receiver, body, sign(SECRET, body))

    assert response.status_code == 200 and response.json()["stored"] is True
    [drain] = Inbox.for_home(tmp_path).drains()
    assert (drain.key, drain.segment_id, drain.done) == (response.json()["drain"], 1338065, False)
    assert (tmp_path / "inbox" / "heap" / f"drain-{drain.key}" / "drain.json").exists()


def test_a_retried_drain_is_stored_once_with_its_first_signed_time(receiver, tmp_path):
    body = drain_body()
    first_ts = now_ms() - 10_000
    post(receiver, body, sign(SECRET, body, ts_ms=first_ts))

    again = post(receiver, body, sign(SECRET, body))

    assert again.status_code == 200 and again.json()["stored"] is False
    [drain] = Inbox.for_home(tmp_path).drains()
    assert int(drain.signed_at.timestamp() * 1000) == first_ts


def test_a_drain_repeated_after_it_was_applied_is_answered_done(receiver, tmp_path):
    body = drain_body()
    key = post(receiver, body, sign(SECRET, body)).json()["drain"]
    Inbox.for_home(tmp_path).mark_drain_done(key, {"audience": "x"})

    again = post(receiver, body, sign(SECRET, body))

    assert again.json() == {"stored": False, "drain": key, "segment_id": 1338065, "done": True}
    assert Inbox.for_home(tmp_path).drains() == []


def test_drains_differing_in_their_signed_body_are_two_drains(receiver, tmp_path):
    for token in ("tok-1", "tok-2"):
        body = drain_body(token=token)
        post(receiver, body, sign(SECRET, body))

    assert len(Inbox.for_home(tmp_path).drains()) == 2


def test_a_drain_with_a_bad_signature_stores_nothing(receiver, tmp_path):
    body = drain_body()

    assert post(receiver, body, sign("wrong", body)).status_code == 403
    assert not (tmp_path / "inbox" / "heap").exists() or list((tmp_path / "inbox" / "heap").iterdir()) == []


def test_invalid_json_gets_400(receiver, tmp_path):
    body = b'{"action_type": "segment.users.sync", '

    response = post(receiver, body, sign(SECRET, body))

    assert response.status_code == 400 and response.json() == {"error": "body is not valid JSON"}


@pytest.mark.parametrize(("body", "message"), [
    (page_body(page=3, total=2), "data.sync_info.page_number 3 is beyond total_pages 2"),
    (page_body(task=""), "data.sync_info.sync_task_id must be a non-empty string"),
    (orjson.dumps({"action_type": "segment.users.delete", "data": {}}),
     "action_type must be one of 'segment.users.sync', 'segment.users.drain'"),
    (orjson.dumps({"action_type": "segment.users.drain", "data": {"segment": {"id": "1338065"}}}),
     "data.segment.id must be an integer from 1 to"),
    (orjson.dumps({"action_type": "segment.users.drain", "data": {"segment": {"id": 7}}, "id_token": 5}),
     "id_token must be a string"),
    (orjson.dumps({"action_type": "segment.users.drain", "data": {"segment": {"id": 7}},
                   "customer_config": []}),
     "customer_config must be an object"),
    (orjson.dumps({"action_type": "segment.users.sync", "data": {"segment": {"id": 1, "name": "x"},
                   "sync_info": {"page_number": 1, "total_pages": 1, "sync_task_id": "t"},
                   "add": [{"email": "a@x.com"}]}}),
     "data.add[0].id must be a non-empty string or an integer"),
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
    assert "refused (403)" in caplog.text and "refused (400)" in caplog.text


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
    assert sorted(p.name for p in folder(tmp_path, "task-9").iterdir()) == ["page-1.json", "sync.json"]


def test_the_inbox_reports_missing_pages_of_an_incomplete_sync(tmp_path):
    inbox = Inbox.for_home(tmp_path)
    for number in (1, 3):
        inbox.store(SyncPage("task-2", number, 3, 7, "Seg", (), ()))

    [sync] = inbox.syncs()

    assert not sync.complete and sync.missing_pages == (2,)


@pytest.mark.slow
def test_the_receiver_runs_without_duckdb_or_dagster(tmp_path):
    script = f"""
import sys
sys.modules["duckdb"] = None
sys.modules["dagster"] = None
from starlette.testclient import TestClient
from segment_ops.syncs.heap.receiver import WebhookConfig, create_app
body = {page_body()!r}
client = TestClient(create_app(WebhookConfig(home={str(tmp_path)!r}, heap_secret="s")))
print(client.post("/webhooks/heap", content=body,
                  headers={{"Heap-Hash": {sign("s", page_body())!r}}}).status_code)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "200"
