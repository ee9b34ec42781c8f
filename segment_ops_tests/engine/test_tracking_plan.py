"""Tracking plans (Segment Protocols): planned calls checked against the plan's JSON Schema rules before they
are sent; `warn` reports, `block` rejects with the schema error as the reason."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import orjson
import pytest

from segment_ops.clients.segment_public_api import SegmentPublicApiClient
from segment_ops.config import SANDBOX_SEGMENT_PUBLIC_API_TOKEN, SANDBOX_SEGMENT_WRITE_KEY
from segment_ops.engine.calls import prepare_call
from segment_ops.engine.ledger import COMPACTED, CompactedPayloadError, Ledger, PlannedMessage
from segment_ops.engine.tracking_plan import (
    InvalidRule,
    SourceNotFound,
    TrackingPlan,
    Violation,
    check_pending,
    load_for_source,
)
from segment_ops.sandbox.segment.data import DEMO_TRACKING_PLAN_ID
from segment_ops.sandbox.server import RunningSandbox

DRAFT_07 = "http://json-schema.org/draft-07/schema#"


def schema(**top: dict) -> dict:
    """A rule's jsonSchema as Segment publishes them: the whole call, with `properties`, `traits` and
    `context` at the top."""
    return {"$schema": DRAFT_07, "type": "object", "properties": top}


ORDER_COMPLETED = {
    "type": "TRACK", "key": "Order Completed", "version": 1,
    "jsonSchema": schema(properties={
        "type": "object", "required": ["total", "currency"],
        "properties": {"total": {"type": "number"}, "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
                       "products": {"type": "array", "items": {
                           "type": "object", "properties": {"price": {"type": "number"}}}}}}),
}
IDENTIFY = {
    "type": "IDENTIFY", "version": 1,
    "jsonSchema": schema(traits={"type": "object", "properties": {
        "email": {"type": "string", "format": "email"}, "plan": {"enum": ["free", "pro"]},
        "seats": {"type": "integer", "minimum": 0}}}),
}
GROUP = {"type": "GROUP", "version": 1,
         "jsonSchema": schema(traits={"type": "object", "required": ["name"]})}
COMMON = {"type": "COMMON", "version": 1,
          "jsonSchema": schema(context={"type": "object", "properties": {"app": {"type": "object"}}})}
RULES = [COMMON, ORDER_COMPLETED, IDENTIFY, GROUP]


def order(**properties: object) -> dict:
    return {"type": "track", "userId": "u1", "event": "Order Completed",
            "properties": {"total": 12.5, "currency": "EUR", **properties}}


def test_a_track_rule_applies_by_event_and_names_rule_field_and_error():
    plan = TrackingPlan.from_rules(RULES, name="Web")

    assert plan.violations(order()) == []
    assert plan.violations(order(total="12.50")) == [
        Violation("Web", 'TRACK "Order Completed"', "properties.total", 'value is not of type "number"')]
    assert plan.violations(order(products=[{"price": 1}, {"price": "2"}])) == [
        Violation("Web", 'TRACK "Order Completed"', "properties.products[1].price",
                  'value is not of type "number"')]
    assert plan.events == {"Order Completed"}


def test_a_missing_required_property_and_an_unexpected_one_are_named_themselves():
    strict = dict(ORDER_COMPLETED, jsonSchema=schema(properties={
        "type": "object", "required": ["total"], "additionalProperties": False,
        "properties": {"total": {"type": "number"}}}))
    plan = TrackingPlan.from_rules([strict])

    found = plan.violations({"type": "track", "event": "Order Completed", "properties": {"coupon": "X"}})

    assert {(v.field, v.message) for v in found} == {
        ("properties.total", '"total" is a required property'),
        ("properties.coupon", "Additional properties are not allowed ('coupon' was unexpected)")}


def test_identify_and_group_rules_apply_to_their_calls_only():
    plan = TrackingPlan.from_rules(RULES)
    bad_traits = {"email": "not an address", "seats": -1}

    identify = plan.violations({"type": "identify", "userId": "u1", "traits": bad_traits})
    group = plan.violations({"type": "group", "userId": "u1", "groupId": "g1", "traits": bad_traits})
    track = plan.violations({"type": "track", "event": "Order Completed", "traits": bad_traits,
                             "properties": {"total": 1, "currency": "EUR"}})

    assert {(v.rule, v.field) for v in identify} == {("IDENTIFY", "traits.email"),
                                                     ("IDENTIFY", "traits.seats")}
    assert [(v.rule, v.field) for v in group] == [("GROUP", "traits.name")]
    assert track == []


def test_common_rules_apply_to_every_call_planned_or_not():
    plan = TrackingPlan.from_rules(RULES)
    context = {"app": "not an object"}

    for call in (order(), {"type": "identify", "userId": "u1"}, {"type": "alias", "previousId": "a"},
                 {"type": "track", "event": "Not In The Plan"}, {"type": "page", "name": "Home"}):
        assert [(v.rule, v.field) for v in plan.violations({**call, "context": context})] == [
            ("COMMON", "context.app")], call


def test_an_event_without_a_track_rule_is_unplanned_not_a_violation():
    plan = TrackingPlan.from_rules(RULES)

    unplanned = {"type": "track", "event": "Not In The Plan", "properties": {"total": "x"}}
    assert plan.check(unplanned) == ([], True)
    assert plan.check(order()) == ([], False)
    assert plan.check({"type": "identify", "userId": "u1"}) == ([], False)  # only events are planned
    assert plan.check({"type": "track", "event": ["not", "a", "name"]}) == ([], True)


def test_a_deprecated_rule_is_skipped_and_its_event_then_unplanned():
    deprecated = dict(ORDER_COMPLETED, deprecatedAt="2025-01-01T00:00:00Z")
    plan = TrackingPlan.from_rules([COMMON, deprecated])

    assert plan.check(order(total="12")) == ([], True)
    assert (plan.plans[0].rules, plan.plans[0].skipped) == (1, 1)


def test_a_rule_of_a_type_this_module_does_not_know_is_skipped_not_fatal():
    plan = TrackingPlan.from_rules([ORDER_COMPLETED, {"type": "ALIAS_V2", "version": 1, "jsonSchema": {}}])

    assert (plan.rules, plan.plans[0].skipped) == (1, 1)


def test_error_messages_never_hold_a_value_of_the_call():
    plan = TrackingPlan.from_rules(RULES)
    secret = "alice.secret@example.com"

    found = plan.violations({"type": "identify", "userId": "u1",
                             "traits": {"email": 42, "plan": secret, "seats": secret}})
    found += plan.violations(order(currency=secret, total=secret))

    assert len(found) == 5
    assert all(secret not in v.describe() and "42" not in v.describe() for v in found)
    assert 'value is not one of "free" or "pro"' in {v.message for v in found}


def test_plans_connected_to_one_source_merge_and_the_same_rule_is_checked_once():
    stricter = dict(ORDER_COMPLETED, jsonSchema=schema(properties={"type": "object", "required": ["coupon"]}))
    plan = TrackingPlan([({"id": "tp_web", "name": "Web"}, [ORDER_COMPLETED, IDENTIFY]),
                         ({"id": "tp_fin", "name": "Finance"}, [stricter, IDENTIFY])])

    found = plan.violations(order(total="12"))
    identify = plan.violations({"type": "identify", "userId": "u1", "traits": {"seats": -1}})

    assert {(v.plan, v.field) for v in found} == {("Web", "properties.total"),
                                                  ("Finance", "properties.coupon")}
    assert len(identify) == 1  # IDENTIFY is in both plans, unchanged: one violation, not two
    assert [(p.id, p.rules) for p in plan.plans] == [("tp_web", 2), ("tp_fin", 2)]
    assert plan.describe() == ("tracking plan 'Web' (tp_web, 2 rules) + tracking plan 'Finance' "
                               "(tp_fin, 2 rules)")


def test_a_call_is_checked_against_the_event_version_it_names():
    v2 = dict(ORDER_COMPLETED, version=2,
              jsonSchema=schema(properties={"type": "object", "required": ["tax"]}))
    plan = TrackingPlan.from_rules([ORDER_COMPLETED, v2])

    def fields(version: object) -> list[str]:
        context = {} if version is None else {"context": {"protocols": {"event_version": version}}}
        return [v.field for v in plan.violations({**order(total="12"), **context})]

    assert fields(None) == ["properties.total"]  # no version named: version 1
    assert fields(2) == ["properties.tax"]
    assert fields("2") == ["properties.tax"]
    assert fields(7) == ["properties.tax"]  # a version the plan lacks: the latest


def test_a_schema_without_dollar_schema_is_read_as_draft_07_with_formats_checked():
    rule = {"type": "TRACK", "key": "Signed Up", "version": 1, "jsonSchema": {
        "type": "object", "properties": {"properties": {"type": "object", "properties": {
            "at": {"type": "string", "format": "date-time"}}}}}}
    plan = TrackingPlan.from_rules([rule])

    call = {"type": "track", "event": "Signed Up", "properties": {"at": "yesterday"}}
    assert [(v.field, v.message) for v in plan.violations(call)] == [
        ("properties.at", 'value is not a "date-time"')]
    assert plan.violations({**call, "properties": {"at": "2025-06-01T12:00:00.000Z"}}) == []


def test_page_rules_apply_keyless_to_every_page_call_and_keyed_by_its_name():
    every_page = {"type": "PAGE", "version": 1, "jsonSchema": schema(properties={"required": ["path"]})}
    pricing = {"type": "PAGE", "key": "Pricing", "version": 1,
               "jsonSchema": schema(properties={"required": ["plan"]})}
    plan = TrackingPlan.from_rules([every_page, pricing])

    def rules(name: str) -> list[str]:
        return [v.rule for v in plan.violations({"type": "page", "name": name, "properties": {}})]

    assert rules("Home") == ["PAGE"]
    assert rules("Pricing") == ["PAGE", 'PAGE "Pricing"']
    assert plan.check({"type": "page", "name": "Home", "properties": {"path": "/"}}) == ([], False)


def test_a_rule_whose_schema_is_null_plans_its_event_and_checks_nothing():
    plan = TrackingPlan.from_rules([dict(ORDER_COMPLETED, jsonSchema=None)])

    assert plan.check(order(total="anything")) == ([], False)


@pytest.mark.parametrize(("rule", "why"), [
    (dict(ORDER_COMPLETED, jsonSchema={"type": "objekt"}), "its jsonSchema does not compile"),
    (dict(ORDER_COMPLETED, jsonSchema={"properties": {"total": {"pattern": "(["}}}), "does not compile"),
    (dict(ORDER_COMPLETED, jsonSchema={"$ref": "#/definitions/missing"}), "does not compile"),
    # A remote $ref is refused, not fetched on every run (compiled offline).
    (dict(ORDER_COMPLETED, jsonSchema={"$ref": "https://schemas.example.com/o.json"}), "does not compile"),
    (dict(ORDER_COMPLETED, jsonSchema=[1, 2]), "must be an object, got list"),
    (dict(ORDER_COMPLETED, jsonSchema="{not json"), "text that is not JSON"),
    (dict(ORDER_COMPLETED, version="1"), "version must be a whole number"),
    ({"type": "TRACK", "version": 1, "jsonSchema": {}}, "a TRACK rule needs a key"),
])
def test_a_malformed_rule_is_refused_when_the_plan_loads_naming_plan_and_rule(rule: dict, why: str):
    with pytest.raises(InvalidRule) as raised:
        TrackingPlan([({"id": "tp_1", "name": "Web"}, [COMMON, rule])])

    assert why in str(raised.value)
    assert str(raised.value).startswith("tracking plan 'Web': rule TRACK")
    assert raised.value.plan == "Web"


def test_a_rule_without_a_type_is_refused():
    with pytest.raises(InvalidRule, match=r"rule \? \"Order Completed\" cannot be used: it has no type"):
        TrackingPlan.from_rules([{"key": "Order Completed", "jsonSchema": {}}])


# --- load_for_source ------------------------------------------------------------------------------------

WRITE_KEY = "wk-secret-0123456789"


class FakePublicApi:
    """The Public API's tracking-plan endpoints as `SegmentPublicApiClient` yields them; records each call."""

    def __init__(self, connections: dict[str, list[str]], rules: dict[str, list[dict]]) -> None:
        self.connections, self.rules, self.calls = connections, rules, []

    def iter_sources(self) -> Iterator[dict]:
        self.calls.append(("sources",))
        yield {"id": "src_web", "name": "Web", "writeKeys": ["wk-web"]}
        yield {"id": "src_ops", "name": "segment-ops", "writeKeys": ["wk-old", WRITE_KEY]}

    def iter_tracking_plans(self) -> Iterator[dict]:
        self.calls.append(("plans",))
        for plan_id in self.connections:
            yield {"id": plan_id, "name": f"Plan {plan_id}", "type": "LIVE"}

    def iter_tracking_plan_sources(self, plan_id: str) -> Iterator[dict]:
        self.calls.append(("sources of", plan_id))
        for source_id in self.connections[plan_id]:
            yield {"id": source_id, "name": source_id}

    def iter_tracking_plan_rules(self, plan_id: str) -> Iterator[dict]:
        self.calls.append(("rules of", plan_id))
        yield from self.rules[plan_id]


