"""Model files: the header is parsed strictly, and every error names the file."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pytest

from segment_ops.resources import build_resources
from segment_ops.syncs.reverse_etl.defs import MODELS_DIR, build_reverse_etl_defs, model_key
from segment_ops.syncs.reverse_etl.model import ModelError, load_models, parse_model

GOOD = """\
-- description: Profile traits of every known customer, for tests.
-- owner: team:growth, data@example.com
-- call: identify
-- mode: upsert
-- key: user_id
-- user_id: user_id
-- schedule: 0 * * * *
-- depends_on: customers, crm.contacts
-- probe: updated_at
-- Free text in the header block is allowed.
SELECT user_id, email, plan, updated_at FROM customers;
"""


def write(tmp_path: Path, text: str, name: str = "model.sql") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_good_header_is_parsed(tmp_path):
    model = parse_model(write(tmp_path, GOOD))

    assert (model.name, model.sync, model.call, model.mode, model.key) == (
        "model", "reverse_etl_model", "identify", "upsert", "user_id")
    assert model.owners == ("team:growth", "data@example.com")
    assert model.depends_on == ("customers", "crm.contacts") and model.probe == "updated_at"
    assert model.sql == "SELECT user_id, email, plan, updated_at FROM customers"
    assert len(model.code_version) == 16


def test_a_fullstory_users_model_sends_to_fullstory_under_its_own_key(tmp_path):
    model = parse_model(write(tmp_path, GOOD.replace("-- user_id: user_id",
                                                     "-- user_id: user_id\n-- destination: Fullstory_Users")))

    assert model.sends_to == "fullstory_users" and model.sync == "reverse_etl_model"
    assert model_key(model.name, model.sends_to) == dg.AssetKey(["fullstory", "reverse_etl", "model"])
    assert parse_model(write(tmp_path, GOOD)).sends_to == "segment"


def test_traits_default_to_every_column_not_mapped_or_excluded(tmp_path):
    model = parse_model(write(tmp_path, GOOD.replace("-- probe: updated_at", "-- exclude: updated_at")))

    assert model.field_columns(["user_id", "email", "plan", "updated_at"]) == ("email", "plan")


def test_the_code_version_follows_the_file(tmp_path):
    first = parse_model(write(tmp_path, GOOD)).code_version

    assert parse_model(write(tmp_path, GOOD.replace("plan,", "plan, country,"))).code_version != first


@pytest.mark.parametrize(("change", "message"), [
    (("-- mode: upsert\n", "-- mdoe: upsert\n"), "unknown header key 'mdoe'"),
    (("-- key: user_id\n", ""), "lacks required key(s): key"),
    (("-- call: identify", "-- call: page"), "call must be one of identify, group, track"),
    (("-- mode: upsert", "-- mode: merge"), "mode must be one of upsert, mirror, append"),
    (("-- owner: team:growth, data@example.com", "-- owner: growth"), "owner 'growth' must be"),
    (("-- user_id: user_id\n", ""), "identify calls need a userId or an anonymousId"),
    (("-- call: identify", "-- call: group"), "group calls need `group_id:`"),
    (("-- call: identify", "-- call: track"), "track calls need exactly one of `event:`"),
    (("-- key: user_id\n", "-- key: user_id\n-- key: email\n"), "header key 'key' is given twice"),
    (("-- schedule: 0 * * * *\n", "-- schedule:\n"), "header key 'schedule' has no value"),
    (("-- depends_on: customers, crm.contacts", "-- depends_on: customers; drop"), "is not a table name"),
    (("SELECT user_id", "SELECT 1; SELECT user_id"), "single statement"),
    (("-- call: identify\n-- mode: upsert", "-- call: track\n-- event: Seen\n-- mode: mirror"),
     "mirror mode clears the traits"),
    (("-- user_id: user_id", "-- user_id: user_id\n-- traits: user_id, email"), "also listed in `traits:`"),
    (("-- user_id: user_id", "-- user_id: user_id\n-- max_rejected_ratio: lots"),
     "max_rejected_ratio must be a number"),
    (("-- user_id: user_id", "-- user_id: user_id\n-- destination: hubspot"),
     "destination must be one of segment, fullstory_users, got 'hubspot'"),
    (("-- call: identify\n-- mode: upsert\n-- key: user_id\n-- user_id: user_id",
      "-- call: track\n-- event: Seen\n-- mode: append\n-- key: user_id\n-- user_id: user_id\n"
      "-- destination: fullstory_users"), "destination fullstory_users takes identify calls"),
    (("-- mode: upsert", "-- mode: mirror\n-- destination: fullstory_users"),
     "destination fullstory_users cannot clear a removed row's user"),
    (("-- user_id: user_id", "-- user_id: user_id\n-- destination: fullstory_users\n"
                             "-- write_key_env: SEGMENT_WRITE_KEY_EU"),
     "write_key_env apply to Segment destinations, not fullstory_users"),
])
def test_a_bad_header_fails_naming_the_file(tmp_path, change, message):
    path = write(tmp_path, GOOD.replace(*change))

    with pytest.raises(ModelError) as raised:
        parse_model(path)

    assert str(raised.value).startswith(f"{path}: ") and message in str(raised.value)


def test_a_file_without_header_or_query_fails(tmp_path):
    with pytest.raises(ModelError, match="no header"):
        parse_model(write(tmp_path, "SELECT 1 AS id\n"))
    with pytest.raises(ModelError, match="no query after the header"):
        parse_model(write(tmp_path, GOOD.split("SELECT")[0]))


def test_a_model_name_must_make_an_asset_key(tmp_path):
    with pytest.raises(ModelError, match="letters, digits and underscores"):
        parse_model(write(tmp_path, GOOD, name="user-traits.sql"))


def test_loading_a_folder_keeps_going_past_a_bad_file(tmp_path):
    write(tmp_path, GOOD, name="a_good.sql")
    write(tmp_path, "-- nothing here\n", name="b_bad.sql")

    found = load_models(tmp_path)

    assert [type(f).__name__ for f in found] == ["ModelSpec", "ModelError"]


def test_the_project_models_parse():
    found = load_models(MODELS_DIR)

    assert sorted(m.name for m in found) == ["account_traits", "completed_orders", "fullstory_user_traits",
                                              "user_traits"]
    assert {(m.name, m.call, m.mode, m.sends_to) for m in found} == {
        ("user_traits", "identify", "upsert", "segment"), ("account_traits", "group", "mirror", "segment"),
        ("completed_orders", "track", "append", "segment"),
        ("fullstory_user_traits", "identify", "upsert", "fullstory_users")}


def test_models_come_from_the_folder_the_environment_names(tmp_path, monkeypatch):
    # Users keep their models in their own repository, not in this package.
    shutil.copy(MODELS_DIR / "user_traits.sql", tmp_path / "user_traits.sql")
    monkeypatch.setenv("REVERSE_ETL_MODELS_DIR", str(tmp_path))

    defs = dg.Definitions.merge(build_reverse_etl_defs(), dg.Definitions(resources=build_resources()))
    keys = {spec.key for spec in defs.resolve_all_asset_specs()}

    assert model_key("user_traits") in keys
    assert model_key("account_traits") not in keys and model_key("completed_orders") not in keys
