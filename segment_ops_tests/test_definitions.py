import dagster as dg
import pytest

from segment_ops.definitions import defs


@pytest.fixture(scope="module")
def definitions():
    return defs()


def test_definitions_load(definitions):
    dg.Definitions.validate_loadable(definitions)


def test_every_asset_says_what_it_is(definitions):
    for spec in definitions.resolve_all_asset_specs():
        name = spec.key.to_user_string()
        assert spec.group_name and spec.group_name != "default", f"{name} has no group"
        assert spec.kinds, f"{name} has no kinds"
        assert spec.owners, f"{name} has no owner"
        assert spec.description and len(spec.description) > 30, f"{name} has no real description"


def test_secrets_reach_dagster_as_env_vars_when_set(monkeypatch):
    monkeypatch.setenv("SEGMENT_WRITE_KEY", "live-secret-value")
    resources = defs().resources
    assert isinstance(resources["segment"].write_key, dg.EnvVar)
    assert "live-secret-value" not in repr(resources["segment"])


# The audit trail reads the Public API; the regulations are filed with it: neither makes a Tracking API call.
PUBLIC_API_ONLY = (dg.AssetKey(["segment", "audit_events"]), dg.AssetKey(["segment", "regulations"]))


def test_every_sync_that_sends_to_segment_ends_at_the_segment_destination(definitions):
    graph = definitions.resolve_asset_graph()
    senders = {key for key in graph.get_all_asset_keys() if graph.get(key).is_materializable
               and key.path[0] == "segment" and key not in PUBLIC_API_ONLY}

    upstream = graph.get(dg.AssetKey(["segment", "profiles"])).parent_keys

    groups = {graph.get(key).group_name for key in upstream}
    assert upstream == senders
    assert {"replay", "reverse_etl", "heap", "pendo"} <= groups
