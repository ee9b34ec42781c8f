"""What the alert messages say, and what they never say (a secret)."""

from __future__ import annotations

from segment_ops.engine.alerts import (
    DeliveryHealthChange,
    RunFailure,
    RunRecovery,
    delivery_health_message,
    egress_failure_message,
    failure_message,
    recovery_message,
)

URL = "http://dagster.example:3000/runs/0123456789abcdef"


def failure(**overrides) -> RunFailure:
    fields = dict(run_id="0123456789abcdef", run_url=URL, job_name="reverse_etl_job", groups=["reverse_etl"],
                  step="segment__reverse_etl__user_traits",
                  error="user_traits.sql: 3 message(s) could not be delivered\n"
                        "Traceback (most recent call last):",
                  counts={"delivered": 97, "pending_after_run": 3})
    return RunFailure(**(fields | overrides))


def test_a_failure_names_job_group_step_first_error_line_counts_and_link():
    text = failure_message(failure())["text"]

    assert "`reverse_etl_job` (reverse_etl) failed at step `segment__reverse_etl__user_traits`" in text
    assert "3 message(s) could not be delivered" in text and "Traceback" not in text
    assert "delivered 97, pending_after_run 3" in text
    assert f"<{URL}|Open run 01234567>" in text


def test_a_failure_has_blocks_with_the_same_facts():
    blocks = failure_message(failure(partition="2026-08-01-10:00"))["blocks"]

    assert blocks[0] == {"type": "header",
                         "text": {"type": "plain_text", "text": "Run failed: reverse_etl_job"}}
    fields = " ".join(f["text"] for f in blocks[1]["fields"])
    assert "`reverse_etl_job`" in fields and "`2026-08-01-10:00`" in fields and "reverse_etl" in fields
    assert URL in blocks[-1]["text"]["text"]


def test_the_value_of_a_secret_setting_is_replaced_in_an_error(monkeypatch):
    monkeypatch.setenv("SEGMENT_WRITE_KEY", "wk-live-5ecret-value")

    message = failure_message(failure(error="upstream echoed Basic auth for wk-live-5ecret-value"))

    assert "wk-live-5ecret-value" not in str(message) and "***" in message["text"]


def test_slack_control_characters_in_an_error_are_escaped_but_the_run_link_is_kept():
    text = failure_message(failure(error="column <b> & <!channel>"))["text"]

    assert "&lt;!channel&gt;" in text and "&amp;" in text and "<!channel>" not in text
    assert f"<{URL}|Open run 01234567>" in text


def test_a_recovery_names_both_runs():
    message = recovery_message(RunRecovery(run_id="ffff0000aaaa", run_url="http://ui/runs/ffff0000aaaa",
                                           job_name="audit_trail_job", failed_run_id="0123456789ab",
                                           failed_run_url="http://ui/runs/0123456789ab",
                                           groups=["audit_trail"], partition="2026-08-01-10:00"))

    assert "recovered" in message["text"] and "ffff0000" in message["text"] and "01234567" in message["text"]
    assert "partition `2026-08-01-10:00`" in message["text"]


def test_delivery_health_messages_give_the_share_counts_and_threshold():
    change = DeliveryHealthChange(sync="replay", healthy=False, share=0.125, threshold=0.05, window_hours=24,
                                  delivered=70, rejected=6, failed=4)

    unhealthy = delivery_health_message(change)["text"]
    healthy = delivery_health_message(change.__class__(**{**change.__dict__, "healthy": True}))["text"]

    assert "`replay` is unhealthy: 12.5% rejected or failed in the last 24 h" in unhealthy
    assert "delivered 70, rejected 6, failed 4 of 80; threshold 5.0%" in unhealthy
    assert "healthy again" in healthy


def test_a_mention_or_link_in_an_error_reaches_slack_as_plain_characters():
    message = failure_message(failure(error="bad row <!channel> see <http://x|y> & more",
                                      step="step <!here>"))

    for text in (message["text"], str(message["blocks"])):
        assert "<!channel>" not in text and "<http://x|y>" not in text and "<!here>" not in text
        assert "&lt;!channel&gt;" in text and "&lt;http://x|y&gt;" in text
    assert message["text"].endswith(f"<{URL}|Open run 01234567>")


def test_a_range_run_names_its_partition_range_and_asset_groups():
    text = failure_message(failure(job_name="audit_trail", groups=["audit_trail"],
                                   partition="2026-08-01-00:00…2026-08-01-23:00"))["text"]

    assert "partition `2026-08-01-00:00…2026-08-01-23:00`" in text


def test_an_egress_failure_names_each_destination_its_share_and_reasons_escaped_with_the_link_last(
        monkeypatch):
    from segment_ops.syncs.ops.delivery_overview import DestinationFigures

    monkeypatch.setenv("SEGMENT_WRITE_KEY", "wk-live-5ecret-value")
    flagged = [DestinationFigures("src_1", "dst_<1>", "Hooks & <!channel>", delivered=6, failed=2, filtered=0,
                                  discards={"Unauthorized": 1, "bad key wk-live-5ecret-value": 1})]

    message = egress_failure_message("2026-12-01-10:00", flagged, 0.1, URL)

    text = message["text"]
    assert text.startswith(":warning: segment_ops: Segment failed to deliver to 1 destination(s) in hour "
                           "2026-12-01-10:00 (threshold 10.0%): *Hooks &amp; &lt;!channel&gt;* "
                           "(`dst_&lt;1&gt;`): 2 of 8 events failed (25.0%): ")
    assert "Unauthorized 1" in text and "bad key *** 1" in text and "5ecret" not in str(message)
    assert text.endswith(f" <{URL}|Open the check's run in Dagster>")
    assert message["blocks"][0]["text"]["text"] == "Segment egress failures, 2026-12-01-10:00"
    assert message["blocks"][-1]["text"]["text"] == f"<{URL}|Open the check's run in Dagster>"
