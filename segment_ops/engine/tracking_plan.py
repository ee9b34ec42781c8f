"""Tracking plans (Segment Protocols): each planned call is checked against the JSON Schema rules of the
tracking plan(s) connected to its source before anything is sent (issue 20), where Protocols itself checks
only after ingestion.

`load_for_source` reads the plans of a source through the Public API (spec §2 "Tracking plans") and compiles
each rule's schema once (jsonschema-rs); `TrackingPlan.violations` checks one call; `check_pending` checks a
sync's planned messages in the ledger under a policy: `warn` reports, `block` rejects each violating message
with the schema error as its reason. Error messages never carry a value of the call (they are masked), so
reports, samples and alerts hold no trait values.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import jsonschema_rs
import orjson

from segment_ops.engine.ledger import REJECTED, Ledger

POLICIES = ("off", "warn", "block")
SOURCE = "tracking plan"  # the rejected table's source of a blocked message: "rejected by tracking plan: ..."
# The rule types of the Public API's RuleV1 (segmentio/public-api-sdk-typescript model/ruleV1.ts).
RULE_TYPES = ("COMMON", "GROUP", "IDENTIFY", "PAGE", "SCREEN", "TRACK")
# Which rules apply to which call, besides COMMON (every call): TRACK by `event`; PAGE and SCREEN keyless to
# every such call, keyed by `name` (unverified); IDENTIFY and GROUP to every such call; alias to COMMON only.
_RULE_OF_CALL = {"identify": "IDENTIFY", "group": "GROUP", "track": "TRACK", "page": "PAGE",
                 "screen": "SCREEN"}
_KEYED = {"TRACK": "event", "PAGE": "name", "SCREEN": "name"}  # rule type -> the call field its key names
# Schema errors name the value they refused as this word, never as the value: a trait may be PII.
MASK = "value"
MAX_ERRORS_PER_RULE = 20  # one call rarely breaks more; past this a rule's errors are not listed
MAX_REASON_VIOLATIONS = 3  # violations spelled out in a blocked message's reason
MAX_COUNTED = 200  # distinct (rule, field) pairs a report counts; past this, under "(other fields)"
MAX_UNPLANNED_EVENTS = 100  # distinct unplanned events a report counts; past this, under "(other events)"


class TrackingPlanError(ValueError):
    """A tracking plan cannot be used as the Public API gave it, or its source cannot be found."""


class InvalidRule(TrackingPlanError):
    """A rule of a tracking plan is malformed: its type or key is missing, or its JSON Schema does not
    compile. Raised when the plan is loaded, before anything is checked or sent."""

    def __init__(self, plan: str, rule: str, why: str) -> None:
        self.plan, self.rule, self.why = plan, rule, why
        super().__init__(f"tracking plan {plan!r}: rule {rule} cannot be used: {why}")


class SourceNotFound(TrackingPlanError):
    """No source of the workspace has the write key (or id) a sync sends with."""


class TrackingPlanClient(Protocol):
    """What `load_for_source` reads through (`clients.segment_public_api.SegmentPublicApiClient`): each method
    yields the items as the Public API returns them."""

    def iter_sources(self) -> Iterator[dict]: ...
    def iter_tracking_plans(self) -> Iterator[dict]: ...
    def iter_tracking_plan_sources(self, plan_id: str) -> Iterator[dict]: ...
    def iter_tracking_plan_rules(self, plan_id: str) -> Iterator[dict]: ...


@dataclass(frozen=True)
class Violation:
    """One way a call breaks a rule: the rule (`TRACK "Order Completed"`, `IDENTIFY`, ...), the field (a path
    in the call, e.g. `properties.total`; empty for the call as a whole) and the schema's error, masked."""

    plan: str  # the plan's name (its id when it has none); empty for a payload no rule could read
    rule: str
    field: str
    message: str

    def describe(self) -> str:
        return f"{self.rule} {self.field}: {self.message}" if self.field else f"{self.rule}: {self.message}"


@dataclass(frozen=True)
class PlanInfo:
    """One tracking plan merged into a `TrackingPlan`."""

    id: str
    name: str
    rules: int  # rules applied (deprecated ones and unknown types not counted)
    skipped: int = 0  # deprecated rules, and rules of a type this module does not know


