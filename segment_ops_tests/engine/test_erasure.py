"""Erasure at home (`engine/erasure.py`): a DELETE regulation's subject leaves every local store. Proven with
`find_subject`, which reads every table and inbox file as text rather than the places erasure knows, while
another subject stays as it was, ids and counts stay, and nothing erased is ever sent again."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import orjson
import psycopg
import pytest

import segment_ops.definitions  # noqa: F401  (registers every sync's state schemas, as a run does)
from segment_ops.engine import store
from segment_ops.engine.delivery import deliver_pending
from segment_ops.engine.diff import advance_snapshot, ensure_state, plan_changes
from segment_ops.engine.erasure import (
    REDACTED,
    ErasureIncompleteError,
    erase_everywhere,
    erase_subjects,
    find_subject,
)
from segment_ops.engine.identity import IdentitySource, stage_identity_map
from segment_ops.engine.ledger import (
    AWAITING_ACK,
    COMPACTED,
    DELIVERED,
    ERASED,
    HELD,
    REJECTED,
    Ledger,
    PlannedMessage,
    Rejection,
)
from segment_ops.engine.spec import DiffSpec
from segment_ops.syncs.audit_trail.defs import STATE as AUDIT_STATE
from segment_ops.syncs.heap.inbox import Inbox
from segment_ops.syncs.heap.webhook import SyncPage
from segment_ops_tests.conftest import fresh_state_database
from segment_ops_tests.engine.conftest import stage_columns

SYNC = "replay"
GONE, KEPT = "usr_0000042", "usr_0000007"  # the subject erased, and one who stays
GONE_EMAIL = "gone.person@mail.example"  # GONE's Heap identity, which only an identity map ties to GONE
REASON = "DELETE_ONLY regulation rg_1"


def message_id(user: str, n: int) -> str:
    return hashlib.sha256(f"{user}:{n}".encode()).hexdigest()[:32]  # like the engine's: no user id in it


def identify(user: str, n: int) -> PlannedMessage:
    body = {"type": "identify", "userId": user, "traits": {"email": f"{user}@mail.example", "n": n},
            "messageId": message_id(user, n)}
    return PlannedMessage(message_id(user, n), user, "identify", orjson.dumps(body))


def seqs_of(ledger: Ledger, user: str) -> list[int]:
    ids = [message_id(user, n) for n in range(10)]
    return [row[0] for row in ledger.con.execute(
        "SELECT seq FROM planned_messages WHERE message_id IN (SELECT unnest(?::VARCHAR[])) ORDER BY seq",
        [ids]).fetchall()]


def status_of(ledger: Ledger, seq: int) -> str:
    return ledger.con.execute("SELECT status FROM ledger WHERE sync = ? AND seq = ?",
                              [SYNC, seq]).fetchone()[0]


def outbox(con: duckdb.DuckDBPyConnection) -> list[tuple]:
    """Every planned message's identity and shape: what erasure must leave as it was."""
    return con.execute("SELECT sync, seq, message_id, call_type, planned_run FROM planned_messages "
                       "ORDER BY sync, seq").fetchall()


def everything(path: Path) -> dict[str, list]:
    """Every row of every table of a staging file, as text (to compare a file before and after)."""
    with store.staging(path, read_only=True) as con:
        tables = [row[0] for row in con.execute("SELECT table_name FROM duckdb_tables() WHERE schema_name = "
                                                "'main' AND NOT temporary").fetchall()]
        return {t: sorted(map(str, con.execute(f'SELECT * FROM "{t}"').fetchall())) for t in tables}


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def staging(home: Path) -> Path:
    return store.staging_file(home, SYNC)


# --- the registry -------------------------------------------------------------------------------------------

def test_every_registered_state_schema_says_how_it_erases_a_subject():
    silent = [schema.name for schema in store.registered() if schema.erase is None]
    assert not silent, f"state schema(s) {silent} say neither how to erase a subject nor that they hold none"


