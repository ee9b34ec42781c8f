"""What every sync's Dagster definitions share: the owner of their assets, the preflight gate in front of
every send to Segment (with the run config that overrides it), and the warning filter below."""

import warnings

import dagster as dg
from pydantic import Field

from segment_ops.engine.preflight import PreflightRefused, Status, describe
from segment_ops.preflight import RESULT_COLUMNS, result_rows
from segment_ops.resources import PreflightResource, SegmentTrackingResource
from segment_ops.syncs.metadata import markdown_table

OWNER = "team:data-platform"

# `backfill_policy` is marked beta in Dagster 1.13 yet is the documented way to run a range of partitions in
# one run (audit-trail and Pendo backfills); its warning would print on every load of the code location.
warnings.filterwarnings("ignore", message="Parameter `backfill_policy`", category=dg.BetaWarning)


class SendConfig(dg.Config):
    """Run config every sync that sends to Segment has."""

    skip_preflight: bool = Field(default=False, description="Send without the preflight gate: the write key "
                                                            "is not checked against the workspace's sources.")


def preflight_gate(context: dg.AssetExecutionContext, preflight: PreflightResource,
                   segment: SegmentTrackingResource, *, skip: bool, dry_run: bool = False) -> None:
    """Refuse to start a send when a preflight check failed definitively: a write key no enabled source holds,
    or a tracking host of the other region, to which Segment answers 200 and drops everything. Warnings and
    transient failures (the Public API down) are logged and never block; a dry run sends nothing and is not
    gated; `skip` (run config `skip_preflight`) sends anyway."""
    if dry_run:
        return
    if skip:
        context.log.warning("preflight skipped (run config skip_preflight): the write key and the tracking "
                            "host's region are not verified before sending")
        return
    try:
        results = preflight.check_sending(segment)
    except PreflightRefused as exc:
        table = markdown_table(RESULT_COLUMNS, result_rows(exc.results))
        raise dg.Failure(description=refused_message(exc, cache_seconds=preflight.cache_seconds),
                         metadata={"preflight": dg.MetadataValue.md(table)}) from None
    for result in results:
        if result.status in (Status.WARN, Status.FAIL):
            context.log.warning(f"preflight {result.check}: {describe(result)} (sending anyway)")


def refused_message(exc: PreflightRefused, *, cache_seconds: float) -> str:
    """What a refused run says: why, that nothing was sent, and how the cached refusal is refreshed (a changed
    setting is checked anew at once; a fix made in Segment only once the cached answer is refreshed)."""
    return (f"{exc}. Nothing was sent. Fix the setting (`segment-ops check` shows every check); a changed "
            "setting is checked anew at once. A fix made in Segment (a source enabled, a write key added) "
            "counts once the cached answer is refreshed: `segment-ops check` or materializing ops/preflight "
            f"refreshes it, else it is reused for up to {cache_seconds:g} s (PREFLIGHT_CACHE_SECONDS). Or "
            "run with skip_preflight: true to send anyway.")
