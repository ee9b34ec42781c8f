"""Fullstory Server API v2 users emulator, mounted at `/fullstory` (FULLSTORY_API_URL = `$SANDBOX/fullstory`).

Vendor sources: Fullstory's own OpenAPI spec of the Users API (github fullstorydev/fullstory-node-sdk
`specs/users.sdk.swagger.json`), developer.fullstory.com `server/users/create-user`, `update-user`,
`create-batch-user-import-job`, `server/authentication`, `server/getting-started`, `overview/limits`,
`server/idempotent-requests`, as gathered in the project's Fullstory facts notes; spec §6 where they are
silent.

Verified there:
- Auth `Authorization: Basic <API key>`, the literal key, not base64 (the docs and both vendor SDKs); else
  401.
- Errors are `{"message", "code"}` (`code` snake_case): 400 `required_field`, 401 `unauthorized`, 404, 429
  `too_many_requests` with `Retry-After` in seconds, 500 `server_error`.
- `POST /v2/users` upserts by `uid` (omit it for an anonymous user) and answers 200 `{"id"}` only; properties
  merge, the newest value wins. `POST /v2/users/{id}` updates; a user's uid, once set, cannot change.
- `GET /v2/users/{id}` -> `{"id", "uid", "display_name", "email", "properties", "schema", "type_conflicts",
  "app_url", "is_being_deleted"}`; `GET /v2/users?uid=&email=&display_name=&is_identified=&page_token=` ->
  `{"results", "total_records" (a string), "next_page_token", "app_url"}`; `DELETE /v2/users/{id}` and
  `DELETE /v2/users?uid=`.
- Field limits: uid and display_name 256 characters, email 128; property names `[A-Za-z][A-Za-z0-9_]*`, at
  most 512 characters (the dotted path of a nested one too), at most 500 properties; a value over 8192 bytes
  is dropped; v2 property names must not carry the v1 type suffixes (`_str`, `_int`, ...).
- `POST /v2/users/batch` `{"requests": [user...]}` (at most 50,000) -> 200 `{"job": {"id", "status":
  "PROCESSING", "created"}}`; `GET /v2/users/batch/{job_id}` -> `{"imports", "errors", "job": {...,
  "finished"}}` with status PROCESSING, COMPLETED (no error) or FAILED (any item failed, "including partial
  failures");
  `/imports` and `/errors` answer 202 while the job runs, then pages of `{"results", "total_records",
  "next_page_token"}`, an error being `{"message", "code", "user": <the request item>}`. At most 100 jobs run
  at once (more wait); 429 once 200 jobs or 500,000 items are in progress.
- `Idempotency-Key`: the first answer is stored and replayed; the same key with another body is an error.

Choices where Fullstory is silent (unverified):
- The per-second rate limit is unpublished: `rate_limit` requests/s per key (a token bucket, off by default).
- Validation failures are 400 `invalid_argument` (in a batch: that item fails with that code, the rest are
  imported); an unknown top-level field is refused; a v1 type suffix is refused rather than kept.
- A job runs `batch_delay_seconds` of real time (a queued job starts when one of the 100 slots frees up);
  `created`/`finished` are real UTC times.
- Ids are numeric strings derived from the uid (or a counter for anonymous users), the same as the Streams
  show for the demo's users, who are known from the start. Lists page 100 results; page tokens are offsets.
- `DELETE` answers 200 `{}` and forgets the user at once (Fullstory deletes asynchronously:
  `is_being_deleted`). `schema` is shown only with `include_schema=true`: the declared one, else types
  inferred as `str`, `int`, `real`, `bool`, `object`, `list` (Fullstory's type names are unverified).
"""

from __future__ import annotations

import hashlib
import itertools
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from segment_ops.sandbox.common import (
    BodyTooLarge,
    TokenBucket,
    json_response,
    read_body,
    retry_after_headers,
    scheme_token,
)
from segment_ops.sandbox.fullstory.data import FS_ORG_ID, FullstoryUser, fullstory_id
from segment_ops.sandbox.recorder import Recorder

