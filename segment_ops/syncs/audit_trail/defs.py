"""Audit trail: Segment workspace changes (Public API audit events) forwarded to a SIEM, every event once.

- `segment/audit_events` (hourly partitions): reads its window with the Public API (cursor pagination,
  429s honoured by the client) and stages each event once by id in the sync's DuckDB file.
- `siem/audit_events` (same partitions): redacts the window's staged events, frames one payload per
  event for each SIEM destination (Splunk HEC always; the JSON-lines endpoint when `SIEM_JSONL_URL` is
  set) and plans them into the ledger with the audit event id as messageId, then delivers everything
  pending. An id already planned is never planned again, so re-reading a window (late events,
  overlapping backfills, re-runs) forwards only what is new, and a failed delivery stays pending for the
  next run. Both steps hold the staging file (pool `staging_audit_trail`), so two runs never deliver
  the same pending message at once. Neither SIEM deduplicates, so each batch's outcome is recorded as
  soon as it is known: a killed run re-sends only the batches that were on the wire, when the next run
  has its home. With the state in PostgreSQL, a next run on another machine re-sends what the killed one
  sent after its last check-in (`SEGMENT_OPS_STATE_CHECKPOINT_SECONDS`); lower it for a SIEM.
- With HEC indexer ack on, a batch HEC took is "awaiting ack" (its channel, ackId and a send id in the
  ledger), not delivered, and is not sent again. Each run first polls the acks earlier runs left (each
  on its own channel: the one kept in `hec_channel`, or `SPLUNK_HEC_CHANNEL`), then sends, then polls for
  at most `ack_settle_seconds`; what is still unacknowledged `SPLUNK_HEC_ACK_TIMEOUT_SECONDS` after it was
  sent is sent again, and so is what HEC can no longer acknowledge because it forgot the channel.
- `audit_events_sensor` (every 3 minutes) keeps every hour of the lateness horizon
  (`AUDIT_TRAIL_LATENESS_HOURS`, 72 by default) forwarded, whatever order the Public API lists in (spec §7):
  it fingerprints one page of each probed hour (the newest two each tick, six older ones in turn) as a set
  of ids and timestamps, and starts a run for an hour whose listing changed (a late event, an older
  timestamp), never while a run of that hour is queued or running; once an hour it starts a sweep run that
  re-reads the whole horizon as one range (what no probe could see: an hour of more than a page). The
  sensor only probes; reading is done in runs (sensor evaluations are cut off after 60 s). Each run it
  requested stays in its cursor until the run succeeded: a failed or canceled run is requested again on
  the next tick, with a new run key, up to `MAX_ATTEMPTS` times (then the next sweep reads its hours).
  While acks are awaited and nothing else runs, it starts a run of the newest complete hour each tick, so
  acks are polled and timed-out batches re-sent on a quiet workspace too.
  `audit_trail_safety_net` (hourly, off by default) re-reads the last two complete hours.

Windows are (start, end] as the Public API reads them (spec §2: startTime exclusive), so consecutive
hours tile time without hole; since both edges may be exclusive (spec §7), each hour is read from a second
before its start (`WINDOW_OVERLAP`) and the overlap is deduped by event id. A backfill runs up to a day of
hours per run (`BACKFILL_POLICY`): one paginated read covers the range (the client honours the Public API's
rate limit), and starting a run costs seconds while an hour of audit events is a page or two. A range is
recorded in `forwarded_windows` hour by hour, so the gap check sees it exactly as 24 one-hour runs. An hour
gets its row only once none of its events is pending or awaiting an ack: a later run that settles the acks
adds it (`read_windows` keeps which hours were read). The sensor's probes and the safety net start one run
per hour, so a failed recent hour stays independent; only the sweep reads the horizon as one range.
"""

import hashlib
import json
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, astuple, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path

import dagster as dg
import duckdb
import orjson

from segment_ops import clock
from segment_ops.clients.base import RetryPolicy, VendorError, VendorFatalError
from segment_ops.clients.segment_public_api import SegmentPublicApiClient
from segment_ops.config import load_settings
from segment_ops.engine import store
from segment_ops.engine.delivery import (
    DeliveryError,
    DeliveryReport,
    SettleReport,
    deliver_pending,
    settle_awaiting,
)
from segment_ops.engine.ledger import Ledger, MessageCounts, PlanCounts, PlannedMessage
from segment_ops.engine.redaction import RedactionRules
from segment_ops.resources import (
    AuditRedactionResource,
    JsonLinesSiemResource,
    SegmentPublicApiResource,
    SplunkHecResource,
    StagingResource,
)
from segment_ops.syncs.audit_trail.siem import SiemDestination, SplunkHecDestination, ledger_sync
from segment_ops.syncs.external import SEGMENT_WORKSPACE
from segment_ops.syncs.metadata import markdown_table
from segment_ops.syncs.shared import OWNER, SyncFailure

