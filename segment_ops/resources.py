"""Dagster resources: configuration in, vendor clients out. Clients know nothing of Dagster.

Every field comes from the environment through `dg.EnvVar` when the variable is set, so the UI shows
the variable's name, never a secret; when it is unset the sandbox default from `config.SETTINGS`
applies (see the README's configuration table).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import dagster as dg
from pydantic import Field

from segment_ops.clients import PendoClient, SegmentPublicApiClient, SegmentTrackingClient, SplunkHecClient
from segment_ops.clients.base import RetryPolicy
from segment_ops.clients.fullstory import FullstoryClient, FullstoryUsersDestination
from segment_ops.clients.segment_profiles import SegmentProfilesClient
from segment_ops.clients.segment_tracking import DEFAULT_MAX_REQUESTS_PER_SECOND
from segment_ops.clients.slack import SlackWebhookClient
from segment_ops.config import Settings, load_settings
from segment_ops.engine import store
from segment_ops.engine.guard import GuardLimits
from segment_ops.engine.preflight import CheckResult
from segment_ops.engine.redaction import (
    DEFAULT_HASH_FIELDS,
    DEFAULT_PATTERNS,
    DEFAULT_SCAN_FIELDS,
    RedactionRules,
)
from segment_ops.preflight import (
    gate_sending,
    preflight_cache_seconds,
    require_destination,
)
from segment_ops.syncs.audit_trail.siem import JsonLinesDestination, SplunkHecDestination
from segment_ops.syncs.reverse_etl.model import (
    DEFAULT_TRACKING_URL_ENV,
    DEFAULT_WRITE_KEY_ENV,
    SegmentDestination,
)


class SegmentTrackingResource(dg.ConfigurableResource):
    """Segment HTTP Tracking API: where identify/track/group calls are delivered."""

    base_url: str
    write_key: str = Field(repr=False)
    gzip: bool = Field(default=True, description="gzip batch bodies above 16 KB.")
    max_requests_per_second: float = Field(
        default=DEFAULT_MAX_REQUESTS_PER_SECOND,
        description="Request-rate cap; Segment recommends <= 1,000 req/s per workspace (spec §1)."
    )
    max_in_flight: int = Field(default=4, description="Concurrent batch requests.")

    def get_client(self) -> SegmentTrackingClient:
        return SegmentTrackingClient(
            self.base_url,
            self.write_key,
            gzip=self.gzip,
            max_requests_per_second=self.max_requests_per_second,
            max_connections=max(self.max_in_flight, 1),
        )

    def for_destination(self, destination: SegmentDestination,
                        used_by: Sequence[str]) -> SegmentTrackingResource:
        """This resource sending to `destination` instead (a reverse-ETL model's `write_key_env:` /
        `tracking_url_env:`): each variable it names is read now, at run time, as `dg.EnvVar` reads it, so its
        value is never in the definitions; a variable it leaves at the default keeps this resource's value.
        Raises `preflight.DestinationNotSet` naming each variable that is unset."""
        if destination.is_default:
            return self
        key, url = require_destination(load_settings(), destination, used_by)
        return SegmentTrackingResource(
            base_url=self.base_url if destination.tracking_url_env == DEFAULT_TRACKING_URL_ENV else url,
            write_key=self.write_key if destination.write_key_env == DEFAULT_WRITE_KEY_ENV else key,
            gzip=self.gzip, max_requests_per_second=self.max_requests_per_second,
            max_in_flight=self.max_in_flight)


class FullstoryResource(dg.ConfigurableResource):
    """Fullstory's Server API (users): where reverse-ETL models with `destination: fullstory_users` send."""

    base_url: str
    api_key: str = Field(repr=False)
    max_in_flight: int = Field(default=2, description="Concurrent batches (each one request or import job).")

    def get_client(self) -> FullstoryUsersDestination:
        return FullstoryUsersDestination(FullstoryClient(self.base_url, self.api_key))

    def get_api(self) -> FullstoryClient:
        """The Server API client itself (the read-back of delivered users)."""
        return FullstoryClient(self.base_url, self.api_key)


class SegmentPublicApiResource(dg.ConfigurableResource):
    """Segment Public API (audit trail, regulations, tracking plans)."""

    base_url: str
    token: str = Field(repr=False)

    def get_client(self, retry: RetryPolicy | None = None) -> SegmentPublicApiClient:
        return SegmentPublicApiClient(self.base_url, self.token, retry=retry)


