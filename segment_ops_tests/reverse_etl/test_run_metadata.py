"""Run metadata never fails a run that did its work (issue 16, part 6): a sample that is not JSON is shown as
text, and metadata that cannot be built is logged and replaced by the counts and the error."""

from __future__ import annotations

import logging

import pytest

from segment_ops.syncs.metadata import guarded, payload_samples
from segment_ops.syncs.reverse_etl import defs
from segment_ops_tests.reverse_etl.conftest import checks, metadata, run_models


def test_samples_that_are_not_json_are_shown_as_text():
    samples = payload_samples([b'{"traits":{"score":NaN}}', b'{"traits":{}}'])

    assert samples.data == [{"unparseable_payload": '{"traits":{"score":NaN}}'}, {"traits": {}}]


def test_metadata_that_cannot_be_built_is_logged_and_leaves_the_counts(caplog):
    def broken() -> dict:
        raise ValueError("no sample for you")

    with caplog.at_level(logging.WARNING, logger="segment_ops.metadata"):
        metadata = guarded(broken, what="model m", fallback={"rows_read": 3})

    assert metadata["rows_read"] == 3
    assert metadata["metadata_error"].text == "ValueError: no sample for you"
    assert "model m could not be built" in caplog.text


@pytest.mark.slow
def test_metadata_that_cannot_be_built_never_fails_the_run(resources, monkeypatch, clean_sandbox):
    def broken(*args: object, **kwargs: object) -> dict:
        raise ValueError("cannot render this sample")

    monkeypatch.setattr(defs, "diff_run_metadata", broken)

    result = run_models(resources, ["account_traits"])

    assert result.success
    meta = metadata(result, "account_traits")
    assert meta["metadata_error"] == "ValueError: cannot render this sample" and meta["rows_read"] == 15
    assert checks(result, "account_traits")["delivery_complete"].passed


@pytest.mark.slow
def test_a_long_delivery_logs_its_progress_in_the_run(resources, monkeypatch, clean_sandbox, capfd):
    # Every 30 s in a deployment; here at every batch, so the demo model's delivery shows it. The run's
    # log (context.log) is echoed by Dagster's console logger, where it is read here.
    monkeypatch.setattr("segment_ops.engine.progress.LOG_SECONDS", 0.0)

    result = run_models(resources, ["completed_orders"])

    assert result.success
    sent = metadata(result, "completed_orders")["delivered"]
    err = capfd.readouterr().err
    progress = [line.split(" - ")[-1] for line in err.splitlines()
                if " - INFO - " in line and " - reverse_etl_completed_orders: " in line]
    assert progress, "no progress line in the run's log"
    done = f"{sent:,} of {sent:,} messages settled so far (100%), "
    assert progress[-1].startswith(f"reverse_etl_completed_orders: {done}")