def test_load_finds_the_source_by_write_key_and_merges_only_the_plans_connected_to_it():
    api = FakePublicApi({"tp_a": ["src_ops", "src_web"], "tp_b": ["src_web"], "tp_c": ["src_ops"]},
                        {"tp_a": [ORDER_COMPLETED], "tp_b": [IDENTIFY], "tp_c": [GROUP]})

    plan = load_for_source(api, write_key=WRITE_KEY)

    assert plan is not None and plan.source_id == "src_ops"
    assert [p.id for p in plan.plans] == ["tp_a", "tp_c"]
    assert ("rules of", "tp_b") not in api.calls  # a plan of another source: its rules are not read
    assert plan.violations({"type": "identify", "traits": {"seats": -1}}) == []
    assert [v.rule for v in plan.violations({"type": "group", "groupId": "g", "traits": {}})] == ["GROUP"]


def test_load_by_source_id_lists_no_sources_and_gives_none_without_a_connected_plan():
    api = FakePublicApi({"tp_a": ["src_web"]}, {"tp_a": [ORDER_COMPLETED]})

    assert load_for_source(api, source_id="src_ops") is None
    assert ("sources",) not in api.calls
    assert ("rules of", "tp_a") not in api.calls


def test_a_write_key_no_source_holds_is_an_error_that_never_shows_the_key(caplog: pytest.LogCaptureFixture):
    api = FakePublicApi({}, {})
    unknown = "wk-unknown-secret-987654"

    with caplog.at_level(logging.DEBUG), pytest.raises(SourceNotFound) as raised:
        load_for_source(api, write_key=unknown)

    assert "no source of the workspace holds the write key" in str(raised.value)
    assert "2 sources listed" in str(raised.value)
    assert unknown not in str(raised.value) and unknown not in repr(raised.value)
    assert unknown not in caplog.text