def test_a_schema_whose_erasure_writes_a_table_it_does_not_own_is_refused():
    create = "CREATE TABLE IF NOT EXISTS t (a INT)"
    with pytest.raises(store.StateSchemaError, match="planned_messages"):
        store.StateSchema(name="thief", version=1, tables=("t",), create=create,
                          erase="DELETE FROM planned_messages WHERE erased_id(record_key)")
    with pytest.raises(store.StateSchemaError, match="without saying why"):
        store.StateSchema(name="mute", version=1, tables=("t",), create=create, erase=store.no_subjects(" "))


# --- the ledger ---------------------------------------------------------------------------------------------

def test_the_subjects_messages_keep_their_ids_and_states_and_lose_their_bodies(home, staging):
    with store.staging(staging) as con:
        ledger = Ledger(con)
        ledger.add_planned(SYNC, [identify(GONE, 1), identify(KEPT, 1), identify(GONE, 2), identify(KEPT, 2)])
        gone, kept = seqs_of(ledger, GONE), seqs_of(ledger, KEPT)
        ledger.log_outcomes(SYNC, [(gone[0], DELIVERED, 1, None), (kept[0], DELIVERED, 1, None),
                                   (gone[1], REJECTED, 1, f"userId {GONE} is not allowed here")])
        ledger.reject_refused(SYNC, [(gone[1], f"userId {GONE} is not allowed here")], destination="segment")
        ledger.add_rejections(SYNC, [Rejection(GONE, "users.sql", f"key {GONE} appears in 2 rows",
                                               orjson.dumps({"user_id": GONE, "plan": "pro"}).decode())])
        before_outbox, before_counts = outbox(con), ledger.counts(SYNC)
        kept_payloads = con.execute("SELECT seq, payload FROM planned_messages "
                                    "WHERE seq IN (SELECT unnest(?))", [kept]).fetchall()
        rejected_before = con.execute("SELECT count(*) FROM rejected").fetchone()[0]

    with store.staging(staging) as con:
        report = erase_subjects(con, [GONE], reason=REASON)
        ledger = Ledger(con, create=False)
        assert outbox(con) == before_outbox  # ids, seqs, call types, runs
        assert ledger.counts(SYNC) == before_counts  # nothing was to be sent: every count as it was
        assert con.execute("SELECT DISTINCT payload FROM planned_messages WHERE seq IN (SELECT unnest(?))",
                           [gone]).fetchall() == [(ERASED,)]
        assert ERASED.startswith(COMPACTED)  # so every reader that skips a compacted payload skips it
        assert con.execute("SELECT seq, payload FROM planned_messages WHERE seq IN (SELECT unnest(?))",
                           [kept]).fetchall() == kept_payloads
        assert con.execute("SELECT count(*) FROM rejected").fetchone()[0] == rejected_before
        rows = con.execute("SELECT record_key, reason, record FROM rejected ORDER BY rejected_at").fetchall()
        assert all(record == ERASED and key == "erased:" + hashlib.sha256(GONE.encode()).hexdigest()
                   for key, _, record in rows)
        assert sorted(reason for _, reason, _ in rows) == [
            f"key {REDACTED} appears in 2 rows",
            f"rejected by segment: userId {REDACTED} is not allowed here"]
    assert report.rows == {"replay/planned_messages": 2, "replay/outcomes": 1, "replay/rejected": 2}
    assert find_subject(home, GONE) == []
    assert find_subject(home, KEPT) == ["staging/replay.duckdb: planned_messages (2 rows)"]


def test_a_message_about_the_subject_still_to_be_sent_is_suppressed_and_never_sent(staging, segment_client,
                                                                                    clean_sandbox):
    with store.staging(staging) as con:
        ledger = Ledger(con)
        ledger.add_planned(SYNC, [identify(GONE, 1), identify(KEPT, 1), identify(GONE, 2)])
        report = erase_subjects(con, [GONE], reason=f"{REASON} for {GONE}")
        deliver_pending(ledger, SYNC, segment_client())
        assert {m["messageId"] for m in clean_sandbox.received("segment")} == {message_id(KEPT, 1)}
        counts = ledger.counts(SYNC)
        assert (counts.delivered, counts.suppressed, counts.pending) == (1, 2, 0)
        errors = {row[0] for row in con.execute(
            "SELECT last_error FROM ledger WHERE seq IN (SELECT unnest(?))", [seqs_of(ledger, GONE)]
        ).fetchall()}
        assert errors == {f"erased at home: {REASON} for {REDACTED}"}
    assert report.suppressed == {SYNC: 2}


