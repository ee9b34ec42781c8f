"""The Segment Profile API emulator over real HTTP: profiles built only from what the Tracking API accepted,
and only after the delay (spec §2 "Profile API"; segment-docs `src/unify/profile-api.md`)."""

from __future__ import annotations

import time
import uuid
from urllib.parse import quote

import httpx
import pytest

from segment_ops.config import (
    SANDBOX_SEGMENT_PROFILES_SPACE_ID,
    SANDBOX_SEGMENT_PROFILES_TOKEN,
    SANDBOX_SEGMENT_WRITE_KEY,
)
from segment_ops_tests.conftest import PROFILES_DELAY_SECONDS

TOKEN = (SANDBOX_SEGMENT_PROFILES_TOKEN, "")
SPACE = f"/profiles/v1/spaces/{SANDBOX_SEGMENT_PROFILES_SPACE_ID}"
SETTLE = PROFILES_DELAY_SECONDS + 0.15  # long enough for every accepted call to show


def traits_url(external_id: str, space: str = SPACE) -> str:
    return f"{space}/collections/users/profiles/{quote(external_id, safe=':')}/traits"


def identify(user_id: str, traits: dict, message_id: str | None = None) -> dict:
    return {"type": "identify", "userId": user_id, "traits": traits,
            "messageId": message_id or str(uuid.uuid4())}


def send(http: httpx.Client, *messages: dict, write_key: str = SANDBOX_SEGMENT_WRITE_KEY,
         host: str = "/segment") -> None:
    response = http.post(f"{host}/v1/batch", json={"batch": list(messages)}, auth=(write_key, ""))
    assert response.status_code == 200  # accepted, whatever becomes of it


def read(http: httpx.Client, external_id: str, **params: object) -> httpx.Response:
    return http.get(traits_url(external_id), auth=TOKEN, params=params)


def test_a_profile_shows_an_accepted_identify_only_after_the_delay(sandbox_http):
    send(sandbox_http, identify("u-late", {"plan": "pro"}))

    assert read(sandbox_http, "user_id:u-late").status_code == 404  # Segment has not processed it yet
    time.sleep(SETTLE)
    answer = read(sandbox_http, "user_id:u-late")
    assert answer.status_code == 200
    assert answer.json()["traits"] == {"plan": "pro"}


def test_traits_merge_per_user_in_arrival_order(sandbox_http):
    send(sandbox_http, identify("u1", {"plan": "free", "country": "DE"}))
    send(sandbox_http, identify("u1", {"plan": "pro", "seats": 3}), identify("u2", {"plan": "team"}))
    time.sleep(SETTLE)

    assert read(sandbox_http, "user_id:u1").json()["traits"] == {"country": "DE", "plan": "pro", "seats": 3}
    assert read(sandbox_http, "user_id:u2").json()["traits"] == {"plan": "team"}


@pytest.mark.parametrize(("write_key", "host"), [
    ("not-a-key-of-this-workspace", "/segment"),  # 200 and dropped (spec §7)
    (SANDBOX_SEGMENT_WRITE_KEY, "/segment_eu"),  # the other region's host: 200 and lost (spec §1, §7)
], ids=["wrong_write_key", "wrong_region_host"])
def test_a_batch_segment_drops_never_reaches_a_profile(sandbox_http, write_key, host):
    send(sandbox_http, identify("u-dropped", {"plan": "pro"}), write_key=write_key, host=host)
    time.sleep(SETTLE)

    answer = read(sandbox_http, "user_id:u-dropped")
    assert answer.status_code == 404
    assert answer.json() == {"error": {"code": "not_found", "message": "Profile was not found."}}


def test_a_repeated_message_id_is_not_applied_again(sandbox_http):
    send(sandbox_http, identify("u3", {"plan": "pro"}, message_id="m-once"))
    send(sandbox_http, identify("u3", {"plan": "free"}, message_id="m-once"))  # deduplicated by Segment
    time.sleep(SETTLE)

    assert read(sandbox_http, "user_id:u3").json()["traits"] == {"plan": "pro"}


