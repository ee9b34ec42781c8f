"""The generic durable inbox: items written once, repeats kept once, conflicts kept aside, done markers."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from segment_ops.receivers import inbox
from segment_ops.receivers.inbox import Conflict, InboxError


def record(value: str, *, arrived: str = "t1") -> bytes:
    return orjson.dumps({"value": value, "arrived": arrived})


def differs_from(value: str):
    """A vendor's comparison: only `value` matters, not when the copy arrived."""
    return lambda stored: ["value"] if stored["value"] != value else []


def store(target: Path, value: str, *, arrived: str = "t1") -> bool:
    return inbox.store_item(target, record(value, arrived=arrived), content=value.encode(),
                            differences=differs_from(value))


def test_write_once_keeps_the_first_copy(tmp_path):
    target = tmp_path / "item.json"

    assert inbox.write_once(target, b"first") is True
    assert inbox.write_once(target, b"second") is False

    assert target.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["item.json"]  # no temporary file left behind


def test_write_once_into_a_missing_folder_is_an_inbox_error_naming_the_file(tmp_path):
    target = tmp_path / "missing" / "item.json"

    with pytest.raises(InboxError, match="cannot write .*item.json"):
        inbox.write_once(target, b"x")


def test_make_dirs_creates_every_missing_parent(tmp_path):
    folder = tmp_path / "inbox" / "vendor" / "batch-1"

    inbox.make_dirs(folder)
    inbox.make_dirs(folder)  # again: nothing to do, no error

    assert folder.is_dir()


def test_make_dirs_over_a_file_is_an_inbox_error(tmp_path):
    (tmp_path / "inbox").write_text("a file where the folder belongs")

    with pytest.raises(InboxError, match="cannot create"):
        inbox.make_dirs(tmp_path / "inbox" / "batch-1")


def test_a_new_item_is_stored_with_its_folder(tmp_path):
    target = tmp_path / "inbox" / "batch-1" / "part-1.json"

    assert store(target, "a") is True

    assert orjson.loads(target.read_bytes()) == {"value": "a", "arrived": "t1"}


def test_a_repeat_is_kept_once_and_the_first_copy_stays(tmp_path):
    target = tmp_path / "batch-1" / "part-1.json"
    store(target, "a", arrived="t1")

    assert store(target, "a", arrived="t2") is False

    assert orjson.loads(target.read_bytes())["arrived"] == "t1"
    assert not (tmp_path / "batch-1" / "conflicts").exists()


def test_a_different_copy_is_a_conflict_kept_aside_and_the_first_copy_stays(tmp_path):
    target = tmp_path / "batch-1" / "part-1.json"
    store(target, "a")

    with pytest.raises(Conflict, match="part-1.json is already stored with a different value") as raised:
        store(target, "b")

    assert raised.value.differences == ("value",)
    assert raised.value.kept_aside is not None and raised.value.kept_aside.read_bytes() == b"b"
    assert raised.value.kept_aside.parent == tmp_path / "batch-1" / "conflicts"
    assert orjson.loads(target.read_bytes())["value"] == "a"


def test_a_conflicting_copy_is_kept_aside_once_per_distinct_content(tmp_path):
    target = tmp_path / "batch-1" / "part-1.json"
    store(target, "a")

    for value in ("b", "b", "c", "b"):
        with pytest.raises(Conflict):
            store(target, value)

    aside = sorted(p.read_bytes() for p in (tmp_path / "batch-1" / "conflicts").iterdir())
    assert aside == [b"b", b"c"]


def test_a_conflict_is_still_raised_when_its_copy_cannot_be_kept_aside(tmp_path):
    target = tmp_path / "batch-1" / "part-1.json"
    store(target, "a")
    (tmp_path / "batch-1" / "conflicts").write_text("a file where the conflicts folder belongs")

    with pytest.raises(Conflict) as raised:
        store(target, "b")

    assert raised.value.kept_aside is None


def test_concurrent_copies_of_an_item_store_it_exactly_once(tmp_path):
    target = tmp_path / "batch-1" / "part-1.json"
    results: list[bool] = []
    threads = [threading.Thread(target=lambda: results.append(store(target, "a"))) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(results) == [False] * 15 + [True]
    assert [p.name for p in (tmp_path / "batch-1").iterdir()] == ["part-1.json"]


def test_an_item_that_cannot_be_stored_is_an_inbox_error(tmp_path):
    (tmp_path / "batch-1").write_text("a file where the batch folder belongs")

    with pytest.raises(InboxError):
        store(tmp_path / "batch-1" / "part-1.json", "a")


def test_a_batch_is_done_only_once_marked_and_the_first_marker_is_kept(tmp_path):
    batch = tmp_path / "batch-1"
    store(batch / "part-1.json", "a")
    assert inbox.is_done(batch) is False and inbox.done_at(batch) is None

    assert inbox.mark_done(batch, {"run": "first"}) is True
    assert inbox.mark_done(batch, {"run": "second"}) is False

    marker = orjson.loads((batch / inbox.DONE_MARKER).read_bytes())
    assert inbox.is_done(batch) is True and marker["run"] == "first"
    assert inbox.done_at(batch).isoformat() == marker["done_at"]


def test_batch_folders_lists_folders_only_and_skips_hidden_ones(tmp_path):
    for name in ("batch-1", "batch-2", ".tmp-batch"):
        (tmp_path / name).mkdir()
    (tmp_path / "note.json").write_text("{}")

    assert sorted(p.name for p in inbox.batch_folders(tmp_path)) == ["batch-1", "batch-2"]
    assert list(inbox.batch_folders(tmp_path / "missing")) == []


def test_numbered_parts_come_in_number_order_and_other_files_are_ignored(tmp_path):
    for name in ("part-10.json", "part-2.json", "part-1.json", "part-x.json", "summary.json", "other-3.json"):
        (tmp_path / name).write_text("{}")

    parts = inbox.numbered_parts(tmp_path, "part")

    assert parts == [(1, tmp_path / "part-1.json"), (2, tmp_path / "part-2.json"),
                     (10, tmp_path / "part-10.json")]
    assert inbox.numbered_parts(tmp_path / "missing", "part") == []


def test_an_unreadable_item_is_an_inbox_error_naming_the_file(tmp_path):
    (tmp_path / "part-1.json").write_text("not json")

    with pytest.raises(InboxError, match="cannot read inbox file .*part-1.json"):
        inbox.read_json(tmp_path / "part-1.json")


@pytest.mark.parametrize("name", ["part-1.json\n", "part-\u0663.json", "part-01.json", "part-1.json.tmp",
                                  "part--1.json"])
def test_numbered_parts_take_only_ascii_numbers_anchored_at_the_true_end(tmp_path, name):
    (tmp_path / "part-1.json").write_bytes(b"{}")
    (tmp_path / name).write_bytes(b"{}")

    assert inbox.numbered_parts(tmp_path, "part") == [(1, tmp_path / "part-1.json")]


def test_an_archived_batch_leaves_the_live_folder_is_found_and_is_pruned_by_day(tmp_path):
    batch = tmp_path / "b1"
    inbox.make_dirs(batch)
    inbox.write_once(batch / "part-1.json", b"{}")
    old = datetime.now(UTC) - timedelta(days=40)

    moved = inbox.archive_batch(batch, old)

    assert list(inbox.batch_folders(tmp_path)) == [] and inbox.archived_batch(tmp_path, "b1") == moved
    assert inbox.prune_archive(tmp_path, datetime.now(UTC) - timedelta(days=30)) == [moved.parent]
    assert inbox.archived_batch(tmp_path, "b1") is None
