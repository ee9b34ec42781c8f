"""Scored accounts -> Segment group calls through the diff and the delivery engine, against the sandbox:
ids, traits, only-changed sending, identity-map resolution and rejections with reasons."""

from __future__ import annotations

import dataclasses
import shutil
from datetime import timedelta
from pathlib import Path

import duckdb
import pytest

from segment_ops.clients.pendo import PendoClient
from segment_ops.config import SANDBOX_PENDO_INTEGRATION_KEY
from segment_ops.engine.identity import IdentitySource
from segment_ops.engine.run import DeliveryIncomplete
from segment_ops.syncs.pendo.extract import SYNC, extract_days
from segment_ops.syncs.pendo.groups import (
    NothingScoredError,
    PartialWindowError,
    StaleScoreError,
    sync_account_groups,
)
from segment_ops.syncs.pendo.score import load_health_config, score_accounts
from segment_ops_tests.pendo.conftest import FAST_RETRY, ZONE, group_calls, write_config, yesterday

INACTIVE = {"acc_00012", "acc_00015"}  # accounts whose users never use the app (scale 0.1)
ACCOUNTS = 15


@pytest.fixture(scope="session")
def scored_file(sandbox, tmp_path_factory) -> Path:
    """30 staged days, scored, with no service user and no identity map: staged from the sandbox's Pendo once
    for the session; each test syncs from its own copy (`scored`)."""
    folder = tmp_path_factory.mktemp("pendo_scored")
    config = dataclasses.replace(load_health_config(write_config(folder / "no_identity.toml",
                                                                 drop_identity=True)), service_user="")
    sandbox.reset()
    client = PendoClient(f"{sandbox.url}/pendo", SANDBOX_PENDO_INTEGRATION_KEY, retry=FAST_RETRY)
    path = folder / "staging.duckdb"
    try:
        with duckdb.connect(str(path)) as con:
            extract_days(con, client, config, yesterday() - timedelta(days=29), yesterday(), zone=ZONE)
            score_accounts(con, config, timezone=ZONE.key, apps="*")
    finally:
        client.close()
    return path


@pytest.fixture
def con(tmp_path: Path, request):
    """This test's staging file: a copy of the session's scored one, or empty for a test that scores
    nothing."""
    path = tmp_path / "staging.duckdb"
    if "scored" in request.fixturenames:
        shutil.copy(request.getfixturevalue("scored_file"), path)
    connection = duckdb.connect(str(path))
    yield connection
    connection.close()


@pytest.fixture
def scored(con, clean_sandbox, config_no_identity):
    """The scored staging file's config: no service user, no identity map."""
    return dataclasses.replace(config_no_identity, service_user="")


def sync(con, config, factory, **kwargs):
    return sync_account_groups(con, config, factory, warehouse_url="duckdb:///:memory:", timezone=ZONE.key,
                               apps="*", run_id=kwargs.pop("run_id", "r"), **kwargs)


def test_each_account_becomes_one_group_call_with_its_health_traits(con, scored, segment_factory,
                                                                    clean_sandbox):
    run = sync(con, scored, segment_factory)

    calls = {c["groupId"]: c for c in group_calls(clean_sandbox)}
    assert run.delivery.delivered == len(calls) == ACCOUNTS - len(INACTIVE)
    score, band, reasons, top = con.execute("SELECT score, band, reasons, top_visitor_id "
                                            "FROM pendo_account_health "
                                            "WHERE account_id = 'acc_00001'").fetchone()
    call = calls["acc_00001"]
    assert call["userId"] == top and call["userId"].startswith("usr_")
    traits = call["traits"]
    assert (traits["pendo_health_score"], traits["pendo_health_band"], traits["pendo_health_reasons"]) == (
        score, band, reasons)
    assert set(traits) == {"pendo_" + t for t in (
        "health_score", "health_band", "health_reasons", "active_users", "licensed_seats", "seat_utilisation",
        "features_used", "feature_adoption", "nps_average", "last_active_date")}
    assert traits["pendo_seat_utilisation"] == round(traits["pendo_seat_utilisation"], 2)
    assert traits["pendo_last_active_date"] <= str(yesterday())


@pytest.mark.slow
def test_a_second_sync_without_changes_sends_nothing(con, scored, segment_factory, clean_sandbox):
    sync(con, scored, segment_factory)
    requests = clean_sandbox.stats()["segment"]["requests"]

    again = sync(con, scored, segment_factory, run_id="r2")

    assert (again.sent, again.plan.unchanged, again.delivery.delivered) == (0, ACCOUNTS - len(INACTIVE), 0)
    assert clean_sandbox.stats()["segment"]["requests"] == requests and again.accounted_for


def test_an_account_with_no_active_visitor_and_no_service_user_is_rejected_with_the_reason(con, scored,
                                                                                           segment_factory):
    run = sync(con, scored, segment_factory, run_id="r1")

    assert run.rejected == len(INACTIVE) and run.accounted_for
    reasons = dict(con.execute("SELECT record_key, reason FROM rejected WHERE sync = ? AND run_id = 'r1'",
                               [SYNC]).fetchall())
    assert set(reasons) == INACTIVE
    assert ("has no identified visitor active in the last 30 days and no service user is configured"
            in reasons["acc_00012"])


