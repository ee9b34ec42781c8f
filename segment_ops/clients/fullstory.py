"""Fullstory Server API v2 client (users), and the Fullstory users destination of the delivery engine.

Sources (the researcher's notes, /tmp/h1/fullstory_facts.md §1-§4, "V" = seen in Fullstory's own material):
Fullstory's OpenAPI spec `fullstorydev/fullstory-node-sdk:specs/users.sdk.swagger.json` ("SPEC"), the node
SDK's README, `fullstorydev/fullstory-anywhere-activation` (the newer SDK), developer.fullstory.com's
authentication, create-user, create-batch-user-import-job, limits and idempotent-requests pages. Where
only spec §6 speaks (the EU host `api.eu1.fullstory.com`, named by the newer SDK but not the docs) it says
"unverified".

- Auth: `Authorization: Basic <API key>`, the literal key, not base64 (V: docs, SPEC, both SDKs).
- `POST /v2/users` upserts by `uid` and answers 200 `{"id"}` (V); `GET /v2/users/{id}`, `GET /v2/users?uid=`
  (`{results, total_records, next_page_token}`) read users back (V; reading needs an Admin or Architect key,
  a Standard key may only create and update users and batches).
- Batch import (V): `POST /v2/users/batch` `{"requests": [...]}` (at most 50,000) answers `{"job": {id,
  status}}`; `GET /v2/users/batch/{id}` answers `{imports, errors, job: {status}}` with status PROCESSING,
  COMPLETED or FAILED ("including partial failures"); `GET .../errors` lists `{message, code, user}` per
  refused item (202 while processing), paginated by `page_token` / `next_page_token`.
- Errors are `{message, code}`; 429 carries `Retry-After` in seconds (V); 5xx are `server_error`.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from segment_ops.clients.base import (
    DEFAULT_RETRYABLE,
    HttpClient,
    PartialBatchError,
    RateLimiter,
    RetryEvent,
    RetryPolicy,
    VendorError,
    VendorFatalError,
    VendorRequestError,
    header_auth,
    paginate,
)

VENDOR = "fullstory"
USERS = "/v2/users"
BATCH = "/v2/users/batch"
# Batch import: "maximum 50,000 request objects per batch" (V: docs, and the newer SDK's `user.ts`).
MAX_BATCH_ITEMS = 50_000
# Fullstory documents no request size limit (X). Our choice: a few MB per request, far below what HTTP
# front ends commonly refuse; the engine closes a batch at this many bytes of Segment payloads, which are
# larger than the Fullstory requests made from them.
MAX_BATCH_BYTES = 4_000_000
# Field limits (V: SPEC's CreateUserRequest and property description; create-user / update-user pages).
MAX_UID_CHARS = 256
MAX_DISPLAY_NAME_CHARS = 256
MAX_EMAIL_CHARS = 128
MAX_PROPERTIES = 500
MAX_PROPERTY_NAME_CHARS = 512
MAX_PROPERTY_VALUE_BYTES = 8192
# JobStatus (V: SPEC `fullstory.v2.job.JobStatus`); anything else (SPEC's default UNKNOWN) counts as not done.
PROCESSING, COMPLETED, FAILED = "PROCESSING", "COMPLETED", "FAILED"
# 429 (with Retry-After) and 5xx `server_error` (V: SPEC, limits page); 408 from a proxy. Other 4xx are final.
RETRYABLE = DEFAULT_RETRYABLE
# Polling a batch job: first at once, then 1 s doubling to 10 s, for at most `max_wait` (our choice;
# Fullstory publishes no rate for status reads, X).
POLL_INITIAL = 1.0
POLL_MAX = 10.0
DEFAULT_MAX_WAIT = 120.0
# Batches of at most this many users are upserted one `POST /v2/users` each, in order, instead of as a
# job: a job costs its creation and polling (at least a second), and an answer per user tells which one
# was refused (`PartialBatchError`). Our choice.
DEFAULT_DIRECT_MAX_ITEMS = 10
# The node SDK's README recommends one batch job per resource type at a time (V); Fullstory answers 429
# beyond 200 in-progress jobs per org (V).
DEFAULT_MAX_CONCURRENT_JOBS = 1
# How long a job's per-user verdicts answer the engine's split re-sends of the same users (`_Verdicts`).
VERDICT_SECONDS = 900.0
PROBE_UID = "segment-ops-preflight-no-such-user"


class FullstoryPayloadError(VendorRequestError):
    """A payload that cannot become a Fullstory user request; never sent. Status 400, so the engine splits
    the batch and rejects this payload alone, with this reason."""

    def __init__(self, message: str) -> None:
        super().__init__(VENDOR, "POST", USERS, f"{message} (found before sending)", status=400)
        self.reason = message


@dataclass(frozen=True)
class BatchJob:
    """A batch import job as `GET /v2/users/batch/{id}` describes it (`imports`, `errors` once known)."""

    id: str
    status: str
    created: str | None = None
    finished: str | None = None
    imports: int | None = None
    errors: int | None = None

    @property
    def done(self) -> bool:
        return self.status in (COMPLETED, FAILED)


@dataclass(frozen=True)
class BatchItemError:
    """One user a batch job refused: Fullstory's `message` and `code`, and the request item it echoes."""

    message: str
    code: str | None
    user: Mapping[str, Any]

    @property
    def uid(self) -> str | None:
        uid = self.user.get("uid")
        return uid if isinstance(uid, str) else None

    def describe(self) -> str:
        return f"{self.message} (code {self.code})" if self.code else self.message


