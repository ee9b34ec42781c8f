"""State in PostgreSQL (`engine/pgstate.py`, SEGMENT_OPS_STATE_URL) on this machine's server: homes that
share nothing but the database see one state, one sync runs on one machine at a time, a killed worker frees
its lock, only what changed is written, and what cannot be reconciled is refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

import segment_ops.definitions  # noqa: F401  (registers every sync's state schemas, as a run does)
from segment_ops.engine import pgstate, store
from segment_ops.engine.ledger import DELIVERED, Ledger, PlannedMessage, Rejection
from segment_ops_tests.conftest import fresh_state_database

pytestmark = pytest.mark.postgres
SYNC = "orders"


@pytest.fixture
def state_url(monkeypatch: pytest.MonkeyPatch) -> str:
    with fresh_state_database("so_pgstate") as url:
        monkeypatch.setenv(pgstate.STATE_URL, url)
        yield url


def home_file(tmp_path: Path, home: str, sync: str = SYNC) -> Path:
    return tmp_path / home / "staging" / f"{sync}.duckdb"


def messages(n: int, start: int = 0) -> list[PlannedMessage]:
    return [PlannedMessage(f"m{i}", f"k{i}", "identify",
                           f'{{"messageId":"m{i}","userId":"u{i}","traits":{{"note":"a,\\"b\\"\\nc"}}}}'.encode())
            for i in range(start, start + n)]


def deliver(ledger: Ledger, sync: str = SYNC, limit: int | None = None) -> int:
    seqs = [seq for chunk in ledger.iter_pending(sync) for seq, _ in chunk][:limit]
    ledger.log_outcomes(sync, [(seq, DELIVERED, 1, None) for seq in seqs])
    return len(seqs)


def pg_rows(url: str, sync: str, table: str) -> int:
    with psycopg.connect(url) as pg:
        schema = pg.execute("SELECT pg_schema FROM segment_ops_state.syncs WHERE sync = %s",
                            [sync]).fetchone()[0]
        return pg.execute(f'SELECT count(*) FROM "{schema}"."{table}"').fetchone()[0]


def test_two_homes_that_share_only_the_database_see_one_ledger(tmp_path, state_url):
    with store.staging(home_file(tmp_path, "a")) as con:
        ledger = Ledger(con)
        assert ledger.add_planned(SYNC, messages(500)).planned == 500
        assert deliver(ledger, limit=300) == 300

    with store.staging(home_file(tmp_path, "b")) as con:
        ledger = Ledger(con)
        assert (ledger.counts(SYNC).delivered, ledger.counts(SYNC).pending) == (300, 200)
        assert ledger.add_planned(SYNC, messages(500)).planned == 0  # known there: nothing to send again
        assert deliver(ledger) == 200

    with store.staging(home_file(tmp_path, "a")) as con:  # a's file is behind: rebuilt from the database
        ledger = Ledger(con)
        assert (ledger.counts(SYNC).delivered, ledger.counts(SYNC).pending) == (500, 0)
        ids = con.execute("SELECT count(*), count(DISTINCT id) FROM outcomes").fetchone()
        assert ids == (500, 500)  # b's outcomes continued a's order, and a's continue b's
        ledger.add_planned(SYNC, messages(1, start=500))
        deliver(ledger)
        assert con.execute("SELECT count(DISTINCT id) FROM outcomes").fetchone()[0] == 501

    con = store.connect(home_file(tmp_path, "c"), read_only=True)  # a reader on a third home
    try:
        assert Ledger(con, create=False).counts(SYNC).delivered == 501
    finally:
        con.close()
    assert pg_rows(state_url, SYNC, "outcomes") == 501


def test_a_checkin_writes_only_the_rows_that_changed(tmp_path, state_url):
    path = home_file(tmp_path, "a")
    with store.staging(path) as con:
        Ledger(con).add_planned(SYNC, messages(5_000))
    with psycopg.connect(state_url, autocommit=True) as pg, store.staging(path) as con:
        ledger = Ledger(con)
        deliver(ledger, limit=40)
        ledger.add_planned(SYNC, messages(10, start=5_000))
        report = pgstate.checkin(pg, SYNC, con)  # a session's own check-in writes what this one did not
    assert report.rows_written == 40 + 10 + 0  # 40 outcomes, 10 planned messages
    assert report.rows_deleted == 0
    with psycopg.connect(state_url, autocommit=True) as pg, store.staging(path) as con:
        con.execute("DELETE FROM planned_messages WHERE seq <= 3")
        report = pgstate.checkin(pg, SYNC, con)
    assert (report.rows_written, report.rows_deleted) == (0, 3)
    assert pg_rows(state_url, SYNC, "planned_messages") == 5_007


def pg_payloads(url: str, sync: str) -> list[tuple[int, str]]:
    with psycopg.connect(url) as pg:
        schema = pg.execute("SELECT pg_schema FROM segment_ops_state.syncs WHERE sync = %s",
                            [sync]).fetchone()[0]
        return pg.execute(f'SELECT seq, payload FROM "{schema}".planned_messages ORDER BY seq').fetchall()


def test_append_only_tables_check_in_their_new_rows_alone_and_a_rewrite_in_place_whole(tmp_path, monkeypatch,
                                                                                       state_url):
    """planned_messages and outcomes only grow, so a check-in copies the rows added since the last one without
    comparing the others; the two statements that rewrite payloads in place (compaction, a forced re-send's
    restore) make the next check-in compare every row, so PostgreSQL gets the rewrite too."""
    added: list[tuple[str, bool | None]] = []
    check_in_added = pgstate._check_in_added
    monkeypatch.setattr(pgstate, "_check_in_added", lambda pg, con, sync, target, obj, *rest: added.append(
        (obj.name, result := check_in_added(pg, con, sync, target, obj, *rest))) or result)
    path = home_file(tmp_path, "a")
    with store.staging(path) as con:
        ledger = Ledger(con)
        ledger.add_planned(SYNC, messages(300))
        deliver(ledger, limit=200)
    with store.staging(path) as con:
        ledger = Ledger(con)
        deliver(ledger)
        ledger.add_planned(SYNC, messages(5, start=300))
    assert ("outcomes", True) in added and ("planned_messages", True) in added
    assert (pg_rows(state_url, SYNC, "outcomes"), pg_rows(state_url, SYNC, "planned_messages")) == (300, 305)
    added.clear()
    with store.staging(path) as con:
        assert Ledger(con).compact(SYNC, settled_before=datetime.now(UTC) + timedelta(days=1)) == 300
        file_rows = con.execute("SELECT seq, payload FROM planned_messages ORDER BY seq").fetchall()
    assert ("planned_messages", True) not in added  # compared whole, as the rewrite asked
    assert pg_payloads(state_url, SYNC) == file_rows
    assert sum(p.startswith("compacted:") for _, p in file_rows) == 300
    with store.staging(home_file(tmp_path, "b")) as con:  # another machine sees the rewrite
        assert con.execute("SELECT seq, payload FROM planned_messages ORDER BY seq").fetchall() == file_rows
        Ledger(con).add_planned(SYNC, messages(1, start=7), force=True)  # the input again: payload restored
        restored = con.execute("SELECT payload FROM planned_messages WHERE message_id = 'm7'").fetchone()[0]
    assert not restored.startswith("compacted:")
    assert dict(pg_payloads(state_url, SYNC))[8] == restored


def test_a_file_rebuilt_from_the_database_checks_in_unchanged(tmp_path, state_url):
    """Every registered table, with values near its types' limits and NULLs, comes back from PostgreSQL equal
    and with the same row hashes, so the next session writes nothing."""
    from segment_ops_tests.engine.test_transfer import fill_every_state_table

    with store.staging(home_file(tmp_path, "a", "all")) as con:
        before = fill_every_state_table(con)
    with psycopg.connect(state_url, autocommit=True) as pg, \
            store.staging(home_file(tmp_path, "b", "all")) as con:
        after = {t: con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall() for t in before}
        report = pgstate.checkin(pg, "all", con)
    assert after == before
    assert (report.rows_written, report.rows_deleted, report.tables_changed) == (0, 0, 0)


HOLD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import segment_ops.definitions
    from segment_ops.engine import store
    from segment_ops.engine.ledger import Ledger, PlannedMessage
    with store.staging(Path(sys.argv[1])) as con:
        Ledger(con).add_planned("orders", [PlannedMessage("late", "k", "identify", b'{"messageId":"late"}')])
        print("holding", flush=True)
        time.sleep(120)
""")


