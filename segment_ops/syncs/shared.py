"""What every sync's Dagster definitions share: the owner of their assets, the failure a run states, the
preflight gate in front of every send to Segment (with the run config that overrides it), and the warning
filter below."""

import warnings
from collections.abc import Sequence

import dagster as dg
from pydantic import Field

from segment_ops.clients.base import RetryPolicy, VendorError
from segment_ops.clients.slack import WebhookUrlError
from segment_ops.config import load_settings
from segment_ops.engine import store
from segment_ops.engine.alerts import governance_message, redact_secrets
from segment_ops.engine.governance import Governance, Governed
from segment_ops.engine.guard import GuardLimits, PlanHeld, Verdict
from segment_ops.engine.pii import PiiPolicy
from segment_ops.engine.preflight import PreflightRefused, Status, describe
from segment_ops.engine.regulations import Regulated, load_regulated
from segment_ops.engine.tracking_plan import TrackingPlanError, check_policy, load_for_source
from segment_ops.preflight import RESULT_COLUMNS, SegmentDestination, result_rows
from segment_ops.resources import (
    AlertsResource,
    PreflightResource,
    SegmentPublicApiResource,
    SegmentTrackingResource,
    StagingResource,
    plan_guard_limits,
)
from segment_ops.syncs.metadata import markdown_table, payload_samples

OWNER = "team:data-platform"

# `backfill_policy` is marked beta in Dagster 1.13 yet is the documented way to run a range of partitions in
# one run (audit-trail and Pendo backfills); its warning would print on every load of the code location.
warnings.filterwarnings("ignore", message="Parameter `backfill_policy`", category=dg.BetaWarning)


class SyncFailure(dg.Failure):
    """A run of a sync failing for a reason it states itself (`description`, metadata as `dg.Failure`'s).

    Dagster shows a step's error as Python formats an exception, `<module>.<class>: <message>`, so a plain
    `dg.Failure` reads "dagster._core.definitions.events.Failure: <message>" in the UI. This class formats as
    `segment_ops: <message>`: the module Python leaves out of that line is `builtins` (as for ValueError), and
    the name is the product's. Dagster handles it as the `dg.Failure` it is (a step reports its error as
    Dagster's serialized error info); pickled, it is rebuilt by `_sync_failure`, since its class cannot be
    found under the name it shows.
    """

    def __reduce__(self) -> tuple:
        return _sync_failure, (self.description, self.metadata, self.allow_retries)


def _sync_failure(description: str | None, metadata: dict, allow_retries: bool) -> SyncFailure:
    return SyncFailure(description=description, metadata=metadata, allow_retries=allow_retries)


SyncFailure.__module__ = "builtins"
SyncFailure.__qualname__ = SyncFailure.__name__ = "segment_ops"


class SendConfig(dg.Config):
    """Run config every sync that sends to Segment has."""

    skip_preflight: bool = Field(default=False, description="Send without the preflight gate: the write key "
                                                            "is not checked against the workspace's sources.")


class DiffSendConfig(SendConfig):
    """Run config of every diff sync (reverse-ETL models, Pendo groups, Heap audiences): the plan guard's
    approval."""

    approve_plan: str = Field(default="", description="Send a plan the plan guard held: its fingerprint, as "
                                                      "the held run's failure gives it. Only that exact plan "
                                                      "is sent; if the data changed since, the run holds the "
                                                      "new plan and names its fingerprint.")


def guard_limits() -> GuardLimits:
    """The plan guard's limits (PLAN_GUARD_* settings); a bad value fails the run naming the variable."""
    try:
        return plan_guard_limits()
    except ValueError as exc:
        raise SyncFailure(description=str(exc)) from None


