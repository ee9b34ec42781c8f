"""Alert messages for a Slack-compatible incoming webhook: a run failed or recovered, a sync's deliveries
turned unhealthy or healthy again, Segment failed to deliver to destinations, something a vendor pushed is
held, a regulation failed, calls broke the tracking plan. Shared by every sync's sensors and checks.

Every message has a plain `text` and Block Kit `blocks`, names the sync, the step and its counts, and links
the run in the Dagster UI. Every text placed in a message passes `redact_secrets` (a second guard behind
`clients.base.HttpClient`'s scrubbing). No Dagster imports.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from segment_ops.config import SECRET_NAMES, load_settings

# Slack cuts a section's text at 3,000 characters; an error's first line rarely needs more than this.
MAX_ERROR_CHARS = 500
MAX_COUNTS = 10


@dataclass(frozen=True)
class RunFailure:
    """What a person needs to know about one failed run."""

    run_id: str
    run_url: str
    job_name: str
    groups: Sequence[str] = ()
    partition: str | None = None
    step: str | None = None
    error: str = "the run failed"
    counts: Mapping[str, int | float] = field(default_factory=dict)


@dataclass(frozen=True)
class RunRecovery:
    """A run succeeded whose previous finished run of the same work failed."""

    run_id: str
    run_url: str
    job_name: str
    failed_run_id: str
    failed_run_url: str
    groups: Sequence[str] = ()
    partition: str | None = None


@dataclass(frozen=True)
class DeliveryHealthChange:
    """A sync's delivery health crossed the threshold (either way)."""

    sync: str
    healthy: bool
    share: float
    threshold: float
    window_hours: float
    delivered: int
    rejected: int
    failed: int
    run_url: str | None = None


def failure_message(failure: RunFailure) -> dict:
    """`{"text", "blocks"}` for a failed run.

    Every piece of run, vendor or user text is escaped (and redacted) on its own before the message is
    composed, and our own `<url|label>` links are added last, so an error text that contains `<!channel>`
    or `<http://...|...>` reaches Slack as plain characters, never as a mention or a link.
    """
    where = _where(failure.job_name, failure.groups, failure.partition)
    error = _first_line(failure.error)
    step = f" at step `{_safe(failure.step)}`" if failure.step else ""
    counts = _counts_text(failure.counts)
    text = (f":red_circle: segment_ops: {where} failed{step}: {_safe(error)}"
            + (f" ({_safe(counts)})" if counts else "") + " "
            + _own_link(failure.run_url, f"Open run {failure.run_id[:8]}"))
    fields = [("Sync", f"`{_safe(failure.job_name)}`"),
              ("Asset group", _safe(", ".join(failure.groups)) or "-")]
    if failure.partition:
        fields.append(("Partition", f"`{_safe(failure.partition)}`"))
    if failure.step:
        fields.append(("Failed step", f"`{_safe(failure.step)}`"))
    blocks: list[dict] = [
        _header(f"Run failed: {redact_secrets(failure.job_name)}"),
        {"type": "section", "fields": [_mrkdwn(f"*{k}*\n{v}") for k, v in fields]},
        {"type": "section", "text": _mrkdwn(f"*Error*\n```{_safe(error)}```")},
    ]
    if counts:
        blocks.append({"type": "context", "elements": [_mrkdwn(_safe(counts))]})
    blocks.append(_link(failure.run_url, f"Open run {failure.run_id[:8]} in Dagster"))
    return {"text": text, "blocks": blocks}


def recovery_message(recovery: RunRecovery) -> dict:
    """`{"text", "blocks"}` for a run that passed after the same work had failed (pieces escaped, links
    last)."""
    where = _where(recovery.job_name, recovery.groups, recovery.partition)
    text = (f":large_green_circle: segment_ops: {where} recovered: run {_safe(recovery.run_id[:8])} "
            f"succeeded after run {_safe(recovery.failed_run_id[:8])} failed. "
            + _own_link(recovery.run_url, f"Open run {recovery.run_id[:8]}"))
    blocks = [
        _header(f"Recovered: {redact_secrets(recovery.job_name)}"),
        {"type": "section", "text": _mrkdwn(
            f"`{_safe(recovery.job_name)}`" + (f" (partition `{_safe(recovery.partition)}`)"
                                                if recovery.partition else "")
            + " succeeded after " + _own_link(recovery.failed_run_url, f"run {recovery.failed_run_id[:8]}")
            + " failed.")},
        _link(recovery.run_url, f"Open run {recovery.run_id[:8]} in Dagster"),
    ]
    return {"text": text, "blocks": blocks}


