"""Slack incoming-webhook emulator, mounted at `/slack`: where the project's alerts land in the sandbox.

`POST /services/<T>/<B>/<token>` behaves like a Slack incoming webhook (api.slack.com/messaging/webhooks):

- a JSON body `{"text": ..., "blocks"?: [...]}` (or the legacy form field `payload=<json>`) answers
  200 with the plain-text body `ok`, and the message is recorded (`RunningSandbox.received("slack")`);
- a body that is not a JSON object answers 400 `invalid_payload`; an object with neither a non-empty
  `text` nor a non-empty `blocks` list (`{}` included) answers 400 `no_text` and posts nothing, which is
  how `segment-ops check` tells a live webhook without posting to it;
- an unknown token (the last path segment; team and bot ids are not checked) answers 404 `no_service`;
- the webhook of an archived channel (`ARCHIVED_CHANNEL_TOKEN`) answers 410 `channel_is_archived`.

Vendor sources: api.slack.com/messaging/webhooks and the changelog of 2016-05-17 (spec §7: 400
`invalid_payload`, 403 `action_prohibited`, 404 `channel_not_found`, 410 `channel_is_archived`, 500
`rollup_error`). `no_text` is not in Slack's published list: Slack answers it to a JSON message without text
(gitlab-org/gitlab#332611 shows `400 no_text` from a Slack app's webhook). Where the sandbox differs: it
does not model 403 `action_prohibited` (an admin's restriction), `user_not_found`, or messages made of
`attachments` only.

Injected faults answer as Slack does when it throttles or fails: 429 `rate_limited` with `Retry-After`,
500 `rollup_error`, 503 `service_unavailable` (plain text, like every Slack webhook answer).
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import parse_qs

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from segment_ops.sandbox.common import BodyTooLarge, read_body, retry_after_headers, text_response
from segment_ops.sandbox.recorder import Recorder

# Slack truncates `text` at 40,000 characters; a webhook body far beyond that is not a message.
MAX_BODY_BYTES = 1_000_000
_FAULT_TEXT = {429: "rate_limited", 500: "rollup_error", 503: "service_unavailable"}
# A webhook whose channel was archived: Slack answers 410 `channel_is_archived` (spec §7).
ARCHIVED_CHANNEL_TOKEN = "sandboxArchivedChannelToken0001"


class SlackWebhook:
    """One workspace's incoming webhooks; only `token` is a valid webhook secret."""

    name = "slack"

    def __init__(self, recorder: Recorder, *, token: str) -> None:
        self.recorder = recorder
        self.token = token

    def routes(self) -> Sequence[BaseRoute]:
        return [Route("/services/{team}/{bot}/{token}", self._post, methods=["POST"])]

    def fault_response(self, status: int, retry_after: int) -> Response:
        headers = retry_after_headers(retry_after) if status == 429 else None
        return text_response(_FAULT_TEXT.get(status, "rollup_error"), status, headers)

    def reset(self) -> None:
        """No per-run state: every message lives in the recorder."""

    async def _post(self, request: Request) -> Response:
        if request.path_params["token"] == ARCHIVED_CHANNEL_TOKEN:
            return text_response("channel_is_archived", 410)
        if request.path_params["token"] != self.token:
            return text_response("no_service", 404)
        try:
            body = await read_body(request, MAX_BODY_BYTES)
        except BodyTooLarge:
            return text_response("invalid_payload", 400)
        message = _message(body, request.headers.get("content-type", ""))
        if message is None:
            return text_response("invalid_payload", 400)
        if not _has_text(message):
            return text_response("no_text", 400)
        self.recorder[self.name].store(message)
        return text_response("ok", 200)


def _message(body: bytes, content_type: str) -> dict | None:
    """The posted JSON object, or None when the body is not one."""
    if content_type.split(";", 1)[0].strip().lower() == "application/x-www-form-urlencoded":
        # Legacy webhook clients post `payload=<json>` as a form.
        fields = parse_qs(body.decode("utf-8", errors="replace"))
        body = (fields.get("payload") or [""])[0].encode()
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return message if isinstance(message, dict) else None


def _has_text(message: dict) -> bool:
    """Whether the message has something to post: a non-empty `text` or a non-empty `blocks` list."""
    text, blocks = message.get("text"), message.get("blocks")
    return (isinstance(text, str) and text.strip() != "") or (isinstance(blocks, list) and len(blocks) > 0)
