"""Not a model: makes this folder the package `segment_ops.syncs.reverse_etl.sql`, so a wheel ships the
`*.sql` models as package data (pyproject's `[tool.setuptools.package-dir]`). Only `*.sql` files are
models."""
