"""Segment's Delivery Overview (Public API, beta; spec §7) computed from what the Tracking API double really
received: `GET /segmentapis/delivery-overview/<step>` (routed in `public_api.py`), the workspace's
destinations behind its sources (`GET /segmentapis/destinations`), and the sandbox-only control
`/__sandbox__/segment/destination-failures` that makes a destination fail a share of its events.

Vendor sources read (github segmentio/public-api-sdk-python): `docs/DeliveryOverviewApi.md` (the six
endpoints, their parameters and granularity limits, 200/404/422/429, `Accept: application/vnd.segment.
v1beta+json`); `segment_public_api/api/delivery_overview_api.py` (query names; `groupBy` serialised
"multi"); the models `get_egress_failed_metrics_from_delivery_overview200_response.py` and
`get_delivery_overview_metrics_beta_output.py` (`{"data": {"total", "dataset", "pagination"}}`),
`delivery_overview_metrics_dataset.py` (`eventName`, `appVersion`, `eventType`, `discardReason`, `total`,
`series`, `totalRetryCount`), `delivery_overview_metrics_datapoint.py` (`time`: the start of the bucket,
`count`, `retryCount`), `delivery_overview_{source,destination,successfully_received}_filter_by.py`;
`docs/DestinationsApi.md` and `models/destination_v1.py` (`GET /destinations`: `id`, `name`, `enabled`,
`metadata`, `sourceId`, `settings`). What each step counts: github segmentio/segment-docs
`src/connections/delivery-overview.md` ("Failed on ingest: events that Segment received, but were dropped
due to internal data validation rules"; "Filtered at destination": Destination Filters or the
`integrations` object; "Failed delivery": errors or unmet destination requirements).

Choices where those documents are silent:
- Counts are per event, bucketed by receipt time (UTC) floored to the granularity; `series` has one point
  per bucket of [startTime, endTime), zeros included. A repeated messageId inside the dedupe window is
  counted nowhere (Segment drops it), so "successfully received" is what reached the source once.
- Failed on ingest: messages the double took over HTTP but drops (no userId/anonymousId, a track without
  `event`, ...; discard reason = the double's drop reason), and requests it refused with 400 under the
  source's own write key (each message of a readable batch, or 1 for a body that could not be read;
  discard reason = the 400's `code`). Segment's own discard-reason strings are not documented.
- Filtered at source: always 0 (the sandbox has no Protocols tracking plans or schema controls).
- Filtered at destination: a message whose `integrations` object turns the destination off
  (`{"<destination name>": false}`, or `{"All": false}` without `{"<name>": true}`).
- Delivery: every other received message goes to each enabled destination of its source and succeeds,
  unless a failure was injected: then that share of its events fails (deterministically: every 1/share-th
  event) with the injected discard reason. No retries are modelled (`retryCount` is not sent).
- 422 for a missing or malformed parameter, an unknown granularity or groupBy dimension, startTime not
  before endTime, a range over the granularity's maximum or a start older than its limit; 404 for an
  unknown `sourceId`, or a `destinationConfigId` not connected to that source.
- `groupBy` is read as a comma-delimited list, repeated `groupBy=`, or `groupBy.<n>=` (the SDK example's
  form); filters as `filter.<field>=a,b` (dotted like `pagination.count`; the SDK does not show the
  encoding). The dataset list pages by an opaque `pagination.cursor` (`pagination.count`, default 200).
"""

from __future__ import annotations

import base64
import binascii
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from segment_ops.sandbox.common import json_response

RECEIVED, FAILED_ON_INGEST = "successfully-received", "failed-on-ingest"
FILTERED_AT_SOURCE, FILTERED_AT_DESTINATION = "filtered-at-source", "filtered-at-destination"
DELIVERED, FAILED_DELIVERY = "successful-delivery", "failed-delivery"
SOURCE_STEPS = (RECEIVED, FAILED_ON_INGEST, FILTERED_AT_SOURCE)
DESTINATION_STEPS = (FILTERED_AT_DESTINATION, DELIVERED, FAILED_DELIVERY)
# Granularity -> (bucket, longest range, oldest start), from `docs/DeliveryOverviewApi.md`.
GRANULARITIES = {
    "MINUTE": (timedelta(minutes=1), timedelta(hours=4), timedelta(hours=48)),
    "HOUR": (timedelta(hours=1), timedelta(days=14), timedelta(days=30)),
    "DAY": (timedelta(days=1), timedelta(days=30), timedelta(days=30)),
}
# The groupBy dimensions the SDK lists; the last four concern Actions and Linked Audiences, which the
# sandbox has not: grouping by them gives one group whose value is null.
DIMENSIONS = ("eventName", "eventType", "discardReason", "appVersion", "subscriptionId", "activationId",
              "audienceId", "spaceId")
