"""What the Pendo emulator adds for this sync: the feature catalogue and the usage-drop control."""

from __future__ import annotations

from datetime import timedelta
from zoneinfo import ZoneInfo

from segment_ops.clients.pendo import AppScope, PendoClient, day_range_source, local_midnight_ms
from segment_ops.config import SANDBOX_PENDO_INTEGRATION_KEY
from segment_ops_tests.pendo.conftest import ZONE, yesterday

KEY = {"x-pendo-integration-key": SANDBOX_PENDO_INTEGRATION_KEY}


def events_of(client, account_id, first, days):
    pipeline = [day_range_source("events", first, days, ZONE, apps=AppScope())]
    return [r for r in client.aggregate(pipeline) if r["accountId"] == account_id]


def day_ms(day):
    return local_midnight_ms(day, ZONE)


def test_the_feature_endpoint_lists_the_tagged_features(sandbox_http):
    response = sandbox_http.get("/pendo/api/v1/feature", headers=KEY)

    assert response.status_code == 200
    features = response.json()
    assert len(features) == 8 and features[0] == {"id": features[0]["id"], "name": "Create Report",
                                                  "kind": "Feature", "appId": -323232}


def test_the_feature_endpoint_needs_the_integration_key(sandbox_http):
    assert sandbox_http.get("/pendo/api/v1/feature").status_code == 401


def test_a_usage_drop_removes_the_accounts_usage_from_that_day_on(clean_sandbox, pendo_client):
    first = yesterday() - timedelta(days=9)
    before = events_of(pendo_client, "acc_00001", first, 10)
    drop_day = yesterday() - timedelta(days=4)

    clean_sandbox.pendo_usage_drop("acc_00001", str(drop_day))

    after = events_of(pendo_client, "acc_00001", first, 10)
    assert [r for r in before if r["day"] < day_ms(drop_day)] == after
    assert any(r["day"] >= day_ms(drop_day) for r in before)


def test_a_partial_usage_drop_scales_events_down(clean_sandbox, pendo_client):
    first = yesterday() - timedelta(days=2)
    before = sum(r["numEvents"] for r in events_of(pendo_client, "acc_00001", first, 3))

    clean_sandbox.pendo_usage_drop("acc_00001", str(first), factor=0.5)

    after = sum(r["numEvents"] for r in events_of(pendo_client, "acc_00001", first, 3))
    assert 0 < after <= before / 2


def test_a_reset_ends_the_usage_drop(clean_sandbox, pendo_client):
    first = yesterday() - timedelta(days=2)
    before = events_of(pendo_client, "acc_00001", first, 3)
    clean_sandbox.pendo_usage_drop("acc_00001", str(first))

    clean_sandbox.reset()

    assert events_of(pendo_client, "acc_00001", first, 3) == before


def test_a_malformed_usage_drop_request_is_a_400(sandbox_http):
    response = sandbox_http.post("/__sandbox__/pendo/usage-drop",
                                 json={"accountId": "acc_00001", "from_day": "May 4"})

    assert response.status_code == 400 and "from_day" in response.json()["error"]


def test_a_usage_drop_starts_at_the_subscriptions_own_midnight(sandbox_factory):
    # A zone ahead of UTC: the drop's day starts at Tokyo midnight (15:00 UTC the day before), not at UTC's.
    tokyo, zone = sandbox_factory(pendo_timezone="Asia/Tokyo"), ZoneInfo("Asia/Tokyo")
    client = PendoClient(f"{tokyo.url}/pendo", SANDBOX_PENDO_INTEGRATION_KEY)
    first = yesterday() - timedelta(days=9)
    drop_day = yesterday() - timedelta(days=4)

    def events(account_id: str) -> list[dict]:
        pipeline = [day_range_source("events", first, 10, zone, apps=AppScope())]
        return [r for r in client.aggregate(pipeline) if r["accountId"] == account_id]

    before = events("acc_00001")
    tokyo.pendo_usage_drop("acc_00001", str(drop_day))
    after = events("acc_00001")
    client.close()

    cut = local_midnight_ms(drop_day, zone)
    assert any(r["day"] >= cut for r in before)
    assert [r for r in before if r["day"] < cut] == after
