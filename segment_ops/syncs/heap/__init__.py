"""Heap cohorts -> Segment audiences.

- `webhook`, `inbox`, `receiver`, `server`: the signed segment-sync webhook receiver (`segment-ops webhooks`).
  They import neither DuckDB nor Dagster: the receiver runs as its own small ASGI process and never
  touches a staging file, so it cannot contend with Dagster runs for a lock.
- `audiences`: the audiences file, membership and the diff into identify + track calls.
- `defs`: the Dagster assets, checks, sensor and schedule.
"""