def test_a_malformed_rule_from_the_api_fails_the_load_naming_the_plan_and_rule():
    api = FakePublicApi({"tp_a": ["src_ops"]}, {"tp_a": [dict(ORDER_COMPLETED, jsonSchema={"type": 5})]})

    with pytest.raises(InvalidRule, match=r"tracking plan 'Plan tp_a': rule TRACK \"Order Completed\""):
        load_for_source(api, write_key=WRITE_KEY)


@pytest.mark.parametrize("given", [{}, {"write_key": WRITE_KEY, "source_id": "src_ops"}])
def test_load_needs_exactly_one_of_write_key_and_source_id(given: dict):
    with pytest.raises(ValueError, match="exactly one of write_key and source_id"):
        load_for_source(FakePublicApi({}, {}), **given)


# --- check_pending --------------------------------------------------------------------------------------

SYNC = "reverse_etl_orders"  # `ledger` (engine conftest): a ledger on a fresh staging file


def plan_calls(ledger: Ledger, calls: list[dict | bytes]) -> list[str]:
    """Plan `calls` in the ledger as a sync would (bytes: a payload as it is); returns their messageIds."""
    planned = []
    for i, call in enumerate(calls):
        if isinstance(call, bytes):
            planned.append(PlannedMessage(f"raw-{i}", f"k{i}", "track", call))
        else:
            message_id, payload = prepare_call(call, sync=SYNC, record_key=f"k{i}")
            planned.append(PlannedMessage(message_id, f"k{i}", call["type"], payload))
    ledger.add_planned(SYNC, planned, run_id="plan-run")
    return [p.message_id for p in planned]