def delivery_health_message(change: DeliveryHealthChange) -> dict:
    """`{"text", "blocks"}` for a sync that became unhealthy, or healthy again (pieces escaped, links
    last)."""
    total = change.delivered + change.rejected + change.failed
    figures = _safe(f"{change.share:.1%} rejected or failed in the last {change.window_hours:g} h "
                    f"(delivered {change.delivered:,}, rejected {change.rejected:,}, "
                    f"failed {change.failed:,} of {total:,}; threshold {change.threshold:.1%})")
    sync = _safe(change.sync)
    if change.healthy:
        text = f":white_check_mark: segment_ops delivery health: sync `{sync}` is healthy again: {figures}."
        title = f"Deliveries healthy again: {redact_secrets(change.sync)}"
    else:
        text = f":warning: segment_ops delivery health: sync `{sync}` is unhealthy: {figures}."
        title = f"Deliveries unhealthy: {redact_secrets(change.sync)}"
    blocks: list[dict] = [_header(title), {"type": "section", "text": _mrkdwn(figures)}]
    if change.run_url:
        text += " " + _own_link(change.run_url, "Open check run")
        blocks.append(_link(change.run_url, "Open the check's run in Dagster"))
    return {"text": text, "blocks": blocks}


class EgressFigures(Protocol):
    """One destination's Delivery Overview figures for an hour (`syncs.ops.delivery_overview`)."""

    @property
    def name(self) -> str: ...
    @property
    def destination_id(self) -> str: ...
    @property
    def delivered(self) -> int: ...
    @property
    def failed(self) -> int: ...
    @property
    def discards(self) -> Mapping[str, int]: ...
    @property
    def failed_share(self) -> float: ...


def egress_failure_message(hour: str, flagged: Sequence[EgressFigures], max_share: float,
                           run_url: str | None = None) -> dict:
    """`{"text", "blocks"}` naming each destination Segment failed to deliver to in `hour`, its failed share
    and discard reasons with counts (pieces escaped, links last)."""
    lines = [f"*{_safe(d.name)}* (`{_safe(d.destination_id)}`): {d.failed:,} of {d.failed + d.delivered:,} "
             f"events failed ({d.failed_share:.1%}): {_safe(reasons_text(d.discards))}" for d in flagged]
    text = (f":warning: segment_ops: Segment failed to deliver to {len(flagged)} destination(s) in hour "
            f"{_safe(hour)} (threshold {max_share:.1%}): " + "; ".join(lines))
    blocks: list[dict] = [_header(f"Segment egress failures, {redact_secrets(hour)}"),
                          {"type": "section", "text": _mrkdwn("\n".join(lines))}]
    if run_url:
        text += " " + _own_link(run_url, "Open the check's run in Dagster")
        blocks.append(_link(run_url, "Open the check's run in Dagster"))
    return {"text": text, "blocks": blocks}


def governance_message(title: str, lines: Sequence[str], run_url: str | None = None) -> dict:
    """`{"text", "blocks"}` of a governance alert (a regulation Segment failed or refused, tracking-plan
    violations): one line per finding, each escaped; never a subject's id or a trait's value."""
    safe = [_safe(line) for line in lines[:MAX_COUNTS]]
    if len(lines) > MAX_COUNTS:
        safe.append(f"... and {len(lines) - MAX_COUNTS:,} more")
    text = f":warning: segment_ops: {_safe(title)}: " + "; ".join(safe)
    blocks: list[dict] = [_header(redact_secrets(title)),
                          {"type": "section", "text": _mrkdwn("\n".join(safe))}]
    if run_url:
        text += " " + _own_link(run_url, "Open the run in Dagster")
        blocks.append(_link(run_url, "Open the run in Dagster"))
    return {"text": text, "blocks": blocks}


def reasons_text(reasons: Mapping[str, int]) -> str:
    """"reason count, ..." with the most frequent first; "-" for none."""
    return ", ".join(f"{reason} {n:,}" for reason, n in sorted(reasons.items(), key=lambda r: -r[1])) or "-"