@dataclass(frozen=True)
class _Rule:
    plan: str
    label: str
    validator: Any  # compiled by jsonschema_rs

    def errors(self, message: Mapping[str, Any]) -> list[Violation]:
        found = []
        for error in self.validator.iter_errors(message):
            found.append(Violation(self.plan, self.label, _field(error), error.message))
            if len(found) == MAX_ERRORS_PER_RULE:
                break
        return found


class _Versions:
    """The rules of one (type, key), by version: a call names the version it follows in
    `context.protocols.event_version` (Protocols' event versioning, default 1); one naming a version the plan
    lacks is checked against the latest (unverified). One version only: no lookup at all."""

    def __init__(self, by_version: Mapping[int, Sequence[_Rule]]) -> None:
        self.by_version = {version: tuple(rules) for version, rules in by_version.items()}
        self.latest = self.by_version[max(self.by_version)]
        self.single = self.latest if len(self.by_version) == 1 else None

    def pick(self, message: Mapping[str, Any]) -> tuple[_Rule, ...]:
        if self.single is not None:
            return self.single
        context = message.get("context")
        protocols = context.get("protocols") if isinstance(context, Mapping) else None
        wanted = protocols.get("event_version", 1) if isinstance(protocols, Mapping) else 1
        try:
            return self.by_version.get(int(wanted), self.latest)
        except (TypeError, ValueError):
            return self.latest


@dataclass(frozen=True)
class _Route:
    """What applies to one call type (`TrackingPlan.check`)."""

    fixed: tuple[_Rule, ...]
    versioned: tuple[_Versions, ...]
    key_field: str | None  # the call's field a keyed rule's key names ("event", "name"); None: no keyed rules
    keyed: Mapping[str, _Versions]
    tracks: bool  # a call without a keyed rule is unplanned (track calls)


class TrackingPlan:
    """The rules of the tracking plan(s) connected to one source, each schema compiled once, chosen per call
    by a dict lookup on (type, event).

    Several plans merge: every rule of each applies (a call must satisfy all); the same rule twice is checked
    once. A rule with `deprecatedAt` set is skipped. A track call whose event has no TRACK rule is
    *unplanned*: reported apart, not a violation (blocking unplanned events is a separate Protocols setting),
    and still checked against the COMMON rules.
    """

    def __init__(self, plans: Iterable[tuple[Mapping[str, Any], Iterable[Mapping[str, Any]]]], *,
                 source_id: str | None = None) -> None:
        """`plans`: (plan as the Public API lists it: `id`, `name`, ...; its rules, RuleV1 dicts). Raises
        `InvalidRule` naming the plan and rule for a rule that cannot be used."""
        self.source_id = source_id
        infos: list[PlanInfo] = []
        groups: dict[tuple[str, str | None], dict[int, list[_Rule]]] = {}
        seen: set[tuple[str, str | None, int, bytes]] = set()
        for plan, rules in plans:
            plan_id = str(plan.get("id") or "")
            name = str(plan.get("name") or plan_id or "tracking plan")
            applied = skipped = 0
            for rule in rules:
                compiled = _compile_rule(name, rule)
                if compiled is None:
                    skipped += 1
                    continue
                kind, key, version, canonical, validator = compiled
                applied += 1
                if (kind, key, version, canonical) in seen:  # the same rule in two plans: checked once
                    continue
                seen.add((kind, key, version, canonical))
                # A rule whose schema is null is kept as a version with nothing to check: it plans its event.
                checked = groups.setdefault((kind, key), {}).setdefault(version, [])
                if validator is not None:
                    checked.append(_Rule(name, _label(kind, key), validator))
            infos.append(PlanInfo(plan_id, name, applied, skipped))
        self.plans: tuple[PlanInfo, ...] = tuple(infos)
        versions = {group: _Versions(by_version) for group, by_version in groups.items()}
        # Per call type, its route: the keyless rules that apply (COMMON first) in one tuple when they have
        # one version each (the common case: no per-call lookup), those with several versions, and the keyed
        # rules of its type by key (TRACK by event, PAGE and SCREEN by name). A call of another type (alias,
        # or none at all) takes the route of None: COMMON only.
        keyed: dict[str, dict[str, _Versions]] = {}
        for (kind, key), group in versions.items():
            if key is not None:
                keyed.setdefault(kind, {})[key] = group
        self._routes: dict[str | None, _Route] = {}
        for call in (*_RULE_OF_CALL, None):
            kind = _RULE_OF_CALL.get(call or "")
            keyless = sorted((v for (k, key), v in versions.items() if key is None and k in ("COMMON", kind)),
                             key=lambda v: v is not versions.get(("COMMON", None)))
            self._routes[call] = _Route(
                fixed=tuple(rule for v in keyless if v.single is not None for rule in v.single),
                versioned=tuple(v for v in keyless if v.single is None),
                key_field=_KEYED.get(kind or ""), keyed=keyed.get(kind or "", {}), tracks=kind == "TRACK")
        self.rules = sum(len(rules) for v in versions.values() for rules in v.by_version.values())
        self.events = frozenset(keyed.get("TRACK", ()))

    @classmethod
    def from_rules(cls, rules: Iterable[Mapping[str, Any]], *, plan_id: str = "tp_local",
                   name: str | None = None) -> TrackingPlan:
        """One plan made of `rules` (RuleV1 dicts)."""
        return cls([({"id": plan_id, "name": name or plan_id}, rules)])

    def violations(self, message: Mapping[str, Any]) -> list[Violation]:
        """How `message` (a call as sent: `{"type": "track", "event": ..., "properties": ...}`) breaks the
        rules that apply to it; empty when it breaks none."""
        return self.check(message)[0]

    def check(self, message: Mapping[str, Any]) -> tuple[list[Violation], bool]:
        """(violations, unplanned): `unplanned` is a track call whose event the plan has no rule for."""
        call = message.get("type")
        route = self._routes.get(call) if isinstance(call, str) else None
        if route is None:
            route = self._routes[None]
        found: list[Violation] = []
        # is_valid first: collecting errors costs more, and most calls are valid.
        for rule in route.fixed:
            if not rule.validator.is_valid(message):
                found += rule.errors(message)
        for group in route.versioned:
            for rule in group.pick(message):
                if not rule.validator.is_valid(message):
                    found += rule.errors(message)
        if route.key_field is None:
            return found, False
        key = message.get(route.key_field)
        group = route.keyed.get(key) if isinstance(key, str) else None
        if group is None:
            return found, route.tracks
        for rule in group.single if group.single is not None else group.pick(message):
            if not rule.validator.is_valid(message):
                found += rule.errors(message)
        return found, False

    def describe(self) -> str:
        """"tracking plan 'Web' (tp_1, 23 rules)", the plans joined with " + "."""
        return " + ".join(f"tracking plan {p.name!r} ({p.id or 'no id'}, {p.rules} rules)"
                          for p in self.plans) or "no tracking plan"


