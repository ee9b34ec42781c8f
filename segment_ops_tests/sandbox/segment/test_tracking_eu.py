"""The EU tracking host double (`/segment_eu`, standing for events.eu1.segmentapis.com) and write keys that
Segment drops: the sandbox workspace is in the US, so its key is lost on the EU host (spec §1, §7)."""

from __future__ import annotations

import uuid

from segment_ops.config import SANDBOX_SEGMENT_WRITE_KEY
from segment_ops.sandbox.segment.sources import DISABLED_SOURCE_WRITE_KEY


def batch(size: int = 2) -> dict:
    return {"batch": [{"type": "identify", "userId": f"u{i}", "messageId": str(uuid.uuid4())}
                      for i in range(size)]}


def test_the_workspace_key_on_the_eu_host_gets_200_and_is_dropped(sandbox_http, clean_sandbox):
    response = sandbox_http.post("/segment_eu/v1/batch", json=batch(), auth=(SANDBOX_SEGMENT_WRITE_KEY, ""))

    assert (response.status_code, response.json()) == (200, {"success": True})
    stats = clean_sandbox.stats()
    assert stats["segment_eu"]["dropped"] == {"unknown_write_key": 2}
    assert clean_sandbox.received("segment_eu") == [] and stats["segment"]["received"] == 0


def test_the_eu_host_still_refuses_an_empty_key_with_400(sandbox_http):
    response = sandbox_http.post("/segment_eu/v1/batch", json=batch(), auth=("", ""))

    assert response.status_code == 400


def test_a_disabled_sources_key_gets_200_and_is_dropped(sandbox_http, clean_sandbox):
    response = sandbox_http.post("/segment/v1/batch", json=batch(3), auth=(DISABLED_SOURCE_WRITE_KEY, ""))

    assert response.status_code == 200
    assert clean_sandbox.stats()["segment"]["dropped"] == {"unknown_write_key": 3}
    assert clean_sandbox.received("segment") == []
