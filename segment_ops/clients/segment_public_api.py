"""Segment Public API client (spec §2): bearer token, `{"data": ...}` envelopes, cursor pagination."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime

from segment_ops.clients.base import HttpClient, RetryEvent, RetryPolicy, bearer_auth, paginate

MAX_PAGE_SIZE = 200  # pagination.count is 1..200 (spec §2)


class SegmentPublicApiClient:
    def __init__(self, base_url: str, token: str, *, timeout: float = 30.0, retry: RetryPolicy | None = None) -> None:
        self.http = HttpClient(
            "segment_public_api",
            base_url,
            auth=bearer_auth(token),
            headers={"Accept": "application/json"},
            timeout=timeout,
            retry=retry or RetryPolicy(),
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

        def fetch(cursor: str | None) -> tuple[list[dict], str | None]:
            params = dict(base, **({"pagination.cursor": cursor} if cursor else {}))
            data = self.http.get_json("/audit-events", params=params, on_retry=on_retry)["data"]
            return data.get("events", []), (data.get("pagination") or {}).get("next")

        return paginate(fetch)

    def close(self) -> None:
        self.http.close()


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
