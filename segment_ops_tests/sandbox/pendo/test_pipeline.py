"""Behaviour of the emulated Pendo Aggregation API's pipeline evaluator."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from segment_ops.sandbox.pendo.pipeline import ALL_APPS, PipelineError, app_ids_of, run_aggregation

HOUR = 3_600_000
DAY = 24 * HOUR
NOW = int(datetime(2024, 3, 15, 13, 45, 30, tzinfo=UTC).timestamp() * 1000)
MIDNIGHT = int(datetime(2024, 3, 15, tzinfo=UTC).timestamp() * 1000)
TOP_OF_HOUR = int(datetime(2024, 3, 15, 13, tzinfo=UTC).timestamp() * 1000)
VISITORS = {"source": {"visitors": None}}


class FakeSource:
    """In-memory `fetch`: returns the given rows and records every call."""

    def __init__(self, rows: list[dict] | None = None) -> None:
        self.rows = rows or []
        self.calls: list[tuple[str, Any, dict | None]] = []

    def __call__(self, name: str, argument: Any, time_series: dict | None) -> list[dict]:
        self.calls.append((name, argument, time_series))
        return self.rows


def body(*stages: Any, mime_type: str = "application/json") -> dict:
    return {"response": {"mimeType": mime_type}, "request": {"pipeline": list(stages)}}


def run(*stages: Any, rows: list[dict] | None = None) -> list[dict]:
    return run_aggregation(body(VISITORS, *stages), FakeSource(rows), now_ms=NOW)


def events_window(time_series: dict, timezone: str = "UTC", now_ms: int = NOW) -> dict | None:
    fetch = FakeSource()
    run_aggregation(body({"source": {"events": None, "timeSeries": time_series}}), fetch, now_ms=now_ms,
                    timezone=timezone)
    return fetch.calls[0][2]


def ms(*args: int, tz: str = "UTC") -> int:
    return int(datetime(*args, tzinfo=ZoneInfo(tz)).timestamp() * 1000)


def evaluate(expression: str, row: dict | None = None) -> Any:
    return run({"select": {"v": expression}}, rows=[row or {}])[0]["v"]


def error_of(*stages: Any, rows: list[dict] | None = None) -> str:
    with pytest.raises(PipelineError) as raised:
        run(*stages, rows=rows)
    return str(raised.value)


# --- request body ------------------------------------------------------------------------------


def test_spec_example_returns_selected_identified_accounts() -> None:
    rows = [
        {
            "accountId": "acme",
            "metadata": {"custom": {"planlevel": "pro"}, "auto": {"lastvisit": 1700000000000}},
        },
        {"accountId": "_PENDO_T_anon", "metadata": {}},
    ]
    request = body(
        {"source": {"accounts": None}},
        {"identified": "accountId"},
        {
            "select": {
                "accountId": "accountId",
                "plan": "metadata.custom.planlevel",
                "lastvisit": "metadata.auto.lastvisit",
            }
        },
    )
    assert run_aggregation(request, FakeSource(rows), now_ms=NOW) == [
        {"accountId": "acme", "plan": "pro", "lastvisit": 1700000000000}
    ]


def test_rejects_mime_type_other_than_json() -> None:
    with pytest.raises(PipelineError, match="mimeType"):
        run_aggregation(body(VISITORS, mime_type="text/csv"), FakeSource(), now_ms=NOW)


def test_rejects_body_without_response() -> None:
    with pytest.raises(PipelineError, match="mimeType"):
        run_aggregation({"request": {"pipeline": [VISITORS]}}, FakeSource(), now_ms=NOW)


def test_rejects_empty_pipeline() -> None:
    with pytest.raises(PipelineError, match="non-empty"):
        run_aggregation(body(), FakeSource(), now_ms=NOW)


def test_rejects_pipeline_not_starting_with_source() -> None:
    with pytest.raises(PipelineError, match="first pipeline stage must be a source"):
        run_aggregation(body({"limit": 1}), FakeSource(), now_ms=NOW)


def test_rejects_source_naming_two_sources() -> None:
    with pytest.raises(PipelineError, match="exactly one source"):
        run_aggregation(body({"source": {"visitors": None, "accounts": None}}), FakeSource(), now_ms=NOW)


def test_rejects_unknown_source() -> None:
    with pytest.raises(PipelineError, match="unknown source 'sessions'"):
        run_aggregation(body({"source": {"sessions": None}}), FakeSource(), now_ms=NOW)


@pytest.mark.parametrize(
    "source", ["events", "pageEvents", "featureEvents", "trackEvents", "guideEvents", "pollEvents"]
)
def test_event_source_without_time_series_is_rejected(source: str) -> None:
    with pytest.raises(PipelineError, match=f"source '{source}' requires timeSeries"):
        run_aggregation(body({"source": {source: None}}), FakeSource(), now_ms=NOW)


def test_visitors_source_is_fetched_without_time_series() -> None:
    fetch = FakeSource([{"visitorId": "v1"}])
    assert run_aggregation(body(VISITORS), fetch, now_ms=NOW) == [{"visitorId": "v1"}]
    assert fetch.calls == [("visitors", None, None)]


def test_polls_seen_ever_needs_no_time_series() -> None:
    fetch = FakeSource()
    argument = {"guideId": "g1", "pollId": "p1"}
    run_aggregation(body({"source": {"pollsSeenEver": argument}}), fetch, now_ms=NOW)
    assert fetch.calls == [("pollsSeenEver", argument, None)]


def test_source_argument_is_passed_to_fetch() -> None:
    fetch = FakeSource()
    source = {
        "pageEvents": {"pageId": "p1"},
        "timeSeries": {"period": "dayRange", "first": MIDNIGHT, "count": 1},
    }
    run_aggregation(body({"source": source}), fetch, now_ms=NOW)
    assert fetch.calls == [
        ("pageEvents", {"pageId": "p1"}, {"period": "dayRange", "first": MIDNIGHT, "last": MIDNIGHT + DAY})
    ]


def test_rejects_source_argument_that_is_not_an_object() -> None:
    with pytest.raises(PipelineError, match="null or an object"):
        run_aggregation(body({"source": {"visitors": "all"}}), FakeSource(), now_ms=NOW)


def test_invalid_later_stage_fails_before_fetching() -> None:
    fetch = FakeSource()
    with pytest.raises(PipelineError):
        run_aggregation(body(VISITORS, {"filter": "a >"}), fetch, now_ms=NOW)
    assert fetch.calls == []


def test_rejects_unknown_stage() -> None:
    assert error_of({"foo": 1}) == "unknown pipeline stage 'foo'"


@pytest.mark.parametrize(
    "stage", [{"cat": None}, {"spawn": [[VISITORS]]}, {"join": {"fields": ["visitorId"]}}]
)
def test_rejects_cat_spawn_and_join_as_unsupported(stage: dict) -> None:
    assert "not supported" in error_of(stage)


def test_rejects_source_after_first_stage() -> None:
    assert "only allowed as the first" in error_of(VISITORS)


def test_rejects_stage_with_two_keys() -> None:
    assert "exactly one key" in error_of({"limit": 1, "sort": ["a"]})


# --- timeSeries --------------------------------------------------------------------------------


def test_time_series_count_covers_periods_forward_from_aligned_first() -> None:
    window = events_window({"period": "dayRange", "first": MIDNIGHT + 5 * HOUR, "count": 2})
    assert window == {"period": "dayRange", "first": MIDNIGHT, "last": MIDNIGHT + 2 * DAY}


def test_time_series_negative_count_covers_periods_before_first() -> None:
    window = events_window({"period": "dayRange", "first": "now()", "count": -3})
    assert window == {"period": "dayRange", "first": MIDNIGHT - 3 * DAY, "last": MIDNIGHT}


def test_time_series_first_now_is_aligned_to_day_start() -> None:
    window = events_window({"period": "dayRange", "first": "now()", "count": 1})
    assert window == {"period": "dayRange", "first": MIDNIGHT, "last": MIDNIGHT + DAY}


def test_time_series_first_accepts_now_arithmetic() -> None:
    window = events_window({"period": "dayRange", "first": "now() - 7*24*60*60*1000", "count": 7})
    assert window == {"period": "dayRange", "first": MIDNIGHT - 7 * DAY, "last": MIDNIGHT}


def test_time_series_first_accepts_date_add() -> None:
    window = events_window({"period": "dayRange", "first": 'dateAdd(now(), -30, "days")', "count": 30})
    assert window == {"period": "dayRange", "first": MIDNIGHT - 30 * DAY, "last": MIDNIGHT}


def test_time_series_hour_range_aligns_first_to_hour() -> None:
    window = events_window({"period": "hourRange", "first": "now()", "count": -2})
    assert window == {"period": "hourRange", "first": TOP_OF_HOUR - 2 * HOUR, "last": TOP_OF_HOUR}


def test_time_series_last_replaces_count_and_is_exclusive_end() -> None:
    window = events_window({"period": "dayRange", "first": MIDNIGHT - DAY, "last": NOW})
    assert window == {"period": "dayRange", "first": MIDNIGHT - DAY, "last": NOW}


# The subscription's time zone (spec §7): a day is local midnight to local midnight.


def test_a_day_starts_at_midnight_of_the_subscriptions_zone() -> None:
    window = events_window({"period": "dayRange", "first": "now()", "count": 1}, timezone="America/New_York")
    # NOW is 2024-03-15 13:45Z = 09:45 in New York (EDT, UTC-4 since 2024-03-10)
    assert window == {"period": "dayRange", "first": ms(2024, 3, 15, 4), "last": ms(2024, 3, 16, 4)}


def test_first_is_aligned_down_to_the_local_day_holding_it() -> None:
    # 02:00Z on 2024-03-15 is still 2024-03-14 in New York: that day's bucket starts at 04:00Z on the 14th
    window = events_window({"period": "dayRange", "first": ms(2024, 3, 15, 2), "count": 1},
                           timezone="America/New_York")
    assert window["first"] == ms(2024, 3, 14, 4) == ms(2024, 3, 14, tz="America/New_York")


def test_a_count_across_the_spring_dst_change_holds_a_23_hour_day() -> None:
    window = events_window({"period": "dayRange", "first": ms(2024, 3, 9, tz="America/New_York"), "count": 2},
                           timezone="America/New_York")
    assert window["first"] == ms(2024, 3, 9, 5) and window["last"] == ms(2024, 3, 11, 4)
    assert window["last"] - window["first"] == 47 * HOUR


def test_a_negative_count_across_the_autumn_dst_change_holds_a_25_hour_day() -> None:
    now = ms(2024, 11, 4, 15)
    window = events_window({"period": "dayRange", "first": "now()", "count": -2}, timezone="America/New_York",
                           now_ms=now)
    assert window == {"period": "dayRange", "first": ms(2024, 11, 2, 4), "last": ms(2024, 11, 4, 5)}
    assert window["last"] - window["first"] == 49 * HOUR


def test_hours_are_the_same_in_every_whole_hour_zone() -> None:
    assert events_window({"period": "hourRange", "first": "now()", "count": -2}, timezone="Asia/Tokyo") == {
        "period": "hourRange", "first": TOP_OF_HOUR - 2 * HOUR, "last": TOP_OF_HOUR}


# appId in the source's object (spec §7): every app, named apps, or (absent) the default app.


@pytest.mark.parametrize(("app_id", "expected"), [
    ('expandAppIds("*")', ALL_APPS), (' expandAppIds( "*" ) ', ALL_APPS), (-323232, frozenset({-323232})),
    ("5668600916475904", frozenset({5668600916475904})), (["-323232", 5715999741083648],
                                                           frozenset({-323232, 5715999741083648})),
])
def test_app_ids_of_reads_the_forms_pendo_and_tap_pendo_use(app_id: Any, expected: Any) -> None:
    assert app_ids_of({"appId": app_id}) == expected


def test_without_app_id_the_source_names_no_app() -> None:
    assert app_ids_of(None) is None and app_ids_of({"pageId": "p"}) is None


@pytest.mark.parametrize(("app_id", "message"), [
    ('expandAppIds("web*")', 'expandAppIds\\("\\*"\\) only'), ("web", "app id"), ([], "empty list"),
    ([True], "app id"), ({"id": 1}, "app id"),
])
def test_a_bad_app_id_is_rejected_before_any_data_is_read(app_id: Any, message: str) -> None:
    fetch = FakeSource()
    source = {"events": {"appId": app_id},
              "timeSeries": {"period": "dayRange", "first": MIDNIGHT, "count": 1}}
    with pytest.raises(PipelineError, match=message):
        run_aggregation(body({"source": source}), fetch, now_ms=NOW)
    assert fetch.calls == []


@pytest.mark.parametrize(
    ("time_series", "message"),
    [
        ({"period": "weekRange", "first": MIDNIGHT, "count": 1}, "period"),
        ({"period": "dayRange", "count": 1}, "first is required"),
        ({"period": "dayRange", "first": MIDNIGHT}, "exactly one of count or last"),
        ({"period": "dayRange", "first": MIDNIGHT, "count": 1, "last": NOW}, "exactly one of count or last"),
        ({"period": "dayRange", "first": MIDNIGHT, "count": 0}, "non-zero integer"),
        ({"period": "dayRange", "first": MIDNIGHT, "last": MIDNIGHT - DAY}, "after"),
        ({"period": "dayRange", "first": MIDNIGHT, "count": 401}, "400 days"),
        ({"period": "dayRange", "first": "lastVisit - 1", "count": 1}, "field 'lastVisit' is not allowed"),
        ({"period": "dayRange", "first": '"yesterday"', "count": 1}, "epoch milliseconds"),
        ({"period": "dayRange", "first": MIDNIGHT, "count": 1, "step": 2}, "unknown timeSeries field 'step'"),
    ],
)
def test_time_series_rejects_invalid_specs(time_series: dict, message: str) -> None:
    with pytest.raises(PipelineError, match=message):
        events_window(time_series)


def test_time_series_allows_400_days() -> None:
    window = events_window({"period": "dayRange", "first": "now()", "count": -400})
    assert window is not None and window["last"] - window["first"] == 400 * DAY


# --- identified / filter / select / eval -------------------------------------------------------


def test_identified_drops_anonymous_visitors() -> None:
    rows = [{"visitorId": "v1"}, {"visitorId": "_PENDO_T_abc"}, {"visitorId": ""}, {"visitorId": None}, {}]
    assert run({"identified": "visitorId"}, rows=rows) == [{"visitorId": "v1"}]


def test_identified_with_bang_keeps_only_anonymous_visitors() -> None:
    rows = [{"visitorId": "v1"}, {"visitorId": "_PENDO_T_abc"}]
    assert run({"identified": "!visitorId"}, rows=rows) == [{"visitorId": "_PENDO_T_abc"}]


def test_filter_keeps_rows_matching_expression_on_nested_field() -> None:
    rows = [
        {"id": 1, "metadata": {"auto": {"lastvisit": 5}}},
        {"id": 2, "metadata": {"auto": {"lastvisit": 9}}},
        {"id": 3},
    ]
    assert run({"filter": "metadata.auto.lastvisit > 6"}, rows=rows) == [rows[1]]


def test_filter_rejects_non_string_spec() -> None:
    assert "expression string" in error_of({"filter": {"a": 1}})


def test_select_reads_dotted_paths_and_missing_paths_become_null() -> None:
    rows = [{"visitorId": "v1", "metadata": {"agent": {"name": "Ada"}}, "extra": 1}]
    result = run(
        {"select": {"id": "visitorId", "name": "metadata.agent.name", "plan": "metadata.custom.plan"}},
        rows=rows,
    )
    assert result == [{"id": "v1", "name": "Ada", "plan": None}]


def test_select_evaluates_expressions() -> None:
    assert run({"select": {"total": "a + b"}}, rows=[{"a": 2, "b": 3}]) == [{"total": 5}]


def test_select_with_dotted_output_name_builds_nested_object() -> None:
    assert run({"select": {"user.id": "visitorId"}}, rows=[{"visitorId": "v1"}]) == [{"user": {"id": "v1"}}]


def test_eval_adds_fields_and_keeps_existing_ones() -> None:
    assert run({"eval": {"double": "n * 2"}}, rows=[{"n": 4, "k": "x"}]) == [{"n": 4, "k": "x", "double": 8}]


def test_eval_does_not_mutate_source_rows() -> None:
    rows = [{"n": 1, "meta": {"a": 1}}]
    run({"eval": {"n": "n + 1", "meta.b": "2"}}, rows=rows)
    assert rows == [{"n": 1, "meta": {"a": 1}}]


def test_eval_rejects_non_string_expression() -> None:
    assert "must be an expression string" in error_of({"eval": {"x": 1}})


# --- group / reduce ----------------------------------------------------------------------------

EVENT_ROWS = [
    {"accountId": "a", "visitorId": "v1", "numEvents": 3, "day": 1},
    {"accountId": "b", "visitorId": "v2", "numEvents": 5, "day": 2},
    {"accountId": "a", "visitorId": "v1", "numEvents": 4, "day": 3},
    {"accountId": "a", "visitorId": "v3", "numEvents": None, "day": 2},
]


def test_group_counts_rows_and_sums_per_key_in_first_seen_order() -> None:
    fields = {"rows": {"count": None}, "events": {"sum": "numEvents"}}
    assert run({"group": {"group": ["accountId"], "fields": fields}}, rows=EVENT_ROWS) == [
        {"accountId": "a", "rows": 3, "events": 7},
        {"accountId": "b", "rows": 1, "events": 5},
    ]


def test_group_count_of_field_counts_distinct_non_null_values() -> None:
    rows = [*EVENT_ROWS, {"accountId": "a", "visitorId": None}]
    result = run(
        {"group": {"group": ["accountId"], "fields": {"visitors": {"count": "visitorId"}}}}, rows=rows
    )
    assert result == [{"accountId": "a", "visitors": 2}, {"accountId": "b", "visitors": 1}]


def test_group_min_max_avg_first_last_list_skip_nulls() -> None:
    fields = {
        "lo": {"min": "numEvents"},
        "hi": {"max": "numEvents"},
        "mean": {"avg": "numEvents"},
        "firstDay": {"first": "day"},
        "lastDay": {"last": "day"},
        "all": {"list": "numEvents"},
    }
    result = run({"group": {"group": ["accountId"], "fields": fields}}, rows=EVENT_ROWS)
    assert result[0] == {
        "accountId": "a",
        "lo": 3,
        "hi": 4,
        "mean": 3.5,
        "firstDay": 1,
        "lastDay": 2,
        "all": [3, 4],
    }


def test_group_accepts_fields_as_list_of_objects() -> None:
    stage = {"group": {"group": ["accountId"], "fields": [{"n": {"count": None}}]}}
    assert run(stage, rows=EVENT_ROWS) == [{"accountId": "a", "n": 3}, {"accountId": "b", "n": 1}]


def test_group_by_dotted_key_nests_key_in_output() -> None:
    rows = [{"m": {"plan": "pro"}}, {"m": {"plan": "pro"}}, {"m": {}}]
    result = run({"group": {"group": ["m.plan"], "fields": {"n": {"count": None}}}}, rows=rows)
    assert result == [{"m": {"plan": "pro"}, "n": 2}, {"m": {"plan": None}, "n": 1}]


def test_group_by_list_valued_key_groups_equal_lists() -> None:
    rows = [{"ids": ["a", "b"]}, {"ids": ["a", "b"]}, {"ids": ["c"]}]
    result = run({"group": {"group": ["ids"], "fields": {"n": {"count": None}}}}, rows=rows)
    assert result == [{"ids": ["a", "b"], "n": 2}, {"ids": ["c"], "n": 1}]


def test_group_rejects_unsupported_aggregate() -> None:
    assert "unsupported aggregate 'median'" in error_of(
        {"group": {"group": ["a"], "fields": {"x": {"median": "n"}}}}
    )


def test_group_sum_of_non_number_is_a_pipeline_error() -> None:
    message = error_of({"group": {"group": [], "fields": {"x": {"sum": "n"}}}}, rows=[{"n": "three"}])
    assert "cannot sum string" in message


def test_reduce_yields_one_row_even_for_no_input() -> None:
    assert run({"reduce": {"uniqueVisitors": {"count": "visitorId"}}}, rows=[]) == [{"uniqueVisitors": 0}]


def test_reduce_aggregates_all_rows() -> None:
    stage = {"reduce": {"visitors": {"count": "visitorId"}, "events": {"sum": "numEvents"}}}
    assert run(stage, rows=EVENT_ROWS) == [{"visitors": 3, "events": 12}]


# --- sort / limit / unwind ---------------------------------------------------------------------


def test_sort_ascending_puts_null_first() -> None:
    rows = [{"n": 2}, {"n": None}, {"n": 1}, {}]
    assert run({"sort": ["n"]}, rows=rows) == [{"n": None}, {}, {"n": 1}, {"n": 2}]


def test_sort_minus_prefix_sorts_descending() -> None:
    assert run({"sort": ["-n"]}, rows=[{"n": 1}, {"n": 3}, {"n": 2}]) == [{"n": 3}, {"n": 2}, {"n": 1}]


def test_sort_by_several_fields_with_mixed_directions() -> None:
    rows = [{"a": "x", "b": 1}, {"a": "y", "b": 5}, {"a": "x", "b": 2}]
    assert run({"sort": ["a", "-b"]}, rows=rows) == [
        {"a": "x", "b": 2},
        {"a": "x", "b": 1},
        {"a": "y", "b": 5},
    ]


def test_sort_orders_mixed_types_without_error() -> None:
    rows = [{"v": "b"}, {"v": 2}, {"v": None}, {"v": [1]}]
    assert run({"sort": ["v"]}, rows=rows) == [{"v": None}, {"v": 2}, {"v": "b"}, {"v": [1]}]


def test_limit_keeps_first_rows() -> None:
    assert run({"limit": 2}, rows=[{"n": 1}, {"n": 2}, {"n": 3}]) == [{"n": 1}, {"n": 2}]


@pytest.mark.parametrize("value", [-1, "2", True])
def test_limit_rejects_non_natural_numbers(value: Any) -> None:
    assert "non-negative integer" in error_of({"limit": value})


def test_unwind_expands_list_with_index() -> None:
    rows = [{"id": 1, "tags": ["a", "b"]}]
    assert run({"unwind": {"field": "tags", "index": "i"}}, rows=rows) == [
        {"id": 1, "tags": "a", "i": 0},
        {"id": 1, "tags": "b", "i": 1},
    ]


def test_unwind_drops_rows_with_empty_list_unless_keep_empty() -> None:
    rows = [{"id": 1, "tags": []}, {"id": 2}]
    assert run({"unwind": {"field": "tags"}}, rows=rows) == []
    assert run({"unwind": {"field": "tags", "keepEmpty": True}}, rows=rows) == [
        {"id": 1, "tags": None},
        {"id": 2, "tags": None},
    ]


def test_unwind_rejects_unknown_option() -> None:
    assert "unwind takes" in error_of({"unwind": {"field": "tags", "prefix": True}})


# --- expressions -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("10 - 4 - 3", 3),
        ("7 / 2", 3.5),
        ("-2 * 3", -6),
        ("1 + 2 == 3", True),
        ("2 > 1 == true", True),
        ("true || false && false", True),
        ("(true || false) && false", False),
        ("!false && true", True),
        ("!(1 < 2)", False),
    ],
)
def test_expression_operator_precedence(expression: str, expected: Any) -> None:
    assert evaluate(expression) == expected


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("missing > 1", False),
        ("missing < 1", False),
        ("missing <= missing", False),
        ("missing == null", True),
        ("missing != null", False),
        ("n != null", True),
        ("missing == 1", False),
        ("missing != 1", True),
        ("missing + 1", None),
        ("!missing", True),
    ],
)
def test_expression_null_handling(expression: str, expected: Any) -> None:
    assert evaluate(expression, {"n": 1}) == expected


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ('"say \\"hi\\""', 'say "hi"'),
        ("'pro'", "pro"),
        ('"a" + "b"', "ab"),
        ("1.5", 1.5),
        ("null", None),
        ("1 / 0", None),
        ('"10" > 9', False),
    ],
)
def test_expression_literals_and_edge_values(expression: str, expected: Any) -> None:
    assert evaluate(expression) == expected


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("now()", NOW),
        ('dateAdd(now(), -2, "hours")', NOW - 2 * HOUR),
        ('dateAdd(missing, 1, "days")', None),
        ("isNull(missing)", True),
        ("isNull(name)", False),
        ('contains(name, "da")', True),
        ('contains(tags, "x")', True),
        ('contains(missing, "x")', False),
        ("len(name)", 3),
        ("len(tags)", 2),
        ("len(missing)", None),
        ('startsWith(name, "Ad")', True),
        ('startsWith(missing, "Ad")', False),
    ],
)
def test_expression_functions(expression: str, expected: Any) -> None:
    assert evaluate(expression, {"name": "Ada", "tags": ["x", "y"]}) == expected


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("a > ", "expected a value but found 'end of expression' at position 4"),
        ("a # b", "unexpected character '#' at position 2"),
        ("(a > 1", "expected ')' but found 'end of expression' at position 6"),
        ("a b", "unexpected 'b' at position 2"),
        ("isNull(a, b)", "isNull() takes 1 argument(s), got 2 at position 0"),
        ('dateAdd(now(), 1, "weeks")', "dateAdd() unit must be one of 'days', 'hours' at position 0"),
    ],
)
def test_bad_expression_reports_position(expression: str, message: str) -> None:
    assert error_of({"filter": expression}) == f"invalid expression {expression!r}: {message}"


def test_absurdly_nested_expression_is_a_pipeline_error() -> None:
    assert "nested too deeply" in error_of({"filter": "(" * 5000 + "1" + ")" * 5000})


def test_unsupported_function_is_rejected_with_position() -> None:
    assert error_of({"eval": {"visitorId": "hash(visitorId)"}}) == (
        "invalid expression 'hash(visitorId)': unsupported function 'hash' at position 0"
    )


def test_arithmetic_on_string_and_number_is_a_pipeline_error() -> None:
    assert "cannot apply '*' to string and number" in error_of(
        {"eval": {"x": "name * 2"}}, rows=[{"name": "a"}]
    )


# --- scale -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_filter_and_group_over_100k_event_rows_is_fast() -> None:
    rows = [
        {"visitorId": f"v{i % 5000}", "accountId": f"a{i % 300}", "numEvents": i % 7, "day": MIDNIGHT}
        for i in range(100_000)
    ]
    stages = [
        {"identified": "visitorId"},
        {"filter": "numEvents > 0 && day >= 0"},
        {
            "group": {
                "group": ["accountId"],
                "fields": {"events": {"sum": "numEvents"}, "visitors": {"count": "visitorId"}},
            }
        },
        {"sort": ["-events"]},
    ]
    result = run(*stages, rows=rows)
    assert len(result) == 300
    assert sum(row["events"] for row in result) == sum(row["numEvents"] for row in rows)
