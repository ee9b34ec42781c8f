"""GDPR / CCPA regulations: privacy requests filed with Segment's Public API once, followed to their end, and
honoured by every other sync (`engine.regulations`).

The asset `segment/regulations` (group `governance`) reads the requests of the warehouse query
(REGULATIONS_QUERY_FILE) and of the files dropped into `$SEGMENT_OPS_HOME/inbox/regulations/`, records each
once (a subject is regulated from then on: no sync sends to it), files them (`POST /regulations`, at most
REGULATIONS_SUBJECTS_PER_REQUEST subjects per call, an intent recorded before each call and reconciled after a
crash), asks Segment where each open regulation stands, and, once Segment accepted a deleting regulation,
erases the subject from segment_ops's own stores. A regulation Segment fails (FAILED, INVALID, NOT_SUPPORTED,
PARTIAL_SUCCESS) or a request it refuses is alerted to Slack and fails a check, and so is a row or file that
is not a request (kept once in the ledger's `rejected` table and alerted once; the check fails in every run
that reads it). The run's metadata holds counts and request ids, never a subject's id.

An inbox file is read once it was last modified at least `requests.SETTLED_SECONDS` ago (until then it may be
half-written) and removed once its requests are recorded; a file that cannot be read (too large, refused by
the system) is left where it is.

`regulations_schedule` (every 15 minutes) is STOPPED by default, as every schedule that acts on a live
workspace; the inbox files wait for it or for a run launched by hand.
"""

import time
from pathlib import Path

import dagster as dg
from pydantic import Field

from segment_ops.clients.base import VendorAuthError, VendorError
from segment_ops.clients.slack import WebhookUrlError
from segment_ops.config import load_settings
from segment_ops.engine import store
from segment_ops.engine.alerts import governance_message, redact_secrets
from segment_ops.engine.ledger import Ledger, Rejection
from segment_ops.engine.regulations import FAILED_STATUSES, FINAL_STATUSES, SYNC
from segment_ops.engine.warehouse import WarehouseError, stage_query
from segment_ops.resources import AlertsResource, SegmentPublicApiResource, StagingResource, WarehouseResource
from segment_ops.syncs.external import warehouse_table_key
from segment_ops.syncs.metadata import markdown_table
from segment_ops.syncs.regulations import filing
from segment_ops.syncs.regulations.requests import inbox_files, parse_rows, read_inbox_file
from segment_ops.syncs.shared import OWNER, SyncFailure

KEY = dg.AssetKey(["segment", "regulations"])
GROUP = "governance"
INBOX = ("inbox", "regulations")
QUERY_PACKAGE = "segment_ops.syncs.regulations.sql"
STAGED = "regulation_rows"
POLL_SECONDS = 2.0


class RegulationsConfig(dg.Config):
    dry_run: bool = Field(default=False, description="Read and check the requests; record and file nothing.")
    wait_seconds: float = Field(default=0.0, ge=0.0, le=3600.0,
                                description="After filing, keep asking Segment until every open regulation "
                                            "is final or this many seconds passed (0: ask once).")


def query_text() -> tuple[str | None, str]:
    """The requests query (None: REGULATIONS_QUERY_FILE is `off`) and where it came from."""
    from importlib import resources

    setting = load_settings()["REGULATIONS_QUERY_FILE"].strip()
    if setting.lower() == "off":
        return None, "off"
    path = Path(setting) if setting else Path(str(resources.files(QUERY_PACKAGE) / "privacy_requests.sql"))
    try:
        return path.read_text(encoding="utf-8"), str(path)
    except OSError as exc:
        raise SyncFailure(description=f"REGULATIONS_QUERY_FILE {path} cannot be read: "
                                      f"{exc.strerror}") from None


def subjects_per_request() -> int:
    raw = load_settings()["REGULATIONS_SUBJECTS_PER_REQUEST"].strip()
    if not (raw.isdigit() and 1 <= int(raw) <= 100_000):
        raise SyncFailure(description=f"REGULATIONS_SUBJECTS_PER_REQUEST must be a whole number from 1 to "
                                      f"100000, got {raw[:40]!r}")
    return int(raw)


