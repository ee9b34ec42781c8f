"""Evaluator behind the sandbox's emulated Pendo Aggregation API (`POST /api/v1/aggregation`).

The HTTP layer hands over the decoded request body plus a `fetch` callback that yields the raw rows of
one source; this module validates the whole body first (so a bad stage is a 400 before any data is
read), resolves `timeSeries` to absolute `[first, last)` epoch ms, then runs the stages one after the
other over plain lists. Every problem surfaces as `PipelineError`, whose message is the plain-text 400
body, never a Python traceback. Expressions go through a small recursive-descent parser compiled to
closures; nothing is ever passed to Python's `eval`.

Days are the subscription's (spec §7; support.pendo.io "Change your Subscription Time Zone"): a
`dayRange` period is one day of the `timezone` given to `run_aggregation`, from local midnight to local
midnight (23 or 25 hours across a DST change). Pendo offers whole-hour zones only, so an hour is the same
in every zone.

The source's own object may name the apps of a multi-app subscription (spec §7; support.pendo.io tech note
"The API response only contains data from one application in my subscription"): `"appId":
"expandAppIds(\"*\")"` for every app, or app ids (a number, or a list as singer-io/tap-pendo sends them).
`app_ids_of` reads it; without it the caller answers for the default app only.

Choices where Pendo's documentation is silent or the spec marks the form unverified:

- `timeSeries.count` N > 0 covers N whole periods starting at `first` (aligned down to the local day or
  the hour); N < 0 covers the |N| whole periods *before* that aligned `first`, so
  `{"first": "now()", "count": -1}` is yesterday. `last` (exclusive) may replace `count`; it takes the
  same forms as `first` and is not aligned. Ranges longer than 400 days are rejected.
- `expandAppIds` with any pattern other than `"*"` is rejected (Pendo's documents show only `"*"`); an app
  id the subscription does not have yields no rows; an `appId` that is neither is a 400.
- Sources `visitors`, `accounts` and `pollsSeenEver` need no `timeSeries`; if one is given it is still
  resolved and passed to `fetch`. All other (event) sources require it.
- `identified: "field"` keeps rows whose field is a real id; `"!field"` keeps only the anonymous ones
  (empty, null, or starting with `_PENDO_T_`), as in pendo-io/pendo-ETL-API-calls.
- `group` / `reduce` aggregates: `count` (null counts rows, a field counts its distinct non-null
  values, which is how Pendo's examples count unique visitors), `sum`, `avg`, `min`, `max`, `first`,
  `last` (first / last non-null value in input order) and `list` (non-null values in order). `fields`
  may be an object or a list of one-key objects. Groups come out in first-seen order. `reduce` is
  `group` without keys and always yields exactly one row.
- `filter` keeps rows whose expression is truthy (not null, false, 0 or empty).
- `unwind` accepts `field`, optional `index` (name of a field receiving the 0-based position) and
  `keepEmpty` (keep a row with the field set to null when the list is empty or missing).
- `cat`, `spawn` and `join` are rejected as unsupported.
- Comparisons involving null are false except `==` / `!=`; arithmetic with null yields null; division
  by zero yields null; `+` also concatenates two strings; other type mismatches are errors.
- Expression functions: `now()`, `dateAdd(ms, n, "days"|"hours")` (a day is 24 hours here, whatever the
  zone), `isNull(x)`, `contains(s, sub)` (substring, or membership for a list), `len(x)` and
  `startsWith(s, prefix)`.
"""

from __future__ import annotations

import json
import operator
import re
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

SourceRows = Callable[[str, Any, dict | None], Iterable[dict]]

EVENT_SOURCES = frozenset(
    {"events", "pageEvents", "featureEvents", "trackEvents", "guideEvents", "pollEvents"}
)
TIMELESS_SOURCES = frozenset({"visitors", "accounts", "pollsSeenEver"})
MAX_RANGE_DAYS = 400
ALL_APPS = "*"  # what `app_ids_of` returns for expandAppIds("*")


class PipelineError(ValueError):
    """An invalid or unsupported aggregation request; the message is Pendo's plain-text 400 body."""


