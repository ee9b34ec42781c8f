"""Segment's regulations (GDPR / CCPA deletion and suppression, spec §2) as the Public API double serves them:
`POST /regulations`, `POST /regulations/sources/{sourceId}`, `GET /regulations`, `GET /regulations/sources/
{sourceId}` and `GET /regulations/{regulateId}` (routed, authorised and rate-limited in `public_api.py`), and
the sandbox-only control `GET|POST /__sandbox__/segment/regulations` that sets how they progress.

Vendor sources read (github segmentio/public-api-sdk-typescript): `api/deletionAndSuppressionApi.ts` (paths,
the `status` / `regulationTypes` / `pagination` query, the 600/min rate limit "tracked separately for
Segment-only vs Segment & Destination regulation types" with `X-RateLimit-Remaining` / `X-RateLimit-Reset`
of that group), `model/createWorkspaceRegulationV1Input.ts` and `createSourceRegulationV1Input.ts` (the types
and subject types each scope accepts), `createWorkspaceRegulationV1Output.ts` (`regulateId`),
`model/regulation.ts`, `streamStatusV1.ts`, `destinationStatusV1.ts` (`GET /regulations/{id}`),
`regulationListEntryV1.ts`, `listWorkspaceRegulationsV1Output.ts` (the list). github segmentio/public-api-
sdk-python `docs/DeletionAndSuppressionApi.md`: answers 200, 404, 422 ("Validation failure"), 429;
`regulationTypes` is serialised "multi" (repeated); the create endpoints "may generate the `Workspace
Regulation Created` / `Source Regulation Created` event in the audit trail". segment-docs
`src/privacy/user-deletion-and-suppression.md`: "You can delete up to 5000 `userId`s per call".

Choices where those are silent (each a setting where it is a number):
- Subject ids per request: at most `max_subject_ids` (5,000, the docs' figure); more, an empty list, or an
  id that is not a non-empty string is 422 with `field: "subjectIds"`. A body that is not JSON is 400.
- Workspace scope accepts USER_ID and OBJECT_ID and every type but DELETE_ARCHIVE_ONLY; source scope accepts
  USER_ID, and ANONYMOUS_ID with DELETE_ARCHIVE_ONLY only (the SDK's enums and notes). Anything else is 422.
- Progression is driven by the time since creation, fixed at creation: INITIALIZED, RUNNING after
  `running_after_seconds`, then FINISHED `finished_after_seconds` later. An outcome rule (`outcomes`: the
  first whose `pattern` is found in a subject id) ends it FAILED or PARTIAL_SUCCESS at that time instead,
  or INVALID / NOT_SUPPORTED as soon as it would have started running. Real (monotonic) time drives it, so
  it moves on while `SEGMENT_OPS_CLOCK` pins `createdAt`; `finishedAt` is `createdAt` plus those delays.
- `GET /regulations` lists workspace-scoped regulations, `GET /regulations/sources/{id}` that source's (the
  SDK's model of the latter has no `pagination`; the double pages it like every list), newest first. The
  cursor fixes the newest regulation of the first page, so a walk is stable while others are filed.
  `regulationTypes` is read repeated, comma-delimited or indexed (`regulationTypes[0]`, `regulationTypes.0`).
- Streams: one per enabled source of the workspace (or the one source); Segment & Destination types list
  the destinations connected to that source, each with the regulation's status (PARTIAL_SUCCESS: the
  first fails, the others finish); Segment-only types list none.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta

import orjson
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from segment_ops import clock
from segment_ops.sandbox.common import json_response
from segment_ops.sandbox.world import b62

# Rate-limit groups (api/deletionAndSuppressionApi.ts).
SEGMENT_ONLY = frozenset({"DELETE_INTERNAL", "SUPPRESS_WITH_DELETE_INTERNAL", "SUPPRESS_ONLY", "UNSUPPRESS",
                          "DELETE_ARCHIVE_ONLY"})
SEGMENT_AND_DESTINATION = frozenset({"DELETE_ONLY", "SUPPRESS_WITH_DELETE"})
REGULATION_TYPES = SEGMENT_ONLY | SEGMENT_AND_DESTINATION
# What each scope's create input accepts (createWorkspaceRegulationV1Input.ts,
# createSourceRegulationV1Input.ts).
WORKSPACE_TYPES = REGULATION_TYPES - {"DELETE_ARCHIVE_ONLY"}
WORKSPACE_SUBJECT_TYPES = ("USER_ID", "OBJECT_ID")
SOURCE_SUBJECT_TYPES = ("USER_ID", "ANONYMOUS_ID")
STATUSES = ("FAILED", "FINISHED", "INITIALIZED", "INVALID", "NOT_SUPPORTED", "PARTIAL_SUCCESS", "RUNNING")
# Final statuses an outcome rule may force; INVALID and NOT_SUPPORTED are decided before running.
OUTCOME_STATUSES = ("FAILED", "INVALID", "NOT_SUPPORTED", "PARTIAL_SUCCESS")
_NEVER_RUN = frozenset({"INVALID", "NOT_SUPPORTED"})
MAX_SUBJECT_IDS = 5000  # segment-docs user-deletion-and-suppression.md: "up to 5000 userIds per call"


class RegulationError(Exception):
    """A request Segment refuses: `status` 400/404/422, `field` names the input at fault."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.field = field


