"""Reverse-ETL model files: one `sql/reverse_etl/<model>.sql` each, a query under a `-- key: value` header.

`parse_model` reads and checks one file (strictly: a typo is a `ModelError` naming the file, never a sync
that quietly sends the wrong thing); `ModelSpec.diff_spec` is what the engine's diff runs with.
The header format is documented in `sql/reverse_etl/README.md` and in `HEADER_KEYS` below.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import sqlparse
from sqlparse import tokens

from segment_ops.engine.pii import ALLOW, PiiPolicy, PiiPolicyError, check_policy, identity_columns
from segment_ops.engine.spec import CALL_TYPES, MODES, DiffSpec, SpecError
from segment_ops.engine.tracking_plan import check_policy as check_tracking_policy

if TYPE_CHECKING:
    from segment_ops.config import Settings

DEFAULT_MAX_REJECTED_RATIO = 0.01
SEGMENT, FULLSTORY_USERS = "segment", "fullstory_users"
DESTINATIONS = (SEGMENT, FULLSTORY_USERS)
MODEL_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*){0,2}$")
_OWNER = re.compile(r"^(team:[A-Za-z0-9_.-]+|[^@\s]+@[^@\s]+\.[^@\s]+)$")
_HEADER_LINE = re.compile(r"^--\s*([A-Za-z_]+)\s*:\s*(.*?)\s*$")
# The Segment destination of a model that names none: the code location's own write key and tracking URL.
DEFAULT_WRITE_KEY_ENV = "SEGMENT_WRITE_KEY"
DEFAULT_TRACKING_URL_ENV = "SEGMENT_TRACKING_URL"
# The project's sql/reverse_etl/, shipped as this package (pyproject's package-dir): in a checkout (editable
# install) it is that folder, in a wheel its installed copy.
MODELS_PACKAGE = "segment_ops.syncs.reverse_etl.sql"
# An environment variable's name as a header may give it: upper case, so a (mixed-case) write key pasted in by
# mistake is refused as a key, never taken for a variable's name and never repeated in an error.
_ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")

# Every header key, what it holds, and whether it is required (call-type specific rules are in `_check`).
HEADER_KEYS: dict[str, str] = {
    "description": "what the model sends and why (becomes the asset's description)",
    "owner": "who answers for it: team:<name> or an email; several separated by commas",
    "call": "identify | group | track",
    "mode": "upsert (added + changed) | mirror (also clears removed rows) | append (each new key once)",
    "key": "column identifying a row; null or repeated keys are rejected",
    "user_id": "column holding the Segment userId",
    "anonymous_id": "column holding the Segment anonymousId",
    "group_id": "column holding the groupId (group calls)",
    "event": "event name of track calls (a literal)",
    "event_column": "column holding the event name of track calls",
    "timestamp": "TIMESTAMP/DATE column sent as the call's timestamp",
    "traits": "columns sent as traits (identify, group); default: every column not mapped above",
    "properties": "columns sent as properties (track); default: every column not mapped above",
    "exclude": "columns left out of the default traits/properties",
    "schedule": "cron expression (UTC) of the model's schedule",
    "depends_on": "warehouse tables the query reads, comma-separated (schema.table allowed)",
    "probe": "column of the depends_on tables whose max() the change sensor watches (else row counts)",
    "max_rejected_ratio": f"rejected share of rows above which the check warns "
                          f"(default {DEFAULT_MAX_REJECTED_RATIO})",
    "write_key_env": f"NAME of the environment variable holding the write key of the Segment source this "
                     f"model sends to, never the key itself (default {DEFAULT_WRITE_KEY_ENV})",
    "tracking_url_env": f"NAME of the environment variable holding the Tracking API base this model sends "
                        f"to, e.g. an EU workspace's (default {DEFAULT_TRACKING_URL_ENV})",
    "pii": "allow | hash | drop: what happens, before the diff, to the traits/properties classified as "
           "personal data (by column name; by value too under hash or drop); default allow: nothing changes",
    "pii_fields": "per-column PII actions, overriding the classification, e.g. phone=drop, name=allow (the "
                  "key and the id, event and timestamp columns cannot be hashed or dropped)",
    "tracking_plan": "off | warn | block: what a call that breaks the destination source's tracking plan "
                     "does (default: TRACKING_PLAN_POLICY, itself warn)",
    "destination": f"{' | '.join(DESTINATIONS)}: where the calls go (default segment). fullstory_users "
                   "upserts each identify call as a Fullstory user (uid = userId; the traits `email` and "
                   "`display_name` as those fields, the others as properties) through FULLSTORY_API_URL",
}
_REQUIRED = ("description", "owner", "call", "mode", "key")
_LIST_KEYS = ("owner", "traits", "properties", "exclude", "depends_on")


@dataclass(frozen=True)
class SegmentDestination:
    """Where a reverse-ETL model sends: the NAMES of the variables holding the write key and the Tracking API
    base (`write_key_env:` / `tracking_url_env:` in its header), never their values."""

    write_key_env: str = DEFAULT_WRITE_KEY_ENV
    tracking_url_env: str = DEFAULT_TRACKING_URL_ENV

    @property
    def is_default(self) -> bool:
        """Whether it is the code location's own: SEGMENT_WRITE_KEY and SEGMENT_TRACKING_URL."""
        return self == SegmentDestination()

    @property
    def names(self) -> tuple[str, str]:
        return self.write_key_env, self.tracking_url_env


