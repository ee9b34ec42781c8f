"""The `landed_in_segment` asset check, for every asset that sends identify calls (reverse-ETL models that
`call: identify`, but not those with a Segment destination of their own; Heap audiences): did what Segment
accepted land in its profiles?

`read_back_defs` gives a sync one check per asset, a job of those checks and a sensor. A check reads back a
sample of the identify calls its asset delivered at least SEGMENT_PROFILES_DELAY_SECONDS ago (the oldest
unsampled run's, up to SEGMENT_PROFILES_SAMPLE_SIZE) through Segment's Profile API, compares each profile's
traits with the traits sent and records the proof in the ledger (`engine.verification`). So it verifies the
*previous* runs: in the same run as its asset, after it, or in a later run the sensor starts once the delay
has passed. It fails when the share of missing profiles passes SEGMENT_PROFILES_WARN_MISSING_SHARE (WARN)
or SEGMENT_PROFILES_ERROR_MISSING_SHARE (ERROR); a differing trait is listed, not failed (another source
may have set it since). Skipped, saying why in the run's log, while the Profile API is not configured or
does not answer, or nothing is due: never passed without reading anything back.
"""


import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import dagster as dg
import orjson

from segment_ops.clients.base import VendorAuthError, VendorError
from segment_ops.engine import store
from segment_ops.engine.ledger import Ledger
from segment_ops.engine.verification import ReadBackReport, draw_sample, read_back
from segment_ops.resources import SegmentProfilesResource, StagingResource
from segment_ops.syncs.metadata import markdown_table

CHECK_NAME = "landed_in_segment"
DESCRIPTION = (
    "A sample of the identify calls this asset delivered (SEGMENT_PROFILES_SAMPLE_SIZE per run, read "
    "SEGMENT_PROFILES_DELAY_SECONDS after delivery) is read back through Segment's Profile API: each profile "
    "must exist with the traits sent. Fails on missing profiles (the missing share passes "
    "SEGMENT_PROFILES_WARN_MISSING_SHARE: WARN, SEGMENT_PROFILES_ERROR_MISSING_SHARE: ERROR); a trait that "
    "differs is listed, not failed. Skipped while the Profile API is not configured or does not answer.")
# A sensor tick opens each staging file read-only for a moment; a file a run holds is looked at next tick.
LOCK_WAIT_SECONDS = 1.0
# The sensor asks again for a sample still due (its read-back failed, or found the Profile API down) once per
# this many seconds at least (or per SEGMENT_PROFILES_DELAY_SECONDS, when longer): Dagster starts a run_key
# only once, so the key carries the time bucket of the attempt.
MIN_RETRY_SECONDS = 60.0


@dataclass(frozen=True)
class ReadBackTarget:
    """An asset whose delivered identify calls are read back, and the ledger (sync, staging file) holding
    them."""

    asset_key: dg.AssetKey
    sync: str

    @property
    def check_key(self) -> dg.AssetCheckKey:
        return dg.AssetCheckKey(self.asset_key, CHECK_NAME)

    @property
    def op_name(self) -> str:
        return "__".join([*self.asset_key.path, CHECK_NAME])


def read_back_defs(name: str, targets: Sequence[ReadBackTarget]) -> dg.Definitions:
    """The `landed_in_segment` check of each target, `<name>_read_back_job` running them, and
    `<name>_read_back_sensor` starting it for the targets with calls due for read-back."""
    if not targets:
        return dg.Definitions()
    checks = [landed_in_segment_check(target) for target in targets]
    job = dg.define_asset_job(
        f"{name}_read_back_job", selection=dg.AssetSelection.checks(*(t.check_key for t in targets)),
        description="Read back a sample of what the assets delivered (the `landed_in_segment` checks).")
    return dg.Definitions(asset_checks=checks, jobs=[job], sensors=[read_back_sensor(name, targets, job)])


def landed_in_segment_check(target: ReadBackTarget) -> dg.AssetChecksDefinition:
    """The check of one target; it runs in the target's staging pool, as its asset does."""

    # can_subset: a check that yields no result (skipped, with the reason logged) is Dagster's "skipped".
    @dg.multi_asset_check(
        name=target.op_name,
        specs=[dg.AssetCheckSpec(CHECK_NAME, asset=target.asset_key, description=DESCRIPTION)],
        can_subset=True,
        pool=f"staging_{target.sync}",
    )
    def landed_in_segment(context: dg.AssetCheckExecutionContext, staging: StagingResource,
                          segment_profiles: SegmentProfilesResource) -> Iterator[dg.AssetCheckResult]:
        result = check_landed(context.log, target, staging, segment_profiles)
        if result is not None:
            yield result

    return landed_in_segment


