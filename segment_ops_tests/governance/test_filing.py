"""Filing privacy requests safely (syncs/regulations): inbox files read only once written and never lost,
rejected rows alerted and kept once, requests filed in the order they were read, an interrupted filing never
taken for an earlier regulation, a refused batch split until only the bad requests are refused, the intent in
PostgreSQL before the call, and a query that fails saying how to fix it. Through Dagster against the
sandbox, except where a client that refuses one subject id or checks PostgreSQL mid-call is needed."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import duckdb
import psycopg
import pytest

from segment_ops.clients.base import VendorFatalError
from segment_ops.engine import pgstate, store
from segment_ops.engine.regulations import SYNC, load_regulated
from segment_ops.engine.store import staging_file
from segment_ops.resources import build_resources
from segment_ops.syncs.regulations import filing, requests
from segment_ops.syncs.regulations.requests import Request
from segment_ops_tests.conftest import fresh_state_database
from segment_ops_tests.governance.conftest import drop, run_regulations, settle

pytestmark = pytest.mark.slow


def run(resources: dict) -> dg.ExecuteInProcessResult:
    return run_regulations(resources)


def metadata(result: dg.ExecuteInProcessResult) -> dict:
    [event] = result.get_asset_materialization_events()
    return {k: v.value for k, v in event.materialization.metadata.items()}


def check(result: dg.ExecuteInProcessResult, name: str = "requests_filed") -> tuple[bool, dict]:
    [evaluation] = [e for e in result.get_asset_check_evaluations() if e.check_name == name]
    return evaluation.passed, {k: v.value for k, v in evaluation.metadata.items()}


def failure_text(result: dg.ExecuteInProcessResult) -> str:
    failure = next(e for e in result.all_events if e.is_step_failure)
    return failure.step_failure_data.user_failure_data.description or ""


def state(home: Path, sql: str, params: list | None = None) -> list[tuple]:
    con = duckdb.connect(str(staging_file(home, SYNC)), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def alerts(sandbox) -> list[str]:
    return [m["text"] for m in sandbox.received("slack", limit=1000)]


@pytest.fixture
def resources(warehouse: Path, clean_sandbox, monkeypatch) -> dict:
    """Only the inbox (REGULATIONS_QUERY_FILE off), unless a test says otherwise."""
    monkeypatch.setenv("REGULATIONS_QUERY_FILE", "off")
    return build_resources()


def test_a_file_still_being_written_waits_and_an_unreadable_one_stays_rejected_once(
        resources, clean_sandbox, ops_env, monkeypatch):
    fresh = drop(ops_env, "a.csv", ("dsr-1", "usr_a", "SUPPRESS_ONLY"), settled=False)

    first = run(resources)

    assert first.success and metadata(first)["inbox_files"] == 0 and metadata(first)["recorded"] == 0
    assert fresh.exists()  # may still be being written: looked at again by the next run
    settle(fresh)
    big = drop(ops_env, "b.csv", *[(f"dsr-b{n}", f"usr_b{n}", "SUPPRESS_ONLY") for n in range(5)])
    monkeypatch.setattr(requests, "MAX_INBOX_FILE_BYTES", fresh.stat().st_size)  # b.csv: too large

    second = run(resources)

    assert second.success
    meta = metadata(second)
    assert (meta["recorded"], meta["inbox_files"], meta["inbox_files_unreadable"]) == (1, 2, 1)
    assert not fresh.exists() and big.exists()  # recorded and removed; unreadable, left for a person
    passed, check_meta = check(second)
    assert not passed and check_meta["rejected_this_run"] == 1
    [alert] = alerts(clean_sandbox)
    assert "b.csv: rejected: the file cannot be read (it stays in the inbox)" in alert

    third = run(resources)

    assert third.success and big.exists()
    assert not check(third)[0] and check(third)[1]["rejected_this_run"] == 1  # still there: still failing
    assert len(alerts(clean_sandbox)) == 1  # alerted once
    assert state(ops_env, "SELECT source, record_key FROM rejected WHERE sync = ?", [SYNC]) == [
        ("b.csv", None)]  # kept once


def test_rejected_warehouse_rows_are_alerted_and_fail_the_check_but_are_kept_once(
        warehouse, clean_sandbox, ops_env):
    con = duckdb.connect(str(warehouse))
    con.execute("INSERT INTO privacy_requests VALUES ('dsr-x1', NULL, 'SUPPRESS_ONLY', now()), "
                "('dsr-x2', 'usr_typo', 'SUPPRESS_PLEASE', now())")
    con.close()
    resources = build_resources()  # with the default query, which reads those rows

    first, second = run(resources), run(resources)

    assert first.success and second.success
    for result in (first, second):  # read by every run, so every run fails the check
        assert metadata(result)["rejected"] == 2
        passed, meta = check(result)
        assert not passed and meta["rejected_this_run"] == 2 and meta["not_filed"] == 0
    assert sorted(row[0] for row in state(ops_env, "SELECT reason FROM rejected WHERE sync = ?", [SYNC])) == [
        "no user_id (or subject): a request names the userId it is about",
        "regulation_type must be one of DELETE_ARCHIVE_ONLY, DELETE_INTERNAL, DELETE_ONLY, SUPPRESS_ONLY, "
        "SUPPRESS_WITH_DELETE, SUPPRESS_WITH_DELETE_INTERNAL, UNSUPPRESS, got 'SUPPRESS_PLEASE'"]
    [alert] = alerts(clean_sandbox)  # the first run's; the second found nothing new
    assert alert.count("privacy_requests.sql: rejected:") == 2 and "usr_typo" not in alert


def test_an_unsuppress_read_after_a_suppress_is_filed_after_it_whatever_their_ids(
        resources, clean_sandbox, ops_env, public_api):
    # No requested_at: both get the time they were read. By text "dsr-10" < "dsr-9".
    drop(ops_env, "dsr.csv", ("dsr-9", "usr_order", "SUPPRESS_ONLY"), ("dsr-10", "usr_order", "UNSUPPRESS"))

    result = run(resources)

    assert result.success and metadata(result)["filings"] == 2
    at_segment = [r["regulationType"] for r in public_api.iter_regulations() if "usr_order" in r["subjects"]]
    assert at_segment == ["UNSUPPRESS", "SUPPRESS_ONLY"]  # newest first: the SUPPRESS was filed first
    assert [row[0] for row in state(ops_env, "SELECT regulation_type FROM regulation_filings "
                                             "WHERE state = 'filed' ORDER BY logged_at")] == [
        "SUPPRESS_ONLY", "UNSUPPRESS"]
    assert state(ops_env, "SELECT request_id FROM regulation_requests ORDER BY ordinal") == [
        ("dsr-9",), ("dsr-10",)]
    regulated = load_regulated(ops_env)
    assert not regulated.covers("usr_order") and regulated.lifted


def test_an_interrupted_filing_never_adopts_a_regulation_already_recorded(
        resources, clean_sandbox, ops_env, public_api):
    drop(ops_env, "1.csv", ("dsr-1", "usr_u2", "SUPPRESS_ONLY"), ("dsr-2", "usr_u2", "UNSUPPRESS"))
    assert run(resources).success
    # The person objects again; Segment answers 500 without filing it: the intent stays, interrupted.
    drop(ops_env, "2.csv", ("dsr-3", "usr_u2", "SUPPRESS_ONLY"))
    clean_sandbox.set_faults("segmentapis", rate_500=1.0)

    interrupted = run(resources)

    assert not interrupted.success and "may have been filed" in failure_text(interrupted)
    clean_sandbox.clear_faults()

    again = run(resources)

    assert again.success
    meta = metadata(again)
    assert (meta["reconciled"], meta["abandoned"], meta["filings"]) == (0, 1, 1)  # not the dsr-1 SUPPRESS
    at_segment = [(r["id"], r["regulationType"]) for r in public_api.iter_regulations()
                  if "usr_u2" in r["subjects"]]
    assert [kind for _, kind in at_segment] == ["SUPPRESS_ONLY", "UNSUPPRESS", "SUPPRESS_ONLY"]
    record = dict((row[0], row[1:]) for row in state(
        ops_env, "SELECT request_id, regulation_id, filing_state, error FROM regulation_record"))
    assert record["dsr-3"] == (at_segment[0][0], "filed", None)  # the latest step's error: none
    assert record["dsr-1"][0] == at_segment[2][0]
    assert load_regulated(ops_env).covers("usr_u2")


def test_a_refused_batch_is_split_until_only_the_refused_requests_remain(
        resources, clean_sandbox, ops_env, public_api):
    # Segment takes fewer ids per call than REGULATIONS_SUBJECTS_PER_REQUEST (5,000) says: 2 here. And it
    # refuses DELETE_ARCHIVE_ONLY at workspace scope (createWorkspaceRegulationV1Input's types), one subject
    # or many.
    clean_sandbox.regulation_settings(max_subject_ids=2)
    users = [f"usr_s{n}" for n in range(1, 6)]
    drop(ops_env, "dsr.csv", *[(f"dsr-{u}", u, "SUPPRESS_ONLY") for u in users],
         ("dsr-d1", "usr_d1", "DELETE_ARCHIVE_ONLY"), ("dsr-d2", "usr_d2", "DELETE_ARCHIVE_ONLY"))

    result = run(resources)

    assert result.success
    meta = metadata(result)
    # 5 suppressions: refused, then 2 + 3 (refused again), then 1 + 2; the 2 archive deletions: refused,
    # then each alone, refused.
    assert (meta["filings"], meta["subjects_filed"], meta["split_filings"], meta["refused"]) == (3, 5, 3, 2)
    assert sorted(sorted(r["subjects"]) for r in public_api.iter_regulations()) == [
        ["usr_s1", "usr_s2"], ["usr_s3"], ["usr_s4", "usr_s5"]]
    record = dict((row[0], row[1:]) for row in state(
        ops_env, "SELECT request_id, filing_state, error FROM regulation_record"))
    assert {record[f"dsr-{u}"] for u in users} == {("filed", None)}
    for request_id in ("dsr-d1", "dsr-d2"):
        assert record[request_id][0] == "refused" and "regulationType must be one of" in record[request_id][1]
    passed, check_meta = check(result)
    assert not passed and check_meta["refused"] == 2
    [alert] = alerts(clean_sandbox)
    assert alert.count("DELETE_ARCHIVE_ONLY for 1 subject(s) refused") == 2


class OneBadId:
    """A client refusing every call that holds the subject `bad` (as Segment would refuse one id it will not
    take), accepting the others; it records each call's subjects."""

    def __init__(self, bad: str) -> None:
        self.bad = bad
        self.calls: list[list[str]] = []

    def create_regulation(self, kind: str, subjects: list[str], *, subject_type: str = "USER_ID") -> str:
        self.calls.append(list(subjects))
        if self.bad in subjects:
            raise VendorFatalError("segment_public_api", "POST", "/regulations",
                                   f"subjectIds: {self.bad!r} is not a valid userId", status=422)
        return f"reg-{len(self.calls)}"


