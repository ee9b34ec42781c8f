"""`landed_in_segment` on the Heap audiences: the audience trait each member was sent is read back through the
sandbox's Profile API once the delay has passed. Real Dagster runs over real HTTP (`conftest.ReadBackEnv`)."""

from __future__ import annotations

import dagster as dg
import pytest

from segment_ops.syncs.heap.defs import audience_key, build_heap_defs
from segment_ops.syncs.verification import CHECK_NAME
from segment_ops_tests.conftest import ReadBackEnv, check_evaluation
from segment_ops_tests.heap.conftest import POWER_USERS, materialize, resolvable


@pytest.mark.slow
def test_an_audience_run_is_read_back_and_its_trait_verified(read_back_env, warehouse, clean_sandbox):
    env = read_back_env()
    members = len(resolvable(warehouse, POWER_USERS))
    instance = dg.DagsterInstance.ephemeral()
    assert materialize(env.now, "power_users", instance=instance, route="reconcile").success
    ReadBackEnv.wait()

    defs = dg.Definitions.merge(build_heap_defs(), dg.Definitions(resources=env.later))
    result = defs.resolve_job_def("heap_read_back_job").execute_in_process(instance=instance)

    check = check_evaluation(result, CHECK_NAME, audience_key("power_users"))
    assert check.passed
    meta = {key: value.value for key, value in check.metadata.items()}
    sample = min(20, members)
    assert (meta["sample_size"], meta["profiles_found"]) == (sample, sample)
    assert meta["messages_verified"] == sample
    assert meta["traits_compared"] == meta["traits_matching"] == sample  # heap_power_users: true, each
    # The audiences that sent nothing have no ledger yet: their checks are skipped, not passed.
    assert [e.asset_key for e in result.get_asset_check_evaluations()] == [audience_key("power_users")]
