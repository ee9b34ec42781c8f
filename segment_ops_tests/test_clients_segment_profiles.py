"""The Segment Profile API client over real HTTP against the sandbox: 404 is "no such profile", pages are
followed, 429 and 5xx are retried (Retry-After honoured), a refused token fails at once and is never shown."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest

from segment_ops.clients.base import RetryPolicy, VendorAuthError, VendorUnavailable, tls_context
from segment_ops.clients.segment_profiles import SegmentProfilesClient
from segment_ops.config import (
    SANDBOX_SEGMENT_PROFILES_SPACE_ID,
    SANDBOX_SEGMENT_PROFILES_TOKEN,
    SANDBOX_SEGMENT_WRITE_KEY,
)
from segment_ops_tests.conftest import PROFILES_DELAY_SECONDS
from segment_ops_tests.test_clients_base import SleepRecorder


def client(sandbox, *, token: str = SANDBOX_SEGMENT_PROFILES_TOKEN, sleep=None,
           retry: RetryPolicy | None = None) -> SegmentProfilesClient:
    made = SegmentProfilesClient(f"{sandbox.url}/profiles", SANDBOX_SEGMENT_PROFILES_SPACE_ID, token,
                                 retry=retry or RetryPolicy(max_attempts=4))
    made.http.sleep = sleep or SleepRecorder()
    return made


def identify(sandbox, user_id: str, traits: dict) -> None:
    """Send one identify through the Tracking API and wait until the profile shows it."""
    with httpx.Client(base_url=sandbox.url, verify=tls_context()) as http:
        http.post("/segment/v1/batch", auth=(SANDBOX_SEGMENT_WRITE_KEY, ""), json={"batch": [
            {"type": "identify", "userId": user_id, "traits": traits, "messageId": str(uuid.uuid4())}]})
    time.sleep(PROFILES_DELAY_SECONDS + 0.15)


def test_a_profile_reads_its_traits_and_an_unknown_one_is_none(clean_sandbox):
    identify(clean_sandbox, "u 1+x@example.com", {"plan": "pro", "seats": 3})  # encoded in the path

    with client(clean_sandbox) as profiles:
        assert profiles.get_traits("user_id:u 1+x@example.com") == {"plan": "pro", "seats": 3}
        assert profiles.get_traits("user_id:u 1+x@example.com", include=["seats"]) == {"seats": 3}
        assert profiles.get_traits("user_id:nobody") is None


def test_every_page_of_traits_is_read(clean_sandbox):
    traits = {f"t{i:03}": i for i in range(450)}  # 200 a page: three pages
    identify(clean_sandbox, "u-wide", traits)

    with client(clean_sandbox) as profiles:
        assert profiles.get_traits("user_id:u-wide") == traits
    assert clean_sandbox.stats()["profiles"]["status"] == {"200": 3}


def test_a_429_is_retried_after_its_retry_after(clean_sandbox):
    identify(clean_sandbox, "u2", {"plan": "pro"})
    clean_sandbox.set_faults("profiles", rate_429=1.0, retry_after_seconds=3)
    sleep = SleepRecorder(hook=clean_sandbox.clear_faults)  # the throttle lifts while we wait

    with client(clean_sandbox, sleep=sleep) as profiles:
        assert profiles.get_traits("user_id:u2") == {"plan": "pro"}

    assert sleep.delays == [3.0]  # the first retry would be immediate; Retry-After says wait 3 s
    assert clean_sandbox.stats()["profiles"]["status"] == {"429": 1, "200": 1}


@pytest.mark.parametrize("fault", ["rate_500", "rate_503"])
def test_a_server_error_is_retried(clean_sandbox, fault):
    identify(clean_sandbox, "u3", {"plan": "pro"})
    clean_sandbox.set_faults("profiles", **{fault: 1.0})
    sleep = SleepRecorder(hook=clean_sandbox.clear_faults)

    with client(clean_sandbox, sleep=sleep) as profiles:
        assert profiles.get_traits("user_id:u3") == {"plan": "pro"}

    assert len(sleep.delays) == 1


def test_retries_run_out_on_a_lasting_outage(clean_sandbox):
    clean_sandbox.set_faults("profiles", rate_503=1.0)

    with client(clean_sandbox, retry=RetryPolicy(max_attempts=3)) as profiles, \
            pytest.raises(VendorUnavailable) as caught:
        profiles.get_traits("user_id:u1")

    assert (caught.value.status, caught.value.attempts) == (503, 3)


def test_a_refused_token_fails_at_once_without_showing_it(clean_sandbox):
    secret = "profile-token-LEAKCHECK-91c2"
    sleep = SleepRecorder()

    with client(clean_sandbox, token=secret, sleep=sleep) as profiles, \
            pytest.raises(VendorAuthError) as caught:
        profiles.get_traits("user_id:u1")

    assert caught.value.status == 401 and sleep.delays == []
    assert "authentication_error" in str(caught.value)
    assert secret not in str(caught.value) + repr(profiles) + repr(profiles.http.auth)


def test_a_space_id_and_token_are_required():
    with pytest.raises(ValueError, match="SEGMENT_PROFILES_TOKEN"):
        SegmentProfilesClient("http://127.0.0.1:9/profiles", SANDBOX_SEGMENT_PROFILES_SPACE_ID, "")