@dataclass(frozen=True)
class RegulationOutcome:
    """Make a regulation with a subject id matching `pattern` (a regular expression, searched) end `status`
    with `error` as its destinations' `errString`."""

    pattern: str
    status: str = "FAILED"
    error: str = "sandbox: injected regulation failure"

    def __post_init__(self) -> None:
        if self.status not in OUTCOME_STATUSES:
            raise ValueError(f"outcome status must be one of {list(OUTCOME_STATUSES)}, got {self.status!r}")
        try:
            re.compile(self.pattern)
        except re.error as exc:
            raise ValueError(f"outcome pattern {self.pattern!r} is not a regular expression: {exc}") from None

    @classmethod
    def from_dict(cls, data: object) -> RegulationOutcome:
        if not isinstance(data, dict) or not isinstance(data.get("pattern"), str):
            raise ValueError('an outcome is {"pattern": "<regex>", "status": "FAILED", "error"?: "..."}')
        unknown = set(data) - {"pattern", "status", "error"}
        if unknown:
            raise ValueError(f"unknown outcome setting(s) {sorted(unknown)}")
        return cls(data["pattern"], str(data.get("status", "FAILED")),
                   str(data.get("error", cls.error)))


@dataclass(frozen=True)
class RegulationSettings:
    """How the double treats regulations; `SandboxConfig` sets them, the control endpoint changes them until
    the next reset."""

    running_after_seconds: float = 5.0
    finished_after_seconds: float = 5.0
    max_subject_ids: int = MAX_SUBJECT_IDS
    outcomes: tuple[RegulationOutcome, ...] = ()

    def __post_init__(self) -> None:
        if self.running_after_seconds < 0 or self.finished_after_seconds < 0:
            raise ValueError("running_after_seconds and finished_after_seconds must be >= 0")
        if self.max_subject_ids < 1:
            raise ValueError("max_subject_ids must be >= 1")

    def updated(self, changes: Mapping[str, object]) -> RegulationSettings:
        """These settings with `changes` (the control endpoint's JSON) applied; raises `ValueError`."""
        unknown = set(changes) - {"running_after_seconds", "finished_after_seconds", "max_subject_ids",
                                  "outcomes"}
        if unknown:
            raise ValueError(f"unknown regulation setting(s) {sorted(unknown)}")
        kwargs: dict = {}
        for name in ("running_after_seconds", "finished_after_seconds"):
            if name in changes:
                kwargs[name] = _number(changes[name], name)
        if "max_subject_ids" in changes:
            value = changes["max_subject_ids"]
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError("max_subject_ids must be an integer")
            kwargs["max_subject_ids"] = value
        if "outcomes" in changes:
            outcomes = changes["outcomes"]
            if not isinstance(outcomes, list):
                raise ValueError("outcomes must be a list")
            kwargs["outcomes"] = tuple(RegulationOutcome.from_dict(o) for o in outcomes)
        return replace(self, **kwargs)

    def to_dict(self) -> dict:
        return asdict(self) | {"outcomes": [asdict(o) for o in self.outcomes]}


