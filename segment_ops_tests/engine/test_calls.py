import datetime as dt
import decimal
import math

import orjson
import pytest

from segment_ops.engine.calls import MAX_MESSAGE_BYTES, InvalidCall, deterministic_message_id, prepare_call


def prepare(call, **kwargs):
    message_id, encoded = prepare_call(call, sync=kwargs.pop("sync", "test"), **kwargs)
    return message_id, orjson.loads(encoded)


def test_same_call_gets_the_same_message_id():
    call = {"type": "identify", "userId": "u1", "traits": {"plan": "pro"}}
    assert prepare(call)[0] == prepare(dict(call))[0]


def test_message_id_changes_with_sync_key_or_payload():
    call = {"type": "identify", "userId": "u1", "traits": {"plan": "pro"}}
    base = prepare(call)[0]
    assert prepare(call, sync="other")[0] != base
    assert prepare(call, record_key="k2")[0] != base
    assert prepare({**call, "traits": {"plan": "free"}})[0] != base


def test_message_id_ignores_key_order():
    a = prepare({"type": "identify", "userId": "u1", "traits": {"a": 1, "b": 2}})[0]
    b = prepare({"traits": {"b": 2, "a": 1}, "userId": "u1", "type": "identify"})[0]
    assert a == b


def test_given_message_id_is_kept():
    message_id, message = prepare({"type": "track", "userId": "u", "event": "E", "messageId": "mine-1"})
    assert message_id == "mine-1" == message["messageId"]


def test_deterministic_message_id_is_uuid_shaped():
    value = deterministic_message_id("s", "k", b"{}")
    assert len(value) == 36 and value.count("-") == 4


INVALID_CALLS = [
    ({"type": "identify"}, "needs a userId or an anonymousId"),
    ({"type": "track", "userId": "u"}, "non-empty event name"),
    ({"type": "track", "userId": "u", "event": "  "}, "non-empty event name"),
    ({"type": "group", "userId": "u"}, "needs a groupId"),
    ({"type": "alias", "userId": "u"}, "previousId and userId"),
    ({"type": "shout", "userId": "u"}, "type must be one of"),
    ({"userId": "u"}, "type must be one of"),
    ({"type": "identify", "userId": {"id": 1}}, "userId must be a string"),
    ({"type": "identify", "userId": True}, "userId must be a string"),
    ({"type": "identify", "userId": "u", "traits": ["a"]}, "traits must be an object"),
    ({"type": "track", "userId": "u", "event": "E", "properties": "x"}, "properties must be an object"),
    ({"type": "identify", "userId": "u", "timestamp": "yesterday"}, "not ISO-8601"),
    ({"type": "identify", "userId": "u", "timestamp": 12}, "ISO-8601 string"),
    ({"type": "identify", "userId": "u", "messageId": ""}, "messageId must be"),
    ({"type": "identify", "userId": "u", "traits": {"blob": b"bytes"}}, "not JSON-serialisable"),
    ({"type": "identify", "userId": "u", "traits": {"big": 2**70}}, "not JSON-serialisable"),
    ("not an object", "must be a JSON object"),
]


@pytest.mark.parametrize(("call", "reason"), INVALID_CALLS)
def test_invalid_calls_are_refused_with_a_reason(call, reason):
    with pytest.raises(InvalidCall, match=reason):
        prepare_call(call, sync="test")


def test_oversized_message_is_refused_with_its_size():
    call = {"type": "identify", "userId": "u", "traits": {"bio": "x" * MAX_MESSAGE_BYTES}}
    with pytest.raises(InvalidCall, match=r"32,768 bytes"):
        prepare_call(call, sync="test")


def test_values_are_normalised_explicitly():
    _, message = prepare(
        {
            "type": "identify",
            "userId": 42,
            "anonymousId": None,
            "traits": {
                "ltv": decimal.Decimal("12.50"),
                "seats": decimal.Decimal("3"),
                "bad": decimal.Decimal("NaN"),
                "score": math.nan,
                "inf": math.inf,
                "signup": dt.date(2024, 1, 2),
                "seen": dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
                "tags": ("a", "b"),
                "cleared": None,
            },
        }
    )
    assert message["userId"] == "42"
    assert "anonymousId" not in message  # top-level nulls are dropped, like analytics-python
    traits = message["traits"]
    assert traits["ltv"] == 12.5 and traits["seats"] == 3
    assert traits["bad"] is None and traits["score"] is None and traits["inf"] is None
    assert traits["signup"] == "2024-01-02"
    assert traits["seen"].startswith("2024-01-02T03:04:05")
    assert traits["tags"] == ["a", "b"]
    assert traits["cleared"] is None  # a null trait clears it downstream, so it is kept


def test_timestamps_become_utc_iso_with_milliseconds():
    _, message = prepare({"type": "identify", "userId": "u", "timestamp": "2024-03-01T10:00:00+02:00"})
    assert message["timestamp"] == "2024-03-01T08:00:00.000Z"
    _, naive = prepare({"type": "identify", "userId": "u", "timestamp": dt.datetime(2024, 3, 1, 10)})
    assert naive["timestamp"] == "2024-03-01T10:00:00.000Z"
