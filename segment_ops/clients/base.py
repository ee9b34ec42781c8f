"""The one HTTP base every vendor client is built on.

It owns what each client would otherwise re-implement: timeouts, retries with exponential backoff and
jitter, `Retry-After` / `X-RateLimit-Reset`, a cap on total retry time, an optional request-rate cap,
and credentials that never reach a log line, an exception message or a repr. No Dagster imports.
"""

from __future__ import annotations

import base64
import email.utils
import functools
import logging
import os
import random
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx

log = logging.getLogger("segment_ops.clients")

T = TypeVar("T")


@dataclass(frozen=True)
class RetryableStatuses:
    """Which HTTP statuses one vendor's API means as "try again later": the 4xx listed, and every 5xx but
    those listed. Each client declares its vendor's set, with its source; everything else is final."""

    four_xx: frozenset[int] = frozenset({408, 429})
    not_five_xx: frozenset[int] = frozenset({501, 505})

    def __contains__(self, status: object) -> bool:
        if not isinstance(status, int):
            return False
        return status in self.four_xx or (500 <= status <= 599 and status not in self.not_five_xx)


# A request timeout or a throttle, and a server error other than "not implemented" / "version not supported".
DEFAULT_RETRYABLE = RetryableStatuses()


class VendorError(Exception):
    """A vendor call failed. Carries the context a person needs, never a credential."""

    def __init__(self, vendor: str, method: str, path: str, message: str, status: int | None = None,
                 attempts: int = 1) -> None:
        self.vendor = vendor
        self.method = method
        self.path = path
        self.status = status
        self.vendor_message = message
        self.attempts = attempts
        where = f"{vendor} {method} {path}"
        code = f" -> HTTP {status}" if status is not None else ""
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        super().__init__(f"{where}{code}{tries}: {message}")


class VendorFatalError(VendorError):
    """Every request would fail the same way (credentials, setup): stop at once, reject nothing."""


class VendorAuthError(VendorFatalError):
    """401/403: the credential is missing, wrong or lacks a scope. Retrying will not help."""


class VendorRequestError(VendorError):
    """A 4xx other than auth and throttling: the request itself is wrong and will fail again."""


class PartialBatchError(VendorRequestError):
    """A batch was refused at one event after the ones before it were accepted (Splunk HEC code 6).

    `accepted` events at the front were taken; the event at that index is the bad one.
    """

    def __init__(self, vendor: str, method: str, path: str, message: str, *, accepted: int,
                 status: int | None = None, attempts: int = 1) -> None:
        super().__init__(vendor, method, path, message, status=status, attempts=attempts)
        self.accepted = accepted


class VendorUnavailable(VendorError):
    """Retries ran out (attempts or total time) on 429, 5xx or network errors."""


@dataclass(frozen=True)
class RetryPolicy:
    """How long and how hard to retry. Defaults follow analytics-python (spec §1), with a time cap."""

    max_attempts: int = 10
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    jitter: float = 0.1
    max_elapsed: float = 300.0
    retry_after_cap: float = 300.0

    def backoff(self, retry_number: int) -> float:
        """Delay before retry `retry_number` (1-based): immediate first retry, then 0.5 s, 1 s, 2 s...
        capped."""
        if retry_number <= 1:
            return 0.0
        base = min(self.backoff_max, self.backoff_initial * 2 ** (retry_number - 2))
        return base * (1 + random.uniform(0, self.jitter))


@dataclass(frozen=True)
class RetryEvent:
    """Reported to `on_retry` callbacks so callers can count and show retries."""

    vendor: str
    path: str
    attempt: int
    delay: float
    reason: str


class SecretHeaderAuth(httpx.Auth):
    """Puts a credential in one header at send time; its repr and str never show the value."""

    def __init__(self, header: str, value: str, parts: tuple[str, ...] = ()) -> None:
        self._header = header
        self._value = value
        self._parts = tuple(p for p in parts if p)

    def auth_flow(self, request: httpx.Request) -> Iterator[httpx.Request]:
        request.headers[self._header] = self._value
        yield request

    def __repr__(self) -> str:
        return f"SecretHeaderAuth({self._header!r}, '***')"

    def secret_values(self) -> tuple[str, ...]:
        """What must never be shown: the header value and the credential inside it."""
        return (self._value, *self._parts)


def basic_auth(username: str, password: str = "") -> SecretHeaderAuth:
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return SecretHeaderAuth("Authorization", f"Basic {token}", (token, username, password))


def bearer_auth(token: str) -> SecretHeaderAuth:
    return SecretHeaderAuth("Authorization", f"Bearer {token}", (token,))


