"""Segment's Delivery Overview, hour by hour: what Segment counted for the source segment_ops writes to and
for each destination behind it, next to what our ledgers delivered to Segment in the same hour.

The asset `ops/segment_delivery_overview` (hourly partitions) finds the source of SEGMENT_WRITE_KEY through
`GET /sources` (as preflight does: `preflight.write_key_sources`) and its enabled destinations through
`GET /destinations` (`sourceId`), then reads the Public API's Delivery Overview (beta, spec §7; see
`clients/segment_public_api.py` for what was read from Segment's SDK) at HOUR granularity for the partition:
successfully received and failed on ingest (by discard reason) per source; successful delivery, failed
delivery (by discard reason) and filtered at destination per destination. The figures are kept in the
DuckDB state `staging/ops_delivery_overview.duckdb` (`STATE`), one row per hour and source or destination.

Checks:
- `segment_received_what_we_delivered`: Segment failed none of the source's events on ingest, and (only when
  SEGMENT_SOURCE_DEDICATED: nobody else writes to the source) it received what the ledgers delivered to the
  Tracking API in the hour, give or take DELIVERY_OVERVIEW_INGEST_TOLERANCE. Fewer: batches were dropped
  (a wrong write key, the other region's host, a batch the edge lost); ERROR. More: someone else writes to
  the source; WARN. A write key that belongs to none of the listed sources is an ERROR when the ledgers
  delivered in the hour; a token that sees no source's write keys leaves it unverified (WARN), as preflight.
  Only the ledgers that sent to that source count: a reverse-ETL model whose header names its own write key
  (`write_key_env:`, `preflight.model_destinations`) holding another value than SEGMENT_WRITE_KEY's, or
  unset now, sends elsewhere; its sync (`reverse_etl_<model>`, ledger and staging file) is left out, named
  with why in `left_out_syncs`. A variable holding SEGMENT_WRITE_KEY's own value is the same source: counted.
- `destinations_delivered`: no destination failed more than DELIVERY_OVERVIEW_MAX_EGRESS_FAILED_SHARE of its
  events in the hour (WARN: Segment has the data; a destination's settings or credentials refuse it). Each
  such destination is alerted (ALERT_WEBHOOK_URL) with its discard reasons and counts, once per hour.

Once SEGMENT_TRACKING_URL sends to a live Segment, the hour is read only with SEGMENT_PUBLIC_API_URL and
SEGMENT_PUBLIC_API_TOKEN set too (`skip_reason`): live ledgers are never compared with the sandbox.

What it cannot prove: the ledger's delivery time is when Segment's answer was logged, Segment buckets by its
receipt, so a batch at the turn of the hour may land in the next (the tolerance); Segment's metrics may lag
(a schedule at :10 reads the hour before; re-materialize a partition to read it again); and delivery to a
destination says nothing of what the destination then did with the event.
"""

import dataclasses
import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import duckdb

from segment_ops.clients.base import VendorError
from segment_ops.clients.segment_public_api import SegmentPublicApiClient
from segment_ops.clients.slack import WebhookUrlError
from segment_ops.config import Settings, load_settings
from segment_ops.engine import store
from segment_ops.engine.alerts import egress_failure_message, reasons_text, redact_secrets
from segment_ops.engine.ledger import Ledger
from segment_ops.preflight import destination_values, model_destinations, write_key_sources
from segment_ops.resources import AlertsResource, SegmentPublicApiResource, StagingResource
from segment_ops.syncs.metadata import markdown_table
from segment_ops.syncs.ops.delivery_health import open_read_only, staging_files
from segment_ops.syncs.shared import OWNER

OVERVIEW_KEY = dg.AssetKey(["ops", "segment_delivery_overview"])
GROUP = "operations"
# Segment keeps HOUR metrics for 30 days (spec §7); older partitions answer 422.
PARTITIONS = dg.HourlyPartitionsDefinition(start_date="2026-11-01-00:00", end_offset=1)
STAGING_SYNC = "ops_delivery_overview"  # staging/ops_delivery_overview.duckdb
# Ledger syncs that deliver elsewhere than Segment's Tracking API (the audit trail goes to the SIEMs); each
# keeps its ledger in its own staging file, named for the sync, which `tracking_ledger_files` leaves unread.
NOT_TRACKING_SYNCS = ("audit_trail",)
LOCK_RETRY_SECONDS = 3.0
CHECK_INGEST, CHECK_EGRESS = "segment_received_what_we_delivered", "destinations_delivered"
# As preflight and the Profile API's resource decide: once SEGMENT_TRACKING_URL sends to a real Segment, a
# Public API setting left at its sandbox default counts as unset (the sandbox's figures would prove nothing).
PUBLIC_API_SETTINGS = ("SEGMENT_PUBLIC_API_URL", "SEGMENT_PUBLIC_API_TOKEN")

