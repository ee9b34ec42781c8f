"""A minimal receiver for Segment's batch endpoint, and the ceiling it allows: the delivery benchmarks'
yardstick, independent of segment_ops (its sandbox records every message; this only counts them).

`POST /v1/batch` (body `{"batch": [...]}`, gzipped or not, spec §1) is answered `200 {"success": true}`
once its messages are counted; `GET /count` returns `{"messages", "batches", "bytes"}` (bytes as they
came over the wire). One asyncio process (uvloop when installed), HTTP/1.1 keep-alive, any number of
connections; a body is read straight into a buffer of its Content-Length.

`measure_ceiling` sends pre-built identify batches over a few keep-alive connections from another
process, as fast as the receiver answers: the messages/s the wire and the receiver allow, which a sender
can approach but not pass.

    .venv/bin/python benchmarks/receiver.py --port 8765                  # serve; prints its port when ready
    .venv/bin/python benchmarks/receiver.py --port 8765 --ceiling 1000000  # measure against it, from here
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import socket
import subprocess
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import orjson

ACK = b'{"success": true}'  # spec §1
NOT_FOUND = b'{"code": "not_found", "message": "only POST /v1/batch and GET /count are served"}'
MAX_HEAD_BYTES = 64 * 1024  # request line and headers; a larger head is refused (431)
GZIP_WBITS = 16 + zlib.MAX_WBITS  # zlib.decompress reading a gzip member
READY = "receiver ready on port"


@dataclass(frozen=True)
class Counts:
    """What a receiver has taken since it started."""

    messages: int = 0
    batches: int = 0
    bytes: int = 0


@dataclass
class RunningReceiver:
    """A receiver process serving on `port` (`start_receiver`)."""

    process: subprocess.Popen
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def count(self) -> Counts:
        return read_count(self.port)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()


def start_receiver(port: int = 0) -> RunningReceiver:
    """Start a receiver in its own process on `port` (0: a free one) and wait until it listens."""
    process = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--port", str(port)],
                               stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline() if process.stdout else ""
    if not line.startswith(READY):
        process.kill()
        raise RuntimeError(f"the receiver did not start: {line!r}")
    return RunningReceiver(process, int(line.split()[-1]))


@contextmanager
def running_receiver(port: int = 0) -> Iterator[RunningReceiver]:
    """`start_receiver`, stopped on leaving the block."""
    receiver = start_receiver(port)
    try:
        yield receiver
    finally:
        receiver.stop()


def read_count(port: int) -> Counts:
    """The counters of the receiver on `port` (over a direct connection: no proxy from the environment)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/count")
        return Counts(**orjson.loads(connection.getresponse().read()))
    finally:
        connection.close()


def measure_ceiling(port: int, messages: int = 1_000_000, connections: int = 4,
                    batch_bytes: int = 450_000, gzip: bool = True, rounds: int = 3) -> float:
    """Messages/s the receiver on `port` takes from a sender that does nothing else: `messages` identify
    calls in pre-built batches of about `batch_bytes`, over `connections` keep-alive connections, from
    another process. `gzip` (level 1, as `segment-ops replay` sends by default) gives the receiver the
    same work per batch as replay does. The best of `rounds`: a round slowed by another process on the
    machine does not show what the receiver allows. Each round is checked against the receiver's count."""
    command = [sys.executable, str(Path(__file__).resolve()), "--port", str(port), "--ceiling", str(messages),
               "--connections", str(connections), "--batch-bytes", str(batch_bytes)]
    best = 0.0
    for _ in range(rounds):
        before = read_count(port).messages
        output = subprocess.run(command + ([] if gzip else ["--no-gzip"]), check=True, capture_output=True,
                                text=True).stdout
        sent = orjson.loads(output.splitlines()[-1])
        taken = read_count(port).messages - before
        if taken != sent["messages"]:
            raise RuntimeError(f"ceiling: sent {sent['messages']:,} messages, the receiver counted {taken:,}")
        best = max(best, sent["messages"] / sent["seconds"])
    return best


def identify_call(i: int) -> dict:
    """The i-th identify call of the benchmarks: a realistic body of about 200 bytes."""
    return {
        "type": "identify", "userId": f"usr_{i:08d}",
        "traits": {"email": f"user{i}@example.com", "name": f"User {i}",
                   "plan": ("free", "pro", "team")[i % 3], "seats": i % 50, "country": "DE"},
        "timestamp": "2024-06-01T12:00:00.000Z",
    }