def load_for_source(client: TrackingPlanClient, *, write_key: str | None = None,
                    source_id: str | None = None) -> TrackingPlan | None:
    """The tracking plan(s) connected to a source, found by its id or by a write key it holds; None when no
    plan is connected to it.

    Reads the plans (`GET /tracking-plans`), the sources connected to each, and the rules of those connected
    (spec §2): one request per plan and page, once per run. Raises `SourceNotFound` when no source holds the
    write key (the key is never part of an error or a log), `InvalidRule` for a rule that cannot be used, and
    the client's errors as they are.
    """
    if (write_key is None) == (source_id is None):
        raise ValueError("load_for_source needs exactly one of write_key and source_id")
    if source_id is None:
        sources = list(client.iter_sources())
        # A list of keys (SourceV1); `in` on a lone string would match a part of it.
        source_id = next((s["id"] for s in sources
                          if write_key in _as_list(s.get("writeKeys"))), None)
        if source_id is None:
            raise SourceNotFound(f"no source of the workspace holds the write key the sync sends with "
                                 f"({len(sources)} sources listed): is the Public API token of the same "
                                 "workspace?")
    connected = []
    for plan in client.iter_tracking_plans():
        if any(s.get("id") == source_id for s in client.iter_tracking_plan_sources(plan["id"])):
            connected.append((plan, list(client.iter_tracking_plan_rules(plan["id"]))))
    return TrackingPlan(connected, source_id=source_id) if connected else None


@dataclass(frozen=True)
class Sample:
    """A violating message, as a report shows it: no value of the call, only where and why."""

    rule: str
    field: str
    message: str
    message_id: str | None