STAGING_SYNC = "audit_trail"  # the staging file: $SEGMENT_OPS_HOME/staging/audit_trail.duckdb
POOL = "staging_audit_trail"
PULL_KEY = dg.AssetKey(["segment", "audit_events"])
FORWARD_KEY = dg.AssetKey(["siem", "audit_events"])
CALL_TYPE = "audit_event"
# Fixed so the partition set is stable; the Public API keeps 90 days (spec §2), so older hours read empty.
PARTITIONS_START = "2026-08-01-00:00"
# end_offset=1: the hour in progress is a partition too, for near-real-time forwarding; it is re-read later.
PARTITIONS = dg.HourlyPartitionsDefinition(start_date=PARTITIONS_START, end_offset=1)
# Backfills: at most a day of hours per run (runs queue one at a time behind the staging pool).
BACKFILL_POLICY = dg.BackfillPolicy.multi_run(max_partitions_per_run=24)
SENSOR_HOURS = 2  # the newest hours the sensor probes every tick (the current one and the one before)
OLDER_PROBES_PER_TICK = 6  # older hours of the lateness horizon probed per tick, in turn (72 h: every 36 min)
PROBE_PAGE = 200  # one page of `GET /audit-events` per probed hour (pagination.count <= 200, spec §2)
MAX_ATTEMPTS = 3  # runs of one sensor request (the first and two retries); then the hourly sweep covers it
OPEN_REQUEST_TTL = timedelta(hours=6)  # a requested run never launched in this time is forgotten
REQUEST_TAG = "segment_ops/audit_request"  # the sensor's run key of the request, on the run it made
# startTime/endTime may both be exclusive (spec §7): windows are read this much early, events deduped by id.
WINDOW_OVERLAP = timedelta(seconds=1)
HOUR_US = 3_600_000_000
# Seconds between ticks; also how often acks are polled while awaited (HEC forgets idle channels at 600 s).
SENSOR_INTERVAL = 180
SAFETY_NET_HOURS = 2  # complete hours the schedule re-reads
GAP_LOOKBACK_DAYS = 7
SENSOR_RETRY = RetryPolicy(max_attempts=3, max_elapsed=20.0)
# Dagster fails a sensor evaluation after 60 s, and its cursor is then lost. No probe starts after this many
# seconds of the tick: one begun just before may take 30 s (20 s of retries, then a 10 s timeout), and what
# follows the probes (the sweep, the acks' run, the cursor) needs a few. The hours not probed wait a tick.
PROBE_BUDGET_SECONDS = 25.0
DEFAULT_ACK_TIMEOUT = 300.0  # seconds; the Kafka connector's HEC ack timeout (spec §7)
HEC_LEDGER_SYNC = ledger_sync(SplunkHecDestination)  # type: ignore[arg-type]
IN_FLIGHT = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
             dg.DagsterRunStatus.STARTED]

# Erasure (`engine/erasure.py`): a staged event naming an erased subject keeps its row, id, time and type (so
# a later read of its hour does not stage it again) and loses the rest; `forward` would frame it as that.
_ERASE_EVENTS = """
UPDATE audit_events SET event = json_object('id', id, 'timestamp', json_extract_string(event, '$.timestamp'),
                                            'type', type, 'erased', true)::VARCHAR
WHERE erased_in(event);
"""
# Staged audit events, the hours read and forwarded, and the HEC channel (see `pull_window`, `forward`).
STATE = store.register(store.StateSchema(
    name="audit_trail", version=1,
    tables=("audit_events", "read_windows", "forwarded_windows", "hec_channel"),
    create="""
CREATE TABLE IF NOT EXISTS audit_events (
    id         VARCHAR NOT NULL,      -- the audit event id; staged once (insert-if-absent)
    ts         TIMESTAMPTZ NOT NULL,
    type       VARCHAR,
    event      VARCHAR NOT NULL,      -- the event as the Public API returned it (local only, never sent raw)
    pulled_run VARCHAR,
    pulled_at  TIMESTAMPTZ NOT NULL
);
-- Hours read to the end and handed to the destinations; an hour gets its forwarded_windows row once nothing
-- of it is pending or awaiting confirmation any more (that run, or a later one that settled it).
CREATE TABLE IF NOT EXISTS read_windows (
    window_start TIMESTAMPTZ NOT NULL,
    window_end   TIMESTAMPTZ NOT NULL,
    run_id       VARCHAR,
    read_at      TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS forwarded_windows (
    window_start TIMESTAMPTZ NOT NULL,
    window_end   TIMESTAMPTZ NOT NULL,
    run_id       VARCHAR,
    events       BIGINT NOT NULL,
    forwarded_at TIMESTAMPTZ NOT NULL
);
-- The HEC request channel (a GUID) made once when SPLUNK_HEC_CHANNEL is unset: HEC counts ackIds per
-- channel, so a later run must poll an earlier run's ackIds on the same one (spec §7).
CREATE TABLE IF NOT EXISTS hec_channel (
    channel    VARCHAR NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);
""", erase=_ERASE_EVENTS))


# --- the work, without Dagster ----------------------------------------------------------------------------

@dataclass
class PullReport:
    start: datetime
    end: datetime
    pulled: int = 0
    new: int = 0
    pulled_by_type: Counter[str] = field(default_factory=Counter)
    new_by_type: Counter[str] = field(default_factory=Counter)
    # Per (start, end] hour of the events' timestamps, keyed by its start: a range run's partitions.
    pulled_by_hour: Counter[datetime] = field(default_factory=Counter)
    new_by_hour: Counter[datetime] = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def already_staged(self) -> int:
        return self.pulled - self.new


@dataclass
class WindowStatus:
    """Where every staged event of one window stands in one destination's ledger."""

    staged: int
    unplanned: int
    delivered: int
    pending: int
    rejected: int
    awaiting_ack: int = 0


@dataclass(frozen=True)
class HourFigures:
    """One hour's events in the first destination's ledger (Splunk HEC): what this run found and did."""

    events: int = 0
    new: int = 0  # never planned before this run
    forwarded: int = 0  # became delivered in this run (taken at once, or acknowledged now)
    rejected: int = 0  # refused by the destination in this run
    delivered: int = 0  # after the run, whichever run delivered them
    awaiting_ack: int = 0
    pending: int = 0
    rejected_total: int = 0  # after the run, whichever run's answer refused them
    unplanned: int = 0  # after the run: staged, never planned (none, once a run has forwarded the hour)

    @property
    def already_known(self) -> int:
        """Planned by an earlier run: delivered already, or pending or awaiting an ack from then."""
        return self.events - self.new

    def __add__(self, other: "HourFigures") -> "HourFigures":
        return HourFigures(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))


@dataclass
class ForwardReport:
    start: datetime
    end: datetime
    events: int = 0
    hours: dict[datetime, HourFigures] = field(default_factory=dict)  # keyed by the hour's start
    plans: dict[str, PlanCounts] = field(default_factory=dict)
    deliveries: dict[str, DeliveryReport] = field(default_factory=dict)
    settles: dict[str, SettleReport] = field(default_factory=dict)  # acks polled this run (start and end)
    windows: dict[str, WindowStatus] = field(default_factory=dict)
    pending_total: dict[str, int] = field(default_factory=dict)
    awaiting_total: dict[str, int] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def handed_over(self) -> bool:
        """Nothing failed and nothing is pending: every event left for every SIEM (acks may still be due)."""
        return not self.errors and all(n == 0 for n in self.pending_total.values())

    @property
    def complete(self) -> bool:
        """Handed over and acknowledged: every event is delivered (or rejected with a reason)."""
        return self.handed_over and all(n == 0 for n in self.awaiting_total.values())

    @property
    def forwarded(self) -> int:
        """Messages that became delivered in this run: sent and taken at once, or acknowledged now."""
        return (sum(d.delivered for d in self.deliveries.values())
                + sum(s.confirmed for s in self.settles.values()))


