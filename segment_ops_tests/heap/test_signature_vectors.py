"""Known-answer vectors from Heap's reference (computed outside this code, see reference_data.py): the
verifier, the JSON.stringify re-serialisation and the sandbox's signer each checked against them, and the
real `segment-ops webhooks` process accepting Heap's reference bodies at /webhooks/heap."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import orjson
import pytest

from segment_ops.clients.base import tls_context
from segment_ops.sandbox.heap.webhooks import heap_hash
from segment_ops.syncs.heap.inbox import Inbox
from segment_ops.syncs.heap.receiver import WebhookConfig
from segment_ops.syncs.heap.server import start_receiver
from segment_ops.syncs.heap.webhook import (
    InvalidSignature,
    Signature,
    TimestampOutOfRange,
    compact_json,
    verify,
)
from segment_ops_tests.heap import reference_data as ref
from segment_ops_tests.heap.conftest import wait_for

TEN_YEARS = 10 * 365 * 86_400  # lets a receiver accept the vectors' fixed timestamp


def header(digest: str, ts: int = ref.TS_MS) -> str:
    return f"ts:{ts},hmac:{digest}"


def check(body: bytes, digest: str) -> Signature:
    return verify(header(digest), body, [ref.SECRET], now_ms=ref.TS_MS)


def test_the_reference_sync_signed_in_base64_verifies_on_its_raw_bytes():
    assert check(ref.SYNC_COMPACT, ref.SYNC_HMAC_BASE64) == Signature(ref.TS_MS, "base64", "raw", 0)


def test_the_reference_sync_signed_in_hex_verifies():
    assert check(ref.SYNC_COMPACT, ref.SYNC_HMAC_HEX) == Signature(ref.TS_MS, "hex", "raw", 0)


def test_the_hex_digest_may_be_upper_case():
    assert check(ref.SYNC_COMPACT, ref.SYNC_HMAC_HEX.upper()).encoding == "hex"


def test_the_reference_drain_verifies_in_both_encodings():
    assert check(ref.DRAIN_COMPACT, ref.DRAIN_HMAC_BASE64).encoding == "base64"
    assert check(ref.DRAIN_COMPACT, ref.DRAIN_HMAC_HEX).encoding == "hex"


def test_a_pretty_printed_body_verifies_by_its_compact_re_serialisation():
    # sync.json as the repository holds it (indented), signed over JSON.stringify of it, as Heap's validator
    # checks.
    assert check(ref.SYNC_JSON, ref.SYNC_HMAC_BASE64).body_form == "compact"
    assert check(ref.DRAIN_JSON, ref.DRAIN_JSON_HMAC_BASE64).body_form == "compact"


def test_a_body_with_numbers_json_stringify_rewrites_is_not_verified_by_its_compact_form():
    # Floats and integers beyond 2^53 are rounded by JSON.parse, so several bodies share one compact form:
    # such a body must match on its raw bytes (see heap.compact_form).
    with pytest.raises(InvalidSignature, match="fraction or an exponent"):
        check(ref.TRICKY_PAGE, ref.TRICKY_PAGE_HMAC_BASE64)
    assert check(ref.TRICKY_PAGE_COMPACT, ref.TRICKY_PAGE_HMAC_BASE64).body_form == "raw"


def test_a_body_that_matches_neither_form_is_refused():
    tampered = ref.SYNC_JSON.replace(b"user3@email.com", b"mallory@email.com")

    with pytest.raises(InvalidSignature):
        check(tampered, ref.SYNC_HMAC_BASE64)
    with pytest.raises(InvalidSignature):
        check(ref.SYNC_COMPACT.replace(b"user3", b"user9"), ref.SYNC_HMAC_HEX)


def test_a_digest_of_the_wrong_secret_or_timestamp_is_refused():
    with pytest.raises(InvalidSignature):
        verify(header(ref.SYNC_HMAC_BASE64), ref.SYNC_COMPACT, ["another-secret"], now_ms=ref.TS_MS)
    with pytest.raises(InvalidSignature):
        verify(header(ref.SYNC_HMAC_BASE64, ref.TS_MS + 1), ref.SYNC_COMPACT, [ref.SECRET], now_ms=ref.TS_MS)


def test_compact_json_writes_what_json_stringify_writes():
    assert compact_json(json.loads(ref.TRICKY_JSON)).decode() == ref.TRICKY_JSON_STRINGIFIED
    assert compact_json(json.loads(ref.SYNC_JSON)) == ref.SYNC_COMPACT
    assert compact_json(json.loads(ref.TRICKY_PAGE)) == ref.TRICKY_PAGE_COMPACT


def test_the_sandbox_signs_as_the_reference_generator():
    assert heap_hash(ref.SECRET, ref.SYNC_COMPACT, ref.TS_MS) == header(ref.SYNC_HMAC_BASE64)
    assert heap_hash(ref.SECRET, ref.DRAIN_COMPACT, ref.TS_MS) == header(ref.DRAIN_HMAC_BASE64)
    assert heap_hash(ref.SECRET, ref.SYNC_COMPACT, ref.TS_MS, encoding="hex") == header(ref.SYNC_HMAC_HEX)


@pytest.fixture
def patient_receiver(tmp_path: Path):
    """The real receiver, with the vectors' secret and an age window wide enough for their fixed timestamp."""
    with start_receiver(WebhookConfig(home=tmp_path, heap_secret=ref.SECRET,
                                      max_age_seconds=TEN_YEARS)) as running:
        yield running


