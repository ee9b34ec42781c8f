"""Run metadata a person reads in the Dagster UI: small markdown tables and payload samples."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import dagster as dg
import orjson


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    def cell(value: object) -> str:
        return ("" if value is None else str(value)).replace("|", "\\|").replace("\n", " ")[:200]

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def payload_samples(payloads: Iterable[bytes], limit: int = 5) -> dg.MetadataValue:
    """A few encoded calls, pretty-printed as one JSON document."""
    samples = [orjson.loads(p) for _, p in zip(range(limit), payloads, strict=False)]
    return dg.MetadataValue.json(samples)
