"""The preflight gate in front of the reverse-ETL models: a run under a write key Segment would silently drop
is refused before anything is sent; a transient outage of the Public API never blocks; `skip_preflight`
sends anyway. Real Dagster runs against the sandbox."""

from __future__ import annotations

import pytest

from segment_ops.resources import build_resources
from segment_ops_tests.reverse_etl.conftest import metadata, run_models, step_failure

WRONG_WRITE_KEY = "wk-live-5ecret-value-0001"
VALID_CUSTOMERS = 174


@pytest.fixture
def wrong_key(warehouse, clean_sandbox, monkeypatch) -> dict:
    monkeypatch.setenv("SEGMENT_WRITE_KEY", WRONG_WRITE_KEY)
    return build_resources()


@pytest.mark.slow
def test_a_run_under_a_wrong_write_key_is_refused_and_sends_nothing(wrong_key, clean_sandbox):
    result = run_models(wrong_key, ["user_traits"])

    assert not result.success
    failure = step_failure(result, "user_traits")
    assert "preflight refused to send: segment_write_key" in failure.description
    assert "SEGMENT_WRITE_KEY" in failure.description and "Nothing was sent" in failure.description
    assert WRONG_WRITE_KEY not in failure.description and "5ecret" not in str(failure.metadata)
    assert "preflight" in failure.metadata
    assert clean_sandbox.stats()["segment"]["requests"] == 0


def test_skip_preflight_sends_anyway_and_segment_drops_it_all(wrong_key, clean_sandbox):
    result = run_models(wrong_key, ["user_traits"], skip_preflight=True)

    assert result.success and metadata(result, "user_traits")["delivered"] == VALID_CUSTOMERS
    stats = clean_sandbox.stats()["segment"]
    assert stats["dropped"] == {"unknown_write_key": VALID_CUSTOMERS} and stats["received"] == 0


def test_a_dry_run_is_not_gated(wrong_key, clean_sandbox):
    result = run_models(wrong_key, ["user_traits"], dry_run=True)

    assert result.success and clean_sandbox.stats()["segmentapis"]["requests"] == 0


def test_a_public_api_outage_never_blocks_sending(resources, clean_sandbox):
    clean_sandbox.set_faults("segmentapis", rate_503=1.0)

    result = run_models(resources, ["user_traits"])

    assert result.success and metadata(result, "user_traits")["delivered"] == VALID_CUSTOMERS
    assert clean_sandbox.stats()["segmentapis"]["requests"] > 0


@pytest.mark.slow
def test_the_answer_is_cached_between_runs_and_the_public_api_asked_once(resources, clean_sandbox,
                                                                         monkeypatch):
    monkeypatch.setenv("TRACKING_PLAN_POLICY", "off")  # the plan is read with the Public API on each run too
    assert run_models(resources, ["user_traits"]).success
    assert run_models(resources, ["account_traits"]).success

    assert clean_sandbox.stats()["segmentapis"]["requests"] == 1  # one GET /sources page for both runs
