"""Serving the project's small ASGI apps (the webhook receivers, the sandbox) with uvicorn.

`serve_in_thread` runs an app from a daemon thread (tests, benchmarks, the demo) and returns only once it
accepts connections; `serve_forever` runs one in the foreground (the CLI). Both use `uvicorn_config`.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import uvicorn

START_TIMEOUT_SECONDS = 15.0


class ServerStartError(RuntimeError):
    """The server did not come up within `START_TIMEOUT_SECONDS`."""


@dataclass
class ThreadedServer:
    server: uvicorn.Server
    thread: threading.Thread
    url: str

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)


def uvicorn_config(app: Any, host: str, port: int, *, limit_concurrency: int | None = None,
                   **kwargs: Any) -> uvicorn.Config:
    """The one configuration: httptools, no lifespan, no access log, warnings only. `limit_concurrency`
    caps open connections plus requests in progress: beyond it uvicorn answers 503 at once (None: no cap)."""
    return uvicorn.Config(app, host=host, port=port, http="httptools", lifespan="off", access_log=False,
                          log_level="warning", limit_concurrency=limit_concurrency, **kwargs)


def serve_in_thread(app: Any, *, name: str, host: str = "127.0.0.1", port: int = 0,
                    limit_concurrency: int | None = None) -> ThreadedServer:
    """Serve `app` from a daemon thread (port 0: a free port); returns once it accepts connections."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn_config(app, host, bound, limit_concurrency=limit_concurrency,
                                           log_config=None))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"{name}:{bound}",
                              daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise ServerStartError(f"{name} did not start on {host}:{bound}")
        time.sleep(0.01)
    url_host = f"[{host}]" if family == socket.AF_INET6 else host
    return ThreadedServer(server, thread, f"http://{url_host}:{bound}")


def serve_forever(app: Any, host: str, port: int, *, limit_concurrency: int | None = None) -> None:
    """Serve `app` in the foreground until interrupted."""
    uvicorn.Server(uvicorn_config(app, host, port, limit_concurrency=limit_concurrency)).run()


def is_loopback(host: str) -> bool:
    """Whether a bind address is reachable from this machine only (127.0.0.0/8, ::1, localhost)."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
