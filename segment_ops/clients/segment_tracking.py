"""Segment HTTP Tracking API client (spec §1): `POST /v1/batch` with pre-serialised messages.

The delivery engine packs batches itself (by bytes, not count), so this client takes the message
JSON already encoded and only frames, compresses and sends it.
"""

from __future__ import annotations

import gzip as gziplib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from segment_ops.clients.base import (
    HttpClient,
    RateLimiter,
    RetryableStatuses,
    RetryEvent,
    RetryPolicy,
    basic_auth,
)

# Spec §1: 500 KB per batch request (the 32 KB per-call limit is enforced in engine/calls.py). Like
# analytics-python we close a batch early (475,000 bytes) to leave room for the envelope.
BATCH_TARGET_BYTES = 475_000
# gzip only pays once a body is big enough for the saved bytes to outweigh the CPU.
GZIP_MIN_BYTES = 16 * 1024
# Spec §1 recommends <= 1,000 requests/s per workspace; other senders share that budget.
DEFAULT_MAX_REQUESTS_PER_SECOND = 200.0
# analytics-python's retry set (spec §1, request.py/consumer.py): 408, 410, 429, 460 and every 5xx but 501,
# 505.
RETRYABLE = RetryableStatuses(four_xx=frozenset({408, 410, 429, 460}))


class SegmentTrackingClient:
    """Sends batches of Segment calls; auth is Basic with the write key as username (spec §1).

    A delivery-engine destination: `name`, `max_batch_bytes` and `send_batch`.
    """

    name = "segment"
    max_batch_bytes = BATCH_TARGET_BYTES

    def __init__(
        self,
        base_url: str,
        write_key: str,
        *,
        gzip: bool = False,
        max_requests_per_second: float | None = None,
        max_connections: int = 16,
        timeout: float = 15.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        if not write_key:
            # Segment answers 400 to every batch without a key (spec §7); the engine would read that as
            # every message being bad and reject them one by one. It is the setting that is wrong.
            raise ValueError("SEGMENT_WRITE_KEY is empty: set it to the write key of the Segment HTTP source")
        self.gzip = gzip
        self.http = HttpClient(
            "segment",
            base_url,
            auth=basic_auth(write_key, ""),
            headers={"Content-Type": "application/json"},
            timeout=timeout,
            retry=retry or RetryPolicy(),
            rate_limiter=RateLimiter(max_requests_per_second) if max_requests_per_second else None,
            retryable=RETRYABLE,
            max_connections=max_connections,
        )

    def send_batch(
        self,
        messages: Sequence[bytes],
        *,
        on_retry: Callable[[RetryEvent], None] | None = None,
    ) -> None:
        """POST one `/v1/batch` of already-encoded message objects; raises on a final failure."""
        self.http.request("POST", "/v1/batch", **self.encode_batch(messages), on_retry=on_retry)

    def encode_batch(self, messages: Sequence[bytes]) -> dict:
        """The request body and headers for `messages`: the JSON envelope, gzipped when it pays."""
        sent_at = datetime.now(UTC).isoformat(timespec="milliseconds").encode()
        body = b'{"batch":[' + b",".join(messages) + b'],"sentAt":"' + sent_at + b'"}'
        if self.gzip and len(body) >= GZIP_MIN_BYTES:
            return {"content": gziplib.compress(body, compresslevel=1),
                    "headers": {"Content-Encoding": "gzip"}}
        return {"content": body}

    def close(self) -> None:
        self.http.close()
