"""The one configuration contract for sandbox and live: every setting comes from the environment.

Each vendor's base URL and credential has a sandbox default, so an unset variable means "talk to the
local sandbox" and setting it means "talk to the real host". `SETTINGS` is the single table that the
Dagster resources, the CLI, the README's configuration table and the secret-leak tests all read.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_SANDBOX_PORT = 8765

# Credentials the sandbox accepts. They are sandbox-only values, safe to keep in the repo; a live
# deployment sets the real ones through the environment.
SANDBOX_SEGMENT_WRITE_KEY = "sandbox-write-key"
SANDBOX_SEGMENT_PUBLIC_API_TOKEN = "sgp_sandbox_public_api_token"
SANDBOX_SEGMENT_PROFILES_SPACE_ID = "spa_sandbox"
SANDBOX_SEGMENT_PROFILES_TOKEN = "sandbox-profile-api-access-token"
SANDBOX_HEAP_APP_ID = "1234567890"
SANDBOX_HEAP_API_KEY = "sandbox-heap-api-key"
SANDBOX_HEAP_WEBHOOK_SECRET = "sandbox-heap-webhook-secret"
SANDBOX_PENDO_INTEGRATION_KEY = "sandbox-pendo-integration-key"
# The sandbox's Pendo subscription buckets days at New York midnight, like Pendo's own sample rows (spec §7).
SANDBOX_PENDO_TIMEZONE = "America/New_York"
SANDBOX_FULLSTORY_API_KEY = "sandbox-fullstory-api-key"
SANDBOX_FULLSTORY_STREAM_TOKEN = "sandbox-fullstory-stream-token"
SANDBOX_SPLUNK_HEC_TOKEN = "00000000-0000-4000-8000-00000000c0de"
SANDBOX_SPLUNK_INDEX = "segment_audit"
SANDBOX_REDACTION_SALT = "sandbox-redaction-salt"
# The sandbox's Slack-compatible incoming webhook (`/slack`); the last path segment is the webhook's secret.
SANDBOX_SLACK_WEBHOOK_TOKEN = "sandboxSlackWebhookToken0001"
SANDBOX_SLACK_WEBHOOK_PATH = f"/services/T0SANDBOX/B0SANDBOX/{SANDBOX_SLACK_WEBHOOK_TOKEN}"
# Tables of the sandbox's demo warehouse (built by sandbox/warehouse.py, declared as assets in
# syncs/external.py).
DEMO_WAREHOUSE_TABLES = ("customers", "accounts", "orders", "main_production.users",
                         "main_production.segment_members", "identity_map", "privacy_requests",
                         "fullstory.events")


@dataclass(frozen=True)
class Setting:
    """One environment variable: its name, what it is, its default, and whether it is a secret."""

    name: str
    description: str
    default: str | None = None
    # Path under the sandbox's base URL; the default is then f"{sandbox_url}{sandbox_path}".
    sandbox_path: str | None = None
    secret: bool = False

    def default_for(self, sandbox_url: str, home: Path) -> str | None:
        if self.sandbox_path is not None:
            return f"{sandbox_url}{self.sandbox_path}"
        if self.default is not None:
            return self.default.replace("{home}", str(home))
        return None

    @property
    def documented_default(self) -> str:
        if self.sandbox_path is not None:
            return f"`$SEGMENT_OPS_SANDBOX_URL{self.sandbox_path}`"
        if self.default is None:
            return "(none)"
        return f"`{self.default.replace('{home}', '$SEGMENT_OPS_HOME')}`"


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "SEGMENT_OPS_HOME",
        "Folder for staging DuckDB files, the delivery ledger, inboxes and the demo warehouse; the same "
        "whatever the current directory. Unset: `$XDG_DATA_HOME/segment_ops` if `XDG_DATA_HOME` is set, "
        "else `~/.local/share/segment_ops` (Windows: `%LOCALAPPDATA%\\segment_ops`). A relative value is "
        "resolved against the directory the process starts in, so give an absolute path. Unset while "
        "`./.segment_ops` (the old default) holds state: the CLI, the demo and the code location refuse "
        "to start and say how to keep using that folder or move it.",
        default="~/.local/share/segment_ops",
    ),
    Setting(
        "SEGMENT_OPS_STATE_URL",
        "PostgreSQL URL (`postgresql://user:password@host:5432/db`) holding every sync's state, shared by "
        "any number of machines, with a lock per sync; each machine's `SEGMENT_OPS_HOME` is then a cache "
        "(see \"Running on PostgreSQL and on several machines\"). Unset: the state is in the DuckDB files "
        "under `SEGMENT_OPS_HOME` alone.",
        secret=True,
    ),
    Setting(
        "SEGMENT_OPS_STATE_CHECKPOINT_SECONDS",
        "With `SEGMENT_OPS_STATE_URL`: how often (seconds) a long delivery checks in what it has logged, so "
        "a worker killed mid-run costs the next one, on any machine, at most that much to send again.",
        default="30",
    ),
    Setting(
        "LEDGER_RETENTION_DAYS",
        "Days a settled message (delivered, verified, rejected) keeps its payload in the ledger; once a day "
        "a delivery drops older payloads, keeping every message's id and state (nothing is sent twice) and "
        "every outcome (delivery health). `0` keeps payloads for ever. A forced re-send takes the payload "
        "from its input again, if the input is what was sent (else that message is rejected with why).",
        default="90",
    ),
    Setting(
        "SEGMENT_OPS_SANDBOX_URL",
        "Base URL of the local vendor sandbox; every unset vendor URL below points into it.",
        default=f"http://127.0.0.1:{DEFAULT_SANDBOX_PORT}",
    ),
    Setting(
        "SEGMENT_OPS_CLOCK",
        "Testing and demo aid: an ISO-8601 UTC instant (`2026-11-29T15:30:00Z`) that stands in for \"now\" "
        "wherever a window is chosen (the audit trail's complete hours, Pendo's settled days, the demo's "
        "runs) and in the sandbox's demo world (audit events, Heap members, Pendo usage), so a run on a "
        "given day and hour can be repeated. Dagster's own clock (schedules, run times) and the ledgers' "
        "timestamps stay real. Unset: the real clock.",
    ),
    Setting(
        "SEGMENT_TRACKING_URL",
        "Segment HTTP Tracking API base (live: `https://api.segment.io`, EU: `https://events.eu1.segmentapis.com`).",
        sandbox_path="/segment",
    ),
    Setting("SEGMENT_WRITE_KEY", "Write key of the Segment HTTP source.", SANDBOX_SEGMENT_WRITE_KEY,
            secret=True),
    Setting(
        "SEGMENT_PUBLIC_API_URL",
        "Segment Public API base (live: `https://api.segmentapis.com`, EU: `https://eu1.api.segmentapis.com`).",
        sandbox_path="/segmentapis",
    ),
    Setting(
        "SEGMENT_PUBLIC_API_TOKEN",
        "Public API workspace token: reads sources, destinations and Delivery Overview, and the audit trail "
        "when it is forwarded to a SIEM.",
        SANDBOX_SEGMENT_PUBLIC_API_TOKEN,
        secret=True,
    ),
    Setting(
        "SEGMENT_PROFILES_URL",
        "Segment Profile API host, where the `landed_in_segment` checks read delivered users back "
        "(live: `https://profiles.segment.com`, EU: `https://profiles.euw1.segment.com`). With "
        "`SEGMENT_TRACKING_URL` set, read-back runs only when this, `SEGMENT_PROFILES_SPACE_ID` and "
        "`SEGMENT_PROFILES_TOKEN` are set (else the checks are skipped, saying so).",
        sandbox_path="/profiles",
    ),
    Setting(
        "SEGMENT_PROFILES_SPACE_ID",
        "Id of the Unify space whose profiles are read back (Unify > Unify settings > API access).",
        SANDBOX_SEGMENT_PROFILES_SPACE_ID,
    ),
    Setting(
        "SEGMENT_PROFILES_TOKEN",
        "Profile API access token of that space (read-only; sent as the Basic-auth username).",
        SANDBOX_SEGMENT_PROFILES_TOKEN,
        secret=True,
    ),
    Setting(
        "SEGMENT_PROFILES_SAMPLE_SIZE",
        "Delivered identify calls read back per sync run (the oldest unsampled run's first); `0` turns "
        "read-back off.",
        default="20",
    ),
    Setting(
        "SEGMENT_PROFILES_DELAY_SECONDS",
        "How long after delivery (seconds) a call is read back: Segment updates profiles asynchronously, so "
        "a read too early would find nothing. Calls delivered more recently wait for a later check.",
        default="60",
    ),
    Setting(
        "SEGMENT_PROFILES_WARN_MISSING_SHARE",
        "Share (0-1) of a read-back sample whose profiles may be missing before `landed_in_segment` fails "
        "with severity WARN.",
        default="0",
    ),
    Setting(
        "SEGMENT_PROFILES_ERROR_MISSING_SHARE",
        "Share (0-1) of missing profiles above which `landed_in_segment` fails with severity ERROR.",
        default="0.1",
    ),
    Setting("HEAP_API_URL", "Heap API base (live: `https://heapanalytics.com`).", sandbox_path="/heap"),
    Setting("HEAP_APP_ID", "Heap environment (app) id.", SANDBOX_HEAP_APP_ID),
    Setting("HEAP_API_KEY", "Heap API key (privacy endpoints).", SANDBOX_HEAP_API_KEY, secret=True),
    Setting(
        "HEAP_WEBHOOK_SECRET",
        "Shared secret Heap signs segment-sync webhooks with (`Heap-Hash`).",
        SANDBOX_HEAP_WEBHOOK_SECRET,
        secret=True,
    ),
    Setting(
        "HEAP_WEBHOOK_PREVIOUS_SECRETS",
        "Comma-separated secrets the receiver still accepts while a Heap webhook secret is being rotated "
        "(remove them once Heap signs with the new `HEAP_WEBHOOK_SECRET`).",
        secret=True,
    ),
    Setting(
        "HEAP_WEBHOOK_PUBLIC_URL",
        "Public base URL of the webhook receiver (`segment-ops webhooks`) as Heap reaches it, e.g. "
        "`https://hooks.example.com` (Heap posts to `<it>/webhooks/heap`). Set: `segment-ops check` asks its "
        "`/healthz` and refuses the sandbox's `HEAP_WEBHOOK_SECRET` on it.",
    ),
    Setting(
        "HEAP_WEBHOOK_MAX_AGE_SECONDS",
        "How old (seconds, > 0) a Heap webhook's signed timestamp may be before the receiver refuses it with "
        "400 (Heap's reference validator: 60). That Heap signs every retry anew is inferred from that 60 s "
        "window, not documented: if so, this only covers transit and clock skew, and a retry is dated by its "
        "own attempt.",
        default="120",
    ),
    Setting(
        "HEAP_WEBHOOK_MAX_FUTURE_SECONDS",
        "How far ahead of this machine's clock (seconds) a Heap webhook's signed timestamp may be "
        "(Heap's reference validator: 1; more allows ordinary clock skew).",
        default="30",
    ),
    Setting(
        "HEAP_WEBHOOK_MAX_CONNECTIONS",
        "Connections the webhook receiver (`segment-ops webhooks`) holds at once, open or in progress; "
        "beyond them it answers 503 at once and Heap retries. Behind `uvicorn --factory`, pass "
        "`--limit-concurrency`.",
        default="64",
    ),
    Setting(
        "HEAP_INBOX_RETENTION_DAYS",
        "Days an applied Heap sync's pages are kept in the inbox's archive (`inbox/heap/.archive/`) after "
        "the sensor moved them out of the live inbox; older days are deleted.",
        default="30",
    ),
    Setting(
        "HEAP_DRAIN_POLICY",
        "What a Heap `segment.users.drain` (Heap asks the destination to empty the audience) does: `exit` "
        "sends every member an exit, through the drop guard; `ignore` records the drain and changes nothing.",
        default="exit",
    ),
    Setting(
        "HEAP_AUDIENCES_FILE",
        "TOML file listing the Heap segments synced to Segment audiences; unset: "
        "`segment_ops/syncs/heap/heap_audiences.toml`, shipped in the package.",
    ),
    Setting("PENDO_API_URL", "Pendo API base (live: `https://app.pendo.io`, EU: `https://app.eu.pendo.io`).",
            sandbox_path="/pendo"),
    Setting("PENDO_INTEGRATION_KEY", "Pendo integration key (read-only is enough).",
            SANDBOX_PENDO_INTEGRATION_KEY, secret=True),
    Setting(
        "PENDO_TIMEZONE",
        "Time zone of the Pendo subscription (Settings > Subscription settings > Time Zone; an IANA name): "
        "Pendo buckets each day at midnight there, and the daily partitions follow it. The default is the "
        "sandbox's.",
        default=SANDBOX_PENDO_TIMEZONE,
    ),
    Setting(
        "PENDO_APP_IDS",
        "Pendo apps whose usage is read and summed: `*` for every app of the subscription, or "
        "comma-separated app ids (without it Pendo answers for the default app only).",
        default="*",
    ),
    Setting("FULLSTORY_API_URL", "Fullstory Server API base (live: `https://api.fullstory.com`, EU: "
            "`https://api.eu1.fullstory.com`).", sandbox_path="/fullstory"),
    Setting("FULLSTORY_API_KEY", "Fullstory API key (Settings > Integrations > API Keys; role Admin or "
            "Architect: it writes users).", SANDBOX_FULLSTORY_API_KEY, secret=True),
    Setting(
        "FULLSTORY_STREAM_TOKEN",
        "Token the Fullstory Streams destination sends as `Authorization: Bearer <token>` (set on the "
        "stream, Authentication: Bearer token); the receiver refuses any other. Fullstory documents no "
        "signature, so the token and the endpoint URL are the only secrets.",
        SANDBOX_FULLSTORY_STREAM_TOKEN,
        secret=True,
    ),
    Setting(
        "FULLSTORY_STREAM_PREVIOUS_TOKENS",
        "Comma-separated tokens the receiver still accepts while a Fullstory stream's token is being rotated "
        "(remove them once every stream sends `FULLSTORY_STREAM_TOKEN`).",
        secret=True,
    ),
    Setting(
        "FULLSTORY_SIGNALS_FILE",
        "TOML file of the Fullstory syncs: which streams are frustration signals and the Segment event each "
        "becomes, filters, per-user limits, the identity map and the experience score; unset: "
        "`segment_ops/syncs/fullstory/fullstory.toml`, shipped in the package.",
    ),
    Setting("SPLUNK_HEC_URL", "Splunk HTTP Event Collector base (live: `https://<host>:8088`).",
            sandbox_path="/splunk"),
    Setting("SPLUNK_HEC_TOKEN", "HEC token (a GUID).", SANDBOX_SPLUNK_HEC_TOKEN, secret=True),
    Setting("SPLUNK_INDEX", "Splunk index the audit trail is written to.", SANDBOX_SPLUNK_INDEX),
    Setting(
        "SPLUNK_HEC_ACK_TIMEOUT_SECONDS",
        "How long (seconds) an HEC batch may wait for its indexer acknowledgement before it is sent again "
        "(acks can take minutes; the Kafka connector's is 300).",
        default="300",
    ),
    Setting(
        "SPLUNK_HEC_CHANNEL",
        "HEC request channel (a GUID) the audit trail sends and polls acks on; unset: one GUID made once and "
        "kept in the sync's state, so acks of an earlier run can still be polled.",
    ),
    Setting(
        "AUDIT_TRAIL_LATENESS_HOURS",
        "How far back (hours) the audit trail keeps looking for audit events that the Public API lists late: "
        "the sensor re-probes those hours and a sweep run re-reads them (forwarding only what is new), so an "
        "event listed up to this long after its time still reaches the SIEM.",
        default="72",
    ),
    Setting(
        "SIEM_JSONL_URL",
        "Optional second SIEM destination: a URL taking newline-delimited JSON audit events (unset: off). "
        "Its path and query may hold an ingest key, so it is a secret: logs and errors show only its host.",
        secret=True,
    ),
    Setting("SIEM_JSONL_TOKEN", "Bearer token of the JSON-lines SIEM endpoint.", secret=True),
    Setting(
        "SEGMENT_OPS_REDACTION_SALT",
        "Secret key of the salted hashes that replace sensitive audit-event fields before they reach a SIEM.",
        SANDBOX_REDACTION_SALT,
        secret=True,
    ),
    Setting(
        "REVERSE_ETL_MODELS_DIR",
        "Folder of reverse-ETL model files (`<model>.sql`), or several separated by the path separator "
        "(`:`, on Windows `;`), read in order, e.g. your own models beside the examples; two models of the "
        "same name are an error naming both files. Unset: the project's `sql/reverse_etl/`.",
    ),
    Setting(
        "PENDO_HEALTH_CONFIG",
        "TOML file of the Pendo account-health model (weights, bands, window, service user, identity map); "
        "unset: `segment_ops/syncs/pendo/pendo_health.toml`, shipped in the package.",
    ),
    Setting(
        "WAREHOUSE_URL",
        "SQLAlchemy URL of the warehouse the reverse-ETL models run against: DuckDB, PostgreSQL, Snowflake, "
        "BigQuery, Redshift, or any database with a SQLAlchemy dialect. Every warehouse but DuckDB needs its "
        "driver: `pip install 'segment_ops[postgres]'` (or `[snowflake]`, `[bigquery]`, `[redshift]`; see "
        "\"Installing a warehouse driver\").",
        default="duckdb:///{home}/demo_warehouse.duckdb",
    ),
    Setting(
        "ALERT_WEBHOOK_URL",
        "Slack-compatible incoming webhook that run-failure, recovery and delivery-health alerts are posted "
        "to (the URL is the credential).",
        sandbox_path=f"/slack{SANDBOX_SLACK_WEBHOOK_PATH}",
        secret=True,
    ),
    Setting("DAGSTER_UI_URL", "Base URL of the Dagster UI, for the run links in alerts.", default="http://127.0.0.1:3000"),
    Setting(
        "DELIVERY_HEALTH_WINDOW_HOURS",
        "How many recent hours of each sync's ledger the delivery-health check reads.",
        default="24",
    ),
    Setting(
        "DELIVERY_HEALTH_MAX_FAILED_SHARE",
        "Share of a sync's messages (0-1) that may be rejected or failed in the window before it is flagged.",
        default="0.05",
    ),
    Setting(
        "DELIVERY_HEALTH_MIN_MESSAGES",
        "Fewest messages a sync needs in the window for the delivery-health check to judge it (fewer: idle).",
        default="20",
    ),
    Setting(
        "PLAN_GUARD_MAX_REMOVED_SHARE",
        "Plan guard of every diff sync (reverse-ETL models, Pendo groups, Heap audiences): a run whose plan "
        "would clear more than this share (0-1) of the records it has delivered (a mirror model's removals) "
        "is held before sending, until a run approves it (`approve_plan`). `1`: no limit. Heap audiences "
        "leave removals to their own drop guard (`max_drop_ratio`).",
        default="0.1",
    ),
    Setting(
        "PLAN_GUARD_MAX_CHANGED_SHARE",
        "Plan guard: the share (0-1) of delivered records one run may change before its plan is held. `1`: "
        "no limit.",
        default="0.5",
    ),
    Setting(
        "PLAN_GUARD_MAX_NULLED_SHARE",
        "Plan guard: the share (0-1) of delivered records whose previously non-null trait (or property) one "
        "run may set to null before its plan is held. `1`: no limit.",
        default="0.1",
    ),
    Setting(
        "PLAN_GUARD_MAX_MESSAGES",
        "Plan guard: the most messages one run of a diff sync may send before its plan is held (a volume "
        "cap, applied whatever the sync's size). `0`: no cap.",
        default="0",
    ),
    Setting(
        "PLAN_GUARD_MIN_DELIVERED",
        "Plan guard: the share limits apply once a sync has delivered at least this many records, so first "
        "runs and small syncs are never held for their shares.",
        default="100",
    ),
    Setting(
        "TRACKING_PLAN_POLICY",
        "What a sync does with a call that breaks the tracking plan connected to its Segment source (read "
        "with the Public API before each sending run): `warn` sends it and reports the violation (metadata, "
        "a failed check, a Slack alert); `block` rejects it with the schema error as the reason, and stops "
        "the run when the plan cannot be read; `off` checks nothing. A model's `tracking_plan:` header "
        "overrides it.",
        default="warn",
    ),
    Setting(
        "REGULATIONS_QUERY_FILE",
        "SQL file whose rows are privacy requests for the `segment/regulations` sync (columns: `user_id`, "
        "`regulation_type`, optional `subject_type`, `request_id`, `requested_at`), run against "
        "WAREHOUSE_URL. Unset: the project's `sql/regulations/privacy_requests.sql`; `off`: no query, only "
        "files dropped into `$SEGMENT_OPS_HOME/inbox/regulations/`.",
    ),
    Setting(
        "REGULATIONS_SUBJECTS_PER_REQUEST",
        "Most subject ids one `POST /regulations` carries (Segment's privacy docs: up to 5,000 userIds per "
        "Public API call).",
        default="5000",
    ),
    Setting(
        "SEGMENT_SOURCE_DEDICATED",
        "`true`: only segment_ops writes to the Segment source of `SEGMENT_WRITE_KEY`, so the hourly "
        "Delivery Overview check compares what Segment counted as received with what the ledgers delivered; "
        "`false`: other senders share the source, and the comparison is skipped (ingest failures still "
        "show).",
        default="true",
    ),
    Setting(
        "DELIVERY_OVERVIEW_INGEST_TOLERANCE",
        "Share (0-1) of an hour's delivered messages that may be missing from Segment's received count "
        "before the Delivery Overview check fails (a batch sent just before an hour ends may be counted in "
        "the next).",
        default="0.01",
    ),
    Setting(
        "DELIVERY_OVERVIEW_MAX_EGRESS_FAILED_SHARE",
        "Share (0-1) of a destination's events in an hour that Segment may fail to deliver (failed "
        "delivery, by discard reason) before the Delivery Overview check warns and an alert names the "
        "destination.",
        default="0.05",
    ),
    Setting(
        "RUN_HEARTBEAT_SECONDS",
        "How often (seconds) a run's worker writes its heartbeat into the Dagster instance's storage.",
        default="10",
    ),
    Setting(
        "RUN_HEARTBEAT_TIMEOUT_SECONDS",
        "A STARTED run whose worker has not beaten for this long (seconds; at least three heartbeats) is "
        "failed by `dead_run_sensor`, freeing its pool slots; the next run sends what it left pending.",
        default="120",
    ),
    Setting(
        "PREFLIGHT_CACHE_SECONDS",
        "How long (seconds) a sync that sends reuses a preflight answer (the Segment write key's source and "
        "region) before asking the Public API again; a changed setting is checked anew at once, and a "
        "transient failure is never kept. `0`: ask before every run.",
        default="600",
    ),
    Setting(
        "PREFLIGHT_HEC_PROBE_EVENT",
        "`true`: `segment-ops check` and the `ops/preflight` asset send one probe event (sourcetype "
        "`segment_ops:preflight`) to `SPLUNK_INDEX`, proving the HEC token may write there; `false`: nothing "
        "is indexed, and a refused index shows at the audit trail's first send.",
        default="false",
    ),
)

_BY_NAME = {s.name: s for s in SETTINGS}
SECRET_NAMES = tuple(s.name for s in SETTINGS if s.secret)


@dataclass(frozen=True)
class Settings:
    """Resolved values of every `Setting`, read from an environment mapping."""

    values: Mapping[str, str]
    from_env: frozenset[str]
    # Why the home cannot be used (a `HomeConflictError` message), and the values that depend on it: reading
    # one of those raises, while every other setting still reads (alerts, Pendo's time zone at import).
    home_conflict: str | None = None
    home_dependent: frozenset[str] = frozenset()

    def __getitem__(self, name: str) -> str:
        if self.home_conflict is not None and name in self.home_dependent:
            raise HomeConflictError(self.home_conflict)
        return self.values[name]

    @property
    def home(self) -> Path:
        return Path(self["SEGMENT_OPS_HOME"])

    def is_set(self, name: str) -> bool:
        """True when the environment sets `name`; False when the sandbox default is in force."""
        return name in self.from_env


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Resolve every setting from `env` (default: `os.environ`), falling back to sandbox defaults."""
    env = os.environ if env is None else env
    home, conflict = resolve_home(env)
    sandbox_url = (env.get("SEGMENT_OPS_SANDBOX_URL")
                   or _BY_NAME["SEGMENT_OPS_SANDBOX_URL"].default).rstrip("/")
    values: dict[str, str] = {}
    from_env = set()
    home_dependent = {"SEGMENT_OPS_HOME"}
    for setting in SETTINGS:
        raw = env.get(setting.name)
        if raw:
            from_env.add(setting.name)
            values[setting.name] = raw
        else:
            values[setting.name] = setting.default_for(sandbox_url, home) or ""
            if setting.default and "{home}" in setting.default:
                home_dependent.add(setting.name)
    values["SEGMENT_OPS_HOME"] = str(home)
    values["SEGMENT_OPS_SANDBOX_URL"] = sandbox_url
    return Settings(values=values, from_env=frozenset(from_env), home_conflict=conflict,
                    home_dependent=frozenset(home_dependent))