@dataclass(frozen=True)
class _Regulation:
    id: str
    seq: int
    source_id: str | None  # None: workspace scope
    regulation_type: str
    subject_type: str
    subject_ids: tuple[str, ...]
    created_at: datetime
    started: float  # time.monotonic() at creation
    running_after: float
    finished_after: float
    outcome: RegulationOutcome | None

    def status(self, now: float) -> str:
        elapsed = now - self.started
        final = self.outcome.status if self.outcome else "FINISHED"
        if elapsed < self.running_after:
            return "INITIALIZED"
        if final in _NEVER_RUN:
            return final
        return "RUNNING" if elapsed < self.running_after + self.finished_after else final

    def finished_at(self, status: str) -> str | None:
        if status in ("INITIALIZED", "RUNNING"):
            return None
        delay = self.running_after + (0.0 if status in _NEVER_RUN else self.finished_after)
        return _iso(self.created_at + timedelta(seconds=delay))


@dataclass
class Regulations:
    """Every regulation filed since the last reset, and the settings that drive them."""

    workspace_id: str
    sources: Sequence[dict]
    destinations: Sequence[dict] = ()
    settings: RegulationSettings = field(default_factory=RegulationSettings)
    seed: int = 7

    def __post_init__(self) -> None:
        self.configured = self.settings
        self._regulations: list[_Regulation] = []
        self._by_id: dict[str, _Regulation] = {}
        # Never restarted, not even by a reset: an id is never handed out twice by one sandbox.
        self._numbers = itertools.count(1)

    def reset(self) -> None:
        self._regulations.clear()
        self._by_id.clear()
        self.settings = self.configured

    def source(self, source_id: str) -> dict:
        """The workspace's source `source_id`; `RegulationError` 404 when there is none."""
        for source in self.sources:
            if source["id"] == source_id:
                return source
        raise RegulationError(404, f"Resource not found: no source {source_id!r} in this workspace",
                              "sourceId")

    def create(self, body: object, source_id: str | None = None) -> dict:
        """File a regulation from a parsed request body; returns its list entry (`id`, ...). Raises
        `RegulationError` for what Segment refuses."""
        source = self.source(source_id) if source_id is not None else None
        regulation_type, subject_type, subject_ids = self._validated(body, source_id)
        settings = self.settings
        number = next(self._numbers)
        digest = hashlib.blake2b(f"{self.seed}:regulation:{number}".encode(), digest_size=20).digest()
        regulation = _Regulation(
            id=b62(digest, 27), seq=number, source_id=source["id"] if source else None,
            regulation_type=regulation_type, subject_type=subject_type, subject_ids=tuple(subject_ids),
            created_at=clock.now(), started=time.monotonic(), running_after=settings.running_after_seconds,
            finished_after=settings.finished_after_seconds, outcome=_outcome(settings.outcomes, subject_ids))
        self._regulations.append(regulation)
        self._by_id[regulation.id] = regulation
        return self._entry(regulation, time.monotonic())

    def get(self, regulate_id: str) -> dict:
        """`GET /regulations/{regulateId}`'s `regulation` (model/regulation.ts)."""
        regulation = self._by_id.get(regulate_id)
        if regulation is None:
            raise RegulationError(404, f"Resource not found: no regulation {regulate_id!r}", "regulateId")
        status = regulation.status(time.monotonic())
        answer = {"id": regulation.id, "workspaceId": self.workspace_id, "overallStatus": status,
                  "createdAt": _iso(regulation.created_at),
                  "streamStatus": self._streams(regulation, status)}
        if finished := regulation.finished_at(status):
            answer["finishedAt"] = finished
        return answer

    def page(self, params: QueryParams, count: int, source_id: str | None = None) -> dict:
        """The `data` of one page of the workspace's (or a source's) regulations: `regulations`, `pagination`.
        Filters come from `status` / `regulationTypes`, or from the cursor when there is one."""
        if source_id is not None:
            self.source(source_id)
        cursor = params.get("pagination.cursor")
        if cursor:
            offset, as_of, status, types = _decode_cursor(cursor)
        else:
            offset, as_of = 0, self._regulations[-1].seq if self._regulations else 0
            status, types = _status_filter(params), _types_filter(params)
        now = time.monotonic()
        entries = [self._entry(r, now) for r in reversed(self._regulations)
                   if r.seq <= as_of and r.source_id == source_id
                   and (not types or r.regulation_type in types)]
        if status:
            entries = [e for e in entries if e["status"] == status]
        pagination: dict = {"current": _cursor(offset, as_of, status, types), "totalEntries": len(entries)}
        if offset + count < len(entries):
            pagination["next"] = _cursor(offset + count, as_of, status, types)
        if offset > 0:
            pagination["previous"] = _cursor(max(0, offset - count), as_of, status, types)
        return {"regulations": entries[offset:offset + count], "pagination": pagination}

    def _validated(self, body: object, source_id: str | None) -> tuple[str, str, list[str]]:
        if not isinstance(body, dict):
            raise RegulationError(422, "the request body must be a JSON object")
        allowed_types = REGULATION_TYPES if source_id is not None else WORKSPACE_TYPES
        regulation_type = body.get("regulationType")
        if regulation_type not in allowed_types:
            raise RegulationError(422, f"regulationType must be one of {sorted(allowed_types)}, got "
                                       f"{regulation_type!r}", "regulationType")
        subject_types = SOURCE_SUBJECT_TYPES if source_id is not None else WORKSPACE_SUBJECT_TYPES
        subject_type = body.get("subjectType")
        if subject_type not in subject_types:
            raise RegulationError(422, f"subjectType must be one of {list(subject_types)}, got "
                                       f"{subject_type!r}", "subjectType")
        if subject_type == "ANONYMOUS_ID" and regulation_type != "DELETE_ARCHIVE_ONLY":
            raise RegulationError(422, "subjectType ANONYMOUS_ID is only supported with regulationType "
                                       "DELETE_ARCHIVE_ONLY", "subjectType")
        subject_ids = body.get("subjectIds")
        if not isinstance(subject_ids, list) or not subject_ids:
            raise RegulationError(422, "subjectIds must be a non-empty list of ids", "subjectIds")
        if not all(isinstance(s, str) and s for s in subject_ids):
            raise RegulationError(422, "every subjectIds entry must be a non-empty string", "subjectIds")
        cap = self.settings.max_subject_ids
        if len(subject_ids) > cap:
            raise RegulationError(422, f"subjectIds holds {len(subject_ids)} ids; at most {cap} are accepted "
                                       "per request", "subjectIds")
        return regulation_type, subject_type, subject_ids

    def _entry(self, regulation: _Regulation, now: float) -> dict:
        """A list entry (model/regulationListEntryV1.ts)."""
        status = regulation.status(now)
        entry = {"id": regulation.id, "subjectType": regulation.subject_type,
                 "subjects": list(regulation.subject_ids), "status": status,
                 "createdAt": _iso(regulation.created_at), "regulationType": regulation.regulation_type}
        if finished := regulation.finished_at(status):
            entry["finishedAt"] = finished
        return entry

    def _streams(self, regulation: _Regulation, status: str) -> list[dict]:
        """`streamStatus`: one stream per source the regulation covers (model/streamStatusV1.ts)."""
        if regulation.source_id is not None:
            covered = [regulation.source_id]
        else:
            covered = [s["id"] for s in self.sources if s.get("enabled", True)]
        finished = regulation.finished_at(status)
        error = regulation.outcome.error if regulation.outcome else ""
        streams = []
        for source_id in covered:
            destinations = []
            if regulation.regulation_type in SEGMENT_AND_DESTINATION:
                connected = [d for d in self.destinations if d.get("sourceId") == source_id]
                for n, destination in enumerate(connected):
                    own = "FAILED" if status == "PARTIAL_SUCCESS" and n == 0 else (
                        "FINISHED" if status == "PARTIAL_SUCCESS" else status)
                    entry = {"name": destination["name"], "id": destination["id"], "status": own,
                             "errString": error if own in ("FAILED", "INVALID", "NOT_SUPPORTED") else ""}
                    if finished:
                        entry["finishedAt"] = finished
                    destinations.append(entry)
            streams.append({"id": source_id, "destinationStatus": destinations})
        return streams