def run_aggregation(body: dict, fetch: SourceRows, *, now_ms: int, timezone: str = "UTC") -> list[dict]:
    """Validate the whole request body, fetch the source rows and run the pipeline over them; days are those
    of the subscription's `timezone` (an IANA name)."""
    pipeline = _pipeline_of(body)
    source_name, argument, time_series = _parse_source(pipeline[0], now_ms, ZoneInfo(timezone))
    stages = [_compile_stage(index, stage, now_ms) for index, stage in enumerate(pipeline[1:], start=1)]
    rows = list(fetch(source_name, argument, time_series))
    for stage in stages:
        rows = stage(rows)
    return rows


# --- request body and source -------------------------------------------------------------------

Stage = Callable[[list[dict]], list[dict]]
Expr = Callable[[dict], Any]

_PERIOD_MS = {"dayRange": 86_400_000, "hourRange": 3_600_000}
_UNIT_MS = {"days": 86_400_000, "hours": 3_600_000}
_ANONYMOUS_PREFIX = "_PENDO_T_"
_NUMBER_TYPES = frozenset({int, float})
_CONTAINER_TYPES = frozenset({dict, list})


def _pipeline_of(body: Any) -> list:
    if not isinstance(body, dict):
        raise PipelineError("request body must be a JSON object")
    response = body.get("response")
    if not isinstance(response, dict) or response.get("mimeType") != "application/json":
        raise PipelineError('response.mimeType must be "application/json"')
    request = body.get("request")
    if not isinstance(request, dict):
        raise PipelineError("request must be an object with a pipeline")
    pipeline = request.get("pipeline")
    if not isinstance(pipeline, list) or not pipeline:
        raise PipelineError("request.pipeline must be a non-empty list of stages")
    return pipeline


def app_ids_of(argument: Any) -> str | frozenset[int] | None:
    """The apps a source's object names: None (no `appId`: the default app only), `ALL_APPS` for
    `expandAppIds("*")`, or the set of app ids. Raises `PipelineError` for anything else."""
    if not isinstance(argument, dict) or "appId" not in argument:
        return None
    value = argument["appId"]
    if isinstance(value, str) and value.strip().startswith("expandAppIds"):
        if _EXPAND_ALL.fullmatch(value):
            return ALL_APPS
        raise PipelineError(f'appId {value!r}: the sandbox expands expandAppIds("*") only')
    items = value if isinstance(value, list) else [value]
    if not items:
        raise PipelineError("appId must not be an empty list")
    ids = set()
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool):
            ids.add(item)
        elif isinstance(item, str) and re.fullmatch(r"\s*-?\d+\s*", item):
            ids.add(int(item))
        else:
            raise PipelineError(
                f'appId must be expandAppIds("*"), an app id or a list of app ids, not {item!r}')
    return frozenset(ids)


_EXPAND_ALL = re.compile(r'\s*expandAppIds\(\s*"\*"\s*\)\s*')


def _parse_source(stage: Any, now_ms: int, zone: ZoneInfo) -> tuple[str, Any, dict | None]:
    if not isinstance(stage, dict) or set(stage) != {"source"}:
        raise PipelineError("the first pipeline stage must be a source")
    spec = stage["source"]
    if not isinstance(spec, dict):
        raise PipelineError("source must be an object naming one source")
    names = [key for key in spec if key != "timeSeries"]
    if len(names) != 1:
        raise PipelineError(f"source must name exactly one source, got {len(names)}")
    name = names[0]
    if name not in EVENT_SOURCES and name not in TIMELESS_SOURCES:
        raise PipelineError(f"unknown source '{name}'")
    argument = spec[name]
    if argument is not None and not isinstance(argument, dict):
        raise PipelineError(f"source '{name}' takes null or an object, not {_type_name(argument)}")
    app_ids_of(argument)  # a bad appId is a 400 before any data is read
    if "timeSeries" in spec:
        return name, argument, _resolve_time_series(spec["timeSeries"], now_ms, zone)
    if name in EVENT_SOURCES:
        raise PipelineError(f"source '{name}' requires timeSeries")
    return name, argument, None