def pull_window(client: SegmentPublicApiClient, con: duckdb.DuckDBPyConnection, start: datetime,
                end: datetime, *, run_id: str | None = None, chunk: int = 1_000) -> PullReport:
    """Read every audit event with start < timestamp <= end and stage the ones not staged before."""
    store.ensure(con, STATE)
    report = PullReport(start, end)
    started = time.monotonic()
    batch: list[dict] = []
    for event in client.iter_audit_events(start, end):
        batch.append(event)
        if len(batch) >= chunk:
            _stage(con, batch, run_id, report)
            batch = []
    _stage(con, batch, run_id, report)
    report.seconds = time.monotonic() - started
    return report


def forward_window(con: duckdb.DuckDBPyConnection, destinations: Sequence[SiemDestination], start: datetime,
                   end: datetime, *, rules: RedactionRules | None, run_id: str | None = None,
                   max_in_flight: int = 2) -> ForwardReport:
    """Settle the acks earlier runs left, plan the window's staged events for each destination (once per
    audit event id), deliver all that is pending, then settle this run's acks for a bounded time.
    Failures are collected per destination in `errors`, never raised, except a credential or
    configuration error (`VendorFatalError`), which stops at once (after recording what was taken)."""
    store.ensure(con, STATE)
    started = time.monotonic()
    ledger = Ledger(con)
    # One row per hour of the window (a backfill run covers several): read to the end, now handed over.
    con.execute(
        """
        INSERT INTO read_windows SELECT h, least(h + INTERVAL 1 HOUR, $end), $run_id, now()
        FROM (SELECT unnest(generate_series($start, $end, INTERVAL 1 HOUR)) AS h) WHERE h < $end
        """, {"start": start, "end": end, "run_id": run_id})
    # With the pull's overlap (WINDOW_OVERLAP): an event at the very end of the hour before, staged by this
    # run's read, is planned here too (the ledger plans an id once).
    rows = con.execute(
        "SELECT event, epoch_us(ts) FROM audit_events WHERE ts > ? AND ts <= ? ORDER BY ts, id",
        [start - WINDOW_OVERLAP, end]).fetchall()
    events = [orjson.loads(row[0]) for row in rows]
    redacted = [rules.redact(e) if rules else e for e in events]
    report = ForwardReport(start, end, events=len(events))
    # Each event with its hour, so each hour of a range run reports its own figures (`report.hours`).
    con.execute("CREATE OR REPLACE TEMP TABLE window_hour_events AS "
                "SELECT unnest(?::VARCHAR[]) AS message_id, unnest(?::TIMESTAMPTZ[]) AS grp",
                [[str(e["id"]) for e in events], [hour_of(row[1]) for row in rows]])
    first_sync = ledger_sync(destinations[0]) if destinations else None
    before = ledger.window_counts(first_sync, "window_hour_events") if first_sync else {}
    for destination in destinations:
        sync = ledger_sync(destination)
        # Earlier runs' acks first: what is confirmed is not re-sent; what timed out is pending again.
        _settle(ledger, sync, destination, report, wait=0.0, expire=True)
        report.plans[sync] = ledger.add_planned(
            sync, [PlannedMessage(str(e["id"]), str(e["id"]), CALL_TYPE, destination.frame(e))
                   for e in redacted],
            run_id=run_id)
        try:
            # Neither SIEM deduplicates: each batch's outcome is written as soon as it is known (ARCHITECTURE
            # rule 6).
            report.deliveries[sync] = deliver_pending(ledger, sync, destination, run_id=run_id,
                                                      max_in_flight=max_in_flight, record_each_batch=True)
        except DeliveryError as exc:
            report.errors[sync] = str(exc)
            report.deliveries[sync] = exc.report
    for destination in destinations:  # after every sender is done: a bounded wait for this run's acks
        sync = ledger_sync(destination)
        # Only confirmations here: an ack that times out now is re-sent by the next run, right after its
        # settle.
        _settle(ledger, sync, destination, report, wait=getattr(destination, "ack_settle", 0.0), expire=False)
        report.windows[sync] = window_status(con, sync, start, end)
        counts = ledger.counts(sync)
        report.pending_total[sync] = counts.pending
        report.awaiting_total[sync] = counts.awaiting_ack
    if first_sync:
        after = ledger.window_counts(first_sync, "window_hour_events")
        report.hours = {_utc(hour): _hour_figures(before.get(hour, MessageCounts()), now)
                        for hour, now in after.items()}
    con.execute("DROP TABLE window_hour_events")
    record_forwarded_hours(con, ledger, [ledger_sync(d) for d in destinations], run_id=run_id,
                           since=end - timedelta(days=GAP_LOOKBACK_DAYS))
    report.seconds = time.monotonic() - started
    return report


