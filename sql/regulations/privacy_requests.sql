-- The privacy team's deletion and suppression requests, one row per subject and request, for the
-- `segment/regulations` sync (REGULATIONS_QUERY_FILE points elsewhere; `off` reads only the inbox folder).
--
-- Columns: user_id (the Segment userId), regulation_type (SUPPRESS_ONLY, SUPPRESS_WITH_DELETE,
-- SUPPRESS_WITH_DELETE_INTERNAL, DELETE_ONLY, DELETE_INTERNAL, DELETE_ARCHIVE_ONLY or UNSUPPRESS), and
-- optionally subject_type (USER_ID, the default, or OBJECT_ID), request_id (your tool's id) and
-- requested_at (when the person asked). Every run reads the whole table; a request already recorded is
-- recognised by its request_id and filed only once.
SELECT request_id, user_id, regulation_type, requested_at
FROM privacy_requests
