"""The PII policy (issue 20, part 3): columns and values classified as personal data are hashed or dropped in
the staged rows before the diff, so they never reach the ledger, the snapshot or Segment."""

from __future__ import annotations

import hashlib
import hmac

import duckdb
import orjson
import pytest

from segment_ops.engine import pii
from segment_ops.engine.diff import ensure_state, plan_changes
from segment_ops.engine.ledger import Ledger
from segment_ops.engine.pii import (
    PiiPolicy,
    PiiPolicyError,
    apply_pii_policy,
    hash_pii,
    pii_name_kind,
)
from segment_ops.engine.redaction import PREFIXED_TOKEN_PATTERNS, RedactionRules
from segment_ops.engine.spec import DiffSpec
from segment_ops.engine.warehouse import UNSERIALISABLE_COLUMN, describe_staged
from segment_ops_tests.engine.conftest import stage_columns

SALT = "test-salt"
SPEC = DiffSpec(sync="people", source="people.sql", call="identify", mode="upsert", key="user_id",
                user_id="user_id")


def known(text: str, salt: str = SALT) -> str:
    """The expected hash, computed with the standard library alone (not with the code under test)."""
    return "sha256:" + hmac.new(salt.encode(), text.encode(), hashlib.sha256).hexdigest()


@pytest.fixture
def con():
    connection = duckdb.connect()
    yield connection
    connection.close()


def stage(con, **columns):
    """Stage `columns` ({name: (DuckDB type, values)}) after a user_id column u0, u1, ..."""
    rows = len(next(iter(columns.values()))[1])
    return stage_columns(con, "staged", {"user_id": ("VARCHAR", [f"u{i}" for i in range(rows)]), **columns})


def _pii_tables(con):
    """The policy's own temp tables left behind (none, once it returned or raised)."""
    return con.execute("SELECT table_name FROM duckdb_tables() WHERE table_name LIKE 'segment_ops_pii%'"
                       ).fetchall()


def column(con, name):
    return [v for (v,) in con.execute(f'SELECT "{name}" FROM staged ORDER BY user_id').fetchall()]


# --- the policy as written --------------------------------------------------------------------------------

def test_a_header_policy_reads_its_default_and_its_fields():
    policy = PiiPolicy.parse("Hash", "phone=drop, name = allow")

    assert (policy.default, policy.named) == ("hash", {"phone": "drop", "name": "allow"})
    assert policy.describe() == "hash (PII by column name and value), name=allow, phone=drop"