class SegmentProfilesResource(dg.ConfigurableResource):
    """Segment Profile API (Unify), read by the `landed_in_segment` checks; and how they read.

    `space_id` or `token` empty: not configured, and the checks are skipped saying which setting is missing.
    """

    base_url: str = Field(default="", description="SEGMENT_PROFILES_URL.")
    space_id: str = Field(default="", description="SEGMENT_PROFILES_SPACE_ID.")
    token: str = Field(default="", repr=False, description="SEGMENT_PROFILES_TOKEN.")
    sample_size: int = Field(default=20, description="Identify calls read back per sync run; 0: off.")
    delay_seconds: float = Field(default=60.0, description="How long after delivery a call is read back.")
    warn_missing_share: float = Field(default=0.0, description="Missing-profile share above which the check "
                                                               "fails with severity WARN.")
    error_missing_share: float = Field(default=0.1, description="Missing-profile share above which the check "
                                                                "fails with severity ERROR.")

    def skip_reason(self) -> str | None:
        """Why read-back cannot run with these settings (None: it can)."""
        if self.sample_size == 0:
            return "SEGMENT_PROFILES_SAMPLE_SIZE is 0: read-back verification is off"
        missing = [name for name, value in (("SEGMENT_PROFILES_URL", self.base_url),
                                            ("SEGMENT_PROFILES_SPACE_ID", self.space_id),
                                            ("SEGMENT_PROFILES_TOKEN", self.token)) if not value]
        if missing:
            return (f"{', '.join(missing)} not set: delivered calls cannot be read back through Segment's "
                    "Profile API (Unify), so whether they landed is not verified (see the README, "
                    "\"Read-back verification\")")
        return None

    def get_client(self) -> SegmentProfilesClient:
        return SegmentProfilesClient(self.base_url, self.space_id, self.token)


class PendoResource(dg.ConfigurableResource):
    """Pendo Aggregation API."""

    base_url: str
    integration_key: str = Field(repr=False)
    retry_max_attempts: int = Field(default=10,
                                    description="Attempts per request on 429/5xx (Pendo's leaky bucket).")
    retry_max_seconds: float = Field(default=300.0, description="Total time one request may spend retrying.")
    retry_backoff_seconds: float = Field(default=0.5, description="First backoff step (doubles per retry; "
                                                                  "a Retry-After header wins when longer).")
    app_ids: str = Field(default="*", description="PENDO_APP_IDS: `*` for every app of the subscription, or "
                                                  "comma-separated app ids (else Pendo answers for the "
                                                  "default app).")

    def get_client(self) -> PendoClient:
        from segment_ops.clients.pendo import AppScope

        retry = RetryPolicy(max_attempts=self.retry_max_attempts, max_elapsed=self.retry_max_seconds,
                            backoff_initial=self.retry_backoff_seconds)
        return PendoClient(self.base_url, self.integration_key, retry=retry,
                           apps=AppScope.parse(self.app_ids))


class SplunkHecResource(dg.ConfigurableResource):
    """Splunk HTTP Event Collector, the first SIEM destination."""

    base_url: str
    token: str = Field(repr=False)
    index: str
    host: str = Field(default="segment-ops", description="HEC `host` of every audit event sent.")
    max_in_flight: int = Field(default=2, description="Concurrent HEC requests.")
    ack_timeout_seconds: float = Field(
        default=300.0, description="With indexer ack on: how long a batch's ackId may stay unacknowledged "
                                   "before the batch is sent again (SPLUNK_HEC_ACK_TIMEOUT_SECONDS).")
    ack_settle_seconds: float = Field(
        default=30.0, description="With indexer ack on: how long a run keeps polling acks after sending "
                                  "before it ends; the next run polls the rest first (while acks are "
                                  "awaited, the audit sensor starts one every 3 minutes).")
    channel: str = Field(default="", description="HEC request channel GUID (SPLUNK_HEC_CHANNEL); empty: the "
                                                 "one kept in the sync's state.")
    retry_max_attempts: int = Field(default=10, description="Attempts per request on 429/500/502/503/504 and "
                                    "network errors or timeouts (HEC does no dedupe: a batch retried after a "
                                    "timeout may be indexed twice).")
    retry_max_seconds: float = Field(default=300.0, description="Total time one request may spend retrying.")

    def get_client(self, channel: str | None = None) -> SplunkHecClient:
        retry = RetryPolicy(max_attempts=self.retry_max_attempts, max_elapsed=self.retry_max_seconds)
        return SplunkHecClient(self.base_url, self.token, channel=channel, retry=retry)

    def get_destination(self, channel: str | None = None) -> SplunkHecDestination:
        """The audit-trail SIEM destination on `channel`, else the configured one, else a new GUID: a channel
        is always sent, so indexer ack works when on."""
        channel = channel or self.channel or str(uuid.uuid4())
        try:
            uuid.UUID(channel)
        except ValueError:
            raise ValueError(f"SPLUNK_HEC_CHANNEL must be a GUID, got {channel!r}") from None
        return SplunkHecDestination(self.get_client(channel=channel), index=self.index, host=self.host,
                                    ack_timeout=self.ack_timeout_seconds, ack_settle=self.ack_settle_seconds)


