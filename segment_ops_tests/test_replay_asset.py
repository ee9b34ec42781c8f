"""The replay sync in Dagster: the `segment/replayed_events` asset and its checks, `replay_job`, and the
inbox sensor.

Runs go through Dagster's own harness against the sandbox, with the resources the code location binds.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import dagster as dg
import pytest

from segment_ops.engine.ledger import Ledger
from segment_ops.engine.store import staging
from segment_ops.resources import build_resources
from segment_ops.syncs.replay.defs import replay_inbox_sensor, replay_job, replayed_events
from segment_ops.syncs.replay.reader import REPLAY_SYNC, plan_file

NODE = "segment__replayed_events"


def write_calls(path: Path, count: int, *, bad: int = 0) -> Path:
    lines = [json.dumps({"type": "track", "userId": f"u{i}", "event": "Replayed", "properties": {"n": i}})
             for i in range(count)]
    lines += ['{"type": "track", "userId": "nobody"}'] * bad  # track without an event
    path.write_text("\n".join(lines) + "\n")
    return path


def replay_config(path: Path, **options: object) -> dict:
    return {"ops": {NODE: {"config": {"path": str(path), **options}}}}


@pytest.fixture
def resources(ops_env, clean_sandbox) -> dict:
    return build_resources()


def materialize(resources: dict, path: Path, **options: object) -> dg.ExecuteInProcessResult:
    return dg.materialize([replayed_events], resources=resources, run_config=replay_config(path, **options),
                          raise_on_error=False)


def metadata(result: dg.ExecuteInProcessResult) -> dict:
    [materialization] = result.asset_materializations_for_node(NODE)
    return {key: value.value for key, value in materialization.metadata.items()}


def checks(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {evaluation.check_name: evaluation for evaluation in result.get_asset_check_evaluations()}


# --- the asset --------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_materialization_delivers_the_file_and_reports_counts(tmp_path, resources, clean_sandbox):
    path = write_calls(tmp_path / "calls.jsonl", 60)

    result = materialize(resources, path)

    assert result.success
    meta = metadata(result)
    assert (meta["lines_read"], meta["planned"], meta["delivered"], meta["rejected_lines"]) == (60, 60, 60, 0)
    assert meta["dry_run"] is False and meta["path"] == str(path)
    samples = meta["sample_payloads"]
    assert len(samples) == 5 and samples[0]["event"] == "Replayed" and samples[0]["messageId"]
    evaluations = checks(result)
    assert evaluations["delivery_complete"].passed and evaluations["rejected_ratio"].passed
    assert clean_sandbox.stats()["segment"]["received"] == 60


@pytest.mark.slow
def test_rematerializing_the_same_file_sends_nothing_new(tmp_path, resources, clean_sandbox):
    path = write_calls(tmp_path / "calls.jsonl", 20)
    assert materialize(resources, path).success

    again = materialize(resources, path)

    meta = metadata(again)
    assert (meta["planned"], meta["planned_by_earlier_runs"], meta["delivered"]) == (0, 20, 0)
    assert checks(again)["delivery_complete"].passed
    stats = clean_sandbox.stats()["segment"]
    assert (stats["received"], stats.get("duplicates", 0)) == (20, 0)


@pytest.mark.slow
def test_an_edited_line_is_counted_and_shown_and_not_sent(tmp_path, resources, clean_sandbox):
    path = write_calls(tmp_path / "calls.jsonl", 20)
    with staging(resources["staging"].staging_db(REPLAY_SYNC)) as con:  # planned by an earlier run
        plan_file(Ledger(con), path)
    path.write_text(path.read_text().replace('"n": 4}', '"n": 4, "plan": "edited"}'))

    again = materialize(resources, path)

    meta = metadata(again)
    assert (meta["planned"], meta["planned_by_earlier_runs"], meta["changed_since_planned"]) == (0, 19, 1)
    assert "| calls.jsonl:5 | this line was planned with other content" in meta["changed_sample"]
    assert meta["delivered"] == 20  # the earlier run's plan, as it was planned
    assert not [m for m in clean_sandbox.received("segment") if "plan" in m["properties"]]


@pytest.mark.slow
def test_more_than_one_percent_rejected_lines_fails_the_ratio_check_but_not_the_run(
        tmp_path, resources, clean_sandbox):
    path = write_calls(tmp_path / "calls.jsonl", 98, bad=2)

    result = materialize(resources, path)

    assert result.success
    evaluations = checks(result)
    ratio = evaluations["rejected_ratio"]
    assert not ratio.passed and ratio.severity == dg.AssetCheckSeverity.WARN
    assert ratio.metadata["ratio"].value == pytest.approx(0.02)
    assert evaluations["delivery_complete"].passed
    meta = metadata(result)
    assert (meta["delivered"], meta["rejected_lines"]) == (98, 2)
    assert "calls.jsonl:99" in meta["rejected_sample"] and "event name" in meta["rejected_sample"]


@pytest.mark.slow
def test_one_percent_rejected_lines_passes_the_ratio_check(tmp_path, resources, clean_sandbox):
    result = materialize(resources, write_calls(tmp_path / "calls.jsonl", 99, bad=1))

    assert checks(result)["rejected_ratio"].passed


def test_missing_file_fails_the_run_with_a_clear_message(tmp_path, resources, clean_sandbox):
    missing = tmp_path / "nowhere.jsonl"

    result = materialize(resources, missing)

    assert not result.success
    [failure] = [event for event in result.all_events if event.is_step_failure]
    assert failure.step_failure_data.user_failure_data.description == f"{missing}: no such file"
    assert clean_sandbox.stats()["segment"]["requests"] == 0


@pytest.mark.slow
def test_dry_run_sends_nothing_and_shows_what_would_be_sent(tmp_path, resources, clean_sandbox):
    path = write_calls(tmp_path / "calls.jsonl", 30)

    result = materialize(resources, path, dry_run=True)

    assert result.success
    meta = metadata(result)
    assert meta["dry_run"] is True and (meta["lines_read"], meta["planned"]) == (30, 30)
    assert len(meta["sample_payloads"]) == 5 and "delivered" not in meta
    assert checks(result)["delivery_complete"].passed
    assert clean_sandbox.stats()["segment"]["requests"] == 0


@pytest.mark.slow
def test_delivery_failure_fails_the_run_and_reports_what_is_pending(tmp_path, ops_env, clean_sandbox,
                                                                    monkeypatch):
    monkeypatch.setenv("SEGMENT_TRACKING_URL", f"{clean_sandbox.url}/segment/nowhere")  # 404: final
    path = write_calls(tmp_path / "calls.jsonl", 10)

    result = materialize(build_resources(), path, skip_preflight=True)  # the gate refuses an unknown host

    assert not result.success
    [failure] = [event for event in result.all_events if event.is_step_failure]
    data = failure.step_failure_data.user_failure_data
    assert "10 message(s)" in data.description and "stay pending" in data.description
    assert data.metadata["pending"].value == 10


# --- the preflight gate ----------------------------------------------------------------------------------

WRONG_WRITE_KEY = "wk-live-5ecret-value-0003"


def step_failure(result: dg.ExecuteInProcessResult) -> dg.Failure:
    [failure] = [event for event in result.all_events if event.is_step_failure]
    return failure.step_failure_data.user_failure_data


def test_a_replay_under_a_wrong_write_key_is_refused_and_sends_nothing(tmp_path, ops_env, clean_sandbox,
                                                                      monkeypatch):
    monkeypatch.setenv("SEGMENT_WRITE_KEY", WRONG_WRITE_KEY)
    monkeypatch.setenv("TRACKING_PLAN_POLICY", "off")  # else the plan is read with the Public API
    path = write_calls(tmp_path / "calls.jsonl", 5)

    result = materialize(build_resources(), path)

    assert not result.success
    failure = step_failure(result)
    assert failure.description.startswith("preflight refused to send: segment_write_key")
    assert "Nothing was sent" in failure.description and "5ecret" not in failure.description
    assert "preflight" in failure.metadata
    assert clean_sandbox.stats()["segment"]["requests"] == 0


def test_a_refused_run_says_how_to_refresh_the_cached_answer_and_how_long_it_lasts(tmp_path, ops_env,
                                                                                  clean_sandbox, monkeypatch):
    monkeypatch.setenv("SEGMENT_WRITE_KEY", WRONG_WRITE_KEY)
    monkeypatch.setenv("PREFLIGHT_CACHE_SECONDS", "900")

    result = materialize(build_resources(), write_calls(tmp_path / "calls.jsonl", 5))

    description = step_failure(result).description
    assert "`segment-ops check` or materializing ops/preflight refreshes it" in description
    assert "reused for up to 900 s (PREFLIGHT_CACHE_SECONDS)" in description
    assert "a changed setting is checked anew at once" in description


@pytest.mark.slow
def test_skip_preflight_replays_under_a_wrong_write_key_and_segment_drops_it(tmp_path, ops_env,
                                                                             clean_sandbox, monkeypatch):
    monkeypatch.setenv("SEGMENT_WRITE_KEY", WRONG_WRITE_KEY)
    monkeypatch.setenv("TRACKING_PLAN_POLICY", "off")  # else the plan is read with the Public API
    path = write_calls(tmp_path / "calls.jsonl", 5)

    result = materialize(build_resources(), path, skip_preflight=True)

    assert result.success and metadata(result)["delivered"] == 5
    stats = clean_sandbox.stats()
    assert stats["segment"]["dropped"] == {"unknown_write_key": 5} and stats["segmentapis"]["requests"] == 0


# --- the job and the sensor ------------------------------------------------------------------------------

def inbox(home: Path) -> Path:
    folder = home / "inbox" / "replay"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def settled(path: Path, seconds_ago: float = 60) -> Path:
    """Backdate the file's mtime past the sensor's settle time."""
    then = time.time() - seconds_ago
    os.utime(path, (then, then))
    return path


def evaluate(sensor_cursor: str | None, resources: dict) -> dg.SensorResult:
    context = dg.build_sensor_context(instance=dg.DagsterInstance.ephemeral(), cursor=sensor_cursor,
                                      resources={"staging": resources["staging"]})
    return replay_inbox_sensor(context)


def requested_paths(result: dg.SensorResult) -> list[str]:
    return sorted(r.run_config["ops"][NODE]["config"]["path"] for r in result.run_requests)


def test_sensor_requests_one_run_per_settled_file(ops_env, resources):
    folder = inbox(ops_env)
    a = settled(write_calls(folder / "a.jsonl", 3))
    b = settled(write_calls(folder / "b.ndjson", 3))

    result = evaluate(None, resources)

    assert requested_paths(result) == [str(a), str(b)]
    assert len({r.run_key for r in result.run_requests}) == 2
    assert {r.tags["segment_ops/replay_file"] for r in result.run_requests} == {"a.jsonl", "b.ndjson"}


def test_sensor_waits_until_a_file_has_settled(ops_env, resources):
    fresh = write_calls(inbox(ops_env) / "fresh.jsonl", 3)  # still being written, as far as we know

    first = evaluate(None, resources)
    settled(fresh)
    later = evaluate(first.cursor, resources)

    assert first.run_requests == [] and first.skip_reason
    assert requested_paths(later) == [str(fresh)]


def test_sensor_does_not_request_the_same_file_again(ops_env, resources):
    settled(write_calls(inbox(ops_env) / "a.jsonl", 3))
    first = evaluate(None, resources)

    second = evaluate(first.cursor, resources)

    assert len(first.run_requests) == 1
    assert second.run_requests == [] and "no new files" in second.skip_reason.skip_message


def test_sensor_requests_a_changed_file_again(ops_env, resources):
    path = settled(write_calls(inbox(ops_env) / "a.jsonl", 3))
    first = evaluate(None, resources)
    settled(write_calls(path, 5), seconds_ago=30)

    second = evaluate(first.cursor, resources)

    assert requested_paths(second) == [str(path)]
    assert second.run_requests[0].run_key != first.run_requests[0].run_key


def test_sensor_reports_files_it_ignores(ops_env, resources):
    folder = inbox(ops_env)
    settled(write_calls(folder / "calls.csv", 3))
    (folder / ".hidden.jsonl").write_text("{}\n")

    result = evaluate(None, resources)

    assert result.run_requests == []
    message = result.skip_reason.skip_message
    assert "ignored" in message and "calls.csv" in message and ".hidden" not in message


@pytest.mark.slow
def test_sensor_run_request_runs_the_replay_job(ops_env, resources, clean_sandbox):
    settled(write_calls(inbox(ops_env) / "drop.jsonl", 15))
    [request] = evaluate(None, resources).run_requests
    job = dg.Definitions(assets=[replayed_events], jobs=[replay_job], resources=resources).resolve_job_def(
        "replay_job")

    result = job.execute_in_process(run_config=request.run_config, tags=request.tags)

    assert result.success
    assert metadata(result)["delivered"] == 15
    assert clean_sandbox.stats()["segment"]["received"] == 15
