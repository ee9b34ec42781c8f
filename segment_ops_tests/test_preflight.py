"""`segment-ops check`: every preflight check through real HTTP against the sandbox, on its defaults and with
each credential broken. A wrong credential fails naming its setting, and no secret value is ever printed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from segment_ops.cli import main
from segment_ops.config import (
    SANDBOX_FULLSTORY_API_KEY,
    SANDBOX_FULLSTORY_STREAM_TOKEN,
    SANDBOX_SEGMENT_PUBLIC_API_TOKEN,
    SANDBOX_SEGMENT_WRITE_KEY,
    SANDBOX_SLACK_WEBHOOK_TOKEN,
    SECRET_NAMES,
    load_settings,
)
from segment_ops.engine.preflight import CheckResult, PreflightRefused, Status, gate, render_table, run_checks
from segment_ops.preflight import (
    CHECK_NAMES,
    FINGERPRINT_KEY_FILE,
    HEC_PROBE_SOURCETYPE,
    all_checks,
    cache_for,
    secret_values,
    sending_checks,
)
from segment_ops.sandbox.segment.sources import DISABLED_SOURCE_WRITE_KEY, workspace_sources
from segment_ops.syncs.heap.receiver import WebhookConfig
from segment_ops.syncs.heap.server import start_receiver
from segment_ops.syncs.reverse_etl.defs import MODELS_DIR
from segment_ops_tests.conftest import public_api_listing

WRONG_WRITE_KEY = "wk-live-5ecret-value-0001"
ON_THE_DEFAULTS = {"splunk_hec_index": Status.SKIP, "heap_receiver": Status.SKIP}


def checks(*only: str, **env: str) -> dict[str, CheckResult]:
    """The results of the named checks (all when none is named) under the test's environment plus `env`."""
    settings = load_settings({**os.environ, **env})
    selected = [c for c in all_checks(settings) if not only or c.name in only]
    return {r.check: r for r in run_checks(selected, secrets=secret_values(settings))}


def statuses(results: dict[str, CheckResult]) -> dict[str, Status]:
    return {name: result.status for name, result in results.items()}


def test_every_check_passes_on_the_sandbox_defaults(warehouse, clean_sandbox):
    results = checks()

    assert statuses(results) == {name: ON_THE_DEFAULTS.get(name, Status.PASS) for name in results}
    assert "source 'segment-ops (HTTP API)'" in results["segment_write_key"].detail
    assert clean_sandbox.received("slack") == [] and clean_sandbox.stats()["splunk"]["received"] == 0


def test_check_exits_0_and_prints_the_table_on_the_sandbox_defaults(warehouse, clean_sandbox, capsys):
    code = main(["check"])

    out = capsys.readouterr().out
    assert code == 0
    assert out.splitlines()[0].split()[:3] == ["check", "setting(s)", "result"]
    assert "16 checks: 14 pass, 0 warn, 0 fail, 2 skip; no check failed" in out


def test_a_wrong_write_key_fails_naming_the_setting_and_never_printing_the_key(warehouse, clean_sandbox,
                                                                               capsys, monkeypatch):
    monkeypatch.setenv("SEGMENT_WRITE_KEY", WRONG_WRITE_KEY)

    code = main(["check"])

    out = capsys.readouterr().out
    assert code == 1
    [row] = [line for line in out.splitlines() if line.startswith("segment_write_key")]
    assert "SEGMENT_WRITE_KEY" in row and "FAIL (auth/config): not the write key of" in row
    assert WRONG_WRITE_KEY not in out and "5ecret" not in out


def test_the_write_key_of_a_disabled_source_fails(ops_env, clean_sandbox):
    [result] = checks("segment_write_key", SEGMENT_WRITE_KEY=DISABLED_SOURCE_WRITE_KEY).values()

    assert (result.status, result.definitive) == (Status.FAIL, True)
    assert "which is disabled" in result.detail and DISABLED_SOURCE_WRITE_KEY not in result.detail


