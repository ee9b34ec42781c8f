"""The preflight checks of every configured vendor, through real HTTP with the project's clients.

`all_checks` is what `segment-ops check` and the `ops/preflight` asset run; `sending_checks` is what the
gate in front of every sync that sends to Segment runs (the write key's source and region). The generic
part (results, table, cache, gate) is `engine.preflight`. A check never prints a secret: it names the
environment variable, and every text is scrubbed of secret values once more before it is shown.

Which vendors are checked: all of them while every vendor URL is unset (the sandbox); once a vendor URL
is set (a live deployment), a vendor whose URL is still unset is skipped as not configured, and a
sandbox credential paired with a live URL counts as not set.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Generic, TypeVar
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from segment_ops.clients.base import HttpClient, RetryPolicy, VendorAuthError, VendorError, VendorUnavailable
from segment_ops.clients.fullstory import FullstoryClient
from segment_ops.clients.pendo import (
    DAY_MS,
    AppScope,
    PendoClient,
    PendoSettingError,
    day_range_source,
    local_day_of,
    local_midnight_ms,
    subscription_zone,
)
from segment_ops.clients.segment_profiles import SegmentProfilesClient
from segment_ops.clients.segment_public_api import SegmentPublicApiClient
from segment_ops.clients.slack import SlackWebhookClient, WebhookUrlError
from segment_ops.clients.splunk_hec import AckSetting, HecConfigurationError, SplunkHecClient, hec_event
from segment_ops.config import (
    SANDBOX_FULLSTORY_API_KEY,
    SANDBOX_FULLSTORY_STREAM_TOKEN,
    SANDBOX_HEAP_WEBHOOK_SECRET,
    SECRET_NAMES,
    HomeConflictError,
    Settings,
)
from segment_ops.engine.preflight import Check, CheckResult, PreflightCache, Status, describe, gate
from segment_ops.engine.progress import host_of
from segment_ops.engine.warehouse import MissingDriverError, MissingWarehouseFileError, WarehouseError
from segment_ops.syncs.reverse_etl.model import (
    ModelError,
    ModelSpec,
    SegmentDestination,
    load_models,
    models_dir,
)

T = TypeVar("T")

# A check answers within seconds: two attempts, a short backoff, and at most this long per request.
CHECK_TIMEOUT = 10.0
CHECK_RETRY = RetryPolicy(max_attempts=2, backoff_initial=0.5, backoff_max=1.0, max_elapsed=8.0,
                          retry_after_cap=2.0)
CACHE_FILE = ("preflight", "results.json")
MAX_CACHE_SECONDS = 7 * 86_400.0  # PREFLIGHT_CACHE_SECONDS: a week at most
# The random key of the cached answers' fingerprints (HMAC-SHA256), made once per SEGMENT_OPS_HOME (mode
# 0600): the cache file then holds no unsalted digest of a secret that could be tested against guesses.
FINGERPRINT_KEY_FILE = ("preflight", "fingerprint.key")
# The Public API endpoints the syncs read, and who reads them. The list endpoints are probed with
# `pagination.count=1` (`/sources` is the one list the write-key check reads anyway); Delivery Overview with
# one step over the last hour for the write key's source. `/audit-events` only while the audit trail has a
# SIEM to forward to (`_audit_trail_used`).
AUDIT_EVENTS = "/audit-events"
DELIVERY_OVERVIEW_PROBE_STEP = "successfully-received"
PUBLIC_API_ENDPOINTS = {AUDIT_EVENTS: "the audit trail", "/sources": "the write-key check, Delivery Overview",
                        "/destinations": "Delivery Overview",
                        f"/delivery-overview/{DELIVERY_OVERVIEW_PROBE_STEP}": "Delivery Overview"}
HEC_PROBE_SOURCETYPE = "segment_ops:preflight"
# What a Slack incoming webhook answers (400) to an empty message: `no_text` for a JSON object without text,
# `invalid_payload` for a body it cannot read, and `missing_text_or_fallback_or_attachments`, which
# hooks.slack.com answers a payload without text (slackapi/slack-github-action#117, hastic-server#708).
SLACK_EMPTY_MESSAGE_ANSWERS = ("no_text", "invalid_payload", "missing_text_or_fallback_or_attachments")
# With indexer ack on, HEC acks can take minutes (spec §7); the README asks for 300 s or more.
MIN_ACK_TIMEOUT_SECONDS = 300.0
PENDO_LOOKBACK_DAYS = 7
VENDOR_URLS = ("SEGMENT_TRACKING_URL", "SEGMENT_PUBLIC_API_URL", "HEAP_API_URL", "PENDO_API_URL",
               "SPLUNK_HEC_URL", "ALERT_WEBHOOK_URL", "FULLSTORY_API_URL")
US, EU = "US", "EU"
# Segment's hosts per region (spec §1, §2). The sandbox's mounts stand for the US hosts, `/segment_eu`
# for the EU tracking host.
TRACKING_HOSTS = {"api.segment.io": US, "events.eu1.segmentapis.com": EU}
PUBLIC_API_HOSTS = {"api.segmentapis.com": US, "eu1.api.segmentapis.com": EU}
TRACKING_BASE = {US: "https://api.segment.io", EU: "https://events.eu1.segmentapis.com"}
SANDBOX_TRACKING = {"/segment": US, "/segment_eu": EU}
SANDBOX_PUBLIC_API = {"/segmentapis": US}
# The Profile API's connection settings (as `resources` reads them) and the profile the check reads: no user
# has this id, so a token that may read the space gets 404 and reads nothing.
PROFILE_API = ("SEGMENT_PROFILES_URL", "SEGMENT_PROFILES_SPACE_ID", "SEGMENT_PROFILES_TOKEN")
PROFILE_PROBE_ID = "user_id:segment-ops-preflight-no-such-user"
PROFILES_TOKEN_HOME = "Unify > Unify settings > API access"
SOURCE_KEYS = "Connections > Sources > the source > Settings > API Keys"
PENDO_ZONE = "Pendo's Settings > Subscription settings > Time Zone"
FULLSTORY_KEYS = "Fullstory's Settings > Integrations > API Keys"
# A stream's bearer token is the only thing between the internet and the receiver (Fullstory documents no
# signature): long enough that it cannot be guessed (24 characters of `secrets.token_urlsafe` are 144 bits).
MIN_STREAM_TOKEN_CHARS = 24

# The columns of the results table every Dagster surface shows (`result_rows`), as `segment-ops check` prints.
RESULT_COLUMNS = ("check", "setting(s)", "result", "what to do")

SENDING_CHECKS = ("segment_write_key", "segment_region")
CHECK_NAMES = (*SENDING_CHECKS, "segment_public_api", "segment_profiles", "splunk_hec", "splunk_hec_ack",
               "splunk_hec_index", "pendo_key", "pendo_timezone", "heap_webhook_secret", "heap_receiver",
               "fullstory_api", "fullstory_stream_token", "slack_webhook", "warehouse", "reverse_etl_models")


def all_checks(settings: Settings) -> list[Check]:
    """Every check, in the table's order (`CHECK_NAMES`), with one `segment_destination:<models>` row per
    other Segment destination reverse-ETL models name after `segment_region`."""
    sources = _sources_fetch(settings)
    models = load_models(models_dir(settings))  # parsed once, for the destination rows and reverse_etl_models
    return [*_segment_checks(settings, sources), *_destination_checks(settings, sources, models),
            _public_api_check(settings, sources),
            _profiles_check(settings), *_splunk_checks(settings), *_pendo_checks(settings),
            *_heap_checks(settings), *_fullstory_checks(settings), _slack_check(settings),
            *_warehouse_checks(settings, models)]


def sending_checks(settings: Settings) -> list[Check]:
    """What the gate in front of a send to Segment runs: the write key's source and the tracking region."""
    return _segment_checks(settings, _sources_fetch(settings))


