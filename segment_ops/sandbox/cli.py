"""`segment-ops sandbox`: serve every vendor emulator on one port (default `DEFAULT_SANDBOX_PORT`)."""

from __future__ import annotations

import argparse

from segment_ops.config import DEFAULT_SANDBOX_PORT
from segment_ops.sandbox.faults import FaultSpec, FaultSpecError, parse_fault_spec


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `sandbox` subcommand; its `func(args)` serves until interrupted."""
    parser = subparsers.add_parser(
        "sandbox", help="Run the local vendor sandbox (Segment, Heap, Pendo, Splunk)."
    )
    parser.add_argument("--host", default="127.0.0.1", help="Interface to listen on.")
    parser.add_argument("--port", type=int, default=DEFAULT_SANDBOX_PORT, help="Port to listen on.")
    parser.add_argument("--seed", type=int, default=7, help="Seed of the demo data and of fault injection.")
    parser.add_argument("--scale", type=float, default=1.0, help="Demo data size; 1.0 is about 2,000 users.")
    parser.add_argument(
        "--faults",
        type=_fault_specs,
        default={},
        help='Fault rates per API, e.g. "segment:429=0.1,503=0.05,drop=0.02,slow=0.05;splunk:503=0.2" '
        "(kinds: 429, 500, 503, drop, drop_after, slow; also slow_seconds, retry_after). Default: none.",
    )
    parser.add_argument(
        "--segment-rate-limit",
        type=float,
        default=None,
        help="Requests/s per write key before Segment answers 429.",
    )
    parser.add_argument(
        "--segment-dedupe-window",
        type=float,
        default=24 * 3600.0,
        help="Seconds Segment remembers a messageId (about 24 h); a later repeat is counted as a late "
        "duplicate that reaches destinations (default: %(default)s).",
    )
    parser.add_argument("--splunk-ack", action="store_true", help="Turn on HEC indexer acknowledgement.")
    parser.add_argument("--splunk-ack-delay", type=float, default=2.0,
                        help="Seconds until an HEC ackId is acknowledged (with --splunk-ack).")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Imported here: every `segment-ops` command registers this subcommand, and the server and its
    # demo data (pandas) cost half a second to import.
    from segment_ops.sandbox.app import SandboxConfig
    from segment_ops.sandbox.server import serve

    config = SandboxConfig(
        seed=args.seed,
        scale=args.scale,
        faults=args.faults,
        segment_rate_limit=args.segment_rate_limit,
        segment_dedupe_window_seconds=args.segment_dedupe_window,
        splunk_ack=args.splunk_ack,
        splunk_ack_delay=args.splunk_ack_delay,
    )
    serve(config, args.host, args.port)
    return 0


def _fault_specs(text: str) -> dict[str, FaultSpec]:
    try:
        return parse_fault_spec(text)
    except FaultSpecError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