@dg.asset(
    key=KEY,
    group_name=GROUP,
    kinds={"segment", "duckdb"},
    owners=[OWNER, "team:privacy"],
    pool=f"staging_{SYNC}",
    code_version="1",
    deps=[warehouse_table_key("privacy_requests")],
    description="Deletion and suppression requests (GDPR / CCPA) filed with the Segment Public API's "
                "[regulations](https://docs.segmentapis.com/tag/Deletion-and-Suppression) once each, "
                "followed to their end, and honoured by every sync: no message about a regulated userId is "
                "sent.",
    check_specs=[
        dg.AssetCheckSpec("requests_filed", asset=KEY,
                          description="Every recorded request is filed with Segment: none unfiled, refused "
                                      "or interrupted, and no row or file of this run's was rejected."),
        dg.AssetCheckSpec("regulations_succeeded", asset=KEY,
                          description="No regulation ended FAILED, INVALID, NOT_SUPPORTED or "
                                      "PARTIAL_SUCCESS."),
        dg.AssetCheckSpec("erased_at_home", asset=KEY,
                          description="Every subject of a deleting regulation Segment accepted is erased "
                                      "from segment_ops's own stores."),
    ],
)
def segment_regulations(context: dg.AssetExecutionContext, config: RegulationsConfig,
                        segment_public_api: SegmentPublicApiResource, warehouse: WarehouseResource,
                        staging: StagingResource, alerts: AlertsResource) -> dg.MaterializeResult:
    run_id = context.run.run_id
    query, query_source = query_text()
    cap = subjects_per_request()
    home = Path(staging.home)
    inbox = home.joinpath(*INBOX)
    files = inbox_files(inbox)
    filed = filing.Filed()
    path = staging.staging_db(SYNC)
    with store.staging(path) as con:
        rows, rejections, unreadable = _read(con, warehouse.url, query, query_source, files)
        requests, refused_rows = parse_rows(rows)
        rejections += refused_rows
        if config.dry_run:
            context.log.info(f"dry run: {len(requests):,} request(s) read, {len(rejections):,} rejected; "
                             "nothing recorded or filed")
            return dg.MaterializeResult(metadata={"dry_run": True, "requests_read": len(requests),
                                                  "rejected": len(rejections), "inbox_files": len(files)},
                                        check_results=_skipped_checks())
        ledger = Ledger(con)
        new_rejections = ledger.add_new_rejections(SYNC, rejections, run_id=run_id)
        filed.errors += [f"{r.source}: rejected: {r.reason}" for r in new_rejections]
        filing.record_requests(con, requests, run_id=run_id, filed=filed)
        for file in files:  # recorded: the state holds their rows now (and erasure must not find them here)
            if file not in unreadable:  # left for a person to fix: its requests are in no state yet
                file.unlink(missing_ok=True)
        client = segment_public_api.get_client()
        try:
            filing.reconcile(con, client, run_id=run_id, filed=filed)
            filing.file_requests(con, client, cap=cap, run_id=run_id, filed=filed)
            _track(context, con, client, filed, config.wait_seconds)
        except VendorAuthError as exc:
            _alert(context, alerts, filed)  # what was rejected or refused before: alerted once, by this run
            raise SyncFailure(description=f"the Segment Public API refused the token: {exc}; the requests "
                                          "are recorded (their subjects are suppressed already) and are "
                                          "filed by the next run") from None
        except VendorError as exc:
            _alert(context, alerts, filed)
            raise SyncFailure(description=f"filing stopped: {exc}; what was filed is recorded, an "
                                          "interrupted call is reconciled by the next run") from None
        finally:
            client.close()
        if filed.split:
            context.log.warning(f"Segment refused {filed.split:,} filing(s) of several subjects, filed again "
                                "in halves: if it refused them for their size, lower "
                                "REGULATIONS_SUBJECTS_PER_REQUEST")
        erase = filing.to_erase(con)
    erased = _erase(context, home, erase, path)
    with store.staging(path, read_only=True) as con:
        standing = filing.standing(con)
        left_to_erase = len(filing.to_erase(con))
        record = con.execute(
            "SELECT request_id, regulation_type, filing_state, regulation_id, coalesce(status, '-') "
            "FROM regulation_record ORDER BY recorded_at DESC, request_id LIMIT 20").fetchall()
    alerted = _alert(context, alerts, filed)
    metadata = {
        "requests_read": len(requests), "rejected": len(rejections), "inbox_files": len(files),
        "inbox_files_unreadable": len(unreadable), "query": query_source, "recorded": filed.recorded,
        "already_recorded": filed.already_recorded, "filings": filed.filings,
        "subjects_filed": filed.subjects_filed, "refused": filed.refused, "split_filings": filed.split,
        "reconciled": filed.reconciled, "abandoned": filed.abandoned, "erased_subjects": erased,
        "status_changes": len(filed.status_changes), "alerts_sent": alerted,
        "requests_total": standing.requests,
        "finished_requests": standing.by_status.get("FINISHED", 0),
        "open_requests": sum(n for status, n in standing.by_status.items() if status not in FINAL_STATUSES),
        "failed_requests": sum(n for status, n in standing.by_status.items() if status in FAILED_STATUSES),
        "by_status": dg.MetadataValue.md(markdown_table(["Segment status", "requests"],
                                                        sorted(standing.by_status.items()))),
        "by_type": dg.MetadataValue.md(markdown_table(["regulation type", "requests"],
                                                      sorted(standing.by_type.items()))),
        "by_filing": dg.MetadataValue.md(markdown_table(["filing", "requests"],
                                                        sorted(standing.by_filing.items()))),
        "latest_requests": dg.MetadataValue.md(markdown_table(
            ["request", "type", "filing", "regulation", "status"], record)),
    }
    unsettled = {state: n for state, n in standing.by_filing.items() if state != filing.FILED}
    return dg.MaterializeResult(metadata=metadata, check_results=[
        dg.AssetCheckResult(check_name="requests_filed", passed=not unsettled and not rejections,
                            metadata={"not_filed": sum(unsettled.values()), **unsettled,
                                      "rejected_this_run": len(rejections)}),
        dg.AssetCheckResult(check_name="regulations_succeeded", passed=not standing.failed, metadata={
            "failed": len(standing.failed), "failed_regulations": dg.MetadataValue.md(
                markdown_table(["regulation", "type", "status", "subjects"], standing.failed)
                if standing.failed else "none")}),
        dg.AssetCheckResult(check_name="erased_at_home", passed=left_to_erase == 0,
                            metadata={"erased_this_run": erased, "left_to_erase": left_to_erase}),
    ])