@dataclass
class TrackingPlanReport:
    """What checking one sync's planned messages found (`check_pending`)."""

    sync: str
    policy: str
    plans: tuple[str, ...] = ()  # the plans' names
    checked: int = 0
    violating: int = 0  # messages with at least one violation (unreadable ones included)
    blocked: int = 0  # of those, rejected (policy block)
    unplanned: int = 0  # track calls of an event the plan has no rule for (not violations)
    unreadable: int = 0  # payloads that are not a JSON object (counted as violating)
    # (rule, field) -> messages with that violation; array indices in fields read [] ("products[].price").
    by_rule: Counter[tuple[str, str]] = field(default_factory=Counter)
    unplanned_events: Counter[str] = field(default_factory=Counter)
    samples: list[Sample] = field(default_factory=list)  # one per (rule, field) first seen, up to the limit
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        """No planned message breaks the plan (whatever the policy did with those that did)."""
        return self.violating == 0

    def merged(self, later: TrackingPlanReport) -> TrackingPlanReport:
        """This report and a later check's of the same sync in the same run (messages an approval released),
        as one: counts added, samples of pairs not sampled yet appended."""
        seen = {(s.rule, s.field) for s in self.samples}
        return TrackingPlanReport(
            sync=self.sync, policy=self.policy, plans=self.plans, checked=self.checked + later.checked,
            violating=self.violating + later.violating, blocked=self.blocked + later.blocked,
            unplanned=self.unplanned + later.unplanned, unreadable=self.unreadable + later.unreadable,
            by_rule=self.by_rule + later.by_rule,
            unplanned_events=self.unplanned_events + later.unplanned_events,
            samples=self.samples + [s for s in later.samples if (s.rule, s.field) not in seen],
            seconds=self.seconds + later.seconds)

    def as_metadata(self) -> dict[str, Any]:
        """Plain values for run metadata (`violations_markdown` has the table)."""
        metadata: dict[str, Any] = {
            "tracking_plan_policy": self.policy, "tracking_plan": ", ".join(self.plans) or "none",
            "tracking_plan_checked": self.checked, "tracking_plan_violating": self.violating,
            "tracking_plan_blocked": self.blocked, "tracking_plan_unplanned": self.unplanned,
            "tracking_plan_seconds": round(self.seconds, 3)}
        if self.unreadable:
            metadata["tracking_plan_unreadable"] = self.unreadable
        return metadata

    def violations_markdown(self, limit: int = 20) -> str:
        """A Markdown table of the violations by rule and field, most frequent first, then the samples and
        the unplanned events; no values of the calls."""
        if not self.violating and not self.unplanned:
            plans = ", ".join(self.plans) or "the tracking plan"
            return f"No violations of {plans} in {_calls(self.checked)}."
        lines = ["| rule | field | messages |", "|---|---|---|"]
        lines += [f"| {_md(rule)} | {_md(name) or '-'} | {count:,} |"
                  for (rule, name), count in self.by_rule.most_common(limit)]
        if self.samples:
            lines += ["", "| rule | field | error | messageId |", "|---|---|---|---|"]
            lines += [f"| {_md(s.rule)} | {_md(s.field) or '-'} | {_md(s.message)} | "
                      f"{_md(s.message_id or '-')} |" for s in self.samples]
        if self.unplanned_events:
            lines += ["", "Unplanned events (not in the plan; sent under every policy): "
                      + ", ".join(f"{_md(event)} ({count:,})"
                                  for event, count in self.unplanned_events.most_common(limit))]
        return "\n".join(lines)

    def summary(self) -> str:
        """One line for an alert, naming the sync, each rule (its event) and field, with counts."""
        plans = ", ".join(repr(p) for p in self.plans) or "the tracking plan"
        if not self.violating:
            text = f"sync {self.sync!r}: {_calls(self.checked)} checked against {plans}: no violations"
        else:
            done = {"block": "blocked", "warn": "sent anyway (policy warn)"}.get(self.policy, self.policy)
            worst = "; ".join(f"{rule} {name}".rstrip() + f" ({count:,})"
                              for (rule, name), count in self.by_rule.most_common(3))
            more = len(self.by_rule) - 3
            text = (f"sync {self.sync!r}: {self.violating:,} of {_calls(self.checked)} violate {plans}, "
                    f"{done}: {worst}" + (f"; {more} more" if more > 0 else ""))
        if self.unplanned:
            text += f"; {_calls(self.unplanned)} of unplanned events"
        return text