def pending_ids(ledger: Ledger) -> list[str]:
    return [orjson.loads(payload)["messageId"] for chunk in ledger.iter_pending(SYNC) for _, payload in chunk]


CALLS = [
    order(),
    order(total="12.50"),
    order(total="1", currency="euro"),
    {"type": "identify", "userId": "u2", "traits": {"email": "bob@example.com", "seats": -3}},
    {"type": "identify", "userId": "u3", "traits": {"email": "carol@example.com"}},
    {"type": "track", "userId": "u4", "event": "Coupon Applied", "properties": {"code": "X"}},
    {"type": "track", "userId": "u5", "event": "Coupon Applied", "properties": {"code": "Y"}},
]


def test_warn_reports_violations_and_leaves_the_ledger_as_it_was(ledger: Ledger):
    ids = plan_calls(ledger, CALLS)
    plan = TrackingPlan.from_rules(RULES, name="Web")

    report = check_pending(ledger, SYNC, plan, "warn", run_id="r1")

    assert (report.checked, report.violating, report.blocked, report.unplanned) == (7, 3, 0, 2)
    assert dict(report.by_rule) == {('TRACK "Order Completed"', "properties.total"): 2,
                                    ('TRACK "Order Completed"', "properties.currency"): 1,
                                    ("IDENTIFY", "traits.seats"): 1}
    assert dict(report.unplanned_events) == {"Coupon Applied": 2}
    assert [(s.field, s.message_id) for s in report.samples] == [
        ("properties.total", ids[1]), ("properties.currency", ids[2]), ("traits.seats", ids[3])]
    assert not report.passed
    assert pending_ids(ledger) == ids
    assert ledger.counts(SYNC).rejected == 0
    assert ledger.rejected_rows(SYNC) == []


