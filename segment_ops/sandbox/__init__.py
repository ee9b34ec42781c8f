"""Local emulators of the vendor APIs (Segment, Heap, Pendo, Fullstory, Splunk HEC, Slack) on one port, with
demo data, fault injection and a recorder. Exports are lazy so importing `demo_data` does not load the web
stack.

One place per vendor: a folder where the vendor's double has several modules (`segment/`, `heap/`,
`pendo/`, each with the data it generates in `data.py`), a module otherwise (`splunk_hec.py`, `slack.py`).
The population they share lives in `world.py`; `demo_data.DemoData` gathers it and every vendor's data."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from segment_ops.sandbox.app import SandboxConfig, create_app
    from segment_ops.sandbox.server import start_sandbox

__all__ = ["SandboxConfig", "create_app", "start_sandbox"]


def __getattr__(name: str) -> Any:
    if name in ("SandboxConfig", "create_app"):
        from segment_ops.sandbox import app

        return getattr(app, name)
    if name == "start_sandbox":
        from segment_ops.sandbox.server import start_sandbox

        return start_sandbox
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
