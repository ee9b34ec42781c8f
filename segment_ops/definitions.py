"""The code location: one `Definitions`, gathered from the sync modules, with the resources bound."""

from __future__ import annotations

import dagster as dg

from segment_ops import sensors
from segment_ops.resources import build_resources
from segment_ops.syncs import audit_trail, delivery_health, external, heap, pendo, replay, reverse_etl


@dg.definitions
def defs() -> dg.Definitions:
    syncs = dg.Definitions.merge(
        external.defs,
        replay.defs,
        reverse_etl.build_reverse_etl_defs(),
        audit_trail.defs,
        heap.build_heap_defs(),
        pendo.defs,
        delivery_health.defs,
        sensors.defs,
    )
    return dg.Definitions.merge(syncs, external.segment_destination(syncs.assets or []),
                                dg.Definitions(resources=build_resources()))
