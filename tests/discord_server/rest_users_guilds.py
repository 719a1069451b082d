"""REST routes for the gateway URL, users, the application, guilds, members and DM channels."""

from __future__ import annotations

import hashlib
from typing import Any

from aiohttp import web

from tests.discord_server.constants import DEFAULT_BOT_PERMISSIONS, Intent
from tests.discord_server.errors import DiscordHTTPError, _unknown
from tests.discord_server.http import _BODY, _snowflake_int
from tests.discord_server.model import Guild


class UsersGuildsRoutes:
    """GET /gateway, /users, /applications/@me, /guilds; POST /users/@me/channels."""

    async def _get_gateway(self, request: web.Request) -> web.Response:
        return self._json({"url": self.gateway_url})

    async def _get_gateway_bot(self, request: web.Request) -> web.Response:
        return self._json(
            {
                "url": self.gateway_url,
                "shards": 1,
                "session_start_limit": {
                    "total": 1000,
                    "remaining": 1000,
                    "reset_after": 86_400_000,
                    "max_concurrency": 1,
                },
            }
        )

    async def _get_me(self, request: web.Request) -> web.Response:
        return self._json(self._bot_user_payload())

    def _bot_user_payload(self) -> dict[str, Any]:
        return {**self.bot.payload(), "verified": True, "mfa_enabled": False, "locale": "en-US"}

    async def _get_user(self, request: web.Request) -> web.Response:
        user = self.users.get(_snowflake_int(request.match_info["user_id"], ["user_id"]))
        if user is None:
            raise _unknown("User", 10013)
        return self._json(user.payload())

    async def _get_my_guilds(self, request: web.Request) -> web.Response:
        return self._json(
            [
                {
                    "id": str(g.id),
                    "name": g.name,
                    "icon": None,
                    "owner": False,
                    "permissions": str(self.permissions_for(g, self.bot.id)),
                    "features": [],
                }
                for g in self.guilds.values()
                if self.bot.id in g.members
            ]
        )

    def _application_flags(self) -> int:
        flags = 0
        if self.privileged_intents & Intent.GUILD_PRESENCES:
            flags |= 1 << 13  # GATEWAY_PRESENCE_LIMITED
        if self.privileged_intents & Intent.GUILD_MEMBERS:
            flags |= 1 << 15  # GATEWAY_GUILD_MEMBERS_LIMITED
        if self.privileged_intents & Intent.MESSAGE_CONTENT:
            flags |= 1 << 19  # GATEWAY_MESSAGE_CONTENT_LIMITED
        return flags

    async def _get_application(self, request: web.Request) -> web.Response:
        return self._json(
            {
                "id": str(self.application_id),
                "name": self.bot.username,
                "icon": None,
                "description": "",
                "summary": "",
                "type": None,
                "rpc_origins": [],
                "bot_public": True,
                "bot_require_code_grant": False,
                "bot": self.bot.payload(),
                "owner": self.owner.payload(),
                "team": None,
                "verify_key": hashlib.sha256(self.token.encode()).hexdigest(),
                "flags": self._application_flags(),
                "hook": True,
                "interactions_endpoint_url": None,
                "redirect_uris": [],
                "tags": [],
                "approximate_guild_count": sum(
                    1 for g in self.guilds.values() if self.bot.id in g.members
                ),
                "integration_types_config": {"0": {}},
                "install_params": {
                    "scopes": ["bot", "applications.commands"],
                    "permissions": str(DEFAULT_BOT_PERMISSIONS),
                },
            }
        )

    def _guild_for(self, request: web.Request) -> Guild:
        gid = _snowflake_int(request.match_info["guild_id"], ["guild_id"])
        guild = self.guilds.get(gid)
        if guild is None:
            raise _unknown("Guild", 10004)
        if self.bot.id not in guild.members:
            raise DiscordHTTPError(403, 50001, "Missing Access")
        return guild

    def _guild_payload(self, guild: Guild) -> dict[str, Any]:
        return {
            "id": str(guild.id),
            "name": guild.name,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "banner": None,
            "description": None,
            "owner_id": str(guild.owner_id),
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 1,
            "explicit_content_filter": 0,
            "roles": [r.payload() for r in guild.roles.values()],
            "emojis": [],
            "stickers": [],
            "features": [],
            "mfa_level": 0,
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "public_updates_channel_id": None,
            "safety_alerts_channel_id": None,
            "vanity_url_code": None,
            "premium_tier": guild.premium_tier,
            "premium_subscription_count": 0,
            "preferred_locale": guild.locale,
            "nsfw_level": 0,
            "premium_progress_bar_enabled": False,
            "max_members": 500_000,
            "max_video_channel_users": 25,
        }

    async def _get_guild(self, request: web.Request) -> web.Response:
        return self._json(self._guild_payload(self._guild_for(request)))

    async def _get_guild_channels(self, request: web.Request) -> web.Response:
        guild = self._guild_for(request)
        return self._json([c.payload() for c in guild.channels.values()])

    async def _get_guild_roles(self, request: web.Request) -> web.Response:
        guild = self._guild_for(request)
        return self._json([r.payload() for r in guild.roles.values()])

    async def _get_member(self, request: web.Request) -> web.Response:
        guild = self._guild_for(request)
        member = guild.members.get(_snowflake_int(request.match_info["user_id"], ["user_id"]))
        if member is None:
            raise _unknown("Member", 10007)
        return self._json(member.payload())

    async def _create_dm(self, request: web.Request) -> web.Response:
        body = request[_BODY].json or {}
        uid = _snowflake_int(body.get("recipient_id"), ["recipient_id"])
        user = self.users.get(uid)
        if user is None or user is self.bot:
            raise DiscordHTTPError(400, 50033, "Invalid Recipient(s)")
        return self._json(self.dm_channel(user).payload())
