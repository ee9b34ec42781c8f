"""What the receiver refuses before it reads a body or while it is busy, and what `/healthz` tells a
stranger: over real HTTP (and raw sockets where httpx would send the body first)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from segment_ops.syncs.heap.receiver import WebhookConfig, WebhookConfigError, config_from_env
from segment_ops.syncs.heap.server import RunningReceiver, start_receiver
from segment_ops_tests.conftest import status_within

SECRET = "test-heap-secret-limits"


@pytest.fixture
def receiver(tmp_path: Path, stop_in_background) -> Iterator[RunningReceiver]:
    running = start_receiver(WebhookConfig(home=tmp_path, heap_secret=SECRET, max_connections=4))
    yield running
    stop_in_background(running)


def connect(receiver: RunningReceiver) -> socket.socket:
    host, port = receiver.url.removeprefix("http://").rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=5)


def headers_only(header: str, length: int = 150_000) -> bytes:
    return (f"POST /webhooks/heap HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Heap-Hash: {header}\r\nContent-Length: {length}\r\n\r\n").encode()


@pytest.mark.parametrize(("header", "status"), [
    ("nonsense", b"400"), ("ts:1,hmac:" + "a" * 64, b"400"), ("ts:<now>,hmac:zz", b"403"),
    ("ts:<now>,hmac:" + "a" * 64 + "," + "x:y," * 1000, b"400"),  # a header of 4 kB
])
def test_a_bad_heap_hash_is_refused_before_the_body_arrives(receiver, header, status):
    """Headers announce a large body that never comes: a malformed header, a stale timestamp or an hmac
    that is no digest is answered at once, without waiting for (or buffering) the body. A server that
    waited for it would never answer: the read would end in the socket's timeout (`connect`: 5 s)."""
    with connect(receiver) as conn:
        conn.sendall(headers_only(header.replace("<now>", str(time.time_ns() // 10**6))))
        answer = conn.recv(4096)

    assert answer.startswith(b"HTTP/1.1 " + status), answer


def test_beyond_the_connection_cap_the_receiver_answers_503(receiver):
    healthz = f"{receiver.url}/healthz"
    idle = [connect(receiver) for _ in range(4)]
    try:
        busy = status_within(healthz, 503)  # once the server has accepted the four
    finally:
        for conn in idle:
            conn.close()

    assert (busy, status_within(healthz, 200)) == (503, 200)  # 200 once it has seen them close


def test_the_healthz_answer_names_no_file_system_path(receiver, tmp_path):
    answer = httpx.get(f"{receiver.url}/healthz", timeout=5)

    assert answer.json()["ok"] is True
    assert str(tmp_path) not in answer.text and "inbox" not in answer.text


@pytest.mark.parametrize("value", ["0", "-3", "many", "1.5"])
def test_an_unusable_connection_cap_is_refused_naming_the_variable(ops_env, monkeypatch, value):
    monkeypatch.setenv("HEAP_WEBHOOK_MAX_CONNECTIONS", value)

    with pytest.raises(WebhookConfigError, match="HEAP_WEBHOOK_MAX_CONNECTIONS must be a whole number >= 1"):
        config_from_env()


def test_the_connection_cap_comes_from_the_environment(ops_env, monkeypatch):
    monkeypatch.setenv("HEAP_WEBHOOK_MAX_CONNECTIONS", "7")

    assert config_from_env().max_connections == 7