def hold(path: Path) -> subprocess.Popen[str]:
    worker = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True,
                              env=os.environ.copy())
    assert worker.stdout.readline().strip() == "holding"
    return worker


def test_one_sync_runs_on_one_machine_at_a_time_and_a_killed_worker_frees_it(tmp_path, state_url):
    with store.staging(home_file(tmp_path, "a")) as con:
        Ledger(con).add_planned(SYNC, messages(3))
    # The same sync held in another database of the server (another deployment): not this one's holder.
    elsewhere = ExitStack()
    other = elsewhere.enter_context(psycopg.connect(elsewhere.enter_context(fresh_state_database("so_else")),
                                                    autocommit=True))
    pgstate.acquire(other, SYNC, shared=False, timeout=1)
    elsewhere.callback(other.close)
    worker = hold(home_file(tmp_path, "b"))
    try:
        with pytest.raises(store.StagingLockedError) as caught, \
                store.staging(home_file(tmp_path, "c"), lock_timeout=0.5):
            pass
        assert "'orders' is in use by segment_ops" in str(caught.value)
        assert f":{worker.pid}" in str(caught.value)  # which process holds it
        with store.staging(home_file(tmp_path, "c", "other_sync")) as con:  # another sync is not held up
            Ledger(con).add_planned("other_sync", messages(1))
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        elsewhere.close()
    started = time.monotonic()
    with store.staging(home_file(tmp_path, "c")) as con:  # PostgreSQL ended the dead session and its lock
        ledger = Ledger(con)
        assert ledger.counts(SYNC).pending == 3  # the killed run's plan was never checked in
    assert time.monotonic() - started < 10