def test_the_service_user_carries_accounts_without_an_active_visitor(con, scored, segment_factory,
                                                                     clean_sandbox):
    run = sync(con, dataclasses.replace(scored, service_user="svc-health"), segment_factory)

    assert run.rejected == 0 and run.delivery.delivered == ACCOUNTS
    quiet = {c["groupId"]: c for c in group_calls(clean_sandbox)}["acc_00012"]
    assert quiet["userId"] == "svc-health" and quiet["traits"]["pendo_health_band"] == "critical"


def identity_csv(tmp_path, rows):
    path = tmp_path / "map.csv"
    path.write_text("source_id,target_id\n" + "".join(f"{s},{t}\n" for s, t in rows))
    return IdentitySource(csv=str(path))


@pytest.mark.slow
def test_the_identity_map_gives_the_segment_group_id(con, scored, segment_factory, clean_sandbox, tmp_path):
    config = dataclasses.replace(scored, identity=identity_csv(tmp_path, [("acc_00001", "sf-0001")]))

    run = sync(con, config, segment_factory)

    assert (run.mapped, run.unmapped_sent_as_is) == (1, ACCOUNTS - len(INACTIVE) - 1)
    group_ids = {c["groupId"] for c in group_calls(clean_sandbox)}
    assert "sf-0001" in group_ids and "acc_00001" not in group_ids and "acc_00002" in group_ids


def test_with_require_mapping_an_unmapped_account_is_rejected(con, scored, segment_factory, clean_sandbox,
                                                              tmp_path):
    config = dataclasses.replace(scored, identity=identity_csv(tmp_path, [("acc_00001", "sf-0001")]),
                                 require_mapping=True, service_user="svc")

    run = sync(con, config, segment_factory, run_id="r1")

    assert [c["groupId"] for c in group_calls(clean_sandbox)] == ["sf-0001"]
    assert run.rejected == ACCOUNTS - 1
    reason = con.execute("SELECT reason FROM rejected "
                         "WHERE run_id = 'r1' AND record_key = 'acc_00002'").fetchone()[0]
    assert reason.startswith("Pendo account acc_00002 is not in the identity map and require_mapping = true")


def test_an_account_mapped_to_two_groups_is_rejected_not_guessed(con, scored, segment_factory, clean_sandbox,
                                                                 tmp_path):
    config = dataclasses.replace(scored,
                                 identity=identity_csv(tmp_path, [("acc_00001", "a"), ("acc_00001", "b")]))

    sync(con, config, segment_factory, run_id="r1")

    assert not {"a", "b", "acc_00001"} & {c["groupId"] for c in group_calls(clean_sandbox)}
    reason = con.execute("SELECT reason FROM rejected "
                         "WHERE run_id = 'r1' AND record_key = 'acc_00001'").fetchone()[0]
    assert "maps to several Segment groups (a, b)" in reason


def test_two_accounts_mapped_to_one_group_are_both_rejected(con, scored, segment_factory, clean_sandbox,
                                                            tmp_path):
    config = dataclasses.replace(scored,
                                 identity=identity_csv(tmp_path, [("acc_00001", "g"), ("acc_00002", "g")]))

    run = sync(con, config, segment_factory, run_id="r1")

    assert "g" not in {c["groupId"] for c in group_calls(clean_sandbox)} and run.accounted_for
    reason = con.execute("SELECT reason FROM rejected "
                         "WHERE run_id = 'r1' AND record_key = 'acc_00002'").fetchone()[0]
    assert "is the target of 2 Pendo accounts (acc_00001, acc_00002)" in reason


def test_a_dry_run_counts_and_sends_nothing(con, scored, segment_factory, clean_sandbox):
    run = sync(con, scored, segment_factory, dry_run=True)

    assert run.sent == ACCOUNTS - len(INACTIVE) and run.delivery is None
    assert clean_sandbox.stats().get("segment", {}).get("received", 0) == 0
    assert sync(con, scored, segment_factory).delivery.delivered == ACCOUNTS - len(INACTIVE)


def test_syncing_before_scoring_says_what_to_run(con, segment_factory, config_no_identity):
    with pytest.raises(NothingScoredError, match="materialize pendo/account_health"):
        sync(con, config_no_identity, segment_factory)


def test_a_score_older_than_the_latest_staged_day_is_refused(con, scored, segment_factory, clean_sandbox):
    con.execute("INSERT INTO pendo_staged_days (day, staged_at, run_id, visitor_rows, feature_rows, "
                "poll_rows, timezone, apps) VALUES (?, now(), 'later', 0, 0, 0, ?, '*')",
                [yesterday() + timedelta(days=1), ZONE.key])

    with pytest.raises(StaleScoreError,
                       match=f"scores are as of {yesterday()} but Pendo usage is staged up to "
                             f"{yesterday() + timedelta(days=1)}: re-materialize pendo/account_health"):
        sync(con, scored, segment_factory)
    assert clean_sandbox.stats().get("segment", {}).get("received", 0) == 0


