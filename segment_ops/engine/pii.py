"""The PII policy of a diff sync: personal data in the staged rows is allowed, hashed or dropped before the
diff, so what the policy hashes or drops never reaches the ledger, the snapshot or Segment (issue 20).

Classification reuses the audit trail's redaction engine (`engine.redaction`). By name (`pii_name_kind`): a
trait/property column named like an email, phone, person's name, address, IP, birth date, national id
(`PII_NAMES`) or credential (the engine's `SENSITIVE_KEY_SUFFIXES`) has every value acted on. By value, only
under a default of hash or drop: in text, JSON and nested columns, the values holding an email or a token
(the engine's `EMAIL_PATTERN` and `PREFIXED_TOKEN_PATTERNS`) or an international phone number
(`PHONE_PATTERN`) are, each on its own, so whether a value is touched depends on that value only, never on
its neighbours (a column does not flip between hashed and clear from one run to the next).

Hashes are the engine's: `sha256:<hex>`, HMAC-SHA256 keyed by SEGMENT_OPS_REDACTION_SALT, an email trimmed and
normalised first (`hash_pii`), so an email hashed here equals the one the audit trail sends its SIEM. Whole
columns are hashed in DuckDB (HMAC from two `sha256` calls, about 0.7 s per million values on two threads).
Python sees only what DuckDB cannot do alike: the distinct values a cheap SQL prefilter lets through to the
value patterns, and email-like values that are not plain ASCII (NFKC, case folding), a chunk at a time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb
import orjson
import pyarrow as pa
from duckdb.sqltypes import DuckDBPyType

from segment_ops.engine.redaction import (
    EMAIL_PATTERN,
    HASH_PREFIX,
    PREFIXED_TOKEN_PATTERNS,
    RedactionRules,
    looks_like_email,
    names_a_credential,
    normalise_email,
)
from segment_ops.engine.spec import DiffSpec
from segment_ops.engine.sql import literal, quote
from segment_ops.engine.warehouse import CHUNK_ROWS, StagedResult

ALLOW, HASH, DROP = "allow", "hash", "drop"
ACTIONS = (ALLOW, HASH, DROP)
SALT_SETTING = "SEGMENT_OPS_REDACTION_SALT"

# What a column's name says it holds: its last word, or its last two words joined, is one of these (words
# split at non-alphanumerics and camelCase, lower-cased, digits left out: `billing_address_line1` ends with
# "line" and "addressline"). A bare `name` is a person's name too (see `pii_name_kind`); `plan_name` is not.
PII_NAMES: dict[str, frozenset[str]] = {
    "email": frozenset({"email", "emails", "emailaddress"}),
    "phone": frozenset({"phone", "phones", "phonenumber", "mobile", "mobilenumber", "mobilephone",
                        "cellphone", "cellnumber", "telephone", "telephonenumber", "tel", "fax", "faxnumber",
                        "msisdn"}),
    "person name": frozenset({"firstname", "lastname", "fullname", "givenname", "familyname", "middlename",
                              "displayname", "username", "nickname", "maidenname", "surname", "contactname",
                              "customername"}),
    "ip address": frozenset({"ip", "ipaddress", "ipv", "ips"}),
    "postal address": frozenset({"address", "addresses", "streetaddress", "street", "addressline",
                                 "postalcode", "postcode", "zip", "zipcode"}),
    "birth date": frozenset({"birthdate", "birthday", "dob", "birth"}),
    "national id": frozenset({"ssn", "securitynumber", "passport", "passportnumber", "nationalid", "taxid"}),
}
# An international phone number in text (E.164 as people write it: "+1 (415) 555-0100", 8 to 15 digits).
# Numbers without the "+" are too like ids and amounts to be told by value: name the column instead.
PHONE_PATTERN = r"(?<![\w+])\+[1-9](?:[ .()-]{0,2}[0-9]){7,14}(?![0-9])"
# What the value patterns find, each match hashed where it is (the redaction engine's scan). Not the engine's
# id-shaped patterns (GUIDs, 32-hex keys): in a warehouse row those are ids, not secrets.
VALUE_PATTERNS: tuple[str, ...] = (EMAIL_PATTERN, *PREFIXED_TOKEN_PATTERNS, PHONE_PATTERN)

# A cheap superset of the value patterns in DuckDB's RE2 (no lookarounds): only values it lets through are
# looked at in Python, once per distinct value. Emails: the engine's own gate (`looks_like_email`); phones:
# a "+"; tokens and credential keys (inside JSON): the literal each pattern starts with, case-insensitively.
_EMAIL_HINT = "contains({v}, '@') OR contains({v}, '%40') OR contains({v}, '\uff20')"
_TOKEN_HINT = (r"(?i)(?:sk|rk|pk)_(?:live|test)_|whsec_|sgp_|gh[pousr]_|github_pat_|xox[abposr]-|akia|eyj|"
               r"bearer|basic|splunk|pass[^a-z0-9]*w|secret|token|auth|credential|cookie|"
               r"(?:api|write|private|access)[^a-z0-9]*key")
_VALUE_HINT = f"{_EMAIL_HINT} OR contains({{v}}, '+') OR regexp_matches({{v}}, {literal(_TOKEN_HINT)})"
# What Python's str.strip() removes from an ASCII string, as an RE2 pattern (trim() with a set of characters
# costs DuckDB three times as much).
_STRIP = r"^[\t\n\x0b\x0c\r\x1c-\x1f ]+|[\t\n\x0b\x0c\r\x1c-\x1f ]+$"
_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
_NESTED = frozenset({"struct", "list", "array", "map", "union"})
_MAP_TABLE = "segment_ops_pii_map"
_CANDIDATES_TABLE = "segment_ops_pii_candidates"
_KIND_PATTERNS = (("email", re.compile(EMAIL_PATTERN)), ("phone", re.compile(PHONE_PATTERN)))


class PiiPolicyError(ValueError):
    """A PII policy that cannot be applied as written: an unknown action, a column the rows do not have or
    do not send, an identity column to hash or drop. The message names columns, never a value."""


@dataclass(frozen=True)
class PiiPolicy:
    """What happens to PII before the diff: `default` for the columns classified as PII (by name, and by
    value unless the default is allow), `fields` per column, overriding the classification either way
    (`{"phone": "drop", "name": "allow"}`; a column named here is acted on whole, whatever its name)."""

    default: str = ALLOW
    fields: tuple[tuple[str, str], ...] = ()  # (column, action) sorted; a Mapping is accepted and converted

    def __post_init__(self) -> None:
        object.__setattr__(self, "default", _action(self.default, "the default"))
        items = list(self.fields.items()) if isinstance(self.fields, Mapping) else list(self.fields)
        seen: set[str] = set()
        checked = []
        for column, action in items:
            if not isinstance(column, str) or not column.strip():
                raise PiiPolicyError(f"a PII policy field needs a column name, got {column!r}")
            if column in seen:
                raise PiiPolicyError(f"the PII policy names column {column!r} twice")
            seen.add(column)
            checked.append((column, _action(action, f"column {column!r}")))
        object.__setattr__(self, "fields", tuple(sorted(checked)))

    @classmethod
    def parse(cls, default: str | None = None, fields: str | None = None) -> PiiPolicy:
        """A policy from a header's text: `default` "allow" | "hash" | "drop" (None: allow), `fields`
        "phone=drop, name=allow" (None: none)."""
        parsed: dict[str, str] = {}
        for item in [] if fields is None else fields.split(","):
            column, sep, action = item.partition("=")
            if not sep or not column.strip() or not action.strip():
                raise PiiPolicyError(f"PII fields are column=action items separated by commas (e.g. "
                                     f"phone=drop, name=allow), got {item.strip()!r}")
            if column.strip() in parsed:
                raise PiiPolicyError(f"the PII policy names column {column.strip()!r} twice")
            parsed[column.strip()] = action.strip()
        return cls(ALLOW if default is None else default.strip(), tuple(parsed.items()))

    @property
    def is_default(self) -> bool:
        """Allow, with no field named: nothing is looked at or changed."""
        return self.default == ALLOW and not self.fields

    @property
    def named(self) -> dict[str, str]:
        return dict(self.fields)

    def describe(self) -> str:
        """The policy in words, close to a header: "hash (PII by column name and value), phone=drop"."""
        if self.is_default:
            return "allow (default)"
        words = {ALLOW: "allow", HASH: "hash (PII by column name and value)",
                 DROP: "drop (PII by column name and value)"}[self.default]
        return ", ".join([words, *(f"{column}={action}" for column, action in self.fields)])


@dataclass(frozen=True)
class PiiColumn:
    """What the policy did to one column: `action` on `scope` ("column": every value, for a column named like
    PII or in the policy; "values": the values the patterns matched), `why`, and the non-null values changed
    (for a dropped column: the values left out)."""

    column: str
    action: str
    scope: str
    why: str
    values: int = 0


@dataclass(frozen=True)
class PiiReport:
    """The policy's effect on one run's staged rows: per column, counts only (never a value)."""

    policy: PiiPolicy
    columns: tuple[PiiColumn, ...] = ()
    scanned: tuple[str, ...] = ()  # columns whose values the patterns looked at
    seconds: float = 0.0

    @property
    def changed(self) -> bool:
        """Whether any value was hashed or left out (a dropped column counts even when all null)."""
        return any(c.action == DROP and c.scope == "column" or c.values for c in self.columns)

    @property
    def dropped(self) -> tuple[str, ...]:
        """Columns removed from the staged rows (no longer traits/properties)."""
        return tuple(c.column for c in self.columns if c.action == DROP and c.scope == "column")

    @property
    def hashed_values(self) -> int:
        return sum(c.values for c in self.columns if c.action == HASH)

    @property
    def dropped_values(self) -> int:
        return sum(c.values for c in self.columns if c.action == DROP)

    def summary(self) -> str:
        """One line for a run's log: the policy and what it did."""
        allowed = [c.column for c in self.columns if c.action == ALLOW]
        sent = f"; named like PII and sent as they are: {', '.join(allowed)}" if allowed else ""
        acted = [c for c in self.columns if c.action != ALLOW]
        if not acted:
            return f"{self.policy.describe()}: nothing changed{sent}"
        done = "; ".join(_done(c) for c in acted)
        return f"{self.policy.describe()}: {done}{sent}"

    def as_metadata(self) -> dict[str, Any]:
        """Plain values for run metadata (`markdown` has the table): counts and column names, no values."""
        return {"pii_policy": self.policy.describe(), "pii_summary": self.summary(),
                "pii_hashed_values": self.hashed_values, "pii_dropped_values": self.dropped_values,
                "pii_dropped_columns": ", ".join(self.dropped) or "none",
                "pii_scanned_columns": len(self.scanned), "pii_seconds": round(self.seconds, 3)}

    def markdown(self) -> str:
        """A Markdown table of what was done per column."""
        if not self.columns:
            return self.summary()
        lines = ["| column | action | scope | why | values |", "|---|---|---|---|---|"]
        lines += [f"| {c.column} | {c.action} | {c.scope} | {c.why} | {c.values:,} |" for c in self.columns]
        return "\n".join(lines)

    def spec_without_dropped(self, spec: DiffSpec) -> DiffSpec:
        """`spec` without the dropped columns among its declared fields (a spec whose fields default to every
        column needs nothing: the dropped ones are gone from the staged columns)."""
        if spec.fields is None or not (gone := set(self.dropped) & set(spec.fields)):
            return spec
        return dataclasses.replace(spec, fields=tuple(c for c in spec.fields if c not in gone))