_KEPT = ("eventName", "eventType", "appVersion", "discardReason")  # what a recorded count is keyed by
MAX_PAGE_SIZE = 200


class MetricsQueryError(Exception):
    """A Delivery Overview request Segment refuses: 422 (validation) or 404 (unknown source/destination)."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.field = field


@dataclass(frozen=True)
class MetricsQuery:
    step: str
    source_id: str
    destination_id: str | None
    start: datetime
    end: datetime
    granularity: str
    group_by: tuple[str, ...]
    filters: Mapping[str, frozenset[str]]
    offset: int
    count: int


def workspace_destinations(source_id: str) -> list[dict]:
    """The sandbox workspace's destinations (the Public API's `DestinationV1`), all behind `source_id`, the
    HTTP source segment_ops writes to."""
    return [_destination("dst_amplitude", "Amplitude (sandbox)", "amplitude", source_id),
            _destination("dst_webhooks", "Webhooks (sandbox)", "webhooks", source_id)]


class DeliveryPipeline:
    """Per-minute counts of what each source received, failed on ingest and what each destination was sent,
    filtered, delivered and failed; plus the injected destination failures."""

    def __init__(self, sources: Sequence[dict], destinations: Sequence[dict]) -> None:
        self.sources = {s["id"]: s for s in sources}
        self.destinations = list(destinations)
        self._by_key = {key: s["id"] for s in sources for key in s.get("writeKeys") or []}
        self._counts: Counter[tuple] = Counter()
        self._failures: dict[str, tuple[float, str]] = {}  # destination id -> (share, discard reason)
        self._owed: Counter[str] = Counter()  # per destination: the share of failures not yet taken

    def reset(self) -> None:
        self._counts.clear()
        self._failures.clear()
        self._owed.clear()

    def source_of(self, write_key: str | None) -> str | None:
        return self._by_key.get(write_key) if write_key else None

    def fail_destination(self, destination_id: str, share: float, reason: str) -> None:
        """From now on `share` (0..1) of the destination's events fail with `reason`; 0 clears it."""
        if share <= 0:
            self._failures.pop(destination_id, None)
        else:
            self._failures[destination_id] = (min(share, 1.0), reason)
        self._owed.pop(destination_id, None)

    def failures(self) -> dict[str, dict]:
        return {d: {"share": share, "reason": reason} for d, (share, reason) in self._failures.items()}

    def received(self, source_id: str, messages: Iterable[dict], *, when: datetime | None = None) -> None:
        """Messages the source accepted (after dedupe), and what each of its destinations made of them."""
        minute = _minute(when)
        targets = [d for d in self.destinations if d["sourceId"] == source_id and d["enabled"]]
        for message in messages:
            labels = _labels(message)
            self._counts[(source_id, None, RECEIVED, minute, *labels, None)] += 1
            for destination in targets:
                step, reason = self._egress(destination, message)
                self._counts[(source_id, destination["id"], step, minute, *labels, reason)] += 1

    def failed_on_ingest(self, source_id: str, messages: Iterable[dict], reason: str, *,
                         when: datetime | None = None) -> None:
        minute = _minute(when)
        for message in messages:
            self._counts[(source_id, None, FAILED_ON_INGEST, minute, *_labels(message), reason)] += 1

    def _egress(self, destination: dict, message: dict) -> tuple[str, str | None]:
        """(step, discard reason) of one message at one destination."""
        switches = message.get("integrations") if isinstance(message.get("integrations"), dict) else {}
        own = switches.get(destination["name"], switches.get(destination["metadata"]["name"]))
        if own is False or (switches.get("All") is False and own is not True):
            return FILTERED_AT_DESTINATION, "integrations object"
        failure = self._failures.get(destination["id"])
        if failure is None:
            return DELIVERED, None
        share, reason = failure
        self._owed[destination["id"]] += share
        if self._owed[destination["id"]] >= 1.0 - 1e-9:
            self._owed[destination["id"]] -= 1.0
            return FAILED_DELIVERY, reason
        return DELIVERED, None

    def answer(self, query: MetricsQuery) -> dict:
        """The `data` of a Delivery Overview answer (`GetDeliveryOverviewMetricsBetaOutput`)."""
        bucket = GRANULARITIES[query.granularity][0]
        first = _floor(query.start, bucket)
        buckets = int((query.end - first) / bucket) + (1 if (query.end - first) % bucket else 0)
        start_minute, end_minute = query.start.timestamp() // 60, -(-query.end.timestamp() // 60)
        groups: dict[tuple, Counter[int]] = {}
        for (source, destination, step, minute, *labels), n in self._counts.items():
            if (source, destination, step) != (query.source_id, query.destination_id, query.step):
                continue
            if not start_minute <= minute < end_minute:
                continue
            values = dict(zip(_KEPT, labels, strict=True))
            if any(values.get(field) not in allowed for field, allowed in query.filters.items()):
                continue
            group = tuple(values.get(dimension) for dimension in query.group_by)
            index = int((datetime.fromtimestamp(minute * 60, UTC) - first) / bucket)
            groups.setdefault(group, Counter())[index] += n
        if not query.group_by:
            groups.setdefault((), Counter())
        dataset = [_dataset(query.group_by, group, series, first, bucket, buckets)
                   for group, series in sorted(groups.items(), key=lambda g: (-g[1].total(), str(g[0])))]
        page = dataset[query.offset:query.offset + query.count]
        pagination: dict = {"current": _cursor(query.offset), "totalEntries": len(dataset)}
        if query.offset + query.count < len(dataset):
            pagination["next"] = _cursor(query.offset + query.count)
        if query.offset > 0:
            pagination["previous"] = _cursor(max(0, query.offset - query.count))
        return {"total": sum(d["total"] for d in dataset), "dataset": page, "pagination": pagination}


