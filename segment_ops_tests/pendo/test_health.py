"""The health score on crafted staged data: components, weights, missing data, bands, reasons, determinism,
and the config file's validation. No HTTP: the staged tables are written directly."""

from __future__ import annotations

import dataclasses
from datetime import date, timedelta

import pytest

from segment_ops.syncs.pendo.extract import ensure_schema
from segment_ops.syncs.pendo.score import (
    DEFAULT_CONFIG_PATH,
    HealthConfigError,
    NothingStagedError,
    load_health_config,
    score_accounts,
)
from segment_ops_tests.pendo.conftest import write_config

AS_OF = date(2026, 6, 30)
WINDOW = 30
TZ = "America/New_York"  # the zone the crafted days are staged in, and scored in


def score(con, config, **kwargs):
    return score_accounts(con, config, timezone=TZ, apps="*", **kwargs)


@pytest.fixture
def config(tmp_path):
    return load_health_config(write_config(tmp_path / "health.toml", drop_identity=True))


def stage(con, *, accounts=(), visits=(), features=(), answers=(), feature_catalogue=8, days=WINDOW):
    """Write staged tables: accounts (id, seats), visits (id, visitor, days_ago, events), features (id,
    n_features, days_ago), answers (id, response, days_ago); the newest `days` days up to AS_OF count as
    staged."""
    ensure_schema(con)
    for account_id, seats in accounts:
        con.execute("INSERT INTO pendo_accounts VALUES (?, ?, 'pro', ?, NULL, NULL, now())",
                    [account_id, f"{account_id} Inc", seats])
    for account_id, visitor, days_ago, events in visits:
        con.execute("INSERT INTO pendo_visitor_days VALUES (?, ?, ?, ?, ?, NULL)",
                    [AS_OF - timedelta(days=days_ago), account_id, visitor, events, events])
    for account_id, n_features, days_ago in features:
        for n in range(n_features):
            con.execute("INSERT INTO pendo_feature_days VALUES (?, ?, ?, 1, 1, NULL)",
                        [AS_OF - timedelta(days=days_ago), account_id, f"feature{n}"])
    for account_id, response, days_ago in answers:
        con.execute("INSERT INTO pendo_poll_responses VALUES (?, ?, 'v', now(), 'poll', ?)",
                    [AS_OF - timedelta(days=days_ago), account_id, response])
    con.executemany("INSERT INTO pendo_features VALUES (?, NULL, now(), NULL)",
                    [[f"feature{n}"] for n in range(feature_catalogue)])
    con.executemany(f"INSERT INTO pendo_staged_days VALUES (?, now(), 'test', 0, 0, 0, '{TZ}', NULL, NULL, "
                    "'*')",
                    [[AS_OF - timedelta(days=n)] for n in range(days)])


def row(con, account_id):
    cursor = con.execute("SELECT * FROM pendo_account_health WHERE account_id = ?", [account_id])
    names = [d[0] for d in cursor.description]
    return dict(zip(names, cursor.fetchone(), strict=True))


def test_an_account_with_no_activity_scores_zero_and_is_critical(con, config):
    stage(con, accounts=[("quiet", 10)])

    report = score(con, config)

    quiet = row(con, "quiet")
    assert (quiet["score"], quiet["band"], quiet["active_users"]) == (0, "critical", 0)
    assert quiet["reasons"] == ["no activity in the staged Pendo usage"]
    assert quiet["last_active_date"] is None and quiet["top_visitor_id"] is None
    assert report.no_activity == 1 and report.bands["critical"] == 1


def test_the_score_is_the_weighted_mean_of_the_components_the_account_has(con, config):
    # breadth 2/4 = 0.5, depth 4/8 = 0.5, recency 1 (active today), no trend (30 days staged), no NPS:
    # (0.30 * 0.5 + 0.20 * 0.5 + 0.15 * 1) / (0.30 + 0.20 + 0.15) = 0.615 -> 62
    stage(con, accounts=[("acme", 4)], visits=[("acme", "u1", 0, 10), ("acme", "u2", 3, 5)],
          features=[("acme", 4, 0)])

    score(con, config)

    acme = row(con, "acme")
    assert (acme["breadth"], acme["depth"], acme["recency"], acme["trend"], acme["sentiment"]) == (
        0.5, 0.5, 1.0, None, None)
    assert acme["score"] == 62 and acme["band"] == "at_risk"