def result_rows(results: Iterable[CheckResult]) -> list[tuple[str, str, str, str]]:
    """One row of `RESULT_COLUMNS` per result: the table the ops/preflight asset and a refused send show."""
    return [(r.check, ", ".join(r.settings), describe(r), r.todo) for r in results]


def write_key_sources(sources: Iterable[dict], write_key: str) -> list[dict]:
    """The sources among `sources` (`GET /sources`, spec §7) whose `writeKeys` hold `write_key`: where Segment
    takes what is sent under it (none: Segment answers 200 and drops every call)."""
    return [source for source in sources if write_key in (source.get("writeKeys") or [])]


def secret_values(settings: Settings) -> list[str]:
    return [settings[name] for name in SECRET_NAMES if settings[name]]


def cache_for(settings: Settings) -> PreflightCache:
    return PreflightCache(settings.home.joinpath(*CACHE_FILE))


def gate_settings(settings: Settings, *, tracking_url: str, write_key: str) -> Settings:
    """`settings` with the tracking URL and write key a sync will really send with (its resource's)."""
    values, from_env = dict(settings.values), set(settings.from_env)
    for name, value in (("SEGMENT_TRACKING_URL", tracking_url), ("SEGMENT_WRITE_KEY", write_key)):
        if value != values[name]:
            values[name] = value
            from_env.add(name)
    return Settings(values=values, from_env=frozenset(from_env), home_conflict=settings.home_conflict,
                    home_dependent=settings.home_dependent)


def gate_sending(settings: Settings, *, tracking_url: str, write_key: str,
                 max_age: float | None = None, destination: SegmentDestination | None = None,
                 used_by: Sequence[str] = ()) -> list[CheckResult]:
    """The sending checks of the key and host a send uses, run or reused from the cache when at most `max_age`
    seconds old (default PREFLIGHT_CACHE_SECONDS); raises `engine.preflight.PreflightRefused` when one failed
    definitively (auth or configuration). The gate of the syncs in Dagster and of `segment-ops replay`.

    With a `destination` of its own (a reverse-ETL model's, `used_by` naming the model), the key and host are
    that destination's and its one check runs instead, the answer shared with `segment-ops check`'s row."""
    if max_age is None:
        max_age = preflight_cache_seconds(settings)
    if destination is not None and not destination.is_default:
        check = destination_check(settings, destination, used_by, write_key=write_key,
                                  tracking_url=tracking_url, sources=_sources_fetch(settings))
        return gate([check], cache=cache_for(settings), max_age=max_age,
                    secrets=[*secret_values(settings), write_key])
    settings = gate_settings(settings, tracking_url=tracking_url, write_key=write_key)
    return gate(sending_checks(settings), cache=cache_for(settings), max_age=max_age,
                secrets=secret_values(settings))


def preflight_cache_seconds(settings: Settings) -> float:
    """PREFLIGHT_CACHE_SECONDS (0 to 7 days), or a `ValueError` naming it."""
    raw = settings["PREFLIGHT_CACHE_SECONDS"]
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= MAX_CACHE_SECONDS:
        raise ValueError(f"PREFLIGHT_CACHE_SECONDS must be a number between 0 and {MAX_CACHE_SECONDS:g}, "
                         f"got {raw!r}")
    return value


# --- helpers ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Verdict:
    """Builds one check's results: `fail` is definitive (auth, configuration), `transient` is not."""

    check: str
    settings: tuple[str, ...]

    def ok(self, detail: str) -> CheckResult:
        return CheckResult(self.check, self.settings, Status.PASS, detail)

    def warn(self, detail: str, todo: str, *, outage: bool = False) -> CheckResult:
        """`outage`: the warning is only that a vendor did not answer now (never cached: asked again)."""
        return CheckResult(self.check, self.settings, Status.WARN, detail, todo, transient=outage)

    def skip(self, detail: str, todo: str = "", *, outage: bool = False) -> CheckResult:
        return CheckResult(self.check, self.settings, Status.SKIP, detail, todo, transient=outage)

    def fail(self, detail: str, todo: str) -> CheckResult:
        return CheckResult(self.check, self.settings, Status.FAIL, detail, todo, definitive=True)

    def transient(self, detail: str, todo: str) -> CheckResult:
        return CheckResult(self.check, self.settings, Status.FAIL, detail, todo, definitive=False)

    def vendor(self, exc: VendorError, refused: str, todo: str) -> CheckResult:
        """A vendor's refusal: a 4xx is definitive, no answer (network, 5xx, throttling) is transient."""
        if _outage(exc):
            return self.transient(f"no answer: {exc}", "retry later; if it lasts, check the URL and the "
                                                       "vendor's status page")
        return self.fail(f"{refused}: {exc}", todo)


def _outage(exc: VendorError) -> bool:
    """No answer (network, 5xx, throttling), as opposed to a refusal."""
    return isinstance(exc, VendorUnavailable) or exc.status is None


@dataclass
class _Once(Generic[T]):
    """A fetch two checks share, made at most once: its value, or the error it raised to each caller."""

    fetch: Callable[[], T]
    _done: bool = False
    _value: T | None = None
    _error: Exception | None = None

    def __call__(self) -> T:
        if not self._done:
            self._done = True
            try:
                self._value = self.fetch()
            except Exception as exc:  # noqa: BLE001 - kept and raised to each caller
                self._error = exc
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


def _check(settings: Settings, verdict: _Verdict, run: Callable[[_Verdict], CheckResult],
           reads: tuple[str, ...] = ()) -> Check:
    """`verdict`'s check; `reads` names what else it reads beyond the settings its row shows."""
    return Check(verdict.check, verdict.settings, lambda: run(verdict),
                 _fingerprint(settings, (*verdict.settings, *reads)))


