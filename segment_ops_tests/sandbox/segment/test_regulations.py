"""The Public API double's regulations (spec §2) over real HTTP: filing in either scope, status progression
and injected outcomes, the list's filters and cursor, the audit event of each creation, Segment's
validation and error envelopes, and the per-group rate limits."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

import httpx
import pytest

from segment_ops.config import SANDBOX_SEGMENT_PUBLIC_API_TOKEN

AUTH = {"Authorization": f"Bearer {SANDBOX_SEGMENT_PUBLIC_API_TOKEN}"}
SOURCE = "src_segment_ops"


def file(http: httpx.Client, regulation_type: str = "SUPPRESS_WITH_DELETE", subjects: list | None = None, *,
         subject_type: str = "USER_ID", source: str | None = None,
         headers: dict | None = None) -> httpx.Response:
    path = f"/segmentapis/regulations/sources/{source}" if source else "/segmentapis/regulations"
    body = {"regulationType": regulation_type, "subjectType": subject_type,
            "subjectIds": ["usr_1"] if subjects is None else subjects}
    return http.post(path, json=body, headers=AUTH if headers is None else headers)


def filed(http: httpx.Client, *args: object, **kwargs: object) -> str:
    response = file(http, *args, **kwargs)  # type: ignore[arg-type]
    assert response.status_code == 200, response.text
    return response.json()["data"]["regulateId"]


def regulation(http: httpx.Client, regulate_id: str) -> dict:
    response = http.get(f"/segmentapis/regulations/{regulate_id}", headers=AUTH)
    assert response.status_code == 200, response.text
    return response.json()["data"]["regulation"]


def listed(http: httpx.Client, path: str = "/segmentapis/regulations", **params: object) -> httpx.Response:
    return http.get(path, params={"pagination.count": 200, **params}, headers=AUTH)


def the_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    [error] = response.json()["errors"]
    assert error["status"] == status and error["type"] == "RequestError" and error["message"]
    return error


@pytest.fixture
def instant(clean_sandbox):
    """Regulations finish as soon as they are filed (until the next reset)."""
    clean_sandbox.regulation_settings(running_after_seconds=0, finished_after_seconds=0)
    return clean_sandbox


def test_filing_answers_a_regulate_id_and_the_list_shows_its_request(sandbox_http):
    regulate_id = filed(sandbox_http, "SUPPRESS_ONLY", ["usr_1", "usr_2"])

    [entry] = listed(sandbox_http).json()["data"]["regulations"]

    assert entry["id"] == regulate_id and len(regulate_id) == 27
    assert {k: entry[k] for k in ("subjectType", "subjects", "status", "regulationType")} == {
        "subjectType": "USER_ID", "subjects": ["usr_1", "usr_2"], "status": "INITIALIZED",
        "regulationType": "SUPPRESS_ONLY"}
    assert abs(datetime.fromisoformat(entry["createdAt"]) - datetime.now(UTC)) < timedelta(seconds=5)
    assert "finishedAt" not in entry


def test_a_regulation_reads_back_with_its_workspace_status_and_streams(sandbox_http):
    regulate_id = filed(sandbox_http, "DELETE_ONLY")

    found = regulation(sandbox_http, regulate_id)

    assert (found["id"], found["workspaceId"], found["overallStatus"]) == (
        regulate_id, "sandbox-workspace", "INITIALIZED")
    streams = {s["id"]: s["destinationStatus"] for s in found["streamStatus"]}
    assert "src_legacy_import" not in streams and {SOURCE, "src_web_app"} <= set(streams)
    # A Segment & Destination type reaches the destinations connected to each source.
    assert {(d["id"], d["status"]) for d in streams[SOURCE]} == {("dst_amplitude", "INITIALIZED"),
                                                                ("dst_webhooks", "INITIALIZED")}


def test_a_segment_only_type_reaches_no_destination(sandbox_http):
    found = regulation(sandbox_http, filed(sandbox_http, "SUPPRESS_WITH_DELETE_INTERNAL"))

    assert found["streamStatus"] and all(s["destinationStatus"] == [] for s in found["streamStatus"])


@pytest.mark.slow  # waits for the status to move on
def test_status_moves_from_initialized_to_running_to_finished_on_the_configured_delays(clean_sandbox,
                                                                                     sandbox_http):
    clean_sandbox.regulation_settings(running_after_seconds=0.5, finished_after_seconds=0.5)
    regulate_id = filed(sandbox_http)

    seen = [regulation(sandbox_http, regulate_id)["overallStatus"]]
    time.sleep(0.75)
    seen.append(regulation(sandbox_http, regulate_id)["overallStatus"])
    time.sleep(0.5)
    done = regulation(sandbox_http, regulate_id)

    assert seen + [done["overallStatus"]] == ["INITIALIZED", "RUNNING", "FINISHED"]
    assert (datetime.fromisoformat(done["finishedAt"]) - datetime.fromisoformat(done["createdAt"])
            == timedelta(seconds=1))


def test_zero_delays_finish_a_regulation_at_once(instant, sandbox_http):
    found = regulation(sandbox_http, filed(sandbox_http, "DELETE_ONLY"))

    assert found["overallStatus"] == "FINISHED" and found["finishedAt"] == found["createdAt"]
    destinations = found["streamStatus"][0]["destinationStatus"]
    assert {(d["status"], d["errString"]) for d in destinations} == {("FINISHED", "")}


def test_an_outcome_rule_fails_a_regulation_with_a_matching_subject_only(instant, sandbox_http):
    instant.regulation_settings(outcomes=[{"pattern": "^erase-fail", "status": "FAILED",
                                           "error": "destination refused the deletion"}])

    failing = regulation(sandbox_http, filed(sandbox_http, "DELETE_ONLY", ["usr_1", "erase-fail-2"]))
    fine = regulation(sandbox_http, filed(sandbox_http, "DELETE_ONLY", ["usr_3"]))

    assert (failing["overallStatus"], fine["overallStatus"]) == ("FAILED", "FINISHED")
    assert {d["errString"] for d in failing["streamStatus"][0]["destinationStatus"]} == {
        "destination refused the deletion"}


@pytest.mark.parametrize("outcome", ["INVALID", "NOT_SUPPORTED"])
def test_invalid_and_not_supported_end_a_regulation_before_it_runs(clean_sandbox, sandbox_http, outcome):
    clean_sandbox.regulation_settings(running_after_seconds=0, finished_after_seconds=60,
                                      outcomes=[{"pattern": "bad", "status": outcome}])

    found = regulation(sandbox_http, filed(sandbox_http, "DELETE_ONLY", ["bad-id"]))

    assert found["overallStatus"] == outcome and found["finishedAt"] == found["createdAt"]


def test_partial_success_fails_one_destination_and_finishes_the_others(instant, sandbox_http):
    instant.regulation_settings(outcomes=[{"pattern": "partly", "status": "PARTIAL_SUCCESS"}])

    found = regulation(sandbox_http, filed(sandbox_http, "SUPPRESS_WITH_DELETE", ["partly"]))

    assert found["overallStatus"] == "PARTIAL_SUCCESS"
    statuses = sorted(d["status"] for d in found["streamStatus"][0]["destinationStatus"])
    assert statuses == ["FAILED", "FINISHED"]


def test_status_and_regulation_types_filter_the_list_in_every_encoding(instant, sandbox_http):
    instant.regulation_settings(outcomes=[{"pattern": "^x", "status": "FAILED"}])
    suppress, delete = filed(sandbox_http, "SUPPRESS_ONLY"), filed(sandbox_http, "DELETE_ONLY")
    failed = filed(sandbox_http, "DELETE_INTERNAL", ["x1"])

    def ids(params: list[tuple[str, str]]) -> set[str]:
        response = sandbox_http.get("/segmentapis/regulations", params=[("pagination.count", "50"), *params],
                                    headers=AUTH)
        assert response.status_code == 200, response.text
        return {r["id"] for r in response.json()["data"]["regulations"]}

    both = {suppress, delete}
    assert ids([("regulationTypes", "SUPPRESS_ONLY"), ("regulationTypes", "DELETE_ONLY")]) == both  # repeated
    assert ids([("regulationTypes", "SUPPRESS_ONLY,DELETE_ONLY")]) == both
    assert ids([("regulationTypes[0]", "SUPPRESS_ONLY"), ("regulationTypes[1]", "DELETE_ONLY")]) == both
    assert ids([("status", "FAILED")]) == {failed}
    assert ids([("status", "FINISHED"), ("regulationTypes", "DELETE_ONLY")]) == {delete}
    assert ids([]) == {suppress, delete, failed}


def test_pages_of_one_walk_every_regulation_once_newest_first_while_others_are_filed(sandbox_http):
    older = [filed(sandbox_http, subjects=[f"usr_{n}"]) for n in range(3)]
    first = listed(sandbox_http, **{"pagination.count": 1}).json()["data"]
    filed(sandbox_http, subjects=["usr_late"])  # after the walk began: not in it

    ids, pagination = [r["id"] for r in first["regulations"]], first["pagination"]
    while "next" in pagination:
        data = listed(sandbox_http, **{"pagination.count": 1, "pagination.cursor": pagination["next"]}).json()
        ids += [r["id"] for r in data["data"]["regulations"]]
        pagination = data["data"]["pagination"]

    assert ids == older[::-1] and first["pagination"]["totalEntries"] == 3
    assert "previous" not in first["pagination"] and "previous" in pagination


def test_a_source_regulation_is_listed_under_its_source_only(sandbox_http):
    workspace = filed(sandbox_http, "SUPPRESS_ONLY")
    source = filed(sandbox_http, "SUPPRESS_ONLY", source=SOURCE)

    under_source = listed(sandbox_http, f"/segmentapis/regulations/sources/{SOURCE}").json()["data"]
    in_workspace = listed(sandbox_http).json()["data"]

    assert [r["id"] for r in under_source["regulations"]] == [source]
    assert [r["id"] for r in in_workspace["regulations"]] == [workspace]
    assert [s["id"] for s in regulation(sandbox_http, source)["streamStatus"]] == [SOURCE]


def test_only_a_source_regulation_may_delete_the_archive_of_anonymous_ids(sandbox_http):
    regulate_id = filed(sandbox_http, "DELETE_ARCHIVE_ONLY", ["anon-1"], subject_type="ANONYMOUS_ID",
                        source=SOURCE)

    assert regulation(sandbox_http, regulate_id)["overallStatus"] == "INITIALIZED"
    assert the_error(file(sandbox_http, "DELETE_ARCHIVE_ONLY"), 422)["field"] == "regulationType"


@pytest.mark.parametrize(("source", "event_type", "resource_name"), [
    (None, "Workspace Regulation Created", "sandbox-workspace"),
    (SOURCE, "Source Regulation Created", "segment-ops"),
])
def test_filing_writes_its_audit_event(sandbox_http, source, event_type, resource_name):
    start = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    regulate_id = filed(sandbox_http, source=source)

    events = sandbox_http.get("/segmentapis/audit-events", headers=AUTH, params={
        "pagination.count": 200, "startTime": start, "resourceType": "regulation"}).json()["data"]["events"]

    [event] = [e for e in events if e["resourceId"] == regulate_id]
    assert (event["type"], event["resourceName"]) == (event_type, resource_name)
    assert event["timestamp"] == regulation(sandbox_http, regulate_id)["createdAt"]


@pytest.mark.parametrize(("body", "field"), [
    ({"regulationType": "ERASE", "subjectType": "USER_ID", "subjectIds": ["u"]}, "regulationType"),
    ({"subjectType": "USER_ID", "subjectIds": ["u"]}, "regulationType"),
    ({"regulationType": "DELETE_ONLY", "subjectType": "EMAIL", "subjectIds": ["u"]}, "subjectType"),
    ({"regulationType": "DELETE_ONLY", "subjectType": "ANONYMOUS_ID", "subjectIds": ["u"]}, "subjectType"),
    ({"regulationType": "DELETE_ONLY", "subjectType": "USER_ID", "subjectIds": []}, "subjectIds"),
    ({"regulationType": "DELETE_ONLY", "subjectType": "USER_ID", "subjectIds": "u"}, "subjectIds"),
    ({"regulationType": "DELETE_ONLY", "subjectType": "USER_ID", "subjectIds": ["u", 7]}, "subjectIds"),
    ({"regulationType": "DELETE_ONLY", "subjectType": "USER_ID", "subjectIds": ["u", ""]}, "subjectIds"),
    ({"regulationType": "DELETE_ONLY", "subjectType": "USER_ID"}, "subjectIds"),
])
def test_an_invalid_body_is_422_naming_the_field_and_files_nothing(sandbox_http, body, field):
    response = sandbox_http.post("/segmentapis/regulations", json=body, headers=AUTH)

    assert the_error(response, 422)["field"] == field
    assert listed(sandbox_http).json()["data"]["regulations"] == []


def test_a_source_regulation_of_anonymous_ids_needs_delete_archive_only(sandbox_http):
    response = file(sandbox_http, "SUPPRESS_ONLY", ["anon-1"], subject_type="ANONYMOUS_ID", source=SOURCE)

    assert the_error(response, 422)["field"] == "subjectType"


def test_a_body_that_is_not_json_is_400(sandbox_http):
    response = sandbox_http.post("/segmentapis/regulations", content=b'{"regulationType": ', headers=AUTH)

    the_error(response, 400)


def test_the_subject_cap_defaults_to_5000_and_is_a_setting(clean_sandbox, sandbox_http):
    assert clean_sandbox.regulation_settings()["max_subject_ids"] == 5000
    assert file(sandbox_http, subjects=[f"u{n}" for n in range(5000)]).status_code == 200
    too_many = file(sandbox_http, subjects=[f"u{n}" for n in range(5001)])
    assert the_error(too_many, 422)["field"] == "subjectIds"

    clean_sandbox.regulation_settings(max_subject_ids=2)

    assert file(sandbox_http, subjects=["a", "b"]).status_code == 200
    assert "at most 2" in the_error(file(sandbox_http, subjects=["a", "b", "c"]), 422)["message"]


def test_unknown_ids_are_404(sandbox_http):
    assert the_error(sandbox_http.get("/segmentapis/regulations/nope", headers=AUTH), 404)
    assert the_error(file(sandbox_http, source="src_nope"), 404)["field"] == "sourceId"
    assert the_error(listed(sandbox_http, "/segmentapis/regulations/sources/src_nope"), 404)


@pytest.mark.parametrize(("params", "status", "field"), [
    ({"status": "DONE"}, 422, "status"),
    ({"regulationTypes": "DELETE_ONLY,ERASE"}, 422, "regulationTypes"),
    ({"pagination.count": 0}, 400, "pagination.count"),
    ({"pagination.cursor": "not-a-cursor"}, 400, "pagination.cursor"),
])
def test_a_bad_list_query_is_refused_naming_the_parameter(sandbox_http, params, status, field):
    assert the_error(listed(sandbox_http, **params), status)["field"] == field


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer sgp_wrong"}])
def test_a_missing_or_wrong_token_is_401_and_files_nothing(sandbox_http, headers):
    assert the_error(file(sandbox_http, headers=headers), 401)
    assert the_error(sandbox_http.get("/segmentapis/regulations", params={"pagination.count": 1},
                                      headers=headers), 401)
    assert the_error(sandbox_http.get("/segmentapis/regulations/anything", headers=headers), 401)
    assert listed(sandbox_http).json()["data"]["regulations"] == []


def test_each_group_of_types_has_its_own_quota_and_headers(sandbox_factory):
    limited = sandbox_factory(regulation_rate_limit_per_min=2)
    with httpx.Client(base_url=limited.url) as http:
        segment_only = [file(http, "SUPPRESS_ONLY"), file(http, "UNSUPPRESS"), file(http, "DELETE_INTERNAL")]
        with_destinations = file(http, "DELETE_ONLY")
        listing = listed(http)

    assert [r.status_code for r in segment_only] == [200, 200, 429]
    assert [r.headers["X-RateLimit-Remaining"] for r in segment_only] == ["1", "0", "0"]
    [error] = segment_only[2].json()["errors"]  # the documented body (spec §2)
    assert (error["type"], error["message"]) == ("RequestError", "Too many requests")
    assert error["data"]["remainingPoints"] == 0 and error["data"]["consumedPoints"] == 2
    assert 0 < error["data"]["msBeforeNext"] <= 60_000
    assert parsedate_to_datetime(segment_only[2].headers["X-RateLimit-Reset"]) > datetime.now(UTC)
    # The other group, and the general quota of the other endpoints, are untouched.
    assert with_destinations.status_code == 200 and with_destinations.headers["X-RateLimit-Remaining"] == "1"
    assert listing.status_code == 200 and listing.headers["X-RateLimit-Remaining"] == "599"
    assert len(listing.json()["data"]["regulations"]) == 3


def test_reset_forgets_regulations_and_restores_the_configured_settings(clean_sandbox, sandbox_http):
    clean_sandbox.regulation_settings(max_subject_ids=1, running_after_seconds=0)
    filed(sandbox_http)

    clean_sandbox.reset()

    assert listed(sandbox_http).json()["data"]["regulations"] == []
    settings = clean_sandbox.regulation_settings()
    assert (settings["max_subject_ids"], settings["running_after_seconds"]) == (5000, 5.0)


def test_outcomes_can_be_configured_on_the_sandbox(sandbox_factory):
    from segment_ops.sandbox.segment.regulations import RegulationOutcome

    configured = sandbox_factory(regulation_running_after_seconds=0, regulation_finished_after_seconds=0,
                                 regulation_outcomes=(RegulationOutcome("^nope", "NOT_SUPPORTED"),))
    with httpx.Client(base_url=configured.url) as http:
        found = regulation(http, filed(http, "DELETE_ONLY", ["nope-1"]))

    assert found["overallStatus"] == "NOT_SUPPORTED"


@pytest.mark.parametrize("settings", [
    {"outcomes": [{"pattern": "x", "status": "FINISHED"}]},
    {"outcomes": [{"pattern": "(", "status": "FAILED"}]},
    {"running_after_seconds": -1},
    {"max_subject_ids": 0},
    {"retries": 3},
])
def test_the_control_refuses_settings_it_cannot_apply(clean_sandbox, sandbox_http, settings):
    response = sandbox_http.post("/__sandbox__/segment/regulations", json=settings)

    assert response.status_code == 400 and response.json()["error"]
    assert clean_sandbox.regulation_settings()["outcomes"] == []