def rate_limit_group(regulation_type: object) -> str | None:
    """The rate-limit group of a regulation type ("segment_only" / "segment_and_destination"), None for a
    value that is not a type."""
    if regulation_type in SEGMENT_ONLY:
        return "segment_only"
    if regulation_type in SEGMENT_AND_DESTINATION:
        return "segment_and_destination"
    return None


def control_routes(regulations: Regulations) -> list[BaseRoute]:
    """`GET|POST /__sandbox__/segment/regulations`: POST `{"running_after_seconds"?,
    "finished_after_seconds"?, "max_subject_ids"?, "outcomes"?: [{"pattern", "status", "error"?}]}` changes
    those settings (for regulations filed from then on) until the next reset; both answer the settings in
    force."""

    async def settings(request: Request) -> Response:
        if request.method == "POST":
            try:
                changes = orjson.loads(await request.body())
                if not isinstance(changes, dict):
                    raise ValueError("expected a JSON object")
                regulations.settings = regulations.settings.updated(changes)
            except (orjson.JSONDecodeError, ValueError) as exc:
                return json_response({"error": str(exc)}, 400)
        return json_response(regulations.settings.to_dict())

    return [Route("/regulations", settings, methods=["GET", "POST"])]


def _outcome(outcomes: Sequence[RegulationOutcome], subject_ids: Sequence[str]) -> RegulationOutcome | None:
    for outcome in outcomes:
        if any(re.search(outcome.pattern, subject) for subject in subject_ids):
            return outcome
    return None