def regulated_now(staging: StagingResource) -> Regulated:
    """The users no sync may send to, as the regulations sync recorded them (`engine.regulations`), read
    once per run before anything is planned. When they cannot be read the run fails, sending nothing: not
    knowing who asked to be forgotten is no reason to send to them."""
    try:
        return load_regulated(staging.home)
    except store.StagingLockedError as exc:
        raise SyncFailure(description=f"the regulations could not be read, so nothing was sent: {exc}; the "
                                      "segment/regulations run holding them ends within minutes, run again "
                                      "then") from None


# Reading the tracking plan before a send retries briefly: a Public API that is down costs a `warn` run
# seconds (it sends unchecked and says so), not the minutes of a delivery's retry budget.
TRACKING_PLAN_RETRY = RetryPolicy(max_attempts=3, max_elapsed=15.0)


def tracking_plan_policy(declared: str | None = None) -> str:
    """The tracking-plan policy of a sync: what it declares (a model's header), else TRACKING_PLAN_POLICY."""
    value = (declared or load_settings()["TRACKING_PLAN_POLICY"] or "warn").strip().lower()
    try:
        return check_policy(value)
    except ValueError as exc:
        raise SyncFailure(description=f"TRACKING_PLAN_POLICY: {exc}") from None


def governance_for(context: dg.AssetExecutionContext, staging: StagingResource,
                   segment: SegmentTrackingResource, public_api: SegmentPublicApiResource, *, policy: str,
                   dry_run: bool = False, pii: PiiPolicy | None = None) -> Governance:
    """What a sending run honours (`engine.governance`): the regulations, and the tracking plan connected to
    the source of the write key it sends with, under `policy`. A plan that cannot be read (the Public API
    down, a rule that does not compile, no source holding the key) stops a `block` run before anything is
    sent; a `warn` run logs why and sends unchecked. `pii`: the sync's PII policy, applied on every run (the
    default changes nothing and says so in the metadata)."""
    regulated = regulated_now(staging)
    if dry_run or policy == "off":
        return Governance(regulated=regulated, pii=pii)
    try:
        with public_api.get_client(retry=TRACKING_PLAN_RETRY) as client:
            plan = load_for_source(client, write_key=segment.write_key)
    except (VendorError, TrackingPlanError) as exc:
        why = redact_secrets(str(exc))
        if policy == "block":
            raise SyncFailure(description=f"the tracking plan could not be read, so nothing was sent (policy "
                                          f"block): {why}") from None
        context.log.warning(f"tracking plan not checked (policy warn, sending unchecked): {why}")
        return Governance(regulated=regulated, pii=pii, tracking_unchecked=why)
    if plan is None:
        context.log.info("no tracking plan is connected to the destination source: calls are not checked")
        return Governance(regulated=regulated, pii=pii)
    return Governance(regulated=regulated, tracking_plan=plan, tracking_policy=policy, pii=pii)


def governance_metadata(governed: Governed | None) -> dict:
    """What governance did (regulations honoured, the tracking plan's check), for every sending run."""
    if governed is None:
        return {}
    metadata = governed.honoured.as_metadata() if governed.honoured is not None else {}
    if (report := governed.tracking) is not None:
        metadata |= report.as_metadata()
        metadata["tracking_plan_violations"] = dg.MetadataValue.md(report.violations_markdown())
    if governed.pii is not None:
        metadata |= governed.pii.as_metadata()
        metadata["pii_columns"] = dg.MetadataValue.md(governed.pii.markdown())
    return metadata


def tracking_plan_check(governed: Governed | None, *,
                        asset_key: dg.AssetKey | None = None) -> dg.AssetCheckResult:
    """The `tracking_plan` check: no planned call broke the destination source's tracking plan."""
    report = governed.tracking if governed is not None else None
    if report is None and governed is not None and governed.tracking_unchecked:
        return dg.AssetCheckResult(check_name="tracking_plan", asset_key=asset_key, passed=False,
                                   severity=dg.AssetCheckSeverity.WARN,
                                   description=f"not checked: the tracking plan could not be read (policy "
                                               f"warn, sent unchecked): {governed.tracking_unchecked}")
    if report is None:
        return dg.AssetCheckResult(check_name="tracking_plan", asset_key=asset_key, passed=True,
                                   description="not checked: no tracking plan is connected, the policy is "
                                               "off, or nothing was sent")
    return dg.AssetCheckResult(
        check_name="tracking_plan", asset_key=asset_key, passed=report.passed,
        severity=dg.AssetCheckSeverity.WARN,
        description=None if report.passed else report.summary(),
        metadata={"checked": report.checked, "violating": report.violating, "blocked": report.blocked,
                  "policy": report.policy, "unplanned": report.unplanned})


