"""Governance end to end: regulations, tracking plans and PII policy through Dagster against the sandbox."""
