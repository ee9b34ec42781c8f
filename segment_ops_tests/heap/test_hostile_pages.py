"""Hostile webhook pages, signed with the right secret: every number and size in a page is bounded, each
refused with a clear 4xx by the real receiver over HTTP, and the inbox sensor never raises on what an
older receiver stored."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import httpx
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from segment_ops.clients.base import tls_context
from segment_ops.syncs.heap.inbox import Inbox
from segment_ops.syncs.heap.receiver import WebhookConfig
from segment_ops.syncs.heap.server import RunningReceiver, start_receiver
from segment_ops.syncs.heap.webhook import (
    MAX_CUSTOMER_FIELDS,
    MAX_IDENTITY_CHARS,
    MAX_PAGE_IDS,
    MAX_TOTAL_PAGES,
    SyncPage,
)
from segment_ops_tests.heap.conftest import POWER_USERS, evaluate_sensor, sign

SECRET = "test-heap-secret-hostile"
MAX_BODY = 2_000_000


@pytest.fixture(scope="module")
def receiver(tmp_path_factory) -> Iterator[RunningReceiver]:
    """One receiver for the module (hypothesis posts many examples to it), on its own home."""
    home = tmp_path_factory.mktemp("hostile")
    running = start_receiver(WebhookConfig(home=home, heap_secret=SECRET, max_body_bytes=MAX_BODY))
    yield running
    running.stop()


def body_of(sync_info: object = None, *, add: object = None, remove: object = None, segment: object = None,
            **top: object) -> bytes:
    data = {"segment": segment if segment is not None else {"id": POWER_USERS, "name": "Power Users"},
            "sync_info": sync_info if sync_info is not None else
            {"page_number": 1, "total_pages": 1, "sync_task_id": "hostile"},
            "add": add if add is not None else [{"id": "a@x.com"}],
            "remove": remove if remove is not None else []}
    body = {"action_type": "segment.users.sync", "customer_config": {"fields": []}, "data": data} | top
    # json, not orjson: it writes integers beyond 64 bits and Infinity, as a hostile sender may
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass")


def post(receiver: RunningReceiver, body: bytes) -> httpx.Response:
    return httpx.post(receiver.heap_url, content=body, timeout=10, verify=tls_context(),
                      headers={"Content-Type": "application/json", "Heap-Hash": sign(body, SECRET)})


def info(page: object = 1, total: object = 1, task: object = "hostile") -> dict:
    return {"page_number": page, "total_pages": total, "sync_task_id": task}


@pytest.mark.parametrize(("body", "message"), [
    (body_of(info(1, 10**12)), f"total_pages must be an integer from 1 to {MAX_TOTAL_PAGES:,}"),
    (body_of(info(10**12, 10**12)), "page_number must be an integer from 1"),
    (body_of(info(-1, 5)), "page_number must be an integer from 1"),
    (body_of(info(1.5, 5)), "page_number must be an integer from 1"),
    (body_of(info("1", 5)), "page_number must be an integer from 1"),
    (body_of(info(1, 1e300)), "total_pages must be an integer from 1"),
    (body_of(segment={"id": 2**60, "name": "x"}), "data.segment.id must be an integer from 1 to"),
    (body_of(segment={"id": POWER_USERS, "name": "n" * 5000}),
     "data.segment.name must be a string of at most"),
    (body_of(add=[{"id": "a"}] * (MAX_PAGE_IDS + 1)), f"at most {MAX_PAGE_IDS:,} ids"),
    (body_of(add=[{"id": 2**60}]), "data.add[0].id must be a non-empty string or an integer from 0 to"),
    (body_of(add=[{"id": -1}]), "data.add[0].id must be a non-empty string or an integer from 0 to"),
    (body_of(add=[{"id": "a\nb"}]), "data.add[0].id holds a control character"),
    (body_of(remove=[{"id": "x" * (MAX_IDENTITY_CHARS + 1)}]), "data.remove[0].id is longer than"),
    (body_of(id_token="t" * 5000), "id_token must be a string of at most"),
    (body_of(customer_config={"fields": [{}] * (MAX_CUSTOMER_FIELDS + 1)}),
     f"customer_config.fields holds more than {MAX_CUSTOMER_FIELDS}"),
])
def test_a_signed_page_with_an_out_of_bounds_value_gets_400_naming_it(receiver, body, message):
    response = post(receiver, body)

    assert response.status_code == 400, response.text
    assert message in response.json()["error"]


def test_a_page_at_every_bound_is_accepted(receiver):
    body = body_of(info(MAX_TOTAL_PAGES, MAX_TOTAL_PAGES, "at-the-bounds"),
                   add=[{"id": "x" * MAX_IDENTITY_CHARS}, {"id": 2**53 - 1}, {"id": 0}],
                   segment={"id": 2**53 - 1, "name": "s"})

    assert post(receiver, body).status_code == 200


_NUMBERS = st.one_of(st.integers(min_value=-(2**70), max_value=2**70), st.floats(allow_nan=False),
                     st.text(max_size=5), st.none(), st.booleans(), st.lists(st.integers(), max_size=2))
_IDS = st.one_of(st.text(max_size=300), st.just("\ud800x"), st.just("a\n"),  # a lone surrogate, a line break
                 st.integers(min_value=-(2**70), max_value=2**70), st.floats(allow_nan=False), st.none(),
                 st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


def _nested(depth: int) -> object:
    value: object = "deep"
    for _ in range(depth):
        value = {"v": [value]}
    return value


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(page=_NUMBERS, total=_NUMBERS, task=st.one_of(st.text(max_size=50), st.integers()),
       ids=st.lists(st.fixed_dictionaries({"id": _IDS}), max_size=4),
       nesting=st.sampled_from([0, 10, 40, 120]))
@pytest.mark.slow
def test_generated_hostile_pages_get_200_or_a_clear_4xx_never_a_server_error(receiver, page, total, task, ids,
                                                                             nesting):
    body = body_of(info(page, total, task), add=ids, customer_config={"fields": [_nested(nesting)]})

    response = post(receiver, body)

    assert response.status_code in (200, 400, 409, 413), response.text
    if response.status_code != 200:
        assert response.json()["error"]
# ------------------------------------------------------------------------------------------ the sensor


def stored_by_an_older_receiver(home: Path, task: str, page: int, total: int, **fields: object) -> None:
    """Write a page as a receiver without today's bounds stored it (the same files, written directly)."""
    folder = Inbox.for_home(home).sync_folder(task)
    folder.mkdir(parents=True, exist_ok=True)
    received = datetime.now(UTC).isoformat()
    summary = {"sync_task_id": task, "segment": {"id": POWER_USERS, "name": "Power Users"},
               "total_pages": total, "first_received": received}
    (folder / "sync.json").write_bytes(orjson.dumps(summary | fields))
    (folder / f"page-{page}.json").write_bytes(orjson.dumps(
        {"sync_task_id": task, "page_number": page, "total_pages": total,
         "segment": {"id": POWER_USERS, "name": "Power Users"}, "received_at": received, "signed_at": None,
         "add": ["a@x.com"], "remove": [], "id_token": None, "customer_config": None}))


