"""Segment Profile API emulator (spec §2 "Profile API"), mounted at `/profiles`:
`GET /v1/spaces/{space_id}/collections/users/profiles/{id_type}:{id}/traits`.

Profiles are built from what the sandbox's Tracking API really accepted: the messages it stored (the
recorder's `segment` log). A batch under an unknown write key, one sent to the other region's host
(`/segment_eu`), a silently dropped call or a duplicate messageId is never stored, so it never reaches a
profile. Each identify's traits are merged into its profile in arrival order (the last one wins: Segment
resolves traits "using the last updated precedence order"), `delay_seconds` after the Tracking API
received it: Segment's profiles update asynchronously.

Vendor source: segment-docs `src/unify/profile-api.md` (spec §2 marks the response shape and the EU host
`profiles.euw1.segment.com` unverified; these docs give both):
- Basic auth with the space's access token as username and an empty password; else 401
  `{"error": {"code": "authentication_error", ...}}`.
- An unknown profile: 404 `{"error": {"code": "not_found", "message": "Profile was not found."}}`; an id
  without its type (`u1` instead of `user_id:u1`) is unknown (segment-docs PR #5066).
- Traits: 10 per page by default (segment-docs#6534), `limit` up to 200 ("return up to 200 traits by
  appending ?limit=200"; the general pagination section says 1-100, the traits section's figure is
  followed), `include` a comma-separated list of keys, `next` the cursor of the next page. The answer is
  `{"traits": {...}, "cursor": {"url", "has_more", "next", "limit"}}`; `verbose=true` gives each trait as
  `{value, source_id, updated_at}`.
- Throttling: 429 `rate_limit_error`; "each space has a limit of 100 requests/sec" (`rate_limit`, off by
  default). The docs do not say that a 429 carries `Retry-After`: the limiter sends none, injected faults do.

Choices where the docs are silent:
- Traits are paged in code-point order of their keys and `next` is the first key of the next page, as in
  the docs' example (`"next": "browser"` after `big_spender`).
- A profile is found by `user_id`, `anonymous_id` or `email` (an identify's `traits.email`). A call
  carrying a userId and an anonymousId links both to one profile; two existing profiles are never merged
  (Segment's identity-resolution rules are not modelled). Any accepted call with an id creates a profile;
  only identify calls set traits (a group's traits belong to the `accounts` collection, not served).
- A trait sent as null is kept as null.
- An unknown space, or a token of another space, gets 401: an access token belongs to one space.
- `class=audience|computed_trait` returns no traits: the sandbox computes none.
- Only the `users` collection and `/traits` are served; anything else is 404.
- At most `profile_limit` profiles are kept (the oldest created is forgotten first), and a message the
  recorder evicted before the profiles read it is never applied: memory stays bounded, like the recorder.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import islice
from urllib.parse import quote

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from segment_ops.sandbox.common import TokenBucket, basic_credentials, json_response, retry_after_headers
from segment_ops.sandbox.recorder import ApiLog, Recorder

DEFAULT_LIMIT = 10  # traits per page without `limit` (segment-docs#6534)
MAX_LIMIT = 200
ID_TYPES = ("user_id", "anonymous_id", "email")
SOURCE_API = "segment"  # the recorder's log of what the Tracking API accepted
_FAULT_CODES = {429: "rate_limit_error", 500: "server_error", 503: "server_error"}


@dataclass
class _Profile:
    ids: set[str] = field(default_factory=set)  # external ids, `<type>:<value>`
    traits: dict[str, tuple[object, str]] = field(default_factory=dict)  # key -> (value, updated_at)


class SegmentProfiles:
    """One space's user profiles, built from the Tracking API's accepted messages after a delay."""

    name = "profiles"

    def __init__(self, recorder: Recorder, *, space_id: str, token: str, delay_seconds: float = 1.0,
                 rate_limit: float | None = None, profile_limit: int = 100_000) -> None:
        self.recorder = recorder
        self.space_id = space_id
        self.token = token
        self.delay_seconds = delay_seconds
        self.profile_limit = profile_limit
        self._limiter = TokenBucket(rate_limit) if rate_limit else None
        self._forget()

    def routes(self) -> Sequence[BaseRoute]:
        path = "/v1/spaces/{space_id}/collections/{collection}/profiles/{external_id:path}/traits"
        return [Route(path, self._traits, methods=["GET"])]

    def fault_response(self, status: int, retry_after: int) -> Response:
        headers = retry_after_headers(retry_after) if status == 429 else None
        return _error(status, _FAULT_CODES.get(status, "server_error"),
                      f"sandbox fault injection: HTTP {status}", headers)

    def reset(self) -> None:
        self._forget()
        if self._limiter:
            self._limiter.reset()

    def _forget(self) -> None:
        """Drop every profile and what was read of the Tracking API's log."""
        self._source: ApiLog | None = None
        self._consumed = 0
        self._pending: deque[tuple[float, dict]] = deque()  # (when it shows, message), in arrival order
        self._profiles: OrderedDict[int, _Profile] = OrderedDict()
        self._by_id: dict[str, int] = {}
        self._next_number = 0

    async def _traits(self, request: Request) -> Response:
        log = self.recorder[self.name]
        params = request.path_params
        credentials = basic_credentials(request.headers.get("authorization"))
        if credentials is None or credentials[0] != self.token or params["space_id"] != self.space_id:
            return _error(401, "authentication_error", "No valid Access Token provided for this space.")
        if self._limiter and self._limiter.wait_time(self.space_id):
            return _error(429, "rate_limit_error", "Too many requests hit the API too quickly.")
        try:
            limit = _limit(request.query_params.get("limit"))
            kind = request.query_params.get("class")
            if kind not in (None, "audience", "computed_trait"):
                raise ValueError(f"class must be audience or computed_trait, got {kind!r}")
        except ValueError as exc:
            return _error(400, "validation_error", str(exc))
        profile = self._profile(params["collection"], params["external_id"])
        if profile is None:
            log.bump("profiles", "not_found")
            return _error(404, "not_found", "Profile was not found.")
        log.bump("profiles", "found")
        include = {k.strip() for k in request.query_params.get("include", "").split(",") if k.strip()}
        keys = sorted(k for k in profile.traits if (not include or k in include) and kind is None)
        start = request.query_params.get("next") or ""
        keys = [k for k in keys if k >= start]
        page, rest = keys[:limit], keys[limit:]
        verbose = request.query_params.get("verbose", "").lower() == "true"
        traits = {k: _shown(profile.traits[k], self.space_id, verbose) for k in page}
        url = quote(request.url.path.removeprefix(request.scope.get("root_path", "")), safe="/:")
        if rest:
            url += f"?limit={limit}&next={quote(rest[0], safe='')}"
        return json_response({"traits": traits, "cursor": {"url": url, "has_more": bool(rest),
                                                           "next": rest[0] if rest else "", "limit": limit}})

    def _profile(self, collection: str, external_id: str) -> _Profile | None:
        if collection != "users" or external_id.split(":", 1)[0] not in ID_TYPES or ":" not in external_id:
            return None
        self._catch_up()
        number = self._by_id.get(external_id)
        return None if number is None else self._profiles.get(number)

    def _catch_up(self) -> None:
        """Queue what the Tracking API stored since the last look, then apply what is due by now."""
        source = self.recorder[SOURCE_API]
        if source is not self._source:  # the recorder was reset: so is everything built from it
            self._forget()
            self._source = source
        new = min(source.counts["received"] - self._consumed, len(source.items))
        self._consumed = source.counts["received"]
        for raw in reversed(list(islice(reversed(source.items), new))):
            message = orjson.loads(raw)
            self._pending.append((_epoch(message.get("receivedAt")) + self.delay_seconds, message))
        now = time.time()
        while self._pending and self._pending[0][0] <= now:
            self._apply(self._pending.popleft()[1])

    def _apply(self, message: dict) -> None:
        traits = message.get("traits") if message.get("type") == "identify" else None
        traits = traits if isinstance(traits, dict) else {}
        email = traits.get("email")
        ids = [f"user_id:{message['userId']}" if message.get("userId") else None,
               f"anonymous_id:{message['anonymousId']}" if message.get("anonymousId") else None,
               f"email:{email}" if isinstance(email, str) and email else None]
        ids = [i for i in ids if i]
        if not ids or message.get("type") == "alias":
            return
        number = next((self._by_id[i] for i in ids if i in self._by_id), None)
        if number is None:
            number, self._next_number = self._next_number, self._next_number + 1
            self._profiles[number] = _Profile()
            self._forget_oldest()
        profile = self._profiles[number]
        for external_id in ids:
            if self._by_id.setdefault(external_id, number) == number:
                profile.ids.add(external_id)
        updated_at = str(message.get("receivedAt", ""))
        for key, value in traits.items():
            profile.traits[key] = (value, updated_at)

    def _forget_oldest(self) -> None:
        while len(self._profiles) > self.profile_limit:
            _, gone = self._profiles.popitem(last=False)
            for external_id in gone.ids:
                self._by_id.pop(external_id, None)


def _limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    try:
        limit = int(raw)
    except ValueError:
        raise ValueError(f"limit must be an integer, got {raw!r}") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_LIMIT}, got {limit}")
    return limit


def _shown(trait: tuple[object, str], space_id: str, verbose: bool) -> object:
    value, updated_at = trait
    if not verbose:
        return value
    return {"value": value, "source_id": f"{space_id}-http-source", "updated_at": updated_at}


def _epoch(received_at: object) -> float:
    try:
        return datetime.fromisoformat(str(received_at).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return time.time()


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    """The Profile API's error body `{"error": {"code", "message"}}`."""
    return json_response({"error": {"code": code, "message": message}}, status, headers)