# --- the receiver ----------------------------------------------------------------------------------------

class _Connection(asyncio.BufferedProtocol):
    """One client connection: heads are parsed from a fixed buffer, each body is received straight into a
    bytearray of its Content-Length (no copies while it streams in)."""

    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts
        self.head = bytearray(MAX_HEAD_BYTES)
        self.filled = 0  # bytes of `head` in use
        self.body: bytearray | None = None  # set while a body is being received
        self.body_filled = 0
        self.request: tuple[bytes, bytes, bytes, bool] = (b"", b"", b"", False)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.body is not None:
            return memoryview(self.body)[self.body_filled:]
        return memoryview(self.head)[self.filled:]

    def buffer_updated(self, nbytes: int) -> None:
        if self.body is not None:
            self.body_filled += nbytes
            if self.body_filled == len(self.body):
                body, self.body = self.body, None
                self._answer(body)
            return
        self.filled += nbytes
        self._read_heads()

    def _read_heads(self) -> None:
        """Answer every complete request in `head` (a client may pipeline), keep what follows."""
        while True:
            end = self.head.find(b"\r\n\r\n", 0, self.filled)
            if end < 0:
                if self.filled == len(self.head):
                    self._refuse(431, "request head over 64 KB")
                return
            try:
                method, target, headers = _parse_head(bytes(self.head[:end]))
            except ValueError:
                self._refuse(400, "not an HTTP/1.1 request head")
                return
            if b"chunked" in headers.get(b"transfer-encoding", b""):
                self._refuse(411, "a body needs a Content-Length")
                return
            length = int(headers.get(b"content-length", b"0"))
            close = headers.get(b"connection", b"").lower() == b"close"
            self.request = (method, target, headers.get(b"content-encoding", b"").lower(), close)
            start = end + 4
            have = self.filled - start
            if have < length:  # the body streams into its own buffer
                self.body = bytearray(length)
                self.body[:have] = self.head[start:self.filled]
                self.body_filled, self.filled = have, 0
                return
            body = self.head[start:start + length]
            rest = self.filled - start - length
            self.head[:rest] = self.head[start + length:self.filled]
            self.filled = rest
            self._answer(body)

    def _answer(self, body: bytearray) -> None:
        method, target, encoding, close = self.request
        wire_bytes = len(body)
        if method == b"POST" and target == b"/v1/batch":
            try:
                if encoding == b"gzip":
                    body = zlib.decompress(body, GZIP_WBITS)
                batch = orjson.loads(body)["batch"]
                if not isinstance(batch, list):
                    raise TypeError("batch is not an array")
            except (ValueError, KeyError, TypeError, zlib.error) as exc:
                self._respond(400, orjson.dumps({"code": "invalid_request", "message": str(exc)}), close)
                return
            counts = self.counts
            counts["messages"] += len(batch)
            counts["batches"] += 1
            counts["bytes"] += wire_bytes
            self._respond(200, ACK, close)
        elif method == b"GET" and target == b"/count":
            self._respond(200, orjson.dumps(self.counts), close)
        else:
            self._respond(404, NOT_FOUND, close)

    def _respond(self, status: int, body: bytes, close: bool) -> None:
        reason = http.client.responses[status].encode()
        head = b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n" % (
            status, reason, len(body), b"Connection: close\r\n" if close else b"")
        assert self.transport is not None
        self.transport.write(head + body)
        if close:
            self.transport.close()

    def _refuse(self, status: int, message: str) -> None:
        self._respond(status, orjson.dumps({"code": "invalid_request", "message": message}), close=True)


def _parse_head(head: bytes) -> tuple[bytes, bytes, dict[bytes, bytes]]:
    """Method, target and headers (names lower-case) of a request head; `ValueError` if it is none."""
    lines = head.split(b"\r\n")
    method, target, _ = lines[0].split(b" ", 2)
    headers = {}
    for line in lines[1:]:
        name, value = line.split(b":", 1)
        headers[name.strip().lower()] = value.strip()
    return method, target, headers