def test_a_tracking_host_of_the_other_region_fails(ops_env, clean_sandbox):
    results = checks("segment_write_key", "segment_region",
                     SEGMENT_TRACKING_URL=f"{clean_sandbox.url}/segment_eu",
                     SEGMENT_WRITE_KEY=SANDBOX_SEGMENT_WRITE_KEY)

    assert results["segment_write_key"].status is Status.PASS
    region = results["segment_region"]
    assert (region.status, region.definitive) == (Status.FAIL, True)
    assert "is the EU tracking host, but the workspace is US" in region.detail
    assert region.todo == "set SEGMENT_TRACKING_URL to https://api.segment.io"


def test_without_a_public_api_token_the_key_is_a_warning_that_it_cannot_be_verified(warehouse, clean_sandbox,
                                                                                      monkeypatch,
                                                                                      capsys):
    # A live Public API URL without its token: the sandbox's default token does not count as set.
    monkeypatch.setenv("SEGMENT_PUBLIC_API_URL", f"{clean_sandbox.url}/segmentapis")

    results = checks("segment_write_key", "segment_region", "segment_public_api")
    code = main(["check"])

    key = results["segment_write_key"]
    assert key.status is Status.WARN and "cannot be verified" in key.detail
    assert "SEGMENT_PUBLIC_API_TOKEN is not set" in key.detail
    assert results["segment_region"].status is Status.SKIP
    assert results["segment_public_api"].status is Status.SKIP
    assert code == 0 and "no check failed" in capsys.readouterr().out  # warnings do not fail `check`
    assert clean_sandbox.stats()["segmentapis"]["requests"] == 0


def test_a_wrong_public_api_token_fails_and_leaves_the_key_unverified(ops_env, clean_sandbox):
    results = checks("segment_write_key", "segment_region", "segment_public_api",
                     SEGMENT_PUBLIC_API_TOKEN="sgp_wrong_5ecret_token")

    api = results["segment_public_api"]
    assert (api.status, api.definitive) == (Status.FAIL, True)
    assert "GET /audit-events (the audit trail) refused the token" in api.detail and "401" in api.detail
    assert results["segment_write_key"].status is Status.WARN
    assert "refused SEGMENT_PUBLIC_API_TOKEN" in results["segment_write_key"].detail
    assert results["segment_region"].status is Status.SKIP


def test_a_public_api_outage_is_a_transient_failure(ops_env, clean_sandbox):
    clean_sandbox.set_faults("segmentapis", rate_503=1.0)

    results = checks("segment_write_key", "segment_public_api")

    api = results["segment_public_api"]
    assert (api.status, api.definitive) == (Status.FAIL, False)
    assert results["segment_write_key"].status is Status.WARN


def test_a_wrong_hec_token_fails(ops_env, clean_sandbox):
    results = checks("splunk_hec", "splunk_hec_ack", SPLUNK_HEC_TOKEN="00000000-0000-4000-8000-00000000dead")

    hec = results["splunk_hec"]
    assert (hec.status, hec.definitive) == (Status.FAIL, True)
    assert "Invalid token (code 4)" in hec.detail and "SPLUNK_HEC_TOKEN" in hec.todo
    assert results["splunk_hec_ack"].status is Status.SKIP


@pytest.mark.parametrize(("timeout", "expected"), [("300", Status.PASS), ("60", Status.WARN)])
def test_with_indexer_ack_on_the_ack_timeout_is_checked(ops_env, sandbox_factory, monkeypatch, timeout,
                                                        expected):
    acking = sandbox_factory(splunk_ack=True)
    monkeypatch.setenv("SEGMENT_OPS_SANDBOX_URL", acking.url)

    results = checks("splunk_hec", "splunk_hec_ack", SPLUNK_HEC_ACK_TIMEOUT_SECONDS=timeout)

    assert "indexer acknowledgement on" in results["splunk_hec"].detail
    assert results["splunk_hec_ack"].status is expected


def test_a_channel_that_is_not_a_guid_fails(ops_env, clean_sandbox):
    [result] = checks("splunk_hec_ack", SPLUNK_HEC_CHANNEL="audit-channel").values()

    assert (result.status, result.definitive) == (Status.FAIL, True)


