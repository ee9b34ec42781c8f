"""Segment Protocols' tracking plans as the Public API double serves them: `GET /tracking-plans`,
`GET /tracking-plans/{id}`, `GET /tracking-plans/{id}/rules`, `GET /tracking-plans/{id}/sources` and
`PUT /tracking-plans/{id}/rules` (routed, authorised and rate-limited in `public_api.py`). The workspace's
plans are the demo's (`data.demo_tracking_plans`); a rule replaced over HTTP stays until the next reset.

Vendor sources read (github segmentio/public-api-sdk-typescript): `api/trackingPlansApi.ts` (paths and
methods: "Replace Rules in Tracking Plan" is `PUT .../rules`; the list's `type` filter; "The rate limit for
[List Rules] is 200 requests per minute"), `model/trackingPlanV1.ts` (`id`, `name`, `slug`, `description`,
`type` ENGAGE | LIVE | PROPERTY_LIBRARY | RULE_LIBRARY | TEMPLATE, `updatedAt`, `createdAt`),
`model/ruleV1.ts` / `ruleInputV1.ts` (`type` COMMON | GROUP | IDENTIFY | PAGE | SCREEN | TRACK, `key`,
`jsonSchema`, `version`, `createdAt`, `updatedAt`, `deprecatedAt`), `listTrackingPlansV1Output.ts`
(`trackingPlans`, `pagination`), `getTrackingPlanV1Output.ts` (`trackingPlan`),
`listRulesFromTrackingPlanV1Output.ts` (`rules`, `pagination`), `listSourcesFromTrackingPlanV1Output.ts`
(`sources` of `SourceV1`, `pagination`), `replaceRulesInTrackingPlanV1Input.ts` (`{"rules": [RuleInputV1]}`)
and `replaceRulesInTrackingPlanV1Output.ts` (`{"status": "SUCCESS"}`).

Choices where those are silent: a replaced rule set must be a list of rules whose `type` is known, whose
`version` is a positive integer and whose `jsonSchema` is an object (or null); a TRACK rule needs a
non-empty `key`; two rules with the same (type, key) are refused: each is 422 with the field at fault. The
schema itself is stored as sent, not checked against the JSON Schema meta-schema. Rules are listed in the
order they were put; replacing them stamps `createdAt`/`updatedAt` and the plan's `updatedAt` with now.
A connected source is the workspace's `SourceV1` with `labels: []` (the double models no labels).
"""

from __future__ import annotations

import base64
import binascii
import copy
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import orjson

from segment_ops import clock

PLAN_TYPES = ("ENGAGE", "LIVE", "PROPERTY_LIBRARY", "RULE_LIBRARY", "TEMPLATE")
RULE_TYPES = ("COMMON", "GROUP", "IDENTIFY", "PAGE", "SCREEN", "TRACK")


