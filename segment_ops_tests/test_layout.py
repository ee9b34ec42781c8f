"""The layout's rules, read from the code's own imports: a generic engine, one package per sync that imports
no other sync, and a Heap receiver that loads neither Dagster nor DuckDB."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "segment_ops"
SYNCS = sorted(p.name for p in (PACKAGE / "syncs").iterdir() if p.is_dir() and (p / "__init__.py").exists())


def imports_of(path: Path) -> set[str]:
    """Every module `path` imports, at any depth of its code (lazy imports inside functions count too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def modules(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.py"))


@pytest.mark.parametrize("path", modules(PACKAGE / "engine"), ids=lambda p: p.name)
def test_the_engine_imports_no_dagster_no_sync_and_no_vendor_client_but_the_base(path):
    bad = sorted(m for m in imports_of(path)
                 if m.split(".")[0] == "dagster"
                 or m.startswith(("segment_ops.syncs", "segment_ops.sandbox", "segment_ops.resources",
                                  "segment_ops.definitions"))
                 or (m.startswith("segment_ops.clients.") and m.split(".")[2] != "base"))
    assert bad == [], f"{path.relative_to(PACKAGE.parent)} imports {bad}"


@pytest.mark.parametrize("sync", SYNCS)
def test_no_sync_imports_another(sync):
    others = tuple(f"segment_ops.syncs.{other}" for other in SYNCS if other != sync)
    for path in modules(PACKAGE / "syncs" / sync):
        bad = sorted(m for m in imports_of(path) if m.startswith(others) and m.split(".")[2] in SYNCS)
        assert bad == [], f"{path.relative_to(PACKAGE.parent)} imports {bad}"


def test_the_heap_receiver_loads_neither_dagster_nor_duckdb():
    # It runs as its own small process beside the code location and never touches a staging file.
    code = ("import sys, segment_ops.syncs.heap.server; "
            "print(sorted(m for m in ('dagster', 'duckdb') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("path", modules(PACKAGE / "receivers"), ids=lambda p: p.name)
def test_the_receivers_are_generic_and_import_no_dagster_duckdb_sync_sandbox_or_vendor_client(path):
    # Each vendor's signature and page format live in its sync, which builds on these modules, not back.
    bad = sorted(m for m in imports_of(path)
                 if m.split(".")[0] in ("dagster", "duckdb")
                 or m.startswith(("segment_ops.syncs", "segment_ops.sandbox", "segment_ops.clients")))
    assert bad == [], f"{path.relative_to(PACKAGE.parent)} imports {bad}"


# The tables only the engine's ledger, store and diff may name in SQL (ARCHITECTURE: state behind one door).
ENGINE_STATE_TABLES = ("ledger", "outcomes", "planned_messages", "rejected", "receipts",
                       "receipt_settlements", "read_backs", "rev_state", "rev_snapshot", "rev_changes",
                       "rev_superseded", "state_schema_versions")
# SQL keywords are written in capitals in this code, which tells SQL from prose ("from the ledger").
_SQL_TABLE = re.compile(r"\b(?:FROM|JOIN|INTO|UPDATE|TABLE(?: IF NOT EXISTS)?)[ \t]+(\w+)\b")


@pytest.mark.parametrize("path", [p for p in modules(PACKAGE) if "sandbox" not in p.relative_to(PACKAGE).parts
                                  and p.name not in ("ledger.py", "store.py", "diff.py")],
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_only_the_ledger_the_store_and_the_diff_name_the_engine_state_tables(path):
    named = sorted({t for t in _SQL_TABLE.findall(path.read_text()) if t.lower() in ENGINE_STATE_TABLES})
    assert named == [], (f"{path.relative_to(PACKAGE.parent)} names {named} in SQL: "
                         "go through Ledger or engine.diff")


def test_every_state_table_created_in_the_code_belongs_to_a_registered_schema():
    # Loading the definitions imports every sync, and with it every registration.
    import segment_ops.definitions  # noqa: F401
    from segment_ops.engine import store

    registered = {t for schema in store.registered() for t in schema.tables}
    created = {(t, p.relative_to(PACKAGE).as_posix()) for p in modules(PACKAGE)
               if "sandbox" not in p.relative_to(PACKAGE).parts
               for t in re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", p.read_text())}
    loose = sorted((t, where) for t, where in created if t not in registered and t != "state_schema_versions")
    assert loose == [], f"state tables created outside a registered StateSchema: {loose}"
    assert ({"ledger", "diff", "heap_membership", "pendo_usage", "audit_trail"}
            <= {s.name for s in store.registered()})
