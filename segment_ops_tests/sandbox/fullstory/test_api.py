"""The Fullstory Server API v2 users emulator over real HTTP (facts notes §1-4, spec §6)."""

from __future__ import annotations

import time

import httpx
import pytest

from segment_ops.config import SANDBOX_FULLSTORY_API_KEY

AUTH = {"Authorization": f"Basic {SANDBOX_FULLSTORY_API_KEY}"}  # the literal key, not base64


def create(http: httpx.Client, body: object, **headers: str) -> httpx.Response:
    return http.post("/fullstory/v2/users", json=body, headers=AUTH | headers)


def wait_for_job(http: httpx.Client, job_id: str, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status = http.get(f"/fullstory/v2/users/batch/{job_id}", headers=AUTH).json()
        if status["job"]["status"] != "PROCESSING" or time.monotonic() > deadline:
            return status
        time.sleep(0.05)


@pytest.mark.parametrize("authorization", [None, "Basic wrong-key", f"Bearer {SANDBOX_FULLSTORY_API_KEY}",
                                           "Basic c2FuZGJveC1mdWxsc3RvcnktYXBpLWtleTo="])  # base64 of "key:"
def test_a_request_without_the_literal_basic_key_is_401_in_fullstorys_shape(sandbox_http, authorization):
    headers = {"Authorization": authorization} if authorization else {}

    response = sandbox_http.post("/fullstory/v2/users", json={"uid": "u1"}, headers=headers)

    assert response.status_code == 401
    assert response.json() == {"message": "The API key is missing or invalid.", "code": "unauthorized"}


def test_create_answers_only_the_fullstory_id_and_get_reads_the_user_back(sandbox_http, clean_sandbox):
    response = create(sandbox_http, {"uid": "xyz123", "display_name": "Daniel Falko",
                                     "email": "daniel.falko@example.com",
                                     "properties": {"pricing_plan": "paid", "popup_help": True}})

    assert response.status_code == 200
    user_id = response.json()["id"]
    assert list(response.json()) == ["id"] and user_id.isdigit()
    user = sandbox_http.get(f"/fullstory/v2/users/{user_id}", headers=AUTH).json()
    assert user["uid"] == "xyz123" and user["email"] == "daniel.falko@example.com"
    assert user["properties"] == {"pricing_plan": "paid", "popup_help": True}
    assert user["is_being_deleted"] is False and user["app_url"].startswith("https://app.fullstory.com/ui/")
    assert clean_sandbox.received("fullstory")[0]["kind"] == "user"


def test_the_same_uid_updates_the_user_and_merges_its_properties(sandbox_http, clean_sandbox):
    first = create(sandbox_http, {"uid": "u-merge", "properties": {"plan": "free", "seats": 1}}).json()["id"]
    second = create(sandbox_http, {"uid": "u-merge", "properties": {"plan": "pro"}}).json()["id"]

    assert first == second
    [user] = clean_sandbox.fullstory_users(uid="u-merge")
    assert user["properties"] == {"plan": "pro", "seats": 1}
    assert clean_sandbox.stats()["fullstory"]["users_created"] == 1
    assert clean_sandbox.stats()["fullstory"]["users_updated"] == 1


def test_list_by_uid_has_fullstorys_shape_with_a_string_total(sandbox_http, clean_sandbox):
    create(sandbox_http, {"uid": "u-list"})

    listing = sandbox_http.get("/fullstory/v2/users", params={"uid": "u-list"}, headers=AUTH).json()

    assert list(listing) == ["results", "total_records", "next_page_token", "app_url"]
    assert listing["total_records"] == "1" and [u["uid"] for u in listing["results"]] == ["u-list"]
    empty = sandbox_http.get("/fullstory/v2/users", params={"uid": "nobody"}, headers=AUTH).json()
    assert empty["results"] == [] and empty["total_records"] == "0"


def test_the_demo_users_fullstory_saw_are_known_with_their_stream_ids(sandbox_http, clean_sandbox):
    demo = clean_sandbox.fullstory_users(include_demo=True)
    customer = next(u for u in demo if u["uid"].startswith("usr_"))

    again = create(sandbox_http, {"uid": customer["uid"], "properties": {"plan": "pro"}}).json()

    assert again["id"] == customer["id"]
    assert [u["uid"] for u in clean_sandbox.fullstory_users()] == [customer["uid"]]


def test_omitting_uid_creates_an_anonymous_user(sandbox_http, clean_sandbox):
    user_id = create(sandbox_http, {"properties": {"seen": True}}).json()["id"]

    assert sandbox_http.get(f"/fullstory/v2/users/{user_id}", headers=AUTH).json()["uid"] == ""


def test_a_uid_once_set_cannot_be_changed(sandbox_http, clean_sandbox):
    user_id = create(sandbox_http, {"uid": "fixed"}).json()["id"]

    response = sandbox_http.post(f"/fullstory/v2/users/{user_id}", json={"uid": "other"}, headers=AUTH)

    assert response.status_code == 400 and response.json()["code"] == "invalid_argument"


@pytest.mark.parametrize("body", [
    ["not", "an", "object"],
    {"uid": "u1", "properties": "plan=pro"},
    {"uid": "u1", "properties": {"1st_plan": "pro"}},
    {"uid": "u1", "properties": {"plan-name": "pro"}},
    {"uid": "u1", "properties": {"plan_str": "pro"}},  # v1 type suffixes must be omitted in v2
    {"uid": "u1", "properties": {"nested": {"bad key": 1}}},
    {"uid": "x" * 257},
    {"uid": "u1", "email": "e" * 129},
    {"uid": 42},
    {"uid": "u1", "traits": {}},
], ids=["not-object", "properties-not-object", "name-starts-with-digit", "name-with-dash", "v1-suffix",
        "nested-bad-name", "long-uid", "long-email", "uid-not-string", "unknown-field"])
def test_an_invalid_user_is_400_and_nothing_is_stored(sandbox_http, clean_sandbox, body):
    response = create(sandbox_http, body)

    assert response.status_code == 400
    assert set(response.json()) == {"message", "code"}
    assert clean_sandbox.fullstory_users() == [] and clean_sandbox.stats()["fullstory"]["received"] == 0


def test_a_value_over_8192_bytes_is_dropped_and_the_rest_kept(sandbox_http, clean_sandbox):
    assert create(sandbox_http, {"uid": "big", "properties": {"a": "x" * 9000, "b": 1}}).status_code == 200

    assert clean_sandbox.fullstory_users(uid="big")[0]["properties"] == {"b": 1}


def test_an_unknown_id_is_404(sandbox_http):
    response = sandbox_http.get("/fullstory/v2/users/1", headers=AUTH)

    assert response.status_code == 404 and response.json()["code"] == "user_not_found"


def test_delete_by_uid_forgets_the_user_and_needs_a_uid(sandbox_http, clean_sandbox):
    user_id = create(sandbox_http, {"uid": "gone"}).json()["id"]

    assert sandbox_http.delete("/fullstory/v2/users", params={"uid": "gone"}, headers=AUTH).status_code == 200
    assert sandbox_http.get(f"/fullstory/v2/users/{user_id}", headers=AUTH).status_code == 404
    missing = sandbox_http.delete("/fullstory/v2/users", headers=AUTH)
    assert missing.status_code == 400 and missing.json()["code"] == "required_field"


def test_an_idempotency_key_replays_the_first_answer_and_refuses_another_body(sandbox_http, clean_sandbox):
    first = create(sandbox_http, {"uid": "idem"}, **{"Idempotency-Key": "k1"})
    again = create(sandbox_http, {"uid": "idem"}, **{"Idempotency-Key": "k1"})
    other = create(sandbox_http, {"uid": "other"}, **{"Idempotency-Key": "k1"})

    assert again.json() == first.json()
    assert clean_sandbox.stats()["fullstory"]["received"] == 1
    assert other.status_code == 400
    assert clean_sandbox.seen("fullstory", "k1") == 3


def test_batch_job_runs_then_completes_with_its_imports(sandbox_http, clean_sandbox):
    requests = [{"uid": f"batch-{i}", "properties": {"n": i}} for i in range(3)]

    created = sandbox_http.post("/fullstory/v2/users/batch", json={"requests": requests}, headers=AUTH)

    assert created.status_code == 200
    job = created.json()["job"]
    assert job["status"] == "PROCESSING" and set(job) == {"id", "status", "created"}
    assert sandbox_http.get(f"/fullstory/v2/users/batch/{job['id']}/imports", headers=AUTH).status_code == 202
    status = wait_for_job(sandbox_http, job["id"])
    assert status["job"]["status"] == "COMPLETED" and status["imports"] == 3 and status["errors"] == 0
    assert "finished" in status["job"]
    imports = sandbox_http.get(f"/fullstory/v2/users/batch/{job['id']}/imports", headers=AUTH).json()
    assert [u["uid"] for u in imports["results"]] == ["batch-0", "batch-1", "batch-2"]
    assert imports["total_records"] == "3"
    assert {u["uid"] for u in clean_sandbox.fullstory_users()} == {"batch-0", "batch-1", "batch-2"}


def test_batch_items_that_fail_validation_fail_alone_and_the_job_is_failed(sandbox_http, clean_sandbox):
    bad = {"uid": "batch-bad", "properties": {"plan-name": "pro"}}
    requests = [{"uid": "batch-ok"}, bad, "not an object"]
    created = sandbox_http.post("/fullstory/v2/users/batch", json={"requests": requests}, headers=AUTH)
    job = created.json()["job"]

    status = wait_for_job(sandbox_http, job["id"])

    assert status["job"]["status"] == "FAILED"  # "the job has failures, including partial failures"
    assert (status["imports"], status["errors"]) == (1, 2)
    errors = sandbox_http.get(f"/fullstory/v2/users/batch/{job['id']}/errors", headers=AUTH).json()
    assert [e["user"] for e in errors["results"]] == [bad, "not an object"]
    assert all(set(e) == {"message", "code", "user"} for e in errors["results"])
    assert errors["total_records"] == "2"
    assert [u["uid"] for u in clean_sandbox.fullstory_users()] == ["batch-ok"]


@pytest.mark.parametrize("body", [{}, {"requests": []}, {"users": [{"uid": "a"}]},
                                  {"requests": {"uid": "a"}}])
def test_a_batch_without_requests_is_400(sandbox_http, clean_sandbox, body):
    response = sandbox_http.post("/fullstory/v2/users/batch", json=body, headers=AUTH)

    assert response.status_code == 400
    assert clean_sandbox.fullstory_jobs() == []


def test_a_batch_over_the_item_limit_is_400(sandbox_factory):
    small = sandbox_factory(fullstory_batch_max_items=2)
    with httpx.Client(base_url=small.url) as http:
        response = http.post("/fullstory/v2/users/batch", json={"requests": [{"uid": "a"}] * 3}, headers=AUTH)

    assert response.status_code == 400 and "limit is 2" in response.json()["message"]


def test_an_unknown_job_is_404(sandbox_http):
    assert sandbox_http.get("/fullstory/v2/users/batch/nope", headers=AUTH).status_code == 404


def test_rate_limit_answers_429_with_retry_after_in_fullstorys_shape(sandbox_factory):
    limited = sandbox_factory(fullstory_rate_limit=1.0, fullstory_rate_burst=2)
    with httpx.Client(base_url=limited.url) as http:
        answers = [create(http, {"uid": f"r{i}"}) for i in range(3)]

    assert [a.status_code for a in answers] == [200, 200, 429]
    assert answers[2].headers["Retry-After"] == "1"
    assert answers[2].json()["code"] == "too_many_requests"
    assert limited.stats()["fullstory"]["received"] == 2


def test_injected_faults_use_fullstorys_error_shape(sandbox_http, clean_sandbox):
    clean_sandbox.set_faults("fullstory", rate_429=1.0, retry_after_seconds=3)

    response = create(sandbox_http, {"uid": "faulted"})

    assert response.status_code == 429 and response.headers["Retry-After"] == "3"
    assert response.json()["code"] == "too_many_requests"
    assert clean_sandbox.stats()["fullstory"]["faults"] == {"429": 1}
    clean_sandbox.set_faults("fullstory", rate_500=1.0)
    assert create(sandbox_http, {"uid": "faulted"}).json()["code"] == "server_error"
    assert clean_sandbox.fullstory_users() == []


def test_reset_forgets_what_the_api_wrote(sandbox_http, clean_sandbox):
    create(sandbox_http, {"uid": "temporary"})

    clean_sandbox.reset()

    assert clean_sandbox.fullstory_users() == []