def test_held_and_unconfirmed_messages_about_the_subject_are_suppressed_too(staging):
    with store.staging(staging) as con:
        ledger = Ledger(con)
        ledger.add_planned(SYNC, [identify(GONE, 1), identify(GONE, 2), identify(KEPT, 1)])
        held, awaiting = seqs_of(ledger, GONE)
        ledger.log_outcomes(SYNC, [(held, HELD, 0, "plan guard"), (awaiting, AWAITING_ACK, 1, None, "ack-1")])
        erase_subjects(con, [GONE], reason=REASON)
        assert (status_of(ledger, held), status_of(ledger, awaiting)) == ("suppressed", "suppressed")
        assert ledger.release_held(SYNC, "approved") == 0  # an approval cannot bring it back
        assert ledger.settle_receipts(SYNC, ["ack-1"], "pending", "not confirmed in time") == 0
        assert [seq for chunk in ledger.iter_pending(SYNC) for seq, _ in chunk] == seqs_of(ledger, KEPT)


def test_a_forced_resend_of_an_erased_message_rejects_it_and_never_brings_its_body_back(
        staging, segment_client, clean_sandbox):
    with store.staging(staging) as con:
        ledger = Ledger(con)
        ledger.add_planned(SYNC, [identify(GONE, 1)])
        deliver_pending(ledger, SYNC, segment_client())
        erase_subjects(con, [GONE], reason=REASON)
        again = ledger.add_planned(SYNC, [identify(GONE, 1)], force=True)  # a person's replay --force
        assert (again.planned, again.rejected) == (0, 1)
        deliver_pending(ledger, SYNC, segment_client())
        assert len(clean_sandbox.received("segment")) == 1  # the delivery before the erasure
        assert con.execute("SELECT payload FROM planned_messages").fetchall() == [(ERASED,)]
        assert status_of(ledger, seqs_of(ledger, GONE)[0]) == REJECTED


def test_a_forced_resend_of_an_erased_message_that_was_never_sent_leaves_it_suppressed(
        staging, segment_client, clean_sandbox):
    with store.staging(staging) as con:
        ledger = Ledger(con)
        ledger.add_planned(SYNC, [identify(GONE, 1), identify(KEPT, 1)])
        erase_subjects(con, [GONE], reason=REASON)  # planned, so suppressed
        again = ledger.add_planned(SYNC, [identify(GONE, 1), identify(KEPT, 1)], force=True)
        assert again.planned == 1  # KEPT's, made pending again as asked
        deliver_pending(ledger, SYNC, segment_client())
        assert {m["messageId"] for m in clean_sandbox.received("segment")} == {message_id(KEPT, 1)}
        assert status_of(ledger, seqs_of(ledger, GONE)[0]) == "suppressed"


def test_erasing_again_changes_nothing(staging):
    with store.staging(staging) as con:
        ledger = Ledger(con)
        ledger.add_planned(SYNC, [identify(GONE, 1), identify(KEPT, 1), identify(GONE, 2)])
        ledger.log_outcomes(SYNC, [(seqs_of(ledger, GONE)[0], DELIVERED, 1, None)])
        erase_subjects(con, [GONE], reason=REASON)
    once = everything(staging)
    with store.staging(staging) as con:
        again = erase_subjects(con, [GONE], reason=REASON)
    assert (again.rows, again.suppressed) == ({}, {})
    assert everything(staging) == once


# --- the diff -----------------------------------------------------------------------------------------------

SPEC = DiffSpec(sync="orders", source="orders.test", call="track", mode="upsert", key="order_id",
                user_id="user_id", event="Order Completed", fields=("total",))
