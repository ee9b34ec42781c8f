"""Segment Public API client (spec §2): bearer token, `{"data": ...}` envelopes, cursor pagination.

Delivery Overview (beta, spec §7), as github segmentio/public-api-sdk-python `docs/DeliveryOverviewApi.md` and
`segment_public_api/api/delivery_overview_api.py` call it: `GET /delivery-overview/<step>` with `sourceId`,
`destinationConfigId` (egress steps), `startTime` (inclusive), `endTime` (exclusive), `granularity`, optional
`groupBy`, and `Accept: application/vnd.segment.v1beta+json`; the answer's `data` is
`GetDeliveryOverviewMetricsBetaOutput` (`total`, `dataset[]` of `{<dimension>, total, series[{time, count}]}`,
`pagination`). The SDK does not show how a list `groupBy` is put in the query: it is sent comma-delimited, as
its description says ("a comma-delimited list of strings").
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime

import httpx

from segment_ops.clients.base import (
    HttpClient,
    RetryableStatuses,
    RetryEvent,
    RetryPolicy,
    bearer_auth,
    paginate,
)

MAX_PAGE_SIZE = 200  # pagination.count is 1..200 (spec §2)
DELIVERY_OVERVIEW_ACCEPT = "application/vnd.segment.v1beta+json"  # the beta endpoints' media type (spec §7)
# Delivery Overview's pipeline steps (spec §7): the source's, then those of one destination behind it.
SOURCE_STEPS = ("successfully-received", "failed-on-ingest", "filtered-at-source")
DESTINATION_STEPS = ("filtered-at-destination", "successful-delivery", "failed-delivery")
# Spec §2: 429 when throttled, `ServerError` 5xx; a 408 is a proxy's timeout. Every other 4xx is final.
RETRYABLE = RetryableStatuses(four_xx=frozenset({408, 429}))


def ms_before_next(response: httpx.Response) -> float | None:
    """Seconds from a 429 body's `errors[0].data.msBeforeNext` (spec §2 and §7: `Retry-After` is not
    guaranteed), or None when the body does not carry it."""
    try:
        errors = response.json().get("errors")
        wait = errors[0]["data"]["msBeforeNext"]
    except (ValueError, AttributeError, LookupError, TypeError):
        return None
    if isinstance(wait, bool) or not isinstance(wait, int | float) or wait < 0:
        return None
    return wait / 1000.0


class SegmentPublicApiClient:
    def __init__(self, base_url: str, token: str, *, timeout: float = 30.0,
                 retry: RetryPolicy | None = None) -> None:
        self.http = HttpClient(
            "segment_public_api",
            base_url,
            auth=bearer_auth(token),
            headers={"Accept": "application/json"},
            timeout=timeout,
            retry=retry or RetryPolicy(),
            retryable=RETRYABLE,
            retry_hint=ms_before_next,
        )

    def iter_audit_events(
        self,
        start: datetime,
        end: datetime,
        *,
        page_size: int = MAX_PAGE_SIZE,
        resource_type: str | None = None,
        on_retry: Callable[[RetryEvent], None] | None = None,
    ) -> Iterator[dict]:
        """Every audit event with start < timestamp <= end, walking the cursor to the last page."""
        base = {"pagination.count": page_size, "startTime": _iso(start), "endTime": _iso(end)}
        if resource_type:
            base["resourceType"] = resource_type
        return self._walk("/audit-events", "events", base, on_retry)

    def iter_sources(self, *, page_size: int = MAX_PAGE_SIZE,
                     on_retry: Callable[[RetryEvent], None] | None = None) -> Iterator[dict]:
        """Every source of the workspace (`GET /sources`, spec §7): `id`, `slug`, `name`, `enabled`,
        `writeKeys`, `metadata`."""
        return self._walk("/sources", "sources", {"pagination.count": page_size}, on_retry)

    def iter_destinations(self, *, page_size: int = MAX_PAGE_SIZE,
                          on_retry: Callable[[RetryEvent], None] | None = None) -> Iterator[dict]:
        """Every destination of the workspace (`GET /destinations`, `DestinationV1`): `id`, `name`, `enabled`,
        `metadata`, `sourceId` (the source it is connected to), `settings`."""
        return self._walk("/destinations", "destinations", {"pagination.count": page_size}, on_retry)

    def delivery_overview(self, step: str, source_id: str, start: datetime, end: datetime, *,
                          granularity: str = "HOUR", destination_id: str | None = None,
                          group_by: Sequence[str] = (),
                          on_retry: Callable[[RetryEvent], None] | None = None) -> dict:
        """One step's metrics for [start, end): the answer's `data` (`total`, `dataset`, `pagination`), every
        page of `dataset` gathered. `destination_id` is required by the destination steps."""
        if step not in SOURCE_STEPS + DESTINATION_STEPS:
            raise ValueError(f"unknown Delivery Overview step {step!r}")
        if step in DESTINATION_STEPS and not destination_id:
            raise ValueError(f"the Delivery Overview step {step!r} needs a destination_id")
        params = {"sourceId": source_id, "startTime": _iso(start), "endTime": _iso(end),
                  "granularity": granularity, "pagination.count": MAX_PAGE_SIZE}
        if step in DESTINATION_STEPS:
            params["destinationConfigId"] = destination_id
        if group_by:
            params["groupBy"] = ",".join(group_by)
        path = f"/delivery-overview/{step}"
        headers = {"Accept": DELIVERY_OVERVIEW_ACCEPT}
        first: dict = {}

        def fetch(cursor: str | None) -> tuple[list[dict], str | None]:
            page = dict(params, **({"pagination.cursor": cursor} if cursor else {}))
            data = self.http.get_json(path, params=page, headers=headers, on_retry=on_retry)["data"]
            first.setdefault("total", data.get("total", 0))
            return data.get("dataset") or [], (data.get("pagination") or {}).get("next")

        dataset = list(paginate(fetch))
        return {"total": first.get("total", 0), "dataset": dataset}

    def probe(self, path: str, params: Mapping[str, str] | None = None) -> None:
        """Read one item of the list endpoint `path` (`pagination.count=1`, plus `params`); raises the
        `clients.base` errors when the token may not read it (401/403) or the endpoint does not answer."""
        self.http.request("GET", path, params={"pagination.count": 1, **(params or {})})

    def _walk(self, path: str, key: str, params: dict, on_retry: Callable[[RetryEvent], None] | None
              ) -> Iterator[dict]:
        """The items under `data.<key>` of every page of `path`, following `data.pagination.next` (§2)."""

        def fetch(cursor: str | None) -> tuple[list[dict], str | None]:
            page = dict(params, **({"pagination.cursor": cursor} if cursor else {}))
            data = self.http.get_json(path, params=page, on_retry=on_retry)["data"]
            return data.get(key, []), (data.get("pagination") or {}).get("next")

        return paginate(fetch)

    def close(self) -> None:
        self.http.close()


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