def check_landed(log: Any, target: ReadBackTarget, staging: StagingResource,
                 profiles: SegmentProfilesResource) -> dg.AssetCheckResult | None:
    """Read back what is due and judge it; None (skipped, the reason logged) when nothing can be read back."""
    label = f"{CHECK_NAME} of {target.asset_key.to_user_string()}"
    if reason := profiles.skip_reason():
        log.warning(f"{label} skipped: {reason}")
        return None
    path = staging.staging_db(target.sync)
    if not store.has_state(path):
        log.info(f"{label} skipped: nothing delivered yet")
        return None
    delay = timedelta(seconds=profiles.delay_seconds)
    with store.staging(path) as con:  # held only to draw the sample: never while the Profile API answers
        sample = draw_sample(Ledger(con), target.sync, sample_size=profiles.sample_size, delay=delay)
    if not sample.messages:
        log.info(f"{label} skipped: no identify call delivered at least {delay.total_seconds():g} s ago "
                 f"awaits read-back ({sample.too_recent} delivered more recently are left to a later check)")
        return None
    try:
        with profiles.get_client() as client:
            report, results = read_back(target.sync, sample, client, delay=delay)
    except VendorAuthError as exc:
        return dg.AssetCheckResult(
            check_name=CHECK_NAME, asset_key=target.asset_key, passed=False,
            severity=dg.AssetCheckSeverity.ERROR,
            description=f"The Profile API refused SEGMENT_PROFILES_TOKEN: nothing could be read back ({exc})",
            metadata={"error": str(exc)})
    except VendorError as exc:  # an outage proves nothing either way: the run that delivered stays green
        log.warning(f"{label} skipped: the Profile API did not answer ({exc}); nothing is recorded, so the "
                    f"same sample is read back next time")
        return None
    with store.staging(path) as con:
        Ledger(con).record_read_backs(target.sync, results)
    return landed_result(target, report, warn_share=profiles.warn_missing_share,
                         error_share=profiles.error_missing_share)


def landed_result(target: ReadBackTarget, report: ReadBackReport, *, warn_share: float,
                  error_share: float) -> dg.AssetCheckResult:
    """The check's verdict on one read-back: passed while missing profiles stay within `warn_share`."""
    share = report.missing_share
    severity = dg.AssetCheckSeverity.ERROR if share > error_share else dg.AssetCheckSeverity.WARN
    summary = (f"{report.sample_size} delivered identify call(s) read back: {report.profiles_found} "
               f"profile(s) found, {report.profiles_missing} missing; {report.traits_matching} of "
               f"{report.traits_compared} trait(s) as sent; {report.verified} verified")
    metadata: dict = {
        "sample_size": report.sample_size,
        "profiles_found": report.profiles_found,
        "profiles_missing": report.profiles_missing,
        "missing_share": round(share, 4),
        "traits_compared": report.traits_compared,
        "traits_matching": report.traits_matching,
        "messages_verified": report.verified,
        "messages_mismatched": report.mismatched,
        "runs_sampled": report.runs_sampled,
        "runs_waiting": report.runs_waiting,
        "delivered_too_recently": report.too_recent,
        "delay_seconds": report.delay_seconds,
        "warn_missing_share": warn_share,
        "error_missing_share": error_share,
        "read_back_seconds": round(report.seconds, 3),
    }
    if report.mismatches:
        metadata["first_mismatches"] = dg.MetadataValue.md(markdown_table(
            ["key", "trait", "sent", "found"],
            [(m.record_key, m.trait, _json(m.sent), _json(m.found)) for m in report.mismatches]))
    if report.missing_profiles:
        metadata["first_missing_profiles"] = dg.MetadataValue.md(markdown_table(
            ["key", "profile"], report.missing_profiles))
    return dg.AssetCheckResult(check_name=CHECK_NAME, asset_key=target.asset_key, passed=share <= warn_share,
                               severity=severity, description=summary, metadata=metadata)


def read_back_sensor(name: str, targets: Sequence[ReadBackTarget], job: object) -> dg.SensorDefinition:
    @dg.sensor(
        name=f"{name}_read_back_sensor",
        job=job,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Starts the `landed_in_segment` check of each asset with identify calls delivered at "
                    "least SEGMENT_PROFILES_DELAY_SECONDS ago and not read back yet. On by default: it only "
                    "reads (Segment's Profile API) and records the proof in the sync's ledger.",
    )
    def read_back_sensor(context: dg.SensorEvaluationContext, staging: StagingResource,
                         segment_profiles: SegmentProfilesResource) -> dg.SensorResult:
        if reason := segment_profiles.skip_reason():
            return dg.SensorResult(skip_reason=dg.SkipReason(reason))
        delay = timedelta(seconds=segment_profiles.delay_seconds)
        retry_seconds = max(segment_profiles.delay_seconds, MIN_RETRY_SECONDS)
        requests, busy = [], []
        for target in targets:
            path = staging.staging_db(target.sync)
            if not store.has_state(path):
                continue
            try:
                con = store.connect(path, read_only=True, threads=1, lock_timeout=LOCK_WAIT_SECONDS)
            except store.StagingLockedError:
                busy.append(path.name)
                continue
            try:
                sample = draw_sample(Ledger(con, create=False), target.sync, sample_size=1, delay=delay)
            finally:
                con.close()
            if sample.messages:  # keyed by the first message due and the attempt's time bucket
                key = read_back_run_key(target, sample.messages[0].seq, retry_seconds=retry_seconds)
                requests.append(dg.RunRequest(run_key=key, asset_selection=[],
                                              asset_check_keys=[target.check_key]))
        if requests:
            return dg.SensorResult(run_requests=requests)
        waiting = f"; busy (looked at next tick): {', '.join(busy)}" if busy else ""
        return dg.SensorResult(skip_reason=dg.SkipReason(
            f"no delivered identify call awaits read-back (delay {delay.total_seconds():g} s){waiting}"))

    return read_back_sensor


def read_back_run_key(target: ReadBackTarget, first_seq: int, *, retry_seconds: float,
                      now: float | None = None) -> str:
    """The run_key of a read-back of `target` whose first message due is `first_seq`: the same within one
    bucket of `retry_seconds` (a repeat of the same state starts nothing), another in the next bucket, so a
    read-back that failed, or recorded nothing, is asked for again instead of never."""
    bucket = int((time.time() if now is None else now) // retry_seconds)
    return f"{target.op_name}:{first_seq}:{bucket}"


def _json(value: object) -> str:
    return orjson.dumps(value).decode()
