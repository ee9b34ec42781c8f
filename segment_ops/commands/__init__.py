"""The operators' subcommands of `segment-ops` beyond running syncs: each module adds its parsers with
`register(subcommands)` and does its imports lazily, so `segment-ops --help` stays fast."""

import argparse


def whole_number(value: str) -> int:
    """The argparse `type` of a count such as `--limit N`: a whole number >= 0 (else argparse exits 2)."""
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, not {value!r}")
    return int(value)