def test_a_body_that_raises_still_checks_in_what_it_logged(tmp_path, state_url):
    with pytest.raises(RuntimeError, match="destination went away"), \
            store.staging(home_file(tmp_path, "a")) as con:
        ledger = Ledger(con)
        ledger.add_planned(SYNC, messages(4))
        deliver(ledger, limit=2)
        con.execute("BEGIN")  # left open by the error: rolled back, what was committed is checked in
        con.execute("DELETE FROM planned_messages")
        raise RuntimeError("destination went away")
    with store.staging(home_file(tmp_path, "b")) as con:
        assert Ledger(con).counts(SYNC).delivered == 2


def test_an_embedded_home_moves_to_the_database_on_its_first_session(tmp_path, monkeypatch, state_url):
    path = home_file(tmp_path, "a")
    monkeypatch.delenv(pgstate.STATE_URL)
    with store.staging(path) as con:  # made by the embedded default
        ledger = Ledger(con)
        ledger.add_planned(SYNC, messages(20))
        deliver(ledger)
    monkeypatch.setenv(pgstate.STATE_URL, state_url)
    with store.staging(path):  # adopted: checked in as it is
        pass
    with store.staging(home_file(tmp_path, "b")) as con:
        assert Ledger(con).counts(SYNC).delivered == 20


def test_a_file_with_state_of_its_own_is_never_merged_with_the_databases(tmp_path, monkeypatch, state_url):
    with store.staging(home_file(tmp_path, "a")) as con:
        Ledger(con).add_planned(SYNC, messages(2))
    own = home_file(tmp_path, "b")
    monkeypatch.delenv(pgstate.STATE_URL)
    with store.staging(own) as con:
        Ledger(con).add_planned(SYNC, messages(7, start=100))
    monkeypatch.setenv(pgstate.STATE_URL, state_url)
    with pytest.raises(pgstate.SharedStateError, match="holds state of its own .* never merged"), \
            store.staging(own):
        pass
    assert pg_rows(state_url, SYNC, "planned_messages") == 2


def test_a_cache_of_another_database_is_refused(tmp_path, monkeypatch, state_url):
    path = home_file(tmp_path, "a")
    with store.staging(path) as con:
        Ledger(con).add_planned(SYNC, messages(2))
    with fresh_state_database("so_other") as other:
        monkeypatch.setenv(pgstate.STATE_URL, other)
        with pytest.raises(pgstate.SharedStateError, match="cache of another state database"), \
                store.staging(path):
            pass