class ModelError(ValueError):
    """A model file that cannot be synced as written; the message starts with the file's path."""

    def __init__(self, path: Path | str, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


@dataclass(frozen=True)
class ModelSpec:
    """One parsed model file."""

    name: str
    path: Path
    sql: str
    description: str
    owners: tuple[str, ...]
    call: str
    mode: str
    key: str
    user_id: str | None = None
    anonymous_id: str | None = None
    group_id: str | None = None
    event: str | None = None
    event_column: str | None = None
    timestamp: str | None = None
    fields: tuple[str, ...] | None = None  # traits or properties; None: every column not mapped
    exclude: tuple[str, ...] = ()
    schedule: str | None = None
    depends_on: tuple[str, ...] = ()
    probe: str | None = None
    max_rejected_ratio: float = DEFAULT_MAX_REJECTED_RATIO
    write_key_env: str = DEFAULT_WRITE_KEY_ENV  # the variable's name; its value is read at run time only
    tracking_url_env: str = DEFAULT_TRACKING_URL_ENV
    code_version: str = ""
    header: dict[str, str] = field(default_factory=dict, compare=False)
    pii: PiiPolicy = PiiPolicy()  # `pii:` and `pii_fields:`; `engine.pii.apply_pii_policy` applies it
    tracking_plan: str | None = None  # `tracking_plan:` (None: TRACKING_PLAN_POLICY)
    sends_to: str = SEGMENT  # `destination:`: segment (Tracking API) | fullstory_users (Fullstory users API)

    @property
    def sync(self) -> str:
        """The sync name in the ledger, and the staging file's name."""
        return f"reverse_etl_{self.name}"

    @property
    def destination(self) -> SegmentDestination:
        """The names of the variables holding the write key and the tracking URL this model sends with."""
        return SegmentDestination(self.write_key_env, self.tracking_url_env)

    @cached_property  # frozen, so built once (fields_name, mapped_columns and check_columns all read it)
    def diff_spec(self) -> DiffSpec:
        """What the engine's diff runs with: the header's mapping, named by the file."""
        return DiffSpec(sync=self.sync, source=self.path.name, call=self.call, mode=self.mode, key=self.key,
                        user_id=self.user_id, anonymous_id=self.anonymous_id, group_id=self.group_id,
                        event=self.event, event_column=self.event_column, timestamp=self.timestamp,
                        fields=self.fields, exclude=self.exclude)

    @property
    def fields_name(self) -> str:
        return self.diff_spec.fields_name

    @property
    def mapped_columns(self) -> tuple[str, ...]:
        """Columns that become ids, event name or timestamp rather than traits/properties."""
        return self.diff_spec.mapped_columns

    def field_columns(self, columns: Sequence[str]) -> tuple[str, ...]:
        """The traits/properties of a result with `columns`: as declared, else every column not mapped."""
        return self.diff_spec.field_columns(columns)

    def check_columns(self, columns: Sequence[str]) -> None:
        """Raise `ModelError` when the header names a column the query does not return (its PII policy's
        columns too)."""
        try:
            self.diff_spec.check_columns(columns)
        except SpecError as exc:
            raise ModelError(self.path, exc.problem) from None
        try:
            check_policy(self.pii, self.diff_spec, columns)
        except PiiPolicyError as exc:
            raise ModelError(self.path, f"pii_fields: {exc}") from None


def parse_model(path: Path | str, text: str | None = None) -> ModelSpec:
    """Parse and validate one model file; raises `ModelError` naming the file."""
    path = Path(path)
    name = path.stem
    if text is None:
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelError(path, f"cannot read the file: {exc}") from None
    if not MODEL_NAME.match(name):
        raise ModelError(path, "a model's file name must be letters, digits and underscores, starting with a "
                               "letter (it becomes the asset key)")
    header, sql = _split(path, text)
    spec = _build(path, name, header, sql, hashlib.sha256(text.encode()).hexdigest()[:16])
    _check(spec)
    return spec


def packaged_models_dir() -> Path:
    """The project's own `sql/reverse_etl/` (`MODELS_PACKAGE`)."""
    return Path(resources.files(MODELS_PACKAGE))


def models_dir(settings: Settings) -> Path | str:
    """The models' folder(s): REVERSE_ETL_MODELS_DIR (one folder, or several separated by `os.pathsep`: see
    `model_folders`), else the project's `sql/reverse_etl/` (`packaged_models_dir`)."""
    return settings["REVERSE_ETL_MODELS_DIR"] or packaged_models_dir()


def model_folders(folders: Path | str | Sequence[Path | str]) -> list[Path]:
    """The folders `folders` names: a `Path` is one folder, a string may name several separated by
    `os.pathsep` (REVERSE_ETL_MODELS_DIR), a sequence is taken in its order. Empty entries are skipped."""
    if isinstance(folders, Path):
        return [folders]
    items = folders.split(os.pathsep) if isinstance(folders, str) else list(folders)
    return [Path(item) for item in items if str(item).strip()]


def load_models(folders: Path | str | Sequence[Path | str]) -> list[ModelSpec | ModelError]:
    """Every `*.sql` of each folder (`model_folders`), the folders in order and each in name order: a spec,
    or the `ModelError` that file raised. Files of the same name (the asset key) in several folders are one
    `ModelError` naming all of them, in the place of the first: which one is meant is for a person to say."""
    paths = [path for folder in model_folders(folders) if folder.is_dir()
             for path in sorted(folder.glob("*.sql"))]
    by_name: dict[str, list[Path]] = {}
    for path in paths:
        by_name.setdefault(path.stem, []).append(path)
    found: list[ModelSpec | ModelError] = []
    for name, same in by_name.items():
        if len(same) > 1:
            found.append(ModelError(same[-1], f"model {name!r} is defined {len(same)} times: "
                                              f"{', '.join(map(str, same))}; a model's file name is its "
                                              "asset key, so rename or remove all but one"))
            continue
        try:
            found.append(parse_model(same[0]))
        except ModelError as exc:
            found.append(exc)
    return found


def compile_models(url: str, models: Sequence[ModelSpec | ModelError]) -> list[ModelSpec | ModelError]:
    """The preflight's check of `models` against the warehouse at `url` (`reverse_etl_models`): each query
    compiled with `LIMIT 0`, nothing read, and the columns its header names looked for in what it returns.
    Each model as it is, or the `ModelError` naming its file. Raises `WarehouseError` when the warehouse
    cannot be reached at all."""
    from segment_ops.engine.warehouse import MissingWarehouseFileError, compile_queries, duckdb_file

    if (path := duckdb_file(url)) is not None and not Path(path).exists():
        raise MissingWarehouseFileError(f"the DuckDB warehouse {path} does not exist")
    columns = compile_queries(url, {m.name: m.sql for m in models if isinstance(m, ModelSpec)})
    return [checked_model(m, columns) for m in models]


def checked_model(model: ModelSpec | ModelError,
                  columns: Mapping[str, tuple[str, ...] | Exception]) -> ModelSpec | ModelError:
    """`model` when its compiled query (`columns[model.name]`, from `compile_queries`) returns what its header
    names, else the `ModelError` naming its file (a broken file's error as it is)."""
    if isinstance(model, ModelError):
        return model
    found = columns[model.name]
    if isinstance(found, Exception):
        return ModelError(model.path, str(found))
    try:
        model.check_columns(found)
    except ModelError as exc:
        return exc
    return model


def _split(path: Path, text: str) -> tuple[dict[str, str], str]:
    """The header's key/values and the query after it."""
    header: dict[str, str] = {}
    lines = text.splitlines()
    body_start = len(lines)
    for number, line in enumerate(lines):
        stripped = line.strip()
        if not stripped:
            continue
        if not stripped.startswith("--"):
            body_start = number
            break
        match = _HEADER_LINE.match(stripped)
        if match is None:
            continue  # free comment text in the header block
        key, value = match.group(1).lower(), match.group(2)
        if key not in HEADER_KEYS:
            raise ModelError(path, f"line {number + 1}: unknown header key {key!r}; known keys: "
                                   f"{', '.join(HEADER_KEYS)}")
        if key in header:
            raise ModelError(path, f"line {number + 1}: header key {key!r} is given twice")
        if not value:
            raise ModelError(path, f"line {number + 1}: header key {key!r} has no value")
        header[key] = value
    if not header:
        raise ModelError(path, "no header: the file must start with `-- key: value` lines "
                               f"({', '.join(_REQUIRED)} at least)")
    return header, _single_statement(path, "\n".join(lines[body_start:]), body_start + 1)


def _single_statement(path: Path, body: str, first_line: int) -> str:
    """The one statement of `body`, without its closing ';'. Split by `sqlparse` the way SQL reads it, so a
    ';' in a literal, quoted name, dollar-quote or comment separates nothing, and an apostrophe in a comment
    cannot hide a second statement (as it could from a regex)."""
    statements: list[tuple[int, list[sqlparse.sql.Token]]] = []  # (offset in body, tokens) of each one
    offset = 0
    for statement in sqlparse.parse(body):  # the statements' text, joined, is `body`
        flat = list(statement.flatten())
        if any(_is_code(t) for t in flat):
            statements.append((offset, flat))
        offset += len(str(statement))
    if not statements:
        raise ModelError(path, "no query after the header")
    if len(statements) > 1:
        start, flat = statements[1]
        lead = next(i for i, t in enumerate(flat) if _is_code(t))
        start += sum(len(str(t)) for t in flat[:lead])
        words = "".join(str(t) for t in flat[lead:]).strip().splitlines()[0][:60]
        raise ModelError(path, f"the query must be a single statement, found {len(statements)}: the second "
                               f"starts at line {first_line + body[:start].count(chr(10))} ({words!r})")
    flat = statements[0][1]
    last = max(i for i, t in enumerate(flat) if _is_code(t))
    # The closing ';' goes; comments around it stay (the warehouse wraps the query, ending on its own line).
    if flat[last].match(tokens.Punctuation, ";"):
        flat = flat[:last] + flat[last + 1:]
    return "".join(str(t) for t in flat).strip()


def _is_code(token: sqlparse.sql.Token) -> bool:
    return not token.is_whitespace and token.ttype not in tokens.Comment


def _build(path: Path, name: str, header: dict[str, str], sql: str, code_version: str) -> ModelSpec:
    missing = [k for k in _REQUIRED if k not in header]
    if missing:
        raise ModelError(path, f"the header lacks required key(s): {', '.join(missing)}")
    values: dict[str, object] = {}
    for key, raw in header.items():
        if key in _LIST_KEYS:
            items = tuple(item.strip() for item in raw.split(","))
            if any(not item for item in items):
                raise ModelError(path, f"header key {key!r} has an empty item: {raw!r}")
            if len(set(items)) != len(items):
                raise ModelError(path, f"header key {key!r} repeats an item: {raw!r}")
            values[key] = items
        else:
            values[key] = raw
    fields = values.pop("traits", None) or values.pop("properties", None)
    try:
        ratio = float(values.pop("max_rejected_ratio", DEFAULT_MAX_REJECTED_RATIO))  # type: ignore[arg-type]
    except ValueError:
        raise ModelError(path, f"max_rejected_ratio must be a number, "
                               f"got {header['max_rejected_ratio']!r}") from None
    owners = values.pop("owner")
    sends_to = str(values.pop("destination", SEGMENT)).strip().lower()
    pii = _pii_policy(path, values.pop("pii", None), values.pop("pii_fields", None))  # type: ignore[arg-type]
    if (policy := values.get("tracking_plan")) is not None:
        try:
            values["tracking_plan"] = check_tracking_policy(str(policy).strip().lower())
        except ValueError as exc:
            raise ModelError(path, f"tracking_plan: {exc}") from None
    return ModelSpec(name=name, path=path, sql=sql, owners=owners, fields=fields,  # type: ignore[arg-type]
                     max_rejected_ratio=ratio, code_version=code_version, header=dict(header), pii=pii,
                     sends_to=sends_to, **values)  # type: ignore[arg-type]


def _pii_policy(path: Path, default: str | None, fields: str | None) -> PiiPolicy:
    """The model's PII policy from `pii:` (the action) and `pii_fields:` (column=action items)."""
    try:
        PiiPolicy.parse(default)
    except PiiPolicyError as exc:
        hint = "; per-column actions go in `pii_fields:` (e.g. phone=drop)" if "=" in (default or "") else ""
        raise ModelError(path, f"pii: {exc}{hint}") from None
    try:
        return PiiPolicy.parse(default, fields)
    except PiiPolicyError as exc:
        raise ModelError(path, f"pii_fields: {exc}") from None


def _check(spec: ModelSpec) -> None:
    """The rules a header must follow beyond its syntax."""
    path, call, header = spec.path, spec.call, spec.header

    def fail(problem: str) -> None:
        raise ModelError(path, problem)

    if call not in CALL_TYPES:
        fail(f"call must be one of {', '.join(CALL_TYPES)}, got {call!r}")
    if spec.mode not in MODES:
        fail(f"mode must be one of {', '.join(MODES)}, got {spec.mode!r}")
    if len(spec.description) < 20:
        fail("description is too short to tell anyone what the model sends (20 characters at least)")
    for owner in spec.owners:
        if not _OWNER.match(owner):
            fail(f"owner {owner!r} must be team:<name> or an email address")
    if not (spec.user_id or spec.anonymous_id):
        fail(f"{call} calls need a userId or an anonymousId: map a column with `user_id:` or `anonymous_id:`"
             + (" (for accounts, e.g. the account's first user; see sql/reverse_etl/account_traits.sql)"
                if call == "group" else ""))
    if call == "group" and not spec.group_id:
        fail("group calls need `group_id:` (the column holding the groupId)")
    if call != "group" and spec.group_id:
        fail(f"`group_id:` only applies to group calls, not {call}")
    if call == "track":
        if bool(spec.event) == bool(spec.event_column):
            fail("track calls need exactly one of `event:` (a name) or `event_column:` (a column)")
        if "traits" in header:
            fail("track calls carry `properties:`, not `traits:`")
        if spec.mode == "mirror":
            fail("mirror mode clears the traits of removed rows, so it needs identify or group calls; "
                 "use upsert or append for track")
    else:
        if spec.event or spec.event_column:
            fail(f"`event:`/`event_column:` only apply to track calls, not {call}")
        if "properties" in header:
            fail(f"{call} calls carry `traits:`, not `properties:`")
    if spec.fields is not None and spec.exclude:
        fail(f"`exclude:` only applies when `{spec.fields_name}:` is not given (the default: all other "
             "columns)")
    overlap = set(spec.fields or ()) & set(spec.mapped_columns)
    if overlap:
        fail(f"column(s) {', '.join(sorted(overlap))} are mapped to an id, event or timestamp and also "
             f"listed in `{spec.fields_name}:`; alias a copy in the query to send both")
    for table in spec.depends_on:
        if not _TABLE_NAME.match(table):
            fail(f"depends_on: {table!r} is not a table name ([catalog.][schema.]table)")
    if spec.probe and not spec.depends_on:
        fail("`probe:` needs `depends_on:` (the tables to probe)")
    identity = identity_columns(spec.diff_spec)
    for column, action in spec.pii.fields:
        if column in identity and action != ALLOW:
            fail(f"pii_fields: {column}={action} would change the {identity[column]}; identity columns are "
                 "never hashed or dropped (hash the id in the query if it must not be sent as it is)")
        if column in spec.exclude:
            fail(f"pii_fields: {column!r} is excluded, so not sent: nothing to hash or drop")
        if spec.fields is not None and column not in spec.fields and column not in identity:
            fail(f"pii_fields: {column!r} is not among the {spec.fields_name} ({', '.join(spec.fields)}): "
                 "nothing to hash or drop")
    if not 0.0 <= spec.max_rejected_ratio <= 1.0:
        fail(f"max_rejected_ratio must be within [0, 1], got {spec.max_rejected_ratio}")
    if spec.sends_to not in DESTINATIONS:
        fail(f"destination must be one of {', '.join(DESTINATIONS)}, got {spec.sends_to!r}")
    if spec.sends_to == FULLSTORY_USERS:
        if call != "identify" or not spec.user_id:
            fail("destination fullstory_users takes identify calls with `user_id:` (a Fullstory user's uid)")
        if spec.mode == "mirror":
            fail("destination fullstory_users cannot clear a removed row's user (Fullstory documents no way "
                 "to unset a property): use upsert")
        stray = [k for k in ("write_key_env", "tracking_url_env", "tracking_plan") if k in header]
        if stray:
            fail(f"{', '.join(stray)} apply to Segment destinations, not fullstory_users")
    for key, default in (("write_key_env", DEFAULT_WRITE_KEY_ENV),
                         ("tracking_url_env", DEFAULT_TRACKING_URL_ENV)):
        if problem := _env_name_problem(key, getattr(spec, key), default):
            fail(problem)


def _env_name_problem(key: str, value: str, default: str) -> str | None:
    """Why `value` cannot be the variable named by header `key`, without repeating the value (it may be a
    secret pasted into the file); None when it can."""
    from segment_ops.config import SETTINGS  # the settings this project reads for other purposes

    example = f"{default}_EU"
    if "://" in value:
        return (f"`{key}:` holds a URL; it takes the NAME of an environment variable holding the URL "
                f"(e.g. {example}), set in the deployment's environment")
    # An upper-case token of 16+ characters with digits and no underscore is a key, not a variable's name.
    keylike = "_" not in value and len(value) >= 16 and any(c.isdigit() for c in value)
    if keylike or not _ENV_NAME.match(value):
        looks = "a write key" if key == "write_key_env" else "a value"
        return (f"`{key}:` must be the NAME of an environment variable (upper-case letters, digits and "
                f"underscores, e.g. {example}), and what is given looks like {looks}: never put a secret in "
                f"a model file; set it in the deployment's environment under a name and give that name here")
    if value != default and value in {s.name for s in SETTINGS}:
        return (f"`{key}:` names {value}, a setting of segment_ops with another purpose; name a variable of "
                f"its own (e.g. {example})")
    return None