def test_a_stored_sync_of_a_trillion_pages_is_reported_and_the_tick_does_not_raise(ops_env):
    stored_by_an_older_receiver(ops_env, "a-trillion-pages", 1, 10**12)
    started = time.monotonic()

    result = evaluate_sensor(dg.DagsterInstance.ephemeral(), ops_env)

    assert time.monotonic() - started < 5
    assert result.run_requests == []
    assert "a-trillion-pages" in result.skip_reason.skip_message
    assert f"total_pages 1000000000000 is beyond 1..{MAX_TOTAL_PAGES:,}" in result.skip_reason.skip_message


@pytest.mark.parametrize("summary", [
    {"total_pages": "7"}, {"total_pages": -3}, {"total_pages": 2.5}, {"segment": {"id": "x"}}, {"segment": 5},
])
def test_a_stored_sync_with_an_unreadable_summary_is_reported_and_the_tick_does_not_raise(ops_env, summary):
    stored_by_an_older_receiver(ops_env, "odd-summary", 1, 3, **summary)
    stored_by_an_older_receiver(ops_env, "fine", 1, 1)

    result = evaluate_sensor(dg.DagsterInstance.ephemeral(), ops_env)

    assert [r.tags["segment_ops/heap_sync_task"] for r in result.run_requests] == [key("fine")]
    assert json.loads(result.cursor) == [key("odd-summary")]  # reported once, in the log