def pii_name_kind(column: str) -> str | None:
    """What `column`'s name says it holds ("email", "phone", "person name", ..., "credential"), or None."""
    words = [w.lower() for w in _WORDS.findall(column) if not w.isdigit()]
    if words == ["name"]:
        return "person name"
    if words:
        endings = {words[-1], "".join(words[-2:])}
        for kind, names in PII_NAMES.items():
            if endings & names:
                return kind
    return "credential" if names_a_credential(column) else None


def hash_pii(value: str, rules: RedactionRules) -> str:
    """`value` as the policy hashes it whole: the redaction engine's salted hash, of an email-like value
    trimmed and normalised as the engine normalises an email (so "  Ann@X.com" and "ann@x.com" hash alike,
    as the audit trail hashes the address it finds in text); any other value as it is."""
    if looks_like_email(value):
        return rules.hash_value(normalise_email(value.strip()))
    return rules.hash_value(value)


def check_policy(policy: PiiPolicy, spec: DiffSpec, columns: Sequence[str]) -> tuple[str, ...]:
    """Raise `PiiPolicyError` when `policy` names a column the rows (`columns`) lack or do not send, or
    hashes or drops an identity column (the key, userId, anonymousId, groupId, event or timestamp: changing
    one would change whom a call is about). Returns the traits/properties of `columns`."""
    fields = spec.field_columns(columns)
    present, sent = set(columns), set(fields)
    identity = identity_columns(spec)
    missing = [c for c, _ in policy.fields if c not in present]
    if missing:
        raise PiiPolicyError(f"the PII policy names column(s) the rows do not have: {', '.join(missing)}; "
                             f"the rows have: {', '.join(columns)}")
    for column, action in policy.fields:
        if column in identity and action != ALLOW:
            raise PiiPolicyError(f"the PII policy would {action} column {column!r}, the {identity[column]}; "
                                 "identity columns are never hashed or dropped (hash the id in the query if "
                                 "it must not be sent as it is)")
        if column not in sent and column not in identity:
            raise PiiPolicyError(f"the PII policy names column {column!r}, which is not sent (not among the "
                                 f"{spec.fields_name}: {', '.join(fields) or 'none'})")
    return fields


