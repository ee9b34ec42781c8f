"""Regulations end to end, through Dagster against the sandbox: a privacy request dropped into the inbox is
filed with Segment's Public API once, and a reverse-ETL model, a Heap audience and a replay all refuse to
send to that user (each records the refusal as `suppressed`, apart from rejections); an UNSUPPRESS lifts it;
a deleting regulation erases the user from every local store."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import duckdb
import orjson
import pytest

from segment_ops.engine.regulations import SYNC
from segment_ops.engine.store import staging_file
from segment_ops.resources import build_resources
from segment_ops.syncs.regulations.defs import KEY
from segment_ops.syncs.replay.defs import REPLAY_KEY
from segment_ops.syncs.replay.defs import defs as replay_defs
from segment_ops.syncs.reverse_etl.defs import build_reverse_etl_defs, model_key
from segment_ops_tests.governance.conftest import drop, run_regulations
from segment_ops_tests.heap.conftest import POWER_USERS, resolvable
from segment_ops_tests.heap.conftest import materialize as materialize_audience
from segment_ops_tests.heap.conftest import metadata as audience_metadata

pytestmark = pytest.mark.slow
MODEL = "user_traits"


def run_model(resources: dict) -> dg.ExecuteInProcessResult:
    assets = [a for a in build_reverse_etl_defs().assets if isinstance(a, dg.AssetsDefinition)]
    return dg.materialize(assets, selection=[model_key(MODEL)], resources=resources, raise_on_error=False)


def run_replay(resources: dict, path: Path) -> dg.ExecuteInProcessResult:
    return dg.materialize(list(replay_defs.assets), selection=[REPLAY_KEY], resources=resources,
                          run_config={"ops": {"segment__replayed_events": {"config": {"path": str(path)}}}},
                          raise_on_error=False)


def metadata(result: dg.ExecuteInProcessResult, key: dg.AssetKey) -> dict:
    [materialization] = [m for m in result.get_asset_materialization_events()
                         if m.asset_key == key]
    return {k: v.value for k, v in materialization.materialization.metadata.items()}


def checks(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def sent_to(sandbox, user_id: str) -> list[dict]:
    return [m for m in sandbox.received("segment", limit=100_000) if m.get("userId") == user_id]


def customers(warehouse: Path) -> set[str]:
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        return {row[0] for row in con.execute("SELECT user_id FROM customers WHERE user_id IS NOT NULL")
                .fetchall()}
    finally:
        con.close()


def suppressed_reasons(home: Path, sync: str) -> list[str]:
    con = duckdb.connect(str(staging_file(home, sync)), read_only=True)
    try:
        return [row[0] for row in con.execute(
            "SELECT last_error FROM ledger WHERE sync = ? AND status = 'suppressed'", [sync]).fetchall()]
    finally:
        con.close()


@pytest.fixture
def resources(warehouse: Path, clean_sandbox) -> dict:
    return build_resources()


def test_a_suppressed_user_is_refused_by_reverse_etl_a_heap_audience_and_a_replay(
        resources, clean_sandbox, warehouse, ops_env, public_api, tmp_path):
    subject = sorted(resolvable(warehouse, POWER_USERS) & customers(warehouse))[0]
    other = sorted(resolvable(warehouse, POWER_USERS) & customers(warehouse))[1]
    drop(ops_env, "dsr.csv", ("dsr-42", subject, "SUPPRESS_ONLY"))

    filed = run_regulations(resources)

    assert filed.success, filed
    meta = metadata(filed, KEY)
    assert meta["recorded"] == 2 and meta["filings"] >= 1  # ours and the demo warehouse's request
    assert not list((ops_env / "inbox" / "regulations").iterdir())  # recorded, so taken out of the inbox
    assert subject not in str(meta)  # counts and request ids only, never a subject's id
    at_segment = [r for r in public_api.iter_regulations() if subject in r["subjects"]]
    assert [r["regulationType"] for r in at_segment] == ["SUPPRESS_ONLY"]
    assert checks(filed)["requests_filed"]

    model = run_model(resources)
    assert model.success
    assert metadata(model, model_key(MODEL))["suppressed"] >= 1
    assert not sent_to(clean_sandbox, subject)
    assert sent_to(clean_sandbox, other)  # everybody else is sent as before
    [reason] = [r for r in suppressed_reasons(ops_env, f"reverse_etl_{MODEL}") if "SUPPRESS_ONLY" in r]
    assert at_segment[0]["id"] in reason and "dsr-42" in reason

    audience = materialize_audience(resources, "power_users", route="reconcile")
    assert audience.success
    assert audience_metadata(audience, "power_users")["suppressed"] == 2  # the trait and Audience Entered
    assert not sent_to(clean_sandbox, subject)

    replay_file = tmp_path / "history.jsonl"
    replay_file.write_bytes(b"\n".join(orjson.dumps({"type": "track", "userId": user, "event": "Old Event",
                                                     "timestamp": "2025-01-01T00:00:00Z"})
                                       for user in (subject, other)) + b"\n")
    replay = run_replay(resources, replay_file)
    assert replay.success
    assert metadata(replay, REPLAY_KEY)["suppressed"] == 1
    assert [m["event"] for m in sent_to(clean_sandbox, other) if m["type"] == "track"
            and m["event"] == "Old Event"] == ["Old Event"]
    assert not sent_to(clean_sandbox, subject)

    # The person withdraws the objection: an UNSUPPRESS lifts it, and the model sends what its rows say.
    drop(ops_env, "undo.csv", ("dsr-43", subject, "UNSUPPRESS"))
    assert run_regulations(resources).success
    again = run_model(resources)
    assert again.success
    assert [m["type"] for m in sent_to(clean_sandbox, subject)] == ["identify"]
    assert metadata(again, model_key(MODEL))["suppression_lifted"] == 1


def test_a_deleting_regulation_erases_the_user_from_every_local_store(
        resources, clean_sandbox, warehouse, ops_env, tmp_path):
    from segment_ops.engine.erasure import find_subject

    clean_sandbox.regulation_settings(running_after_seconds=0, finished_after_seconds=0)
    # The demo warehouse's own request (SUPPRESS_WITH_DELETE of its first customer), and a DELETE_ONLY of a
    # member of a Heap audience, dropped into the inbox.
    con = duckdb.connect(str(warehouse), read_only=True)
    [(subject,)] = con.execute("SELECT user_id FROM privacy_requests").fetchall()
    con.close()
    member = sorted(resolvable(warehouse, POWER_USERS) - {subject})[0]
    # Before the requests are filed the users are everywhere: sent by a model, an audience and a replay, kept
    # in their ledgers, snapshots and Heap's membership.
    assert run_model(resources).success
    assert materialize_audience(resources, "power_users", route="reconcile").success
    replay_file = tmp_path / "history.jsonl"
    calls = [{"type": "identify", "userId": user, "traits": {"x": 1}} for user in (subject, member)]
    replay_file.write_bytes(b"".join(orjson.dumps(call) + b"\n" for call in calls))
    assert run_replay(resources, replay_file).success
    assert find_subject(ops_env, subject) and find_subject(ops_env, member)  # the test can fail
    sent_before = {user: len(sent_to(clean_sandbox, user)) for user in (subject, member)}
    drop(ops_env, "dsr.csv", ("dsr-77", member, "DELETE_ONLY"))

    filed = run_regulations(resources, wait_seconds=20)

    assert filed.success, filed
    assert metadata(filed, KEY)["erased_subjects"] == 2
    assert checks(filed)["erased_at_home"]
    assert find_subject(ops_env, subject) == [] and find_subject(ops_env, member) == []
    # Later runs read rows that still hold the users (the warehouse, Heap's export): nothing of them is sent
    # or kept again.
    model = run_model(resources)
    assert model.success and metadata(model, model_key(MODEL))["erased_users_withheld"] >= 1
    audience = materialize_audience(resources, "power_users", route="reconcile")
    assert audience.success and audience_metadata(audience, "power_users")["erased_users_withheld"] == 1
    assert run_replay(resources, replay_file).success
    assert find_subject(ops_env, subject) == [] and find_subject(ops_env, member) == []
    assert {user: len(sent_to(clean_sandbox, user)) for user in (subject, member)} == sent_before
    assert staging_file(ops_env, SYNC).exists()
