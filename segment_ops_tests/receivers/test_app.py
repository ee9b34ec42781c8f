"""The generic receiving app with a made-up vendor: its verifier and handler are defined here, its items are
stored in the generic inbox."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx
import orjson
import pytest

from segment_ops.clients.base import tls_context
from segment_ops.receivers import inbox
from segment_ops.receivers.app import Endpoint, Refused, build_app
from segment_ops.receivers.server import is_loopback, serve_in_thread
from segment_ops_tests.conftest import status_within

TOKEN = "acme-shared-token"
MAX_BODY = 1_000


def verify_acme(headers: Mapping[str, str], body: bytes) -> bytes:
    """Acme signs nothing: it sends a shared token, 401 when absent, 403 when wrong."""
    token = headers.get("x-acme-token")
    if token is None:
        raise Refused(401, "the X-Acme-Token header is missing")
    if token != TOKEN:
        raise Refused(403, "the X-Acme-Token does not match", answer={"error": "forbidden"})
    return body


def acme_handler(root: Path, handled: list[bytes]):
    """Acme's items: `{"batch": ..., "part": n, "value": ...}`, stored as <batch>/part-<n>.json."""

    def handle(body: bytes) -> dict:
        handled.append(body)
        try:
            item = orjson.loads(body)
            batch, part, value = str(item["batch"]), int(item["part"]), str(item["value"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise Refused(400, "not an Acme item") from None
        stored = inbox.store_item(root / batch / f"part-{part}.json", body, content=value.encode(),
                                  differences=lambda known: ["value"] if known["value"] != value else [])
        return {"stored": stored}

    return handle


@pytest.fixture
def handled() -> list[bytes]:
    return []


@contextmanager
def serve(endpoints: Sequence[Endpoint], stop: Callable[[object], None] = lambda served: served.stop(),
          **health: object) -> Iterator[httpx.Client]:
    served = serve_in_thread(build_app(endpoints, health=health), name="acme receiver")
    try:
        with httpx.Client(base_url=served.url, timeout=10, verify=tls_context()) as client:
            yield client
    finally:
        stop(served)


@pytest.fixture
def client(tmp_path: Path, handled: list[bytes], stop_in_background) -> Iterator[httpx.Client]:
    endpoint = Endpoint("/webhooks/acme", "Acme webhook", verify_acme,
                        acme_handler(tmp_path / "acme", handled), max_body_bytes=MAX_BODY, item="item")
    with serve([endpoint], stop_in_background, inbox="acme") as client:
        yield client


def post(client: httpx.Client, body: bytes, token: str | None = TOKEN) -> httpx.Response:
    return client.post("/webhooks/acme", content=body, headers={"X-Acme-Token": token} if token else {})


def item(value: str = "v1", part: int = 1) -> bytes:
    return orjson.dumps({"batch": "b1", "part": part, "value": value})


def test_a_verified_item_is_stored_before_200(client, tmp_path):
    response = post(client, item())

    assert response.status_code == 200 and response.json() == {"stored": True}
    assert orjson.loads((tmp_path / "acme" / "b1" / "part-1.json").read_bytes())["value"] == "v1"


def test_a_repeat_is_answered_200_and_stored_once(client, tmp_path):
    post(client, item())

    response = post(client, item())

    assert response.status_code == 200 and response.json() == {"stored": False}
    assert [p.name for p in (tmp_path / "acme" / "b1").iterdir()] == ["part-1.json"]


def test_a_conflicting_item_gets_409_and_the_first_copy_stays(client, tmp_path, caplog):
    post(client, item("v1"))

    response = post(client, item("v2"))

    assert response.status_code == 409
    assert response.json() == {"error": "part-1.json is already stored with a different value"}
    assert orjson.loads((tmp_path / "acme" / "b1" / "part-1.json").read_bytes())["value"] == "v1"
    assert [p.read_bytes() for p in (tmp_path / "acme" / "b1" / "conflicts").iterdir()] == [b"v2"]
    assert "Acme webhook refused (409)" in caplog.text


def test_a_body_over_the_cap_gets_413_and_reaches_neither_verifier_nor_handler(client, handled, tmp_path):
    response = post(client, item("x" * MAX_BODY), token="wrong")

    assert response.status_code == 413
    assert response.json() == {"error": f"body is larger than {MAX_BODY} bytes"}
    assert handled == [] and not (tmp_path / "acme").exists()


def test_a_streamed_body_over_the_cap_gets_413_without_a_content_length(client, handled):
    body = item("x" * MAX_BODY)

    def chunks():
        for start in range(0, len(body), 100):
            yield body[start:start + 100]

    response = client.post("/webhooks/acme", content=chunks(), headers={"X-Acme-Token": TOKEN})

    assert response.status_code == 413 and handled == []


def test_a_body_at_the_cap_is_accepted(client):
    body = item("x" * (MAX_BODY - len(item(""))))
    assert len(body) == MAX_BODY

    assert post(client, body).status_code == 200


def test_a_verifier_refusal_is_answered_with_its_status_and_message(client, handled, caplog):
    response = post(client, item(), token=None)

    assert response.status_code == 401 and response.json() == {"error": "the X-Acme-Token header is missing"}
    assert handled == []
    assert "Acme webhook refused (401): the X-Acme-Token header is missing" in caplog.text


def test_a_verifier_refusal_may_answer_with_its_own_body(client, handled, tmp_path):
    response = post(client, item(), token="wrong")

    assert response.status_code == 403 and response.content == b'{"error":"forbidden"}'
    assert handled == [] and not (tmp_path / "acme").exists()


def test_a_handler_refusal_is_answered_with_its_status(client, tmp_path):
    response = post(client, b'{"batch": "b1"}')

    assert response.status_code == 400 and response.json() == {"error": "not an Acme item"}
    assert not (tmp_path / "acme").exists()


def test_an_item_that_cannot_be_stored_gets_500_naming_the_item(client, tmp_path, caplog):
    (tmp_path / "acme").write_text("a file where the inbox folder belongs")

    response = post(client, item())

    assert response.status_code == 500 and response.json() == {"error": "the item could not be stored; retry"}
    assert "Acme webhook not stored (500)" in caplog.text


def test_healthz_answers_ok_with_what_the_vendor_adds(client):
    response = client.get("/healthz")

    assert response.status_code == 200 and response.json() == {"ok": True, "inbox": "acme"}


def test_only_post_reaches_an_endpoint(client):
    assert client.get("/webhooks/acme").status_code == 405


def test_each_endpoint_has_its_own_verifier_handler_and_cap(tmp_path):
    def other(body: bytes) -> dict:
        return {"other": len(body)}

    with serve([
        Endpoint("/webhooks/acme", "Acme webhook", verify_acme, acme_handler(tmp_path, []),
                 max_body_bytes=10),
        Endpoint("/webhooks/other", "Other webhook", lambda headers, body: body, other),
    ]) as client:
        assert post(client, item()).status_code == 413
        assert client.post("/webhooks/other", content=item()).json() == {"other": len(item())}


def test_a_server_from_a_thread_stops_when_asked(tmp_path):
    served = serve_in_thread(build_app([]), name="acme receiver")
    assert httpx.get(f"{served.url}/healthz", timeout=10).json() == {"ok": True}

    served.stop()

    assert not served.thread.is_alive()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{served.url}/healthz", timeout=2)


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.8.0.1", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("LOCALHOST", True), ("0.0.0.0", False), ("::", False), ("10.0.0.5", False), ("example.com", False),
])
def test_is_loopback_tells_a_local_only_bind_address(host, loopback):
    assert is_loopback(host) is loopback


