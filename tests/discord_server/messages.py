"""Messages as the server stores them: creating, editing, deleting, attachments on the CDN, and
the message object Discord returns.
"""

from __future__ import annotations

import hashlib
import mimetypes
from typing import Any
from urllib.parse import quote

from tests.discord_server.clock import _iso
from tests.discord_server.constants import ATTACHMENT_URL_LIFETIME, InteractionType, MessageFlag
from tests.discord_server.http import _Body
from tests.discord_server.interaction import Interaction
from tests.discord_server.model import NOBODY, Attachment, Channel, Message, Pinged


class MessageStore:
    """Shared by channel routes, the interaction callback and webhooks."""

    def _make_attachments(
        self, body: _Body, payload: dict[str, Any], channel: Channel
    ) -> list[Attachment]:
        meta: dict[int, dict[str, Any]] = {}
        for entry in payload.get("attachments") or []:
            try:
                meta[int(entry.get("id"))] = entry
            except (TypeError, ValueError):
                continue
        out = []
        for index, filename, _ctype, data in sorted(body.files, key=lambda f: f[0]):
            info = meta.get(index, {})
            name = info.get("filename") or filename
            out.append(
                self._store_attachment(
                    filename=name,
                    data=data,
                    content_type=mimetypes.guess_type(name)[0],  # Discord sniffs by extension
                    channel_id=channel.id,
                    description=info.get("description"),
                )
            )
        return out

    def _store_attachment(
        self,
        *,
        filename: str,
        data: bytes,
        content_type: str | None,
        channel_id: int,
        description: str | None = None,
        ephemeral: bool = False,
        **behaviour: Any,
    ) -> Attachment:
        att = Attachment(
            id=self.snowflake(),
            filename=filename,
            content_type=content_type,
            data=data,
            channel_id=channel_id,
            created_at=self.clock.time(),
            description=description,
            ephemeral=ephemeral,
            **behaviour,
        )
        now = int(self.clock.time())
        expires = int(now + ATTACHMENT_URL_LIFETIME)
        signature = hashlib.sha256(f"{att.id}:{expires}".encode()).hexdigest()[:32]
        # Shaped like Discord's signed CDN URLs (ex = expiry, is = issued, hm = signature).
        att.url = (
            f"{self.cdn_base}/attachments/{channel_id}/{att.id}/{quote(filename)}"
            f"?ex={expires:x}&is={now:x}&hm={signature}&"
        )
        self._attachments[att.id] = att
        return att

    def _new_message(
        self,
        channel: Channel,
        payload: dict[str, Any],
        body: _Body,
        *,
        interaction: Interaction | None = None,
        extra_flags: int = 0,
        loading: bool = False,
    ) -> Message:
        flags = int(payload.get("flags") or 0)
        allowed_flags = (
            MessageFlag.SUPPRESS_EMBEDS
            | MessageFlag.SUPPRESS_NOTIFICATIONS
            | MessageFlag.IS_COMPONENTS_V2
        )
        if interaction is not None:
            allowed_flags |= MessageFlag.EPHEMERAL
        flags = (flags & allowed_flags) | extra_flags
        msg = Message(
            id=self.snowflake(),
            channel_id=channel.id,
            guild_id=channel.guild_id,
            author=self.bot,
            content=payload.get("content") or "",
            embeds=list(payload.get("embeds") or []),
            components=list(payload.get("components") or []),
            attachments=self._make_attachments(body, payload, channel),
            flags=flags,
            nonce=payload.get("nonce"),
            allowed_mentions=payload.get("allowed_mentions"),
            message_reference=payload.get("message_reference"),
            tts=bool(payload.get("tts")),
            webhook_id=self.application_id if interaction is not None else None,
            interaction=interaction,
            created_at=self.clock.time(),
        )
        if not loading:
            msg.pinged = msg.mentions = self._pings_for(msg, channel)
        self._messages[msg.id] = msg
        self._channel_messages[channel.id].append(msg)
        if not msg.ephemeral:
            channel.last_message_id = msg.id
            self._message_event("MESSAGE_CREATE", msg)
        return msg

    def _pings_for(self, msg: Message, channel: Channel) -> Pinged:
        if msg.ephemeral:
            return NOBODY  # ephemeral messages notify no one
        return self._compute_pings(
            msg.content, msg.allowed_mentions, channel, msg.message_reference
        )

    def _edit_message(self, msg: Message, payload: dict[str, Any], body: _Body) -> None:
        channel = self.channels[msg.channel_id]
        was_loading = msg.loading
        if "content" in payload:
            msg.content = payload.get("content") or ""
        if "embeds" in payload:
            msg.embeds = list(payload.get("embeds") or [])
        if "components" in payload:
            msg.components = list(payload.get("components") or [])
        if "allowed_mentions" in payload:
            msg.allowed_mentions = payload.get("allowed_mentions")
        if "flags" in payload and payload["flags"] is not None:
            changeable = MessageFlag.SUPPRESS_EMBEDS | MessageFlag.IS_COMPONENTS_V2
            msg.flags = (msg.flags & ~changeable) | (int(payload["flags"]) & changeable)
        new_files = self._make_attachments(body, payload, channel)
        if "attachments" in payload:
            keep_ids = set()
            for entry in payload.get("attachments") or []:
                try:
                    keep_ids.add(int(entry.get("id")))
                except (TypeError, ValueError):
                    continue
            msg.attachments = [a for a in msg.attachments if a.id in keep_ids] + new_files
        else:
            msg.attachments = msg.attachments + new_files
        msg.flags &= ~MessageFlag.LOADING
        msg.edited_at = None if was_loading else self.clock.time()
        msg.edits.append(payload)
        msg.edit_times.append(self.clock.time())
        pings = self._pings_for(msg, channel)
        msg.mentions = pings
        if was_loading:
            # A deferred response notifies when it is first filled in, like a new message.
            msg.pinged = pings
        if not msg.ephemeral:
            self._message_event("MESSAGE_UPDATE", msg)

    def _delete_message(self, msg: Message) -> None:
        msg.deleted = True
        if not msg.ephemeral:
            data: dict[str, Any] = {"id": str(msg.id), "channel_id": str(msg.channel_id)}
            if msg.guild_id is not None:
                data["guild_id"] = str(msg.guild_id)
            self._message_event("MESSAGE_DELETE", msg, data=data)

    def message_payload(self, msg: Message) -> dict[str, Any]:
        """The message object Discord would return for ``msg``."""
        mentions = [self.users[u].payload() for u in sorted(msg.mentions.users) if u in self.users]
        data: dict[str, Any] = {
            "id": str(msg.id),
            "channel_id": str(msg.channel_id),
            "type": 0,
            "content": msg.content,
            "author": msg.author.payload(),
            "attachments": [a.payload() for a in msg.attachments],
            "embeds": msg.embeds,
            "components": msg.components,
            "mentions": mentions,
            "mention_roles": [str(r) for r in sorted(msg.mentions.roles)],
            "mention_everyone": msg.mentions.everyone,
            "pinned": False,
            "tts": msg.tts,
            "timestamp": _iso(msg.created_at),
            "edited_timestamp": None if msg.edited_at is None else _iso(msg.edited_at),
            "flags": msg.flags,
        }
        if msg.nonce is not None:
            data["nonce"] = msg.nonce
        if msg.webhook_id is not None:
            data["webhook_id"] = str(msg.webhook_id)
            data["application_id"] = str(self.application_id)
        if msg.message_reference:
            data["type"] = 19
            ref = dict(msg.message_reference)
            ref.setdefault("channel_id", str(msg.channel_id))
            data["message_reference"] = {
                k: str(v) if k.endswith("_id") else v for k, v in ref.items()
            }
            target = self._messages.get(int(ref.get("message_id") or 0))
            if target is not None:
                data["referenced_message"] = (
                    None if target.deleted else self._message_payload_shallow(target)
                )
        ix = msg.interaction
        if ix is not None:
            if ix.type == InteractionType.APPLICATION_COMMAND and ix.original is msg:
                data["type"] = 20
            data["interaction_metadata"] = {
                "id": str(ix.id),
                "type": ix.type,
                "user": ix.user.payload(),
                "authorizing_integration_owners": self._integration_owners(ix.guild, ix.user),
            }
            if ix.type == InteractionType.APPLICATION_COMMAND:
                data["interaction_metadata"]["name"] = ix.name
                data["interaction_metadata"]["command_type"] = 1
            if ix.message is not None:
                data["interaction_metadata"]["interacted_message_id"] = str(ix.message.id)
        return data

    def _message_payload_shallow(self, msg: Message) -> dict[str, Any]:
        saved = msg.message_reference
        msg.message_reference = None
        try:
            return self.message_payload(msg)
        finally:
            msg.message_reference = saved
