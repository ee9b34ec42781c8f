"""Which line of a replayed file was planned as what, so a line edited since is noticed, not re-sent as a
new event nor silently ignored (issue 16).

A line is identified by its own messageId when it has one, else by (file name, line number). A line without
a messageId is planned under an id derived from its content (`prepare_call`), so its edit would be a new
message: it is "changed" when its (file, line) was planned as another id and its new content was never
planned. A line with a messageId is "changed" when its content differs from what was planned under that id
(the ledger keeps and sends what was planned first: an edit needs a new messageId).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import duckdb

from segment_ops.engine import store

# Append-only, like the ledger: the latest row (highest id) of an identity is what it was last planned as.
_CREATE = """
CREATE SEQUENCE IF NOT EXISTS replay_line_order;
CREATE TABLE IF NOT EXISTS replay_lines (
    id          BIGINT NOT NULL DEFAULT nextval('replay_line_order'),
    sync        VARCHAR NOT NULL,
    source      VARCHAR NOT NULL,   -- the file's name
    line_no     BIGINT NOT NULL,
    message_id  VARCHAR NOT NULL,
    own_id      BOOLEAN NOT NULL,   -- the line carried this messageId (else it was derived from the content)
    digest      VARCHAR,            -- own_id only: hash of the planned payload (a derived id is one already)
    run_id      VARCHAR,
    recorded_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp
);
"""
# Erasure (`engine/erasure.py`): the lines of an erased message go with its body (their digest is the body's);
# the file's other lines are still told apart, and the message itself is known to the ledger.
_ERASE_LINES = """
DELETE FROM replay_lines WHERE message_id IN (
    SELECT message_id FROM erased_messages e WHERE e.sync = replay_lines.sync);