def test_a_window_with_an_unstaged_day_is_refused_naming_the_day(con, scored, segment_factory, clean_sandbox):
    gap = yesterday() - timedelta(days=4)
    con.execute("DELETE FROM pendo_staged_days WHERE day = ?", [gap])

    with pytest.raises(PartialWindowError,
                       match=f"1 of the 30 days of the window ending {yesterday()} are not "
                             f"staged: {gap}.*allow_partial_window = true in no_identity.toml"):
        sync(con, scored, segment_factory)
    assert clean_sandbox.stats().get("segment", {}).get("received", 0) == 0


def test_allow_partial_window_sends_a_window_with_an_unstaged_day(con, scored, segment_factory):
    con.execute("DELETE FROM pendo_staged_days WHERE day = ?", [yesterday() - timedelta(days=4)])

    run = sync(con, dataclasses.replace(scored, allow_partial_window=True), segment_factory)

    assert run.delivery.delivered == ACCOUNTS - len(INACTIVE)


def test_after_a_sync_every_pendo_account_is_delivered_unchanged_pending_or_rejected(con, scored,
                                                                                     segment_factory):
    first = sync(con, scored, segment_factory, run_id="r1")
    second = sync(con, scored, segment_factory, run_id="r2")

    assert first.reconciled == {"delivered": ACCOUNTS - len(INACTIVE), "unchanged": 0, "pending": 0,
                                "rejected": len(INACTIVE), "missing": 0}
    assert second.reconciled["unchanged"] == ACCOUNTS - len(INACTIVE) and second.missing == []


def test_an_account_pendo_lists_after_the_score_is_reported_missing(con, scored, segment_factory):
    con.execute("INSERT INTO pendo_accounts VALUES ('acc_new', 'New', 'pro', 5, NULL, NULL, now())")

    run = sync(con, scored, segment_factory)

    assert run.reconciled["missing"] == 1
    assert run.missing == [("acc_new", f"not in the score table (scored as of {yesterday()}); re-materialize "
                                       "pendo/account_health")]


@pytest.mark.slow
def test_the_user_id_stays_the_delivered_visitor_while_that_visitor_is_active(con, scored, segment_factory,
                                                                              clean_sandbox):
    sync(con, scored, segment_factory, run_id="r1")
    [(account, first_user, runner_up)] = con.execute("""
        SELECT account_id, arg_max(v.visitor_id, v.n) FILTER (WHERE v.visitor_id = h.top_visitor_id),
               arg_max(v.visitor_id, v.n) FILTER (WHERE v.visitor_id <> h.top_visitor_id)
        FROM (SELECT account_id, visitor_id, sum(events) AS n FROM pendo_visitor_days
              WHERE NOT starts_with(visitor_id, '_PENDO_T_') GROUP BY ALL) v
        JOIN pendo_account_health h USING (account_id)
        GROUP BY account_id HAVING count(*) > 1 ORDER BY account_id LIMIT 1""").fetchall()
    # The runner-up becomes the most active visitor: the delivered userId stays, nothing is sent.
    con.execute("UPDATE pendo_visitor_days SET events = events + 1000000 "
                "WHERE account_id = ? AND visitor_id = ?", [account, runner_up])
    score_accounts(con, scored, timezone=ZONE.key, apps="*")
    assert con.execute("SELECT top_visitor_id FROM pendo_account_health WHERE account_id = ?", [account]
                       ).fetchone()[0] == runner_up

    assert sync(con, scored, segment_factory, run_id="r2").sent == 0

    # The delivered visitor leaves the window: the most active one takes over (one call).
    con.execute("DELETE FROM pendo_visitor_days WHERE account_id = ? AND visitor_id = ?",
                [account, first_user])
    score_accounts(con, scored, timezone=ZONE.key, apps="*")
    sync(con, scored, segment_factory, run_id="r3")
    last = [c for c in group_calls(clean_sandbox) if c["groupId"] == account][-1]
    assert last["userId"] == runner_up


@pytest.mark.slow
def test_a_segment_outage_leaves_calls_pending_and_the_next_run_delivers_them_once(con, scored,
                                                                                   segment_factory,
                                                                                   clean_sandbox):
    clean_sandbox.set_faults("segment", rate_503=1.0)
    with pytest.raises(DeliveryIncomplete) as failed:
        sync(con, scored, segment_factory, run_id="r1")
    assert failed.value.report.ledger.pending == ACCOUNTS - len(INACTIVE)
    clean_sandbox.clear_faults()

    run = sync(con, scored, segment_factory, run_id="r2")

    assert (run.delivery.delivered, run.ledger.pending) == (ACCOUNTS - len(INACTIVE), 0)
    assert (run.plan.planned, run.plan.already_known) == (0, ACCOUNTS - len(INACTIVE))  # the same messages
    calls = group_calls(clean_sandbox)
    assert (len(calls) == ACCOUNTS - len(INACTIVE)
            and clean_sandbox.stats()["segment"].get("duplicates", 0) == 0)
    assert all(clean_sandbox.seen("segment", c["messageId"]) == 1 for c in calls)
