"""The Fullstory users client and destination: upserts and batch import jobs against the sandbox's Fullstory
emulator, driven through the engine's `deliver_pending`; error paths the sandbox cannot produce (a job that
never finishes, a job that fails naming no one, a key refused with 403, paged errors) from small local apps.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from segment_ops.clients.base import PartialBatchError, RetryPolicy, VendorAuthError, VendorUnavailable
from segment_ops.clients.fullstory import (
    MAX_BATCH_ITEMS,
    FullstoryClient,
    FullstoryPayloadError,
    FullstoryUsersDestination,
    user_request,
)
from segment_ops.config import SANDBOX_FULLSTORY_API_KEY
from segment_ops.engine.delivery import DeliveryError, deliver_pending
from segment_ops.engine.ledger import Ledger, PlannedMessage
from segment_ops.engine.store import connect

SYNC = "fullstory_users"
FAST_RETRY = RetryPolicy(backoff_initial=0.01, backoff_max=0.05)
WRONG_KEY = "na1.wrong-5ecret-fullstory-key"


def identify(uid: str | None, **traits: object) -> bytes:
    call: dict = {"type": "identify", "traits": traits, "messageId": f"msg-{uid}",
                  "timestamp": "2026-12-01T00:00:00Z"}
    if uid is not None:
        call["userId"] = uid
    return orjson.dumps(call)


def users(count: int, prefix: str = "fs-user") -> list[bytes]:
    return [identify(f"{prefix}-{i:04d}", email=f"{prefix}-{i}@example.com", display_name=f"User {i}",
                     plan="pro", seats=i) for i in range(count)]


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    con = connect(tmp_path / "staging" / "fullstory.duckdb")
    yield Ledger(con)
    con.close()


def plan(ledger: Ledger, payloads: list[bytes]) -> None:
    ledger.add_planned(SYNC, [PlannedMessage(orjson.loads(p)["messageId"], orjson.loads(p).get("userId"),
                                             "identify", p) for p in payloads])


def counts(ledger: Ledger) -> tuple[int, int, int]:
    c = ledger.counts(SYNC)
    return c.pending, c.delivered, c.rejected


def sandbox_client(sandbox, key: str = SANDBOX_FULLSTORY_API_KEY) -> FullstoryClient:
    return FullstoryClient(f"{sandbox.url}/fullstory", key, retry=FAST_RETRY)


def destination(client: FullstoryClient, **options: object) -> FullstoryUsersDestination:
    return FullstoryUsersDestination(client, poll_initial=0.05, poll_max=0.2, **options)  # type: ignore[arg-type]


def read_user(sandbox_http: httpx.Client, uid: str) -> dict | None:
    """The user with `uid` as the emulator shows it, read with plain HTTP (not the client under test)."""
    answer = sandbox_http.get("/fullstory/v2/users", params={"uid": uid},
                              headers={"Authorization": f"Basic {SANDBOX_FULLSTORY_API_KEY}"}).json()
    return next(iter(answer["results"]), None)


def jobs_created(sandbox) -> int:
    return sandbox.stats()["fullstory"].get("batch_jobs", {}).get("created", 0)


# --- payloads -------------------------------------------------------------------------------------------

def test_an_identify_becomes_a_user_request_with_email_and_display_name_on_top():
    request = user_request(identify("u1", email="a@example.com", displayName="Ada", plan="pro",
                                    address={"city": "Paris", "zip": None}, churned=None))

    assert request == {"uid": "u1", "email": "a@example.com", "display_name": "Ada",
                       "properties": {"plan": "pro", "address": {"city": "Paris"}}}


@pytest.mark.parametrize(("payload", "reason"), [
    (identify(None, plan="pro"), "no userId"),
    (orjson.dumps({"type": "track", "userId": "u1", "event": "E"}), "only identify calls"),
    (identify("u1", **{"plan-tier": "pro"}), "'plan-tier' is not a Fullstory property name"),
    (identify("u1", notes="x" * 9000), "'notes' is 9000 bytes"),
    (identify("u1", email="x" * 129), "longer than Fullstory's 128 characters"),
])
def test_a_payload_fullstory_would_refuse_or_truncate_is_refused_before_sending(payload, reason):
    with pytest.raises(FullstoryPayloadError) as refused:
        user_request(payload)

    assert refused.value.status == 400 and reason in refused.value.vendor_message


# --- against the sandbox --------------------------------------------------------------------------------

def test_upsert_creates_then_updates_a_user_by_uid(clean_sandbox, sandbox_http):
    with sandbox_client(clean_sandbox) as client:
        first = client.upsert_user({"uid": "fs-upsert-1", "email": "one@example.com", "properties": {"a": 1}})
        again = client.upsert_user({"uid": "fs-upsert-1", "properties": {"b": 2}})
        found = client.find_user("fs-upsert-1")
        by_id = client.get_user(first)
        nobody = client.get_user("0"), client.find_user("fs-no-such-user")

    assert first == again and found is not None and found["id"] == first
    assert by_id["uid"] == "fs-upsert-1" and nobody == (None, None)
    shown = read_user(sandbox_http, "fs-upsert-1")
    assert shown["email"] == "one@example.com" and shown["properties"] == {"a": 1, "b": 2}


def test_a_small_batch_is_upserted_user_by_user_without_a_job(clean_sandbox, sandbox_http, ledger):
    plan(ledger, users(3, "fs-small"))

    report = deliver_pending(ledger, SYNC, destination(sandbox_client(clean_sandbox)))

    assert (report.delivered, report.rejected, report.failed) == (3, 0, 0)
    assert jobs_created(clean_sandbox) == 0
    assert read_user(sandbox_http, "fs-small-0002")["display_name"] == "User 2"


def test_a_batch_job_imports_every_user(clean_sandbox, sandbox_http, ledger):
    plan(ledger, users(40, "fs-job"))

    report = deliver_pending(ledger, SYNC, destination(sandbox_client(clean_sandbox)))

    assert (report.delivered, report.rejected, report.failed) == (40, 0, 0) and counts(ledger) == (0, 40, 0)
    assert jobs_created(clean_sandbox) == 1
    user = read_user(sandbox_http, "fs-job-0039")
    assert (user["email"], user["properties"]) == ("fs-job-39@example.com", {"plan": "pro", "seats": 39})


def test_users_a_job_refuses_are_rejected_alone_with_fullstorys_reason_and_no_second_job(
        clean_sandbox, sandbox_http, ledger):
    payloads = users(40, "fs-mixed")
    # The emulator refuses a property carrying a v1 type suffix, as Fullstory's v2 requires (facts §1).
    payloads[7] = identify("fs-mixed-bad-a", plan_str="pro")
    payloads[31] = identify("fs-mixed-bad-b", seats_int=3)
    plan(ledger, payloads)

    report = deliver_pending(ledger, SYNC, destination(sandbox_client(clean_sandbox)), run_id="run-1")

    assert (report.delivered, report.rejected, report.failed) == (38, 2, 0) and counts(ledger) == (0, 38, 2)
    # The job's own per-user verdicts answered the engine's split re-sends: one job, no re-send.
    assert jobs_created(clean_sandbox) == 1 and report.requests > 1
    rejected = {key: reason for key, _, reason in ledger.rejected_since(SYNC, "run-1")}
    assert set(rejected) == {"fs-mixed-bad-a", "fs-mixed-bad-b"}
    assert "(code invalid_argument)" in rejected["fs-mixed-bad-a"]
    assert read_user(sandbox_http, "fs-mixed-bad-a") is None and read_user(sandbox_http, "fs-mixed-0039")


def test_a_user_refused_in_a_small_batch_is_rejected_and_the_ones_after_it_still_sent(clean_sandbox,
                                                                                     sandbox_http, ledger):
    payloads = users(3, "fs-direct")
    payloads[1] = identify("fs-direct-bad", plan_str="pro")
    plan(ledger, payloads)

    report = deliver_pending(ledger, SYNC, destination(sandbox_client(clean_sandbox)), run_id="run-2")

    assert (report.delivered, report.rejected) == (2, 1)
    [(key, _, reason)] = ledger.rejected_since(SYNC, "run-2")
    assert key == "fs-direct-bad" and "invalid_argument" in reason
    assert read_user(sandbox_http, "fs-direct-0002") is not None


def test_a_payload_that_cannot_be_a_user_is_rejected_without_a_request(clean_sandbox, ledger):
    plan(ledger, [*users(2, "fs-local"), identify("fs-local-bad", **{"$plan": "pro"})])

    report = deliver_pending(ledger, SYNC, destination(sandbox_client(clean_sandbox)), run_id="run-3")

    assert (report.delivered, report.rejected) == (2, 1)
    [(_, _, reason)] = ledger.rejected_since(SYNC, "run-3")
    assert "trait '$plan' is not a Fullstory property name" in reason and "(found before sending)" in reason
    assert clean_sandbox.stats()["fullstory"].get("users_created", 0) == 2


def test_more_users_than_a_job_holds_become_several_jobs(clean_sandbox, sandbox_http):
    dest = destination(sandbox_client(clean_sandbox), max_batch_items=10, direct_max_items=1)

    dest.send_batch(users(25, "fs-split"))

    assert jobs_created(clean_sandbox) == 3 and read_user(sandbox_http, "fs-split-0024") is not None
    assert FullstoryUsersDestination.max_batch_items == MAX_BATCH_ITEMS == 50_000


def test_a_refused_key_stops_delivery_and_never_shows_the_key(clean_sandbox, ledger):
    plan(ledger, users(20, "fs-auth"))
    client = sandbox_client(clean_sandbox, WRONG_KEY)

    with pytest.raises(VendorAuthError) as refused:
        deliver_pending(ledger, SYNC, destination(client))

    assert refused.value.status == 401 and counts(ledger) == (20, 0, 0)
    shown = f"{refused.value} {refused.value!r} {client!r} {client.http!r} {client.http.auth!r}"
    assert "5ecret" not in shown and WRONG_KEY not in shown


def test_a_throttled_request_waits_for_retry_after(clean_sandbox):
    clean_sandbox.set_faults("fullstory", rate_429=1.0, retry_after_seconds=1)
    retries = []
    started = time.monotonic()

    with sandbox_client(clean_sandbox) as client, pytest.raises(VendorUnavailable):
        client.http.retry = RetryPolicy(max_attempts=2, max_elapsed=10.0)
        client.upsert_user({"uid": "fs-throttled"}, on_retry=retries.append)

    assert [round(r.delay) for r in retries] == [1] and time.monotonic() - started >= 1.0
    assert "HTTP 429" in retries[0].reason


# --- error paths from local apps ------------------------------------------------------------------------

def local_fullstory(serve, *, job_status: str = "PROCESSING", errors_pages: list[dict] | None = None,
                    key: str = "na1.local-key", status_for_key: int = 401, throttle_first: int = 0,
                    refuse_uid: str | None = None):
    """A Fullstory stand-in: every job stays `job_status`; `errors_pages` are its error pages in order;
    `throttle_first` requests answer 429 Retry-After 1 first; a wrong key gets `status_for_key`; an upsert
    of `refuse_uid` gets 400."""
    seen: dict[str, list] = {"requests": []}

    def refuse(request: Request) -> Response | None:
        seen["requests"].append((request.method, request.url.path, dict(request.query_params)))
        if request.headers.get("authorization") != f"Basic {key}":
            return JSONResponse({"message": "nope", "code": "unauthorized"}, status_for_key)
        if len(seen["requests"]) <= throttle_first:
            return JSONResponse({"message": "Too many requests.", "code": "too_many_requests"}, 429,
                                headers={"Retry-After": "1"})
        return None

    async def users_(request: Request) -> Response:
        if answer := refuse(request):
            return answer
        if request.method == "POST" and (await request.json()).get("uid") == refuse_uid:
            return JSONResponse({"message": "properties are invalid", "code": "invalid_argument"}, 400)
        return JSONResponse({"id": "1"} if request.method == "POST" else
                                               {"results": [], "total_records": "0", "next_page_token": ""})

    async def batch(request: Request) -> Response:
        return refuse(request) or JSONResponse({"job": {"id": "job-1", "status": "PROCESSING"}})

    async def status(request: Request) -> Response:
        return refuse(request) or JSONResponse({"imports": 0, "errors": 0, "job": {"id": "job-1",
                                                                                   "status": job_status}})

    async def errors(request: Request) -> Response:
        if answer := refuse(request):
            return answer
        pages = errors_pages or [{"results": [], "total_records": "0", "next_page_token": ""}]
        token = request.query_params.get("page_token")
        return JSONResponse(pages[int(token) if token else 0])

    app = Starlette(routes=[Route("/v2/users", users_, methods=["GET", "POST"]),
                            Route("/v2/users/batch", batch, methods=["POST"]),
                            Route("/v2/users/batch/{job}", status),
                            Route("/v2/users/batch/{job}/errors", errors)])
    return serve(app, "fullstory stand-in").url, seen


def test_a_job_that_does_not_finish_in_time_leaves_its_users_pending(serve, ledger):
    url, _ = local_fullstory(serve)
    plan(ledger, users(20, "fs-slow"))
    dest = destination(FullstoryClient(url, "na1.local-key", retry=FAST_RETRY), max_wait=0.5)

    with pytest.raises(DeliveryError) as stopped:
        deliver_pending(ledger, SYNC, dest)

    assert counts(ledger) == (20, 0, 0)
    assert "batch job job-1 still PROCESSING after 0.5s" in str(stopped.value)


def test_a_job_that_failed_naming_no_user_leaves_its_users_pending(serve, ledger):
    url, _ = local_fullstory(serve, job_status="FAILED")
    plan(ledger, users(20, "fs-failed"))

    with pytest.raises(DeliveryError) as stopped:
        deliver_pending(ledger, SYNC, destination(FullstoryClient(url, "na1.local-key", retry=FAST_RETRY)))

    assert counts(ledger) == (20, 0, 0) and "FAILED without naming a user" in str(stopped.value)


def test_batch_errors_are_read_across_pages(serve):
    pages = [{"results": [{"message": "bad one", "code": "invalid_argument", "user": {"uid": "a"}}],
              "total_records": "2", "next_page_token": "1"},
             {"results": [{"message": "bad two", "code": "invalid_argument", "user": {"uid": "b"}}],
              "total_records": "2", "next_page_token": ""}]
    url, seen = local_fullstory(serve, job_status="FAILED", errors_pages=pages)

    with FullstoryClient(url, "na1.local-key", retry=FAST_RETRY) as client:
        errors = client.batch_errors("job-1")

    assert [(e.uid, e.describe()) for e in errors] == [("a", "bad one (code invalid_argument)"),
                                                        ("b", "bad two (code invalid_argument)")]
    assert [q for _, _, q in seen["requests"]] == [{}, {"page_token": "1"}]


def test_retry_after_is_honoured_before_the_upsert_goes_through(serve):
    url, seen = local_fullstory(serve, throttle_first=1)
    retries = []
    started = time.monotonic()

    with FullstoryClient(url, "na1.local-key", retry=FAST_RETRY) as client:
        client.upsert_user({"uid": "u1"}, on_retry=retries.append)

    assert time.monotonic() - started >= 1.0 and [r.delay >= 1.0 for r in retries] == [True]
    assert len(seen["requests"]) == 2


def test_a_single_users_400_is_a_partial_batch_naming_its_index_and_fullstorys_words(serve):
    url, seen = local_fullstory(serve, refuse_uid="fs-user-0001")
    dest = destination(FullstoryClient(url, "na1.local-key", retry=FAST_RETRY))

    with pytest.raises(PartialBatchError) as partial:
        dest.send_batch(users(3))

    assert (partial.value.accepted, partial.value.status) == (1, 400)
    assert partial.value.vendor_message == "properties are invalid (code invalid_argument)"
    assert [m for m, _, _ in seen["requests"]] == ["POST", "POST"]  # the rest is the engine's to re-send
