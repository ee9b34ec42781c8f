"""Segment Public API client (spec §2): bearer token, `{"data": ...}` envelopes, cursor pagination.

Delivery Overview (beta, spec §7), as github segmentio/public-api-sdk-python `docs/DeliveryOverviewApi.md` and
`segment_public_api/api/delivery_overview_api.py` call it: `GET /delivery-overview/<step>` with `sourceId`,
`destinationConfigId` (egress steps), `startTime` (inclusive), `endTime` (exclusive), `granularity`, optional
`groupBy`, and `Accept: application/vnd.segment.v1beta+json`; the answer's `data` is
`GetDeliveryOverviewMetricsBetaOutput` (`total`, `dataset[]` of `{<dimension>, total, series[{time, count}]}`,
`pagination`). The SDK does not show how a list `groupBy` is put in the query: it is sent comma-delimited, as
its description says ("a comma-delimited list of strings").

Regulations (spec §2), from github segmentio/public-api-sdk-typescript `api/deletionAndSuppressionApi.ts`:
`POST /regulations` (workspace) and `POST /regulations/sources/{sourceId}` take `{"regulationType",
"subjectType", "subjectIds"}` (`model/createWorkspaceRegulationV1Input.ts`,
`createSourceRegulationV1Input.ts`) and answer `{"data": {"regulateId"}}`
(`createWorkspaceRegulationV1Output.ts`); `GET /regulations/{regulateId}` answers `{"data": {"regulation":
{id, workspaceId, overallStatus, createdAt, finishedAt?, streamStatus}}}` (`getRegulationV1Output.ts`,
`regulation.ts`, `streamStatusV1.ts`); `GET /regulations` (and `/regulations/sources/{sourceId}`) lists
`{"data": {"regulations": [{id, subjectType, subjects, status, createdAt, regulationType, finishedAt?}],
"pagination"}}` (`listWorkspaceRegulationsV1Output.ts`, `regulationListEntryV1.ts`) filtered by `status` and
`regulationTypes`, which github segmentio/public-api-sdk-python `api/deletion_and_suppression_api.py` sends
repeated (collection format "multi"). Creating one has a rate limit of its own, 600/min per group of types,
with that group's `X-RateLimit-*` headers and the usual 429. POST /regulations has no idempotency key:
`create_regulation` retries only what cannot have filed anything.

Tracking plans (spec §2), from the same SDK's `api/trackingPlansApi.ts`: `GET /tracking-plans` (`type`
filter; `listTrackingPlansV1Output.ts`: `trackingPlans`), `GET /tracking-plans/{id}` (`trackingPlan`,
`trackingPlanV1.ts`), `GET /tracking-plans/{id}/rules` (`listRulesFromTrackingPlanV1Output.ts`: `rules` of
`ruleV1.ts`; 200 requests/min), `GET /tracking-plans/{id}/sources` (`listSourcesFromTrackingPlanV1Output.ts`:
`sources` of `sourceV1.ts`), and `PUT /tracking-plans/{id}/rules` with `{"rules": [RuleInputV1]}`
(`replaceRulesInTrackingPlanV1Input.ts`; answers `{"data": {"status": "SUCCESS"}}`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from urllib.parse import quote

import httpx

from segment_ops.clients.base import (
    HttpClient,
    RetryableStatuses,
    RetryEvent,
    RetryPolicy,
    VendorError,
    VendorFatalError,
    VendorRequestError,
    VendorUnavailable,
    bearer_auth,
    paginate,
)

MAX_PAGE_SIZE = 200  # pagination.count is 1..200 (spec §2)
DELIVERY_OVERVIEW_ACCEPT = "application/vnd.segment.v1beta+json"  # the beta endpoints' media type (spec §7)
# Delivery Overview's pipeline steps (spec §7): the source's, then those of one destination behind it.
SOURCE_STEPS = ("successfully-received", "failed-on-ingest", "filtered-at-source")
DESTINATION_STEPS = ("filtered-at-destination", "successful-delivery", "failed-delivery")
# Spec §2: 429 when throttled, `ServerError` 5xx; a 408 is a proxy's timeout. Every other 4xx is final.
RETRYABLE = RetryableStatuses(four_xx=frozenset({408, 429}))
# Retries of `POST /regulations` that cannot file a regulation twice: a throttled or timed-out request was
# not processed, and a connection that never opened carried nothing. Anything else (a 5xx, a dropped or
# timed-out answer) may have filed it: `RegulationOutcomeUnknown`. Read from `RetryEvent.reason`, which
# `clients.base` writes as "HTTP <status>: ..." or "<httpx exception name>: ...".
_FILING_RETRYABLE = ("HTTP 408:", "HTTP 429:", "ConnectError:", "ConnectTimeout:", "PoolTimeout:")


class RegulationOutcomeUnknown(VendorError):
    """`POST /regulations` failed in a way that may have filed the regulation (a 5xx, a lost answer): it is
    not retried, since Segment has no idempotency key. Reconcile with `iter_regulations` (or the audit
    trail's "Regulation Created" events) before filing it again."""


def ms_before_next(response: httpx.Response) -> float | None:
    """Seconds from a 429 body's `errors[0].data.msBeforeNext` (spec §2 and §7: `Retry-After` is not
    guaranteed), or None when the body does not carry it."""
    try:
        errors = response.json().get("errors")
        wait = errors[0]["data"]["msBeforeNext"]
    except (ValueError, AttributeError, LookupError, TypeError):
        return None
    if isinstance(wait, bool) or not isinstance(wait, int | float) or wait < 0:
        return None
    return wait / 1000.0


class SegmentPublicApiClient:
    def __init__(self, base_url: str, token: str, *, timeout: float = 30.0,
                 retry: RetryPolicy | None = None) -> None:
        self.http = HttpClient(
            "segment_public_api",
            base_url,
            auth=bearer_auth(token),
            headers={"Accept": "application/json"},
            timeout=timeout,
            retry=retry or RetryPolicy(),
            retryable=RETRYABLE,
            retry_hint=ms_before_next,
        )

    def iter_audit_events(
        self,
        start: datetime,
        end: datetime,
        *,
        page_size: int = MAX_PAGE_SIZE,
        resource_type: str | None = None,
        on_retry: Callable[[RetryEvent], None] | None = None,
    ) -> Iterator[dict]:
        """Every audit event with start < timestamp <= end, walking the cursor to the last page."""
        base = {"pagination.count": page_size, "startTime": _iso(start), "endTime": _iso(end)}
        if resource_type:
            base["resourceType"] = resource_type
        return self._walk("/audit-events", "events", base, on_retry)

    def iter_sources(self, *, page_size: int = MAX_PAGE_SIZE,
                     on_retry: Callable[[RetryEvent], None] | None = None) -> Iterator[dict]:
        """Every source of the workspace (`GET /sources`, spec §7): `id`, `slug`, `name`, `enabled`,
        `writeKeys`, `metadata`."""
        return self._walk("/sources", "sources", {"pagination.count": page_size}, on_retry)

    def iter_destinations(self, *, page_size: int = MAX_PAGE_SIZE,
                          on_retry: Callable[[RetryEvent], None] | None = None) -> Iterator[dict]:
        """Every destination of the workspace (`GET /destinations`, `DestinationV1`): `id`, `name`, `enabled`,
        `metadata`, `sourceId` (the source it is connected to), `settings`."""
        return self._walk("/destinations", "destinations", {"pagination.count": page_size}, on_retry)

    def delivery_overview(self, step: str, source_id: str, start: datetime, end: datetime, *,
                          granularity: str = "HOUR", destination_id: str | None = None,
                          group_by: Sequence[str] = (),
                          on_retry: Callable[[RetryEvent], None] | None = None) -> dict:
        """One step's metrics for [start, end): the answer's `data` (`total`, `dataset`, `pagination`), every
        page of `dataset` gathered. `destination_id` is required by the destination steps."""
        if step not in SOURCE_STEPS + DESTINATION_STEPS:
            raise ValueError(f"unknown Delivery Overview step {step!r}")
        if step in DESTINATION_STEPS and not destination_id:
            raise ValueError(f"the Delivery Overview step {step!r} needs a destination_id")
        params = {"sourceId": source_id, "startTime": _iso(start), "endTime": _iso(end),
                  "granularity": granularity, "pagination.count": MAX_PAGE_SIZE}
        if step in DESTINATION_STEPS:
            params["destinationConfigId"] = destination_id
        if group_by:
            params["groupBy"] = ",".join(group_by)
        path = f"/delivery-overview/{step}"
        headers = {"Accept": DELIVERY_OVERVIEW_ACCEPT}
        first: dict = {}

        def fetch(cursor: str | None) -> tuple[list[dict], str | None]:
            page = dict(params, **({"pagination.cursor": cursor} if cursor else {}))
            data = self.http.get_json(path, params=page, headers=headers, on_retry=on_retry)["data"]
            first.setdefault("total", data.get("total", 0))
            return data.get("dataset") or [], (data.get("pagination") or {}).get("next")

        dataset = list(paginate(fetch))
        return {"total": first.get("total", 0), "dataset": dataset}

    def create_regulation(self, regulation_type: str, subject_ids: Sequence[str], *,
                          subject_type: str = "USER_ID", source_id: str | None = None,
                          on_retry: Callable[[RetryEvent], None] | None = None) -> str:
        """File a regulation (workspace scope, or the source `source_id`); returns its `regulateId`.

        Retried only while nothing can have been filed (429, 408, a connection that never opened); a failure
        that may have filed it raises `RegulationOutcomeUnknown`. A refusal (400, 404, 422: the same request
        would be refused again) raises `VendorFatalError` with Segment's message; 401/403 `VendorAuthError`.
        """
        path = f"/regulations/sources/{_segment(source_id)}" if source_id is not None else "/regulations"
        body = {"regulationType": regulation_type, "subjectType": subject_type,
                "subjectIds": list(subject_ids)}

        def before_retry(event: RetryEvent) -> None:
            if not event.reason.startswith(_FILING_RETRYABLE):
                raise RegulationOutcomeUnknown(self.http.vendor, "POST", path,
                                               f"the regulation may have been filed ({event.reason}); "
                                               "reconcile with GET /regulations before filing it again",
                                               attempts=event.attempt)
            if on_retry is not None:
                on_retry(event)

        try:
            data = self.http.post_json(path, body, on_retry=before_retry)["data"]
        except VendorRequestError as exc:
            raise VendorFatalError(exc.vendor, exc.method, exc.path, exc.vendor_message, status=exc.status,
                                   attempts=exc.attempts) from None
        except VendorUnavailable as exc:
            # Out of attempts: only the last failure was not vetted by `before_retry`.
            last = exc.vendor_message.removeprefix("gave up: ")
            if last.startswith(_FILING_RETRYABLE):
                raise
            raise RegulationOutcomeUnknown(exc.vendor, exc.method, exc.path,
                                           f"the regulation may have been filed ({last}); reconcile with "
                                           "GET /regulations before filing it again", status=exc.status,
                                           attempts=exc.attempts) from None
        return str(data["regulateId"])

    def get_regulation(self, regulate_id: str, *,
                       on_retry: Callable[[RetryEvent], None] | None = None) -> dict:
        """The regulation `regulate_id` (`id`, `workspaceId`, `overallStatus`, `createdAt`, `finishedAt`?,
        `streamStatus`); an unknown id raises `VendorRequestError` (404)."""
        path = f"/regulations/{_segment(regulate_id)}"
        return self.http.get_json(path, on_retry=on_retry)["data"]["regulation"]

    def iter_regulations(self, *, status: str | None = None, regulation_types: Sequence[str] | None = None,
                         source_id: str | None = None, page_size: int = MAX_PAGE_SIZE,
                         on_retry: Callable[[RetryEvent], None] | None = None) -> Iterator[dict]:
        """The workspace's regulations (or the source `source_id`'s), newest first as Segment lists them:
        `id`, `subjectType`, `subjects`, `status`, `createdAt`, `regulationType`, `finishedAt`?."""
        params: dict = {"pagination.count": page_size}
        if status:
            params["status"] = status
        if regulation_types:
            params["regulationTypes"] = list(regulation_types)  # repeated: the SDK's "multi" format
        path = f"/regulations/sources/{_segment(source_id)}" if source_id is not None else "/regulations"
        return self._walk(path, "regulations", params, on_retry)

    def iter_tracking_plans(self, *, plan_type: str | None = None, page_size: int = MAX_PAGE_SIZE,
                            on_retry: Callable[[RetryEvent], None] | None = None) -> Iterator[dict]:
        """Every tracking plan of the workspace (`id`, `name`, `slug`, `description`, `type`, `createdAt`,
        `updatedAt`), or those of `plan_type` (LIVE, ...)."""
        params: dict = {"pagination.count": page_size}
        if plan_type:
            params["type"] = plan_type
        return self._walk("/tracking-plans", "trackingPlans", params, on_retry)

    def get_tracking_plan(self, plan_id: str, *,
                          on_retry: Callable[[RetryEvent], None] | None = None) -> dict:
        """The plan `plan_id`; an unknown id raises `VendorRequestError` (404)."""
        path = f"/tracking-plans/{_segment(plan_id)}"
        return self.http.get_json(path, on_retry=on_retry)["data"]["trackingPlan"]

    def iter_tracking_plan_sources(self, plan_id: str, *, page_size: int = MAX_PAGE_SIZE,
                                   on_retry: Callable[[RetryEvent], None] | None = None) -> Iterator[dict]:
        """The sources connected to the plan, as `GET /sources` lists them (`id`, `slug`, `writeKeys`,
        ...)."""
        return self._walk(f"/tracking-plans/{_segment(plan_id)}/sources", "sources",
                          {"pagination.count": page_size}, on_retry)

    def iter_tracking_plan_rules(self, plan_id: str, *, page_size: int = MAX_PAGE_SIZE,
                                 on_retry: Callable[[RetryEvent], None] | None = None) -> Iterator[dict]:
        """The plan's rules: `type` (COMMON, IDENTIFY, GROUP, TRACK, PAGE, SCREEN), `key`?, `jsonSchema`,
        `version`, `createdAt`?, `updatedAt`?, `deprecatedAt`?."""
        return self._walk(f"/tracking-plans/{_segment(plan_id)}/rules", "rules",
                          {"pagination.count": page_size}, on_retry)

    def replace_tracking_plan_rules(self, plan_id: str, rules: Sequence[Mapping], *,
                                    on_retry: Callable[[RetryEvent], None] | None = None) -> None:
        """Make `rules` (each `type`, `key`?, `jsonSchema`, `version`) the plan's whole rule set. A PUT of the
        same set is harmless, so it is retried like any read."""
        self.http.request("PUT", f"/tracking-plans/{_segment(plan_id)}/rules",
                          json={"rules": [dict(rule) for rule in rules]}, on_retry=on_retry)

    def probe(self, path: str, params: Mapping[str, str] | None = None) -> None:
        """Read one item of the list endpoint `path` (`pagination.count=1`, plus `params`); raises the
        `clients.base` errors when the token may not read it (401/403) or the endpoint does not answer."""
        self.http.request("GET", path, params={"pagination.count": 1, **(params or {})})

    def _walk(self, path: str, key: str, params: dict, on_retry: Callable[[RetryEvent], None] | None
              ) -> Iterator[dict]:
        """The items under `data.<key>` of every page of `path`, following `data.pagination.next` (§2)."""

        def fetch(cursor: str | None) -> tuple[list[dict], str | None]:
            page = dict(params, **({"pagination.cursor": cursor} if cursor else {}))
            data = self.http.get_json(path, params=page, on_retry=on_retry)["data"]
            return data.get(key, []), (data.get("pagination") or {}).get("next")

        return paginate(fetch)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> SegmentPublicApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _segment(value: str) -> str:
    """An id as one path segment (the SDK's `encodeURIComponent`)."""
    return quote(str(value), safe="")


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