def parse_metrics_query(step: str, params: QueryParams, pipeline: DeliveryPipeline,
                        now: datetime) -> MetricsQuery:
    """Validate one request against the SDK's documented parameters and limits; raises `MetricsQueryError`."""
    items = params.multi_items()
    single = dict(items)
    if step not in SOURCE_STEPS + DESTINATION_STEPS:
        raise MetricsQueryError(404, f"no endpoint /delivery-overview/{step}")
    for name in ("sourceId", "startTime", "endTime", "granularity"):
        if not single.get(name):
            raise MetricsQueryError(422, f"{name} is required", name)
    granularity = single["granularity"].upper()
    if granularity not in GRANULARITIES:
        raise MetricsQueryError(422, f"granularity must be one of {', '.join(GRANULARITIES)}", "granularity")
    start, end = _time(single, "startTime"), _time(single, "endTime")
    _, longest, oldest = GRANULARITIES[granularity]
    if start >= end:
        raise MetricsQueryError(422, "startTime must be before endTime", "startTime")
    if end - start > longest:
        raise MetricsQueryError(422, f"the time range may not exceed {longest} at granularity {granularity}",
                                "endTime")
    if start < now - oldest:
        raise MetricsQueryError(422, f"startTime may not be more than {oldest} in the past at granularity "
                                f"{granularity}", "startTime")
    source_id = single["sourceId"]
    if source_id not in pipeline.sources:
        raise MetricsQueryError(404, f"source {source_id!r} not found", "sourceId")
    destination_id = single.get("destinationConfigId") or None
    if step in DESTINATION_STEPS:
        if destination_id is None:
            raise MetricsQueryError(422, "destinationConfigId is required", "destinationConfigId")
        if not any(d["id"] == destination_id and d["sourceId"] == source_id for d in pipeline.destinations):
            raise MetricsQueryError(404, f"destination {destination_id!r} not found for source {source_id!r}",
                                    "destinationConfigId")
    else:
        destination_id = None
    group_by = _group_by(items)
    filters = {key.removeprefix("filter."): frozenset(v for v in value.split(",") if v)
               for key, value in items if key.startswith("filter.")}
    if unknown := [f for f in filters if f not in DIMENSIONS]:
        raise MetricsQueryError(422, f"cannot filter by {unknown[0]!r}", f"filter.{unknown[0]}")
    return MetricsQuery(step, source_id, destination_id, start, end, granularity, group_by, filters,
                        _offset(single.get("pagination.cursor")), _count(single.get("pagination.count")))