USERS = DiffSpec(sync="users", source="users.test", call="identify", mode="upsert", key="user_id",
                 user_id="user_id", fields=("plan",))


def staged_orders(con: duckdb.DuckDBPyConnection, rows: dict[str, tuple[str, int]]):
    return stage_columns(con, "orders_staged", {
        "order_id": ("VARCHAR", list(rows)), "user_id": ("VARCHAR", [u for u, _ in rows.values()]),
        "total": ("INTEGER", [t for _, t in rows.values()])})


def test_delivered_rows_keyed_by_the_subject_go_and_rows_naming_them_keep_only_their_key(
        home, segment_client, clean_sandbox):
    """One file per diff sync, as the runs keep them: users keyed by userId, orders keyed by order id."""
    orders = {"ord_1": (GONE, 10), "ord_2": (KEPT, 20)}
    for spec, stage in ((SPEC, lambda con: staged_orders(con, orders)),
                        (USERS, lambda con: stage_columns(con, "users_staged", {
                            "user_id": ("VARCHAR", [GONE, KEPT]), "plan": ("VARCHAR", ["pro", "free"])}))):
        with store.staging(store.staging_file(home, spec.sync)) as con:
            ledger = Ledger(con)
            ensure_state(con)
            plan_changes(con, ledger, spec, stage(con))
            deliver_pending(ledger, spec.sync, segment_client())
            advance_snapshot(con, spec.sync)
    erase_everywhere(home, [GONE], reason=REASON)
    snapshots = {}
    for sync in ("orders", "users"):
        with store.staging(store.staging_file(home, sync), read_only=True) as con:
            snapshots[sync] = con.execute("SELECT record_key, user_id FROM rev_snapshot "
                                          "ORDER BY 1").fetchall()
    assert snapshots == {"orders": [("ord_1", None), ("ord_2", KEPT)], "users": [(KEPT, KEPT)]}
    # The order's row is unchanged in the warehouse: the next run sends nothing about it.
    sent = len(clean_sandbox.received("segment"))
    with store.staging(store.staging_file(home, "orders")) as con:
        again = plan_changes(con, Ledger(con), SPEC, staged_orders(con, orders))
    assert (again.planned, again.unchanged) == (0, 2)
    assert len(clean_sandbox.received("segment")) == sent
    assert find_subject(home, GONE) == []


def test_a_superseded_message_about_the_subject_is_never_revived(tmp_path):
    with store.staging(tmp_path / "orders.duckdb") as con:
        ledger = Ledger(con)
        ensure_state(con)
        first = {"ord_1": (GONE, 10), "ord_2": (KEPT, 20)}
        plan_changes(con, ledger, SPEC, staged_orders(con, first))  # planned, not sent
        changed = {**first, "ord_1": (GONE, 11)}
        plan_changes(con, ledger, SPEC, staged_orders(con, changed))  # ord_1's first message superseded
        assert con.execute("SELECT count(*) FROM rev_superseded").fetchone()[0] == 1
        erase_subjects(con, [GONE], reason=REASON)
        assert con.execute("SELECT count(*) FROM rev_superseded").fetchone()[0] == 0
        # The row goes back to what the superseded message said: it is not planned again from its tombstone.
        plan_changes(con, ledger, SPEC, staged_orders(con, first))
        pending = [payload for chunk in ledger.iter_pending("orders") for _, payload in chunk]
        assert [orjson.loads(p)["userId"] for p in pending] == [KEPT]


# --- other stores -------------------------------------------------------------------------------------------

