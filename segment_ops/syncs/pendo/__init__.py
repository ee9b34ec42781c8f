"""Pendo account health: usage extract by day (`extract`), the documented score (`score`), group calls
(`groups`), and their Dagster definitions (`defs`)."""
