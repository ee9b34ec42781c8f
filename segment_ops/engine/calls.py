"""Segment calls: validation, JSON encoding and deterministic messageIds (spec §1, ARCHITECTURE rule 1).

A call that cannot be made valid raises `InvalidCall` with a reason a person can act on; the caller
puts it in the rejected table. Nothing here sends anything.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
from collections.abc import Mapping
from typing import Any

import orjson

CALL_TYPES = frozenset({"identify", "track", "page", "screen", "group", "alias"})
# Spec §1: 32 KB per message; a larger one is refused by Segment with 400 (analytics-python: 32 << 10).
MAX_MESSAGE_BYTES = 32 * 1024
_OBJECT_FIELDS = ("traits", "properties", "context", "integrations")
_ID_FIELDS = ("userId", "anonymousId", "groupId", "previousId")


class InvalidCall(ValueError):
    """The call cannot be sent as it is; the message says why."""


def prepare_call(call: Mapping[str, Any], *, sync: str, record_key: str | None = None) -> tuple[str, bytes]:
    """Validate `call`, give it a deterministic messageId unless it has one, and encode it.

    Returns (messageId, encoded JSON). Raises `InvalidCall` for what Segment would refuse or drop
    silently. Values are normalised explicitly: datetimes and dates to ISO-8601, Decimal to a number,
    NaN and infinities to null, numeric ids to strings.
    """
    message = _validated(call)
    message_id = message.get("messageId")
    if message_id is None:
        # Keys sorted: the same call always encodes, and so hashes, the same way. The id is appended
        # to that one encoding rather than encoding the message twice.
        body = _encode(message, sort_keys=True)
        key = (record_key if record_key is not None
               else str(message.get("userId") or message.get("anonymousId") or ""))
        message_id = deterministic_message_id(sync, key, body)
        encoded = body[:-1] + b',"messageId":"' + message_id.encode() + b'"}'
    else:
        encoded = _encode(message)
    if len(encoded) > MAX_MESSAGE_BYTES:
        raise InvalidCall(f"message is {len(encoded):,} bytes; Segment's limit is {MAX_MESSAGE_BYTES:,} "
                          "bytes per call")
    return message_id, encoded


def deterministic_message_id(sync: str, record_key: str, canonical_payload: bytes) -> str:
    """A UUID-shaped id from (sync, record key, payload): the same change always gets the same id."""
    h = hashlib.sha256(sync.encode() + b"\x1f" + record_key.encode() + b"\x1f"
                       + canonical_payload).hexdigest()
    # Formatted by hand as an RFC 4122 name-based UUID (version 5 nibble, RFC variant): uuid.UUID costs
    # more than the hash itself on this hot path.
    variant = "89ab"[int(h[16], 16) & 0x3]
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{variant}{h[17:20]}-{h[20:32]}"


def to_json_value(value: Any) -> Any:
    """orjson `default` hook: the explicit rules for values JSON has no type for."""
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            return None
        as_int = int(value)
        return as_int if value == as_int else float(value)
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if hasattr(value, "isoformat"):  # pandas.Timestamp and friends
        return value.isoformat()
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"value of type {type(value).__name__} cannot be sent to Segment as JSON")


def _validated(call: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(call, Mapping):
        raise InvalidCall(f"a call must be a JSON object, got {type(call).__name__}")
    message = {k: v for k, v in call.items() if v is not None}
    kind = message.get("type")
    if kind not in CALL_TYPES:
        raise InvalidCall(f"type must be one of {sorted(CALL_TYPES)}, got {kind!r}")
    for name in _ID_FIELDS:
        if name in message:
            message[name] = _id_string(name, message[name])
    if kind == "alias":
        if not message.get("previousId") or not message.get("userId"):
            raise InvalidCall("alias needs both previousId and userId")
    elif not message.get("userId") and not message.get("anonymousId"):
        raise InvalidCall(f"{kind} needs a userId or an anonymousId")
    if kind == "track" and not (isinstance(message.get("event"), str) and message["event"].strip()):
        raise InvalidCall("track needs a non-empty event name")
    if kind == "group" and not message.get("groupId"):
        raise InvalidCall("group needs a groupId")
    for name in _OBJECT_FIELDS:
        if name in message and not isinstance(message[name], Mapping):
            raise InvalidCall(f"{name} must be an object, got {type(message[name]).__name__}")
    if "messageId" in message and not (isinstance(message["messageId"], str)
                                       and 0 < len(message["messageId"]) <= 200):
        raise InvalidCall("messageId must be a non-empty string of at most 200 characters")
    if "timestamp" in message:
        message["timestamp"] = _iso_timestamp(message["timestamp"])
    return message


def _id_string(name: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidCall(f"{name} must be a string, got {type(value).__name__}")
    return str(value)


def _iso_timestamp(value: Any) -> str:
    if isinstance(value, str) and _is_canonical_timestamp(value):
        return value  # already UTC ISO-8601 with milliseconds: the common case in machine-written files
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidCall(f"timestamp {value!r} is not ISO-8601") from None
    elif isinstance(value, dt.datetime):
        parsed = value
    elif isinstance(value, dt.date):
        parsed = dt.datetime(value.year, value.month, value.day)
    else:
        raise InvalidCall(f"timestamp must be an ISO-8601 string, got {type(value).__name__}")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _is_canonical_timestamp(value: str) -> bool:
    """Is `value` exactly YYYY-MM-DDTHH:MM:SS.mmmZ and a real moment? (A cheap check before parsing.)"""
    if len(value) != 24 or value[10] != "T" or value[19] != "." or value[23] != "Z":
        return False
    try:
        dt.datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def _encode(message: Mapping[str, Any], *, sort_keys: bool = False) -> bytes:
    option = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY | (orjson.OPT_SORT_KEYS if sort_keys else 0)
    try:  # orjson writes NaN and infinities as null, datetimes as RFC 3339
        return orjson.dumps(message, default=to_json_value, option=option)
    except orjson.JSONEncodeError as exc:  # unknown types, integers beyond 64 bits, circular data
        raise InvalidCall(f"not JSON-serialisable: {exc}") from None


__all__ = [
    "CALL_TYPES",
    "MAX_MESSAGE_BYTES",
    "InvalidCall",
    "deterministic_message_id",
    "prepare_call",
    "to_json_value",
]