def test_a_staged_audit_event_naming_the_subject_keeps_its_id_time_and_type_only(tmp_path):
    event = {"id": "ev_1", "timestamp": "2026-11-29T07:42:28.155Z", "type": "Workspace Regulation Created",
             "actor": "privacy@example.com", "subjects": [GONE]}
    with store.staging(tmp_path / "audit_trail.duckdb") as con:
        store.ensure(con, AUDIT_STATE)
        con.execute("INSERT INTO audit_events VALUES ('ev_1', now(), ?, ?, 'run', now()), "
                    "('ev_2', now(), 'Source Created', ?, 'run', now())",
                    [event["type"], orjson.dumps(event).decode(), '{"id":"ev_2","timestamp":"x"}'])
        erase_subjects(con, [GONE], reason=REASON)
        events = dict(con.execute("SELECT id, event FROM audit_events").fetchall())
    assert orjson.loads(events["ev_1"]) == {"id": "ev_1", "timestamp": event["timestamp"],
                                            "type": event["type"], "erased": True}
    assert orjson.loads(events["ev_2"]) == {"id": "ev_2", "timestamp": "x"}


def write_identity_map(home: Path, sync: str, rows: dict[str, str]) -> None:
    """An identity map staged in a sync's file by the engine's own code, as a Heap run leaves it."""
    csv = home / f"{sync}_map.csv"
    csv.parent.mkdir(parents=True, exist_ok=True)
    csv.write_text("source_id,target_id\n" + "".join(f"{s},{t}\n" for s, t in rows.items()))
    with store.staging(store.staging_file(home, sync)) as con:
        stage_identity_map(con, IdentitySource(csv=str(csv)), "heap_identity_map", warehouse_url="")
    csv.unlink()


def test_inbox_files_lose_the_subject_and_the_identities_that_resolve_to_them(home):
    write_identity_map(home, "heap_power_users", {GONE_EMAIL: GONE, "kept.person@mail.example": KEPT})
    inbox = Inbox.for_home(home)
    inbox.store(SyncPage("task-1", 1, 1, 1338065, "Power Users", add=(GONE_EMAIL, "kept.person@mail.example"),
                         remove=(GONE,)))
    replay = home / "inbox" / "replay"
    replay.mkdir(parents=True)
    lines = [identify(user, n).payload for user, n in ((GONE, 1), (KEPT, 1), (GONE, 2), (KEPT, 2))]
    (replay / "calls.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    duckdb.execute(f"COPY (SELECT * FROM (VALUES ('{GONE}', 1), ('{KEPT}', 2)) t(userId, n)) "
                   f"TO '{replay / 'calls.parquet'}' (FORMAT parquet)")
    requests = home / "inbox" / "regulations"
    requests.mkdir(parents=True)
    (requests / "requests.csv").write_text(f"user_id,regulation_type\n{GONE},DELETE_ONLY\n"
                                           f"\"{KEPT}\",SUPPRESS_ONLY\n")
    kept_before = find_subject(home, KEPT)

    report = erase_everywhere(home, [GONE], reason=REASON)

    assert find_subject(home, GONE) == [] and find_subject(home, GONE_EMAIL) == []
    assert find_subject(home, KEPT) == kept_before
    assert report.aliases == 1
    page = orjson.loads(next((home / "inbox" / "heap").glob("sync-*/page-1.json")).read_bytes())
    assert (page["add"], page["remove"], page["total_pages"]) == (["kept.person@mail.example"], [], 1)
    assert (replay / "calls.jsonl").read_bytes().split(b"\n") == [b"", lines[1], b"", lines[3], b""]
    assert duckdb.execute(f"SELECT * FROM '{replay / 'calls.parquet'}'").fetchall() == [(KEPT, 2)]
    assert (requests / "requests.csv").read_text() == f"user_id,regulation_type\n\"{KEPT}\",SUPPRESS_ONLY\n"
    assert report.files == {"inbox/replay/calls.jsonl": 2, "inbox/replay/calls.parquet": 1,
                            "inbox/regulations/requests.csv": 1,
                            str(next(home.glob("inbox/heap/sync-*/page-1.json")).relative_to(home)): 2}
    assert report.rows == {"heap_power_users/heap_identity_map": 1}


