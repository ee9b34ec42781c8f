"""The ledger's one state machine: the steps the code takes are logged, any other step is refused whole."""

from __future__ import annotations

from dataclasses import asdict

import pytest

from segment_ops.engine.ledger import (
    AWAITING_ACK,
    DELIVERED,
    PENDING,
    REJECTED,
    SUPERSEDED,
    TERMINAL,
    TRANSITIONS,
    IllegalTransitionError,
    Ledger,
    LedgerCounts,
    MessageCounts,
    MessageState,
    PlannedMessage,
    UnknownStateError,
)
from segment_ops.engine.store import connect

S = MessageState


@pytest.fixture
def ledger(tmp_path):
    con = connect(tmp_path / "staging.duckdb")
    yield Ledger(con)
    con.close()


def plan(ledger, n, prefix="m", sync="s"):
    """Plan `n` messages; returns their seqs."""
    return list(ledger.add_planned(sync, [PlannedMessage(f"{prefix}{i}", f"k{i}", "identify", b"{}")
                                          for i in range(n)]).seqs)


def log(ledger, seq, *states, sync="s"):
    """Log `states` for one message, one call each (an awaiting one with a receipt of its own)."""
    for state in states:
        ledger.log_outcomes(sync, [(seq, state, 1, None, f"r:{seq}") if state == AWAITING_ACK
                                   else (seq, state, 1, None)])


def status(ledger, seq, sync="s"):
    return ledger.con.execute("SELECT status FROM ledger WHERE sync = ? AND seq = ?",
                              [sync, seq]).fetchone()[0]


def outcome_rows(ledger):
    return ledger.con.execute("SELECT count(*) FROM outcomes").fetchone()[0]


# A way from planned to each state, by legal steps only.
ROUTE = {S.PLANNED: [], S.VERIFIED: [S.DELIVERED, S.VERIFIED]} | {
    state: [state] for state in S if state not in (S.PLANNED, S.VERIFIED)}


def test_the_stored_words_are_those_files_already_hold():
    assert {state.name: state.value for state in S} == {
        "PLANNED": "pending", "IN_FLIGHT": "in_flight", "AWAITING_ACK": "awaiting_ack",
        "DELIVERED": "delivered", "VERIFIED": "verified", "REJECTED": "rejected", "SUPERSEDED": "superseded",
        "HELD": "held", "SUPPRESSED": "suppressed"}
    assert (PENDING, DELIVERED, REJECTED, AWAITING_ACK, SUPERSEDED) == (
        "pending", "delivered", "rejected", "awaiting_ack", "superseded")
    assert all(type(word) is str for word in (PENDING, DELIVERED, REJECTED, AWAITING_ACK, SUPERSEDED))


def test_verified_and_rejected_are_terminal_and_only_an_unsuppress_ends_a_suppression():
    assert {S.VERIFIED, S.REJECTED} == TERMINAL
    assert TRANSITIONS[S.SUPPRESSED] == {S.SUPERSEDED}


# Every step delivery, settling, the diff and governance take today, as they take it.
@pytest.mark.parametrize("steps", [
    [DELIVERED],  # the destination took it
    [REJECTED],  # it refused it
    [PENDING, PENDING, DELIVERED],  # retries ran out twice (pending with the error), then delivered
    [SUPERSEDED, PENDING, DELIVERED],  # superseded by a newer plan, revived, delivered
    [S.IN_FLIGHT, AWAITING_ACK], [S.IN_FLIGHT, DELIVERED], [S.IN_FLIGHT, REJECTED], [S.IN_FLIGHT, PENDING],
    [DELIVERED, S.VERIFIED],  # read back (issue 15)
    [S.HELD, PENDING], [S.HELD, SUPERSEDED],  # approved; replaced while held
    [S.SUPPRESSED], [S.SUPPRESSED, SUPERSEDED, PENDING],  # lifted by an UNSUPPRESS, revived by the diff
], ids=lambda steps: "-".join(steps))
def test_a_step_the_code_takes_is_logged(ledger, steps):
    [seq] = plan(ledger, 1)
    log(ledger, seq, *steps)
    assert status(ledger, seq) == steps[-1]


@pytest.mark.parametrize("answer", [DELIVERED, PENDING])
def test_an_awaited_message_settles_as_confirmed_or_to_be_sent_again(ledger, answer):
    [seq] = plan(ledger, 1)
    log(ledger, seq, AWAITING_ACK)
    assert ledger.settle_receipts("s", [f"r:{seq}"], answer) == 1
    assert status(ledger, seq) == answer