def test_a_changed_table_definition_is_rewritten_and_a_newer_schema_refused_everywhere(tmp_path, state_url):
    with store.staging(home_file(tmp_path, "a")) as con:
        Ledger(con).add_planned(SYNC, messages(3))
        con.execute("ALTER TABLE rejected ADD COLUMN detail VARCHAR")  # as a migration would
        con.execute("INSERT INTO rejected (sync, reason, rejected_at, detail) "
                    "VALUES ('orders', 'r', now(), 'd')")
        con.execute(f"INSERT INTO {store.VERSIONS_TABLE} VALUES ('ledger', 99, now())")
    with store.staging(home_file(tmp_path, "b")) as con:
        assert con.execute("SELECT detail FROM rejected").fetchall() == [("d",)]
        with pytest.raises(store.StateSchemaError, match="newer than this release's"):
            Ledger(con)


def test_the_password_never_reaches_a_message(monkeypatch, tmp_path):
    monkeypatch.setenv(pgstate.STATE_URL, "postgresql://someone:hunter2@127.0.0.1:1/nowhere")
    with pytest.raises(pgstate.SharedStateError) as caught, store.staging(home_file(tmp_path, "a")):
        pass
    assert "hunter2" not in str(caught.value)
    assert "cannot reach the state database postgresql://127.0.0.1:1/nowhere" in str(caught.value)


@pytest.mark.parametrize("value, message", [
    ("host=db password=hunter2 x", "SEGMENT_OPS_STATE_URL is no PostgreSQL URL"),
    ("postgresql://u:hunter2@db:notaport/x", "percent-encode the password's special characters"),
    ("postgresql://postgres:hun@ter2@127.0.0.1:1/x", "percent-encode the password's special characters"),
    ("postgresql://postgres:ab/hunter2@127.0.0.1:1/x", "percent-encode the password's special characters"),
])
def test_a_malformed_url_is_named_without_its_password(monkeypatch, tmp_path, value, message):
    monkeypatch.setenv(pgstate.STATE_URL, value)
    with pytest.raises(pgstate.SharedStateError) as caught, store.staging(home_file(tmp_path, "a")):
        pass
    assert "hunter2" not in str(caught.value) and "ter2" not in str(caught.value)
    assert message in str(caught.value)


def test_readers_and_listings_see_syncs_only_the_database_holds(tmp_path, state_url):
    with store.staging(home_file(tmp_path, "a")) as con:
        Ledger(con).add_planned(SYNC, messages(1))
    fresh = tmp_path / "b" / "staging"
    assert store.staging_paths(fresh) == [fresh / f"{SYNC}.duckdb"]
    assert store.has_state(fresh / f"{SYNC}.duckdb")
    assert not store.has_state(fresh / "never.duckdb")


def test_a_derived_table_reaches_the_next_step_on_another_machine(tmp_path, state_url):
    """Pendo's scores are made by a query (`CREATE OR REPLACE TABLE ... AS`) in one step and read by the next,
    which a Kubernetes executor may run in another pod."""
    from segment_ops.syncs.pendo.score import HEALTH_TABLE, STATE

    with store.staging(home_file(tmp_path, "a", "pendo")) as con:
        store.ensure(con, STATE)
        con.execute(f"CREATE OR REPLACE TABLE {HEALTH_TABLE} AS SELECT 'acc_1' AS account_id, 71 AS score")
    with store.staging(home_file(tmp_path, "b", "pendo")) as con:
        assert con.execute(f"SELECT * FROM {HEALTH_TABLE}").fetchall() == [("acc_1", 71)]
        con.execute(f"CREATE OR REPLACE TABLE {HEALTH_TABLE} AS SELECT 'acc_2' AS account_id, 'x' AS band")
    with store.staging(home_file(tmp_path, "a", "pendo")) as con:
        assert con.execute(f"SELECT * FROM {HEALTH_TABLE}").fetchall() == [("acc_2", "x")]


KILLED_AFTER_A_CHECKPOINT = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    import segment_ops.definitions
    from segment_ops.engine import store
    from segment_ops.engine.ledger import DELIVERED, Ledger, PlannedMessage
    with store.staging(Path(sys.argv[1])) as con:
        ledger = Ledger(con)
        ledger.add_planned("orders", [PlannedMessage(f"m{i}", f"k{i}", "identify", b"{}") for i in range(10)])
        ledger.log_outcomes("orders", [(seq, DELIVERED, 1, None) for seq in range(1, 7)])
        store.checkpoint(con)  # as a delivery does after recording a batch's answers
        ledger.log_outcomes("orders", [(7, DELIVERED, 1, None)])
        os._exit(9)  # killed: no check-in at the end
