"""Receivers of vendor webhooks. Today: Heap's `segment.users.sync` (spec §3), written to a file inbox.

Nothing here imports DuckDB or Dagster: the receiver runs as its own small ASGI process and never
touches a staging file, so it cannot contend with Dagster runs for a lock.
"""
