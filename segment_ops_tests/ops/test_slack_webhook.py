"""The sandbox's Slack incoming-webhook emulator over real HTTP, and the client that posts alerts to it."""

from __future__ import annotations

import http.server
import logging
import threading

import pytest

from segment_ops.clients.base import RetryPolicy, VendorRequestError, VendorUnavailable, environment_transport
from segment_ops.clients.slack import SlackWebhookClient, WebhookUrlError
from segment_ops.config import SANDBOX_SLACK_WEBHOOK_PATH, SANDBOX_SLACK_WEBHOOK_TOKEN
from segment_ops.sandbox.slack import ARCHIVED_CHANNEL_TOKEN

HOOK = f"/slack{SANDBOX_SLACK_WEBHOOK_PATH}"


# --- the emulator -------------------------------------------------------------------------------------------

def test_a_message_is_answered_ok_and_recorded(sandbox_http, clean_sandbox):
    response = sandbox_http.post(HOOK, json={"text": "hello", "blocks": [{"type": "divider"}]})

    assert response.status_code == 200 and response.text == "ok"
    assert clean_sandbox.received("slack") == [{"text": "hello", "blocks": [{"type": "divider"}]}]


def test_blocks_without_text_are_accepted(sandbox_http):
    assert sandbox_http.post(HOOK, json={"blocks": [{"type": "divider"}]}).text == "ok"


def test_a_legacy_form_payload_is_accepted(sandbox_http, clean_sandbox):
    response = sandbox_http.post(HOOK, data={"payload": '{"text": "from a form"}'})

    assert response.text == "ok" and clean_sandbox.received("slack") == [{"text": "from a form"}]


@pytest.mark.parametrize("body", [b"{not json", b'["text"]', b'"text"'])
def test_a_body_that_is_not_a_json_object_is_an_invalid_payload(sandbox_http, clean_sandbox, body):
    response = sandbox_http.post(HOOK, content=body, headers={"Content-Type": "application/json"})

    assert (response.status_code, response.text) == (400, "invalid_payload")
    assert clean_sandbox.received("slack") == []


@pytest.mark.parametrize("body", [b"{}", b'{"text": ""}', b'{"text": "  "}', b'{"blocks": []}',
                                  b'{"channel": "x"}'])
def test_a_message_without_text_or_blocks_is_no_text_and_posts_nothing(sandbox_http, clean_sandbox, body):
    response = sandbox_http.post(HOOK, content=body, headers={"Content-Type": "application/json"})

    assert (response.status_code, response.text) == (400, "no_text")
    assert clean_sandbox.received("slack") == []


def test_an_unknown_webhook_token_is_no_service(sandbox_http, clean_sandbox):
    response = sandbox_http.post("/slack/services/T0SANDBOX/B0SANDBOX/another-token", json={"text": "x"})

    assert (response.status_code, response.text) == (404, "no_service")
    assert clean_sandbox.received("slack") == []


def test_an_injected_429_carries_retry_after(sandbox_http, clean_sandbox):
    clean_sandbox.set_faults("slack", rate_429=1.0, retry_after_seconds=7)

    response = sandbox_http.post(HOOK, json={"text": "x"})

    assert (response.status_code, response.text) == (429, "rate_limited")
    assert response.headers["Retry-After"] == "7"


# --- the client -------------------------------------------------------------------------------------------

def client(sandbox, path: str = HOOK, **kwargs) -> SlackWebhookClient:
    return SlackWebhookClient(f"{sandbox.url}{path}", **kwargs)


def test_the_client_posts_a_message(clean_sandbox):
    with client(clean_sandbox) as slack:
        slack.post_message({"text": "run failed"})

    assert clean_sandbox.received("slack") == [{"text": "run failed"}]


def test_the_client_retries_a_500_and_delivers_once(clean_sandbox):
    clean_sandbox.set_faults("slack", rate_500=0.5)

    with client(clean_sandbox,
                retry=RetryPolicy(max_attempts=20, backoff_initial=0.01, backoff_max=0.01)) as slack:
        for n in range(6):
            slack.post_message({"text": f"message {n}"})

    assert [m["text"] for m in clean_sandbox.received("slack")] == [f"message {n}" for n in range(6)]
    assert clean_sandbox.stats()["slack"]["faults"]["500"] >= 1