def hour_of(epoch_us: int) -> datetime:
    """The start of the (start, end] hour holding the instant `epoch_us` (an instant on the hour belongs to
    the hour it ends)."""
    return datetime.fromtimestamp((epoch_us - 1) // HOUR_US * HOUR_US // 1_000_000, UTC)


def figures_by_partition(by_hour: dict[datetime, "HourFigures"] | Counter[datetime],
                         keys: Sequence[str]) -> dict:
    """`by_hour` summed per partition of `keys` (consecutive hours): what lies before the first hour (the
    read's second of overlap, `WINDOW_OVERLAP`) counts for the first partition, whose read picked it up."""
    starts = [PARTITIONS.time_window_for_partition_key(key).start for key in keys]
    totals: dict = {}
    for hour, figures in by_hour.items():
        key = keys[max(0, sum(1 for start in starts if start <= hour) - 1)]
        totals[key] = totals[key] + figures if key in totals else figures
    return totals


def _hour_figures(before: MessageCounts, after: MessageCounts) -> HourFigures:
    delivered = after.delivered + after.verified
    return HourFigures(events=after.total, new=before.unplanned,
                       forwarded=delivered - (before.delivered + before.verified),
                       rejected=after.rejected - before.rejected, delivered=delivered,
                       awaiting_ack=after.awaiting_ack, pending=after.pending, rejected_total=after.rejected,
                       unplanned=after.unplanned)


def _utc(moment: object) -> datetime:
    assert isinstance(moment, datetime)
    return moment.astimezone(UTC)


def window_status(con: duckdb.DuckDBPyConnection, sync: str, start: datetime, end: datetime) -> WindowStatus:
    """Where the staged events with start < ts <= end stand in `sync`'s ledger."""
    con.execute("CREATE OR REPLACE TEMP TABLE window_events AS "
                "SELECT id AS message_id, 0 AS grp FROM audit_events WHERE ts > ? AND ts <= ?", [start, end])
    try:
        counts = Ledger(con, create=False).window_counts(sync, "window_events").get(0, MessageCounts())
    finally:
        con.execute("DROP TABLE window_events")
    return WindowStatus(counts.total, counts.unplanned, counts.delivered, counts.pending, counts.rejected,
                        counts.awaiting_ack)


def record_forwarded_hours(con: duckdb.DuckDBPyConnection, ledger: Ledger, syncs: Sequence[str], *,
                           run_id: str | None, since: datetime) -> int:
    """Give each hour read since `since` that has no `forwarded_windows` row yet one, once every staged event
    of it is delivered or rejected in every one of `syncs` (nothing unplanned, pending or awaiting
    confirmation); returns how many hours got one. Later runs settle acks, so they complete earlier hours."""
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE open_hours AS
        SELECT window_start, max(window_end) AS window_end FROM read_windows r
        WHERE window_start >= ?
          AND NOT EXISTS (SELECT 1 FROM forwarded_windows f WHERE f.window_start = r.window_start)
        GROUP BY window_start
        """, [since])
    hour_events = ("(SELECT a.id AS message_id, h.window_start AS grp FROM audit_events a "
                   "JOIN open_hours h ON a.ts > h.window_start AND a.ts <= h.window_end)")
    unsettled: set[datetime] = set()
    for sync in syncs:
        counts = ledger.window_counts(sync, hour_events)
        unsettled |= {hour for hour, figures in counts.items() if not figures.settled}
    con.execute("CREATE OR REPLACE TEMP TABLE unsettled_hours AS "
                "SELECT unnest(?::TIMESTAMPTZ[]) AS window_start", [sorted(unsettled)])
    added = con.execute(
        """
        INSERT INTO forwarded_windows
        SELECT h.window_start, h.window_end, ?,
               (SELECT count(*) FROM audit_events WHERE ts > h.window_start AND ts <= h.window_end), now()
        FROM open_hours h WHERE h.window_start NOT IN (SELECT window_start FROM unsettled_hours)
        RETURNING window_start
        """, [run_id]).fetchall()
    con.execute("DROP TABLE open_hours")
    con.execute("DROP TABLE unsettled_hours")
    return len(added)


def hec_channel(con: duckdb.DuckDBPyConnection) -> str:
    """The sync's HEC channel: made once (a random GUID) and kept, so later runs poll earlier ackIds on it."""
    store.ensure(con, STATE)
    row = con.execute("SELECT channel FROM hec_channel ORDER BY created_at LIMIT 1").fetchone()
    if row is None:
        row = con.execute("INSERT INTO hec_channel VALUES (?, ?) RETURNING channel",
                          [str(uuid.uuid4()), datetime.now(UTC)]).fetchone()
    return row[0]


def _settle(ledger: Ledger, sync: str, destination: SiemDestination, report: ForwardReport, *, wait: float,
            expire: bool) -> None:
    """Poll the destination's acks for `sync` (a destination without `confirm` has none) into `report`;
    `expire`: also put back to pending what stayed unacknowledged past the destination's ack timeout.
    Never stops the run: a refused or failed query (even 401/403) is noted and the delivery goes on, which
    then meets any credential problem itself."""
    confirm = getattr(destination, "confirm", None)
    if confirm is None:
        return
    timeout = getattr(destination, "ack_timeout", DEFAULT_ACK_TIMEOUT) if expire else None
    try:
        settled = settle_awaiting(ledger, sync, confirm, timeout=timeout, wait=wait)
    except VendorFatalError as exc:
        settled = SettleReport(sync, awaiting=ledger.counts(sync).awaiting_ack, error=str(exc))
    settled.error = settled.error or getattr(destination, "ack_refusal", None)
    before = report.settles.get(sync)
    report.settles[sync] = before + settled if before is not None else settled


def missing_windows(con: duckdb.DuckDBPyConnection, now: datetime,
                    lookback: timedelta) -> tuple[int, list[datetime]]:
    """(windows forwarded, hours without a complete forward) between the first and last forwarded hour of
    the lookback: a hole there means an hour was never read to the end or still has events pending or
    awaiting confirmation (`record_forwarded_hours`)."""
    store.ensure(con, STATE)
    starts = {row[0].astimezone(UTC) for row in con.execute(
        "SELECT DISTINCT window_start FROM forwarded_windows WHERE window_start >= ?",
        [now - lookback]).fetchall()}
    if not starts:
        return 0, []
    hour, last, holes = min(starts), max(starts), []
    while hour < last:
        if hour not in starts:
            holes.append(hour)
        hour += timedelta(hours=1)
    return len(starts), holes


def _stage(con: duckdb.DuckDBPyConnection, events: list[dict], run_id: str | None,
           report: PullReport) -> None:
    if not events:
        return
    # Several pages may repeat an event (a cursor walk over changing data); stage each id once.
    unique = {str(e["id"]): e for e in events}
    ids = list(unique)
    con.execute(
        "CREATE OR REPLACE TEMP TABLE incoming_audit AS SELECT unnest(?::VARCHAR[]) AS id, "
        "unnest(?::VARCHAR[])::TIMESTAMPTZ AS ts, unnest(?::VARCHAR[]) AS type, "
        "unnest(?::VARCHAR[]) AS event",
        [ids, [unique[i]["timestamp"] for i in ids], [unique[i].get("type") for i in ids],
         [orjson.dumps(unique[i]).decode() for i in ids]])
    hours = {row[0]: hour_of(row[1]) for row in con.execute("SELECT id, epoch_us(ts) FROM incoming_audit")
             .fetchall()}
    new_ids = {row[0] for row in con.execute(
        "INSERT INTO audit_events SELECT i.id, i.ts, i.type, i.event, ?, ? FROM incoming_audit i "
        "WHERE NOT EXISTS (SELECT 1 FROM audit_events a WHERE a.id = i.id) RETURNING id",
        [run_id, datetime.now(UTC)]).fetchall()}
    con.execute("DROP TABLE incoming_audit")
    report.pulled_by_hour.update(hours.values())
    report.new_by_hour.update(hours[i] for i in new_ids)
    report.pulled += len(ids)
    report.new += len(new_ids)
    for event_id, event in unique.items():
        kind = str(event.get("type") or "(none)")
        report.pulled_by_type[kind] += 1
        if event_id in new_ids:
            report.new_by_type[kind] += 1


# --- Dagster ------------------------------------------------------------------------------------------------

@dg.asset(
    key=PULL_KEY,
    deps=[SEGMENT_WORKSPACE],
    partitions_def=PARTITIONS,
    backfill_policy=BACKFILL_POLICY,
    group_name="audit_trail",
    kinds={"segment", "duckdb"},
    owners=[OWNER],
    pool=POOL,
    code_version="1",
)
def segment_audit_events(context: dg.AssetExecutionContext, segment_public_api: SegmentPublicApiResource,
                         staging: StagingResource) -> dg.MaterializeResult:
    """Segment workspace audit events of one hour, read from the Public API and staged once per event id
    (a re-read hour stages only late arrivals).

    Source: the [Segment Public API audit trail](https://docs.segmentapis.com/tag/Audit-Trail)
    (`GET /audit-events`)."""
    window = context.partition_time_window
    end = min(window.end, clock.now())  # the hour in progress is read up to now (SEGMENT_OPS_CLOCK, if set)
    client = segment_public_api.get_client()
    try:
        with store.staging(staging.staging_db(STAGING_SYNC)) as con:
            # Read a second early: the Public API's edges may both be exclusive (spec §7); staging dedupes.
            report = pull_window(client, con, window.start - WINDOW_OVERLAP, end, run_id=context.run.run_id)
    except VendorError as exc:
        raise SyncFailure(description=str(exc), metadata={"window_start": window.start.isoformat()}) from None
    finally:
        client.close()
    rows = sorted(((k, n, report.new_by_type.get(k, 0)) for k, n in report.pulled_by_type.items()),
                  key=lambda row: (-row[1], row[0]))
    metadata = {
        "window_start": window.start.isoformat(),
        "window_end": end.isoformat(),
        "events_pulled": report.pulled,
        "new_events": report.new,
        "already_staged": report.already_staged,
        "by_action_type": dg.MetadataValue.md(markdown_table(["action type", "pulled", "new"], rows)
                                              if rows else "no events in this hour"),
        "duration_seconds": round(report.seconds, 2),
    }
    keys = context.partition_keys
    if len(keys) == 1:
        return dg.MaterializeResult(metadata=metadata)
    # A range run: each partition gets its own hour's counts; the run's are kept under `run_` names.
    pulled = figures_by_partition(report.pulled_by_hour, keys)
    new = figures_by_partition(report.new_by_hour, keys)
    for key in keys:
        hour = PARTITIONS.time_window_for_partition_key(key)
        context.add_asset_metadata({
            "window_start": hour.start.isoformat(), "window_end": min(hour.end, end).isoformat(),
            "events_pulled": pulled.get(key, 0), "new_events": new.get(key, 0),
            "already_staged": pulled.get(key, 0) - new.get(key, 0)}, partition_key=key)
    return dg.MaterializeResult(metadata=_run_wide(metadata, len(keys)))


@dg.asset(
    key=FORWARD_KEY,
    deps=[PULL_KEY],
    partitions_def=PARTITIONS,
    backfill_policy=BACKFILL_POLICY,
    group_name="audit_trail",
    kinds={"splunk", "duckdb"},
    owners=[OWNER],
    pool=POOL,
    code_version="1",
    check_specs=[
        dg.AssetCheckSpec("delivery_complete", asset=FORWARD_KEY,
                          description="Every event of the window reached every SIEM destination (or was "
                                      "rejected with a reason) and nothing is left pending or awaiting "
                                      "HEC's indexer acknowledgement (only awaiting: a warning; a later run "
                                      "settles the acks)."),
        dg.AssetCheckSpec("no_gap_between_forwarded_windows", asset=FORWARD_KEY,
                          description=f"Between the first and last hour forwarded in the last "
                                      f"{GAP_LOOKBACK_DAYS} days, every hour was read and every event of it "
                                      "delivered to every SIEM (or rejected): nothing pending or awaiting "
                                      "HEC's indexer acknowledgement."),
    ],
)
def siem_audit_events(context: dg.AssetExecutionContext, splunk: SplunkHecResource,
                      siem_jsonl: JsonLinesSiemResource, audit_redaction: AuditRedactionResource,
                      staging: StagingResource) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    """The hour's audit events, redacted and forwarded to the SIEM (Splunk HEC, and a JSON-lines endpoint
    when configured) exactly once per audit event id; anything a destination did not take stays pending,
    and what HEC took with indexer ack on counts as delivered once its ack arrives (this run or a later one).

    Destination: [Splunk HTTP Event Collector](https://docs.splunk.com/Documentation/Splunk/latest/Data/UsetheHTTPEventCollector)."""
    window = context.partition_time_window
    end = min(window.end, clock.now())
    destinations: list[SiemDestination] = []
    try:
        with store.staging(staging.staging_db(STAGING_SYNC)) as con:
            # SPLUNK_HEC_CHANNEL, else the channel kept in the sync's state: earlier runs' ackIds live on it.
            destinations.append(splunk.get_destination(channel=splunk.channel or hec_channel(con)))
            if siem_jsonl.url:
                destinations.append(siem_jsonl.get_destination())
            report = forward_window(con, destinations, window.start, end, rules=audit_redaction.get_rules(),
                                    run_id=context.run.run_id, max_in_flight=splunk.max_in_flight)
            windows, holes = missing_windows(con, clock.now(), timedelta(days=GAP_LOOKBACK_DAYS))
    except VendorFatalError as exc:
        raise SyncFailure(description=f"SIEM refused the credentials or configuration: {exc}") from None
    except ValueError as exc:  # a setting that cannot work (SPLUNK_HEC_CHANNEL not a GUID)
        raise SyncFailure(description=str(exc)) from None
    finally:
        for destination in destinations:
            destination.close()
    metadata = _forward_metadata(report, destinations)
    keys = context.partition_keys
    if len(keys) > 1:  # a range run: each partition gets its own hour's counts, the run's under `run_` names
        hours = figures_by_partition(report.hours, keys)
        for key in keys:
            context.add_asset_metadata(_hour_metadata(key, hours.get(key, HourFigures()), end),
                                       partition_key=key)
        metadata = _run_wide(metadata, len(keys))
    only_awaiting = report.handed_over and not report.complete
    delivery_complete = dg.AssetCheckResult(
        check_name="delivery_complete", passed=report.complete,
        # Awaiting ack is not delivered, but nothing failed: a warning until a later run settles it.
        severity=dg.AssetCheckSeverity.WARN if only_awaiting else dg.AssetCheckSeverity.ERROR,
        metadata={"pending_total": sum(report.pending_total.values()),
                  "awaiting_ack_total": sum(report.awaiting_total.values()),
                  "awaiting_ack_in_window": sum(w.awaiting_ack for w in report.windows.values()),
                  "unplanned_in_window": sum(w.unplanned for w in report.windows.values()),
                  "rejected_in_window": sum(w.rejected for w in report.windows.values()),
                  "errors": "; ".join(report.errors.values()) or "-"})
    if report.errors:  # the check shows the hour as incomplete on the asset, then the run fails
        yield delivery_complete
        raise SyncFailure(description="; ".join(report.errors.values()), metadata=metadata)
    first_missing = ", ".join(h.strftime("%Y-%m-%d-%H:00") for h in holes[:10]) or "-"
    yield dg.MaterializeResult(
        metadata=metadata,
        check_results=[
            delivery_complete,
            dg.AssetCheckResult(
                check_name="no_gap_between_forwarded_windows", passed=not holes,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"windows_forwarded": windows, "missing_hours": len(holes),
                          "first_missing": first_missing}),
        ],
    )


