"""REVERSE_ETL_MODELS_DIR with several folders: models load from each in order, a name defined twice is an
error naming both files, and a broken model is reported once per process, not at every definitions load."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import dagster as dg
import pytest

from segment_ops.syncs.reverse_etl.defs import MODELS_DIR, build_reverse_etl_defs, model_key
from segment_ops.syncs.reverse_etl.model import ModelError, ModelSpec, load_models, model_folders
from segment_ops_tests.reverse_etl.conftest import step_failure

BROKEN = "-- description: a model with nothing else in its header\nSELECT 1\n"


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """The project's models, and a team's folder with one model of its own."""
    team = tmp_path / "team"
    team.mkdir()
    text = (MODELS_DIR / "user_traits.sql").read_text()
    (team / "team_traits.sql").write_text(text)
    return MODELS_DIR, team


def test_a_setting_names_several_folders_separated_by_the_path_separator(folders):
    examples, team = folders
    assert model_folders(f"{examples}{os.pathsep}{team}{os.pathsep}") == [examples, team]
    assert model_folders(examples) == [examples]  # a Path is one folder


def test_models_load_from_each_folder_in_order(folders):
    examples, team = folders
    found = load_models(f"{examples}{os.pathsep}{team}")

    assert all(isinstance(m, ModelSpec) for m in found)
    assert [m.name for m in found] == ["account_traits", "completed_orders", "fullstory_user_traits",
                                      "user_traits", "team_traits"]


def test_two_models_of_the_same_name_are_one_error_naming_both_files(folders):
    examples, team = folders
    shutil.copy(examples / "account_traits.sql", team / "account_traits.sql")

    found = load_models([examples, team])

    [error] = [m for m in found if isinstance(m, ModelError)]
    assert str(examples / "account_traits.sql") in error.problem
    assert str(team / "account_traits.sql") in error.problem
    assert [m.name for m in found if isinstance(m, ModelSpec)] == [
        "completed_orders", "fullstory_user_traits", "user_traits", "team_traits"]


def test_a_duplicate_name_becomes_a_broken_asset_under_its_key_and_the_location_loads(folders):
    examples, team = folders
    shutil.copy(examples / "user_traits.sql", team / "user_traits.sql")

    defs = build_reverse_etl_defs(f"{examples}{os.pathsep}{team}")

    descriptions = {k: d for a in defs.assets if isinstance(a, dg.AssetsDefinition)
                    for k, d in a.descriptions_by_key.items()}
    described = descriptions[model_key("user_traits")]
    assert described.startswith("BROKEN reverse-ETL model: ")
    assert str(examples / "user_traits.sql") in described and str(team / "user_traits.sql") in described
    assert not descriptions[model_key("team_traits")].startswith("BROKEN")


def test_a_broken_model_is_warned_about_once_per_process(tmp_path, caplog):
    (tmp_path / "warned_once.sql").write_text(BROKEN)
    caplog.set_level(logging.WARNING, logger="segment_ops.reverse_etl")

    for _ in range(3):  # Dagster builds the definitions many times per command
        build_reverse_etl_defs(tmp_path)

    warnings = [r.getMessage() for r in caplog.records if "warned_once.sql" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].startswith("reverse-ETL model not loaded: ")


def test_a_changed_problem_of_the_same_file_is_warned_about_again(tmp_path, caplog):
    path = tmp_path / "warned_twice.sql"
    path.write_text(BROKEN)
    caplog.set_level(logging.WARNING, logger="segment_ops.reverse_etl")
    build_reverse_etl_defs(tmp_path)
    path.write_text("no header at all\n")
    build_reverse_etl_defs(tmp_path)

    assert len([r for r in caplog.records if "warned_twice.sql" in r.getMessage()]) == 2


@pytest.mark.slow
def test_a_broken_models_run_fails_leading_with_the_file_and_its_problem(tmp_path, ops_env):
    (tmp_path / "broken_run.sql").write_text(BROKEN)
    defs = build_reverse_etl_defs(tmp_path)
    assets = [a for a in defs.assets if isinstance(a, dg.AssetsDefinition)]

    result = dg.materialize(assets, selection=[model_key("broken_run")], raise_on_error=False)

    assert not result.success
    assert step_failure(result, "broken_run").description.startswith(
        f"{tmp_path / 'broken_run.sql'}: the header lacks required key(s): owner, call, mode, key")
    # The error the UI shows leads with our message, not "dagster._core.definitions.events.Failure: ".
    [event] = [e for e in result.all_events if e.is_step_failure]
    assert event.step_failure_data.error.message.startswith(f"segment_ops: {tmp_path / 'broken_run.sql'}: ")
