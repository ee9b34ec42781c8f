"""SIEM_JSONL_URL is a secret (issue 16 part 7): its path and query may carry an ingest key, so neither
reaches a log line (ours or httpx's), an error, a repr or the forward asset's metadata; only the host does."""

from __future__ import annotations

import logging
import traceback

import duckdb
import httpx
import pytest

from segment_ops.clients.base import RetryPolicy, VendorError
from segment_ops.config import SECRET_NAMES
from segment_ops.engine.delivery import DeliveryError, deliver_pending
from segment_ops.engine.ledger import Ledger, PlannedMessage
from segment_ops.syncs.audit_trail.siem import JsonLinesDestination, JsonLinesUrlError

SECRET_PATH = "/ingest/k3yInThePath0123456789"
SECRET_QUERY = "token=qu3ryS3cretValue42"
URL = f"https://collector.example{SECRET_PATH}?{SECRET_QUERY}"
LEAKS = ("k3yInThePath0123456789", "qu3ryS3cretValue42", SECRET_PATH)
EVENT = {"id": "evt-1", "timestamp": "2026-11-23T10:00:00.250Z", "type": "Source Created"}


def texts_of(error: BaseException, caplog: pytest.LogCaptureFixture) -> list[str]:
    texts = [str(error), repr(error), repr(error.args), "".join(traceback.format_exception(error)),
             caplog.text]
    return texts + [record.getMessage() for record in caplog.records]


def test_siem_jsonl_url_is_a_secret_setting():
    assert "SIEM_JSONL_URL" in SECRET_NAMES


@pytest.mark.parametrize("status", [500, 404])
def test_a_failing_jsonl_endpoint_shows_its_host_but_never_its_path(status, caplog):
    caplog.set_level(logging.DEBUG)
    seen: list[httpx.Request] = []

    def collector(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, text=f"no such route {request.url.path}")

    jsonl = JsonLinesDestination(URL, "tok", transport=httpx.MockTransport(collector),
                                 retry=RetryPolicy(max_attempts=2, max_elapsed=1.0, backoff_initial=0.01))
    with pytest.raises(VendorError) as caught:
        jsonl.send_batch([jsonl.frame(EVENT)])

    assert seen and seen[0].url.path == SECRET_PATH and seen[0].url.query.decode() == SECRET_QUERY
    texts = texts_of(caught.value, caplog) + [repr(jsonl), repr(jsonl.http)]
    for text in texts:
        for leak in LEAKS:
            assert leak not in text
    assert "collector.example" in repr(jsonl)


def test_the_ledger_keeps_no_path_of_a_failed_jsonl_batch(caplog):
    jsonl = JsonLinesDestination(URL, "tok", transport=httpx.MockTransport(lambda r: httpx.Response(503)),
                                 retry=RetryPolicy(max_attempts=1, max_elapsed=0.1))
    con = duckdb.connect()
    ledger = Ledger(con)
    ledger.add_planned("audit_trail.jsonl",
                       [PlannedMessage("evt-1", "evt-1", "audit_event", jsonl.frame(EVENT))])

    with pytest.raises(DeliveryError) as caught:
        deliver_pending(ledger, "audit_trail.jsonl", jsonl)

    dump = "\n".join(str(row) for table in ("outcomes", "rejected") for row in _rows(con, table))
    for leak in LEAKS:
        assert leak not in str(caught.value) and leak not in dump and leak not in caplog.text


def test_a_malformed_jsonl_url_is_refused_without_echoing_it():
    with pytest.raises(JsonLinesUrlError) as caught:
        JsonLinesDestination("collector.example/ingest/k3yInThePath0123456789", "tok")
    assert "k3yInThePath0123456789" not in str(caught.value)
    with pytest.raises(JsonLinesUrlError):
        JsonLinesDestination("https://user:k3yInThePath0123456789@collector.example/in", "tok")


def _rows(con: duckdb.DuckDBPyConnection, table: str) -> list[tuple]:
    try:
        return con.execute(f"SELECT * FROM {table}").fetchall()
    except duckdb.CatalogException:
        return []