MAX_UID_CHARS = 256
MAX_DISPLAY_NAME_CHARS = 256
MAX_EMAIL_CHARS = 128
MAX_PROPERTY_NAME_CHARS = 512
MAX_PROPERTY_VALUE_BYTES = 8192
MAX_PROPERTIES = 500
MAX_BATCH_ITEMS = 50_000
MAX_RUNNING_JOBS = 100  # more wait until one finishes
MAX_JOBS_IN_PROGRESS = 200  # then 429
MAX_ITEMS_IN_PROGRESS = 500_000  # then 429
PAGE_SIZE = 100  # unverified
MAX_BODY_BYTES = 100_000_000
USER_FIELDS = ("uid", "display_name", "email", "properties", "schema")
V1_SUFFIXES = ("_str", "_strs", "_int", "_ints", "_real", "_reals", "_bool", "_bools", "_date", "_dates")
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")
_FAULT_CODES = {429: "too_many_requests", 500: "server_error", 503: "server_error"}
_TOO_MANY = "Too many requests. Client has exceeded the rate limit for this endpoint."


class FullstoryError(Exception):
    """An answer other than 200: status, Fullstory's `code` and `message`."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class StoredUser:
    id: str
    uid: str
    display_name: str = ""
    email: str = ""
    properties: dict = field(default_factory=dict)
    schema: dict | None = None
    from_api: bool = False  # created or changed through the API (not only known from the demo)
    updated_at: str = ""

    def shown(self, include_schema: bool = False) -> dict:
        schema = (self.schema or {"properties": _infer_types(self.properties)}) if include_schema else None
        return {"id": self.id, "uid": self.uid, "display_name": self.display_name, "email": self.email,
                "properties": self.properties, "schema": schema, "type_conflicts": None,
                "app_url": f"https://app.fullstory.com/ui/{FS_ORG_ID}/segments/everyone/people:search:sandbox/"
                           f"user/{self.id}",
                "is_being_deleted": False}


@dataclass
class Job:
    id: str
    items: list
    created: str
    starts: float  # monotonic
    finishes: float
    finished: str = ""
    imported: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return bool(self.finished)

    def status(self) -> str:
        if not self.done:
            return "PROCESSING"
        return "FAILED" if self.errors else "COMPLETED"

    def metadata(self) -> dict:
        job = {"id": self.id, "status": self.status(), "created": self.created}
        return job | ({"finished": self.finished} if self.done else {})


class Fullstory:
    """Fullstory's users: upserts, reads, deletes and asynchronous batch imports, per one API key."""

    name = "fullstory"

    def __init__(self, recorder: Recorder, *, api_key: str, seed: int,
                 demo_users: Callable[[], list[FullstoryUser]], rate_limit: float | None = None,
                 rate_burst: float | None = None, batch_delay_seconds: float = 0.2,
                 batch_max_items: int = MAX_BATCH_ITEMS) -> None:
        self.recorder = recorder
        self.api_key = api_key
        self.seed = seed
        self.batch_delay_seconds = batch_delay_seconds
        self.batch_max_items = batch_max_items
        self._demo_users = demo_users
        self._limiter = TokenBucket(rate_limit, rate_burst) if rate_limit else None
        self._forget()

    def routes(self) -> Sequence[BaseRoute]:
        return [
            Route("/v2/users", self._users, methods=["GET", "POST", "DELETE"]),
            Route("/v2/users/batch", self._create_batch, methods=["POST"]),
            Route("/v2/users/batch/{job_id}", self._job_status, methods=["GET"]),
            Route("/v2/users/batch/{job_id}/imports", self._job_imports, methods=["GET"]),
            Route("/v2/users/batch/{job_id}/errors", self._job_errors, methods=["GET"]),
            Route("/v2/users/{id}", self._user, methods=["GET", "POST", "DELETE"]),
        ]

    def fault_response(self, status: int, retry_after: int) -> Response:
        headers = retry_after_headers(retry_after) if status == 429 else None
        message = _TOO_MANY if status == 429 else f"sandbox fault injection: HTTP {status}"
        return _error(FullstoryError(status, _FAULT_CODES.get(status, "server_error"), message), headers)

    def reset(self) -> None:
        self._forget()
        if self._limiter:
            self._limiter.reset()

    # ------------------------------------------------------------------------------- control
    def users(self, *, include_demo: bool = False, uid: str | None = None) -> list[dict]:
        """The users held now (batch jobs due are applied first): those written through the API, or all."""
        self._settle()
        return [u.shown() | {"updated_at": u.updated_at} for u in self._all().values()
                if (include_demo or u.from_api) and (uid is None or u.uid == uid)]

    def jobs(self) -> list[dict]:
        self._settle()
        return [{"job": j.metadata(), "imports": len(j.imported), "errors": len(j.errors),
                 "requests": len(j.items)} for j in self._jobs.values()]

    # ------------------------------------------------------------------------------- state
    def _forget(self) -> None:
        self._by_id: dict[str, StoredUser] | None = None  # loaded from the demo on first use
        self._uids: dict[str, str] = {}  # uid -> id
        self._jobs: dict[str, Job] = {}
        self._idempotent: dict[str, tuple[bytes, int, bytes]] = {}  # key -> (body digest, status, answer)
        self._anonymous = itertools.count(1)
        self._job_numbers = itertools.count(1)

    def _all(self) -> dict[str, StoredUser]:
        if self._by_id is None:
            self._by_id = {u.id: StoredUser(u.id, u.uid, u.display_name, u.email) for u in self._demo_users()}
            self._uids = {u.uid: u.id for u in self._by_id.values() if u.uid}
        return self._by_id

    def _by_uid(self, uid: str) -> StoredUser | None:
        user_id = self._uids.get(uid) if uid else None
        return self._all().get(user_id) if user_id else None

    def _remove(self, user: StoredUser) -> None:
        del self._all()[user.id]
        self._uids.pop(user.uid, None)

    def _upsert(self, item: dict, user_id: str | None = None) -> StoredUser:
        """Create or update one validated user (by `id` when given, else by uid); raises FullstoryError."""
        _check_user(item)
        users = self._all()
        uid = item.get("uid") or ""
        if user_id is not None:
            user = users.get(user_id)
            if user is None:
                raise FullstoryError(404, "user_not_found", "User with that ID does not exist")
            if user.uid and uid and uid != user.uid:
                raise FullstoryError(400, "invalid_argument", "uid cannot be changed once it is set")
            if uid and not user.uid and (other := self._by_uid(uid)) is not None and other is not user:
                raise FullstoryError(400, "invalid_argument", "uid is already used by another user")
        else:
            user = self._by_uid(uid) if uid else None
        properties = _merge(user.properties if user else {}, _without_oversized(item.get("properties") or {}))
        if _count_leaves(properties) > MAX_PROPERTIES:
            raise FullstoryError(400, "invalid_argument",
                                 f"a user may have at most {MAX_PROPERTIES} properties")
        if user is None:
            new_id = fullstory_id(self.seed, uid) if uid else fullstory_id(
                self.seed, f"api-anonymous:{next(self._anonymous)}")
            user = users.setdefault(new_id, StoredUser(new_id, uid))
        if uid:
            user.uid = uid
            self._uids[uid] = user.id
        for name in ("display_name", "email"):
            if item.get(name):
                setattr(user, name, item[name])
        user.properties = properties
        if item.get("schema") is not None:
            user.schema = item["schema"]
        user.from_api = True
        user.updated_at = _iso(datetime.now(UTC))
        return user

    def _settle(self) -> None:
        """Run every job whose time has come, in the order they finish."""
        now = time.monotonic()
        for job in sorted((j for j in self._jobs.values() if not j.done and j.finishes <= now),
                          key=lambda j: j.finishes):
            log = self.recorder[self.name]
            for item in job.items:
                try:
                    if not isinstance(item, dict):
                        raise FullstoryError(400, "invalid_argument", "each request must be an object")
                    user = self._upsert(item, str(item["id"]) if item.get("id") else None)
                except FullstoryError as exc:
                    job.errors.append({"message": exc.message, "code": exc.code, "user": item})
                    continue
                shown = user.shown()
                job.imported.append({k: shown[k] for k in ("id", "uid", "display_name", "email", "properties",
                                                           "schema", "type_conflicts")})
                log.store({"kind": "batch_user", "job_id": job.id, "id": user.id, **item})
            job.finished = _iso(datetime.now(UTC))
            log.bump("batch_jobs", job.status())
            log.count("batch_imports", len(job.imported))
            log.count("batch_errors", len(job.errors))

    # ------------------------------------------------------------------------------- handlers
    def _check(self, request: Request) -> None:
        if scheme_token(request.headers.get("authorization"), "Basic") != self.api_key:
            raise FullstoryError(401, "unauthorized", "The API key is missing or invalid.")
        if self._limiter and (wait := self._limiter.wait_time(self.api_key)):
            raise _RateLimited(wait)
        self._settle()

    async def _users(self, request: Request) -> Response:
        return await self._handle(request, {"GET": self._list, "POST": self._create,
                                            "DELETE": self._delete_by_uid}[request.method])

    async def _user(self, request: Request) -> Response:
        return await self._handle(request, {"GET": self._get, "POST": self._update,
                                            "DELETE": self._delete}[request.method])

    async def _create_batch(self, request: Request) -> Response:
        return await self._handle(request, self._batch)

    async def _job_status(self, request: Request) -> Response:
        return await self._handle(request, self._status)

    async def _job_imports(self, request: Request) -> Response:
        return await self._handle(request, lambda r: self._results(r, "imported"))

    async def _job_errors(self, request: Request) -> Response:
        return await self._handle(request, lambda r: self._results(r, "errors"))

    async def _handle(self, request: Request, handler: Callable) -> Response:
        try:
            self._check(request)
            body = await _json_body(request) if request.method == "POST" else None
            key = request.headers.get("idempotency-key") if request.method == "POST" else None
            if key:
                return self._idempotent_answer(key, body, request, handler)
            status, answer = handler(request if body is None else (request, body))
        except _RateLimited as exc:
            return _error(FullstoryError(429, "too_many_requests", _TOO_MANY), retry_after_headers(exc.wait))
        except FullstoryError as exc:
            return _error(exc)
        return _answer(status, answer)

    def _idempotent_answer(self, key: str, body: object, request: Request, handler: Callable) -> Response:
        digest = hashlib.sha256(request.url.path.encode() + orjson.dumps(body, option=orjson.OPT_SORT_KEYS))
        stored = self._idempotent.get(key)
        log = self.recorder[self.name]
        log.first_seen(key)
        if stored is not None:
            if stored[0] != digest.digest():
                raise FullstoryError(400, "invalid_argument",
                                     "Idempotency-Key was already used with a different request")
            log.count("idempotent_replays")
            return Response(stored[2], status_code=stored[1], media_type="application/json")
        status, answer = handler((request, body))
        content = orjson.dumps(answer) if answer is not None else b""
        self._idempotent[key] = (digest.digest(), status, content)
        return _answer(status, answer)

    def _create(self, args: tuple[Request, object]) -> tuple[int, dict]:
        _, body = args
        if not isinstance(body, dict):
            raise FullstoryError(400, "invalid_argument", "body must be a JSON object")
        created = self._by_uid(str(body.get("uid") or "")) is None
        user = self._upsert(body)
        log = self.recorder[self.name]
        log.count("users_created" if created else "users_updated")
        log.store({"kind": "user", "id": user.id, **body})
        return 200, {"id": user.id}

    def _update(self, args: tuple[Request, object]) -> tuple[int, dict]:
        request, body = args
        if not isinstance(body, dict):
            raise FullstoryError(400, "invalid_argument", "body must be a JSON object")
        user = self._upsert(body, request.path_params["id"])
        log = self.recorder[self.name]
        log.count("users_updated")
        log.store({"kind": "user_update", "id": user.id, **body})
        return 200, {"id": user.id}

    def _get(self, request: Request) -> tuple[int, dict]:
        user = self._all().get(request.path_params["id"])
        if user is None:
            raise FullstoryError(404, "user_not_found", "User with that ID does not exist")
        return 200, user.shown(_flag(request, "include_schema"))

    def _list(self, request: Request) -> tuple[int, dict]:
        params = request.query_params
        wanted = {name: params[name] for name in ("uid", "email", "display_name") if params.get(name)}
        identified = params.get("is_identified")
        found = [u for u in self._all().values()
                 if all(getattr(u, name) == value for name, value in wanted.items())
                 and (identified is None or bool(u.uid) == _flag(request, "is_identified"))]
        start = _page_token(params.get("page_token"))
        page = found[start:start + PAGE_SIZE]
        more = start + PAGE_SIZE < len(found)
        include = _flag(request, "include_schema")
        return 200, {"results": [u.shown(include) for u in page], "total_records": str(len(found)),
                     "next_page_token": str(start + PAGE_SIZE) if more else "",
                     "app_url": f"https://app.fullstory.com/ui/{FS_ORG_ID}/segments/everyone/people:search:sandbox/0"}

    def _delete(self, request: Request) -> tuple[int, dict]:
        user = self._all().get(request.path_params["id"])
        if user is None:
            raise FullstoryError(404, "user_not_found", "User with that ID does not exist")
        self._remove(user)
        self.recorder[self.name].store({"kind": "delete", "id": user.id, "uid": user.uid})
        return 200, {}

    def _delete_by_uid(self, request: Request) -> tuple[int, dict]:
        uid = request.query_params.get("uid")
        if not uid:
            raise FullstoryError(400, "required_field", "uid is required")
        user = self._by_uid(uid)
        if user is None:
            raise FullstoryError(404, "user_not_found", "User with that uid does not exist")
        self._remove(user)
        self.recorder[self.name].store({"kind": "delete", "id": user.id, "uid": uid})
        return 200, {}

    def _batch(self, args: tuple[Request, object]) -> tuple[int, dict]:
        _, body = args
        if not isinstance(body, dict) or not isinstance(body.get("requests"), list):
            raise FullstoryError(400, "required_field", "requests is required (a JSON array of users)")
        items = body["requests"]
        if not items:
            raise FullstoryError(400, "invalid_argument", "requests must not be empty")
        if len(items) > self.batch_max_items:
            raise FullstoryError(400, "invalid_argument",
                                 f"requests has {len(items)} items; the limit is {self.batch_max_items}")
        running = [j for j in self._jobs.values() if not j.done]
        if len(running) >= MAX_JOBS_IN_PROGRESS or \
                sum(len(j.items) for j in running) + len(items) > MAX_ITEMS_IN_PROGRESS:
            raise _RateLimited(self.batch_delay_seconds)
        now = time.monotonic()
        # Jobs take the same time, so the 100 slots free up in creation order: the job 100 places earlier.
        ahead = running[-MAX_RUNNING_JOBS] if len(running) >= MAX_RUNNING_JOBS else None
        starts = max(now, ahead.finishes) if ahead else now
        job_id = _job_id(self.seed, next(self._job_numbers))
        job = Job(job_id, items, _iso(datetime.now(UTC)), starts, starts + self.batch_delay_seconds)
        self._jobs[job_id] = job
        log = self.recorder[self.name]
        log.store({"kind": "batch", "job_id": job_id, "requests": len(items)})
        log.bump("batch_jobs", "created")
        return 200, {"job": job.metadata()}

    def _job(self, request: Request) -> Job:
        job = self._jobs.get(request.path_params["job_id"])
        if job is None:
            raise FullstoryError(404, "resource_not_found", "Job with that ID does not exist")
        return job

    def _status(self, request: Request) -> tuple[int, dict]:
        job = self._job(request)
        return 200, {"imports": len(job.imported), "errors": len(job.errors), "job": job.metadata()}

    def _results(self, request: Request, kind: str) -> tuple[int, dict | None]:
        job = self._job(request)
        if not job.done:
            return 202, None
        rows = getattr(job, kind)
        start = _page_token(request.query_params.get("page_token"))
        more = start + PAGE_SIZE < len(rows)
        return 200, {"results": rows[start:start + PAGE_SIZE], "total_records": str(len(rows)),
                     "next_page_token": str(start + PAGE_SIZE) if more else ""}


