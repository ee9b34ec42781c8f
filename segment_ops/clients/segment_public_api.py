"""Segment Public API client (spec §2): bearer token, `{"data": ...}` envelopes, cursor pagination."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
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