def apply_pii_policy(con: duckdb.DuckDBPyConnection, staged: StagedResult, spec: DiffSpec, policy: PiiPolicy,
                     *, salt: str | None = None) -> tuple[StagedResult, PiiReport]:
    """Apply `policy` to the staged rows of `spec`, in place (the same table name, so whatever reads the
    staged table afterwards sees only what the policy lets through). Returns the staged result (its columns
    and types as they now are) and what was done.

    Allow with nothing named returns `staged` as it is without a query. Hashed columns become VARCHAR, a
    scanned nested column JSON; dropped columns are removed (pass the spec through
    `PiiReport.spec_without_dropped` when it lists its fields). `salt` defaults to SEGMENT_OPS_REDACTION_SALT.
    Raises `PiiPolicyError` (nothing changed) for a policy that does not fit the rows (`check_policy`), a
    key that is also a trait and would be hashed or dropped, or hashing without a salt.
    """
    started = time.monotonic()
    if policy.is_default:  # no SQL at all: the names say which columns would be PII
        named = [PiiColumn(c, ALLOW, "-", f"name: {kind}") for c in spec.field_columns(staged.columns)
                 if (kind := pii_name_kind(c))]
        return staged, PiiReport(policy, tuple(named))
    fields = check_policy(policy, spec, staged.columns)
    plan = _plan(policy, spec, staged, fields)
    acting = [t for t in plan if t.action != ALLOW]
    if not acting:
        return staged, PiiReport(policy, tuple(t.report() for t in plan), seconds=time.monotonic() - started)
    rules = _rules(salt, needed=any(t.action == HASH for t in acting))
    table = quote(staged.table)
    _count(con, table, [t for t in acting if t.scope == "column"])
    replacements = _Replacements(con)
    try:
        for index, treatment in enumerate(plan):
            if treatment.scope == "column" and treatment.action == HASH:
                _python_hashes(con, table, index, treatment, rules, replacements)
            elif treatment.scope == "values":
                _scan(con, table, index, treatment, rules, spec, replacements)
        _replace(con, staged, plan, replacements, rules)
    finally:
        replacements.close()
    types = dict(staged.types)
    for treatment in plan:
        if treatment.new_type is None:
            types.pop(treatment.column)
        else:
            types[treatment.column] = treatment.new_type
    dropped = {t.column for t in plan if t.new_type is None}
    result = dataclasses.replace(staged, columns=tuple(c for c in staged.columns if c not in dropped),
                                 types=types)
    report = PiiReport(policy, tuple(t.report() for t in plan if t.scope != "values" or t.values),
                       scanned=tuple(t.column for t in plan if t.scope == "values"),
                       seconds=time.monotonic() - started)
    return result, report


