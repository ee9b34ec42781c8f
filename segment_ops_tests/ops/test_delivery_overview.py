"""The asset `ops/segment_delivery_overview`: one hour of Segment's Delivery Overview (the sandbox's, counted
from the calls it really received) next to what a ledger delivered, its checks and its egress alert; and the
client's Delivery Overview calls and their errors over real HTTP."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest

from segment_ops.clients.base import RetryPolicy, VendorAuthError, VendorRequestError
from segment_ops.clients.segment_public_api import SegmentPublicApiClient
from segment_ops.clients.segment_tracking import SegmentTrackingClient
from segment_ops.config import SANDBOX_SEGMENT_PUBLIC_API_TOKEN, SANDBOX_SEGMENT_WRITE_KEY
from segment_ops.engine import store
from segment_ops.engine.calls import prepare_call
from segment_ops.engine.delivery import deliver_pending
from segment_ops.engine.ledger import DELIVERED, Ledger, PlannedMessage
from segment_ops.resources import build_resources
from segment_ops.sandbox.segment.sources import SECOND_SOURCE_WRITE_KEY, workspace_sources
from segment_ops.syncs.ops.delivery_overview import (
    CHECK_EGRESS,
    CHECK_INGEST,
    OVERVIEW_KEY,
    STAGING_SYNC,
    ops_segment_delivery_overview,
    segment_delivery_overview_schedule,
)
from segment_ops.syncs.reverse_etl.defs import MODELS_DIR
from segment_ops_tests.conftest import public_api_listing
from segment_ops_tests.ops.test_delivery_health import locked_by_another_process
from segment_ops_tests.reverse_etl.test_destinations import add_model

SYNC = "reverse_etl_user_traits"
SOURCE, WEBHOOKS = "src_segment_ops", "dst_webhooks"


def plan(ledger: Ledger, n: int, prefix: str = "u", sync: str = SYNC) -> list[int]:
    messages = []
    for i in range(n):
        message_id, payload = prepare_call({"type": "track", "userId": f"{prefix}{i}", "event": "Synced"},
                                           sync=sync, record_key=f"{prefix}{i}")
        messages.append(PlannedMessage(message_id, f"{prefix}{i}", "track", payload))
    return list(ledger.add_planned(sync, messages).seqs)


def deliver(home, sandbox, n: int, *, write_key: str = SANDBOX_SEGMENT_WRITE_KEY, sync: str = SYNC) -> None:
    """Plan `n` track calls in a sync's ledger (its own staging file) and deliver them through the sandbox's
    Tracking API."""
    with store.staging(home / "staging" / f"{sync}.duckdb") as con:
        ledger = Ledger(con)
        plan(ledger, n, sync=sync)
        client = SegmentTrackingClient(f"{sandbox.url}/segment", write_key)
        try:
            deliver_pending(ledger, sync, client)
        finally:
            client.close()


def this_hour() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d-%H:00")


def materialize() -> dg.ExecuteInProcessResult:
    return dg.materialize([ops_segment_delivery_overview], resources=build_resources(),
                          partition_key=this_hour())


def checks(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations() if e.asset_key == OVERVIEW_KEY}


def metadata(result: dg.ExecuteInProcessResult) -> dict:
    [materialization] = result.asset_materializations_for_node("ops__segment_delivery_overview")
    return {key: getattr(value, "value", value) for key, value in materialization.metadata.items()}


@pytest.mark.slow
def test_an_hour_of_delivered_calls_is_received_and_delivered_to_each_destination(ops_env, clean_sandbox):
    deliver(ops_env, clean_sandbox, 5)

    result = materialize()

    figures = metadata(result)
    assert result.success
    assert (figures["received"], figures["ledger_delivered"], figures["failed_on_ingest"]) == (5, 5, 0)
    assert figures["delivered_to_destinations"] == 10  # two destinations behind the source
    assert "dst_amplitude" in figures["destinations"] and "Webhooks (sandbox)" in figures["destinations"]
    assert all(check.passed for check in checks(result).values())


@pytest.mark.slow
def test_the_hours_figures_are_kept_in_the_state_file(ops_env, clean_sandbox):
    deliver(ops_env, clean_sandbox, 3)

    materialize()

    with store.staging(ops_env / "staging" / f"{STAGING_SYNC}.duckdb", read_only=True) as con:
        sources = con.execute("SELECT source_id, received, ledger_delivered FROM delivery_overview_sources"
                              ).fetchall()
        destinations = con.execute("SELECT count(*), sum(delivered) FROM delivery_overview_destinations"
                                   ).fetchone()
    assert sources == [(SOURCE, 3, 3)] and destinations == (2, 6)


@pytest.mark.slow
def test_calls_under_a_wrong_write_key_fail_the_ingest_check(ops_env, clean_sandbox):
    deliver(ops_env, clean_sandbox, 4, write_key="a-key-of-no-source")  # Segment: 200, then dropped

    check = checks(materialize())[CHECK_INGEST]

    assert not check.passed and check.severity is dg.AssetCheckSeverity.ERROR
    assert "received 0 of the 4" in check.description


@pytest.mark.slow
def test_a_batch_the_ledger_counts_but_segment_never_got_fails_the_ingest_check(ops_env, clean_sandbox):
    deliver(ops_env, clean_sandbox, 3)
    with store.staging(ops_env / "staging" / f"{SYNC}.duckdb") as con:
        ledger = Ledger(con)
        lost = plan(ledger, 2, prefix="lost")  # "delivered" by the ledger, never sent
        ledger.log_outcomes(SYNC, [(seq, DELIVERED, 1, None) for seq in lost])

    check = checks(materialize())[CHECK_INGEST]

    assert not check.passed and "2 lost" in check.description


@pytest.mark.slow
def test_events_failed_on_ingest_fail_the_ingest_check_with_their_reason(ops_env, clean_sandbox,
                                                                         sandbox_http):
    deliver(ops_env, clean_sandbox, 2)
    refused = sandbox_http.post("/segment/v1/batch", auth=(SANDBOX_SEGMENT_WRITE_KEY, ""),
                                json={"batch": [{"type": "nope", "userId": "x"}]})
    assert refused.status_code == 400

    check = checks(materialize())[CHECK_INGEST]

    assert not check.passed and "invalid_request 1" in check.description


@pytest.mark.slow
def test_a_shared_source_is_not_compared_with_the_ledger(ops_env, clean_sandbox, monkeypatch):
    monkeypatch.setenv("SEGMENT_SOURCE_DEDICATED", "false")
    deliver(ops_env, clean_sandbox, 2, write_key="a-key-of-no-source")

    check = checks(materialize())[CHECK_INGEST]

    assert check.passed and "not compared" in check.description


@pytest.fixture
def b_model(tmp_path, monkeypatch):
    """`b_traits`, a model whose header names SEGMENT_WRITE_KEY_B (`write_key_env:`), among the project's
    models (REVERSE_ETL_MODELS_DIR); its ledger sync and staging file are `reverse_etl_b_traits`."""
    folder = tmp_path / "models"
    shutil.copytree(MODELS_DIR, folder)
    add_model(folder, "b_traits", "-- write_key_env: SEGMENT_WRITE_KEY_B")
    monkeypatch.setenv("REVERSE_ETL_MODELS_DIR", str(folder))
    return "reverse_etl_b_traits"


@pytest.mark.slow
def test_a_model_delivering_to_another_source_is_left_out_of_the_comparison(ops_env, clean_sandbox, b_model,
                                                                           monkeypatch):
    monkeypatch.setenv("SEGMENT_WRITE_KEY_B", SECOND_SOURCE_WRITE_KEY)  # source B: segment-ops-b
    deliver(ops_env, clean_sandbox, 3)
    deliver(ops_env, clean_sandbox, 4, write_key=SECOND_SOURCE_WRITE_KEY, sync=b_model)

    result = materialize()

    check = checks(result)[CHECK_INGEST]
    assert check.passed, check.description
    assert check.description.startswith("Segment received 3 of 3 delivered")
    assert b_model in check.description
    left_out = check.metadata["left_out_syncs"].value
    assert list(left_out) == [b_model] and "SEGMENT_WRITE_KEY_B" in left_out[b_model]
    assert SECOND_SOURCE_WRITE_KEY not in repr(check.metadata) + check.description
    figures = metadata(result)
    assert figures["ledger_delivered"] == 3 and figures["ledger_by_sync"] == {SYNC: 3}
    assert figures["left_out_syncs"] == left_out


@pytest.mark.slow
def test_a_model_whose_variable_holds_the_default_write_key_is_compared(ops_env, clean_sandbox, b_model,
                                                                        monkeypatch):
    monkeypatch.setenv("SEGMENT_WRITE_KEY_B", SANDBOX_SEGMENT_WRITE_KEY)  # another name, the same source
    deliver(ops_env, clean_sandbox, 3)
    deliver(ops_env, clean_sandbox, 2, sync=b_model)

    check = checks(materialize())[CHECK_INGEST]

    assert check.passed and check.description == "Segment received 5 of 5 delivered"
    assert check.metadata["left_out_syncs"].value == {}


@pytest.mark.slow
def test_a_model_whose_variable_is_unset_is_left_out_saying_so(ops_env, clean_sandbox, b_model, monkeypatch):
    monkeypatch.delenv("SEGMENT_WRITE_KEY_B", raising=False)
    deliver(ops_env, clean_sandbox, 2)
    deliver(ops_env, clean_sandbox, 1, write_key=SECOND_SOURCE_WRITE_KEY, sync=b_model)  # sent while set

    check = checks(materialize())[CHECK_INGEST]

    assert check.passed and check.description.startswith("Segment received 2 of 2 delivered")
    assert "SEGMENT_WRITE_KEY_B is not set" in check.metadata["left_out_syncs"].value[b_model]


@pytest.fixture
def listing(ops_env, monkeypatch, serve):
    """`listing(sources)`: the sandbox's Public API emulator listing `sources`, served on a free port and set
    as SEGMENT_PUBLIC_API_URL (its Delivery Overview counts nothing)."""

    def start(sources: list[dict]) -> None:
        served = serve(public_api_listing(sources), "public api")
        monkeypatch.setenv("SEGMENT_PUBLIC_API_URL", f"{served.url}/segmentapis")
        monkeypatch.setenv("SEGMENT_PUBLIC_API_TOKEN", SANDBOX_SEGMENT_PUBLIC_API_TOKEN)

    return start


@pytest.mark.slow
def test_a_token_that_sees_no_write_keys_leaves_the_ingest_check_unverified_not_failed(
        ops_env, clean_sandbox, listing):
    listing([{k: v for k, v in s.items() if k != "writeKeys"}
                        for s in workspace_sources(SANDBOX_SEGMENT_WRITE_KEY)])
    deliver(ops_env, clean_sandbox, 3)

    check = checks(materialize())[CHECK_INGEST]

    assert not check.passed and check.severity is dg.AssetCheckSeverity.WARN
    assert check.description.startswith("not verifiable: give SEGMENT_PUBLIC_API_TOKEN read access to the "
                                        "workspace's sources")


@pytest.mark.slow
def test_a_write_key_of_no_source_among_sources_with_keys_fails_the_ingest_check(ops_env, clean_sandbox,
                                                                                 monkeypatch):
    monkeypatch.setenv("SEGMENT_WRITE_KEY", "a-key-of-no-source")
    deliver(ops_env, clean_sandbox, 2, write_key="a-key-of-no-source")

    check = checks(materialize())[CHECK_INGEST]

    assert not check.passed and check.severity is dg.AssetCheckSeverity.ERROR
    assert "none of the workspace's sources: Segment dropped all 2 messages" in check.description


def test_live_ledgers_are_not_compared_with_the_sandboxs_public_api(ops_env, clean_sandbox, monkeypatch):
    deliver(ops_env, clean_sandbox, 2)
    monkeypatch.setenv("SEGMENT_TRACKING_URL", f"{clean_sandbox.url}/segment")  # set: counts as live

    result = materialize()

    assert result.success and clean_sandbox.stats()["segmentapis"]["requests"] == 0
    assert metadata(result)["skipped"].startswith("SEGMENT_TRACKING_URL sends to a live Segment but "
                                                  "SEGMENT_PUBLIC_API_URL, SEGMENT_PUBLIC_API_TOKEN not set")
    assert all(not c.passed and c.severity is dg.AssetCheckSeverity.WARN and "not verified" in c.description
               for c in checks(result).values())


def test_the_schedule_skips_live_ledgers_without_the_public_api(ops_env, monkeypatch):
    monkeypatch.setenv("SEGMENT_TRACKING_URL", "https://api.segment.io")
    monkeypatch.setenv("SEGMENT_PUBLIC_API_URL", "https://api.segmentapis.com")
    context = dg.build_schedule_context(scheduled_execution_time=datetime(2026, 12, 6, 14, 10, tzinfo=UTC))

    skipped = segment_delivery_overview_schedule(context)

    assert isinstance(skipped, dg.SkipReason) and "SEGMENT_PUBLIC_API_TOKEN not set" in skipped.skip_message


@pytest.mark.slow  # a second process holds the file
def test_an_audit_trail_file_held_by_an_audit_run_does_not_stop_the_comparison(ops_env, clean_sandbox):
    deliver(ops_env, clean_sandbox, 3)
    audit_file = ops_env / "staging" / "audit_trail.duckdb"  # the SIEMs' ledger: never a Tracking API call
    with store.staging(audit_file) as con:
        Ledger(con)

    with locked_by_another_process(audit_file):
        check = checks(materialize())[CHECK_INGEST]

    assert check.passed and check.description == "Segment received 3 of 3 delivered"


@pytest.mark.slow
def test_an_injected_egress_failure_warns_and_alerts_the_destination_reason_and_counts(ops_env, clean_sandbox,
                                                                                     sandbox_http):
    sandbox_http.post("/__sandbox__/segment/destination-failures",
                      json={"destinationId": WEBHOOKS, "share": 0.5, "reason": "Unauthorized"})
    deliver(ops_env, clean_sandbox, 4)

    result = materialize()

    check = checks(result)[CHECK_EGRESS]
    assert not check.passed and check.severity is dg.AssetCheckSeverity.WARN
    assert checks(result)[CHECK_INGEST].passed
    [alert] = clean_sandbox.received("slack")
    assert "Webhooks (sandbox)" in alert["text"] and "Unauthorized 2" in alert["text"]
    assert "2 of 4 events failed" in alert["text"]


@pytest.mark.slow
def test_an_hours_egress_failure_is_alerted_once(ops_env, clean_sandbox, sandbox_http):
    sandbox_http.post("/__sandbox__/segment/destination-failures",
                      json={"destinationId": WEBHOOKS, "share": 1.0, "reason": "invalid settings"})
    deliver(ops_env, clean_sandbox, 2)

    materialize()
    again = materialize()

    assert len(clean_sandbox.received("slack")) == 1
    assert not checks(again)[CHECK_EGRESS].passed and metadata(again)["alerts_sent"] == 0


# --- the client against the sandbox ----------------------------------------------------------------------


@pytest.fixture
def public_api(clean_sandbox):
    with_retry = RetryPolicy(max_attempts=5, backoff_initial=0.01, backoff_max=0.02)
    client = SegmentPublicApiClient(f"{clean_sandbox.url}/segmentapis", SANDBOX_SEGMENT_PUBLIC_API_TOKEN,
                                    retry=with_retry)
    yield client
    client.close()


def hour_window() -> tuple[datetime, datetime]:
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    return start, start + timedelta(hours=1)


def test_the_client_reads_failed_delivery_by_discard_reason(public_api, clean_sandbox, sandbox_http):
    sandbox_http.post("/__sandbox__/segment/destination-failures",
                      json={"destinationId": WEBHOOKS, "share": 1.0, "reason": "Unauthorized"})
    sandbox_http.post("/segment/v1/track", auth=(SANDBOX_SEGMENT_WRITE_KEY, ""),
                      json={"type": "track", "event": "a", "userId": "u1"})

    data = public_api.delivery_overview("failed-delivery", SOURCE, *hour_window(), destination_id=WEBHOOKS,
                                        group_by=("discardReason",))

    assert data["total"] == 1 and data["dataset"][0]["discardReason"] == "Unauthorized"


def test_the_client_retries_a_429(public_api, clean_sandbox):
    clean_sandbox.set_faults("segmentapis", rate_429=0.5, retry_after_seconds=0)
    retries = []

    data = public_api.delivery_overview("successfully-received", SOURCE, *hour_window(),
                                        on_retry=retries.append)

    assert data["total"] == 0 and retries


def test_the_client_raises_the_422_of_a_range_too_long(public_api):
    start, _ = hour_window()

    with pytest.raises(VendorRequestError) as raised:
        public_api.delivery_overview("successfully-received", SOURCE, start - timedelta(hours=5), start,
                                     granularity="MINUTE")

    assert raised.value.status == 422


def test_the_client_raises_the_404_of_an_unknown_source(public_api):
    with pytest.raises(VendorRequestError) as raised:
        public_api.delivery_overview("successfully-received", "src_nope", *hour_window())

    assert raised.value.status == 404


def test_the_client_raises_an_auth_error_on_a_wrong_token(clean_sandbox):
    client = SegmentPublicApiClient(f"{clean_sandbox.url}/segmentapis", "wrong-token")

    with pytest.raises(VendorAuthError) as raised:
        client.delivery_overview("successfully-received", SOURCE, *hour_window())

    assert raised.value.status == 401 and "wrong-token" not in str(raised.value)
    client.close()


def test_the_schedule_reads_the_hour_before_its_tick():
    context = dg.build_schedule_context(scheduled_execution_time=datetime(2026, 12, 6, 14, 10, tzinfo=UTC))

    request = segment_delivery_overview_schedule(context)

    assert request.partition_key == "2026-12-06-13:00" and request.run_key == "2026-12-06-13:00"
