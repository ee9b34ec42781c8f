"""Backup and restore of a sync's state (`engine/transfer.py`, `segment-ops state export | import`): a
replay's ledger moved to a fresh home sends nothing again there, and an export that is damaged, from
another release or aimed at a home that already has state is refused before anything is written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import duckdb
import pytest

import segment_ops.definitions  # noqa: F401  (registers every sync's state schemas, as the CLI does)
from segment_ops.engine import store
from segment_ops.engine.ledger import STATE as LEDGER_STATE
from segment_ops.engine.ledger import Ledger
from segment_ops.engine.pgstate import STATE_URL
from segment_ops.engine.store import staging
from segment_ops.engine.transfer import MANIFEST, TABLES_DIR, TransferError, export_state, import_state
from segment_ops.syncs.replay.reader import replay_file
from segment_ops_tests.conftest import fresh_state_database
from segment_ops_tests.engine.conftest import ledger_counts, track_calls, write_jsonl

CALLS = 120


@pytest.fixture
def delivered_home(tmp_path: Path, segment_client, clean_sandbox) -> tuple[Path, Path]:
    """A home whose replay ledger delivered CALLS track calls to the sandbox, and the file replayed."""
    home = tmp_path / "home_a"
    path = write_jsonl(tmp_path / "events.jsonl", track_calls(CALLS))
    with staging(home / "staging" / "replay.duckdb") as con:
        result = replay_file(Ledger(con), path, segment_client)
    assert result.delivery.delivered == CALLS
    (home / "inbox" / "replay").mkdir(parents=True)
    (home / "inbox" / "replay" / "next.jsonl").write_bytes(b"{}\n")
    return home, path


@pytest.fixture
def other_store(monkeypatch: pytest.MonkeyPatch, state_backend: str | None) -> Iterator[Callable[[], None]]:
    """Call to move on to the target's store: another home is one for the embedded default; with the state in
    PostgreSQL (SEGMENT_OPS_TEST_STATE=postgres) it is another database."""
    with ExitStack() as stack:
        def switch() -> None:
            if state_backend is not None:
                monkeypatch.setenv(STATE_URL, stack.enter_context(fresh_state_database("so_target")))
        yield switch


def test_a_ledger_moved_to_a_fresh_home_sends_nothing_again(tmp_path, delivered_home, segment_client,
                                                            clean_sandbox, other_store):
    home_a, path = delivered_home
    home_b = tmp_path / "home_b"
    exported = export_state(home_a / "staging" / "replay.duckdb", tmp_path / "export",
                            inbox=home_a / "inbox" / "replay")
    requests = clean_sandbox.stats()["segment"]["requests"]
    other_store()

    imported = import_state(tmp_path / "export", home_b / "staging" / "replay.duckdb",
                            inbox=home_b / "inbox" / "replay")
    with staging(home_b / "staging" / "replay.duckdb") as con:
        ledger = Ledger(con)
        counts = ledger_counts(ledger)
        again = replay_file(ledger, path, segment_client)

    assert imported == exported and exported.rows["planned_messages"] == CALLS
    assert counts == (0, CALLS, 0)
    assert (again.plan.planned, again.plan.already_known, again.delivery.delivered) == (0, CALLS, 0)
    assert clean_sandbox.stats()["segment"]["requests"] == requests
    assert (home_b / "inbox" / "replay" / "next.jsonl").read_bytes() == b"{}\n"


def test_new_outcomes_after_an_import_continue_the_imported_order(tmp_path, delivered_home, segment_client,
                                                                  other_store):
    home_a, _ = delivered_home
    export_state(home_a / "staging" / "replay.duckdb", tmp_path / "export")
    other_store()
    target = tmp_path / "home_b" / "staging" / "replay.duckdb"
    import_state(tmp_path / "export", target)
    more = write_jsonl(tmp_path / "more.jsonl", track_calls(10, prefix="v"))

    with staging(target) as con:
        replay_file(Ledger(con), more, segment_client)
        ids = [row[0] for row in con.execute("SELECT id FROM outcomes ORDER BY logged_at, id").fetchall()]

    assert len(ids) == len(set(ids))  # no id handed out twice
    assert ids[-1] == max(ids)


def test_an_import_into_a_home_with_state_of_its_own_is_refused_and_changes_nothing(tmp_path, delivered_home):
    home_a, _ = delivered_home
    export_state(home_a / "staging" / "replay.duckdb", tmp_path / "export")
    before = (home_a / "staging" / "replay.duckdb").read_bytes()

    with pytest.raises(TransferError, match="already holds state"):
        import_state(tmp_path / "export", home_a / "staging" / "replay.duckdb")

    assert (home_a / "staging" / "replay.duckdb").read_bytes() == before


def test_a_damaged_export_is_refused_before_anything_is_written(tmp_path, delivered_home):
    home_a, _ = delivered_home
    export_state(home_a / "staging" / "replay.duckdb", tmp_path / "export")
    with (tmp_path / "export" / TABLES_DIR / "outcomes.parquet").open("ab") as f:
        f.write(b"x")
    target = tmp_path / "home_b" / "staging" / "replay.duckdb"

    with pytest.raises(TransferError, match="outcomes.parquet does not match its checksum"):
        import_state(tmp_path / "export", target)

    assert not target.parent.exists() or not any(target.parent.iterdir())


def edited_export(home: Path, dest: Path, change) -> None:
    """Export `home`'s replay state to `dest`, then apply `change` to its manifest."""
    export_state(home / "staging" / "replay.duckdb", dest)
    manifest = json.loads((dest / MANIFEST).read_text())
    change(manifest)
    (dest / MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize("change, message", [
    (lambda m: m["schemas"].update(ledger=LEDGER_STATE.version + 1), "newer than this release"),
    (lambda m: m["schemas"].update(ledger=0), "older than this release"),
    (lambda m: m["schemas"].update(no_such_schema=1), "this release does not know"),
    (lambda m: m.update(format_version=2), "export format version 2"),
    (lambda m: m.update(format="something.else"), "not a segment_ops state export"),
])
def test_an_export_this_release_cannot_read_faithfully_is_refused(tmp_path, delivered_home, change, message):
    edited_export(delivered_home[0], tmp_path / "export", change)

    with pytest.raises(TransferError, match=message):
        import_state(tmp_path / "export", tmp_path / "home_b" / "staging" / "replay.duckdb")


def test_an_inbox_with_other_files_is_refused(tmp_path, delivered_home, other_store):
    home_a, _ = delivered_home
    export_state(home_a / "staging" / "replay.duckdb", tmp_path / "export", inbox=home_a / "inbox" / "replay")
    other_store()
    inbox_b = tmp_path / "home_b" / "inbox" / "replay"
    inbox_b.mkdir(parents=True)
    (inbox_b / "other.jsonl").write_bytes(b"{}\n")

    with pytest.raises(TransferError, match="other.jsonl, which is not in the export"):
        import_state(tmp_path / "export", tmp_path / "home_b" / "staging" / "replay.duckdb", inbox=inbox_b)


def test_exporting_into_a_folder_that_holds_files_is_refused(tmp_path, delivered_home):
    home_a, _ = delivered_home
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "keep.txt").write_text("mine")

    with pytest.raises(TransferError, match="is not empty"):
        export_state(home_a / "staging" / "replay.duckdb", tmp_path / "export")