class TrackingPlanError(Exception):
    """A request Segment refuses: `status` 400/404/422, `field` names the input at fault."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.field = field


class TrackingPlans:
    """The workspace's tracking plans: each `{"trackingPlan": TrackingPlanV1, "rules": [RuleV1],
    "sourceIds": [...]}`, restored to `plans` on reset."""

    def __init__(self, plans: Sequence[Mapping], sources: Sequence[dict]) -> None:
        self._initial = [copy.deepcopy(dict(plan)) for plan in plans]
        self.sources = sources
        self._plans: dict[str, dict] = {}
        self.reset()

    def reset(self) -> None:
        self._plans = {p["trackingPlan"]["id"]: copy.deepcopy(p) for p in self._initial}

    def page(self, params: Mapping[str, str], count: int) -> dict:
        """`GET /tracking-plans`: `trackingPlans` and `pagination`, filtered by `type` when given."""
        plan_type = params.get("type") or None
        if plan_type is not None and plan_type not in PLAN_TYPES:
            raise TrackingPlanError(422, f"type must be one of {list(PLAN_TYPES)}, got {plan_type!r}", "type")
        plans = [p["trackingPlan"] for p in self._plans.values()
                 if plan_type is None or p["trackingPlan"]["type"] == plan_type]
        items, pagination = _page("trackingPlans", plans, count, params.get("pagination.cursor"))
        return {"trackingPlans": items, "pagination": pagination}

    def get(self, plan_id: str) -> dict:
        """`GET /tracking-plans/{id}`'s `trackingPlan`."""
        return self._plan(plan_id)["trackingPlan"]

    def rules_page(self, plan_id: str, params: Mapping[str, str], count: int) -> dict:
        rules = self._plan(plan_id)["rules"]
        items, pagination = _page("rules", rules, count, params.get("pagination.cursor"))
        return {"rules": items, "pagination": pagination}

    def sources_page(self, plan_id: str, params: Mapping[str, str], count: int) -> dict:
        connected = set(self._plan(plan_id)["sourceIds"])
        sources = [{**source, "labels": source.get("labels", [])} for source in self.sources
                   if source["id"] in connected]
        items, pagination = _page("sources", sources, count, params.get("pagination.cursor"))
        return {"sources": items, "pagination": pagination}

    def replace_rules(self, plan_id: str, body: object) -> None:
        """`PUT /tracking-plans/{id}/rules`: the plan's rules become `body["rules"]`."""
        plan = self._plan(plan_id)
        if not isinstance(body, dict) or not isinstance(body.get("rules"), list):
            raise TrackingPlanError(422, 'the body must be {"rules": [...]}', "rules")
        now = _iso(clock.now())
        rules, seen = [], set()
        for n, rule in enumerate(body["rules"]):
            checked = _rule(rule, f"rules[{n}]")
            identity = (checked["type"], checked.get("key"))
            if identity in seen:
                named = f" {checked['key']!r}" if checked.get("key") else ""
                raise TrackingPlanError(422, f"rules[{n}] repeats the {checked['type']} rule{named}",
                                        f"rules[{n}]")
            seen.add(identity)
            rules.append(checked | {"createdAt": now, "updatedAt": now})
        plan["rules"] = rules
        plan["trackingPlan"]["updatedAt"] = now

    def _plan(self, plan_id: str) -> dict:
        plan = self._plans.get(plan_id)
        if plan is None:
            raise TrackingPlanError(404, f"Resource not found: no tracking plan {plan_id!r}",
                                    "trackingPlanId")
        return plan


def _rule(rule: object, where: str) -> dict:
    """A RuleInputV1 as stored (only its own fields), or `TrackingPlanError` 422 saying what is wrong."""
    if not isinstance(rule, dict):
        raise TrackingPlanError(422, f"{where} must be an object", where)
    if rule.get("type") not in RULE_TYPES:
        raise TrackingPlanError(422, f"{where}.type must be one of {list(RULE_TYPES)}, got "
                                     f"{rule.get('type')!r}", f"{where}.type")
    key = rule.get("key")
    if key is not None and not isinstance(key, str):
        raise TrackingPlanError(422, f"{where}.key must be a string", f"{where}.key")
    if rule["type"] == "TRACK" and not (key and key.strip()):
        raise TrackingPlanError(422, f"{where}: a TRACK rule needs the event name as its key", f"{where}.key")
    if "jsonSchema" not in rule or not (rule["jsonSchema"] is None or isinstance(rule["jsonSchema"], dict)):
        raise TrackingPlanError(422, f"{where}.jsonSchema must be a JSON Schema object (or null)",
                                f"{where}.jsonSchema")
    version = rule.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise TrackingPlanError(422, f"{where}.version must be a positive integer", f"{where}.version")
    stored = {"type": rule["type"], "jsonSchema": rule["jsonSchema"], "version": version}
    if key is not None:
        stored["key"] = key
    return stored


def _page(kind: str, items: list, count: int, cursor: str | None) -> tuple[list, dict]:
    """One page of `items` from the opaque `cursor` (which names what it pages, `kind`)."""
    offset = _offset(kind, cursor)
    pagination: dict = {"current": _cursor(kind, offset), "totalEntries": len(items)}
    if offset + count < len(items):
        pagination["next"] = _cursor(kind, offset + count)
    if offset > 0:
        pagination["previous"] = _cursor(kind, max(0, offset - count))
    return items[offset:offset + count], pagination


def _cursor(kind: str, offset: int) -> str:
    return base64.urlsafe_b64encode(orjson.dumps({kind: offset})).decode()


def _offset(kind: str, cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        offset = orjson.loads(base64.urlsafe_b64decode(cursor))[kind]
    except (binascii.Error, orjson.JSONDecodeError, KeyError, TypeError):
        offset = None
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise TrackingPlanError(400, "pagination.cursor is not a valid cursor", "pagination.cursor")
    return offset


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
