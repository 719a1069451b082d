"""What a test reads back: messages, commands and their writes, requests, interactions."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from tests.discord_server.interaction import Interaction
from tests.discord_server.model import Channel, CommandWrite, Guild, Message, RequestRecord, User


class Inspection:
    """Read-only views of what the bot did."""

    def messages(self, channel: Channel | int, *, include_deleted: bool = False) -> list[Message]:
        """Messages of a channel in creation order (ephemeral ones included, see .ephemeral)."""
        cid = channel.id if isinstance(channel, Channel) else int(channel)
        return [m for m in self._channel_messages.get(cid, []) if include_deleted or not m.deleted]

    def message(self, message_id: int) -> Message:
        return self._messages[int(message_id)]

    def dm_messages(self, user: User) -> list[Message]:
        channel = self._dm_channels.get(user.id)
        return self.messages(channel) if channel else []

    def commands(self, guild: Guild | int | None = None) -> list[dict[str, Any]]:
        """Registered command payloads, global (guild=None) or for one guild."""
        gid = guild.id if isinstance(guild, Guild) else guild
        return [
            c.payload(self.application_id) for c in self._commands.values() if c.guild_id == gid
        ]

    def command_creates(self, guild: Guild | int | None = None, *, day: str | None = None) -> int:
        """How many commands were created (not updated) in a scope on a UTC day (default today)."""
        gid = guild.id if isinstance(guild, Guild) else guild
        day = day or self._today()
        return sum(len(w.created) for w in self.command_log if w.guild_id == gid and w.day == day)

    def command_writes(self, guild: Guild | int | None = None) -> list[CommandWrite]:
        """Every command-changing request (PUT/POST/PATCH/DELETE) for a scope."""
        gid = guild.id if isinstance(guild, Guild) else guild
        return [w for w in self.command_log if w.guild_id == gid]

    def requests_for(self, method: str, path_regex: str) -> list[RequestRecord]:
        pattern = re.compile(path_regex)
        return [r for r in self.requests if r.method == method.upper() and pattern.search(r.path)]

    def _today(self) -> str:
        return dt.datetime.fromtimestamp(self.clock.time(), dt.UTC).date().isoformat()

    def interaction(self, key: int | str) -> Interaction:
        """An interaction by id or by token."""
        found = self._ix_by_token.get(key) if isinstance(key, str) else self._ix_by_id.get(key)
        if found is None:
            raise KeyError(f"no interaction {key!r}")
        return found
