"""Run the sandbox: `start_sandbox` (uvicorn in a daemon thread, for tests and benchmarks) and `serve`
(blocking, for the CLI). Both use httptools, no access log and log level warning.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx

from segment_ops.clients.base import tls_context
from segment_ops.receivers.server import ThreadedServer, serve_forever, serve_in_thread
from segment_ops.sandbox.app import SandboxConfig, create_app


class RunningSandbox:
    """A sandbox serving on `url`, with helpers over the `/__sandbox__` control endpoints."""

    def __init__(self, served: ThreadedServer) -> None:
        self.url = served.url
        self._served = served
        self._http = httpx.Client(base_url=f"{served.url}/__sandbox__", timeout=30.0, verify=tls_context())

    def stop(self, timeout: float = 10.0) -> None:
        self._http.close()
        self._served.stop(timeout)

    def __enter__(self) -> RunningSandbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stats(self) -> dict[str, dict]:
        return self._call("GET", "/stats")

    def received(self, api: str, limit: int = 100, offset: int = 0) -> list[dict]:
        return self._call("GET", f"/received/{api}", params={"limit": limit, "offset": offset})["items"]

    def seen(self, api: str, key: str) -> int:
        """How many times a dedupe key (Segment messageId, Heap idempotency_key) arrived."""
        return self._call("GET", f"/seen/{api}/{key}")["seen"]

    def set_faults(self, api: str, **rates: float) -> dict:
        """Replace one API's fault spec, e.g. `set_faults("segment", rate_429=0.2, retry_after_seconds=2)`."""
        return self._call("POST", "/faults", json={api: rates})

    def clear_faults(self) -> dict:
        return self._call("POST", "/faults", json={})

    def reset(self) -> None:
        self._call("POST", "/reset")

    def inject_audit_events(self, events: list[dict]) -> list[dict]:
        return self._call("POST", "/audit-events", json=events)["events"]

    def register_heap_webhook(self, url: str, **spec: object) -> dict:
        """Make the sandbox push Heap segment syncs to `url` (secret, interval_seconds, page_size, ...)."""
        return self._call("POST", "/heap/webhooks", json={"url": url, **spec})

    def push_heap(self, **spec: object) -> dict:
        """Push segment-sync deltas now (at, segments, omit_pages, duplicate_pages, reorder, bad_signature,
        wait); returns `{"syncs": [...], "deliveries": [...]}`."""
        return self._call("POST", "/heap/push", json=spec)

    def heap_deliveries(self) -> list[dict]:
        return self._call("GET", "/heap/deliveries")["deliveries"]

    def register_fullstory_stream(self, url: str, **spec: object) -> dict:
        """Make the sandbox's Fullstory Streams post to `url` (token, body "v2"|"mapped", interval_seconds,
        streams, max_attempts, retry_initial_seconds, retry_max_seconds)."""
        return self._call("POST", "/fullstory/streams", json={"url": url, **spec})

    def push_fullstory(self, **spec: object) -> dict:
        """Send the demo frustration events not yet sent (target, duplicate, late_hours, late, bad_token,
        wait, timeout); returns `{"sent", "events": [...], "deliveries": [...]}`."""
        return self._call("POST", "/fullstory/push", json=spec)

    def fullstory_deliveries(self) -> list[dict]:
        return self._call("GET", "/fullstory/deliveries")["deliveries"]

    def fullstory_users(self, *, include_demo: bool = False, uid: str | None = None) -> list[dict]:
        """The users Fullstory holds that the API wrote (batch jobs due applied); `include_demo`: all."""
        params = {"all": "true"} if include_demo else {}
        return self._call("GET", "/fullstory/users", params=params | ({"uid": uid} if uid else {}))["users"]

    def fullstory_jobs(self) -> list[dict]:
        return self._call("GET", "/fullstory/jobs")["jobs"]

    def pendo_usage_drop(self, account_id: str, from_day: str, factor: float = 0.0) -> dict:
        """Make a Pendo account's usage drop to `factor` from UTC day `from_day` (YYYY-MM-DD) on, until
        reset."""
        return self._call("POST", "/pendo/usage-drop",
                          json={"accountId": account_id, "from_day": from_day, "factor": factor})

    def regulation_settings(self, **settings: object) -> dict:
        """Change how Segment regulations progress until the next reset (running_after_seconds,
        finished_after_seconds, max_subject_ids, outcomes=[{"pattern", "status", "error"?}]); returns the
        settings in force. With no arguments it only reads them."""
        if not settings:
            return self._call("GET", "/segment/regulations")
        return self._call("POST", "/segment/regulations", json=settings)

    def splunk_restart(self) -> None:
        """Make HEC forget every channel and its ackIds, as a Splunk restart does."""
        self._call("POST", "/splunk/restart")

    def splunk_ack(self, enabled: bool) -> None:
        """Turn indexer acknowledgement on or off for the HEC token (off: the ack endpoint answers 14)."""
        self._call("POST", "/splunk/ack", json={"enabled": enabled})

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._http.request(method, path, **kwargs)
        response.raise_for_status()
        return response.json()


def start_sandbox(
    config: SandboxConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
) -> RunningSandbox:
    """Serve the sandbox from a daemon thread (port 0: a free port); returns once it accepts connections."""
    _hide_intentional_drops()
    return RunningSandbox(serve_in_thread(create_app(config), name="sandbox", host=host, port=port))


def serve(config: SandboxConfig | None, host: str, port: int) -> None:
    """Serve the sandbox in the foreground until interrupted."""
    print(f"segment_ops sandbox listening on http://{host}:{port}", flush=True)
    _hide_intentional_drops()
    serve_forever(create_app(config), host, port)


class _IntentionalDropFilter(logging.Filter):
    """uvicorn logs every response the app leaves unfinished; the fault gate does that on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "ASGI callable returned without completing response."


def _hide_intentional_drops() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _IntentionalDropFilter) for f in logger.filters):
        logger.addFilter(_IntentionalDropFilter())