def _read(con, warehouse_url: str, query: str | None, query_source: str,
          files: list[Path]) -> tuple[list, list[Rejection], set[Path]]:
    """The (source, row) pairs of the query and the inbox files, the rejections of the files that cannot be
    read, and those files."""
    rows: list = []
    rejections: list[Rejection] = []
    unreadable: set[Path] = set()
    if query is not None:
        try:
            stage_query(con, warehouse_url, query, STAGED)
        except WarehouseError as exc:
            # The default query reads the demo warehouse's `privacy_requests`, which a real one lacks.
            raise SyncFailure(description=f"{query_source}: {exc}; point REGULATIONS_QUERY_FILE at the query "
                                          "of your warehouse's privacy requests, or set it to `off` to take "
                                          "requests only from the inbox ($SEGMENT_OPS_HOME/inbox/"
                                          "regulations/)") from None
        cursor = con.execute(f"SELECT * FROM {STAGED}")
        names = [d[0].lower() for d in cursor.description]
        source = Path(query_source).name
        rows += [(source, dict(zip(names, row, strict=True))) for row in cursor.fetchall()]
        con.execute(f"DROP TABLE {STAGED}")
    for file in files:
        try:
            rows += read_inbox_file(file)
        except (OSError, ValueError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            rejections.append(Rejection(record_key=None, source=file.name, record=None,
                                        reason=f"the file cannot be read (it stays in the inbox): {why}"))
            unreadable.add(file)
    return rows, rejections, unreadable


def _track(context: dg.AssetExecutionContext, con, client, filed: filing.Filed, wait_seconds: float) -> None:
    """Ask Segment where the open regulations stand; with `wait_seconds`, again until all are final."""
    deadline = time.monotonic() + wait_seconds
    filing.track(con, client, filed=filed, on_error=context.log.warning)
    while wait_seconds and filing.open_regulations(con) and time.monotonic() + POLL_SECONDS < deadline:
        time.sleep(POLL_SECONDS)
        filing.track(con, client, filed=filed, on_error=context.log.warning)
    for regulation_id, kind, status in filed.status_changes:
        context.log.info(f"regulation {regulation_id} ({kind}): {status}")


def _erase(context: dg.AssetExecutionContext, home: Path, subjects: list[str], own: Path) -> int:
    """Erase the subjects of accepted deleting regulations from every store of the home, this sync's own
    record last (it keeps the ids until every other file is erased, so a file a long run kept locked is
    erased by the next run); returns how many subjects were erased everywhere (0 when a file was missed)."""
    if not subjects:
        return 0
    from segment_ops.engine.erasure import ErasureIncompleteError, erase_everywhere

    try:
        report = erase_everywhere(home, subjects, reason="a deleting regulation Segment accepted", last=own)
    except ErasureIncompleteError as exc:
        context.log.warning(f"erasure at home incomplete, the next run erases again: {exc}")
        return 0
    context.log.info(f"{len(subjects):,} subject(s) erased from segment_ops's stores "
                     f"({sum(report.rows.values()):,} rows, {len(report.files):,} inbox files)")
    return len(subjects)


def _alert(context: dg.AssetExecutionContext, alerts: AlertsResource, filed: filing.Filed) -> int:
    """One Slack alert for the regulations that ended badly, the filings Segment refused and the rows or files
    rejected for the first time in this run."""
    lines = [f"regulation {regulation_id} ({kind}) ended {status}" for regulation_id, kind, status
             in filed.newly_failed]
    lines += filed.errors
    if not lines:
        return 0
    try:
        with alerts.get_client() as client:
            client.post_message(governance_message("privacy regulations need attention", lines,
                                                   alerts.run_url(context.run.run_id)))
    except (VendorError, WebhookUrlError) as exc:
        context.log.error(f"regulations alert not sent: {redact_secrets(str(exc))}")
        return 0
    return 1


def _skipped_checks() -> list[dg.AssetCheckResult]:
    return [dg.AssetCheckResult(check_name=name, passed=True, description="dry run: nothing was filed")
            for name in ("requests_filed", "regulations_succeeded", "erased_at_home")]


regulations_job = dg.define_asset_job("regulations_job", selection=[KEY],
                                      description="File and follow the privacy requests (GDPR / CCPA).")
regulations_schedule = dg.ScheduleDefinition(
    name="regulations_schedule", job=regulations_job, cron_schedule="*/15 * * * *",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Every 15 minutes: record new privacy requests (query and inbox), file them, follow them.")

defs = dg.Definitions(assets=[segment_regulations], jobs=[regulations_job], schedules=[regulations_schedule])