def test_the_probe_event_proves_the_index_and_carries_its_own_sourcetype(ops_env, clean_sandbox):
    [result] = checks("splunk_hec_index", PREFLIGHT_HEC_PROBE_EVENT="true").values()

    assert result.status is Status.PASS
    [event] = clean_sandbox.received("splunk")
    assert (event["sourcetype"], event["index"]) == (HEC_PROBE_SOURCETYPE, "segment_audit")


def test_an_index_the_token_may_not_write_to_fails_the_probe(ops_env, clean_sandbox):
    [result] = checks("splunk_hec_index", PREFLIGHT_HEC_PROBE_EVENT="true", SPLUNK_INDEX="finance").values()

    assert (result.status, result.definitive) == (Status.FAIL, True)
    assert "Incorrect index (code 7)" in result.detail and clean_sandbox.received("splunk") == []


def test_a_wrong_pendo_key_fails(ops_env, clean_sandbox):
    results = checks("pendo_key", "pendo_timezone", PENDO_INTEGRATION_KEY="pendo-wrong-5ecret")

    key = results["pendo_key"]
    assert (key.status, key.definitive) == (Status.FAIL, True) and "403" in key.detail
    assert results["pendo_timezone"].status is Status.SKIP


def test_a_pendo_timezone_other_than_the_subscriptions_fails_with_its_offset(ops_env, clean_sandbox):
    results = checks("pendo_key", "pendo_timezone", PENDO_TIMEZONE="Europe/Berlin")

    assert results["pendo_key"].status is Status.PASS
    zone = results["pendo_timezone"]
    assert (zone.status, zone.definitive) == (Status.FAIL, True)
    # The sandbox's subscription is New York's: its days start at 04:00 or 05:00 UTC.
    assert "not at midnight in PENDO_TIMEZONE=Europe/Berlin" in zone.detail
    assert "UTC offset -04:00" in zone.detail or "UTC offset -05:00" in zone.detail


def test_a_slack_webhook_that_is_gone_fails_and_nothing_is_posted(ops_env, clean_sandbox):
    url = f"{clean_sandbox.url}/slack/services/T0SANDBOX/B0SANDBOX/removedWebhookToken0001"

    [result] = checks("slack_webhook", ALERT_WEBHOOK_URL=url).values()

    assert (result.status, result.definitive) == (Status.FAIL, True)
    assert "404" in result.detail and "no_service" in result.detail
    assert "removedWebhookToken0001" not in result.detail + result.todo
    assert clean_sandbox.received("slack") == []


def test_an_unreachable_slack_webhook_is_a_transient_failure(ops_env):
    url = "http://127.0.0.1:9/services/T0/B0/token00000001"  # the discard port: nothing listens

    [result] = checks("slack_webhook", ALERT_WEBHOOK_URL=url).values()

    assert (result.status, result.definitive) == (Status.FAIL, False)


def test_a_broken_model_query_fails_naming_its_file(warehouse, tmp_path: Path):
    models = tmp_path / "models"
    shutil.copytree(MODELS_DIR, models)
    path = models / "user_traits.sql"
    path.write_text(path.read_text().replace("FROM customers", "FROM customer_typo"))

    results = checks("warehouse", "reverse_etl_models", REVERSE_ETL_MODELS_DIR=str(models))

    assert results["warehouse"].status is Status.PASS
    broken = results["reverse_etl_models"]
    assert (broken.status, broken.definitive) == (Status.FAIL, True)
    shipped = len(list(MODELS_DIR.glob("*.sql")))  # other syncs add models of their own
    assert f"1 of {shipped} broken: user_traits.sql:" in broken.detail and "customer_typo" in broken.detail


def table_rows(out: str) -> list[str]:
    """The check names of a printed table's rows (first cell of each line that starts one)."""
    return [line.split()[0] for line in out.splitlines()[2:] if line and not line.startswith(" ")
            and line.split()[0] in CHECK_NAMES]


