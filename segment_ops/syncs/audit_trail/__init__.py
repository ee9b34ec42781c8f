"""Audit trail: Segment audit events forwarded to SIEMs (`siem`: HEC and JSON-lines destinations), and the
Dagster definitions (`defs`)."""
