"""The world the server keeps: users, roles, channels, members, guilds, attachments, messages,
commands, and its records of requests and faults (plain dataclasses with their payloads).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tests.discord_server.clock import _iso
from tests.discord_server.constants import DEFAULT_UPLOAD_LIMIT, ChannelType, MessageFlag, MiB

if TYPE_CHECKING:
    from tests.discord_server.interaction import Interaction


@dataclass(eq=False)
class User:
    id: int
    username: str
    global_name: str | None = None
    bot: bool = False
    dms_open: bool = True  # False: DMs from the bot fail with 50007

    @property
    def mention(self) -> str:
        return f"<@{self.id}>"

    def payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "username": self.username,
            "discriminator": "0",
            "global_name": self.global_name,
            "avatar": None,
            "bot": self.bot,
            "system": False,
            "public_flags": 0,
            "flags": 0,
            "banner": None,
            "accent_color": None,
            "avatar_decoration_data": None,
        }


@dataclass(eq=False)
class Role:
    id: int
    guild_id: int
    name: str
    permissions: int
    position: int = 0
    mentionable: bool = False
    managed: bool = False
    bot_id: int | None = None

    @property
    def mention(self) -> str:
        return f"<@&{self.id}>"

    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": str(self.id),
            "name": self.name,
            "color": 0,
            "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
            "hoist": False,
            "icon": None,
            "unicode_emoji": None,
            "position": self.position,
            "permissions": str(self.permissions),
            "managed": self.managed,
            "mentionable": self.mentionable,
            "flags": 0,
        }
        if self.bot_id is not None:
            data["tags"] = {"bot_id": str(self.bot_id)}
        return data


@dataclass(eq=False)
class Overwrite:
    id: int
    type: int  # 0 role, 1 member
    allow: int = 0
    deny: int = 0

    def payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "type": self.type,
            "allow": str(self.allow),
            "deny": str(self.deny),
        }


@dataclass(eq=False)
class Channel:
    id: int
    type: int
    name: str | None
    guild_id: int | None = None
    position: int = 0
    overwrites: list[Overwrite] = field(default_factory=list)
    recipient: User | None = None  # DM channels
    last_message_id: int | None = None

    @property
    def mention(self) -> str:
        return f"<#{self.id}>"

    def payload(self) -> dict[str, Any]:
        if self.type == ChannelType.DM:
            assert self.recipient is not None
            return {
                "id": str(self.id),
                "type": self.type,
                "last_message_id": _opt_str(self.last_message_id),
                "recipients": [self.recipient.payload()],
                "flags": 0,
            }
        return {
            "id": str(self.id),
            "type": self.type,
            "guild_id": str(self.guild_id),
            "name": self.name,
            "position": self.position,
            "permission_overwrites": [o.payload() for o in self.overwrites],
            "parent_id": None,
            "topic": None,
            "nsfw": False,
            "rate_limit_per_user": 0,
            "last_message_id": _opt_str(self.last_message_id),
            "flags": 0,
        }


@dataclass(eq=False)
class Member:
    user: User
    guild_id: int
    roles: list[int] = field(default_factory=list)
    nick: str | None = None
    joined_at: float = 0.0

    def payload(self) -> dict[str, Any]:
        return {
            "user": self.user.payload(),
            "roles": [str(r) for r in self.roles],
            "nick": self.nick,
            "avatar": None,
            "banner": None,
            "joined_at": _iso(self.joined_at),
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
            "communication_disabled_until": None,
        }


@dataclass(eq=False)
class Guild:
    id: int
    name: str
    owner_id: int
    upload_limit: int = DEFAULT_UPLOAD_LIMIT
    locale: str = "en-US"
    roles: dict[int, Role] = field(default_factory=dict)
    channels: dict[int, Channel] = field(default_factory=dict)
    members: dict[int, Member] = field(default_factory=dict)

    @property
    def everyone(self) -> Role:
        return self.roles[self.id]

    @property
    def text_channels(self) -> list[Channel]:
        return [c for c in self.channels.values() if c.type == ChannelType.GUILD_TEXT]

    def channel(self, name: str) -> Channel:
        for ch in self.channels.values():
            if ch.name == name:
                return ch
        raise KeyError(f"guild {self.name!r} has no channel named {name!r}")

    @property
    def premium_tier(self) -> int:
        # discord.py derives Guild.filesize_limit from the boost tier: keep them consistent.
        if self.upload_limit >= 100 * MiB:
            return 3
        if self.upload_limit >= 50 * MiB:
            return 2
        return 0


@dataclass(eq=False)
class Attachment:
    """A file on the fake CDN: uploaded by the bot, or by a test user for a slash command.

    CDN behaviour knobs (for download tests): ``status`` answers that HTTP status instead,
    ``redirect_to`` answers 302 to that URL, ``delay`` waits before answering, ``chunk_delay``
    waits between 64 KiB chunks, ``extra_bytes`` streams that many more bytes than ``data``
    (a "huge" file), ``send_length=False`` omits Content-Length (chunked transfer).
    ``declared_size`` is the size announced in the interaction payload (default: real size).
    """

    id: int
    filename: str
    content_type: str | None
    data: bytes
    channel_id: int
    created_at: float
    url: str = ""
    description: str | None = None
    ephemeral: bool = False
    status: int | None = None
    redirect_to: str | None = None
    delay: float = 0.0
    chunk_delay: float = 0.0
    extra_bytes: int = 0
    send_length: bool = True
    declared_size: int | None = None
    downloads: int = 0

    @property
    def size(self) -> int:
        return len(self.data)

    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": str(self.id),
            "filename": self.filename,
            "size": self.declared_size if self.declared_size is not None else self.size,
            "url": self.url,
            "proxy_url": self.url,
            "flags": 0,
        }
        if self.content_type:
            data["content_type"] = self.content_type
        if self.description is not None:
            data["description"] = self.description
        if self.ephemeral:
            data["ephemeral"] = True
        return data


@dataclass(frozen=True)
class Pinged:
    """Who a message notified, computed from its content and allowed_mentions."""

    users: frozenset[int] = frozenset()
    roles: frozenset[int] = frozenset()
    everyone: bool = False  # @everyone or @here went through
    here: bool = False

    @property
    def nobody(self) -> bool:
        return not (self.users or self.roles or self.everyone)


NOBODY = Pinged()


@dataclass(eq=False)
class Message:
    id: int
    channel_id: int
    guild_id: int | None
    author: User
    content: str = ""
    embeds: list[dict[str, Any]] = field(default_factory=list)
    components: list[dict[str, Any]] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    flags: int = 0
    nonce: str | int | None = None
    allowed_mentions: dict[str, Any] | None = None
    message_reference: dict[str, Any] | None = None
    tts: bool = False
    webhook_id: int | None = None
    interaction: Interaction | None = None
    created_at: float = 0.0
    edited_at: float | None = None
    deleted: bool = False
    pinged: Pinged = NOBODY
    mentions: Pinged = NOBODY  # what the message object lists as mentioned (after edits)
    edits: list[dict[str, Any]] = field(default_factory=list)  # bodies of every edit, in order
    edit_times: list[float] = field(default_factory=list)  # server clock time of each edit

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & MessageFlag.EPHEMERAL)

    @property
    def loading(self) -> bool:
        return bool(self.flags & MessageFlag.LOADING)

    def walk_components(self) -> Iterable[dict[str, Any]]:
        yield from _walk_components(self.components)

    @property
    def custom_ids(self) -> list[str]:
        return [c["custom_id"] for c in self.walk_components() if c.get("custom_id")]

    @property
    def buttons(self) -> list[dict[str, Any]]:
        return [c for c in self.walk_components() if c.get("type") == 2]

    def file(self, index: int = 0) -> bytes:
        return self.attachments[index].data


@dataclass
class Fault:
    """An injected failure (see :meth:`FakeDiscord.inject`)."""

    method: str
    path_regex: re.Pattern[str]
    status: int
    count: int
    retry_after: float = 0.1
    global_: bool = False
    after: bool = False  # process the request, then answer with the fault (response lost)
    body: dict[str, Any] | None = None
    hits: int = 0

    @property
    def remaining(self) -> int:
        return self.count - self.hits


@dataclass
class RequestRecord:
    method: str
    path: str  # relative to /api/v10 (or the full path for /cdn)
    query: dict[str, str]
    json: Any = None
    files: list[tuple[str, int]] = field(default_factory=list)  # (filename, size)
    status: int | None = None
    code: int | None = None
    fault: bool = False


@dataclass
class CommandWrite:
    method: str
    guild_id: int | None
    day: str
    created: list[str]
    updated: list[str]
    deleted: list[str]


@dataclass(eq=False)
class Command:
    id: int
    guild_id: int | None
    definition: dict[str, Any]
    version: int

    @property
    def name(self) -> str:
        return self.definition["name"]

    @property
    def type(self) -> int:
        return int(self.definition.get("type", 1))

    def payload(self, application_id: int) -> dict[str, Any]:
        d = self.definition
        perms = d.get("default_member_permissions")
        data: dict[str, Any] = {
            "id": str(self.id),
            "application_id": str(application_id),
            "version": str(self.version),
            "type": self.type,
            "name": d["name"],
            "name_localizations": d.get("name_localizations"),
            "description": d.get("description", ""),
            "description_localizations": d.get("description_localizations"),
            "options": d.get("options") or [],
            "default_member_permissions": None if perms is None else str(perms),
            "dm_permission": d.get("dm_permission", True),
            "contexts": d.get("contexts"),
            "integration_types": d.get("integration_types") or [0],
            "nsfw": bool(d.get("nsfw", False)),
        }
        if self.guild_id is not None:
            data["guild_id"] = str(self.guild_id)
        return data


def _opt_str(value: int | None) -> str | None:
    return None if value is None else str(value)


def _walk_components(components: Iterable[dict[str, Any]]) -> Iterable[dict[str, Any]]:
    for comp in components or ():
        if not isinstance(comp, dict):
            continue
        yield comp
        yield from _walk_components(comp.get("components") or ())
        for key in ("accessory", "component"):
            inner = comp.get(key)
            if isinstance(inner, dict):
                yield from _walk_components([inner])
