"""The DuckDB staging store: one file per sync, opened with bounded memory and lock-contention retry.

DuckDB admits one writing process per file (dagster issue #13680). Dagster runs steps in separate
processes, so every writer of a sync's file sits in that sync's pool (limit 1), and `connect` also
retries a held lock for a while instead of failing at once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

DEFAULT_MEMORY_LIMIT = "128MB"


class StagingLockedError(RuntimeError):
    """Another process kept the staging file locked for longer than we were willing to wait."""


def connect(path: str | Path, *, memory_limit: str = DEFAULT_MEMORY_LIMIT, threads: int = 2,
            lock_timeout: float = 60.0, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open the staging file (created if missing) with a memory cap, retrying while it is locked.

    `read_only=True` opens an existing file for reading (a missing file is DuckDB's IOException, not
    created); it still waits for a writer's lock, since DuckDB's lock is per file, not per mode.
    """
    path = Path(path)
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + lock_timeout
    delay = 0.05
    while True:
        try:
            con = duckdb.connect(str(path), read_only=read_only,
                                 config={"memory_limit": memory_limit, "threads": threads})
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower():
                raise
            if time.monotonic() >= deadline:
                raise StagingLockedError(f"{path} stayed locked by another process for {lock_timeout:.0f}s") from exc
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
        else:
            con.execute("SET preserve_insertion_order = false")
            con.execute("SET enable_progress_bar = false")  # long statements would draw it into run logs
            return con


@contextmanager
def staging(path: str | Path, **kwargs: object) -> Iterator[duckdb.DuckDBPyConnection]:
    """`connect` as a context manager that always closes (releasing the file lock)."""
    con = connect(path, **kwargs)  # type: ignore[arg-type]
    try:
        yield con
    finally:
        con.close()