def test_block_rejects_each_violating_message_with_the_schema_error_as_a_refused_message(ledger: Ledger):
    ids = plan_calls(ledger, CALLS)
    plan = TrackingPlan.from_rules(RULES, name="Web")

    report = check_pending(ledger, SYNC, plan, "block", run_id="r1")

    assert (report.violating, report.blocked, report.unplanned) == (3, 3, 2)
    assert pending_ids(ledger) == [ids[0], ids[4], ids[5], ids[6]]  # unplanned events are sent
    counts = ledger.counts(SYNC)
    assert (counts.pending, counts.rejected) == (4, 3)
    rows = {row.record_key: row for row in ledger.rejected_rows(SYNC)}
    assert rows["k1"].reason == ('rejected by tracking plan: TRACK "Order Completed" properties.total: '
                                 'value is not of type "number"')
    assert rows["k2"].reason == ('rejected by tracking plan: TRACK "Order Completed" properties.currency: '
                                 'value does not match "^[A-Z]{3}$"; TRACK "Order Completed" '
                                 'properties.total: value is not of type "number"')
    assert rows["k3"].reason == ("rejected by tracking plan: IDENTIFY traits.seats: value is less than the "
                                 "minimum of 0")
    assert all(row.source == "tracking plan" and row.run_id == "r1" and row.by_destination
               for row in rows.values())
    assert ledger.rejected_input_rows(SYNC) == 0  # refused as messages, not as input rows
    last_error = ledger.con.execute("SELECT last_error FROM ledger WHERE sync = ? AND record_key = 'k3'",
                                    [SYNC]).fetchone()[0]
    assert last_error == rows["k3"].reason
    again = check_pending(ledger, SYNC, plan, "block", run_id="r2")
    assert (again.checked, again.violating, again.blocked) == (4, 0, 0)


