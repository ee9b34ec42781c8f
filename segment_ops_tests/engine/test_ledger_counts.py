"""Ledger.counts is kept and brought forward by what was planned and answered since; at every step it must
equal the count the `ledger` view gives by reading every outcome."""

from __future__ import annotations

import random

from segment_ops.engine.ledger import (
    AWAITING_ACK,
    DELIVERED,
    PENDING,
    REJECTED,
    SUPERSEDED,
    Ledger,
    MessageState,
)
from segment_ops.engine.store import connect
from segment_ops_tests.engine.test_ledger import messages


def by_view(ledger: Ledger, sync: str) -> dict[str, int]:
    rows = dict(ledger.con.execute("SELECT status, count(*) FROM ledger WHERE sync = ? GROUP BY status",
                                   [sync]).fetchall())
    return {state.value: rows.get(state.value, 0) for state in MessageState}


def test_counts_follow_plans_and_outcomes_step_by_step_as_the_full_count_does(ledger):
    rng = random.Random(7)
    planned: dict[str, list[int]] = {"a": [], "b": []}
    # Legal steps from a state (a subset of the ledger's machine, enough to move every counter both ways).
    steps = {PENDING: [DELIVERED, REJECTED, AWAITING_ACK, SUPERSEDED, PENDING],
             AWAITING_ACK: [DELIVERED, PENDING], SUPERSEDED: [PENDING], DELIVERED: [], REJECTED: []}
    state: dict[tuple[str, int], str] = {}
    for round_ in range(40):
        sync = rng.choice("ab")
        if rng.random() < 0.4 or not planned[sync]:
            seqs = ledger.add_planned(sync, messages(rng.randint(1, 6), prefix=f"{sync}{round_}_")).seqs
            planned[sync] += list(seqs)
            state.update({(sync, seq): PENDING for seq in seqs})
        else:
            chosen = rng.sample(planned[sync], k=min(len(planned[sync]), rng.randint(1, 5)))
            outcomes = []
            for seq in chosen:
                if options := steps[state[(sync, seq)]]:
                    step = rng.choice(options)
                    state[(sync, seq)] = step
                    outcomes.append((seq, step, 1, None, f"r{round_}_{seq}") if step == AWAITING_ACK
                                    else (seq, step, 1, None))
            if outcomes:
                ledger.log_outcomes(sync, outcomes)
        if rng.random() < 0.5:  # counted now and then, so some counts cover many steps at once
            for name in "ab":
                kept = ledger.counts(name)
                assert {s.value: getattr(kept, s.value) for s in MessageState} == by_view(ledger, name)


def test_counts_taken_on_a_reader_are_right_and_not_kept(ledger, tmp_path):
    seqs = ledger.add_planned("s", messages(4)).seqs
    ledger.counts("s")
    ledger.log_outcomes("s", [(seqs[0], DELIVERED, 1, None), (seqs[1], REJECTED, 1, "no")])
    ledger.con.close()
    reader = connect(tmp_path / "staging" / "replay.duckdb", read_only=True)  # the `ledger` fixture's file
    try:
        counts = Ledger(reader, create=False).counts("s")
        assert (counts.pending, counts.delivered, counts.rejected) == (2, 1, 1)
        kept = reader.execute("SELECT status, messages FROM ledger_counts WHERE sync = 's'").fetchall()
        assert kept == [("pending", 4)]  # as counted before the outcomes; the reader wrote nothing
    finally:
        reader.close()


def test_a_lost_cache_is_rebuilt_from_the_whole_ledger(ledger):
    seqs = ledger.add_planned("s", messages(3)).seqs
    ledger.log_outcomes("s", [(seqs[0], DELIVERED, 1, None)])
    ledger.counts("s")
    ledger.con.execute("DELETE FROM ledger_counts")
    counts = ledger.counts("s")
    assert (counts.pending, counts.delivered) == (2, 1)
