"""Redaction of audit events before they leave for a SIEM: configured fields hashed or dropped.

Rules (all configurable on `AuditRedactionResource`, see `segment_ops.syncs.audit_trail.defs`):
- `hash_fields`: the whole value becomes `sha256:<hex>`, an HMAC-SHA256 keyed by a secret salt
  (`SEGMENT_OPS_REDACTION_SALT`). The same value always gives the same hash, so a SIEM can still
  correlate "the same person did X and Y", and whoever holds the salt can check a known value; without
  the salt a hash cannot be reversed by guessing common emails.
- `drop_fields`: the field is removed.
- `scan_fields` x `patterns`: inside those string fields, each match of a pattern (an email, a Public
  API token `sgp_...`, a HEC GUID token, `token=...`) is replaced by its hash; the rest of the text
  stays readable ("Access token sha256:ab12... for terraform").

Field names may be dotted paths into nested objects (`actor.email`). Redaction is pure and
deterministic, and runs when an event is planned: the ledger and the SIEM only ever hold redacted
payloads (the local staging table keeps the raw event, so a changed rule applies to new plans).
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

HASH_PREFIX = "sha256:"

# Secrets and personal data that show up inside audit-event text such as `resourceName` or `actor`.
DEFAULT_PATTERNS: tuple[str, ...] = (
    r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}",  # email addresses
    r"\bsgp_[A-Za-z0-9_-]{8,}",  # Segment Public API tokens (spec §2)
    r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b",  # GUID tokens (HEC)
    r"(?i)\b(?:token|secret|password|api[_-]?key)\s*[=:]\s*\S+",  # key=value secrets
)
DEFAULT_HASH_FIELDS: tuple[str, ...] = ("actorEmail",)
DEFAULT_SCAN_FIELDS: tuple[str, ...] = ("actor", "resourceName")


@dataclass(frozen=True)
class RedactionRules:
    """What to hash, drop and scan; `salt` keys the hashes and must stay secret."""

    salt: str = field(repr=False)
    hash_fields: Sequence[str] = DEFAULT_HASH_FIELDS
    drop_fields: Sequence[str] = ()
    scan_fields: Sequence[str] = DEFAULT_SCAN_FIELDS
    patterns: Sequence[str] = DEFAULT_PATTERNS

    def __post_init__(self) -> None:
        if not self.salt:
            raise ValueError("redaction needs a non-empty salt (SEGMENT_OPS_REDACTION_SALT)")
        object.__setattr__(self, "_compiled", tuple(re.compile(p) for p in self.patterns))

    def hash_value(self, value: object) -> str:
        text = value if isinstance(value, str) else str(value)
        digest = hmac.new(self.salt.encode(), text.encode(), hashlib.sha256).hexdigest()
        return HASH_PREFIX + digest

    def redact(self, event: dict) -> dict:
        """A redacted copy of `event`; the input is left untouched."""
        out = copy.deepcopy(event)
        for path in self.drop_fields:
            parent, key = _locate(out, path)
            if parent is not None:
                parent.pop(key, None)
        for path in self.hash_fields:
            parent, key = _locate(out, path)
            if parent is not None and key in parent and parent[key] is not None:
                parent[key] = self.hash_value(parent[key])
        for path in self.scan_fields:
            parent, key = _locate(out, path)
            if parent is not None and isinstance(parent.get(key), str):
                parent[key] = self._scrub(parent[key])
        return out

    def _scrub(self, text: str) -> str:
        if text.startswith(HASH_PREFIX):
            return text  # already hashed by a field rule
        for pattern in self._compiled:  # type: ignore[attr-defined]
            text = pattern.sub(lambda m: self.hash_value(m.group(0)), text)
        return text


def _locate(event: dict, path: str) -> tuple[dict | None, str]:
    """The object holding the last part of a dotted `path`, and that key (None when absent)."""
    *parents, key = path.split(".")
    node: object = event
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    return (node if isinstance(node, dict) else None), key
