"""`segment-ops models` as an operator runs it: a subprocess on this test's home and demo warehouse, judged by
exit code, output, what the sandbox received and what the model's staging file holds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from segment_ops_tests.reverse_etl.conftest import edit_warehouse, received, run_models, segment_stats

pytestmark = pytest.mark.slow  # each test starts the CLI in a subprocess

VALID_CUSTOMERS = 174  # of the demo warehouse's 178 (2 null user_ids, 2 sharing one)


def models_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "segment_ops.cli", "models", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=120, stdin=subprocess.DEVNULL)


def test_list_shows_every_model(warehouse):
    done = models_cli("list")

    assert done.returncode == 0, done.stderr
    lines = {line.split()[0]: line.split() for line in done.stdout.splitlines()[1:]}
    assert lines["user_traits"][2:6] == ["identify", "upsert", "user_id", "0"]
    assert set(lines) == {"account_traits", "completed_orders", "fullstory_user_traits", "user_traits"}


def test_list_and_validate_report_a_broken_model_naming_its_file(warehouse, models_dir):
    (models_dir / "no_owner.sql").write_text("-- description: a header that lacks most keys\nSELECT 1\n")
    env = {"REVERSE_ETL_MODELS_DIR": str(models_dir)}

    listed, validated = models_cli("list", env=env), models_cli("validate", env=env)

    assert listed.returncode == 1 and validated.returncode == 1
    assert "BROKEN" in listed.stdout and "lacks required key(s): owner" in listed.stdout
    assert f"FAIL {models_dir / 'no_owner.sql'}: the header lacks required key(s)" in validated.stdout
    assert "ok   user_traits" in validated.stdout


def test_validate_compiles_the_query_against_the_warehouse(warehouse, models_dir):
    query = (models_dir / "user_traits.sql").read_text().replace("    plan,\n", "    plan_typo AS plan,\n")
    (models_dir / "user_traits.sql").write_text(query)
    env = {"REVERSE_ETL_MODELS_DIR": str(models_dir)}

    broken, others = models_cli("validate", "user_traits", env=env), models_cli("validate", "account_traits",
                                                                                  env=env)

    assert broken.returncode == 1
    assert f"FAIL {models_dir / 'user_traits.sql'}: the warehouse refused the query" in broken.stdout
    assert "plan_typo" in broken.stdout
    assert others.returncode == 0 and "ok   account_traits" in others.stdout


def test_an_unknown_model_exits_2_naming_the_models(warehouse):
    done = models_cli("preview", "no_such_model")

    assert done.returncode == 2
    assert "no model named no_such_model; the models are: account_traits, completed_orders" in done.stderr


def test_a_duplicate_model_name_across_folders_is_reported_naming_both_files(warehouse, models_dir, tmp_path):
    team = tmp_path / "team"
    team.mkdir()
    (team / "user_traits.sql").write_text((models_dir / "user_traits.sql").read_text())
    env = {"REVERSE_ETL_MODELS_DIR": f"{models_dir}{os.pathsep}{team}"}

    done = models_cli("validate", env=env)

    assert done.returncode == 1
    assert (f"model 'user_traits' is defined 2 times: {models_dir / 'user_traits.sql'}, "
            f"{team / 'user_traits.sql'}") in done.stdout


def test_preview_counts_and_samples_without_sending_or_leaving_state(warehouse, ops_env, clean_sandbox):
    done = models_cli("preview", "user_traits", "--json", "--limit", "7")

    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert (shown["added"], shown["changed"], shown["unchanged"], shown["rejected"], shown["would_send"]) == (
        VALID_CUSTOMERS, 0, 0, 4, VALID_CUSTOMERS)
    assert len(shown["sample_payloads"]) == 7 and shown["sample_payloads"][0]["type"] == "identify"
    assert segment_stats(clean_sandbox) == (0, 0)
    assert not (ops_env / "staging" / "reverse_etl_user_traits.duckdb").exists()


def test_preview_reads_this_homes_state(resources, warehouse, clean_sandbox):
    assert run_models(resources, ["user_traits"]).success
    edit_warehouse(warehouse, "UPDATE customers SET plan = 'enterprise' WHERE user_id = 'usr_0000001'")

    done = models_cli("preview", "user_traits")

    assert done.returncode == 0, done.stderr
    assert f"changed: 1   removed: 0   unchanged: {VALID_CUSTOMERS - 1}" in done.stdout
    assert '"userId":"usr_0000001"' in done.stdout and "would send: 1 " in done.stdout
    assert segment_stats(clean_sandbox) == (VALID_CUSTOMERS, 0)  # the run's only


def test_after_a_baseline_a_run_sends_exactly_the_three_changed_rows(resources, warehouse, clean_sandbox):
    done = models_cli("baseline", "user_traits", "--yes")
    assert done.returncode == 0, done.stderr
    assert f"recorded as delivered (nothing sent): {VALID_CUSTOMERS}" in done.stdout
    assert "baseline cli-baseline-" in done.stderr  # logged as well as shown
    changed = ("usr_0000001", "usr_0000003", "usr_0000005")
    edit_warehouse(warehouse, f"UPDATE customers SET plan = 'adopted' WHERE user_id IN {changed}")

    result = run_models(resources, ["user_traits"])

    assert result.success
    calls = received(clean_sandbox)
    assert sorted(c["userId"] for c in calls) == list(changed)
    assert {c["traits"]["plan"] for c in calls} == {"adopted"}
    assert segment_stats(clean_sandbox) == (3, 0)


def test_a_baseline_is_refused_on_delivered_state_unless_forced(resources, warehouse, clean_sandbox):
    assert run_models(resources, ["user_traits"]).success

    refused = models_cli("baseline", "user_traits", "--yes")
    forced = models_cli("baseline", "user_traits", "--yes", "--force")

    assert refused.returncode == 2
    assert "already has delivered state (174 keys in its snapshot" in refused.stderr
    assert "nothing was recorded" in refused.stderr
    assert forced.returncode == 0, forced.stderr
    assert f"unchanged: {VALID_CUSTOMERS}" in forced.stdout


def test_a_baseline_asks_for_confirmation(warehouse, ops_env):
    done = models_cli("baseline", "user_traits")  # stdin is not a terminal

    assert done.returncode == 2 and "pass --yes to confirm" in done.stderr
    assert not (ops_env / "staging" / "reverse_etl_user_traits.duckdb").exists()


def test_a_baseline_waits_for_a_run_holding_the_staging_file(warehouse, ops_env):
    from segment_ops.engine.store import staging

    path = Path(ops_env) / "staging" / "reverse_etl_user_traits.duckdb"
    path.parent.mkdir(parents=True, exist_ok=True)
    with staging(path):  # a run of the model holds it
        done = models_cli("baseline", "user_traits", "--yes", "--wait", "1")

    assert done.returncode == 2
    assert "still holds" in done.stderr and "nothing was recorded" in done.stderr
