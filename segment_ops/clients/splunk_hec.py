"""Splunk HTTP Event Collector client (spec §5, §7): `Authorization: Splunk <token>`, concatenated JSON
events.

An answer carrying `invalid-event-number` is a partial batch: the events before it were indexed (spec §7).
Indexer acknowledgement: each POST on a channel returns an `ackId`, polled later on that same channel.
Network errors and HEC's "try again" answers are retried; HEC does no dedupe, so a retried batch may be
indexed twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import httpx
import orjson

from segment_ops.clients.base import (
    HttpClient,
    PartialBatchError,
    RetryableStatuses,
    RetryEvent,
    RetryPolicy,
    VendorFatalError,
    VendorRequestError,
    describe_error,
    header_auth,
)

# Splunk Cloud advises requests of at most 1 MB (spec §5, unverified); Enterprise allows far more.
MAX_BATCH_BYTES = 900_000
# What HEC means as "try again later". HEC's own: code 8 (HTTP 500) and code 9 "server busy" (503), the two
# codes HEC client libraries retry (spec §5, splunk/cloudfwd ServerErrors.java); codes 18-20 "HEC is
# unhealthy" are 503 too. The load balancer in front of HEC (Splunk Cloud, an ELB/nginx on Enterprise) adds
# 502/504 and 429. Every other status is final: 501/505 and the rest of 5xx are not HEC's, 4xx codes say the
# request is wrong.
RETRYABLE = RetryableStatuses(four_xx=frozenset({429}),
                              not_five_xx=frozenset(range(500, 600)) - {500, 502, 503, 504})
# 400-class codes that say the token's setup is wrong, not one event (spec §5): incorrect index (7), data
# channel missing/invalid (10, 11), ACK disabled (14). Every event would fail the same way, so these
# stop the run instead of being split down to single events and rejected one by one.
CONFIGURATION_CODES = frozenset({7, 10, 11, 14})
# Statuses of an ack query read as "cannot confirm" rather than an error (HEC's own answers are 400s:
# code 11 "Invalid data channel" for a channel it forgot, 14 "ACK is disabled", ...); 401/403 stay errors
# (the token is wrong, so sending fails too) and 429 is retried.
ACK_CANNOT_CONFIRM = frozenset(range(400, 500)) - {401, 403, 429}
# ackIds per `/services/collector/ack` request: our choice (HEC documents no cap), to keep bodies small.
ACK_QUERY_CHUNK = 1_000
EVENT_PATH = "/services/collector/event"
ACK_PATH = "/services/collector/ack"
HEALTH_PATH = "/services/collector/health"


@dataclass(frozen=True)
class AckStatus:
    """HEC's answer to an ack query: which ackIds are acknowledged, and why it could not say if it refused."""

    acked: dict[int, bool]
    refusal: str | None = None  # e.g. 'HTTP 400: ACK is disabled (code 14)'


@dataclass(frozen=True)
class AckSetting:
    """Whether a token has indexer acknowledgement on, as HEC's answer to an ack query tells: `enabled` None
    when the answer was none HEC gives (a proxy's 404, an unknown code): `status`, `code` and `answer` (the
    body's words, never the token) then say what came back, for a warning rather than a failure."""

    enabled: bool | None
    status: int | None = None
    code: int | None = None  # HEC's `code` in the body, when it has one
    answer: str = ""

    def describe(self) -> str:
        """E.g. `HTTP 404: Not Found`, `HTTP 400: Invalid data format (code 6)`."""
        return f"HTTP {self.status}: {self.answer}" if self.status is not None else self.answer


class HecConfigurationError(VendorFatalError, PartialBatchError):
    """HEC refused the request for its setup (index, channel, ack), not for its data: fix the configuration.

    `accepted`: events at the front of the batch indexed before the refusal (code 7 names the first event
    with a refused index, spec §7); 0 when the answer named none.
    """


def hec_event(event: object, *, time: float | None = None, host: str | None = None, source: str | None = None,
              sourcetype: str | None = None, index: str | None = None, fields: dict | None = None) -> bytes:
    """One encoded HEC event (spec §5, event body); metadata left None falls back to the token's defaults."""
    envelope: dict = {}
    for key, value in (("time", time), ("host", host), ("source", source), ("sourcetype", sourcetype),
                       ("index", index)):
        if value is not None:
            envelope[key] = value
    envelope["event"] = event
    if fields:
        envelope["fields"] = fields
    return orjson.dumps(envelope)