class JsonLinesSiemResource(dg.ConfigurableResource):
    """A generic HTTPS JSON-lines endpoint (bearer token), the second SIEM destination; off while `url` is
    empty."""

    url: str = Field(default="", repr=False,
                     description="Full URL to POST newline-delimited JSON to (a secret: its path may hold a "
                                 "credential); empty: not used.")
    token: str = Field(default="", repr=False)
    retry_max_attempts: int = Field(default=10, description="Attempts per request on 429/5xx.")
    retry_max_seconds: float = Field(default=300.0, description="Total time one request may spend retrying.")

    def get_destination(self) -> JsonLinesDestination:
        retry = RetryPolicy(max_attempts=self.retry_max_attempts, max_elapsed=self.retry_max_seconds)
        return JsonLinesDestination(self.url, self.token, retry=retry)


class AuditRedactionResource(dg.ConfigurableResource):
    """How audit events are redacted before they reach any SIEM (`engine.redaction`): every string, wherever
    it sits, has its emails and tokens replaced by salted HMAC-SHA256 hashes; `hash_fields` are hashed whole,
    `drop_fields` removed."""

    salt: str = Field(repr=False, description="Secret key of the hashes (SEGMENT_OPS_REDACTION_SALT).")
    enabled: bool = Field(default=True,
                          description="False forwards events exactly as the Public API returned them.")
    hash_fields: list[str] = Field(default=list(DEFAULT_HASH_FIELDS),
                                   description="Fields (dotted paths) whose whole value is hashed.")
    drop_fields: list[str] = Field(default_factory=list, description="Fields (dotted paths) removed.")
    scan_fields: list[str] = Field(default=list(DEFAULT_SCAN_FIELDS),
                                   description="Ignored (kept so that older run config still loads): every "
                                               "string of an event is scanned.")
    patterns: list[str] = Field(default=list(DEFAULT_PATTERNS),
                                description="Regular expressions of secrets and personal data, hashed "
                                            "wherever they occur.")

    def get_rules(self) -> RedactionRules | None:
        if not self.enabled:
            return None
        return RedactionRules(salt=self.salt, hash_fields=tuple(self.hash_fields),
                              drop_fields=tuple(self.drop_fields), scan_fields=tuple(self.scan_fields),
                              patterns=tuple(self.patterns))


class WarehouseResource(dg.ConfigurableResource):
    """The warehouse reverse-ETL models run against: any SQLAlchemy URL."""

    url: str


class AlertsResource(dg.ConfigurableResource):
    """Where alerts go (a Slack-compatible incoming webhook; its URL is the secret) and the UI they link
    to."""

    webhook_url: str = Field(repr=False, description="ALERT_WEBHOOK_URL.")
    dagster_ui_url: str = Field(default="http://127.0.0.1:3000", description="Base URL of the Dagster UI.")
    retry_max_attempts: int = Field(default=4, description="Attempts per alert on 429/5xx.")
    retry_max_seconds: float = Field(default=8.0,
                                     description="Total time one alert may spend retrying (a sensor tick "
                                                 "handles up to 5 runs and is cut off after 60 s).")
    timeout_seconds: float = Field(default=4.0, description="Connect/read timeout of one post attempt.")

    def get_client(self) -> SlackWebhookClient:
        retry = RetryPolicy(max_attempts=self.retry_max_attempts, max_elapsed=self.retry_max_seconds,
                            retry_after_cap=min(4.0, self.retry_max_seconds))
        return SlackWebhookClient(self.webhook_url, timeout=self.timeout_seconds, retry=retry)

    def run_url(self, run_id: str) -> str:
        return f"{self.dagster_ui_url.rstrip('/')}/runs/{run_id}"