def test_check_only_runs_the_named_checks_and_exits_0_on_the_sandbox(warehouse, clean_sandbox, capsys):
    code = main(["check", "--only", "warehouse,reverse_etl_models"])

    out = capsys.readouterr().out
    assert code == 0
    assert table_rows(out) == ["warehouse", "reverse_etl_models"]
    assert "2 checks: 2 pass, 0 warn, 0 fail, 0 skip; no check failed" in out
    assert all(stats.get("requests", 0) == 0 for stats in clean_sandbox.stats().values())  # no vendor asked


def test_check_only_the_models_exits_1_with_a_broken_model(warehouse, tmp_path: Path, capsys, monkeypatch):
    models = tmp_path / "models"
    shutil.copytree(MODELS_DIR, models)
    path = models / "user_traits.sql"
    path.write_text(path.read_text().replace("FROM customers", "FROM customer_typo"))
    monkeypatch.setenv("REVERSE_ETL_MODELS_DIR", str(models))

    code = main(["check", "--only", "warehouse,reverse_etl_models"])

    out = capsys.readouterr().out
    assert code == 1
    assert table_rows(out) == ["warehouse", "reverse_etl_models"]
    assert "user_traits.sql" in out and "1 fail" in out


def test_check_only_an_unknown_name_exits_2_listing_the_checks(ops_env, clean_sandbox, capsys):
    code = main(["check", "--only", "warehouse,modles"])

    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert captured.err.startswith("error: no check named modles; the checks are: segment_write_key, ")
    assert all(name in captured.err for name in CHECK_NAMES)
    assert clean_sandbox.stats()["segmentapis"]["requests"] == 0


def test_a_missing_warehouse_fails_and_the_models_are_skipped(ops_env, tmp_path: Path):
    results = checks("warehouse", "reverse_etl_models", WAREHOUSE_URL=f"duckdb:///{tmp_path}/none.duckdb")

    # A setting to fix, not an outage: asking again would not make the file appear.
    assert (results["warehouse"].status, results["warehouse"].definitive) == (Status.FAIL, True)
    assert results["reverse_etl_models"].status is Status.SKIP


def test_the_sandbox_heap_secret_on_a_public_receiver_fails(ops_env):
    [result] = checks("heap_webhook_secret", HEAP_WEBHOOK_PUBLIC_URL="https://hooks.example.com").values()

    assert (result.status, result.definitive) == (Status.FAIL, True)
    assert "hooks.example.com" in result.detail and "HEAP_WEBHOOK_SECRET" in result.todo


def test_the_receivers_public_url_answers_healthz(ops_env, stop_in_background):
    receiver = start_receiver(WebhookConfig(home=ops_env, heap_secret="heap-live-5ecret"))
    try:
        results = checks("heap_webhook_secret", "heap_receiver", HEAP_WEBHOOK_PUBLIC_URL=receiver.heap_url,
                         HEAP_WEBHOOK_SECRET="heap-live-5ecret")
        wrong = checks("heap_receiver", HEAP_WEBHOOK_PUBLIC_URL=f"{receiver.url}/somewhere-else")
    finally:
        stop_in_background(receiver)  # only once the checks have asked it

    assert statuses(results) == {"heap_webhook_secret": Status.PASS, "heap_receiver": Status.PASS}
    assert (wrong["heap_receiver"].status, wrong["heap_receiver"].definitive) == (Status.FAIL, True)


def test_no_secret_value_reaches_the_table_whatever_fails(warehouse, clean_sandbox, monkeypatch):
    wrong = {"SEGMENT_WRITE_KEY": WRONG_WRITE_KEY, "SEGMENT_PUBLIC_API_TOKEN": "sgp_wrong_5ecret_token",
             "SPLUNK_HEC_TOKEN": "00000000-0000-4000-8000-5ec7e7000001",
             "PENDO_INTEGRATION_KEY": "pendo-5ecret-1",
             "HEAP_WEBHOOK_SECRET": "heap-5ecret-value-1",
             "ALERT_WEBHOOK_URL": f"{clean_sandbox.url}/slack/services/T0/B0/slack5ecretToken0001"}
    for name, value in wrong.items():
        monkeypatch.setenv(name, value)

    table = render_table(list(checks().values()))

    assert set(wrong) <= set(SECRET_NAMES)
    assert [value for value in wrong.values() if value in table] == [] and "5ecret" not in table


