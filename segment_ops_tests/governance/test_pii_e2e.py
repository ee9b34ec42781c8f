"""The PII policy end to end, through Dagster against the sandbox: a model declaring `pii: hash` sends its
customers' emails hashed (the audit trail's salted hash) and a `pii_fields: name=drop` column not at all;
neither the ledger nor the run metadata keeps the clear values; the default says it changed nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import pytest

from segment_ops.config import SANDBOX_REDACTION_SALT
from segment_ops.engine.pii import hash_pii
from segment_ops.engine.redaction import RedactionRules
from segment_ops.engine.store import staging_file
from segment_ops.resources import build_resources
from segment_ops.syncs.reverse_etl.defs import MODELS_DIR
from segment_ops_tests.reverse_etl.conftest import metadata, received, run_models

pytestmark = pytest.mark.slow
MODEL = "user_traits"  # identify calls with email and name traits


@pytest.fixture
def resources(warehouse: Path, clean_sandbox) -> dict:
    return build_resources()


@pytest.fixture
def models(tmp_path: Path) -> Path:
    """A copy of the project's model files, one of which declares a policy."""
    folder = tmp_path / "models"
    shutil.copytree(MODELS_DIR, folder)
    return folder


def declare(models: Path, *header: str) -> None:
    path = models / f"{MODEL}.sql"
    text = path.read_text()
    lines = "".join(f"{h}\n" for h in header)
    path.write_text(text.replace("-- mode: upsert\n", "-- mode: upsert\n" + lines))


def customers(warehouse: Path) -> dict[str, tuple[str | None, str | None]]:
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        return {uid: (email, name) for uid, email, name in con.execute(
            "SELECT user_id, lower(email), name FROM customers WHERE user_id IS NOT NULL "
            "AND email LIKE '%_@_%._%'").fetchall()}
    finally:
        con.close()


def test_hash_and_drop_reach_neither_segment_nor_the_local_stores(resources, clean_sandbox, warehouse,
                                                                   models, ops_env):
    declare(models, "-- pii: hash", "-- pii_fields: name=drop")
    people = customers(warehouse)

    result = run_models(resources, [MODEL], models_dir=models)

    assert result.success
    sent = {m["userId"]: m["traits"] for m in received(clean_sandbox, 100_000) if m["type"] == "identify"}
    rules = RedactionRules(salt=SANDBOX_REDACTION_SALT)
    checked = 0
    for user_id, (email, _) in people.items():
        if user_id in sent:
            # the audit trail's hash of the same address
            assert sent[user_id]["email"] == hash_pii(email, rules)
            assert "name" not in sent[user_id]
            checked += 1
    assert checked > 100
    meta = metadata(result, MODEL)
    assert meta["pii_hashed_values"] >= checked and meta["pii_dropped_columns"] == "name"
    some_email = next(email for email, _ in people.values())
    assert some_email not in str(meta)
    con = duckdb.connect(str(staging_file(ops_env, f"reverse_etl_{MODEL}")), read_only=True)
    try:
        payloads = " ".join(row[0] for row in con.execute("SELECT payload FROM planned_messages").fetchall())
    finally:
        con.close()
    assert some_email not in payloads and '"name":' not in payloads


def test_the_default_policy_changes_nothing_and_says_so(resources, clean_sandbox, warehouse):
    result = run_models(resources, [MODEL])

    assert result.success
    meta = metadata(result, MODEL)
    assert meta["pii_policy"].startswith("allow (default)") and meta["pii_hashed_values"] == 0
    people = customers(warehouse)
    sent = {m["userId"]: m["traits"] for m in received(clean_sandbox, 100_000) if m["type"] == "identify"}
    assert any(sent.get(uid, {}).get("email") == email for uid, (email, _) in people.items())
