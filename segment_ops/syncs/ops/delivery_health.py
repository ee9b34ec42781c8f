"""Delivery health: every hour, read every sync's ledger and flag the syncs that lose too many messages.

The asset `ops/delivery_health` (group `operations`) finds the staging DuckDB files under
`$SEGMENT_OPS_HOME/staging/` (replay, reverse_etl_<model>, audit_trail, heap, pendo, ... whatever exists:
nothing is hard-coded), and for each ledger sync in them counts, over the last DELIVERY_HEALTH_WINDOW_HOURS
(default 24):

- delivered: messages a destination acknowledged in the window;
- rejected: distinct (record key, reason) pairs written to the rejected table in the window (invalid input, or
  refused by the destination). Distinct, because the reverse-ETL diff rejects the same bad rows again on
  every run: four bad rows synced hourly are four rejections, not ninety-six;
- failed: messages not delivered, counted once each: the latest outcome, logged in the window, is "still
  pending after retries ran out"; or they are "stuck": still pending although planned before the window,
  or still awaiting the destination's confirmation (e.g. a HEC indexer ack) although sent before it; or
  they were planned and never attempted (the run stopped first, e.g. at a 401).

Accepted is not landed: beside "delivered" (what the destination accepted) the table shows, for the syncs
whose identify calls are read back from Segment's profiles (the `landed_in_segment` checks), how many
delivered messages were read back in the window, how many of those were verified (found as sent) and how
many profiles were missing. Read-back is a sample, so "verified" counts a sample, never every delivered
message; missing profiles fail `landed_in_segment`, not this check.

A sync with at least DELIVERY_HEALTH_MIN_MESSAGES (default 20) messages in the window whose (rejected +
failed) share exceeds DELIVERY_HEALTH_MAX_FAILED_SHARE (default 5%) is flagged: the asset check
`delivery_health` fails (severity ERROR: a sync losing that share of its messages needs a person) and one
Slack alert is posted, once per state change. An unhealthy sync is healthy again only below 0.8 x the
threshold (RECOVERY_FACTOR), so a share hovering at the threshold does not flap. The state of each sync is
kept in `$SEGMENT_OPS_HOME/ops/delivery_health_state.json`, so an unhealthy sync is not re-alerted every
hour; when it is healthy again a recovery message is posted. A sync that is not judged this run (fewer
messages than the minimum: "idle"; or its file is busy) keeps its stored state, and the check stays failed
while that state is UNHEALTHY.

Files are opened read-only (`engine.store.open_read_only`, waiting a few seconds for a lock); a file
a running sync holds locked is reported as "busy, not checked" (the check `all_ledgers_read`, WARN).

Health is measured from our own ledgers: what we sent and what the destinations answered. What Segment
itself counted (received, failed on ingest, delivered to each destination behind the source) is the
Delivery Overview asset's: see `syncs/ops/delivery_overview.py`.
"""

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import duckdb

from segment_ops.clients.base import VendorError
from segment_ops.engine.alerts import DeliveryHealthChange, delivery_health_message
from segment_ops.engine.ledger import Ledger, SyncFigures
from segment_ops.engine.store import open_read_only, staging_files  # also delivery_overview's
from segment_ops.resources import AlertsResource, DeliveryHealthResource, StagingResource
from segment_ops.syncs.metadata import markdown_table
from segment_ops.syncs.shared import OWNER

HEALTH_KEY = dg.AssetKey(["ops", "delivery_health"])
GROUP = "operations"
STATE_FILE = ("ops", "delivery_health_state.json")
LOCK_RETRY_SECONDS = 3.0
# An unhealthy sync recovers only below this share of the threshold (hysteresis: no flapping at the line).
RECOVERY_FACTOR = 0.8
HEALTHY, UNHEALTHY, IDLE, BUSY = "healthy", "UNHEALTHY", "idle", "busy, not checked"


# --- the work, without Dagster ----------------------------------------------------------------------------

@dataclass(frozen=True)
class SyncHealth:
    """One ledger sync's figures over the window, and the verdict."""

    sync: str
    file: str
    delivered: int = 0
    rejected: int = 0
    failed: int = 0
    status: str = IDLE
    read_back: int = 0  # delivered messages read back from Segment in the window (a sample)
    verified: int = 0  # of those, found as sent
    missing: int = 0  # of those, whose profile was not found

    @property
    def total(self) -> int:
        return self.delivered + self.rejected + self.failed

    @property
    def share(self) -> float:
        return (self.rejected + self.failed) / self.total if self.total else 0.0