def _resolve_time_series(spec: Any, now_ms: int, zone: ZoneInfo) -> dict:
    if not isinstance(spec, dict):
        raise PipelineError("timeSeries must be an object")
    unknown = set(spec) - {"period", "first", "count", "last"}
    if unknown:
        raise PipelineError(f"unknown timeSeries field '{sorted(unknown)[0]}'")
    period = spec.get("period")
    if period not in _PERIOD_MS:
        raise PipelineError('timeSeries.period must be "dayRange" or "hourRange"')
    if "first" not in spec:
        raise PipelineError("timeSeries.first is required")
    if ("count" in spec) == ("last" in spec):
        raise PipelineError("timeSeries needs exactly one of count or last")
    try:
        first = _align(_time_value(spec["first"], "first", now_ms), period, zone)
    except (OverflowError, OSError, ValueError) as exc:  # a time far outside the calendar
        if isinstance(exc, PipelineError):
            raise
        raise PipelineError("timeSeries.first is outside the range of dates") from None
    if "count" in spec:
        count = spec["count"]
        if not isinstance(count, int) or isinstance(count, bool) or count == 0:
            raise PipelineError("timeSeries.count must be a non-zero integer")
        if abs(count) * _PERIOD_MS[period] > MAX_RANGE_DAYS * _PERIOD_MS["dayRange"]:
            raise PipelineError(f"timeSeries spans more than {MAX_RANGE_DAYS} days")
        try:
            first, last = sorted((first, _shift(first, count, period, zone)))
        except (OverflowError, OSError, ValueError):
            raise PipelineError("timeSeries.count reaches outside the range of dates") from None
    else:
        last = _time_value(spec["last"], "last", now_ms)
        if last <= first:
            raise PipelineError("timeSeries.last must be after timeSeries.first")
        # A DST change may lengthen a span of whole local days by an hour.
        if last - first > MAX_RANGE_DAYS * _PERIOD_MS["dayRange"] + _PERIOD_MS["hourRange"]:
            raise PipelineError(f"timeSeries spans more than {MAX_RANGE_DAYS} days")
    return {"period": period, "first": first, "last": last}


def _align(moment_ms: int, period: str, zone: ZoneInfo) -> int:
    """The start of the period holding `moment_ms`: local midnight for a day, the top of the hour for an
    hour."""
    if period == "dayRange":
        return _midnight_ms(datetime.fromtimestamp(moment_ms / 1000, UTC).astimezone(zone).date(), zone)
    return moment_ms // _PERIOD_MS[period] * _PERIOD_MS[period]


def _shift(start_ms: int, count: int, period: str, zone: ZoneInfo) -> int:
    """The start of the period `count` periods after (or before) the one starting at `start_ms`."""
    if period == "dayRange":  # N days on is N local midnights on, whatever DST does in between
        day = datetime.fromtimestamp(start_ms / 1000, UTC).astimezone(zone).date()
        return _midnight_ms(day + timedelta(days=count), zone)
    return start_ms + count * _PERIOD_MS[period]


def _midnight_ms(day: date, zone: ZoneInfo) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=zone).timestamp() * 1000)


def _time_value(value: Any, name: str, now_ms: int) -> int:
    if isinstance(value, str):
        value = _compile_expression(value, now_ms, allow_fields=False)({})
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise PipelineError(f"timeSeries.{name} must be epoch milliseconds or an expression giving them")
    return value


# --- stages ------------------------------------------------------------------------------------

_UNSUPPORTED_STAGES = frozenset({"cat", "spawn", "join"})


def _compile_stage(index: int, stage: Any, now_ms: int) -> Stage:
    if not isinstance(stage, dict) or len(stage) != 1:
        raise PipelineError(f"pipeline stage {index} must be an object with exactly one key")
    ((kind, spec),) = stage.items()
    if kind == "source":
        raise PipelineError("source is only allowed as the first pipeline stage")
    if kind in _UNSUPPORTED_STAGES:
        raise PipelineError(f"pipeline stage '{kind}' is not supported by the sandbox")
    builder = _STAGE_BUILDERS.get(kind)
    if builder is None:
        raise PipelineError(f"unknown pipeline stage '{kind}'")
    return builder(spec, now_ms)