def _fingerprint(settings: Settings, reads: tuple[str, ...]) -> str:
    """What a cached answer is keyed on: everything a check reads, not only its own settings. Whether each
    setting is set counts as much as its value: a sandbox credential with a live URL beside it counts as
    unset (`_credential`), and any vendor URL set turns the sandbox off (`_live`)."""
    names = dict.fromkeys((*reads, *VENDOR_URLS, "SEGMENT_OPS_SANDBOX_URL"))
    digest = hmac.new(_fingerprint_key(settings), digestmod=hashlib.sha256)
    for name in sorted(names):
        digest.update(f"{name}\0{int(settings.is_set(name))}:{settings[name]}\0".encode())
    return digest.hexdigest()[:32]


def _fingerprint_key(settings: Settings) -> bytes:
    """The home's fingerprint key, made on first use; a random one for this process when the home cannot
    hold it (nothing cached then matches: the checks simply run)."""
    try:
        path = settings.home.joinpath(*FINGERPRINT_KEY_FILE)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            key = path.read_bytes()
            if len(key) >= 32:
                return key
            raise OSError(f"{path} is truncated") from None
        key = secrets.token_bytes(32)
        with os.fdopen(fd, "wb") as file:
            file.write(key)
        return key
    except (OSError, HomeConflictError):
        return _PROCESS_KEY


_PROCESS_KEY = secrets.token_bytes(32)


def _live(settings: Settings) -> bool:
    return any(settings.is_set(name) for name in VENDOR_URLS)


def _configured(settings: Settings, url_name: str) -> bool:
    """A vendor is checked when its URL is set, or when every vendor is on the sandbox."""
    return settings.is_set(url_name) or not _live(settings)


def _credential(settings: Settings, name: str, url_name: str) -> str | None:
    """A credential's value; None when unset (a sandbox default sent to a live URL is unset too)."""
    if settings.is_set(name) or not settings.is_set(url_name):
        return settings[name] or None
    return None


def _host(url: str) -> str:
    return urlsplit(url).hostname or url


def _region(url: str, settings: Settings, hosts: dict[str, str], sandbox: dict[str, str]) -> str | None:
    base = url.rstrip("/")
    for path, region in sandbox.items():
        if base == f"{settings['SEGMENT_OPS_SANDBOX_URL']}{path}":
            return region
    return hosts.get(_host(url).lower())


# --- Segment ---------------------------------------------------------------------------------------------

def _public_api_client(settings: Settings) -> SegmentPublicApiClient:
    token = _credential(settings, "SEGMENT_PUBLIC_API_TOKEN", "SEGMENT_PUBLIC_API_URL")
    return SegmentPublicApiClient(settings["SEGMENT_PUBLIC_API_URL"], token or "", timeout=CHECK_TIMEOUT,
                                  retry=CHECK_RETRY)


def _sources_fetch(settings: Settings) -> _Once[list[dict]]:
    """`GET /sources`, made once for every check that reads it (write key, region, the token's probe)."""

    def list_sources() -> list[dict]:
        client = _public_api_client(settings)
        try:
            return list(client.iter_sources())
        finally:
            client.close()

    return _Once(list_sources)


def _audit_trail_used(settings: Settings) -> bool:
    """The audit trail reads `/audit-events` only to forward them to a SIEM: Splunk HEC (checked like any
    vendor) or the JSON-lines endpoint."""
    return _configured(settings, "SPLUNK_HEC_URL") or settings.is_set("SIEM_JSONL_URL")


def _segment_checks(settings: Settings, sources: _Once[list[dict]]) -> list[Check]:
    write_key_check, region_check = _segment_verdicts(settings, sources)
    key_names = ("SEGMENT_WRITE_KEY", "SEGMENT_PUBLIC_API_TOKEN", "SEGMENT_PUBLIC_API_URL")
    region_names = ("SEGMENT_TRACKING_URL", "SEGMENT_PUBLIC_API_URL", "SEGMENT_PUBLIC_API_TOKEN")
    return [_check(settings, _Verdict("segment_write_key", key_names), write_key_check),
            _check(settings, _Verdict("segment_region", region_names), region_check)]


def _segment_verdicts(settings: Settings, sources: _Once[list[dict]], key_name: str = "SEGMENT_WRITE_KEY",
                      url_name: str = "SEGMENT_TRACKING_URL") -> tuple[Callable[[_Verdict], CheckResult],
                                                                       Callable[[_Verdict], CheckResult]]:
    """The write-key and region checks of the key and host in `settings`' SEGMENT_WRITE_KEY and
    SEGMENT_TRACKING_URL, whose texts call them `key_name` and `url_name` (the variables a model named)."""
    write_key = _credential(settings, "SEGMENT_WRITE_KEY", "SEGMENT_TRACKING_URL")
    token = _credential(settings, "SEGMENT_PUBLIC_API_TOKEN", "SEGMENT_PUBLIC_API_URL")
    api_url, tracking_url = settings["SEGMENT_PUBLIC_API_URL"], settings["SEGMENT_TRACKING_URL"]

    def write_key_check(verdict: _Verdict) -> CheckResult:
        if write_key is None:
            return verdict.fail(f"{key_name} is not set",
                                f"set it to the write key of the Segment HTTP source ({SOURCE_KEYS})")
        if token is None:
            return verdict.warn("cannot be verified: SEGMENT_PUBLIC_API_TOKEN is not set, and Segment "
                                "answers 200 to a wrong write key and drops every call",
                                "set SEGMENT_PUBLIC_API_TOKEN (a token that can read the workspace's "
                                "sources); until then find one test call in the source's debugger")
        try:
            found = sources()
        except VendorError as exc:
            why = ("the Public API refused SEGMENT_PUBLIC_API_TOKEN" if isinstance(exc, VendorAuthError)
                   else "the Public API did not answer")
            return verdict.warn(f"cannot be verified now: {why} ({exc})", "see the segment_public_api row",
                                outage=_outage(exc))
        if not any(source.get("writeKeys") for source in found):
            # A token without read access to sources sees none, or sees them without their write keys:
            # nothing tells the key is wrong, so this must not refuse every send.
            seen = f"the token sees {len(found)} source(s) and no write keys"
            return verdict.warn(f"cannot be verified: {seen}",
                                "give SEGMENT_PUBLIC_API_TOKEN read access to the workspace's sources")
        mine = write_key_sources(found, write_key)
        if not mine:
            return verdict.fail(f"not the write key of any of the {len(found)} sources the token can read "
                                "(Segment answers 200 to every call under it and drops it)",
                                f"copy the HTTP source's write key ({SOURCE_KEYS}) into {key_name}; "
                                "a source of another workspace needs that workspace's token")
        label = f"{mine[0].get('name')!r} ({mine[0].get('slug')})"
        if not any(s.get("enabled") for s in mine):
            return verdict.fail(f"the write key of source {label}, which is disabled: Segment drops its "
                                "calls", "enable the source in Segment, or use an enabled source's key")
        return verdict.ok(f"the write key of source {label}, enabled")

    def region_check(verdict: _Verdict) -> CheckResult:
        if token is None:
            return verdict.skip("the workspace's region is that of the Public API host answering "
                                "SEGMENT_PUBLIC_API_TOKEN, which is not set", "set SEGMENT_PUBLIC_API_TOKEN")
        try:
            sources()
        except VendorError as exc:
            return verdict.skip(f"the Public API did not answer the token ({exc.status or 'no answer'})",
                                "see the segment_public_api row", outage=_outage(exc))
        tracking = _region(tracking_url, settings, TRACKING_HOSTS, SANDBOX_TRACKING)
        workspace = _region(api_url, settings, PUBLIC_API_HOSTS, SANDBOX_PUBLIC_API)
        if tracking is None or workspace is None:
            name, url = ((url_name, tracking_url) if tracking is None
                         else ("SEGMENT_PUBLIC_API_URL", api_url))
            return verdict.warn(f"cannot tell the region of {name}'s host {_host(url)}",
                                "make sure the tracking host is your workspace region's (US api.segment.io, "
                                "EU events.eu1.segmentapis.com): the other region's drops every call")
        if tracking != workspace:
            return verdict.fail(f"{url_name} ({_host(tracking_url)}) is the {tracking} tracking "
                                f"host, but the workspace is {workspace} (its Public API at {_host(api_url)} "
                                "answers the token): Segment answers 200 and drops every call",
                                f"set {url_name} to {TRACKING_BASE[workspace]}")
        return verdict.ok(f"tracking host {_host(tracking_url)} and the workspace are both {workspace}")

    return write_key_check, region_check