@dataclass(frozen=True)
class HealthReport:
    syncs: list[SyncHealth]
    busy_files: list[str]
    files_read: int


def read_health(files: Iterable[Path], since: datetime, *, max_share: float, min_messages: int = 20,
                lock_retry_seconds: float = LOCK_RETRY_SECONDS,
                previous: Mapping[str, dict] | None = None) -> HealthReport:
    """Figures and verdict of every ledger sync in `files` since `since`; locked files are listed as busy.
    `previous` (the stored state) applies the hysteresis: an UNHEALTHY sync recovers below 0.8 x threshold."""
    previous = previous or {}
    syncs: list[SyncHealth] = []
    busy: list[str] = []
    read = 0
    for path in files:
        con = open_read_only(path, lock_retry_seconds)
        if con is None:
            busy.append(path.name)
            continue
        read += 1
        try:
            for f in ledger_figures(con, since):
                figures = SyncHealth(f.sync, path.name, f.delivered, f.rejected, f.failed,
                                     read_back=f.read_back, verified=f.verified, missing=f.missing)
                was_unhealthy = previous.get(f.sync, {}).get("status") == UNHEALTHY
                syncs.append(replace(figures, status=verdict(figures, max_share, min_messages,
                                                             was_unhealthy=was_unhealthy)))
        finally:
            con.close()
    return HealthReport(sorted(syncs, key=lambda s: s.sync), busy, read)


def verdict(figures: SyncHealth, max_share: float, min_messages: int, *, was_unhealthy: bool = False) -> str:
    """IDLE under `min_messages`; UNHEALTHY above `max_share`, or (already unhealthy) not yet below
    RECOVERY_FACTOR x `max_share`; else HEALTHY."""
    if figures.total < max(min_messages, 1):
        return IDLE
    limit = max_share * RECOVERY_FACTOR if was_unhealthy else max_share
    if figures.share > max_share or (was_unhealthy and figures.share >= limit):
        return UNHEALTHY
    return HEALTHY


def ledger_figures(con: duckdb.DuckDBPyConnection, since: datetime) -> list[SyncFigures]:
    """Delivered, rejected, failed, read back, verified and missing since `since` for every sync of the
    file's ledger (none: no ledger), read through the ledger's own API (`Ledger.delivery_figures`)."""
    return Ledger(con, create=False).delivery_figures(since)


def state_changes(report: HealthReport, state: dict[str, dict]) -> list[SyncHealth]:
    """The judged syncs whose verdict differs from the stored one (a sync never seen counts as healthy)."""
    changes = []
    for health in report.syncs:
        if health.status not in (HEALTHY, UNHEALTHY):
            continue
        was_healthy = state.get(health.sync, {}).get("status", HEALTHY) == HEALTHY
        if was_healthy != (health.status == HEALTHY):
            changes.append(health)
    return changes