def sending_gate(**env: str) -> list[CheckResult]:
    """The gate in front of a send, with a 10-minute cache, under the test's environment plus `env`."""
    settings = load_settings({**os.environ, **env})
    return gate(sending_checks(settings), cache=cache_for(settings), max_age=600,
                secrets=secret_values(settings))


def test_a_cached_pass_on_the_sandbox_is_not_reused_once_the_tracking_url_goes_live(ops_env, clean_sandbox):
    assert {r.check: r.status for r in sending_gate()}["segment_write_key"] is Status.PASS

    # The sandbox's write key does not count with a live tracking host: the gate asks again and refuses.
    with pytest.raises(PreflightRefused) as refused:
        sending_gate(SEGMENT_TRACKING_URL="https://api.segment.io")

    [key] = [r for r in refused.value.refused if r.check == "segment_write_key"]
    assert key.detail == "SEGMENT_WRITE_KEY is not set"


def test_cached_answers_are_keyed_by_a_private_per_home_key_not_a_bare_hash_of_the_secrets(ops_env,
                                                                                         clean_sandbox):
    sending_gate()

    key_file = ops_env.joinpath(*FINGERPRINT_KEY_FILE)
    assert key_file.stat().st_mode & 0o777 == 0o600 and len(key_file.read_bytes()) == 32
    settings = load_settings()
    other_home = load_settings({**os.environ, "SEGMENT_OPS_HOME": str(ops_env.parent / "other_home")})
    mine = {c.name: c.fingerprint for c in sending_checks(settings)}
    assert mine == {c.name: c.fingerprint for c in sending_checks(settings)}  # stable within a home
    assert set(mine.values()).isdisjoint(c.fingerprint for c in sending_checks(other_home))


@pytest.mark.parametrize("sources", ["none", "without writeKeys", "with empty writeKeys"])
def test_a_token_that_sees_no_write_keys_leaves_the_key_unverified_and_never_refuses(ops_env, clean_sandbox,
                                                                                    serve, sources):
    # The sandbox's own Public API emulator, serving what a token without read access to sources sees.
    listed = {"none": [],
              "without writeKeys": [{k: v for k, v in s.items() if k != "writeKeys"}
                                    for s in workspace_sources(SANDBOX_SEGMENT_WRITE_KEY)],
              "with empty writeKeys": [s | {"writeKeys": []}
                                       for s in workspace_sources(SANDBOX_SEGMENT_WRITE_KEY)]}[sources]
    served = serve(public_api_listing(listed), "public api")

    [key] = checks("segment_write_key", SEGMENT_PUBLIC_API_URL=f"{served.url}/segmentapis",
                   SEGMENT_PUBLIC_API_TOKEN=SANDBOX_SEGMENT_PUBLIC_API_TOKEN).values()

    assert key.status is Status.WARN and not key.blocks_sending
    assert key.detail == f"cannot be verified: the token sees {len(listed)} source(s) and no write keys"
    assert key.todo == "give SEGMENT_PUBLIC_API_TOKEN read access to the workspace's sources"


def public_api_requests(sandbox) -> int:
    return sandbox.stats()["segmentapis"]["requests"]


def test_the_token_is_probed_on_every_endpoint_the_syncs_read_and_sources_are_listed_once(ops_env,
                                                                                         clean_sandbox):
    results = checks("segment_write_key", "segment_region", "segment_public_api")

    api = results["segment_public_api"]
    assert api.status is Status.PASS
    assert api.detail == ("the token reads GET /audit-events, GET /sources, GET /destinations, "
                          "GET /delivery-overview/successfully-received")
    assert public_api_requests(clean_sandbox) == 4  # GET /sources once for the three checks


