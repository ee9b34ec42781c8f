"""Replaying an edited file: a line is identified by its messageId when it has one, else by (file, line
number); a line whose content changed since it was planned is reported and not sent, unless forced."""

from __future__ import annotations

import pytest

from segment_ops.engine.ledger import Ledger
from segment_ops.engine.store import staging
from segment_ops.syncs.replay.reader import plan_file, replay_file
from segment_ops_tests.engine.conftest import track_calls, write_jsonl
from segment_ops_tests.engine.test_replay_cli import run_replay


def with_ids(calls: list[dict]) -> list[dict]:
    return [{**call, "messageId": f"m-{i}"} for i, call in enumerate(calls)]


def edited(calls: list[dict], index: int) -> list[dict]:
    calls = [dict(call) for call in calls]
    calls[index]["properties"] = {**calls[index]["properties"], "plan": "edited"}
    return calls


def test_an_edited_line_without_a_message_id_is_reported_and_not_sent_as_a_new_event(
        tmp_path, ledger, segment_client, clean_sandbox):
    calls = track_calls(3)
    replay_file(ledger, write_jsonl(tmp_path / "events.jsonl", calls), segment_client)

    again = replay_file(ledger, write_jsonl(tmp_path / "events.jsonl", edited(calls, 1)), segment_client)

    assert (again.plan.planned, again.plan.already_known, again.plan.changed) == (0, 2, 1)
    assert [c.source for c in again.plan.changed_samples] == ["events.jsonl:2"]
    assert again.delivery.delivered == 0 and not again.ok
    assert clean_sandbox.stats()["segment"]["received"] == 3


def test_an_edited_line_with_a_message_id_is_reported_not_ignored(tmp_path, ledger, segment_client,
                                                                   clean_sandbox):
    calls = with_ids(track_calls(3))
    replay_file(ledger, write_jsonl(tmp_path / "events.jsonl", calls), segment_client)

    again = replay_file(ledger, write_jsonl(tmp_path / "events.jsonl", edited(calls, 2)), segment_client)

    assert (again.plan.planned, again.plan.already_known, again.plan.changed) == (0, 2, 1)
    [changed] = again.plan.changed_samples
    assert (changed.source, changed.message_id) == ("events.jsonl:3", "m-2")
    assert "messageId 'm-2'" in changed.reason and not again.ok
    assert clean_sandbox.stats()["segment"]["received"] == 3


def test_a_message_id_moved_to_another_line_or_file_keeps_its_identity(tmp_path, ledger, segment_client,
                                                                        clean_sandbox):
    calls = with_ids(track_calls(3))
    replay_file(ledger, write_jsonl(tmp_path / "events.jsonl", calls), segment_client)

    again = replay_file(ledger, write_jsonl(tmp_path / "other.jsonl", calls[::-1]), segment_client)

    assert (again.plan.planned, again.plan.already_known, again.plan.changed) == (0, 3, 0) and again.ok


def test_lines_appended_to_a_file_are_sent_and_the_earlier_ones_are_not(tmp_path, ledger, segment_client,
                                                                        clean_sandbox):
    calls = track_calls(5)
    replay_file(ledger, write_jsonl(tmp_path / "events.jsonl", calls[:3]), segment_client)

    again = replay_file(ledger, write_jsonl(tmp_path / "events.jsonl", calls), segment_client)

    assert (again.plan.planned, again.plan.already_known, again.plan.changed) == (2, 3, 0) and again.ok
    assert clean_sandbox.stats()["segment"]["received"] == 5


def test_the_same_lines_under_another_file_name_are_not_sent_again(tmp_path, ledger, segment_client,
                                                                   clean_sandbox):
    calls = track_calls(3)
    replay_file(ledger, write_jsonl(tmp_path / "events.jsonl", calls), segment_client)

    again = replay_file(ledger, write_jsonl(tmp_path / "copy.jsonl", calls), segment_client)

    assert (again.plan.planned, again.plan.already_known, again.plan.changed) == (0, 3, 0) and again.ok


def test_a_dry_run_reports_edited_lines_and_records_nothing(tmp_path, ledger, segment_client, clean_sandbox):
    calls = track_calls(3)
    replay_file(ledger, write_jsonl(tmp_path / "events.jsonl", calls), segment_client)
    path = write_jsonl(tmp_path / "events.jsonl", edited(calls, 0))

    first, second = (plan_file(ledger, path, dry_run=True) for _ in range(2))

    assert (first.changed, second.changed) == (1, 1)
    assert [c.source for c in second.changed_samples] == ["events.jsonl:1"]


def test_force_sends_an_edited_line_without_a_message_id_and_remembers_it(tmp_path, ledger, segment_client,
                                                                           clean_sandbox):
    calls = track_calls(3)
    replay_file(ledger, write_jsonl(tmp_path / "events.jsonl", calls), segment_client)
    path = write_jsonl(tmp_path / "events.jsonl", edited(calls, 1))

    forced = replay_file(ledger, path, segment_client, force=True)
    after = replay_file(ledger, path, segment_client)

    assert forced.plan.changed == 1 and forced.ok
    assert [m["properties"].get("plan") for m in clean_sandbox.received("segment")].count("edited") == 1
    assert (after.plan.planned, after.plan.already_known, after.plan.changed) == (0, 3, 0)


@pytest.mark.slow
def test_the_cli_summary_counts_and_shows_edited_lines(tmp_path, ops_env, clean_sandbox):
    calls = with_ids(track_calls(3))
    path = write_jsonl(tmp_path / "events.jsonl", calls)
    with staging(ops_env / "staging" / "replay.duckdb") as con:  # the CLI's ledger: planned before
        plan_file(Ledger(con), path)
    write_jsonl(path, edited(calls, 0))

    done = run_replay(path, "--dry-run")

    assert "changed since planned: 1" in done.stdout
    assert "changed events.jsonl:1: messageId 'm-0' was planned with other content" in done.stdout
    assert done.returncode == 1, done.stdout
