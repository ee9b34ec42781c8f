"""Webhook receivers as replicas (issue 17): with SEGMENT_OPS_STATE_URL, receivers on homes that share
nothing but PostgreSQL (as replicas behind a load balancer) write one Heap inbox, which a run on a third
home reads; the first copy of a page wins across replicas, a batch archived by the run is answered from the
archive by every replica, and a home's inbox made before the setting is uploaded by its first reader."""

from __future__ import annotations

import orjson
import pytest
from starlette.testclient import TestClient

from segment_ops.engine import pgstate
from segment_ops.receivers import inbox as durable
from segment_ops.syncs.heap.inbox import Inbox
from segment_ops.syncs.heap.receiver import WebhookConfig, create_app
from segment_ops_tests.conftest import fresh_state_database
from segment_ops_tests.heap.test_receiver import page_body, sign

pytestmark = pytest.mark.postgres
SECRET = "replica-secret"


@pytest.fixture
def state_url(monkeypatch: pytest.MonkeyPatch):
    with fresh_state_database("so_inbox") as url:
        monkeypatch.setenv(pgstate.STATE_URL, url)
        yield url
    durable._SHARED_ROOTS.clear()


def replica(tmp_path, name: str) -> TestClient:
    return TestClient(create_app(WebhookConfig(home=tmp_path / name, heap_secret=SECRET)))


def deliver(client: TestClient, body: bytes):
    return client.post("/webhooks/heap", content=body,
                       headers={"Heap-Hash": sign(SECRET, body), "Content-Type": "application/json"})


def test_pages_taken_by_different_replicas_make_one_sync_that_a_third_home_reads(tmp_path, state_url):
    a, b = replica(tmp_path, "a"), replica(tmp_path, "b")
    first = page_body("task-9", 1, 2, add=("u1@x.com",))
    assert deliver(a, first).status_code == 200
    assert deliver(b, page_body("task-9", 2, 2, add=("u2@x.com",))).status_code == 200
    again = deliver(b, first)  # Heap's retry, answered by the other replica
    assert again.status_code == 200 and again.json()["stored"] is False
    other = deliver(b, page_body("task-9", 1, 2, add=("someone-else@x.com",)))
    assert other.status_code == 409  # another copy of page 1: the first, taken by replica a, stays

    run_home = Inbox.for_home(tmp_path / "c")
    (sync,) = run_home.syncs()
    assert (sync.sync_task_id, sync.pages, sync.total_pages) == ("task-9", (1, 2), 2)
    pages = [orjson.loads(path.read_bytes()) for path in run_home.page_files("task-9")]
    assert [p["add"] for p in pages] == [["u1@x.com"], ["u2@x.com"]]


def test_a_sync_archived_by_a_run_is_answered_from_the_archive_by_every_replica(tmp_path, state_url):
    a = replica(tmp_path, "a")
    body = page_body("task-3", 1, 1)
    assert deliver(a, body).status_code == 200
    run_home = Inbox.for_home(tmp_path / "c")
    run_home.mark_done("task-3", {"run_id": "r1"})
    moved, failed = run_home.archive_applied()
    assert len(moved) == 1 and not failed

    late = deliver(replica(tmp_path, "b"), body)  # a late retry reaching a replica that never saw the sync
    assert late.status_code == 200 and late.json()["stored"] is False
    assert deliver(a, body).json()["stored"] is False  # replica a's own copy was moved along
    assert run_home.syncs() == [] and Inbox.for_home(tmp_path / "a").syncs() == []
    (archived,) = run_home.syncs(include_done=True)
    assert archived.done and archived.sync_task_id == "task-3"


def test_inboxes_made_without_the_setting_are_uploaded_whichever_machine_comes_first(tmp_path, monkeypatch,
                                                                                    state_url):
    monkeypatch.delenv(pgstate.STATE_URL)
    assert deliver(replica(tmp_path, "old"), page_body("task-1", 1, 1)).status_code == 200
    assert deliver(replica(tmp_path, "old"), page_body("task-2", 1, 1)).status_code == 200
    monkeypatch.setenv(pgstate.STATE_URL, state_url)

    # A new replica, on an empty disk, takes a webhook before the old home reads anything (a rolling deploy).
    assert deliver(replica(tmp_path, "new"), page_body("task-3", 1, 1)).status_code == 200

    pending = ["task-1", "task-2", "task-3"]
    assert sorted(s.sync_task_id for s in Inbox.for_home(tmp_path / "old").syncs()) == pending  # adopted
    assert sorted(s.sync_task_id for s in Inbox.for_home(tmp_path / "run").syncs()) == pending


def test_a_home_reached_through_a_symlink_is_shared_all_the_same(tmp_path, state_url):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert deliver(replica(tmp_path, "link"), page_body("task-4", 1, 1)).status_code == 200
    assert [s.sync_task_id for s in Inbox.for_home(tmp_path / "run").syncs()] == ["task-4"]


def test_an_item_is_in_the_database_before_the_receiver_answers(tmp_path, state_url):
    import psycopg

    assert deliver(replica(tmp_path, "a"), page_body("task-5", 1, 1)).status_code == 200
    with psycopg.connect(state_url) as pg:
        paths = [r[0] for r in pg.execute("SELECT path FROM segment_ops_state.inbox_files "
                                          "WHERE inbox = 'heap' ORDER BY path").fetchall()]
    assert len(paths) == 2 and paths[0].endswith("/page-1.json") and paths[1].endswith("/sync.json")


def test_pages_a_receiver_without_the_setting_answered_are_uploaded_never_deleted(tmp_path, monkeypatch,
                                                                                   state_url):
    """A receiver of the old release (or one not restarted) on the same folder as a reader with the setting:
    what it acknowledged reaches the table, before and after the reader's first look."""
    run_home = Inbox.for_home(tmp_path / "home")
    assert run_home.syncs() == []
    monkeypatch.delenv(pgstate.STATE_URL)
    old = replica(tmp_path, "home")
    assert deliver(old, page_body("task-7", 1, 1)).status_code == 200
    monkeypatch.setenv(pgstate.STATE_URL, state_url)
    assert [s.sync_task_id for s in run_home.syncs()] == ["task-7"]

    monkeypatch.delenv(pgstate.STATE_URL)
    assert deliver(old, page_body("task-8", 1, 1)).status_code == 200
    monkeypatch.setenv(pgstate.STATE_URL, state_url)
    assert [s.sync_task_id for s in run_home.syncs()] == ["task-7", "task-8"]
    assert [s.sync_task_id for s in Inbox.for_home(tmp_path / "elsewhere").syncs()] == ["task-7", "task-8"]
