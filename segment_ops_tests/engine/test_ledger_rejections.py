"""Rejections kept by the ledger: every run's, or once per key and reason for rows every run rejects again."""

from __future__ import annotations

import duckdb

from segment_ops.engine.ledger import Ledger


def rejections(con: duckdb.DuckDBPyConnection, rows: list[tuple[str | None, str]]) -> str:
    con.execute("CREATE OR REPLACE TEMP TABLE found (record_key VARCHAR, source VARCHAR, reason VARCHAR, "
                "record VARCHAR)")
    con.executemany("INSERT INTO found VALUES (?, 'test', ?, NULL)", rows)
    return "found"


def test_once_per_reason_keeps_a_key_again_only_for_a_new_reason_and_never_crosses_syncs():
    con = duckdb.connect()
    ledger = Ledger(con)
    first = ledger.reject_relation("a", rejections(con, [("k1", "no id"), (None, "null key")]), run_id="r1",
                                   once_per_reason=True)
    again = ledger.reject_relation("a", rejections(con, [("k1", "no id"), (None, "null key"),
                                                         ("k1", "email")]),
                                   run_id="r2", once_per_reason=True)
    other_sync = ledger.reject_relation("b", rejections(con, [("k1", "no id")]), run_id="r2",
                                        once_per_reason=True)
    every_run = ledger.reject_relation("a", rejections(con, [("k1", "no id")]), run_id="r3")

    assert (first, again, other_sync, every_run) == (2, 1, 1, 1)
    assert con.execute("SELECT run_id, record_key, reason FROM rejected WHERE sync = 'a' "
                       "ORDER BY run_id, reason"
                       ).fetchall() == [("r1", "k1", "no id"), ("r1", None, "null key"),
                                        ("r2", "k1", "email"), ("r3", "k1", "no id")]