def _identified_stage(spec: Any, now_ms: int) -> Stage:
    if not isinstance(spec, str) or not spec.lstrip("!"):
        raise PipelineError("identified takes a field name, optionally prefixed with '!'")
    keep_anonymous = spec.startswith("!")
    get = _path_getter(spec[1:] if keep_anonymous else spec)
    return lambda rows: [row for row in rows if _is_anonymous(get(row)) == keep_anonymous]


def _filter_stage(spec: Any, now_ms: int) -> Stage:
    if not isinstance(spec, str):
        raise PipelineError("filter takes an expression string")
    test = _compile_expression(spec, now_ms)
    return lambda rows: [row for row in rows if test(row)]


def _select_stage(spec: Any, now_ms: int) -> Stage:
    outputs = _named_expressions("select", spec, now_ms)

    def select(rows: list[dict]) -> list[dict]:
        result = []
        for row in rows:
            out: dict = {}
            for parts, expr in outputs:
                _assign(out, parts, expr(row))
            result.append(out)
        return result

    return select


def _eval_stage(spec: Any, now_ms: int) -> Stage:
    outputs = _named_expressions("eval", spec, now_ms)

    def evaluate(rows: list[dict]) -> list[dict]:
        result = []
        for row in rows:
            values = [expr(row) for _, expr in outputs]
            out = dict(row)
            for (parts, _), value in zip(outputs, values, strict=True):
                _assign(out, parts, value)
            result.append(out)
        return result

    return evaluate


def _group_stage(spec: Any, now_ms: int) -> Stage:
    if not isinstance(spec, dict) or set(spec) - {"group", "fields"}:
        raise PipelineError('group takes {"group": [fields], "fields": {name: {aggregate: field}}}')
    keys = spec.get("group", [])
    if not isinstance(keys, list) or not all(isinstance(key, str) and key for key in keys):
        raise PipelineError("group.group must be a list of field names")
    aggregates = _aggregates("group.fields", spec.get("fields", {}))
    return _grouper([(_split_path(key), _path_getter(key)) for key in keys], aggregates, always_one=False)


def _reduce_stage(spec: Any, now_ms: int) -> Stage:
    return _grouper([], _aggregates("reduce", spec), always_one=True)


def _sort_stage(spec: Any, now_ms: int) -> Stage:
    if not isinstance(spec, list) or not spec or not all(isinstance(f, str) and f.lstrip("-") for f in spec):
        raise PipelineError('sort takes a non-empty list of field names, "-" prefix for descending')
    orders = [(_path_getter(field.lstrip("-")), field.startswith("-")) for field in reversed(spec)]

    def sort(rows: list[dict]) -> list[dict]:
        rows = list(rows)
        for get, descending in orders:
            rows.sort(key=lambda row, get=get: _sort_key(get(row)), reverse=descending)
        return rows

    return sort


def _limit_stage(spec: Any, now_ms: int) -> Stage:
    if not isinstance(spec, int) or isinstance(spec, bool) or spec < 0:
        raise PipelineError("limit takes a non-negative integer")
    return lambda rows: rows[:spec]


def _unwind_stage(spec: Any, now_ms: int) -> Stage:
    if not isinstance(spec, dict) or set(spec) - {"field", "index", "keepEmpty"}:
        raise PipelineError('unwind takes {"field": path, "index"?: name, "keepEmpty"?: bool}')
    field, index, keep_empty = spec.get("field"), spec.get("index"), spec.get("keepEmpty", False)
    if not isinstance(field, str) or not field:
        raise PipelineError("unwind.field must be a field name")
    if index is not None and (not isinstance(index, str) or not index):
        raise PipelineError("unwind.index must be a field name")
    if not isinstance(keep_empty, bool):
        raise PipelineError("unwind.keepEmpty must be true or false")
    get, parts = _path_getter(field), _split_path(field)
    index_parts = _split_path(index) if index else None

    def unwind(rows: list[dict]) -> list[dict]:
        result = []
        for row in rows:
            value = get(row)
            items = value if isinstance(value, list) else ([] if value is None else [value])
            positions: Iterable[int | None] = range(len(items))
            if not items and keep_empty:
                items, positions = [None], [None]
            for position, item in zip(positions, items, strict=True):
                out = dict(row)
                _assign(out, parts, item)
                if index_parts:
                    _assign(out, index_parts, position)
                result.append(out)
        return result

    return unwind