@pytest.mark.slow
def test_the_cli_moves_a_sync_between_homes(tmp_path, delivered_home, other_store):
    home_a, _ = delivered_home
    home_b = tmp_path / "home_b"

    def cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "segment_ops.cli", "state", *args],
                              env=dict(os.environ, SEGMENT_OPS_HOME=str(home)), capture_output=True,
                              text=True, timeout=120)

    exported = cli(home_a, "export", "replay", str(tmp_path / "export"))
    other_store()
    imported = cli(home_b, "import", str(tmp_path / "export"))
    refused = cli(home_b, "import", str(tmp_path / "export"))

    assert exported.returncode == 0, exported.stderr
    assert f"planned_messages: {CALLS} rows" in exported.stdout
    assert imported.returncode == 0, imported.stderr
    assert "inbox files: 1" in imported.stdout
    assert (home_b / "staging" / "replay.duckdb").is_file()
    assert refused.returncode == 2 and "already holds state" in refused.stderr


@pytest.mark.parametrize("change, message", [
    (lambda m: m.update(name="../../elsewhere"), "not a sync name"),
    (lambda m: m["tables"].update(state_schema_versions=m["tables"]["outcomes"]), "no table of the schemas"),
    (lambda m: m["sequences"].update({"x; DROP TABLE outcomes": 1}), "no table of the schemas"),
    (lambda m: m["files"].update({"../../escaped.jsonl": "0" * 64}), "outside its folder"),
    (lambda m: m["files"].update({"/tmp/absolute.jsonl": "0" * 64}), "outside its folder"),
    (lambda m: m.pop("schemas"), "is malformed"),
])
def test_a_crafted_manifest_cannot_reach_outside_the_home_or_into_sql(tmp_path, delivered_home, change,
                                                                      message):
    edited_export(delivered_home[0], tmp_path / "export", change)

    with pytest.raises(TransferError, match=message):
        import_state(tmp_path / "export", tmp_path / "home_b" / "staging" / "replay.duckdb",
                     inbox=tmp_path / "home_b" / "inbox" / "replay")

    assert not (tmp_path / "escaped.jsonl").exists() and not (tmp_path / "home_b").exists()