def test_a_subject_inside_a_longer_string_of_a_json_document_is_redacted_there_only(home):
    # A body kept as text (a stream body the receiver refused), a query string: the subject is a token there.
    folder = home / "inbox" / "fullstory" / "rejected"
    folder.mkdir(parents=True)
    path = folder / "rejected-1.json"
    path.write_bytes(orjson.dumps({"reason": "not JSON", "body": f"uid={GONE}&email={GONE_EMAIL}&n=1",
                                   "other": f"{GONE}0 x{GONE_EMAIL} {KEPT}"}))

    report = erase_everywhere(home, [GONE, GONE_EMAIL], reason=REASON)

    kept = orjson.loads(path.read_bytes())
    assert kept["body"] == "uid=<erased>&email=<erased>&n=1"
    assert kept["other"] == f"{GONE}0 x{GONE_EMAIL} {KEPT}"  # longer ids holding it are other ids
    assert report.files == {"inbox/fullstory/rejected/rejected-1.json": 2}


def test_a_file_locked_by_a_run_is_reported_not_skipped_silently(home, staging):
    with store.staging(staging) as con:
        Ledger(con).add_planned(SYNC, [identify(GONE, 1)])
    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, sys, time; "
                               f"c = duckdb.connect({str(staging)!r}); print('locked', flush=True); "
                               "time.sleep(30)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ErasureIncompleteError, match="replay.duckdb") as failed:
            erase_everywhere(home, [GONE], reason=REASON, lock_timeout=0.2)
        assert failed.value.missed == ["replay.duckdb"]
    finally:
        holder.kill()
        holder.wait()
    erase_everywhere(home, [GONE], reason=REASON)
    assert find_subject(home, GONE) == []


# --- with the state in PostgreSQL ---------------------------------------------------------------------------

def pg_rows_naming(url: str, text: str) -> list[str]:
    """Every table of the state database (each sync's schema and the catalog, the shared inbox's items too)
    with a row whose text holds `text`."""
    found = []
    with psycopg.connect(url) as pg:
        tables = pg.execute("SELECT table_schema, table_name FROM information_schema.tables WHERE "
                            "table_type = 'BASE TABLE' AND (table_schema LIKE 'so\\_%' "
                            "OR table_schema = 'segment_ops_state')").fetchall()
        for schema, table in tables:
            row_text = ("convert_from(x.data, 'UTF8') || x.path" if table == "inbox_files" else "x::text")
            if pg.execute(f'SELECT count(*) FROM "{schema}"."{table}" x WHERE position(%s in {row_text}) > 0',
                          [text]).fetchone()[0]:
                found.append(f"{schema}.{table}")
    return found


@pytest.mark.postgres
def test_erasure_reaches_the_state_and_the_shared_inbox_in_postgresql(tmp_path, monkeypatch):
    with fresh_state_database("so_erasure") as url:
        monkeypatch.setenv("SEGMENT_OPS_STATE_URL", url)
        first, second = tmp_path / "first", tmp_path / "second"  # two machines sharing only the database
        with store.staging(store.staging_file(first, SYNC)) as con:
            ledger = Ledger(con)
            ledger.add_planned(SYNC, [identify(GONE, 1), identify(KEPT, 1)])
            ledger.log_outcomes(SYNC, [(seq, DELIVERED, 1, None) for seq in seqs_of(ledger, GONE)])
            ledger.add_rejections(SYNC, [Rejection(GONE, "users.sql", "bad plan", f'{{"user_id":"{GONE}"}}')])
        Inbox.for_home(first).store(SyncPage("task-1", 1, 1, 1338065, "Power Users", add=(GONE, KEPT),
                                             remove=()))
        assert pg_rows_naming(url, GONE)  # the ledger's tables and the inbox item, checked in

        erase_everywhere(first, [GONE], reason=REASON)

        assert pg_rows_naming(url, GONE) == []
        assert pg_rows_naming(url, KEPT)
        Inbox.for_home(second).syncs()  # the second machine brings the shared inbox here
        assert find_subject(second, GONE) == []
        assert find_subject(second, KEPT) == [f"staging/{SYNC}.duckdb: planned_messages (1 rows)",
                                              next(str(p.relative_to(second))
                                                   for p in second.glob("inbox/heap/sync-*/page-1.json"))]


