"""Rule: Discord's permission computation (base role permissions, then channel overwrites)."""

from __future__ import annotations

from tests.discord_server.constants import Perm
from tests.discord_server.model import Channel, Guild


class PermissionRules:
    """A member's permissions in a guild or channel, and the bot's own."""

    def permissions_for(self, guild: Guild, user_id: int, channel: Channel | None = None) -> int:
        """Discord's permission computation (base, then channel overwrites)."""
        if user_id == guild.owner_id:
            return Perm.ALL
        member = guild.members.get(user_id)
        if member is None:
            return 0
        perms = guild.everyone.permissions
        for rid in member.roles:
            role = guild.roles.get(rid)
            if role is not None:
                perms |= role.permissions
        if perms & Perm.ADMINISTRATOR:
            return Perm.ALL
        if channel is None:
            return perms
        by_key = {(o.type, o.id): o for o in channel.overwrites}
        everyone = by_key.get((0, guild.id))
        if everyone is not None:
            perms = (perms & ~everyone.deny) | everyone.allow
        allow = deny = 0
        for rid in member.roles:
            ow = by_key.get((0, rid))
            if ow is not None:
                allow |= ow.allow
                deny |= ow.deny
        perms = (perms & ~deny) | allow
        own = by_key.get((1, user_id))
        if own is not None:
            perms = (perms & ~own.deny) | own.allow
        if not perms & Perm.VIEW_CHANNEL:
            return 0
        if not perms & Perm.SEND_MESSAGES:
            # Discord drops these implicitly when a member cannot send at all.
            perms &= ~(
                Perm.MENTION_EVERYONE
                | Perm.ATTACH_FILES
                | Perm.EMBED_LINKS
                | Perm.SEND_TTS_MESSAGES
            )
        return perms

    def _bot_perms(self, channel: Channel) -> int:
        if channel.guild_id is None:
            return (
                Perm.VIEW_CHANNEL
                | Perm.SEND_MESSAGES
                | Perm.EMBED_LINKS
                | Perm.ATTACH_FILES
                | Perm.READ_MESSAGE_HISTORY
                | Perm.MENTION_EVERYONE
            )
        return self.permissions_for(self.guilds[channel.guild_id], self.bot.id, channel)
