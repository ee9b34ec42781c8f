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

from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx

from segment_ops.clients.base import (
    HttpClient,
    RetryableStatuses,
    RetryPolicy,
    SecretHeaderAuth,
    SecretPathTransport,
    VendorRequestError,
    environment_transport,
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
            transport=SecretPathTransport(secret_path, transport or environment_transport(url)),
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