class DeliveryHealthResource(dg.ConfigurableResource):
    """Thresholds of the delivery-health check over every sync's ledger."""

    window_hours: float = Field(default=24.0, description="Recent hours of each ledger that are read.")
    max_failed_share: float = Field(default=0.05, description="Share (0-1) of rejected or failed messages in "
                                                              "the window above which a sync is flagged.")
    min_messages: int = Field(default=20, description="Syncs with fewer messages in the window are not "
                                                      "judged (DELIVERY_HEALTH_MIN_MESSAGES).")


class PreflightResource(dg.ConfigurableResource):
    """The preflight gate in front of every sync that sends to Segment (`segment_ops.preflight`)."""

    cache_seconds: float = Field(default=600.0, description="PREFLIGHT_CACHE_SECONDS: how long an answer of "
                                                            "the Public API about the write key is reused.")

    def check_sending(self, segment: SegmentTrackingResource, destination: SegmentDestination | None = None,
                      used_by: Sequence[str] = ()) -> list[CheckResult]:
        """The sending checks of the key and host `segment` sends with (`preflight.gate_sending`); with a
        model's own `destination`, that destination's check, named after the models in `used_by`."""
        return gate_sending(load_settings(), tracking_url=segment.base_url, write_key=segment.write_key,
                            max_age=self.cache_seconds, destination=destination, used_by=used_by)


