"""A model file holds exactly one SQL statement, split the way SQL does (comments, quotes, dollar-quotes)."""

from __future__ import annotations

import pytest

from segment_ops.syncs.reverse_etl.model import ModelError, parse_model
from segment_ops_tests.reverse_etl.conftest import IDENTIFY_HEADER as HEADER


@pytest.mark.parametrize(("query", "second"), [
    ("SELECT user_id FROM customers -- it's\n; DROP TABLE customers", "line 8 ('DROP TABLE customers')"),
    # The apostrophe in the comment pairs with the next quote for a regex, which then hides the ';'.
    ("SELECT user_id FROM customers -- it's\n; DELETE FROM customers WHERE plan = 'free'",
     "line 8 (\"DELETE FROM customers WHERE plan = 'free'\")"),
    ("SELECT user_id FROM customers /* it's */; DELETE FROM customers WHERE plan = 'free'",
     "line 7 (\"DELETE FROM customers WHERE plan = 'free'\")"),
    ("SELECT user_id FROM customers;\n\nDELETE FROM customers;", "line 9 ('DELETE FROM customers;')"),
    ("SELECT 'a'';' AS user_id; DROP TABLE customers", "line 7 ('DROP TABLE customers')"),
])
def test_a_second_statement_is_refused_naming_the_file(tmp_path, query, second):
    path = tmp_path / "model.sql"
    path.write_text(HEADER + query + "\n")

    with pytest.raises(ModelError) as raised:
        parse_model(path)

    assert str(raised.value) == (f"{path}: the query must be a single statement, found 2: the second "
                                 f"starts at {second}")


@pytest.mark.parametrize(("query", "sql"), [
    ("SELECT ';' AS user_id;", "SELECT ';' AS user_id"),
    ("SELECT 'it''s; fine' AS user_id", "SELECT 'it''s; fine' AS user_id"),
    ("SELECT $$ a; b $$ AS user_id", "SELECT $$ a; b $$ AS user_id"),
    ("SELECT $t$ it's; $t$ AS user_id", "SELECT $t$ it's; $t$ AS user_id"),
    ('SELECT 1 AS "user;id"', 'SELECT 1 AS "user;id"'),
    ("SELECT user_id -- not; a separator, it's a comment\nFROM customers",
     "SELECT user_id -- not; a separator, it's a comment\nFROM customers"),
    ("SELECT user_id /* ; */ FROM customers;\n-- a closing comment; with a semicolon\n",
     "SELECT user_id /* ; */ FROM customers"),
    ("SELECT user_id FROM customers; -- the same line's comment; it's kept\n",
     "SELECT user_id FROM customers -- the same line's comment; it's kept"),
    ("SELECT user_id FROM customers -- before the ';'\n;", "SELECT user_id FROM customers -- before the ';'"),
])
def test_one_statement_with_semicolons_in_literals_or_comments_is_accepted(tmp_path, query, sql):
    path = tmp_path / "model.sql"
    path.write_text(HEADER + query + "\n")

    assert parse_model(path).sql == sql