class _RateLimited(Exception):
    def __init__(self, wait: float) -> None:
        super().__init__(f"retry after {wait:.2f} s")
        self.wait = wait


def _check_user(item: dict) -> None:
    """Refuse what Fullstory refuses in one user (`CreateUserRequest`); FullstoryError 400 when invalid."""
    unknown = sorted(set(item) - set(USER_FIELDS) - {"id"})
    if unknown:
        raise FullstoryError(400, "invalid_argument", f"unknown field {unknown[0]!r}")
    for name, limit in (("uid", MAX_UID_CHARS), ("display_name", MAX_DISPLAY_NAME_CHARS),
                        ("email", MAX_EMAIL_CHARS)):
        value = item.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise FullstoryError(400, "invalid_argument", f"{name} must be a string")
        if len(value) > limit:
            raise FullstoryError(400, "invalid_argument", f"{name} is longer than {limit} characters")
    properties = item.get("properties")
    if properties is not None:
        if not isinstance(properties, dict):
            raise FullstoryError(400, "invalid_argument", "properties must be an object")
        _check_names(properties, "")
    schema = item.get("schema")
    if schema is not None and not isinstance(schema, dict):
        raise FullstoryError(400, "invalid_argument", "schema must be an object")


def _check_names(properties: dict, prefix: str) -> None:
    for name, value in properties.items():
        path = f"{prefix}{name}"
        if not _NAME.match(name):
            raise FullstoryError(400, "invalid_argument",
                                 f"invalid property name {path!r}: use letters, digits and _, starting with "
                                 "a letter")
        if len(path) > MAX_PROPERTY_NAME_CHARS:
            raise FullstoryError(400, "invalid_argument", f"property name {path[:40]!r}... is longer than "
                                                          f"{MAX_PROPERTY_NAME_CHARS} characters")
        if name.lower().endswith(V1_SUFFIXES):
            raise FullstoryError(400, "invalid_argument", f"property {path!r} carries a v1 type suffix; v2 "
                                                          "infers types (omit the suffix)")
        if isinstance(value, dict):
            _check_names(value, f"{path}.")