def suppressions(n: int) -> list[Request]:
    return [Request(f"req-{i:03}", f"user-{i:03}", "USER_ID", "SUPPRESS_ONLY", "test", None)
            for i in range(n)]


def test_one_bad_subject_id_in_a_batch_leaves_only_its_request_refused(tmp_path):
    client = OneBadId("user-037")
    done = filing.Filed()
    with store.staging(tmp_path / "segment_regulations.duckdb") as con:
        filing.record_requests(con, suppressions(100), run_id=None, filed=done)
        filing.file_requests(con, client, cap=100, run_id=None, filed=done)
        by_state = dict(con.execute("SELECT filing_state, count(*) FROM regulation_record "
                                    "GROUP BY 1").fetchall())
        [(refused, error)] = con.execute("SELECT request_id, error FROM regulation_record "
                                         "WHERE filing_state = 'refused'").fetchall()
        split = con.execute("SELECT count(*) FROM regulation_filings WHERE state = 'refused' "
                            "AND error LIKE 'split and filed again in halves: %'").fetchone()[0]

    assert by_state == {"filed": 99, "refused": 1}
    assert (refused, error) == ("req-037", "subjectIds: 'user-037' is not a valid userId")
    assert (done.refused, done.subjects_filed, done.split) == (1, 99, split)
    assert split == 6  # halves holding the bad id: 100, 50, 25, 13, 6, 3, then it alone
    assert sorted(s for call in client.calls if "user-037" not in call for s in call) == [
        f"user-{i:03}" for i in range(100) if i != 37]  # each other subject filed exactly once


