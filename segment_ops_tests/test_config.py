from pathlib import Path

from segment_ops.config import SECRET_NAMES, SETTINGS, load_settings, settings_table_markdown

README = Path(__file__).resolve().parents[1] / "README.md"


def test_unset_vendor_settings_point_at_the_sandbox(tmp_path):
    settings = load_settings({"SEGMENT_OPS_HOME": str(tmp_path),
                              "SEGMENT_OPS_SANDBOX_URL": "http://127.0.0.1:9/"})
    assert settings["SEGMENT_TRACKING_URL"] == "http://127.0.0.1:9/segment"
    assert settings["SPLUNK_HEC_URL"] == "http://127.0.0.1:9/splunk"
    assert settings["WAREHOUSE_URL"] == f"duckdb:///{tmp_path}/demo_warehouse.duckdb"
    assert not settings.is_set("SEGMENT_WRITE_KEY")


def test_environment_overrides_defaults():
    settings = load_settings({"SEGMENT_TRACKING_URL": "https://api.segment.io",
                              "SEGMENT_WRITE_KEY": "live-key"})
    assert settings["SEGMENT_TRACKING_URL"] == "https://api.segment.io"
    assert settings["SEGMENT_WRITE_KEY"] == "live-key"
    assert settings.is_set("SEGMENT_WRITE_KEY")


def test_home_is_resolved_to_an_absolute_path():
    assert Path(load_settings({"SEGMENT_OPS_HOME": "rel/dir"})["SEGMENT_OPS_HOME"]).is_absolute()


def test_every_credential_is_marked_secret():
    assert {"SEGMENT_WRITE_KEY", "SEGMENT_PUBLIC_API_TOKEN", "HEAP_API_KEY", "HEAP_WEBHOOK_SECRET",
            "PENDO_INTEGRATION_KEY", "SPLUNK_HEC_TOKEN"} <= set(SECRET_NAMES)


def test_readme_lists_every_setting_as_the_code_defines_it():
    readme = README.read_text()
    assert settings_table_markdown() in readme, "README's configuration table is stale: regenerate it"
    for setting in SETTINGS:
        assert f"`{setting.name}`" in readme


def test_home_defaults_to_the_documented_absolute_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    documented = next(s for s in SETTINGS if s.name == "SEGMENT_OPS_HOME").default

    expected = tmp_path / ".local" / "share" / "segment_ops"
    assert load_settings({"HOME": str(tmp_path)}).home == Path(documented).expanduser() == expected