@pytest.mark.parametrize(("build", "message"), [
    (lambda: PiiPolicy.parse("encrypt"), "unknown PII action 'encrypt' for the default; one of allow, hash"),
    (lambda: PiiPolicy.parse("hash", "phone=mask"), "unknown PII action 'mask' for column 'phone'"),
    (lambda: PiiPolicy.parse(None, "phone"), "column=action items separated by commas"),
    (lambda: PiiPolicy.parse(None, "phone=drop, =hash"), "got '=hash'"),
    (lambda: PiiPolicy.parse(None, "phone=drop, phone=hash"), "names column 'phone' twice"),
])
def test_a_policy_that_cannot_be_read_is_refused_saying_why(build, message):
    with pytest.raises(PiiPolicyError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build()


@pytest.mark.parametrize(("name", "kind"), [
    ("email", "email"), ("work_email", "email"), ("actorEmail", "email"), ("email_address", "email"),
    ("phone_number", "phone"), ("mobile", "phone"), ("name", "person name"), ("first_name", "person name"),
    ("lastName", "person name"), ("ip", "ip address"), ("clientIP", "ip address"), ("ipv4", "ip address"),
    ("billing_address_line1", "postal address"), ("zip", "postal address"), ("date_of_birth", "birth date"),
    ("ssn", "national id"), ("api_key", "credential"), ("password", "credential"),
    ("plan_name", None), ("account_id", None), ("email_verified", None), ("is_vip", None), ("plan", None),
    ("tooltip", None), ("company", None), ("lifetime_value", None),
])
def test_a_column_name_says_what_it_holds(name, kind):
    assert pii_name_kind(name) == kind


# --- applying it --------------------------------------------------------------------------------------------

def test_the_default_policy_changes_nothing_and_runs_no_query():
    staged = stage_columns(duckdb.connect(), "staged", {"user_id": ("VARCHAR", ["u0"]),
                                                         "email": ("VARCHAR", ["ann@x.com"])})

    result, report = apply_pii_policy(None, staged, SPEC, PiiPolicy())  # type: ignore[arg-type]

    assert result is staged and not report.changed
    assert report.summary() == "allow (default): nothing changed; named like PII and sent as they are: email"
    assert report.as_metadata()["pii_policy"] == "allow (default)"


def test_a_hashed_email_is_the_redaction_engines_hash_of_the_trimmed_case_folded_address(con):
    staged = stage(con, email=("VARCHAR", [" Ann@X.com\t", "ann%40x.com", "ÉVE@x.com", "bob\uff20y.org"]))

    apply_pii_policy(con, staged, SPEC, PiiPolicy("hash"), salt=SALT)

    expected = [known("ann@x.com"), known("ann@x.com"), known("éve@x.com"), known("bob@y.org")]
    assert column(con, "email") == expected
    # the audit trail's SIEM gets the same hash for the same address, so the two still join
    assert RedactionRules(salt=SALT).redact({"note": "by Ann@X.com"})["note"] == f"by {expected[0]}"


def test_hashing_in_duckdb_matches_hashing_in_python_for_awkward_values(con):
    values = ["a@b.co", " A@B.CO ", "\x1ca@b.co\x1f", "\x0bA@b.co\x0c\r\n", "Ann Lee", " Ann Lee ", "", "a@b",
              "x%41@b.co", "İstanbul@x.com", "ß@straße.de", "émile", "a@b.co\u00a0", "100%",
              "+1 415 555 0100"]
    staged = stage(con, email=("VARCHAR", values))
    rules = RedactionRules(salt=SALT)

    apply_pii_policy(con, staged, SPEC, PiiPolicy("hash"), salt=SALT)

    by_key = dict(con.execute("SELECT user_id, email FROM staged").fetchall())
    assert [by_key[f"u{i}"] for i in range(len(values))] == [hash_pii(v, rules) for v in values]


def test_a_value_that_is_not_an_email_is_hashed_as_it_is(con):
    staged = stage(con, name=("VARCHAR", ["Ann Lee", " ann lee"]))

    apply_pii_policy(con, staged, SPEC, PiiPolicy("hash"), salt=SALT)

    assert column(con, "name") == [known("Ann Lee"), known(" ann lee")]


def test_nulls_stay_null_and_are_not_counted(con):
    staged = stage(con, email=("VARCHAR", ["a@b.co", None, None]), phone=("VARCHAR", [None, None, None]))

    _, report = apply_pii_policy(con, staged, SPEC, PiiPolicy("hash"), salt=SALT)

    assert column(con, "email") == [known("a@b.co"), None, None] and column(con, "phone") == [None] * 3
    assert {c.column: c.values for c in report.columns} == {"email": 1, "phone": 0}


def test_a_non_string_column_named_like_pii_is_hashed_as_its_text(con):
    staged = stage(con, phone=("BIGINT", [14155550100, None]), birth_date=("DATE", ["1990-01-02", None]))

    result, _ = apply_pii_policy(con, staged, SPEC, PiiPolicy("hash"), salt=SALT)

    assert column(con, "phone") == [known("14155550100"), None]
    assert column(con, "birth_date") == [known("1990-01-02"), None]
    assert (result.types["phone"], result.types["birth_date"]) == ("VARCHAR", "VARCHAR")


def test_a_dropped_column_leaves_the_staged_rows_and_the_declared_fields(con):
    spec = DiffSpec(sync="people", source="people.sql", call="identify", mode="upsert", key="user_id",
                    user_id="user_id", fields=("phone", "plan"))
    staged = stage(con, phone=("VARCHAR", ["+1 415 555 0100", None]), plan=("VARCHAR", ["pro", "free"]))

    result, report = apply_pii_policy(con, staged, spec, PiiPolicy("drop"), salt=SALT)

    assert result.columns == ("user_id", "plan") and "phone" not in result.types
    assert "phone" not in [d[0] for d in con.execute("SELECT * FROM staged").description]
    assert report.dropped == ("phone",) and report.dropped_values == 1
    assert report.spec_without_dropped(spec).fields == ("plan",)
    assert report.summary() == "drop (PII by column name and value): phone: dropped (1 value left out)"


def test_a_field_the_policy_allows_is_sent_as_it_is(con):
    staged = stage(con, email=("VARCHAR", ["a@b.co"]), name=("VARCHAR", ["Acme Inc"]))

    _, report = apply_pii_policy(con, staged, SPEC, PiiPolicy("hash", {"name": "allow"}), salt=SALT)

    assert column(con, "name") == ["Acme Inc"] and column(con, "email") == [known("a@b.co")]
    assert [(c.column, c.action, c.why) for c in report.columns] == [
        ("email", "hash", "name: email"), ("name", "allow", "named in the policy")]


def test_a_column_name_that_needs_quoting_is_handled(con):
    con.execute("CREATE TEMP TABLE staged AS SELECT 'u0' AS user_id, 'A@B.co' AS \"Work \"\"E-mail\"\"\"")
    staged = describe_staged(con, "staged", "test")

    result, _ = apply_pii_policy(con, staged, SPEC, PiiPolicy("hash"), salt=SALT)

    assert column(con, 'Work ""E-mail""') == [known("a@b.co")] and result.columns[1] == 'Work "E-mail"'


def test_a_field_the_policy_names_is_hashed_whatever_its_name(con):
    staged = stage(con, company=("VARCHAR", ["Acme"]), plan=("VARCHAR", ["pro"]))

    apply_pii_policy(con, staged, SPEC, PiiPolicy(fields={"company": "hash"}), salt=SALT)

    assert column(con, "company") == [known("Acme")] and column(con, "plan") == ["pro"]


def test_the_value_patterns_hash_only_the_pii_inside_matching_values(con):
    notes = ["ping Ann@X.com today", "plain note", "call +44 20 7946 0958", "key sk_live_abcdefgh1234",
             "order 12345", "id 0b0e4c2a-8d1f-4a51-9c3e-2f6d7a8b9c0d", None]
    staged = stage(con, notes=("VARCHAR", notes))

    _, report = apply_pii_policy(con, staged, SPEC, PiiPolicy("hash"), salt=SALT)

    assert column(con, "notes") == [
        f"ping {known('ann@x.com')} today", "plain note", f"call {known('+44 20 7946 0958')}",
        f"key {known('sk_live_abcdefgh1234')}", "order 12345", notes[5], None]
    (notes_report,) = report.columns
    assert (notes_report.scope, notes_report.values) == ("values", 3)
    assert notes_report.why == "values: email, phone, token or credential"


def test_the_value_patterns_under_drop_null_only_the_matching_values(con):
    staged = stage(con, notes=("VARCHAR", ["mail a@b.co", "plain", "mail a@b.co"]))

    result, report = apply_pii_policy(con, staged, SPEC, PiiPolicy("drop"), salt=SALT)

    assert column(con, "notes") == [None, "plain", None] and result.types["notes"] == "VARCHAR"
    assert report.dropped == () and report.dropped_values == 2


def test_many_matching_values_go_through_python_a_chunk_at_a_time(con, monkeypatch):
    monkeypatch.setattr(pii, "CHUNK_ROWS", 3)
    notes = [f"mail n{i}@x.com" for i in range(7)] + ["plain"]
    emails = [f"N{i}@\uff58.com" for i in range(7)] + [None]  # full-width: hashed in Python, not in DuckDB
    staged = stage(con, notes=("VARCHAR", notes), email=("VARCHAR", emails))

    _, report = apply_pii_policy(con, staged, SPEC, PiiPolicy("hash"), salt=SALT)

    by_key = dict(con.execute("SELECT user_id, notes || ' ' || coalesce(email, '-') FROM staged").fetchall())
    assert [by_key[f"u{i}"] for i in range(8)] == [
        f"mail {known(f'n{i}@x.com')} {known(f'n{i}@x.com')}" for i in range(7)] + ["plain -"]
    assert (report.hashed_values, _pii_tables(con)) == (14, [])


def test_no_value_patterns_run_when_the_default_allows(con):
    staged = stage(con, notes=("VARCHAR", ["mail a@b.co"]), phone=("VARCHAR", ["+1 415 555 0100"]))

    _, report = apply_pii_policy(con, staged, SPEC, PiiPolicy(fields={"phone": "drop"}), salt=SALT)

    assert column(con, "notes") == ["mail a@b.co"] and report.scanned == ()


def test_json_and_nested_values_are_scanned_and_keep_their_shape(con):
    con.execute(f"""CREATE TEMP TABLE staged AS SELECT * FROM (VALUES
        ('u0', {{'contact': 'A@B.co', 'n': 1}}, '{{"password": "hunter2", "k": 1}}'::JSON),
        ('u1', {{'contact': 'none', 'n': 2}}, '{{"k": 2}}'::JSON)) t(user_id, meta, doc),
        LATERAL (SELECT NULL::VARCHAR AS {UNSERIALISABLE_COLUMN})""")
    staged = describe_staged(con, "staged", "test")

    result, _ = apply_pii_policy(con, staged, SPEC, PiiPolicy("hash"), salt=SALT)

    assert result.types["meta"] == "JSON" and result.types["doc"] == "JSON"
    meta, doc = zip(*con.execute("SELECT meta, doc FROM staged ORDER BY user_id").fetchall(), strict=True)
    assert [orjson.loads(m) for m in meta] == [{"contact": known("a@b.co"), "n": 1},
                                               {"contact": "none", "n": 2}]
    assert [orjson.loads(d) for d in doc] == [{"password": known("hunter2"), "k": 1}, {"k": 2}]


def test_the_staged_table_keeps_its_name_its_rows_and_the_unserialisable_marker(con):
    staged = stage(con, email=("VARCHAR", ["a@b.co", "c@d.co"]))
    con.execute(f"UPDATE staged SET {UNSERIALISABLE_COLUMN} = 'bad' WHERE user_id = 'u1'")

    result, _ = apply_pii_policy(con, staged, SPEC, PiiPolicy("hash"), salt=SALT)

    assert (result.table, result.rows) == ("staged", 2)
    assert con.execute(f"SELECT user_id, {UNSERIALISABLE_COLUMN} FROM staged ORDER BY 1").fetchall() == [
        ("u0", None), ("u1", "bad")]


def test_the_salt_defaults_to_the_redaction_setting(con, monkeypatch):
    monkeypatch.setenv("SEGMENT_OPS_REDACTION_SALT", "from-the-environment")
    staged = stage(con, email=("VARCHAR", ["a@b.co"]))

    apply_pii_policy(con, staged, SPEC, PiiPolicy("hash"))

    assert column(con, "email") == [known("a@b.co", "from-the-environment")]


def test_a_salt_longer_than_a_hash_block_is_hashed_first_as_hmac_does(con):
    salt = "s" * 100
    staged = stage(con, email=("VARCHAR", ["a@b.co"]))

    apply_pii_policy(con, staged, SPEC, PiiPolicy("hash"), salt=salt)

    assert column(con, "email") == [known("a@b.co", salt)]


def test_hashing_without_a_salt_is_refused_but_dropping_needs_none(con):
    staged = stage(con, email=("VARCHAR", ["a@b.co"]))

    with pytest.raises(PiiPolicyError, match="hashing needs a salt: set SEGMENT_OPS_REDACTION_SALT"):
        apply_pii_policy(con, staged, SPEC, PiiPolicy("hash"), salt="")
    assert column(con, "email") == ["a@b.co"]
    result, _ = apply_pii_policy(con, staged, SPEC, PiiPolicy("drop"), salt="")
    assert "email" not in result.columns


# --- what it refuses ----------------------------------------------------------------------------------------

def test_a_policy_naming_a_column_the_rows_lack_is_refused(con):
    staged = stage(con, email=("VARCHAR", ["a@b.co"]))

    with pytest.raises(PiiPolicyError, match="names column.s. the rows do not have: phone; the rows have: "
                                             "user_id, email"):
        apply_pii_policy(con, staged, SPEC, PiiPolicy(fields={"phone": "drop"}), salt=SALT)


@pytest.mark.parametrize(("column_name", "what"), [
    ("user_id", "key and userId column"), ("anon", "anonymousId column"), ("seen_at", "timestamp column")])
def test_hashing_or_dropping_an_identity_column_is_refused(con, column_name, what):
    spec = DiffSpec(sync="people", source="people.sql", call="identify", mode="upsert", key="user_id",
                    user_id="user_id", anonymous_id="anon", timestamp="seen_at")
    staged = stage(con, anon=("VARCHAR", ["a1"]), seen_at=("TIMESTAMP", ["2024-01-01"]))

    for action in ("hash", "drop"):
        with pytest.raises(PiiPolicyError, match=f"would {action} column '{column_name}', the {what}; "
                                                 "identity columns are never hashed or dropped"):
            apply_pii_policy(con, staged, spec, PiiPolicy(fields={column_name: action}), salt=SALT)
    result, report = apply_pii_policy(con, staged, spec, PiiPolicy(fields={column_name: "allow"}), salt=SALT)
    assert result is staged and not report.changed


def test_an_identity_column_named_like_pii_is_never_touched(con):
    spec = DiffSpec(sync="people", source="people.sql", call="identify", mode="upsert", key="email",
                    user_id="email")
    staged = stage_columns(con, "staged", {"email": ("VARCHAR", ["a@b.co"]), "plan": ("VARCHAR", ["pro"])})

    apply_pii_policy(con, staged, spec, PiiPolicy("hash"), salt=SALT)

    assert con.execute("SELECT email, plan FROM staged").fetchall() == [("a@b.co", "pro")]


def test_a_column_the_sync_does_not_send_cannot_be_named(con):
    spec = DiffSpec(sync="people", source="people.sql", call="identify", mode="upsert", key="user_id",
                    user_id="user_id", exclude=("phone",))
    staged = stage(con, phone=("VARCHAR", ["1"]), plan=("VARCHAR", ["pro"]))

    with pytest.raises(PiiPolicyError, match="names column 'phone', which is not sent .not among the traits: "
                                             "plan."):
        apply_pii_policy(con, staged, spec, PiiPolicy(fields={"phone": "hash"}), salt=SALT)


def test_a_key_sent_as_a_trait_is_refused_rather_than_hashed_or_sent_in_clear(con):
    named = DiffSpec(sync="people", source="people.sql", call="identify", mode="upsert", key="email",
                     user_id="user_id")
    staged = stage(con, email=("VARCHAR", ["a@b.co"]))
    with pytest.raises(PiiPolicyError, match="'email' is the key and one of the traits, and the PII policy "
                                             "would hash it .name: email.: the key cannot change"):
        apply_pii_policy(con, staged, named, PiiPolicy("hash"), salt=SALT)

    by_value = DiffSpec(sync="people", source="people.sql", call="identify", mode="upsert", key="contact",
                        user_id="user_id")
    staged = stage(con, contact=("VARCHAR", ["a@b.co", "c2"]))
    with pytest.raises(PiiPolicyError, match="'contact' is the key and one of the traits, and 1 of its "
                                             "values hold PII .email."):
        apply_pii_policy(con, staged, by_value, PiiPolicy("hash"), salt=SALT)
    assert column(con, "contact") == ["a@b.co", "c2"] and _pii_tables(con) == []  # nothing changed

    apply_pii_policy(con, staged, by_value, PiiPolicy("hash", {"contact": "allow"}), salt=SALT)
    assert column(con, "contact") == ["a@b.co", "c2"]


# --- what leaves ---------------------------------------------------------------------------------------

def test_what_the_policy_hashes_or_drops_never_reaches_the_ledger(con):
    ensure_state(con)
    spec = DiffSpec(sync="people", source="people.sql", call="identify", mode="upsert", key="user_id",
                    user_id="user_id", fields=("email", "phone", "plan"))
    staged = stage_columns(con, "staged", {
        "user_id": ("VARCHAR", ["u0", "u1", None]), "email": ("VARCHAR", ["ann@x.com", None, "eve@x.com"]),
        "phone": ("VARCHAR", ["+1 415 555 0100", "+1 415 555 0101", "+1 415 555 0102"]),
        "plan": ("VARCHAR", ["pro", "free", "pro"])})
    ledger = Ledger(con)

    result, report = apply_pii_policy(con, staged, spec, PiiPolicy("hash", {"phone": "drop"}), salt=SALT)
    plan = plan_changes(con, ledger, report.spec_without_dropped(spec), result)

    assert (plan.added, plan.rejected) == (2, 1)  # the row without a userId is rejected, its record kept
    payloads = [orjson.loads(p) for (p,) in con.execute("SELECT payload FROM planned_messages").fetchall()]
    assert sorted((p["userId"], p["traits"]) for p in payloads) == [
        ("u0", {"email": known("ann@x.com"), "plan": "pro"}), ("u1", {"email": None, "plan": "free"})]
    stored = str(con.execute("SELECT * FROM planned_messages").fetchall()
                 + con.execute("SELECT * FROM rejected").fetchall())
    assert "x.com" not in stored and "415" not in stored and known("eve@x.com") in stored


def test_the_metadata_holds_counts_and_never_a_value(con):
    staged = stage(con, email=("VARCHAR", ["ann@x.com", "bob@x.com"]),
                   notes=("VARCHAR", ["ping eve@x.com", "ok"]), phone=("VARCHAR", ["+1 415 555 0100", None]))

    _, report = apply_pii_policy(con, staged, SPEC, PiiPolicy("hash", {"phone": "drop"}), salt=SALT)

    metadata = report.as_metadata()
    assert {k: v for k, v in metadata.items() if k != "pii_seconds"} == {
        "pii_policy": "hash (PII by column name and value), phone=drop",
        "pii_summary": "hash (PII by column name and value), phone=drop: email: 2 values hashed; "
                       "notes: 1 value hashed; phone: dropped (1 value left out)",
        "pii_hashed_values": 3, "pii_dropped_values": 1, "pii_dropped_columns": "phone",
        "pii_scanned_columns": 1}
    assert "x.com" not in str(metadata) + report.markdown() and "415" not in report.markdown()


# --- the SQL prefilter ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "sk_live_abcdefgh1", "rk_test_abcdefgh1", "whsec_abcdefgh1", "sgp_abcdefgh1", "ghp_abcdefghijklmnop1234",
    "github_pat_abcdefghijklmnop1234", "xoxb-12345678", "AKIAABCDEFGHIJKLMNOP", "eyJhbGci.eyJzdWIi.sig",
    "Bearer abcdef123", "BASIC dXNlcjpwYXNzd29yZA==", "Splunk 12345678-aaaa", "token=abc", "api_key: xyz",
    "WRITE-KEY=abc", "Passwd=1", "ann@x.com", "ann%40x.com", "ann\uff20x.com", "+1 415 555 0100",
])
def test_the_sql_prefilter_lets_through_every_value_the_patterns_match(con, text):
    staged = stage(con, notes=("VARCHAR", [text]))

    _, report = apply_pii_policy(con, staged, SPEC, PiiPolicy("drop"), salt=SALT)

    assert column(con, "notes") == [None] and report.dropped_values == 1


def test_every_token_pattern_of_the_redaction_engine_has_a_prefilter_case():
    # the prefilter's literals follow the engine's token patterns: a new pattern needs a case above
    assert len(PREFIXED_TOKEN_PATTERNS) == 9
