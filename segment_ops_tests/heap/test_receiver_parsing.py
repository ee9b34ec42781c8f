"""What the receiver applies is exactly what was signed: big integers, floats, duplicate keys, the
compact-form fallback's limits, and deeply nested bodies - over real HTTP where a request is involved."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from segment_ops.clients.base import tls_context
from segment_ops.syncs.heap import webhook as heap
from segment_ops.syncs.heap.inbox import Inbox
from segment_ops.syncs.heap.receiver import WebhookConfig
from segment_ops.syncs.heap.server import start_receiver
from segment_ops.syncs.heap.webhook import MAX_COMPACT_FALLBACK_BYTES, InvalidSignature, verify
from segment_ops_tests.heap import reference_data as ref
from segment_ops_tests.heap.conftest import now_ms, sign

SECRET = "test-heap-secret-value"
PAGE_HEAD = (b'{"action_type":"segment.users.sync","customer_config":{"fields":[]},'
             b'"data":{"segment":{"id":1338065,"name":"Power Users"},'
             b'"sync_info":{"page_number":1,"total_pages":1,"sync_task_id":"task-1"},')


@pytest.fixture
def receiver(tmp_path: Path, stop_in_background):
    running = start_receiver(WebhookConfig(home=tmp_path, heap_secret=SECRET, max_body_bytes=3_000_000))
    yield running
    stop_in_background(running)


def post(receiver, body: bytes, header: str) -> httpx.Response:
    return httpx.post(receiver.heap_url, content=body, headers={"Content-Type": "application/json",
                                                                "Heap-Hash": header}, timeout=30,
                      verify=tls_context())


def stored_adds(home: Path) -> list[list[str]]:
    return [page["add"] for page in Inbox.for_home(home).pages("task-1")]


def page(adds: bytes) -> bytes:
    """A compact sync page (as JSON.stringify writes it) whose `add` is the given JSON array."""
    return PAGE_HEAD + b'"add":' + adds + b',"remove":[]}}'


def pretty(body: bytes) -> bytes:
    return body.replace(b'":', b'": ').replace(b",", b",\n  ")


# ------------------------------------------------------------------------------ finding 1: big integers


def test_a_replayed_body_with_a_big_integer_swapped_is_refused(receiver, tmp_path):
    # JSON.parse reads both as the same double, so JSON.stringify of either is `...847000`: a request captured
    # in transit could be replayed within the window with other digits.
    signed = page(b'[{"id":1152921504606847000}]')
    swapped = page(b'[{"id":1152921504606847050}]')

    response = post(receiver, swapped, sign(signed, SECRET))

    assert response.status_code == 403 and response.json() == {"error": "Invalid signature"}
    assert stored_adds(tmp_path) == []


def test_an_integer_id_beyond_heaps_user_id_range_gets_400_even_signed_on_its_raw_bytes(receiver, tmp_path):
    """A numeric id is a Heap user_id, in [0, 2^53 - 1] (spec §3); beyond it JSON.parse would round it."""
    body = page(b'[{"id":1152921504606847000}]')

    response = post(receiver, body, sign(body, SECRET))

    assert response.status_code == 400 and "an integer from 0 to 9,007,199,254,740,991" in response.text
    assert stored_adds(tmp_path) == []


def test_a_pretty_body_with_a_float_is_not_verified_by_its_json_stringify_form(receiver, tmp_path):
    compact = PAGE_HEAD.replace(b'"fields":[]', b'"fields":[],"ratio":1') + b'"add":[{"id":"a@x.com"}]}}'
    sent = pretty(compact.replace(b'"ratio":1', b'"ratio":1.0'))

    response = post(receiver, sent, sign(compact, SECRET))

    assert response.status_code == 403 and stored_adds(tmp_path) == []


# ------------------------------------------------------------------------ finding 9: duplicate keys


def test_with_duplicate_keys_the_last_one_is_applied_as_json_parse_reads_it(receiver, tmp_path):
    signed = page(b'[{"id":"a@x.com"}]')
    sent = pretty(signed.replace(b'"add":', b'"add":[{"id":"mallory@x.com"}],"add":'))

    response = post(receiver, sent, sign(signed, SECRET))

    assert response.status_code == 200 and stored_adds(tmp_path) == [["a@x.com"]]


def test_a_duplicate_key_that_changes_the_signed_value_is_refused(receiver, tmp_path):
    signed = page(b'[{"id":"a@x.com"}]')
    sent = pretty(signed.replace(b',"remove":[]', b',"remove":[],"add":[{"id":"mallory@x.com"}]'))

    assert post(receiver, sent, sign(signed, SECRET)).status_code == 403
    assert stored_adds(tmp_path) == []


def test_duplicate_keys_in_a_body_signed_on_its_raw_bytes_apply_the_last(receiver, tmp_path):
    body = page(b'[{"id":"mallory@x.com"}],"add":[{"id":"a@x.com"}]')

    assert post(receiver, body, sign(body, SECRET)).status_code == 200
    assert stored_adds(tmp_path) == [["a@x.com"]]


# ------------------------------------------------------------------- finding 2: the fallback's cost


def big_page(size: int) -> bytes:
    ids = b",".join(b'{"id":"user-%07d@example.com"}' % n for n in range(size // 30))
    return page(b"[" + ids + b"]")


def test_a_body_over_the_fallback_cap_is_checked_on_its_raw_bytes_only(receiver, tmp_path):
    compact = big_page(MAX_COMPACT_FALLBACK_BYTES + 100_000)

    assert post(receiver, pretty(compact), sign(compact, SECRET)).status_code == 403
    assert post(receiver, compact, sign(compact, SECRET)).status_code == 200


def test_a_body_under_the_cap_still_verifies_by_its_compact_form(receiver, tmp_path):
    compact = big_page(MAX_COMPACT_FALLBACK_BYTES // 2)

    assert post(receiver, pretty(compact), sign(compact, SECRET)).status_code == 200


def test_an_ordinary_body_is_re_encoded_by_orjson_not_by_the_python_encoder(monkeypatch):
    monkeypatch.setattr(heap, "compact_json", _must_not_run)

    signature = verify(f"ts:{ref.TS_MS},hmac:{ref.SYNC_HMAC_BASE64}", ref.SYNC_JSON, [ref.SECRET],
                       now_ms=ref.TS_MS)

    assert signature.body_form == "compact" and signature.signed_body == ref.SYNC_COMPACT


def test_an_unsigned_body_of_floats_is_refused_without_re_encoding_it(monkeypatch):
    monkeypatch.setattr(heap, "compact_json", _must_not_run)
    body = b'{"10": [' + b",".join(b"%d.5" % n for n in range(50_000)) + b"]}"

    with pytest.raises(InvalidSignature, match="fraction or an exponent"):
        verify(sign(body, "not-the-secret"), body, [SECRET])


def test_a_body_with_index_like_keys_is_re_encoded_in_javascripts_key_order():
    compact = b'{"2":true,"10":"x","b":1}'
    sent = b'{"b": 1, "10": "x", "2": true}'

    signature = verify(sign(compact, SECRET), sent, [SECRET])

    assert signature.body_form == "compact" and signature.signed_body == compact


def _must_not_run(value):
    raise AssertionError("compact_json ran")


# ---------------------------------------------------------------------- finding 3: deep nesting


DEEP = b"[" * 1000 + b"]" * 1000


def test_a_signed_drain_nested_1000_deep_gets_400_not_500(receiver, tmp_path):
    body = (b'{"action_type":"segment.users.drain","data":{"segment":{"id":7,"name":"x"}},"extra":'
            + DEEP + b"}")

    response = post(receiver, body, sign(body, SECRET))

    assert response.status_code == 400 and "nested deeper than" in response.json()["error"]
    assert Inbox.for_home(tmp_path).drains() == []


def test_a_signed_page_with_a_customer_config_nested_1000_deep_gets_400_not_500(receiver, tmp_path):
    body = PAGE_HEAD.replace(b'"fields":[]', b'"fields":[],"x":' + DEEP) + b'"add":[{"id":"a@x.com"}]}}'

    response = post(receiver, body, sign(body, SECRET))

    assert response.status_code == 400 and "nested deeper than" in response.json()["error"]
    assert stored_adds(tmp_path) == []


@pytest.mark.parametrize("depth", [1000, 5000])
def test_an_unsigned_deeply_nested_body_gets_403(receiver, tmp_path, depth):
    body = b'{"x":' + b"[" * depth + b"]" * depth + b"}"

    response = post(receiver, body, sign(body, "not-the-secret", ts_ms=now_ms()))

    assert response.status_code == 403 and stored_adds(tmp_path) == []


def test_a_deep_body_signed_over_its_compact_form_gets_403(receiver, tmp_path):
    body = b'{"x":' + DEEP + b"}"

    assert post(receiver, pretty(body), sign(body, SECRET)).status_code == 403
