"""Not a query: makes this folder the package `segment_ops.syncs.regulations.sql`, so a wheel ships
`privacy_requests.sql` as package data (pyproject's `[tool.setuptools.package-dir]`)."""
