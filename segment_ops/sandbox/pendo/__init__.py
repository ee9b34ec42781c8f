"""Pendo's double: the API (`api.py`), its Aggregation pipeline interpreter (`pipeline.py`) and the demo
data they serve (`data.py`). No imports here, so reading one module does not load the others."""