def tracking_plan_check_spec(key: dg.AssetKey) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec("tracking_plan", asset=key,
                             description="No call planned in the run breaks the tracking plan connected to "
                                         "the destination source (TRACKING_PLAN_POLICY: warn sends them, "
                                         "block rejects them).")


def alert_violations(context: dg.AssetExecutionContext, alerts: AlertsResource,
                     governed: Governed | None) -> None:
    """Post the run's tracking-plan violations to Slack (sync, event, field and rule; never a value)."""
    report = governed.tracking if governed is not None else None
    if report is None or report.passed:
        return
    try:
        with alerts.get_client() as client:
            client.post_message(governance_message(f"tracking plan violations in {report.sync}",
                                                   [report.summary()], alerts.run_url(context.run.run_id)))
    except (VendorError, WebhookUrlError) as exc:
        context.log.error(f"tracking-plan alert not sent: {redact_secrets(str(exc))}")


def plan_metadata(verdict: Verdict | None) -> dict:
    """The plan guard's figures and fingerprint, for every guarded run's metadata (dry runs too)."""
    return verdict.as_metadata() if verdict is not None else {}


def plan_held_failure(exc: PlanHeld, metadata: dict, *, label: str = "") -> SyncFailure:
    """The failure of a held plan: its first line says what tripped, with the numbers, the fingerprint and
    the approval (the line a failure alert carries); then samples and the run config that approves it."""
    lines = [f"{label}: {exc}" if label else str(exc), ""]
    if exc.samples:
        lines += ["Samples:", *(f"- {sample[:300]}" for sample in exc.samples[:5]), ""]
    lines += ["Nothing was sent; the plan's messages are held in the ledger. To send exactly this plan, "
              "launch the asset again with this run config:", f"  approve_plan: {exc.fingerprint}",
              "If the data changed since, the new plan is held in turn with its own fingerprint."]
    figures = exc.verdict.figures
    return SyncFailure(description="\n".join(lines), metadata={
        **metadata, **exc.verdict.as_metadata(),
        "approve_with": dg.MetadataValue.md(f"```yaml\napprove_plan: {exc.fingerprint}\n```"),
        "held_samples": payload_samples(figures.removal_samples or figures.change_samples)})


def preflight_gate(context: dg.AssetExecutionContext, preflight: PreflightResource,
                   segment: SegmentTrackingResource, *, skip: bool, dry_run: bool = False,
                   destination: SegmentDestination | None = None, used_by: Sequence[str] = ()) -> None:
    """Refuse to start a send when a preflight check failed definitively: a write key no enabled source holds,
    or a tracking host of the other region, to which Segment answers 200 and drops everything. Warnings and
    transient failures (the Public API down) are logged and never block; a dry run sends nothing and is not
    gated; `skip` (run config `skip_preflight`) sends anyway. A reverse-ETL model with a `destination` of its
    own (`segment` already resolved to it) is gated on that destination's check, named after `used_by`."""
    if dry_run:
        return
    if skip:
        context.log.warning("preflight skipped (run config skip_preflight): the write key and the tracking "
                            "host's region are not verified before sending")
        return
    try:
        results = preflight.check_sending(segment, destination, used_by)
    except PreflightRefused as exc:
        table = markdown_table(RESULT_COLUMNS, result_rows(exc.results))
        raise SyncFailure(description=refused_message(exc, cache_seconds=preflight.cache_seconds),
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
