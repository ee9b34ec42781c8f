"""The delivery-health check over real ledgers in real staging files, alerting to the sandbox's Slack."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from segment_ops.engine import store
from segment_ops.engine.ledger import (
    AWAITING_ACK,
    DELIVERED,
    MATCHED,
    MISMATCHED,
    MISSING,
    PENDING,
    REJECTED,
    Ledger,
    PlannedMessage,
    ReadBack,
    Rejection,
)
from segment_ops.resources import build_resources
from segment_ops.syncs.ops.delivery_health import (
    BUSY,
    STATE_FILE,
    ops_delivery_health,
    read_health,
    staging_files,
)
from segment_ops_tests.reverse_etl.conftest import run_models

NODE = "ops__delivery_health"


def write_ledger(home: Path, file_sync: str, *, delivered: int = 0, rejected: int = 0, failed: int = 0,
                 refused: int = 0, sync: str | None = None) -> None:
    """Plan and settle messages in `home/staging/<file_sync>.duckdb` through the ledger's own API."""
    sync = sync or file_sync
    with store.staging(home / "staging" / f"{file_sync}.duckdb") as con:
        ledger = Ledger(con)
        total = delivered + failed + refused
        start = con.execute("SELECT count(*) FROM planned_messages WHERE sync = ?", [sync]).fetchone()[0]
        plan = ledger.add_planned(sync, [PlannedMessage(f"m{start + i}", f"k{start + i}", "identify",
                                                        b'{"type":"identify"}') for i in range(total)])
        seqs = list(plan.seqs)
        outcomes = [(s, DELIVERED, 1, None) for s in seqs[:delivered]]
        outcomes += [(s, PENDING, 3, "HTTP 503 after 3 attempts") for s in seqs[delivered:delivered + failed]]
        outcomes += [(s, REJECTED, 1, "HTTP 400") for s in seqs[delivered + failed:]]
        ledger.log_outcomes(sync, outcomes)
        ledger.reject_refused(sync, [(s, "HTTP 400") for s in seqs[delivered + failed:]],
                              destination="segment")
        ledger.add_rejections(sync,
                              [Rejection(f"bad{i}", "warehouse", "null key", None) for i in range(rejected)])


@pytest.fixture
def resources(ops_env, clean_sandbox) -> dict:
    return build_resources()


def check(resources: dict) -> dg.ExecuteInProcessResult:
    return dg.materialize([ops_delivery_health], resources=resources, raise_on_error=False)


