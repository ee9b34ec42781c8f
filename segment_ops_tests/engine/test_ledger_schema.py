"""The ledger's tables are registered with the state store: files of earlier releases open, keeping their
rows."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from segment_ops.engine import store
from segment_ops.engine.ledger import (
    AWAITING_ACK,
    DELIVERED,
    MATCHED,
    PENDING,
    REJECTED,
    STATE,
    Ledger,
    LedgerCounts,
    PlannedMessage,
    ReadBack,
)
from segment_ops.engine.store import connect

# The DDL of the release before the ledger was registered with the store (`git show 10eebf6:
# segment_ops/engine/ledger.py`, `_SCHEMA` then `_RECEIPTS`; one long line wrapped), copied so the test
# never follows the code.
PREVIOUS_RELEASE_DDL = """
CREATE TABLE IF NOT EXISTS planned_messages (
    sync        VARCHAR NOT NULL,
    seq         BIGINT NOT NULL,     -- planning order within the sync
    message_id  VARCHAR NOT NULL,    -- unique per sync: planning inserts only ids the table lacks
    record_key  VARCHAR,
    call_type   VARCHAR,
    payload     VARCHAR NOT NULL,
    planned_run VARCHAR,
    planned_at  TIMESTAMPTZ NOT NULL
    -- No PRIMARY KEY: DuckDB keeps such an index in memory, which at millions of messages would break
    -- the engine's memory bound. Uniqueness holds by construction (one writer, insert-if-absent).
);
CREATE SEQUENCE IF NOT EXISTS outcome_order;
CREATE TABLE IF NOT EXISTS outcomes (
    id        BIGINT NOT NULL DEFAULT nextval('outcome_order'),
    sync      VARCHAR NOT NULL,
    seq       BIGINT NOT NULL,
    status    VARCHAR NOT NULL,
    attempts  INTEGER NOT NULL,
    error     VARCHAR,
    logged_at TIMESTAMPTZ NOT NULL,
    receipt   VARCHAR              -- awaiting_ack only: the receipt of the send that took it
);
-- Files made before awaiting_ack existed get the column (NULL for every earlier outcome).
ALTER TABLE outcomes ADD COLUMN IF NOT EXISTS receipt VARCHAR;
CREATE TABLE IF NOT EXISTS receipt_settlements (
    sync       VARCHAR NOT NULL,
    receipt    VARCHAR NOT NULL,
    status     VARCHAR NOT NULL,     -- delivered (confirmed) or pending (re-opened, to be sent again)
    error      VARCHAR,
    settled_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS rejected (
    sync        VARCHAR NOT NULL,
    run_id      VARCHAR,
    record_key  VARCHAR,
    source      VARCHAR,
    reason      VARCHAR NOT NULL,
    record      VARCHAR,
    rejected_at TIMESTAMPTZ NOT NULL
);
CREATE OR REPLACE VIEW ledger AS
SELECT m.sync, m.seq, m.message_id, m.record_key, m.call_type, m.payload,
       coalesce(o.status, 'pending') AS status,
       coalesce(o.attempts, 0) AS attempts,
       o.last_error,
       CASE WHEN o.status = 'delivered' THEN o.delivered_at END AS delivered_at,
       m.planned_run, m.planned_at
FROM planned_messages m
LEFT JOIN (
    SELECT sync, seq, arg_max(status, id) AS status, sum(attempts) AS attempts,
           arg_max(error, id) AS last_error,
           max(logged_at) FILTER (WHERE status = 'delivered') AS delivered_at
    FROM outcomes GROUP BY sync, seq
) o ON o.sync = m.sync AND o.seq = m.seq;
CREATE TABLE receipts (
    sync     VARCHAR NOT NULL,
    receipt  VARCHAR NOT NULL,      -- unique per send (the destination makes it so)
    seq_low  BIGINT NOT NULL,       -- the batch's messages lie in [seq_low, seq_high]
    seq_high BIGINT NOT NULL,
    messages INTEGER NOT NULL,
    sent_at  TIMESTAMPTZ NOT NULL,  -- when the request carrying the batch began
    taken_at TIMESTAMPTZ NOT NULL   -- when its answer was recorded
);
"""

# What the previous release wrote for four messages: m0 delivered (after a 503), m1 rejected, m2 awaiting
# confirmation under receipt c:9 (with its receipts row), m3 never attempted; one row rejected at planning.
PREVIOUS_RELEASE_ROWS = """
INSERT INTO planned_messages VALUES
    ('s', 1, 'm0', 'k0', 'identify', '{"userId":"k0"}', 'r1', '2026-12-01 10:00:00+00'),
    ('s', 2, 'm1', 'k1', 'identify', '{"userId":"k1"}', 'r1', '2026-12-01 10:00:00+00'),
    ('s', 3, 'm2', 'k2', 'identify', '{"userId":"k2"}', 'r1', '2026-12-01 10:00:00+00'),
    ('s', 4, 'm3', 'k3', 'identify', '{"userId":"k3"}', 'r1', '2026-12-01 10:00:00+00');
INSERT INTO outcomes (sync, seq, status, attempts, error, logged_at, receipt) VALUES
    ('s', 1, 'pending', 3, '503', '2026-12-01 10:01:00+00', NULL),
    ('s', 1, 'delivered', 1, NULL, '2026-12-01 11:00:00+00', NULL),
    ('s', 2, 'rejected', 1, 'too big', '2026-12-01 11:00:00+00', NULL),
    ('s', 3, 'awaiting_ack', 1, NULL, '2026-12-01 11:00:00+00', 'c:9');
INSERT INTO receipts VALUES ('s', 'c:9', 3, 3, 1, '2026-12-01 10:59:59+00', '2026-12-01 11:00:00+00');
INSERT INTO rejected VALUES ('s', 'r1', 'k9', 'model', 'null key', '{}', '2026-12-01 10:00:00+00');
"""


@pytest.fixture
def previous_release_file(tmp_path):
    path = tmp_path / "staging.duckdb"
    con = connect(path)
    con.execute(PREVIOUS_RELEASE_DDL)
    con.execute(PREVIOUS_RELEASE_ROWS)
    con.close()
    return path


def statuses(ledger):
    return ledger.con.execute(
        "SELECT message_id, status, attempts, last_error FROM ledger ORDER BY seq").fetchall()


def test_a_file_of_the_previous_release_opens_with_its_messages_and_statuses(previous_release_file):
    con = connect(previous_release_file)
    versions = "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'state_schema_versions'"
    assert con.execute(versions).fetchone()[0] == 0  # made before versions were recorded

    ledger = Ledger(con)

    assert statuses(ledger) == [("m0", DELIVERED, 4, "503"), ("m1", REJECTED, 1, "too big"),
                                ("m2", AWAITING_ACK, 1, None), ("m3", PENDING, 0, None)]
    assert ledger.counts("s") == LedgerCounts(pending=1, delivered=1, rejected=1, awaiting_ack=1)
    assert [chunk for chunk in ledger.iter_pending("s")] == [[(4, '{"userId":"k3"}')]]
    assert ledger.rejected_since("s", "r1") == [("k9", "model", "null key")]
    assert store.schema_version(con, "ledger") == STATE.version == 5
    con.close()


def test_the_open_receipt_of_a_previous_release_file_is_kept_once_and_settles(previous_release_file):
    con = connect(previous_release_file)
    ledger = Ledger(con)

    [receipt] = ledger.awaiting_receipts("s")  # the migration's fill does not add c:9 a second time
    assert (receipt.receipt, receipt.messages) == ("c:9", 1)
    assert ledger.settle_receipts("s", ["c:9"], DELIVERED) == 1
    assert ledger.counts("s").delivered == 2 and ledger.awaiting_receipts("s") == []
    con.close()


def test_a_migrated_file_takes_new_outcomes_and_reopens_without_migrating_again(previous_release_file):
    con = connect(previous_release_file)
    Ledger(con).log_outcomes("s", [(4, DELIVERED, 1, None)])
    con.close()

    con = connect(previous_release_file)
    ledger = Ledger(con)
    assert ledger.counts("s") == LedgerCounts(pending=0, delivered=2, rejected=1, awaiting_ack=1)
    assert con.execute("SELECT count(*) FROM state_schema_versions WHERE name = 'ledger'").fetchone()[0] == 1
    con.close()


def test_a_file_older_than_the_receipt_column_gains_it_and_keeps_its_outcomes(tmp_path):
    con = connect(tmp_path / "staging.duckdb")
    con.execute(PREVIOUS_RELEASE_DDL.split("-- Files made before awaiting_ack")[0])  # the first tables
    con.execute("ALTER TABLE outcomes DROP COLUMN receipt")  # as they were before awaiting_ack
    con.execute("INSERT INTO planned_messages VALUES ('s', 1, 'm0', 'k0', 'identify', '{}', NULL, now())")
    con.execute("INSERT INTO outcomes (sync, seq, status, attempts, logged_at) "
                "VALUES ('s', 1, 'delivered', 1, now())")

    ledger = Ledger(con)

    assert "receipt" in [c for c, *_ in con.execute("DESCRIBE outcomes").fetchall()]
    assert statuses(ledger) == [("m0", DELIVERED, 1, None)] and ledger.awaiting_receipts("s") == []
    con.close()


def test_a_file_of_a_newer_ledger_version_is_refused(tmp_path):
    con = connect(tmp_path / "staging.duckdb")
    Ledger(con)
    con.execute("INSERT INTO state_schema_versions VALUES ('ledger', ?, now())", [STATE.version + 1])

    with pytest.raises(store.StateSchemaError, match="newer"):
        Ledger(con)
    con.close()


def test_a_version_2_file_gains_the_read_backs_compactions_and_counts_tables_and_keeps_its_outcomes(tmp_path):
    con = connect(tmp_path / "staging.duckdb")
    Ledger(con).add_planned("s", [PlannedMessage("m0", "k0", "identify", b"{}")])
    Ledger(con).log_outcomes("s", [(1, DELIVERED, 1, None)])
    con.execute("DROP TABLE read_backs")  # as a file of version 2 is
    con.execute("DROP TABLE ledger_compactions")
    con.execute("DROP TABLE ledger_counts")
    con.execute("DELETE FROM state_schema_versions WHERE name = 'ledger'")
    con.execute("INSERT INTO state_schema_versions VALUES ('ledger', 2, now())")

    ledger = Ledger(con)
    ledger.record_read_backs("s", [ReadBack(1, MATCHED)])

    assert store.schema_version(con, "ledger") == 5
    assert ledger.counts("s") == LedgerCounts(pending=0, delivered=0, rejected=0, verified=1)
    assert ledger.compact("s", settled_before=datetime.now(UTC)) == 1
    con.close()