def test_weights_come_from_the_config(con, config):
    stage(con, accounts=[("acme", 4)], visits=[("acme", "u1", 0, 10), ("acme", "u2", 3, 5)],
          features=[("acme", 4, 0)])
    only_recency = dataclasses.replace(config, weights={"breadth": 0, "depth": 0, "trend": 0, "sentiment": 0,
                                                        "recency": 1})

    score(con, only_recency)

    assert row(con, "acme")["score"] == 100


@pytest.mark.slow
def test_trend_compares_the_window_with_the_previous_one_once_both_are_staged(con, config):
    stage(con, accounts=[("acme", 1)], visits=[("acme", "u1", 0, 25), ("acme", "u1", 40, 100)],
          features=[("acme", 8, 0)], days=2 * WINDOW)

    report = score(con, config)

    acme = row(con, "acme")
    assert acme["trend"] == 0.25 and acme["usage_change"] == -0.75
    assert acme["reasons"][0] == "usage down 80% vs the previous 30 days"  # in steps of 10%
    assert report.previous_days_staged == WINDOW and report.with_trend == 1


@pytest.mark.slow
def test_growing_usage_is_a_full_trend(con, config):
    stage(con, accounts=[("acme", 1)], visits=[("acme", "u1", 0, 300), ("acme", "u1", 40, 100)],
          days=2 * WINDOW)

    score(con, config)

    assert row(con, "acme")["trend"] == 1.0 and row(con, "acme")["usage_change"] == 2.0


@pytest.mark.slow
def test_sentiment_is_the_average_nps_answer_of_the_sentiment_window(con, config):
    stage(con, accounts=[("acme", 1)], visits=[("acme", "u1", 0, 5)],
          # answers count from staged days
          answers=[("acme", 4, 1), ("acme", 6, 80), ("acme", 10, 120)], days=121)

    score(con, config)

    acme = row(con, "acme")
    assert (acme["sentiment"], acme["nps_average"], acme["nps_answers"]) == (0.5, 5.0, 2)
    assert "NPS average 5.0 from 2 answer(s)" in acme["reasons"]


def test_recency_falls_with_the_days_since_the_last_activity_in_whole_weeks(con, config):
    stage(con, accounts=[("acme", 1)], visits=[("acme", "u1", 15, 5)])

    score(con, config)

    acme = row(con, "acme")  # 15 days = 2 whole weeks: 1 - 14 / 30
    assert acme["recency"] == 0.5333 and acme["last_active_date"] == AS_OF - timedelta(days=15)
    assert f"last active on {AS_OF - timedelta(days=15)}" in acme["reasons"]


@pytest.mark.slow
def test_recency_and_the_score_stay_put_within_a_week_of_inactivity(con, config):
    stage(con, accounts=[("acme", 4)], visits=[("acme", "u1", 8, 5)])
    score(con, config)
    before = row(con, "acme")

    score(con, config, as_of=AS_OF - timedelta(days=1))  # one day earlier: 7 days since, same week

    after = row(con, "acme")
    assert (after["recency"], after["score"], after["reasons"]) == (before["recency"], before["score"],
                                                                    before["reasons"])


def test_a_recency_step_longer_than_the_window_is_refused(tmp_path):
    path = write_config(tmp_path / "bad.toml", {"recency_step_days = 7 ": "recency_step_days = 31 "})

    with pytest.raises(HealthConfigError, match=r"recency_step_days must be 1..days \(30\), got 31"):
        load_health_config(path)


@pytest.mark.slow
def test_without_a_seat_count_breadth_uses_the_accounts_known_users(con, config):
    stage(con, accounts=[("acme", None)], visits=[("acme", "u1", 0, 5), ("acme", "u2", 45, 5)],
          days=2 * WINDOW)

    score(con, config)

    acme = row(con, "acme")
    assert acme["breadth"] == 0.5 and acme["licensed_seats"] is None
    assert "1 of 2 known users active in the last 30 days" in acme["reasons"]


def test_reasons_list_the_components_costing_most_points_first_at_most_max(con, config):
    # breadth 1/10 costs 0.27, depth 1/8 costs 0.175, recency 1 costs nothing, sentiment 0.2 costs 0.12.
    stage(con, accounts=[("acme", 10)], visits=[("acme", "u1", 0, 5)], features=[("acme", 1, 0)],
          answers=[("acme", 2, 0)])

    score(con, dataclasses.replace(config, max_reasons=2))

    assert row(con, "acme")["reasons"] == ["1 of 10 licensed seats active in the last 30 days",
                                           "uses 1 of 8 features"]