_STAGE_BUILDERS: dict[str, Callable[[Any, int], Stage]] = {
    "identified": _identified_stage,
    "filter": _filter_stage,
    "select": _select_stage,
    "eval": _eval_stage,
    "group": _group_stage,
    "reduce": _reduce_stage,
    "sort": _sort_stage,
    "limit": _limit_stage,
    "unwind": _unwind_stage,
}


def _named_expressions(stage: str, spec: Any, now_ms: int) -> list[tuple[tuple[str, ...], Expr]]:
    if not isinstance(spec, dict) or not spec:
        raise PipelineError(f"{stage} takes a non-empty object of name: expression")
    outputs = []
    for name, source in spec.items():
        if not isinstance(source, str):
            raise PipelineError(f"{stage}.{name} must be an expression string")
        outputs.append((_split_path(name), _compile_expression(source, now_ms)))
    return outputs


def _is_anonymous(value: Any) -> bool:
    return value is None or value == "" or (isinstance(value, str) and value.startswith(_ANONYMOUS_PREFIX))


def _sort_key(value: Any) -> tuple:
    """Total order over mixed JSON values: null, then numbers/booleans, then strings, then the rest."""
    if value is None:
        return (0, 0)
    if isinstance(value, int | float):
        return (1, value)
    if isinstance(value, str):
        return (2, value)
    return (3, json.dumps(value, sort_keys=True, default=str))


# --- group / reduce ----------------------------------------------------------------------------


class _Count:
    def __init__(self) -> None:
        self.n = 0

    def add(self, value: Any) -> None:
        self.n += 1

    def result(self) -> int:
        return self.n


class _CountDistinct:
    def __init__(self) -> None:
        self.seen: set = set()

    def add(self, value: Any) -> None:
        if value is not None:
            self.seen.add(_hashable(value) if type(value) in _CONTAINER_TYPES else value)

    def result(self) -> int:
        return len(self.seen)


class _Sum:
    def __init__(self) -> None:
        self.total: int | float = 0
        self.n = 0

    def add(self, value: Any) -> None:
        if value is None:
            return
        if type(value) not in _NUMBER_TYPES:
            raise PipelineError(f"cannot sum {_type_name(value)} value {value!r}")
        self.total += value
        self.n += 1

    def result(self) -> int | float:
        return self.total


class _Avg(_Sum):
    def result(self) -> float | None:
        return self.total / self.n if self.n else None


class _Extreme:
    def __init__(self, better: Callable[[Any, Any], bool]) -> None:
        self.better = better
        self.best: Any = None

    def add(self, value: Any) -> None:
        if value is None:
            return
        try:
            if self.best is None or self.better(value, self.best):
                self.best = value
        except TypeError:
            raise PipelineError(
                f"cannot compare {_type_name(value)} with {_type_name(self.best)} in min/max"
            ) from None

    def result(self) -> Any:
        return self.best


class _First:
    def __init__(self) -> None:
        self.value: Any = None

    def add(self, value: Any) -> None:
        if self.value is None:
            self.value = value

    def result(self) -> Any:
        return self.value


class _Last(_First):
    def add(self, value: Any) -> None:
        if value is not None:
            self.value = value


class _List:
    def __init__(self) -> None:
        self.values: list = []

    def add(self, value: Any) -> None:
        if value is not None:
            self.values.append(value)

    def result(self) -> list:
        return self.values


_AGGREGATORS: dict[str, Callable[[], Any]] = {
    "count": _CountDistinct,
    "sum": _Sum,
    "avg": _Avg,
    "min": lambda: _Extreme(operator.lt),
    "max": lambda: _Extreme(operator.gt),
    "first": _First,
    "last": _Last,
    "list": _List,
}

Aggregate = tuple[tuple[str, ...], Expr, Callable[[], Any]]