def _hour_metadata(key: str, figures: HourFigures, end: datetime) -> dict:
    """One partition's own figures in a range run (Splunk HEC's ledger), named as a one-hour run's."""
    hour = PARTITIONS.time_window_for_partition_key(key)
    return {"window_start": hour.start.isoformat(), "window_end": min(hour.end, end).isoformat(),
            "events_in_window": figures.events, "new_events": figures.new,
            "already_forwarded_or_pending": figures.already_known, "forwarded": figures.forwarded,
            "delivered": figures.forwarded, "rejected_by_destination": figures.rejected,
            "window_delivered": figures.delivered, "window_awaiting_ack": figures.awaiting_ack,
            "window_pending": figures.pending, "window_rejected": figures.rejected_total,
            "window_unplanned": figures.unplanned}


def _run_wide(metadata: dict, partitions: int) -> dict:
    """A range run's own metadata, shown on each of its partitions: counts and the window under `run_`
    names (each partition's own counts carry the plain names), so no partition claims the whole window."""
    counts = {k for k, v in metadata.items() if k.startswith("window_")
              or (isinstance(v, int) and not isinstance(v, bool))}
    return ({k: v for k, v in metadata.items() if k not in counts}
            | {f"run_{k}": v for k, v in metadata.items() if k in counts} | {"run_partitions": partitions})


