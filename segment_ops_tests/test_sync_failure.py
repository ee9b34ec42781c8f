"""SyncFailure: a run's failure in its own words, in the UI and across processes."""

from __future__ import annotations

import pickle
import traceback

import dagster as dg

from segment_ops.syncs.shared import SyncFailure


def test_it_formats_as_our_message_not_dagsters_class_path():
    failure = SyncFailure(description="people.sql: unknown header key 'kye'")

    line = "".join(traceback.format_exception_only(type(failure), failure))

    assert line == "segment_ops: people.sql: unknown header key 'kye'\n"


def test_it_is_a_dagster_failure_that_survives_pickling():
    failure = SyncFailure(description="Splunk HEC answered 500", metadata={"pending": 3}, allow_retries=False)

    again = pickle.loads(pickle.dumps(failure))

    assert isinstance(again, dg.Failure) and type(again) is SyncFailure
    assert (again.description, again.metadata["pending"].value, again.allow_retries) == (
        "Splunk HEC answered 500", 3, False)
