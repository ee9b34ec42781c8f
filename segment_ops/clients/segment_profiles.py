"""Segment Profile API client (spec §2 "Profile API"): a user profile's traits, read back after delivery.

`GET {host}/v1/spaces/{space_id}/collections/users/profiles/{id_type}:{id}/traits`, Basic auth with the
access token as username and an empty password. Hosts: `https://profiles.segment.com`, EU
`https://profiles.euw1.segment.com` (segment-docs `src/unify/profile-api.md`, which confirms what spec §2
marks unverified). 404 means the profile does not exist: `get_traits` returns None.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

from segment_ops.clients.base import (
    HttpClient,
    RateLimiter,
    RetryableStatuses,
    RetryEvent,
    RetryPolicy,
    basic_auth,
    paginate,
)

# "You can return up to 200 traits by appending ?limit=200" (the traits section of the docs).
MAX_TRAITS_PER_PAGE = 200
# The docs: 429 when throttled, 500/502/503/504 server errors; a 408 is a proxy's timeout. Other 4xx are
# final.
RETRYABLE = RetryableStatuses(four_xx=frozenset({408, 429}))
# "Each space has a limit of 100 requests/sec" (the docs): read-back takes part of it, leaving the rest to
# the space's other readers (a personalisation service, say).
DEFAULT_MAX_REQUESTS_PER_SECOND = 25.0


class SegmentProfilesClient:
    """Reads profiles of one Unify space; a `ProfileReader` for `engine.verification`."""

    def __init__(self, base_url: str, space_id: str, token: str, *, timeout: float = 10.0,
                 retry: RetryPolicy | None = None,
                 max_requests_per_second: float | None = DEFAULT_MAX_REQUESTS_PER_SECOND) -> None:
        if not space_id or not token:
            raise ValueError("the Profile API needs SEGMENT_PROFILES_SPACE_ID and SEGMENT_PROFILES_TOKEN")
        self.space_id = space_id
        self.http = HttpClient(
            "segment_profiles",
            base_url,
            auth=basic_auth(token, ""),
            headers={"Accept": "application/json"},
            timeout=timeout,
            retry=retry or RetryPolicy(max_attempts=6, max_elapsed=60.0),
            rate_limiter=RateLimiter(max_requests_per_second) if max_requests_per_second else None,
            retryable=RETRYABLE,
        )

    def get_traits(self, external_id: str, *, include: Sequence[str] = (),
                   on_retry: Callable[[RetryEvent], None] | None = None) -> Mapping[str, Any] | None:
        """Every trait of the profile `external_id` (`user_id:u1`, `anonymous_id:a1`, ...), or only those in
        `include`, following the cursor over pages; None when the profile does not exist (404)."""
        # Every character but the type's colon percent-encoded: the docs ask for `+` as %2B and warn that
        # other non-alphanumeric characters may otherwise get a 500.
        path = (f"/v1/spaces/{quote(self.space_id, safe='')}/collections/users/profiles/"
                f"{quote(external_id, safe=':')}/traits")
        base: dict[str, Any] = {"limit": MAX_TRAITS_PER_PAGE}
        if include:
            base["include"] = ",".join(include)
        missing = False

        def fetch(cursor: str | None) -> tuple[list[tuple[str, Any]], str | None]:
            nonlocal missing
            params = dict(base, **({"next": cursor} if cursor else {}))
            response = self.http.request("GET", path, params=params, on_retry=on_retry, ok_statuses=(404,))
            if response.status_code == 404:
                missing = True
                return [], None
            body = response.json()
            page = body.get("cursor") or {}
            next_cursor = page.get("next") if page.get("has_more") else None
            return list((body.get("traits") or {}).items()), next_cursor

        traits = dict(paginate(fetch))
        return None if missing else traits

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> SegmentProfilesClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
