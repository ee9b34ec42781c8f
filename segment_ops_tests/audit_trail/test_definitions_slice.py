"""The audit-trail module's `defs` merge into the code location and load (before definitions.py lists
them)."""

from __future__ import annotations

import dagster as dg

from segment_ops.resources import build_resources
from segment_ops.syncs import external
from segment_ops.syncs.audit_trail import defs as audit_trail
from segment_ops.syncs.replay import defs as replay


def test_the_code_location_with_the_audit_trail_loads_and_says_what_each_asset_is():
    definitions = dg.Definitions.merge(external.defs, replay.defs, audit_trail.defs,
                                       dg.Definitions(resources=build_resources()))
    dg.Definitions.validate_loadable(definitions)
    specs = {spec.key: spec for spec in definitions.resolve_all_asset_specs()}
    for key in (audit_trail.PULL_KEY, audit_trail.FORWARD_KEY):
        spec = specs[key]
        assert spec.group_name == "audit_trail" and spec.kinds and spec.owners and len(spec.description) > 30
        assert spec.partitions_def == audit_trail.PARTITIONS
    assert (audit_trail.segment_audit_events.op.pool == audit_trail.siem_audit_events.op.pool
            == audit_trail.POOL)
    assert definitions.resolve_job_def("audit_trail_job").partitions_def == audit_trail.PARTITIONS
    assert definitions.resolve_sensor_def("audit_events_sensor").job_name == "audit_trail_job"