# --- Segment destinations named by reverse-ETL models ----------------------------------------------------

DESTINATION_CHECK = "segment_destination"
_RANK = {Status.PASS: 0, Status.SKIP: 1, Status.WARN: 2, Status.FAIL: 3}


class DestinationNotSet(ValueError):
    """A variable a model's destination names is unset or empty; the message names it, never a value."""

    def __init__(self, names: Sequence[str], used_by: Sequence[str]) -> None:
        self.names = tuple(names)
        verb = "is" if len(self.names) == 1 else "are"
        super().__init__(f"{' and '.join(self.names)} {verb} not set in the environment: the Segment "
                         f"destination named by {_models(used_by)} (`write_key_env:` / `tracking_url_env:`) "
                         "cannot be sent to; set it in the environment of the code location and its runs")


def destination_values(settings: Settings, destination: SegmentDestination) -> tuple[str | None, str | None]:
    """The write key and tracking URL `destination` names, read at run time: SEGMENT_WRITE_KEY and
    SEGMENT_TRACKING_URL as every setting is (sandbox defaults when unset), any other variable from the
    environment (None when unset or empty, as `dg.EnvVar` reads it)."""

    def read(name: str) -> str | None:
        return (settings[name] if name in settings.values else os.environ.get(name)) or None

    return read(destination.write_key_env), read(destination.tracking_url_env)


def require_destination(settings: Settings, destination: SegmentDestination,
                        used_by: Sequence[str]) -> tuple[str, str]:
    """`destination_values`, or `DestinationNotSet` naming each variable that is unset."""
    key, url = destination_values(settings, destination)
    if key is None or url is None:
        raise DestinationNotSet([n for n, v in zip(destination.names, (key, url), strict=True) if v is None],
                                used_by)
    return key, url


def destination_check(settings: Settings, destination: SegmentDestination, used_by: Sequence[str], *,
                      write_key: str | None, tracking_url: str | None, sources: _Once[list[dict]]) -> Check:
    """One check of a model's own destination: `segment_write_key` and `segment_region` of its key and host,
    in one row named after the models that send there (`used_by`). `segment-ops check` and the models' gate
    share its cached answer (one cache key per destination), whatever models each names."""
    names = (*destination.names, "SEGMENT_PUBLIC_API_TOKEN", "SEGMENT_PUBLIC_API_URL")
    verdict = _Verdict(f"{DESTINATION_CHECK}:{'+'.join(used_by)}", names)
    derived = gate_settings(settings, tracking_url=tracking_url or "", write_key=write_key or "")
    key_check, region_check = _segment_verdicts(derived, sources, *destination.names)

    def run() -> CheckResult:
        missing = [n for n, v in zip(destination.names, (write_key, tracking_url), strict=True) if v is None]
        if missing:
            return verdict.fail(f"{' and '.join(missing)} not set: {_models(used_by)} cannot send",
                                f"set {' and '.join(missing)} in the environment of the code location and "
                                "its runs (the source's write key; the Tracking API base of its workspace's "
                                "region)")
        parts = [("write key", key_check(verdict)), ("region", region_check(verdict))]
        worst = max((r for _, r in parts), key=lambda r: (_RANK[r.status], r.definitive))
        todo = "; ".join(r.todo for _, r in parts if r.todo and r.status in (Status.WARN, Status.FAIL))
        detail = f"used by {_models(used_by)}; " + "; ".join(f"{what}: {r.detail}" for what, r in parts)
        result = CheckResult(verdict.check, names, worst.status, detail, todo,
                             definitive=worst.definitive, transient=any(r.transient for _, r in parts))
        return result.redacted([write_key or ""])

    reads = ("SEGMENT_WRITE_KEY", "SEGMENT_TRACKING_URL", *names[2:])
    cache_key = f"{DESTINATION_CHECK}:{destination.write_key_env}:{destination.tracking_url_env}"
    return Check(verdict.check, names, run, _fingerprint(derived, reads), cache_key=cache_key)


def model_destinations(settings: Settings, models: Sequence[ModelSpec | ModelError] | None = None,
                       ) -> dict[SegmentDestination, list[ModelSpec]]:
    """The destinations other than SEGMENT_WRITE_KEY / SEGMENT_TRACKING_URL the reverse-ETL models name, each
    with the models naming it (`models`, default: those of `models_dir(settings)`; a model file that does not
    parse names none: see `reverse_etl_models`)."""
    found: dict[SegmentDestination, list[ModelSpec]] = {}
    for model in load_models(models_dir(settings)) if models is None else models:
        if isinstance(model, ModelSpec) and not model.destination.is_default:
            found.setdefault(model.destination, []).append(model)
    return dict(sorted(found.items(), key=lambda item: item[0].names))


def _destination_checks(settings: Settings, sources: _Once[list[dict]],
                        models: Sequence[ModelSpec | ModelError]) -> list[Check]:
    checks = []
    for destination, sending in model_destinations(settings, models).items():
        key, url = destination_values(settings, destination)
        checks.append(destination_check(settings, destination, [m.name for m in sending], write_key=key,
                                        tracking_url=url, sources=sources))
    return checks


def _models(names: Sequence[str]) -> str:
    return ("model " if len(names) == 1 else "models ") + ", ".join(names)


