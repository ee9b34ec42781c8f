"""Splunk HTTP Event Collector client (spec §5): `Authorization: Splunk <token>`, concatenated JSON events.

Retries follow HEC's codes: 500 (code 8) and 503 (code 9, server busy) are retried by the base client;
400-class codes (invalid data, incorrect index, ...) are final.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import httpx
import orjson

from segment_ops.clients.base import (
    HttpClient,
    PartialBatchError,
    RetryEvent,
    RetryPolicy,
    VendorFatalError,
    VendorRequestError,
    describe_error,
    header_auth,
)

# Splunk Cloud advises requests of at most 1 MB (spec §5, unverified); Enterprise allows far more.
MAX_BATCH_BYTES = 900_000
# 400-class codes that say the token's setup is wrong, not one event (spec §5): incorrect index (7), data
# channel missing/invalid (10, 11), ACK disabled (14). Every event would fail the same way, so these
# stop the run instead of being split down to single events and rejected one by one.
CONFIGURATION_CODES = frozenset({7, 10, 11, 14})


class HecConfigurationError(VendorFatalError):
    """HEC refused the request for its setup (index, channel, ack), not for its data: fix the configuration."""


def hec_event(event: object, *, time: float | None = None, host: str | None = None, source: str | None = None,
              sourcetype: str | None = None, index: str | None = None, fields: dict | None = None) -> bytes:
    """One encoded HEC event (spec §5, event body); metadata left None falls back to the token's defaults."""
    envelope: dict = {}
    for key, value in (("time", time), ("host", host), ("source", source), ("sourcetype", sourcetype),
                       ("index", index)):
        if value is not None:
            envelope[key] = value
    envelope["event"] = event
    if fields:
        envelope["fields"] = fields
    return orjson.dumps(envelope)


class SplunkHecClient:
    """A delivery-engine destination: `name`, `max_batch_bytes` and `send_batch` of encoded HEC events."""

    name = "splunk_hec"
    max_batch_bytes = MAX_BATCH_BYTES

    def __init__(self, base_url: str, token: str, *, channel: str | None = None, timeout: float = 30.0,
                 retry: RetryPolicy | None = None, transport: httpx.BaseTransport | None = None) -> None:
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
            transport=transport,
        )

    def send_batch(self, payloads: Sequence[bytes], *,
                   on_retry: Callable[[RetryEvent], None] | None = None) -> int | None:
        """POST already-encoded events; returns the ackId when indexer ack is on.

        Code 6 names the first bad event, and HEC may have indexed the ones before it (spec §5): that
        is a `PartialBatchError`, so the engine re-sends only what follows, never the accepted prefix.
        """
        path = "/services/collector/event"
        response = self.http.request("POST", path, content=b"".join(payloads), on_retry=on_retry, ok_statuses=(400,))
        body = response.json() if response.content else {}
        if response.status_code == 400:
            message = describe_error(response)
            if body.get("code") == 6 and isinstance(body.get("invalid-event-number"), int):
                raise PartialBatchError(self.http.vendor, "POST", path, message,
                                        accepted=body["invalid-event-number"], status=400)
            if body.get("code") in CONFIGURATION_CODES:
                raise HecConfigurationError(self.http.vendor, "POST", path, message, status=400)
            raise VendorRequestError(self.http.vendor, "POST", path, message, status=400)
        return body.get("ackId")

    def query_acks(self, ack_ids: Iterable[int]) -> dict[int, bool]:
        """Which ackIds the indexers have acknowledged (spec §5, indexer acknowledgement)."""
        reply = self.http.post_json("/services/collector/ack", {"acks": list(ack_ids)},
                                    params={"channel": self.channel} if self.channel else None)
        return {int(k): bool(v) for k, v in reply.get("acks", {}).items()}


    def close(self) -> None:
        self.http.close()
