"""REST routes for channels and their messages (create with nonce idempotency, edit, delete)."""

from __future__ import annotations

from aiohttp import web

from tests.discord_server.constants import Perm
from tests.discord_server.errors import DiscordHTTPError, _missing_permissions, _unknown
from tests.discord_server.http import _BODY, _Body, _snowflake_int
from tests.discord_server.model import Channel, Message


class ChannelRoutes:
    """/channels/{id} and /channels/{id}/messages."""

    def _channel_for(self, request: web.Request, *, need: int = Perm.VIEW_CHANNEL) -> Channel:
        cid = _snowflake_int(request.match_info["channel_id"], ["channel_id"])
        channel = self.channels.get(cid)
        if channel is None:
            raise _unknown("Channel", 10003)
        if channel.guild_id is not None:
            guild = self.guilds[channel.guild_id]
            if self.bot.id not in guild.members:
                raise DiscordHTTPError(403, 50001, "Missing Access")
            perms = self._bot_perms(channel)
            if not perms & Perm.VIEW_CHANNEL:
                raise DiscordHTTPError(403, 50001, "Missing Access")
            if perms & need != need:
                raise _missing_permissions()
        return channel

    async def _get_channel(self, request: web.Request) -> web.Response:
        return self._json(self._channel_for(request).payload())

    async def _typing(self, request: web.Request) -> web.Response:
        self._channel_for(request, need=Perm.VIEW_CHANNEL | Perm.SEND_MESSAGES)
        return self._no_content()

    def _channel_message(self, request: web.Request, channel: Channel) -> Message:
        mid = _snowflake_int(request.match_info["message_id"], ["message_id"])
        msg = self._messages.get(mid)
        if msg is None or msg.deleted or msg.channel_id != channel.id or msg.ephemeral:
            raise _unknown("Message", 10008)
        return msg

    async def _list_messages(self, request: web.Request) -> web.Response:
        channel = self._channel_for(request, need=Perm.VIEW_CHANNEL | Perm.READ_MESSAGE_HISTORY)
        limit = max(1, min(100, int(request.query.get("limit", 50))))
        visible = [m for m in self.messages(channel) if not m.ephemeral]
        if "before" in request.query:
            before = int(request.query["before"])
            visible = [m for m in visible if m.id < before]
        if "after" in request.query:
            after = int(request.query["after"])
            visible = [m for m in visible if m.id > after][:limit]
        newest_first = list(reversed(visible))[:limit]
        return self._json([self.message_payload(m) for m in newest_first])

    async def _get_channel_message(self, request: web.Request) -> web.Response:
        channel = self._channel_for(request, need=Perm.VIEW_CHANNEL | Perm.READ_MESSAGE_HISTORY)
        return self._json(self.message_payload(self._channel_message(request, channel)))

    async def _create_channel_message(self, request: web.Request) -> web.Response:
        body: _Body = request[_BODY]
        payload = body.json if isinstance(body.json, dict) else {}
        channel = self._channel_for(request)
        self._check_files(body, channel)
        if channel.guild_id is not None:
            perms = self._bot_perms(channel)
            if not perms & Perm.SEND_MESSAGES:
                raise _missing_permissions()
            if body.files and not perms & Perm.ATTACH_FILES:
                raise _missing_permissions()
            if payload.get("embeds") and not perms & Perm.EMBED_LINKS:
                raise _missing_permissions()
        else:
            assert channel.recipient is not None
            if not channel.recipient.dms_open:
                raise DiscordHTTPError(403, 50007, "Cannot send messages to this user")
        self._validate_message_body(payload, body, creating=True)
        nonce = payload.get("nonce")
        if nonce is not None and payload.get("enforce_nonce"):
            key = (channel.id, self.bot.id, str(nonce))
            existing = self._nonces.get(key)
            if (
                existing is not None
                and self.clock.time() - existing.created_at <= self.nonce_window
            ):
                # Discord answers with the message created earlier: no duplicate.
                return self._json(self.message_payload(existing))
        msg = self._new_message(channel, payload, body)
        if nonce is not None and payload.get("enforce_nonce"):
            self._nonces[(channel.id, self.bot.id, str(nonce))] = msg
        return self._json(self.message_payload(msg))

    async def _edit_channel_message(self, request: web.Request) -> web.Response:
        body: _Body = request[_BODY]
        payload = body.json if isinstance(body.json, dict) else {}
        channel = self._channel_for(request)
        msg = self._channel_message(request, channel)
        if msg.author is not self.bot:
            raise DiscordHTTPError(403, 50005, "Cannot edit a message authored by another user")
        self._check_files(body, channel)
        self._validate_message_body(payload, body, creating=False)
        self._check_not_emptied(msg, payload, body)
        self._edit_message(msg, payload, body)
        return self._json(self.message_payload(msg))

    async def _delete_channel_message(self, request: web.Request) -> web.Response:
        channel = self._channel_for(request)
        msg = self._channel_message(request, channel)
        if msg.author is not self.bot and not self._bot_perms(channel) & Perm.MANAGE_MESSAGES:
            raise _missing_permissions()
        self._delete_message(msg)
        return self._no_content()
