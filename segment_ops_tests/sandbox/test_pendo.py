"""The Pendo API emulator over real HTTP (spec §4)."""

from __future__ import annotations

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