""")


@pytest.mark.parametrize("seconds, delivered", [("0", 6), ("3600", 0)])
def test_a_worker_killed_mid_run_loses_only_what_it_logged_since_its_last_checkpoint(
        tmp_path, monkeypatch, state_url, seconds, delivered):
    monkeypatch.setenv(pgstate.CHECKPOINT_SETTING, seconds)
    worker = subprocess.run([sys.executable, "-c", KILLED_AFTER_A_CHECKPOINT, str(home_file(tmp_path, "a"))],
                            env=os.environ.copy(), capture_output=True, text=True, timeout=60)
    assert worker.returncode == 9, worker.stderr
    with store.staging(home_file(tmp_path, "b")) as con:
        counts = Ledger(con).counts(SYNC)
    assert (counts.delivered, counts.pending) == (delivered, 10 - delivered if delivered else 0)


def test_a_checkpoint_setting_out_of_range_is_named(monkeypatch):
    monkeypatch.setenv(pgstate.CHECKPOINT_SETTING, "soon")
    with pytest.raises(ValueError, match="SEGMENT_OPS_STATE_CHECKPOINT_SECONDS must be a number"):
        pgstate.checkpoint_seconds()


# A delivering worker on its own home, SIGKILLed by its destination after the 8th acknowledged batch; each
# batch takes 0.4 s, so the delivery records answers (and may check in) about every 1 s.
DELIVERING_WORKER = textwrap.dedent("""
    import os, signal, sys, time
    from pathlib import Path
    import segment_ops.definitions
    from segment_ops.clients.segment_tracking import SegmentTrackingClient
    from segment_ops.engine import store
    from segment_ops.engine.delivery import deliver_pending
    from segment_ops.engine.ledger import Ledger

    path, url, key = sys.argv[1:]
    inner = SegmentTrackingClient(url + "/segment", key)

    class KilledAfter:
        name, max_batch_bytes, acknowledged = inner.name, 1_000, 0

        def send_batch(self, payloads, *, on_retry=None):
            time.sleep(0.4)
            result = inner.send_batch(payloads, on_retry=on_retry)
            KilledAfter.acknowledged += 1
            if KilledAfter.acknowledged == 8:
                os.kill(os.getpid(), signal.SIGKILL)
            return result

    with store.staging(Path(path)) as con:
        deliver_pending(Ledger(con), "orders", KilledAfter(), max_in_flight=1)