@dataclass
class _Treatment:
    """What the policy does to one column, and the SQL of its value as text."""

    column: str
    action: str
    scope: str  # "column" | "values" | "-" (allowed)
    why: str
    type_name: str
    kind: str  # "varchar" | "json" | "nested" | "other"
    is_key: bool = False
    values: int = 0
    found: set[str] = field(default_factory=set)  # what the value patterns found ("email", "phone", ...)

    @property
    def ref(self) -> str:
        return f"r.{quote(self.column)}"

    @property
    def text(self) -> str:
        if self.kind == "varchar":
            return self.ref
        return f"to_json({self.ref})::VARCHAR" if self.kind == "nested" else f"{self.ref}::VARCHAR"

    @property
    def new_type(self) -> str | None:
        """The column's type after the policy (None: removed)."""
        if self.action == DROP and self.scope == "column":
            return None
        if self.action == HASH and self.scope == "column":
            return "VARCHAR"
        if self.scope == "values" and self.kind == "nested":
            return "JSON"
        return self.type_name

    def report(self) -> PiiColumn:
        why = f"values: {', '.join(sorted(self.found))}" if self.scope == "values" else self.why
        return PiiColumn(self.column, self.action, self.scope, why, self.values)


def _plan(policy: PiiPolicy, spec: DiffSpec, staged: StagedResult, fields: Sequence[str]) -> list[_Treatment]:
    named = policy.named
    plan: list[_Treatment] = []
    for column in fields:
        type_name = staged.types[column]
        kind = _kind(type_name)
        is_key = column == spec.key
        if column in named:
            action, why = named[column], "named in the policy"
        elif name_kind := pii_name_kind(column):
            action, why = policy.default, f"name: {name_kind}"
        elif policy.default != ALLOW and kind != "other":
            plan.append(_Treatment(column, policy.default, "values", "values", type_name, kind, is_key))
            continue
        else:
            continue
        if is_key and action != ALLOW:
            raise PiiPolicyError(f"column {column!r} is the key and one of the {spec.fields_name}, and the "
                                 f"PII policy would {action} it ({why}): the key cannot change; alias a copy "
                                 f"in the query to send, or name it {column}=allow to send it as it is")
        plan.append(_Treatment(column, action, "column" if action != ALLOW else "-", why, type_name, kind))
    return plan


