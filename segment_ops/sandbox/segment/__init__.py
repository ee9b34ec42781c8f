"""Segment's doubles: the Tracking API (`tracking.py`, `/segment`) and the Public API's audit trail
(`public_api.py`, `/segmentapis`). No imports here, so reading one module does not load the others."""