def test_block_works_window_by_window_over_a_set_larger_than_a_chunk(ledger: Ledger):
    calls = [order(total="bad") if i % 3 == 0 else order() for i in range(25)]
    plan_calls(ledger, calls)

    report = check_pending(ledger, SYNC, TrackingPlan.from_rules(RULES), "block", chunk_rows=4)

    assert (report.checked, report.violating, report.blocked) == (25, 9, 9)
    assert ledger.counts(SYNC).pending == 16
    assert len(report.samples) == 1  # one per (rule, field), however many messages break it


def test_samples_are_capped_and_hold_no_values(ledger: Ledger):
    secret = "dave.private@example.com"
    plan_calls(ledger, [{"type": "identify", "userId": f"u{i}",
                         "traits": {"email": secret, "plan": secret, "seats": secret}} for i in range(3)])

    report = check_pending(ledger, SYNC, TrackingPlan.from_rules(RULES), "warn", samples=2)

    assert len(report.samples) == 2
    shown = " ".join(map(str, report.samples)) + report.summary() + report.violations_markdown()
    assert secret not in shown and "dave" not in shown


def test_a_payload_that_is_not_a_json_object_is_a_violation_blocked_under_block(ledger: Ledger):
    plan_calls(ledger, [order(), b"{not json", b"[1, 2]"])

    report = check_pending(ledger, SYNC, TrackingPlan.from_rules(RULES), "block")

    assert (report.checked, report.unreadable, report.violating, report.blocked) == (3, 2, 2, 2)
    reasons = {row.record_key: row.reason for row in ledger.rejected_rows(SYNC)}
    assert reasons["k1"].startswith("rejected by tracking plan: payload: not JSON (")
    assert reasons["k2"] == "rejected by tracking plan: payload: not a JSON object but list"
    assert report.as_metadata()["tracking_plan_unreadable"] == 2


def test_a_planned_message_whose_payload_was_compacted_stops_the_check_as_it_would_stop_delivery(
        ledger: Ledger):
    plan_calls(ledger, [order(total="bad"), order()])
    ledger.con.execute(f"UPDATE planned_messages SET payload = '{COMPACTED}' || md5(payload) WHERE seq = 2")

    with pytest.raises(CompactedPayloadError, match="lost their payload to compaction"):
        check_pending(ledger, SYNC, TrackingPlan.from_rules(RULES), "block")

    assert ledger.counts(SYNC).rejected == 0  # nothing of the window was written


def test_seqs_limit_the_check_to_the_window_one_planning_added(ledger: Ledger):
    plan_calls(ledger, [order(total="bad")])
    message_id, payload = prepare_call(order(total="bad", n=2), sync=SYNC)
    later = ledger.add_planned(SYNC, [PlannedMessage(message_id, "k9", "track", payload)])

    report = check_pending(ledger, SYNC, TrackingPlan.from_rules(RULES), "block", seqs=later.seqs)

    assert (report.checked, report.blocked) == (1, 1)
    assert [row.record_key for row in ledger.rejected_rows(SYNC)] == ["k9"]
    assert ledger.counts(SYNC).pending == 1  # the earlier window's message: not looked at


@pytest.mark.parametrize("policy", ["off", "warn", "block"])
def test_no_plan_or_policy_off_reads_nothing(ledger: Ledger, policy: str):
    plan_calls(ledger, [order(total="bad")])
    plan = TrackingPlan.from_rules(RULES) if policy == "off" else None

    report = check_pending(ledger, SYNC, plan, policy)

    assert (report.checked, report.violating) == (0, 0)
    assert ledger.counts(SYNC).pending == 1


def test_an_unknown_policy_is_refused_naming_the_policies(ledger: Ledger):
    with pytest.raises(ValueError, match="must be one of off, warn, block, not 'strict'"):
        check_pending(ledger, SYNC, TrackingPlan.from_rules(RULES), "strict")