def post(url: str, body: bytes, heap_hash_value: str) -> httpx.Response:
    return httpx.post(url, content=body,
                      headers={"Content-Type": "application/json", "Heap-Hash": heap_hash_value},
                      timeout=10, verify=tls_context())


@pytest.mark.parametrize(("body", "digest"), [
    (ref.SYNC_COMPACT, ref.SYNC_HMAC_BASE64), (ref.SYNC_COMPACT, ref.SYNC_HMAC_HEX),
    (ref.SYNC_JSON, ref.SYNC_HMAC_BASE64),
], ids=["compact-base64", "compact-hex", "pretty-base64"])
def test_the_reference_sync_is_stored_over_http(patient_receiver, tmp_path, body, digest):
    response = post(patient_receiver.heap_url, body, header(digest))

    assert response.status_code == 200
    assert response.json() == {"stored": True, "sync_task_id": "FreeCustomersSync", "page_number": 1}
    [page] = Inbox.for_home(tmp_path).pages("FreeCustomersSync")
    assert (page["add"], page["remove"], page["signed_at"]) == (["user3@email.com", "user4@email.com"],
                                                                ["user1@email.com", "user2@email.com"],
                                                                ref.TS_MS)
    assert page["customer_config"]["fields"][0]["field_id"] == "workspace"


@pytest.mark.parametrize(("body", "digest"), [
    (ref.DRAIN_COMPACT, ref.DRAIN_HMAC_BASE64), (ref.DRAIN_JSON, ref.DRAIN_JSON_HMAC_BASE64),
], ids=["generator", "repository-file"])
def test_the_reference_drain_is_stored_over_http(patient_receiver, tmp_path, body, digest):
    response = post(patient_receiver.heap_url, body, header(digest))

    assert response.status_code == 200 and response.json()["stored"] is True
    [drain] = Inbox.for_home(tmp_path).drains()
    assert ((drain.segment_id, drain.segment_name, drain.key)
            == (1338065, "Segment To Drain", response.json()["drain"]))
    assert int(drain.signed_at.timestamp() * 1000) == ref.TS_MS


def test_the_tricky_page_is_stored_under_a_hash_of_its_sync_task_id(patient_receiver, tmp_path):
    assert post(patient_receiver.heap_url, ref.TRICKY_PAGE,
                header(ref.TRICKY_PAGE_HMAC_BASE64)).status_code == 403

    response = post(patient_receiver.heap_url, ref.TRICKY_PAGE_COMPACT, header(ref.TRICKY_PAGE_HMAC_BASE64))

    assert response.status_code == 200 and response.json()["sync_task_id"] == "Free Customers/../x ü"
    inbox = Inbox.for_home(tmp_path)
    [sync] = inbox.syncs()
    assert sync.sync_task_id == "Free Customers/../x ü" and sync.complete
    assert [p.name for p in (tmp_path / "inbox" / "heap").iterdir()] == [f"sync-{sync.key}"]
    [page] = inbox.pages(sync.sync_task_id)
    assert (page["add"] == ["zoë@example.com", "usr_42"]
            and page["id_token"] == "7a36ae58-c4b9-11eb-8529-0242ac130003")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.e2e
def test_segment_ops_webhooks_accepts_heaps_reference_pages_at_its_documented_path(tmp_path):
    port = free_port()
    env = {**os.environ, "SEGMENT_OPS_HOME": str(tmp_path), "HEAP_WEBHOOK_SECRET": "the-new-secret",
           "HEAP_WEBHOOK_PREVIOUS_SECRETS": f"older-secret, {ref.SECRET}",
           "HEAP_WEBHOOK_MAX_AGE_SECONDS": str(TEN_YEARS)}
    process = subprocess.Popen([sys.executable, "-m", "segment_ops.cli", "webhooks", "--port", str(port)],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}/webhooks/heap"

    def up() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(up, timeout=30)
        sync = post(url, ref.SYNC_JSON, header(ref.SYNC_HMAC_BASE64))
        drain = post(url, ref.DRAIN_COMPACT, header(ref.DRAIN_HMAC_HEX))
        forged = post(url, ref.SYNC_COMPACT, header(ref.DRAIN_HMAC_BASE64))
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=10)

    assert (sync.status_code, drain.status_code) == (200, 200)
    assert forged.status_code == 403 and forged.content == b'{"error":"Invalid signature"}'
    assert ref.SECRET.encode() not in stderr and b"the-new-secret" not in stderr
    assert orjson.loads(sync.content)["stored"] is True and orjson.loads(drain.content)["stored"] is True


@pytest.mark.parametrize(("now_ms", "accepted"), [
    (ref.TS_MS + 299_999, True), (ref.TS_MS + 300_000, False),  # 300 s of age allowed, exclusive
    (ref.TS_MS - 29_999, True), (ref.TS_MS - 30_000, False),  # 30 s ahead allowed, exclusive
])
def test_the_window_limits_are_exclusive(now_ms, accepted):
    def attempt() -> Signature:
        return verify(header(ref.SYNC_HMAC_BASE64), ref.SYNC_COMPACT, [ref.SECRET], max_age_seconds=300,
                      max_future_seconds=30, now_ms=now_ms)

    if accepted:
        assert attempt().timestamp_ms == ref.TS_MS
    else:
        with pytest.raises(TimestampOutOfRange):
            attempt()


def test_the_timestamp_is_checked_before_the_hmac_as_the_reference_does():
    with pytest.raises(TimestampOutOfRange):
        verify(header("A" * 43 + "="), ref.SYNC_COMPACT, [ref.SECRET], now_ms=ref.TS_MS + 3_600_000)
