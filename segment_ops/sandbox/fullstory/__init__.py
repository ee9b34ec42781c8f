"""Fullstory's double: the Server API v2 users endpoints (`api.py`), Streams pushed to a receiver
(`streams.py`), and the data both show (`data.py`)."""
