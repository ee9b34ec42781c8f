"""Fullstory's generated data: the users Fullstory has seen (a share of the demo world's identified users,
a few anonymous visitors, a few internal staff), their sessions over the last `WINDOW_DAYS` days, and every
session's events (page views, clicks, errors), of which the rage, dead and error clicks are what the demo's
Streams send (`streams.py`) and the warehouse's `fullstory.events` holds (`warehouse.py`).

Each session is a pure function of (seed, user, absolute UTC day), so the same day always holds the same
events whatever `now` is; `now` only moves the visible horizon. A user's Fullstory `uid` is the Segment
userId of the world's user (what the app passes to `FS.identify`), so it joins the demo warehouse's
`customers`. Fullstory ids and device/session ids are numbers derived from the seed (Fullstory's are opaque
numeric strings and int64s, spec §6 and the facts notes).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from datetime import timedelta
from functools import cached_property

import numpy as np

from segment_ops.sandbox.world import DAY_MS, DemoWorld, uniform

WINDOW_DAYS = 7  # the sessions and events shown: the last week before `now`
FS_ORG_ID = "o-SANDBOX-na1"  # Fullstory org ids read like `o-1A2B3C-na1`
APP_HOST = "app.example"  # the customer's web app the demo sessions browse
# Fullstory users who are the customer's own employees (QA, support): identified, never Segment customers.
INTERNAL_EMAIL_DOMAIN = "staff.example"
STREAM_NAMES = {"rage": "Rage Click", "dead": "Dead Click", "error": "Error Click"}
_SALT_FS_USER = 601  # `uniform` salt: which identified users Fullstory has seen (see world.py)
_FS_USER_SHARE = 0.2
_STAFF = (("staff_0001", "Quinn QA", "quinn.qa"), ("staff_0002", "Sam Support", "sam.support"),
          ("staff_0003", "Robin Release", "robin.release"))
_PAGES = ("/dashboard", "/reports", "/reports/new", "/settings/billing", "/settings/team", "/checkout",
          "/integrations", "/search")
_TARGETS = (("Save", "button.btn-primary"), ("Export CSV", "a.export-link"), ("Next", "button.pager-next"),
            ("Upgrade plan", "button.upgrade"), ("", "div.chart-canvas"), ("Invite", "button#invite"),
            ("Apply filter", "button.filter-apply"), ("Pay now", "button#pay"))
_ERRORS = ("TypeError: Cannot read properties of undefined (reading 'total')",
           "Error: Request failed with status code 500", "ReferenceError: chart is not defined")


@dataclass(frozen=True)
class FullstoryUser:
    """A person Fullstory knows: `id` is Fullstory's, `uid` the app's (empty for an anonymous visitor)."""

    id: str
    uid: str
    email: str
    display_name: str
    device_id: int
    kind: str  # customer | anonymous | staff
    created_ms: int  # no session before it

    def describe(self) -> dict:
        return {"id": self.id, "uid": self.uid, "email": self.email, "display_name": self.display_name,
                "kind": self.kind}


@dataclass(frozen=True)
class FullstoryEvent:
    """One event of a session, as Fullstory's raw export holds it (`event_type` lower case)."""

    event_id: str
    event_time_ms: int
    event_type: str  # identify | navigate | click | exception
    user: FullstoryUser
    device_id: int
    session_id: int
    view_id: int
    url: str
    target_text: str = ""
    raw_selector: str = ""
    rage_count: int = 0
    dead_count: int = 0
    error_kind: str = ""  # "" or exception (the Views' FS_ERROR_KIND values: unknown, console, exception)
    message: str = ""  # an exception's message

    @property
    def stream_name(self) -> str | None:
        """The demo stream this click triggers ("Rage Click", ...), None for any other event."""
        if self.event_type != "click":
            return None
        if self.rage_count:
            return STREAM_NAMES["rage"]
        if self.dead_count:
            return STREAM_NAMES["dead"]
        return STREAM_NAMES["error"] if self.error_kind else None

    @property
    def session_url(self) -> str:
        """The session replay URL (developer.fullstory.com/destinations/events: `/ui/ORG/session/d:s`)."""
        return session_url(self.device_id, self.session_id)


def fullstory_id(seed: int, key: str) -> str:
    """A stable Fullstory-style user id (a numeric string) for a uid or an anonymous device."""
    return str(int(hashlib.sha256(f"{seed}:fs:{key}".encode()).hexdigest()[:14], 16))


def session_url(device_id: int, session_id: int) -> str:
    return f"https://app.fullstory.com/ui/{FS_ORG_ID}/session/{device_id}%3A{session_id}"


