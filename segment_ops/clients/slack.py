"""Slack-compatible incoming-webhook client: posts alert messages to `ALERT_WEBHOOK_URL`.

An incoming webhook's URL is its credential (`https://hooks.slack.com/services/T…/B…/<secret>`): anyone
holding it can post to the channel. So the client never hands that path to anything that logs or raises:
requests go to the placeholder path `/services/***`, and a transport swaps in the real path at the last
moment. Log lines (ours and httpx's), exception messages and reprs therefore show only the host.

Answers follow Slack's webhook contract: 200 `ok`; 400 `invalid_payload`/`no_text`, 403
`action_prohibited`, 404 `no_service`/`channel_not_found`, 410 `channel_is_archived` are final; 429
(with `Retry-After`) and 5xx are retried by `HttpClient`. No Dagster imports.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx

from segment_ops.clients.base import (
    HttpClient,
    RetryableStatuses,
    RetryPolicy,
    SecretHeaderAuth,
    VendorRequestError,
    tls_context,
)

PLACEHOLDER_PATH = "/services/***"
# An alert is sent from a sensor, whose evaluation Dagster cuts off after 60 s: retry briefly.
ALERT_RETRY = RetryPolicy(max_attempts=4, max_elapsed=20.0, retry_after_cap=10.0)
# Slack's webhook answers (spec §7, api.slack.com changelog 2016-05-17): 429 and 5xx (`rollup_error`) are
# transient; every 4xx else is a configuration error, 410 `channel_is_archived` included.
RETRYABLE = RetryableStatuses(four_xx=frozenset({429}))


class WebhookUrlError(ValueError):
    """The alert webhook URL is not an absolute http(s) URL with a path (its text is never shown)."""


class _SecretPath(SecretHeaderAuth):
    """Adds no header; registers the webhook's secret path so `HttpClient` scrubs any echo of it."""

    def __init__(self, path: str) -> None:
        parts = tuple(p for p in path.replace("?", "/").split("/") if len(p) >= 8 and p != "services")
        super().__init__("", path, parts)

    def auth_flow(self, request: httpx.Request) -> Iterator[httpx.Request]:
        yield request

    def __repr__(self) -> str:
        return "WebhookPath('***')"


class _SecretPathTransport(httpx.BaseTransport):
    """Sends each request to the real webhook path instead of the placeholder the caller used."""

    def __init__(self, path: str, inner: httpx.BaseTransport) -> None:
        self._path = path
        self._inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        real = httpx.Request(request.method, request.url.copy_with(raw_path=self._path.encode()),
                             headers=request.headers, stream=request.stream, extensions=request.extensions)
        return self._inner.handle_request(real)

    def close(self) -> None:
        self._inner.close()

    def __repr__(self) -> str:
        return "SecretPathTransport('***')"


def environment_transport(url: str) -> httpx.HTTPTransport:
    """The transport `httpx.Client` would pick from the environment for `url`: through HTTP(S)_PROXY /
    ALL_PROXY unless NO_PROXY exempts the host, verifying TLS with SSL_CERT_FILE / SSL_CERT_DIR when set
    (`HTTPTransport(trust_env=True)`). A custom transport passed to `httpx.Client` skips httpx's own
    environment handling, so `_SecretPathTransport` wraps this one."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if proxy and parts.hostname and urllib.request.proxy_bypass(parts.hostname):
        proxy = None
    if proxy and "://" not in proxy:
        proxy = f"http://{proxy}"
    return httpx.HTTPTransport(trust_env=True, proxy=proxy or None, verify=tls_context())


class SlackWebhookClient:
    """Posts `{"text", "blocks"}` messages to one incoming webhook."""

    name = "slack"

    def __init__(self, url: str, *, timeout: float = 10.0, retry: RetryPolicy | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path in ("", "/"):
            raise WebhookUrlError("ALERT_WEBHOOK_URL must be an http(s) URL such as "
                                  "https://hooks.slack.com/services/T…/B…/…")
        self.host = f"{parts.scheme}://{parts.netloc}"
        secret_path = parts.path + (f"?{parts.query}" if parts.query else "")
        self.http = HttpClient(
            "slack",
            self.host,
            auth=_SecretPath(secret_path),
            headers={"Content-Type": "application/json"},
            timeout=timeout,
            retry=retry or ALERT_RETRY,
            retryable=RETRYABLE,
            max_connections=2,
            transport=_SecretPathTransport(secret_path, transport or environment_transport(url)),
        )

    def post_message(self, message: dict) -> None:
        """Post one message (needs `text` or `blocks`); raises the `clients.base` errors on refusal."""
        if not (message.get("text") or message.get("blocks")):
            raise VendorRequestError("slack", "POST", PLACEHOLDER_PATH, "a message needs `text` or `blocks`")
        self.http.request("POST", PLACEHOLDER_PATH, json=message)

    def probe(self) -> tuple[int, str]:
        """Post an empty message: a live Slack webhook refuses it with 400 (`no_text`; `invalid_payload` for a
        body it cannot read) and posts nothing. Returns (status, Slack's answer) for a 200 or 400; raises the
        `clients.base` errors for a webhook that is gone or refused (403, 404, 410) or does not answer."""
        response = self.http.request("POST", PLACEHOLDER_PATH, json={}, ok_statuses=(400,))
        return response.status_code, response.text.strip()[:100]

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> SlackWebhookClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SlackWebhookClient(host={self.host!r})"
