"""Tracking-plan validation benchmark: N planned identify/track calls (100,000 by default) checked against
a realistic Segment Protocols tracking plan, by `segment_ops.engine.tracking_plan` (jsonschema-rs) and by its
peer.

Measured in this one run, in this process, best of `--rounds`, on the same payloads (as the ledger holds them:
JSON text built by `engine.calls.prepare_call`), each figure the work of every message:

- **parse only**: `orjson.loads` of each payload, the floor of any check that reads the ledger's payloads;
- **segment_ops**: parse + `TrackingPlan.check` (rules picked by a dict lookup on (type, event), compiled
  once by jsonschema-rs, `is_valid` first and the errors collected only for an invalid call);
- **the jsonschema peer**: what a competent engineer writes with the reference library `jsonschema`: parse,
  one `Draft7Validator` per rule compiled once and reused, picked by the same dict lookup, `is_valid` first,
  `iter_errors` only for an invalid call, with a format checker that checks the plan's formats (email, and
  date-time through `datetime.fromisoformat`, as `jsonschema` checks date-time only with an extra package);
- **check_pending (warn)**: the step a run adds, end to end: the pending messages read from a DuckDB ledger a
  window at a time, parsed and checked, the report kept;
- **planning the same calls** (`prepare_call` + `Ledger.add_planned`): the engine's own per-message work the
  check is added to, and the 72,300 rows/s of a reverse-ETL first run (README "Performance", 1,000,000 rows
  through `dagster asset materialize`, `benchmarks/reverse_etl.py`) as the whole run's budget per row.

Both implementations must find the same violating and unplanned calls, or the comparison means nothing.

    .venv/bin/pip install -e ".[bench]"
    .venv/bin/python benchmarks/tracking_plan.py                      # 100,000 calls
    .venv/bin/python benchmarks/tracking_plan.py --messages 200000 --rounds 1
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import random
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import duckdb
import jsonschema
import orjson

from segment_ops.engine.calls import prepare_call
from segment_ops.engine.ledger import Ledger, PlannedMessage
from segment_ops.engine.tracking_plan import TrackingPlan, check_pending

# README "Performance": benchmarks/reverse_etl.py, a first run of 1,000,000 rows through Dagster.
FIRST_RUN_ROWS_PER_SECOND = 72_300
SYNC = "bench_tracking_plan"
DRAFT_07 = "http://json-schema.org/draft-07/schema#"
PLANNED_EVENTS = ("Order Completed", "Product Viewed", "Product Added", "Checkout Started", "Signed Up",
                  "Subscription Renewed", "Invoice Paid", "Seat Added")
UNPLANNED_EVENT = "Legacy Ping"


def build_rules(extra_events: int = 30) -> list[dict]:
    """A plan like a mid-size workspace's: COMMON (context), IDENTIFY and GROUP (traits), and TRACK rules for
    the events the calls use plus `extra_events` more the calls never name."""

    def whole(**top: dict) -> dict:
        return {"$schema": DRAFT_07, "type": "object", "properties": top}

    money = {"type": "number", "minimum": 0}
    product = {"type": "object", "required": ["product_id", "price"], "properties": {
        "product_id": {"type": "string"}, "sku": {"type": "string", "pattern": "^[A-Z0-9-]{4,32}$"},
        "price": money, "quantity": {"type": "integer", "minimum": 1}, "category": {"type": "string"}}}
    event_properties = {
        "Order Completed": {"required": ["order_id", "total", "currency", "products"], "properties": {
            "order_id": {"type": "string"}, "total": money, "revenue": money, "tax": money,
            "currency": {"type": "string", "pattern": "^[A-Z]{3}$"}, "coupon": {"type": ["string", "null"]},
            "products": {"type": "array", "items": product, "minItems": 1}}},
        "Product Viewed": {"required": ["product_id"], "properties": product["properties"]},
        "Product Added": {"required": ["product_id", "price"], "properties": product["properties"]},
        "Checkout Started": {"required": ["cart_id", "value"], "properties": {
            "cart_id": {"type": "string"}, "value": money, "currency": {"type": "string"}}},
        "Signed Up": {"required": ["method"], "properties": {
            "method": {"enum": ["email", "google", "sso"]}, "at": {"type": "string", "format": "date-time"}}},
        "Subscription Renewed": {"required": ["plan", "mrr"], "properties": {
            "plan": {"enum": ["free", "pro", "team", "enterprise"]}, "mrr": money,
            "renewed_at": {"type": "string", "format": "date-time"}}},
        "Invoice Paid": {"required": ["invoice_id", "amount"], "properties": {
            "invoice_id": {"type": "string"}, "amount": money, "currency": {"type": "string"}}},
        "Seat Added": {"required": ["seats"], "properties": {"seats": {"type": "integer", "minimum": 1}}},
    }
    for i in range(extra_events):
        event_properties[f"Feature {i} Used"] = {"required": ["feature"], "properties": {
            "feature": {"type": "string"}, "count": {"type": "integer"}}}
    rules = [
        {"type": "COMMON", "version": 1, "jsonSchema": whole(context={"type": "object", "properties": {
            "library": {"type": "object", "properties": {"name": {"type": "string"},
                                                         "version": {"type": "string"}}},
            "ip": {"type": "string", "format": "ipv4"}, "locale": {"type": "string"}}})},
        {"type": "IDENTIFY", "version": 1, "jsonSchema": whole(traits={
            "type": "object", "required": ["email", "plan"], "properties": {
                "email": {"type": "string", "format": "email"}, "name": {"type": "string"},
                "plan": {"enum": ["free", "pro", "team", "enterprise"]},
                "seats": {"type": "integer", "minimum": 0},
                "country": {"type": "string", "pattern": "^[A-Z]{2}$"},
                "lifetime_value": money, "created_at": {"type": "string", "format": "date-time"}}})},
        {"type": "GROUP", "version": 1, "jsonSchema": whole(traits={"type": "object", "required": ["name"]})},
    ]
    rules += [{"type": "TRACK", "key": event, "version": 1,
               "jsonSchema": whole(properties={"type": "object", **body})}
              for event, body in event_properties.items()]
    return rules


def build_calls(n: int, violating: float) -> list[dict]:
    """n calls: half identify, the rest track calls of the planned events and 1 in 20 of an unplanned one; a
    `violating` share, drawn at random (seeded), breaks its rule (a string total, a negative count, ...)."""
    context = {"library": {"name": "segment_ops", "version": "0.1.0"}, "locale": "en-US"}
    draw = random.Random(20).random
    calls = []
    for i in range(n):
        bad = draw() < violating
        if i % 2 == 0:
            calls.append({"type": "identify", "userId": f"usr_{i:08d}", "context": context,
                          "traits": {"email": f"user{i}@example.com", "name": f"User {i}",
                                     "plan": ("free", "pro", "team")[i % 3], "seats": -1 if bad else i % 50,
                                     "country": "DE", "lifetime_value": (i * 37) % 100000 / 100.0,
                                     "created_at": "2024-06-01T12:00:00.000Z"}})
            continue
        event = UNPLANNED_EVENT if i % 20 == 1 else PLANNED_EVENTS[(i // 2) % len(PLANNED_EVENTS)]
        calls.append({"type": "track", "userId": f"usr_{i:08d}", "event": event, "context": context,
                      "properties": _properties(event, i, bad), "timestamp": "2025-01-01T00:00:00.000Z"})
    return calls


def _properties(event: str, i: int, bad: bool) -> dict:
    product = {"product_id": f"p{i % 977}", "sku": f"SKU-{i % 977:05d}", "price": 19.99,
               "quantity": 1 + i % 3, "category": "books"}
    if event == "Order Completed":
        return {"order_id": f"o{i}", "total": "59.97" if bad else 59.97, "revenue": 50.0, "tax": 9.97,
                "currency": "EUR", "coupon": None, "products": [product, dict(product, product_id="p2")]}
    if event in ("Product Viewed", "Product Added"):
        return dict(product, price=-1) if bad else product
    if event == "Checkout Started":
        return {"cart_id": f"c{i}", "value": 59.97, "currency": "eur" if bad else "EUR"}
    if event == "Signed Up":
        return {"method": "fax" if bad else "google", "at": "2025-01-01T00:00:00.000Z"}
    if event == "Subscription Renewed":
        return {"plan": "pro", "mrr": 49.0, "renewed_at": "yesterday" if bad else "2025-01-01T00:00:00Z"}
    if event == "Invoice Paid":
        return {"invoice_id": f"in{i}", **({} if bad else {"amount": 49.0, "currency": "EUR"})}
    if event == "Seat Added":
        return {"seats": 0 if bad else 2}
    return {"ping": i}


class JsonschemaPeer:
    """The peer: `jsonschema.Draft7Validator` per rule, compiled once, picked by (type, event)."""

    def __init__(self, rules: Sequence[dict]) -> None:
        checker = jsonschema.FormatChecker()

        @checker.checks("date-time", raises=ValueError)
        def _date_time(value: object) -> bool:  # jsonschema checks date-time only with rfc3339-validator
            if not isinstance(value, str):
                return True
            dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
            return "T" in value

        def compiled(rule: dict) -> jsonschema.Draft7Validator:
            jsonschema.Draft7Validator.check_schema(rule["jsonSchema"])
            return jsonschema.Draft7Validator(rule["jsonSchema"], format_checker=checker)

        self.common = [compiled(r) for r in rules if r["type"] == "COMMON"]
        self.by_type = {kind: self.common + [compiled(r) for r in rules if r["type"] == kind.upper()]
                        for kind in ("identify", "group")}
        self.by_event = {r["key"]: compiled(r) for r in rules if r["type"] == "TRACK"}

    def check(self, message: dict) -> tuple[list[Any], bool]:
        validators = self.by_type.get(message.get("type"), self.common)
        unplanned = False
        if message.get("type") == "track":
            event = self.by_event.get(message.get("event"))
            if event is None:
                unplanned = True
            else:
                validators = [*validators, event]
        errors: list[Any] = []
        for validator in validators:
            if not validator.is_valid(message):
                errors.extend(validator.iter_errors(message))
        return errors, unplanned


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--violating", type=float, default=0.01, help="share of calls that break the plan")
    parser.add_argument("--rounds", type=int, default=3, help="each figure is the best of this many rounds")
    args = parser.parse_args()
    n, rounds = args.messages, max(1, args.rounds)

    started = time.perf_counter()
    rules = build_rules()
    calls = build_calls(n, args.violating)
    texts = [prepare_call(call, sync=SYNC, record_key=call["userId"])[1].decode()  # as `iter_pending` yields
             for call in calls]
    print(f"setup: {n:,} calls (~{sum(map(len, texts)) / n:.0f} bytes each: {n // 2:,} identify, the rest "
          f"track), a plan of {len(rules)} rules, in {time.perf_counter() - started:.1f}s", flush=True)

    began = time.perf_counter()
    plan = TrackingPlan.from_rules(rules, name="Bench")
    ours_compile = time.perf_counter() - began
    began = time.perf_counter()
    peer = JsonschemaPeer(rules)
    peer_compile = time.perf_counter() - began

    ledger = Ledger(duckdb.connect())
    planning = []
    for round_ in range(rounds):
        sync = f"{SYNC}_{round_}"  # a fresh sync each round: planning inserts only new messageIds
        began = time.perf_counter()
        for start in range(0, n, 20_000):
            batch = []
            for call in calls[start:start + 20_000]:
                message_id, payload = prepare_call(call, sync=sync, record_key=call["userId"])
                batch.append(PlannedMessage(message_id, call["userId"], call["type"], payload))
            ledger.add_planned(sync, batch)
        planning.append(time.perf_counter() - began)
        print(f"planning the same calls in the ledger: {planning[-1]:.3f}s", flush=True)
    # The calls as dicts are the benchmark's, not a run's: kept, they would make every collection of the
    # garbage collector below walk them (the payloads are strings, which it does not walk).
    del calls
    gc.collect()

    def checking(check: Callable[[dict], tuple[list, bool]]) -> Callable[[], tuple[int, int]]:
        def run() -> tuple[int, int]:
            violating = unplanned = 0
            for text in texts:
                found, off_plan = check(orjson.loads(text))
                violating += bool(found)
                unplanned += off_plan
            return violating, unplanned
        return run

    def parse_only() -> tuple[int, int]:
        for text in texts:
            orjson.loads(text)
        return -1, -1

    def step() -> tuple[int, int]:
        report = check_pending(ledger, f"{SYNC}_0", plan, "warn")
        return report.violating, report.unplanned

    runs = (("parse only (orjson.loads)", parse_only),
            ("segment_ops: parse + TrackingPlan.check (jsonschema-rs)", checking(plan.check)),
            ("jsonschema peer: parse + Draft7Validator per rule", checking(peer.check)),
            ("check_pending, warn: DuckDB ledger -> parse -> check", step))
    figures: dict[str, tuple[float, tuple[int, int]]] = {}
    for label, work in runs:
        best, found = float("inf"), (0, 0)
        for _ in range(rounds):
            began = time.perf_counter()
            found = work()
            best = min(best, time.perf_counter() - began)
        figures[label] = (best, found)
        counted = f" (violating {found[0]:,}, unplanned {found[1]:,})" if found[0] >= 0 else ""
        print(f"{label}: {best:.3f}s{counted}", flush=True)

    parsed, ours, theirs, pending = figures.values()
    if not ours[1] == theirs[1] == pending[1]:
        raise SystemExit(f"the implementations disagree: segment_ops {ours[1]}, peer {theirs[1]}, "
                         f"check_pending {pending[1]} (violating, unplanned)")

    def us(seconds: float) -> float:
        return seconds / n * 1e6

    print(f"\n{n:,} calls, {ours[1][0]:,} violating, {ours[1][1]:,} unplanned; best of {rounds} round(s); "
          f"compiling the plan: segment_ops {ours_compile * 1e3:.1f} ms, peer {peer_compile * 1e3:.1f} ms")
    print(f"{'run':<62} {'seconds':>8} {'us/call':>8} {'calls/s':>10} {'vs peer':>8}")
    rows = [(label, seconds) for label, (seconds, _) in figures.items()]
    rows.append(("planning the same calls (prepare_call + Ledger.add_planned)", min(planning)))
    for label, seconds in rows:
        print(f"{label:<62} {seconds:>8.3f} {us(seconds):>8.2f} {n / seconds:>10,.0f} "
              f"{theirs[0] / seconds:>7.1f}x")
    budget, planned = 1e6 / FIRST_RUN_ROWS_PER_SECOND, us(min(planning))
    print()
    print(f"info  segment_ops checks {theirs[0] / ours[0]:.1f}x faster than the jsonschema peer "
          f"({us(ours[0]):.2f} against {us(theirs[0]):.2f} us a call, parsing included; parsing alone "
          f"{us(parsed[0]):.2f} us): validation proper {us(ours[0] - parsed[0]):.2f} against "
          f"{us(theirs[0] - parsed[0]):.2f} us, {(theirs[0] - parsed[0]) / (ours[0] - parsed[0]):.0f}x")
    print(f"info  check_pending adds {us(pending[0]):.2f} us a call to a run: {us(pending[0]) / budget:.0%} "
          f"of the {budget:.1f} us a row of a reverse-ETL first run takes ({FIRST_RUN_ROWS_PER_SECOND:,} "
          f"rows/s, README), {us(pending[0]) / planned:.0%} of planning the same calls here "
          f"({planned:.2f} us); the peer's loop would take {us(theirs[0]) / budget:.0%} of that time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
