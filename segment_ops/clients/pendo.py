"""Pendo API client (spec §4): `x-pendo-integration-key`, Aggregation pipelines in, `results` out.

Pendo documents no pagination for aggregations: callers slice by time with `timeSeries` and, as
Pendo asks of ETL pulls, keep each request to 30 days or less (`MAX_DAYS_PER_AGGREGATION`).
"""

from __future__ import annotations

from collections.abc import Callable

import orjson

from segment_ops.clients.base import HttpClient, RetryEvent, RetryPolicy, header_auth

MAX_DAYS_PER_AGGREGATION = 30  # spec §4: "Pendo asks that ETL pulls stay <= 30 days"
DAY_MS = 86_400_000


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
        return orjson.loads(self.aggregate_raw(pipeline, name=name, on_retry=on_retry))["results"]

    def aggregate_raw(self, pipeline: list[dict], *, name: str | None = None,
                      on_retry: Callable[[RetryEvent], None] | None = None) -> bytes:
        """Run an aggregation pipeline; the response body as Pendo sent it (`{"results": [...]}`), unparsed, for
        a caller that hands it to a columnar reader instead of building Python objects."""
        request: dict = {"pipeline": pipeline}
        if name:
            request["name"] = name
        body = {"response": {"mimeType": "application/json"}, "request": request}
        return self.http.request("POST", "/api/v1/aggregation", json=body, on_retry=on_retry).content

    def features(self, *, on_retry: Callable[[RetryEvent], None] | None = None) -> list[dict]:
        """The tagged features (`GET /api/v1/feature`, spec §4 entity endpoints): a list of `{"id", "name", ...}`."""
        return orjson.loads(self.features_raw(on_retry=on_retry))

    def features_raw(self, *, on_retry: Callable[[RetryEvent], None] | None = None) -> bytes:
        """`GET /api/v1/feature`'s body (a JSON array), unparsed."""
        return self.http.request("GET", "/api/v1/feature", on_retry=on_retry).content

    def close(self) -> None:
        self.http.close()


def day_range_source(source: str, first_ms: int, days: int, argument: dict | None = None) -> dict:
    """A time-sliced source stage covering `days` whole UTC days from `first_ms` (spec §4 `timeSeries`)."""
    if not 0 < days <= MAX_DAYS_PER_AGGREGATION:
        raise ValueError(f"a Pendo aggregation covers 1 to {MAX_DAYS_PER_AGGREGATION} days, not {days}")
    if first_ms % DAY_MS:
        raise ValueError(f"first_ms {first_ms} is not the start of a UTC day")
    return {"source": {source: argument, "timeSeries": {"period": "dayRange", "first": first_ms, "count": days}}}
