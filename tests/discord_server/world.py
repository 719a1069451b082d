"""Building the world from a test: users, guilds, channels, roles, members, overwrites, DMs."""

from __future__ import annotations

from collections.abc import Sequence

from tests.discord_server.constants import (
    DEFAULT_BOT_PERMISSIONS,
    DEFAULT_EVERYONE_PERMISSIONS,
    ChannelType,
    Intent,
    Perm,
)
from tests.discord_server.model import Channel, Guild, Member, Overwrite, Role, User


class WorldBuilding:
    """Test-side setup; changes that Discord announces go out on the gateway."""

    def add_user(self, username: str, *, bot: bool = False, global_name: str | None = None) -> User:
        user = User(id=self.snowflake(), username=username, bot=bot, global_name=global_name)
        self.users[user.id] = user
        return user

    def add_guild(
        self,
        name: str = "Test Server",
        *,
        owner: User | None = None,
        channels: Sequence[str] = ("general",),
        upload_limit: int | None = None,
        everyone_permissions: int = DEFAULT_EVERYONE_PERMISSIONS,
        bot_permissions: int = DEFAULT_BOT_PERMISSIONS,
        with_bot: bool = True,
        locale: str = "en-US",
    ) -> Guild:
        """A guild with an owner, @everyone, text channels and (by default) the bot as member."""
        owner = owner or self.add_user(f"{name.lower().replace(' ', '-')}-owner")
        gid = self.snowflake()
        guild = Guild(
            id=gid,
            name=name,
            owner_id=owner.id,
            upload_limit=upload_limit or self.default_upload_limit,
            locale=locale,
        )
        guild.roles[gid] = Role(
            id=gid, guild_id=gid, name="@everyone", permissions=everyone_permissions
        )
        self.guilds[gid] = guild
        self._add_member(guild, owner)
        for position, channel_name in enumerate(channels):
            self.add_channel(guild, channel_name, position=position, _announce=False)
        if with_bot:
            role = Role(
                id=self.snowflake(),
                guild_id=gid,
                name=self.bot.username,
                permissions=bot_permissions,
                position=1,
                managed=True,
                bot_id=self.bot.id,
            )
            guild.roles[role.id] = role
            self._add_member(guild, self.bot, roles=[role.id])
            self._broadcast_guild_create(guild)
        return guild

    def bot_join(self, guild: Guild, *, permissions: int = DEFAULT_BOT_PERMISSIONS) -> None:
        """Add the bot to a guild created with ``with_bot=False`` (sends GUILD_CREATE)."""
        if self.bot.id in guild.members:
            return
        role = Role(
            id=self.snowflake(),
            guild_id=guild.id,
            name=self.bot.username,
            permissions=permissions,
            position=1,
            managed=True,
            bot_id=self.bot.id,
        )
        guild.roles[role.id] = role
        self._add_member(guild, self.bot, roles=[role.id])
        self._broadcast_guild_create(guild)

    def add_channel(
        self, guild: Guild, name: str, *, position: int | None = None, _announce: bool = True
    ) -> Channel:
        channel = Channel(
            id=self.snowflake(),
            type=ChannelType.GUILD_TEXT,
            name=name,
            guild_id=guild.id,
            position=len(guild.channels) if position is None else position,
        )
        guild.channels[channel.id] = channel
        self.channels[channel.id] = channel
        if _announce:
            self._guild_event(guild.id, "CHANNEL_CREATE", channel.payload())
        return channel

    def add_role(
        self, guild: Guild, name: str, *, permissions: int = 0, mentionable: bool = False
    ) -> Role:
        role = Role(
            id=self.snowflake(),
            guild_id=guild.id,
            name=name,
            permissions=permissions,
            position=len(guild.roles),
            mentionable=mentionable,
        )
        guild.roles[role.id] = role
        self._guild_event(
            guild.id, "GUILD_ROLE_CREATE", {"guild_id": str(guild.id), "role": role.payload()}
        )
        return role

    def set_role_permissions(self, role: Role, permissions: int) -> None:
        role.permissions = permissions
        self._guild_event(
            role.guild_id,
            "GUILD_ROLE_UPDATE",
            {"guild_id": str(role.guild_id), "role": role.payload()},
        )

    def add_member(
        self,
        guild: Guild,
        user: User,
        *,
        roles: Sequence[Role] = (),
        permissions: int | None = None,
        nick: str | None = None,
    ) -> Member:
        """Make ``user`` a member; ``permissions`` (Perm bits) adds a role granting exactly them."""
        role_ids = [r.id for r in roles]
        if permissions is not None:
            role_ids.append(
                self.add_role(guild, f"{user.username}-perms", permissions=permissions).id
            )
        member = self._add_member(guild, user, roles=role_ids, nick=nick)
        if self._sessions:
            self._guild_event(
                guild.id,
                "GUILD_MEMBER_ADD",
                {**member.payload(), "guild_id": str(guild.id)},
                intent=Intent.GUILD_MEMBERS,
            )
        return member

    def _add_member(
        self, guild: Guild, user: User, *, roles: Sequence[int] = (), nick: str | None = None
    ) -> Member:
        member = Member(
            user=user, guild_id=guild.id, roles=list(roles), nick=nick, joined_at=self.clock.time()
        )
        guild.members[user.id] = member
        return member

    def set_overwrite(
        self,
        channel: Channel,
        target: User | Role,
        *,
        allow: int = 0,
        deny: int = 0,
    ) -> None:
        """Set a channel permission overwrite (replaces an existing one for ``target``)."""
        kind = 0 if isinstance(target, Role) else 1
        channel.overwrites = [
            o for o in channel.overwrites if not (o.id == target.id and o.type == kind)
        ]
        if allow or deny:
            channel.overwrites.append(Overwrite(id=target.id, type=kind, allow=allow, deny=deny))
        if channel.guild_id is not None:
            self._guild_event(channel.guild_id, "CHANNEL_UPDATE", channel.payload())

    def set_bot_can_send(self, channel: Channel, allowed: bool) -> None:
        """Deny (or restore) the bot's Send Messages in ``channel`` -> 403 50013 on sends."""
        self.set_overwrite(channel, self.bot, deny=0 if allowed else Perm.SEND_MESSAGES)

    def close_dms(self, user: User, closed: bool = True) -> None:
        """The user refuses DMs from server members: the bot's DMs fail with 403 50007."""
        user.dms_open = not closed

    def set_upload_limit(self, guild: Guild, limit: int) -> None:
        guild.upload_limit = limit

    def dm_channel(self, user: User) -> Channel:
        channel = self._dm_channels.get(user.id)
        if channel is None:
            channel = Channel(id=self.snowflake(), type=ChannelType.DM, name=None, recipient=user)
            self._dm_channels[user.id] = channel
            self.channels[channel.id] = channel
        return channel