def check_policy(policy: str) -> str:
    """`policy` if it is one of `POLICIES`, else a `ValueError` naming them."""
    if policy not in POLICIES:
        raise ValueError(f"tracking plan policy must be one of {', '.join(POLICIES)}, not {policy!r}")
    return policy


def check_pending(ledger: Ledger, sync: str, plan: TrackingPlan | None, policy: str, *,
                  run_id: str | None = None, samples: int = 5, chunk_rows: int = 20_000,
                  seqs: range | None = None) -> TrackingPlanReport:
    """Check every planned message of `sync` (those in `seqs` only, when given) against `plan`, after
    planning and before delivery.

    `warn`: report only, the ledger is left as it is. `block`: each violating message is rejected (its
    outcome REJECTED, a row in `rejected` whose reason is "rejected by tracking plan: <rule> <field>:
    <error>", which the ledger counts as refused once it was a message), so no delivery sends it. Calls of
    unplanned events are counted and sent under both. `off`, or no plan: nothing is read. Reads the planned
    messages a window at a time (`Ledger.iter_pending`, as delivery does): memory follows `chunk_rows`, work
    the planned set. Raises `CompactedPayloadError` as delivery would, for a planned message whose payload
    compaction dropped.
    """
    check_policy(policy)
    started = time.monotonic()
    report = TrackingPlanReport(sync, policy, tuple(p.name for p in plan.plans) if plan is not None else ())
    if policy == "off" or plan is None:
        return report
    sampled: set[tuple[str, str]] = set()
    for chunk in ledger.iter_pending(sync, chunk_rows, seqs):
        refused: list[tuple[int, str]] = []
        for seq, payload in chunk:
            report.checked += 1
            try:
                message = orjson.loads(payload)
            except orjson.JSONDecodeError as exc:
                message = exc
            if isinstance(message, dict):
                found, unplanned = plan.check(message)
                if unplanned:
                    report.unplanned += 1
                    event = str(message.get("event"))
                    events = report.unplanned_events
                    if event not in events and len(events) >= MAX_UNPLANNED_EVENTS:
                        event = "(other events)"
                    events[event] += 1
                if not found:
                    continue
                message_id = message.get("messageId")
            else:  # planned by our own code, so never in practice: refused rather than sent unchecked
                report.unreadable += 1
                problem = (f"not JSON ({message})" if isinstance(message, orjson.JSONDecodeError)
                           else f"not a JSON object but {type(message).__name__}")
                found, message_id = [Violation("", "payload", "", problem)], None
            report.violating += 1
            _count(report, found, message_id if isinstance(message_id, str) else None, samples, sampled)
            if policy == "block":
                refused.append((seq, _reason(found)))
        if refused:
            # The rows first, then the outcomes: a stop between leaves the message planned with its reason
            # kept, and the next check rejects it again (a second row, which `rejected_rows` counts as one
            # refusal seen twice); the other order could leave a rejected message without its reason.
            ledger.reject_refused(sync, refused, destination=SOURCE, run_id=run_id)
            ledger.log_outcomes(sync, [(seq, REJECTED, 0, f"rejected by {SOURCE}: {reason}")
                                       for seq, reason in refused])
            report.blocked += len(refused)
    report.seconds = time.monotonic() - started
    return report


def _count(report: TrackingPlanReport, found: Sequence[Violation], message_id: str | None, samples: int,
           sampled: set[tuple[str, str]]) -> None:
    """Count one violating message once per (rule, field) it breaks; sample the pairs not sampled yet."""
    for violation in found:
        pair = (violation.rule, _ARRAY_INDEX.sub("[]", violation.field))
        if pair not in sampled and len(report.samples) < samples:
            sampled.add(pair)
            report.samples.append(Sample(violation.rule, violation.field, violation.message, message_id))
    for pair in dict.fromkeys((v.rule, _ARRAY_INDEX.sub("[]", v.field)) for v in found):
        if pair not in report.by_rule and len(report.by_rule) >= MAX_COUNTED:
            pair = (pair[0], "(other fields)")
        report.by_rule[pair] += 1


def _reason(found: Sequence[Violation]) -> str:
    shown = "; ".join(v.describe() for v in found[:MAX_REASON_VIOLATIONS])
    more = len(found) - MAX_REASON_VIOLATIONS
    return shown + (f"; and {more} more" if more > 0 else "")


