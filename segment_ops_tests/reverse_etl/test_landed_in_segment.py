"""`landed_in_segment` on the reverse-ETL identify model: a sample of what a run delivered is read back
through the sandbox's Profile API once the delay has passed (the next check, or a run the sensor starts).
Real Dagster runs over real HTTP; the sync's own run and the later one as `conftest.ReadBackEnv` says."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import duckdb
import httpx
import orjson
import pytest

from segment_ops.clients.base import RetryPolicy
from segment_ops.clients.segment_profiles import SegmentProfilesClient
from segment_ops.config import SANDBOX_SEGMENT_WRITE_KEY
from segment_ops.engine import store
from segment_ops.engine.calls import prepare_call
from segment_ops.engine.ledger import DELIVERED, Ledger, LedgerCounts, PlannedMessage
from segment_ops.engine.verification import ReadBackReport, TraitMismatch, draw_sample
from segment_ops.resources import SegmentProfilesResource
from segment_ops.syncs import verification
from segment_ops.syncs.reverse_etl.defs import build_reverse_etl_defs, model_key
from segment_ops.syncs.verification import CHECK_NAME, ReadBackTarget, landed_result
from segment_ops_tests.conftest import ReadBackEnv, check_evaluation

VALID_CUSTOMERS = 174
USER_TRAITS = 7  # email, name, plan, country, account_id, lifetime_value, created_at
TARGET = ReadBackTarget(model_key("user_traits"), "reverse_etl_user_traits")
CHECK_OP = "segment__reverse_etl__user_traits__landed_in_segment"


@pytest.fixture
def env(read_back_env):
    return read_back_env


@pytest.fixture
def instance() -> dg.DagsterInstance:
    return dg.DagsterInstance.ephemeral()


def definitions(resources: dict) -> dg.Definitions:
    return dg.Definitions.merge(build_reverse_etl_defs(), dg.Definitions(resources=resources))


def sync_user_traits(resources: dict, instance: dg.DagsterInstance,
                     **config: object) -> dg.ExecuteInProcessResult:
    """Materialize the user_traits model with its `landed_in_segment` check (as reverse_etl_job does)."""
    defs = build_reverse_etl_defs()
    assets = [a for a in defs.assets or [] if isinstance(a, dg.AssetsDefinition)]
    run_config = {"ops": {"segment__reverse_etl__user_traits": {"config": config}}} if config else None
    return dg.materialize([*assets, *(defs.asset_checks or [])], resources=resources, instance=instance,
                          selection=dg.AssetSelection.assets(model_key("user_traits")), run_config=run_config,
                          raise_on_error=False)


def read_back(resources: dict, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    """A run of the read-back job alone, as the sensor starts it."""
    job = definitions(resources).resolve_job_def("reverse_etl_read_back_job")
    return job.execute_in_process(instance=instance, raise_on_error=False)


def evaluation(result: dg.ExecuteInProcessResult) -> dg.AssetCheckEvaluation | None:
    return check_evaluation(result, CHECK_NAME)


def values(check: dg.AssetCheckEvaluation) -> dict:
    return {key: value.value for key, value in check.metadata.items()}


def log_lines(instance: dg.DagsterInstance, result: dg.ExecuteInProcessResult) -> list[str]:
    return [e.user_message for e in instance.all_logs(result.run_id)
            if e.step_key == CHECK_OP and e.user_message.startswith(CHECK_NAME)]


def ledger_counts(home: Path) -> LedgerCounts:
    con = duckdb.connect(str(home / "staging" / "reverse_etl_user_traits.duckdb"), read_only=True)
    try:
        return Ledger(con, create=False).counts("reverse_etl_user_traits")
    finally:
        con.close()


@pytest.mark.slow
def test_a_run_under_the_right_key_is_verified_by_the_next_check(env, instance, ops_env, clean_sandbox):
    resources = env()

    synced = sync_user_traits(resources.now, instance)
    assert synced.success and evaluation(synced) is None  # its own calls are too recent: skipped, saying so
    [reason] = log_lines(instance, synced)
    assert "skipped: no identify call delivered at least 60 s ago awaits read-back" in reason
    assert f"({VALID_CUSTOMERS} delivered more recently are left to a later check)" in reason
    ReadBackEnv.wait()
    checked = read_back(resources.later, instance)

    check = evaluation(checked)
    assert checked.success and check.passed
    meta = values(check)
    assert (meta["sample_size"], meta["profiles_found"], meta["profiles_missing"]) == (20, 20, 0)
    assert meta["traits_compared"] == meta["traits_matching"] == 20 * USER_TRAITS
    assert (meta["messages_verified"], meta["runs_sampled"]) == (20, 1) and "first_mismatches" not in meta
    assert clean_sandbox.stats()["profiles"]["profiles"] == {"found": 20}
    assert ledger_counts(ops_env) == LedgerCounts(pending=0, delivered=VALID_CUSTOMERS - 20, rejected=0,
                                                  verified=20)
    assert evaluation(read_back(resources.later, instance)) is None  # the run is sampled: not read twice
    again = sync_user_traits(resources.now, instance)  # verified counts as delivered for the diff
    meta = {key: value.value for key, value in again.asset_materializations_for_node(
        "segment__reverse_etl__user_traits")[0].metadata.items()}
    assert (meta["added"], meta["changed"], meta["unchanged"]) == (0, 0, VALID_CUSTOMERS)
    [complete] = [e for e in again.get_asset_check_evaluations() if e.check_name == "delivery_complete"]
    assert complete.metadata["verified_total"].value == 20
    assert complete.metadata["delivered_total"].value == VALID_CUSTOMERS


@pytest.mark.slow
def test_a_run_under_a_wrong_write_key_fails_landed_in_segment(env, instance, ops_env, clean_sandbox):
    resources = env(SEGMENT_WRITE_KEY="wk-no-source-has-this-key")

    synced = sync_user_traits(resources.now, instance, skip_preflight=True)  # the preflight would refuse it
    assert synced.success  # Segment answered 200 to every batch
    assert clean_sandbox.stats()["segment"]["dropped"] == {"unknown_write_key": VALID_CUSTOMERS}
    ReadBackEnv.wait()
    check = evaluation(read_back(resources.later, instance))

    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    meta = values(check)
    assert (meta["sample_size"], meta["profiles_found"], meta["profiles_missing"]) == (20, 0, 20)
    assert meta["missing_share"] == 1.0 and meta["messages_verified"] == 0
    assert "| usr_" in meta["first_missing_profiles"] and "user_id:usr_" in meta["first_missing_profiles"]
    assert ledger_counts(ops_env).verified == 0


@pytest.mark.slow
def test_a_trait_overwritten_by_another_source_is_reported_not_failed(env, instance, ops_env, clean_sandbox):
    resources = env()
    assert sync_user_traits(resources.now, instance).success
    con = duckdb.connect(str(ops_env / "staging" / "reverse_etl_user_traits.duckdb"), read_only=True)
    try:  # the message the check will read back first (the sample is the same for the same ledger)
        first = Ledger(con, create=False).read_back_sample(
            "reverse_etl_user_traits", delivered_before=datetime.now(UTC) + timedelta(hours=1),
            per_run=20).messages[0]
    finally:
        con.close()
    sent = orjson.loads(first.payload)["traits"]["plan"]
    with httpx.Client(base_url=clean_sandbox.url) as http:  # another source of the workspace, later
        http.post("/segment/v1/identify", auth=(SANDBOX_SEGMENT_WRITE_KEY, ""),
                  json={"userId": first.record_key, "traits": {"plan": "enterprise"}, "messageId": "crm-1"})
    ReadBackEnv.wait()

    check = evaluation(read_back(resources.later, instance))

    assert check.passed  # every profile is there
    meta = values(check)
    assert (meta["sample_size"], meta["profiles_missing"]) == (20, 0)
    assert (meta["messages_mismatched"], meta["messages_verified"]) == (1, 19)
    assert meta["traits_compared"] - meta["traits_matching"] == 1
    assert f'| {first.record_key} | plan | "{sent}" | "enterprise" |' in meta["first_mismatches"]
    assert ledger_counts(ops_env).verified == 19


@pytest.mark.slow
def test_without_the_profile_api_settings_the_check_is_skipped_with_the_reason(env, instance, clean_sandbox,
                                                                              ops_env):
    # A tracking URL of its own: a real Segment, as far as the settings tell; no Profile API settings.
    resources = env(SEGMENT_TRACKING_URL=f"{clean_sandbox.url}/segment")
    assert resources.later["segment_profiles"].skip_reason().startswith(
        "SEGMENT_PROFILES_URL, SEGMENT_PROFILES_SPACE_ID, SEGMENT_PROFILES_TOKEN not set")

    synced = sync_user_traits(resources.now, instance, skip_preflight=True)  # preflight: not this test's
    ReadBackEnv.wait()
    checked = read_back(resources.later, instance)

    assert synced.success and checked.success
    assert evaluation(synced) is None and evaluation(checked) is None  # skipped: never passed
    [reason] = log_lines(instance, checked)
    assert "landed_in_segment of segment/reverse_etl/user_traits skipped: SEGMENT_PROFILES_URL" in reason
    assert "Profile API" in reason
    assert clean_sandbox.stats()["profiles"]["requests"] == 0 and ledger_counts(ops_env).verified == 0
    sensed = sensor_tick(resources.later, instance, ops_env)
    assert sensed.run_requests == [] and "SEGMENT_PROFILES_TOKEN not set" in sensed.skip_reason.skip_message


def sensor_tick(resources: dict, instance: dg.DagsterInstance, home: Path) -> dg.SensorResult:
    [sensor] = [s for s in definitions(resources).sensors if s.name == "reverse_etl_read_back_sensor"]
    context = dg.build_sensor_context(instance=instance, resources={
        "staging": resources["staging"], "segment_profiles": resources["segment_profiles"]})
    return sensor(context)


@pytest.mark.slow
def test_the_sensor_asks_for_the_check_once_the_delay_has_passed_and_not_again(env, instance, ops_env):
    resources = env()
    assert sensor_tick(resources.later, instance, ops_env).run_requests == []  # nothing delivered yet
    assert sync_user_traits(resources.now, instance).success

    early = sensor_tick(resources.now, instance, ops_env)
    ReadBackEnv.wait()
    [request] = sensor_tick(resources.later, instance, ops_env).run_requests
    again = sensor_tick(resources.later, instance, ops_env).run_requests

    assert early.run_requests == [] and "no delivered identify call awaits" in early.skip_reason.skip_message
    assert request.asset_check_keys == [TARGET.check_key] and request.run_key.startswith(CHECK_OP)
    assert [r.run_key for r in again] == [request.run_key]  # the same state: Dagster starts it once
    assert evaluation(read_back(resources.later, instance)).passed
    assert sensor_tick(resources.later, instance, ops_env).run_requests == []  # the run is sampled


def deliver_identify_calls(home: Path, users: int) -> None:
    """`users` identify calls planned and delivered in the user_traits ledger, as a sync run leaves them."""
    with store.staging(home / "staging" / f"{TARGET.sync}.duckdb") as con:
        messages = []
        for i in range(users):
            message_id, payload = prepare_call({"type": "identify", "userId": f"u{i}", "traits": {"n": i}},
                                               sync=TARGET.sync, record_key=f"u{i}")
            messages.append(PlannedMessage(message_id, f"u{i}", "identify", payload))
        ledger = Ledger(con)
        seqs = ledger.add_planned(TARGET.sync, messages, run_id="sync-run").seqs
        ledger.log_outcomes(TARGET.sync, [(seq, DELIVERED, 1, None) for seq in seqs])


@pytest.mark.slow
def test_the_sensor_asks_again_in_a_later_tick_after_a_failed_read_back(env, instance, ops_env, monkeypatch):
    resources = env(SEGMENT_PROFILES_TOKEN="not-the-space-token").later  # the Profile API answers 401
    deliver_identify_calls(ops_env, 3)
    ReadBackEnv.wait()
    clock = {"now": 1_000_000.0}
    monkeypatch.setattr(verification, "time", SimpleNamespace(time=lambda: clock["now"]), raising=False)
    [first] = sensor_tick(resources, instance, ops_env).run_requests
    # The daemon's run of that request: the read-back fails and records nothing.
    job = definitions(resources).resolve_job_def("reverse_etl_read_back_job")
    failed = job.execute_in_process(instance=instance, raise_on_error=False,
                                    tags={"dagster/run_key": first.run_key})
    assert evaluation(failed).passed is False and ledger_counts(ops_env).verified == 0

    clock["now"] += 60.0  # MIN_RETRY_SECONDS: the bucket of the next attempt
    [second] = sensor_tick(resources, instance, ops_env).run_requests

    assert second.asset_check_keys == [TARGET.check_key] and second.run_key != first.run_key
    assert not instance.get_runs(dg.RunsFilter(tags={"dagster/run_key": second.run_key}))  # Dagster starts it


@pytest.mark.slow
def test_a_profile_api_outage_skips_the_check_and_the_run_that_delivered_stays_successful(
        env, instance, ops_env, clean_sandbox, monkeypatch):
    resources = env().later
    deliver_identify_calls(ops_env, 3)  # an earlier run's calls, due for read-back in the next run
    ReadBackEnv.wait()
    clean_sandbox.set_faults("profiles", rate_503=1.0)
    # Real retries, with backoffs short enough for a test.
    monkeypatch.setattr(SegmentProfilesResource, "get_client", lambda self: SegmentProfilesClient(
        self.base_url, self.space_id, self.token, retry=RetryPolicy(max_attempts=2, backoff_initial=0.01)))

    synced = sync_user_traits(resources, instance)

    assert synced.success and evaluation(synced) is None  # skipped: neither passed nor failed
    [reason] = log_lines(instance, synced)
    assert "skipped: the Profile API did not answer" in reason and "503" in reason
    assert "read back next time" in reason and resources["segment_profiles"].token not in reason
    assert clean_sandbox.stats()["profiles"]["requests"] == 2
    with store.staging(ops_env / "staging" / f"{TARGET.sync}.duckdb") as con:  # drawn again next time
        sample = draw_sample(Ledger(con), TARGET.sync, sample_size=20, delay=timedelta(0))
    assert {"u0", "u1", "u2"} <= {message.record_key for message in sample.messages}
    assert ledger_counts(ops_env).verified == 0


def test_only_identify_models_get_the_check():
    keys = {key.asset_key for check in build_reverse_etl_defs().asset_checks or []
            for key in check.check_keys if key.name == CHECK_NAME}

    assert keys == {model_key("user_traits")}  # account_traits sends group calls, completed_orders tracks


@pytest.mark.parametrize(("missing", "passed", "severity"), [
    (0, True, dg.AssetCheckSeverity.WARN),
    (1, False, dg.AssetCheckSeverity.WARN),  # 5%: past the WARN share, within the ERROR one
    (3, False, dg.AssetCheckSeverity.ERROR),  # 15%
])
def test_the_missing_share_decides_pass_warn_or_error(missing, passed, severity):
    report = ReadBackReport("reverse_etl_user_traits", sample_size=20, profiles_found=20 - missing,
                            profiles_missing=missing,
                            mismatches=[TraitMismatch("u1", "user_id:u1", "plan", "pro", "team")])

    result = landed_result(TARGET, report, warn_share=0.0, error_share=0.1)

    assert (result.passed, result.severity) == (passed, severity)
    assert result.metadata["profiles_missing"].value == missing
    assert '| u1 | plan | "pro" | "team" |' in result.metadata["first_mismatches"].value
