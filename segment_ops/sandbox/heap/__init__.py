"""Heap's double: the server-side ingest API (`api.py`), the signed segment-sync webhooks Heap pushes
(`webhooks.py`) and the demo data they and the warehouse's Heap Connect tables show (`data.py`).
No imports here, so reading one module does not load the others."""
