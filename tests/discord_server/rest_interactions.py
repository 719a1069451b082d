"""REST routes the bot answers interactions through: the callback and the interaction webhook
(followups, @original edits and deletes).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tests.discord_server.constants import Callback, InteractionType, MessageFlag
from tests.discord_server.errors import DiscordHTTPError, _form_error, _unknown
from tests.discord_server.http import _BODY, _Body, _snowflake_int
from tests.discord_server.interaction import Interaction
from tests.discord_server.model import Message


class InteractionRoutes:
    """/interactions/{id}/{token}/callback and /webhooks/{app}/{token}."""

    async def _interaction_callback(self, request: web.Request) -> web.Response:
        ix = self._ix_by_id.get(
            _snowflake_int(request.match_info["interaction_id"], ["interaction_id"])
        )
        if ix is None or ix.token != request.match_info["interaction_token"]:
            raise _unknown("interaction", 10062)
        try:
            response = self._answer_interaction(ix, request)
        except DiscordHTTPError as exc:
            ix.callback_results.append((exc.status, exc.code))
            raise
        ix.callback_results.append((response.status, None))
        return response

    def _answer_interaction(self, ix: Interaction, request: web.Request) -> web.Response:
        elapsed = self._check_initial_response(ix)
        body: _Body = request[_BODY]
        payload = body.json if isinstance(body.json, dict) else {}
        rtype = payload.get("type")
        data = payload.get("data") or {}
        allowed = {
            InteractionType.APPLICATION_COMMAND: {4, 5, 9},
            InteractionType.MESSAGE_COMPONENT: {4, 5, 6, 7, 9},
            InteractionType.AUTOCOMPLETE: {8},
            InteractionType.MODAL_SUBMIT: {4, 5} | ({6, 7} if ix.message is not None else set()),
        }[ix.type]
        if rtype not in allowed:
            raise _form_error(
                ["type"],
                "INTERACTION_CALLBACK_TYPE_INVALID",
                f"Callback type {rtype!r} is not valid for interaction type {ix.type}",
            )
        channel = ix.channel
        if rtype in (4, 7):
            self._check_files(body, channel)
            self._validate_message_body(data, body, creating=rtype == 4)
        message: Message | None = None
        if rtype == Callback.CHANNEL_MESSAGE:
            message = self._new_message(channel, data, body, interaction=ix)
            ix.original = message
        elif rtype == Callback.DEFERRED_CHANNEL_MESSAGE:
            ephemeral = int(data.get("flags") or 0) & MessageFlag.EPHEMERAL
            message = self._new_message(
                channel,
                {},
                _Body(),
                interaction=ix,
                extra_flags=MessageFlag.LOADING | ephemeral,
                loading=True,
            )
            ix.original = message
        elif rtype == Callback.DEFERRED_UPDATE_MESSAGE:
            ix.original = ix.message
        elif rtype == Callback.UPDATE_MESSAGE:
            assert ix.message is not None
            self._check_not_emptied(ix.message, data, body)
            self._edit_message(ix.message, data, body)
            ix.original = message = ix.message
        elif rtype == Callback.MODAL:
            self._validate_modal(data)
            ix.modal = data
        elif rtype == Callback.AUTOCOMPLETE_RESULT:
            ix.autocomplete_choices = list(data.get("choices") or [])
        ix.response_type = rtype
        ix.response_data = data
        ix.responded_after = elapsed
        if request.query.get("with_response", "").lower() not in ("1", "true"):
            return self._no_content()
        result: dict[str, Any] = {"interaction": {"id": str(ix.id), "type": ix.type}}
        if message is not None:
            result["interaction"].update(
                response_message_id=str(message.id),
                response_message_loading=message.loading,
                response_message_ephemeral=message.ephemeral,
            )
            result["resource"] = {"type": rtype, "message": self.message_payload(message)}
        return self._json(result)

    def _webhook_interaction(self, request: web.Request) -> Interaction:
        webhook_id = _snowflake_int(request.match_info["webhook_id"], ["webhook_id"])
        token = request.match_info["webhook_token"]
        ix = self._ix_by_token.get(token)
        if ix is None or webhook_id != self.application_id:
            raise _unknown("Webhook", 10015)
        self._check_token_alive(ix, request)
        return ix

    def _webhook_message(self, request: web.Request, ix: Interaction) -> Message:
        mid = request.match_info.get("message_id")
        if mid is None:  # @original
            msg = ix.original
        else:
            target = _snowflake_int(mid, ["message_id"])
            candidates = [ix.original, *ix.followups]
            msg = next((m for m in candidates if m is not None and m.id == target), None)
        if msg is None or msg.deleted:
            raise _unknown("Message", 10008)
        return msg

    async def _execute_webhook(self, request: web.Request) -> web.Response:
        ix = self._webhook_interaction(request)
        if ix.response_type is None:
            raise _unknown("Webhook", 10015)
        body: _Body = request[_BODY]
        payload = body.json if isinstance(body.json, dict) else {}
        self._check_files(body, ix.channel)
        original = ix.original
        if (
            original is not None
            and original.loading
            and not original.deleted
            and ix.response_type == 5
        ):
            # Discord fills the deferred "thinking" message with the first followup.
            self._validate_message_body(payload, body, creating=True)
            self._edit_message(original, payload, body)
            ix.original_edits.append(payload)
            msg = original
        else:
            self._validate_message_body(payload, body, creating=True)
            msg = self._new_message(ix.channel, payload, body, interaction=ix)
        ix.followups.append(msg)
        if request.query.get("wait", "").lower() in ("1", "true"):
            return self._json(self.message_payload(msg))
        return self._no_content()

    async def _get_webhook_message(self, request: web.Request) -> web.Response:
        ix = self._webhook_interaction(request)
        return self._json(self.message_payload(self._webhook_message(request, ix)))

    async def _edit_webhook_message(self, request: web.Request) -> web.Response:
        ix = self._webhook_interaction(request)
        msg = self._webhook_message(request, ix)
        body: _Body = request[_BODY]
        payload = body.json if isinstance(body.json, dict) else {}
        self._check_files(body, ix.channel)
        self._validate_message_body(payload, body, creating=False)
        self._check_not_emptied(msg, payload, body)
        self._edit_message(msg, payload, body)
        if msg is ix.original:
            ix.original_edits.append(payload)
        return self._json(self.message_payload(msg))

    async def _delete_webhook_message(self, request: web.Request) -> web.Response:
        ix = self._webhook_interaction(request)
        msg = self._webhook_message(request, ix)
        self._delete_message(msg)
        return self._no_content()
