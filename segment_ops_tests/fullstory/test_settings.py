"""`fullstory.toml` read strictly (`syncs/fullstory/settings.py`): a typo is an error naming the file and
key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from segment_ops.syncs.fullstory.settings import DEFAULT_FILE, FullstoryConfigError, config_file, load_config

MINIMAL = """
[signals.streams."Rage Click"]
kind = "rage"
event = "Rage Clicked"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fullstory.toml"
    path.write_text(text)
    return path


def error(tmp_path: Path, text: str) -> FullstoryConfigError:
    path = write(tmp_path, text)
    with pytest.raises(FullstoryConfigError) as info:
        load_config(path)
    assert info.value.path == path and str(info.value).startswith(f"{path}: ")
    return info.value


def test_the_shipped_file_loads():
    config = load_config(DEFAULT_FILE)
    events = {s.event for s in config.signals.streams.values()}
    assert events == {"Rage Clicked", "Dead Clicked", "Error Clicked"}
    assert {s.kind for s in config.signals.streams.values()} == {"rage", "dead", "error"}
    assert config.signals.per_user >= 1 and config.signals.exclude_emails
    assert config.identity.uid_is_user_id and config.identity.email_source is not None
    assert "{window_start}" in config.score.warehouse_query and len(config.code_version) == 16


def test_a_minimal_file_takes_the_defaults(tmp_path):
    config = load_config(write(tmp_path, MINIMAL))
    assert list(config.signals.streams) == ["Rage Click"]
    assert (config.signals.per_user, config.signals.window_hours) == (3, 24)
    assert config.score.warehouse_query is None and config.identity.email_source is None
    assert config.score.weights == {"rage": 5.0, "dead": 2.0, "error": 8.0}


def test_fullstory_signals_file_chooses_the_file(tmp_path, ops_env, monkeypatch):
    path = write(tmp_path, MINIMAL)
    assert config_file() == DEFAULT_FILE
    monkeypatch.setenv("FULLSTORY_SIGNALS_FILE", str(path))
    assert config_file() == path and list(load_config().signals.streams) == ["Rage Click"]


@pytest.mark.parametrize(("text", "key"), [
    ("[signal]\n" + MINIMAL, "signal"),
    (MINIMAL + "[signals.limits]\nper_users = 2\n", "signals.limits.per_users"),
    (MINIMAL + "[signals.filters]\nexclude_email = ['a']\n", "signals.filters.exclude_email"),
    (MINIMAL.replace('event = "Rage Clicked"', 'event = "Rage Clicked"\nevnt = "x"'),
     "signals.streams.'Rage Click'.evnt"),
    (MINIMAL + "[score]\nwindow = 7\n", "score.window"),
    (MINIMAL + "[score.weights]\nfrustration = 1\n", "score.weights.frustration"),
    (MINIMAL + "[identity]\nemail = 'x'\n", "identity.email"),
])
def test_an_unknown_key_is_named(tmp_path, text, key):
    exc = error(tmp_path, text)
    assert f"unknown key(s) {key};" in exc.problem and "known:" in exc.problem


@pytest.mark.parametrize("kind", ["frustration", "Rage", "", 3])
def test_a_bad_kind_is_refused(tmp_path, kind):
    value = f'"{kind}"' if isinstance(kind, str) else str(kind)
    exc = error(tmp_path, MINIMAL.replace('kind = "rage"', f"kind = {value}"))
    assert "signals.streams.'Rage Click'.kind must be one of rage, dead, error" in exc.problem


def test_a_missing_kind_is_refused(tmp_path):
    exc = error(tmp_path, MINIMAL.replace('kind = "rage"\n', ""))
    assert "kind must be one of" in exc.problem and "None" in exc.problem


@pytest.mark.parametrize("event", ['""', '"Rage\\nClicked"', "42", '"' + "x" * 201 + '"'])
def test_a_bad_event_name_is_refused(tmp_path, event):
    exc = error(tmp_path, MINIMAL.replace('event = "Rage Clicked"', f"event = {event}"))
    assert "event must be a Segment event name" in exc.problem