def _aggregates(where: str, spec: Any) -> list[Aggregate]:
    if isinstance(spec, list) and all(isinstance(item, dict) and len(item) == 1 for item in spec):
        spec = {name: agg for item in spec for name, agg in item.items()}
    if not isinstance(spec, dict):
        raise PipelineError(f"{where} must be an object of name: {{aggregate: field}}")
    aggregates = []
    for name, agg in spec.items():
        if not isinstance(agg, dict) or len(agg) != 1:
            raise PipelineError(f"{where}.{name} must be an object with exactly one aggregate")
        ((kind, field),) = agg.items()
        if kind not in _AGGREGATORS:
            raise PipelineError(
                f"unsupported aggregate '{kind}' in {where}.{name}; supported: {', '.join(_AGGREGATORS)}"
            )
        if field is None and kind == "count":
            aggregates.append((_split_path(name), _null, _Count))
        elif isinstance(field, str) and field:
            aggregates.append((_split_path(name), _path_getter(field), _AGGREGATORS[kind]))
        else:
            raise PipelineError(f"{where}.{name}: '{kind}' takes a field name")
    return aggregates


def _grouper(
    keys: list[tuple[tuple[str, ...], Expr]], aggregates: list[Aggregate], always_one: bool
) -> Stage:
    key_getters = [get for _, get in keys]
    value_getters = [get for _, get, _ in aggregates]
    factories = [factory for _, _, factory in aggregates]

    def new_group(key_values: tuple) -> tuple[tuple, list, list]:
        accumulators = [factory() for factory in factories]
        return key_values, accumulators, [accumulator.add for accumulator in accumulators]

    def group(rows: list[dict]) -> list[dict]:
        groups: dict[tuple, tuple[tuple, list, list]] = {}
        for row in rows:
            key_values = tuple([get(row) for get in key_getters])
            try:
                entry = groups.get(key_values)
                key = key_values
            except TypeError:  # a list or object value: group on its canonical JSON instead
                key = tuple(_hashable(value) for value in key_values)
                entry = groups.get(key)
            if entry is None:
                entry = groups[key] = new_group(key_values)
            for add, get in zip(entry[2], value_getters, strict=True):
                add(get(row))
        if always_one and not groups:
            groups[()] = new_group(())
        result = []
        for key_values, accumulators, _ in groups.values():
            out: dict = {}
            for (parts, _), value in zip(keys, key_values, strict=True):
                _assign(out, parts, value)
            for (parts, _, _), accumulator in zip(aggregates, accumulators, strict=True):
                _assign(out, parts, accumulator.result())
            result.append(out)
        return result

    return group


def _hashable(value: Any) -> Any:
    if type(value) in _CONTAINER_TYPES:
        return json.dumps(value, sort_keys=True, default=str)
    return value


# --- field paths -------------------------------------------------------------------------------


def _split_path(path: str) -> tuple[str, ...]:
    parts = tuple(path.split("."))
    if not all(parts):
        raise PipelineError(f"invalid field name '{path}'")
    return parts


def _path_getter(path: str) -> Expr:
    """A fast reader for a dotted path; any missing or non-object step reads as null."""
    parts = _split_path(path)
    if len(parts) == 1:
        name = parts[0]
        return lambda row: row.get(name)

    def get(row: dict) -> Any:
        value: Any = row
        for part in parts:
            if not isinstance(value, dict):
                return None
            value = value.get(part)
        return value

    return get


def _assign(row: dict, parts: tuple[str, ...], value: Any) -> None:
    """Set a dotted path on `row`, copying nested objects on the way so input rows stay untouched."""
    target = row
    for part in parts[:-1]:
        child = target.get(part)
        child = dict(child) if isinstance(child, dict) else {}
        target[part] = child
        target = child
    target[parts[-1]] = value