@pytest.mark.parametrize("module", ["segment_ops.receivers.app", "segment_ops.receivers.server",
                                    "segment_ops.receivers.inbox"])
def test_the_receivers_load_neither_dagster_nor_duckdb(module):
    code = f"import sys, {module}; print(sorted(m for m in ('dagster', 'duckdb') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_logs_name_the_endpoint_and_hold_no_payload(client, caplog):
    caplog.set_level(logging.DEBUG)

    post(client, item("secret-ish-value"))
    post(client, item("another-secret-ish-value"))

    assert "Acme webhook refused (409)" in caplog.text and "secret-ish-value" not in caplog.text


def test_a_header_check_refuses_before_the_body_is_read(tmp_path, handled, caplog):
    def check(headers: Mapping[str, str]) -> None:
        if "x-acme-token" not in headers:
            raise Refused(401, "the X-Acme-Token header is missing")

    endpoint = Endpoint("/webhooks/acme", "Acme webhook", verify_acme, acme_handler(tmp_path, handled),
                        check_headers=check)
    served = serve_in_thread(build_app([endpoint]), name="acme receiver")
    try:
        host, port = served.url.removeprefix("http://").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5) as conn:
            conn.sendall(b"POST /webhooks/acme HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
            answer = conn.recv(4096)  # the body is never sent: a read of it would wait
    finally:
        served.stop()

    assert answer.startswith(b"HTTP/1.1 401") and handled == []
    assert "Acme webhook refused (401) before its body was read" in caplog.text


def test_a_server_with_a_concurrency_limit_answers_503_beyond_it():
    served = serve_in_thread(build_app([]), name="acme receiver", limit_concurrency=2)
    host, port = served.url.removeprefix("http://").rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=5), \
                socket.create_connection((host, int(port)), timeout=5):
            busy = status_within(f"{served.url}/healthz", 503)  # once the server has accepted the two
        idle = status_within(f"{served.url}/healthz", 200)  # once it has seen them close
    finally:
        served.stop()

    assert (busy, idle) == (503, 200)
