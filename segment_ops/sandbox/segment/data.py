"""Segment's generated data: the workspace audit trail that the Public API double serves (spec §2)."""

from __future__ import annotations

import hashlib
import math
from datetime import datetime, timedelta
from functools import lru_cache

import numpy as np

from segment_ops.sandbox.world import HOUR_MS, DemoWorld, as_utc, b62, gc_paused, iso_ms, to_ms

AUDIT_RETENTION = timedelta(days=90)  # the Segment UI keeps 90 days of audit trail (spec §2)
_SALT_AUDIT, _SALT_ACTORS = 103, 104  # `default_rng` salts (see world.py)


class SegmentDemoData(DemoWorld):
    """The demo world as Segment's Public API shows it: the audit events of the workspace."""

    @gc_paused
    def audit_events(self, start: datetime, end: datetime) -> list[dict]:
        """Segment AuditEvents with start < timestamp <= min(end, now), newest first.

        Events older than the 90-day retention before `now` are not returned.
        """
        lo = max(to_ms(as_utc(start, "start")), self._now_ms - int(AUDIT_RETENTION.total_seconds() * 1000))
        hi = min(to_ms(as_utc(end, "end")), self._now_ms)
        events: list[dict] = []
        for hour in range(hi // HOUR_MS, lo // HOUR_MS - 1, -1):
            for ts_ms, event in reversed(_audit_hour(self.config.seed, self.config.scale, hour)):
                if lo < ts_ms <= hi:
                    events.append(dict(event))
        return events


# (type, resourceType, weight)
_AUDIT_TYPES = [
    ("Source Updated", "source", 10), ("Source Created", "source", 1), ("Source Deleted", "source", 0.3),
    ("Destination Updated", "destination", 10), ("Destination Created", "destination", 1.5),
    ("Destination Deleted", "destination", 0.3), ("Destination Filter Updated", "destination", 2),
    ("Tracking Plan Updated", "tracking_plan", 5), ("Workspace Role Updated", "user", 1),
    ("Workspace User Invited", "user", 0.5), ("Source Regulation Created", "regulation", 2),
    ("Workspace Regulation Created", "regulation", 0.5), ("Access Token Created", "token", 0.3),
    ("Audience Updated", "audience", 3), ("Computed Trait Updated", "computed_trait", 1),
    ("Function Updated", "function", 1),
]
_AUDIT_RESOURCES = {
    "source": ["web-app", "ios-app", "android-app", "marketing-site", "backend-api", "heap-cohorts",
               "pendo-accounts", "warehouse-reverse-etl"],
    "destination": ["Amplitude", "Braze", "Google Analytics 4", "Mixpanel", "Salesforce",
                    "Webhooks (Actions)", "Heap", "Pendo", "Snowflake"],
    "tracking_plan": ["Web Tracking Plan", "Mobile Tracking Plan"],
    "audience": ["High Intent Visitors", "Churn Risk Accounts", "Trial Ending Soon"],
    "computed_trait": ["Lifetime Value", "Last Seen At", "Favourite Feature"],
    "function": ["enrich-clearbit", "mask-pii"],
    "token": ["segment-ops reader", "terraform", "ci-deploy"],
}
_WORKSPACE_PEOPLE = ["priya.nair", "tom.becker", "ana.souza", "li.wei", "sam.okafor", "eva.lindqvist",
                     "marc.dupont", "jordan.lee", "nina.kovac", "omar.haddad"]
_AUDIT_TOKEN_ACTORS = ["Public API token: terraform", "Public API token: segment-ops", "Segment"]


@lru_cache(maxsize=2400)  # 100 days of hours: the whole retention window of one world
def _audit_hour(seed: int, scale: float, hour: int) -> tuple[tuple[int, dict], ...]:
    """The audit events of one absolute hour, oldest first, as (epoch ms, event) pairs."""
    weekday = (hour // 24 + 3) % 7 < 5
    business = 8 <= hour % 24 < 18
    rate = 2.5 * math.sqrt(max(scale, 0.25)) * (0.3 if not weekday else 2.0 if business else 0.5)
    rng = np.random.default_rng([seed, _SALT_AUDIT, hour])
    count = int(rng.poisson(rate))
    if not count:
        return ()
    offsets = np.sort(rng.integers(0, HOUR_MS, count))
    weights = np.array([w for _, _, w in _AUDIT_TYPES])
    kinds = rng.choice(len(_AUDIT_TYPES), size=count, p=weights / weights.sum())
    people = _workspace_people(seed)
    events = []
    for i in range(count):
        ts_ms = hour * HOUR_MS + int(offsets[i])
        event_type, resource_type, _ = _AUDIT_TYPES[kinds[i]]
        event_id = b62(hashlib.blake2b(f"{seed}:{ts_ms}:{i}".encode(), digest_size=20).digest(), 27)
        if resource_type == "user":
            resource_name = people[int(rng.integers(len(people)))]
            resource_id = _resource_id(seed, resource_type, resource_name)
        elif resource_type == "regulation":
            resource_name = _AUDIT_RESOURCES["source"][int(rng.integers(len(_AUDIT_RESOURCES["source"])))]
            resource_id = "reg_" + event_id[:22]
        else:
            names = _AUDIT_RESOURCES[resource_type]
            resource_name = names[int(rng.integers(len(names)))]
            resource_id = _resource_id(seed, resource_type, resource_name)
        event = {"id": event_id, "timestamp": iso_ms(ts_ms), "type": event_type}
        if rng.random() < 0.8:
            person = people[int(rng.integers(len(people)))]
            event.update(actor=person, actorEmail=person)
        else:
            event["actor"] = _AUDIT_TOKEN_ACTORS[int(rng.integers(len(_AUDIT_TOKEN_ACTORS)))]
        event.update(resourceId=resource_id, resourceType=resource_type, resourceName=resource_name)
        events.append((ts_ms, event))
    return tuple(events)


@lru_cache(maxsize=64)
def _workspace_people(seed: int) -> list[str]:
    rng = np.random.default_rng([seed, _SALT_ACTORS])
    chosen = rng.choice(len(_WORKSPACE_PEOPLE), size=6, replace=False)
    return [f"{_WORKSPACE_PEOPLE[i]}@segment-ops-demo.example" for i in sorted(chosen)]


def _resource_id(seed: int, resource_type: str, name: str) -> str:
    return b62(hashlib.blake2b(f"{seed}:{resource_type}:{name}".encode(), digest_size=16).digest(), 22)



# ------------------------------------------------------------------------------------ tracking plans

DEMO_TRACKING_PLAN_ID = "tp_sandbox_segment_ops"
WEB_TRACKING_PLAN_ID = "tp_sandbox_web_app"
_PLAN_CREATED, _PLAN_UPDATED = "2025-03-04T09:12:44.000Z", "2026-09-14T15:02:10.000Z"
_JSON_SCHEMA = "http://json-schema.org/draft-07/schema#"
_NULLABLE_TEXT = {"type": ["string", "null"]}
_DATE_TIME = {"type": "string", "format": "date-time"}
_ACCOUNT_ID = {"type": ["string", "null"], "pattern": "^acc_[0-9]+$"}
_PLANS = ["free", "starter", "pro", "enterprise"]  # world.py's `_PLANS`


def demo_tracking_plans(demo_source_id: str, web_source_id: str) -> list[dict]:
    """The workspace's tracking plans (Protocols), each `{"trackingPlan", "rules", "sourceIds"}`.

    "segment-ops reverse ETL" is connected to `demo_source_id`, the source the demo's reverse-ETL models send
    to: its rules describe the calls of `sql/reverse_etl/*.sql`, typed as their columns are in the demo
    warehouse (`warehouse.py`; TIMESTAMPTZ is sent as ISO-8601 text, DECIMAL as a number, engine/diff.py), so
    the demo's calls pass. Nothing is `required` in the identify and group rules: the same source gets the
    Heap audiences' identifies and the Pendo health groups, which carry other traits, and a mirror model's
    removal sends every trait as null (so account traits are nullable). "Web Tracking Plan" is connected to
    `web_source_id` only: a sync must pick the plan of its own source.
    """
    identify = _rule("IDENTIFY", None, "traits", {
        "email": _NULLABLE_TEXT,  # lower(email), or null when the address is not an email
        "name": _NULLABLE_TEXT,
        "plan": {"type": ["string", "null"], "enum": [*_PLANS, None]},
        "country": {"type": "string", "pattern": "^[A-Z]{2}$"},
        "account_id": _ACCOUNT_ID,
        "lifetime_value": {"type": "number", "minimum": 0},  # DECIMAL(12, 2), coalesced to 0
        "created_at": _DATE_TIME,
    })
    group = _rule("GROUP", None, "traits", {
        "name": _NULLABLE_TEXT,
        "plan": {"type": ["string", "null"], "enum": [*_PLANS, None]},
        "seats": {"type": ["integer", "null"], "minimum": 1},  # INTEGER
        "industry": _NULLABLE_TEXT,
        "mrr": {"type": ["number", "null"], "minimum": 0},  # DECIMAL(12, 2)
        "created_at": {"type": ["string", "null"], "format": "date-time"},
    })
    order_completed = _rule("TRACK", "Order Completed", "properties", {
        "order_id": {"type": "string", "pattern": "^ord_[0-9]+$"},
        "revenue": {"type": "number", "minimum": 0},  # orders.amount, DECIMAL(10, 2)
        "currency": {"type": "string", "enum": ["USD", "EUR", "GBP"]},
        "account_id": _ACCOUNT_ID,
    }, required=["order_id", "revenue", "currency"])
    # COMMON: every call. Where a call carries a context, its library is named; traits and properties are
    # objects.
    common = {"type": "COMMON", "version": 1, "createdAt": _PLAN_CREATED, "updatedAt": _PLAN_UPDATED,
              "jsonSchema": {"$schema": _JSON_SCHEMA, "type": "object", "properties": {
                  "context": {"type": "object", "properties": {"library": {
                      "type": "object", "required": ["name"],
                      "properties": {"name": {"type": "string"}, "version": {"type": "string"}}}}},
                  "traits": {"type": "object"},
                  "properties": {"type": "object"}}}}
    signed_up = _rule("TRACK", "Signed Up", "properties", {"plan": {"type": "string", "enum": _PLANS}},
                      required=["plan"])
    web_identify = _rule("IDENTIFY", None, "traits", {"email": {"type": "string"}}, required=["email"])
    return [
        {"trackingPlan": _plan(DEMO_TRACKING_PLAN_ID, "segment-ops reverse ETL", "segment-ops-reverse-etl",
                               "The calls the reverse-ETL models send: customer traits, account traits and "
                               "completed orders."),
         "rules": [common, identify, group, order_completed], "sourceIds": [demo_source_id]},
        {"trackingPlan": _plan(WEB_TRACKING_PLAN_ID, "Web Tracking Plan", "web-tracking-plan",
                               "The web app's events."),
         "rules": [web_identify, signed_up], "sourceIds": [web_source_id]},
    ]


def _plan(plan_id: str, name: str, slug: str, description: str) -> dict:
    return {"id": plan_id, "name": name, "slug": slug, "description": description, "type": "LIVE",
            "updatedAt": _PLAN_UPDATED, "createdAt": _PLAN_CREATED}


def _rule(rule_type: str, key: str | None, part: str, fields: dict, *, required: list[str] = ()) -> dict:
    """A RuleV1 whose JSON Schema (the whole call) describes the object `part` ("traits" or "properties")."""
    schema: dict = {"type": "object", "properties": fields}
    if required:
        schema["required"] = list(required)
    rule = {"type": rule_type, "version": 1, "createdAt": _PLAN_CREATED, "updatedAt": _PLAN_UPDATED,
            "jsonSchema": {"$schema": _JSON_SCHEMA, "type": "object", "properties": {part: schema},
                           "required": [part]}}
    return rule | ({"key": key} if key else {})