class SplunkHecClient:
    """A delivery-engine destination: `name`, `max_batch_bytes` and `send_batch` of encoded HEC events.

    `channel` (a GUID) goes with every event POST as `X-Splunk-Request-Channel`; with indexer ack on, HEC
    answers each POST with an `ackId` counted on that channel (spec §5).
    """

    name = "splunk_hec"
    max_batch_bytes = MAX_BATCH_BYTES

    def __init__(self, base_url: str, token: str, *, channel: str | None = None, timeout: float = 30.0,
                 retry: RetryPolicy | None = None, transport: httpx.BaseTransport | None = None) -> None:
        self.channel = channel
        self.http = HttpClient(
            "splunk_hec",
            base_url,
            auth=header_auth("Authorization", token, scheme="Splunk"),
            headers={"Content-Type": "application/json"},
            timeout=timeout,
            retry=retry or RetryPolicy(),
            retryable=RETRYABLE,
            transport=transport,
        )

    def send_batch(self, payloads: Sequence[bytes], *,
                   on_retry: Callable[[RetryEvent], None] | None = None) -> int | None:
        """POST already-encoded events; returns the ackId when indexer ack is on.

        A 400 naming `invalid-event-number` n (codes 6, 7, 12, 13, 15) means events 0..n-1 were indexed (spec
        §7): a `PartialBatchError`, so the engine never re-sends that prefix; for code 7 (index not allowed)
        it is a `HecConfigurationError` that still carries the prefix and stops the run.
        """
        headers = {"X-Splunk-Request-Channel": self.channel} if self.channel else None
        response = self.http.request("POST", EVENT_PATH, content=b"".join(payloads), headers=headers,
                                     on_retry=on_retry, ok_statuses=(400,))
        body = _json_object(response)
        if response.status_code == 400:
            raise _refusal(self.http.vendor, "POST", EVENT_PATH, response, body, events=len(payloads))
        ack_id = body.get("ackId")
        return ack_id if isinstance(ack_id, int) and not isinstance(ack_id, bool) else None

    def query_acks(self, ack_ids: Iterable[int], *, channel: str | None = None) -> AckStatus:
        """Which ackIds of `channel` (default: this client's) the indexers have acknowledged (spec §5).

        An ackId HEC leaves out of its answer counts as not acknowledged (yet). Any refusal other than
        401/403 (e.g. code 11 for a channel HEC dropped after `maxIdleTime`, 600 s by default,
        inputs.conf.spec `[http]`; code 14 when ack was turned off) says nothing about the ackIds: they
        count as not acknowledged, with the refusal kept in `refusal`, so they time out and are sent again.
        """
        channel = channel or self.channel
        if not channel:
            raise ValueError("indexer acknowledgement needs a channel")
        ids = sorted(set(ack_ids))
        status = AckStatus({})
        for start in range(0, len(ids), ACK_QUERY_CHUNK):
            chunk = ids[start:start + ACK_QUERY_CHUNK]
            response = self.http.request("POST", ACK_PATH, json={"acks": chunk}, params={"channel": channel},
                                         ok_statuses=ACK_CANNOT_CONFIRM)
            if response.status_code >= 400:
                status = AckStatus(status.acked | dict.fromkeys(chunk, False), describe_error(response))
                continue
            acks = _json_object(response).get("acks")
            answered = acks if isinstance(acks, dict) else {}
            status.acked.update({ack_id: answered.get(str(ack_id)) is True for ack_id in chunk})
        return status

    def health(self) -> dict:
        """`GET /services/collector/health` (spec §5: code 17 "HEC is healthy"; 503 codes 18-20 when not)."""
        return _json_object(self.http.request("GET", HEALTH_PATH))

    def ack_setting(self) -> AckSetting:
        """Whether the token has indexer acknowledgement on, asked without indexing anything: an ack query on
        a fresh channel answers code 14 "ACK is disabled" when it is off (spec §5); with it on, HEC answers
        the query (or refuses the unknown channel, codes 10/11). Any other 4xx: unknown (`enabled` None).
        HEC checks the token first: a refused one raises `VendorAuthError` (codes 1-4); 429/5xx are retried,
        then raise `VendorUnavailable`."""
        response = self.http.request("POST", ACK_PATH, json={"acks": [0]},
                                     params={"channel": str(uuid.uuid4())}, ok_statuses=ACK_CANNOT_CONFIRM)
        if response.status_code < 400:
            return AckSetting(True, response.status_code)
        code = _json_object(response).get("code")
        code = code if isinstance(code, int) and not isinstance(code, bool) else None
        if code in (10, 11, 14):
            return AckSetting(code != 14, response.status_code, code)
        return AckSetting(None, response.status_code, code, self.http.scrub(describe_error(response)))

    def close(self) -> None:
        self.http.close()


def _json_object(response: httpx.Response) -> dict:
    try:
        body = response.json() if response.content else {}
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _refusal(vendor: str, method: str, path: str, response: httpx.Response, body: dict,
             *, events: int) -> VendorRequestError:
    """The error for a 400: partial when it names an event inside the batch, final otherwise."""
    message = describe_error(response)
    code = body.get("code")
    number = body.get("invalid-event-number")
    # Only an index inside the batch proves a prefix was indexed; anything else is treated as a plain 400.
    in_batch = isinstance(number, int) and not isinstance(number, bool) and 0 <= number < events
    accepted = number if in_batch else None
    if code in CONFIGURATION_CODES:
        return HecConfigurationError(vendor, method, path, message, accepted=accepted or 0, status=400)
    if accepted is not None:
        return PartialBatchError(vendor, method, path, message, accepted=accepted, status=400)
    return VendorRequestError(vendor, method, path, message, status=400)
