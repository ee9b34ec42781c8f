"""Pendo API client (spec §4, §7): `x-pendo-integration-key`, Aggregation pipelines in, `results` out.

Pendo documents no pagination for aggregations: callers slice by time with `timeSeries` and, as
Pendo asks of ETL pulls, keep each request to 30 days or less (`MAX_DAYS_PER_AGGREGATION`).

Two facts of the subscription shape every request (spec §7):
- Days are the subscription's: a `dayRange` bucket starts at midnight in the subscription's time zone,
  which Pendo allows in whole hours only (support.pendo.io "Change your Subscription Time Zone"; Pendo's
  own sample rows in pendo-io/pendo-ETL-API-calls hold `day=1540008000000`, 04:00Z, New York midnight).
  `subscription_zone` validates the zone; `local_midnight_ms` / `day_bounds` turn local days into the
  epoch ms Pendo speaks.
- A multi-app subscription answers for its default app only unless the source names its apps
  (support.pendo.io tech note "The API response only contains data from one application in my
  subscription"): `"appId": "expandAppIds(\\"*\\")"` inside the source's own object for every app, and
  `?expand=*` on `GET /api/v1/feature`. `AppScope` holds that choice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson

from segment_ops.clients.base import HttpClient, RetryableStatuses, RetryEvent, RetryPolicy, header_auth

MAX_DAYS_PER_AGGREGATION = 30  # spec §4: "Pendo asks that ETL pulls stay <= 30 days"
DAY_MS = 86_400_000
# Every app of the subscription, as the tech note spells it (the value of `appId` in the source's object).
ALL_APPS = 'expandAppIds("*")'
# Pendo's throttle is a leaky bucket answering 429 (spec §4, DataGrail's Pendo integration docs); 408 is a
# request timeout; a 5xx is a server fault worth retrying except 501 (not implemented) and 505 (HTTP version).
PENDO_RETRYABLE = RetryableStatuses(four_xx=frozenset({408, 429}), not_five_xx=frozenset({501, 505}))


class PendoSettingError(ValueError):
    """A Pendo setting (PENDO_TIMEZONE, PENDO_APP_IDS) cannot be used as written; the message names it."""

    def __init__(self, setting: str, problem: str) -> None:
        self.setting = setting
        super().__init__(f"{setting}: {problem}")


def subscription_zone(name: str, setting: str = "PENDO_TIMEZONE", *, since: date | None = None) -> ZoneInfo:
    """The subscription's time zone from its IANA name; whole-hour offsets only, as Pendo allows, from `since`
    (the first day that will be read; default: today) on. A zone whose offset was a half hour only before
    then (America/Caracas -04:30 until 2016, Asia/Pyongyang +08:30 until 2018) is accepted.

    Raises `PendoSettingError` naming `setting` for an unknown name or a zone with a half- or
    quarter-hour offset from `since` on (Asia/Kolkata, Australia/Eucla, ...), which Pendo does not offer.
    """
    cleaned = (name or "").strip()
    try:
        zone = ZoneInfo(cleaned)
    except (ZoneInfoNotFoundError, ValueError):
        raise PendoSettingError(setting, f"{name!r} is not an IANA time zone name such as America/New_York "
                                         "(use the zone of Settings > Subscription settings > Time Zone in "
                                         "Pendo)"
                                ) from None
    offset = fractional_offset(zone, since or datetime.now(UTC).date())
    if offset is not None:
        raise PendoSettingError(setting, f"{cleaned} has the UTC offset {_format_offset(offset)}; Pendo "
                                         "supports whole-hour time zones only (support.pendo.io \"Change "
                                         "your Subscription Time Zone\"), so no subscription can be in it: "
                                         "set the subscription's zone")
    return zone


@dataclass(frozen=True)
class AppScope:
    """Which apps of the subscription a request reads: every app (`ids` empty) or the listed app ids."""

    ids: tuple[str, ...] = ()

    @classmethod
    def parse(cls, raw: str, setting: str = "PENDO_APP_IDS") -> AppScope:
        """`*` for every app, or comma-separated Pendo app ids (whole numbers such as -323232, as tap-pendo
        validates them: singer-io/tap-pendo `filter_app_ids`). Raises `PendoSettingError` naming `setting`."""
        text = (raw or "").strip()
        if text == "*":
            return cls()
        parts = [part.strip() for part in text.split(",")]
        if not any(parts):
            raise PendoSettingError(setting, f"{raw!r} names no app: use * for every app of the subscription "
                                             "or comma-separated app ids")
        if "" in parts:
            raise PendoSettingError(setting, f"{raw!r} has an empty item between commas")
        invalid = [part for part in parts if not _is_whole_number(part)]
        if invalid:
            raise PendoSettingError(setting, f"app ids are whole numbers (Settings > Subscription settings > "
                                             f"Applications), not {', '.join(map(repr, invalid))}")
        return cls(tuple(dict.fromkeys(str(int(part)) for part in parts)))

    @property
    def every_app(self) -> bool:
        return not self.ids

    @property
    def source_value(self) -> str | list[str]:
        """The `appId` value of a source's object: `expandAppIds("*")`, or the ids as a list (the form
        singer-io/tap-pendo sends in `EventsBase.get_body`)."""
        return ALL_APPS if self.every_app else list(self.ids)

    @property
    def key(self) -> str:
        """The app set as staged days record it: `*`, or the ids sorted and comma-separated (the same set of
        apps always gives the same key, whatever order PENDO_APP_IDS lists them in)."""
        return "*" if self.every_app else ",".join(sorted(self.ids))

    def describe(self) -> str:
        return "every app (expandAppIds(\"*\"))" if self.every_app else "apps " + ", ".join(self.ids)


class PendoClient:
    def __init__(self, base_url: str, integration_key: str, *, timeout: float = 60.0,
                 retry: RetryPolicy | None = None, apps: AppScope | None = None) -> None:
        self.apps = apps or AppScope()
        self.http = HttpClient(
            "pendo",
            base_url,
            auth=header_auth("x-pendo-integration-key", integration_key),
            headers={"Content-Type": "application/json"},
            timeout=timeout,
            retry=retry or RetryPolicy(),
            retryable=PENDO_RETRYABLE,
        )

    def aggregate(self, pipeline: list[dict], *, name: str | None = None,
                  on_retry: Callable[[RetryEvent], None] | None = None) -> list[dict]:
        """Run an aggregation pipeline and return its result rows."""
        return orjson.loads(self.aggregate_raw(pipeline, name=name, on_retry=on_retry))["results"]

    def aggregate_raw(self, pipeline: list[dict], *, name: str | None = None,
                      on_retry: Callable[[RetryEvent], None] | None = None) -> bytes:
        """Run an aggregation pipeline; the response body as Pendo sent it (`{"results": [...]}`), unparsed,
        for a caller that hands it to a columnar reader instead of building Python objects."""
        request: dict = {"pipeline": pipeline}
        if name:
            request["name"] = name
        body = {"response": {"mimeType": "application/json"}, "request": request}
        return self.http.request("POST", "/api/v1/aggregation", json=body, on_retry=on_retry).content

    def features(self, *, on_retry: Callable[[RetryEvent], None] | None = None) -> list[dict]:
        """The tagged features of every app (`GET /api/v1/feature?expand=*`, spec §7):
        `{"id", "name", "appId", ...}`."""
        return orjson.loads(self.features_raw(on_retry=on_retry))

    def features_raw(self, *, on_retry: Callable[[RetryEvent], None] | None = None) -> bytes:
        """`GET /api/v1/feature?expand=*`'s body (a JSON array), unparsed. Without `expand=*` Pendo lists the
        default app's features only (tech note above); a narrower `AppScope` filters the rows by `appId`."""
        return self.http.request("GET", "/api/v1/feature", params={"expand": "*"}, on_retry=on_retry).content

    def close(self) -> None:
        self.http.close()


