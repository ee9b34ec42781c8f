"""The outcome journal: one append-only file per delivery beside the staging file, so a killed run loses no
acknowledged outcome (issue 16).

The ledger is written about once a second (a DuckDB commit per batch costs more than sending the batch);
between those writes, each batch is appended here as one line before it is handed over (its seqs) and once
its answer is known (its outcomes). A process killed at any point (SIGKILL, OOM) leaves the lines the OS
already holds, so the next reader of the ledger (`Ledger.recover`) logs the outcomes, and marks the batches
that never got an answer as handed over (possibly sent), before anything reads what is pending. A line cut
short by the kill is the last one, and is ignored. Each ledger write is followed by writing the journal anew
(by rename) without the batches it logged.

`fsync=True` also survives a crash of the machine: each answer is on disk before its batch counts as
answered (about 3 ms a batch on the CI machine's disk). Without it the OS writes the lines back in its own
time: a killed process loses none of them, a crashed machine may.
"""

from __future__ import annotations

import glob
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

import duckdb
import orjson

SUFFIX = ".outcomes.jsonl"
VERSION = 1

# Journals being written by a delivery of this process: never replayed under it. (Another process cannot
# write the same staging file: DuckDB locks it for one writer.)
_LIVE: set[Path] = set()
_LIVE_LOCK = threading.Lock()


def staging_path(con: duckdb.DuckDBPyConnection) -> Path | None:
    """The file behind `con`'s database (None: in memory, where a crash loses the ledger too)."""
    row = con.execute("SELECT path FROM duckdb_databases() "
                      "WHERE database_name = current_database()").fetchone()
    return Path(row[0]).resolve() if row and row[0] else None


def journal_path(staging: Path, sync: str) -> Path:
    """`<staging file>.<sync, %-quoted>.outcomes.jsonl`."""
    return staging.with_name(f"{staging.name}.{quote(sync, safe='')}{SUFFIX}")


def leftovers(staging: Path) -> list[Path]:
    """Journals beside `staging` that no delivery of this process is writing: left by a run that stopped."""
    found = staging.parent.glob(f"{glob.escape(staging.name)}.*{SUFFIX}")
    with _LIVE_LOCK:
        return sorted(p for p in found if p not in _LIVE)


@dataclass
class Replayed:
    """What a journal holds, read up to its last complete line."""

    sync: str
    mark: int  # outcome ids above this were logged after the journal began
    destination: str
    run_id: str | None
    outcomes: list[tuple] = field(default_factory=list)  # as `Ledger.log_outcomes` takes them
    unanswered: list[int] = field(default_factory=list)  # seqs handed over whose answer is not here
    torn: bool = False  # the last line was cut short (the process died writing it)


def read(path: Path) -> Replayed | None:
    """The journal at `path`, up to its last complete line (None: not even its header is complete)."""
    data = path.read_bytes()
    lines = data.split(b"\n")
    complete, torn = lines[:-1], bool(lines[-1])  # no newline after the last line: cut short
    records = []
    for line in complete:
        try:
            records.append(orjson.loads(line))
        except orjson.JSONDecodeError:  # only a crash of the machine leaves a bad line before the end
            torn = True
            break
    try:
        header = records[0]
        replayed = Replayed(str(header["sync"]), int(header["mark"]), str(header["destination"]),
                            header.get("run_id"), torn=torn)
    except (IndexError, KeyError, TypeError, ValueError):  # not a journal this release wrote
        return None
    handed: dict[int, list[int]] = {}
    for record in records[1:]:
        try:
            if "sent" in record:
                handed[int(record["b"])] = [int(seq) for seq in record["sent"]]
            else:
                done = [_outcome(o) for o in record["done"]]
                handed.pop(int(record["b"]), None)
                replayed.outcomes.extend(done)
        except (KeyError, TypeError, ValueError):  # a line no delivery writes: read no further
            replayed.torn = True
            break
    replayed.unanswered = [seq for seqs in handed.values() for seq in seqs]
    return replayed


def _outcome(row: list) -> tuple:
    if not isinstance(row, list) or not 4 <= len(row) <= 6:
        raise ValueError(f"not an outcome: {row!r:.80}")
    if len(row) == 6 and row[5] is not None:  # awaiting_ack: receipt and when the request began
        return (*row[:5], datetime.fromisoformat(row[5]))
    return tuple(row)


class Journal:
    """The journal one delivery writes: `handed_over` before a batch is sent, `answered` (from the thread that
    sent it) as soon as its outcomes are known, `flushed` once some batches' outcomes are in the ledger (the
    file is written anew without them), `close` at the end (`remove=True`: everything reached the ledger).
    Thread-safe."""

    def __init__(self, path: Path, *, sync: str, mark: int, destination: str, run_id: str | None,
                 fsync: bool = False) -> None:
        self.path, self.fsync, self._batches = path, fsync, 0
        self._lock = threading.Lock()
        self._lines: dict[int, bytes] = {}  # per batch not yet in the ledger: its latest line
        with _LIVE_LOCK:
            _LIVE.add(path)
        self._header = orjson.dumps({"sync": sync, "mark": mark, "destination": destination, "run_id": run_id,
                                     "v": VERSION}) + b"\n"
        try:
            self._fd = self._write_anew()
        except BaseException:
            with _LIVE_LOCK:
                _LIVE.discard(path)
            raise

    def handed_over(self, seqs: Sequence[int]) -> int:
        """Note a batch about to be sent; returns its number, for `answered`."""
        with self._lock:
            self._batches += 1
            line = self._lines[self._batches] = orjson.dumps({"b": self._batches, "sent": list(seqs)}) + b"\n"
            self._append(line, sync_to_disk=False)
            return self._batches

    def answered(self, batch: int, outcomes: Sequence[tuple]) -> None:
        """Note batch `batch`'s outcomes (as `Ledger.log_outcomes` takes them), in one write."""
        line = orjson.dumps({"b": batch, "done": outcomes}) + b"\n"
        with self._lock:
            self._lines[batch] = line
            self._append(line, sync_to_disk=self.fsync)

    def flushed(self, batches: Sequence[int]) -> None:
        """The outcomes of `batches` are in the ledger: write the file anew without them (atomically, by
        rename), keeping the batches on the wire and those answered since."""
        with self._lock:
            for batch in batches:
                self._lines.pop(batch, None)
            old, self._fd = self._fd, self._write_anew()
            os.close(old)

    def close(self, *, remove: bool) -> None:
        with self._lock:
            os.close(self._fd)
            if remove:
                self.path.unlink(missing_ok=True)
        with _LIVE_LOCK:
            _LIVE.discard(self.path)

    def _write_anew(self) -> int:
        """The header and the lines still needed, in a new file renamed over the journal; its descriptor."""
        fresh = self.path.with_name(self.path.name + ".new")
        fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        self._fd = fd
        self._append(self._header + b"".join(self._lines.values()), sync_to_disk=self.fsync)
        os.replace(fresh, self.path)
        if self.fsync:  # the rename too
            directory = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        return fd

    def _append(self, data: bytes, *, sync_to_disk: bool) -> None:
        # O_APPEND, one write at a time: a kill leaves every line whole but perhaps the last, cut short.
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]
        if sync_to_disk:
            os.fsync(self._fd)
