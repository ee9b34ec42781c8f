"""calls_sql must accept and refuse exactly what calls.py does, with the same reasons."""

import duckdb
import orjson
import pyarrow as pa
import pytest

from segment_ops.engine.calls import MAX_MESSAGE_BYTES
from segment_ops.engine.calls_sql import stage_json_calls
from segment_ops_tests.engine.test_calls import INVALID_CALLS

# Cases JSON text cannot express (bytes, 70-bit ints) exist only for calls built in Python.
JSON_CASES = [(c, r) for c, r in INVALID_CALLS if r != "not JSON-serialisable"]


def stage(*lines: str) -> list[tuple]:
    con = duckdb.connect()
    con.register("src", pa.table({"line_no": list(range(1, len(lines) + 1)), "line": list(lines)}))
    stage_json_calls(con, "test", "src", label="calls.jsonl")
    return con.execute(
        "SELECT line_no, message_id, payload, reason, source FROM staged_calls ORDER BY line_no"
    ).fetchall()


@pytest.mark.parametrize(("call", "reason"), JSON_CASES)
def test_sql_refuses_what_python_refuses_with_the_same_reason(call, reason):
    [(_, _, payload, got, source)] = stage(orjson.dumps(call).decode())
    assert payload is None
    assert reason in got
    assert source == "calls.jsonl:1"


def test_invalid_json_is_refused_with_its_line():
    [_, (line_no, _, payload, reason, source)] = stage(
        '{"type":"identify","userId":"u"}', '{"type": "identify",'
    )
    assert (line_no, payload, reason, source) == (2, None, "invalid JSON", "calls.jsonl:2")


def test_oversized_call_is_refused_with_its_size():
    call = {"type": "identify", "userId": "u", "traits": {"bio": "x" * MAX_MESSAGE_BYTES}}
    [(_, _, payload, reason, _)] = stage(orjson.dumps(call).decode())
    assert payload is None and "32,768 bytes" in reason


def test_valid_call_is_normalised_like_python_does():
    [(_, message_id, payload, reason, source)] = stage(
        '{"type":"identify","userId":12,"anonymousId":null,"traits":{"cleared":null},'
        '"timestamp":"2024-03-01T10:00:00+02:00"}'
    )
    message = orjson.loads(payload)
    assert reason is None and source is None
    assert message["userId"] == "12" and "anonymousId" not in message
    assert message["traits"] == {"cleared": None}
    assert message["timestamp"] == "2024-03-01T08:00:00.000Z"
    assert message["messageId"] == message_id


def test_message_ids_are_deterministic_and_distinct():
    a = '{"type":"identify","userId":"u1","traits":{"plan":"pro"}}'
    b = '{"type":"identify","userId":"u2","traits":{"plan":"pro"}}'
    first, second = stage(a, b, a)[0][1], stage(a)[0][1]
    assert first == second
    assert stage(b)[0][1] != first


def test_given_message_id_is_kept():
    [(_, message_id, payload, _, _)] = stage('{"type":"track","userId":"u","event":"E","messageId":"mine"}')
    assert message_id == "mine" == orjson.loads(payload)["messageId"]
