"""A model that names its own Segment destination (`write_key_env:` / `tracking_url_env:`): it sends with that
key and host, read at run time; the gate and `segment-ops check` check that destination, and its secret shows
nowhere."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from segment_ops.config import SANDBOX_SEGMENT_WRITE_KEY, load_settings
from segment_ops.engine.preflight import Status, run_checks
from segment_ops.preflight import all_checks
from segment_ops.sandbox.segment.sources import SECOND_SOURCE_WRITE_KEY
from segment_ops.syncs.reverse_etl.defs import MODELS_DIR, build_reverse_etl_defs, model_key
from segment_ops.syncs.reverse_etl.model import ModelError, SegmentDestination, parse_model
from segment_ops.syncs.verification import CHECK_NAME
from segment_ops_tests.reverse_etl.conftest import metadata, run_models, step_failure

SOURCE_A, SOURCE_B = "src_segment_ops", "src_segment_ops_b"  # the sandbox workspace's two HTTP sources
A_WRITE_KEY_OF_NO_SOURCE = "wrongKey7Qx2Lm9Zt4Rb8Np3Vd6Hs1Jc"


def add_model(folder: Path, name: str, *header: str) -> Path:
    """`user_traits.sql` copied as `<name>.sql` with `header` lines added to its header."""
    lines = (MODELS_DIR / "user_traits.sql").read_text().splitlines()
    path = folder / f"{name}.sql"
    path.write_text("\n".join([lines[0], *header, *lines[1:]]) + "\n")
    return path


@pytest.fixture
def b_models(models_dir: Path) -> Path:
    """The project's models plus `b_traits`, which sends with the write key in SEGMENT_WRITE_KEY_B."""
    add_model(models_dir, "b_traits", "-- write_key_env: SEGMENT_WRITE_KEY_B")
    return models_dir


def spec_of(defs: dg.Definitions, model: str) -> dg.AssetSpec:
    [asset] = [a for a in defs.assets if isinstance(a, dg.AssetsDefinition) and model_key(model) in a.keys]
    return asset.specs_by_key[model_key(model)]


def run_logged(resources: dict, models: list[str], models_dir: Path) -> tuple[dg.ExecuteInProcessResult, str]:
    """Materialize `models`; and everything the run recorded (every event, log message, metadata and failure,
    serialized)."""
    instance = dg.DagsterInstance.ephemeral()
    defs = build_reverse_etl_defs(models_dir)
    assets = [a for a in defs.assets if isinstance(a, dg.AssetsDefinition)]
    result = dg.materialize(assets, selection=[model_key(m) for m in models], resources=resources,
                            instance=instance, raise_on_error=False)
    return result, "\n".join(dg.serialize_value(entry) for entry in instance.all_logs(result.run_id))


@pytest.mark.slow
def test_a_model_naming_its_own_write_key_delivers_under_that_key(resources, b_models, clean_sandbox,
                                                                   monkeypatch):
    monkeypatch.setenv("SEGMENT_WRITE_KEY_B", SECOND_SOURCE_WRITE_KEY)

    result = run_models(resources, ["user_traits", "b_traits"], models_dir=b_models)

    assert result.success
    delivered = {m: metadata(result, m)["delivered"] for m in ("user_traits", "b_traits")}
    assert delivered["b_traits"] > 0
    stats = clean_sandbox.stats()["segment"]
    # Each source received exactly its model's calls: b_traits under B's key, user_traits under the default.
    assert stats["by_source"] == {SOURCE_A: delivered["user_traits"], SOURCE_B: delivered["b_traits"]}
    assert "dropped" not in stats


@pytest.mark.slow
def test_a_missing_variable_fails_the_run_naming_it_and_sends_nothing(resources, b_models, clean_sandbox,
                                                                      monkeypatch):
    monkeypatch.delenv("SEGMENT_WRITE_KEY_B", raising=False)

    result = run_models(resources, ["b_traits"], models_dir=b_models)

    assert not result.success
    failure = step_failure(result, "b_traits")
    assert "SEGMENT_WRITE_KEY_B is not set" in failure.description and "b_traits.sql" in failure.description
    assert clean_sandbox.stats()["segment"]["requests"] == 0


