"""Run the receiver: `start_receiver` (uvicorn in a daemon thread: tests, the demo) and `serve` (the CLI)."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn

from segment_ops.webhooks.app import HEAP_PATH, WebhookConfig, create_app

START_TIMEOUT_SECONDS = 15.0


class ReceiverStartError(RuntimeError):
    """The receiver did not come up."""


class RunningReceiver:
    """A receiver serving on `url`; `heap_url` is what to register at Heap."""

    def __init__(self, server: uvicorn.Server, thread: threading.Thread, url: str) -> None:
        self.url = url
        self.heap_url = f"{url}{HEAP_PATH}"
        self._server, self._thread = server, thread

    def stop(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)

    def __enter__(self) -> RunningReceiver:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_receiver(config: WebhookConfig, *, host: str = "127.0.0.1", port: int = 0) -> RunningReceiver:
    """Serve the receiver from a daemon thread (port 0: a free port); returns once it accepts connections."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound = sock.getsockname()[1]
    server = uvicorn.Server(_uvicorn_config(config, host, bound, log_config=None))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"webhooks:{bound}", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise ReceiverStartError(f"webhook receiver did not start on {host}:{bound}")
        time.sleep(0.01)
    return RunningReceiver(server, thread, f"http://{host}:{bound}")


def serve(config: WebhookConfig, host: str, port: int) -> None:
    """Serve in the foreground until interrupted."""
    print(f"segment_ops webhook receiver on http://{host}:{port}{HEAP_PATH} (inbox: {config.home}/inbox/heap)",
          flush=True)
    uvicorn.Server(_uvicorn_config(config, host, port)).run()


def _uvicorn_config(config: WebhookConfig, host: str, port: int, **kwargs: object) -> uvicorn.Config:
    return uvicorn.Config(create_app(config), host=host, port=port, http="httptools", lifespan="off",
                          access_log=False, log_level="warning", **kwargs)