def _kind(type_name: str) -> str:
    if type_name.upper() == "JSON":
        return "json"
    try:
        type_id = DuckDBPyType(type_name).id
    except (duckdb.Error, ValueError, TypeError):
        return "other"
    if type_id == "varchar":
        return "varchar"
    return "nested" if type_id in _NESTED else "other"


def identity_columns(spec: DiffSpec) -> dict[str, str]:
    """The columns that say whom and what a call is about, and what each is."""
    named = {"key": spec.key, "userId column": spec.user_id, "anonymousId column": spec.anonymous_id,
             "groupId column": spec.group_id, "event column": spec.event_column,
             "timestamp column": spec.timestamp}
    found: dict[str, str] = {}
    for what, column in named.items():
        if column:
            found[column] = f"{found[column]} and {what}" if column in found else what
    return found


def _rules(salt: str | None, *, needed: bool) -> RedactionRules:
    """The redaction engine's rules with the value patterns (their salt keys the hashes)."""
    if salt is None:
        from segment_ops.config import load_settings

        salt = load_settings()[SALT_SETTING]
    if not salt:
        if needed:
            raise PiiPolicyError(f"the PII policy hashes, and hashing needs a salt: set {SALT_SETTING}")
        salt = "unused: values are found, then dropped"
    return RedactionRules(salt=salt, hash_fields=(), keep_fields=(), patterns=VALUE_PATTERNS)


def _count(con: duckdb.DuckDBPyConnection, table: str, treatments: Sequence[_Treatment]) -> None:
    """The non-null values of each whole-column treatment, in one pass."""
    if not treatments:
        return
    counts = con.execute(f"SELECT {', '.join(f'count({t.ref})' for t in treatments)} FROM {table} AS r"
                         ).fetchone()
    for treatment, count in zip(treatments, counts, strict=True):
        treatment.values = count