class StagingResource(dg.ConfigurableResource):
    """Where local state lives: one DuckDB staging file per sync, inboxes, the demo warehouse."""

    home: str

    def path(self, *parts: str) -> Path:
        target = Path(self.home).joinpath(*parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def staging_db(self, sync: str) -> Path:
        """One DuckDB file per sync, so runs of different syncs never contend for a file lock."""
        target = store.staging_file(Path(self.home), sync)
        target.parent.mkdir(parents=True, exist_ok=True)
        return target


def run_heartbeat_seconds(settings: Settings) -> float:
    """RUN_HEARTBEAT_SECONDS, or a `ValueError` naming it."""
    return _number(settings, "RUN_HEARTBEAT_SECONDS", low=0.5, high=600.0)


def run_heartbeat_timeout_seconds(settings: Settings) -> float:
    """RUN_HEARTBEAT_TIMEOUT_SECONDS, at least three heartbeats, or a `ValueError` naming it."""
    timeout = _number(settings, "RUN_HEARTBEAT_TIMEOUT_SECONDS", low=5.0, high=86_400.0)
    interval = run_heartbeat_seconds(settings)
    if timeout < 3 * interval:
        raise ValueError(f"RUN_HEARTBEAT_TIMEOUT_SECONDS ({timeout:g}) must be at least three heartbeats "
                         f"(3 x RUN_HEARTBEAT_SECONDS = {3 * interval:g})")
    return timeout


def plan_guard_limits(settings: Settings | None = None) -> GuardLimits:
    """The plan guard's limits from the PLAN_GUARD_* settings, or a `ValueError` naming the variable."""
    settings = settings or load_settings()
    cap = settings["PLAN_GUARD_MAX_MESSAGES"].strip()
    least = settings["PLAN_GUARD_MIN_DELIVERED"].strip()
    for name, raw in (("PLAN_GUARD_MAX_MESSAGES", cap), ("PLAN_GUARD_MIN_DELIVERED", least)):
        if not raw.isdigit():
            raise ValueError(f"{name} must be a whole number >= 0, got {raw!r}")
    return GuardLimits(
        max_removed_share=_number(settings, "PLAN_GUARD_MAX_REMOVED_SHARE", low=0.0, high=1.0),
        max_changed_share=_number(settings, "PLAN_GUARD_MAX_CHANGED_SHARE", low=0.0, high=1.0),
        max_nulled_share=_number(settings, "PLAN_GUARD_MAX_NULLED_SHARE", low=0.0, high=1.0),
        max_messages=int(cap), min_delivered=int(least))


def build_resources(settings: Settings | None = None) -> dict[str, dg.ConfigurableResource]:
    """Every resource the code location binds, from the environment with sandbox defaults."""
    settings = settings or load_settings()

    def value(name: str) -> str | dg.EnvVar:
        return dg.EnvVar(name) if settings.is_set(name) else settings[name]

    return {
        "segment": SegmentTrackingResource(base_url=value("SEGMENT_TRACKING_URL"),
                                           write_key=value("SEGMENT_WRITE_KEY")),
        "segment_public_api": SegmentPublicApiResource(
            base_url=value("SEGMENT_PUBLIC_API_URL"), token=value("SEGMENT_PUBLIC_API_TOKEN")
        ),
        "segment_profiles": _profiles_resource(settings, value),
        "fullstory": FullstoryResource(base_url=value("FULLSTORY_API_URL"),
                                       api_key=value("FULLSTORY_API_KEY")),
        "pendo": PendoResource(base_url=value("PENDO_API_URL"),
                               integration_key=value("PENDO_INTEGRATION_KEY"),
                               app_ids=value("PENDO_APP_IDS")),
        "splunk": SplunkHecResource(
            base_url=value("SPLUNK_HEC_URL"), token=value("SPLUNK_HEC_TOKEN"), index=value("SPLUNK_INDEX"),
            ack_timeout_seconds=_number(settings, "SPLUNK_HEC_ACK_TIMEOUT_SECONDS", low=0.0),
            channel=value("SPLUNK_HEC_CHANNEL"),
        ),
        "siem_jsonl": JsonLinesSiemResource(url=value("SIEM_JSONL_URL"), token=value("SIEM_JSONL_TOKEN")),
        "audit_redaction": AuditRedactionResource(salt=value("SEGMENT_OPS_REDACTION_SALT")),
        "warehouse": WarehouseResource(url=value("WAREHOUSE_URL")),
        # SEGMENT_OPS_HOME is always resolved to an absolute path, so runs in any cwd agree on it.
        "staging": StagingResource(home=settings["SEGMENT_OPS_HOME"]),
        "alerts": AlertsResource(webhook_url=value("ALERT_WEBHOOK_URL"),
                                 dagster_ui_url=settings["DAGSTER_UI_URL"]),
        "preflight": PreflightResource(cache_seconds=preflight_cache_seconds(settings)),
        "delivery_health": DeliveryHealthResource(
            window_hours=_number(settings, "DELIVERY_HEALTH_WINDOW_HOURS", low=0.0),
            max_failed_share=_number(settings, "DELIVERY_HEALTH_MAX_FAILED_SHARE", low=0.0, high=1.0),
            min_messages=_whole_number(settings, "DELIVERY_HEALTH_MIN_MESSAGES"),
        ),
    }


# The Profile API's connection settings. Unset, they point at the sandbox like every vendor's; but once
# SEGMENT_TRACKING_URL sends to a real Segment, the sandbox's profiles would prove nothing, so each must then
# be set (the Profile API needs Unify, which not every workspace has): unset, the read-back is skipped.
_PROFILE_API = ("SEGMENT_PROFILES_URL", "SEGMENT_PROFILES_SPACE_ID", "SEGMENT_PROFILES_TOKEN")


def _profiles_resource(settings: Settings,
                       value: Callable[[str], str | dg.EnvVar]) -> SegmentProfilesResource:
    live = settings.is_set("SEGMENT_TRACKING_URL")
    connection = {field: value(name) if settings.is_set(name) or not live else ""
                  for field, name in zip(("base_url", "space_id", "token"), _PROFILE_API, strict=True)}
    sample = settings["SEGMENT_PROFILES_SAMPLE_SIZE"].strip()
    if not sample.isdigit():
        raise ValueError(f"SEGMENT_PROFILES_SAMPLE_SIZE must be a whole number >= 0, got {sample!r}")
    warn = _number(settings, "SEGMENT_PROFILES_WARN_MISSING_SHARE", low=0.0, high=1.0)
    error = _number(settings, "SEGMENT_PROFILES_ERROR_MISSING_SHARE", low=0.0, high=1.0)
    if error < warn:
        raise ValueError(f"SEGMENT_PROFILES_ERROR_MISSING_SHARE ({error:g}) must not be below "
                         f"SEGMENT_PROFILES_WARN_MISSING_SHARE ({warn:g})")
    return SegmentProfilesResource(
        **connection, sample_size=int(sample), warn_missing_share=warn, error_missing_share=error,
        delay_seconds=_number(settings, "SEGMENT_PROFILES_DELAY_SECONDS", low=0.0, high=float("inf")))


def _number(settings: Settings, name: str, *, low: float, high: float | None = None) -> float:
    """A numeric setting, or a `ValueError` naming the variable and the range it must be in."""
    raw = settings[name]
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not (value > low if high is None else low <= value <= high):
        limits = f"> {low:g}" if high is None else f"between {low:g} and {high:g}"
        raise ValueError(f"{name} must be a number {limits}, got {raw!r}")
    return value


def _whole_number(settings: Settings, name: str) -> int:
    """A whole-number setting >= 1, or a `ValueError` naming the variable."""
    raw = settings[name]
    if not raw.strip().isdigit() or int(raw) < 1:
        raise ValueError(f"{name} must be a whole number >= 1, got {raw!r}")
    return int(raw)