def _status_filter(params: QueryParams) -> str | None:
    status = params.get("status")
    if status is None or status == "":
        return None
    if status not in STATUSES:
        raise RegulationError(422, f"status must be one of {list(STATUSES)}, got {status!r}", "status")
    return status


_INDEXED = re.compile(r"^regulationTypes(\[\d*\]|\.\d+)$")


def _types_filter(params: QueryParams) -> list[str]:
    raw = [*params.getlist("regulationTypes"),
           *(value for key, value in params.multi_items() if _INDEXED.match(key))]
    types = [t.strip() for value in raw for t in value.split(",") if t.strip()]
    unknown = [t for t in types if t not in REGULATION_TYPES]
    if unknown:
        raise RegulationError(422, f"regulationTypes must be among {sorted(REGULATION_TYPES)}, got "
                                   f"{unknown[0]!r}", "regulationTypes")
    return sorted(set(types))


def _cursor(offset: int, as_of: int, status: str | None, types: list[str]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps({"regulations": [offset, as_of, status, types]})).decode()


def _decode_cursor(cursor: str) -> tuple[int, int, str | None, list[str]]:
    try:
        offset, as_of, status, types = orjson.loads(base64.urlsafe_b64decode(cursor))["regulations"]
        if not (isinstance(offset, int) and offset >= 0 and isinstance(as_of, int) and isinstance(types, list)
                and (status is None or status in STATUSES)):
            raise ValueError(cursor)
    except (binascii.Error, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        raise RegulationError(400, "pagination.cursor is not a valid cursor", "pagination.cursor") from None
    return offset, as_of, status, types


def _number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number")
    return float(value)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