@pytest.mark.slow
def test_the_secret_appears_nowhere_in_the_definitions_metadata_or_logs(resources, b_models, clean_sandbox,
                                                                        monkeypatch):
    monkeypatch.setenv("SEGMENT_WRITE_KEY_B", SECOND_SOURCE_WRITE_KEY)

    defs = build_reverse_etl_defs(b_models)
    result, log = run_logged(resources, ["b_traits"], b_models)

    assert result.success and clean_sandbox.stats()["segment"]["by_source"] == {
        SOURCE_B: metadata(result, "b_traits")["delivered"]}
    spec = spec_of(defs, "b_traits")
    assert spec.metadata["write_key_env"] == "SEGMENT_WRITE_KEY_B"  # the name is shown...
    assert "SEGMENT_WRITE_KEY_B" in spec.description
    assert "b_traits" in log and "SEGMENT_WRITE_KEY_B" in log  # the log is the run's, and shows the name
    shown = log + spec.description + repr(spec.metadata)
    assert SECOND_SOURCE_WRITE_KEY not in shown  # ...never the value


@pytest.mark.slow
def test_preflight_refuses_a_wrong_key_for_that_model_only(resources, b_models, clean_sandbox, monkeypatch):
    monkeypatch.setenv("SEGMENT_WRITE_KEY_B", A_WRITE_KEY_OF_NO_SOURCE)

    result, log = run_logged(resources, ["user_traits", "b_traits"], b_models)

    failure = step_failure(result, "b_traits")
    assert failure.description.startswith("preflight refused to send: segment_destination:b_traits "
                                          "(SEGMENT_WRITE_KEY_B, SEGMENT_TRACKING_URL, ")
    assert "not the write key of any of the" in failure.description
    assert A_WRITE_KEY_OF_NO_SOURCE not in log and "SEGMENT_WRITE_KEY_B" in log
    # user_traits, on SEGMENT_WRITE_KEY, delivered; nothing was sent under the wrong key.
    assert metadata(result, "user_traits")["delivered"] > 0
    by_source = clean_sandbox.stats()["segment"]["by_source"]
    assert by_source == {SOURCE_A: metadata(result, "user_traits")["delivered"]}
    assert "dropped" not in clean_sandbox.stats()["segment"]


@pytest.mark.parametrize(("line", "problem"), [
    (f"-- write_key_env: {SANDBOX_SEGMENT_WRITE_KEY}", "looks like a write key"),
    ("-- write_key_env: 9fBzkTdeQ7XpZ3LkRj2NnAbCdEfGhIjK", "looks like a write key"),
    ("-- write_key_env: A1B2C3D4E5F6G7H8I9J0K1L2", "looks like a write key"),
    ("-- tracking_url_env: https://events.eu1.segmentapis.com", "holds a URL"),
    ("-- write_key_env: SEGMENT_PUBLIC_API_TOKEN", "a setting of segment_ops with another purpose"),
])
def test_a_value_in_the_header_instead_of_a_variable_name_is_refused_without_repeating_it(
        tmp_path: Path, line: str, problem: str):
    path = add_model(tmp_path, "b_traits", line)
    value = line.split(": ", 1)[1]

    with pytest.raises(ModelError) as raised:
        parse_model(path)

    assert problem in raised.value.problem
    if problem != "a setting of segment_ops with another purpose":
        assert value not in str(raised.value)  # the error (and the BROKEN asset's description) never shows it


def test_a_literal_key_makes_the_model_broken_and_its_description_does_not_show_the_key(models_dir: Path):
    add_model(models_dir, "b_traits", "-- write_key_env: 9fBzkTdeQ7XpZ3LkRj2NnAbCdEfGhIjK")

    defs = build_reverse_etl_defs(models_dir)

    description = spec_of(defs, "b_traits").description
    assert description.startswith("BROKEN") and "looks like a write key" in description
    assert "9fBzkTdeQ7XpZ3LkRj2NnAbCdEfGhIjK" not in description