# --- expressions -------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""(?P<space>\s+)
    |(?P<number>\d+\.\d+|\d+)
    |(?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
    |(?P<name>[A-Za-z_$][\w$]*(?:\.[\w$]+)*)
    |(?P<op>==|!=|<=|>=|&&|\|\||[<>!+\-*/(),])""",
    re.VERBOSE,
)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r"}
_KEYWORDS = {"true": True, "false": False, "null": None}
_COMPARISONS = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


class _Literal:
    """A constant node, kept distinguishable so functions can check literal arguments up front."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __call__(self, row: dict) -> Any:
        return self.value


def _compile_expression(source: str, now_ms: int, *, allow_fields: bool = True) -> Expr:
    try:
        return _Parser(source, now_ms, allow_fields).parse()
    except RecursionError:
        raise PipelineError(f"invalid expression {source[:80]!r}...: nested too deeply") from None


class _Parser:
    """Recursive descent, lowest precedence first: || && (== !=) (< <= > >=) (+ -) (* /) unary."""

    def __init__(self, source: str, now_ms: int, allow_fields: bool) -> None:
        self.source = source
        self.now_ms = now_ms
        self.allow_fields = allow_fields
        self.tokens = self._tokenize()
        self.index = 0

    def parse(self) -> Expr:
        expr = self._or()
        kind, text, position = self.tokens[self.index]
        if kind != "end":
            raise self.error(f"unexpected '{text}'", position)
        return expr

    def _tokenize(self) -> list[tuple[str, str, int]]:
        tokens = []
        position = 0
        while position < len(self.source):
            match = _TOKEN.match(self.source, position)
            if match is None:
                raise self.error(f"unexpected character '{self.source[position]}'", position)
            if match.lastgroup != "space":
                tokens.append((match.lastgroup or "", match.group(), position))
            position = match.end()
        tokens.append(("end", "", len(self.source)))
        return tokens

    def error(self, message: str, position: int) -> PipelineError:
        return PipelineError(f"invalid expression {self.source!r}: {message} at position {position}")

    def _take(self, *ops: str) -> str | None:
        kind, text, _ = self.tokens[self.index]
        if kind == "op" and text in ops:
            self.index += 1
            return text
        return None

    def _expect(self, op: str) -> None:
        if self._take(op) is None:
            _, text, position = self.tokens[self.index]
            raise self.error(f"expected '{op}' but found '{text or 'end of expression'}'", position)

    def _or(self) -> Expr:
        left = self._and()
        while self._take("||"):
            left = _or(left, self._and())
        return left

    def _and(self) -> Expr:
        left = self._equality()
        while self._take("&&"):
            left = _and(left, self._equality())
        return left

    def _equality(self) -> Expr:
        left = self._comparison()
        while op := self._take("==", "!="):
            left = _binary(operator.eq if op == "==" else operator.ne, left, self._comparison())
        return left

    def _comparison(self) -> Expr:
        left = self._additive()
        while op := self._take("<", "<=", ">", ">="):
            left = _ordering(_COMPARISONS[op], left, self._additive())
        return left

    def _additive(self) -> Expr:
        left = self._multiplicative()
        while op := self._take("+", "-"):
            left = _arithmetic(op, left, self._multiplicative(), self.source)
        return left

    def _multiplicative(self) -> Expr:
        left = self._unary()
        while op := self._take("*", "/"):
            left = _arithmetic(op, left, self._unary(), self.source)
        return left

    def _unary(self) -> Expr:
        if self._take("!"):
            operand = self._unary()
            return lambda row: not operand(row)
        if self._take("-"):
            return _negate(self._unary(), self.source)
        return self._primary()

    def _primary(self) -> Expr:
        kind, text, position = self.tokens[self.index]
        self.index += 1
        if kind == "number":
            return _Literal(float(text) if "." in text else int(text))
        if kind == "string":
            return _Literal(_unquote(text))
        if kind == "op" and text == "(":
            expr = self._or()
            self._expect(")")
            return expr
        if kind == "name":
            if self._take("("):
                return self._call(text, position)
            if text in _KEYWORDS:
                return _Literal(_KEYWORDS[text])
            if not self.allow_fields:
                raise self.error(f"field '{text}' is not allowed here", position)
            return _path_getter(text)
        raise self.error(f"expected a value but found '{text or 'end of expression'}'", position)

    def _call(self, name: str, position: int) -> Expr:
        args: list[Expr] = []
        if not self._take(")"):
            args.append(self._or())
            while self._take(","):
                args.append(self._or())
            self._expect(")")
        function = _FUNCTIONS.get(name)
        if function is None:
            raise self.error(f"unsupported function '{name}'", position)
        arity, build = function
        if len(args) != arity:
            raise self.error(f"{name}() takes {arity} argument(s), got {len(args)}", position)
        return build(self, args, position)


def _unquote(token: str) -> str:
    body = token[1:-1]
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), body)


