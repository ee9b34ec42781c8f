"""The Pendo API emulator over real HTTP (spec §4)."""

from __future__ import annotations

from datetime import UTC, datetime, time
from zoneinfo import ZoneInfo

import httpx
import pytest

from segment_ops.config import SANDBOX_PENDO_INTEGRATION_KEY

KEY = {"x-pendo-integration-key": SANDBOX_PENDO_INTEGRATION_KEY}


def aggregation(*stages: dict) -> dict:
    return {"response": {"mimeType": "application/json"}, "request": {"pipeline": list(stages)}}


def post(http: httpx.Client, body: dict, headers: dict | None = None) -> httpx.Response:
    return http.post("/pendo/api/v1/aggregation", json=body, headers=KEY if headers is None else headers)


def test_accounts_aggregation_returns_results(sandbox_http, clean_sandbox):
    body = aggregation(
        {"source": {"accounts": None}},
        {"identified": "accountId"},
        {"select": {"accountId": "accountId", "lastvisit": "metadata.auto.lastvisit"}},
    )

    response = post(sandbox_http, body)

    assert response.status_code == 200
    results = response.json()["results"]
    assert results and set(results[0]) == {"accountId", "lastvisit"}
    assert clean_sandbox.received("pendo") == [body]


def test_event_source_with_time_series(sandbox_http):
    body = aggregation(
        {"source": {"events": None, "timeSeries": {"period": "dayRange", "first": "now()", "count": -7}}},
        {"group": {"group": ["accountId"], "fields": {"minutes": {"sum": "numMinutes"}}}},
    )

    response = post(sandbox_http, body)

    assert response.status_code == 200
    assert response.json()["results"] and "minutes" in response.json()["results"][0]


def test_poll_answers_filtered_by_source_argument(sandbox_http):
    body = aggregation({"source": {"pollsSeenEver": {"guideId": "no-such-guide", "pollId": "p"}}})

    response = post(sandbox_http, body)

    assert response.status_code == 200 and response.json()["results"] == []


def test_bad_pipeline_is_400_plain_text(sandbox_http):
    response = post(sandbox_http, aggregation({"source": {"nope": None}}))

    assert response.status_code == 400
    assert response.headers["content-type"].startswith("text/plain")
    assert "nope" in response.text


def test_event_source_without_demo_data_is_400(sandbox_http):
    source = {"guideEvents": None, "timeSeries": {"period": "dayRange", "first": "now()", "count": -1}}

    assert post(sandbox_http, aggregation({"source": source})).status_code == 400


@pytest.mark.parametrize(("headers", "status"), [({}, 401), ({"x-pendo-integration-key": "wrong"}, 403)])
def test_missing_or_wrong_key(sandbox_http, headers, status):
    assert (
        post(sandbox_http, aggregation({"source": {"accounts": None}}), headers=headers).status_code == status
    )


def test_content_type_must_be_json(sandbox_http):
    response = sandbox_http.post(
        "/pendo/api/v1/aggregation", content=b"{}", headers={**KEY, "Content-Type": "text/plain"}
    )

    assert response.status_code == 400


def test_account_and_visitor_entities(sandbox_http):
    rows = post(sandbox_http, aggregation({"source": {"visitors": None}}, {"identified": "visitorId"})).json()
    visitor = rows["results"][0]

    response = sandbox_http.get(f"/pendo/api/v1/visitor/{visitor['visitorId']}", headers=KEY)
    account = sandbox_http.get(f"/pendo/api/v1/account/{visitor['accountId']}", headers=KEY)

    assert response.status_code == 200
    assert response.json() == {"id": visitor["visitorId"], "metadata": visitor["metadata"]}
    assert account.status_code == 200 and set(account.json()["metadata"]) == {"auto", "agent", "custom"}


def test_unknown_entity_is_404(sandbox_http):
    assert sandbox_http.get("/pendo/api/v1/account/no-such-account", headers=KEY).status_code == 404


