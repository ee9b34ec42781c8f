"""SIEM destinations for the audit trail: one interface, Splunk HEC first, a generic JSON-lines endpoint
second.

A `SiemDestination` is a delivery-engine destination (`name`, `max_batch_bytes`, `send_batch`, see
`engine.delivery.Destination`) that also knows how to frame one audit event as its own payload
(`frame`). The sync plans the framed payloads into the ledger, one per audit event id, and
`deliver_pending` sends them; each destination has its own ledger sync (`ledger_sync`), so each gets
every event exactly once on its own schedule. A destination that confirms later also has `confirm`
(receipts -> confirmed), which `engine.delivery.settle_awaiting` calls outside the send path.
"""

from __future__ import annotations

import re
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Protocol
from urllib.parse import urlsplit

import httpx
import orjson

from segment_ops.clients.base import (
    HttpClient,
    RetryEvent,
    RetryPolicy,
    SecretHeaderAuth,
    SecretPathTransport,
    environment_transport,
)
from segment_ops.clients.splunk_hec import SplunkHecClient, hec_event
from segment_ops.engine.delivery import AwaitingAck, Confirmation
from segment_ops.engine.ledger import AwaitingReceipt

AUDIT_SOURCE = "segment:audit"
AUDIT_SOURCETYPE = "segment:audit"
# Generic JSON-lines collectors (Vector, Fluent Bit, Logstash http input) commonly cap bodies at 1 MB.
JSONL_MAX_BATCH_BYTES = 900_000
JSONL_PLACEHOLDER_PATH = "/***"  # what requests, logs and errors name instead of SIEM_JSONL_URL's secret path


class SiemDestination(Protocol):
    """Where audit events go: a delivery-engine destination that frames its own payloads."""

    name: str
    max_batch_bytes: int

    def frame(self, event: dict) -> bytes:
        """The encoded payload for one (already redacted) audit event; deterministic."""
        ...

    def send_batch(self, payloads: Sequence[bytes], *,
                   on_retry: Callable[[RetryEvent], None] | None = None) -> object:
        ...

    def close(self) -> None:
        ...


def ledger_sync(destination: SiemDestination) -> str:
    """The ledger's sync name for one destination: each destination's exactly-once is tracked apart."""
    return ("audit_trail" if destination.name == SplunkHecDestination.name
            else f"audit_trail.{destination.name}")


def event_epoch(event: dict) -> float:
    """The audit event's ISO `timestamp` as epoch seconds (with milliseconds)."""
    return round(datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp(), 3)


class SplunkHecDestination:
    """Splunk HEC: each audit event as one HEC event, with indexer acknowledgement when the token has it on.

    With ack on, HEC's 200 only means "received"; an event counts as delivered once the indexers
    acknowledge its ackId, which can take minutes (spec §5, §7). So `send_batch` returns at HEC's 200 with
    `AwaitingAck("<channel>:<ackId>:<send id>")`: the batch is recorded as awaiting confirmation and never
    waits in the send path. The send id makes each receipt unique: HEC numbers ackIds per channel from 0
    and starts again when it forgets the channel (a restart, or idle past `maxIdleTime`), so a later send
    can get an ackId an older, never-acknowledged one still holds. `confirm` asks `/services/collector/ack`
    with channel and ackId on each receipt's own channel; the sync calls it at the start of a run and for a
    bounded time after sending (`engine.delivery.settle_awaiting`), and a batch not acknowledged within the
    ack timeout is sent again. HEC does no dedupe, so that rare re-send may be indexed twice (HEC acks are
    at-least-once); each event carries `fields.audit_event_id` so a Splunk search can `dedup` it.
    """

    name = "splunk_hec"

    def __init__(self, client: SplunkHecClient, *, index: str | None, host: str, source: str = AUDIT_SOURCE,
                 sourcetype: str = AUDIT_SOURCETYPE, ack_timeout: float = 300.0,
                 ack_settle: float = 30.0) -> None:
        self.client = client
        self.max_batch_bytes = client.max_batch_bytes
        self.index = index or None
        self.host = host
        self.source = source
        self.sourcetype = sourcetype
        self.ack_timeout = ack_timeout  # seconds an ackId may stay unacknowledged before its batch is re-sent
        self.ack_settle = ack_settle  # seconds a run keeps polling acks after sending
        self.ack_refusal: str | None = None  # HEC's answer when it last refused an ack query (e.g. code 14)

    @property
    def channel(self) -> str | None:
        return self.client.channel

    def frame(self, event: dict) -> bytes:
        return hec_event(event, time=event_epoch(event), host=self.host, source=self.source,
                         sourcetype=self.sourcetype, index=self.index,
                         fields={"audit_event_id": str(event["id"])})

    def send_batch(self, payloads: Sequence[bytes], *,
                   on_retry: Callable[[RetryEvent], None] | None = None) -> AwaitingAck | None:
        ack_id = self.client.send_batch(payloads, on_retry=on_retry)
        if ack_id is None:  # ack off: HEC's 200 is all there is
            return None
        return AwaitingAck(ack_receipt(self.client.channel or "", ack_id))

    def confirm(self, receipts: Sequence[AwaitingReceipt]) -> dict[str, Confirmation]:
        """HEC's answer for each open receipt, asked on each one's channel.

        A receipt whose ackId a later send on its channel got again (or a lower one) is LOST: HEC forgot the
        channel in between and numbers from 0 again, so that ackId now speaks for the later send. An ack
        query HEC refuses (code 14 "ACK is disabled", 11 "Invalid data channel", ...) confirms nothing: the
        receipts wait for their timeout and are sent again.
        """
        by_channel: defaultdict[str, list[tuple[AwaitingReceipt, int]]] = defaultdict(list)
        for awaiting in receipts:
            channel, ack_id = parse_ack_receipt(awaiting.receipt)
            by_channel[channel].append((awaiting, ack_id))
        answers: dict[str, Confirmation] = {}
        self.ack_refusal = None
        for channel, sent in by_channel.items():
            lost = renumbered(sent)
            answers |= dict.fromkeys(lost, Confirmation.LOST)
            live = [(awaiting, ack_id) for awaiting, ack_id in sent if awaiting.receipt not in lost]
            if not live:
                continue
            acks = self.client.query_acks({ack_id for _, ack_id in live}, channel=channel)
            self.ack_refusal = acks.refusal or self.ack_refusal
            answers |= {awaiting.receipt: Confirmation.CONFIRMED if acks.acked.get(ack_id)
                        else Confirmation.WAITING for awaiting, ack_id in live}
        return answers

    def close(self) -> None:
        self.client.close()