def _or(left: Expr, right: Expr) -> Expr:
    return lambda row: bool(left(row)) or bool(right(row))


def _and(left: Expr, right: Expr) -> Expr:
    return lambda row: bool(left(row)) and bool(right(row))


def _binary(test: Callable[[Any, Any], bool], left: Expr, right: Expr) -> Expr:
    return lambda row: test(left(row), right(row))


def _ordering(test: Callable[[Any, Any], bool], left: Expr, right: Expr) -> Expr:
    def compare(row: dict) -> bool:
        a, b = left(row), right(row)
        if a is None or b is None:
            return False
        try:
            return test(a, b)
        except TypeError:
            return False

    return compare


_ARITHMETIC = {"+": operator.add, "-": operator.sub, "*": operator.mul}


def _arithmetic(op: str, left: Expr, right: Expr, source: str) -> Expr:
    apply = _ARITHMETIC.get(op)

    def calculate(row: dict) -> Any:
        a, b = left(row), right(row)
        if a is None or b is None:
            return None
        if op == "+" and isinstance(a, str) and isinstance(b, str):
            return a + b
        if not (_is_number(a) and _is_number(b)):
            raise PipelineError(
                f"in expression {source!r}: cannot apply '{op}' to {_type_name(a)} and {_type_name(b)}"
            )
        if apply is not None:
            return apply(a, b)
        return a / b if b else None

    return calculate


def _negate(operand: Expr, source: str) -> Expr:
    def negate(row: dict) -> Any:
        value = operand(row)
        if value is None:
            return None
        if not _is_number(value):
            raise PipelineError(f"in expression {source!r}: cannot negate {_type_name(value)}")
        return -value

    return negate


def _fn_now(parser: _Parser, args: list[Expr], position: int) -> Expr:
    return _Literal(parser.now_ms)


def _fn_date_add(parser: _Parser, args: list[Expr], position: int) -> Expr:
    base, amount, unit = args
    if isinstance(unit, _Literal) and unit.value not in _UNIT_MS:
        raise parser.error(f"dateAdd() unit must be one of {', '.join(map(repr, _UNIT_MS))}", position)

    def date_add(row: dict) -> Any:
        start, count, step = base(row), amount(row), unit(row)
        if start is None or count is None:
            return None
        if step not in _UNIT_MS or not (_is_number(start) and _is_number(count)):
            raise PipelineError(f"in expression {parser.source!r}: dateAdd() needs (ms, number, unit)")
        return start + count * _UNIT_MS[step]

    return date_add


def _fn_is_null(parser: _Parser, args: list[Expr], position: int) -> Expr:
    (value,) = args
    return lambda row: value(row) is None


def _fn_contains(parser: _Parser, args: list[Expr], position: int) -> Expr:
    haystack, needle = args

    def contains(row: dict) -> bool:
        container, item = haystack(row), needle(row)
        if isinstance(container, str):
            return isinstance(item, str) and item in container
        return isinstance(container, list) and item in container

    return contains


def _fn_len(parser: _Parser, args: list[Expr], position: int) -> Expr:
    (value,) = args

    def length(row: dict) -> int | None:
        measured = value(row)
        return len(measured) if isinstance(measured, str | list | dict) else None

    return length


def _fn_starts_with(parser: _Parser, args: list[Expr], position: int) -> Expr:
    text, prefix = args

    def starts_with(row: dict) -> bool:
        whole, start = text(row), prefix(row)
        return isinstance(whole, str) and isinstance(start, str) and whole.startswith(start)

    return starts_with


_FUNCTIONS: dict[str, tuple[int, Callable[[_Parser, list[Expr], int], Expr]]] = {
    "now": (0, _fn_now),
    "dateAdd": (3, _fn_date_add),
    "isNull": (1, _fn_is_null),
    "contains": (2, _fn_contains),
    "len": (1, _fn_len),
    "startsWith": (2, _fn_starts_with),
}


def _null(row: dict) -> None:
    return None


def _is_number(value: Any) -> bool:
    return type(value) in _NUMBER_TYPES


def _type_name(value: Any) -> str:
    return {type(None): "null", bool: "boolean", str: "string", list: "list", dict: "object"}.get(
        type(value), "number"
    )
