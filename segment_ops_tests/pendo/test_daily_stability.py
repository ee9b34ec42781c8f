"""A normal daily run sends only the accounts with a material change: score on day D, stage day D+1 with
steady activity, score and sync again. Crafted staged usage (so "steady" is exactly steady), real Segment
sandbox."""

from __future__ import annotations

import dataclasses
from datetime import date, timedelta

import pytest

from segment_ops.syncs.pendo.extract import ensure_schema
from segment_ops.syncs.pendo.groups import sync_account_groups
from segment_ops.syncs.pendo.score import score_accounts
from segment_ops_tests.pendo.conftest import group_calls

D = date(2026, 6, 30)
STAGED_BEFORE_D = 60  # D and the 59 days before: a full window and a full previous window
TZ = "America/New_York"  # the zone the days are staged in, and scored in


def stage_day(con, day: date, *, active_today: bool) -> None:
    """One staged day: `steady` is used every day by u1 (10 events) and u2 (9; 50 on D+1, which makes u2 the
    most active); `paused` was used daily until D-3 (more in the current window than the previous one, so its
    trend stays capped at 1); `quiet` is never used."""
    rows = []
    if active_today:
        rows += [(day, "steady", "u1", 10), (day, "steady", "u2", 50 if day > D else 9)]
    if day <= D - timedelta(days=3):
        rows.append((day, "paused", "p1", 10 if day > D - timedelta(days=30) else 1))
    for row in rows:
        con.execute("INSERT INTO pendo_visitor_days VALUES (?, ?, ?, ?, ?, NULL)", [*row, row[3]])
    con.execute("INSERT INTO pendo_staged_days VALUES (?, now(), 'test', 0, 0, 0, ?, NULL, NULL, '*')",
                [day, TZ])


def material(con) -> dict[str, dict]:
    """Per account, the score table's values behind the sent traits."""
    cursor = con.execute("SELECT account_id, score, band, reasons, active_users, licensed_seats, "
                         "features_used, "
                         "nps_average, last_active_date FROM pendo_account_health")
    names = [d[0] for d in cursor.description]
    return {row[0]: dict(zip(names[1:], row[1:], strict=True)) for row in cursor.fetchall()}


@pytest.mark.slow
def test_steady_usage_on_the_next_day_resends_only_accounts_with_a_material_change(con, config_no_identity,
                                                                                   segment_factory,
                                                                                   clean_sandbox):
    config = dataclasses.replace(config_no_identity, service_user="svc-health")
    ensure_schema(con)
    con.executemany("INSERT INTO pendo_accounts VALUES (?, ?, 'pro', 5, NULL, NULL, now())",
                    [[a, a] for a in ("steady", "paused", "quiet")])
    con.executemany("INSERT INTO pendo_features VALUES (?, NULL, now(), NULL)", [[f"f{n}"] for n in range(4)])
    for n in range(STAGED_BEFORE_D - 1, -1, -1):
        stage_day(con, D - timedelta(days=n), active_today=True)
    score_accounts(con, config, timezone=TZ, apps="*")
    day_d = material(con)
    first = sync_account_groups(con, config, segment_factory, warehouse_url="duckdb:///:memory:", timezone=TZ,
                                apps="*", run_id="d")
    assert first.delivery.delivered == 3
    calls_d = len(group_calls(clean_sandbox))

    stage_day(con, D + timedelta(days=1), active_today=True)
    report = score_accounts(con, config, timezone=TZ, apps="*")
    second = sync_account_groups(con, config, segment_factory, warehouse_url="duckdb:///:memory:",
                                 timezone=TZ, apps="*", run_id="d1")

    assert report.as_of == D + timedelta(days=1)
    day_d1 = material(con)
    assert day_d1["paused"] == day_d["paused"] and day_d1["quiet"] == day_d["quiet"]
    assert day_d1["steady"] == {**day_d["steady"], "last_active_date": D + timedelta(days=1)}
    new_calls = group_calls(clean_sandbox)[calls_d:]
    assert [c["groupId"] for c in new_calls] == ["steady"] and second.plan.unchanged == 2
    steady = new_calls[0]
    assert steady["traits"]["pendo_last_active_date"] == str(D + timedelta(days=1))
    assert steady["userId"] == "u1"  # sticky, although u2 is now the most active visitor
    assert con.execute("SELECT top_visitor_id FROM pendo_account_health WHERE account_id = 'steady'"
                       ).fetchone()[0] == "u2"
