"""Segment calls validated and encoded in DuckDB, a whole chunk at a time (the set-based twin of calls.py).

Python's `prepare_call` serves calls built one by one; this serves bulk inputs (replay files, and
models whose payloads are built in SQL), where a Python loop per row would dominate the run. The
rules and the rejection reasons are the same as in `calls.py`; the tests run every case through both.

Input: a relation with `line_no BIGINT` and `line VARCHAR` (one JSON call per row). Output: a temp
table with `line_no, record_key, call_type, message_id, payload, reason, source, record` where
`reason` is NULL for a call that is ready to send, and `source` ("label:line") and `record` (an
excerpt of the input) are filled for rejected rows. JSON null at the top level counts as absent.

messageIds are deterministic here too (sync, record key and the normalised call), though not equal
to the ones `calls.py` computes for the same call: each sync builds its calls in one of the two ways.
"""

from __future__ import annotations

import duckdb

from segment_ops.engine.calls import CALL_TYPES, MAX_MESSAGE_BYTES

_TYPES = ", ".join(f"'{t}'" for t in sorted(CALL_TYPES))
_TYPE_LIST = str(sorted(CALL_TYPES)).replace("'", "''")  # as calls.py words it, quoted for SQL
_ID_FIELDS = ("userId", "anonymousId", "groupId", "previousId")
_OBJECT_FIELDS = ("traits", "properties", "context", "integrations")


def _field(index: int, name: str) -> str:
    """Type and text of one top-level field (from the one-pass extraction), JSON null folded into absent."""
    return (f"nullif(json_type(v[{index}]), 'NULL') AS {name}_t, "
            f"CASE WHEN json_type(v[{index}]) <> 'NULL' THEN v[{index}]->>'$' END AS {name}_v")


def _id_check(name: str) -> str:
    return (f"WHEN {name}_t IS NOT NULL AND {name}_t NOT IN ('VARCHAR', 'BIGINT', 'UBIGINT') "
            f"THEN '{name} must be a string, got ' || lower({name}_t)")


_FIELDS = [*_ID_FIELDS, *_OBJECT_FIELDS, "type", "event", "messageId", "timestamp"]