def header_auth(header: str, value: str, scheme: str = "") -> SecretHeaderAuth:
    return SecretHeaderAuth(header, f"{scheme} {value}" if scheme else value, (value,))


class RateLimiter:
    """A thread-safe request-rate cap (token bucket); `None` or 0 means unlimited."""

    def __init__(self, per_second: float | None, burst: float | None = None) -> None:
        self.per_second = per_second or 0.0
        self._capacity = burst if burst is not None else max(1.0, self.per_second)
        self._tokens = self._capacity
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def acquire(self) -> None:
        if self.per_second <= 0:
            return
        while True:
            with self._lock:
                now = time.monotonic()
                self._tokens = min(self._capacity, self._tokens + (now - self._last) * self.per_second)
                self._last = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                wait = (1 - self._tokens) / self.per_second
            time.sleep(wait)


def tls_context() -> ssl.SSLContext:
    """httpx's default certificate verification (certifi's CA bundle, or SSL_CERT_FILE / SSL_CERT_DIR), built
    once per setting: building it parses the whole CA bundle, about 25 ms, which every `httpx.Client` pays
    anew. An SSLContext is safe to share between connections; pass it as `verify=`."""
    return _tls_context(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))


@functools.lru_cache(maxsize=4)
def _tls_context(cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext:
    return httpx.create_ssl_context()


@dataclass
class HttpClient:
    """A vendor's base URL, auth, timeouts and retry policy around one pooled `httpx.Client`.

    Thread-safe: one instance may serve several sending threads.
    """

    vendor: str
    base_url: str
    auth: httpx.Auth | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout: float = 15.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    rate_limiter: RateLimiter | None = None
    # The vendor's own retryable statuses (each client passes its set, with its source).
    retryable: RetryableStatuses = DEFAULT_RETRYABLE
    # Seconds to wait read from a throttled response's body, for vendors that say it there rather than in
    # `Retry-After` (Segment Public API's `msBeforeNext`, spec §7). Consulted only without `Retry-After`.
    retry_hint: Callable[[httpx.Response], float | None] | None = None
    max_connections: int = 16
    transport: httpx.BaseTransport | None = None
    sleep: Callable[[float], None] = time.sleep

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/")
        secrets = self.auth.secret_values() if isinstance(self.auth, SecretHeaderAuth) else ()
        self._secrets = tuple(s for s in secrets if len(s) >= 4)
        self._client = httpx.Client(
            base_url=self.base_url,
            auth=self.auth,
            headers={"User-Agent": "segment-ops/0.1", **dict(self.headers)},
            timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0)),
            limits=httpx.Limits(max_connections=self.max_connections,
                                max_keepalive_connections=self.max_connections),
            transport=self.transport,
            verify=tls_context(),
        )

    def __repr__(self) -> str:
        return f"HttpClient(vendor={self.vendor!r}, base_url={self.base_url!r})"

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        on_retry: Callable[[RetryEvent], None] | None = None,
        ok_statuses: Iterable[int] = (),
    ) -> httpx.Response:
        """Send a request, retrying what is retryable; return a 2xx (or `ok_statuses`) response or raise."""
        started = time.monotonic()
        attempt = 0
        allowed = set(ok_statuses)
        while True:
            attempt += 1
            if self.rate_limiter is not None:
                self.rate_limiter.acquire()
            send_headers = dict(headers or {})
            if attempt > 1:
                send_headers["X-Retry-Count"] = str(attempt - 1)
            try:
                response = self._client.request(method, path, json=json, content=content, params=params,
                                                headers=send_headers)
            except httpx.TransportError as exc:
                reason = self.scrub(f"{type(exc).__name__}: {_safe_text(str(exc)) or 'connection failed'}")
                retry_after = None
                status = None
            else:
                status = response.status_code
                if status < 300 or status in allowed:
                    return response
                message = self.scrub(describe_error(response))
                if status not in self.retryable:
                    cls = VendorAuthError if status in (401, 403) else VendorRequestError
                    raise cls(self.vendor, method, path, message, status=status, attempts=attempt)
                reason = f"HTTP {status}: {message}"
                retry_after = self._retry_after(response)
            elapsed = time.monotonic() - started
            delay = self.retry.backoff(attempt)
            if retry_after is not None:
                delay = max(delay, min(retry_after, self.retry.retry_after_cap))
            if attempt >= self.retry.max_attempts or elapsed + delay > self.retry.max_elapsed:
                raise VendorUnavailable(self.vendor, method, path, f"gave up: {reason}", status=status,
                                        attempts=attempt)
            log.warning("%s %s %s failed (%s); retry %d in %.2fs", self.vendor, method, path, reason, attempt,
                        delay)
            if on_retry is not None:
                on_retry(RetryEvent(self.vendor, path, attempt, delay, reason))
            if delay > 0:
                self.sleep(delay)

    def _retry_after(self, response: httpx.Response) -> float | None:
        """`Retry-After`, else the vendor's body hint, else `X-RateLimit-Reset` (spec §1, §2, §7)."""
        seconds = retry_after_seconds(response.headers, names=("retry-after",))
        if seconds is None and self.retry_hint is not None:
            try:
                seconds = self.retry_hint(response)
            except ValueError:  # a body that is not what the vendor documents: fall back to the headers
                seconds = None
        if seconds is None:
            seconds = retry_after_seconds(response.headers, names=("x-ratelimit-reset",))
        return seconds

    def scrub(self, text: str) -> str:
        """Vendors sometimes echo what they were sent; a credential must not ride along into errors."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def get_json(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs).json()

    def post_json(self, path: str, body: Any, **kwargs: Any) -> Any:
        response = self.request("POST", path, json=body, **kwargs)
        return response.json() if response.content else None

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def paginate(fetch_page: Callable[[str | None], tuple[list[T], str | None]]) -> Iterator[T]:
    """Yield every item of a cursor-paginated list: `fetch_page(cursor) -> (items, next_cursor)`."""
    cursor: str | None = None
    seen: set[str] = set()
    while True:
        items, cursor = fetch_page(cursor)
        yield from items
        if not cursor:
            return
        if cursor in seen:  # a vendor bug must not become an endless loop
            raise VendorError("pagination", "GET", "", f"cursor {cursor!r} repeated")
        seen.add(cursor)


def retry_after_seconds(headers: Mapping[str, str], now: datetime | None = None,
                        names: Iterable[str] = ("retry-after", "x-ratelimit-reset")) -> float | None:
    """Seconds to wait from `Retry-After` (seconds or HTTP-date) or `X-RateLimit-Reset`, if present.

    `X-RateLimit-Reset` is seconds-until-retry on the Tracking API and an RFC 5322 date on the
    Public API (spec §1, §2); both forms are read.
    """
    for name in names:
        value = headers.get(name)
        if value is None:
            continue
        value = value.strip()
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            continue
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
    return None


def describe_error(response: httpx.Response) -> str:
    """The vendor's own words for an error response, whatever its envelope (spec §1, §2, §4, §5)."""
    try:
        body = response.json()
    except ValueError:
        return _safe_text(response.text) or response.reason_phrase
    if isinstance(body, dict):
        if isinstance(body.get("errors"), list) and body["errors"]:  # Segment Public API
            first = body["errors"][0]
            if isinstance(first, dict):
                return _safe_text(str(first.get("message") or first))
        if "message" in body:  # Segment Tracking API {code, message}
            code = body.get("code")
            return _safe_text(f"{body['message']}" + (f" (code {code})" if code is not None else ""))
        if "text" in body:  # Splunk HEC {text, code}
            return _safe_text(f"{body['text']} (code {body.get('code')})")
        if isinstance(body.get("error"), dict) and "message" in body["error"]:  # Segment Profile API
            error = body["error"]
            return _safe_text(f"{error['message']}" + (f" ({error['code']})" if error.get("code") else ""))
        if "error" in body:
            return _safe_text(str(body["error"]))
    return _safe_text(str(body))


