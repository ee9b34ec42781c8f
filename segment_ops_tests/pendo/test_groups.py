"""Scored accounts -> Segment group calls through the diff and the delivery engine, against the sandbox:
ids, traits, only-changed sending, identity-map resolution and rejections with reasons."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from segment_ops.engine.health import score_accounts
from segment_ops.engine.identity import IdentitySource
from segment_ops.engine.pendo_groups import NothingScoredError, sync_account_groups
from segment_ops.engine.pendo_usage import SYNC, extract_days
from segment_ops_tests.pendo.conftest import group_calls, yesterday

INACTIVE = {"acc_00012", "acc_00015"}  # accounts whose users never use the app (scale 0.1)
ACCOUNTS = 15


@pytest.fixture
def scored(con, pendo_client, config_no_identity):
    """30 staged days, scored, with no service user and no identity map."""
    config = dataclasses.replace(config_no_identity, service_user="")
    extract_days(con, pendo_client, config, yesterday() - timedelta(days=29), yesterday())
    score_accounts(con, config)
    return config


def sync(con, config, factory, **kwargs):
    return sync_account_groups(con, config, factory, warehouse_url="duckdb:///:memory:", run_id=kwargs.pop("run_id", "r"),
                               **kwargs)


def test_each_account_becomes_one_group_call_with_its_health_traits(con, scored, segment_factory, clean_sandbox):
    run = sync(con, scored, segment_factory)

    calls = {c["groupId"]: c for c in group_calls(clean_sandbox)}
    assert run.delivery.delivered == len(calls) == ACCOUNTS - len(INACTIVE)
    score, band, reasons, top = con.execute("SELECT score, band, reasons, top_visitor_id FROM pendo_account_health "
                                            "WHERE account_id = 'acc_00001'").fetchone()
    call = calls["acc_00001"]
    assert call["userId"] == top and call["userId"].startswith("usr_")
    traits = call["traits"]
    assert (traits["pendo_health_score"], traits["pendo_health_band"], traits["pendo_health_reasons"]) == (
        score, band, reasons)
    assert set(traits) == {"pendo_" + t for t in (
        "health_score", "health_band", "health_reasons", "active_users", "licensed_seats", "seat_utilisation",
        "features_used", "feature_adoption", "events", "minutes", "usage_change", "nps_average", "last_active_date")}
    assert traits["pendo_last_active_date"] <= str(yesterday())


def test_a_second_sync_without_changes_sends_nothing(con, scored, segment_factory, clean_sandbox):
    sync(con, scored, segment_factory)
    requests = clean_sandbox.stats()["segment"]["requests"]

    again = sync(con, scored, segment_factory, run_id="r2")

    assert (again.sent, again.plan.unchanged, again.delivery.delivered) == (0, ACCOUNTS - len(INACTIVE), 0)
    assert clean_sandbox.stats()["segment"]["requests"] == requests and again.accounted_for


def test_an_account_with_no_active_visitor_and_no_service_user_is_rejected_with_the_reason(con, scored, segment_factory):
    run = sync(con, scored, segment_factory, run_id="r1")

    assert run.rejected == len(INACTIVE) and run.accounted_for
    reasons = dict(con.execute("SELECT record_key, reason FROM rejected WHERE sync = ? AND run_id = 'r1'", [SYNC]
                               ).fetchall())
    assert set(reasons) == INACTIVE
    assert "has no identified visitor active in the last 30 days and no service user is configured" in reasons["acc_00012"]


def test_the_service_user_carries_accounts_without_an_active_visitor(con, scored, segment_factory, clean_sandbox):
    run = sync(con, dataclasses.replace(scored, service_user="svc-health"), segment_factory)

    assert run.rejected == 0 and run.delivery.delivered == ACCOUNTS
    quiet = {c["groupId"]: c for c in group_calls(clean_sandbox)}["acc_00012"]
    assert quiet["userId"] == "svc-health" and quiet["traits"]["pendo_health_band"] == "critical"


def identity_csv(tmp_path, rows):
    path = tmp_path / "map.csv"
    path.write_text("source_id,target_id\n" + "".join(f"{s},{t}\n" for s, t in rows))
    return IdentitySource(csv=str(path))


def test_the_identity_map_gives_the_segment_group_id(con, scored, segment_factory, clean_sandbox, tmp_path):
    config = dataclasses.replace(scored, identity=identity_csv(tmp_path, [("acc_00001", "sf-0001")]))

    run = sync(con, config, segment_factory)

    assert (run.mapped, run.unmapped_sent_as_is) == (1, ACCOUNTS - len(INACTIVE) - 1)
    group_ids = {c["groupId"] for c in group_calls(clean_sandbox)}
    assert "sf-0001" in group_ids and "acc_00001" not in group_ids and "acc_00002" in group_ids


def test_with_require_mapping_an_unmapped_account_is_rejected(con, scored, segment_factory, clean_sandbox, tmp_path):
    config = dataclasses.replace(scored, identity=identity_csv(tmp_path, [("acc_00001", "sf-0001")]),
                                 require_mapping=True, service_user="svc")

    run = sync(con, config, segment_factory, run_id="r1")

    assert [c["groupId"] for c in group_calls(clean_sandbox)] == ["sf-0001"]
    assert run.rejected == ACCOUNTS - 1
    reason = con.execute("SELECT reason FROM rejected WHERE run_id = 'r1' AND record_key = 'acc_00002'").fetchone()[0]
    assert reason.startswith("Pendo account acc_00002 is not in the identity map and require_mapping = true")


def test_an_account_mapped_to_two_groups_is_rejected_not_guessed(con, scored, segment_factory, clean_sandbox, tmp_path):
    config = dataclasses.replace(scored, identity=identity_csv(tmp_path, [("acc_00001", "a"), ("acc_00001", "b")]))

    sync(con, config, segment_factory, run_id="r1")

    assert not {"a", "b", "acc_00001"} & {c["groupId"] for c in group_calls(clean_sandbox)}
    reason = con.execute("SELECT reason FROM rejected WHERE run_id = 'r1' AND record_key = 'acc_00001'").fetchone()[0]
    assert "maps to several Segment groups (a, b)" in reason


def test_two_accounts_mapped_to_one_group_are_both_rejected(con, scored, segment_factory, clean_sandbox, tmp_path):
    config = dataclasses.replace(scored, identity=identity_csv(tmp_path, [("acc_00001", "g"), ("acc_00002", "g")]))

    run = sync(con, config, segment_factory, run_id="r1")

    assert "g" not in {c["groupId"] for c in group_calls(clean_sandbox)} and run.accounted_for
    reason = con.execute("SELECT reason FROM rejected WHERE run_id = 'r1' AND record_key = 'acc_00002'").fetchone()[0]
    assert "is the target of 2 Pendo accounts (acc_00001, acc_00002)" in reason


def test_a_dry_run_counts_and_sends_nothing(con, scored, segment_factory, clean_sandbox):
    run = sync(con, scored, segment_factory, dry_run=True)

    assert run.sent == ACCOUNTS - len(INACTIVE) and run.delivery is None
    assert clean_sandbox.stats().get("segment", {}).get("received", 0) == 0
    assert sync(con, scored, segment_factory).delivery.delivered == ACCOUNTS - len(INACTIVE)


def test_syncing_before_scoring_says_what_to_run(con, segment_factory, config_no_identity):
    with pytest.raises(NothingScoredError, match="materialize pendo/account_health"):
        sync(con, config_no_identity, segment_factory)