def _compile_rule(plan: str, rule: Mapping[str, Any]
                  ) -> tuple[str, str | None, int, bytes, Any] | None:
    """(type, key, version, canonical schema, validator) of one RuleV1 dict; None for a rule not applied
    (deprecated, or a type this module does not know). Raises `InvalidRule`."""
    if not isinstance(rule, Mapping):
        raise InvalidRule(plan, "?", f"a rule must be an object, got {type(rule).__name__}")
    kind, key = rule.get("type"), rule.get("key")
    label = _label(str(kind) if kind else "?", key if isinstance(key, str) else None)
    if not isinstance(kind, str) or not kind:
        raise InvalidRule(plan, label, "it has no type")
    if rule.get("deprecatedAt") or kind not in RULE_TYPES:
        return None
    if kind not in _KEYED:
        key = None  # COMMON, IDENTIFY and GROUP rules apply whatever their key
    elif key is not None and not (isinstance(key, str) and key):
        raise InvalidRule(plan, label, f"its key must be a non-empty string, got {key!r}")
    elif key is None and kind == "TRACK":
        raise InvalidRule(plan, label, "a TRACK rule needs a key (the event name)")
    version = rule.get("version", 1)
    if isinstance(version, bool) or not isinstance(version, int):
        raise InvalidRule(plan, label, f"its version must be a whole number, got {version!r}")
    schema = rule.get("jsonSchema")
    if isinstance(schema, str):  # a schema handed over as JSON text
        try:
            schema = orjson.loads(schema)
        except orjson.JSONDecodeError as exc:
            raise InvalidRule(plan, label, f"its jsonSchema is text that is not JSON ({exc})") from None
    if schema is None:
        return kind, key, version, b"null", None  # a rule that checks nothing still plans its event
    if not isinstance(schema, dict | bool):
        raise InvalidRule(plan, label, f"its jsonSchema must be an object, got {type(schema).__name__}")
    try:
        canonical = orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)
        # Protocols' schemas are draft-07 ("$schema": ".../draft-07/schema#"); one without "$schema" is read
        # as draft-07 too, not as jsonschema-rs's default (2020-12). Formats are checked (Protocols documents
        # date-time as string + format). Offline: a remote "$ref" is an error here, never a request per run.
        options: dict[str, Any] = {"validate_formats": True, "mask": MASK, "offline": True}
        if isinstance(schema, dict) and "$schema" not in schema:
            validator = jsonschema_rs.Draft7Validator(schema, **options)
        else:
            validator = jsonschema_rs.validator_for(schema, **options)
    except (ValueError, orjson.JSONEncodeError, jsonschema_rs.ReferencingError) as exc:
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise InvalidRule(plan, label, f"its jsonSchema does not compile: {first}") from None
    return kind, key, version, canonical, validator


def _as_list(value: Any) -> list:
    return [value] if isinstance(value, str) else list(value or ())


def _calls(count: int) -> str:
    return f"{count:,} call" + ("" if count == 1 else "s")


def _label(kind: str, key: str | None) -> str:
    """How a rule is named to a person: `TRACK "Order Completed"`, `IDENTIFY`."""
    return f'{kind} "{key}"' if key else kind


_ARRAY_INDEX = re.compile(r"\[\d+\]")


def _field(error: Any) -> str:
    """The dotted path of the field an error is about: a missing required property and an unexpected one
    are named themselves, not their parent object."""
    path = list(error.instance_path)
    kind = error.kind
    if isinstance(kind, jsonschema_rs.ValidationErrorKind.Required):
        path.append(kind.property)
    elif isinstance(kind, jsonschema_rs.ValidationErrorKind.AdditionalProperties) and kind.unexpected:
        path.append(kind.unexpected[0])
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _md(text: str) -> str:
    """A cell of a Markdown table: pipes and line breaks escaped."""
    return text.replace("|", "\\|").replace("\n", " ")


__all__ = [
    "MASK",
    "POLICIES",
    "SOURCE",
    "InvalidRule",
    "PlanInfo",
    "Sample",
    "SourceNotFound",
    "TrackingPlan",
    "TrackingPlanClient",
    "TrackingPlanError",
    "TrackingPlanReport",
    "Violation",
    "check_pending",
    "check_policy",
    "load_for_source",
]
