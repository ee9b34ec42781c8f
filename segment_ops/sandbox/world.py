"""The shared demo world every vendor's double reads: the population (users and accounts) of one
`DemoConfig`, seen at a `now`, and the seeded-randomness and clock helpers the vendors' generators use.

Each vendor's generated data lives with that vendor (`segment/data.py`, `heap/data.py`, `pendo/data.py`);
`demo_data.DemoData` gathers them into one object.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import wraps
from typing import ParamSpec, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from segment_ops import clock

POPULATION_START = datetime(2021, 1, 1, tzinfo=UTC)
POPULATION_AS_OF = datetime(2026, 10, 1, tzinfo=UTC)
# The population holds each person's id at every vendor: an anonymous visitor's Pendo visitorId is this
# prefix and its anonymous id (Heap's identity is the email or the user id, see `_build_users`).
PENDO_ANONYMOUS_PREFIX = "_PENDO_T_"
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS

_P = ParamSpec("_P")
_R = TypeVar("_R")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_FUTURE_CREATED_MS = 4_070_908_800_000  # 2099-01-01T00:00:00Z

# Population rows are drawn vectorised from `np.random.default_rng([seed, salt])`; time series use
# `uniform`, a counter-based hash of (seed, salt, key, bucket), so any bucket can be computed on its own, in
# any order. Every random stream has its own salt, so no two streams draw alike: 1xx the population here
# and Segment's audit trail, 2xx and 3xx Pendo's usage and NPS answers, 4xx Heap's segment membership, 5xx
# the demo warehouse's orders. Each salt is defined beside the code that draws with it.
_SALT_ACCOUNTS, _SALT_USERS = 101, 102


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


def gc_paused(func: Callable[_P, _R]) -> Callable[_P, _R]:
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


class DemoWorld:
    """The population of one (seed, scale), seen at `now` (tz-aware, default: `clock.now()`, the current UTC
    time unless `SEGMENT_OPS_CLOCK` pins it).

    The population (`users`, `accounts`) depends only on `config`, never on `now`: its timestamps are
    absolute, between `POPULATION_START` and `POPULATION_AS_OF`, so rebuilding it later yields the same rows
    and a reverse-ETL diff sees no spurious changes. Each vendor's data is a subclass adding generators of
    time series that are pure functions of (seed, absolute time bucket): the same hour, day or window always
    holds the same events, whatever `now` is. `now` only moves the visible horizon (nothing after it is
    shown, and a user is only active, or a Heap member, after `created_at`).

    Nullable text columns (`user_id`, `email`, `name`, `account_id`, `plan`) are object columns holding
    None, so `x is None` and `pd.isna(x)` both work; other text columns use pandas' `str` dtype.
    """

    def __init__(self, config: DemoConfig = DemoConfig(), now: datetime | None = None):
        if config.scale <= 0:
            raise ValueError(f"DemoConfig.scale must be positive, got {config.scale}")
        self.config = config
        self.now = as_utc(now or clock.now(), "now")
        self._now_ms = to_ms(self.now)
        self._acc = _build_accounts(config)
        self._pop = _build_users(config, self._acc)
        self.accounts: pd.DataFrame = self._acc.frame
        self.users: pd.DataFrame = self._pop.frame


# --------------------------------------------------------------------------------- population

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
    padded = pc.utf8_lpad(pa.array(number).cast(pa.string()), 5, "0")
    ids = _text(pc.binary_join_element_wise("acc_", padded, ""))
    prefix = rng.integers(0, len(_NAME_PREFIXES), n)
    noun = rng.integers(0, len(_NAME_NOUNS), n)
    suffix = rng.integers(0, len(_NAME_SUFFIXES), n)
    prefixes, nouns = pa.array(_NAME_PREFIXES), pa.array(_NAME_NOUNS)
    names = _text(pc.binary_join_element_wise(
        prefixes.take(prefix), nouns.take(noun), pa.array(_NAME_SUFFIXES).take(suffix), " "
    ))
    domains = _text(pc.utf8_lower(
        pc.binary_join_element_wise(prefixes.take(prefix), nouns.take(noun), ".example", "")
    ))
    plan_idx = rng.choice(len(_PLANS), size=n, p=_PLAN_WEIGHTS)
    seat_median = np.array([2, 8, 35, 300])[plan_idx]
    seats = np.maximum(1, np.rint(seat_median * rng.lognormal(0, 0.5, n))).astype(np.int64)
    mrr = np.round(seats * _SEAT_PRICE[plan_idx] * rng.uniform(0.7, 1.0, n), 2)
    start_ms, as_of_ms = to_ms(POPULATION_START), to_ms(POPULATION_AS_OF)
    created_ms = start_ms + (rng.random(n) * (as_of_ms - 120 * DAY_MS - start_ms)).astype(np.int64)
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
        "industry": pd.Series(np.array(_INDUSTRIES, dtype=object)[rng.integers(0, len(_INDUSTRIES), n)],
                              dtype="str"),
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
    """The users, with realistic shapes and deliberately malformed records (the syncs must cope with them):

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
    """
    n = config.n_users
    rng = np.random.default_rng([config.seed, _SALT_USERS])
    number = pa.array(np.arange(1, n + 1)).cast(pa.string())
    anonymous = rng.random(n) < 0.12
    anonymous[:2] = [False, True]  # tiny worlds still get both kinds
    identified = ~anonymous
    lead = anonymous & (rng.random(n) < 0.05)
    lead[np.flatnonzero(anonymous)[0]] = True
    null = pa.scalar(None, pa.string())

    user_id = pc.if_else(identified, pc.binary_join_element_wise("usr_", pc.utf8_lpad(number, 7, "0"), ""),
                         null)
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
    start_ms, as_of_ms = to_ms(POPULATION_START), to_ms(POPULATION_AS_OF)
    origin = np.where(has_acc, acc.created_ms[safe_acc], start_ms)
    origin[anonymous] = as_of_ms - 180 * DAY_MS
    created_ms = origin + (rng.random(n) * (as_of_ms - origin)).astype(np.int64)
    updated_ms = as_of_ms - ((as_of_ms - created_ms) * rng.random(n) ** 3).astype(np.int64)
    is_active = anonymous | (rng.random(n) < 0.92)

    p_active = np.where(has_acc, rng.beta(2, 3, n) * acc.level[safe_acc], rng.beta(1.5, 4, n))
    p_active = np.where(anonymous, 0.04, np.clip(p_active, 0, 0.95))
    p_active[~is_active] = 0.0
    heap_by_user_id = ~has_email | (rng.random(n) < 0.1)  # Heap identity: the email, else the internal id
    role = _ROLES[rng.integers(0, len(_ROLES), n)]
    role[anonymous] = None

    # Malformed records (see the docstring), on distinct ordinary identified users.
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
        "updated_at": _timestamps(np.append(updated_ms, updated_ms[duplicated] + 3 * DAY_MS)),
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


def uniform(*keys: int | np.ndarray) -> np.ndarray:
    """Uniform [0, 1) floats that are a pure function of the (broadcast) integer keys."""
    h = np.zeros(1, dtype=np.uint64)
    for key in keys:
        h = _mix64((h ^ np.asarray(key).astype(np.uint64)) + _GOLDEN)
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def ragged_arange(counts: np.ndarray) -> np.ndarray:
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


def b62(digest: bytes, length: int) -> str:
    value, chars = int.from_bytes(digest, "big"), []
    for _ in range(length):
        value, r = divmod(value, 62)
        chars.append(_B62[r])
    return "".join(chars)


def iso_ms(ms: int) -> str:
    return (_EPOCH + timedelta(milliseconds=ms)).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def to_ms(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def as_utc(moment: datetime, what: str) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware (UTC), got naive {moment!r}")
    return moment.astimezone(UTC)