def _without_oversized(properties: dict) -> dict:
    """The properties minus values over 8192 bytes (Fullstory drops such a property)."""
    kept = {}
    for name, value in properties.items():
        if isinstance(value, dict):
            kept[name] = _without_oversized(value)
        elif len(orjson.dumps(value)) <= MAX_PROPERTY_VALUE_BYTES:
            kept[name] = value
    return kept


def _merge(old: dict, new: dict) -> dict:
    merged = dict(old)
    for name, value in new.items():
        merged[name] = _merge(merged[name], value) if isinstance(value, dict) and isinstance(
            merged.get(name), dict) else value
    return merged


def _count_leaves(properties: dict) -> int:
    return sum(_count_leaves(v) if isinstance(v, dict) else 1 for v in properties.values())


def _infer_types(properties: dict) -> dict:
    def kind(value: object) -> object:
        if isinstance(value, dict):
            return _infer_types(value)
        if isinstance(value, bool):
            return "bool"
        return {int: "int", float: "real", list: "list"}.get(type(value), "str")

    return {name: kind(value) for name, value in properties.items()}


async def _json_body(request: Request) -> object:
    try:
        return orjson.loads(await read_body(request, MAX_BODY_BYTES))
    except BodyTooLarge as exc:
        raise FullstoryError(400, "invalid_argument", str(exc)) from None
    except orjson.JSONDecodeError:
        raise FullstoryError(400, "invalid_argument", "body is not valid JSON") from None


def _flag(request: Request, name: str) -> bool:
    return request.query_params.get(name, "").lower() in ("true", "1")


def _page_token(token: str | None) -> int:
    if not token:
        return 0
    if not token.isdigit():
        raise FullstoryError(400, "invalid_argument", "invalid page_token")
    return int(token)


def _job_id(seed: int, number: int) -> str:
    return hashlib.sha256(f"{seed}:fs-job:{number}".encode()).hexdigest()[:16]


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _answer(status: int, answer: object) -> Response:
    return Response(status_code=status) if answer is None else json_response(answer, status)


def _error(exc: FullstoryError, headers: dict[str, str] | None = None) -> Response:
    return json_response({"message": exc.message, "code": exc.code}, exc.status, headers)
