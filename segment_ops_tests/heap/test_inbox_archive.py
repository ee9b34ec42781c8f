"""Applied syncs leave the live inbox: the sensor moves them to the archive, where a late retry of one of
their pages is still a repeat (never a new sync), and deletes them after the retention."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import httpx
import orjson
import pytest

from segment_ops.clients.base import tls_context
from segment_ops.receivers import inbox as durable
from segment_ops.syncs.heap.inbox import Inbox, PageConflict
from segment_ops.syncs.heap.receiver import WebhookConfig
from segment_ops.syncs.heap.server import RunningReceiver, start_receiver
from segment_ops.syncs.heap.webhook import SyncPage
from segment_ops_tests.heap.conftest import POWER_USERS, evaluate_sensor, sign

SECRET = "test-heap-secret-archive"


@pytest.fixture
def receiver(ops_env: Path, stop_in_background) -> Iterator[RunningReceiver]:
    running = start_receiver(WebhookConfig(home=ops_env, heap_secret=SECRET))
    yield running
    stop_in_background(running)


def page(task: str, number: int = 1, total: int = 1, add: tuple[str, ...] = ("a@x.com",)) -> bytes:
    return orjson.dumps({"action_type": "segment.users.sync", "data": {
        "segment": {"id": POWER_USERS, "name": "Power Users"},
        "sync_info": {"page_number": number, "total_pages": total, "sync_task_id": task},
        "add": [{"id": i} for i in add], "remove": []}})


def post(receiver: RunningReceiver, body: bytes) -> httpx.Response:
    return httpx.post(receiver.heap_url, content=body, timeout=10, verify=tls_context(),
                      headers={"Content-Type": "application/json", "Heap-Hash": sign(body, SECRET)})


def live(home: Path) -> list[str]:
    return sorted(p.name for p in Inbox.for_home(home).root.iterdir() if not p.name.startswith("."))


def applied(receiver: RunningReceiver, home: Path, task: str) -> None:
    assert post(receiver, page(task)).status_code == 200
    Inbox.for_home(home).mark_done(task, {"audience": "power_users"})


def test_a_tick_moves_applied_syncs_out_of_the_live_inbox_and_keeps_them(receiver, ops_env):
    for task in ("s1", "s2", "s3"):
        applied(receiver, ops_env, task)
    assert post(receiver, page("pending", 1, 2)).status_code == 200
    inbox = Inbox.for_home(ops_env)

    evaluate_sensor(dg.DagsterInstance.ephemeral(), ops_env)

    assert live(ops_env) == [inbox.sync_folder("pending").name]
    assert [s.sync_task_id for s in inbox.syncs(include_done=True) if s.done] == ["s1", "s2", "s3"]
    assert inbox.is_done("s1") and [p.name for p in inbox.page_files("s1")] == ["page-1.json"]


@pytest.mark.slow
def test_a_late_retry_of_an_archived_page_is_a_repeat_not_a_new_sync(receiver, ops_env):
    applied(receiver, ops_env, "s1")
    evaluate_sensor(dg.DagsterInstance.ephemeral(), ops_env)

    response = post(receiver, page("s1"))

    assert response.json() == {"stored": False, "sync_task_id": "s1", "page_number": 1, "done": True}
    assert live(ops_env) == []


def test_a_different_copy_of_an_archived_page_gets_409(receiver, ops_env):
    applied(receiver, ops_env, "s1")
    evaluate_sensor(dg.DagsterInstance.ephemeral(), ops_env)

    assert post(receiver, page("s1", add=("mallory@x.com",))).status_code == 409
    assert post(receiver, page("s1", 2, 2)).status_code == 409
    assert live(ops_env) == []


def test_archived_syncs_are_deleted_after_the_retention(receiver, ops_env):
    applied(receiver, ops_env, "s1")
    inbox = Inbox.for_home(ops_env)
    inbox.archive_applied(datetime.now(UTC) - timedelta(days=31))

    inbox.prune_archive(timedelta(days=30))

    assert inbox.sync("s1") is None and list((inbox.root / ".archive").iterdir()) == []


def test_a_retention_that_cannot_be_used_is_reported_and_the_tick_goes_on(receiver, ops_env, monkeypatch):
    monkeypatch.setenv("HEAP_INBOX_RETENTION_DAYS", "-1")
    applied(receiver, ops_env, "s1")

    result = evaluate_sensor(dg.DagsterInstance.ephemeral(), ops_env)

    assert "HEAP_INBOX_RETENTION_DAYS must be a whole number of days" in result.skip_reason.skip_message
    assert live(ops_env) == []


# The sensor may archive a sync between `Inbox.store` locating its live folder and writing to it; these
# tests archive it exactly there (a hook on the step), so the race is taken every time.
def sync_page(task: str, number: int = 1, total: int = 1, add: tuple[str, ...] = ("a@x.com",)) -> SyncPage:
    return SyncPage(task, number, total, POWER_USERS, "Power Users", add, ())


@pytest.fixture
def archived_while_located(tmp_path: Path, monkeypatch) -> Inbox:
    """An inbox holding the applied sync "s1", archived right after `store` finds it live."""
    inbox = Inbox(tmp_path / "inbox")
    inbox.store(sync_page("s1"))
    inbox.mark_done("s1", {"audience": "power_users"})
    locate = Inbox._sync_located

    def located_then_archived(self: Inbox, sync_task_id: str) -> Path:
        folder = locate(self, sync_task_id)
        self.archive_applied()
        return folder

    monkeypatch.setattr(Inbox, "_sync_located", located_then_archived)
    return inbox


def test_a_retry_racing_the_archive_is_a_repeat_not_a_new_sync(archived_while_located):
    inbox = archived_while_located

    assert inbox.store(sync_page("s1")) is False

    assert list(inbox.root.iterdir()) == [inbox.root / ".archive"]
    assert inbox.is_done("s1") and inbox.syncs() == []


def test_a_different_copy_racing_the_archive_gets_a_conflict(archived_while_located):
    inbox = archived_while_located

    with pytest.raises(PageConflict, match="different add"):
        inbox.store(sync_page("s1", add=("mallory@x.com",)))

    assert inbox.syncs() == [] and not inbox.sync_folder("s1").exists()


def test_a_repeat_archived_just_before_it_is_written_stays_a_repeat(tmp_path, monkeypatch):
    inbox = Inbox(tmp_path / "inbox")
    inbox.store(sync_page("s1"))
    inbox.mark_done("s1", {"audience": "power_users"})
    store_item = durable.store_item

    def archived_then_stored(*args, **kwargs) -> bool:
        inbox.archive_applied()
        return store_item(*args, **kwargs)

    monkeypatch.setattr(durable, "store_item", archived_then_stored)

    assert inbox.store(sync_page("s1")) is False
    assert inbox.syncs() == [] and not inbox.sync_folder("s1").exists()