def _forward_metadata(report: ForwardReport, destinations: Sequence[SiemDestination]) -> dict:
    rows = []
    for destination in destinations:
        sync = ledger_sync(destination)
        plan, delivery, status = report.plans[sync], report.deliveries.get(sync), report.windows[sync]
        sent = delivery.delivered + delivery.awaiting_ack if delivery else "-"
        rows.append((destination.name, plan.planned, plan.already_known, sent, status.delivered,
                     status.awaiting_ack, status.pending, status.rejected))
    hec = ledger_sync(destinations[0])
    splunk, acks = report.deliveries.get(hec), report.settles.get(hec)
    metadata: dict = {
        "window_start": report.start.isoformat(),
        "window_end": report.end.isoformat(),
        "events_in_window": report.events,
        "new_events": report.plans[hec].planned,
        "already_forwarded_or_pending": report.plans[hec].already_known,
        "forwarded": report.forwarded,  # became delivered in this run (taken at once, or acknowledged now)
        # Where the window's events stand in Splunk HEC's ledger after the run, whichever run sent them.
        "window_delivered": report.windows[hec].delivered,
        "window_awaiting_ack": report.windows[hec].awaiting_ack,
        "window_pending": report.windows[hec].pending,
        "window_rejected": report.windows[hec].rejected,
        "window_unplanned": report.windows[hec].unplanned,
        "pending_total": sum(report.pending_total.values()),
        # Taken by HEC, indexer acknowledgement not in yet: not delivered, not sent again (until the timeout).
        "awaiting_ack_total": sum(report.awaiting_total.values()),
        "destinations": dg.MetadataValue.md(markdown_table(
            ["destination", "new", "planned before", "sent this run", "window delivered",
             "window awaiting ack", "window pending", "window rejected"], rows)),
        "duration_seconds": round(report.seconds, 2),
    }
    if splunk is not None:
        metadata |= splunk.as_metadata()
    if acks is not None:
        metadata |= {"hec_channel": destinations[0].channel or "-",  # type: ignore[attr-defined]
                     "indexer_acks_confirmed": acks.confirmed,
                     # messages put back to pending (sent again by this run's delivery, or the next run's)
                     "indexer_ack_timeouts_reopened": acks.expired,
                     "indexer_ack_channel_resets_reopened": acks.lost,
                     "indexer_ack_queries": acks.queries}
        if acks.error:
            metadata["indexer_ack_query_error"] = acks.error
    return metadata


audit_trail_job = dg.define_asset_job(
    "audit_trail_job", selection=[PULL_KEY, FORWARD_KEY], partitions_def=PARTITIONS,
    description="Pull one hour of the Segment audit trail and forward it to the SIEM, each event once.")


