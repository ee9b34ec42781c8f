"""Read-back verification: did what a destination accepted land? (ARCHITECTURE rule 3, issue 15.)

A destination may answer 200 and drop the data (Segment under a wrong write key or on the other region's
host, spec §7). `verify_sample` reads a sample of delivered identify calls back through a `ProfileReader`
(Segment's Profile API, through its client) and compares each profile's traits with the traits sent, the
payload kept in the ledger. A matched message becomes verified in the ledger; every message read back is
recorded, so it is never drawn again. A missing profile is the strong signal; a differing trait may have
been overwritten by another source, so it is reported, not failed. No Dagster, no vendor client.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import orjson

from segment_ops.engine.ledger import MATCHED, MISMATCHED, MISSING, Ledger, ReadBack, ReadBackSample

# How many mismatches and missing profiles a report lists (the counts cover all).
LISTED = 10
_ABSENT = object()  # a trait the profile does not have


class ProfileReader(Protocol):
    """Reads a profile's traits from the destination; None when it has no such profile."""

    def get_traits(self, external_id: str, *, include: Sequence[str] = ()) -> Mapping[str, Any] | None:
        """`external_id` is `<id type>:<id>` (`user_id:u1`); `include` limits the traits to those keys."""
        ...


@dataclass(frozen=True)
class TraitMismatch:
    record_key: str | None
    profile: str  # the external id read, e.g. user_id:u1
    trait: str
    sent: Any
    found: Any  # None when the profile lacks the trait


@dataclass
class ReadBackReport:
    """What one read-back of a sync found; `mismatches` and `missing_profiles` list the first `LISTED`."""

    sync: str
    sample_size: int = 0  # messages read back
    profiles_found: int = 0
    profiles_missing: int = 0
    traits_compared: int = 0
    traits_matching: int = 0
    verified: int = 0  # messages whose every trait was found as sent (now verified in the ledger)
    mismatched: int = 0  # messages found with at least one trait differing
    runs_sampled: int = 0
    runs_waiting: int = 0  # runs with messages due for read-back that a later evaluation samples
    too_recent: int = 0  # delivered less than the delay ago: read back by a later evaluation
    delay_seconds: float = 0.0
    seconds: float = 0.0
    mismatches: list[TraitMismatch] = field(default_factory=list)
    missing_profiles: list[tuple[str | None, str]] = field(default_factory=list)  # (record key, profile)

    @property
    def missing_share(self) -> float:
        """Share of the sample whose profile was not found (0 for an empty sample)."""
        return self.profiles_missing / self.sample_size if self.sample_size else 0.0


def verify_sample(ledger: Ledger, sync: str, reader: ProfileReader, *, sample_size: int, delay: timedelta,
                  now: datetime | None = None, call_type: str = "identify") -> ReadBackReport:
    """Read back up to `sample_size` of `sync`'s identify calls delivered at least `delay` ago (the oldest
    unsampled run's first: `Ledger.read_back_sample`), compare, and record what was found.

    Reader errors propagate (e.g. the client's `VendorAuthError`) and nothing of the sample is recorded,
    so a later evaluation draws the same messages again.
    """
    started = time.monotonic()
    sample = draw_sample(ledger, sync, sample_size=sample_size, delay=delay, now=now, call_type=call_type)
    report, results = read_back(sync, sample, reader, delay=delay)
    ledger.record_read_backs(sync, results)
    report.seconds = time.monotonic() - started
    return report


def draw_sample(ledger: Ledger, sync: str, *, sample_size: int, delay: timedelta, now: datetime | None = None,
                call_type: str = "identify") -> ReadBackSample:
    """The messages `verify_sample` reads back (a caller that must not hold the ledger open while it reads
    the destination uses this, `read_back` and `Ledger.record_read_backs` in turn)."""
    before = (now or datetime.now(UTC)) - delay
    return ledger.read_back_sample(sync, delivered_before=before, per_run=sample_size, call_type=call_type)


def read_back(sync: str, sample: ReadBackSample, reader: ProfileReader, *,
              delay: timedelta = timedelta(0)) -> tuple[ReadBackReport, list[ReadBack]]:
    """Read each message of `sample` back and compare: the report, and what to record in the ledger."""
    started = time.monotonic()
    report = ReadBackReport(sync, runs_sampled=sample.runs, runs_waiting=sample.runs_waiting,
                            too_recent=sample.too_recent, delay_seconds=delay.total_seconds())
    results = [_read_back(message.seq, message.record_key, message.payload, reader, report)
               for message in sample.messages]
    report.seconds = time.monotonic() - started
    return report, results


def profile_id(call: Mapping[str, Any]) -> str | None:
    """The Profile API's external id of a call: `user_id:<userId>`, else `anonymous_id:<anonymousId>`."""
    if call.get("userId"):
        return f"user_id:{call['userId']}"
    if call.get("anonymousId"):
        return f"anonymous_id:{call['anonymousId']}"
    return None


def same_value(sent: Any, found: Any) -> bool:
    """Whether a trait sent reads back unchanged: JSON equality, where a number equals the same number of
    the other type (1 and 1.0), true is not 1, and a trait sent as null matches one the profile lacks."""
    if sent is None:
        return found is None or found is _ABSENT
    if found is _ABSENT:
        return False
    if isinstance(sent, bool) or isinstance(found, bool):
        return type(sent) is type(found) and sent == found
    if isinstance(sent, int | float) and isinstance(found, int | float):
        return sent == found
    if isinstance(sent, Mapping) and isinstance(found, Mapping):
        return (all(same_value(sent[k], found.get(k, _ABSENT)) for k in sent)
                and all(k in sent or found[k] is None for k in found))
    if isinstance(sent, list) and isinstance(found, list):
        return len(sent) == len(found) and all(same_value(a, b) for a, b in zip(sent, found, strict=True))
    return type(sent) is type(found) and sent == found


def _read_back(seq: int, record_key: str | None, payload: str, reader: ProfileReader,
               report: ReadBackReport) -> ReadBack:
    call = orjson.loads(payload)
    external_id = profile_id(call)
    traits = call.get("traits") or {}
    report.sample_size += 1
    found = reader.get_traits(external_id, include=sorted(traits)) if external_id else None
    if found is None:
        report.profiles_missing += 1
        if len(report.missing_profiles) < LISTED:
            report.missing_profiles.append((record_key, external_id or "(no userId or anonymousId)"))
        return ReadBack(seq, MISSING, external_id)
    report.profiles_found += 1
    differing = []
    for trait, sent in traits.items():
        value = found.get(trait, _ABSENT)
        report.traits_compared += 1
        if same_value(sent, value):
            report.traits_matching += 1
            continue
        value = None if value is _ABSENT else value
        differing.append({"trait": trait, "sent": sent, "found": value})
        if len(report.mismatches) < LISTED:
            report.mismatches.append(TraitMismatch(record_key, external_id, trait, sent, value))
    if differing:
        report.mismatched += 1
        return ReadBack(seq, MISMATCHED, orjson.dumps({"profile": external_id, "traits": differing}).decode())
    report.verified += 1
    return ReadBack(seq, MATCHED)
