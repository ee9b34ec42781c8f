"""Run Heap's receiver: `start_receiver` (uvicorn in a daemon thread: tests, the demo) and `serve`
(the CLI)."""

from __future__ import annotations

from collections.abc import Sequence

from segment_ops.receivers.app import Endpoint
from segment_ops.receivers.server import ThreadedServer, serve_forever, serve_in_thread
from segment_ops.syncs.heap.receiver import (
    HEAP_PATH,
    WebhookConfig,
    WebhookSecretError,
    create_app,
    require_live_secret,
)


class RunningReceiver:
    """A receiver serving on `url`; `heap_url` is what to register at Heap."""

    def __init__(self, served: ThreadedServer) -> None:
        self.url = served.url
        self.heap_url = f"{served.url}{HEAP_PATH}"
        self._served = served

    def stop(self, timeout: float = 10.0) -> None:
        self._served.stop(timeout)

    def __enter__(self) -> RunningReceiver:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_receiver(config: WebhookConfig, *, host: str = "127.0.0.1", port: int = 0) -> RunningReceiver:
    """Serve the receiver from a daemon thread (port 0: a free port); returns once it accepts connections.

    Raises `WebhookSecretError` for the sandbox secret on a non-loopback `host`."""
    require_live_secret(config, host)
    return RunningReceiver(serve_in_thread(create_app(config), name="webhook receiver", host=host, port=port,
                                           limit_concurrency=config.max_connections))


def serve(config: WebhookConfig, host: str, port: int, *, also: Sequence[Endpoint] = ()) -> None:
    """Serve in the foreground until interrupted (`segment-ops webhooks`); exits with a message naming
    HEAP_WEBHOOK_SECRET when it is unset and `host` is not a loopback address."""
    try:
        require_live_secret(config, host)
    except WebhookSecretError as exc:
        raise SystemExit(f"segment-ops webhooks: {exc}") from None
    rotation = (f", {len(config.previous_secrets)} previous secret(s) still accepted"
                if config.previous_secrets else "")
    print(f"segment_ops webhook receiver on http://{host}:{port}{HEAP_PATH} "
          f"(inbox: {config.home}/inbox/heap; Heap-Hash timestamps up to {config.max_age_seconds:g} s old "
          f"and {config.max_future_seconds:g} s ahead{rotation}; at most {config.max_connections} "
          "connections)", flush=True)
    for endpoint in also:
        print(f"  and {endpoint.name} on http://{host}:{port}{endpoint.path}", flush=True)
    serve_forever(create_app(config, also=also), host, port, limit_concurrency=config.max_connections)
