"""The generic preflight: running checks, the cache the sends' gate reads, the gate's rule, the table."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from segment_ops.engine.preflight import (
    Check,
    CheckResult,
    PreflightCache,
    PreflightRefused,
    Status,
    failed,
    fingerprint,
    gate,
    render_table,
    run_checks,
)


class Counting:
    """A check body that answers `result` and counts its runs."""

    def __init__(self, status: Status, definitive: bool = False, detail: str = "found", *,
                 transient: bool = False) -> None:
        self.status, self.definitive, self.detail, self.runs = status, definitive, detail, 0
        self.transient = transient

    def __call__(self) -> CheckResult:
        self.runs += 1
        return CheckResult("probe", ("PROBE_TOKEN",), self.status, self.detail, "fix PROBE_TOKEN",
                           definitive=self.definitive, transient=self.transient)


def check(body: Counting, values: dict[str, str] | None = None) -> Check:
    return Check("probe", ("PROBE_TOKEN",), body, fingerprint(values or {"PROBE_TOKEN": "a"}))


def test_a_cached_answer_is_reused_while_fresh_and_the_configuration_is_the_same(tmp_path: Path):
    cache, body = PreflightCache(tmp_path / "cache.json"), Counting(Status.PASS)

    run_checks([check(body)], cache=cache, max_age=60)
    again = run_checks([check(body)], cache=cache, max_age=60)

    assert body.runs == 1 and again[0].status is Status.PASS


def test_a_changed_setting_is_checked_anew_at_once(tmp_path: Path):
    cache, body = PreflightCache(tmp_path / "cache.json"), Counting(Status.FAIL, definitive=True)
    run_checks([check(body, {"PROBE_TOKEN": "wrong"})], cache=cache, max_age=600)

    run_checks([check(body, {"PROBE_TOKEN": "fixed"})], cache=cache, max_age=600)

    assert body.runs == 2


def test_an_answer_older_than_max_age_is_not_reused(tmp_path: Path):
    cache, body = PreflightCache(tmp_path / "cache.json"), Counting(Status.PASS)
    run_checks([check(body)], cache=cache, max_age=60)

    assert cache.get(check(body), 60, now=time.time() + 61) is None
    assert cache.get(check(body), 60, now=time.time() + 30) is not None


def test_a_transient_failure_is_never_cached(tmp_path: Path):
    cache, body = PreflightCache(tmp_path / "cache.json"), Counting(Status.FAIL, definitive=False)

    run_checks([check(body)], cache=cache, max_age=600)
    run_checks([check(body)], cache=cache, max_age=600)

    assert body.runs == 2


def test_a_warning_an_outage_caused_is_never_cached(tmp_path: Path):
    cache = PreflightCache(tmp_path / "cache.json")
    body = Counting(Status.WARN, detail="cannot be verified now: no answer", transient=True)

    run_checks([check(body)], cache=cache, max_age=600)
    run_checks([check(body)], cache=cache, max_age=600)

    assert body.runs == 2 and not (tmp_path / "cache.json").exists()


def test_any_other_warning_is_cached(tmp_path: Path):
    cache, body = PreflightCache(tmp_path / "cache.json"), Counting(Status.WARN, detail="risky setting")

    run_checks([check(body)], cache=cache, max_age=600)
    [again] = run_checks([check(body)], cache=cache, max_age=600)

    assert body.runs == 1 and (again.status, again.transient) == (Status.WARN, False)


def test_the_cache_file_holds_no_setting_value(tmp_path: Path):
    cache = PreflightCache(tmp_path / "cache.json")

    run_checks([check(Counting(Status.PASS), {"PROBE_TOKEN": "tok-5ecret-value"})], cache=cache, max_age=60)

    assert "tok-5ecret-value" not in (tmp_path / "cache.json").read_text()


def test_a_check_that_raises_is_a_transient_failure_and_the_others_still_run():
    def broken() -> CheckResult:
        raise KeyError("data")

    ok = Counting(Status.PASS)
    results = run_checks([Check("broken", ("X",), broken), check(ok)])

    assert results[0].status is Status.FAIL and not results[0].definitive
    assert "KeyError" in results[0].detail and ok.runs == 1


def test_secret_values_are_scrubbed_from_every_text():
    body = Counting(Status.FAIL, definitive=True, detail="vendor echoed tok-5ecret-value back")

    [result] = run_checks([check(body)], secrets=["tok-5ecret-value"])

    assert "tok-5ecret-value" not in result.detail and "***" in result.detail


def test_the_gate_refuses_only_a_definitive_failure(tmp_path: Path):
    cache = PreflightCache(tmp_path / "cache.json")
    for status, definitive in ((Status.WARN, False), (Status.FAIL, False), (Status.SKIP, False)):
        assert gate([check(Counting(status, definitive))], cache=None, max_age=0)[0].status is status

    with pytest.raises(PreflightRefused, match="PROBE_TOKEN") as refused:
        gate([check(Counting(Status.FAIL, definitive=True))], cache=cache, max_age=60)

    assert [r.check for r in refused.value.refused] == ["probe"]


def test_check_fails_only_on_a_failure_not_on_warnings_or_skips():
    def result(status: Status) -> CheckResult:
        return CheckResult("c", ("S",), status, "d")

    assert not failed([result(Status.PASS), result(Status.WARN), result(Status.SKIP)])
    assert failed([result(Status.PASS), result(Status.FAIL)])


def test_the_table_has_a_row_per_check_and_never_cuts_a_setting_name():
    results = [CheckResult("splunk_hec_ack", ("SPLUNK_HEC_TOKEN", "SPLUNK_HEC_ACK_TIMEOUT_SECONDS"),
                           Status.FAIL, "x " * 60, "y " * 40, definitive=True),
               CheckResult("heap_receiver", ("HEAP_WEBHOOK_PUBLIC_URL",), Status.SKIP, "not set")]

    table = render_table(results)

    assert table.splitlines()[0].split() == ["check", "setting(s)", "result", "what", "to", "do"]
    assert "SPLUNK_HEC_ACK_TIMEOUT_SECONDS" in table and "FAIL (auth/config): x" in table
    assert "SKIP: not set" in table and table.count("heap_receiver") == 1