class PgWitness:
    """A client that, at each call, reads what the state database holds of the regulations sync."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.seen: list[list[tuple[str, str]]] = []

    def filings(self) -> list[tuple[str, str]]:
        with psycopg.connect(self.url) as pg:
            schema = pg.execute("SELECT pg_schema FROM segment_ops_state.syncs WHERE sync = %s",
                                [SYNC]).fetchone()[0]
            return pg.execute(f'SELECT filing_id, state FROM "{schema}".regulation_filings '
                              "ORDER BY logged_at").fetchall()

    def create_regulation(self, kind: str, subjects: list[str], *, subject_type: str = "USER_ID") -> str:
        self.seen.append(self.filings())
        return f"reg-{len(self.seen)}"


@pytest.mark.postgres
def test_with_the_state_in_postgresql_the_intent_is_there_before_the_call_and_the_filing_after(
        tmp_path, monkeypatch):
    import segment_ops.definitions  # noqa: F401  (registers every sync's state schemas, as a run does)

    with fresh_state_database("so_filing") as url:
        monkeypatch.setenv(pgstate.STATE_URL, url)
        monkeypatch.setenv("SEGMENT_OPS_STATE_CHECKPOINT_SECONDS", "3600")  # never due on its own
        client = PgWitness(url)
        done = filing.Filed()
        with store.staging(tmp_path / "staging" / f"{SYNC}.duckdb") as con:
            filing.record_requests(con, suppressions(3), run_id=None, filed=done)
            filing.file_requests(con, client, cap=2, run_id=None, filed=done)
            after = client.filings()  # still inside the session: not checked in by its end

    first, second = client.seen
    assert [s for _, s in first] == ["intent"]
    assert [s for _, s in second] == ["intent", "filed", "intent"]  # the first filed, the second intended
    assert sorted(s for _, s in after) == ["filed", "filed", "intent", "intent"]


def test_a_failing_query_says_how_to_point_it_elsewhere_or_turn_it_off(warehouse, clean_sandbox, ops_env):
    con = duckdb.connect(str(warehouse))
    con.execute("DROP TABLE privacy_requests")  # as in a real warehouse
    con.close()

    result = run(build_resources())

    assert not result.success
    text = failure_text(result)
    assert "privacy_requests" in text
    assert "point REGULATIONS_QUERY_FILE at the query of your warehouse's privacy requests" in text
    assert "set it to `off` to take requests only from the inbox" in text