def test_only_models_without_the_keys_are_read_back_and_the_others_say_why(models_dir: Path):
    add_model(models_dir, "b_traits", "-- write_key_env: SEGMENT_WRITE_KEY_B")

    defs = build_reverse_etl_defs(models_dir)

    assert parse_model(models_dir / "user_traits.sql").destination == SegmentDestination()
    assert parse_model(models_dir / "b_traits.sql").destination == SegmentDestination("SEGMENT_WRITE_KEY_B")
    read_back = {key.asset_key for checks in defs.asset_checks or [] for key in checks.check_keys
                 if key.name == CHECK_NAME}
    assert model_key("user_traits") in read_back
    assert model_key("b_traits") not in read_back  # no landed_in_segment check, so no read-back target
    description = spec_of(defs, "b_traits").description
    assert "SEGMENT_WRITE_KEY_B" in description and "not read back" in description
    assert "not read back" not in spec_of(defs, "user_traits").description


def test_check_has_one_row_per_distinct_destination_named_after_its_models(ops_env, clean_sandbox, models_dir,
                                                                          monkeypatch):
    add_model(models_dir, "b_traits", "-- write_key_env: SEGMENT_WRITE_KEY_B")
    add_model(models_dir, "b_more", "-- write_key_env: SEGMENT_WRITE_KEY_B")
    add_model(models_dir, "eu_traits", "-- write_key_env: SEGMENT_WRITE_KEY_B",
              "-- tracking_url_env: SEGMENT_TRACKING_URL_EU")
    add_model(models_dir, "c_traits", "-- write_key_env: SEGMENT_WRITE_KEY_C")
    monkeypatch.setenv("REVERSE_ETL_MODELS_DIR", str(models_dir))
    monkeypatch.setenv("SEGMENT_WRITE_KEY_B", SECOND_SOURCE_WRITE_KEY)
    monkeypatch.setenv("SEGMENT_TRACKING_URL_EU", f"{clean_sandbox.url}/segment_eu")  # the EU host

    checks = [c for c in all_checks(load_settings()) if c.name.startswith("segment_destination:")]
    results = {r.check: r for r in run_checks(checks)}

    assert list(results) == ["segment_destination:b_more+b_traits", "segment_destination:eu_traits",
                             "segment_destination:c_traits"]
    ok, eu, unset = results.values()
    assert ok.status is Status.PASS and ok.settings[:2] == ("SEGMENT_WRITE_KEY_B", "SEGMENT_TRACKING_URL")
    assert "used by models b_more, b_traits" in ok.detail and "'segment-ops B (HTTP API)'" in ok.detail
    assert (eu.status, eu.definitive) == (Status.FAIL, True)
    assert "SEGMENT_TRACKING_URL_EU" in eu.detail and "the workspace is US" in eu.detail
    assert (unset.status, unset.definitive) == (Status.FAIL, True)
    assert unset.detail == "SEGMENT_WRITE_KEY_C not set: model c_traits cannot send"
    assert all(SECOND_SOURCE_WRITE_KEY not in r.detail + r.todo for r in results.values())


def test_check_has_no_destination_row_when_no_model_names_one(ops_env, clean_sandbox):
    names = [c.name for c in all_checks(load_settings())]

    assert not [n for n in names if n.startswith("segment_destination")]
    assert clean_sandbox.stats()["segmentapis"]["requests"] == 0  # building the checks asks nobody


@pytest.mark.slow
def test_ops_preflight_gathers_the_destination_rows_in_one_asset_check(warehouse, clean_sandbox, models_dir,
                                                                      monkeypatch):
    from segment_ops.syncs.ops.preflight import DESTINATIONS_CHECK, PREFLIGHT_KEY, ops_preflight

    add_model(models_dir, "c_traits", "-- write_key_env: SEGMENT_WRITE_KEY_C")
    monkeypatch.setenv("REVERSE_ETL_MODELS_DIR", str(models_dir))

    result = dg.materialize([ops_preflight])

    [check] = [e for e in result.get_asset_check_evaluations()
               if e.asset_key == PREFLIGHT_KEY and e.check_name == DESTINATIONS_CHECK]
    assert not check.passed and check.severity is dg.AssetCheckSeverity.ERROR
    assert "segment_destination:c_traits" in check.description and "SEGMENT_WRITE_KEY_C" in check.description