def test_a_healthy_account_has_no_reasons(con, config):
    stage(con, accounts=[("acme", 1)], visits=[("acme", "u1", 0, 5)], features=[("acme", 8, 0)])

    score(con, config)

    assert row(con, "acme")["band"] == "healthy" and row(con, "acme")["reasons"] == []


def test_bands_follow_the_configured_thresholds(con, config):
    stage(con, accounts=[("acme", 4)], visits=[("acme", "u1", 0, 10), ("acme", "u2", 3, 5)],
          features=[("acme", 4, 0)])  # score 62

    score(con, dataclasses.replace(config, healthy=60, at_risk=30))

    assert row(con, "acme")["band"] == "healthy"


def test_an_account_seen_only_in_usage_is_scored_too(con, config):
    stage(con, visits=[("newcomer", "u1", 0, 5)])

    assert score(con, config).accounts == 1
    assert row(con, "newcomer")["score"] is not None


@pytest.mark.slow
def test_the_same_staged_data_always_gives_the_same_scores(con, config):
    stage(con, accounts=[("a", 5), ("b", 3)],
          visits=[("a", "u1", 0, 5), ("a", "u2", 0, 5), ("b", "u3", 2, 7)],
          features=[("a", 3, 0), ("b", 2, 1)], answers=[("a", 8, 3)])
    score(con, config)
    first = con.execute("SELECT * FROM pendo_account_health ORDER BY account_id").fetchall()

    score(con, config)

    assert con.execute("SELECT * FROM pendo_account_health ORDER BY account_id").fetchall() == first


def test_the_most_active_identified_visitor_is_chosen_ties_broken_by_id(con, config):
    stage(con, accounts=[("acme", 5)], visits=[("acme", "_PENDO_T_anon", 0, 99), ("acme", "zed", 0, 7),
                                               ("acme", "amy", 1, 7)])

    score(con, config)

    assert row(con, "acme")["top_visitor_id"] == "amy"


def test_scoring_as_of_an_earlier_day_ignores_later_days(con, config):
    stage(con, accounts=[("acme", 1)], visits=[("acme", "u1", 0, 5), ("acme", "u1", 10, 5)])

    report = score(con, config, as_of=AS_OF - timedelta(days=5))

    assert report.as_of == AS_OF - timedelta(days=5)
    assert row(con, "acme")["last_active_date"] == AS_OF - timedelta(days=10)


def test_nothing_staged_raises_saying_what_to_materialize(con, config):
    with pytest.raises(NothingStagedError, match="materialize pendo/account_usage_daily"):
        score(con, config)


def test_the_projects_config_loads():
    config = load_health_config(DEFAULT_CONFIG_PATH)

    assert config.window_days == 30 and sum(config.weights.values()) == pytest.approx(1.0)
    assert config.identity is not None and config.service_user


@pytest.mark.parametrize(("old", "new", "problem"), [
    ("healthy = 70 ", "healthy = 30 ", "at_risk < healthy"),
    ("days = 30 ", "days = 0 ", "[window] days must be 1..365"),
    ("breadth = 0.30", "breadth = -1", "must not be negative: breadth"),
    ("[reasons]", "[reasons]\nsize = 3", "unknown key 'size' in [reasons]"),
    ("require_mapping = false", "require_mapping = \"no\"", "require_mapping must be bool"),
    ("[bands]", "[band]", "unknown section [band]"),
    ("query = \"SELECT", "csv = \"x.csv\"\nquery = \"SELECT",
     "[identity]: an identity source needs exactly one"),
])
def test_a_bad_config_is_refused_naming_the_file_and_the_problem(tmp_path, old, new, problem):
    path = write_config(tmp_path / "bad.toml", {old: new})

    with pytest.raises(HealthConfigError) as raised:
        load_health_config(path)

    assert str(raised.value).startswith(str(path)) and problem in str(raised.value)


def test_breadth_and_recency_cannot_both_weigh_nothing(tmp_path):
    path = write_config(tmp_path / "bad.toml",
                        {"breadth = 0.30": "breadth = 0", "recency = 0.15": "recency = 0"})

    with pytest.raises(HealthConfigError, match="breadth or recency must be positive"):
        load_health_config(path)


def test_a_missing_config_file_is_refused_with_its_path(tmp_path):
    with pytest.raises(HealthConfigError, match="cannot read the file"):
        load_health_config(tmp_path / "nope.toml")
