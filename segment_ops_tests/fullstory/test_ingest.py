"""`signals.ingest` on its own: what a run reads from the inbox and how each event is decided once."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import duckdb

from segment_ops.syncs.fullstory import signals
from segment_ops.syncs.fullstory.inbox import Inbox
from segment_ops.syncs.fullstory.settings import IdentityConfig, load_config
from segment_ops.syncs.fullstory.streams import event_from_body

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def config():
    shipped = load_config()
    return replace(shipped, identity=IdentityConfig(uid_is_user_id=True, email_source=None))


def body(uid: str, minutes_ago: float) -> dict:
    return {"name": "Rage Click", "timestamp": (NOW - timedelta(minutes=minutes_ago)).isoformat(),
            "user": {"uid": uid}}


def test_an_event_delivered_in_two_hours_keeps_its_first_arrival(tmp_path):
    inbox = Inbox.for_home(tmp_path)
    event = event_from_body(body("usr_1", 70))
    first, again = NOW - timedelta(minutes=65), NOW - timedelta(minutes=5)  # two hour folders
    inbox.store(event, received_at=first)
    inbox.store(event, received_at=again)
    con = duckdb.connect()
    report = signals.SignalsRun()

    signals.ingest(con, inbox, config(), report, warehouse_url="", run_id="r1", now=NOW)

    assert report.events_read == 2 and report.new == 1 and len(report.read) == 2
    [(received,)] = con.execute(f"SELECT received_at FROM {signals.TABLE}").fetchall()
    assert received == first


def test_a_second_run_opens_no_file_it_decided_before(tmp_path, monkeypatch):
    inbox = Inbox.for_home(tmp_path)
    for n in range(3):
        inbox.store(event_from_body(body(f"usr_{n}", n)), received_at=NOW)
    con = duckdb.connect()
    signals.ingest(con, inbox, config(), signals.SignalsRun(), warehouse_url="", run_id="r1", now=NOW)
    inbox.store(event_from_body(body("usr_new", 0)), received_at=NOW)
    reread = signals.SignalsRun()
    seen: list = []
    original = Inbox.read_event
    monkeypatch.setattr(Inbox, "read_event", staticmethod(lambda path: seen.append(path) or original(path)))

    signals.ingest(con, inbox, config(), reread, warehouse_url="", run_id="r2", now=NOW)

    assert reread.events_read == 4 and reread.new == 1 and len(seen) == 1 and "event-" in str(seen[0])
    assert reread.statuses == {"send": 1}
