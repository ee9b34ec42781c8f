"""Preflight in Dagster: the asset `ops/preflight` runs every check `segment-ops check` runs, every 30
minutes, so a credential that breaks shows as a red asset check in the UI before a sync trips over it.

One asset check per preflight check (`segment_ops.preflight.CHECK_NAMES`): a failure is severity ERROR, a
warning fails with severity WARN, a pass or a skip passes (the skip's reason in its metadata). The run also
refreshes the cache the gate in front of every send reads (`PREFLIGHT_CACHE_SECONDS`). Settings come from
the run's environment, like the CLI's.
"""

import dagster as dg

from segment_ops.config import load_settings
from segment_ops.engine.preflight import CheckResult, Status, describe, run_checks
from segment_ops.preflight import (
    CHECK_NAMES,
    DESTINATION_CHECK,
    RESULT_COLUMNS,
    all_checks,
    cache_for,
    result_rows,
    secret_values,
)
from segment_ops.syncs.metadata import markdown_table
from segment_ops.syncs.shared import OWNER

PREFLIGHT_KEY = dg.AssetKey(["ops", "preflight"])
# The asset check gathering the rows of the Segment destinations models name (`preflight.destination_check`).
DESTINATIONS_CHECK = "segment_destinations"
GROUP = "operations"


@dg.asset(
    key=PREFLIGHT_KEY,
    group_name=GROUP,
    kinds={"segment", "splunk", "slack"},
    owners=[OWNER],
    code_version="1",
    description=(
        "Preflight of every configured vendor, through the vendors' own APIs and nothing sent: the Segment "
        "write key belongs to an enabled source of the workspace and its tracking host to the workspace's "
        "region; the Public API token reads what the syncs read; the Profile API token reads the Unify space "
        "read-back verifies; Splunk HEC is healthy and takes the token; "
        "the Pendo key answers and Pendo's days start at midnight in PENDO_TIMEZONE; the Heap webhook secret "
        "is not the sandbox's on a public receiver; the Slack webhook is live; the warehouse connects and "
        "every reverse-ETL model compiles. The same checks as `segment-ops check` (see the README, "
        "\"Preflight\")."),
    check_specs=[*(dg.AssetCheckSpec(name, asset=PREFLIGHT_KEY, description=f"Preflight check `{name}`.")
                   for name in CHECK_NAMES),
                 dg.AssetCheckSpec(DESTINATIONS_CHECK, asset=PREFLIGHT_KEY,
                                   description="The Segment destinations reverse-ETL models name of their "
                                               "own (`write_key_env:` / `tracking_url_env:`), each a "
                                               "`segment_destination:<models>` row of the table.")],
)
def ops_preflight(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    settings = load_settings()
    results = run_checks(all_checks(settings), cache=cache_for(settings), secrets=secret_values(settings))
    for result in results:
        if result.status in (Status.WARN, Status.FAIL):
            context.log.warning(f"preflight {result.check}: {describe(result)}")
    return dg.MaterializeResult(
        metadata={
            **{status.value: sum(r.status is status for r in results) for status in Status},
            "checks": dg.MetadataValue.md(markdown_table(RESULT_COLUMNS, result_rows(results))),
        },
        check_results=[*(_check_result(r) for r in results if not _destination_row(r)),
                       _destinations_result([r for r in results if _destination_row(r)])],
    )


def _destination_row(result: CheckResult) -> bool:
    return result.check.startswith(f"{DESTINATION_CHECK}:")


def _destinations_result(rows: list[CheckResult]) -> dg.AssetCheckResult:
    """One asset check for every model destination's row (their number changes with the model files)."""
    if not rows:
        return dg.AssetCheckResult(check_name=DESTINATIONS_CHECK, passed=True,
                                   description="no reverse-ETL model names a Segment destination of its own",
                                   metadata={"destinations": 0})
    failed = any(r.status is Status.FAIL for r in rows)
    return dg.AssetCheckResult(
        check_name=DESTINATIONS_CHECK,
        passed=all(r.status in (Status.PASS, Status.SKIP) for r in rows),
        severity=dg.AssetCheckSeverity.ERROR if failed else dg.AssetCheckSeverity.WARN,
        description="; ".join(f"{r.check}: {describe(r)}" for r in rows),
        metadata={"destinations": len(rows),
                  "checks": dg.MetadataValue.md(markdown_table(RESULT_COLUMNS, result_rows(rows)))},
    )


def _check_result(result: CheckResult) -> dg.AssetCheckResult:
    severity = dg.AssetCheckSeverity.ERROR if result.status is Status.FAIL else dg.AssetCheckSeverity.WARN
    return dg.AssetCheckResult(
        check_name=result.check,
        passed=result.status in (Status.PASS, Status.SKIP),
        severity=severity,
        description=f"{describe(result)}" + (f" -- {result.todo}" if result.todo else ""),
        metadata={"status": result.status.value, "settings": ", ".join(result.settings),
                  "definitive": result.definitive, "what_to_do": result.todo or "-"},
    )


preflight_job = dg.define_asset_job(
    "preflight_job", selection=[PREFLIGHT_KEY],
    description="Check every configured vendor's credentials and settings (`segment-ops check`).")

preflight_schedule = dg.ScheduleDefinition(
    name="preflight_schedule",
    job=preflight_job,
    cron_schedule="*/30 * * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Every 30 minutes, runs the preflight checks so a broken credential shows red in the UI. On "
                "by default: it sends nothing (one HEC probe event when PREFLIGHT_HEC_PROBE_EVENT is on).",
)

defs = dg.Definitions(assets=[ops_preflight], jobs=[preflight_job], schedules=[preflight_schedule])