@dataclass(frozen=True)
class StaleSync:
    """Something pushed by a vendor that is held, never applied, until a person acts: a sync whose pages
    stopped arriving (`kind` "sync"), or a drain held for confirmation (`kind` "drain")."""

    source: str  # the vendor, e.g. "Heap"
    sync_task_id: str  # the sync's id, or the drain's inbox key
    target: str  # what it would have updated, e.g. the audience
    problem: str  # what is missing and what happens now
    folder: str  # where its pages are
    target_url: str | None = None
    kind: str = "sync"


def stale_sync_message(stale: StaleSync) -> dict:
    """`{"text", "blocks"}` for a pushed sync that stayed incomplete, or a drain held for confirmation (posted
    once per item; pieces escaped, links last)."""
    source, task, target, problem = (_safe(stale.source), _safe(stale.sync_task_id), _safe(stale.target),
                                     _safe(stale.problem))
    if stale.kind == "drain":
        text = f":raised_hand: segment_ops: {source} drain `{task}` for `{target}` is held: {problem}"
        heading, label = f"{redact_secrets(stale.source)} drain held: {redact_secrets(stale.target)}", "Drain"
    else:
        text = f":hourglass: segment_ops: {source} sync `{task}` for `{target}` is incomplete: {problem}"
        heading, label = (f"{redact_secrets(stale.source)} sync incomplete: {redact_secrets(stale.target)}",
                          "Sync")
    blocks: list[dict] = [
        _header(heading),
        {"type": "section", "fields": [_mrkdwn(f"*{label}*\n`{task}`"),
                                       _mrkdwn(f"*Stored in*\n`{_safe(stale.folder)}`")]},
        {"type": "section", "text": _mrkdwn(problem)},
    ]
    if stale.target_url:
        text += " " + _own_link(stale.target_url, f"Open {stale.target}")
        blocks.append(_link(stale.target_url, f"Open {stale.target} in Dagster"))
    return {"text": text, "blocks": blocks}


def redact_secrets(text: str, secrets: Iterable[str] | None = None) -> str:
    """`text` with the value of every secret setting replaced by `***`."""
    for secret in secrets if secrets is not None else secret_values():
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def secret_values() -> list[str]:
    """The values of every secret setting now set, longest first (so a secret inside another is redacted
    after it): what `redact_secrets` removes by default."""
    settings = load_settings(os.environ)
    return sorted({settings[name] for name in SECRET_NAMES if settings[name]}, key=len, reverse=True)


def _where(job: str, groups: Sequence[str], partition: str | None) -> str:
    """"`job` (groups) partition `p`", every piece escaped."""
    where = f"`{_safe(job)}`" + (f" ({_safe(', '.join(groups))})" if groups else "")
    return where + (f" partition `{_safe(partition)}`" if partition else "")


def _safe(text: str) -> str:
    """One piece of run, user or vendor text, redacted and escaped, ready to be placed in a message."""
    return _escape(redact_secrets(text))


def _own_link(url: str, label: str) -> str:
    """One of our own links (a Dagster UI URL), added after the escaped pieces: `<url|label>`."""
    return f"<{url.replace('>', '%3E').replace('|', '%7C')}|{_safe(label)}>"


def _first_line(error: str) -> str:
    line = next((part.strip() for part in redact_secrets(error).splitlines() if part.strip()),
                "the run failed")
    return line if len(line) <= MAX_ERROR_CHARS else line[:MAX_ERROR_CHARS] + "…"


def _counts_text(counts: Mapping[str, int | float]) -> str:
    return ", ".join(f"{key} {value:,}" for key, value in list(counts.items())[:MAX_COUNTS])


def _header(text: str) -> dict:
    return {"type": "header", "text": {"type": "plain_text", "text": text[:150]}}


def _mrkdwn(text: str) -> dict:
    return {"type": "mrkdwn", "text": text[:3000]}


def _link(url: str, label: str) -> dict:
    return {"type": "section", "text": _mrkdwn(_own_link(url, label))}


def _escape(text: str) -> str:
    """Slack mrkdwn control characters (&, <, >) in user text must be escaped."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
