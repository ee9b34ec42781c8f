"""The deployment instance config (`deploy/dagster.yaml`): valid for this Dagster, the same as the project's
`dagster.yaml` in everything but its storage, and on PostgreSQL through dagster-postgres.

That it runs (webserver, daemon, runs, a backfill, sensors on a real PostgreSQL) is
segment_ops_tests/deploy/test_dagster_postgres_e2e.py.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from dagster._config import process_config
from dagster._core.instance.config import dagster_instance_config, dagster_instance_config_schema
from dagster_postgres.utils import pg_url_from_config

ROOT = Path(__file__).resolve().parents[1]
PG_ENV = {"DAGSTER_PG_HOST": "db.internal", "DAGSTER_PG_PORT": "6432", "DAGSTER_PG_DB": "dagster",
          "DAGSTER_PG_USERNAME": "dagster", "DAGSTER_PG_PASSWORD": "s3cret"}


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_the_deployment_config_is_valid_for_this_dagster(monkeypatch):
    for name, value in PG_ENV.items():
        monkeypatch.setenv(name, value)

    config, _ = dagster_instance_config(str(ROOT / "deploy"), "dagster.yaml")  # raises on an invalid file
    resolved = process_config(dagster_instance_config_schema(), config)

    assert resolved.success, resolved.errors
    assert pg_url_from_config(resolved.value["storage"]["postgres"]) == (
        "postgresql+psycopg2://dagster:s3cret@db.internal:6432/dagster")


def test_the_deployment_config_names_no_secret_and_no_host_of_its_own():
    db = load(ROOT / "deploy" / "dagster.yaml")["storage"]["postgres"]["postgres_db"]

    assert {key: value for key, value in db.items() if key != "scheme"} == {
        "hostname": {"env": "DAGSTER_PG_HOST"}, "port": {"env": "DAGSTER_PG_PORT"},
        "db_name": {"env": "DAGSTER_PG_DB"}, "username": {"env": "DAGSTER_PG_USERNAME"},
        "password": {"env": "DAGSTER_PG_PASSWORD"}}


def test_the_two_configs_differ_only_in_storage():
    """Queue, pools and run monitoring are the project's (pools keep two runs of one sync apart)."""
    project, deployment = load(ROOT / "dagster.yaml"), load(ROOT / "deploy" / "dagster.yaml")

    assert {key: value for key, value in deployment.items() if key != "storage"} == project
