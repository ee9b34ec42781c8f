"""The neutral diff spec: what every diff sync declares about its rows and the calls they become.

A reverse-ETL model file, a Heap audience and Pendo's account health each build one; the diff
(`engine.diff`) and the runner (`engine.run`) know nothing else about where the rows came from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

CALL_TYPES = ("identify", "group", "track")
MODES = ("upsert", "mirror", "append")  # added + changed | also removals | each new key once


class SpecError(ValueError):
    """The spec does not fit the staged rows (a column it names is missing or of the wrong type).

    `problem` is the sentence without the source, so a sync can re-raise it naming its own file.
    """

    def __init__(self, source: str, problem: str) -> None:
        self.source, self.problem = source, problem
        super().__init__(f"{source}: {problem}")


@dataclass(frozen=True)
class Companion:
    """A track call sent right after the main call of each added / removed key (e.g. Heap's "Audience
    Entered" / "Audience Exited"); both calls of a change settle it together."""

    entered: str | None
    exited: str | None
    properties: Mapping[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class DiffSpec:
    """One diff sync's rows and calls.

    `sync` names it in the ledger; `source` is what rejections and errors name (a file, a segment).
    Column fields name columns of the staged table; `fields` None means every column not mapped.
    """

    sync: str
    source: str
    call: str
    mode: str
    key: str
    user_id: str | None = None
    anonymous_id: str | None = None
    group_id: str | None = None
    event: str | None = None  # a literal event name (track)
    event_column: str | None = None
    timestamp: str | None = None
    fields: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    # Mirror mode: the traits a removed key's call carries (default: every mapped trait set to null).
    removal_fields: Mapping[str, Any] | None = field(default=None, compare=False)
    companion: Companion | None = None

    def __post_init__(self) -> None:
        if self.call not in CALL_TYPES:
            raise SpecError(self.source, f"call must be one of {', '.join(CALL_TYPES)}, got {self.call!r}")
        if self.mode not in MODES:
            raise SpecError(self.source, f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")

    @property
    def fields_name(self) -> str:
        return "properties" if self.call == "track" else "traits"

    @property
    def mapped_columns(self) -> tuple[str, ...]:
        """Columns that become ids, event name or timestamp rather than traits/properties."""
        return tuple(c for c in (self.user_id, self.anonymous_id, self.group_id, self.event_column,
                                 self.timestamp) if c)

    def field_columns(self, columns: Sequence[str]) -> tuple[str, ...]:
        """The traits/properties of a result with `columns`: as declared, else every column not mapped."""
        if self.fields is not None:
            return self.fields
        skip = set(self.mapped_columns) | set(self.exclude)
        return tuple(c for c in columns if c not in skip)

    def check_columns(self, columns: Sequence[str]) -> None:
        """Raise `SpecError` when the spec names a column the staged rows lack."""
        present = set(columns)
        named = [("key", self.key)] + [(k, getattr(self, k)) for k in
                                       ("user_id", "anonymous_id", "group_id", "event_column", "timestamp")]
        named += [(self.fields_name, c) for c in self.fields or ()] + [("exclude", c) for c in self.exclude]
        missing = [f"{c} ({k})" for k, c in named if c and c not in present]
        if missing:
            raise SpecError(self.source, f"the header names column(s) the query does not return: "
                                         f"{', '.join(missing)}; the query returns: {', '.join(columns)}")
