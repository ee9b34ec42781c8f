"""The Fullstory syncs' file (`fullstory.toml` beside this module, or FULLSTORY_SIGNALS_FILE), read strictly:
a typo is a `FullstoryConfigError` naming the file and the key, never a sync that quietly sends the wrong
thing.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from segment_ops.config import load_settings
from segment_ops.engine.identity import IdentityMapError, IdentitySource

DEFAULT_FILE = Path(resources.files("segment_ops.syncs.fullstory").joinpath("fullstory.toml"))
KINDS = ("rage", "dead", "error")
_EVENT_NAME = re.compile(r"^[^\x00-\x1f]{1,200}$")


class FullstoryConfigError(ValueError):
    def __init__(self, path: Path | str, problem: str) -> None:
        self.path, self.problem = Path(path), problem
        super().__init__(f"{path}: {problem}")


@dataclass(frozen=True)
class Stream:
    name: str  # the stream's event name as Fullstory posts it (`name`)
    kind: str  # rage | dead | error
    event: str  # the Segment track event


@dataclass(frozen=True)
class SignalsConfig:
    streams: Mapping[str, Stream]
    per_user: int = 3
    window_hours: int = 24
    exclude_emails: tuple[str, ...] = ()
    exclude_page_urls: tuple[str, ...] = ()
    max_delay_hours: float = 168.0
    # Frustrated clicks read from Fullstory's warehouse export (through WAREHOUSE_URL) as well as, or instead
    # of, the streams; None: the streams only.
    warehouse_query: str | None = None


@dataclass(frozen=True)
class IdentityConfig:
    uid_is_user_id: bool = True
    email_source: IdentitySource | None = None


@dataclass(frozen=True)
class ScoreConfig:
    window_days: int = 7
    weights: Mapping[str, float] = field(default_factory=lambda: {"rage": 5.0, "dead": 2.0, "error": 8.0})
    max_signal_penalty: float = 60.0
    error_rate_weight: float = 30.0
    shallow_session_weight: float = 10.0
    healthy_pages_per_session: float = 3.0
    warehouse_query: str | None = None

    def fingerprint(self) -> str:
        """What the scores depend on: a change makes every score worth recomputing and re-sending."""
        text = repr((self.window_days, sorted(self.weights.items()), self.max_signal_penalty,
                     self.error_rate_weight, self.shallow_session_weight, self.healthy_pages_per_session,
                     self.warehouse_query))
        return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class FullstoryConfig:
    path: Path
    signals: SignalsConfig
    identity: IdentityConfig
    score: ScoreConfig
    code_version: str


def config_file() -> Path:
    return Path(load_settings()["FULLSTORY_SIGNALS_FILE"].strip() or DEFAULT_FILE)


def load_config(path: Path | str | None = None) -> FullstoryConfig:
    path = Path(path or config_file())
    try:
        text = path.read_text()
        raw = tomllib.loads(text)
    except (OSError, UnicodeDecodeError) as exc:
        raise FullstoryConfigError(path, f"cannot read the file: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise FullstoryConfigError(path, f"not valid TOML: {exc}") from None
    _known(path, "", raw, {"signals", "identity", "score"})
    return FullstoryConfig(path=path, signals=_signals(path, raw.get("signals", {})),
                           identity=_identity(path, raw.get("identity", {})),
                           score=_score(path, raw.get("score", {})),
                           code_version=hashlib.sha256(text.encode()).hexdigest()[:16])


def _signals(path: Path, raw: dict) -> SignalsConfig:
    _known(path, "signals.", raw, {"streams", "limits", "filters", "max_delay_hours", "warehouse"})
    warehouse = _table(path, "signals.warehouse", raw.get("warehouse", {}))
    _known(path, "signals.warehouse.", warehouse, {"query"})
    query = warehouse.get("query")
    if query is not None and (not isinstance(query, str) or "{since}" not in query):
        raise FullstoryConfigError(path, "signals.warehouse.query must be a SQL query using {since} (the "
                                         "oldest event time still worth sending), or be left out")
    streams: dict[str, Stream] = {}
    for name, table in _table(path, "signals.streams", raw.get("streams", {})).items():
        where = f"signals.streams.{name!r}"
        table = _table(path, where, table)
        _known(path, where + ".", table, {"kind", "event"})
        kind = table.get("kind")
        if kind not in KINDS:
            raise FullstoryConfigError(path, f"{where}.kind must be one of {', '.join(KINDS)}, got {kind!r}")
        event = table.get("event")
        if not isinstance(event, str) or not _EVENT_NAME.match(event):
            raise FullstoryConfigError(path, f"{where}.event must be a Segment event name (1-200 characters)")
        streams[name] = Stream(name, kind, event)
    if not streams:
        raise FullstoryConfigError(path, "signals.streams lists no stream: nothing would be sent")
    limits = _table(path, "signals.limits", raw.get("limits", {}))
    _known(path, "signals.limits.", limits, {"per_user", "window_hours"})
    filters = _table(path, "signals.filters", raw.get("filters", {}))
    _known(path, "signals.filters.", filters, {"exclude_emails", "exclude_page_urls"})
    return SignalsConfig(
        streams=streams,
        per_user=_whole(path, "signals.limits.per_user", limits.get("per_user", 3), 1, 10_000),
        window_hours=_whole(path, "signals.limits.window_hours", limits.get("window_hours", 24), 1, 24 * 31),
        exclude_emails=_patterns(path, "signals.filters.exclude_emails", filters.get("exclude_emails", [])),
        exclude_page_urls=_patterns(path, "signals.filters.exclude_page_urls",
                                    filters.get("exclude_page_urls", [])),
        max_delay_hours=_number(path, "signals.max_delay_hours", raw.get("max_delay_hours", 168), 0.1,
                                24 * 60),
        warehouse_query=query)


def _identity(path: Path, raw: dict) -> IdentityConfig:
    raw = _table(path, "identity", raw)
    _known(path, "identity.", raw, {"uid_is_user_id", "email_query", "email_url", "email_csv"})
    uid = raw.get("uid_is_user_id", True)
    if not isinstance(uid, bool):
        raise FullstoryConfigError(path, "identity.uid_is_user_id must be true or false")
    source = None
    if "email_query" in raw or "email_csv" in raw:
        try:
            source = IdentitySource.from_config({k.removeprefix("email_"): v for k, v in raw.items()
                                                 if k.startswith("email_")})
        except IdentityMapError as exc:
            raise FullstoryConfigError(path, f"identity: {exc}") from None
    elif "email_url" in raw:
        raise FullstoryConfigError(path, "identity.email_url goes with identity.email_query")
    if not uid and source is None:
        raise FullstoryConfigError(path, "identity: with uid_is_user_id = false, an email_query or email_csv "
                                         "is the only way to find a user: give one")
    return IdentityConfig(uid_is_user_id=uid, email_source=source)


def _score(path: Path, raw: dict) -> ScoreConfig:
    raw = _table(path, "score", raw)
    _known(path, "score.", raw, {"window_days", "weights", "max_signal_penalty", "error_rate_weight",
                                 "shallow_session_weight", "healthy_pages_per_session", "warehouse_query"})
    weights = _table(path, "score.weights", raw.get("weights", {"rage": 5, "dead": 2, "error": 8}))
    _known(path, "score.weights.", weights, set(KINDS))
    query = raw.get("warehouse_query")
    if query is not None:
        if not isinstance(query, str) or not query.strip():
            raise FullstoryConfigError(path, "score.warehouse_query must be a non-empty SQL query (remove it "
                                             "to score from the stream signals alone)")
        missing = [p for p in ("{window_start}", "{window_end}") if p not in query]
        if missing:
            raise FullstoryConfigError(path, f"score.warehouse_query must use {' and '.join(missing)} to "
                                             "read the score's window only")
    return ScoreConfig(
        window_days=_whole(path, "score.window_days", raw.get("window_days", 7), 1, 90),
        weights={k: _number(path, f"score.weights.{k}", weights.get(k, 0), 0, 100) for k in KINDS},
        max_signal_penalty=_number(path, "score.max_signal_penalty", raw.get("max_signal_penalty", 60), 0,
                                   100),
        error_rate_weight=_number(path, "score.error_rate_weight", raw.get("error_rate_weight", 30), 0, 100),
        shallow_session_weight=_number(path, "score.shallow_session_weight",
                                       raw.get("shallow_session_weight", 10), 0, 100),
        healthy_pages_per_session=_number(path, "score.healthy_pages_per_session",
                                          raw.get("healthy_pages_per_session", 3), 1, 1000),
        warehouse_query=query)


def _known(path: Path, prefix: str, table: Mapping[str, Any], keys: set[str]) -> None:
    unknown = sorted(set(table) - keys)
    if unknown:
        raise FullstoryConfigError(path, f"unknown key(s) {', '.join(prefix + k for k in unknown)}; known: "
                                         f"{', '.join(sorted(prefix + k for k in keys))}")


def _table(path: Path, where: str, value: object) -> dict:
    if not isinstance(value, dict):
        raise FullstoryConfigError(path, f"{where} must be a table")
    return value


def _whole(path: Path, where: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise FullstoryConfigError(path, f"{where} must be a whole number from {low} to {high}, got "
                                         f"{value!r}")
    return value


def _number(path: Path, where: str, value: object, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise FullstoryConfigError(path, f"{where} must be a number from {low:g} to {high:g}, got {value!r}")
    return float(value)


def _patterns(path: Path, where: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise FullstoryConfigError(path, f"{where} must be a list of non-empty patterns")
    return tuple(v.lower() for v in value)