# SEGMENT_OPS_HOME's default until issue 14, relative to the current directory: a replay run from another
# folder started a new ledger there and sent everything again.
LEGACY_HOME = ".segment_ops"


class HomeConflictError(RuntimeError):
    """SEGMENT_OPS_HOME is unset and `./.segment_ops`, its old default, holds state: the new default would
    start an empty ledger beside it (and send everything again), so the user must choose."""


def default_home(env: Mapping[str, str] | None = None) -> Path:
    """SEGMENT_OPS_HOME when unset: `$XDG_DATA_HOME/segment_ops`, else `~/.local/share/segment_ops` (macOS
    too, as uv does), or `%LOCALAPPDATA%\\segment_ops` on Windows: absolute, whatever the current folder."""
    env = os.environ if env is None else env
    if os.name == "nt":
        base = Path(env.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    else:
        xdg = env.get("XDG_DATA_HOME", "")
        # The XDG base-directory spec: a relative XDG_DATA_HOME is invalid and must be ignored.
        base = Path(xdg) if os.path.isabs(xdg) else Path(env.get("HOME") or Path.home()) / ".local" / "share"
    return (base / "segment_ops").resolve()


def resolve_home(env: Mapping[str, str] | None = None) -> tuple[Path, str | None]:
    """The absolute SEGMENT_OPS_HOME, and why it cannot be used (None when it can).

    An explicit value is used as given; a relative one is resolved here, against the current directory,
    and the absolute path is what every caller passes on. Only the default is checked against a store at
    the old `./.segment_ops`: refusing is safer than moving a user's data unasked (a Dagster process may
    hold its DuckDB files open, another checkout may own it, and a move across filesystems is not atomic).
    """
    env = os.environ if env is None else env
    raw = env.get("SEGMENT_OPS_HOME")
    if raw:
        return Path(raw).expanduser().resolve(), None
    home = default_home(env)
    try:
        cwd = os.getcwd()
    except OSError:  # the current directory was deleted: there is no old store to find in it
        return home, None
    return home, _home_conflict(cwd, str(home))


# (cwd, home) pairs already found free of an old store: a process checks each pair once (a few stat calls);
# a conflict is looked at again each time, so the error goes as soon as the user has moved the folder.
_NO_CONFLICT: set[tuple[str, str]] = set()


def _home_conflict(cwd: str, home: str) -> str | None:
    if (cwd, home) in _NO_CONFLICT:
        return None
    legacy, new = Path(cwd, LEGACY_HOME), Path(home)
    if not _holds_state(legacy) or (new.exists() and os.path.samefile(legacy, new)):
        _NO_CONFLICT.add((cwd, home))
        return None
    keep = f"export SEGMENT_OPS_HOME={shlex.quote(str(legacy))}"
    if _holds_state(new):
        return (f"SEGMENT_OPS_HOME is unset and both its default {new} and {legacy} (the old default, "
                f"relative to the current directory) hold state: set SEGMENT_OPS_HOME to the one to use "
                f"({keep}, or export SEGMENT_OPS_HOME={shlex.quote(str(new))}) and move the other "
                f"out of the way")
    move = f"mv {shlex.quote(str(legacy))} {shlex.quote(str(new))}"
    if not new.exists():
        move = f"mkdir -p {shlex.quote(str(new.parent))} && {move}"
    elif any(new.iterdir()):  # only empty folders (no file): delete them, or mv would put the store inside
        move = f"find {shlex.quote(str(new))} -depth -type d -empty -delete && {move}"
    else:
        move = f"rmdir {shlex.quote(str(new))} && {move}"
    return (f"SEGMENT_OPS_HOME is unset and now defaults to {new}, but {legacy} (the old default, relative "
            f"to the current directory) holds state; refusing to start empty beside it. Keep using it: "
            f"{keep} -- or move it to the new default: {move}")


def _holds_state(folder: Path) -> bool:
    """True when a file lies anywhere under `folder` (a tree of empty folders is not state). The walk stops
    at the first file, so a store costs a few stat calls however large it is."""
    return any(files for _, _, files in os.walk(folder))


def settings_table_markdown() -> str:
    """The README's configuration table, generated from `SETTINGS` (a test keeps the README in step)."""
    lines = ["| Variable | What it is | Default | Secret |", "|---|---|---|---|"]
    for s in SETTINGS:
        secret = "yes" if s.secret else ""
        lines.append(f"| `{s.name}` | {s.description} | {s.documented_default} | {secret} |")
    return "\n".join(lines)
