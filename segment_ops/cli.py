"""`segment-ops`: the command line. Subcommands: sandbox, demo, replay, webhooks, check, state, status,
rejected, models."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from segment_ops.commands.output import still_held
from segment_ops.config import HomeConflictError, Settings, load_settings
from segment_ops.engine.pgstate import SharedStateError  # stdlib imports only: `--help` stays fast

if TYPE_CHECKING:  # the engine is imported lazily, so `segment-ops --help` stays fast
    import duckdb

    from segment_ops.engine.delivery import DeliveryReport
    from segment_ops.engine.transfer import TransferReport
    from segment_ops.syncs.replay.reader import ReplayPlan


class _Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every option's default in `--help` (an option without one says in its help what applies); descriptions
    keep their line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, {}, [], "") or isinstance(action.default, bool):
            return action.help  # "(default: None)" and "(default: False)" on a flag tell nobody anything
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The `segment-ops` parser with every subcommand."""
    # `-v` is accepted before the subcommand and after it (`segment-ops replay -v FILE`): every subparser
    # inherits it from `common`, with SUPPRESS so a subparser's unset flag never overwrites the top one's.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="log retries and progress")
    parser = argparse.ArgumentParser(prog="segment-ops", description=__doc__, formatter_class=_Help)
    parser.add_argument("-v", "--verbose", action="store_true", help="log retries and progress")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = _Subcommands(parser.add_subparsers(dest="command", required=True), common)

    from segment_ops.commands import models as models_command
    from segment_ops.commands import status as status_command
    from segment_ops.sandbox import cli as sandbox_cli

    sandbox_cli.register(sub)

    demo = sub.add_parser("demo", help="start the sandbox and run every sync once through Dagster")
    demo.add_argument("--scale", type=float, default=1.0, help="demo data size (1.0 = about 2,000 users)")
    demo.add_argument("--seed", type=int, default=7, help="seed of the demo data")
    demo.set_defaults(func=_run_demo)

    replay = sub.add_parser("replay", help="send a JSONL or Parquet file of Segment calls through the engine")
    replay.add_argument("path", type=Path)
    replay.add_argument("--dry-run", action="store_true",
                        help="validate and show what would be sent; send nothing")
    replay.add_argument("--force", action="store_true", help="send again what the ledger says was delivered")
    replay.add_argument("--max-in-flight", type=int, default=4, help="concurrent batch requests")
    replay.add_argument("--rate-limit", type=float, default=None,
                        help="max requests/s to Segment (default 200; Segment's guidance is <= 1,000)")
    replay.add_argument("--no-gzip", action="store_true", help="send batch bodies uncompressed")
    replay.add_argument("--wait", type=float, default=60.0, metavar="SECONDS",
                        help="how long to wait while another replay (a `replay_job` run, or another "
                             "`segment-ops replay`) holds the replay ledger")
    replay.add_argument("--skip-preflight", action="store_true",
                        help="send without the preflight gate (the write key is not checked against the "
                             "workspace's sources)")
    replay.add_argument("--no-progress", action="store_true",
                        help="no progress bar on a terminal (never drawn in logs or CI, or with "
                             "SEGMENT_OPS_PROGRESS=0)")
    replay.set_defaults(func=_run_replay)

    webhooks = sub.add_parser("webhooks", help="run the webhook receiver (Heap segment syncs and Fullstory "
                                                            "Streams -> their inboxes)")
    webhooks.add_argument("--host", default="127.0.0.1",
                          help="interface to listen on (0.0.0.0 behind a proxy)")
    webhooks.add_argument("--port", type=int, default=8780, help="port to listen on")
    webhooks.set_defaults(func=_run_webhooks)

    check = sub.add_parser("check", help="verify every configured credential and setting through the "
                                         "vendors' APIs before anything is sent; exit 1 when a check fails")
    check.add_argument("--only", metavar="NAME[,NAME...]", type=_names,
                       help="run only these checks, e.g. `--only warehouse,reverse_etl_models` to validate "
                            "the reverse-ETL models")
    check.set_defaults(func=_run_check)

    state = sub.add_parser("state", help="export a sync's state to a folder, or import one (backup, "
                                         "restore, moving to another machine without sending again)")
    state_sub = sub.add_subcommands(state, dest="state_command", required=True)
    export = state_sub.add_parser("export", help="write NAME's staging file and inbox to the new folder DEST")
    export.add_argument("name", help="a staging file's name in $SEGMENT_OPS_HOME/staging/ without .duckdb, "
                                     "e.g. replay, audit_trail, reverse_etl_user_traits, heap_power_users")
    export.add_argument("dest", type=Path)
    export.set_defaults(func=_run_state_export)
    restore = state_sub.add_parser("import", help="make a sync's staging file and inbox in this home from an "
                                                  "export (the home must hold no state of that sync)")
    restore.add_argument("src", type=Path)
    restore.set_defaults(func=_run_state_import)

    status_command.register(sub)
    models_command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _load_dotenv(Path.cwd() / ".env")
    if not args.verbose:
        logging.getLogger("segment_ops.clients").setLevel(logging.ERROR)
    try:
        return int(args.func(args) or 0)
    except HomeConflictError as exc:  # an old ./.segment_ops holds state: the message says both ways out
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SharedStateError as exc:  # the state database cannot be reached, or a file is not its copy
        from segment_ops.engine.alerts import redact_secrets

        print(f"error: {redact_secrets(str(exc))}", file=sys.stderr)
        return 2