def _public_api_check(settings: Settings, sources: _Once[list[dict]]) -> Check:
    token = _credential(settings, "SEGMENT_PUBLIC_API_TOKEN", "SEGMENT_PUBLIC_API_URL")
    write_key = _credential(settings, "SEGMENT_WRITE_KEY", "SEGMENT_TRACKING_URL")
    audit = _audit_trail_used(settings)
    todo = ("give SEGMENT_PUBLIC_API_TOKEN read access to the sources, destinations and Delivery Overview"
            + (" and the audit trail" if audit else "") + " (Settings > Access Management > Tokens); check "
            "that SEGMENT_PUBLIC_API_URL is your workspace region's host")

    def run(verdict: _Verdict) -> CheckResult:
        if token is None:
            return verdict.skip("SEGMENT_PUBLIC_API_TOKEN is not set: the audit trail and Delivery Overview "
                                "cannot read Segment", "set it to a token that can read the audit trail, the "
                                "sources, the destinations and Delivery Overview")
        client = _public_api_client(settings)
        # Read over the last hour only: the token's access is the question, not what is there.
        end = datetime.now(UTC)
        start = end - timedelta(hours=1)
        source: dict | None = None

        def probe(path: str) -> None:
            nonlocal source
            if path == AUDIT_EVENTS:
                client.probe(path, {"startTime": start.isoformat(timespec="seconds")})
            elif path == "/sources":
                found = sources()
                source = next(iter(write_key_sources(found, write_key or "") or found), None)
            elif path == "/destinations":
                client.probe(path)
            else:
                client.delivery_overview(DELIVERY_OVERVIEW_PROBE_STEP, source["id"], start, end)

        probed = []
        try:
            for path, used_by in PUBLIC_API_ENDPOINTS.items():
                if (path == AUDIT_EVENTS and not audit) or (path.startswith("/delivery-overview/")
                                                             and source is None):
                    continue
                try:
                    probe(path)
                except VendorError as exc:
                    return verdict.vendor(exc, f"GET {path} ({used_by}) refused the token", todo)
                probed.append(f"GET {path}")
        finally:
            client.close()
        notes = [] if audit else ["/audit-events not probed: the audit trail has no SIEM to forward to"]
        if source is None:
            notes.append("Delivery Overview not probed: the token sees no source")
        return verdict.ok(f"the token reads {', '.join(probed)}" + "".join(f"; {note}" for note in notes))

    return _check(settings, _Verdict("segment_public_api", ("SEGMENT_PUBLIC_API_TOKEN",
                                                            "SEGMENT_PUBLIC_API_URL")), run,
                  reads=("SEGMENT_WRITE_KEY", "SIEM_JSONL_URL"))


def _profiles_check(settings: Settings) -> Check:
    """The Profile API the `landed_in_segment` checks read delivered users back from: the token reads the
    space."""
    # As `resources` configures read-back: the sandbox's profiles, unless SEGMENT_TRACKING_URL sends to a
    # real Segment, which needs each of these set (the Profile API needs Unify, not every workspace has it).
    live = settings.is_set("SEGMENT_TRACKING_URL")
    missing = [name for name in PROFILE_API if not (settings[name] and (settings.is_set(name) or not live))]
    todo = (f"set {', '.join(PROFILE_API)} (the space's access token: {PROFILES_TOKEN_HOME}) to prove what "
            "was sent landed")

    def run(verdict: _Verdict) -> CheckResult:
        if settings["SEGMENT_PROFILES_SAMPLE_SIZE"].strip() == "0":
            return verdict.skip("read-back is off (SEGMENT_PROFILES_SAMPLE_SIZE=0)",
                                "set SEGMENT_PROFILES_SAMPLE_SIZE above 0 to read delivered users back")
        if missing:
            return verdict.warn(f"read-back is off: {', '.join(missing)} not set, so the landed_in_segment "
                                "checks are skipped and nothing shows whether what was sent landed", todo)
        client = SegmentProfilesClient(*(settings[name] for name in PROFILE_API), timeout=CHECK_TIMEOUT,
                                       retry=CHECK_RETRY, max_requests_per_second=None)
        try:
            client.get_traits(PROFILE_PROBE_ID)
        except VendorError as exc:
            return verdict.vendor(exc, "the Profile API refused SEGMENT_PROFILES_TOKEN for "
                                       "SEGMENT_PROFILES_SPACE_ID",
                                  f"copy the space's access token ({PROFILES_TOKEN_HOME}) into "
                                  "SEGMENT_PROFILES_TOKEN and its id into SEGMENT_PROFILES_SPACE_ID; check "
                                  "SEGMENT_PROFILES_URL's region")
        finally:
            client.close()
        where = host_of(settings["SEGMENT_PROFILES_URL"])
        return verdict.ok(f"the token reads the space's profiles at {where} (an unknown user answers 404)")

    return _check(settings, _Verdict("segment_profiles", PROFILE_API), run,
                  reads=("SEGMENT_PROFILES_SAMPLE_SIZE",))


# --- Splunk HEC ------------------------------------------------------------------------------------------

