"""Seeded fault injection in front of each emulator: 429, 500, 503, dropped connections, slow answers.

`FaultGate` wraps one mounted API. Per request it rolls the seeded RNG once and then either answers
with the vendor's own 429/500/503 (via the emulator's `fault_response`), drops the connection, sleeps
before the normal answer, or lets the emulator process the request and drops the connection instead of
sending its answer (`drop_after`: the data arrived, the client cannot know; a correct client retries and
must rely on the vendor's dedupe). It also counts requests, answers by status, and faults per API.

A "drop" sends the response head and closes the connection without a body: under uvicorn the client
sees a protocol error (httpx `RemoteProtocolError`, requests `ChunkedEncodingError`), never a status it
could trust. Pure ASGI cannot close a socket without sending a head first.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from segment_ops.sandbox.recorder import API_NAMES, Recorder

FAULT_KINDS = ("429", "500", "503", "drop", "drop_after", "slow")

# Short names accepted by `parse_fault_spec` (the CLI's --faults) next to the field names.
_SHORT_NAMES = {kind: f"rate_{kind}" for kind in FAULT_KINDS} | {"retry_after": "retry_after_seconds"}


class FaultSpecError(ValueError):
    """A fault specification that cannot be parsed or has rates outside [0, 1]."""


@dataclass(frozen=True)
class FaultSpec:
    """Probabilities (0..1, summing to at most 1) of each fault for one API."""

    rate_429: float = 0.0
    rate_500: float = 0.0
    rate_503: float = 0.0
    rate_drop: float = 0.0
    rate_drop_after: float = 0.0
    rate_slow: float = 0.0
    slow_seconds: float = 1.0
    retry_after_seconds: int = 1

    def __post_init__(self) -> None:
        rates = [getattr(self, f"rate_{kind}") for kind in FAULT_KINDS]
        if any(not 0.0 <= rate <= 1.0 for rate in rates):
            raise FaultSpecError(f"fault rates must be within [0, 1]: {rates}")
        if sum(rates) > 1.0 + 1e-9:
            raise FaultSpecError(f"fault rates add up to {sum(rates):.3f} > 1")
        if self.slow_seconds < 0 or self.retry_after_seconds < 0:
            raise FaultSpecError("slow_seconds and retry_after_seconds must be >= 0")

    @classmethod
    def from_dict(cls, data: dict) -> FaultSpec:
        """Build from field names or the short names (`429`, `drop`, `retry_after`, ...)."""
        known = {f.name for f in fields(cls)}
        kwargs = {}
        for key, value in data.items():
            name = _SHORT_NAMES.get(str(key), str(key))
            if name not in known:
                raise FaultSpecError(f"unknown fault setting {key!r}")
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise FaultSpecError(f"fault setting {key!r} must be a number")
            kwargs[name] = int(value) if name == "retry_after_seconds" else float(value)
        return cls(**kwargs)

    def to_dict(self) -> dict:
        return asdict(self)

    def choose(self, roll: float) -> str | None:
        """The fault kind a uniform roll in [0, 1) falls on, or None for a normal answer."""
        edge = 0.0
        for kind in FAULT_KINDS:
            edge += getattr(self, f"rate_{kind}")
            if roll < edge:
                return kind
        return None


def check_fault_apis(apis: Iterable[str]) -> None:
    """Refuse fault specs for APIs the sandbox does not have."""
    unknown = sorted(set(apis) - set(API_NAMES))
    if unknown:
        raise FaultSpecError(f"unknown api {unknown[0]!r}; expected one of {list(API_NAMES)}")


def parse_fault_spec(text: str) -> dict[str, FaultSpec]:
    """Parse `"segment:429=0.1,503=0.05,drop=0.02,slow=0.05;splunk:503=0.2"` into specs per API."""
    specs: dict[str, FaultSpec] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        api, sep, settings = part.partition(":")
        if not sep or not api.strip():
            raise FaultSpecError(f"expected '<api>:<kind>=<rate>,...', got {part!r}")
        values: dict[str, float] = {}
        for item in filter(None, (s.strip() for s in settings.split(","))):
            key, _, raw = item.partition("=")
            try:
                values[key.strip()] = float(raw)
            except ValueError:
                raise FaultSpecError(f"bad fault setting {item!r} for {api.strip()}") from None
        specs[api.strip()] = FaultSpec.from_dict(values)
    check_fault_apis(specs)
    return specs


class FaultInjector:
    """The current fault spec per API and one seeded RNG, so a run with the same seed repeats."""

    def __init__(self, seed: int, specs: dict[str, FaultSpec] | None = None) -> None:
        self._seed = seed
        self._rng = random.Random(seed)
        self.specs: dict[str, FaultSpec] = dict(specs or {})

    def choose(self, api: str) -> str | None:
        spec = self.specs.get(api)
        return spec.choose(self._rng.random()) if spec else None

    def reset(self) -> None:
        """Clear every spec and reseed."""
        self.specs.clear()
        self._rng = random.Random(self._seed)


FaultResponder = Callable[[int, int], Response]


class FaultGate:
    """ASGI wrapper of one API: accounting plus the fault (if any) the injector picks for the request."""

    def __init__(
        self,
        app: ASGIApp,
        api: str,
        injector: FaultInjector,
        recorder: Recorder,
        fault_response: FaultResponder,
    ) -> None:
        self.app = app
        self.api = api
        self.injector = injector
        self.recorder = recorder
        self.fault_response = fault_response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        log = self.recorder[self.api]
        log.count("requests")

        async def send_counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                log.bump("status", str(message["status"]))
            await send(message)

        kind = self.injector.choose(self.api)
        if kind is None:
            await self.app(scope, receive, send_counted)
            return
        log.bump("faults", kind)
        spec = self.injector.specs[self.api]
        if kind == "slow":
            await asyncio.sleep(spec.slow_seconds)
            await self.app(scope, receive, send_counted)
        elif kind == "drop_after":
            await self.app(scope, receive, _discard)
            await _drop_connection(send)
        else:
            await _drain(receive)
            if kind == "drop":
                await _drop_connection(send)
            else:
                await self.fault_response(int(kind), spec.retry_after_seconds)(scope, receive, send_counted)


async def _discard(message: Message) -> None:
    """Swallow the emulator's answer (drop_after)."""


async def _drain(receive: Receive) -> None:
    """Read the request body to the end so the client can read our answer rather than a write error."""
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


async def _drop_connection(send: Send) -> None:
    # A head promising a body, then nothing: uvicorn closes the socket ("returned without completing
    # response"; server.py filters that log line) and the client gets a protocol error.
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"1")]})