class FullstoryClient:
    """The Server API v2 users endpoints on `base.HttpClient` (timeouts, retries, Retry-After, a key that
    never reaches a log, an error or a repr)."""

    def __init__(self, base_url: str, api_key: str, *, timeout: float = 30.0,
                 retry: RetryPolicy | None = None, max_requests_per_second: float | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        if not api_key:
            raise ValueError("FULLSTORY_API_KEY is empty: set it to a Fullstory API key")
        self.http = HttpClient(
            VENDOR,
            base_url,
            auth=header_auth("Authorization", api_key, scheme="Basic"),  # the literal key (V)
            headers={"Content-Type": "application/json"},
            timeout=timeout,
            retry=retry or RetryPolicy(),
            rate_limiter=RateLimiter(max_requests_per_second) if max_requests_per_second else None,
            retryable=RETRYABLE,
            transport=transport,
        )

    def __repr__(self) -> str:
        return f"FullstoryClient(base_url={self.http.base_url!r})"

    def upsert_user(self, body: Mapping[str, Any], *,
                    on_retry: Callable[[RetryEvent], None] | None = None) -> str:
        """`POST /v2/users`: create the user, or update the one with this `uid`; Fullstory's id of it."""
        answer = self.http.post_json(USERS, dict(body), on_retry=on_retry)
        return str(_object(answer).get("id", ""))

    def get_user(self, user_id: str, *, include_schema: bool = False) -> dict | None:
        """`GET /v2/users/{id}` (Fullstory's id); None when there is no such user (404)."""
        params = {"include_schema": "true"} if include_schema else None
        response = self.http.request("GET", f"{USERS}/{quote(user_id, safe='')}", params=params,
                                     ok_statuses=(404,))
        return None if response.status_code == 404 else _object(response.json())

    def find_user(self, uid: str) -> dict | None:
        """The user whose `uid` is `uid` (`GET /v2/users?uid=`), or None."""
        answer = _object(self.http.get_json(USERS, params={"uid": uid}))
        results = answer.get("results") or []
        return next((u for u in results if isinstance(u, dict) and u.get("uid") == uid), None)

    def create_user_batch(self, requests: Sequence[Mapping[str, Any]], *,
                          on_retry: Callable[[RetryEvent], None] | None = None) -> str:
        """`POST /v2/users/batch` of at most `MAX_BATCH_ITEMS` user requests; the job's id.

        No `Idempotency-Key`: a create retried after a lost answer may start a second job with the same
        users, which upserts them again (harmless), whereas Fullstory's live page says a key replays the
        first answer "including 500 errors" for 24 h, which would defeat the retry."""
        if not 0 < len(requests) <= MAX_BATCH_ITEMS:
            raise ValueError(f"a batch import holds 1 to {MAX_BATCH_ITEMS} users, not {len(requests)}")
        answer = _object(self.http.post_json(BATCH, {"requests": [dict(r) for r in requests]},
                                             on_retry=on_retry))
        job_id = _object(answer.get("job")).get("id")
        if not isinstance(job_id, str) or not job_id:
            raise VendorError(VENDOR, "POST", BATCH, "the answer names no job id")
        return job_id

    def batch_status(self, job_id: str, *, on_retry: Callable[[RetryEvent], None] | None = None) -> BatchJob:
        """`GET /v2/users/batch/{id}`: the job's status and, once known, its import and error counts."""
        answer = _object(self.http.get_json(_job_path(job_id), on_retry=on_retry))
        job = _object(answer.get("job"))
        return BatchJob(id=str(job.get("id") or job_id), status=str(job.get("status") or "UNKNOWN"),
                        created=job.get("created"), finished=job.get("finished"),
                        imports=_count(answer.get("imports")), errors=_count(answer.get("errors")))

    def batch_errors(self, job_id: str, *, on_retry: Callable[[RetryEvent], None] | None = None,
                     ) -> list[BatchItemError] | None:
        """Every user the job refused (`GET /v2/users/batch/{id}/errors`, all pages); None while it is still
        processing (202)."""
        path = f"{_job_path(job_id)}/errors"
        first = self.http.request("GET", path, on_retry=on_retry, ok_statuses=(202,))
        if first.status_code == 202:
            return None

        def page(token: str | None) -> tuple[list[BatchItemError], str | None]:
            answer = _object(first.json() if token is None
                             else self.http.get_json(path, params={"page_token": token}, on_retry=on_retry))
            items = [BatchItemError(str(r.get("message") or "refused"), r.get("code"), _object(r.get("user")))
                     for r in answer.get("results") or [] if isinstance(r, dict)]
            return items, answer.get("next_page_token") or None

        return list(paginate(page))

    def probe(self) -> None:
        """A cheap authenticated read: `GET /v2/users?uid=` of a uid no one has. Raises the `clients.base`
        errors (`VendorAuthError` for a refused key)."""
        self.http.request("GET", USERS, params={"uid": PROBE_UID})

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> FullstoryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def user_request(payload: bytes | str | Mapping[str, Any]) -> dict[str, Any]:
    """The Fullstory user request of one encoded Segment identify call; `FullstoryPayloadError` when it has
    none.

    `uid` = userId; traits `email` and `display_name` (or `displayName`) are the top-level fields, every other
    trait a property. A null trait is left out: Fullstory documents no way to clear a property (properties
    merge, the latest value wins, facts §1), so a trait that became null keeps its old value in Fullstory.
    Property names and sizes are checked against Fullstory's documented rules here, so a user Fullstory
    would refuse, or whose property it would drop, is rejected with the reason instead.
    """
    call = orjson.loads(payload) if isinstance(payload, bytes | str) else payload
    if not isinstance(call, Mapping) or call.get("type") != "identify":
        raise FullstoryPayloadError("only identify calls become Fullstory users")
    uid = call.get("userId")
    if not isinstance(uid, str) or not uid:
        # Without a uid Fullstory creates a new anonymous user each time (facts §1).
        raise FullstoryPayloadError("the identify call has no userId (Fullstory's uid)")
    if len(uid) > MAX_UID_CHARS:
        raise FullstoryPayloadError(f"userId is longer than Fullstory's {MAX_UID_CHARS} characters")
    traits = call.get("traits") or {}
    if not isinstance(traits, Mapping):
        raise FullstoryPayloadError("traits is not an object")
    request: dict[str, Any] = {"uid": uid}
    display_name = traits.get("display_name")
    if display_name is None:
        display_name = traits.get("displayName")
    for field, value, limit in (("display_name", display_name, MAX_DISPLAY_NAME_CHARS),
                                ("email", traits.get("email"), MAX_EMAIL_CHARS)):
        if value is None:
            continue
        if not isinstance(value, str):
            raise FullstoryPayloadError(f"trait {field} is not a string")
        if len(value) > limit:
            raise FullstoryPayloadError(f"trait {field} is longer than Fullstory's {limit} characters")
        request[field] = value
    properties = _properties(
        {k: v for k, v in traits.items() if k not in ("email", "display_name", "displayName")}, "")
    if len(properties) > MAX_PROPERTIES:
        raise FullstoryPayloadError(f"{len(properties)} traits: Fullstory allows {MAX_PROPERTIES} properties")
    request["properties"] = properties
    return request


def landed_traits(payload: bytes | str | Mapping[str, Any]) -> dict[str, Any]:
    """The traits a Fullstory user holds after `payload` (an identify call) is upserted, as a read-back finds
    them (`FullstoryUserReader`): what `user_request` sends, so a null left out (at any depth) is not
    expected either. Raises `FullstoryPayloadError` like `user_request`."""
    request = user_request(payload)
    traits = dict(request["properties"])
    call = orjson.loads(payload) if isinstance(payload, bytes | str) else payload
    sent = call.get("traits") or {}
    for field in ("email", "display_name", "displayName"):
        if sent.get(field) is not None:
            traits[field] = sent[field]
    return traits


class FullstoryUserReader:
    """Reads a Fullstory user back as the traits of the identify call it was upserted from (the engine's
    `verification.ProfileReader`): its properties, `email` and `display_name` (also as `displayName`)."""

    def __init__(self, client: FullstoryClient) -> None:
        self.client = client

    def get_traits(self, external_id: str, *, include: Sequence[str] = ()) -> Mapping[str, Any] | None:
        kind, _, uid = external_id.partition(":")
        user = self.client.find_user(uid) if kind == "user_id" and uid else None
        if user is None:
            return None
        traits = dict(_object(user.get("properties")))
        for field in ("email", "display_name"):
            if user.get(field):
                traits[field] = user[field]
        if "display_name" in traits:
            traits["displayName"] = traits["display_name"]
        return {k: v for k, v in traits.items() if not include or k in include}


class FullstoryUsersDestination:
    """A delivery-engine `Destination`: encoded Segment identify calls upserted as Fullstory users.

    - At most `direct_max_items` users: one `POST /v2/users` each, in order; a 400 for one of them is a
      `PartialBatchError` (those before it were upserted, the engine rejects it with Fullstory's words and
      sends the rest again).
    - More: batch import jobs of at most `max_batch_items` users (the engine packs by bytes only, so a longer
      batch becomes several jobs), one at a time (`max_concurrent_jobs`), each polled (at once, then 1 s
      doubling to 10 s) until done, for at most `max_wait` seconds from its creation.
    - A job that refused some users raises `VendorRequestError` 400, so the engine splits the batch until
      the refused users stand alone and rejects them with Fullstory's message. The job's own per-user
      verdicts answer those split re-sends without a request, while they are fresh and the job's counts
      add up; any other re-send upserts again, which is safe: Fullstory upserts by uid, so a user sent
      twice holds the same values.
    - A job that FAILED without naming a user, or still runs after `max_wait`, raises a retryable
      `VendorError`: its users stay pending and are sent again next run (the same upserts). Such a job may
      still finish later; if a user changed meanwhile, the newer job should run after it, but Fullstory
      does not promise an order between jobs.
    - 401/403 raise `VendorAuthError` (the engine stops); 429/5xx are retried with Retry-After.
    """

    name = VENDOR
    max_batch_bytes = MAX_BATCH_BYTES
    max_batch_items = MAX_BATCH_ITEMS

    def __init__(self, client: FullstoryClient, *, max_wait: float = DEFAULT_MAX_WAIT,
                 direct_max_items: int = DEFAULT_DIRECT_MAX_ITEMS,
                 max_concurrent_jobs: int = DEFAULT_MAX_CONCURRENT_JOBS,
                 max_batch_items: int = MAX_BATCH_ITEMS,
                 poll_initial: float = POLL_INITIAL, poll_max: float = POLL_MAX,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if not 0 < max_batch_items <= MAX_BATCH_ITEMS:
            raise ValueError(f"max_batch_items must be 1 to {MAX_BATCH_ITEMS}")
        self.client = client
        self.max_wait = max_wait
        self.direct_max_items = direct_max_items
        self.max_batch_items = max_batch_items
        self.poll_initial = poll_initial
        self.poll_max = poll_max
        self.sleep = sleep
        self._jobs = threading.BoundedSemaphore(max(1, max_concurrent_jobs))
        self._verdicts = _Verdicts()

    def __repr__(self) -> str:
        return f"FullstoryUsersDestination({self.client!r})"

    def send_batch(self, payloads: Sequence[bytes], *,
                   on_retry: Callable[[RetryEvent], None] | None = None) -> None:
        """Upsert one user per payload; raises the `clients.base` errors the engine acts on (class doc)."""
        requests = _requests(payloads)
        verdicts = self._verdicts.lookup(requests)
        refused = [(i, v) for i, v in enumerate(verdicts) if isinstance(v, str)]
        if refused:  # a job already refused these: the engine isolates them without a request
            index, reason = refused[0]
            more = f" ({len(refused)} of {len(requests)} refused)" if len(requests) > 1 else ""
            raise VendorRequestError(VENDOR, "POST", BATCH, f"{reason}{more}", status=400)
        todo = [(i, r) for i, (r, v) in enumerate(zip(requests, verdicts, strict=True)) if v is not _IMPORTED]
        if not todo:
            return
        if len(todo) <= self.direct_max_items:
            self._upsert_each(todo, on_retry)
        else:
            self._import([r for _, r in todo], on_retry)

    def close(self) -> None:
        self.client.close()

    def _upsert_each(self, todo: list[tuple[int, dict]],
                     on_retry: Callable[[RetryEvent], None] | None) -> None:
        for index, request in todo:
            try:
                self.client.upsert_user(request, on_retry=on_retry)
            except VendorFatalError:
                raise
            except VendorRequestError as exc:
                if exc.status != 400:
                    raise
                # Every user before `index` is upserted (now, or by a job whose verdict said so).
                raise PartialBatchError(VENDOR, "POST", USERS, exc.vendor_message, accepted=index,
                                        status=400, attempts=exc.attempts) from None

    def _import(self, requests: list[dict], on_retry: Callable[[RetryEvent], None] | None) -> None:
        refused: list[str] = []
        for start in range(0, len(requests), self.max_batch_items):
            chunk = requests[start:start + self.max_batch_items]
            with self._jobs:
                job_id = self.client.create_user_batch(chunk, on_retry=on_retry)
                job, errors = self._await(job_id, on_retry)
            if job.status == COMPLETED:
                continue
            if not errors:
                raise VendorError(VENDOR, "GET", _job_path(job_id),
                                  f"batch job {job_id} FAILED without naming a user "
                                  f"({job.imports} of {len(chunk)} imported): its users are sent again")
            self._verdicts.record(chunk, job, errors)
            refused.append(f"batch job {job_id} refused {len(errors)} of {len(chunk)} users, e.g. "
                           f"{errors[0].uid!r}: {errors[0].describe()}")
        if refused:
            raise VendorRequestError(VENDOR, "POST", BATCH, "; ".join(refused), status=400)

    def _await(self, job_id: str, on_retry: Callable[[RetryEvent], None] | None,
               ) -> tuple[BatchJob, list[BatchItemError]]:
        """Poll the job until it is done and, if it FAILED, its refused users are listed; a retryable
        `VendorError` once `max_wait` has passed. A poll refused for anything but the credentials is
        retryable too: the users were not refused."""
        deadline = time.monotonic() + self.max_wait
        delay = self.poll_initial
        job = BatchJob(job_id, PROCESSING)
        while True:
            try:
                if not job.done:
                    job = self.client.batch_status(job_id, on_retry=on_retry)
                if job.status == COMPLETED:
                    return job, []
                if job.status == FAILED:
                    errors = self.client.batch_errors(job_id, on_retry=on_retry)
                    if errors is not None:
                        return job, errors
            except VendorFatalError:
                raise
            except VendorError as exc:
                raise VendorError(VENDOR, exc.method, exc.path, f"batch job {job_id} could not be followed "
                                  f"({exc}): its users are sent again", status=None,
                                  attempts=exc.attempts) from None
            if time.monotonic() + delay > deadline:
                raise VendorError(VENDOR, "GET", _job_path(job_id),
                                  f"batch job {job_id} still {job.status} after {self.max_wait:g}s: its "
                                  "users stay pending and are sent again next run")
            self.sleep(delay)
            delay = min(delay * 2, self.poll_max)


# --- helpers ---------------------------------------------------------------------------------------------

_IMPORTED = object()  # a verdict: a job imported this very request


class _Verdicts:
    """What recent jobs said of each user request (keyed by its exact bytes): imported, or refused and why.

    Trusted for a request only when the job's verdict is unambiguous: a refusal whose echoed uid names one
    request of the job, and "imported" only when the job's imports and refusals add up to its size and each
    refusal was placed. Entries expire after `VERDICT_SECONDS`; a request without one is sent.
    """

    def __init__(self, seconds: float = VERDICT_SECONDS) -> None:
        self.seconds = seconds
        self._lock = threading.Lock()
        self._entries: dict[bytes, tuple[object, float]] = {}

    def record(self, requests: Sequence[dict], job: BatchJob, errors: Sequence[BatchItemError]) -> None:
        uids = Counter(r["uid"] for r in requests)
        refused = {e.uid: e.describe() for e in errors if e.uid is not None and uids[e.uid] == 1}
        placed = len(refused) == len(errors) == len({e.uid for e in errors})
        add_up = placed and job.imports is not None and job.imports + len(errors) == len(requests)
        expires = time.monotonic() + self.seconds
        with self._lock:
            now = time.monotonic()
            self._entries = {k: v for k, v in self._entries.items() if v[1] > now}
            for request in requests:
                if request["uid"] in refused:
                    self._entries[_key(request)] = (refused[request["uid"]], expires)
                elif add_up:
                    self._entries[_key(request)] = (_IMPORTED, expires)

    def lookup(self, requests: Sequence[dict]) -> list[object]:
        """Per request: `_IMPORTED`, the refusal's reason (str), or None (unknown)."""
        if not self._entries:
            return [None] * len(requests)
        now = time.monotonic()
        with self._lock:
            found = [self._entries.get(_key(r)) for r in requests]
        return [v[0] if v is not None and v[1] > now else None for v in found]


def _requests(payloads: Sequence[bytes]) -> list[dict]:
    """The user request of each payload; the first that has none raises (status 400: the engine splits)."""
    requests, bad = [], []
    for payload in payloads:
        try:
            requests.append(user_request(payload))
        except FullstoryPayloadError as exc:
            bad.append(exc)
        except (orjson.JSONDecodeError, TypeError):
            bad.append(FullstoryPayloadError("the payload is not a JSON object"))
    if bad and len(payloads) == 1:
        raise bad[0]
    if bad:
        raise FullstoryPayloadError(f"{len(bad)} of {len(payloads)} payloads cannot be sent, e.g. "
                                    f"{bad[0].reason}")
    return requests


def _properties(values: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """Traits as Fullstory properties: names checked (letters, digits and `_`, starting with a letter, the
    dotted path under 512 characters; v2 takes them without v1's type suffixes), values at most 8192 bytes,
    nulls left out (facts §1)."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        path = f"{prefix}{name}"
        if not _valid_name(name) or len(path) >= MAX_PROPERTY_NAME_CHARS:
            raise FullstoryPayloadError(f"trait {path!r} is not a Fullstory property name (letters, "
                                        "digits and _, starting with a letter; the dotted path under 512 "
                                        "characters)")
        if value is None:
            continue
        if isinstance(value, Mapping):
            out[name] = _properties(value, f"{path}.")
            continue
        size = len(value.encode()) if isinstance(value, str) else len(orjson.dumps(value))
        if size > MAX_PROPERTY_VALUE_BYTES:
            raise FullstoryPayloadError(f"trait {path!r} is {size} bytes: Fullstory drops a property value "
                                        f"over {MAX_PROPERTY_VALUE_BYTES}")
        out[name] = value
    return out


def _valid_name(name: object) -> bool:
    return (isinstance(name, str) and name[:1].isascii() and name[:1].isalpha()
            and all(c.isascii() and (c.isalnum() or c == "_") for c in name))


def _key(request: Mapping[str, Any]) -> bytes:
    return orjson.dumps(request, option=orjson.OPT_SORT_KEYS)


def _job_path(job_id: str) -> str:
    return f"{BATCH}/{quote(job_id, safe='')}"


def _object(value: object) -> dict:
    return value if isinstance(value, dict) else {}


def _count(value: object) -> int | None:
    """An int32 count, also as the string some of Fullstory's counts are (`total_records`)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None

