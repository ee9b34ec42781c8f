"""`SplunkHecClient.ack_setting`: whether a token has indexer acknowledgement on, from the sandbox HEC's own
answers, and "unknown" (not an error) for an answer HEC never gives. The sandbox cannot be made to give one,
so those come from an `httpx.MockTransport` standing in for a proxy in front of HEC."""

from __future__ import annotations

import httpx
import pytest

from segment_ops.clients.base import RetryPolicy, VendorAuthError
from segment_ops.clients.splunk_hec import AckSetting, SplunkHecClient
from segment_ops.config import SANDBOX_SPLUNK_HEC_TOKEN

TOKEN = "11111111-2222-4333-8444-555555555555"


def answering(status: int, **body: object) -> SplunkHecClient:
    """A client whose every request gets `status` and `body` (JSON; text when `text_body` is given)."""

    def handle(request: httpx.Request) -> httpx.Response:
        if "text_body" in body:
            return httpx.Response(status, text=str(body["text_body"]))
        return httpx.Response(status, json=body)

    return SplunkHecClient("https://hec.example.com:8088", TOKEN, retry=RetryPolicy(max_attempts=1),
                           transport=httpx.MockTransport(handle))


# Ack off: code 14 "ACK is disabled"; on: code 11 "Invalid data channel" for the fresh channel (spec §5).
@pytest.mark.parametrize(("ack", "expected"), [(False, AckSetting(False, 400, 14)),
                                               (True, AckSetting(True, 400, 11))])
def test_the_sandbox_hec_tells_whether_ack_is_on(sandbox_factory, ack, expected):
    hec = SplunkHecClient(f"{sandbox_factory(splunk_ack=ack).url}/splunk", SANDBOX_SPLUNK_HEC_TOKEN)
    try:
        setting = hec.ack_setting()
    finally:
        hec.close()

    assert (setting.enabled, setting.status, setting.code) == (expected.enabled, expected.status,
                                                               expected.code)


def test_a_proxys_404_is_an_unknown_ack_setting_not_an_error():
    setting = answering(404, text_body="Not Found").ack_setting()

    assert (setting.enabled, setting.status, setting.code) == (None, 404, None)
    assert setting.describe() == "HTTP 404: Not Found"


def test_an_hec_code_it_never_gives_to_an_ack_query_is_unknown_with_the_code_and_never_the_token():
    setting = answering(400, text=f"Invalid data format (token {TOKEN})", code=6).ack_setting()

    assert (setting.enabled, setting.status, setting.code) == (None, 400, 6)
    assert setting.describe().startswith("HTTP 400: Invalid data format") and TOKEN not in repr(setting)


def test_a_refused_token_still_raises():
    with pytest.raises(VendorAuthError):
        answering(403, text="Invalid token", code=4).ack_setting()