class _Subcommands:
    """`add_subparsers`' action, whose every parser takes `-v` and shows its options' defaults."""

    def __init__(self, action: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
        self._action, self._common = action, common

    def add_parser(self, name: str, **kwargs: object) -> argparse.ArgumentParser:
        kwargs.setdefault("formatter_class", _Help)
        return self._action.add_parser(name, parents=[self._common], **kwargs)

    def add_subcommands(self, parser: argparse.ArgumentParser, **kwargs: object) -> _Subcommands:
        return _Subcommands(parser.add_subparsers(**kwargs), self._common)


def _load_dotenv(path: Path) -> None:
    """Read `.env` of the current folder the way every `dagster` command does (`dagster dev`, `dagster asset
    materialize`: its values win over the environment's), so `segment-ops check` judges the settings the
    UI's runs will have. Names are logged with -v; values never."""
    if not path.is_file():
        return
    from dotenv import dotenv_values

    values = {name: value for name, value in dotenv_values(path).items() if value is not None}
    os.environ.update(values)
    logging.getLogger("segment_ops.cli").info("loaded %s from %s", ", ".join(sorted(values)) or "nothing",
                                              path)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("segment_ops")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def _stop_replay(signum: int, frame: object) -> None:
    """Ctrl-C: stop at once, as a killed replay stops. Waiting for the sending threads would take up to their
    5 minutes of retries; a kill costs nothing (every message is in the ledger before it is sent, and each
    answer is journaled as it comes), so the process ends here."""
    print("\ninterrupted: nothing is lost. What was planned and not yet delivered stays pending (a batch "
          "that was on the wire may be sent again, and Segment drops the repeat by messageId); run the same "
          "command again to send it (`segment-ops status` shows it).", file=sys.stderr, flush=True)
    os._exit(130)


def _run_replay(args: argparse.Namespace) -> int:
    from segment_ops.clients.base import VendorError
    from segment_ops.clients.segment_tracking import DEFAULT_MAX_REQUESTS_PER_SECOND, SegmentTrackingClient
    from segment_ops.engine.delivery import DeliveryError
    from segment_ops.engine.governance import Governance
    from segment_ops.engine.ledger import CompactedPayloadError, Ledger
    from segment_ops.engine.pgstate import redacted, state_url
    from segment_ops.engine.progress import DeliveryProgress, host_of
    from segment_ops.engine.regulations import load_regulated
    from segment_ops.engine.store import STREAMING_MEMORY_LIMIT, StagingLockedError, staging, staging_file
    from segment_ops.syncs.replay.reader import ReplayInputError, replay_file

    signal.signal(signal.SIGINT, _stop_replay)
    settings = load_settings()
    if not args.dry_run and (refused := _gate_replay(settings, skip=args.skip_preflight)) is not None:
        return refused

    def client() -> SegmentTrackingClient:
        return SegmentTrackingClient(
            settings["SEGMENT_TRACKING_URL"], settings["SEGMENT_WRITE_KEY"], gzip=not args.no_gzip,
            max_requests_per_second=args.rate_limit or DEFAULT_MAX_REQUESTS_PER_SECOND,
            max_connections=args.max_in_flight)

    ledger_file = staging_file(settings.home, "replay")
    try:  # who asked to be forgotten (the regulations sync's record), read before anything is planned
        governance = Governance(regulated=load_regulated(settings.home))
    except StagingLockedError:
        print("error: the privacy regulations could not be read (a segment/regulations run holds them): "
              "nothing was sent; run the replay again when it ends", file=sys.stderr)
        return 2

    def session(wait: float) -> tuple[contextlib.ExitStack, duckdb.DuckDBPyConnection]:
        # A session as a run's: with SEGMENT_OPS_STATE_URL, under the sync's lock in PostgreSQL, checked in.
        stack = contextlib.ExitStack()
        return stack, stack.enter_context(staging(ledger_file, lock_timeout=wait,
                                                  memory_limit=STREAMING_MEMORY_LIMIT))

    held = (f"the replay ledger (state in PostgreSQL, {redacted(url)})" if (url := state_url()) else
            str(ledger_file))
    try:  # a SharedStateError (the state database cannot be reached, ...) is `main`'s: exit 2
        stack, con = session(0)
    except StagingLockedError:
        print(f"another replay holds {held}; waiting up to {args.wait:.0f}s for it to finish",
              file=sys.stderr)
        try:
            stack, con = session(args.wait)
        except StagingLockedError:
            holder = "another replay (a `replay_job` run in Dagster, or another `segment-ops replay`)"
            print(f"error: {still_held(holder, held, args.wait, 'sent')}", file=sys.stderr)
            return 2
    # The bar only on a terminal; "retrying" lines (at most one per 10 s) wherever stderr goes, without -v.
    host = host_of(settings["SEGMENT_TRACKING_URL"])
    progress = DeliveryProgress("replay", destination=host, bar=False if args.no_progress else None,
                                retry_notices=True)
    planned: list[ReplayPlan] = []

    def before_sending(plan: ReplayPlan) -> None:  # the validation report, before the first request
        planned.append(plan)
        _print_replay(plan)

    redirect = contextlib.nullcontext()
    if progress.bar:  # -v's log lines go above the bar instead of through it
        from tqdm.contrib.logging import logging_redirect_tqdm
        redirect = logging_redirect_tqdm()
    with stack, redirect:
        try:
            result = replay_file(Ledger(con), args.path, client, run_id=f"cli-{uuid.uuid4().hex[:12]}",
                                 force=args.force, dry_run=args.dry_run, max_in_flight=args.max_in_flight,
                                 before_sending=before_sending, progress=progress,
                                 governance=governance)
        except (ReplayInputError, CompactedPayloadError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except (DeliveryError, VendorError) as exc:  # undeliverable, or e.g. a wrong write key
            if planned and isinstance(exc, DeliveryError):
                _print_replay(planned[0], exc.report)
            print(f"error: {exc}", file=sys.stderr)
            return 1
    if args.dry_run:
        _print_replay(result.plan, dry_run=True)
    else:
        _print_replay(result.plan, result.delivery)
        if result.suppressed:
            print(f"{result.suppressed:,} message(s) about regulated subjects suppressed, not sent "
                  "(`segment-ops status` counts them)")
    return 0 if result.ok else 1


def _state_paths(settings: Settings, name: str) -> tuple[Path, Path]:
    """The staging file and inbox folder of `name` in this home."""
    from segment_ops.engine.store import staging_file

    return staging_file(settings.home, name), settings.home / "inbox" / name


def _run_state_export(args: argparse.Namespace) -> int:
    import segment_ops.definitions  # noqa: F401  (registers every sync's state schemas)
    from segment_ops.engine.transfer import NAME, TransferError, export_state

    if not NAME.fullmatch(args.name):
        print(f"error: {args.name!r} is not a staging file's name (see $SEGMENT_OPS_HOME/staging/)",
              file=sys.stderr)
        return 2
    staging_file, inbox = _state_paths(load_settings(), args.name)
    try:
        report = export_state(staging_file, args.dest, inbox=inbox)
    except TransferError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _print_transfer("exported", report, args.dest)
    return 0


def _run_state_import(args: argparse.Namespace) -> int:
    import segment_ops.definitions  # noqa: F401  (registers every sync's state schemas)
    from segment_ops.engine.transfer import TransferError, import_state, read_manifest

    try:
        name = read_manifest(args.src)["name"]
        staging_file, inbox = _state_paths(load_settings(), name)
        report = import_state(args.src, staging_file, inbox=inbox)
    except TransferError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _print_transfer("imported", report, staging_file)
    return 0


def _print_transfer(verb: str, report: TransferReport, where: Path) -> None:
    print(f"{verb} {report.name} ({where}):")
    for schema, version in sorted(report.schemas.items()):
        print(f"  schema {schema} v{version}")
    for table, rows in sorted(report.rows.items()):
        print(f"  {table}: {rows:,} rows")
    print(f"  inbox files: {report.files}")


def _gate_replay(settings: Settings, *, skip: bool) -> int | None:
    """The preflight gate of the syncs in front of a replay: an exit code when it must not send, else None."""
    if skip:
        print("warning: preflight skipped (--skip-preflight): the write key and the tracking host's region "
              "are not verified before sending", file=sys.stderr)
        return None
    from segment_ops.engine.preflight import PreflightRefused, Status, describe, render_table
    from segment_ops.preflight import gate_sending

    try:
        results = gate_sending(settings, tracking_url=settings["SEGMENT_TRACKING_URL"],
                                write_key=settings["SEGMENT_WRITE_KEY"])
    except ValueError as exc:  # PREFLIGHT_CACHE_SECONDS out of range: the message names it
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except PreflightRefused as exc:
        print(render_table(exc.results))
        print(f"error: {exc}. Nothing was sent. Fix the setting (`segment-ops check` shows every check), "
              "or run with --skip-preflight to send anyway.", file=sys.stderr)
        return 1
    for result in results:
        if result.status in (Status.WARN, Status.FAIL):
            print(f"warning: preflight {result.check}: {describe(result)} (sending anyway)", file=sys.stderr)
    return None


def _print_replay(plan: ReplayPlan, delivery: DeliveryReport | None = None, *, dry_run: bool = False) -> None:
    """Without `delivery`: what the file holds, as an equation of its lines (printed before sending). With it:
    what the delivery did, as an equation of what was sent."""
    if delivery is not None:
        parts = [(delivery.delivered, "delivered"), (delivery.rejected, "rejected by Segment"),
                 (delivery.failed, "still pending")]
        if delivery.awaiting_ack:
            parts.append((delivery.awaiting_ack, "awaiting confirmation"))
        sent = sum(count for count, _ in parts)
        if not sent and not plan.sending:
            return  # "nothing to send" said it
        of = f" of {plan.sending:,}" if plan.sending is not None and plan.sending != sent else ""
        print(f"  {sent:,}{of} sent = " + " + ".join(f"{count:,} {what}" for count, what in parts)
              + f"; {delivery.retries:,} retried requests, {delivery.messages_per_second:,.0f} msg/s over "
              f"{delivery.seconds:.1f}s", flush=True)
        return
    first, *rest = plan.terms()
    terms = [(first[0], "would send" if dry_run else "to send"), *(term for term in rest if term[0])]
    equation = " + ".join(f"{count:,} {what.replace('duplicate', 'duplicates') if count != 1 else what}"
                          for count, what in terms)
    print(f"{plan.source}: {plan.lines:,} lines read = {equation}")
    for rejection in plan.rejection_samples[:10]:
        print(f"  rejected {rejection.source}: {rejection.reason}")
    if plan.changed:
        unsent = f", {plan.changed_unsent:,} not sent" if plan.changed_unsent != plan.changed_skipped else ""
        print(f"  changed since planned: {plan.changed:,}{unsent}")
    for changed in plan.changed_samples[:10]:
        print(f"  changed {changed.source}: {changed.reason}")
    if dry_run:
        for sample in plan.samples[:3]:
            print(f"  sample: {sample.decode()[:300]}")
    elif plan.sending == 0:
        print("nothing to send", flush=True)
    elif plan.sending is not None:
        earlier = plan.sending - plan.planned - plan.pending_earlier
        others = f", and {earlier:,} an earlier run left pending" if earlier > 0 else ""
        print(f"sending {plan.sending:,} messages: {plan.planned + plan.pending_earlier:,} of this "
              f"file{others}", flush=True)


def _run_webhooks(args: argparse.Namespace) -> int:
    """Heap's segment-sync webhooks and Fullstory's Streams, on one server: on an address others can reach,
    each endpoint only when its own secret is set (a deployment that receives one vendor sets that one's)."""
    from segment_ops.receivers.app import build_app
    from segment_ops.receivers.server import is_loopback, serve_forever
    from segment_ops.syncs.fullstory import receiver as fullstory
    from segment_ops.syncs.heap.receiver import config_from_env
    from segment_ops.syncs.heap.server import serve

    logging.getLogger("segment_ops.webhooks").setLevel(logging.INFO)
    settings = load_settings()
    try:
        config = config_from_env(settings)
        streams = fullstory.config_from_env(settings)
    except ValueError as exc:  # names the variable, never a secret
        raise SystemExit(f"segment-ops webhooks: {exc}") from None
    public = not is_loopback(args.host)
    also = []
    if public and not settings.is_set("FULLSTORY_STREAM_TOKEN"):
        print("Fullstory Streams endpoint off: FULLSTORY_STREAM_TOKEN is not set (set it to serve "
              "/webhooks/fullstory on this address)", flush=True)
    else:
        try:
            fullstory.require_live_token(streams, args.host)
        except ValueError as exc:  # the sandbox's token set on a public address, or an empty one
            raise SystemExit(f"segment-ops webhooks: {exc}") from None
        also.append(fullstory.endpoint(streams))
    if public and not settings.is_set("HEAP_WEBHOOK_SECRET") and also:
        print("Heap endpoint off: HEAP_WEBHOOK_SECRET is not set (set it to serve /webhooks/heap on this "
              f"address)\nsegment_ops webhook receiver: Fullstory Streams on http://{args.host}:{args.port}"
              f"{fullstory.FULLSTORY_PATH}", flush=True)
        serve_forever(build_app(also, health={"webhook": "fullstory"}), args.host, args.port,
                      limit_concurrency=config.max_connections)
        return 0
    serve(config, args.host, args.port, also=also)  # refuses a public address without HEAP_WEBHOOK_SECRET
    return 0


def _run_check(args: argparse.Namespace) -> int:
    """Print the preflight table; 0 when no check failed (warnings and skips do not fail), else 1."""
    from segment_ops.engine.preflight import Status, failed, render_table, run_checks
    from segment_ops.preflight import all_checks, cache_for, secret_values

    settings = load_settings()
    checks = all_checks(settings)
    if args.only:
        names = [check.name for check in checks]
        if unknown := [name for name in args.only if name not in names]:
            print(f"error: no check named {', '.join(unknown)}; the checks are: {', '.join(names)}",
                  file=sys.stderr)
            return 2
        checks = [check for check in checks if check.name in args.only]
    # Fresh answers every time; they refresh the cache the sends' gate reads.
    results = run_checks(checks, cache=cache_for(settings), secrets=secret_values(settings))
    print(render_table(results))
    counts = ", ".join(f"{sum(r.status is status for r in results)} {status.value}" for status in Status)
    verdict = "a check failed" if failed(results) else "no check failed"
    print(f"\n{len(results)} checks: {counts}; {verdict}")
    return 1 if failed(results) else 0


def _names(value: str) -> list[str]:
    """`--only`'s comma-separated names."""
    return [name.strip() for name in value.split(",") if name.strip()]


def _run_demo(args: argparse.Namespace) -> int:
    from segment_ops.demo import run_demo

    return run_demo(scale=args.scale, seed=args.seed)


if __name__ == "__main__":
    sys.exit(main())
