"""Regulations honoured by the engine: which subjects are regulated (`fold`), suppression of planned messages
about them, and an UNSUPPRESS lifting a suppression (engine/regulations.py). `ledger`: conftest's."""

from __future__ import annotations

import orjson

from segment_ops.engine.ledger import Ledger, MessageState, PlannedMessage
from segment_ops.engine.regulations import (
    Regulated,
    Regulation,
    fold,
    lift_suppressed,
    subject_hash,
    suppress_pending,
)

S = MessageState


def identify(user_id: str, n: int = 0, **traits) -> PlannedMessage:
    payload = {"type": "identify", "userId": user_id, "traits": {"n": n, **traits},
               "messageId": f"{user_id}-{n}"}
    return PlannedMessage(f"{user_id}-{n}", user_id, "identify", orjson.dumps(payload))


def status(ledger: Ledger, message_id: str) -> tuple[str, str | None]:
    return ledger.con.execute("SELECT status, last_error FROM ledger WHERE message_id = ?",
                              [message_id]).fetchone()


def rows(*requests: tuple[str, str]) -> list[tuple[str, str, str, str | None]]:
    """(subject, type) pairs in the order requested, as `fold` reads them."""
    return [(subject_hash(subject), kind, f"req-{i}", f"reg-{i}")
            for i, (subject, kind) in enumerate(requests)]


def test_a_suppression_blocks_until_an_unsuppress_lifts_it():
    regulated = fold(rows(("u1", "SUPPRESS_ONLY"), ("u2", "SUPPRESS_WITH_DELETE"), ("u1", "UNSUPPRESS")))
    assert not regulated.covers("u1") and regulated.covers("u2")
    assert set(regulated.lifted) == {subject_hash("u1")}
    assert regulated.blocked[subject_hash("u2")] == Regulation("SUPPRESS_WITH_DELETE", "req-1", "reg-1")


def test_a_deletion_blocks_for_ever_and_an_unsuppress_does_not_lift_it():
    regulated = fold(rows(("u1", "DELETE_ONLY"), ("u1", "UNSUPPRESS"), ("u1", "SUPPRESS_ONLY"),
                          ("u1", "UNSUPPRESS")))
    assert regulated.covers("u1") and not regulated.lifted
    assert regulated.blocked[subject_hash("u1")].regulation_type == "DELETE_ONLY"


def test_an_unsuppress_of_a_subject_never_suppressed_changes_nothing():
    regulated = fold(rows(("u1", "UNSUPPRESS")))
    assert regulated.empty


def test_a_suppression_after_an_unsuppress_blocks_again():
    regulated = fold(rows(("u1", "SUPPRESS_ONLY"), ("u1", "UNSUPPRESS"),
                          ("u1", "SUPPRESS_WITH_DELETE_INTERNAL")))
    assert regulated.covers("u1") and not regulated.lifted


def test_planned_messages_about_a_blocked_subject_are_suppressed_with_the_regulation(ledger):
    ledger.add_planned("s", [identify("u1"), identify("u2"), identify("u1", 1)])
    regulated = fold(rows(("u1", "SUPPRESS_ONLY")))
    done = suppress_pending(ledger, "s", regulated)
    assert done.messages == 2 and done.to_erase == ()  # a suppression without deletion erases nothing
    state, reason = status(ledger, "u1-0")
    assert state == S.SUPPRESSED and "SUPPRESS_ONLY" in reason and "reg-0" in reason and "req-0" in reason
    assert status(ledger, "u1-1")[0] == S.SUPPRESSED
    assert status(ledger, "u2-0")[0] == S.PLANNED
    counts = ledger.counts("s")
    assert (counts.suppressed, counts.pending, counts.rejected) == (2, 1, 0)  # apart from rejections


def test_a_deleting_regulation_names_the_subjects_to_erase(ledger):
    ledger.add_planned("s", [identify("u1"), identify("u2")])
    done = suppress_pending(ledger, "s", fold(rows(("u1", "DELETE_INTERNAL"))))
    assert done == type(done)(1, ("u1",))


def test_only_the_calls_userid_matches_not_a_trait_of_the_same_name(ledger):
    ledger.add_planned("s", [identify("u2", userId="u1", email="u1")])
    assert suppress_pending(ledger, "s", fold(rows(("u1", "SUPPRESS_ONLY")))).messages == 0
    assert status(ledger, "u2-0")[0] == S.PLANNED


def test_settled_messages_are_left_alone_and_nothing_is_read_without_regulations(ledger):
    ledger.add_planned("s", [identify("u1"), identify("u1", 1)])
    [seq] = ledger.con.execute("SELECT seq FROM planned_messages WHERE message_id = 'u1-0'").fetchone()
    ledger.log_outcomes("s", [(seq, S.DELIVERED.value, 1, None)])
    assert suppress_pending(ledger, "s", Regulated()).messages == 0
    assert suppress_pending(ledger, "s", fold(rows(("u1", "SUPPRESS_ONLY")))).messages == 1
    assert status(ledger, "u1-0")[0] == S.DELIVERED  # what Segment already has is not "suppressed"


def test_an_unsuppress_supersedes_the_suppressed_messages_so_the_rows_decide_again(ledger):
    ledger.add_planned("s", [identify("u1"), identify("u2")])
    suppress_pending(ledger, "s", fold(rows(("u1", "SUPPRESS_ONLY"), ("u2", "SUPPRESS_ONLY"))))
    lifted = lift_suppressed(ledger, "s", fold(rows(("u1", "SUPPRESS_ONLY"), ("u2", "SUPPRESS_ONLY"),
                                                    ("u1", "UNSUPPRESS"))))
    assert [message_id for message_id, _ in lifted] == ["u1-0"]
    state, reason = status(ledger, "u1-0")
    assert state == S.SUPERSEDED and "UNSUPPRESS" in reason
    assert status(ledger, "u2-0")[0] == S.SUPPRESSED


def test_a_forced_replan_never_resends_a_suppressed_message(ledger):
    ledger.add_planned("s", [identify("u1")])
    suppress_pending(ledger, "s", fold(rows(("u1", "DELETE_ONLY"))))
    counts = ledger.add_planned("s", [identify("u1")], force=True)
    assert status(ledger, "u1-0")[0] == S.SUPPRESSED and counts.planned == 0
