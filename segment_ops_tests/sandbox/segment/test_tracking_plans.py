"""The Public API double's tracking plans (spec §2) over real HTTP: the demo plans, their sources and rules
(which the shipped reverse-ETL models' calls pass), replacing rules, and Segment's errors and rate limit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import httpx
import jsonschema_rs
import pytest

from segment_ops.config import SANDBOX_SEGMENT_PUBLIC_API_TOKEN, SANDBOX_SEGMENT_WRITE_KEY
from segment_ops.sandbox.segment.data import DEMO_TRACKING_PLAN_ID, WEB_TRACKING_PLAN_ID

AUTH = {"Authorization": f"Bearer {SANDBOX_SEGMENT_PUBLIC_API_TOKEN}"}
PLANS = "/segmentapis/tracking-plans"
RULE = {"type": "TRACK", "key": "Order Completed", "version": 2, "jsonSchema": {
    "$schema": "http://json-schema.org/draft-07/schema#", "type": "object", "required": ["properties"],
    "properties": {"properties": {"type": "object", "required": ["coupon"],
                                  "properties": {"coupon": {"type": "string"}}}}}}


def get(http: httpx.Client, path: str, headers: dict | None = None, **params: object) -> httpx.Response:
    return http.get(path, params={"pagination.count": 200, **params},
                    headers=AUTH if headers is None else headers)


def walk(http: httpx.Client, path: str, key: str, count: int) -> list[dict]:
    items, cursor = [], None
    while True:
        data = get(http, path, **{"pagination.count": count},
                   **({"pagination.cursor": cursor} if cursor else {})).json()["data"]
        items += data[key]
        cursor = data["pagination"].get("next")
        if not cursor:
            return items


def put_rules(http: httpx.Client, plan_id: str, body: object, headers: dict | None = None) -> httpx.Response:
    return http.put(f"{PLANS}/{plan_id}/rules", json=body, headers=AUTH if headers is None else headers)


def the_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    [error] = response.json()["errors"]
    assert error["status"] == status and error["type"] == "RequestError" and error["message"]
    return error


def test_the_workspace_lists_its_live_plans(sandbox_http):
    plans = get(sandbox_http, PLANS).json()["data"]["trackingPlans"]

    assert {p["id"]: p["name"] for p in plans} == {DEMO_TRACKING_PLAN_ID: "segment-ops reverse ETL",
                                                   WEB_TRACKING_PLAN_ID: "Web Tracking Plan"}
    fields = {"id", "name", "slug", "description", "type", "createdAt", "updatedAt"}
    assert all(set(p) == fields for p in plans)
    assert [p["id"] for p in get(sandbox_http, PLANS, type="LIVE").json()["data"]["trackingPlans"]] == [
        p["id"] for p in plans]
    assert get(sandbox_http, PLANS, type="TEMPLATE").json()["data"]["trackingPlans"] == []


def test_a_plan_reads_back_by_id(sandbox_http):
    response = sandbox_http.get(f"{PLANS}/{DEMO_TRACKING_PLAN_ID}", headers=AUTH)

    assert response.status_code == 200
    assert response.json()["data"]["trackingPlan"]["type"] == "LIVE"


def test_the_demo_plan_is_connected_to_the_source_the_models_send_with(sandbox_http):
    [source] = get(sandbox_http, f"{PLANS}/{DEMO_TRACKING_PLAN_ID}/sources").json()["data"]["sources"]
    [web] = get(sandbox_http, f"{PLANS}/{WEB_TRACKING_PLAN_ID}/sources").json()["data"]["sources"]

    assert source["writeKeys"] == [SANDBOX_SEGMENT_WRITE_KEY] and source["id"] == "src_segment_ops"
    assert {"id", "slug", "name", "workspaceId", "enabled", "writeKeys", "metadata", "labels"} <= set(source)
    assert web["id"] == "src_web_app"


def test_pages_of_one_walk_every_rule_once(sandbox_http):
    everything = get(sandbox_http, f"{PLANS}/{DEMO_TRACKING_PLAN_ID}/rules").json()["data"]["rules"]

    rules = walk(sandbox_http, f"{PLANS}/{DEMO_TRACKING_PLAN_ID}/rules", "rules", 1)

    assert rules == everything
    assert [(r["type"], r.get("key")) for r in rules] == [
        ("COMMON", None), ("IDENTIFY", None), ("GROUP", None), ("TRACK", "Order Completed")]
    assert all(r["version"] == 1 and r["jsonSchema"]["type"] == "object" for r in rules)


def rules_of(rules: list[dict], call: dict) -> list[dict]:
    """The rules Protocols applies to a call: COMMON, and its type's (a TRACK rule by its event)."""
    kind = call["type"].upper()
    return [r for r in rules if r["type"] == "COMMON"
            or (r["type"] == kind and (kind != "TRACK" or r.get("key") == call.get("event")))]