"""
STATE = store.register(store.StateSchema(name="replay_lines", version=1, create=_CREATE,
                                         tables=("replay_line_order", "replay_lines"), erase=_ERASE_LINES))


@dataclass(frozen=True)
class ReplayLine:
    """One valid line of a chunk, as planned."""

    line_no: int
    message_id: str
    own_id: bool
    payload: bytes

    @property
    def digest(self) -> str | None:
        return hashlib.blake2b(self.payload, digest_size=16).hexdigest() if self.own_id else None


@dataclass(frozen=True)
class ChangedLine:
    """A line whose content differs from what was planned for it."""

    source: str  # file:line
    message_id: str | None  # the line's own messageId, if it has one

    @property
    def reason(self) -> str:
        if self.message_id is not None:
            return (f"messageId {self.message_id!r} was planned with other content; the ledger keeps what "
                    "was planned (--force sends that again): give an edited call a new messageId")
        return ("this line was planned with other content; not sent as a new event (--force sends it, "
                "and the earlier version stays in Segment)")


def is_new_file(con: duckdb.DuckDBPyConnection, sync: str, source: str) -> bool:
    """No line of a file of this name was planned before (asked before its first chunk is recorded)."""
    return not con.execute("SELECT count(*) FROM replay_lines WHERE sync = ? AND source = ?",
                           [sync, source]).fetchone()[0]


def find_changed(con: duckdb.DuckDBPyConnection, sync: str, source: str, lines: Sequence[ReplayLine], *,
                 new_file: bool = False) -> set[int]:
    """The positions in `lines` of those whose content changed since they were planned. Leaves the chunk,
    so annotated, in the temporary table `replay_chunk` for `record_lines`. `new_file` (`is_new_file`)
    spares the lookups where no line can have changed: a new file's lines without messageIds."""
    low = min((x.line_no for x in lines), default=0)
    high = max((x.line_no for x in lines), default=0)
    own = [(i, x.digest) for i, x in enumerate(lines) if x.own_id]  # usually none, or all
    con.execute(  # two long lists and two short ones: each list value costs its conversion
        """
        CREATE OR REPLACE TEMP TABLE replay_incoming AS
        SELECT n.ord, n.line_no, n.message_id, o.digest IS NOT NULL AS own_id, o.digest
        FROM (SELECT unnest(range(?)) AS ord, unnest(?::BIGINT[]) AS line_no,
                     unnest(?::VARCHAR[]) AS message_id) n
        LEFT JOIN (SELECT unnest(?::BIGINT[]) AS ord, unnest(?::VARCHAR[]) AS digest) o ON o.ord = n.ord
        """, [len(lines), [x.line_no for x in lines], [x.message_id for x in lines], [i for i, _ in own],
              [d for _, d in own]])
    if new_file and not own:
        con.execute("CREATE OR REPLACE TEMP TABLE replay_chunk AS "
                    "SELECT *, false AS changed, true AS is_new FROM replay_incoming")
        con.execute("DROP TABLE replay_incoming")
        return set()
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE replay_chunk AS
        WITH by_id AS (   -- own messageIds: what each was last planned as
            SELECT r.message_id, arg_max(r.digest, r.id) AS digest FROM replay_lines r
            WHERE r.sync = $sync AND r.own_id
              AND r.message_id IN (SELECT message_id FROM replay_incoming WHERE own_id)
            GROUP BY r.message_id),
        by_line AS (      -- lines without one: what each (file, line) was last planned as
            SELECT r.line_no, arg_max(r.message_id, r.id) AS message_id FROM replay_lines r
            WHERE r.sync = $sync AND NOT r.own_id AND r.source = $source AND r.line_no BETWEEN $low AND $high
            GROUP BY r.line_no),
        seen AS (         -- content planned before, from any line or file
            SELECT DISTINCT r.message_id FROM replay_lines r
            WHERE r.sync = $sync AND NOT r.own_id
              AND r.message_id IN (SELECT message_id FROM replay_incoming WHERE NOT own_id)),
        firsts AS (       -- a messageId twice in the chunk with other content is an edit too
            SELECT ord, first_value(digest) OVER (PARTITION BY message_id ORDER BY ord) AS digest,
                   row_number() OVER (PARTITION BY message_id ORDER BY ord) AS nth
            FROM replay_incoming WHERE own_id)
        SELECT c.*,
               CASE WHEN c.own_id THEN coalesce(i.digest, f.digest) <> c.digest
                    ELSE coalesce(l.message_id <> c.message_id AND s.message_id IS NULL, false)
               END AS changed,
               CASE WHEN c.own_id THEN i.message_id IS NULL AND f.nth = 1
                    ELSE l.message_id IS DISTINCT FROM c.message_id END AS is_new
        FROM replay_incoming c
        LEFT JOIN by_id i ON c.own_id AND i.message_id = c.message_id
        LEFT JOIN firsts f ON c.own_id AND f.ord = c.ord
        LEFT JOIN by_line l ON NOT c.own_id AND l.line_no = c.line_no
        LEFT JOIN seen s ON NOT c.own_id AND s.message_id = c.message_id
        """, {"sync": sync, "source": source, "low": low, "high": high})
    con.execute("DROP TABLE replay_incoming")
    return {row[0] for row in con.execute("SELECT ord FROM replay_chunk WHERE changed").fetchall()}


def record_lines(con: duckdb.DuckDBPyConnection, sync: str, source: str, *, force: bool,
                 run_id: str | None) -> None:
    """Remember what the lines of `replay_chunk` were planned as, where that is new: an own messageId seen
    for the first time, a (file, line) now holding other content. A changed line is not remembered (it is
    reported again next time) unless `force` planned it: a line without a messageId, as a new message."""
    con.execute(
        """
        INSERT INTO replay_lines (sync, source, line_no, message_id, own_id, digest, run_id)
        SELECT $sync, $source, line_no, message_id, own_id, digest, $run_id FROM replay_chunk
        WHERE is_new AND (NOT changed OR ($force AND NOT own_id))
        ORDER BY ord
        """, {"sync": sync, "source": source, "run_id": run_id, "force": force})
    con.execute("DROP TABLE replay_chunk")
