"""The plan guard's limits come from the PLAN_GUARD_* settings; a value out of range names its variable."""

from __future__ import annotations

import pytest

from segment_ops.config import load_settings
from segment_ops.engine.guard import GuardLimits
from segment_ops.resources import plan_guard_limits


def test_unset_settings_give_the_documented_limits():
    assert plan_guard_limits(load_settings({})) == GuardLimits()


def test_set_settings_become_the_limits():
    env = {"PLAN_GUARD_MAX_REMOVED_SHARE": "0.2", "PLAN_GUARD_MAX_CHANGED_SHARE": "1",
           "PLAN_GUARD_MAX_NULLED_SHARE": "0", "PLAN_GUARD_MAX_MESSAGES": "5000",
           "PLAN_GUARD_MIN_DELIVERED": "0"}

    assert plan_guard_limits(load_settings(env)) == GuardLimits(0.2, 1.0, 0.0, 5000, 0)


@pytest.mark.parametrize(("name", "value"), [("PLAN_GUARD_MAX_REMOVED_SHARE", "10%"),
                                             ("PLAN_GUARD_MAX_NULLED_SHARE", "1.5"),
                                             ("PLAN_GUARD_MAX_MESSAGES", "-1"),
                                             ("PLAN_GUARD_MIN_DELIVERED", "ten")])
def test_a_bad_value_is_refused_naming_its_variable(name, value):
    with pytest.raises(ValueError, match=name):
        plan_guard_limits(load_settings({name: value}))