def test_audit_events_are_probed_only_while_the_audit_trail_has_a_siem(ops_env, clean_sandbox):
    live = {"SEGMENT_PUBLIC_API_URL": f"{clean_sandbox.url}/segmentapis",
            "SEGMENT_PUBLIC_API_TOKEN": SANDBOX_SEGMENT_PUBLIC_API_TOKEN,
            "SEGMENT_TRACKING_URL": f"{clean_sandbox.url}/segment",
            "SEGMENT_WRITE_KEY": SANDBOX_SEGMENT_WRITE_KEY}

    [without] = checks("segment_public_api", **live).values()
    before = public_api_requests(clean_sandbox)
    siem = {"SIEM_JSONL_URL": "https://siem.example.com/ingest"}
    [with_siem] = checks("segment_public_api", **live, **siem).values()

    assert without.status is Status.PASS and "GET /audit-events" not in without.detail
    assert "/audit-events not probed: the audit trail has no SIEM to forward to" in without.detail
    assert before == 3
    assert with_siem.status is Status.PASS
    assert with_siem.detail.startswith("the token reads GET /audit-events")
    assert public_api_requests(clean_sandbox) - before == 4


def serve_webhook(serve, status: int, body: str) -> str:
    """A real HTTP endpoint that answers every POST to a webhook-shaped path with `status` and `body`."""

    async def answer(request):
        return PlainTextResponse(body, status)

    return serve(Starlette(routes=[Route("/services/{team}/{bot}/{token}", answer, methods=["POST"])]),
                 "not slack").url


def test_an_endpoint_that_refuses_an_empty_message_unlike_slack_is_a_warning_naming_the_status_only(
        ops_env, serve):
    base = serve_webhook(serve, 400, "Bad Request: /services/T0/B0/hook5ecretPath0001")
    url = base.replace("http://", "http://ops:pa55word@") + "/services/T0/B0/hook5ecretPath0001"

    [result] = checks("slack_webhook", ALERT_WEBHOOK_URL=url).values()

    assert result.status is Status.WARN and not result.blocks_sending
    assert result.detail.startswith(f"{base.removeprefix('http://')} answered 400 to an empty message")
    shown = result.detail + result.todo
    assert "5ecret" not in shown and "pa55word" not in shown and "ops:" not in shown


def test_a_live_slack_webhook_passes_showing_its_host_and_port_only(ops_env, clean_sandbox):
    url = (clean_sandbox.url.replace("http://", "http://ops:pa55word@")
           + f"/slack/services/T0SANDBOX/B0SANDBOX/{SANDBOX_SLACK_WEBHOOK_TOKEN}")

    [result] = checks("slack_webhook", ALERT_WEBHOOK_URL=url).values()

    assert result.status is Status.PASS
    assert result.detail == (f"a live webhook at {clean_sandbox.url.removeprefix('http://')}: an empty "
                             "message was refused (no_text), nothing was posted")
    assert clean_sandbox.received("slack") == []


def test_the_profile_api_token_is_proved_by_reading_an_unknown_user(ops_env, clean_sandbox):
    [result] = checks("segment_profiles").values()

    assert result.status is Status.PASS
    where = clean_sandbox.url.removeprefix("http://")
    assert result.detail == f"the token reads the space's profiles at {where} (an unknown user answers 404)"


def test_a_wrong_profile_api_token_fails_naming_it(ops_env, clean_sandbox):
    [result] = checks("segment_profiles", SEGMENT_PROFILES_TOKEN="profiles-wrong-5ecret").values()

    assert (result.status, result.definitive) == (Status.FAIL, True)
    assert "refused SEGMENT_PROFILES_TOKEN" in result.detail and "401" in result.detail
    assert "SEGMENT_PROFILES_TOKEN" in result.todo and "5ecret" not in result.detail + result.todo


def test_without_the_profile_api_settings_read_back_is_off_and_said_so(ops_env, clean_sandbox):
    live = {"SEGMENT_TRACKING_URL": f"{clean_sandbox.url}/segment",
            "SEGMENT_PROFILES_URL": "https://profiles.segment.com"}

    [unset] = checks("segment_profiles", **live).values()
    [off] = checks("segment_profiles", SEGMENT_PROFILES_SAMPLE_SIZE="0").values()

    assert unset.status is Status.WARN and unset.detail.startswith(
        "read-back is off: SEGMENT_PROFILES_SPACE_ID, SEGMENT_PROFILES_TOKEN not set")
    assert (off.status, off.detail) == (Status.SKIP, "read-back is off (SEGMENT_PROFILES_SAMPLE_SIZE=0)")
    assert clean_sandbox.stats()["profiles"]["requests"] == 0


