"""Fullstory Streams' bearer token and stream bodies (`syncs/fullstory/streams.py`)."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from segment_ops.syncs.fullstory.streams import (
    InvalidEvent,
    TokenError,
    check_token,
    event_from_body,
    event_key,
    parse_event,
)

TOKENS = ("current-token", "previous-one", "previous-two")
V2 = {"name": "Rage Click", "timestamp": "2026-12-01T10:11:12Z", "api_version": "v2", "signal_version": "1",
      "user": {"id": "5112718394511360", "uid": "usr_0000001", "email": "ada@example.com",
               "display_name": "Ada Lovelace"}}
SESSION = "https://app.fullstory.com/ui/o-SANDBOX-na1/session/123%3A456"
MAPPED = V2 | {"session_url": SESSION, "page_url": "https://app.example/reports",
               "event_time": "2026-12-01T10:11:12.345Z"}


# ----------------------------------------------------------------------------------------- check_token
def test_the_current_token_matches_index_0():
    match = check_token("Bearer current-token", TOKENS)
    assert match.index == 0 and match.name == "FULLSTORY_STREAM_TOKEN"


@pytest.mark.parametrize("index", [1, 2])
def test_a_previous_token_matches_with_its_index(index):
    match = check_token(f"Bearer {TOKENS[index]}", TOKENS)
    assert match.index == index
    assert match.name == f"FULLSTORY_STREAM_PREVIOUS_TOKENS[{index - 1}]"


@pytest.mark.parametrize("header", ["bearer current-token", "BEARER current-token",
                                    "  Bearer current-token  ", "Bearer   current-token"])
def test_the_scheme_is_case_insensitive_and_whitespace_is_trimmed(header):
    assert check_token(header, TOKENS).index == 0


@pytest.mark.parametrize("header", [None, ""])
def test_a_missing_header_is_refused_401(header):
    with pytest.raises(TokenError, match="missing Authorization") as info:
        check_token(header, TOKENS)
    assert info.value.status == 401


@pytest.mark.parametrize("header", ["Basic current-token", "current-token", "Bearer", "Bearer    ",
                                    "Token current-token"])
def test_another_scheme_or_no_token_is_refused(header):
    with pytest.raises(TokenError, match="not a Bearer token"):
        check_token(header, TOKENS)


@pytest.mark.parametrize("given", ["wrong", "current-toke", "current-token-and-more", "CURRENT-TOKEN",
                                   "sandbox-fullstory-stream-token", "\udcff"])
def test_a_wrong_token_is_refused_and_the_message_names_no_token(given):
    with pytest.raises(TokenError) as info:
        check_token(f"Bearer {given}", TOKENS)
    assert info.value.status == 401
    assert all(token not in str(info.value) for token in TOKENS) and given not in str(info.value)


def test_with_no_token_configured_nothing_matches():
    with pytest.raises(TokenError):
        check_token("Bearer anything", ())


def test_the_same_token_listed_twice_matches_its_first_place():
    assert check_token("Bearer same", ("same", "same")).index == 0


# ----------------------------------------------------------------------------------------- parse_event
def test_a_v2_body_gives_its_fields():
    event = parse_event(orjson.dumps(V2))

    assert event.name == "Rage Click"
    assert event.timestamp == datetime(2026, 12, 1, 10, 11, 12, tzinfo=UTC)
    assert (event.fs_user_id, event.uid, event.email, event.display_name) == (
        "5112718394511360", "usr_0000001", "ada@example.com", "Ada Lovelace")
    assert event.session_url is None and event.page_url is None
    assert event.body == V2 and event.key == event_key(V2)


def test_a_mapped_body_gives_session_url_page_url_and_the_event_time_wins():
    event = parse_event(orjson.dumps(MAPPED))

    assert event.session_url == SESSION and event.page_url == "https://app.example/reports"
    assert event.timestamp == datetime(2026, 12, 1, 10, 11, 12, 345000, tzinfo=UTC)


@pytest.mark.parametrize(("value", "expected"), [
    ("2026-12-01T10:11:12+02:00", datetime(2026, 12, 1, 8, 11, 12, tzinfo=UTC)),
    ("2026-12-01T10:11:12", datetime(2026, 12, 1, 10, 11, 12, tzinfo=UTC)),  # no offset: UTC
    ("2026-12-01t10:11:12z", datetime(2026, 12, 1, 10, 11, 12, tzinfo=UTC)),
    (1764583872000, datetime(2025, 12, 1, 10, 11, 12, tzinfo=UTC)),  # epoch milliseconds
])
def test_times_in_iso_8601_or_epoch_milliseconds(value, expected):
    assert event_from_body(V2 | {"timestamp": value}).timestamp == expected


def test_an_anonymous_user_with_empty_uid_and_email_is_kept_by_its_fullstory_id():
    event = event_from_body(V2 | {"user": {"id": "42", "uid": "", "email": "", "display_name": ""}})
    assert (event.fs_user_id, event.uid, event.email, event.display_name) == ("42", None, None, None)


def test_numeric_ids_are_read_as_text():
    event = event_from_body(V2 | {"user": {"id": 5112718394511360, "uid": 7}})
    assert (event.fs_user_id, event.uid) == ("5112718394511360", "7")


def test_unknown_fields_are_kept_in_the_body():
    body = MAPPED | {"event_id": "e-1", "extra": {"a": 1}}
    assert event_from_body(body).body == body


@pytest.mark.parametrize(("body", "message"), [
    ({k: v for k, v in V2.items() if k != "name"}, "name is missing"),
    (V2 | {"name": ""}, "name is missing"),
    (V2 | {"name": ["Rage Click"]}, "name is not a string"),
    (V2 | {"name": True}, "name is not a string"),
    (V2 | {"name": "x" * 1025}, "name is longer than 1024"),
    ({k: v for k, v in V2.items() if k != "timestamp"}, "timestamp is missing"),
    (V2 | {"timestamp": "yesterday"}, "timestamp is not an ISO 8601 time"),
    (V2 | {"timestamp": True}, "timestamp is not a time"),
    (V2 | {"timestamp": 10 ** 30}, "timestamp is not a time"),
    (V2 | {"timestamp": "2026-12-01T10:11:12Z" + " " * 60}, "timestamp is not a time"),
    (V2 | {"event_time": "not a time"}, "event_time is not an ISO 8601 time"),
    (V2 | {"user": "usr_0000001"}, "user is not an object"),
    (V2 | {"user": {"uid": {"x": 1}}}, "user.uid is not a string"),
    (V2 | {"user": {"uid": "u" * 1025}}, "user.uid is longer than 1024"),
    (MAPPED | {"session_url": "javascript:alert(1)"}, "session_url is not an http(s) URL"),
    (MAPPED | {"page_url": "ftp://app.example/x"}, "page_url is not an http(s) URL"),
    (MAPPED | {"page_url": "https://app.example/" + "a" * 8192}, "page_url is longer than 8192"),
    (V2 | {"name": "Rage\nClick"}, "name holds a control character"),
    (V2 | {"name": "Rage\x00Click"}, "name holds a control character"),
    (V2 | {"name": "Rage\x85Click"}, "name holds a control character"),
    (V2 | {"user": {"uid": "usr\t1"}}, "user.uid holds a control character"),
    (V2 | {"user": {"uid": "u1", "email": "a@b.c\r\n"}}, "user.email holds a control character"),
    (MAPPED | {"session_url": SESSION + "\n"}, "session_url holds a control character"),
])
def test_a_body_that_is_no_event_says_what_is_wrong(body, message):
    with pytest.raises(InvalidEvent, match=message.replace("(", r"\(").replace(")", r"\)")):
        event_from_body(body)


@pytest.mark.parametrize("body", [
    {k: v for k, v in V2.items() if k != "user"}, V2 | {"user": {"display_name": "Nobody"}},
    V2 | {"user": {"id": "", "uid": "", "email": ""}}, V2 | {"user": None}])
def test_an_anonymous_visitor_is_an_event_without_ids(body):
    # Field Mapping has no path for Fullstory's own id: an anonymous visitor's event carries no id at all. It
    # is stored and recorded as unidentified by the run, never refused (Fullstory does not retry a 400).
    event = event_from_body(body)

    assert (event.fs_user_id, event.uid, event.email) == (None, None, None)


def test_the_error_names_the_field_not_its_value():
    with pytest.raises(InvalidEvent) as info:
        event_from_body(V2 | {"user": {"uid": "secret\x01value"}})
    assert "secret" not in str(info.value)


def test_a_display_name_may_hold_control_characters():
    assert event_from_body(V2 | {"user": {"uid": "u1", "display_name": "Ada\tL"}}).display_name == "Ada\tL"


@pytest.mark.parametrize(("raw", "message"), [
    (b"", "not valid JSON"), (b"{", "not valid JSON"), (b"\xff", "not valid JSON"),
    (b"[]", "not a JSON object"), (b"\"Rage Click\"", "not a JSON object"), (b"null", "not a JSON object"),
])
def test_a_body_that_is_not_a_json_object(raw, message):
    with pytest.raises(InvalidEvent, match=message):
        parse_event(raw)


# ----------------------------------------------------------------------------------------- event_key
def test_the_key_is_stable_under_key_order():
    shuffled = {"user": dict(reversed(list(MAPPED["user"].items())))} | {
        k: MAPPED[k] for k in reversed(list(MAPPED)) if k != "user"}
    assert list(shuffled) != list(MAPPED)
    assert event_key(shuffled) == event_key(MAPPED)
    assert parse_event(orjson.dumps(shuffled)).key == parse_event(orjson.dumps(MAPPED)).key
    assert len(event_key(MAPPED)) == 32 and int(event_key(MAPPED), 16) >= 0


def test_the_key_differs_when_a_value_differs():
    assert event_key(V2) != event_key(V2 | {"timestamp": "2026-12-01T10:11:13Z"})
    assert event_key(V2) != event_key(V2 | {"user": V2["user"] | {"uid": "usr_0000002"}})
    assert event_key(MAPPED) != event_key(MAPPED | {"event_time": "2026-12-01T10:11:12.346Z"})


def test_the_key_ignores_whitespace_in_the_raw_body():
    assert parse_event(orjson.dumps(V2)).key == parse_event(
        orjson.dumps(V2, option=orjson.OPT_INDENT_2)).key