def key(task: str) -> str:
    return Inbox.for_home(Path()).sync_folder(task).name.removeprefix("sync-")


def test_an_incomplete_syncs_missing_pages_are_counted_not_listed(tmp_path):
    inbox = Inbox(tmp_path)
    inbox.store(SyncPage("big", 2, MAX_TOTAL_PAGES, POWER_USERS, "Power Users", ("a",), ()))
    [sync] = inbox.syncs()

    assert not sync.complete and sync.missing_count == MAX_TOTAL_PAGES - 1
    assert sync.first_missing(3) == (1, 3, 4)
    assert sync.describe_missing().endswith(f", 21, ... {MAX_TOTAL_PAGES - 1:,} in all] of 100000 never "
                                            "arrived")


def test_a_folder_named_like_a_sync_with_a_trailing_line_break_is_no_sync_of_this_layout(tmp_path):
    odd = tmp_path / f"sync-{'a' * 32}\n"
    odd.mkdir()
    (odd / "page-1.json").write_bytes(b"{}")

    assert Inbox(tmp_path).old_layout_folders() == [odd]


@pytest.mark.parametrize("record", [b"not json", b"[]", b'{"key": "k"}',
                                    b'{"key": "k", "segment": {"id": 1e300, "name": "x"}, "signed_at": 1, '
                                    b'"received_at": "2026-01-01T00:00:00+00:00"}',
                                    b'{"key": "k", "segment": {"id": 5, "name": "x"}, "signed_at": 1e300, '
                                    b'"received_at": "2026-01-01T00:00:00+00:00"}'])
def test_an_unreadable_stored_drain_is_reported_and_the_tick_does_not_raise(ops_env, record):
    folder = Inbox.for_home(ops_env).drain_folder("0" * 32)
    folder.mkdir(parents=True)
    (folder / "drain.json").write_bytes(record)

    result = evaluate_sensor(dg.DagsterInstance.ephemeral(), ops_env)

    assert result.run_requests == [] and "drain.json cannot be read" in result.skip_reason.skip_message


@pytest.mark.parametrize("key", ["../../etc", "0" * 32 + "\n", "0" * 32 + "/../x", ""])
def test_a_drain_key_of_another_shape_is_not_in_the_inbox(tmp_path, key):
    assert Inbox(tmp_path).drain(key) is None


_JSON = st.recursive(st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False)
                     | st.text(max_size=8), lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=6)


_SEGMENT = st.fixed_dictionaries({}, optional={"id": _JSON, "name": _JSON}) | _JSON


@settings(max_examples=40, deadline=None)
@example(summary={"sync_task_id": "t", "segment": {"id": 5, "name": "x"}, "total_pages": 1,
                  "first_received": "2026-12-01"}, pages=[1])  # no time zone: naive, never compared
@given(summary=st.fixed_dictionaries({}, optional={
    "sync_task_id": _JSON, "segment": _SEGMENT, "total_pages": _JSON,
    "first_received": _JSON | st.sampled_from(["2026-12-01T00:00:00+00:00", "2026-12-01"])}),
       pages=st.lists(st.integers(0, 10**15), max_size=4, unique=True))
def test_listing_syncs_never_raises_whatever_a_stored_summary_holds(tmp_path_factory, summary, pages):
    root = tmp_path_factory.mktemp("inbox")
    folder = root / ("sync-" + "a" * 32)
    folder.mkdir()
    (folder / "sync.json").write_bytes(orjson.dumps(summary))
    for number in pages:
        (folder / f"page-{number}.json").write_bytes(b"{}")

    for sync in Inbox(root).syncs():
        assert sync.problem is not None or 1 <= sync.total_pages <= MAX_TOTAL_PAGES
        assert sync.complete in (True, False) and len(sync.missing_pages) <= 20


def test_a_page_file_numbered_beyond_the_bounds_is_never_read_by_a_run(tmp_path):
    inbox = Inbox(tmp_path)
    inbox.store(SyncPage("s", 1, 1, POWER_USERS, "Power Users", ("a",), ()))
    (inbox.sync_folder("s") / f"page-{10**12}.json").write_bytes(b"{}")

    assert [p.name for p in inbox.page_files("s")] == ["page-1.json"]