def _safe_text(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "…"


class SecretPathTransport(httpx.BaseTransport):
    """Sends each request to the real, secret path of its URL instead of the placeholder the caller used, so
    the path (a webhook's or an endpoint's credential) never appears in a request that is logged."""

    def __init__(self, path: str, inner: httpx.BaseTransport) -> None:
        self._path = path
        self._inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        real = httpx.Request(request.method, request.url.copy_with(raw_path=self._path.encode()),
                             headers=request.headers, stream=request.stream, extensions=request.extensions)
        return self._inner.handle_request(real)

    def close(self) -> None:
        self._inner.close()

    def __repr__(self) -> str:
        return "SecretPathTransport('***')"


def environment_transport(url: str) -> httpx.HTTPTransport:
    """The transport `httpx.Client` would pick from the environment for `url`: through HTTP(S)_PROXY /
    ALL_PROXY unless NO_PROXY exempts the host, verifying TLS with SSL_CERT_FILE / SSL_CERT_DIR when set
    (`HTTPTransport(trust_env=True)`). A custom transport passed to `httpx.Client` skips httpx's own
    environment handling, so `SecretPathTransport` wraps this one."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if proxy and parts.hostname and urllib.request.proxy_bypass(parts.hostname):
        proxy = None
    if proxy and "://" not in proxy:
        proxy = f"http://{proxy}"
    return httpx.HTTPTransport(trust_env=True, proxy=proxy or None, verify=tls_context())