class _Replacements:
    """The values Python replaces (`_MAP_TABLE`: column index, value, replacement), written a chunk at a
    time, so that however many there are, Python holds one chunk."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con
        self.columns: set[int] = set()  # indexes of the columns with replacements

    def add(self, index: int, rows: Sequence[tuple[str, str | None]]) -> None:
        if not rows:
            return
        if not self.columns:
            self.con.execute(f"CREATE OR REPLACE TEMP TABLE {_MAP_TABLE} "
                             "(col INTEGER, value VARCHAR, replacement VARCHAR)")
        values, replacements = zip(*rows, strict=True)
        chunk = pa.table({"value": pa.array(values, pa.string()),
                          "replacement": pa.array(replacements, pa.string())})
        self.con.register("segment_ops_pii_chunk", chunk)
        try:
            self.con.execute(f"INSERT INTO {_MAP_TABLE} SELECT {index}, value, replacement "
                             "FROM segment_ops_pii_chunk")
        finally:
            self.con.unregister("segment_ops_pii_chunk")
        self.columns.add(index)

    def close(self) -> None:
        self.con.execute(f"DROP TABLE IF EXISTS {_MAP_TABLE}")
        self.con.execute(f"DROP TABLE IF EXISTS {_CANDIDATES_TABLE}")


def _candidates(con: duckdb.DuckDBPyConnection, query: str) -> Iterator[list[tuple[Any, ...]]]:
    """The rows of `query`, `CHUNK_ROWS` at a time: kept in a temp table and read back by rowid, since the
    connection runs other statements (inserting replacements) between chunks."""
    con.execute(f"CREATE OR REPLACE TEMP TABLE {_CANDIDATES_TABLE} AS {query}")
    total = con.execute(f"SELECT count(*) FROM {_CANDIDATES_TABLE}").fetchone()[0]
    for start in range(0, total, CHUNK_ROWS):
        yield con.execute(f"SELECT * FROM {_CANDIDATES_TABLE} WHERE rowid >= ? AND rowid < ?",
                          [start, start + CHUNK_ROWS]).fetchall()


def _python_hashes(con: duckdb.DuckDBPyConnection, table: str, index: int, treatment: _Treatment,
                   rules: RedactionRules, replacements: _Replacements) -> None:
    """Hashes of the email-like values DuckDB cannot normalise as Python does (any not plain ASCII, or with a
    percent escape: NFKC, case folding, percent-decoding), one per distinct value."""
    for rows in _candidates(con, f"""
        SELECT DISTINCT v FROM (SELECT {treatment.text} AS v FROM {table} AS r)
        WHERE ({_EMAIL_HINT.format(v='v')}) AND (strlen(v) <> length(v) OR contains(v, '%'))
    """):
        replacements.add(index, [(value, hash_pii(value, rules)) for (value,) in rows])


def _scan(con: duckdb.DuckDBPyConnection, table: str, index: int, treatment: _Treatment,
          rules: RedactionRules, spec: DiffSpec, replacements: _Replacements) -> None:
    """The values of one column the value patterns match (the SQL prefilter's survivors, checked in Python
    once per distinct value), with what replaces each: the redaction engine's scan of it (every match
    hashed where it is; in JSON, every string, and the value of a credential-named key) or, for drop, NULL."""
    for rows in _candidates(con, f"""
        SELECT v, count(*) FROM (SELECT {treatment.text} AS v FROM {table} AS r)
        WHERE {_VALUE_HINT.format(v='v')} GROUP BY v
    """):
        found: list[tuple[str, str | None]] = []
        for value, count in rows:
            if treatment.kind == "varchar":
                redacted: Any = rules.redact({"v": value})["v"]
                if redacted == value:
                    continue
                replacement = redacted
            else:
                document = _load_json(value)
                redacted = rules.redact({"v": document})["v"]
                if redacted == document:
                    continue
                replacement = _dump_json(redacted)
            treatment.values += count
            treatment.found |= _what(value)
            found.append((value, None if treatment.action == DROP else replacement))
        if not treatment.is_key:
            replacements.add(index, found)
    if treatment.values and treatment.is_key:
        found_kinds = ", ".join(sorted(treatment.found))
        raise PiiPolicyError(f"column {treatment.column!r} is the key and one of the {spec.fields_name}, and "
                             f"{treatment.values:,} of its values hold PII ({found_kinds}): the key cannot "
                             f"change; alias a copy in the query to send, or name it "
                             f"{treatment.column}=allow to send it as it is")


def _load_json(text: str) -> Any:
    """JSON text as DuckDB writes it; beyond orjson (integers past 64 bits, NaN) the standard library's."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def _dump_json(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except (TypeError, orjson.JSONEncodeError):  # the same values: big integers, NaN (the diff rejects NaN)
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _what(value: str) -> set[str]:
    """What the value patterns found in `value` (for the report)."""
    return {kind for kind, pattern in _KIND_PATTERNS if pattern.search(value)} or {"token or credential"}


