"""SQL text helpers shared by the engine and the syncs: quoting identifiers and literals."""

from __future__ import annotations

from datetime import UTC, datetime


def literal(text: str) -> str:
    """`text` as a SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def quote(identifier: str) -> str:
    """A SQL identifier, double-quoted."""
    return '"' + identifier.replace('"', '""') + '"'



def utc_timestamp(moment: datetime, dialect: str) -> str:
    """`moment` as a SQL literal of that UTC instant whatever the session's time zone: a timestamp with a zone
    (`dialect` as `warehouse.dialect_of` names it; BigQuery's TIMESTAMP is an instant, written with `+00`)."""
    text = moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    if dialect == "bigquery":
        return f"TIMESTAMP {literal(text + '+00')}"
    return f"CAST({literal(text + '+00:00')} AS TIMESTAMP WITH TIME ZONE)"