def test_the_summary_and_metadata_name_sync_rule_event_and_field(ledger: Ledger):
    plan_calls(ledger, CALLS)

    report = check_pending(ledger, SYNC, TrackingPlan.from_rules(RULES, name="Web"), "block")

    assert report.summary() == (
        "sync 'reverse_etl_orders': 3 of 7 calls violate 'Web', blocked: "
        'TRACK "Order Completed" properties.total (2); TRACK "Order Completed" properties.currency (1); '
        "IDENTIFY traits.seats (1); 2 calls of unplanned events")
    metadata = report.as_metadata()
    assert {k: metadata[k] for k in ("tracking_plan_policy", "tracking_plan", "tracking_plan_checked",
                                     "tracking_plan_violating", "tracking_plan_blocked",
                                     "tracking_plan_unplanned")} == {
        "tracking_plan_policy": "block", "tracking_plan": "Web", "tracking_plan_checked": 7,
        "tracking_plan_violating": 3, "tracking_plan_blocked": 3, "tracking_plan_unplanned": 2}
    table = report.violations_markdown()
    assert '| TRACK "Order Completed" | properties.total | 2 |' in table
    assert "Coupon Applied (2)" in table


def test_a_clean_run_says_so(ledger: Ledger):
    plan_calls(ledger, [order()])

    report = check_pending(ledger, SYNC, TrackingPlan.from_rules(RULES, name="Web"), "warn")

    assert report.passed
    assert report.summary() == "sync 'reverse_etl_orders': 1 call checked against 'Web': no violations"
    assert report.violations_markdown() == "No violations of Web in 1 call."


# --- against the sandbox's Public API -----------------------------------------------------------------


@pytest.mark.slow
def test_the_plan_of_the_sync_source_is_read_from_the_public_api_and_blocks_what_breaks_it(
        clean_sandbox: RunningSandbox, ledger: Ledger):
    client = SegmentPublicApiClient(f"{clean_sandbox.url}/segmentapis", SANDBOX_SEGMENT_PUBLIC_API_TOKEN)
    try:
        plan = load_for_source(client, write_key=SANDBOX_SEGMENT_WRITE_KEY)
        assert plan is not None
        # Only the plan connected to the sync's source, not the web app's.
        assert [p.id for p in plan.plans] == [DEMO_TRACKING_PLAN_ID]
        plan_calls(ledger, [
            {"type": "identify", "userId": "u1", "traits": {"email": "a@example.com", "country": "DE"}},
            {"type": "track", "userId": "u1", "event": "Order Completed",
             "properties": {"order_id": "ord_1", "revenue": 10.5, "currency": "JPY"}},
            {"type": "track", "userId": "u1", "event": "Signed Up", "properties": {"plan": "gold"}},
        ])

        report = check_pending(ledger, SYNC, plan, "block", run_id="r1")

        assert (report.checked, report.blocked, report.unplanned) == (3, 1, 1)  # Signed Up: the web plan's
        [row] = ledger.rejected_rows(SYNC)
        assert row.reason.startswith('rejected by tracking plan: TRACK "Order Completed" '
                                     "properties.currency: value is not one of")
        # A rule changed at Segment is what the next load enforces.
        client.replace_tracking_plan_rules(DEMO_TRACKING_PLAN_ID, [
            {"type": "IDENTIFY", "version": 1, "jsonSchema": {
                "type": "object", "properties": {"traits": {"type": "object", "required": ["plan"]}}}}])
        changed = load_for_source(client, source_id=plan.source_id)
        assert changed is not None and changed.events == frozenset()
        assert [(v.rule, v.field) for v in changed.violations(
            {"type": "identify", "userId": "u1", "traits": {}})] == [("IDENTIFY", "traits.plan")]
    finally:
        client.close()


def test_a_write_key_of_no_source_of_the_sandbox_workspace_is_refused_without_showing_it(
        clean_sandbox: RunningSandbox):
    client = SegmentPublicApiClient(f"{clean_sandbox.url}/segmentapis", SANDBOX_SEGMENT_PUBLIC_API_TOKEN)
    try:
        with pytest.raises(SourceNotFound) as raised:
            load_for_source(client, write_key="not-a-write-key-of-this-workspace")
    finally:
        client.close()

    assert "not-a-write-key" not in str(raised.value)