@pytest.mark.parametrize("text", ["", "[signals]\nmax_delay_hours = 10\n", "[signals.streams]\n"])
def test_no_stream_is_refused(tmp_path, text):
    exc = error(tmp_path, text)
    assert "signals.streams lists no stream: nothing would be sent" in exc.problem


def test_the_warehouse_query_must_use_window_start(tmp_path):
    exc = error(tmp_path, MINIMAL + '[score]\nwarehouse_query = "SELECT * FROM t WHERE t < {window_end}"\n')
    assert "score.warehouse_query must use {window_start} to read the score's window only" in exc.problem


def test_the_warehouse_query_must_use_both_bounds(tmp_path):
    exc = error(tmp_path, MINIMAL + '[score]\nwarehouse_query = "SELECT 1"\n')
    assert "must use {window_start} and {window_end}" in exc.problem


@pytest.mark.parametrize("query", ['""', '"   "', "3"])
def test_an_empty_warehouse_query_is_refused(tmp_path, query):
    exc = error(tmp_path, MINIMAL + f"[score]\nwarehouse_query = {query}\n")
    assert "score.warehouse_query must be a non-empty SQL query" in exc.problem


@pytest.mark.parametrize(("text", "message"), [
    (MINIMAL + "[signals.limits]\nper_user = 0\n", "signals.limits.per_user must be a whole number from 1"),
    (MINIMAL + "[signals.limits]\nper_user = 2.5\n", "signals.limits.per_user must be a whole number"),
    (MINIMAL + "[signals.limits]\nper_user = true\n", "signals.limits.per_user must be a whole number"),
    (MINIMAL + "[signals.limits]\nwindow_hours = 10000\n", "signals.limits.window_hours must be a whole"),
    (MINIMAL + "[signals.filters]\nexclude_emails = 'x'\n", "exclude_emails must be a list of non-empty"),
    (MINIMAL + "[signals.filters]\nexclude_page_urls = ['']\n", "exclude_page_urls must be a list"),
    ("[signals]\nmax_delay_hours = 0\n" + MINIMAL, "signals.max_delay_hours must be a number from 0.1"),
    ("[signals]\nstreams = 3\n", "signals.streams must be a table"),
    (MINIMAL + "[score]\nwindow_days = 0\n", "score.window_days must be a whole number from 1 to 90"),
    (MINIMAL + "[score]\nweights = { rage = -1 }\n", "score.weights.rage must be a number from 0 to 100"),
    (MINIMAL + "[score]\nhealthy_pages_per_session = 0\n", "healthy_pages_per_session must be a number"),
    (MINIMAL + "[identity]\nuid_is_user_id = 'yes'\n", "identity.uid_is_user_id must be true or false"),
    (MINIMAL + "[identity]\nuid_is_user_id = false\n", "email_query or email_csv is the only way"),
    (MINIMAL + "[identity]\nemail_url = 'duckdb:///x'\n",
     "identity.email_url goes with identity.email_query"),
])
def test_values_out_of_range_are_named(tmp_path, text, message):
    assert message in error(tmp_path, text).problem


def test_not_toml_and_no_file_are_config_errors(tmp_path):
    assert "not valid TOML" in error(tmp_path, "[signals\n").problem
    with pytest.raises(FullstoryConfigError, match="cannot read the file"):
        load_config(tmp_path / "missing.toml")


def test_patterns_are_lowered_and_the_code_version_follows_the_text(tmp_path):
    filters = "[signals.filters]\nexclude_emails = ['*@STAFF.example']\n"
    first = load_config(write(tmp_path, MINIMAL + filters))
    assert first.signals.exclude_emails == ("*@staff.example",)
    second = load_config(write(tmp_path, MINIMAL + "# a comment\n"))
    assert first.code_version != second.code_version


def test_the_score_fingerprint_changes_with_what_scores_depend_on():
    shipped = load_config(DEFAULT_FILE).score
    text = DEFAULT_FILE.read_text()
    assert re.search(r"(?m)^window_days = ", text)
    from dataclasses import replace

    assert replace(shipped, window_days=shipped.window_days + 1).fingerprint() != shipped.fingerprint()
    assert replace(shipped, weights={**shipped.weights, "rage": 1.0}).fingerprint() != shipped.fingerprint()
    assert replace(shipped).fingerprint() == shipped.fingerprint()