@dg.sensor(job=audit_trail_job, minimum_interval_seconds=SENSOR_INTERVAL,
           default_status=dg.DefaultSensorStatus.RUNNING,
           description=f"Every 3 minutes: starts a run for an hour of the lateness horizon "
                       f"(AUDIT_TRAIL_LATENESS_HOURS) whose listing changed (the newest {SENSOR_HOURS} hours "
                       f"each tick, {OLDER_PROBES_PER_TICK} older ones in turn; one page each, whatever the "
                       "Public API's order), starts again a run it requested that failed (up to "
                       f"{MAX_ATTEMPTS} attempts), and once an hour a sweep run that re-reads the whole "
                       "horizon (forwarding only what is new). While HEC acks are awaited and no run is "
                       "going, starts a run of the newest complete hour so they are polled.")
def audit_events_sensor(context: dg.SensorEvaluationContext, segment_public_api: SegmentPublicApiResource,
                        staging: StagingResource) -> dg.SensorResult:
    # `now` chooses the hours (SEGMENT_OPS_CLOCK may pin it); `real` stamps requests and run keys, which
    # must move on even while the clock stands still (a run key is launched once per sensor).
    started, now, real = time.monotonic(), clock.now(), datetime.now(UTC)
    state = SensorState.load(context.cursor)
    keys = PARTITIONS.get_partition_keys(current_time=now)
    horizon = lateness_horizon()
    older = [k for k in keys[:-SENSOR_HOURS]
             if PARTITIONS.time_window_for_partition_key(k).end > now - horizon]
    requests, notes = follow_up_requests(context.instance, state, real)
    reachable = True
    # Sensor evaluations time out after 60 s: probe with a short retry budget, not the runs' 300 s.
    client = SegmentPublicApiClient(segment_public_api.base_url, segment_public_api.token, timeout=10.0,
                                    retry=SENSOR_RETRY)
    turn = state.turn % len(older) if older else 0
    older_probes = state.older_in_turn(older)
    probes = keys[-SENSOR_HOURS:] + older_probes
    try:
        for done, key in enumerate(probes):
            if time.monotonic() - started > PROBE_BUDGET_SECONDS:
                left = probes[done:]
                notes.append(f"probing stopped at {PROBE_BUDGET_SECONDS:g} s into the tick (the 60 s "
                             f"limit): {', '.join(left)} left for the next tick")
                older_done = len(older_probes) - len([k for k in left if k in older_probes])
                state.turn = (turn + older_done) % len(older) if older else 0  # the next tick starts there
                break
            window = PARTITIONS.time_window_for_partition_key(key)
            listing = listing_fingerprint(client, window.start - WINDOW_OVERLAP, min(window.end, now))
            if listing == state.prints.get(key):
                continue
            if key not in state.prints and key in older:  # first look: a baseline (the sweep reads it)
                state.prints[key] = listing
                continue
            if _run_in_flight(context.instance, key):
                notes.append(f"{key}: a run is already queued or running; looking again next tick")
                continue  # fingerprint not kept, so the next tick asks again
            requests.append(state.request(RequestedRun(partition=key, label=listing), real))
            state.prints[key] = listing
    except VendorError as exc:
        reachable = False  # fingerprints kept as they were, so the next tick asks again
        notes.append(f"Public API probe failed: {exc}")
    finally:
        client.close()
    sweep = [*older, *keys[-SENSOR_HOURS:-1]]  # the complete hours of the horizon
    if reachable and sweep and state.swept != keys[-1] and not state.sweep_open():
        requests.append(state.request(RequestedRun(range=(sweep[0], sweep[-1]), label=keys[-1]), real))
        state.swept = keys[-1]
    if not requests:
        settle = _settle_request(context.instance, staging.staging_db(STAGING_SYNC), now, real)
        if isinstance(settle, dg.RunRequest):
            requests.append(settle)
        elif settle:
            notes.append(settle)
    state.prints = {k: v for k, v in state.prints.items() if k in older or k in keys[-SENSOR_HOURS:]}
    skip = None if requests else dg.SkipReason("; ".join(notes) or "no change in the audit trail's hours")
    return dg.SensorResult(run_requests=requests, skip_reason=skip, cursor=state.dump())


def lateness_horizon() -> timedelta:
    """AUDIT_TRAIL_LATENESS_HOURS: how long after its time an event may still be listed and forwarded."""
    raw = load_settings()["AUDIT_TRAIL_LATENESS_HOURS"]
    try:
        hours = float(raw)
    except ValueError:
        raise ValueError(f"AUDIT_TRAIL_LATENESS_HOURS must be a number of hours, not {raw!r}") from None
    return timedelta(hours=min(max(hours, float(SENSOR_HOURS)), 90 * 24.0))  # spec §2: 90 days kept


def listing_fingerprint(client: SegmentPublicApiClient, start: datetime, end: datetime) -> str:
    """A short digest of what the Public API lists in (start, end]: one page of up to 200 events (spec §2),
    their count, ids and timestamps as a set, so it does not depend on the listing's order (spec §7). An
    hour of more than 200 events gets a digest of its first page; the hourly sweep reads the rest."""
    page = list(islice(client.iter_audit_events(start, end, page_size=PROBE_PAGE), PROBE_PAGE))
    listed = sorted(f"{e.get('id')}@{e.get('timestamp')}" for e in page)
    return hashlib.sha256("\n".join(listed).encode()).hexdigest()[:16] + f"-{len(page)}"


@dataclass
class RequestedRun:
    """A run the sensor asked for: one hour, or a range of hours (the sweep); retried while it fails."""

    partition: str | None = None
    range: tuple[str, str] | None = None
    label: str = ""  # what made it: the hour's listing fingerprint, or the hour of the sweep
    attempt: int = 1
    at: str = ""  # when it was first requested (ISO)

    @property
    def run_key(self) -> str:
        kind = self.partition or f"sweep:{self.label}"
        return f"{kind}:{self.label}:{self.attempt}" if self.partition else f"{kind}:{self.attempt}"

    def run_request(self) -> dg.RunRequest:
        tags = {REQUEST_TAG: self.run_key,
                "segment_ops/trigger": "audit_events_sensor" + (":sweep" if self.range else "")}
        if self.range:
            tags |= {"dagster/asset_partition_range_start": self.range[0],
                     "dagster/asset_partition_range_end": self.range[1]}
        return dg.RunRequest(partition_key=self.partition, run_key=self.run_key, tags=tags)


