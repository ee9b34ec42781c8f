"""The Fullstory Streams endpoint (`POST /webhooks/fullstory`) over real HTTP: the bearer token, the durable
inbox, bodies kept aside, size limits, and the refusal of the sandbox's token where strangers could post."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson
import pytest

from segment_ops.cli import main
from segment_ops.config import SANDBOX_FULLSTORY_STREAM_TOKEN, SANDBOX_HEAP_WEBHOOK_SECRET
from segment_ops.syncs.fullstory.inbox import Inbox
from segment_ops.syncs.fullstory.receiver import (
    FULLSTORY_PATH,
    StreamConfig,
    StreamTokenError,
    config_from_env,
    create_app,
    create_app_from_env,
    rejected_bodies,
    require_live_token,
)
from segment_ops.syncs.fullstory.streams import event_key

TOKEN = "receiver-test-token"
PREVIOUS = "receiver-old-token"
BODY = {"name": "Rage Click", "timestamp": "2026-12-01T10:11:12Z", "api_version": "v2", "signal_version": "1",
        "user": {"id": "5112718394511360", "uid": "usr_0000001", "email": "ada@example.com",
                 "display_name": "Ada Lovelace"},
        "session_url": "https://app.fullstory.com/ui/o-1/session/1%3A2"}


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def url(home: Path, serve) -> str:
    config = StreamConfig(home=home, token=TOKEN, previous_tokens=(PREVIOUS,), max_body_bytes=4_000)
    return f"{serve(create_app(config), 'fullstory receiver').url}{FULLSTORY_PATH}"


def post(url: str, body: bytes | dict, token: str | None = TOKEN, **headers: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    auth = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.post(url, content=content, headers={"Content-Type": "application/json"} | auth | headers,
                      timeout=10)


def stored(home: Path) -> list[Path]:
    return sorted((home / "inbox" / "fullstory").rglob("event-*.json"))


# ----------------------------------------------------------------------------------------- authentication
@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token", f"Basic {TOKEN}", TOKEN, "Bearer",
                                           f"Bearer {SANDBOX_FULLSTORY_STREAM_TOKEN}"])
def test_without_the_token_the_answer_is_401_and_nothing_is_stored(url, home, authorization):
    headers = {"Authorization": authorization} if authorization is not None else {}
    answer = httpx.post(url, content=orjson.dumps(BODY), headers=headers, timeout=10)

    assert answer.status_code == 401
    assert "error" in answer.json() and TOKEN not in answer.text
    assert stored(home) == [] and rejected_bodies(home) == []


def test_an_invalid_body_with_a_wrong_token_is_401_not_kept_aside(url, home):
    answer = post(url, b"not json", token="wrong")

    assert answer.status_code == 401 and rejected_bodies(home) == []


def test_the_token_is_checked_before_the_body_is_read(url):
    """Headers announcing a body that never comes: a wrong token is answered at once."""
    host, port = url.removeprefix("http://").split("/", 1)[0].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        conn.sendall((f"POST {FULLSTORY_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      "Authorization: Bearer wrong\r\nContent-Length: 3000\r\n\r\n").encode())
        answer = conn.recv(4096)

    assert answer.startswith(b"HTTP/1.1 401"), answer


# ----------------------------------------------------------------------------------------- storing
def test_an_event_is_stored_once_and_a_duplicate_answers_stored_false(url, home):
    first = post(url, BODY)
    again = post(url, orjson.dumps(BODY, option=orjson.OPT_INDENT_2))  # the same body, other whitespace

    assert first.status_code == 200 and first.json() == {"stored": True, "event": event_key(BODY)}
    assert again.status_code == 200 and again.json() == {"stored": False, "event": event_key(BODY)}
    [path] = stored(home)
    record = orjson.loads(path.read_bytes())
    assert record["key"] == event_key(BODY) and record["body"] == BODY
    assert record["token"] == "FULLSTORY_STREAM_TOKEN"
    hour = datetime.fromisoformat(record["received_at"]).astimezone(UTC)
    assert path.parent.name == f"hour-{hour:%Y%m%d%H}"
    inbox = Inbox.for_home(home)
    assert sum(inbox.counts().values()) == 1
    [path] = inbox.event_files(inbox.hours()[0]).values()
    event = inbox.read_event(path)
    assert event.body == BODY and event.key == event_key(BODY)


def test_another_event_is_stored_beside_it(url, home):
    post(url, BODY)
    other = BODY | {"timestamp": "2026-12-01T10:11:13Z"}

    assert post(url, other).json() == {"stored": True, "event": event_key(other)}
    assert len(stored(home)) == 2


def test_a_previous_token_is_accepted_and_recorded_by_name(url, home, caplog):
    with caplog.at_level(logging.INFO, logger="segment_ops.webhooks"):
        answer = post(url, BODY, token=PREVIOUS)

    assert answer.status_code == 200 and answer.json()["stored"] is True
    [path] = stored(home)
    assert orjson.loads(path.read_bytes())["token"] == "FULLSTORY_STREAM_PREVIOUS_TOKENS[0]"
    assert "token rotation" in caplog.text and PREVIOUS not in caplog.text


# ----------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize(("body", "reason"), [
    (b"{not json", "body is not valid JSON"),
    (orjson.dumps([BODY]), "body is not a JSON object"),
    (orjson.dumps({k: v for k, v in BODY.items() if k != "timestamp"}), "timestamp is missing"),
    (orjson.dumps(BODY | {"user": []}), "user is not an object"),
    (orjson.dumps(BODY | {"session_url": "file:///etc/passwd"}), "session_url is not an http(s) URL"),
    (orjson.dumps(BODY | {"name": "Rage\u0007Click"}), "name holds a control character"),
])
def test_an_authenticated_body_that_is_no_event_is_400_and_kept_aside(url, home, body, reason):
    answer = post(url, body)

    assert answer.status_code == 400
    assert answer.json()["error"].startswith(f"not a Fullstory stream event: {reason}")
    assert stored(home) == []
    [kept] = rejected_bodies(home)
    # kept parsed when it is JSON (so an erasure finds a person's values in it), else as text
    assert kept["reason"].startswith(reason)
    assert kept["body"] == (body.decode() if body.startswith(b"{not") else orjson.loads(body))
    assert datetime.fromisoformat(kept["received_at"]) <= datetime.now(UTC)


def test_a_rejected_body_is_kept_once_and_distinct_bodies_each(url, home):
    post(url, b"[1]")
    post(url, b"[1]")
    post(url, b"[2]")

    assert sorted(r["body"] for r in rejected_bodies(home)) == [[1], [2]]


def test_rejected_bodies_of_an_empty_home_is_empty(tmp_path):
    assert rejected_bodies(tmp_path) == []


def test_a_body_over_the_limit_is_413_and_nothing_is_stored(url, home):
    big = BODY | {"padding": "x" * 5_000}

    answer = post(url, big)

    assert answer.status_code == 413 and "4000" in answer.json()["error"]
    assert stored(home) == [] and rejected_bodies(home) == []


def test_a_chunked_body_over_the_limit_is_413(url, home):
    def chunks():
        for _ in range(10):
            yield b"x" * 1_000

    answer = httpx.post(url, content=chunks(), headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)

    assert answer.status_code == 413 and stored(home) == []


def test_the_default_limit_takes_a_mapped_body_and_refuses_a_megabyte(tmp_path, serve):
    served = serve(create_app(StreamConfig(home=tmp_path, token=TOKEN)), "fullstory receiver")
    target = f"{served.url}{FULLSTORY_PATH}"

    assert post(target, BODY | {"page_url": "https://app.example/" + "p" * 8000}).status_code == 200
    assert post(target, BODY | {"padding": "x" * 1_000_000}).status_code == 413


def test_an_inbox_that_cannot_be_written_answers_500_so_fullstory_retries(tmp_path, serve):
    home = tmp_path / "home"
    home.mkdir()
    (home / "inbox").write_text("a file where the inbox folder should be")
    served = serve(create_app(StreamConfig(home=home, token=TOKEN)), "fullstory receiver")

    answer = post(f"{served.url}{FULLSTORY_PATH}", BODY)

    assert answer.status_code == 500 and "retry" in answer.json()["error"]


def test_healthz_names_the_webhook_only(url):
    answer = httpx.get(url.replace(FULLSTORY_PATH, "/healthz"), timeout=10)
    assert answer.json() == {"ok": True, "webhook": "fullstory"} and TOKEN not in answer.text


# ----------------------------------------------------------------------------------------- configuration
def test_an_empty_token_cannot_build_an_app(tmp_path):
    with pytest.raises(ValueError, match="FULLSTORY_STREAM_TOKEN is empty"):
        create_app(StreamConfig(home=tmp_path, token=""))


def test_config_from_env_reads_the_token_and_the_previous_ones(ops_env, monkeypatch):
    monkeypatch.setenv("FULLSTORY_STREAM_TOKEN", f" {TOKEN} ")
    monkeypatch.setenv("FULLSTORY_STREAM_PREVIOUS_TOKENS", f"{PREVIOUS}, ,second-old ,")

    config = config_from_env()

    assert config.home == ops_env and config.tokens == (TOKEN, PREVIOUS, "second-old")
    assert TOKEN not in repr(config) and PREVIOUS not in repr(config)


def test_a_blank_token_in_the_environment_cannot_serve(ops_env, monkeypatch):
    monkeypatch.setenv("FULLSTORY_STREAM_TOKEN", "   ")
    config = config_from_env()
    with pytest.raises(ValueError, match="FULLSTORY_STREAM_TOKEN is empty"):
        create_app(config)


def test_unset_the_token_is_the_sandboxs(ops_env):
    assert config_from_env().tokens == (SANDBOX_FULLSTORY_STREAM_TOKEN,)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "receiver.example", None])
def test_the_sandbox_token_is_refused_where_others_could_post(tmp_path, host):
    config = StreamConfig(home=tmp_path, token=SANDBOX_FULLSTORY_STREAM_TOKEN)

    with pytest.raises(StreamTokenError, match="FULLSTORY_STREAM_TOKEN is not set") as info:
        require_live_token(config, host)
    assert SANDBOX_FULLSTORY_STREAM_TOKEN not in str(info.value)


def test_the_sandbox_token_as_a_previous_token_is_refused_too(tmp_path):
    config = StreamConfig(home=tmp_path, token=TOKEN, previous_tokens=(SANDBOX_FULLSTORY_STREAM_TOKEN,))
    with pytest.raises(StreamTokenError):
        require_live_token(config, "0.0.0.0")


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"])
def test_the_sandbox_token_is_accepted_on_loopback_with_a_warning(tmp_path, host, caplog):
    config = StreamConfig(home=tmp_path, token=SANDBOX_FULLSTORY_STREAM_TOKEN)
    with caplog.at_level(logging.WARNING, logger="segment_ops.webhooks"):
        require_live_token(config, host)
    assert "FULLSTORY_STREAM_TOKEN is not set" in caplog.text


@pytest.mark.parametrize("host", ["0.0.0.0", None])
def test_a_token_of_ones_own_is_accepted_anywhere(tmp_path, host):
    require_live_token(StreamConfig(home=tmp_path, token=TOKEN), host)


def test_the_asgi_factory_refuses_the_sandbox_token_and_serves_a_set_one(ops_env, monkeypatch):
    with pytest.raises(StreamTokenError, match="ASGI factory"):
        create_app_from_env()

    monkeypatch.setenv("FULLSTORY_STREAM_TOKEN", TOKEN)
    assert create_app_from_env() is not None


@pytest.mark.e2e
@pytest.mark.parametrize(("env", "served", "off"), [
    ({"FULLSTORY_STREAM_TOKEN": "a-live-stream-token-of-some-length"}, "/webhooks/fullstory",
     "/webhooks/heap"),
    ({"HEAP_WEBHOOK_SECRET": "a-live-heap-secret"}, "/webhooks/heap", "/webhooks/fullstory"),
])
def test_segment_ops_webhooks_serves_each_endpoint_whose_secret_is_set(tmp_path, env, served, off):
    # On an address others can reach, an endpoint is served only with its own secret set: a deployment that
    # receives Fullstory Streams alone needs no Heap secret, and the other way round.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("HEAP_", "FULLSTORY_"))}
    process = subprocess.Popen(
        [sys.executable, "-m", "segment_ops.cli", "webhooks", "--host", "0.0.0.0", "--port", str(port)],
        env={**clean, "SEGMENT_OPS_HOME": str(tmp_path), **env}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        assert httpx.post(f"{base}{off}", content=b"{}").status_code == 404
        assert httpx.post(f"{base}{served}", content=b"{}").status_code in (400, 401, 403)
    finally:
        process.terminate()
        output = process.communicate(timeout=10)[0].decode()
    assert "endpoint off" in output and "a-live" not in output


def test_the_cli_refuses_a_public_heap_endpoint_signed_with_the_sandbox_secret(ops_env, monkeypatch):
    # Only an unset secret turns an endpoint off: one set to the sandbox's published value stops the server.
    monkeypatch.setenv("HEAP_WEBHOOK_SECRET", SANDBOX_HEAP_WEBHOOK_SECRET)
    monkeypatch.setenv("FULLSTORY_STREAM_TOKEN", "a-live-stream-token-of-some-length")

    with pytest.raises(SystemExit) as raised:
        main(["webhooks", "--host", "0.0.0.0", "--port", "0"])

    assert "HEAP_WEBHOOK_SECRET" in str(raised.value.code)
    assert SANDBOX_HEAP_WEBHOOK_SECRET not in str(raised.value.code)
