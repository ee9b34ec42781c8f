"""Pendo Aggregation API client (spec §4): `x-pendo-integration-key`, pipeline in, `results` out."""

from __future__ import annotations

from collections.abc import Callable

from segment_ops.clients.base import HttpClient, RetryEvent, RetryPolicy, header_auth


class PendoClient:
    def __init__(self, base_url: str, integration_key: str, *, timeout: float = 60.0,
                 retry: RetryPolicy | None = None) -> None:
        self.http = HttpClient(
            "pendo",
            base_url,
            auth=header_auth("x-pendo-integration-key", integration_key),
            headers={"Content-Type": "application/json"},
            timeout=timeout,
            retry=retry or RetryPolicy(),
        )

    def aggregate(self, pipeline: list[dict], *, name: str | None = None,
                  on_retry: Callable[[RetryEvent], None] | None = None) -> list[dict]:
        """Run an aggregation pipeline and return its result rows."""
        request: dict = {"pipeline": pipeline}
        if name:
            request["name"] = name
        body = {"response": {"mimeType": "application/json"}, "request": request}
        return self.http.post_json("/api/v1/aggregation", body, on_retry=on_retry)["results"]

    def close(self) -> None:
        self.http.close()
