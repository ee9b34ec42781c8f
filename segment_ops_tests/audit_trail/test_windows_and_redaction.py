"""Any window through the pull and forward functions directly (a 14-day backfill), and the redaction rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dagster as dg
import duckdb
import pytest

from segment_ops.config import load_settings
from segment_ops.engine.redaction import HASH_PREFIX, RedactionRules
from segment_ops.resources import AuditRedactionResource, build_resources
from segment_ops.syncs.audit_trail.defs import forward_window, missing_windows, pull_window
from segment_ops_tests.audit_trail.conftest import audit_ids, received_events, received_ids


@pytest.mark.slow
def test_a_14_day_backfill_forwards_every_event_once_and_daily_rereads_add_nothing(resources, clean_sandbox):
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    start = end - timedelta(days=14)
    client = resources["segment_public_api"].get_client()
    splunk = resources["splunk"].get_destination()
    rules = resources["audit_redaction"].get_rules()
    con = duckdb.connect()

    pulled = pull_window(client, con, start, end)
    report = forward_window(con, [splunk], start, end, rules=rules)

    expected = audit_ids(clean_sandbox, start, end)
    got = received_ids(clean_sandbox)
    assert len(expected) > 100 and pulled.pulled == pulled.new == len(expected)
    assert report.complete and sorted(got) == sorted(expected) and len(set(got)) == len(got)
    for day in range(14):  # overlapping re-reads, one day at a time
        day_start = start + timedelta(days=day)
        assert pull_window(client, con, day_start, day_start + timedelta(days=1)).new == 0
        again = forward_window(con, [splunk], day_start, day_start + timedelta(days=1), rules=rules)
        assert again.complete and again.deliveries["audit_trail"].delivered == 0
    assert len(received_events(clean_sandbox)) == len(expected)


def test_missing_windows_names_the_hours_between_forwarded_ones():
    con = duckdb.connect()
    now = datetime(2026, 11, 23, 16, tzinfo=UTC)
    missing_windows(con, now, timedelta(days=7))  # creates the tables
    for hours_ago in (5, 4, 2):
        start = now - timedelta(hours=hours_ago)
        con.execute("INSERT INTO forwarded_windows VALUES (?, ?, 'r', 0, ?)",
                    [start, start + timedelta(hours=1), now])

    count, holes = missing_windows(con, now, timedelta(days=7))

    assert count == 3 and holes == [now - timedelta(hours=3)]


RULES = RedactionRules(salt="pepper")
# "sha256:" + hmac.new(b"pepper", value, hashlib.sha256).hexdigest(), worked out with the standard library.
ANA = "sha256:f04c98b8b485a884ed27e91c8b7b9ab6161d830ac969954552d16c4ad85c7d63"  # b"ana.souza@example.com"
TOKEN = "sha256:298717d7db830d65abe08e07a332a4fca09583e8c42906b9a5a3f0407974a5f4"  # b"sgp_AbCdEfGh12345678"
AUDIT = {"id": "a1", "timestamp": "2026-11-23T10:00:00Z", "type": "Access Token Created",
         "actor": "ana.souza@example.com", "actorEmail": "ana.souza@example.com",
         "resourceName": "ci token sgp_AbCdEfGh12345678 for deploy", "resourceId": "tok1",
         "details": {"secret": "s3cr3t", "keep": 1}}


def test_configured_fields_are_hashed_with_a_salted_sha256():
    out = RULES.redact(AUDIT)
    assert out["actorEmail"] == ANA
    assert out["actorEmail"].startswith(HASH_PREFIX) and len(out["actorEmail"]) == len(HASH_PREFIX) + 64
    assert RedactionRules(salt="other").hash_value("ana.souza@example.com") != out["actorEmail"]
    assert AUDIT["actorEmail"] == "ana.souza@example.com"  # the input is untouched


def test_emails_and_tokens_inside_text_fields_are_hashed_in_place():
    out = RULES.redact(AUDIT)
    assert out["actor"] == ANA
    assert out["resourceName"] == f"ci token {TOKEN} for deploy"
    assert out["type"] == AUDIT["type"] and out["resourceId"] == "tok1"


def test_dropped_fields_disappear_including_nested_paths():
    rules = RedactionRules(salt="pepper", drop_fields=("actorEmail", "details.secret"))
    out = rules.redact(AUDIT)
    assert "actorEmail" not in out and out["details"] == {"keep": 1}


def test_the_salt_comes_from_the_environment_and_never_shows():
    built = build_resources(load_settings({"SEGMENT_OPS_REDACTION_SALT": "live-salt-LEAKCHECK"}))
    redaction = built["audit_redaction"]
    assert isinstance(redaction.salt, dg.EnvVar)
    # a resolved value, not the EnvVar
    assert "LEAKCHECK" not in repr(AuditRedactionResource(salt="x-LEAKCHECK"))
    assert "LEAKCHECK" not in repr(RedactionRules(salt="x-LEAKCHECK"))
    with pytest.raises(ValueError, match="salt"):
        RedactionRules(salt="")