@dataclass
class SensorState:
    """The sensor's cursor: listing fingerprints per hour, the runs it requested that have not succeeded
    yet, where the turn of older hours stands, and the hour of the last sweep."""

    prints: dict[str, str] = field(default_factory=dict)
    open: dict[str, RequestedRun] = field(default_factory=dict)
    turn: int = 0
    swept: str = ""

    @classmethod
    def load(cls, cursor: str | None) -> "SensorState":
        data = json.loads(cursor) if cursor else {}
        if "prints" not in data:  # no cursor, or the one before late events were followed ({hour: id})
            return cls()
        opened = {k: RequestedRun(**{**v, "range": tuple(v["range"]) if v.get("range") else None})
                  for k, v in data.get("open", {}).items()}
        return cls(prints=data["prints"], open=opened, turn=data.get("turn", 0), swept=data.get("swept", ""))

    def dump(self) -> str:
        return json.dumps({"prints": self.prints, "open": {k: asdict(v) for k, v in self.open.items()},
                           "turn": self.turn, "swept": self.swept})

    def older_in_turn(self, older: list[str]) -> list[str]:
        """The next `OLDER_PROBES_PER_TICK` of the older hours, newest first, in turn across ticks."""
        if not older:
            return []
        newest_first = older[::-1]
        start = self.turn % len(newest_first)
        self.turn = (start + OLDER_PROBES_PER_TICK) % len(newest_first)
        return (newest_first[start:] + newest_first[:start])[:OLDER_PROBES_PER_TICK]

    def request(self, run: RequestedRun, now: datetime) -> dg.RunRequest:
        run.at = run.at or now.isoformat()
        self.open[run.run_key] = run
        return run.run_request()

    def sweep_open(self) -> bool:
        return any(run.range for run in self.open.values())


def follow_up_requests(instance: dg.DagsterInstance, state: SensorState,
                       now: datetime) -> tuple[list[dg.RunRequest], list[str]]:
    """Requests again the runs of `state.open` whose last run failed or was canceled (a new run key per
    attempt), forgets those that succeeded, and gives up on one after `MAX_ATTEMPTS` (the sweep reads its
    hours again) or when it was never launched within `OPEN_REQUEST_TTL`."""
    requests, notes = [], []
    for run_key, run in list(state.open.items()):
        records = instance.get_run_records(dg.RunsFilter(tags={REQUEST_TAG: run_key}), limit=1)
        status = records[0].dagster_run.status if records else None
        if status is None and now - datetime.fromisoformat(run.at) < OPEN_REQUEST_TTL:
            continue  # not launched yet
        if status is not None and status not in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED,
                                                 dg.DagsterRunStatus.SUCCESS):
            continue  # queued or running
        del state.open[run_key]
        if status in (dg.DagsterRunStatus.SUCCESS, None):
            continue
        if run.attempt >= MAX_ATTEMPTS:
            notes.append(f"{run_key} failed {run.attempt} times; the next sweep reads its hours again")
            continue
        requests.append(state.request(replace(run, attempt=run.attempt + 1), now))
    return requests, notes


def awaiting_acks(path: Path) -> int | None:
    """Messages of the HEC ledger awaiting an indexer ack in the staging file at `path` (0: no file or no
    ledger yet); None while a run holds the file (that run polls them)."""
    if not store.has_state(path):
        return 0
    try:
        con = store.connect(path, read_only=True, threads=1, lock_timeout=2.0)
    except store.StagingLockedError:
        return None
    try:
        return sum(r.messages for r in Ledger(con, create=False).awaiting_receipts(HEC_LEDGER_SYNC))
    except duckdb.CatalogException:  # the ledger tables do not exist yet
        return 0
    finally:
        con.close()


def _settle_request(instance: dg.DagsterInstance, path: Path, now: datetime,
                    real: datetime) -> dg.RunRequest | str | None:
    """A run of the newest complete hour when acks are awaited and no run of the job is going: it polls the
    acks, re-opens and re-sends what timed out, and re-reads an hour (harmless: only what is new is sent).
    Every tick (3 minutes) while acks are awaited, so HEC's channel never idles past maxIdleTime (600 s)."""
    awaiting = awaiting_acks(path)
    if not awaiting:
        return None if awaiting == 0 else "acks awaited, but a run holds the staging file (it polls them)"
    if _run_in_flight(instance, None):
        return f"{awaiting} message(s) await an ack; a run of the audit trail is going and polls them"
    [key] = complete_hours(1, now)
    return dg.RunRequest(partition_key=key, run_key=f"settle:{real.isoformat()}",
                         tags={"segment_ops/trigger": "audit_events_sensor:settle_acks"})


@dg.schedule(cron_schedule="20 * * * *", job=audit_trail_job, default_status=dg.DefaultScheduleStatus.STOPPED,
             execution_timezone="UTC",
             description=f"Safety net: every hour re-reads the last {SAFETY_NET_HOURS} complete hours to "
                         "catch late events the sensor missed (forwarding only what is new).")
def audit_trail_safety_net(context: dg.ScheduleEvaluationContext) -> Iterable[dg.RunRequest]:
    moment = context.scheduled_execution_time
    for key in complete_hours(SAFETY_NET_HOURS, moment):
        yield dg.RunRequest(partition_key=key, run_key=f"{key}:safety_net:{moment.isoformat()}")


def complete_hours(count: int, now: datetime | None = None) -> list[str]:
    """The `count` newest complete hourly partition keys at `now` (default: `clock.now()`), oldest first (e.g.
    for the demo or a catch-up)."""
    # With end_offset=1 the last key is the hour in progress; the ones before it are complete.
    return PARTITIONS.get_partition_keys(current_time=now or clock.now())[-count - 1:-1]


def _run_in_flight(instance: dg.DagsterInstance, partition_key: str | None) -> bool:
    """Whether a run of the job (of `partition_key`; None: of any partition) is queued or running."""
    tags = {"dagster/partition": partition_key} if partition_key else {}
    return bool(instance.get_run_records(
        dg.RunsFilter(job_name=audit_trail_job.name, statuses=IN_FLIGHT, tags=tags), limit=1))


defs = dg.Definitions(
    assets=[segment_audit_events, siem_audit_events],
    jobs=[audit_trail_job],
    sensors=[audit_events_sensor],
    schedules=[audit_trail_safety_net],
)