def test_a_track_call_creates_the_profile_without_traits_and_anonymous_ids_link(sandbox_http):
    send(sandbox_http, {"type": "track", "userId": "u4", "anonymousId": "a4", "event": "Signed Up",
                        "messageId": str(uuid.uuid4())})
    send(sandbox_http, {"type": "identify", "anonymousId": "a4", "traits": {"email": "u4@example.com"},
                        "messageId": str(uuid.uuid4())})
    time.sleep(SETTLE)

    assert read(sandbox_http, "user_id:u4").json()["traits"] == {"email": "u4@example.com"}
    assert read(sandbox_http, "email:u4@example.com").status_code == 200


def test_traits_are_paged_in_key_order_with_a_next_cursor(sandbox_http):
    send(sandbox_http, identify("u5", {"e": 5, "a": 1, "d": 4, "b": 2, "c": 3}))
    time.sleep(SETTLE)

    first = read(sandbox_http, "user_id:u5", limit=2).json()
    second = read(sandbox_http, "user_id:u5", limit=2, next=first["cursor"]["next"]).json()
    last = read(sandbox_http, "user_id:u5", limit=2, next=second["cursor"]["next"]).json()

    pages = [first["traits"], second["traits"], last["traits"]]
    assert pages == [{"a": 1, "b": 2}, {"c": 3, "d": 4}, {"e": 5}]
    assert (first["cursor"]["has_more"], first["cursor"]["next"]) == (True, "c")
    assert last["cursor"] == {"url": traits_url("user_id:u5", "/v1/spaces/spa_sandbox"), "has_more": False,
                              "next": "", "limit": 2}
    assert read(sandbox_http, "user_id:u5", include="d,a").json()["traits"] == {"a": 1, "d": 4}
    assert len(read(sandbox_http, "user_id:u5").json()["traits"]) == 5  # default page: 10 traits


def test_verbose_traits_carry_their_update_time(sandbox_http):
    send(sandbox_http, identify("u6", {"plan": "pro"}))
    time.sleep(SETTLE)

    [(key, value)] = read(sandbox_http, "user_id:u6", verbose="true").json()["traits"].items()
    assert key == "plan" and value["value"] == "pro" and value["updated_at"].endswith("Z")


@pytest.mark.parametrize("external_id", ["u7", "phone:u7", "user_id:nobody"])
def test_an_unknown_profile_or_an_id_without_a_known_type_is_404(sandbox_http, external_id):
    send(sandbox_http, identify("u7", {"plan": "pro"}))
    time.sleep(SETTLE)

    assert read(sandbox_http, external_id).status_code == 404


@pytest.mark.parametrize(("auth", "space"), [
    (None, SPACE),
    (("wrong-token", ""), SPACE),
    (TOKEN, "/profiles/v1/spaces/another_space"),
], ids=["no_token", "wrong_token", "other_space"])
def test_a_missing_or_wrong_token_is_401(sandbox_http, auth, space):
    answer = sandbox_http.get(traits_url("user_id:u1", space), auth=auth)

    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "authentication_error"


@pytest.mark.parametrize("limit", ["0", "201", "ten"])
def test_a_limit_outside_1_to_200_is_400(sandbox_http, limit):
    answer = read(sandbox_http, "user_id:u1", limit=limit)

    assert answer.status_code == 400 and answer.json()["error"]["code"] == "validation_error"


def test_reset_forgets_every_profile(sandbox_http, clean_sandbox):
    send(sandbox_http, identify("u8", {"plan": "pro"}))
    time.sleep(SETTLE)
    assert read(sandbox_http, "user_id:u8").status_code == 200

    clean_sandbox.reset()

    assert read(sandbox_http, "user_id:u8").status_code == 404


def test_injected_faults_answer_in_the_profile_api_error_shape(sandbox_http, clean_sandbox):
    clean_sandbox.set_faults("profiles", rate_429=1.0, retry_after_seconds=2)

    answer = read(sandbox_http, "user_id:u1")

    assert answer.status_code == 429 and answer.headers["Retry-After"] == "2"
    assert answer.json()["error"]["code"] == "rate_limit_error"
    assert clean_sandbox.stats()["profiles"]["faults"] == {"429": 1}


def test_the_rate_limit_answers_429_per_space(sandbox_factory):
    limited = sandbox_factory(profiles_rate_limit=1.0)
    with httpx.Client(base_url=limited.url) as http:
        statuses = [read(http, "user_id:u1").status_code for _ in range(3)]

    assert statuses[0] == 404 and 429 in statuses[1:]
