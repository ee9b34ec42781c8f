"""The Dagster UI as a user drives it: headless Chromium (Debian's, through Playwright) on `dagster dev`.

Opens the global asset lineage and checks that every asset group of the code location is drawn, then
materializes one reverse-ETL model from its asset page, follows the run to Success, and checks what the
sandbox's Segment received. Screenshots go to the pytest tmp dir and, when SEGMENT_OPS_SCREENSHOTS is
set, to that folder too (the README's `docs/asset-graph.png` is refreshed this way).

Playwright's own browser downloads are never used: Chromium comes from the OS (`apt-get install
chromium`, done by `.ci/run`). Without it the tests skip locally and fail under CI.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from segment_ops.definitions import defs
from segment_ops.syncs.reverse_etl.defs import model_key
from segment_ops_tests.ops.conftest import PROJECT_ROOT, DagsterDev

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1600, "height": 1000}
UI_TIMEOUT_MS = 30_000
RUN_TIMEOUT_MS = 180_000
MODEL = "account_traits"  # a group call per account: cheap, unpartitioned, no upstream asset to run first

if not CHROMIUM.exists():
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{CHROMIUM} is missing under CI: .ci/run installs Debian's chromium package",
                    pytrace=False)
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install -y chromium); the browser tests need it",
                allow_module_level=True)

from playwright.sync_api import Page, expect, sync_playwright  # noqa: E402 - only once chromium exists


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Path]]:
    """Where screenshots are saved; copied to $SEGMENT_OPS_SCREENSHOTS (when set) at the end."""
    taken: list[Path] = []
    yield taken
    target = os.environ.get("SEGMENT_OPS_SCREENSHOTS")
    if target:
        folder = Path(target)
        folder = folder if folder.is_absolute() else PROJECT_ROOT / folder
        folder.mkdir(parents=True, exist_ok=True)
        for shot in taken:
            shutil.copy2(shot, folder / shot.name)


@pytest.fixture(scope="module")
def page(dagster_dev: DagsterDev, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    """A page of a fresh Chromium profile, with the UI's one-time community dialog dismissed when it shows."""
    profile = tempfile.mkdtemp(prefix="chromium-profile-", dir=tmp_path_factory.getbasetemp())
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS, viewport=VIEWPORT)
        context.set_default_timeout(UI_TIMEOUT_MS)
        page = context.new_page()
        community = page.get_by_role("dialog").filter(has_text="Join the Dagster community")
        page.add_locator_handler(community, lambda dialog: dialog.get_by_role("button", name="Skip").click())
        try:
            yield page
        finally:
            context.close()


def shoot(page: Page, screenshots: list[Path], tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    folder = tmp_path_factory.getbasetemp() / "screenshots"
    folder.mkdir(exist_ok=True)
    path = folder / name
    page.screenshot(path=str(path))
    screenshots.append(path)
    return path


def asset_groups() -> set[str]:
    """Every asset group the code location declares (Heap and Pendo included as they land)."""
    return {spec.group_name for spec in defs().resolve_all_asset_specs() if spec.group_name}


def test_the_asset_graph_shows_every_asset_group(dagster_dev, page, screenshots, tmp_path_factory):
    groups = asset_groups()

    page.goto(f"{dagster_dev.url}/asset-groups")

    graph = page.locator("svg foreignObject")
    for group in sorted(groups):
        expect(graph.get_by_text(group, exact=True).first).to_be_visible()
    assert {"replay", "reverse_etl", "audit_trail", "warehouse"} <= groups
    expect(graph.get_by_text("fetching statuses")).to_have_count(0)  # the picture shows the groups' statuses
    shoot(page, screenshots, tmp_path_factory, "asset-graph.png")


@pytest.fixture(scope="module")
def ui_run(dagster_dev, page, screenshots, tmp_path_factory) -> str:
    """Materialize the model as a user does: its asset page, "Materialize", then "View" on the toast."""
    page.goto(f"{dagster_dev.url}/assets/{'/'.join(model_key(MODEL).path)}")
    shoot(page, screenshots, tmp_path_factory, "asset-page.png")
    page.get_by_role("button", name=re.compile(r"Materialize$")).click()
    view = page.get_by_role("link", name="View", exact=True)
    expect(view).to_have_attribute("href", re.compile(r"^/runs/[0-9a-f-]{36}$"))
    view.click()
    expect(page).to_have_url(re.compile(r"/runs/[0-9a-f-]{36}$"))
    return page.url.rsplit("/", 1)[-1]


def test_a_model_materialized_from_its_asset_page_shows_success_on_its_run_page(
        dagster_dev, page, ui_run, screenshots, tmp_path_factory):
    expect(page.get_by_role("img", name="run_success").first).to_be_visible(timeout=RUN_TIMEOUT_MS)
    shoot(page, screenshots, tmp_path_factory, "run-success.png")
    assert dagster_dev.wait_for_run(ui_run, timeout=10) == "SUCCESS"


def test_a_model_materialized_from_the_ui_reaches_segment_once_per_account(dagster_dev, ui_run):
    assert dagster_dev.wait_for_run(ui_run, timeout=RUN_TIMEOUT_MS / 1000) == "SUCCESS"
    sql = (PROJECT_ROOT / "sql" / "reverse_etl" / f"{MODEL}.sql").read_text()
    with duckdb.connect(str(dagster_dev.segment_ops_home / "demo_warehouse.duckdb"), read_only=True) as con:
        expected = {row[0] for row in con.execute(
            f"SELECT account_id FROM ({sql}) WHERE first_user_id IS NOT NULL").fetchall()}

    received = Counter(item["groupId"] for item in dagster_dev.sandbox.received("segment", limit=100_000)
                       if item.get("type") == "group")

    assert expected and set(received) == expected
    assert set(received.values()) == {1}