def _splunk_checks(settings: Settings) -> list[Check]:
    configured = _configured(settings, "SPLUNK_HEC_URL")
    token = _credential(settings, "SPLUNK_HEC_TOKEN", "SPLUNK_HEC_URL")

    def client() -> SplunkHecClient:
        return SplunkHecClient(settings["SPLUNK_HEC_URL"], token or "", channel=str(uuid.uuid4()),
                               timeout=CHECK_TIMEOUT, retry=CHECK_RETRY)

    def probe() -> AckSetting:
        hec = client()
        try:
            hec.health()
            return hec.ack_setting()
        finally:
            hec.close()

    ack_on = _Once(probe)

    def not_checked(verdict: _Verdict) -> CheckResult | None:
        if not configured:
            return verdict.skip("SPLUNK_HEC_URL is not set: the audit trail is not forwarded to Splunk",
                                "set it to forward the audit trail")
        if token is None:
            return verdict.fail("SPLUNK_HEC_TOKEN is not set", "set it to the HEC input's token (a GUID)")
        return None

    def hec_check(verdict: _Verdict) -> CheckResult:
        if skipped := not_checked(verdict):
            return skipped
        try:
            setting = ack_on()
        except VendorError as exc:
            return verdict.vendor(exc, "HEC refused", "copy the token of the HEC input (Settings > Data "
                                                      "inputs > HTTP Event Collector) into SPLUNK_HEC_TOKEN, "
                                                      "and check SPLUNK_HEC_URL")
        if setting.enabled is None:
            return verdict.warn(f"healthy, but the ack query got {setting.describe()}: the token is not "
                                "verified", "check that SPLUNK_HEC_URL reaches HEC itself (a proxy must pass "
                                "/services/collector/ack); see the splunk_hec_ack row")
        state = "on" if setting.enabled else "off"
        return verdict.ok(f"healthy; the token is accepted (indexer acknowledgement {state})")

    def ack_check(verdict: _Verdict) -> CheckResult:
        if skipped := not_checked(verdict):
            return skipped
        channel = settings["SPLUNK_HEC_CHANNEL"]
        if channel:
            try:
                uuid.UUID(channel)
            except ValueError:
                return verdict.fail("SPLUNK_HEC_CHANNEL is not a GUID",
                                    "set it to a GUID only this deployment uses, or unset it")
        try:
            timeout = float(settings["SPLUNK_HEC_ACK_TIMEOUT_SECONDS"])
        except ValueError:
            timeout = float("nan")
        if not timeout > 0:
            return verdict.fail("SPLUNK_HEC_ACK_TIMEOUT_SECONDS is not a number > 0", "set it to 300 or more")
        try:
            setting = ack_on()
        except VendorError:
            return verdict.skip("HEC did not accept the token", "see the splunk_hec row")
        if setting.enabled is None:
            return verdict.warn(f"cannot tell whether indexer acknowledgement is on: the ack query got "
                                f"{setting.describe()}", "check the token's Enable indexer acknowledgement "
                                "setting in Splunk, and that SPLUNK_HEC_URL reaches HEC itself")
        if not setting.enabled:
            return verdict.ok("indexer acknowledgement is off for the token: HEC's 200 is the only proof an "
                              "event was taken")
        if timeout < MIN_ACK_TIMEOUT_SECONDS:
            return verdict.warn(f"indexer acknowledgement is on and SPLUNK_HEC_ACK_TIMEOUT_SECONDS is "
                                f"{timeout:g}: acks can take minutes, so batches may be sent twice",
                                f"raise it to {MIN_ACK_TIMEOUT_SECONDS:g} or more")
        where = "SPLUNK_HEC_CHANNEL" if channel else "the channel kept in the sync's state"
        return verdict.ok(f"indexer acknowledgement is on; acks are awaited up to {timeout:g} s on {where}")

    def index_check(verdict: _Verdict) -> CheckResult:
        if skipped := not_checked(verdict):
            return skipped
        index = settings["SPLUNK_INDEX"]
        if settings["PREFLIGHT_HEC_PROBE_EVENT"].strip().lower() not in ("1", "true", "yes"):
            return verdict.skip("no probe event sent (PREFLIGHT_HEC_PROBE_EVENT is off): a SPLUNK_INDEX the "
                                "token may not write to shows at the audit trail's first send (code 7)",
                                "set PREFLIGHT_HEC_PROBE_EVENT=true to prove it with one event")
        hec = client()
        event = hec_event({"message": "segment_ops preflight probe", "check": verdict.check},
                          sourcetype=HEC_PROBE_SOURCETYPE, index=index, host="segment-ops")
        try:
            hec.send_batch([event])
        except HecConfigurationError as exc:
            return verdict.fail(f"HEC refused the probe event: {exc}",
                                "add SPLUNK_INDEX to the token's allowed indexes, or set it to one of them")
        except VendorError as exc:
            return verdict.vendor(exc, "HEC refused the probe event", "see the splunk_hec row")
        finally:
            hec.close()
        return verdict.ok(f"a probe event (sourcetype {HEC_PROBE_SOURCETYPE}) was taken into {index}")

    return [_check(settings, _Verdict("splunk_hec", ("SPLUNK_HEC_URL", "SPLUNK_HEC_TOKEN")), hec_check),
            _check(settings, _Verdict("splunk_hec_ack", ("SPLUNK_HEC_TOKEN", "SPLUNK_HEC_CHANNEL",
                                                         "SPLUNK_HEC_ACK_TIMEOUT_SECONDS")), ack_check),
            _check(settings, _Verdict("splunk_hec_index", ("SPLUNK_INDEX", "SPLUNK_HEC_TOKEN",
                                                           "PREFLIGHT_HEC_PROBE_EVENT")), index_check)]


# --- Pendo -----------------------------------------------------------------------------------------------

def _pendo_checks(settings: Settings) -> list[Check]:
    configured = _configured(settings, "PENDO_API_URL")
    key = _credential(settings, "PENDO_INTEGRATION_KEY", "PENDO_API_URL")

    def zone_setting() -> ZoneInfo | PendoSettingError:
        try:
            return subscription_zone(settings["PENDO_TIMEZONE"])
        except PendoSettingError as exc:
            return exc

    def newest_day() -> int | None:
        """The newest `day` (epoch ms) of the subscription's usage over the last days: a one-row answer."""
        zone = zone_setting()
        zone = zone if isinstance(zone, ZoneInfo) else ZoneInfo("UTC")
        apps = AppScope.parse(settings["PENDO_APP_IDS"])
        first = datetime.now(UTC).astimezone(zone).date() - timedelta(days=PENDO_LOOKBACK_DAYS)
        pipeline = [day_range_source("events", first, PENDO_LOOKBACK_DAYS, zone, apps=apps),
                    {"group": {"group": ["day"], "fields": {"rows": {"count": None}}}},
                    {"sort": ["-day"]}, {"limit": 1}]
        client = PendoClient(settings["PENDO_API_URL"], key or "", timeout=CHECK_TIMEOUT, retry=CHECK_RETRY,
                             apps=apps)
        try:
            rows = client.aggregate(pipeline, name="segment-ops preflight")
        finally:
            client.close()
        day = rows[0].get("day") if rows else None
        return day if isinstance(day, int) and not isinstance(day, bool) else None

    newest = _Once(newest_day)

    def key_check(verdict: _Verdict) -> CheckResult:
        if not configured:
            return verdict.skip("PENDO_API_URL is not set: Pendo is not synced", "set it to sync Pendo")
        if key is None:
            return verdict.fail("PENDO_INTEGRATION_KEY is not set", "set it (a read-only key is enough)")
        try:
            newest()
        except PendoSettingError as exc:
            return verdict.fail(str(exc), "correct PENDO_APP_IDS")
        except VendorError as exc:
            return verdict.vendor(exc, "Pendo refused the aggregation",
                                  "copy a valid key into PENDO_INTEGRATION_KEY (Settings > Integrations > "
                                  "Integration Keys); check PENDO_API_URL's region and PENDO_APP_IDS")
        return verdict.ok(f"the key runs a one-row aggregation (usage of the last {PENDO_LOOKBACK_DAYS} "
                          "days)")

    def zone_check(verdict: _Verdict) -> CheckResult:
        zone = zone_setting()
        if isinstance(zone, PendoSettingError):
            return verdict.fail(str(zone), f"set PENDO_TIMEZONE to the zone of {PENDO_ZONE}")
        if not configured or key is None:
            return verdict.skip("Pendo is not checked", "see the pendo_key row")
        try:
            day = newest()
        except (PendoSettingError, VendorError):
            return verdict.skip("Pendo did not answer", "see the pendo_key row")
        if day is None:
            return verdict.warn(f"no usage in the last {PENDO_LOOKBACK_DAYS} days: the subscription's zone "
                                "cannot be read from Pendo's days",
                                f"compare PENDO_TIMEZONE with {PENDO_ZONE}")
        local, starts = local_day_of(day, zone), datetime.fromtimestamp(day / 1000, UTC)
        named = settings["PENDO_TIMEZONE"]
        if local_midnight_ms(local, zone) == day:
            return verdict.ok(f"Pendo's days start at midnight in {named} (day {local} starts "
                              f"{starts:%H:%M} UTC)")
        return verdict.fail(f"Pendo's days start at {starts:%H:%M} UTC (a zone of UTC offset "
                            f"{_offset_of_midnight(day)} on {starts:%Y-%m-%d}), not at midnight in "
                            f"PENDO_TIMEZONE={named}", f"set PENDO_TIMEZONE to the zone of {PENDO_ZONE}")

    return [_check(settings, _Verdict("pendo_key", ("PENDO_API_URL", "PENDO_INTEGRATION_KEY",
                                                    "PENDO_APP_IDS")), key_check),
            _check(settings, _Verdict("pendo_timezone", ("PENDO_TIMEZONE", "PENDO_INTEGRATION_KEY")),
                   zone_check)]


