"""Preflight: check what can be checked before anything is sent, with no vendor in it.

A `Check` verifies one thing (a credential, a setting, an endpoint) and answers a `CheckResult`; the
vendor checks themselves live in `segment_ops.preflight`. Here: running checks (a check that raises is a
failure of the check, not of the credential), the table they print, the cache that lets the gate in front
of every send reuse a recent answer instead of asking the vendors on every run, and the gate's rule:
only a *definitive* failure (auth or configuration) refuses a send; a transient one never does.
"""

from __future__ import annotations

import hashlib
import json
import os
import textwrap
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from pathlib import Path


class Status(StrEnum):
    PASS = "pass"
    WARN = "warn"  # works, but something is unverified or risky; never fails `check` or refuses a send
    FAIL = "fail"
    SKIP = "skip"  # not configured, or it depends on something that failed


@dataclass(frozen=True)
class CheckResult:
    """One check's answer. `settings` are the names of the environment variables involved, never values."""

    check: str
    settings: tuple[str, ...]
    status: Status
    detail: str  # what was found
    todo: str = ""  # what to do about it
    definitive: bool = False  # a failure of auth or configuration (True), or transient (False)
    # A warning an outage caused ("cannot be verified now"): like a transient failure, asked again next time.
    transient: bool = False
    checked_at: float = field(default_factory=time.time)

    @property
    def blocks_sending(self) -> bool:
        return self.status is Status.FAIL and self.definitive

    @property
    def cacheable(self) -> bool:
        """Whether the answer may be reused: neither a transient failure nor a warning an outage caused."""
        return not self.transient and not (self.status is Status.FAIL and not self.definitive)

    def redacted(self, secrets: Iterable[str]) -> CheckResult:
        """This result with every secret value in its texts replaced by `***` (a second guard behind the
        clients' own scrubbing)."""
        detail, todo = self.detail, self.todo
        for secret in sorted((s for s in secrets if s and len(s) >= 4), key=len, reverse=True):
            detail, todo = detail.replace(secret, "***"), todo.replace(secret, "***")
        return replace(self, detail=detail, todo=todo)

    def to_dict(self) -> dict:
        return asdict(self) | {"status": self.status.value, "settings": list(self.settings)}

    @classmethod
    def from_dict(cls, data: Mapping) -> CheckResult:
        return cls(check=data["check"], settings=tuple(data["settings"]), status=Status(data["status"]),
                   detail=data["detail"], todo=data.get("todo", ""), definitive=bool(data.get("definitive")),
                   transient=bool(data.get("transient")), checked_at=float(data["checked_at"]))


@dataclass(frozen=True)
class Check:
    """A named check over `settings`; `fingerprint` stands for their values, so a cached answer is only
    reused while the configuration it was given is the same."""

    name: str
    settings: tuple[str, ...]
    run: Callable[[], CheckResult]
    fingerprint: str = ""
    # Where its answer is cached, when not under `name`: checks of different names that ask the same thing
    # (a destination's check in `segment-ops check` and in a model's gate) share one answer.
    cache_key: str = ""

    @property
    def cache_name(self) -> str:
        return self.cache_key or self.name


class PreflightRefused(RuntimeError):
    """A send must not start: a check failed for a reason retrying will not fix (auth, configuration)."""

    def __init__(self, refused: Sequence[CheckResult], results: Sequence[CheckResult]) -> None:
        self.refused = tuple(refused)
        self.results = tuple(results)
        reasons = "; ".join(f"{r.check} ({', '.join(r.settings)}): {r.detail}"
                            + (f" -- {r.todo}" if r.todo else "") for r in refused)
        super().__init__(f"preflight refused to send: {reasons}")


def fingerprint(values: Mapping[str, str]) -> str:
    """A short digest of setting values (names and values), to key cached answers; never the values."""
    digest = hashlib.sha256()
    for name in sorted(values):
        digest.update(f"{name}\0{values[name]}\0".encode())
    return digest.hexdigest()[:16]


