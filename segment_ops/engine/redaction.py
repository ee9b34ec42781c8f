"""Redaction of audit events before they leave for a SIEM: sensitive values hashed wherever they are.

Rules (configurable on `AuditRedactionResource`, see `segment_ops.syncs.audit_trail.defs`):
- Every string anywhere in the event (nested objects, lists, and object keys too) is scanned for
  `patterns`: emails in any form (`a@b.c`, URL-encoded `a%40b.c`, full-width `＠`, internationalised
  local parts and domains, punycode), provider keys and tokens by their prefix (`sk_live_`, `sgp_`,
  `ghp_`, `xoxb-`, `AKIA`, JWTs), `Bearer`/`Basic`/`Splunk` credentials, 32-hex keys (Segment write
  keys), GUIDs (HEC tokens) and `token=...`-style pairs. Each match becomes `sha256:<hex>`, an HMAC-SHA256
  keyed by a secret salt (`SEGMENT_OPS_REDACTION_SALT`): the same value always gives the same hash (an
  email is normalised first: percent-decoded, NFKC, case-folded), so a SIEM can still correlate "the
  same person did X and Y"; without the salt a hash cannot be reversed by guessing common emails.
- A value under a key that names a credential (`password`, `secret`, `token`, `apiKey`, `writeKey`,
  `authorization`, ...: `SENSITIVE_KEY_SUFFIXES`) is hashed whole, whatever it looks like.
- `hash_fields` (dotted paths): the whole value is hashed. `drop_fields`: the field is removed.
- `keep_fields`, the allow-list (`DEFAULT_KEEP_FIELDS`: the event's ids, timestamp and types): kept
  verbatim when the value has its field's shape (`KEEP_SHAPES`) and holds no prefixed token, so a GUID
  or hex resource id stays searchable. A value without the shape (an `@`, a space in an id) is scanned
  like any other.

Redaction is pure and deterministic, and runs when an event is planned: the ledger and the SIEM only ever
hold redacted payloads (the local staging table keeps the raw event, so a changed rule applies to new
plans). The walk is iterative (no recursion limit on hostile nesting), the patterns are compiled once into
one alternation per rule set, and each distinct string is scanned once per rule set (an LRU cache).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from urllib.parse import unquote

HASH_PREFIX = "sha256:"

# An email's "@" as it appears in text: plain, URL-encoded, full-width (NFKC folds it to "@").
_AT = r"(?:@|%40|\uff20)"
# Domain label separators: ".", URL-encoded, and the ideographic/full-width stops IDNA treats as dots.
_DOT = r"(?:[.\u3002\uff0e\uff61]|%2[eE])"
# Characters of a local part and of a domain label, by exclusion so that any script (with its combining
# marks) counts; a percent escape is one octet, never "@" or "." (a "%" is a character only when no two hex
# digits follow: two readings of "%40" would make the backtracking explode). Bounded quantifiers (RFC 5321:
# 64-octet local part, 63-octet labels) keep the scan of a long run without "@" linear.
_LOCAL = r"(?:%(?!40)[0-9A-Fa-f]{2}|%(?![0-9A-Fa-f]{2})|[^\s@<>()\[\]\\,;:\"%\uff20])"
_LABEL = r"(?:[^\s@<>()\[\]\\,;:\"'/?&=#%.\u3002\uff0e\uff61\uff20]|%(?!40|2[eE])[0-9A-Fa-f]{2})"
EMAIL_PATTERN = _LOCAL + "{1,64}" + _AT + "(?:" + _LABEL + "{1,63}" + _DOT + "){1,126}" + _LABEL + "{2,63}"
# Tokens and keys that cannot be ids: their prefix says what they are.
PREFIXED_TOKEN_PATTERNS: tuple[str, ...] = (
    r"(?<![A-Za-z0-9])(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{8,}",  # Stripe-style secret/publishable keys
    r"(?<![A-Za-z0-9])whsec_[A-Za-z0-9]{8,}",  # webhook signing secrets
    r"(?<![A-Za-z0-9])sgp_[A-Za-z0-9_-]{8,}",  # Segment Public API tokens (spec §2)
    r"(?<![A-Za-z0-9])(?:gh[pousr]_[A-Za-z0-9]{16,}|github_pat_\w{16,})",  # GitHub tokens
    r"(?<![A-Za-z0-9])xox[abposr]-[A-Za-z0-9-]{8,}",  # Slack tokens
    r"(?<![A-Za-z0-9])AKIA[0-9A-Z]{16}(?![A-Za-z0-9])",  # AWS access key ids
    r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*",  # JWTs
    # Authorization header values (spec §2, §5): a credential has a digit or is long ("Splunk Cloud" is not).
    r"(?i:\b(?:bearer|basic|splunk)\s+(?:(?=[A-Za-z0-9._~+/=-]*\d)[A-Za-z0-9._~+/=-]{8,}"
    r"|[A-Za-z0-9._~+/=-]{20,}))",
    r"(?i:(?:token|secret|password|passwd|api[_-]?key|write[_-]?key|auth)\s*[=:]\s*[^\s,;&\"'<>]+)",
)
# Shaped like ids too: exempt inside allow-listed id fields, hashed everywhere else.
ID_SHAPED_PATTERNS: tuple[str, ...] = (
    r"(?<![A-Za-z0-9-])[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"(?![A-Za-z0-9-])",  # GUIDs (HEC tokens, spec §5)
    r"(?<![A-Za-z0-9])[0-9a-fA-F]{32}(?![A-Za-z0-9])",  # 32-hex keys (Segment write keys)
)
DEFAULT_PATTERNS: tuple[str, ...] = (EMAIL_PATTERN, *PREFIXED_TOKEN_PATTERNS, *ID_SHAPED_PATTERNS)
DEFAULT_HASH_FIELDS: tuple[str, ...] = ("actorEmail",)
# Kept for configurations that name it: every string is scanned now, so it no longer narrows anything.
DEFAULT_SCAN_FIELDS: tuple[str, ...] = ("actor", "resourceName")
# The allow-list: fields of Segment's AuditEvent (spec §2) a SIEM joins and filters on, kept verbatim.
DEFAULT_KEEP_FIELDS: tuple[str, ...] = ("id", "timestamp", "type", "resourceId", "resourceType",
                                        "actor.id", "actor.type")
_ID_SHAPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
_TIME_SHAPE = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?:Z|[+-]\d{2}:?\d{2})?")
_WORDS_SHAPE = re.compile(r"[A-Za-z][A-Za-z0-9 _./()-]{0,127}")
# The shape each allow-listed value must have to be kept verbatim (by the path's last part).
KEEP_SHAPES: dict[str, re.Pattern[str]] = {
    "id": _ID_SHAPE, "resourceId": _ID_SHAPE, "timestamp": _TIME_SHAPE, "type": _WORDS_SHAPE,
    "resourceType": _WORDS_SHAPE,
}
# Keys whose value is a credential whatever it looks like (compared lower-case, without "_", "-", ".").
SENSITIVE_KEY_SUFFIXES: tuple[str, ...] = (
    "password", "passwd", "secret", "token", "apikey", "writekey", "authorization", "credential",
    "credentials", "privatekey", "accesskey", "cookie",
)
_KEY_NOISE = re.compile(r"[^a-z0-9]")
SCAN_CACHE_SIZE = 16_384  # distinct strings whose redacted form a rule set remembers


@dataclass(frozen=True)
class RedactionRules:
    """What to hash, drop, scan and keep; `salt` keys the hashes and must stay secret."""

    salt: str = field(repr=False)
    hash_fields: Sequence[str] = DEFAULT_HASH_FIELDS
    drop_fields: Sequence[str] = ()
    scan_fields: Sequence[str] = DEFAULT_SCAN_FIELDS  # no effect: every string is scanned
    patterns: Sequence[str] = DEFAULT_PATTERNS
    keep_fields: Sequence[str] = DEFAULT_KEEP_FIELDS
    _compiled: _Compiled = field(init=False, repr=False, compare=False)
    _scrub: Callable[[str], str] = field(init=False, repr=False, compare=False)
    _keepable: Callable[[str, object], bool] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.salt:
            raise ValueError("redaction needs a non-empty salt (SEGMENT_OPS_REDACTION_SALT)")
        object.__setattr__(self, "_compiled", _Compiled.of(self))
        # Audit events repeat their strings (types, names, people): scan each distinct one once.
        object.__setattr__(self, "_scrub", lru_cache(maxsize=SCAN_CACHE_SIZE)(self._scan))
        object.__setattr__(self, "_keepable", lru_cache(maxsize=SCAN_CACHE_SIZE)(self._compiled.keepable))

    def hash_value(self, value: object) -> str:
        text = value if isinstance(value, str) else str(value)
        digest = hmac.new(self.salt.encode(), text.encode(), hashlib.sha256).hexdigest()
        return HASH_PREFIX + digest

    def redact(self, event: dict) -> dict:
        """A redacted copy of `event`; the input is left untouched."""
        rules = self._compiled
        out: dict = {}
        # (source container, its copy being built, dotted path of the container; None past the rule paths)
        stack: list[tuple[dict | list, dict | list, str | None]] = [(event, out, "")]
        while stack:
            source, target, path = stack.pop()
            if isinstance(target, list):
                target.extend(self._value(value, None, None, stack) for value in source)
                continue
            for key, value in source.items():  # type: ignore[union-attr]
                key = str(key)
                here = key if path == "" else None if path is None else f"{path}.{key}"
                if here is not None:
                    if here in rules.drop:
                        continue
                    if here in rules.hash:
                        target[self._scrub(key)] = None if value is None else self._hash_whole(value)
                        continue
                    scalar = not isinstance(value, dict | list)
                    if here in rules.keep and scalar and self._keepable(key, value):
                        target[key] = value
                        continue
                target[self._scrub(key)] = self._value(value, key, here, stack)
        return out

    def _value(self, value: object, key: str | None, here: str | None,
               stack: list[tuple[dict | list, dict | list, str | None]]) -> object:
        if isinstance(value, dict | list):
            copy: dict | list = {} if isinstance(value, dict) else []
            stack.append((value, copy, here if here in self._compiled.prefixes else None))
            return copy
        if value is None or isinstance(value, bool):
            return value
        if key is not None and _names_a_credential(key):
            return self._hash_whole(value)
        return self._scrub(value) if isinstance(value, str) else value

    def _hash_whole(self, value: object) -> str:
        if isinstance(value, str) and _looks_like_email(value):
            return self.hash_value(normalise_email(value))
        return self.hash_value(value)

    def _scan(self, text: str) -> str:
        return self._compiled.scan(text).sub(self._hash_match, text)

    def _hash_match(self, match: re.Match[str]) -> str:
        found = match.group(0)
        return self.hash_value(normalise_email(found) if _looks_like_email(found) else found)


@dataclass(frozen=True)
class _Compiled:
    """A rule set's patterns compiled once, and its paths as sets."""

    anywhere: re.Pattern[str]
    no_email: re.Pattern[str]  # the same without the email pattern, for text without any form of "@"
    in_kept: re.Pattern[str]  # what an allow-listed value may not hold: everything but id-shaped patterns
    hash: frozenset[str]
    drop: frozenset[str]
    keep: frozenset[str]
    prefixes: frozenset[str]  # containers on the way to a rule path (where the walk keeps tracking paths)

    @classmethod
    def of(cls, rules: RedactionRules) -> _Compiled:
        paths = [*rules.hash_fields, *rules.drop_fields, *rules.keep_fields]
        prefixes = {".".join(p.split(".")[:i]) for p in paths for i in range(1, p.count(".") + 1)}
        # The email pattern tries every position of a text; most texts hold no "@" at all.
        no_email = [p for p in rules.patterns if p != EMAIL_PATTERN]
        return cls(anywhere=_alternation(rules.patterns), no_email=_alternation(no_email),
                   in_kept=_alternation([p for p in no_email if p not in ID_SHAPED_PATTERNS]),
                   hash=frozenset(rules.hash_fields), drop=frozenset(rules.drop_fields),
                   keep=frozenset(rules.keep_fields), prefixes=frozenset(prefixes))

    def scan(self, text: str) -> re.Pattern[str]:
        """The pattern to scan `text` with."""
        return self.anywhere if _looks_like_email(text) else self.no_email

    def keepable(self, key: str, value: object) -> bool:
        """Whether an allow-listed value stays verbatim: a scalar with its field's shape, no token in it."""
        if value is None or isinstance(value, bool | int | float):
            return True
        if not isinstance(value, str):
            return False
        # The shapes hold no "@" and no "%", so no email can be in a value that has one.
        return (KEEP_SHAPES.get(key, _ID_SHAPE).fullmatch(value) is not None
                and self.in_kept.search(value) is None)


def normalise_email(text: str) -> str:
    """The form an email is hashed in: percent-decoded, NFKC (full-width "＠", "．" folded), case-folded."""
    return unicodedata.normalize("NFKC", unquote(text)).replace("\u3002", ".").casefold()


def _looks_like_email(text: str) -> bool:
    return "@" in text or "\uff20" in text or "%40" in text


def _names_a_credential(key: str) -> bool:
    folded = _KEY_NOISE.sub("", key.lower())
    return folded.endswith(SENSITIVE_KEY_SUFFIXES)


# Public for the PII policy of diff syncs (`engine.pii`), which classifies and hashes as this module does.
looks_like_email = _looks_like_email
names_a_credential = _names_a_credential


def _alternation(patterns: Sequence[str]) -> re.Pattern[str]:
    """One compiled regex matching any of `patterns` (a leading global `(?i)` is scoped to its pattern)."""
    parts = [f"(?i:{p[4:]})" if p.startswith("(?i)") else p for p in patterns]
    return re.compile("|".join(f"(?:{p})" for p in parts) or r"(?!x)x")
