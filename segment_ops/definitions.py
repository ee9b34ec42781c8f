"""The code location: one `Definitions`, gathered from the sync modules, with the resources bound."""

from __future__ import annotations

import dagster as dg

from segment_ops.resources import build_resources
from segment_ops.syncs import external
from segment_ops.syncs.audit_trail import defs as audit_trail
from segment_ops.syncs.fullstory import defs as fullstory
from segment_ops.syncs.heap import defs as heap
from segment_ops.syncs.ops import delivery_health, delivery_overview, preflight, run_watch
from segment_ops.syncs.ops import run_alerts as sensors
from segment_ops.syncs.pendo import defs as pendo
from segment_ops.syncs.regulations import defs as regulations
from segment_ops.syncs.replay import defs as replay
from segment_ops.syncs.reverse_etl import defs as reverse_etl


@dg.definitions
def defs() -> dg.Definitions:
    syncs = dg.Definitions.merge(
        external.defs,
        replay.defs,
        reverse_etl.build_reverse_etl_defs(),
        audit_trail.defs,
        heap.build_heap_defs(),
        pendo.defs,
        fullstory.defs,
        regulations.defs,
        delivery_health.defs,
        delivery_overview.defs,
        preflight.defs,
        run_watch.defs,
        sensors.defs,
    )
    return sensors.with_failure_alerts(dg.Definitions.merge(
        syncs, external.segment_destination(syncs.assets or []), dg.Definitions(resources=build_resources())))