class PreflightCache:
    """Recent answers in one JSON file, per check and fingerprint. Several processes may write it: each write
    merges with what is there and replaces the file atomically; a lost race only costs a re-check."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def get(self, check: Check, max_age: float, now: float | None = None) -> CheckResult | None:
        entry = self._load().get(check.cache_name)
        if not entry or entry.get("fingerprint") != check.fingerprint:
            return None
        try:
            result = CheckResult.from_dict(entry["result"])
        except (KeyError, TypeError, ValueError):
            return None
        age = (now if now is not None else time.time()) - result.checked_at
        return result if 0 <= age <= max_age else None

    def put(self, entries: Iterable[tuple[Check, CheckResult]]) -> None:
        stored = self._load()
        for check, result in entries:
            stored[check.cache_name] = {"fingerprint": check.fingerprint, "result": result.to_dict()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(stored, indent=1, sort_keys=True))
        os.replace(tmp, self.path)

    def _load(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}


def run_checks(checks: Sequence[Check], *, cache: PreflightCache | None = None, max_age: float = 0.0,
               secrets: Iterable[str] = ()) -> list[CheckResult]:
    """Every check's result, in order: from `cache` when a result for the same configuration is at most
    `max_age` seconds old, else by running it. Fresh results go back to the cache, except transient
    failures and warnings (`CheckResult.cacheable`), which the next caller asks again. A check that raises is
    a non-definitive failure."""
    secrets = tuple(secrets)
    results: list[CheckResult] = []
    fresh: list[tuple[Check, CheckResult]] = []
    for check in checks:
        cached = cache.get(check, max_age) if cache is not None and max_age > 0 else None
        if cached is not None:
            results.append(cached)
            continue
        try:
            result = check.run()
        except Exception as exc:  # noqa: BLE001 - a broken check must not hide the others
            result = CheckResult(check.name, check.settings, Status.FAIL,
                                 f"the check itself failed: {type(exc).__name__}: {exc}",
                                 "run `segment-ops -v check` and report it with the output")
        result = result.redacted(secrets)
        results.append(result)
        if result.cacheable:
            fresh.append((check, result))
    if cache is not None and fresh:
        cache.put(fresh)
    return results


def gate(checks: Sequence[Check], *, cache: PreflightCache | None, max_age: float,
         secrets: Iterable[str] = ()) -> list[CheckResult]:
    """Run (or reuse) `checks`; raise `PreflightRefused` when one failed definitively."""
    results = run_checks(checks, cache=cache, max_age=max_age, secrets=secrets)
    refused = [r for r in results if r.blocks_sending]
    if refused:
        raise PreflightRefused(refused, results)
    return results


def failed(results: Iterable[CheckResult]) -> bool:
    """Whether `segment-ops check` exits non-zero: some check failed (warnings and skips do not count)."""
    return any(r.status is Status.FAIL for r in results)


def describe(result: CheckResult) -> str:
    """The table's "result" cell: the status, whether a failure is definitive, and what was found."""
    label = result.status.value.upper()
    if result.status is Status.FAIL:
        label += " (auth/config)" if result.definitive else " (transient)"
    return f"{label}: {result.detail}"


COLUMNS = (("check", 19), ("setting(s)", 31), ("result", 42), ("what to do", 40))


def render_table(results: Sequence[CheckResult]) -> str:
    """The results as a plain-text table with wrapped cells, one row per check."""
    widths = [width for _, width in COLUMNS]
    lines = [_row([name for name, _ in COLUMNS], widths), _row(["-" * w for w in widths], widths)]
    for result in results:
        cells = [result.check, ", ".join(result.settings), describe(result), result.todo or "-"]
        # A setting's name is never cut in two; it is at most as long as its column.
        wrapped = [textwrap.wrap(cell, width, break_on_hyphens=False, break_long_words=column != 1) or [""]
                   for column, (cell, width) in enumerate(zip(cells, widths, strict=True))]
        for line in range(max(len(w) for w in wrapped)):
            lines.append(_row([w[line] if line < len(w) else "" for w in wrapped], widths))
    return "\n".join(lines)


def _row(cells: Sequence[str], widths: Sequence[int]) -> str:
    return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()
