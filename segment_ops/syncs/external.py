"""What lives at the vendors, as external assets, so lineage runs from every source to every destination."""

from __future__ import annotations

from collections.abc import Iterable

import dagster as dg

from segment_ops.config import DEMO_WAREHOUSE_TABLES
from segment_ops.syncs.shared import OWNER

HEAP_SEGMENTS = dg.AssetSpec(
    ["heap", "segments"],
    description="Heap segments (cohorts) switched to sync; Heap pushes their membership changes by signed "
                "webhook.",
    group_name="heap",
    kinds={"heap"},
    owners=[OWNER],
    metadata={"docs": dg.MetadataValue.url("https://help.heap.io/")},
)
PENDO_ACCOUNTS = dg.AssetSpec(
    ["pendo", "accounts"],
    description="Pendo accounts, visitors and their usage events, read through the Aggregation API.",
    group_name="pendo",
    kinds={"pendo"},
    owners=[OWNER],
    metadata={"docs": dg.MetadataValue.url("https://engageapi.pendo.io/")},
)
SEGMENT_WORKSPACE = dg.AssetSpec(
    ["segment", "workspace"],
    description="The Segment workspace whose audit trail (who changed what) the Public API exposes.",
    group_name="audit_trail",
    kinds={"segment"},
    owners=[OWNER],
    metadata={"docs": dg.MetadataValue.url("https://docs.segmentapis.com/tag/Audit-Trail")},
)
SIEM_INDEX = dg.AssetSpec(
    ["splunk", "audit_index"],
    deps=[["siem", "audit_events"]],
    description="The Splunk index (through the HTTP Event Collector) that receives the Segment audit trail.",
    group_name="audit_trail",
    kinds={"splunk"},
    owners=[OWNER],
    metadata={"docs": dg.MetadataValue.url(
        "https://docs.splunk.com/Documentation/Splunk/latest/Data/UsetheHTTPEventCollector")},
)

FULLSTORY_GROUP = "fullstory"
FULLSTORY_USERS_KEY = dg.AssetKey(["fullstory", "users"])  # declared by the reverse-ETL models sending there
FULLSTORY_STREAMS = dg.AssetSpec(
    ["fullstory", "streams"],
    description="Fullstory Streams (Anywhere: Activation) triggered on rage, dead and error clicks, posting "
                "each event to the receiver (`segment-ops webhooks`, `/webhooks/fullstory`) with a bearer "
                "token.",
    group_name=FULLSTORY_GROUP,
    kinds={"fullstory"},
    owners=[OWNER],
    metadata={"docs": dg.MetadataValue.url("https://developer.fullstory.com/destinations/webhooks/")},
)

# Tables of the (demo) warehouse that syncs read through WAREHOUSE_URL. A reverse-ETL model that names
# another table in its `depends_on:` header gets a spec for it from `warehouse_table_spec` as well.
WAREHOUSE_TABLES = DEMO_WAREHOUSE_TABLES
TRACKING_RESOURCE = "segment"  # resources.py key of the Segment Tracking API client


def warehouse_table_key(table: str) -> dg.AssetKey:
    """`schema.table` -> ["warehouse", "schema", "table"]."""
    return dg.AssetKey(["warehouse", *table.split(".")])


def warehouse_table_spec(table: str) -> dg.AssetSpec:
    return dg.AssetSpec(
        warehouse_table_key(table),
        description=f"Warehouse table `{table}`, read through WAREHOUSE_URL (any SQLAlchemy URL; the DuckDB "
                    "demo warehouse by default).",
        group_name="warehouse",
        kinds={"table"},
        owners=[OWNER],
    )


defs = dg.Definitions(assets=[HEAP_SEGMENTS, PENDO_ACCOUNTS, SEGMENT_WORKSPACE, SIEM_INDEX, FULLSTORY_STREAMS,
                              *(warehouse_table_spec(t) for t in WAREHOUSE_TABLES)])


def segment_destination(assets: Iterable[dg.AssetsDefinition | dg.AssetSpec]) -> dg.Definitions:
    """`segment/profiles`: the Segment workspace's profiles, groups and events, downstream of every asset
    that sends through the Tracking API (it requires the `segment` resource), so each sync's lineage ends
    at its destination."""
    senders = sorted({key for asset in assets if isinstance(asset, dg.AssetsDefinition)
                      and TRACKING_RESOURCE in asset.required_resource_keys for key in asset.keys},
                     key=lambda key: key.to_user_string())
    return dg.Definitions(assets=[dg.AssetSpec(
        ["segment", "profiles"],
        deps=senders,
        description="Profiles, groups and events in the Segment workspace, written through the Tracking API "
                    "(identify, track and group calls, each change once by its deterministic messageId).",
        group_name="destinations",
        kinds={"segment"},
        owners=[OWNER],
        metadata={"docs": dg.MetadataValue.url(
            "https://segment.com/docs/connections/sources/catalog/libraries/server/http-api/")},
    )])