def test_an_import_beside_another_historys_journal_is_refused(tmp_path, delivered_home, other_store):
    home_a, _ = delivered_home
    export_state(home_a / "staging" / "replay.duckdb", tmp_path / "export")
    other_store()
    target = tmp_path / "home_b" / "staging" / "replay.duckdb"
    target.parent.mkdir(parents=True)
    (target.parent / "replay.duckdb.replay.outcomes.jsonl").write_bytes(b'{"v": 1}\n')

    with pytest.raises(TransferError, match="outcome journals of another history"):
        import_state(tmp_path / "export", target)

    assert not target.exists()


def test_an_export_to_a_path_with_a_quote_works(tmp_path, delivered_home):
    home_a, _ = delivered_home
    quoted = tmp_path / "it's here"

    report = export_state(home_a / "staging" / "replay.duckdb", quoted)

    assert report.rows["planned_messages"] == CALLS and (quoted / MANIFEST).is_file()


def test_an_export_that_fails_part_way_leaves_no_folder(tmp_path, delivered_home, monkeypatch):
    """The disk fills while the inbox is copied, after the tables were written: neither DEST nor the
    folder built beside it remains, so the export can simply be run again."""
    home_a, _ = delivered_home

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shutil, "copy2", disk_full)
    with pytest.raises(OSError, match="No space left"):
        export_state(home_a / "staging" / "replay.duckdb", tmp_path / "export",
                     inbox=home_a / "inbox" / "replay")

    assert [p.name for p in tmp_path.iterdir() if "export" in p.name] == []


# A value per column type the state tables use, distinct per column (`i` is the column's position) and near
# the type's limits, so a column moved, truncated or rounded on the way shows; a type not here fails the
# test below, so a new column type is round-tripped before it ships.
_VALUES = {
    "VARCHAR": lambda i: f"'it''s column {i}\n, 数据'",
    "INTEGER": lambda i: f"{2**31 - 1 - i}", "SMALLINT": lambda i: f"{2**15 - 1 - i}",
    "BIGINT": lambda i: f"{2**62 + i}", "UBIGINT": lambda i: f"{2**63 + i}",
    "HUGEINT": lambda i: f"{2**100 + i}::HUGEINT", "DOUBLE": lambda i: f"{i}.000000000000125",
    "BOOLEAN": lambda i: "true" if i % 2 else "false",
    "DATE": lambda i: f"DATE '2026-12-01' + {i}", "DATE[]": lambda i: f"[DATE '2026-12-01' + {i}, NULL]",
    "BLOB": lambda i: f"'\\x{i % 256:02x}\\x00'::BLOB",
    "TIMESTAMP WITH TIME ZONE":
        lambda i: f"TIMESTAMPTZ '2026-12-01 10:00:00.123456+00' + INTERVAL {i} SECOND",
    "TIMESTAMP": lambda i: f"TIMESTAMP '2026-12-01 10:00:00.5' + INTERVAL {i} SECOND",
    "JSON": lambda i: f"'{{\"column\": {i}}}'",
}


def fill_every_state_table(con: duckdb.DuckDBPyConnection) -> dict[str, list[tuple]]:
    """Two rows in every base table of every registered schema (distinct values per column; NULL wherever a
    column allows it in the second); returns each table's rows, sorted."""
    for schema in store.registered():
        store.ensure(con, schema)
    base = {row[0] for row in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    tables = [t for s in store.registered() for t in s.tables if t in base]
    for table in tables:
        columns = con.execute("SELECT column_name, data_type, is_nullable FROM duckdb_columns() "
                              "WHERE table_name = ? ORDER BY column_index", [table]).fetchall()
        unknown = {kind for _, kind, _ in columns if kind not in _VALUES}
        assert not unknown, f"{table}: give the test a value for {unknown}"
        names = ", ".join(name for name, _, _ in columns)
        full = ", ".join(_VALUES[kind](i) for i, (_, kind, _) in enumerate(columns))
        sparse = ", ".join("NULL" if nullable else _VALUES[kind](i + 1)
                           for i, (_, kind, nullable) in enumerate(columns))
        con.execute(f"INSERT INTO {table} ({names}) VALUES ({full}), ({sparse})")
    assert base - {"state_schema_versions"} == set(tables)  # every table in a store is some schema's
    assert len(tables) >= 15
    return {t: con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall() for t in tables}


def test_every_registered_state_table_round_trips_value_for_value(tmp_path, other_store):
    """Every registered table's rows (`fill_every_state_table`) come back from export and import unchanged."""
    source, target = tmp_path / "a" / "all.duckdb", tmp_path / "b" / "all.duckdb"
    with staging(source) as con:
        before = fill_every_state_table(con)

    export_state(source, tmp_path / "export")
    other_store()
    import_state(tmp_path / "export", target)

    with staging(target, read_only=True) as con:
        after = {t: con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall() for t in before}
    assert after == before