async def _serve(port: int) -> None:
    counts = {"messages": 0, "batches": 0, "bytes": 0}
    server = await asyncio.get_running_loop().create_server(lambda: _Connection(counts), "127.0.0.1", port,
                                                            backlog=1024)
    print(READY, server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


def serve(port: int) -> None:
    """Serve on 127.0.0.1:`port` (0: a free one) until killed; prints `receiver ready on port N`."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve(port))
    else:
        uvloop.run(_serve(port))


# --- the ceiling sender ----------------------------------------------------------------------------------

def send_ceiling(port: int, messages: int, connections: int, batch_bytes: int, gzip: bool) -> dict:
    """Send `messages` identify calls to the receiver on `port` as fast as it answers (see
    `measure_ceiling`); returns {"messages", "seconds"}, timed from the first request to the last answer.

    Up to 16 distinct batches are built and sent in turn: the receiver counts, it does not deduplicate.
    """
    built: list[tuple[bytes, int]] = []  # (request, calls in it)
    while len(built) < 16 and (first := sum(count for _, count in built)) < messages:
        built.append(_request(port, _batch_calls(first, batch_bytes), gzip))
    order, planned = [], 0  # which built request each send is, until `messages` are sent
    while planned < messages:
        order.append(built[len(order) % len(built)])
        planned += order[-1][1]
    queue = iter(order)  # shared by the sending threads: next() on it is atomic under the GIL
    sent = [0] * connections
    failed: list[BaseException] = []
    sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(connections)]

    def send(k: int) -> None:
        try:
            for request, count in queue:
                sockets[k].sendall(request)
                _read_response(sockets[k])
                sent[k] += count
        except BaseException as exc:  # raised in the calling thread below
            failed.append(exc)

    threads = [threading.Thread(target=send, args=(k,)) for k in range(connections)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    for conn in sockets:
        conn.close()
    if failed:
        raise failed[0]
    return {"messages": sum(sent), "seconds": seconds}


def _batch_calls(first: int, batch_bytes: int) -> list[bytes]:
    """Encoded identify calls from number `first` on, as `segment-ops replay` encodes them (keys sorted, a
    messageId appended), filling `batch_bytes` of body."""
    calls, size, i = [], 0, first
    while True:
        call = orjson.dumps(identify_call(i), option=orjson.OPT_SORT_KEYS)
        call = call[:-1] + b',"messageId":"' + str(uuid.UUID(int=i)).encode() + b'"}'
        if size + len(call) + 1 > batch_bytes:
            return calls
        calls.append(call)
        size += len(call) + 1
        i += 1


def _request(port: int, calls: list[bytes], gzip: bool) -> tuple[bytes, int]:
    """A whole `POST /v1/batch` request as our client frames it, and how many calls it holds."""
    body = b'{"batch":[' + b",".join(calls) + b'],"sentAt":"2024-06-01T12:00:00.000Z"}'
    encoding = b""
    if gzip:
        body = zlib.compress(body, 1, wbits=GZIP_WBITS)
        encoding = b"Content-Encoding: gzip\r\n"
    head = (b"POST /v1/batch HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAuthorization: Basic YmVuY2g6\r\n"
            b"Content-Type: application/json\r\n%sContent-Length: %d\r\n\r\n" % (port, encoding, len(body)))
    return head + body, len(calls)


def _read_response(conn: socket.socket) -> None:
    """Read one response off `conn`; raise unless it is a 200."""
    data = b""
    while (end := data.find(b"\r\n\r\n")) < 0:
        data += _receive(conn)
    status, _, headers = data[:end].partition(b"\r\n")
    if not status.startswith(b"HTTP/1.1 200 "):
        raise RuntimeError(f"the receiver answered {data[:end].decode(errors='replace')!r}")
    length = next(int(value) for name, _, value in (line.partition(b":") for line in headers.split(b"\r\n"))
                  if name.lower() == b"content-length")
    while len(data) < end + 4 + length:
        data += _receive(conn)


def _receive(conn: socket.socket) -> bytes:
    chunk = conn.recv(65536)
    if not chunk:
        raise RuntimeError("the receiver closed the connection")
    return chunk


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=0, help="port to serve on (0: a free one), or to send to")
    parser.add_argument("--ceiling", type=int, metavar="MESSAGES",
                        help="send this many messages to the receiver on --port and print what it took")
    parser.add_argument("--connections", type=int, default=4, help="keep-alive connections (--ceiling)")
    parser.add_argument("--batch-bytes", type=int, default=450_000, help="batch body size (--ceiling)")
    parser.add_argument("--no-gzip", action="store_true", help="send batch bodies uncompressed (--ceiling)")
    args = parser.parse_args()
    if args.ceiling is None:
        serve(args.port)
        return 0
    result = send_ceiling(args.port, args.ceiling, args.connections, args.batch_bytes, not args.no_gzip)
    print(orjson.dumps({**result, "msg_per_s": round(result["messages"] / result["seconds"])}).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
