"""Splunk HTTP Event Collector client (spec §5): `Authorization: Splunk <token>`, concatenated JSON events.

Retries follow HEC's codes: 500 (code 8) and 503 (code 9, server busy) are retried by the base client;
400-class codes (invalid data, incorrect index, ...) are final.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import orjson

from segment_ops.clients.base import HttpClient, RetryEvent, RetryPolicy, header_auth


class SplunkHecClient:
    def __init__(self, base_url: str, token: str, *, channel: str | None = None, timeout: float = 30.0,
                 retry: RetryPolicy | None = None) -> None:
        self.channel = channel
        headers = {"Content-Type": "application/json"}
        if channel:
            headers["X-Splunk-Request-Channel"] = channel
        self.http = HttpClient(
            "splunk_hec",
            base_url,
            auth=header_auth("Authorization", token, scheme="Splunk"),
            headers=headers,
            timeout=timeout,
            retry=retry or RetryPolicy(),
        )

    def send_events(self, events: Iterable[dict], *,
                    on_retry: Callable[[RetryEvent], None] | None = None) -> int | None:
        """POST events as one concatenated-JSON body; returns the ackId when indexer ack is on."""
        body = b"".join(orjson.dumps(e) for e in events)
        reply = self.http.request("POST", "/services/collector/event", content=body, on_retry=on_retry).json()
        return reply.get("ackId")

    def query_acks(self, ack_ids: Iterable[int]) -> dict[int, bool]:
        """Which ackIds the indexers have acknowledged (spec §5, indexer acknowledgement)."""
        reply = self.http.post_json("/services/collector/ack", {"acks": list(ack_ids)},
                                    params={"channel": self.channel} if self.channel else None)
        return {int(k): bool(v) for k, v in reply.get("acks", {}).items()}

    def health(self) -> dict:
        return self.http.request("GET", "/services/collector/health", ok_statuses=(503,)).json()

    def close(self) -> None:
        self.http.close()