def ack_receipt(channel: str, ack_id: int) -> str:
    """The ledger receipt of one HEC request: its channel, its ackId (counted per channel) and an id of this
    send, since HEC hands the same ackId out again after it forgets a channel."""
    return f"{channel}:{ack_id}:{uuid.uuid4().hex}"


def parse_ack_receipt(receipt: str) -> tuple[str, int]:
    """(channel, ackId) of a receipt; receipts recorded before send ids existed are `<channel>:<ackId>`."""
    channel, ack_id, *_ = receipt.split(":")
    return channel, int(ack_id)


def renumbered(sent: Sequence[tuple[AwaitingReceipt, int]]) -> set[str]:
    """Receipts of one channel HEC can no longer answer for, because it numbered the channel again since.

    HEC's ackIds on a channel only grow while it remembers the channel. So when a request that began after
    receipt A's answer was recorded got an ackId <= A's, HEC forgot the channel in between: A is lost.
    Requests that overlapped (concurrent sends) are not compared: their ackIds may come in any order. Two
    receipts with the same ackId cannot both be live, so the older of them is lost even when the start of
    the newer is not known (receipts recorded before start times were).
    """
    lost: set[str] = set()
    for older, older_id in sent:
        for newer, newer_id in sent:
            if newer is older or newer_id > older_id:
                continue
            began_after = newer.sent_at is not None and older.taken_at < newer.sent_at
            if began_after or (newer_id == older_id and older.taken_at < newer.taken_at):
                lost.add(older.receipt)
                break
    return lost


class JsonLinesUrlError(ValueError):
    """SIEM_JSONL_URL is not an absolute http(s) URL without user info (its text is never shown)."""


class JsonLinesDestination:
    """A generic HTTPS endpoint taking newline-delimited JSON (`POST`, `Authorization: Bearer`).

    Each line is `{"id", "time", "source", "sourcetype", "event"}`. 5xx/429/network errors are retried by
    the base client; a 400/413 is a request error, which the engine isolates down to the bad line.

    The URL's path and query are a secret (`SIEM_JSONL_URL`): collectors put ingest keys there (a
    Slack-style webhook path, `?token=`). As with the alert webhook (`clients.slack`), requests name the
    placeholder path `/***` and a transport swaps in the real one at the last moment, so log lines (ours
    and httpx's), errors and reprs show only the host; the path and its parts are also scrubbed from any
    vendor text the base client reports.
    """

    name = "jsonl"
    max_batch_bytes = JSONL_MAX_BATCH_BYTES

    def __init__(self, url: str, token: str, *, source: str = AUDIT_SOURCE,
                 sourcetype: str = AUDIT_SOURCETYPE, timeout: float = 30.0, retry: RetryPolicy | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
            raise JsonLinesUrlError("SIEM_JSONL_URL must be an absolute http(s) URL without user info, such "
                                    "as https://collector.example/ingest (a credential goes in "
                                    "SIEM_JSONL_TOKEN or the path)")
        self.host = f"{parts.scheme}://{parts.netloc}"
        secret_path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        pieces = tuple(p for p in re.split(r"[/?&=;]", secret_path) if len(p) >= 8)
        auth = SecretHeaderAuth("Authorization", f"Bearer {token}", (token, secret_path, *pieces))
        self.path = JSONL_PLACEHOLDER_PATH
        self.source = source
        self.sourcetype = sourcetype
        inner = transport or environment_transport(url)
        self.http = HttpClient("siem_jsonl", self.host, auth=auth,
                               headers={"Content-Type": "application/x-ndjson"}, timeout=timeout,
                               retry=retry or RetryPolicy(),
                               transport=SecretPathTransport(secret_path, inner))

    def __repr__(self) -> str:
        return f"JsonLinesDestination(host={self.host!r})"

    def frame(self, event: dict) -> bytes:
        return orjson.dumps({"id": str(event["id"]), "time": event_epoch(event), "source": self.source,
                             "sourcetype": self.sourcetype, "event": event})

    def send_batch(self, payloads: Sequence[bytes], *,
                   on_retry: Callable[[RetryEvent], None] | None = None) -> None:
        if not payloads:
            return
        body = b"\n".join(payloads) + b"\n"
        self.http.request("POST", self.path, content=body, on_retry=on_retry)

    def close(self) -> None:
        self.http.close()