def test_leaky_bucket_throttles_with_429(sandbox_factory):
    limited = sandbox_factory(pendo_rate_limit=1)
    with httpx.Client(base_url=limited.url) as http:
        statuses = [http.get("/pendo/api/v1/account/x", headers=KEY) for _ in range(3)]

    assert [r.status_code for r in statuses] == [404, 429, 429]
    assert int(statuses[1].headers["Retry-After"]) >= 1


# --- the subscription's time zone and its apps (spec §7) ------------------------------------------------

DEFAULT_APP, IOS_APP, ANDROID_APP = -323232, 5668600916475904, 5715999741083648


def events(http: httpx.Client, app_id: object = None, days: int = 3) -> list[dict]:
    source: dict = {"events": None if app_id is None else {"appId": app_id},
                    "timeSeries": {"period": "dayRange", "first": "now()", "count": -days}}
    response = post(http, aggregation({"source": source}))
    assert response.status_code == 200, response.text
    return response.json()["results"]


def test_days_start_at_new_york_midnight_the_sandbox_subscriptions_zone(sandbox_http):
    rows = events(sandbox_http, 'expandAppIds("*")')

    new_york = ZoneInfo("America/New_York")
    starts = {datetime.fromtimestamp(r["day"] / 1000, UTC).astimezone(new_york).time() for r in rows}
    assert rows and starts == {time(0, 0)}


def test_without_app_id_an_event_source_answers_for_the_default_app_only(sandbox_http):
    assert {r["appId"] for r in events(sandbox_http)} == {DEFAULT_APP}


def test_expand_app_ids_star_answers_for_every_app_and_each_row_names_its_app(sandbox_http):
    everything = events(sandbox_http, 'expandAppIds("*")')

    assert {r["appId"] for r in everything} == {DEFAULT_APP, IOS_APP, ANDROID_APP}
    default_only = events(sandbox_http)
    assert [r for r in everything if r["appId"] == DEFAULT_APP] == default_only
    assert sum(r["numEvents"] for r in everything) > sum(r["numEvents"] for r in default_only)


def test_named_app_ids_answer_for_those_apps_only(sandbox_http):
    assert {r["appId"] for r in events(sandbox_http, [str(IOS_APP), ANDROID_APP])} == {IOS_APP, ANDROID_APP}
    assert {r["appId"] for r in events(sandbox_http, IOS_APP)} == {IOS_APP}
    assert events(sandbox_http, [12345]) == []  # an app the subscription does not have


def test_a_malformed_app_id_is_a_400(sandbox_http):
    source = {"events": {"appId": "web app"},
              "timeSeries": {"period": "dayRange", "first": "now()", "count": -1}}

    response = post(sandbox_http, aggregation({"source": source}))

    assert response.status_code == 400 and "appId" in response.text


def test_accounts_belong_to_the_subscription_whatever_the_app_id(sandbox_http):
    plain = post(sandbox_http, aggregation({"source": {"accounts": None}})).json()["results"]
    every_app = {"accounts": {"appId": 'expandAppIds("*")'}}
    expanded = post(sandbox_http, aggregation({"source": every_app})).json()

    assert plain and expanded["results"] == plain


def test_the_feature_list_is_the_default_apps_unless_expanded(sandbox_http):
    default = sandbox_http.get("/pendo/api/v1/feature", headers=KEY).json()
    expanded = sandbox_http.get("/pendo/api/v1/feature", params={"expand": "*"}, headers=KEY).json()

    assert {f["appId"] for f in default} == {DEFAULT_APP} and len(default) == 8
    assert {f["appId"] for f in expanded} == {DEFAULT_APP, IOS_APP, ANDROID_APP} and len(expanded) == 14
    assert expanded[:8] == default


def test_an_unknown_expand_value_is_a_400(sandbox_http):
    response = sandbox_http.get("/pendo/api/v1/feature", params={"expand": "apps"}, headers=KEY)
    assert response.status_code == 400