def test_a_key_left_unverified_by_a_public_api_outage_is_verified_again_once_it_answers(ops_env,
                                                                                       clean_sandbox):
    clean_sandbox.set_faults("segmentapis", rate_503=1.0)
    during = {r.check: r for r in sending_gate()}
    clean_sandbox.clear_faults()

    after = {r.check: r for r in sending_gate()}

    assert during["segment_write_key"].status is Status.WARN and during["segment_write_key"].transient
    assert during["segment_region"].status is Status.SKIP and during["segment_region"].transient
    assert after["segment_write_key"].status is Status.PASS and after["segment_region"].status is Status.PASS


def test_a_missing_duckdb_warehouse_is_a_setting_to_fix_pointing_at_the_demos_home(ops_env):
    # After `segment-ops demo`, its warehouse is in the demo's own home, not where WAREHOUSE_URL's default
    # looks: the row says so, and retrying would not help, so it is no transient failure.
    (ops_env / "demo").mkdir()
    (ops_env / "demo" / "demo_warehouse.duckdb").write_bytes(b"")

    [result] = checks("warehouse").values()

    assert result.status is Status.FAIL and result.definitive and not result.transient
    assert f"{ops_env / 'demo_warehouse.duckdb'} does not exist" in result.detail
    assert f"SEGMENT_OPS_HOME={ops_env / 'demo'}" in result.todo


def test_a_misspelt_postgres_scheme_is_told_how_to_write_it(ops_env, monkeypatch):
    [result] = checks("warehouse", WAREHOUSE_URL="postgres://user:pw@db.example.com/warehouse").values()

    assert result.status is Status.FAIL and result.definitive
    assert result.todo == "write WAREHOUSE_URL with postgresql:// instead of postgres://"
    assert "pw" not in result.detail


# --- Fullstory -------------------------------------------------------------------------------------------

LIVE_STREAM_TOKEN = "fs-stream-5ecret-0123456789abcdef"


def fullstory_requests(sandbox) -> int:
    return sandbox.stats()["fullstory"].get("requests", 0)


def test_the_fullstory_key_is_proved_by_reading_an_unknown_uid(ops_env, clean_sandbox):
    results = checks("fullstory_api", "fullstory_stream_token")

    assert statuses(results) == {"fullstory_api": Status.PASS, "fullstory_stream_token": Status.PASS}
    where = clean_sandbox.url.removeprefix("http://")
    assert results["fullstory_api"].detail == (f"the key reads users at {where} (GET /v2/users?uid= of an "
                                               "unknown user)")
    assert results["fullstory_stream_token"].detail == "the sandbox's token, on the sandbox"


def test_a_wrong_fullstory_key_fails_naming_it_and_never_showing_it(ops_env, clean_sandbox):
    [result] = checks("fullstory_api", FULLSTORY_API_KEY="na1.fullstory-wrong-5ecret").values()

    assert (result.status, result.definitive) == (Status.FAIL, True)
    assert "refused FULLSTORY_API_KEY" in result.detail and "401" in result.detail
    assert "FULLSTORY_API_KEY" in result.todo and "5ecret" not in result.detail + result.todo


def test_the_sandbox_fullstory_key_with_a_live_url_fails_without_asking(ops_env, clean_sandbox):
    unset = checks("fullstory_api", FULLSTORY_API_URL="https://api.fullstory.com")["fullstory_api"]
    published = checks("fullstory_api", FULLSTORY_API_URL="https://api.fullstory.com",
                       FULLSTORY_API_KEY=SANDBOX_FULLSTORY_API_KEY)["fullstory_api"]

    assert (unset.status, unset.detail) == (Status.FAIL, "FULLSTORY_API_KEY is not set")
    assert (published.status, published.definitive) == (Status.FAIL, True)
    assert published.detail.startswith("FULLSTORY_API_KEY is the sandbox's published key")
    assert fullstory_requests(clean_sandbox) == 0