def control_routes(pipeline: DeliveryPipeline) -> list[BaseRoute]:
    """`GET|POST /__sandbox__/segment/destination-failures`: POST `{"destinationId", "share": 0..1,
    "reason"}` makes that share of the destination's events fail with that discard reason (`share` 0
    clears it; a reset clears all); GET lists them."""

    async def destination_failures(request: Request) -> Response:
        if request.method == "POST":
            try:
                body = orjson.loads(await request.body())
                destination_id, share = str(body["destinationId"]), float(body["share"])
                if not 0.0 <= share <= 1.0:
                    raise ValueError("share must be within [0, 1]")
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                return json_response(
                    {"error": f'expected {{"destinationId", "share": 0..1, "reason"}}: {exc}'}, 400)
            if destination_id not in {d["id"] for d in pipeline.destinations}:
                return json_response({"error": f"unknown destination {destination_id!r}"}, 404)
            pipeline.fail_destination(destination_id, share, str(body.get("reason") or "Unauthorized"))
        return json_response({"failures": pipeline.failures(),
                              "destinations": [d["id"] for d in pipeline.destinations]})

    return [Route("/destination-failures", destination_failures, methods=["GET", "POST"])]


def _destination(destination_id: str, name: str, slug: str, source_id: str) -> dict:
    return {"id": destination_id, "name": name, "enabled": True,
            "metadata": {"id": f"meta_{slug}", "slug": slug, "name": slug.title()},
            "sourceId": source_id, "settings": {}}


def _labels(message: dict) -> tuple[str | None, str | None, str | None]:
    """(eventName, eventType, appVersion) of a message, as Delivery Overview breaks counts down."""
    message_type = message.get("type")
    name = message.get("event") if message_type == "track" else message.get("name")
    app = (message.get("context") or {}).get("app") if isinstance(message.get("context"), dict) else None
    version = app.get("version") if isinstance(app, dict) else None
    return (str(name) if name else None, str(message_type) if message_type else None,
            str(version) if version else None)


def _minute(when: datetime | None) -> int:
    return int((when or datetime.now(UTC)).timestamp() // 60)


def _floor(moment: datetime, bucket: timedelta) -> datetime:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return epoch + ((moment - epoch) // bucket) * bucket


def _dataset(group_by: Sequence[str], group: tuple, series: Counter[int], first: datetime, bucket: timedelta,
             buckets: int) -> dict:
    entry: dict = {dimension: value for dimension, value in zip(group_by, group, strict=True)}
    entry["total"] = series.total()
    entry["series"] = [{"time": _iso(first + i * bucket), "count": series.get(i, 0)} for i in range(buckets)]
    return entry


def _group_by(items: Sequence[tuple[str, str]]) -> tuple[str, ...]:
    values = [v for key, raw in items if key == "groupBy" or key.startswith("groupBy.")
              for v in raw.split(",") if v]
    for value in values:
        if value not in DIMENSIONS:
            raise MetricsQueryError(422, f"groupBy {value!r} is not one of {', '.join(DIMENSIONS)}",
                                    "groupBy")
    return tuple(dict.fromkeys(values))


def _time(params: Mapping[str, str], name: str) -> datetime:
    try:
        moment = datetime.fromisoformat(params[name])
    except ValueError:
        raise MetricsQueryError(422, f"{name} must be an ISO-8601 date-time", name) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _count(raw: str | None) -> int:
    if raw is None:
        return MAX_PAGE_SIZE
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE_SIZE:
        raise MetricsQueryError(422, f"pagination.count must be between 1 and {MAX_PAGE_SIZE}",
                                "pagination.count")
    return int(raw)


def _cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(orjson.dumps({"dataset": offset})).decode()


def _offset(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        offset = orjson.loads(base64.urlsafe_b64decode(cursor))["dataset"]
    except (binascii.Error, orjson.JSONDecodeError, KeyError, TypeError):
        offset = None
    if not isinstance(offset, int) or offset < 0:
        raise MetricsQueryError(422, "pagination.cursor is not a valid cursor", "pagination.cursor")
    return offset


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