@pytest.mark.parametrize("state", [DELIVERED, REJECTED, AWAITING_ACK, SUPERSEDED, S.VERIFIED, S.HELD,
                                   S.IN_FLIGHT, PENDING])
def test_a_persons_reset_plans_a_message_again_from_any_state_but_suppressed(ledger, state):
    [seq] = plan(ledger, 1)
    log(ledger, seq, *ROUTE[S(state)])
    counts = ledger.add_planned("s", [PlannedMessage("m0", "k0", "identify", b"{}")], force=True)
    assert counts.planned == 1 and status(ledger, seq) == PENDING


def test_a_reset_leaves_a_suppressed_message_suppressed_and_plans_the_rest(ledger):
    seqs = plan(ledger, 2)
    log(ledger, seqs[0], S.SUPPRESSED)
    log(ledger, seqs[1], DELIVERED)
    again = [PlannedMessage("m0", "k0", "identify", b"{}"), PlannedMessage("m1", "k1", "identify", b"{}"),
             PlannedMessage("new", "k2", "identify", b"{}")]
    counts = ledger.add_planned("s", again, force=True)
    assert status(ledger, seqs[0]) == S.SUPPRESSED  # a regulation, not a person, lifts it
    assert status(ledger, seqs[1]) == PENDING
    assert (counts.planned, counts.already_known) == (2, 1)  # m1 again and the new one; m0 stays as it is


@pytest.mark.parametrize(("route", "step"), [
    ([DELIVERED], PENDING),  # delivered is never sent again without a person's reset
    ([REJECTED], DELIVERED),
    ([REJECTED], PENDING),
    ([DELIVERED], DELIVERED),  # a second answer for a message already delivered
    ([AWAITING_ACK], REJECTED),
    ([PENDING], S.VERIFIED),  # read back before it was delivered
    ([SUPERSEDED], DELIVERED),  # a superseded message is never sent
    ([S.SUPPRESSED], PENDING),
    ([DELIVERED, S.VERIFIED], DELIVERED),
], ids=lambda v: "-".join(v) if isinstance(v, list) else v)
def test_an_illegal_step_is_refused_naming_the_message_and_both_states(ledger, route, step):
    [seq] = plan(ledger, 1)
    log(ledger, seq, *route)
    before = MessageState(route[-1]).name.lower()
    after = MessageState(step).name.lower()
    with pytest.raises(IllegalTransitionError, match=f"sync 's': message 'm0' \\(seq {seq}\\) cannot go from "
                                                     f"{before} to {after}") as raised:
        log(ledger, seq, step)
    assert (raised.value.seq, raised.value.message_id, raised.value.before, raised.value.after) == (
        seq, "m0", route[-1], step)
    assert status(ledger, seq) == route[-1]


def test_an_illegal_step_logs_nothing_of_its_call(ledger):
    seqs = plan(ledger, 4)
    log(ledger, seqs[3], DELIVERED)
    before = outcome_rows(ledger)
    with pytest.raises(IllegalTransitionError, match="message 'm3'") as raised:
        ledger.log_outcomes("s", [(seqs[0], DELIVERED, 1, None), (seqs[1], AWAITING_ACK, 1, None, "c:1"),
                                  (seqs[3], PENDING, 1, "503"), (seqs[2], REJECTED, 1, "bad")])
    assert raised.value.message_id == "m3" and "nothing of that call was logged" in str(raised.value)
    assert outcome_rows(ledger) == before and ledger.awaiting_receipts("s") == []
    assert [status(ledger, seq) for seq in seqs] == [PENDING, PENDING, PENDING, DELIVERED]


def test_the_error_counts_the_other_illegal_outcomes_of_the_call(ledger):
    seqs = plan(ledger, 3)
    ledger.log_outcomes("s", [(seq, REJECTED, 1, "bad") for seq in seqs])
    with pytest.raises(IllegalTransitionError, match="2 other outcome"):
        ledger.log_outcomes("s", [(seq, DELIVERED, 1, None) for seq in seqs])


def test_outcomes_of_one_message_in_one_call_are_checked_in_order(ledger):
    first, second = plan(ledger, 2)
    ledger.log_outcomes("s", [(first, PENDING, 3, "503"), (first, DELIVERED, 1, None)])
    assert status(ledger, first) == DELIVERED
    with pytest.raises(IllegalTransitionError, match="from delivered to planned"):
        ledger.log_outcomes("s", [(second, DELIVERED, 1, None), (second, PENDING, 1, None)])
    assert status(ledger, second) == PENDING


