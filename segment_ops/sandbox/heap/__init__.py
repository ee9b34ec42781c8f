"""Heap's double: the server-side ingest API (`api.py`) and the signed segment-sync webhooks Heap pushes
(`webhooks.py`). No imports here, so reading one module does not load the others."""
