"""The delivery engine: plan, build, deliver, record. Pure Python + DuckDB, no Dagster imports."""
