"""Deterministic demo world behind the sandbox emulators and the demo warehouse.

Two kinds of data, with different rules:

* **The population** (`users`, `accounts`) depends only on `DemoConfig` (seed + scale), never on
  `now`: its timestamps are absolute and lie between `POPULATION_START` and `POPULATION_AS_OF`, so
  rebuilding it later yields the same rows and a reverse-ETL diff sees no spurious changes.
* **Time series** (audit trail, Pendo usage and NPS answers, Heap segment membership) are pure
  functions of (seed, absolute time bucket): the same hour, day or 4-hour window always holds the
  same events, whatever `now` is. `now` only moves the visible horizon (nothing after it is shown,
  and a user is only active, or a Heap member, after `created_at`). Pendo usage is generated per
  UTC hour; a Pendo day is the sum of the hours of one day of the subscription's time zone.

Population rows are generated vectorised with `np.random.default_rng([seed, salt])`; time series
use a counter-based hash (splitmix64) of (seed, salt, key, bucket), so any bucket can be computed on
its own, in any order.

Realistic shapes and deliberately malformed records in `users` (the syncs must cope with them):

* anonymous-only visitors: `user_id` None, no name, no account (about 12%); a few of them are
  "leads" that left an email in a form, so the warehouse holds customer rows with a NULL user_id;
* identified users without email (about 5%), without name (about 2%), without account (about 4%),
  and deactivated users (`is_active` False, never active in Pendo);
* accounts with no users at all, and accounts whose users never show any Pendo activity;
* one email `"not-an-email"`;
* one email with upper case and surrounding spaces (`" Mixed.Case.<n>@Example.COM "`);
* one name with unicode and an emoji (`"Zoë 🚀 Ångström"`);
* one `created_at` (and `updated_at`) in the future (2099-01-01);
* one duplicated `user_id`: the last row of `users` repeats an earlier user with a changed email
  (`+new` tag) and a later `updated_at`, as a stale CDC copy would.

Nullable text columns (`user_id`, `email`, `name`, `account_id`, `plan`) are object columns holding
None, so `x is None` and `pd.isna(x)` both work; other text columns use pandas' `str` dtype.
"""

from __future__ import annotations

import gc
import hashlib
import math
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property, lru_cache, wraps
from typing import ParamSpec, TypeVar
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from segment_ops.config import SANDBOX_PENDO_TIMEZONE

POPULATION_START = datetime(2021, 1, 1, tzinfo=UTC)
POPULATION_AS_OF = datetime(2026, 10, 1, tzinfo=UTC)
AUDIT_RETENTION = timedelta(days=90)  # the Segment UI keeps 90 days of audit trail (spec §2)
HEAP_SYNC_WINDOW = timedelta(hours=4)  # Heap segment syncs run about every 4 hours (spec §3)
PENDO_ANONYMOUS_PREFIX = "_PENDO_T_"
PENDO_EVENT_KINDS = ("events", "pageEvents", "featureEvents", "trackEvents")
PENDO_NPS_GUIDE_ID = "gd_NpsQuarterly7Qm2Xc"
PENDO_NPS_POLL_ID = "pl_NpsScore0to10Jq4"


@dataclass(frozen=True)
class PendoApp:
    """One app of the demo's multi-app Pendo subscription (events, pages and features belong to an app;
    visitors and accounts to the subscription: support.pendo.io "Multi-app subscriptions")."""

    id: int
    name: str
    platform: str


# The default app is the subscription's first web app; -323232 is the id singer-io/tap-pendo's tests use for a
# single-app subscription's app. Some identified users also use one of the two mobile apps.
PENDO_APPS = (
    PendoApp(-323232, "Web App", "web"),
    PendoApp(5668600916475904, "iOS App", "ios"),
    PendoApp(5715999741083648, "Android App", "android"),
)
PENDO_DEFAULT_APP_ID = PENDO_APPS[0].id

_P = ParamSpec("_P")
_R = TypeVar("_R")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_HOUR_MS = 3_600_000
_DAY_MS = 24 * _HOUR_MS
_HEAP_WINDOW_MS = int(HEAP_SYNC_WINDOW.total_seconds() * 1000)
_FUTURE_CREATED_MS = 4_070_908_800_000  # 2099-01-01T00:00:00Z


@dataclass(frozen=True)
class DemoConfig:
    """Seed and size of the demo world; scale 1.0 is about 2,000 users and 150 accounts."""

    seed: int = 7
    scale: float = 1.0

    @property
    def n_users(self) -> int:
        return max(40, round(2000 * self.scale))

    @property
    def n_accounts(self) -> int:
        return max(10, round(150 * self.scale))