def load_state(path: Path) -> dict[str, dict]:
    """The stored verdict per sync; a missing or unreadable file is an empty state (everything healthy)."""
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def save_state(path: Path, state: dict[str, dict]) -> None:
    """Write the state atomically (a crash leaves the old file or the new one, never half of one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
    os.replace(tmp, path)


# --- Dagster ------------------------------------------------------------------------------------------------

@dg.asset(
    key=HEALTH_KEY,
    group_name=GROUP,
    kinds={"duckdb"},
    owners=[OWNER],
    code_version="1",
    pool="ops_delivery_health",  # one check at a time, so two runs never alert twice on one change
    description=(
        "Delivery health of every sync: delivered, rejected and failed messages per ledger sync over a "
        "recent window (DELIVERY_HEALTH_WINDOW_HOURS), read from the staging DuckDB files under "
        "SEGMENT_OPS_HOME. A sync whose rejected-or-failed share passes DELIVERY_HEALTH_MAX_FAILED_SHARE "
        "fails the `delivery_health` check and is alerted once (and once more when it recovers): see the "
        "README, \"Delivery health\". The checks "
        "are [Dagster asset checks](https://docs.dagster.io/guides/test/asset-checks)."),
    check_specs=[
        dg.AssetCheckSpec("delivery_health", asset=HEALTH_KEY,
                          description="No sync's rejected-or-failed share in the window passes the "
                                      "threshold."),
        dg.AssetCheckSpec("all_ledgers_read", asset=HEALTH_KEY,
                          description="Every staging file could be read (a file a running sync holds is "
                                      "skipped)."),
    ],
)
def ops_delivery_health(context: dg.AssetExecutionContext, staging: StagingResource,
                        delivery_health: DeliveryHealthResource,
                        alerts: AlertsResource) -> dg.MaterializeResult:
    since = datetime.now(UTC) - timedelta(hours=delivery_health.window_hours)
    state_path = staging.path(*STATE_FILE)
    state = load_state(state_path)
    report = read_health(staging_files(Path(staging.home)), since, max_share=delivery_health.max_failed_share,
                         min_messages=delivery_health.min_messages, previous=state)
    sent, not_sent = [], []
    for health in state_changes(report, state):
        change = DeliveryHealthChange(
            sync=health.sync, healthy=health.status == HEALTHY, share=health.share,
            threshold=delivery_health.max_failed_share, window_hours=delivery_health.window_hours,
            delivered=health.delivered, rejected=health.rejected, failed=health.failed,
            run_url=alerts.run_url(context.run.run_id))
        try:
            with alerts.get_client() as client:
                client.post_message(delivery_health_message(change))
        except VendorError as exc:
            # The state is left as it was, so the next run posts this change again.
            context.log.error(f"delivery-health alert for {health.sync} not sent: {exc}")
            not_sent.append(health.sync)
            continue
        sent.append(health.sync)
        state[health.sync] = {"status": health.status, "since": datetime.now(UTC).isoformat(),
                              "share": round(health.share, 4)}
    save_state(state_path, state)
    flagged = [h.sync for h in report.syncs if h.status == UNHEALTHY]
    judged = {h.sync for h in report.syncs if h.status in (HEALTHY, UNHEALTHY)}
    # not judged this run (idle, busy file): the stored state stands, and an UNHEALTHY one keeps the check red
    flagged += sorted(sync for sync, entry in state.items()
                      if sync not in judged and entry.get("status") == UNHEALTHY)
    return dg.MaterializeResult(
        metadata=_metadata(report, delivery_health, sent, not_sent),
        check_results=[
            dg.AssetCheckResult(
                check_name="delivery_health", passed=not flagged, severity=dg.AssetCheckSeverity.ERROR,
                metadata={"flagged_syncs": ", ".join(flagged) or "-",
                          "max_failed_share": delivery_health.max_failed_share}),
            dg.AssetCheckResult(
                check_name="all_ledgers_read", passed=not report.busy_files,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"busy_files": ", ".join(report.busy_files) or "-"}),
        ],
    )


def _metadata(report: HealthReport, settings: DeliveryHealthResource, sent: Sequence[str],
              not_sent: Sequence[str]) -> dict:
    rows = [(h.sync, h.file, h.delivered, h.read_back, h.verified, h.missing, h.rejected, h.failed,
             f"{h.share:.1%}", h.status) for h in report.syncs]
    rows += [("-", name, "-", "-", "-", "-", "-", "-", "-", BUSY) for name in report.busy_files]
    return {
        "window_hours": settings.window_hours,
        "max_failed_share": settings.max_failed_share,
        "files_read": report.files_read,
        "files_busy": len(report.busy_files),
        "syncs_checked": sum(1 for h in report.syncs if h.status != IDLE),
        "syncs_flagged": sum(1 for h in report.syncs if h.status == UNHEALTHY),
        "alerts_sent": len(sent),
        "alerts_not_sent": len(not_sent),
        # Accepted vs landed: what the destinations took, and what of it a read-back found (a sample).
        "delivered": sum(h.delivered for h in report.syncs),
        "read_back": sum(h.read_back for h in report.syncs),
        "verified": sum(h.verified for h in report.syncs),
        "profiles_missing": sum(h.missing for h in report.syncs),
        "syncs": dg.MetadataValue.md(markdown_table(
            ["sync", "staging file", "delivered (accepted)", "read back", "verified (landed)",
             "profiles missing", "rejected", "failed", "rejected or failed", "status"], rows)
            if rows else "no staging files yet"),
        "state": dg.MetadataValue.json({h.sync: asdict(h) | {"share": round(h.share, 4)}
                                        for h in report.syncs}),
    }


delivery_health_job = dg.define_asset_job(
    "delivery_health_job", selection=[HEALTH_KEY],
    description="Check every sync's ledger for rejected or failed deliveries and alert on changes.")

delivery_health_schedule = dg.ScheduleDefinition(
    name="delivery_health_schedule",
    job=delivery_health_job,
    cron_schedule="5 * * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Every hour (at :05 UTC), checks every sync's rejected-or-failed share over the window and "
                "alerts on each sync that became unhealthy or healthy again. On by default: it only reads "
                "ledgers.",
)

defs = dg.Definitions(assets=[ops_delivery_health], jobs=[delivery_health_job],
                      schedules=[delivery_health_schedule])
