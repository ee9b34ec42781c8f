"""Heap segments as Segment audiences: membership from webhooks or Heap Connect, declared on the one runner.

`load_audiences` reads `heap_audiences.toml`; `sync_audience` brings one audience in Segment to Heap's
membership (route "webhook": the inbox's complete syncs and drains; route "reconcile": the full
membership in the Heap Connect tables). Time, drains, identity resolution and the drop guard are
explained next to the code that does them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import duckdb

from segment_ops.clients.segment_tracking import SegmentTrackingClient
from segment_ops.engine import store
from segment_ops.engine.diff import delivered_rows
from segment_ops.engine.governance import Governance
from segment_ops.engine.guard import GuardLimits
from segment_ops.engine.identity import IdentityMapError, IdentityMapStats, IdentitySource, stage_identity_map
from segment_ops.engine.ledger import Ledger
from segment_ops.engine.run import DiffSync, RunReport, run_diff_sync
from segment_ops.engine.spec import Companion, DiffSpec
from segment_ops.engine.sql import literal, quote
from segment_ops.engine.warehouse import UNSERIALISABLE_COLUMN, StagedResult, WarehouseError, stage_query
from segment_ops.syncs.heap.inbox import Inbox, InboxDrain, InboxSync

# Package data (pyproject's package-data); HEAP_AUDIENCES_FILE overrides it. Installed packages sit on disk
# (Dagster cannot load zipped code), so `files()` is a real path for error messages.
DEFAULT_FILE = Path(resources.files("segment_ops.syncs.heap").joinpath("heap_audiences.toml"))
FALLBACKS = ("user_id_unless_email", "reject")
ROUTES = ("webhook", "reconcile")
DRAIN_POLICIES = ("exit", "ignore")  # HEAP_DRAIN_POLICY
ENTERED_EVENT, EXITED_EVENT = "Audience Entered", "Audience Exited"
EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
STAGED_TABLE = "heap_staged"
# The fields of an inbox page file the run reads, typed for DuckDB's `read_json`.
_PAGE_COLUMNS = ("{sync_task_id: 'VARCHAR', page_number: 'INTEGER', received_at: 'TIMESTAMPTZ', "
                 "signed_at: 'BIGINT', add: 'VARCHAR[]', remove: 'VARCHAR[]'}")
_MAX_PAGE_FILE_BYTES = 16 * 1024 * 1024  # a page file is smaller than its webhook body (at most 10 MB)
SAMPLE_SIZE = 20
_TRAIT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_AUDIENCE_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")

# Erasure (`engine/erasure.py`): an erased subject's Heap identities (the subject itself, and those the
# identity map resolves to it) leave the membership; what was applied holds only ids and counts.
_ERASE_MEMBERSHIP = "DELETE FROM heap_membership WHERE erased_id(identity)"
# Heap's word on the segment's members, and what was applied to reach it (see `sync_audience`).
STATE = store.register(store.StateSchema(
    name="heap_membership", version=1,
    tables=("heap_membership", "heap_applied_syncs", "heap_applied_drains"),
    create="""