@pytest.mark.slow
def test_the_client_gives_up_after_its_retry_budget(clean_sandbox):
    clean_sandbox.set_faults("slack", rate_429=1.0, retry_after_seconds=0)

    with client(clean_sandbox, retry=RetryPolicy(max_attempts=3, backoff_initial=0.01)) as slack, \
            pytest.raises(VendorUnavailable):
        slack.post_message({"text": "x"})

    assert clean_sandbox.stats()["slack"]["requests"] == 3


def test_an_archived_channel_is_a_configuration_error_not_retried(clean_sandbox):
    # Spec §7: 410 `channel_is_archived` is final; retrying an archived channel's webhook cannot help.
    url = f"{clean_sandbox.url}/slack/services/T0SANDBOX/B0SANDBOX/{ARCHIVED_CHANNEL_TOKEN}"

    with SlackWebhookClient(url) as slack, pytest.raises(VendorRequestError) as caught:
        slack.post_message({"text": "x"})

    assert (caught.value.status, caught.value.attempts) == (410, 1)
    assert "channel_is_archived" in caught.value.vendor_message
    assert clean_sandbox.stats()["slack"]["requests"] == 1


def test_the_webhook_secret_never_reaches_errors_or_logs(clean_sandbox, caplog):
    caplog.set_level(logging.DEBUG)
    secret = "T9SECRET/B9SECRET/a-webhook-secret-for-tests"

    with (client(clean_sandbox, f"/slack/services/{secret}") as slack,
          pytest.raises(VendorRequestError) as caught):
        slack.post_message({"text": "x"})

    assert caught.value.status == 404 and "no_service" in str(caught.value)
    texts = [str(caught.value), repr(caught.value), repr(slack), repr(slack.http), caplog.text]
    assert any("HTTP Request" in r.getMessage() for r in caplog.records)  # httpx did log the request
    assert not [t for t in texts if "a-webhook-secret-for-tests" in t or "T9SECRET" in t]


def test_the_sandbox_token_is_not_shown_in_the_clients_repr(clean_sandbox):
    assert SANDBOX_SLACK_WEBHOOK_TOKEN not in repr(client(clean_sandbox))


@pytest.mark.parametrize("url", ["", "hooks.slack.com/services/T1/B1/leakcheck-secret",
                                 "ftp://hooks.slack.com/services/T1/B1/leakcheck-secret",
                                 "https://hooks.slack.com/"])
def test_a_url_that_is_not_a_webhook_is_refused_without_echoing_it(url):
    with pytest.raises(WebhookUrlError) as caught:
        SlackWebhookClient(url)

    assert "leakcheck-secret" not in str(caught.value)


def test_a_message_without_text_or_blocks_is_refused_before_sending(clean_sandbox):
    with client(clean_sandbox) as slack, pytest.raises(VendorRequestError):
        slack.post_message({"channel": "#ops"})

    assert clean_sandbox.stats()["slack"]["requests"] == 0


@pytest.mark.slow
def test_an_alert_goes_through_the_proxy_named_in_the_environment(monkeypatch):
    """HTTP_PROXY is honoured although the client builds its own transport (as httpx.Client would do)."""
    seen: list[str] = []

    class Proxy(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(self.requestline)
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{server.server_address[1]}")
    try:
        with SlackWebhookClient("http://hooks.example.test/services/T1/B1/proxied-secret") as client:
            client.post_message({"text": "through the proxy"})
    finally:
        server.shutdown()
        server.server_close()

    assert seen == ["POST http://hooks.example.test/services/T1/B1/proxied-secret HTTP/1.1"]


def test_a_host_listed_in_no_proxy_is_reached_directly(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example.test:3128")
    monkeypatch.setenv("NO_PROXY", "hooks.slack.com")

    assert (environment_transport("https://hooks.slack.com/services/T/B/x")._pool.__class__.__name__
            == "ConnectionPool")
    assert environment_transport("https://other.example.test/x")._pool.__class__.__name__ == "HTTPProxy"
