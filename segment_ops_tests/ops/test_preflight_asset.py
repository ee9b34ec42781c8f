"""The asset `ops/preflight`: every preflight check as an asset check, red when a credential breaks."""

from __future__ import annotations

import dagster as dg
import pytest

from segment_ops.engine.preflight import CheckResult, Status
from segment_ops.preflight import CHECK_NAMES, RESULT_COLUMNS, result_rows
from segment_ops.syncs.ops.preflight import DESTINATIONS_CHECK, PREFLIGHT_KEY, ops_preflight


def evaluations(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations() if e.asset_key == PREFLIGHT_KEY}


def test_every_check_passes_on_the_sandbox_defaults(warehouse, clean_sandbox):
    result = dg.materialize([ops_preflight])

    checks = evaluations(result)
    assert result.success and set(checks) == {*CHECK_NAMES, DESTINATIONS_CHECK}
    assert all(check.passed for check in checks.values())
    [materialization] = result.asset_materializations_for_node("ops__preflight")
    assert materialization.metadata["fail"].value == 0


def test_a_broken_hec_token_turns_its_check_red_with_severity_error(warehouse, clean_sandbox, monkeypatch):
    monkeypatch.setenv("SPLUNK_HEC_TOKEN", "00000000-0000-4000-8000-00000000dead")

    checks = evaluations(dg.materialize([ops_preflight]))

    assert not checks["splunk_hec"].passed and checks["splunk_hec"].severity is dg.AssetCheckSeverity.ERROR
    assert checks["splunk_hec"].metadata["settings"].value == "SPLUNK_HEC_URL, SPLUNK_HEC_TOKEN"
    assert checks["segment_write_key"].passed and checks["pendo_key"].passed


@pytest.mark.slow
def test_the_results_table_has_one_row_per_check_in_the_tables_columns(warehouse, clean_sandbox, monkeypatch):
    monkeypatch.setenv("SPLUNK_HEC_TOKEN", "00000000-0000-4000-8000-00000000dead")

    result = dg.materialize([ops_preflight])

    [materialization] = result.asset_materializations_for_node("ops__preflight")
    lines = materialization.metadata["checks"].value.splitlines()
    assert lines[0] == "| " + " | ".join(RESULT_COLUMNS) + " |" and len(lines) == 2 + len(CHECK_NAMES)
    [hec] = [line for line in lines if line.startswith("| splunk_hec |")]
    assert hec.startswith("| splunk_hec | SPLUNK_HEC_URL, SPLUNK_HEC_TOKEN | FAIL (auth/config): HEC refused")


def test_result_rows_are_check_settings_result_and_what_to_do():
    failed = CheckResult("splunk_hec", ("SPLUNK_HEC_URL", "SPLUNK_HEC_TOKEN"), Status.FAIL, "HEC refused",
                         "copy the token", definitive=True)
    skipped = CheckResult("heap_receiver", ("HEAP_WEBHOOK_PUBLIC_URL",), Status.SKIP, "not set")

    assert result_rows([failed, skipped]) == [
        ("splunk_hec", "SPLUNK_HEC_URL, SPLUNK_HEC_TOKEN", "FAIL (auth/config): HEC refused",
         "copy the token"),
        ("heap_receiver", "HEAP_WEBHOOK_PUBLIC_URL", "SKIP: not set", "")]