STATE = store.register(store.StateSchema(
    name="delivery_overview", version=1,
    tables=("delivery_overview_sources", "delivery_overview_destinations"),
    create="""
CREATE TABLE IF NOT EXISTS delivery_overview_sources (
    hour_start       TIMESTAMPTZ NOT NULL,
    source_id        VARCHAR NOT NULL,
    source_name      VARCHAR,
    received         BIGINT NOT NULL,   -- Segment: successfully received
    failed_on_ingest BIGINT NOT NULL,   -- Segment: failed on ingest
    ingest_reasons   VARCHAR NOT NULL,  -- JSON {discard reason: events}
    ledger_delivered BIGINT NOT NULL,   -- our ledgers: messages the Tracking API took in the hour
    read_at          TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS delivery_overview_destinations (
    hour_start       TIMESTAMPTZ NOT NULL,
    source_id        VARCHAR NOT NULL,
    destination_id   VARCHAR NOT NULL,
    destination_name VARCHAR,
    delivered        BIGINT NOT NULL,   -- Segment: successful delivery
    failed           BIGINT NOT NULL,   -- Segment: failed delivery
    filtered         BIGINT NOT NULL,   -- Segment: filtered at destination
    discards         VARCHAR NOT NULL,  -- JSON {discard reason: events} of failed delivery
    alerted_at       TIMESTAMPTZ,       -- when this hour's failures were alerted (never twice)
    read_at          TIMESTAMPTZ NOT NULL
);
""", erase=store.no_subjects("Segment's counts per hour, source and destination, and discard reasons")))


# --- the work, without Dagster ----------------------------------------------------------------------------

@dataclass(frozen=True)
class SourceFigures:
    source_id: str
    name: str
    received: int
    failed_on_ingest: int
    ingest_reasons: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class DestinationFigures:
    source_id: str
    destination_id: str
    name: str
    delivered: int
    failed: int
    filtered: int
    discards: dict[str, int] = field(default_factory=dict)

    @property
    def failed_share(self) -> float:
        attempted = self.delivered + self.failed
        return self.failed / attempted if attempted else 0.0


@dataclass(frozen=True)
class Overview:
    sources: list[SourceFigures]
    destinations: list[DestinationFigures]
    # Whether any source the token lists shows its write keys: none does when the token cannot read them
    # (preflight's "cannot be verified"), and then no source found for the key proves nothing.
    write_keys_seen: bool = True


@dataclass(frozen=True)
class LedgerHour:
    delivered: int  # messages the Tracking API took in the hour, over the ledger syncs sending to the source
    per_sync: dict[str, int]
    busy_files: list[str]


@dataclass(frozen=True)
class Verdict:
    passed: bool
    severity: dg.AssetCheckSeverity
    description: str


def read_overview(client: SegmentPublicApiClient, write_key: str, start: datetime, end: datetime) -> Overview:
    """Delivery Overview of [start, end) for the sources of `write_key` and their enabled destinations."""
    listed = list(client.iter_sources())
    sources = write_key_sources(listed, write_key)
    ids = {s["id"] for s in sources}
    destinations = [d for d in client.iter_destinations() if d.get("sourceId") in ids and d.get("enabled")]

    def total(step: str, source_id: str, destination_id: str | None = None) -> int:
        data = client.delivery_overview(step, source_id, start, end, destination_id=destination_id)
        return int(data["total"])

    def reasons(step: str, source_id: str, destination_id: str | None = None) -> dict[str, int]:
        data = client.delivery_overview(step, source_id, start, end, destination_id=destination_id,
                                        group_by=("discardReason",))
        return {str(d.get("discardReason") or "unknown"): int(d["total"])
                for d in data["dataset"] if d["total"]}

    source_figures = []
    for source in sources:
        ingest = reasons("failed-on-ingest", source["id"])
        source_figures.append(SourceFigures(source["id"], source.get("name") or source["id"],
                                            total("successfully-received", source["id"]),
                                            sum(ingest.values()), ingest))
    destination_figures = []
    for destination in destinations:
        source_id, destination_id = destination["sourceId"], destination["id"]
        discards = reasons("failed-delivery", source_id, destination_id)
        destination_figures.append(DestinationFigures(
            source_id, destination_id, destination.get("name") or destination_id,
            total("successful-delivery", source_id, destination_id), sum(discards.values()),
            total("filtered-at-destination", source_id, destination_id), discards))
    return Overview(source_figures, destination_figures,
                    write_keys_seen=any(source.get("writeKeys") for source in listed))


