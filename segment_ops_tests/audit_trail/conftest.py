"""Fixtures of the audit-trail tests: the code location's resources on the sandbox, and helpers to read it."""

from __future__ import annotations

from datetime import datetime, timedelta

import dagster as dg
import pytest

from segment_ops.clients import SegmentPublicApiClient
from segment_ops.config import (
    SANDBOX_SEGMENT_PUBLIC_API_TOKEN,
    SANDBOX_SPLUNK_HEC_TOKEN,
    SANDBOX_SPLUNK_INDEX,
)
from segment_ops.resources import SplunkHecResource, build_resources
from segment_ops.sandbox.server import RunningSandbox
from segment_ops.syncs.audit_trail.defs import (  # noqa: F401 - complete_hours is shared with the tests
    PARTITIONS,
    audit_events_sensor,
    complete_hours,
    segment_audit_events,
    siem_audit_events,
)

FORWARD_NODE = "siem__audit_events"
PULL_NODE = "segment__audit_events"


def splunk_resource(sandbox: RunningSandbox, **options: object) -> SplunkHecResource:
    """HEC on `sandbox` with short retries, so an outage fails a run in about a second; with ack on, a run
    polls acks for up to 5 s after sending."""
    fields = {"index": SANDBOX_SPLUNK_INDEX, "retry_max_attempts": 2, "retry_max_seconds": 5.0,
              "ack_timeout_seconds": 5.0, "ack_settle_seconds": 5.0} | options
    return SplunkHecResource(base_url=f"{sandbox.url}/splunk", token=SANDBOX_SPLUNK_HEC_TOKEN, **fields)


@pytest.fixture
def resources(ops_env, clean_sandbox) -> dict:
    return build_resources() | {"splunk": splunk_resource(clean_sandbox)}


@pytest.fixture
def instance():
    return dg.DagsterInstance.ephemeral()


def run_hour(resources: dict, key: str, instance: dg.DagsterInstance | None = None,
             **kwargs: object) -> dg.ExecuteInProcessResult:
    return dg.materialize([segment_audit_events, siem_audit_events], partition_key=key, resources=resources,
                          instance=instance, raise_on_error=False, **kwargs)


def tick(instance: dg.DagsterInstance, resources: dict, cursor: str | None) -> dg.SensorResult:
    """One evaluation of the audit-events sensor on `resources`, from `cursor`."""
    context = dg.build_sensor_context(instance=instance, cursor=cursor,
                                      resources={"segment_public_api": resources["segment_public_api"],
                                                 "staging": resources["staging"]})
    return audit_events_sensor(context)


def metadata(result: dg.ExecuteInProcessResult, node: str = FORWARD_NODE) -> dict:
    [materialization] = result.asset_materializations_for_node(node)
    return {key: value.value for key, value in materialization.metadata.items()}


def checks(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {evaluation.check_name: evaluation for evaluation in result.get_asset_check_evaluations()}


def received_events(sandbox: RunningSandbox) -> list[dict]:
    """What the sandbox's Splunk indexed, in order (HEC event plus its metadata)."""
    return sandbox.received("splunk", limit=100_000)


def received_ids(sandbox: RunningSandbox) -> list[str]:
    return [item["event"]["id"] for item in received_events(sandbox)]


def audit_ids(sandbox: RunningSandbox, start: datetime, end: datetime) -> list[str]:
    """Every audit event id the Public API has with start < timestamp <= end."""
    client = SegmentPublicApiClient(f"{sandbox.url}/segmentapis", SANDBOX_SEGMENT_PUBLIC_API_TOKEN)
    try:
        return [e["id"] for e in client.iter_audit_events(start, end)]
    finally:
        client.close()


def inject_events(sandbox: RunningSandbox, key: str, count: int) -> list[str]:
    """Add `count` audit events inside hour `key`, so a test does not depend on the demo's quiet hours."""
    start = PARTITIONS.time_window_for_partition_key(key).start
    moments = [start + timedelta(minutes=1 + i % 58, seconds=i // 58) for i in range(count)]
    events = sandbox.inject_audit_events([{"timestamp": m.isoformat().replace("+00:00", "Z")}
                                          for m in moments])
    return [event["id"] for event in events]


def window_of(first_key: str, last_key: str) -> tuple[datetime, datetime]:
    return (PARTITIONS.time_window_for_partition_key(first_key).start,
            PARTITIONS.time_window_for_partition_key(last_key).end)