""")


@pytest.mark.slow
@pytest.mark.parametrize("seconds", ["0", "3600"])
def test_a_delivery_killed_on_one_machine_is_finished_on_another_resending_only_since_its_checkpoint(
        tmp_path, monkeypatch, state_url, clean_sandbox, seconds):
    from collections import Counter

    from segment_ops.clients.segment_tracking import SegmentTrackingClient
    from segment_ops.config import SANDBOX_SEGMENT_WRITE_KEY
    from segment_ops.engine.delivery import deliver_pending

    ids = [f"msg-{i:04d}" for i in range(240)]
    payloads = [f'{{"type":"track","userId":"u{i}","event":"Moved","messageId":"{id_}","properties":'
                f'{{"pad":"{"x" * 40}"}}}}'.encode() for i, id_ in enumerate(ids)]
    with store.staging(home_file(tmp_path, "planner")) as con:
        Ledger(con).add_planned(SYNC, [PlannedMessage(i, i, "track", p) for i, p in zip(ids, payloads,
                                                                                         strict=True)])
    monkeypatch.setenv(pgstate.CHECKPOINT_SETTING, seconds)
    worker = subprocess.run([sys.executable, "-c", DELIVERING_WORKER, str(home_file(tmp_path, "a")),
                             clean_sandbox.url, SANDBOX_SEGMENT_WRITE_KEY], env=os.environ.copy(),
                            capture_output=True, text=True, timeout=120)
    assert worker.returncode == -signal.SIGKILL, worker.stderr[-2000:]

    with store.staging(home_file(tmp_path, "b")) as con:  # another machine finishes the sync
        deliver_pending(Ledger(con), SYNC, SegmentTrackingClient(f"{clean_sandbox.url}/segment",
                                                                 SANDBOX_SEGMENT_WRITE_KEY))
        counts = Ledger(con).counts(SYNC)

    got = Counter({m["messageId"]: clean_sandbox.seen("segment", m["messageId"])
                   for m in clean_sandbox.received("segment", limit=10_000)})
    again = sum(n - 1 for n in got.values())
    assert sorted(got) == ids and (counts.delivered, counts.pending) == (240, 0)  # nothing lost
    per_batch = 7  # messages of about 130 bytes in 1,000-byte batches
    if seconds == "0":  # checked in about every second: the batches since then were sent again, no more
        assert 0 < again <= 4 * per_batch
    else:  # never checked in before the kill: all eight batches were sent again
        assert again == 8 * per_batch


def test_a_database_of_a_newer_release_is_refused(tmp_path, state_url):
    with store.staging(home_file(tmp_path, "a")) as con:
        Ledger(con).add_planned(SYNC, messages(1))
    with psycopg.connect(state_url, autocommit=True) as pg:
        pg.execute("INSERT INTO segment_ops_state.layout VALUES (%s)", [pgstate.LAYOUT_VERSION + 1])
    with pytest.raises(pgstate.SharedStateError, match="newer than this release's 1: upgrade segment_ops"), \
            store.staging(home_file(tmp_path, "b")):
        pass


def test_a_checkin_racing_another_cursors_outcomes_never_hands_out_an_id_twice(tmp_path, monkeypatch,
                                                                                state_url):
    """A sequence is not transactional: another cursor (a forced replay's planner beside its delivery) may
    log outcomes while a checkpoint checks in. If the worker is then killed, the position checked in must
    still cover every id checked in, or the next worker hands one out again."""
    path = home_file(tmp_path, "a")
    with store.staging(path) as con:
        ledger = Ledger(con)
        ledger.add_planned(SYNC, messages(12))
        deliver(ledger, limit=6)
    con = store.connect(path)  # the file alone: only the check-in below reaches the database
    other = con.cursor()
    listing = pgstate.local_objects

    def racing(c):  # the other cursor commits right after the check-in has read the sequence
        found = listing(c)
        Ledger(other, create=False).log_outcomes(SYNC, [(seq, DELIVERED, 1, None) for seq in range(7, 13)])
        return found

    monkeypatch.setattr(pgstate, "local_objects", racing)
    with psycopg.connect(state_url, autocommit=True) as pg:
        pgstate.acquire(pg, SYNC, shared=False, timeout=5)
        pgstate.checkin(pg, SYNC, con)
    monkeypatch.setattr(pgstate, "local_objects", listing)
    other.close()
    con.close()  # killed before another check-in

    with store.staging(home_file(tmp_path, "b")) as con:
        ledger = Ledger(con)
        ledger.add_planned(SYNC, messages(1, start=12))
        deliver(ledger)
        ids = con.execute("SELECT count(*), count(DISTINCT id) FROM outcomes").fetchone()
    assert ids[0] == ids[1]


def test_a_rewrite_made_without_the_setting_on_a_cached_file_still_reaches_postgresql(tmp_path, monkeypatch,
                                                                                    state_url):
    path = home_file(tmp_path, "a")
    with store.staging(path) as con:
        ledger = Ledger(con)
        ledger.add_planned(SYNC, messages(20))
        deliver(ledger)
    monkeypatch.delenv(pgstate.STATE_URL)  # a shell without SEGMENT_OPS_STATE_URL opens the cache
    con = store.connect(path)
    assert Ledger(con).compact(SYNC, settled_before=datetime.now(UTC) + timedelta(days=1)) == 20
    con.close()
    monkeypatch.setenv(pgstate.STATE_URL, state_url)
    with store.staging(path) as con:  # the next session checks in what it finds
        file_rows = con.execute("SELECT seq, payload FROM planned_messages ORDER BY seq").fetchall()
    assert pg_payloads(state_url, SYNC) == file_rows


def test_outcomes_another_cursor_commits_after_a_checkin_read_its_snapshot_go_in_with_the_next(
        tmp_path, monkeypatch, state_url):
    path = home_file(tmp_path, "a")
    with store.staging(path) as con:
        ledger = Ledger(con)
        ledger.add_planned(SYNC, messages(12))
        deliver(ledger, limit=6)
    con = store.connect(path)
    other = con.cursor()
    listing = pgstate.local_objects

    def racing(c):  # committed after the check-in began: not in its snapshot, and numbered after it
        found = listing(c)
        Ledger(other, create=False).log_outcomes(SYNC, [(seq, DELIVERED, 1, None) for seq in range(7, 13)])
        return found

    with psycopg.connect(state_url, autocommit=True) as pg:
        pgstate.acquire(pg, SYNC, shared=False, timeout=5)
        monkeypatch.setattr(pgstate, "local_objects", racing)
        pgstate.checkin(pg, SYNC, con)
        monkeypatch.setattr(pgstate, "local_objects", listing)
        assert pg_rows(state_url, SYNC, "outcomes") == 6
        report = pgstate.checkin(pg, SYNC, con)
    other.close()
    con.close()
    assert report.rows_written == 6
    assert pg_rows(state_url, SYNC, "outcomes") == 12


def test_a_file_of_a_sync_the_database_dropped_and_made_again_is_not_taken_for_current(tmp_path, state_url):
    """Generations restart with a sync made again (or a database restored): the check-in's token tells."""
    with store.staging(home_file(tmp_path, "a")) as con:
        Ledger(con).add_planned(SYNC, messages(5))
    with psycopg.connect(state_url, autocommit=True) as pg:
        schema = pg.execute("DELETE FROM segment_ops_state.syncs WHERE sync = %s RETURNING pg_schema",
                            [SYNC]).fetchone()[0]
        pg.execute(f'DROP SCHEMA "{schema}" CASCADE')
    with store.staging(home_file(tmp_path, "b")) as con:
        Ledger(con).add_planned(SYNC, messages(3, start=100))  # the sync's new history, at generation 1 too
    with store.staging(home_file(tmp_path, "a")) as con:
        ids = [r[0] for r in con.execute("SELECT message_id FROM planned_messages ORDER BY seq").fetchall()]
    assert ids == ["m100", "m101", "m102"]


def test_a_process_that_does_not_know_a_state_table_leaves_it_alone(tmp_path, monkeypatch, state_url):
    with store.staging(home_file(tmp_path, "a")) as con:
        store.ensure(con, store.schema_named("diff"))
        con.execute("INSERT INTO rev_state (generation) VALUES (7)")
        Ledger(con).add_planned(SYNC, messages(1))
    known = pgstate.state_names()
    monkeypatch.setattr(pgstate, "state_names", lambda: known - {"rev_state", "rev_snapshot", "rev_changes",
                                                                  "rev_superseded"})
    with store.staging(home_file(tmp_path, "b")) as con:  # a script that imported the ledger alone
        Ledger(con).add_planned(SYNC, messages(1, start=1))
    monkeypatch.undo()
    monkeypatch.setenv(pgstate.STATE_URL, state_url)
    with store.staging(home_file(tmp_path, "c")) as con:
        assert con.execute("SELECT generation FROM rev_state").fetchall() == [(7,)]


def test_a_nul_in_a_string_is_kept_as_u_fffd_instead_of_stopping_every_checkin(tmp_path, state_url):
    with store.staging(home_file(tmp_path, "a")) as con:
        Ledger(con).add_rejections(SYNC, [Rejection("k", "file:1", "unreadable line", "a\x00b")])
    with store.staging(home_file(tmp_path, "b")) as con:
        assert con.execute("SELECT record FROM rejected").fetchall() == [("a\ufffdb",)]


def test_a_carriage_return_in_the_first_value_comes_back_as_it_was(tmp_path, state_url):
    """DuckDB's CSV reader, unless told rows end in \\n, takes a \\r in the first value for the line end."""
    from segment_ops.engine.diff import ensure_state

    row = ("k\r1", "h", 1, False, "u\r\n1", None, None, "m1", None, 7)
    with store.staging(home_file(tmp_path, "a")) as con:
        ensure_state(con)
        con.execute("INSERT INTO rev_snapshot VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", list(row))
    with store.staging(home_file(tmp_path, "b")) as con:
        assert con.execute("SELECT * FROM rev_snapshot").fetchall() == [row]


def test_a_second_thread_of_one_process_waits_for_the_first_ones_session(tmp_path, state_url):
    import threading

    holding, release = threading.Event(), threading.Event()

    def first() -> None:
        with store.staging(home_file(tmp_path, "a")) as con:
            Ledger(con).add_planned(SYNC, messages(2))
            holding.set()
            release.wait(30)

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert holding.wait(30)
        with pytest.raises(store.StagingLockedError), \
                store.staging(home_file(tmp_path, "a"), lock_timeout=0.3):
            pass
    finally:
        release.set()
        thread.join()
    with store.staging(home_file(tmp_path, "a")) as con:
        assert Ledger(con).counts(SYNC).pending == 2