def other_source_syncs(settings: Settings) -> dict[str, str]:
    """The reverse-ETL syncs that send to another source than SEGMENT_WRITE_KEY's, each with why: their
    model's `write_key_env:` variable holds another write key, or is unset (where it sent is unknown). The
    values are compared, never shown: two variables holding the same key send to the same source."""
    default_key = settings["SEGMENT_WRITE_KEY"]
    left_out: dict[str, str] = {}
    for destination, models in model_destinations(settings).items():
        key, _ = destination_values(settings, destination)
        if key == default_key:
            continue  # the same source (another host with it is the same source too, or a loss to see)
        why = (f"{destination.write_key_env} is not set: its source is unknown" if key is None else
               f"sends with {destination.write_key_env}, another source's write key than SEGMENT_WRITE_KEY")
        for model in models:
            left_out[model.sync] = why  # its ledger sync and staging file
    return left_out


def tracking_ledger_files(home: Path, own_file: Path, leave_out: Collection[str] = ()) -> list[Path]:
    """The staging files that may hold Tracking API deliveries to the source compared: every one but this
    asset's state, those of the syncs that deliver elsewhere (audit runs often hold theirs, which would leave
    the hour uncompared) and those of the syncs in `leave_out` (`other_source_syncs`)."""
    return [f for f in staging_files(home)
            if f != own_file and f.stem not in NOT_TRACKING_SYNCS and f.stem not in leave_out]


def ledger_hour(files: Iterable[Path], start: datetime, end: datetime, *,
                lock_retry_seconds: float = LOCK_RETRY_SECONDS,
                leave_out: Collection[str] = ()) -> LedgerHour:
    """Messages delivered to Segment's Tracking API in [start, end) per ledger sync but those in `leave_out`,
    through the ledger's own query (`Ledger.delivered_between`)."""
    per_sync: dict[str, int] = {}
    busy: list[str] = []
    for path in files:
        con = open_read_only(path, lock_retry_seconds)
        if con is None:
            busy.append(path.name)
            continue
        try:
            for sync, delivered in Ledger(con, create=False).delivered_between(start, end).items():
                if not sync.startswith(NOT_TRACKING_SYNCS) and sync not in leave_out:
                    per_sync[sync] = per_sync.get(sync, 0) + delivered
        finally:
            con.close()
    return LedgerHour(sum(per_sync.values()), per_sync, busy)


def ingest_verdict(overview: Overview, ledger: LedgerHour, *, dedicated: bool, tolerance: float) -> Verdict:
    """Did Segment take what the ledgers delivered? (see the module's docstring)"""
    error, warn = dg.AssetCheckSeverity.ERROR, dg.AssetCheckSeverity.WARN
    if not overview.sources and not overview.write_keys_seen:
        return Verdict(False, warn, "not verifiable: give SEGMENT_PUBLIC_API_TOKEN read access to the "
                                    "workspace's sources (it sees no source's write keys)")
    if not overview.sources and ledger.delivered:
        return Verdict(False, error, "SEGMENT_WRITE_KEY is the write key of none of the workspace's sources: "
                                     f"Segment dropped all {ledger.delivered:,} messages delivered this hour")
    if not overview.sources:
        return Verdict(False, warn, "SEGMENT_WRITE_KEY is the write key of none of the workspace's sources "
                                    "(nothing was delivered this hour)")
    received = sum(s.received for s in overview.sources)
    failed = sum(s.failed_on_ingest for s in overview.sources)
    if failed:
        reasons = _merge(s.ingest_reasons for s in overview.sources)
        return Verdict(False, error, f"Segment failed {failed:,} events on ingest ({reasons_text(reasons)})")
    if not dedicated:
        return Verdict(True, warn, f"Segment received {received:,} events; not compared with the ledgers' "
                                   f"{ledger.delivered:,}: SEGMENT_SOURCE_DEDICATED is false")
    if ledger.busy_files:
        return Verdict(False, warn, f"not compared: {', '.join(ledger.busy_files)} held by a running sync")
    missing = ledger.delivered - received
    if missing > tolerance * ledger.delivered:
        return Verdict(False, error, f"Segment received {received:,} of the {ledger.delivered:,} messages "
                                     f"the ledgers delivered: {missing:,} lost (a wrong write key, the other "
                                     "region's host, or a dropped batch)")
    if -missing > tolerance * max(ledger.delivered, 1):
        return Verdict(False, warn, f"Segment received {received:,} events, {-missing:,} more than the "
                                    "ledgers delivered: another sender writes to the source "
                                    "(SEGMENT_SOURCE_DEDICATED)")
    return Verdict(True, error, f"Segment received {received:,} of {ledger.delivered:,} delivered")


