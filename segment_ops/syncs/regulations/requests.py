"""Privacy requests as they arrive: rows of the warehouse query, and CSV / JSON-lines files dropped into the
inbox by privacy tooling. Each becomes a `Request`, or a rejection with its reason.

Both take the same columns:

| column | required | meaning |
|---|---|---|
| `user_id` (or `subject`) | yes | the Segment userId (an objectId for subject type OBJECT_ID) |
| `regulation_type` | yes | one of `engine.regulations.REGULATION_TYPES` (case-insensitive) |
| `subject_type` | no | USER_ID (default) or OBJECT_ID |
| `request_id` | no | the privacy tool's own id; else derived from the other columns (one row, one id) |
| `requested_at` | no | when the person asked (ISO-8601); else when segment_ops first read it |

The same subject asked twice for the same thing (same type, same `requested_at`) is one request; a later
UNSUPPRESS needs its own `request_id` or `requested_at` to be told apart from an earlier one.
"""

from __future__ import annotations

import csv
import hashlib
import io
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson

from segment_ops.engine.ledger import Rejection
from segment_ops.engine.regulations import REGULATION_TYPES, SUBJECT_TYPES

INBOX_SUFFIXES = (".csv", ".jsonl", ".ndjson")
MAX_ID_CHARS = 200  # a userId or request id longer than this is taken for a mistake, not filed
MAX_INBOX_FILE_BYTES = 64 * 1024 * 1024
# A file modified less than this long ago may still be being written: it is read by a later run.
SETTLED_SECONDS = 2.0


@dataclass(frozen=True)
class Request:
    request_id: str
    subject: str
    subject_type: str
    regulation_type: str
    source: str  # the query, or "<inbox file>:<line>"
    requested_at: datetime | None


def derived_id(subject: str, regulation_type: str, subject_type: str, requested_at: datetime | None) -> str:
    """The id of a request that came without one: the same row read again is the same request (and the
    subject itself is not readable from it)."""
    when = requested_at.isoformat() if requested_at else ""
    text = "\x1f".join([subject, regulation_type, subject_type, when])
    return "derived-" + hashlib.sha256(text.encode()).hexdigest()[:24]


def parse_rows(rows: Iterable[tuple[str, Mapping[str, object]]]) -> tuple[list[Request], list[Rejection]]:
    """(source, row) pairs as requests, or rejections naming the row's source and what is wrong with it."""
    requests: list[Request] = []
    rejected: list[Rejection] = []
    for source, row in rows:
        try:
            requests.append(_request(source, row))
        except ValueError as exc:
            subject = row.get("user_id", row.get("subject"))
            rejected.append(Rejection(record_key=str(subject)[:MAX_ID_CHARS] if subject else None,
                                      source=source, reason=str(exc), record=None))
    return requests, rejected


def _request(source: str, row: Mapping[str, object]) -> Request:
    subject = _text(row.get("user_id", row.get("subject")))
    if not subject:
        raise ValueError("no user_id (or subject): a request names the userId it is about")
    if len(subject) > MAX_ID_CHARS:
        raise ValueError(f"the user_id is {len(subject)} characters long, more than {MAX_ID_CHARS}")
    kind = (_text(row.get("regulation_type")) or "").upper()
    if kind not in REGULATION_TYPES:
        raise ValueError(f"regulation_type must be one of {', '.join(sorted(REGULATION_TYPES))}, got "
                         f"{_text(row.get('regulation_type'))!r}")
    subject_type = (_text(row.get("subject_type")) or "USER_ID").upper()
    if subject_type not in SUBJECT_TYPES:
        raise ValueError(f"subject_type must be one of {', '.join(SUBJECT_TYPES)}, got {subject_type!r}")
    requested_at = _moment(row.get("requested_at"))
    request_id = _text(row.get("request_id")) or derived_id(subject, kind, subject_type, requested_at)
    if len(request_id) > MAX_ID_CHARS:
        raise ValueError(f"the request_id is {len(request_id)} characters long, more than {MAX_ID_CHARS}")
    return Request(request_id, subject, subject_type, kind, source, requested_at)


def _text(value: object) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _moment(value: object) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        moment = value
    else:
        try:
            moment = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"requested_at {str(value)[:40]!r} is not an ISO-8601 time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def inbox_files(folder: Path) -> list[Path]:
    """The request files waiting in `folder`, oldest name first. Hidden files are not read, nor a file
    modified less than `SETTLED_SECONDS` ago: privacy tooling may still be writing it (a file read
    half-written would lose its other half, since a read file is removed); a later run reads it."""
    if not folder.is_dir():
        return []
    now = time.time()
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in INBOX_SUFFIXES and not p.name.startswith(".")
                  and _settled(p, now))


def _settled(path: Path, now: float) -> bool:
    try:
        return now - path.stat().st_mtime >= SETTLED_SECONDS
    except OSError:  # gone meanwhile
        return False


def read_inbox_file(path: Path) -> list[tuple[str, Mapping[str, object]]]:
    """The (source, row) pairs of one inbox file; a line that is not a JSON object becomes an empty row, which
    is rejected (the file's other rows still count). Raises `ValueError` for a file too large to read or a
    CSV file Python's reader refuses, `OSError` for one the system does not let us read."""
    if (size := path.stat().st_size) > MAX_INBOX_FILE_BYTES:
        raise ValueError(f"the file is {size:,} bytes, more than {MAX_INBOX_FILE_BYTES:,}: split it")
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        try:
            return [(f"{path.name}:{number}", {k.strip().lower(): v for k, v in row.items() if k})
                    for number, row in enumerate(reader, start=2)]
        except csv.Error as exc:
            raise ValueError(f"not a CSV file Python can read: {exc}") from None
    rows: list[tuple[str, Mapping[str, object]]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError:
            row = None
        rows.append((f"{path.name}:{number}", row if isinstance(row, dict) else {}))
    return rows
