"""Heap's double: the server-side ingest API (`api.py`), the signed segment-sync webhooks Heap pushes
(`webhooks.py`), Heap Connect's tables in the demo warehouse (`connect.py`) and the demo data all three
show (`data.py`). No imports here, so reading one module does not load the others."""