# --- every sync of the demo, run for real -------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home in which every sync ran once through Dagster against the sandbox (`segment-ops demo`, pinned
    clock, small data), with the demo's replay file dropped into the replay inbox as an operator would."""
    folder = tmp_path_factory.mktemp("erasure_demo")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SEGMENT_", "DAGSTER_"))}
    env |= {"SEGMENT_OPS_CLOCK": "2026-11-29T11:30:00Z", "SEGMENT_OPS_HOME": str(folder / "home"),
            "DAGSTER_HOME": str(folder / "dagster_home")}
    done = subprocess.run([sys.executable, "-m", "segment_ops.cli", "demo", "--scale", "0.1"], cwd=folder,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    home = folder / "home" / "demo"
    (home / "inbox" / "replay").mkdir(parents=True)
    shutil.copy(home / "demo" / "historical_events.jsonl", home / "inbox" / "replay")
    return home


def widespread_users(home: Path) -> list[str]:
    """The userIds the syncs sent or staged, those in the most staging files first."""
    files: dict[str, int] = {}
    for path in store.staging_files(home):
        with store.staging(path, read_only=True) as con:
            tables = {row[0] for row in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
            users = set()
            if "planned_messages" in tables:
                users |= {row[0] for row in con.execute(
                    "SELECT DISTINCT json_extract_string(payload, '$.userId') FROM planned_messages "
                    "WHERE NOT starts_with(payload, 'compacted:')").fetchall() if row[0]}
            if "pendo_visitor_days" in tables:
                users |= {row[0] for row in con.execute(
                    "SELECT DISTINCT visitor_id FROM pendo_visitor_days").fetchall()}
        for user in users:
            files[user] = files.get(user, 0) + 1
    return sorted(files, key=lambda user: (-files[user], user))


def heap_identity_of(home: Path, user: str) -> str | None:
    for path in store.staging_files(home):
        with store.staging(path, read_only=True) as con:
            if con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'heap_identity_map'"
                           ).fetchone()[0]:
                found = con.execute("SELECT source_id FROM heap_identity_map WHERE target_id = ?",
                                    [user]).fetchone()
                if found:
                    return found[0]
    return None


def figures(home: Path) -> dict[str, tuple]:
    """Per ledger sync: its counts, the messages it ever planned, its outcomes and its rejected rows."""
    found = {}
    for path in store.staging_files(home):
        with store.staging(path, read_only=True) as con:
            ledger = Ledger(con, create=False)
            if not ledger.holds_ledger():
                continue
            for sync in ledger.syncs():
                found[sync] = (ledger.counts(sync), ledger.ever_planned(sync), *con.execute(
                    "SELECT (SELECT count(*) FROM outcomes WHERE sync = $s), "
                    "(SELECT count(*) FROM rejected WHERE sync = $s)", {"s": sync}).fetchone())
    return found


@pytest.mark.slow
def test_a_subject_erased_after_every_sync_ran_is_absent_from_every_local_store(demo_home, tmp_path):
    home = tmp_path / "home"
    shutil.copytree(demo_home, home)
    gone, kept = widespread_users(home)[:2]
    alias = heap_identity_of(home, gone)
    where = find_subject(home, gone)
    # Before: in the ledgers and snapshots of several syncs, Pendo's staged usage and the replay inbox; its
    # Heap identity in the membership and the webhook pages.
    assert len({place.split(":")[0] for place in where}) >= 5, where
    assert alias is not None and any(p.startswith("inbox/heap/") for p in find_subject(home, alias))
    kept_before, figures_before = find_subject(home, kept), figures(home)

    report = erase_everywhere(home, [gone], reason=REASON)

    assert find_subject(home, gone) == []
    assert find_subject(home, alias) == []
    assert find_subject(home, kept) == kept_before
    assert figures(home) == figures_before  # nothing was to be sent: every count as it was
    assert report.aliases == 1 and report.files and not report.not_rewritten
    again = erase_everywhere(home, [gone], reason=REASON)
    assert (again.rows, again.suppressed, again.files) == ({}, {}, {})