_STAGE_SQL = f"""
CREATE OR REPLACE TEMP TABLE {{target}} AS
WITH parsed AS (
    SELECT line_no, line, CASE WHEN json_valid(line) THEN line::JSON END AS j FROM {{source}}
), extracted AS (
    SELECT line_no, line, j, json_type(j) AS jt, json_extract(j, [{", ".join(f"'$.{f}'" for f in _FIELDS)}]) AS v
    FROM parsed
), fields AS (
    SELECT line_no, line, j, jt, {", ".join(_field(i + 1, f) for i, f in enumerate(_FIELDS))}
    FROM extracted
), checked AS (
    SELECT *,
        try_cast(timestamp_v AS TIMESTAMPTZ) AS ts,
        CASE
            WHEN j IS NULL THEN 'invalid JSON'
            WHEN jt <> 'OBJECT' THEN 'a call must be a JSON object, got ' || lower(jt)
            WHEN type_v IS NULL OR type_t <> 'VARCHAR' OR type_v NOT IN ({_TYPES})
                THEN 'type must be one of {_TYPE_LIST}, got ' || coalesce('''' || type_v || '''', 'None')
            {" ".join(_id_check(f) for f in _ID_FIELDS)}
            WHEN type_v = 'alias' AND (coalesce(previousId_v, '') = '' OR coalesce(userId_v, '') = '')
                THEN 'alias needs both previousId and userId'
            WHEN type_v <> 'alias' AND coalesce(userId_v, '') = '' AND coalesce(anonymousId_v, '') = ''
                THEN type_v || ' needs a userId or an anonymousId'
            WHEN type_v = 'track' AND (event_t IS DISTINCT FROM 'VARCHAR' OR trim(event_v) = '')
                THEN 'track needs a non-empty event name'
            WHEN type_v = 'group' AND coalesce(groupId_v, '') = '' THEN 'group needs a groupId'
            {" ".join(f"WHEN {f}_t IS NOT NULL AND {f}_t <> 'OBJECT' THEN '{f} must be an object, got ' || lower({f}_t)" for f in _OBJECT_FIELDS)}
            WHEN messageId_t IS NOT NULL AND (messageId_t <> 'VARCHAR' OR length(messageId_v) NOT BETWEEN 1 AND 200)
                THEN 'messageId must be a non-empty string of at most 200 characters'
            WHEN timestamp_t IS NOT NULL AND timestamp_t <> 'VARCHAR'
                THEN 'timestamp must be an ISO-8601 string, got ' || lower(timestamp_t)
            WHEN timestamp_t IS NOT NULL AND try_cast(timestamp_v AS TIMESTAMPTZ) IS NULL
                THEN 'timestamp ''' || timestamp_v || ''' is not ISO-8601'
        END AS reason
    FROM fields
), built AS (
    SELECT line_no, line, reason, type_v AS call_type, messageId_v,
           coalesce(userId_v, anonymousId_v, groupId_v) AS record_key,
           -- ids as strings, timestamp as UTC ISO-8601 with milliseconds, messageId left for below
           json_merge_patch(j, json_object(
               'userId', userId_v, 'anonymousId', anonymousId_v, 'groupId', groupId_v, 'previousId', previousId_v,
               'timestamp', strftime(timezone('UTC', ts), '%Y-%m-%dT%H:%M:%S.%gZ'), 'messageId', NULL
           ))::VARCHAR AS body
    FROM checked
), identified AS (
    SELECT line_no, line, reason, call_type, record_key, body,
           coalesce(messageId_v, {{uuid_of_hash}}) AS message_id
    FROM (SELECT *, md5(? || chr(31) || coalesce(record_key, '') || chr(31) || body) AS h FROM built)
), encoded AS (
    -- body is a minified JSON object: appending the id as text is exact and much cheaper than a merge.
    SELECT *, CASE WHEN reason IS NULL THEN left(body, -1) || ',"messageId":' || to_json(message_id) || '}}}}'
              END AS full_payload
    FROM identified
), sized AS (
    SELECT *, coalesce(reason, CASE WHEN strlen(full_payload) > {MAX_MESSAGE_BYTES}
        THEN 'message is ' || format('{{{{:,}}}}', strlen(full_payload)) || ' bytes; Segment''s limit is '
             || '{MAX_MESSAGE_BYTES:,} bytes per call' END) AS final_reason
    FROM encoded
)
SELECT line_no, record_key, call_type, message_id,
       CASE WHEN final_reason IS NULL THEN full_payload END AS payload,
       final_reason AS reason,
       CASE WHEN final_reason IS NOT NULL THEN ? || ':' || line_no END AS source,
       CASE WHEN final_reason IS NOT NULL THEN left(line, 2000) END AS record
FROM sized
"""

# The same UUID layout as calls.deterministic_message_id (version-5 nibble, RFC 4122 variant), from
# an md5 here: 128 bits are plenty for ids that only need to be stable and not collide by chance.
_UUID_OF_HASH = (
    "substr(h, 1, 8) || '-' || substr(h, 9, 4) || '-5' || substr(h, 14, 3) || '-' || "
    "substr('89ab', (('0x' || substr(h, 17, 1))::INTEGER & 3) + 1, 1) || substr(h, 18, 3) || '-' || substr(h, 21, 12)"
)

def stage_json_calls(con: duckdb.DuckDBPyConnection, sync: str, source: str, *, label: str = "line",
                     target: str = "staged_calls") -> None:
    """Validate and encode every call of `source` into the temp table `target` (see module docstring)."""
    con.execute("SET TimeZone = 'UTC'")  # naive timestamps are UTC, as in calls.py
    con.execute(_STAGE_SQL.format(source=source, target=target, uuid_of_hash=_UUID_OF_HASH), [sync, label])