def _replace(con: duckdb.DuckDBPyConnection, staged: StagedResult, plan: Sequence[_Treatment],
             replacements: _Replacements, rules: RedactionRules) -> None:
    """Rebuild the staged table under its own name with the policy applied (one CREATE ... AS SELECT, which
    DuckDB spills under its memory limit)."""
    table = quote(staged.table)
    mapped = replacements.columns
    treatments = {t.column: (index, t) for index, t in enumerate(plan)}
    select, joins = [], []
    present = [d[0] for d in con.execute(f"SELECT * FROM {table} LIMIT 0").description]
    for column in present:  # every column of the table, the unserialisable-value marker included
        if column not in treatments:
            select.append(f"r.{quote(column)}")
            continue
        index, treatment = treatments[column]
        match = f"m{index}"
        if index in mapped:
            joins.append(f"LEFT JOIN (SELECT value, replacement FROM {_MAP_TABLE} WHERE col = {index}) AS "
                         f"{match} ON {match}.value = {treatment.text}")
        expression = _expression(treatment, match if index in mapped else None)
        if expression is not None:
            select.append(f"{expression} AS {quote(column)}")
    temporary = con.execute("SELECT temporary FROM duckdb_tables() WHERE table_name = ? "
                            "ORDER BY temporary DESC LIMIT 1", [staged.table]).fetchone()
    statement = (f"CREATE OR REPLACE {'TEMP ' if temporary is None or temporary[0] else ''}TABLE {table} AS "
                 f"SELECT {', '.join(select)} FROM {table} AS r {' '.join(joins)}")
    key = _hmac_key(rules.salt.encode())
    pads = {"pii_ipad": bytes(b ^ 0x36 for b in key), "pii_opad": bytes(b ^ 0x5C for b in key)}
    con.execute(statement, pads if "$pii_ipad" in statement else None)


def _expression(treatment: _Treatment, match: str | None) -> str | None:
    """The SQL of the column after the policy (None: dropped)."""
    ref, text = treatment.ref, treatment.text
    if treatment.action == ALLOW:
        return ref
    if treatment.scope == "column":
        if treatment.action == DROP:
            return None
        email = _EMAIL_HINT.format(v=text)
        python = f"WHEN {match}.value IS NOT NULL THEN {match}.replacement " if match else ""
        stripped = f"lower(regexp_replace({text}, {literal(_STRIP)}, '', 'g'))"
        return (f"CASE WHEN {ref} IS NULL THEN NULL {python}"
                f"WHEN {email} THEN {_hmac(stripped)} ELSE {_hmac(text)} END")
    value = ref if treatment.kind != "nested" else f"to_json({ref})"
    if match is None:
        return value
    replacement = f"{match}.replacement" + ("" if treatment.kind == "varchar" else "::JSON")
    return f"CASE WHEN {match}.value IS NOT NULL THEN {replacement} ELSE {value} END"


def _hmac(text: str) -> str:
    """SQL of `RedactionRules.hash_value` of the text `text`: HMAC-SHA256 (RFC 2104) from two sha256 calls
    over the key's pads, bound as parameters so the salt is never in the statement."""
    return f"'{HASH_PREFIX}' || sha256($pii_opad || unhex(sha256($pii_ipad || encode({text}))))"


def _hmac_key(salt: bytes) -> bytes:
    """The HMAC key block: the salt (hashed first when longer than SHA-256's 64-byte block), zero-padded."""
    key = hashlib.sha256(salt).digest() if len(salt) > 64 else salt
    return key.ljust(64, b"\0")


def _done(column: PiiColumn) -> str:
    if column.action == HASH:
        return f"{column.column}: {_values(column.values)} hashed"
    if column.scope == "column":
        return f"{column.column}: dropped ({_values(column.values)} left out)"
    return f"{column.column}: {_values(column.values)} dropped"


def _values(count: int) -> str:
    return "1 value" if count == 1 else f"{count:,} values"


def _action(value: object, what: str) -> str:
    action = value.strip().lower() if isinstance(value, str) else value
    if action not in ACTIONS:
        raise PiiPolicyError(f"unknown PII action {value!r} for {what}; one of {', '.join(ACTIONS)}")
    return action  # type: ignore[return-value]
