"""Values no JSON or ISO-8601 reader can take, nested in STRUCT/LIST columns or as timestamps: the rows are
rejected with a reason before sending, the others delivered, and every run succeeds (issue 16, part 6)."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from segment_ops_tests.reverse_etl.conftest import edit_warehouse, metadata, received, run_models

MODEL = """\
-- description: Profiles with odd values, for the unsendable-values tests.
-- owner: team:growth
-- call: identify
-- mode: upsert
-- key: id
-- user_id: id
SELECT id, attrs, scores, seen_at FROM odd_profiles
"""
ODD_PROFILES = """
CREATE TABLE odd_profiles AS SELECT * FROM (VALUES
    ('u1', {'score': 1.5, 'born': DATE '1990-01-02'}, [1.0, 2.0], TIMESTAMP '2024-01-01 10:00:00'),
    ('u2', {'score': 'nan'::DOUBLE, 'born': DATE '1990-01-02'}, [1.0], TIMESTAMP '2024-01-01 10:00:00'),
    ('u3', {'score': 2.0, 'born': DATE '1990-01-02'}, [1.0, 'infinity'::DOUBLE], TIMESTAMP '2024-01-01'),
    ('u4', {'score': 2.0, 'born': DATE '1990-01-02'}, [], 'infinity'::TIMESTAMP),
    ('u5', {'score': 2.0, 'born': DATE '1990-01-02'}, [], TIMESTAMP '10000-01-01 00:00:00'),
    ('u6', {'score': 2.0, 'born': '-infinity'::DATE}, [], TIMESTAMP '2024-01-01 10:00:00'),
    ('u7', {'score': -0.5, 'born': NULL}, NULL, NULL)
) t(id, attrs, scores, seen_at)
"""
REASONS = {
    "u2": "column 'attrs' holds NaN at attrs.score, which JSON cannot represent",
    "u3": "column 'scores' holds Infinity at scores[], which JSON cannot represent",
    "u4": "column 'seen_at' is infinity, which is not a moment ISO-8601 can write",
    "u5": "column 'seen_at' is a moment in year 10000; ISO-8601 timestamps carry years 0001-9999",
    "u6": "column 'attrs' holds -infinity at attrs.born, which is not a moment ISO-8601 can write",
}


def _rejected(ops_env: Path) -> dict[str, str]:
    con = duckdb.connect(str(ops_env / "staging" / "reverse_etl_odd_profiles.duckdb"), read_only=True)
    try:
        return dict(con.execute("SELECT record_key, reason FROM rejected").fetchall())
    finally:
        con.close()


@pytest.mark.slow
def test_nested_nan_infinity_and_unwritable_timestamps_are_rejected_and_every_run_succeeds(
        resources, warehouse, ops_env, models_dir, clean_sandbox):
    edit_warehouse(warehouse, ODD_PROFILES)
    (models_dir / "odd_profiles.sql").write_text(MODEL)

    first = run_models(resources, ["odd_profiles"], models_dir=models_dir)
    second = run_models(resources, ["odd_profiles"], models_dir=models_dir)

    assert first.success and second.success
    meta = metadata(first, "odd_profiles")
    assert (meta["rows_read"], meta["added"], meta["rejected"], meta["delivered"]) == (7, 2, 5, 2)
    assert _rejected(ops_env) == REASONS
    assert sorted(m["userId"] for m in received(clean_sandbox)) == ["u1", "u7"]
    [u1] = [m for m in received(clean_sandbox) if m["userId"] == "u1"]
    assert u1["traits"] == {"attrs": {"score": 1.5, "born": "1990-01-02"}, "scores": [1.0, 2.0],
                            "seen_at": "2024-01-01T10:00:00.000Z"}
    again = metadata(second, "odd_profiles")
    assert (again["unchanged"], again["rejected"], again["delivered"]) == (2, 5, 0)
