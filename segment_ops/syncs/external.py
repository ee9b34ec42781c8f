"""What lives at the vendors, as external assets, so lineage runs from every source to every destination."""

from __future__ import annotations

import dagster as dg

from segment_ops.config import DEMO_WAREHOUSE_TABLES
from segment_ops.syncs import OWNER

HEAP_SEGMENTS = dg.AssetSpec(
    ["heap", "segments"],
    description="Heap segments (cohorts) switched to sync; Heap pushes their membership changes by signed webhook.",
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

# Tables of the (demo) warehouse that syncs read through WAREHOUSE_URL. A reverse-ETL model that names
# another table in its `depends_on:` header gets a spec for it from `warehouse_table_spec` as well.
WAREHOUSE_TABLES = DEMO_WAREHOUSE_TABLES


def warehouse_table_key(table: str) -> dg.AssetKey:
    """`schema.table` -> ["warehouse", "schema", "table"]."""
    return dg.AssetKey(["warehouse", *table.split(".")])


def warehouse_table_spec(table: str) -> dg.AssetSpec:
    return dg.AssetSpec(
        warehouse_table_key(table),
        description=f"Warehouse table `{table}`, read through WAREHOUSE_URL (any SQLAlchemy URL; the DuckDB demo "
                    "warehouse by default).",
        group_name="warehouse",
        kinds={"table"},
        owners=[OWNER],
    )


defs = dg.Definitions(assets=[HEAP_SEGMENTS, PENDO_ACCOUNTS, SEGMENT_WORKSPACE, SIEM_INDEX,
                              *(warehouse_table_spec(t) for t in WAREHOUSE_TABLES)])
