"""Pendo's generated data: visitors, accounts, usage per app and per page / feature / track type, and
the answers to the NPS poll, for the demo's multi-app subscription (spec §4, §7)."""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property, lru_cache
from zoneinfo import ZoneInfo

import numpy as np

from segment_ops.config import SANDBOX_PENDO_TIMEZONE
from segment_ops.sandbox.world import (
    DAY_MS,
    HOUR_MS,
    POPULATION_START,
    DemoWorld,
    b62,
    gc_paused,
    ragged_arange,
    to_ms,
    uniform,
)

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

# `uniform` salts (see world.py)
_SALT_ACTIVE, _SALT_SPAN, _SALT_START, _SALT_EVENTS, _SALT_MINUTES = 201, 202, 203, 204, 205
_SALT_ITEM_COUNT, _SALT_ITEM_PICK, _SALT_ITEM_SHARE, _SALT_LAST_MINUTE = 206, 207, 208, 209
_SALT_MOBILE_APP, _SALT_APP_SHARE = 210, 211
_SALT_NPS_WHO, _SALT_NPS_PHASE, _SALT_NPS_SCORE = 301, 302, 303


class PendoDemoData(DemoWorld):
    """The demo world as Pendo shows it: visitors and accounts, usage rows, NPS answers.

    Usage is generated per visitor-day (`_day_activity`), split between the web app and a mobile app, then
    spread over the day's session hours (UTC); a Pendo day is the sum of the hours of one day of the
    subscription's time zone.
    """

    @gc_paused
    def pendo_visitors(self) -> list[dict]:
        """Pendo visitor rows for every user created by `now` (anonymous ones as
        `_PENDO_T_<anonymous_id>`)."""
        pop = self._pop
        idx = np.flatnonzero(pop.created_ms <= self._now_ms)
        last = self._last_visit_ms
        firstvisit = pop.created_ms[idx]
        lastvisit = np.where(last[idx] >= 0, last[idx], firstvisit)
        lastupdated = np.maximum(np.minimum(pop.updated_ms[idx], self._now_ms), lastvisit)
        # The agent only knows the email of identified visitors.
        email = np.where(pop.identified[idx], pop.email[idx], None)
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

    @gc_paused
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

    @gc_paused
    def pendo_events(self, kind: str, first_ms: int, last_ms: int, period: str = "dayRange", *,
                     timezone: str = SANDBOX_PENDO_TIMEZONE,
                     apps: Collection[int] | None = None) -> list[dict]:
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
        wanted = np.array([i for i, app in enumerate(PENDO_APPS) if apps is None or app.id in apps],
                          dtype=np.int64)
        parts = []
        for day in range(lo // DAY_MS, (hi - 1) // DAY_MS + 1):
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
        start = max(first_ms, to_ms(POPULATION_START))
        edges: list[int] = []
        if period == "hourRange":
            bucket = start // HOUR_MS * HOUR_MS
            while bucket < last_ms and bucket + HOUR_MS <= self._now_ms:
                edges.append(bucket)
                bucket += HOUR_MS
            return np.array(edges + [bucket] if edges else [], dtype=np.int64)
        day = datetime.fromtimestamp(start / 1000, UTC).astimezone(zone).date()
        begin = to_ms(datetime(day.year, day.month, day.day, tzinfo=zone))
        while begin < last_ms:
            day += timedelta(days=1)
            end = to_ms(datetime(day.year, day.month, day.day, tzinfo=zone))
            if end > self._now_ms:
                break
            edges.append(begin)
            begin = end
        return np.array(edges + [begin] if edges else [], dtype=np.int64)

    @gc_paused
    def pendo_poll_events(self, first_ms: int, last_ms: int,
                          apps: Collection[int] | None = None) -> list[dict]:
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
        period = 90 * DAY_MS
        phase = (uniform(seed, _SALT_NPS_PHASE, idx) * period).astype(np.int64)
        k_first = -((phase - first_ms) // period)  # ceil((first - phase) / period)
        k_last = -((phase - hi) // period)  # exclusive
        counts = np.maximum(k_last - k_first, 0)
        who = np.repeat(idx, counts)
        k = np.repeat(k_first, counts) + ragged_arange(counts)
        when = np.repeat(phase, counts) + k * period
        ok = when >= pop.created_ms[who]
        who, k, when = who[ok], k[ok], when[ok]
        acc = pop.acc_idx[who]
        dip = self._acc.decline_factor(acc, when // DAY_MS) < 1
        noise = uniform(seed, _SALT_NPS_SCORE, who, k) * 4 - 2
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
        u = uniform(self.config.seed, _SALT_MOBILE_APP, np.arange(len(pop.identified)))
        app = np.where(u < 0.18, 1, np.where(u < 0.30, 2, 0))
        return np.where(pop.identified, app, 0).astype(np.int64)

    @cached_property
    def _nps_respondents(self) -> np.ndarray:
        """Identified, active users in accounts that use the app who answer the NPS guide."""
        pop, candidates = self._pop, self._active_candidates
        answers = uniform(self.config.seed, _SALT_NPS_WHO, candidates) < 0.35
        return candidates[answers & pop.identified[candidates] & (pop.acc_idx[candidates] >= 0)]

    @cached_property
    def _last_visit_ms(self) -> np.ndarray:
        """Epoch ms of each user's last visit by `now` within 120 days, or -1 if none."""
        last = np.full(len(self._pop.identified), -1, dtype=np.int64)
        pending = self._active_candidates
        today = self._now_ms // DAY_MS
        for day in range(today, today - 121, -1):
            if not len(pending):
                break
            rows = self._day_activity(day, pending)
            completed_hours = (self._now_ms - day * DAY_MS) // HOUR_MS
            last_hour = np.minimum(rows["h0"] + rows["span"] - 1, completed_hours - 1)
            seen = last_hour >= rows["h0"]
            who = rows["visitor"][seen]
            minute = (uniform(self.config.seed, _SALT_LAST_MINUTE, who, day) * 59).astype(np.int64)
            last[who] = day * DAY_MS + last_hour[seen] * HOUR_MS + minute * 60_000
            pending = pending[~np.isin(pending, who, assume_unique=True)]
        return last

    def _day_activity(self, day: int, idx: np.ndarray) -> dict[str, np.ndarray]:
        """Which of users `idx` use the app on `day` (epoch day), with counts and session hours."""
        pop, seed = self._pop, self.config.seed
        weekend = (day + 3) % 7 >= 5  # epoch day 0 was a Thursday
        decline = self._acc.decline_factor(pop.acc_idx[idx], day)
        prob = pop.p_active[idx] * (0.25 if weekend else 1.0) * decline
        active = (uniform(seed, _SALT_ACTIVE, idx, day) < prob) & (day > pop.created_ms[idx] // DAY_MS)
        who = idx[active]
        span = 1 + (uniform(seed, _SALT_SPAN, who, day) * 3).astype(np.int64)
        h0 = pop.tz_hour[who] + (uniform(seed, _SALT_START, who, day) * 6).astype(np.int64)
        draw = -np.log1p(-uniform(seed, _SALT_EVENTS, who, day))
        events = span + (draw * pop.events_mean[who]).astype(np.int64)
        pace = 0.5 + uniform(seed, _SALT_MINUTES, who, day)
        minutes = np.clip(np.rint(events * pop.minutes_per_event[who] * pace), span,
                          60 * span).astype(np.int64)
        return {"visitor": who, "events": events, "minutes": minutes, "h0": h0, "span": span}


# ------------------------------------------------------------------ tagged items and usage rows


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
_FEATURE_NAMES = ("Create Report", "Export CSV", "Filter", "Share Dashboard", "Invite User",
                  "Connect Integration", "Schedule Email", "Upgrade Button")
# Per kind: (salt, share, row_rate, web app's names, each mobile app's names).
_ITEM_CATALOGUES = {
    "pageEvents": (1, 0.85, 1.0, ("Dashboard", "Reports", "Settings", "Integrations", "Billing", "Team",
                                  "Onboarding", "Search", "Alerts", "Help Center"),
                   ("Home", "Scan", "Inbox", "Profile", "Settings")),
    "featureEvents": (2, 0.4, 0.9, _FEATURE_NAMES, ("Scan Receipt", "Push Opt-in", "Offline Sync")),
    "trackEvents": (3, 0.15, 0.5, ("report_created", "export_completed", "user_invited",
                                   "integration_connected", "plan_upgraded"),
                    ("receipt_scanned", "push_opened")),
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
        ids = np.array([b62(hashlib.blake2b(k.encode(), digest_size=16).digest(), 20) for k in keys],
                       dtype=object)
        weights = 1.0 / np.arange(1, len(names) + 1)
        out.append(_ItemKind(salt + 10 * index, index, offset, tuple(names), ids,
                             np.cumsum(weights) / weights.sum(), share, row_rate))
        offset += len(names)
    return tuple(out)


def _item_ids(kind: str) -> np.ndarray:
    return np.concatenate([c.ids for c in _catalogues(kind)])


def _item_names(kind: str) -> list[str]:
    return [name for c in _catalogues(kind) for name in c.names]


def _item_apps(kind: str) -> np.ndarray:
    return np.concatenate([np.full(len(c.ids), c.app, dtype=np.int64) for c in _catalogues(kind)])


def _split_apps(seed: int, rows: dict[str, np.ndarray], day: int,
                mobile_app: np.ndarray) -> dict[str, np.ndarray]:
    """Each visitor-day row as the web app's row plus, for users of a mobile app, that app's share (20-60%
    of the day's events and minutes); rows left with no events are dropped. Adds the `app` column."""
    who = rows["visitor"]
    app = mobile_app[who]
    share = np.where(app > 0, 0.2 + 0.4 * uniform(seed, _SALT_APP_SHARE, who, day), 0.0)
    mobile_events = np.floor(rows["events"] * share).astype(np.int64)
    mobile_minutes = np.rint(rows["minutes"] * share).astype(np.int64)
    web = {**rows, "events": rows["events"] - mobile_events,
           "minutes": np.maximum(rows["minutes"] - mobile_minutes, 1),
           "app": np.zeros(len(who), dtype=np.int64)}
    mobile = {**rows, "events": mobile_events, "minutes": np.maximum(mobile_minutes, 1), "app": app}
    keep_web, keep_mobile = web["events"] > 0, mobile["events"] > 0
    return {k: np.concatenate([web[k][keep_web], mobile[k][keep_mobile]]) for k in web}


def _split_items(seed: int, rows: dict[str, np.ndarray], day: int, kind: str) -> dict[str, np.ndarray]:
    """Spread each visitor-day's events over 1-3 of its app's pages/features/track types (merged if repeated);
    `item` is the index among the kind's items of every app."""
    parts = [_split_app_items(seed, {k: v[rows["app"] == spec.app] for k, v in rows.items()}, day, spec)
             for spec in _catalogues(kind)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _split_app_items(seed: int, rows: dict[str, np.ndarray], day: int,
                     spec: _ItemKind) -> dict[str, np.ndarray]:
    who = rows["visitor"]
    u = uniform(seed, _SALT_ITEM_SHARE, spec.salt, who, day)
    events = np.floor(rows["events"] * spec.share + u).astype(np.int64)
    events[u >= spec.row_rate] = 0
    minutes = np.maximum(1, np.rint(rows["minutes"] * spec.share)).astype(np.int64)
    k = 1 + (uniform(seed, _SALT_ITEM_COUNT, spec.salt, who, day) * 3).astype(np.int64)
    row = np.repeat(np.arange(len(who)), k)
    slot = ragged_arange(k)
    pick = uniform(seed, _SALT_ITEM_PICK, spec.salt, who[row], day, slot)
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
    slot = ragged_arange(span)
    s = span[row]
    events = rows["events"][row] // s + (slot < rows["events"][row] % s)
    minutes = np.minimum(rows["minutes"][row] // s + (slot < rows["minutes"][row] % s), 60)
    out = {k: v[row] for k, v in rows.items() if k not in ("events", "minutes")}
    out.update(events=events, minutes=np.maximum(minutes, 1),
               bucket=day * DAY_MS + (rows["h0"][row] + slot) * HOUR_MS)
    keep = events > 0
    return {k: v[keep] for k, v in out.items()}
