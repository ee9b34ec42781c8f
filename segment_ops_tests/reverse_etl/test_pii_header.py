"""A model's PII policy in its header (`-- pii:` and `-- pii_fields:`), read strictly like every other key."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import duckdb
import pytest

from segment_ops.engine.pii import PiiPolicy, apply_pii_policy
from segment_ops.engine.warehouse import stage_query
from segment_ops.syncs.reverse_etl.model import ModelError, load_models, packaged_models_dir, parse_model
from segment_ops_tests.reverse_etl.conftest import IDENTIFY_HEADER as HEADER

QUERY = "SELECT user_id, email, phone, name, plan FROM customers\n"


def model(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "people.sql"
    path.write_text(HEADER + "".join(f"-- {line}\n" for line in lines) + QUERY)
    return path


def test_the_header_declares_the_default_and_per_column_actions(tmp_path):
    spec = parse_model(model(tmp_path, "pii: hash", "pii_fields: phone=drop, name=allow"))

    assert spec.pii == PiiPolicy("hash", {"phone": "drop", "name": "allow"})


def test_without_a_pii_header_the_policy_is_the_default(tmp_path):
    assert parse_model(model(tmp_path)).pii.is_default


def test_the_projects_models_keep_the_default_policy():
    models = load_models(packaged_models_dir())

    assert models and all(not isinstance(m, ModelError) and m.pii.is_default for m in models)


def test_the_policy_is_part_of_the_models_code_version(tmp_path):
    plain = parse_model(model(tmp_path)).code_version

    assert parse_model(model(tmp_path, "pii: hash")).code_version != plain


@pytest.mark.parametrize(("lines", "message"), [
    (("pii: encrypt",), "people.sql: pii: unknown PII action 'encrypt' for the default; one of allow, hash"),
    (("pii: hash, phone=drop",), "per-column actions go in `pii_fields:` (e.g. phone=drop)"),
    (("pii_fields: phone",), "pii_fields: PII fields are column=action items separated by commas"),
    (("pii_fields: phone=mask",), "pii_fields: unknown PII action 'mask' for column 'phone'"),
    (("pii_fields: phone=drop, phone=hash",), "pii_fields: the PII policy names column 'phone' twice"),
    (("pii_feilds: phone=drop",), "unknown header key 'pii_feilds'"),
    (("pii: hash", "pii: drop"), "header key 'pii' is given twice"),
])
def test_a_policy_that_cannot_be_read_is_an_error_naming_the_file(tmp_path, lines, message):
    with pytest.raises(ModelError) as raised:
        parse_model(model(tmp_path, *lines))

    assert message in str(raised.value) and str(raised.value).startswith(str(tmp_path / "people.sql"))


@pytest.mark.parametrize(("lines", "message"), [
    (("pii_fields: user_id=hash",), "pii_fields: user_id=hash would change the key and userId column; "
                                    "identity columns are never hashed or dropped"),
    (("pii_fields: phone=drop", "exclude: phone"), "pii_fields: 'phone' is excluded, so not sent"),
    (("pii_fields: phone=drop", "traits: email, plan"),
     "pii_fields: 'phone' is not among the traits (email, plan): nothing to hash or drop"),
])
def test_a_policy_that_does_not_fit_the_header_is_an_error(tmp_path, lines, message):
    with pytest.raises(ModelError, match="people.sql") as raised:
        parse_model(model(tmp_path, *lines))

    assert message in str(raised.value)


def test_allowing_an_identity_column_is_accepted(tmp_path):
    assert parse_model(model(tmp_path, "pii_fields: user_id=allow")).pii.named == {"user_id": "allow"}


def test_a_policy_naming_a_column_the_query_does_not_return_fails_the_column_check(tmp_path):
    spec = parse_model(model(tmp_path, "pii_fields: fax=drop"))

    with pytest.raises(ModelError, match="pii_fields: the PII policy names column.s. the rows do not have: "
                                         "fax"):
        spec.check_columns(["user_id", "email", "phone", "name", "plan"])
    spec.check_columns(["user_id", "email", "phone", "name", "plan", "fax"])


def test_the_parsed_policy_applies_to_the_models_staged_rows(tmp_path):
    warehouse = tmp_path / "warehouse.duckdb"
    with duckdb.connect(str(warehouse)) as con:
        con.execute("CREATE TABLE customers AS SELECT * FROM (VALUES ('u1', 'Ann@X.com', '+1 415 555 0100', "
                    "'Ann', 'pro')) t(user_id, email, phone, name, plan)")
    spec = parse_model(model(tmp_path, "pii: hash", "pii_fields: phone=drop, name=allow"))
    con = duckdb.connect()

    staged = stage_query(con, f"duckdb:///{warehouse}", spec.sql, "staged")
    result, report = apply_pii_policy(con, staged, spec.diff_spec, spec.pii, salt="header-salt")

    digest = hmac.new(b"header-salt", b"ann@x.com", hashlib.sha256).hexdigest()
    assert spec.field_columns(result.columns) == ("email", "name", "plan")
    assert con.execute("SELECT email, name, plan FROM staged").fetchall() == [
        (f"sha256:{digest}", "Ann", "pro")]
    assert report.dropped == ("phone",)