@pytest.mark.slow  # previews the three models in subprocesses
def test_every_call_of_the_shipped_models_passes_the_demo_plan(warehouse, sandbox_http):
    rules = get(sandbox_http, f"{PLANS}/{DEMO_TRACKING_PLAN_ID}/rules").json()["data"]["rules"]
    validators = {id(r): jsonschema_rs.validator_for(r["jsonSchema"], validate_formats=True) for r in rules}
    calls = []
    for model in ("user_traits", "account_traits", "completed_orders"):
        done = subprocess.run([sys.executable, "-m", "segment_ops.cli", "models", "preview", model, "--json",
                               "--limit", "100000"], capture_output=True, text=True, env=dict(os.environ),
                              timeout=120, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, done.stderr
        preview = json.loads(done.stdout)
        assert len(preview["sample_payloads"]) == preview["would_send"] > 0
        calls += preview["sample_payloads"]

    failures = [(call, r["type"]) for call in calls for r in rules_of(rules, call)
                if not validators[id(r)].is_valid(call)]

    assert {len(rules_of(rules, call)) for call in calls} == {2}  # COMMON and the model's own rule
    assert failures == []
    # The rules do check: the same calls with a value of the wrong type fail.
    wrong = [{**call, "properties": {**call["properties"], "revenue": str(call["properties"]["revenue"])}}
             for call in calls if call["type"] == "track"][:3]
    assert wrong and all(not validators[id(r)].is_valid(call) for call in wrong
                         for r in rules_of(rules, call) if r["type"] == "TRACK")


def test_the_group_rule_lets_a_mirror_removal_clear_every_trait(sandbox_http):
    rules = get(sandbox_http, f"{PLANS}/{DEMO_TRACKING_PLAN_ID}/rules").json()["data"]["rules"]
    removal = {"type": "group", "userId": "usr_1", "groupId": "acc_00001", "traits": dict.fromkeys(
        ["name", "plan", "seats", "industry", "mrr", "created_at"])}
    bad = {**removal, "traits": {**removal["traits"], "seats": "12"}}

    [group] = [r for r in rules if r["type"] == "GROUP"]

    assert jsonschema_rs.validator_for(group["jsonSchema"]).is_valid(removal)
    assert not jsonschema_rs.validator_for(group["jsonSchema"]).is_valid(bad)


def test_replacing_the_rules_makes_them_the_plans_whole_rule_set(sandbox_http):
    before = datetime.now(UTC) - timedelta(seconds=1)

    response = put_rules(sandbox_http, DEMO_TRACKING_PLAN_ID, {"rules": [RULE]})

    assert response.status_code == 200 and response.json() == {"data": {"status": "SUCCESS"}}
    [rule] = get(sandbox_http, f"{PLANS}/{DEMO_TRACKING_PLAN_ID}/rules").json()["data"]["rules"]
    assert {k: rule[k] for k in RULE} == RULE
    assert datetime.fromisoformat(rule["createdAt"]) > before
    plan = sandbox_http.get(f"{PLANS}/{DEMO_TRACKING_PLAN_ID}", headers=AUTH).json()["data"]["trackingPlan"]
    assert plan["updatedAt"] == rule["updatedAt"]
    # The other plan is untouched.
    assert len(get(sandbox_http, f"{PLANS}/{WEB_TRACKING_PLAN_ID}/rules").json()["data"]["rules"]) == 2


def test_reset_restores_the_demo_rules(clean_sandbox, sandbox_http):
    assert put_rules(sandbox_http, DEMO_TRACKING_PLAN_ID, {"rules": []}).status_code == 200
    assert get(sandbox_http, f"{PLANS}/{DEMO_TRACKING_PLAN_ID}/rules").json()["data"]["rules"] == []

    clean_sandbox.reset()

    assert len(get(sandbox_http, f"{PLANS}/{DEMO_TRACKING_PLAN_ID}/rules").json()["data"]["rules"]) == 4


@pytest.mark.parametrize(("body", "field"), [
    ({}, "rules"),
    ({"rules": {"type": "TRACK"}}, "rules"),
    ({"rules": ["TRACK"]}, "rules[0]"),
    ({"rules": [{**RULE, "type": "EVENT"}]}, "rules[0].type"),
    ({"rules": [{**RULE, "key": None}]}, "rules[0].key"),
    ({"rules": [{**RULE, "key": 5}]}, "rules[0].key"),
    ({"rules": [{**RULE, "version": 0}]}, "rules[0].version"),
    ({"rules": [{**RULE, "version": "1"}]}, "rules[0].version"),
    ({"rules": [{**RULE, "jsonSchema": "{}"}]}, "rules[0].jsonSchema"),
    ({"rules": [{k: v for k, v in RULE.items() if k != "jsonSchema"}]}, "rules[0].jsonSchema"),
    ({"rules": [RULE, RULE]}, "rules[1]"),
])
def test_an_invalid_rule_set_is_422_naming_the_field_and_changes_nothing(sandbox_http, body, field):
    before = get(sandbox_http, f"{PLANS}/{DEMO_TRACKING_PLAN_ID}/rules").json()["data"]["rules"]

    assert the_error(put_rules(sandbox_http, DEMO_TRACKING_PLAN_ID, body), 422)["field"] == field
    assert get(sandbox_http, f"{PLANS}/{DEMO_TRACKING_PLAN_ID}/rules").json()["data"]["rules"] == before


def test_a_rule_set_that_is_not_json_is_400(sandbox_http):
    response = sandbox_http.put(f"{PLANS}/{DEMO_TRACKING_PLAN_ID}/rules", content=b"{rules", headers=AUTH)

    the_error(response, 400)


@pytest.mark.parametrize("path", ["", "/rules", "/sources"])
def test_an_unknown_plan_is_404(sandbox_http, path):
    response = sandbox_http.get(f"{PLANS}/tp_nope{path}", params={"pagination.count": 1}, headers=AUTH)

    assert the_error(response, 404)["field"] == "trackingPlanId"
    assert the_error(put_rules(sandbox_http, "tp_nope", {"rules": [RULE]}), 404)


@pytest.mark.parametrize(("path", "params", "status", "field"), [
    (PLANS, {"type": "LIVELY"}, 422, "type"),
    (PLANS, {"pagination.count": 201}, 400, "pagination.count"),
    (f"{PLANS}/{DEMO_TRACKING_PLAN_ID}/rules", {"pagination.cursor": "eyJzb3VyY2VzIjowfQ=="}, 400,
     "pagination.cursor"),  # another list's cursor
    (f"{PLANS}/{DEMO_TRACKING_PLAN_ID}/sources", {"pagination.count": "all"}, 400, "pagination.count"),
])
def test_a_bad_query_is_refused_naming_the_parameter(sandbox_http, path, params, status, field):
    assert the_error(get(sandbox_http, path, **params), status)["field"] == field


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer sgp_wrong"}])
def test_a_missing_or_wrong_token_is_401_and_changes_nothing(sandbox_http, headers):
    for path in (PLANS, f"{PLANS}/{DEMO_TRACKING_PLAN_ID}", f"{PLANS}/{DEMO_TRACKING_PLAN_ID}/rules",
                 f"{PLANS}/{DEMO_TRACKING_PLAN_ID}/sources"):
        the_error(get(sandbox_http, path, headers=headers), 401)
    the_error(put_rules(sandbox_http, DEMO_TRACKING_PLAN_ID, {"rules": []}, headers=headers), 401)

    assert len(get(sandbox_http, f"{PLANS}/{DEMO_TRACKING_PLAN_ID}/rules").json()["data"]["rules"]) == 4


def test_listing_rules_has_its_own_quota(sandbox_factory):
    limited = sandbox_factory(tracking_plan_rules_rate_limit_per_min=1)
    with httpx.Client(base_url=limited.url) as http:
        rules = [get(http, f"{PLANS}/{DEMO_TRACKING_PLAN_ID}/rules") for _ in range(2)]
        plans = get(http, PLANS)

    assert [r.status_code for r in rules] == [200, 429]
    [error] = rules[1].json()["errors"]
    assert error["message"] == "Too many requests" and error["data"]["consumedPoints"] == 1
    assert rules[1].headers["X-RateLimit-Remaining"] == "0"
    assert plans.status_code == 200 and plans.headers["X-RateLimit-Remaining"] == "599"
