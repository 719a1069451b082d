"""Rules for a message body: content and nonce lengths, embed limits, no empty message (50006)."""

from __future__ import annotations

from typing import Any

from tests.discord_server.constants import MessageFlag
from tests.discord_server.errors import DiscordHTTPError, _form_error
from tests.discord_server.http import _Body
from tests.discord_server.model import Message


class MessageBodyRule:
    """Checks a create/edit body before the message model changes."""

    def _validate_message_body(
        self, payload: dict[str, Any], body: _Body, *, creating: bool
    ) -> None:
        content = payload.get("content")
        if content is not None:
            if not isinstance(content, str):
                raise _form_error(["content"], "BASE_TYPE_STRING", "Must be a string.")
            if len(content) > 2000:
                raise _form_error(
                    ["content"], "BASE_TYPE_MAX_LENGTH", "Must be 2000 or fewer in length."
                )
        nonce = payload.get("nonce")
        if isinstance(nonce, str) and len(nonce) > 25:
            raise _form_error(["nonce"], "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length.")
        self._validate_embeds(payload.get("embeds"))
        flags = int(payload.get("flags") or 0)
        self._validate_components(
            payload.get("components"), v2=bool(flags & MessageFlag.IS_COMPONENTS_V2)
        )
        self._validate_allowed_mentions(payload.get("allowed_mentions"))
        if creating and not (
            content
            or payload.get("embeds")
            or body.files
            or payload.get("components")
            or payload.get("sticker_ids")
            or payload.get("poll")
        ):
            raise DiscordHTTPError(400, 50006, "Cannot send an empty message")

    @staticmethod
    def _check_not_emptied(msg: Message, payload: dict[str, Any], body: _Body) -> None:
        """Discord refuses an edit that leaves a message with nothing to show (50006)."""
        content = payload.get("content", msg.content)
        embeds = payload.get("embeds", msg.embeds)
        components = payload.get("components", msg.components)
        if "attachments" in payload:
            keep = {str(a.get("id")) for a in payload.get("attachments") or []}
            files = [a for a in msg.attachments if str(a.id) in keep] or body.files
        else:
            files = msg.attachments or body.files
        if not (content or embeds or components or files):
            raise DiscordHTTPError(400, 50006, "Cannot send an empty message")

    @staticmethod
    def _validate_embeds(embeds: Any) -> None:
        if not embeds:
            return
        if len(embeds) > 10:
            raise _form_error(["embeds"], "BASE_TYPE_MAX_LENGTH", "Must be 10 or fewer in length.")
        limits = {"title": 256, "description": 4096}
        for i, embed in enumerate(embeds):
            total = 0
            for key, limit in limits.items():
                value = embed.get(key) or ""
                total += len(value)
                if len(value) > limit:
                    raise _form_error(
                        ["embeds", i, key],
                        "BASE_TYPE_MAX_LENGTH",
                        f"Must be {limit} or fewer in length.",
                    )
            fields = embed.get("fields") or []
            if len(fields) > 25:
                raise _form_error(
                    ["embeds", i, "fields"],
                    "BASE_TYPE_MAX_LENGTH",
                    "Must be 25 or fewer in length.",
                )
            for j, fld in enumerate(fields):
                for key, limit in (("name", 256), ("value", 1024)):
                    value = fld.get(key) or ""
                    total += len(value)
                    if not value:
                        raise _form_error(
                            ["embeds", i, "fields", j, key],
                            "BASE_TYPE_REQUIRED",
                            "This field is required",
                        )
                    if len(value) > limit:
                        raise _form_error(
                            ["embeds", i, "fields", j, key],
                            "BASE_TYPE_MAX_LENGTH",
                            f"Must be {limit} or fewer in length.",
                        )
            footer = (embed.get("footer") or {}).get("text") or ""
            author = (embed.get("author") or {}).get("name") or ""
            total += len(footer) + len(author)
            if len(footer) > 2048 or len(author) > 256:
                raise _form_error(
                    ["embeds", i], "BASE_TYPE_MAX_LENGTH", "Embed footer/author too long."
                )
            if total > 6000:
                raise _form_error(
                    ["embeds", i], "BASE_TYPE_MAX_LENGTH", "Embed size exceeds maximum size of 6000"
                )