def test_the_check_reads_the_state_left_by_earlier_calls_and_other_syncs_do_not_count(ledger):
    [seq] = plan(ledger, 1)
    [other] = plan(ledger, 1, sync="t")
    assert seq == other  # the same seq in another sync is another message
    log(ledger, other, DELIVERED, sync="t")
    log(ledger, seq, PENDING)  # legal in "s", whatever "t" did
    log(ledger, seq, DELIVERED)
    with pytest.raises(IllegalTransitionError):
        log(ledger, seq, PENDING)


@pytest.mark.parametrize("word", ["sent", "PENDING", "", None])
def test_an_unknown_state_is_refused(ledger, word):
    [seq] = plan(ledger, 1)
    with pytest.raises(UnknownStateError, match="no state of the ledger"):
        ledger.log_outcomes("s", [(seq, DELIVERED, 1, None), (seq, word, 1, None)])
    assert outcome_rows(ledger) == 0


def test_settling_refuses_a_state_that_cannot_follow_awaiting_ack(ledger):
    [seq] = plan(ledger, 1)
    log(ledger, seq, AWAITING_ACK)
    with pytest.raises(IllegalTransitionError, match="cannot go from awaiting_ack to rejected"):
        ledger.settle_receipts("s", [f"r:{seq}"], REJECTED)
    with pytest.raises(UnknownStateError):
        ledger.settle_receipts("s", [f"r:{seq}"], "confirmed")
    assert status(ledger, seq) == AWAITING_ACK


@pytest.mark.slow
def test_every_step_of_the_table_is_logged_and_every_other_refused(ledger):
    pairs = [(before, after) for before in S for after in S]
    seqs = plan(ledger, len(pairs))
    for seq, (before, after) in zip(seqs, pairs, strict=True):
        log(ledger, seq, *ROUTE[before])
        if after in TRANSITIONS[before]:
            log(ledger, seq, after)
            assert status(ledger, seq) == after
        else:
            with pytest.raises(IllegalTransitionError):
                log(ledger, seq, after)
            assert status(ledger, seq) == before


def test_a_state_member_may_be_logged_as_well_as_its_word(ledger):
    [seq] = plan(ledger, 1)
    ledger.log_outcomes("s", [(seq, MessageState.DELIVERED, 1, None)])
    assert status(ledger, seq) == DELIVERED


def test_counts_report_every_state_with_zeros_for_those_nothing_produced(ledger):
    seqs = plan(ledger, 10)
    for seq, state in zip(seqs, S, strict=False):
        log(ledger, seq, *ROUTE[state])

    counts = ledger.counts("s")

    assert asdict(counts) == {"pending": 2, "in_flight": 1, "awaiting_ack": 1, "delivered": 1, "verified": 1,
                              "rejected": 1, "superseded": 1, "held": 1, "suppressed": 1}
    plan(ledger, 3, sync="fresh")
    assert asdict(ledger.counts("fresh")) == dict.fromkeys(asdict(counts), 0) | {"pending": 3}


def test_existing_count_fields_keep_their_names_and_order():
    assert LedgerCounts(1, 2, 3, 4) == LedgerCounts(pending=1, delivered=2, rejected=3, awaiting_ack=4)
    assert MessageCounts(5, 1, 1, 1, 1, 1, 0) == MessageCounts(total=5, unplanned=1, pending=1, delivered=1,
                                                               rejected=1, awaiting_ack=1, superseded=0)


def test_window_counts_report_every_state_and_what_is_settled(ledger):
    seqs = plan(ledger, 9)
    for seq, state in zip(seqs, S, strict=True):
        log(ledger, seq, *ROUTE[state])
    ends = [S.DELIVERED, S.VERIFIED, S.REJECTED, S.SUPERSEDED, S.SUPPRESSED]
    ledger.con.execute(
        "CREATE TEMP TABLE groups AS SELECT 'm' || i AS message_id, "
        "CASE WHEN list_contains(?, i) THEN 'ended' ELSE 'open' END AS grp FROM range(9) t(i)",
        [[list(S).index(state) for state in ends]])

    counts = ledger.window_counts("s", "groups")

    assert counts["ended"] == MessageCounts(total=5, delivered=1, verified=1, rejected=1, superseded=1,
                                            suppressed=1)
    assert counts["ended"].settled
    assert counts["open"] == MessageCounts(total=4, pending=1, in_flight=1, awaiting_ack=1, held=1)
    assert not counts["open"].settled
