"""Run metadata a person reads in the Dagster UI: small markdown tables and payload samples."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import dagster as dg
import orjson

from segment_ops.engine.delivery import DeliveryReport
from segment_ops.engine.diff import DiffPlan


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


def diff_run_metadata(plan: DiffPlan, *, dry_run: bool, delivery: DeliveryReport | None = None,
                      pending: int = 0, advanced: int = 0, key_label: str = "record key") -> dict:
    """What every diff-based sync (reverse-ETL models, Pendo account groups) shows of one run: the diff's
    counts, sample payloads, rejections, and - unless a dry run - the delivery and what is left pending."""
    metadata: dict = {
        "dry_run": dry_run,
        "rows_read": plan.rows_read,
        "added": plan.added,
        "changed": plan.changed,
        "removed": plan.removed,
        "unchanged": plan.unchanged,
        "rejected": plan.rejected,
        "planned": plan.planned,
        "already_planned": plan.already_known,
        "superseded": plan.superseded,
        "sample_payloads": payload_samples(plan.samples),
        "diff_and_plan_seconds": round(plan.seconds, 3),
    }
    if not dry_run:
        metadata |= (delivery.as_metadata() if delivery else {"delivered": 0}) | {
            "pending_after_run": pending, "snapshot_advanced": advanced}
    if plan.rejection_samples:
        metadata["rejected_sample"] = dg.MetadataValue.md(markdown_table([key_label, "reason"],
                                                                         plan.rejection_samples))
    return metadata