def _offset_of_midnight(day_ms: int) -> str:
    """The whole-hour UTC offset (-12..+14) of a zone whose midnight falls at `day_ms`'s UTC time of day."""
    hours = -((day_ms % DAY_MS) // 3_600_000)
    hours = hours + 24 if hours < -12 else hours
    return f"{'-' if hours < 0 else '+'}{abs(hours):02d}:00"


# --- Heap ------------------------------------------------------------------------------------------------

def _heap_checks(settings: Settings) -> list[Check]:
    public_url = settings["HEAP_WEBHOOK_PUBLIC_URL"].strip().rstrip("/").removesuffix("/webhooks/heap")
    set_secret = "set HEAP_WEBHOOK_SECRET to the secret of the Heap integration"

    def secret_check(verdict: _Verdict) -> CheckResult:
        from segment_ops.syncs.heap.receiver import (
            WebhookConfigError,
            WebhookSecretError,
            config_from_env,
            require_live_secret,
        )

        try:
            config = config_from_env(settings)
        except WebhookConfigError as exc:
            return verdict.fail(str(exc), "correct the setting named")
        if not all(config.secrets):
            return verdict.fail("HEAP_WEBHOOK_SECRET is empty", set_secret)
        if public_url:
            try:
                require_live_secret(config, _host(public_url))
            except WebhookSecretError:
                return verdict.fail(f"the receiver at {_host(public_url)} would accept pages signed with the "
                                    "sandbox's published secret (HEAP_WEBHOOK_SECRET unset, or it or a "
                                    "previous secret is the sandbox's)", set_secret)
        if SANDBOX_HEAP_WEBHOOK_SECRET in config.secrets:
            if _live(settings):
                return verdict.warn("HEAP_WEBHOOK_SECRET is the sandbox's published secret: the receiver "
                                    "starts on a loopback address only", set_secret)
            return verdict.ok("the sandbox's secret, on the sandbox (accepted on loopback only)")
        previous = len(config.previous_secrets)
        return verdict.ok("set" + (f"; {previous} previous secret(s) still accepted" if previous else ""))

    def receiver_check(verdict: _Verdict) -> CheckResult:
        todo = "point HEAP_WEBHOOK_PUBLIC_URL at `segment-ops webhooks` (its base URL, as Heap reaches it)"
        if not public_url:
            return verdict.skip("HEAP_WEBHOOK_PUBLIC_URL is not set",
                                "set it to the receiver's public base URL to check Heap can reach it")
        client = HttpClient("heap_receiver", public_url, timeout=CHECK_TIMEOUT, retry=CHECK_RETRY)
        try:
            body = client.get_json("/healthz")
        except VendorError as exc:
            return verdict.vendor(exc, f"{public_url}/healthz refused", todo)
        except ValueError:  # an answer that is not JSON: not the receiver
            body = None
        finally:
            client.close()
        if not (isinstance(body, dict) and body.get("ok") is True):
            return verdict.fail(f"{public_url}/healthz is not the receiver's", todo)
        return verdict.ok(f"{public_url}/healthz answers ok")

    return [_check(settings, _Verdict("heap_webhook_secret", ("HEAP_WEBHOOK_SECRET",
                                                              "HEAP_WEBHOOK_PREVIOUS_SECRETS",
                                                              "HEAP_WEBHOOK_PUBLIC_URL")), secret_check),
            _check(settings, _Verdict("heap_receiver", ("HEAP_WEBHOOK_PUBLIC_URL",)), receiver_check)]


# --- Fullstory -------------------------------------------------------------------------------------------

def _fullstory_checks(settings: Settings) -> list[Check]:
    configured = _configured(settings, "FULLSTORY_API_URL")
    url = settings["FULLSTORY_API_URL"]
    on_sandbox = not settings.is_set("FULLSTORY_API_URL") or \
        url.rstrip("/") == f"{settings['SEGMENT_OPS_SANDBOX_URL']}/fullstory"
    not_synced = "FULLSTORY_API_URL is not set: Fullstory is not synced"

    def api_check(verdict: _Verdict) -> CheckResult:
        if not configured:
            return verdict.skip(not_synced, "set it to sync Fullstory")
        key = _credential(settings, "FULLSTORY_API_KEY", "FULLSTORY_API_URL")
        set_key = f"set FULLSTORY_API_KEY to an Admin or Architect key ({FULLSTORY_KEYS})"
        if key is None:
            return verdict.fail("FULLSTORY_API_KEY is not set", set_key)
        if key == SANDBOX_FULLSTORY_API_KEY and not on_sandbox:
            return verdict.fail(f"FULLSTORY_API_KEY is the sandbox's published key, and FULLSTORY_API_URL "
                                f"({_host(url)}) is not the sandbox", set_key)
        client = FullstoryClient(url, key, timeout=CHECK_TIMEOUT, retry=CHECK_RETRY)
        try:
            client.probe()
        except VendorError as exc:
            if exc.status == 403:
                return verdict.fail(f"Fullstory refused FULLSTORY_API_KEY to read users: {exc}",
                                    "use an Admin or Architect key: a Standard key writes users but cannot "
                                    f"read them back ({FULLSTORY_KEYS})")
            return verdict.vendor(exc, "Fullstory refused FULLSTORY_API_KEY",
                                  f"{set_key}; check FULLSTORY_API_URL (https://api.fullstory.com)")
        finally:
            client.close()
        return verdict.ok(f"the key reads users at {host_of(url)} (GET /v2/users?uid= of an unknown user)")

    def stream_token_check(verdict: _Verdict) -> CheckResult:
        # Streams need no API key: a deployment that only receives them sets the token, not the API URL.
        if not (configured or settings.is_set("FULLSTORY_STREAM_TOKEN")):
            return verdict.skip("neither FULLSTORY_API_URL nor FULLSTORY_STREAM_TOKEN is set: Fullstory is "
                                "not synced", "set them to sync Fullstory")
        set_token = (f"set FULLSTORY_STREAM_TOKEN to a random token of at least {MIN_STREAM_TOKEN_CHARS} "
                     "characters (`python -c 'import secrets; print(secrets.token_urlsafe(32))'`) and "
                     "give it to each stream (Authentication: Bearer token)")
        token = _credential(settings, "FULLSTORY_STREAM_TOKEN", "FULLSTORY_API_URL")
        if token is None:
            return verdict.fail("FULLSTORY_STREAM_TOKEN is not set (the sandbox's published token does not "
                                "count with a live FULLSTORY_API_URL)", set_token)
        previous = [t.strip() for t in settings["FULLSTORY_STREAM_PREVIOUS_TOKENS"].split(",") if t.strip()]
        named = [("FULLSTORY_STREAM_TOKEN", token),
                 *((f"FULLSTORY_STREAM_PREVIOUS_TOKENS[{i}]", t) for i, t in enumerate(previous))]
        if not on_sandbox or _live(settings):
            published = [name for name, value in named if value == SANDBOX_FULLSTORY_STREAM_TOKEN]
            if published:
                return verdict.fail(f"{', '.join(published)} is the sandbox's published token on a live "
                                    "deployment: anyone could post stream events", set_token)
        short = [name for name, value in named if len(value) < MIN_STREAM_TOKEN_CHARS]
        if short:
            return verdict.fail(f"{', '.join(short)} is shorter than {MIN_STREAM_TOKEN_CHARS} characters: "
                                "too easy to guess for the only credential of the receiver", set_token)
        if token == SANDBOX_FULLSTORY_STREAM_TOKEN:
            return verdict.ok("the sandbox's token, on the sandbox")
        more = f"; {len(previous)} previous token(s) still accepted" if previous else ""
        return verdict.ok(f"set, at least {MIN_STREAM_TOKEN_CHARS} characters{more}")

    return [_check(settings, _Verdict("fullstory_api", ("FULLSTORY_API_URL", "FULLSTORY_API_KEY")),
                   api_check),
            _check(settings, _Verdict("fullstory_stream_token", ("FULLSTORY_STREAM_TOKEN",
                                                                 "FULLSTORY_STREAM_PREVIOUS_TOKENS",
                                                                 "FULLSTORY_API_URL")), stream_token_check)]


# --- Slack -----------------------------------------------------------------------------------------------

def _slack_check(settings: Settings) -> Check:
    todo = "create an incoming webhook for the alert channel and put its URL in ALERT_WEBHOOK_URL"

    def run(verdict: _Verdict) -> CheckResult:
        if not _configured(settings, "ALERT_WEBHOOK_URL"):
            return verdict.warn("ALERT_WEBHOOK_URL is not set: alerts go nowhere",
                                "set it to a Slack incoming webhook (see the go-live checklist)")
        url = settings["ALERT_WEBHOOK_URL"]
        try:
            client = SlackWebhookClient(url, timeout=CHECK_TIMEOUT, retry=CHECK_RETRY)
        except WebhookUrlError as exc:
            return verdict.fail(str(exc), todo)
        try:
            status, answer = client.probe()
        except VendorError as exc:
            return verdict.vendor(exc, "Slack refused the webhook", todo)
        finally:
            client.close()
        where = host_of(url)  # never the path (the webhook's secret) nor a user:password
        if status == 400 and answer in SLACK_EMPTY_MESSAGE_ANSWERS:
            return verdict.ok(f"a live webhook at {where}: an empty message was refused ({answer}), "
                              "nothing was posted")
        return verdict.warn(f"{where} answered {status} to an empty message, not as a Slack incoming webhook "
                            f"does (400 {' / '.join(SLACK_EMPTY_MESSAGE_ANSWERS)}): it may not be one",
                            "check ALERT_WEBHOOK_URL")

    return _check(settings, _Verdict("slack_webhook", ("ALERT_WEBHOOK_URL",)), run)


# --- warehouse -------------------------------------------------------------------------------------------

def _missing_warehouse_hint(settings: Settings) -> str:
    """What to do about a DuckDB warehouse file that does not exist: the demo's, when that is what exists."""
    demo_home = settings.home / "demo"
    if not settings.is_set("WAREHOUSE_URL") and (demo_home / "demo_warehouse.duckdb").exists():
        return (f"the demo keeps its warehouse in its own home: SEGMENT_OPS_HOME={demo_home} (or point "
                "WAREHOUSE_URL at your warehouse)")
    return "point WAREHOUSE_URL at your warehouse (`segment-ops demo` builds a demo one in its own home)"


def _warehouse_checks(settings: Settings, found: Sequence[ModelSpec | ModelError]) -> list[Check]:
    """The warehouse's rows; `found`: the models of `models_dir(settings)`, as `load_models` gives them."""
    url = settings["WAREHOUSE_URL"]

    def compiled() -> list:
        from segment_ops.syncs.reverse_etl.model import compile_models

        return compile_models(url, found)  # `segment-ops models validate` runs the same

    result = _Once(compiled)

    def connect_check(verdict: _Verdict) -> CheckResult:
        try:
            result()
        except MissingDriverError as exc:  # configuration, not an outage: installing the extra fixes it
            return verdict.fail(str(exc), exc.install)
        except MissingWarehouseFileError as exc:  # configuration too: no retry makes the file appear
            return verdict.fail(str(exc), _missing_warehouse_hint(settings))
        except WarehouseError as exc:
            return verdict.transient(f"cannot connect: {exc}",
                                     "check WAREHOUSE_URL, the network and the credentials in it")
        return verdict.ok("connects")

    def models_check(verdict: _Verdict) -> CheckResult:
        try:
            models = result()
        except WarehouseError:
            return verdict.skip("the warehouse is not reachable", "see the warehouse row")
        if not models:
            return verdict.skip(f"no model files in {models_dir(settings)}", "add `<model>.sql` files")
        broken, good = [], []
        for model in models:
            if isinstance(model, ModelError):
                broken.append(f"{model.path.name}: {model.problem}")
            else:
                good.append(model.name)
        if broken:
            return verdict.fail(f"{len(broken)} of {len(models)} broken: " + "; ".join(broken),
                                "fix the model files named (their runs fail until then)")
        return verdict.ok(f"{len(good)} models compile (LIMIT 0) with the columns their headers name: "
                          + ", ".join(good))

    return [_check(settings, _Verdict("warehouse", ("WAREHOUSE_URL",)), connect_check),
            _check(settings, _Verdict("reverse_etl_models", ("WAREHOUSE_URL", "REVERSE_ETL_MODELS_DIR")),
                   models_check)]