def day_range_source(source: str, first: date, days: int, zone: ZoneInfo, *, apps: AppScope,
                     argument: dict | None = None) -> dict:
    """A source stage covering `days` whole days of the subscription from `first` (spec §4 `timeSeries`):
    `first` is the epoch ms of that day's local midnight, `count` the number of days, and the source's own
    object names the apps (`appId`, spec §7)."""
    if not 0 < days <= MAX_DAYS_PER_AGGREGATION:
        raise ValueError(f"a Pendo aggregation covers 1 to {MAX_DAYS_PER_AGGREGATION} days, not {days}")
    return {"source": {source: {**(argument or {}), "appId": apps.source_value},
                       "timeSeries": {"period": "dayRange", "first": local_midnight_ms(first, zone),
                                      "count": days}}}


def local_midnight_ms(day: date, zone: ZoneInfo) -> int:
    """Epoch ms of the moment `day` begins in `zone` (where a DST change skips midnight, the first moment
    after it, which is where that day's bucket starts)."""
    return int(datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(UTC).timestamp() * 1000)


def local_day_of(moment_ms: int, zone: ZoneInfo) -> date:
    """The day of `zone` that the instant `moment_ms` falls in."""
    return datetime.fromtimestamp(moment_ms / 1000, UTC).astimezone(zone).date()


def day_bounds(first: date, last: date, zone: ZoneInfo) -> list[tuple[date, int, int]]:
    """(day, start ms, end ms) of every local day in [first, last]; a DST day is 23 or 25 hours long."""
    out = []
    day = first
    while day <= last:
        following = day + timedelta(days=1)
        out.append((day, local_midnight_ms(day, zone), local_midnight_ms(following, zone)))
        day = following
    return out


def last_settled_day(zone: ZoneInfo, settle_hours: float, now: datetime | None = None) -> date:
    """The newest day of `zone` that ended at least `settle_hours` before `now` (default: the current time):
    the day before the one that holds the instant `now - settle_hours`."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    return (now - timedelta(hours=settle_hours)).astimezone(zone).date() - timedelta(days=1)


def fractional_offset(zone: ZoneInfo, since: date, years: int = 20) -> timedelta | None:
    """A UTC offset of `zone` that is not a whole number of hours, from `since` for `years` years (weekly
    samples: every DST period lasts longer than a week), or None. Offsets before `since` do not matter: no day
    before it is read. Shared by the client's setting check and the sandbox's emulated subscription."""
    moment = datetime(since.year, since.month, since.day, tzinfo=UTC)
    end = moment.replace(year=since.year + years)
    while moment < end:
        offset = moment.astimezone(zone).utcoffset() or timedelta(0)
        if offset % timedelta(hours=1):
            return offset
        moment += timedelta(days=7)
    return None


def _format_offset(offset: timedelta) -> str:
    minutes = int(offset.total_seconds() // 60)
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def _is_whole_number(text: str) -> bool:
    return text.lstrip("-").isdigit() and text.count("-") <= 1
