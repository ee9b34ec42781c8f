"""Pendo's double: the API (`api.py`) and its Aggregation pipeline interpreter (`pipeline.py`).
No imports here, so reading one module does not load the others."""