def test_a_fullstory_key_that_may_not_read_users_fails_asking_for_an_admin_or_architect_key(ops_env, serve):
    async def forbidden(request):
        return JSONResponse({"message": "Forbidden", "code": "forbidden"}, 403)

    served = serve(Starlette(routes=[Route("/v2/users", forbidden)]), "fullstory 403")

    [result] = checks("fullstory_api", FULLSTORY_API_URL=served.url,
                      FULLSTORY_API_KEY="na1.standard-5ecret-key").values()

    assert (result.status, result.definitive) == (Status.FAIL, True)
    assert "403" in result.detail and "Admin or Architect" in result.todo
    assert "5ecret" not in result.detail + result.todo


def test_fullstory_is_skipped_when_a_live_deployment_does_not_sync_it(ops_env, clean_sandbox):
    results = checks("fullstory_api", "fullstory_stream_token", PENDO_API_URL=f"{clean_sandbox.url}/pendo")

    assert statuses(results) == {"fullstory_api": Status.SKIP, "fullstory_stream_token": Status.SKIP}


def test_a_deployment_that_only_receives_streams_has_its_token_checked(ops_env, clean_sandbox):
    # Streams need no API key: a live deployment that sets the token (and no FULLSTORY_API_URL) is checked.
    live = {"PENDO_API_URL": f"{clean_sandbox.url}/pendo"}
    published = checks("fullstory_stream_token", FULLSTORY_STREAM_TOKEN=SANDBOX_FULLSTORY_STREAM_TOKEN,
                       **live)
    strong = checks("fullstory_stream_token", FULLSTORY_STREAM_TOKEN=LIVE_STREAM_TOKEN, **live)

    assert published["fullstory_stream_token"].status == Status.FAIL
    assert "the sandbox's published token on a live deployment" in published["fullstory_stream_token"].detail
    assert statuses(strong) == {"fullstory_stream_token": Status.PASS}
    assert statuses(checks("fullstory_api", FULLSTORY_STREAM_TOKEN=LIVE_STREAM_TOKEN, **live)) == {
        "fullstory_api": Status.SKIP}


@pytest.mark.parametrize(("env", "expected"), [
    ({}, "FULLSTORY_STREAM_TOKEN is not set"),
    ({"FULLSTORY_STREAM_TOKEN": SANDBOX_FULLSTORY_STREAM_TOKEN},
     "FULLSTORY_STREAM_TOKEN is the sandbox's published token"),
    ({"FULLSTORY_STREAM_TOKEN": LIVE_STREAM_TOKEN,
      "FULLSTORY_STREAM_PREVIOUS_TOKENS": f"{LIVE_STREAM_TOKEN}-old, {SANDBOX_FULLSTORY_STREAM_TOKEN}"},
     "FULLSTORY_STREAM_PREVIOUS_TOKENS[1] is the sandbox's published token"),
    ({"FULLSTORY_STREAM_TOKEN": "short-5ecret"}, "FULLSTORY_STREAM_TOKEN is shorter than 24 characters"),
])
def test_a_stream_token_anyone_could_know_or_guess_fails_with_a_live_fullstory(ops_env, env, expected):
    [result] = checks("fullstory_stream_token", FULLSTORY_API_URL="https://api.fullstory.com", **env).values()

    assert (result.status, result.definitive) == (Status.FAIL, True)
    assert result.detail.startswith(expected) and "FULLSTORY_STREAM_TOKEN" in result.todo
    assert "5ecret" not in result.detail + result.todo


def test_a_live_stream_token_passes_without_being_shown(ops_env):
    [result] = checks("fullstory_stream_token", FULLSTORY_API_URL="https://api.fullstory.com",
                      FULLSTORY_STREAM_TOKEN=LIVE_STREAM_TOKEN,
                      FULLSTORY_STREAM_PREVIOUS_TOKENS=f"{LIVE_STREAM_TOKEN}-old").values()

    assert result.status is Status.PASS
    assert result.detail == "set, at least 24 characters; 1 previous token(s) still accepted"
    assert "5ecret" not in render_table([result])