def _int64(seed: int, *keys: object) -> int:
    """A positive int64 id drawn from the keys (device, session and view ids are int64s at Fullstory)."""
    digest = hashlib.sha256(":".join(map(str, (seed, *keys))).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 2


class FullstoryDemoData(DemoWorld):
    """The demo world as Fullstory records it: users, sessions and events of the last `WINDOW_DAYS` days."""

    @cached_property
    def _fs_users(self) -> list[FullstoryUser]:
        pop, seed = self._pop, self.config.seed
        keys = np.arange(len(pop.identified))
        seen = pop.identified & (pop.p_active > 0) & (uniform(seed, _SALT_FS_USER, keys) < _FS_USER_SHARE)
        users = []
        for i in np.flatnonzero(seen):
            uid = str(pop.user_id[i])
            users.append(FullstoryUser(
                id=fullstory_id(seed, uid), uid=uid, email=(pop.email[i] or "").strip(),
                display_name=pop.name[i] or "", device_id=_int64(seed, "device", uid), kind="customer",
                created_ms=int(pop.created_ms[i])))
        for k, (uid, name, local) in enumerate(_STAFF):
            users.append(FullstoryUser(fullstory_id(seed, uid), uid, f"{local}@{INTERNAL_EMAIL_DOMAIN}", name,
                                       _int64(seed, "device", uid), "staff", k))
        for k in range(max(3, round(0.01 * len(pop.identified)))):
            device = _int64(seed, "anonymous-device", k)
            users.append(FullstoryUser(fullstory_id(seed, f"anonymous:{device}"), "", "", "", device,
                                       "anonymous", 0))
        return users

    def fullstory_users(self) -> list[FullstoryUser]:
        """Every user Fullstory has seen: the customers it identified, staff, then anonymous visitors."""
        return list(self._fs_users)

    @cached_property
    def _fs_events(self) -> list[FullstoryEvent]:
        now_ms = self._now_ms
        start_ms = now_ms - WINDOW_DAYS * DAY_MS
        events: list[FullstoryEvent] = []
        for day in range(start_ms // DAY_MS, now_ms // DAY_MS + 1):
            for user in self._fs_users:
                events += self._session(user, day)
        return sorted((e for e in events if start_ms < e.event_time_ms <= now_ms),
                      key=lambda e: (e.event_time_ms, e.event_id))

    def fullstory_events(self) -> list[FullstoryEvent]:
        """Every event of the window (oldest first): an `identify` opening each identified session, then
        page views (`navigate`), clicks (some of them rage, dead or error clicks) and `exception`s."""
        return list(self._fs_events)

    def fullstory_frustration_events(self) -> list[FullstoryEvent]:
        """The rage, dead and error clicks of the window, oldest first: what the demo's Streams send."""
        return [e for e in self._fs_events if e.stream_name]

    def fullstory_late_events(self, count: int, late_by: timedelta, salt: str) -> list[FullstoryEvent]:
        """`count` extra frustration clicks that happened `late_by` before now on identified customers'
        sessions, as a disconnected client's reach Fullstory hours late; `salt` tells batches apart."""
        customers = [u for u in self._fs_users if u.kind == "customer"] or self._fs_users
        at_ms = self._now_ms - int(late_by.total_seconds() * 1000)
        late = []
        for k in range(count):
            rng = random.Random(f"{self.config.seed}:late:{salt}:{k}")
            user = customers[rng.randrange(len(customers))]
            session = _int64(self.config.seed, "late-session", salt, k)
            kind = rng.choice(("rage", "dead", "error"))
            text, selector = rng.choice(_TARGETS)
            late.append(FullstoryEvent(
                event_id=str(_int64(self.config.seed, "late-event", salt, k)), event_time_ms=at_ms - k * 1000,
                event_type="click", user=user, device_id=user.device_id, session_id=session,
                view_id=_int64(self.config.seed, "late-view", salt, k),
                url=f"https://{APP_HOST}{rng.choice(_PAGES)}", target_text=text, raw_selector=selector,
                rage_count=rng.randint(3, 8) if kind == "rage" else 0, dead_count=int(kind == "dead"),
                error_kind="exception" if kind == "error" else ""))
        return late

    def _session(self, user: FullstoryUser, day: int) -> list[FullstoryEvent]:
        """The user's session on absolute `day`, if any (at most one a day)."""
        seed = self.config.seed
        rng = random.Random(f"{seed}:fs-session:{user.device_id}:{day}")
        p_session = {"customer": 0.35, "staff": 0.6, "anonymous": 0.5}[user.kind]
        if rng.random() >= p_session:
            return []
        start_ms = day * DAY_MS + int((6 + rng.random() * 15) * 3_600_000)
        if start_ms < user.created_ms:
            return []
        # One user in eight has a bad week: frustration five times as often (the signals to find).
        prone = random.Random(f"{seed}:fs-prone:{user.device_id}").random() < 0.125
        rates = np.array([0.025, 0.02, 0.012]) * (5 if prone else 1)  # rage, dead, error per click
        session_id = _int64(seed, "session", user.device_id, day)
        events: list[FullstoryEvent] = []
        t = start_ms

        def add(event_type: str, view_id: int, url: str, **fields: object) -> None:
            events.append(FullstoryEvent(
                event_id=str(_int64(seed, "event", session_id, len(events))), event_time_ms=t,
                event_type=event_type, user=user, device_id=user.device_id, session_id=session_id,
                view_id=view_id, url=url, **fields))  # type: ignore[arg-type]

        for page_no in range(2 + rng.randrange(5)):
            url = f"https://{APP_HOST}{rng.choice(_PAGES)}"
            view_id = _int64(seed, "view", session_id, page_no)
            if page_no == 0 and user.uid:
                add("identify", view_id, url)
            add("navigate", view_id, url)
            for _ in range(rng.randrange(5)):
                t += 2_000 + int(rng.random() * 25_000)  # clicks at least 2 s apart
                text, selector = rng.choice(_TARGETS)
                roll = rng.random()
                if roll < rates[0]:
                    add("click", view_id, url, target_text=text, raw_selector=selector,
                        rage_count=rng.randint(3, 8))
                elif roll < rates[0] + rates[1]:
                    add("click", view_id, url, target_text=text, raw_selector=selector, dead_count=1)
                elif roll < rates.sum():
                    add("click", view_id, url, target_text=text, raw_selector=selector,
                        error_kind="exception")
                    t += 150
                    add("exception", view_id, url, message=rng.choice(_ERRORS))
                else:
                    add("click", view_id, url, target_text=text, raw_selector=selector)
            t += 5_000 + int(rng.random() * 60_000)
        return events
