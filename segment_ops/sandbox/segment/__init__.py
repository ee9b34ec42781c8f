"""Segment's doubles: the Tracking API (`tracking.py`, `/segment`) and the Public API's audit trail
(`public_api.py`, `/segmentapis`) with the audit events it serves (`data.py`). No imports here, so
reading one module does not load the others."""