CREATE TABLE IF NOT EXISTS heap_membership (
    identity VARCHAR NOT NULL,      -- the Heap identity (the customer's identity property)
    member   BOOLEAN NOT NULL,
    as_of    TIMESTAMPTZ NOT NULL,  -- when Heap said so: page arrival or Connect synced_at
    source   VARCHAR NOT NULL       -- sync_task_id, 'heap_connect', or 'drain:<key>'
);
CREATE TABLE IF NOT EXISTS heap_applied_syncs (
    sync_task_id VARCHAR NOT NULL,
    pages        INTEGER NOT NULL,
    adds         BIGINT NOT NULL,
    removes      BIGINT NOT NULL,
    as_of        TIMESTAMPTZ NOT NULL,
    run_id       VARCHAR,
    applied_at   TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS heap_applied_drains (
    drain_key    VARCHAR NOT NULL,      -- the inbox key: a hash of the drain's signed body
    segment_id   BIGINT NOT NULL,
    as_of        TIMESTAMPTZ NOT NULL,  -- when Heap signed it
    policy       VARCHAR NOT NULL,      -- exit | ignore (HEAP_DRAIN_POLICY when it was applied)
    exits        BIGINT NOT NULL,       -- identities it made non-members
    run_id       VARCHAR,
    applied_at   TIMESTAMPTZ NOT NULL
);
""", erase=_ERASE_MEMBERSHIP))


class AudienceConfigError(ValueError):
    """The audiences file cannot be used as written; the message starts with its path."""


class IncompleteSyncError(RuntimeError):
    """A sync or drain asked for is not (or no longer) complete in the inbox, or belongs to another
    segment."""


class MembershipDropError(RuntimeError):
    """The new membership would exit too many delivered members; nothing was changed. `report` is the
    run's."""

    def __init__(self, message: str, report: AudienceRun) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class Audience:
    """One Heap segment synced to a Segment audience (an `[audiences.<key>]` table)."""

    key: str
    segment_id: int
    name: str
    trait: str
    description: str = ""
    enabled: bool = True
    entered_event: str = ENTERED_EVENT
    exited_event: str = EXITED_EVENT

    @property
    def sync(self) -> str:
        """The ledger's sync name and the staging file's name."""
        return f"heap_{self.key}"

    def spec(self, path: Path) -> DiffSpec:
        """The diff's view of the audience: identify calls keyed by userId, mirror mode, with the entered
        and exited events beside them."""
        return DiffSpec(
            sync=self.sync, source=path.name, call="identify", mode="mirror", key="user_id",
            user_id="user_id", fields=(self.trait,), removal_fields={self.trait: False},
            companion=Companion(self.entered_event, self.exited_event,
                                {"audience_key": self.trait, "audience_name": self.name,
                                 "heap_segment_id": self.segment_id, "source": "Heap"}))


@dataclass(frozen=True)
class AudiencesConfig:
    """The whole audiences file."""

    path: Path
    audiences: tuple[Audience, ...]
    identity: IdentitySource
    fallback: str = FALLBACKS[0]
    min_match_rate: float = 0.95
    # Heap Connect: a schema per environment, `users` (user_id, identity); the membership table is unverified
    # (the default heap_audiences.toml says why).
    members_query: str = ("SELECT m.segment_id, u.identity, m.synced_at "
                          "FROM main_production.segment_members AS m "
                          "JOIN main_production.users AS u ON u.user_id = m.user_id")
    reconcile_schedule: str = "0 5 * * *"
    max_drop_ratio: float = 0.5
    drop_guard_min_exits: int = 10
    stale_incomplete_sync_minutes: float = 60.0
    code_version: str = ""

    def by_segment(self, segment_id: int) -> Audience | None:
        return next((a for a in self.audiences if a.segment_id == segment_id and a.enabled), None)


def load_audiences(path: str | Path | None = None) -> AudiencesConfig:
    """Parse and check the audiences file (default: `heap_audiences.toml` beside this module)."""
    path = Path(path or DEFAULT_FILE)
    try:
        raw_text = path.read_bytes()
        data = tomllib.loads(raw_text.decode())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise AudienceConfigError(f"{path}: cannot read the audiences file: {exc}") from None

    def fail(problem: str) -> AudienceConfigError:
        return AudienceConfigError(f"{path}: {problem}")

    known = {"identity", "reconcile", "webhooks", "audiences"}
    if unknown := set(data) - known:
        raise fail(f"unknown table(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
    identity = dict(data.get("identity", {}))
    fallback = identity.pop("fallback", FALLBACKS[0])
    min_match_rate = identity.pop("min_match_rate", 0.95)
    if fallback not in FALLBACKS:
        raise fail(f"identity.fallback must be one of {', '.join(FALLBACKS)}, got {fallback!r}")
    try:
        source = IdentitySource.from_config(identity)
    except IdentityMapError as exc:
        raise fail(f"[identity]: {exc}") from None
    reconcile = data.get("reconcile", {})
    webhooks = data.get("webhooks", {})
    audiences = []
    for key, table in data.get("audiences", {}).items():
        audiences.append(_audience(key, table, fail))
    if not audiences:
        raise fail("no [audiences.<name>] table: list at least one Heap segment")
    for attr in ("segment_id", "trait"):
        values = [getattr(a, attr) for a in audiences]
        if dupes := sorted({str(v) for v in values if values.count(v) > 1}):
            raise fail(f"two audiences share the {attr} {', '.join(dupes)}")
    config = AudiencesConfig(
        path=path, audiences=tuple(audiences), identity=source, fallback=fallback,
        min_match_rate=_number(min_match_rate, "identity.min_match_rate", fail, 0, 1),
        members_query=str(reconcile.get("members_query", AudiencesConfig.members_query)),
        reconcile_schedule=str(reconcile.get("schedule", AudiencesConfig.reconcile_schedule)),
        max_drop_ratio=_drop_ratio(reconcile.get("max_drop_ratio", 0.5), fail),
        drop_guard_min_exits=int(_number(reconcile.get("drop_guard_min_exits", 10),
                                         "reconcile.drop_guard_min_exits", fail, 0, None)),
        stale_incomplete_sync_minutes=_number(webhooks.get("stale_incomplete_sync_minutes", 60),
                                              "webhooks.stale_incomplete_sync_minutes", fail, 0, None),
        code_version=hashlib.sha256(raw_text).hexdigest()[:16],
    )
    return config


def _audience(key: str, table: Any, fail: Callable[[str], AudienceConfigError]) -> Audience:
    if not _AUDIENCE_KEY.match(key):
        raise fail(f"audience name {key!r} must be letters, digits and underscores, starting with a letter")
    if not isinstance(table, dict):
        raise fail(f"audiences.{key} must be a table")
    allowed = {"segment_id", "name", "trait", "description", "enabled", "entered_event", "exited_event"}
    if unknown := set(table) - allowed:
        raise fail(f"audiences.{key}: unknown key(s) {', '.join(sorted(unknown))}; "
                   f"known: {', '.join(sorted(allowed))}")
    missing = [k for k in ("segment_id", "name", "trait") if k not in table]
    if missing:
        raise fail(f"audiences.{key} lacks {', '.join(missing)}")
    segment_id = table["segment_id"]
    if isinstance(segment_id, bool) or not isinstance(segment_id, int) or segment_id < 1:
        raise fail(f"audiences.{key}.segment_id must be Heap's numeric segment id, got {segment_id!r}")
    trait = table["trait"]
    if not isinstance(trait, str) or not _TRAIT.match(trait) or trait == "user_id":
        raise fail(f"audiences.{key}.trait must be a trait name of letters, digits and underscores "
                   f"(not user_id), got {trait!r}")
    for name in ("name", "description", "entered_event", "exited_event"):
        if name in table and (not isinstance(table[name], str) or not table[name].strip()):
            raise fail(f"audiences.{key}.{name} must be a non-empty string")
    if not isinstance(table.get("enabled", True), bool):
        raise fail(f"audiences.{key}.enabled must be true or false")
    return Audience(key=key, segment_id=segment_id, name=table["name"], trait=trait,
                    description=table.get("description", ""), enabled=table.get("enabled", True),
                    entered_event=table.get("entered_event", ENTERED_EVENT),
                    exited_event=table.get("exited_event", EXITED_EVENT))


def _drop_ratio(value: Any, fail: Callable[[str], AudienceConfigError]) -> float:
    ratio = _number(value, "reconcile.max_drop_ratio", fail, 0, 1)
    if ratio >= 1:
        raise fail(f"reconcile.max_drop_ratio must be below 1 (a share of the delivered members; 1 would "
                   f"let a run exit every member unguarded), got {value!r}")
    return ratio


def _number(value: Any, where: str, fail: Callable[[str], AudienceConfigError], low: float,
            high: float | None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < low or (
            high is not None and value > high):
        bounds = f"within [{low}, {high}]" if high is not None else f">= {low}"
        raise fail(f"{where} must be a number {bounds}, got {value!r}")
    return float(value)


# ---------------------------------------------------------------------------------------------- the run


@dataclass
class Resolution:
    """How the members' Heap identities resolved to Segment userIds."""

    members: int = 0
    mapped: int = 0
    fallback: int = 0
    unresolved: int = 0
    users: int = 0  # distinct userIds (two identities of one user count once)
    newly_rejected: int = 0
    samples: list[tuple[str, str]] = field(default_factory=list)  # (identity, reason)

    @property
    def match_rate(self) -> float:
        return (self.mapped + self.fallback) / self.members if self.members else 1.0


@dataclass
class DropGuard:
    delivered_members: int = 0
    exits: int = 0
    max_drop_ratio: float = 0.5
    min_exits: int = 10
    confirmed: bool = False
    empty_export: bool = False  # the reconcile's Heap Connect result had no row for the segment

    @property
    def ratio(self) -> float:
        return self.exits / self.delivered_members if self.delivered_members else 0.0

    @property
    def tripped(self) -> bool:
        if self.empty_export and self.delivered_members:
            return True
        return self.exits >= max(self.min_exits, 1) and self.ratio > self.max_drop_ratio


@dataclass(kw_only=True)
class AudienceRun(RunReport):
    audience: Audience
    route: str
    syncs: list[InboxSync] = field(default_factory=list)
    drains: list[InboxDrain] = field(default_factory=list)
    drain_policy: str = DRAIN_POLICIES[0]
    drain_exits: int = 0  # identities the run's drains made non-members (policy exit)
    pages: int = 0
    adds_received: int = 0
    removes_received: int = 0
    connect_rows: int | None = None
    identity_map: IdentityMapStats | None = None
    resolution: Resolution = field(default_factory=Resolution)
    guard: DropGuard = field(default_factory=DropGuard)


def pending_syncs(inbox: Inbox, audience: Audience) -> list[InboxSync]:
    """Complete, not yet processed syncs of the audience's segment, oldest first."""
    return [s for s in inbox.syncs() if s.segment_id == audience.segment_id and s.complete]


def pending_drains(inbox: Inbox, audience: Audience) -> list[InboxDrain]:
    """Drains of the audience's segment not yet applied nor held, in the order Heap signed them (a held drain
    is applied only by a run that names it with `confirm_drop`)."""
    return [d for d in inbox.drains() if d.segment_id == audience.segment_id and d.held is None]


def sync_audience(con: duckdb.DuckDBPyConnection, config: AudiencesConfig, audience: Audience, *, route: str,
                  inbox: Inbox, warehouse_url: str, client_factory: Callable[[], SegmentTrackingClient],
                  sync_task_ids: Sequence[str] | None = None, drain_keys: Sequence[str] | None = None,
                  drain_policy: str = DRAIN_POLICIES[0], run_id: str | None = None, dry_run: bool = False,
                  confirm_drop: bool = False, max_in_flight: int = 4, guard: GuardLimits | None = None,
                  approve_plan: str | None = None, governance: Governance | None = None) -> AudienceRun:
    """Bring the audience in Segment to Heap's membership by `route` ("webhook" or "reconcile").

    Webhook route: `sync_task_ids` / `drain_keys` name the syncs and drains to apply (None: every complete,
    unprocessed one of the segment; an empty list: none). Raises `IncompleteSyncError`, `IdentityMapError`,
    `WarehouseError`, `MembershipDropError` (nothing changed), `DeliveryIncomplete` (messages stay pending,
    syncs and drains stay unprocessed), `PlanHeld` (the plan guard `guard` held the plan: sent by a run with
    `approve_plan`; syncs and drains stay unprocessed) and the Segment client's `VendorFatalError` as it is.
    Removals are left to the drop guard (its `confirm_drop`), so the plan guard's removed share is not
    applied here. `governance`: regulations and the tracking plan (`run_diff_sync`).

    The stage: (1) Heap's word, the changes this run brings as (identity, member, as_of, source); (2) the
    membership they lead to, where only a newer statement replaces an older one, so a page delivered twice,
    pages out of order, a sync applied again after a crash or a Connect export older than the last webhook
    all leave the newest word from Heap; (3) identities resolved to userIds, one staged row per userId;
    (4) the drop guard against the last delivered membership, before anything is written. Before the plan
    the new membership and the unresolved members are recorded; the diff then sends the trait true plus
    "Audience Entered" to entrants and the trait false plus "Audience Exited" to leavers. Only after a
    complete delivery are the syncs and drains marked done (ARCHITECTURE rule 2: state = delivered).
    """
    if route not in ROUTES:
        raise ValueError(f"route must be one of {', '.join(ROUTES)}, got {route!r}")
    if drain_policy not in DRAIN_POLICIES:
        raise ValueError(f"drain_policy must be one of {', '.join(DRAIN_POLICIES)}, got {drain_policy!r}")
    started = time.monotonic()
    run = AudienceRun(audience=audience, route=route, dry_run=dry_run, drain_policy=drain_policy)
    store.ensure(con, STATE)
    # Heap Connect's synced_at often arrives without a zone (Snowflake TIMESTAMP_NTZ, Redshift TIMESTAMP):
    # it is UTC, and casting it to TIMESTAMPTZ must not read it in the machine's local zone.
    con.execute("SET TimeZone = 'UTC'")

    def stage(con: duckdb.DuckDBPyConnection) -> StagedResult:
        if route == "webhook":
            run.syncs = _chosen_syncs(inbox, audience, sync_task_ids)
            run.drains = _chosen_drains(inbox, audience, drain_keys, confirm_drop)
            _stage_webhook_changes(con, inbox, run)
        else:
            _stage_connect_changes(con, config, audience, warehouse_url, run)
        _apply_drains(con, run)
        con.execute("""
            CREATE OR REPLACE TEMP TABLE heap_proposed AS
            SELECT identity, member, as_of, source FROM heap_membership m
            WHERE NOT EXISTS (SELECT 1 FROM heap_changes c
                              WHERE c.identity = m.identity AND c.as_of > m.as_of)
            UNION ALL
            SELECT identity, member, as_of, source FROM heap_changes c
            WHERE NOT EXISTS (SELECT 1 FROM heap_membership m
                              WHERE m.identity = c.identity AND m.as_of >= c.as_of)
        """)
        run.identity_map = stage_identity_map(con, config.identity, "heap_identity_map",
                                              warehouse_url=warehouse_url)
        staged = _resolve(con, config, audience, run)
        run.guard = _drop_guard(con, config, confirm_drop)
        run.guard.empty_export = run.connect_rows == 0
        if run.guard.tripped and not confirm_drop:
            run.seconds = time.monotonic() - started
            why = ("the Heap Connect result has no row for the segment" if run.guard.empty_export else
                   f"{run.guard.ratio:.0%} > {config.max_drop_ratio:.0%}")
            what = "Heap's drain of the segment" if run.drain_exits else f"this {route}"
            raise MembershipDropError(
                f"audience {audience.key!r}: {what} would exit {run.guard.exits:,} of "
                f"{run.guard.delivered_members:,} delivered members ({why}); nothing was changed. If Heap's "
                "membership really dropped, run again with confirm_drop=true.", run)
        return staged

    def record_membership(con: duckdb.DuckDBPyConnection, ledger: Ledger) -> None:
        _commit_membership(con, run, run_id)
        run.resolution.newly_rejected = _reject_unresolved(con, ledger, audience, run_id)

    declared = DiffSync(audience.spec(config.path), stage, before_plan=record_membership,
                        label=f"audience {audience.key!r}")
    plan_guard = None if guard is None else dataclasses.replace(guard, max_removed_share=1.0)
    run_diff_sync(con, declared, run, client_factory, run_id=run_id, max_in_flight=max_in_flight,
                  guard=plan_guard, approve_plan=approve_plan, governance=governance)
    if dry_run:
        return run
    for sync in run.syncs:
        inbox.mark_done(sync.sync_task_id, {"audience": audience.key, "run_id": run_id,
                                            "delivered": run.delivery.delivered if run.delivery else 0})
    for drain in run.drains:
        inbox.mark_drain_done(drain.key, {"audience": audience.key, "run_id": run_id,
                                          "policy": run.drain_policy})
    for name in ("heap_changes", "heap_proposed", "heap_resolution", "heap_run_drains", STAGED_TABLE):
        con.execute(f"DROP TABLE IF EXISTS {name}")
    return run


def _chosen_syncs(inbox: Inbox, audience: Audience, sync_task_ids: Sequence[str] | None) -> list[InboxSync]:
    if sync_task_ids is None:
        return pending_syncs(inbox, audience)
    chosen = []
    for task in sync_task_ids:
        sync = inbox.sync(task)
        if sync is None:
            raise IncompleteSyncError(f"sync {task} is not in the inbox {inbox.root}")
        if sync.segment_id != audience.segment_id:
            raise IncompleteSyncError(f"sync {task} is for Heap segment {sync.segment_id}, not "
                                      f"{audience.segment_id} ({audience.key})")
        if not sync.complete:
            raise IncompleteSyncError(f"sync {task} is incomplete: page(s) {list(sync.missing_pages)} of "
                                      f"{sync.total_pages} have not arrived")
        chosen.append(sync)
    return chosen


def _chosen_drains(inbox: Inbox, audience: Audience, drain_keys: Sequence[str] | None,
                   confirm_drop: bool) -> list[InboxDrain]:
    if drain_keys is None:
        return pending_drains(inbox, audience)
    chosen = []
    for key in drain_keys:
        drain = inbox.drain(key)
        if drain is None:
            raise IncompleteSyncError(f"drain {key} is not in the inbox {inbox.root}")
        if drain.segment_id != audience.segment_id:
            raise IncompleteSyncError(f"drain {key} is for Heap segment {drain.segment_id}, not "
                                      f"{audience.segment_id} ({audience.key})")
        if drain.held and not drain.done and not confirm_drop:
            raise IncompleteSyncError(f"drain {key} is held: {drain.held}. If Heap drained the segment "
                                      "again, run it with confirm_drop=true")
        if not drain.done:  # an applied drain stays applied: running it again would change nothing
            chosen.append(drain)
    return chosen


def _stage_webhook_changes(con: duckdb.DuckDBPyConnection, inbox: Inbox, run: AudienceRun) -> None:
    """`heap_changes`: each identity's last change across the syncs' pages.

    Time: a sync's statements are dated by the earliest `Heap-Hash` timestamp of its stored pages (Heap's
    clock, in ms). A sync Heap delivers very late (after a newer sync was applied) is dated by when Heap
    signed it, so it does not override the newer one. That is *delivery-attempt* order, not the order of
    Heap's decisions: Heap's reference validator refuses anything older than 60 s, from which we infer
    (unverified) that Heap signs every retry anew. A drain retried after a later sync would then look newer;
    the inbox holds the one case it can recognise (`Inbox.store_drain`), the drop guard stands behind the
    rest.

    Within a sync, pages apply in page order and a page's removes after its adds; across syncs, the
    sync Heap signed later wins (`as_of` = the earliest `Heap-Hash` timestamp of its pages, Heap's clock;
    a page stored without one counts by its arrival). DuckDB reads the page files itself (`read_json`,
    one INSERT per list): Python never holds a page.
    """
    files = [str(path) for sync in run.syncs for path in inbox.page_files(sync.sync_task_id)]
    con.execute("""
        CREATE OR REPLACE TEMP TABLE heap_page_ids (sync_task_id VARCHAR, page_number INTEGER,
            stated_at TIMESTAMPTZ, identity VARCHAR, member BOOLEAN, step TINYINT)
    """)
    # One file per statement: DuckDB's memory limit on the staging file then bounds a page, not a sync.
    for path in files:
        page = (f"read_json(?, columns={_PAGE_COLUMNS}, format='auto', "
                f"maximum_object_size={_MAX_PAGE_FILE_BYTES})")
        con.execute(f"""
            INSERT INTO heap_page_ids
            SELECT sync_task_id, page_number, coalesce(make_timestamptz(signed_at * 1000), received_at),
                   unnest(add || remove) AS identity,
                   unnest(list_transform(add, lambda x: true)
                          || list_transform(remove, lambda x: false)) AS member,
                   unnest(list_transform(add, lambda x: 0)
                          || list_transform(remove, lambda x: 1))::TINYINT AS step
            FROM {page}
        """, [path])
        run.pages += 1
    run.adds_received, run.removes_received = con.execute(
        "SELECT count(*) FILTER (WHERE member), count(*) FILTER (WHERE NOT member) "
        "FROM heap_page_ids").fetchone()
    con.execute("""
        CREATE OR REPLACE TEMP TABLE heap_changes AS
        SELECT identity, member, as_of, sync_task_id AS source FROM (
            SELECT *, min(stated_at) OVER (PARTITION BY sync_task_id) AS as_of FROM heap_page_ids
        )
        QUALIFY row_number() OVER (PARTITION BY identity ORDER BY as_of DESC, sync_task_id DESC,
                                   page_number DESC, step DESC) = 1
    """)
    con.execute("DROP TABLE heap_page_ids")


def _apply_drains(con: duckdb.DuckDBPyConnection, run: AudienceRun) -> None:
    """Fold drains into `heap_changes` (policy `exit`; `ignore` only lets the run record them).

    HEAP_DRAIN_POLICY `exit` makes every member stated before the drain's signed time a non-member as of
    that time, in this run and in every later one (`heap_applied_drains` keeps the drain times), and the
    exits go through the drop guard like any other; `ignore` records the drain and changes nothing. Either
    way the drain is marked done once the run succeeded.

    - Every statement signed before an exit drain (applied earlier, or in this run) cannot make a member:
      a sync older than a drain, applied after it, brings none of its adds back.
    - Each of this run's exit drains makes every current member stated before it a non-member as of the
      drain's signed time (source `drain:<key>`); statements signed after it stand.
    """
    con.execute("CREATE OR REPLACE TEMP TABLE heap_run_drains (drain_key VARCHAR, as_of TIMESTAMPTZ)")
    if run.drains:
        con.executemany("INSERT INTO heap_run_drains VALUES (?, ?)",
                        [(d.key, d.signed_at) for d in run.drains])
    exit_now = run.drain_policy == "exit"
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE heap_changes AS
        WITH points AS (
            SELECT as_of FROM heap_applied_drains WHERE policy = 'exit'
            UNION ALL SELECT as_of FROM heap_run_drains WHERE {exit_now}
        )
        SELECT identity, member, as_of, source FROM (
            SELECT identity, member AND NOT EXISTS (SELECT 1 FROM points p WHERE p.as_of > c.as_of) AS member,
                   as_of, source
            FROM heap_changes c
            UNION ALL
            SELECT m.identity, false, d.as_of, 'drain:' || d.drain_key
            FROM heap_membership m JOIN heap_run_drains d ON m.as_of < d.as_of
            WHERE m.member AND {exit_now}
        )
        QUALIFY row_number() OVER (PARTITION BY identity ORDER BY as_of DESC, member) = 1
    """)
    run.drain_exits = con.execute("SELECT count(*) FROM heap_changes "
                                  "WHERE source LIKE 'drain:%'").fetchone()[0]


def _stage_connect_changes(con: duckdb.DuckDBPyConnection, config: AudiencesConfig, audience: Audience,
                           warehouse_url: str, run: AudienceRun) -> None:
    """`heap_changes` from Heap Connect: every listed identity is a member as of its `synced_at`; every
    known member not listed is not (as of the export's time; an empty export: now)."""
    query = f"SELECT identity, synced_at FROM ({config.members_query}) AS heap_connect WHERE segment_id = " \
            f"{int(audience.segment_id)}"
    try:
        stage_query(con, warehouse_url, query, "heap_connect")
    except WarehouseError as exc:
        raise WarehouseError(f"{config.path}: reconcile.members_query failed for {audience.key}: "
                             f"{exc}") from None
    run.connect_rows = con.execute("SELECT count(*) FROM heap_connect").fetchone()[0]
    con.execute("""
        CREATE OR REPLACE TEMP TABLE heap_changes AS
        WITH listed AS (
            SELECT identity::VARCHAR AS identity, max(synced_at)::TIMESTAMPTZ AS as_of FROM heap_connect
            WHERE identity IS NOT NULL AND identity::VARCHAR <> '' GROUP BY 1
        ), export AS (SELECT coalesce(max(as_of), now()) AS as_of FROM listed)
        SELECT identity, true AS member, as_of, 'heap_connect' AS source FROM listed
        UNION ALL
        SELECT m.identity, false, (SELECT as_of FROM export), 'heap_connect' FROM heap_membership m
        WHERE m.member AND NOT EXISTS (SELECT 1 FROM listed l WHERE l.identity = m.identity)
    """)
    con.execute("DROP TABLE heap_connect")


def _resolve(con: duckdb.DuckDBPyConnection, config: AudiencesConfig, audience: Audience,
             run: AudienceRun) -> StagedResult:
    """`heap_resolution` (identity, user_id, how, reason) for every member, and the staged table for the diff.

    Through the identity map (looked up trimmed, case kept): a mapped identity gets the map's user id; an
    unmapped one, with fallback `user_id_unless_email` (the default), is sent as its own userId unless it
    looks like an email (never a userId); fallback `reject`, an id the map gives two users, or an email:
    rejected with the reason (once per identity and reason) and counted in the match rate.
    """
    fallback = config.fallback == "user_id_unless_email"
    # The map's ids are trimmed (engine.identity), so members are looked up trimmed; case is kept (spec §3).
    email = f"regexp_matches(trim(p.identity), {literal(EMAIL_PATTERN)})"
    usable = f"{fallback} AND NOT {email} AND p.identity = trim(p.identity)"
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE heap_resolution AS
        SELECT p.identity,
               CASE WHEN a.source_id IS NOT NULL THEN NULL WHEN m.target_id IS NOT NULL THEN m.target_id
                    WHEN {usable} THEN p.identity END AS user_id,
               CASE WHEN a.source_id IS NOT NULL THEN NULL WHEN m.target_id IS NOT NULL THEN 'map'
                    WHEN {usable} THEN 'fallback' END AS how,
               CASE WHEN a.source_id IS NOT NULL THEN 'Heap identity is mapped to several Segment users ('
                        || array_to_string(a.targets, ', ')
                        || ') in the identity map; sending it to one would be a guess'
                    WHEN m.target_id IS NOT NULL THEN NULL
                    WHEN NOT {fallback} THEN 'Heap identity is not in the identity map (fallback: reject)'
                    WHEN {email}
                        THEN 'Heap identity is not in the identity map and looks like an email, which is '
                        || 'never sent as a userId'
                    WHEN p.identity <> trim(p.identity)
                        THEN 'Heap identity is not in the identity map and has '
                        || 'leading or trailing spaces, so it is not sent as a userId'
               END AS reason
        FROM heap_proposed p
        LEFT JOIN heap_identity_map m ON m.source_id = trim(p.identity)
        LEFT JOIN heap_identity_map_ambiguous a ON a.source_id = trim(p.identity)
        WHERE p.member
    """)
    res = run.resolution
    res.members, res.mapped, res.fallback, res.unresolved = con.execute(
        "SELECT count(*), count(*) FILTER (WHERE how = 'map'), count(*) FILTER (WHERE how = 'fallback'), "
        "count(*) FILTER (WHERE user_id IS NULL) FROM heap_resolution").fetchone()
    res.samples = con.execute("SELECT identity, reason FROM heap_resolution WHERE user_id IS NULL "
                              "ORDER BY identity LIMIT ?", [SAMPLE_SIZE]).fetchall()
    trait = quote(audience.trait)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE {STAGED_TABLE} AS
        SELECT DISTINCT user_id, true AS {trait}, NULL::VARCHAR AS {UNSERIALISABLE_COLUMN}
        FROM heap_resolution WHERE user_id IS NOT NULL
    """)
    res.users = con.execute(f"SELECT count(*) FROM {STAGED_TABLE}").fetchone()[0]
    return StagedResult(STAGED_TABLE, res.users, ("user_id", audience.trait),
                        {"user_id": "VARCHAR", audience.trait: "BOOLEAN"}, 0.0, "heap membership")


def _drop_guard(con: duckdb.DuckDBPyConnection, config: AudiencesConfig, confirmed: bool) -> DropGuard:
    """A run that would exit more than `max_drop_ratio` of the delivered members (at least
    `drop_guard_min_exits`) - a broken identity map, a truncated export, a drain - changes nothing and raises
    `MembershipDropError` unless confirmed. An empty Heap Connect result while members are delivered is
    refused whatever the ratio (see `DropGuard.tripped`): likelier a failed Connect sync than an empty
    segment.
    """
    delivered, exits = con.execute(f"""
        SELECT count(*), count(*) FILTER (WHERE NOT EXISTS (SELECT 1 FROM {STAGED_TABLE} s
                                                            WHERE s.user_id = r.record_key))
        FROM {delivered_rows()} r
    """).fetchone()
    return DropGuard(delivered, exits, config.max_drop_ratio, config.drop_guard_min_exits, confirmed)


def _commit_membership(con: duckdb.DuckDBPyConnection, run: AudienceRun, run_id: str | None) -> None:
    """Replace the membership with the proposed one and record the applied syncs, in one transaction."""
    con.execute("BEGIN")
    try:
        con.execute("DELETE FROM heap_membership")
        con.execute("INSERT INTO heap_membership SELECT identity, member, as_of, source FROM heap_proposed")
        now = datetime.now(UTC)
        for sync in run.syncs:
            con.execute(
                """
                INSERT INTO heap_applied_syncs
                SELECT ?, ?, count(*) FILTER (WHERE member), count(*) FILTER (WHERE NOT member),
                       coalesce(min(as_of), ?), ?, ?
                FROM heap_changes WHERE source = ?
                """, [sync.sync_task_id, len(sync.pages), sync.first_received, run_id, now,
                      sync.sync_task_id])
        con.execute("""
            INSERT INTO heap_applied_drains
            SELECT d.drain_key, ?, d.as_of, ?,
                   (SELECT count(*) FROM heap_changes c WHERE c.source = 'drain:' || d.drain_key),
                   ?, ?
            FROM heap_run_drains d
        """, [run.audience.segment_id, run.drain_policy, run_id, now])
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def _reject_unresolved(con: duckdb.DuckDBPyConnection, ledger: Ledger, audience: Audience,
                       run_id: str | None) -> int:
    """Members that resolve to no userId go to the ledger's rejected table, once per identity and reason."""
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE heap_rejections AS
        SELECT h.identity AS record_key, {literal(f'heap segment {audience.segment_id}')} AS source, h.reason,
               to_json({{'identity': h.identity}})::VARCHAR AS record
        FROM heap_resolution h WHERE h.user_id IS NULL
    """)
    count = ledger.reject_relation(audience.sync, "heap_rejections", run_id=run_id, once_per_reason=True)
    con.execute("DROP TABLE heap_rejections")
    return count
