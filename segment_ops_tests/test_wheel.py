"""The wheel carries what the code reads at run time: every package, the default config and the example
models.

The end-to-end test builds a wheel from the checkout, installs it into a fresh virtualenv outside the source
tree and runs `segment-ops demo` there, so nothing can be found through the checkout by accident.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# Left out of the copy the wheel is built from: environments, build output, local state.
NOT_SOURCE = (".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache",
              ".dagster_home", ".segment_ops", "*.duckdb", "*.duckdb.wal", "benchmarks")
# Package data the demo reads (pyproject's package-data), as paths in the wheel.
PACKAGE_DATA = ("segment_ops/syncs/heap/heap_audiences.toml", "segment_ops/syncs/pendo/pendo_health.toml",
                "segment_ops/syncs/reverse_etl/sql/README.md")


def run(command: list[str | Path], *, timeout: float, **kwargs) -> subprocess.CompletedProcess[str]:
    """Run `command`; on failure, fail the test with its output."""
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=timeout,
                          **kwargs)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(map(str, command))} exited {done.returncode}\n"
                    f"--- stdout\n{done.stdout[-4000:]}\n--- stderr\n{done.stderr[-4000:]}")
    return done


def test_every_package_is_listed_in_pyproject() -> None:
    # pyproject lists packages by hand (packages.find cannot add sql/reverse_etl/ under another name): a
    # package left out would be missing from the wheel while the checkout works.
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "segment_ops").rglob("__init__.py")
               if "__pycache__" not in p.parts}
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    assert on_disk - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    mapped = PYPROJECT["tool"]["setuptools"]["package-dir"]
    assert listed - on_disk == set(mapped), "listed in pyproject.toml but no such package"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a copy of the checkout (an in-tree build would leave build/ in the checkout,
    and a stale build/lib there could carry deleted modules into the wheel)."""
    source = tmp_path_factory.mktemp("source") / "segment_ops"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    out = tmp_path_factory.mktemp("wheel")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", out, source], timeout=300)
    (built,) = out.glob("segment_ops-*.whl")
    return built


@pytest.mark.e2e
def test_wheel_holds_package_data_and_no_tests(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert set(PACKAGE_DATA) <= names
    models = {Path(n).name for n in names if n.startswith("segment_ops/syncs/reverse_etl/sql/")}
    assert {p.name for p in (ROOT / "sql" / "reverse_etl").glob("*.sql")} <= models
    assert not [n for n in names if n.startswith("segment_ops_tests/")]


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_installed_wheel_runs_the_demo_outside_the_source_tree(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv], timeout=120)
    started = time.monotonic()
    # Dependencies come from the package index (or pip's cache): the wheel alone must be enough.
    run([venv / "bin" / "python", "-m", "pip", "install", "--quiet", "--disable-pip-version-check", wheel],
        timeout=600, cwd=tmp_path)
    print(f"pip install of the wheel and its dependencies: {time.monotonic() - started:.0f} s")

    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    # Nothing from the test's environment: no checkout on sys.path, no override of the packaged defaults.
    env = {"PATH": f"{venv / 'bin'}{os.pathsep}/usr/bin:/bin", "HOME": str(tmp_path),
           "SEGMENT_OPS_HOME": str(tmp_path / "segment_ops_home"),
           "DAGSTER_HOME": str(tmp_path / "dagster_home")}
    where = run([venv / "bin" / "python", "-c", "import segment_ops; print(segment_ops.__file__)"],
                timeout=60, cwd=cwd, env=env)
    assert Path(where.stdout.strip()).is_relative_to(venv)

    demo = run([venv / "bin" / "segment-ops", "demo"], timeout=600, cwd=cwd, env=env)
    table = demo.stdout.split("  sync ", 1)[1].split("\nsandbox recorder:", 1)[0].splitlines()[1:]
    status = {line.split()[0]: line.split()[1] for line in table}
    assert {"reverse_etl", "heap", "pendo"} <= set(status), demo.stdout
    assert set(status.values()) == {"ok"}, demo.stdout