def skip_reason(settings: Settings) -> str | None:
    """Why the hour cannot be read with these settings (None: it can): live ledgers and the sandbox's Public
    API."""
    if not settings.is_set("SEGMENT_TRACKING_URL"):
        return None
    missing = [name for name in PUBLIC_API_SETTINGS if not settings.is_set(name)]
    if not missing:
        return None
    return (f"SEGMENT_TRACKING_URL sends to a live Segment but {', '.join(missing)} not set: the ledgers' "
            "deliveries are not compared with the sandbox's Delivery Overview (set both to read the "
            "workspace's)")


def egress_flagged(overview: Overview, max_share: float) -> list[DestinationFigures]:
    """Destinations that failed more than `max_share` of their events."""
    return [d for d in overview.destinations if d.failed and d.failed_share > max_share]


def save_hour(con: duckdb.DuckDBPyConnection, hour_start: datetime, overview: Overview, ledger: LedgerHour,
              alerted: Iterable[str]) -> None:
    """Replace the hour's rows with these figures; `alerted` destinations get `alerted_at` now, and a
    destination alerted before keeps its time."""
    store.ensure(con, STATE)
    now = datetime.now(UTC)
    before = dict(con.execute("SELECT destination_id, alerted_at FROM delivery_overview_destinations "
                              "WHERE hour_start = ? AND alerted_at IS NOT NULL", [hour_start]).fetchall())
    alerted = set(alerted)
    sources = [[hour_start, s.source_id, s.name, s.received, s.failed_on_ingest, json.dumps(s.ingest_reasons),
                ledger.delivered, now] for s in overview.sources]  # one source per key: the ledgers' total
    destinations = [[hour_start, d.source_id, d.destination_id, d.name, d.delivered, d.failed, d.filtered,
                     json.dumps(d.discards),
                     before.get(d.destination_id) or (now if d.destination_id in alerted else None), now]
                    for d in overview.destinations]
    con.execute("BEGIN")
    try:
        con.execute("DELETE FROM delivery_overview_sources WHERE hour_start = ?", [hour_start])
        con.execute("DELETE FROM delivery_overview_destinations WHERE hour_start = ?", [hour_start])
        if sources:
            con.executemany("INSERT INTO delivery_overview_sources VALUES (?, ?, ?, ?, ?, ?, ?, ?)", sources)
        if destinations:
            con.executemany("INSERT INTO delivery_overview_destinations "
                            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", destinations)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def already_alerted(con: duckdb.DuckDBPyConnection, hour_start: datetime) -> set[str]:
    """The destinations whose failures in the hour starting at `hour_start` were alerted already."""
    store.ensure(con, STATE)
    return {row[0] for row in con.execute(
        "SELECT destination_id FROM delivery_overview_destinations "
        "WHERE hour_start = ? AND alerted_at IS NOT NULL", [hour_start]).fetchall()}


# --- Dagster ------------------------------------------------------------------------------------------------

@dg.asset(
    key=OVERVIEW_KEY,
    group_name=GROUP,
    kinds={"segment", "duckdb"},
    owners=[OWNER],
    code_version="1",
    partitions_def=PARTITIONS,
    pool="ops_delivery_overview",  # one hour at a time: the state file has one writer, an alert goes once
    description=(
        "Segment's Delivery Overview (Public API, beta) for each hour: what the source of SEGMENT_WRITE_KEY "
        "received and failed on ingest, and what each destination behind it delivered, filtered and failed "
        "(by discard reason), next to what the ledgers delivered to Segment that hour. Checks that Segment "
        "received what we delivered (SEGMENT_SOURCE_DEDICATED) and that no destination fails more than "
        "DELIVERY_OVERVIEW_MAX_EGRESS_FAILED_SHARE (alerted). See the README, \"Delivery Overview\"."),
    check_specs=[
        dg.AssetCheckSpec(CHECK_INGEST, asset=OVERVIEW_KEY,
                          description="Segment failed nothing on ingest and, for a dedicated source, "
                                      "received what the ledgers delivered in the hour."),
        dg.AssetCheckSpec(CHECK_EGRESS, asset=OVERVIEW_KEY,
                          description="No destination failed more than "
                                      "DELIVERY_OVERVIEW_MAX_EGRESS_FAILED_SHARE of its events in the hour "
                                      "(each one over it is alerted)."),
    ],
)
def ops_segment_delivery_overview(context: dg.AssetExecutionContext,
                                  segment_public_api: SegmentPublicApiResource, staging: StagingResource,
                                  alerts: AlertsResource) -> dg.MaterializeResult:
    settings = load_settings()
    if reason := skip_reason(settings):
        context.log.warning(f"Delivery Overview not read: {reason}")
        return dg.MaterializeResult(
            metadata={"skipped": reason},
            check_results=[dg.AssetCheckResult(check_name=name, passed=False,
                                               severity=dg.AssetCheckSeverity.WARN,
                                               description=f"not verified: {reason}")
                           for name in (CHECK_INGEST, CHECK_EGRESS)])
    dedicated, tolerance, max_share = _settings(settings)
    window = context.partition_time_window
    start, end = window.start.astimezone(UTC), window.end.astimezone(UTC)
    client = segment_public_api.get_client()
    try:
        overview = read_overview(client, settings["SEGMENT_WRITE_KEY"], start, end)
    finally:
        client.close()
    own_file = staging.staging_db(STAGING_SYNC)
    left_out = other_source_syncs(settings)
    ledger = ledger_hour(tracking_ledger_files(Path(staging.home), own_file, left_out), start, end,
                         leave_out=left_out)
    hour = context.partition_key
    with store.staging(own_file) as con:
        flagged = egress_flagged(overview, max_share)
        new = [d for d in flagged if d.destination_id not in already_alerted(con, start)]
        sent = _post_alert(context, alerts, hour, new, max_share)
        save_hour(con, start, overview, ledger, sent)
    ingest = ingest_verdict(overview, ledger, dedicated=dedicated, tolerance=tolerance)
    if left_out:
        ingest = dataclasses.replace(ingest, description=f"{ingest.description} (left out, sending to "
                                                         f"another source: {', '.join(sorted(left_out))})")
    if not ingest.passed:
        context.log.warning(f"{CHECK_INGEST}: {ingest.description}")
    return dg.MaterializeResult(
        metadata={**_metadata(overview, ledger, dedicated, len(sent)),
                  "left_out_syncs": dg.MetadataValue.json(left_out)},
        check_results=[
            dg.AssetCheckResult(
                check_name=CHECK_INGEST, passed=ingest.passed, severity=ingest.severity,
                description=ingest.description,
                metadata={"received": sum(s.received for s in overview.sources),
                          "failed_on_ingest": sum(s.failed_on_ingest for s in overview.sources),
                          "ledger_delivered": ledger.delivered, "source_dedicated": dedicated,
                          "tolerance": tolerance, "left_out_syncs": dg.MetadataValue.json(left_out)}),
            dg.AssetCheckResult(
                check_name=CHECK_EGRESS, passed=not flagged, severity=dg.AssetCheckSeverity.WARN,
                description=("; ".join(f"{d.name}: {d.failed:,} failed ({d.failed_share:.1%}): "
                                       f"{reasons_text(d.discards)}" for d in flagged)
                             or f"no destination failed more than {max_share:.1%}"),
                metadata={"flagged_destinations": ", ".join(d.destination_id for d in flagged) or "-",
                          "max_failed_share": max_share, "alerts_sent": len(sent)}),
        ],
    )


def _post_alert(context: dg.AssetExecutionContext, alerts: AlertsResource, hour: str,
                flagged: Sequence[DestinationFigures], max_share: float) -> list[str]:
    """Post one alert for the newly flagged destinations; the ids alerted (none when it could not be sent:
    the next materialization of the hour tries again)."""
    if not flagged:
        return []
    try:
        with alerts.get_client() as client:
            client.post_message(egress_failure_message(hour, flagged, max_share,
                                                       alerts.run_url(context.run.run_id)))
    except (VendorError, WebhookUrlError) as exc:  # the hour's figures are kept all the same
        context.log.error(f"Delivery Overview alert for {hour} not sent: {redact_secrets(str(exc))}")
        return []
    return [d.destination_id for d in flagged]


def _metadata(overview: Overview, ledger: LedgerHour, dedicated: bool, alerts_sent: int) -> dict:
    source_rows = [(s.name, s.source_id, s.received, s.failed_on_ingest, reasons_text(s.ingest_reasons))
                   for s in overview.sources]
    destination_rows = [(d.name, d.destination_id, d.delivered, d.failed, f"{d.failed_share:.1%}", d.filtered,
                         reasons_text(d.discards)) for d in overview.destinations]
    return {
        "received": sum(s.received for s in overview.sources),
        "failed_on_ingest": sum(s.failed_on_ingest for s in overview.sources),
        "ledger_delivered": ledger.delivered,
        "delivered_to_destinations": sum(d.delivered for d in overview.destinations),
        "failed_delivery": sum(d.failed for d in overview.destinations),
        "source_dedicated": dedicated,
        "alerts_sent": alerts_sent,
        "sources": dg.MetadataValue.md(markdown_table(
            ["source", "id", "received", "failed on ingest", "discard reasons"], source_rows)
            if source_rows else "no source of the workspace has SEGMENT_WRITE_KEY"),
        "destinations": dg.MetadataValue.md(markdown_table(
            ["destination", "id", "delivered", "failed", "failed share", "filtered", "discard reasons"],
            destination_rows) if destination_rows else "no enabled destination behind the source"),
        "ledger_by_sync": dg.MetadataValue.json(ledger.per_sync),
    }


def _settings(settings: Settings) -> tuple[bool, float, float]:
    dedicated = settings["SEGMENT_SOURCE_DEDICATED"].strip().lower()
    if dedicated not in ("true", "false"):
        raise ValueError(f"SEGMENT_SOURCE_DEDICATED must be true or false, got {dedicated!r}")
    return dedicated == "true", _share(settings, "DELIVERY_OVERVIEW_INGEST_TOLERANCE"), _share(
        settings, "DELIVERY_OVERVIEW_MAX_EGRESS_FAILED_SHARE")


def _share(settings: Settings, name: str) -> float:
    try:
        value = float(settings[name])
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number between 0 and 1, got {settings[name]!r}")
    return value


def _merge(counts: Iterable[Mapping[str, int]]) -> dict[str, int]:
    merged: dict[str, int] = {}
    for each in counts:
        for reason, n in each.items():
            merged[reason] = merged.get(reason, 0) + n
    return merged


delivery_overview_job = dg.define_asset_job(
    "segment_delivery_overview_job", selection=[OVERVIEW_KEY], partitions_def=PARTITIONS,
    description="Read one hour of Segment's Delivery Overview and check it against the ledgers.")


@dg.schedule(job=delivery_overview_job, cron_schedule="10 * * * *", execution_timezone="UTC",
             default_status=dg.DefaultScheduleStatus.RUNNING,
             description="Every hour at :10 UTC, reads the hour before from Segment's Delivery Overview and "
                         "checks it (on by default: it only reads).")
def segment_delivery_overview_schedule(
        context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
    if reason := skip_reason(load_settings()):
        return dg.SkipReason(reason)
    hour = context.scheduled_execution_time.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    key = (hour - timedelta(hours=1)).strftime("%Y-%m-%d-%H:%M")
    return dg.RunRequest(run_key=key, partition_key=key)


defs = dg.Definitions(assets=[ops_segment_delivery_overview], jobs=[delivery_overview_job],
                      schedules=[segment_delivery_overview_schedule])