def checks(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def metadata(result: dg.ExecuteInProcessResult) -> dict:
    [materialization] = result.asset_materializations_for_node(NODE)
    return {key: value.value for key, value in materialization.metadata.items()}


@pytest.mark.slow
def test_healthy_syncs_pass_the_check_and_send_nothing(ops_env, resources, clean_sandbox):
    write_ledger(ops_env, "replay", delivered=200, rejected=2)
    write_ledger(ops_env, "reverse_etl_user_traits", delivered=50)

    result = check(resources)

    assert result.success and checks(result)["delivery_health"].passed
    assert metadata(result)["syncs_checked"] == 2
    assert clean_sandbox.received("slack") == []


@pytest.mark.slow
def test_verified_deliveries_are_shown_beside_merely_accepted_ones(ops_env, resources, clean_sandbox):
    write_ledger(ops_env, "reverse_etl_user_traits", delivered=30)
    with store.staging(ops_env / "staging" / "reverse_etl_user_traits.duckdb") as con:
        Ledger(con).record_read_backs("reverse_etl_user_traits", [
            *(ReadBack(seq, MATCHED) for seq in range(1, 11)), ReadBack(11, MISMATCHED, "{}"),
            ReadBack(12, MISSING, "user_id:k11"), ReadBack(13, MISSING, "user_id:k12")])

    result = check(resources)

    meta = metadata(result)
    assert (meta["delivered"], meta["read_back"]) == (30, 13)
    assert (meta["verified"], meta["profiles_missing"]) == (10, 2)
    row = "| reverse_etl_user_traits | reverse_etl_user_traits.duckdb | 30 | 13 | 10 | 2 | 0 | 0 |"
    assert row in meta["syncs"]
    state = meta["state"]["reverse_etl_user_traits"]
    assert (state["delivered"], state["verified"], state["missing"]) == (30, 10, 2)
    assert checks(result)["delivery_health"].passed  # a missing profile fails landed_in_segment, not this


@pytest.mark.slow
def test_every_staging_file_and_every_sync_in_it_is_read(ops_env, resources):
    write_ledger(ops_env, "replay", delivered=5)
    write_ledger(ops_env, "heap", delivered=5)  # a sync the check was never told about
    write_ledger(ops_env, "audit_trail", delivered=5)
    # a second destination, same file
    write_ledger(ops_env, "audit_trail", delivered=5, sync="audit_trail.jsonl")

    result = check(resources)

    assert metadata(result)["files_read"] == 3
    assert set(metadata(result)["state"]) == {"replay", "heap", "audit_trail", "audit_trail.jsonl"}


@pytest.mark.slow
def test_a_sync_over_the_threshold_fails_the_check_and_is_alerted_once(ops_env, resources, clean_sandbox):
    write_ledger(ops_env, "replay", delivered=90, rejected=6, refused=4)  # 10% rejected

    first, second = check(resources), check(resources)

    for result in (first, second):
        evaluation = checks(result)["delivery_health"]
        assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR
    [alert] = clean_sandbox.received("slack")
    assert "`replay` is unhealthy" in alert["text"] and "10.0%" in alert["text"]
    assert "rejected 10" in alert["text"] and f"/runs/{first.run_id}" in alert["text"]


@pytest.mark.slow
def test_failed_deliveries_count_towards_the_share(ops_env, resources, clean_sandbox):
    write_ledger(ops_env, "reverse_etl_user_traits", delivered=80, failed=20)

    result = check(resources)

    assert not checks(result)["delivery_health"].passed
    assert "failed 20" in clean_sandbox.received("slack")[0]["text"]


@pytest.mark.slow
def test_a_sync_healthy_again_sends_one_recovery(ops_env, resources, clean_sandbox):
    write_ledger(ops_env, "replay", delivered=10, failed=10)
    check(resources)
    write_ledger(ops_env, "replay", delivered=1000)  # 10 of 1,020 failed: under 5%

    recovered, steady = check(resources), check(resources)

    assert checks(recovered)["delivery_health"].passed and checks(steady)["delivery_health"].passed
    unhealthy, healthy = (m["text"] for m in clean_sandbox.received("slack"))
    assert "unhealthy" in unhealthy and "healthy again" in healthy


@pytest.mark.slow
def test_the_state_survives_between_runs_in_a_small_file(ops_env, resources):
    write_ledger(ops_env, "replay", delivered=10, failed=10)

    check(resources)

    assert (ops_env.joinpath(*STATE_FILE)).stat().st_size < 1_000
    assert '"UNHEALTHY"' in ops_env.joinpath(*STATE_FILE).read_text()


@pytest.mark.slow
def test_an_alert_that_could_not_be_sent_is_sent_by_the_next_run(ops_env, resources, clean_sandbox,
                                                                 monkeypatch):
    write_ledger(ops_env, "replay", delivered=10, failed=10)
    clean_sandbox.set_faults("slack", rate_500=1.0)
    monkeypatch.setenv("ALERT_WEBHOOK_URL", f"{clean_sandbox.url}/slack/services/T/B/wrong-token")
    unsent = check(build_resources())
    monkeypatch.delenv("ALERT_WEBHOOK_URL")
    clean_sandbox.clear_faults()

    sent = check(build_resources())

    assert unsent.success and metadata(unsent)["alerts_not_sent"] == 1
    assert metadata(sent)["alerts_sent"] == 1 and len(clean_sandbox.received("slack")) == 1


def test_nothing_in_the_window_is_idle_not_healthy_or_unhealthy(ops_env):
    write_ledger(ops_env, "replay", delivered=30)

    report = read_health(staging_files(ops_env), datetime.now(UTC) + timedelta(minutes=1), max_share=0.05)

    [replay] = report.syncs
    assert replay.status == "idle" and replay.total == 0


@contextmanager
def locked_by_another_process(path: Path) -> Iterator[None]:
    """Hold `path` open for writing in a second process (as a running sync does) while the block runs."""
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import duckdb, sys
            con = duckdb.connect({str(path)!r})
            print("locked", flush=True)
            sys.stdin.read()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield
    finally:
        holder.communicate("", timeout=30)


@pytest.mark.slow
def test_a_staging_file_locked_by_a_running_sync_is_reported_busy(ops_env, resources, clean_sandbox):
    write_ledger(ops_env, "replay", delivered=10)
    write_ledger(ops_env, "heap", delivered=1, failed=9)
    with locked_by_another_process(ops_env / "staging" / "heap.duckdb"):
        result = check(resources)

    assert result.success
    assert not checks(result)["all_ledgers_read"].passed
    assert checks(result)["delivery_health"].passed  # heap was not judged: its state is unknown this hour
    assert metadata(result)["files_busy"] == 1 and BUSY in metadata(result)["syncs"]
    assert clean_sandbox.received("slack") == []


@pytest.mark.parametrize(("name", "value"), [("DELIVERY_HEALTH_MAX_FAILED_SHARE", "5%"),
                                             ("DELIVERY_HEALTH_MAX_FAILED_SHARE", "1.5"),
                                             ("DELIVERY_HEALTH_WINDOW_HOURS", "0")])
def test_a_bad_threshold_setting_is_refused_naming_the_variable(ops_env, monkeypatch, name, value):
    monkeypatch.setenv(name, value)

    with pytest.raises(ValueError, match=name):
        build_resources()


@pytest.mark.slow
def test_the_threshold_settings_reach_the_check(ops_env, monkeypatch, clean_sandbox):
    monkeypatch.setenv("DELIVERY_HEALTH_MAX_FAILED_SHARE", "0.5")
    write_ledger(ops_env, "replay", delivered=60, failed=40)  # 40%: unhealthy at 5%, fine at 50%

    result = check(build_resources())

    assert checks(result)["delivery_health"].passed and metadata(result)["max_failed_share"] == 0.5


@pytest.mark.slow
def test_bad_rows_rejected_again_by_every_run_of_the_demo_model_count_once(ops_env, warehouse, clean_sandbox):
    resources = build_resources()
    runs = [run_models(resources, ["user_traits"]) for _ in range(3)]

    result = check(resources)

    [traits] = [h for h in metadata(result)["state"].values() if h["sync"] == "reverse_etl_user_traits"]
    assert all(run.success for run in runs)
    assert traits["status"] == "healthy" and 0 < traits["rejected"] < 10  # the demo's few bad rows, once each
    assert checks(result)["delivery_health"].passed and clean_sandbox.received("slack") == []


@pytest.mark.slow
def test_an_unhealthy_sync_recovers_only_below_four_fifths_of_the_threshold(ops_env):
    write_ledger(ops_env, "replay", delivered=90, failed=10)  # 10%: unhealthy at 5%
    unhealthy = {"replay": {"status": "UNHEALTHY"}}
    write_ledger(ops_env, "replay", delivered=100)  # 10 of 200 = 5.0%: not above 5%, not below 4%
    since = datetime.now(UTC) - timedelta(hours=1)

    held = read_health(staging_files(ops_env), since, max_share=0.05, previous=unhealthy)
    fresh = read_health(staging_files(ops_env), since, max_share=0.05)
    write_ledger(ops_env, "replay", delivered=60)  # 10 of 260 = 3.8%: below 4%
    recovered = read_health(staging_files(ops_env), since, max_share=0.05, previous=unhealthy)

    assert [h.status for h in (*held.syncs, *fresh.syncs, *recovered.syncs)] == [
        "UNHEALTHY", "healthy", "healthy"]


@pytest.mark.slow
def test_a_sync_under_the_minimum_of_messages_is_not_judged(ops_env, monkeypatch, clean_sandbox):
    write_ledger(ops_env, "replay", delivered=5, failed=5)  # 50%, but only 10 messages
    idle = check(build_resources())
    monkeypatch.setenv("DELIVERY_HEALTH_MIN_MESSAGES", "10")

    judged = check(build_resources())

    assert checks(idle)["delivery_health"].passed and metadata(idle)["syncs_checked"] == 0
    assert not checks(judged)["delivery_health"].passed


@pytest.mark.slow
def test_an_unhealthy_sync_whose_file_is_busy_keeps_the_check_failed(ops_env, resources, clean_sandbox):
    write_ledger(ops_env, "heap", delivered=10, failed=10)
    check(resources)  # heap UNHEALTHY, alerted
    with locked_by_another_process(ops_env / "staging" / "heap.duckdb"):
        busy = check(resources)

    assert not checks(busy)["delivery_health"].passed
    assert checks(busy).get("delivery_health").metadata["flagged_syncs"].value == "heap"
    assert len(clean_sandbox.received("slack")) == 1  # no new alert: the state did not change


@pytest.mark.slow
def test_messages_planned_but_never_attempted_count_as_failed(ops_env, resources):
    write_ledger(ops_env, "replay", delivered=80)
    with store.staging(ops_env / "staging" / "replay.duckdb") as con:  # a run that stopped at a 401
        Ledger(con).add_planned("replay",
                                [PlannedMessage(f"n{i}", f"n{i}", "identify", b"{}") for i in range(20)])

    result = check(resources)

    [replay] = metadata(result)["state"].values()
    assert replay["failed"] == 20 and replay["status"] == "UNHEALTHY"


def test_messages_pending_since_before_the_window_count_as_stuck(ops_env):
    write_ledger(ops_env, "replay", delivered=30)
    with store.staging(ops_env / "staging" / "replay.duckdb") as con:
        plan = Ledger(con).add_planned("replay", [PlannedMessage(f"s{i}", f"s{i}", "identify", b"{}")
                                                  for i in range(5)])
        con.execute("UPDATE planned_messages SET planned_at = planned_at - INTERVAL 2 DAY "
                    "WHERE message_id LIKE 's%'")
        Ledger(con).log_outcomes("replay", [(seq, PENDING, 0, None) for seq in plan.seqs])

    report = read_health(staging_files(ops_env), datetime.now(UTC) - timedelta(hours=24), max_share=0.05)

    [replay] = report.syncs
    assert replay.failed == 5


def test_messages_awaiting_confirmation_since_before_the_window_count_as_stuck(ops_env):
    write_ledger(ops_env, "audit_trail", delivered=30)
    with store.staging(ops_env / "staging" / "audit_trail.duckdb") as con:
        ledger = Ledger(con)
        old = ledger.add_planned("audit_trail", [PlannedMessage(f"a{i}", f"a{i}", "audit_event", b"{}")
                                                 for i in range(4)])
        ledger.log_outcomes("audit_trail", [(seq, AWAITING_ACK, 1, None, "c:0:old") for seq in old.seqs])
        con.execute("UPDATE outcomes SET logged_at = logged_at - INTERVAL 2 DAY WHERE receipt = 'c:0:old'")
        recent = ledger.add_planned("audit_trail", [PlannedMessage(f"b{i}", f"b{i}", "audit_event", b"{}")
                                                    for i in range(3)])
        ledger.log_outcomes("audit_trail", [(seq, AWAITING_ACK, 1, None, "c:1:new") for seq in recent.seqs])

    report = read_health(staging_files(ops_env), datetime.now(UTC) - timedelta(hours=24), max_share=0.05)

    [audit] = report.syncs
    assert (audit.delivered, audit.failed) == (30, 4)  # the recent ones may still be acknowledged
