"""Run metadata a person reads in the Dagster UI: small markdown tables and payload samples.

Metadata describes a run that has done its work: building it must never fail that run (a sample that is
not JSON once failed every later run of its model, issue 16). `guarded` logs such a failure instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import dagster as dg
import orjson

from segment_ops.engine.delivery import DeliveryReport
from segment_ops.engine.diff import DiffPlan

_SAMPLE_TEXT_CHARS = 2_000
log = logging.getLogger("segment_ops.metadata")


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    def cell(value: object) -> str:
        return ("" if value is None else str(value)).replace("|", "\\|").replace("\n", " ")[:200]

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def payload_samples(payloads: Iterable[bytes], limit: int = 5) -> dg.MetadataValue:
    """A few encoded calls, pretty-printed as one JSON document; a payload that is not valid JSON (NaN,
    Infinity, a cut-off text) is shown as its text, under `unparseable_payload`."""
    samples: list[Any] = []
    for _, payload in zip(range(limit), payloads, strict=False):
        try:
            samples.append(orjson.loads(payload))
        except (orjson.JSONDecodeError, TypeError):
            samples.append({"unparseable_payload": _text(payload)})
    return dg.MetadataValue.json(samples)


def guarded(build: Callable[[], Mapping[str, Any]], *, what: str, fallback: Mapping[str, Any] | None = None,
            logger: logging.Logger | dg.DagsterLogManager | None = None) -> dict[str, Any]:
    """The metadata `build()` returns, each value one Dagster can store. When building fails, the failure is
    logged (to `logger`, e.g. `context.log`); the run gets `fallback` (plain counts) and `metadata_error`."""
    try:
        return {str(key): _storable(value) for key, value in build().items()}
    except Exception as exc:  # noqa: BLE001 - any failure: metadata is for people and never fails a run
        error = f"{type(exc).__name__}: {exc}"[:_SAMPLE_TEXT_CHARS]
        (logger or log).warning(f"the run metadata of {what} could not be built; the run goes on without it: "
                                f"{error}")
        kept = {str(k): v for k, v in (fallback or {}).items()
                if v is None or isinstance(v, str | int | float)}
        return {**kept, "metadata_error": dg.MetadataValue.text(error)}


def diff_run_metadata(plan: DiffPlan, *, dry_run: bool, delivery: DeliveryReport | None = None,
                      pending: int = 0, advanced: int = 0, key_label: str = "record key") -> dict:
    """What every diff-based sync (reverse-ETL models, Pendo account groups) shows of one run: the diff's
    counts, sample payloads, rejections, and - unless a dry run - the delivery and what is left pending."""
    counts = {"dry_run": dry_run, "rows_read": plan.rows_read, "rejected": plan.rejected,
              "planned": plan.planned}
    return guarded(lambda: _diff_run_metadata(plan, dry_run=dry_run, delivery=delivery, pending=pending,
                                              advanced=advanced, key_label=key_label),
                   what="the diff", fallback=counts)


def _diff_run_metadata(plan: DiffPlan, *, dry_run: bool, delivery: DeliveryReport | None, pending: int,
                       advanced: int, key_label: str) -> dict:
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


def _storable(value: Any) -> Any:
    """`value` as metadata Dagster accepts: its own values and plain scalars as they are, containers as JSON
    (NaN and infinities as null, unknown types as their text), anything else as its text."""
    if value is None or isinstance(value, dg.MetadataValue | str | bool | int | float):
        return value
    if isinstance(value, Mapping | list | tuple):
        return dg.MetadataValue.json(orjson.loads(orjson.dumps(value, default=str,
                                                               option=orjson.OPT_NON_STR_KEYS)))
    return _text(value)


def _text(value: Any) -> str:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes | bytearray) else str(value)
    return text[:_SAMPLE_TEXT_CHARS]