def _gc_paused(func: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run `func` with the cyclic GC paused: building a million small dicts otherwise triggers
    repeated full collections (about 4x slower), although such rows never form cycles."""

    @wraps(func)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return func(*args, **kwargs)
        finally:
            if was_enabled:
                gc.enable()

    return wrapper


class DemoData:
    """The demo world for one (seed, scale), seen at `now` (tz-aware, default: the current UTC time)."""

    def __init__(self, config: DemoConfig = DemoConfig(), now: datetime | None = None):
        if config.scale <= 0:
            raise ValueError(f"DemoConfig.scale must be positive, got {config.scale}")
        self.config = config
        self.now = _as_utc(now or datetime.now(UTC), "now")
        self._now_ms = _to_ms(self.now)
        self._acc = _build_accounts(config)
        self._pop = _build_users(config, self._acc)
        self.accounts: pd.DataFrame = self._acc.frame
        self.users: pd.DataFrame = self._pop.frame

    # ----------------------------------------------------------------- Segment audit trail (§2)

    @_gc_paused
    def audit_events(self, start: datetime, end: datetime) -> list[dict]:
        """Segment AuditEvents with start < timestamp <= min(end, now), newest first.

        Events older than the 90-day retention before `now` are not returned.
        """
        lo = max(_to_ms(_as_utc(start, "start")), self._now_ms - int(AUDIT_RETENTION.total_seconds() * 1000))
        hi = min(_to_ms(_as_utc(end, "end")), self._now_ms)
        events: list[dict] = []
        for hour in range(hi // _HOUR_MS, lo // _HOUR_MS - 1, -1):
            for ts_ms, event in reversed(_audit_hour(self.config.seed, self.config.scale, hour)):
                if lo < ts_ms <= hi:
                    events.append(dict(event))
        return events

    # ----------------------------------------------------------------------------- Pendo (§4)

    @_gc_paused
    def pendo_visitors(self) -> list[dict]:
        """Pendo visitor rows for every user created by `now` (anonymous ones as `_PENDO_T_<anonymous_id>`)."""
        pop = self._pop
        idx = np.flatnonzero(pop.created_ms <= self._now_ms)
        last = self._last_visit_ms
        firstvisit = pop.created_ms[idx]
        lastvisit = np.where(last[idx] >= 0, last[idx], firstvisit)
        lastupdated = np.maximum(np.minimum(pop.updated_ms[idx], self._now_ms), lastvisit)
        email = np.where(pop.identified[idx], pop.email[idx], None)  # the agent only knows identified visitors
        return [
            {
                "visitorId": vid,
                "accountId": acc,
                "metadata": {
                    "auto": {"firstvisit": fv, "lastvisit": lv, "lastupdated": lu},
                    "agent": {"name": name, "email": email},
                    "custom": {"role": role, "country": country},
                },
            }
            for vid, acc, fv, lv, lu, name, email, role, country in zip(
                pop.visitor_id[idx].tolist(),
                pop.account_id[idx].tolist(),
                firstvisit.tolist(),
                lastvisit.tolist(),
                lastupdated.tolist(),
                pop.name[idx].tolist(),
                email.tolist(),
                pop.role[idx].tolist(),
                pop.country[idx].tolist(),
                strict=True,
            )
        ]

    @_gc_paused
    def pendo_accounts(self) -> list[dict]:
        """Pendo account rows for every account created by `now`, including accounts nobody uses."""
        acc, pop = self._acc, self._pop
        visited = (self._last_visit_ms >= 0) & (pop.acc_idx >= 0)
        last = np.full(len(acc.ids), -1, dtype=np.int64)
        np.maximum.at(last, pop.acc_idx[visited], self._last_visit_ms[visited])
        idx = np.flatnonzero(acc.created_ms <= self._now_ms)
        firstvisit = acc.created_ms[idx]
        lastvisit = np.where(last[idx] >= 0, last[idx], firstvisit)
        lastupdated = np.maximum(np.minimum(acc.updated_ms[idx], self._now_ms), lastvisit)
        return [
            {
                "accountId": aid,
                "metadata": {
                    "auto": {"firstvisit": fv, "lastvisit": lv, "lastupdated": lu},
                    "agent": {"name": name},
                    "custom": {"planlevel": plan, "seats": seats},
                },
            }
            for aid, fv, lv, lu, name, plan, seats in zip(
                acc.ids[idx].tolist(),
                firstvisit.tolist(),
                lastvisit.tolist(),
                lastupdated.tolist(),
                acc.names[idx].tolist(),
                acc.plans[idx].tolist(),
                acc.seats[idx].tolist(),
                strict=True,
            )
        ]

    @_gc_paused
    def pendo_events(self, kind: str, first_ms: int, last_ms: int, period: str = "dayRange", *,
                     timezone: str = SANDBOX_PENDO_TIMEZONE, apps: Collection[int] | None = None) -> list[dict]:
        """Usage rows per visitor and app (and page / feature / track type) per bucket overlapping
        [first_ms, last_ms) that ended by `now` (Pendo reports a bucket once it is processed).

        Day buckets start at midnight in `timezone`, the subscription's (spec §7: whole-hour zones; a DST
        day is 23 or 25 hours), hour buckets at the top of the hour; a day row is the sum of that day's
        hour rows. Every row carries its `appId`; `apps` limits the rows to those app ids (None: all).
        """
        if kind not in PENDO_EVENT_KINDS:
            raise ValueError(f"unknown Pendo event source {kind!r}; expected one of {PENDO_EVENT_KINDS}")
        if period not in ("dayRange", "hourRange"):
            raise ValueError(f"unknown Pendo timeSeries period {period!r}; expected dayRange or hourRange")
        edges = self._bucket_edges(first_ms, last_ms, period, ZoneInfo(timezone))
        if len(edges) < 2:
            return []
        lo, hi = int(edges[0]), int(edges[-1])
        wanted = np.array([i for i, app in enumerate(PENDO_APPS) if apps is None or app.id in apps], dtype=np.int64)
        parts = []
        for day in range(lo // _DAY_MS, (hi - 1) // _DAY_MS + 1):
            rows = _split_apps(self.config.seed, self._day_activity(day, self._active_candidates), day,
                               self._mobile_app)
            rows = {k: v[np.isin(rows["app"], wanted)] for k, v in rows.items()}
            if kind != "events":
                rows = _split_items(self.config.seed, rows, day, kind)
            rows = _expand_hours(rows, day)
            keep = (rows["bucket"] >= lo) & (rows["bucket"] < hi)
            parts.append({k: v[keep] for k, v in rows.items()})
        rows = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        keys = ("bucket", "visitor", "app") + (("item",) if kind != "events" else ())
        if period == "dayRange":
            rows["bucket"] = edges[np.searchsorted(edges, rows["bucket"], side="right") - 1]
        rows = _sum_by(rows, keys)
        pop = self._pop
        visitors = rows["visitor"]
        app_ids = np.array([app.id for app in PENDO_APPS], dtype=np.int64)
        columns: dict[str, list] = {
            "visitorId": pop.visitor_id[visitors].tolist(),
            "accountId": pop.account_id[visitors].tolist(),
            "appId": app_ids[rows["app"]].tolist(),
            "day" if period == "dayRange" else "hour": rows["bucket"].tolist(),
            "numEvents": rows["events"].tolist(),
            "numMinutes": rows["minutes"].tolist(),
        }
        if kind != "events":
            columns[_ITEM_FIELDS[kind]] = _item_ids(kind)[rows["item"]].tolist()
        names = list(columns)
        return [dict(zip(names, values, strict=True)) for values in zip(*columns.values(), strict=True)]

    def pendo_features(self, apps: Collection[int] | None = None) -> list[dict]:
        """The tagged Pendo features (`GET /api/v1/feature`): `{"id", "name", "kind", "appId"}` of `apps`
        (None: every app), each app's most used first."""
        return [{"id": fid, "name": name, "kind": "Feature", "appId": PENDO_APPS[app].id}
                for fid, name, app in zip(_item_ids("featureEvents").tolist(), _item_names("featureEvents"),
                                          _item_apps("featureEvents").tolist(), strict=True)
                if apps is None or PENDO_APPS[app].id in apps]

    def _bucket_edges(self, first_ms: int, last_ms: int, period: str, zone: ZoneInfo) -> np.ndarray:
        """Boundaries b0 < b1 < ... of the buckets [b_i, b_i+1) that overlap [first_ms, last_ms) and ended by
        `now` (nobody was active before POPULATION_START, so nothing starts earlier)."""
        start = max(first_ms, _to_ms(POPULATION_START))
        edges: list[int] = []
        if period == "hourRange":
            bucket = start // _HOUR_MS * _HOUR_MS
            while bucket < last_ms and bucket + _HOUR_MS <= self._now_ms:
                edges.append(bucket)
                bucket += _HOUR_MS
            return np.array(edges + [bucket] if edges else [], dtype=np.int64)
        day = datetime.fromtimestamp(start / 1000, UTC).astimezone(zone).date()
        begin = _to_ms(datetime(day.year, day.month, day.day, tzinfo=zone))
        while begin < last_ms:
            day += timedelta(days=1)
            end = _to_ms(datetime(day.year, day.month, day.day, tzinfo=zone))
            if end > self._now_ms:
                break
            edges.append(begin)
            begin = end
        return np.array(edges + [begin] if edges else [], dtype=np.int64)

    @_gc_paused
    def pendo_poll_events(self, first_ms: int, last_ms: int, apps: Collection[int] | None = None) -> list[dict]:
        """NPS answers (0-10) given in [first_ms, last_ms) and by `now`, oldest first.

        About a third of active users in used accounts answer the quarterly NPS guide, each on a
        fixed 90-day rhythm; accounts in a usage dip answer lower. The NPS guide runs in the default
        app, so `apps` (None: all) without it yields no answers.
        """
        seed, pop = self.config.seed, self._pop
        hi = min(last_ms, self._now_ms + 1)
        idx = self._nps_respondents
        if hi <= first_ms or not len(idx) or (apps is not None and PENDO_DEFAULT_APP_ID not in apps):
            return []
        period = 90 * _DAY_MS
        phase = (_uniform(seed, _SALT_NPS_PHASE, idx) * period).astype(np.int64)
        k_first = -((phase - first_ms) // period)  # ceil((first - phase) / period)
        k_last = -((phase - hi) // period)  # exclusive
        counts = np.maximum(k_last - k_first, 0)
        who = np.repeat(idx, counts)
        k = np.repeat(k_first, counts) + _ragged_arange(counts)
        when = np.repeat(phase, counts) + k * period
        ok = when >= pop.created_ms[who]
        who, k, when = who[ok], k[ok], when[ok]
        acc = pop.acc_idx[who]
        dip = self._acc.decline_factor(acc, when // _DAY_MS) < 1
        noise = _uniform(seed, _SALT_NPS_SCORE, who, k) * 4 - 2
        score = np.clip(np.rint(self._acc.nps_base[acc] + noise - 4 * dip), 0, 10).astype(np.int64)
        order = np.lexsort((who, when))
        return [
            {
                "visitorId": vid,
                "accountId": aid,
                "appId": PENDO_DEFAULT_APP_ID,
                "time": t,
                "guideId": PENDO_NPS_GUIDE_ID,
                "pollId": PENDO_NPS_POLL_ID,
                "response": r,
            }
            for vid, aid, t, r in zip(
                pop.visitor_id[who[order]].tolist(),
                pop.account_id[who[order]].tolist(),
                when[order].tolist(),
                score[order].tolist(),
                strict=True,
            )
        ]

    # ------------------------------------------------------------------------------ Heap (§3)

    def heap_segments(self) -> list[dict]:
        """The Heap segments (cohorts) of the demo environment: `{"id", "name"}`."""
        return [{"id": s.id, "name": s.name} for s in _HEAP_SEGMENTS]

    def heap_segment_members(self, segment_id: int, at: datetime) -> list[str]:
        """Sorted Heap identities in the segment during the 4-hour sync window containing `at`.

        Identities are what Heap's identity property holds: mostly emails, some internal user ids,
        plus a few Heap-only identities that map to no Segment user. A few % of members enter or
        exit from one window to the next; within a window membership is fixed.
        """
        segment = next((s for s in _HEAP_SEGMENTS if s.id == segment_id), None)
        if segment is None:
            raise KeyError(f"unknown Heap segment id {segment_id}")
        at_ms = _to_ms(_as_utc(at, "at"))
        window = at_ms // _HEAP_WINDOW_MS
        pop, seed = self._pop, self.config.seed
        users = np.flatnonzero(pop.identified & (pop.created_ms <= at_ms))
        p = np.concatenate([segment.propensity(self, users, at_ms // _DAY_MS), np.full(len(pop.heap_only), 0.3)])
        keys = np.concatenate([users, len(pop.identified) + np.arange(len(pop.heap_only))])
        # Each identity keeps its draw for a cycle of 2-14 days (12-84 windows) with its own phase,
        # so only the identities whose cycle rolls over in a window can enter or exit there.
        cycle = 12 + (_uniform(seed, _SALT_HEAP_CYCLE, segment.id, keys) * 73).astype(np.int64)
        phase = (_uniform(seed, _SALT_HEAP_PHASE, segment.id, keys) * cycle).astype(np.int64)
        member = _uniform(seed, _SALT_HEAP_MEMBER, segment.id, keys, (window + phase) // cycle) < p
        identities = np.concatenate([pop.heap_identity[users], pop.heap_only])
        return sorted(identities[member].tolist())

    def heap_identity_map(self) -> pd.DataFrame:
        """Heap identity -> Segment user_id for every identified user (Heap-only identities are absent)."""
        pop = self._pop
        idx = np.flatnonzero(pop.identified)
        return pd.DataFrame(
            {"identity": pop.heap_identity[idx], "user_id": pop.user_id[idx]}, dtype="str"
        ).reset_index(drop=True)

    # -------------------------------------------------------------------------------- helpers

    @cached_property
    def _active_candidates(self) -> np.ndarray:
        """Users that can ever be active in Pendo (active, not in an account that never uses the app)."""
        pop = self._pop
        return np.flatnonzero((pop.p_active > 0) & ~self._acc.dead_of(pop.acc_idx))

    @cached_property
    def _mobile_app(self) -> np.ndarray:
        """Per user, the index in PENDO_APPS of the mobile app they also use (0: the web app only); about 18%
        of identified users use the iOS app, 12% the Android app."""
        pop = self._pop
        u = _uniform(self.config.seed, _SALT_MOBILE_APP, np.arange(len(pop.identified)))
        app = np.where(u < 0.18, 1, np.where(u < 0.30, 2, 0))
        return np.where(pop.identified, app, 0).astype(np.int64)

    @cached_property
    def _nps_respondents(self) -> np.ndarray:
        """Identified, active users in accounts that use the app who answer the NPS guide."""
        pop, candidates = self._pop, self._active_candidates
        answers = _uniform(self.config.seed, _SALT_NPS_WHO, candidates) < 0.35
        return candidates[answers & pop.identified[candidates] & (pop.acc_idx[candidates] >= 0)]

    @cached_property
    def _last_visit_ms(self) -> np.ndarray:
        """Epoch ms of each user's last visit by `now` within 120 days, or -1 if none."""
        last = np.full(len(self._pop.identified), -1, dtype=np.int64)
        pending = self._active_candidates
        today = self._now_ms // _DAY_MS
        for day in range(today, today - 121, -1):
            if not len(pending):
                break
            rows = self._day_activity(day, pending)
            completed_hours = (self._now_ms - day * _DAY_MS) // _HOUR_MS
            last_hour = np.minimum(rows["h0"] + rows["span"] - 1, completed_hours - 1)
            seen = last_hour >= rows["h0"]
            who = rows["visitor"][seen]
            minute = (_uniform(self.config.seed, _SALT_LAST_MINUTE, who, day) * 59).astype(np.int64)
            last[who] = day * _DAY_MS + last_hour[seen] * _HOUR_MS + minute * 60_000
            pending = pending[~np.isin(pending, who, assume_unique=True)]
        return last

    def _day_activity(self, day: int, idx: np.ndarray) -> dict[str, np.ndarray]:
        """Which of users `idx` use the app on `day` (epoch day), with counts and session hours."""
        pop, seed = self._pop, self.config.seed
        weekend = (day + 3) % 7 >= 5  # epoch day 0 was a Thursday
        prob = pop.p_active[idx] * (0.25 if weekend else 1.0) * self._acc.decline_factor(pop.acc_idx[idx], day)
        active = (_uniform(seed, _SALT_ACTIVE, idx, day) < prob) & (day > pop.created_ms[idx] // _DAY_MS)
        who = idx[active]
        span = 1 + (_uniform(seed, _SALT_SPAN, who, day) * 3).astype(np.int64)
        h0 = pop.tz_hour[who] + (_uniform(seed, _SALT_START, who, day) * 6).astype(np.int64)
        draw = -np.log1p(-_uniform(seed, _SALT_EVENTS, who, day))
        events = span + (draw * pop.events_mean[who]).astype(np.int64)
        pace = 0.5 + _uniform(seed, _SALT_MINUTES, who, day)
        minutes = np.clip(np.rint(events * pop.minutes_per_event[who] * pace), span, 60 * span).astype(np.int64)
        return {"visitor": who, "events": events, "minutes": minutes, "h0": h0, "span": span}


# --------------------------------------------------------------------------------- population

_SALT_ACCOUNTS, _SALT_USERS, _SALT_AUDIT, _SALT_ACTORS = 101, 102, 103, 104
_SALT_ACTIVE, _SALT_SPAN, _SALT_START, _SALT_EVENTS, _SALT_MINUTES = 201, 202, 203, 204, 205
_SALT_ITEM_COUNT, _SALT_ITEM_PICK, _SALT_ITEM_SHARE, _SALT_LAST_MINUTE = 206, 207, 208, 209
_SALT_MOBILE_APP, _SALT_APP_SHARE = 210, 211
_SALT_NPS_WHO, _SALT_NPS_PHASE, _SALT_NPS_SCORE = 301, 302, 303
_SALT_HEAP_CYCLE, _SALT_HEAP_PHASE, _SALT_HEAP_MEMBER = 401, 402, 403

_PLANS = np.array(["free", "starter", "pro", "enterprise"], dtype=object)
_PLAN_WEIGHTS = [0.35, 0.30, 0.25, 0.10]
_SEAT_PRICE = np.array([0.0, 15.0, 45.0, 80.0])
_INDUSTRIES = ["Software", "Retail", "Financial Services", "Healthcare", "Media", "Education",
               "Manufacturing", "Logistics", "Travel", "Non-profit"]
_NAME_PREFIXES = ["Blue", "North", "Bright", "Silver", "Cedar", "Granite", "Harbor", "Lumen", "Nova",
                  "Oak", "Pioneer", "Quartz", "River", "Summit", "Tidal", "Vertex", "Willow", "Zephyr",
                  "Acme", "Atlas", "Beacon", "Copper", "Delta", "Ember", "Falcon", "Golden", "Iron",
                  "Juniper", "Kestrel", "Maple"]
_NAME_NOUNS = ["Analytics", "Bank", "Bikes", "Cloud", "Commerce", "Dynamics", "Foods", "Freight",
               "Games", "Health", "Insights", "Labs", "Learning", "Logic", "Media", "Mobility",
               "Networks", "Outdoors", "Pay", "Robotics", "Security", "Software", "Studios", "Systems",
               "Travel", "Ventures", "Works", "Energy", "Goods", "Data"]
_NAME_SUFFIXES = ["Inc", "LLC", "Ltd", "GmbH", "SAS", "BV", "Co", "Group"]
# (display, ascii for emails) pairs: display names carry real-world unicode on purpose.
_FIRST_NAMES = [("Olivia", "olivia"), ("Liam", "liam"), ("Maria", "maria"), ("José", "jose"),
                ("Zoë", "zoe"), ("Søren", "soren"), ("Łukasz", "lukasz"), ("Aisha", "aisha"),
                ("Chen", "chen"), ("Priya", "priya"), ("Noah", "noah"), ("Emma", "emma"),
                ("Mateo", "mateo"), ("Yuki", "yuki"), ("Fatima", "fatima"), ("Lucas", "lucas"),
                ("Amélie", "amelie"), ("Omar", "omar"), ("Ingrid", "ingrid"), ("Kwame", "kwame"),
                ("Sofia", "sofia"), ("Ethan", "ethan"), ("Hana", "hana"), ("Raj", "raj")]
_LAST_NAMES = [("Smith", "smith"), ("García", "garcia"), ("Müller", "muller"), ("Nguyen", "nguyen"),
               ("Kowalski", "kowalski"), ("Okafor", "okafor"), ("Johansson", "johansson"),
               ("Rossi", "rossi"), ("Tanaka", "tanaka"), ("Patel", "patel"), ("Brown", "brown"),
               ("Dubois", "dubois"), ("O'Brien", "obrien"), ("Silva", "silva"), ("Kim", "kim"),
               ("Jensen", "jensen"), ("Haddad", "haddad"), ("Novak", "novak"), ("Ivanova", "ivanova"),
               ("Wright", "wright")]
_PERSONAL_DOMAINS = ["mail.example", "inbox.example", "post.example"]
_COUNTRIES = np.array(["US", "GB", "DE", "FR", "CA", "AU", "NL", "SE", "BR", "IN", "JP", "ES"], dtype=object)
_COUNTRY_WEIGHTS = [0.34, 0.12, 0.10, 0.07, 0.06, 0.05, 0.04, 0.03, 0.05, 0.06, 0.04, 0.04]
# First UTC working hour per country (US-ish afternoon, Europe morning, APAC night): Pendo sessions.
_COUNTRY_TZ_HOUR = np.array([14, 8, 8, 8, 14, 0, 8, 8, 12, 4, 0, 8])
_ROLES = np.array(["admin", "member", "member", "member", "viewer"], dtype=object)


@dataclass(frozen=True, eq=False)
class _Accounts:
    frame: pd.DataFrame
    ids: np.ndarray  # object
    names: np.ndarray
    plans: np.ndarray
    seats: np.ndarray
    created_ms: np.ndarray
    updated_ms: np.ndarray
    domains: np.ndarray
    has_users: np.ndarray  # bool: accounts meant to have users
    dead: np.ndarray  # bool: accounts whose users never use the app
    volatile: np.ndarray  # bool: accounts with periodic sharp usage dips
    dip_phase: np.ndarray  # int days
    level: np.ndarray  # usage multiplier
    nps_base: np.ndarray

    # Volatile accounts drop to 10% usage for 14 days every 6 weeks; their phases are spread evenly,
    # so at any `now` about a third of them are in a dip that started in the last two weeks.
    DIP_PERIOD_DAYS = 42
    DIP_DAYS = 14

    def dead_of(self, acc_idx: np.ndarray) -> np.ndarray:
        return (acc_idx >= 0) & self.dead[np.maximum(acc_idx, 0)]

    def decline_factor(self, acc_idx: np.ndarray, day: int | np.ndarray) -> np.ndarray:
        """Usage multiplier of each account on absolute `day` (1 for users without an account)."""
        safe = np.maximum(acc_idx, 0)
        in_dip = self.volatile[safe] & ((day + self.dip_phase[safe]) % self.DIP_PERIOD_DAYS < self.DIP_DAYS)
        factor = np.where(in_dip, 0.1, 1.0) * np.where(self.dead[safe], 0.0, 1.0)
        return np.where(acc_idx >= 0, factor, 1.0)


@dataclass(frozen=True, eq=False)
class _Users:
    frame: pd.DataFrame
    # One entry per distinct user (the duplicated frame row is not repeated here).
    identified: np.ndarray
    user_id: np.ndarray  # object, None for anonymous
    visitor_id: np.ndarray  # Pendo visitorId
    email: np.ndarray
    name: np.ndarray
    account_id: np.ndarray
    acc_idx: np.ndarray  # -1 without account
    country: np.ndarray
    plan: np.ndarray
    role: np.ndarray
    created_ms: np.ndarray
    updated_ms: np.ndarray
    p_active: np.ndarray  # weekday probability of using the app
    events_mean: np.ndarray
    minutes_per_event: np.ndarray
    tz_hour: np.ndarray
    heap_identity: np.ndarray  # object, None for anonymous
    heap_only: np.ndarray  # identities known to Heap but to no Segment user


def _build_accounts(config: DemoConfig) -> _Accounts:
    n = config.n_accounts
    rng = np.random.default_rng([config.seed, _SALT_ACCOUNTS])
    number = np.arange(1, n + 1)
    ids = _text(pc.binary_join_element_wise("acc_", pc.utf8_lpad(pa.array(number).cast(pa.string()), 5, "0"), ""))
    prefix = rng.integers(0, len(_NAME_PREFIXES), n)
    noun = rng.integers(0, len(_NAME_NOUNS), n)
    suffix = rng.integers(0, len(_NAME_SUFFIXES), n)
    prefixes, nouns = pa.array(_NAME_PREFIXES), pa.array(_NAME_NOUNS)
    names = _text(pc.binary_join_element_wise(
        prefixes.take(prefix), nouns.take(noun), pa.array(_NAME_SUFFIXES).take(suffix), " "
    ))
    domains = _text(pc.utf8_lower(pc.binary_join_element_wise(prefixes.take(prefix), nouns.take(noun), ".example", "")))
    plan_idx = rng.choice(len(_PLANS), size=n, p=_PLAN_WEIGHTS)
    seat_median = np.array([2, 8, 35, 300])[plan_idx]
    seats = np.maximum(1, np.rint(seat_median * rng.lognormal(0, 0.5, n))).astype(np.int64)
    mrr = np.round(seats * _SEAT_PRICE[plan_idx] * rng.uniform(0.7, 1.0, n), 2)
    start_ms, as_of_ms = _to_ms(POPULATION_START), _to_ms(POPULATION_AS_OF)
    created_ms = start_ms + (rng.random(n) * (as_of_ms - 120 * _DAY_MS - start_ms)).astype(np.int64)
    updated_ms = as_of_ms - ((as_of_ms - created_ms) * rng.random(n) ** 3).astype(np.int64)

    # Activity profile: a few accounts get no users, a few have users who never use the app,
    # some dip periodically, the rest are steady at their own level.
    order = rng.permutation(n)
    n_empty, n_dead = max(1, round(0.06 * n)), max(1, round(0.08 * n))
    has_users = np.ones(n, dtype=bool)
    has_users[order[:n_empty]] = False
    dead = np.zeros(n, dtype=bool)
    dead[order[n_empty:n_empty + n_dead]] = True
    steady = order[n_empty + n_dead:]
    volatile_idx = steady[: max(3, round(0.35 * len(steady)))]
    volatile = np.zeros(n, dtype=bool)
    volatile[volatile_idx] = True
    dip_phase = np.zeros(n, dtype=np.int64)
    dip_phase[volatile_idx] = (np.arange(len(volatile_idx)) * _Accounts.DIP_PERIOD_DAYS) // len(volatile_idx)
    level = rng.lognormal(0, 0.35, n)
    nps_base = np.clip(rng.normal(7.5, 1.5, n), 2, 10)

    frame = pd.DataFrame({
        "account_id": pd.Series(ids, dtype="str"),
        "name": pd.Series(names, dtype="str"),
        "plan": pd.Series(_PLANS[plan_idx], dtype="str"),
        "seats": seats,
        "industry": pd.Series(np.array(_INDUSTRIES, dtype=object)[rng.integers(0, len(_INDUSTRIES), n)], dtype="str"),
        "mrr": mrr,
        "created_at": _timestamps(created_ms),
        "updated_at": _timestamps(updated_ms),
    })
    return _Accounts(
        frame=frame, ids=ids, names=names, plans=_PLANS[plan_idx], seats=seats, created_ms=created_ms,
        updated_ms=updated_ms, domains=domains, has_users=has_users, dead=dead, volatile=volatile,
        dip_phase=dip_phase, level=level, nps_base=nps_base,
    )


def _build_users(config: DemoConfig, acc: _Accounts) -> _Users:
    n = config.n_users
    rng = np.random.default_rng([config.seed, _SALT_USERS])
    number = pa.array(np.arange(1, n + 1)).cast(pa.string())
    anonymous = rng.random(n) < 0.12
    anonymous[:2] = [False, True]  # tiny worlds still get both kinds
    identified = ~anonymous
    lead = anonymous & (rng.random(n) < 0.05)
    lead[np.flatnonzero(anonymous)[0]] = True
    null = pa.scalar(None, pa.string())

    user_id = pc.if_else(identified, pc.binary_join_element_wise("usr_", pc.utf8_lpad(number, 7, "0"), ""), null)
    anonymous_id = _uuid4_strings(rng.integers(0, 256, (n, 16), dtype=np.uint8))

    # Accounts: skewed sizes (a few big customers), never into the accounts meant to stay empty.
    populated = np.flatnonzero(acc.has_users)
    weights = 1.0 / (1.0 + rng.permutation(len(populated))) ** 0.8
    acc_idx = populated[rng.choice(len(populated), size=n, p=weights / weights.sum())]
    acc_idx[anonymous | (rng.random(n) < 0.04)] = -1
    has_acc = acc_idx >= 0
    safe_acc = np.maximum(acc_idx, 0)
    account_id = np.where(has_acc, acc.ids[safe_acc], None)
    plan = np.where(has_acc, acc.plans[safe_acc], "free").astype(object)
    plan[anonymous] = None

    first = rng.integers(0, len(_FIRST_NAMES), n)
    last = rng.integers(0, len(_LAST_NAMES), n)
    first_display, first_ascii = (pa.array([pair[i] for pair in _FIRST_NAMES]).take(first) for i in (0, 1))
    last_display, last_ascii = (pa.array([pair[i] for pair in _LAST_NAMES]).take(last) for i in (0, 1))
    has_name = identified & (rng.random(n) >= 0.02)
    name = _text(pc.if_else(has_name, pc.binary_join_element_wise(first_display, last_display, " "), null))
    personal = pa.array(_PERSONAL_DOMAINS).take(rng.integers(0, len(_PERSONAL_DOMAINS), n))
    domain = pc.if_else(has_acc, pa.array(acc.domains, pa.string()).take(safe_acc), personal)
    local = pc.if_else(
        lead,
        pc.binary_join_element_wise("lead", number, ""),
        pc.binary_join_element_wise(first_ascii, ".", last_ascii, number, ""),
    )
    has_email = (identified & (rng.random(n) >= 0.05)) | lead
    email = _text(pc.if_else(has_email, pc.binary_join_element_wise(local, domain, "@"), null))

    country_idx = rng.choice(len(_COUNTRIES), size=n, p=_COUNTRY_WEIGHTS)
    country = pa.array(_COUNTRIES.tolist()).take(country_idx)
    start_ms, as_of_ms = _to_ms(POPULATION_START), _to_ms(POPULATION_AS_OF)
    origin = np.where(has_acc, acc.created_ms[safe_acc], start_ms)
    origin[anonymous] = as_of_ms - 180 * _DAY_MS
    created_ms = origin + (rng.random(n) * (as_of_ms - origin)).astype(np.int64)
    updated_ms = as_of_ms - ((as_of_ms - created_ms) * rng.random(n) ** 3).astype(np.int64)
    is_active = anonymous | (rng.random(n) < 0.92)

    p_active = np.where(has_acc, rng.beta(2, 3, n) * acc.level[safe_acc], rng.beta(1.5, 4, n))
    p_active = np.where(anonymous, 0.04, np.clip(p_active, 0, 0.95))
    p_active[~is_active] = 0.0
    heap_by_user_id = ~has_email | (rng.random(n) < 0.1)  # Heap identity: the email, else the internal id
    role = _ROLES[rng.integers(0, len(_ROLES), n)]
    role[anonymous] = None

    # Malformed records (see the module docstring), on distinct ordinary identified users.
    ordinary = np.flatnonzero(identified & has_email & has_name & has_acc & ~lead)
    bad_email, messy_email, emoji_name, future, duplicated = rng.choice(ordinary, 5, replace=False)
    email[bad_email] = "not-an-email"
    email[messy_email] = f" Mixed.Case.{messy_email + 1}@Example.COM "
    name[emoji_name] = "Zoë 🚀 Ångström"
    created_ms[future] = updated_ms[future] = _FUTURE_CREATED_MS

    user_id_text = _text(user_id)
    heap_identity = np.where(heap_by_user_id, user_id_text, email)
    heap_identity[anonymous] = None
    n_heap_only = max(3, round(0.003 * identified.sum()))
    heap_only = np.array([f"former.user{k}@mail.example" for k in range(1, n_heap_only + 1)], dtype=object)

    rows = np.append(np.arange(n), duplicated)  # the stale duplicate row goes last
    frame = pd.DataFrame({
        "user_id": pd.Series(user_id_text[rows], dtype=object),
        "anonymous_id": pd.Series(anonymous_id.take(rows), dtype="str"),
        "email": pd.Series(np.append(email, email[duplicated].replace("@", "+new@", 1)), dtype=object),
        "name": pd.Series(name[rows], dtype=object),
        "account_id": pd.Series(account_id[rows], dtype=object),
        "plan": pd.Series(plan[rows], dtype=object),
        "country": pd.Series(country.take(rows), dtype="str"),
        "created_at": _timestamps(created_ms[rows]),
        "updated_at": _timestamps(np.append(updated_ms, updated_ms[duplicated] + 3 * _DAY_MS)),
        "is_active": is_active[rows],
    })
    pendo_anonymous = pc.binary_join_element_wise(PENDO_ANONYMOUS_PREFIX, anonymous_id, "")
    return _Users(
        frame=frame, identified=identified, user_id=user_id_text,
        visitor_id=_text(pc.if_else(identified, user_id, pendo_anonymous)), email=email, name=name,
        account_id=account_id, acc_idx=acc_idx, country=_COUNTRIES[country_idx], plan=plan, role=role,
        created_ms=created_ms, updated_ms=updated_ms, p_active=p_active,
        events_mean=rng.lognormal(np.log(18), 0.5, n), minutes_per_event=rng.uniform(0.3, 1.2, n),
        tz_hour=_COUNTRY_TZ_HOUR[country_idx], heap_identity=heap_identity, heap_only=heap_only,
    )


# -------------------------------------------------------------------------------- Heap segments


@dataclass(frozen=True)
class _HeapSegment:
    id: int
    name: str
    rule: str

    def propensity(self, data: DemoData, users: np.ndarray, day: int) -> np.ndarray:
        """Probability that each of `users` is in this segment in a membership cycle drawn on `day`."""
        pop = data._pop
        if self.rule == "power":
            return np.where(pop.p_active[users] > 0, 0.03 + 0.4 * pop.p_active[users], 0.0)
        if self.rule == "free":
            return np.where(pop.plan[users] == "free", 0.9, 0.01)
        if self.rule == "enterprise_admins":
            return np.where((pop.plan[users] == "enterprise") & (pop.role[users] == "admin"), 0.8, 0.0)
        acc_idx = pop.acc_idx[users]  # churn risk: unused accounts and accounts in a usage dip
        return np.where(data._acc.decline_factor(acc_idx, day) < 1, np.where(data._acc.dead_of(acc_idx), 0.6, 0.5), 0.03)


_HEAP_SEGMENTS = (
    _HeapSegment(1338065, "Power Users", "power"),
    _HeapSegment(1338066, "Free Customers", "free"),
    _HeapSegment(1338071, "Enterprise Admins", "enterprise_admins"),
    _HeapSegment(1338084, "Churn Risk", "churn"),
)


# --------------------------------------------------------------------------------- Pendo items


@dataclass(frozen=True, eq=False)
class _ItemKind:
    """One app's catalogue of one kind of tagged item (pages, features or track types)."""

    salt: int
    app: int  # index in PENDO_APPS
    offset: int  # index of this catalogue's first item among the kind's items of every app
    names: tuple[str, ...]
    ids: np.ndarray
    cum_weights: np.ndarray
    share: float  # part of a visitor-day's events that hit tagged items of this kind
    row_rate: float  # part of active visitor-days with any such event


_ITEM_FIELDS = {"pageEvents": "pageId", "featureEvents": "featureId", "trackEvents": "trackTypeId"}
_FEATURE_NAMES = ("Create Report", "Export CSV", "Filter", "Share Dashboard", "Invite User", "Connect Integration",
                  "Schedule Email", "Upgrade Button")
# Per kind: (salt, share, row_rate, web app's names, each mobile app's names).
_ITEM_CATALOGUES = {
    "pageEvents": (1, 0.85, 1.0, ("Dashboard", "Reports", "Settings", "Integrations", "Billing", "Team", "Onboarding",
                                  "Search", "Alerts", "Help Center"),
                   ("Home", "Scan", "Inbox", "Profile", "Settings")),
    "featureEvents": (2, 0.4, 0.9, _FEATURE_NAMES, ("Scan Receipt", "Push Opt-in", "Offline Sync")),
    "trackEvents": (3, 0.15, 0.5, ("report_created", "export_completed", "user_invited", "integration_connected",
                                   "plan_upgraded"), ("receipt_scanned", "push_opened")),
}


@lru_cache(maxsize=8)
def _catalogues(kind: str) -> tuple[_ItemKind, ...]:
    """The catalogues of `kind`, one per app, with stable ids and a popularity skew (first name most used).
    The web app's ids hash the name alone; a mobile app's hash its platform too."""
    salt, share, row_rate, web, mobile = _ITEM_CATALOGUES[kind]
    out, offset = [], 0
    for index, app in enumerate(PENDO_APPS):
        names = web if app.platform == "web" else mobile
        keys = names if app.platform == "web" else tuple(f"{app.platform}:{n}" for n in names)
        ids = np.array([_b62(hashlib.blake2b(k.encode(), digest_size=16).digest(), 20) for k in keys], dtype=object)
        weights = 1.0 / np.arange(1, len(names) + 1)
        out.append(_ItemKind(salt + 10 * index, index, offset, tuple(names), ids, np.cumsum(weights) / weights.sum(),
                             share, row_rate))
        offset += len(names)
    return tuple(out)


def _item_ids(kind: str) -> np.ndarray:
    return np.concatenate([c.ids for c in _catalogues(kind)])


def _item_names(kind: str) -> list[str]:
    return [name for c in _catalogues(kind) for name in c.names]


def _item_apps(kind: str) -> np.ndarray:
    return np.concatenate([np.full(len(c.ids), c.app, dtype=np.int64) for c in _catalogues(kind)])


def _split_apps(seed: int, rows: dict[str, np.ndarray], day: int, mobile_app: np.ndarray) -> dict[str, np.ndarray]:
    """Each visitor-day row as the web app's row plus, for users of a mobile app, that app's share (20-60% of the
    day's events and minutes); rows left with no events are dropped. Adds the `app` column."""
    who = rows["visitor"]
    app = mobile_app[who]
    share = np.where(app > 0, 0.2 + 0.4 * _uniform(seed, _SALT_APP_SHARE, who, day), 0.0)
    mobile_events = np.floor(rows["events"] * share).astype(np.int64)
    mobile_minutes = np.rint(rows["minutes"] * share).astype(np.int64)
    web = {**rows, "events": rows["events"] - mobile_events,
           "minutes": np.maximum(rows["minutes"] - mobile_minutes, 1), "app": np.zeros(len(who), dtype=np.int64)}
    mobile = {**rows, "events": mobile_events, "minutes": np.maximum(mobile_minutes, 1), "app": app}
    keep_web, keep_mobile = web["events"] > 0, mobile["events"] > 0
    return {k: np.concatenate([web[k][keep_web], mobile[k][keep_mobile]]) for k in web}


def _split_items(seed: int, rows: dict[str, np.ndarray], day: int, kind: str) -> dict[str, np.ndarray]:
    """Spread each visitor-day's events over 1-3 of its app's pages/features/track types (merged if repeated);
    `item` is the index among the kind's items of every app."""
    parts = [_split_app_items(seed, {k: v[rows["app"] == spec.app] for k, v in rows.items()}, day, spec)
             for spec in _catalogues(kind)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _split_app_items(seed: int, rows: dict[str, np.ndarray], day: int, spec: _ItemKind) -> dict[str, np.ndarray]:
    who = rows["visitor"]
    u = _uniform(seed, _SALT_ITEM_SHARE, spec.salt, who, day)
    events = np.floor(rows["events"] * spec.share + u).astype(np.int64)
    events[u >= spec.row_rate] = 0
    minutes = np.maximum(1, np.rint(rows["minutes"] * spec.share)).astype(np.int64)
    k = 1 + (_uniform(seed, _SALT_ITEM_COUNT, spec.salt, who, day) * 3).astype(np.int64)
    row = np.repeat(np.arange(len(who)), k)
    slot = _ragged_arange(k)
    pick = _uniform(seed, _SALT_ITEM_PICK, spec.salt, who[row], day, slot)
    item = np.searchsorted(spec.cum_weights, pick, side="right")
    kk = k[row]
    ev = events[row] // kk + (slot < events[row] % kk)
    mi = minutes[row] // kk + (slot < minutes[row] % kk)
    # Merge repeated picks of one item within a visitor-day, then drop empty rows.
    key = row * len(spec.ids) + item
    uniq, inverse = np.unique(key, return_inverse=True)
    ev_sum = np.bincount(inverse, weights=ev, minlength=len(uniq)).astype(np.int64)
    mi_sum = np.bincount(inverse, weights=mi, minlength=len(uniq)).astype(np.int64)
    keep = ev_sum > 0
    src = (uniq // len(spec.ids))[keep]
    out = {name: values[src] for name, values in rows.items() if name not in ("events", "minutes")}
    out.update(events=ev_sum[keep], minutes=np.maximum(mi_sum[keep], 1),
               item=spec.offset + (uniq % len(spec.ids))[keep])
    return out


def _sum_by(rows: dict[str, np.ndarray], keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """`rows` summed (events, minutes) per distinct `keys`, ordered by them."""
    order = np.lexsort(tuple(rows[k] for k in reversed(keys)))
    ordered = {k: rows[k][order] for k in (*keys, "events", "minutes")}
    n = len(order)
    if not n:
        return ordered
    new = np.zeros(n, dtype=bool)
    new[0] = True
    for k in keys:
        new[1:] |= ordered[k][1:] != ordered[k][:-1]
    starts = np.flatnonzero(new)
    out = {k: ordered[k][starts] for k in keys}
    out["events"] = np.add.reduceat(ordered["events"], starts)
    out["minutes"] = np.add.reduceat(ordered["minutes"], starts)
    return out


def _expand_hours(rows: dict[str, np.ndarray], day: int) -> dict[str, np.ndarray]:
    """Spread each day row evenly over its session hours; hours left with no events are dropped."""
    span = rows["span"]
    row = np.repeat(np.arange(len(span)), span)
    slot = _ragged_arange(span)
    s = span[row]
    events = rows["events"][row] // s + (slot < rows["events"][row] % s)
    minutes = np.minimum(rows["minutes"][row] // s + (slot < rows["minutes"][row] % s), 60)
    out = {k: v[row] for k, v in rows.items() if k not in ("events", "minutes")}
    out.update(events=events, minutes=np.maximum(minutes, 1), bucket=day * _DAY_MS + (rows["h0"][row] + slot) * _HOUR_MS)
    keep = events > 0
    return {k: v[keep] for k, v in out.items()}


# --------------------------------------------------------------------------------- audit trail

# (type, resourceType, weight)
_AUDIT_TYPES = [
    ("Source Updated", "source", 10), ("Source Created", "source", 1), ("Source Deleted", "source", 0.3),
    ("Destination Updated", "destination", 10), ("Destination Created", "destination", 1.5),
    ("Destination Deleted", "destination", 0.3), ("Destination Filter Updated", "destination", 2),
    ("Tracking Plan Updated", "tracking_plan", 5), ("Workspace Role Updated", "user", 1),
    ("Workspace User Invited", "user", 0.5), ("Source Regulation Created", "regulation", 2),
    ("Workspace Regulation Created", "regulation", 0.5), ("Access Token Created", "token", 0.3),
    ("Audience Updated", "audience", 3), ("Computed Trait Updated", "computed_trait", 1),
    ("Function Updated", "function", 1),
]
_AUDIT_RESOURCES = {
    "source": ["web-app", "ios-app", "android-app", "marketing-site", "backend-api", "heap-cohorts",
               "pendo-accounts", "warehouse-reverse-etl"],
    "destination": ["Amplitude", "Braze", "Google Analytics 4", "Mixpanel", "Salesforce",
                    "Webhooks (Actions)", "Heap", "Pendo", "Snowflake"],
    "tracking_plan": ["Web Tracking Plan", "Mobile Tracking Plan"],
    "audience": ["High Intent Visitors", "Churn Risk Accounts", "Trial Ending Soon"],
    "computed_trait": ["Lifetime Value", "Last Seen At", "Favourite Feature"],
    "function": ["enrich-clearbit", "mask-pii"],
    "token": ["segment-ops reader", "terraform", "ci-deploy"],
}
_WORKSPACE_PEOPLE = ["priya.nair", "tom.becker", "ana.souza", "li.wei", "sam.okafor", "eva.lindqvist",
                     "marc.dupont", "jordan.lee", "nina.kovac", "omar.haddad"]
_AUDIT_TOKEN_ACTORS = ["Public API token: terraform", "Public API token: segment-ops", "Segment"]


@lru_cache(maxsize=2400)  # 100 days of hours: the whole retention window of one world
def _audit_hour(seed: int, scale: float, hour: int) -> tuple[tuple[int, dict], ...]:
    """The audit events of one absolute hour, oldest first, as (epoch ms, event) pairs."""
    weekday = (hour // 24 + 3) % 7 < 5
    business = 8 <= hour % 24 < 18
    rate = 2.5 * math.sqrt(max(scale, 0.25)) * (0.3 if not weekday else 2.0 if business else 0.5)
    rng = np.random.default_rng([seed, _SALT_AUDIT, hour])
    count = int(rng.poisson(rate))
    if not count:
        return ()
    offsets = np.sort(rng.integers(0, _HOUR_MS, count))
    weights = np.array([w for _, _, w in _AUDIT_TYPES])
    kinds = rng.choice(len(_AUDIT_TYPES), size=count, p=weights / weights.sum())
    people = _workspace_people(seed)
    events = []
    for i in range(count):
        ts_ms = hour * _HOUR_MS + int(offsets[i])
        event_type, resource_type, _ = _AUDIT_TYPES[kinds[i]]
        event_id = _b62(hashlib.blake2b(f"{seed}:{ts_ms}:{i}".encode(), digest_size=20).digest(), 27)
        if resource_type == "user":
            resource_name = people[int(rng.integers(len(people)))]
            resource_id = _resource_id(seed, resource_type, resource_name)
        elif resource_type == "regulation":
            resource_name = _AUDIT_RESOURCES["source"][int(rng.integers(len(_AUDIT_RESOURCES["source"])))]
            resource_id = "reg_" + event_id[:22]
        else:
            names = _AUDIT_RESOURCES[resource_type]
            resource_name = names[int(rng.integers(len(names)))]
            resource_id = _resource_id(seed, resource_type, resource_name)
        event = {"id": event_id, "timestamp": _iso_ms(ts_ms), "type": event_type}
        if rng.random() < 0.8:
            person = people[int(rng.integers(len(people)))]
            event.update(actor=person, actorEmail=person)
        else:
            event["actor"] = _AUDIT_TOKEN_ACTORS[int(rng.integers(len(_AUDIT_TOKEN_ACTORS)))]
        event.update(resourceId=resource_id, resourceType=resource_type, resourceName=resource_name)
        events.append((ts_ms, event))
    return tuple(events)


@lru_cache(maxsize=64)
def _workspace_people(seed: int) -> list[str]:
    rng = np.random.default_rng([seed, _SALT_ACTORS])
    chosen = rng.choice(len(_WORKSPACE_PEOPLE), size=6, replace=False)
    return [f"{_WORKSPACE_PEOPLE[i]}@segment-ops-demo.example" for i in sorted(chosen)]


def _resource_id(seed: int, resource_type: str, name: str) -> str:
    return _b62(hashlib.blake2b(f"{seed}:{resource_type}:{name}".encode(), digest_size=16).digest(), 22)


# ------------------------------------------------------------------------------------ utilities

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a fast, well-mixed bijection on uint64 (array ops wrap silently)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _uniform(*keys: int | np.ndarray) -> np.ndarray:
    """Uniform [0, 1) floats that are a pure function of the (broadcast) integer keys."""
    h = np.zeros(1, dtype=np.uint64)
    for key in keys:
        h = _mix64((h ^ np.asarray(key).astype(np.uint64)) + _GOLDEN)
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _ragged_arange(counts: np.ndarray) -> np.ndarray:
    """Concatenated aranges: [3, 2] -> [0, 1, 2, 0, 1]."""
    ends = np.cumsum(counts)
    return np.arange(ends[-1] if len(ends) else 0) - np.repeat(ends - counts, counts)


def _uuid4_strings(raw: np.ndarray) -> pa.Array:
    """Format an (n, 16) uint8 array as RFC 4122 version-4 UUID strings, vectorised."""
    raw = raw.copy()
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    digits = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    nibbles = np.empty((len(raw), 32), dtype=np.uint8)
    nibbles[:, 0::2], nibbles[:, 1::2] = digits[raw >> 4], digits[raw & 0x0F]
    out = np.full((len(raw), 36), ord("-"), dtype=np.uint8)
    for dst, src in ((0, 0), (9, 8), (14, 12), (19, 16), (24, 20)):
        width = {0: 8, 9: 4, 14: 4, 19: 4, 24: 12}[dst]
        out[:, dst:dst + width] = nibbles[:, src:src + width]
    fixed = pa.FixedSizeBinaryArray.from_buffers(pa.binary(36), len(raw), [None, pa.py_buffer(out.tobytes())])
    return fixed.cast(pa.binary()).cast(pa.string())


def _text(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """An Arrow string array as a numpy object array of str/None."""
    return array.to_numpy(zero_copy_only=False)


def _timestamps(ms: np.ndarray) -> pd.Series:
    return pd.Series(pd.to_datetime(ms, unit="ms", utc=True)).astype("datetime64[us, UTC]")


def _b62(digest: bytes, length: int) -> str:
    value, chars = int.from_bytes(digest, "big"), []
    for _ in range(length):
        value, r = divmod(value, 62)
        chars.append(_B62[r])
    return "".join(chars)


def _iso_ms(ms: int) -> str:
    return (_EPOCH + timedelta(milliseconds=ms)).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def _to_ms(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def _as_utc(moment: datetime, what: str) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware (UTC), got naive {moment!r}")
    return moment.astimezone(UTC)
