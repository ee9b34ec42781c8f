"""Generic signed-webhook receiving: a durable inbox on plain files and its ASGI server; no vendor format."""
