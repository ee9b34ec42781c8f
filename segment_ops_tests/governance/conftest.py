"""Shared by the governance tests: privacy requests dropped into the inbox, the regulations asset's runs, a
Public API client on the sandbox."""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path

import dagster as dg
import pytest

from segment_ops.clients.segment_public_api import SegmentPublicApiClient
from segment_ops.config import SANDBOX_SEGMENT_PUBLIC_API_TOKEN
from segment_ops.syncs.regulations import requests
from segment_ops.syncs.regulations.defs import KEY
from segment_ops.syncs.regulations.defs import defs as regulations_defs


def drop(home: Path, name: str, *rows: tuple[str, str, str], settled: bool = True) -> Path:
    """A CSV of (request_id, user_id, regulation_type) rows in the regulations inbox, as privacy tooling drops
    it: last written long enough ago to be read (`settled`), or just now."""
    folder = home / "inbox" / "regulations"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["request_id", "user_id", "regulation_type"])
        writer.writerows(rows)
    if settled:
        settle(path)
    return path


def settle(path: Path) -> None:
    then = time.time() - requests.SETTLED_SECONDS - 5
    os.utime(path, (then, then))


def run_regulations(resources: dict, **config: object) -> dg.ExecuteInProcessResult:
    run_config = {"ops": {"segment__regulations": {"config": dict(config)}}} if config else None
    return dg.materialize(list(regulations_defs.assets), selection=[KEY], resources=resources,
                          run_config=run_config, raise_on_error=False)


@pytest.fixture
def public_api(clean_sandbox):
    client = SegmentPublicApiClient(f"{clean_sandbox.url}/segmentapis", SANDBOX_SEGMENT_PUBLIC_API_TOKEN)
    yield client
    client.close()
