"""A local Discord-compatible server for end-to-end tests (REST v10 + gateway + CDN).

The tests run the real discord.py client against it: point the client at
``server.api_base`` (``discord.http.Route.BASE``) and ``server.gateway_url``
(``discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(...)``).

The server keeps an inspectable model of what a bot did (messages with their attachments'
bytes, interaction responses, edits, command syncs, what each message pinged) and enforces the
Discord rules a bot can break: 3 s to acknowledge an interaction, one initial response, the
15-minute interaction token, upload size, component and modal limits, allowed mentions,
channel permissions, closed DMs, nonce idempotency. Faults (429 with retry_after, 5xx) can be
injected per route. When ``ZOETROPE_DISCORD_SPEC`` names Discord's OpenAPI file, every request
body is validated against it (see tests/discord_spec.py).

Typical use::

    async with FakeDiscord() as server:
        guild = server.add_guild("Test")
        alice = server.add_user("alice")
        server.add_member(guild, alice)
        # ... start a discord.py client with token=server.token ...
        ix = await server.slash(guild, guild.text_channels[0], alice, "animate",
                                options={"prompt": "waves"},
                                attachments=[("cat.png", png_bytes, "image/png")])
        assert await ix.acknowledged() == 5
        await server.wait_for(lambda: ix.followups, what="a followup")

Nothing here imports discord.py: the server speaks the wire protocol only.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import hashlib
import json
import math
import mimetypes
import re
import secrets
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from aiohttp import WSMsgType, web

from tests.discord_spec import DiscordSpec, SpecViolation, discord_error_body, spec_from_env

API_PREFIX = "/api/v10"
DISCORD_EPOCH_MS = 1_420_070_400_000
MiB = 1024 * 1024
DEFAULT_UPLOAD_LIMIT = 10 * MiB  # Discord's per-file limit for unboosted servers since 2025
ACK_TIMEOUT = 3.0
TOKEN_LIFETIME = 15 * 60.0
ATTACHMENT_URL_LIFETIME = 24 * 3600.0


class Perm:
    """Permission bits (https://discord.com/developers/docs/topics/permissions)."""

    CREATE_INSTANT_INVITE = 1 << 0
    KICK_MEMBERS = 1 << 1
    ADMINISTRATOR = 1 << 3
    MANAGE_CHANNELS = 1 << 4
    MANAGE_GUILD = 1 << 5
    ADD_REACTIONS = 1 << 6
    VIEW_CHANNEL = 1 << 10
    SEND_MESSAGES = 1 << 11
    SEND_TTS_MESSAGES = 1 << 12
    MANAGE_MESSAGES = 1 << 13
    EMBED_LINKS = 1 << 14
    ATTACH_FILES = 1 << 15
    READ_MESSAGE_HISTORY = 1 << 16
    MENTION_EVERYONE = 1 << 17
    USE_EXTERNAL_EMOJIS = 1 << 18
    CHANGE_NICKNAME = 1 << 26
    MANAGE_ROLES = 1 << 28
    USE_APPLICATION_COMMANDS = 1 << 31
    SEND_MESSAGES_IN_THREADS = 1 << 38
    ALL = (1 << 53) - 1


# What a new server's @everyone role gets (mention @everyone included, as on Discord), and what
# the bot's managed role gets from a typical invite link of ours.
DEFAULT_EVERYONE_PERMISSIONS = (
    Perm.CREATE_INSTANT_INVITE
    | Perm.ADD_REACTIONS
    | Perm.VIEW_CHANNEL
    | Perm.SEND_MESSAGES
    | Perm.EMBED_LINKS
    | Perm.ATTACH_FILES
    | Perm.READ_MESSAGE_HISTORY
    | Perm.MENTION_EVERYONE
    | Perm.USE_EXTERNAL_EMOJIS
    | Perm.CHANGE_NICKNAME
    | Perm.USE_APPLICATION_COMMANDS
    | Perm.SEND_MESSAGES_IN_THREADS
)
DEFAULT_BOT_PERMISSIONS = (
    Perm.VIEW_CHANNEL
    | Perm.SEND_MESSAGES
    | Perm.EMBED_LINKS
    | Perm.ATTACH_FILES
    | Perm.READ_MESSAGE_HISTORY
    | Perm.SEND_MESSAGES_IN_THREADS
)


class MessageFlag:
    SUPPRESS_EMBEDS = 1 << 2
    EPHEMERAL = 1 << 6
    LOADING = 1 << 7
    SUPPRESS_NOTIFICATIONS = 1 << 12
    IS_COMPONENTS_V2 = 1 << 15


class Intent:
    GUILDS = 1 << 0
    GUILD_MEMBERS = 1 << 1
    GUILD_PRESENCES = 1 << 8
    GUILD_MESSAGES = 1 << 9
    DIRECT_MESSAGES = 1 << 12
    MESSAGE_CONTENT = 1 << 15
    PRIVILEGED = GUILD_MEMBERS | GUILD_PRESENCES | MESSAGE_CONTENT


class InteractionType:
    PING = 1
    APPLICATION_COMMAND = 2
    MESSAGE_COMPONENT = 3
    AUTOCOMPLETE = 4
    MODAL_SUBMIT = 5


class Callback:
    """Interaction callback (response) types."""

    PONG = 1
    CHANNEL_MESSAGE = 4
    DEFERRED_CHANNEL_MESSAGE = 5
    DEFERRED_UPDATE_MESSAGE = 6
    UPDATE_MESSAGE = 7
    AUTOCOMPLETE_RESULT = 8
    MODAL = 9


class ChannelType:
    GUILD_TEXT = 0
    DM = 1
    GUILD_CATEGORY = 4


_OPTION_TYPES = {
    "sub_command": 1,
    "sub_command_group": 2,
    "string": 3,
    "integer": 4,
    "boolean": 5,
    "user": 6,
    "channel": 7,
    "role": 8,
    "mentionable": 9,
    "number": 10,
    "attachment": 11,
}
_SELECT_TYPES = (3, 5, 6, 7, 8)
_COMMAND_NAME = re.compile(r"^[-_'\w]{1,32}$")


# --------------------------------------------------------------------------------------------
# Errors


class DiscordHTTPError(Exception):
    """An error answer in Discord's format: HTTP status + JSON ``{"code", "message"[, errors]}``."""

    def __init__(
        self,
        status: int,
        code: int,
        message: str,
        *,
        errors: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {code} {message}")
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors
        self.extra = extra or {}
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"message": self.message, "code": self.code}
        if self.errors is not None:
            body["errors"] = self.errors
        body.update(self.extra)
        return body


def _form_error(path: Sequence[str | int], code: str, message: str) -> DiscordHTTPError:
    """400 "Invalid Form Body" (50035) with the error nested at ``path`` as Discord does."""
    tree: dict[str, Any] = {}
    node = tree
    for part in path:
        node = node.setdefault(str(part), {})
    node["_errors"] = [{"code": code, "message": message}]
    return DiscordHTTPError(400, 50035, "Invalid Form Body", errors=tree)


def _unknown(what: str, code: int) -> DiscordHTTPError:
    return DiscordHTTPError(404, code, f"Unknown {what}")


def _missing_permissions() -> DiscordHTTPError:
    return DiscordHTTPError(403, 50013, "Missing Permissions")


class CommandUnavailable(LookupError):
    """Discord would not offer this command to this user here (context or permissions)."""


class InteractionFailed(AssertionError):
    """The interaction was not acknowledged in time: the user sees "This interaction failed"."""


# --------------------------------------------------------------------------------------------
# Clock


class Clock:
    """Time as the server sees it: real time plus an offset that tests can advance.

    Interaction deadlines (3 s), token lifetimes (15 min), nonce windows, attachment URL expiry
    and the per-day command-create count all read this clock.
    """

    def __init__(self) -> None:
        self.offset = 0.0
        self._listeners: list[Callable[[], None]] = []

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    def time(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        """Jump forward by ``seconds`` (e.g. 16 * 60 to kill every interaction token)."""
        if seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds!r}")
        self.offset += seconds
        for listener in list(self._listeners):
            listener()

    def on_advance(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat()


# --------------------------------------------------------------------------------------------
# Model


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


class Interaction:
    """One interaction the test created, and everything the bot did with it."""

    def __init__(
        self,
        server: FakeDiscord,
        *,
        id: int,
        token: str,
        type: int,
        guild: Guild | None,
        channel: Channel,
        user: User,
        data: dict[str, Any],
        message: Message | None,
        created_at: float,
    ) -> None:
        self._server = server
        self.id = id
        self.token = token
        self.type = type
        self.guild = guild
        self.channel = channel
        self.user = user
        self.data = data
        self.message = message  # the message a component was on
        self.created_at = created_at
        self.payload: dict[str, Any] = {}
        self.delivered = False  # INTERACTION_CREATE written to a live gateway socket
        self.response_type: int | None = None
        self.response_data: dict[str, Any] | None = None
        self.responded_after: float | None = None  # seconds from creation to the callback
        self.failed = False
        self.original: Message | None = None
        self.followups: list[Message] = []
        self.original_edits: list[dict[str, Any]] = []
        self.modal: dict[str, Any] | None = None
        self.autocomplete_choices: list[dict[str, Any]] | None = None
        self.callback_results: list[tuple[int, int | None]] = []  # (HTTP status, error code)
        self.webhook_errors: list[tuple[str, str, int, int | None]] = []

    @property
    def guild_id(self) -> int | None:
        return self.guild.id if self.guild else None

    @property
    def channel_id(self) -> int:
        return self.channel.id

    @property
    def name(self) -> str:
        return self.data.get("name") or self.data.get("custom_id", "")

    @property
    def acknowledged_ok(self) -> bool:
        """True once the initial response was accepted (no waiting; see acknowledged())."""
        return self.response_type is not None

    @property
    def ephemeral(self) -> bool:
        if self.original is not None and self.original is not self.message:
            return self.original.ephemeral
        flags = (self.response_data or {}).get("flags") or 0
        return bool(int(flags) & MessageFlag.EPHEMERAL)

    @property
    def status(self) -> str:
        if self.response_type is not None:
            return "acknowledged"
        return "failed" if self.failed else "pending"

    async def acknowledged(self, timeout: float | None = None) -> int:
        """Wait for the initial response; returns its callback type.

        Raises :class:`InteractionFailed` ("This interaction failed") when the bot did not
        answer within the acknowledgement window.
        """
        server = self._server
        await server.wait_for(
            lambda: self.response_type is not None or self.failed,
            timeout=timeout if timeout is not None else server.ack_timeout + 2.0,
            what=f"interaction {self.name!r} to be acknowledged",
        )
        if self.response_type is None:
            raise InteractionFailed(
                f"This interaction failed: {self.name!r} was not acknowledged within "
                f"{server.ack_timeout:g} s"
            )
        return self.response_type

    def __repr__(self) -> str:
        return f"<Interaction id={self.id} type={self.type} name={self.name!r} {self.status}>"


# --------------------------------------------------------------------------------------------
# Helpers


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


def _snowflake_int(value: Any, path: Sequence[str | int]) -> int:
    try:
        result = int(value)
    except (TypeError, ValueError):
        raise _form_error(
            path, "NUMBER_TYPE_COERCE", f"Value {value!r} is not snowflake."
        ) from None
    if result < 0:
        raise _form_error(path, "NUMBER_TYPE_COERCE", f"Value {value!r} is not snowflake.")
    return result


_USER_MENTION = re.compile(r"(?<!\\)<@!?(\d{1,20})>")
_ROLE_MENTION = re.compile(r"(?<!\\)<@&(\d{1,20})>")
_EVERYONE = re.compile(r"(?<!\\)@everyone")
_HERE = re.compile(r"(?<!\\)@here")


@dataclass
class _Body:
    json: Any = None
    files: list[tuple[int, str, str | None, bytes]] = field(default_factory=list)
    multipart: bool = False


_BODY = web.RequestKey("body", _Body)


class _Connection:
    """One gateway websocket; frames go out in order through a queue drained by a writer."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self.queue: asyncio.Queue[str | tuple[int, str] | None] = asyncio.Queue()
        self.session: _Session | None = None
        self.writer: asyncio.Task[None] | None = None
        self.server_closing = False

    def send(self, frame: str) -> None:
        self.queue.put_nowait(frame)

    def close(self, code: int, reason: str = "") -> None:
        self.queue.put_nowait((code, reason))

    async def run_writer(self) -> None:
        while True:
            item = await self.queue.get()
            if item is None:  # the socket is done: stop after what was queued before
                return
            if isinstance(item, tuple):
                self.server_closing = True
                await self.ws.close(code=item[0], message=item[1].encode())
                return
            if self.ws.closed:
                continue
            try:
                await self.ws.send_str(item)
            except (ConnectionError, RuntimeError):
                return


@dataclass(eq=False)
class _Session:
    id: str
    intents: int
    shard: tuple[int, int]
    identified_at: float
    seq: int = 0
    conn: _Connection | None = None
    invalid: bool = False
    buffer: collections.deque[tuple[int, str, Interaction | None]] = field(
        default_factory=lambda: collections.deque(maxlen=2000)
    )

    def covers(self, guild_id: int | None) -> bool:
        if guild_id is None:
            return self.shard[0] == 0  # DMs go to shard 0
        return (guild_id >> 22) % self.shard[1] == self.shard[0]


_FROM_ENV = object()


# --------------------------------------------------------------------------------------------
# The server


class FakeDiscord:
    """A Discord-compatible REST + gateway + CDN server on 127.0.0.1 (random port).

    World: ``add_user``, ``add_guild`` (owner, @everyone, channels, the bot), ``add_channel``,
    ``add_role``, ``add_member(permissions=...)``, ``set_overwrite``, ``set_bot_can_send``,
    ``close_dms``, ``set_upload_limit``, ``bot_join``. Users act: ``slash``, ``click``,
    ``submit_modal`` (each returns an :class:`Interaction` record). Inspect: ``messages``,
    ``message``, ``dm_messages``, ``interactions``/``interaction``, ``commands``,
    ``command_creates``, ``command_writes``, ``requests``/``requests_for``, ``errors``,
    ``unhandled``, ``spec_violations``. Control: ``clock.advance``, ``inject``,
    ``drop_connections``, ``request_reconnect``, ``invalidate_sessions``, ``wait_for``.
    Messages listed by ``messages()`` include ephemeral ones (see ``Message.ephemeral``).
    """

    def __init__(
        self,
        *,
        token: str | None = None,
        bot_name: str = "Zoetrope",
        privileged_intents: int = 0,
        ack_timeout: float = ACK_TIMEOUT,
        token_lifetime: float = TOKEN_LIFETIME,
        default_upload_limit: int = DEFAULT_UPLOAD_LIMIT,
        nonce_window: float = 300.0,
        command_create_limit: int = 200,
        heartbeat_interval_ms: int = 41_250,
        strict_commands: bool = True,
        spec: DiscordSpec | None | object = _FROM_ENV,
    ) -> None:
        self.clock = Clock()
        self.clock.on_advance(self._on_clock_advance)
        self._last_snowflake = 0
        self.token = token or f"ZOETROPE.TEST.{secrets.token_urlsafe(24)}"
        # Which privileged intents the "developer portal" enabled (Intent bits); asking for
        # others closes the gateway with 4014.
        self.privileged_intents = privileged_intents
        self.ack_timeout = ack_timeout
        self.token_lifetime = token_lifetime
        self.default_upload_limit = default_upload_limit
        self.nonce_window = nonce_window
        self.command_create_limit = command_create_limit
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.strict_commands = strict_commands
        self.spec: DiscordSpec | None = spec_from_env() if spec is _FROM_ENV else spec  # type: ignore[assignment]

        self.users: dict[int, User] = {}
        self.guilds: dict[int, Guild] = {}
        self.channels: dict[int, Channel] = {}
        self._messages: dict[int, Message] = {}
        self._channel_messages: dict[int, list[Message]] = collections.defaultdict(list)
        self._attachments: dict[int, Attachment] = {}
        self._nonces: dict[tuple[int, int, str], Message] = {}
        self._dm_channels: dict[int, Channel] = {}
        self._commands: dict[int, Command] = {}
        self.command_log: list[CommandWrite] = []

        self.interactions: list[Interaction] = []
        self._ix_by_id: dict[int, Interaction] = {}
        self._ix_by_token: dict[str, Interaction] = {}

        self.requests: list[RequestRecord] = []
        self.unhandled: list[str] = []  # "METHOD /path" the server does not implement
        self.spec_violations: list[SpecViolation] = []
        self.errors: list[str] = []  # exceptions inside the server itself (its own bugs)
        self.spec_checked = 0  # request bodies validated against the OpenAPI spec
        self.faults: list[Fault] = []

        self._sessions: dict[str, _Session] = {}
        self._connections: set[_Connection] = set()
        self.identify_count = 0
        self.resume_count = 0

        self.owner = self.add_user("app-owner")
        self.bot = self.add_user(bot_name, bot=True)
        self.application_id = self.bot.id  # modern apps: bot user id == application id

        self._changed: asyncio.Event | None = None
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    # ---------------------------------------------------------------- lifecycle and addresses

    async def start(self) -> FakeDiscord:
        app = web.Application(middlewares=[self._middleware], client_max_size=512 * MiB)
        self._add_routes(app)
        self._runner = web.AppRunner(
            app, handle_signals=False, access_log=None, shutdown_timeout=0.5
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None and server.sockets
        self._port = server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        for conn in list(self._connections):
            if not conn.ws.closed:
                await conn.ws.close(code=1001, message=b"server shutting down")
            if conn.writer is not None:
                conn.writer.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeDiscord:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def url(self) -> str:
        if self._port is None:
            raise RuntimeError("FakeDiscord is not started: call await server.start() first")
        return f"http://127.0.0.1:{self._port}"

    @property
    def api_base(self) -> str:
        """For ``discord.http.Route.BASE``."""
        return self.url + API_PREFIX

    @property
    def gateway_url(self) -> str:
        """For ``discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY`` (wrap it in yarl.URL)."""
        return f"ws://127.0.0.1:{self._port}/gateway"

    @property
    def cdn_base(self) -> str:
        return self.url + "/cdn"

    # ---------------------------------------------------------------- ids, waiting, events

    def snowflake(self) -> int:
        ms = int(self.clock.time() * 1000) - DISCORD_EPOCH_MS
        value = max(ms << 22, self._last_snowflake + 1)
        self._last_snowflake = value
        return value

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def wait_for(
        self, predicate: Callable[[], Any], *, timeout: float = 10.0, what: str | None = None
    ) -> Any:
        """Wait until ``predicate()`` is truthy (re-checked after every server event)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            result = predicate()
            if result:
                return result
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"timed out after {timeout:g} s waiting for {what or predicate}")
            if self._changed is None:
                self._changed = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.25))

    # ---------------------------------------------------------------- building the world

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

    # ---------------------------------------------------------------- permissions

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

    def _upload_limit(self, channel: Channel) -> int:
        if channel.guild_id is None:
            return self.default_upload_limit
        return self.guilds[channel.guild_id].upload_limit

    # ---------------------------------------------------------------- inspection

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

    # ---------------------------------------------------------------- fault injection

    def inject(
        self,
        method: str,
        path_regex: str,
        *,
        status: int = 429,
        count: int = 1,
        retry_after: float = 0.1,
        global_: bool = False,
        after: bool = False,
        body: dict[str, Any] | None = None,
    ) -> Fault:
        """Answer the next ``count`` matching requests with ``status``.

        ``path_regex`` is searched in the path relative to /api/v10 (``/channels/\\d+/messages$``)
        or in the full path for the CDN (``/cdn/...``); ``method`` may be ``*``.
        A 429 carries what discord.py needs to retry (``Via``, ``X-RateLimit-*``, JSON
        ``retry_after``/``global``). ``after=True`` processes the request first and then answers
        with the fault (the response was lost: the client will retry a request that worked).
        """
        if status not in (429, 500, 502, 503, 504) and not 400 <= status < 600:
            raise ValueError(f"status must be an HTTP error status, got {status!r}")
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count!r}")
        fault = Fault(
            method=method.upper(),
            path_regex=re.compile(path_regex),
            status=status,
            count=count,
            retry_after=retry_after,
            global_=global_,
            after=after,
            body=body,
        )
        self.faults.append(fault)
        return fault

    def _take_fault(self, method: str, path: str) -> Fault | None:
        for fault in self.faults:
            if fault.remaining <= 0:
                continue
            if fault.method not in ("*", method):
                continue
            if fault.path_regex.search(path):
                fault.hits += 1
                return fault
        return None

    def _fault_response(self, fault: Fault, path: str) -> web.Response:
        if fault.status == 429:
            retry = fault.retry_after
            body = fault.body or {
                "message": "You are being rate limited.",
                "retry_after": retry,
                "global": fault.global_,
                "code": 0,
            }
            headers = {
                "Via": "1.1 google",  # without it discord.py takes a 429 for a Cloudflare ban
                "Retry-After": str(max(1, math.ceil(retry))),
                "X-RateLimit-Limit": "5",
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": f"{self.clock.time() + retry:.3f}",
                "X-RateLimit-Reset-After": f"{retry:.3f}",
                "X-RateLimit-Bucket": self._bucket_hash(path),
                "X-RateLimit-Scope": "shared" if fault.global_ else "user",
            }
            if fault.global_:
                headers["X-RateLimit-Global"] = "true"
            return self._json(body, status=429, headers=headers)
        body = fault.body or {"message": f"{fault.status}: injected fault", "code": 0}
        return self._json(body, status=fault.status)

    # ---------------------------------------------------------------- HTTP plumbing

    @staticmethod
    def _json(
        data: Any, *, status: int = 200, headers: dict[str, str] | None = None
    ) -> web.Response:
        # Exactly "application/json": discord.py compares the header verbatim and would treat
        # "application/json; charset=utf-8" (aiohttp's json_response) as text.
        all_headers = {"Content-Type": "application/json"}
        all_headers.update(headers or {})
        return web.Response(status=status, body=json.dumps(data).encode(), headers=all_headers)

    @staticmethod
    def _no_content() -> web.Response:
        return web.Response(status=204)

    @staticmethod
    def _bucket_hash(template: str) -> str:
        return hashlib.sha1(template.encode()).hexdigest()[:16]

    async def _read_body(self, request: web.Request) -> _Body:
        body = _Body()
        if request.method in ("GET", "HEAD"):
            return body
        ctype = request.content_type
        if ctype == "multipart/form-data":
            body.multipart = True
            reader = await request.multipart()
            position = 0
            while True:
                part = await reader.next()
                if part is None:
                    break
                raw = bytes(await part.read(decode=False))  # type: ignore[union-attr]
                name = part.name or ""
                if name == "payload_json":
                    body.json = self._parse_json(raw)
                    continue
                match = re.fullmatch(r"files\[(\d+)\]", name)
                index = int(match.group(1)) if match else position
                position += 1
                filename = part.filename or f"file{index}"  # type: ignore[union-attr]
                body.files.append((index, filename, part.headers.get("Content-Type"), raw))
            return body
        raw = await request.read()
        if raw:
            body.json = self._parse_json(raw)
        return body

    @staticmethod
    def _parse_json(raw: bytes) -> Any:
        try:
            return json.loads(raw)
        except ValueError:
            raise DiscordHTTPError(400, 50109, "The request body contains invalid JSON.") from None

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        path = request.path
        is_api = path.startswith(API_PREFIX + "/") or path == API_PREFIX
        is_cdn = path.startswith("/cdn/")
        if not (is_api or is_cdn):
            return await handler(request)
        rel = path[len(API_PREFIX) :] if is_api else path
        record = RequestRecord(method=request.method, path=rel, query=dict(request.query))
        self.requests.append(record)
        response: web.StreamResponse
        fault: Fault | None = None
        try:
            if is_api:
                body = await self._read_body(request)
                request[_BODY] = body
                record.json = body.json
                record.files = [(f[1], len(f[3])) for f in body.files]
            fault = self._take_fault(request.method, rel)
            if fault is not None and not fault.after:
                record.fault = True
                response = self._fault_response(fault, self._template(request, rel))
            else:
                if is_api:
                    self._check_auth(request, rel)
                    self._check_spec(request.method, rel, request[_BODY])
                response = await handler(request)
                if fault is not None:
                    record.fault = True
                    response = self._fault_response(fault, self._template(request, rel))
        except DiscordHTTPError as exc:
            record.code = exc.code
            response = self._json(exc.body(), status=exc.status, headers=exc.headers)
            if fault is not None and fault.after:
                record.fault = True
                response = self._fault_response(fault, self._template(request, rel))
        except web.HTTPException:
            raise
        except Exception as exc:
            # A bug in this server, not in the client: keep it for the test to fail on.
            self.errors.append(f"{request.method} {rel}: {traceback.format_exc()}")
            response = self._json({"message": f"500: {exc!r}", "code": 0}, status=500)
        record.status = response.status
        if is_api and response.status != 429 and not response.prepared:
            self._ratelimit_headers(response, self._template(request, rel))
        self._notify()
        return response

    def _template(self, request: web.Request, rel: str) -> str:
        route = request.match_info.route
        resource = route.resource if route is not None else None
        canonical = resource.canonical if resource is not None else rel
        return f"{request.method} {canonical}"

    def _ratelimit_headers(self, response: web.StreamResponse, template: str) -> None:
        # Generous, static limits: discord.py lets requests of one bucket run concurrently once
        # it has seen these (without them it serialises every route through a limit of 1).
        response.headers["X-RateLimit-Limit"] = "50"
        response.headers["X-RateLimit-Remaining"] = "49"
        response.headers["X-RateLimit-Reset"] = f"{self.clock.time() + 1:.3f}"
        response.headers["X-RateLimit-Reset-After"] = "1.000"
        response.headers["X-RateLimit-Bucket"] = self._bucket_hash(template)

    def _check_auth(self, request: web.Request, rel: str) -> None:
        # Interaction callbacks and webhook-token routes are authorised by their token.
        if rel.startswith("/interactions/") or re.match(r"^/webhooks/\d+/[^/]+", rel):
            return
        if rel in ("/gateway",):
            return
        if request.headers.get("Authorization") != f"Bot {self.token}":
            raise DiscordHTTPError(401, 0, "401: Unauthorized")

    def _check_spec(self, method: str, rel: str, body: _Body) -> None:
        if self.spec is None or body.json is None:
            return
        op, errors = self.spec.validate(method, rel, body.json, multipart=body.multipart)
        self.spec_checked += 1
        if not errors:
            return
        self.spec_violations.append(
            SpecViolation(
                method=method,
                path=rel,
                template=op.template if op else rel,
                operation_id=op.operation_id if op else None,
                errors=errors,
                body=body.json,
            )
        )
        err = discord_error_body(errors)
        raise DiscordHTTPError(400, err["code"], err["message"], errors=err["errors"])

    def _add_routes(self, app: web.Application) -> None:
        r = app.router
        a = API_PREFIX
        r.add_get("/gateway", self._gateway)
        r.add_get("/cdn/attachments/{channel_id}/{attachment_id}/{filename}", self._cdn)
        routes: list[tuple[str, str, Any]] = [
            ("GET", "/gateway", self._get_gateway),
            ("GET", "/gateway/bot", self._get_gateway_bot),
            ("GET", "/users/@me", self._get_me),
            ("GET", "/users/{user_id}", self._get_user),
            ("POST", "/users/@me/channels", self._create_dm),
            ("GET", "/users/@me/guilds", self._get_my_guilds),
            ("GET", "/applications/@me", self._get_application),
            ("GET", "/oauth2/applications/@me", self._get_application),
            ("GET", "/applications/{app_id}/commands", self._list_commands),
            ("PUT", "/applications/{app_id}/commands", self._put_commands),
            ("POST", "/applications/{app_id}/commands", self._post_command),
            ("GET", "/applications/{app_id}/commands/{command_id}", self._get_command),
            ("PATCH", "/applications/{app_id}/commands/{command_id}", self._patch_command),
            ("DELETE", "/applications/{app_id}/commands/{command_id}", self._delete_command),
            ("GET", "/applications/{app_id}/guilds/{guild_id}/commands", self._list_commands),
            ("PUT", "/applications/{app_id}/guilds/{guild_id}/commands", self._put_commands),
            ("POST", "/applications/{app_id}/guilds/{guild_id}/commands", self._post_command),
            (
                "GET",
                "/applications/{app_id}/guilds/{guild_id}/commands/{command_id}",
                self._get_command,
            ),
            (
                "PATCH",
                "/applications/{app_id}/guilds/{guild_id}/commands/{command_id}",
                self._patch_command,
            ),
            (
                "DELETE",
                "/applications/{app_id}/guilds/{guild_id}/commands/{command_id}",
                self._delete_command,
            ),
            ("GET", "/guilds/{guild_id}", self._get_guild),
            ("GET", "/guilds/{guild_id}/channels", self._get_guild_channels),
            ("GET", "/guilds/{guild_id}/roles", self._get_guild_roles),
            ("GET", "/guilds/{guild_id}/members/{user_id}", self._get_member),
            ("GET", "/channels/{channel_id}", self._get_channel),
            ("POST", "/channels/{channel_id}/typing", self._typing),
            ("GET", "/channels/{channel_id}/messages", self._list_messages),
            ("POST", "/channels/{channel_id}/messages", self._create_channel_message),
            ("GET", "/channels/{channel_id}/messages/{message_id}", self._get_channel_message),
            ("PATCH", "/channels/{channel_id}/messages/{message_id}", self._edit_channel_message),
            (
                "DELETE",
                "/channels/{channel_id}/messages/{message_id}",
                self._delete_channel_message,
            ),
            (
                "POST",
                "/interactions/{interaction_id}/{interaction_token}/callback",
                self._interaction_callback,
            ),
            ("POST", "/webhooks/{webhook_id}/{webhook_token}", self._execute_webhook),
            (
                "GET",
                "/webhooks/{webhook_id}/{webhook_token}/messages/@original",
                self._get_webhook_message,
            ),
            (
                "PATCH",
                "/webhooks/{webhook_id}/{webhook_token}/messages/@original",
                self._edit_webhook_message,
            ),
            (
                "DELETE",
                "/webhooks/{webhook_id}/{webhook_token}/messages/@original",
                self._delete_webhook_message,
            ),
            (
                "GET",
                "/webhooks/{webhook_id}/{webhook_token}/messages/{message_id}",
                self._get_webhook_message,
            ),
            (
                "PATCH",
                "/webhooks/{webhook_id}/{webhook_token}/messages/{message_id}",
                self._edit_webhook_message,
            ),
            (
                "DELETE",
                "/webhooks/{webhook_id}/{webhook_token}/messages/{message_id}",
                self._delete_webhook_message,
            ),
        ]
        for method, path, handler in routes:
            r.add_route(method, a + path, handler)
        r.add_route("*", a + "/{tail:.*}", self._unhandled)

    async def _unhandled(self, request: web.Request) -> web.Response:
        rel = request.path[len(API_PREFIX) :]
        self.unhandled.append(f"{request.method} {rel}")
        raise DiscordHTTPError(404, 0, "404: Not Found")

    # ---------------------------------------------------------------- REST: users, app, guilds

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

    # ---------------------------------------------------------------- REST: channels, messages

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

    # ---------------------------------------------------------------- message model operations

    def _check_files(self, body: _Body, channel: Channel) -> None:
        limit = self._upload_limit(channel)
        if len(body.files) > 10:
            raise _form_error(["files"], "BASE_TYPE_MAX_LENGTH", "Must be 10 or fewer in length.")
        for _index, _name, _ctype, data in body.files:
            if len(data) > limit:
                raise DiscordHTTPError(413, 40005, "Request entity too large")

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

    @staticmethod
    def _validate_custom_id(value: Any, path: list[str | int]) -> None:
        if not isinstance(value, str) or not 1 <= len(value) <= 100:
            raise _form_error(
                path + ["custom_id"], "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length."
            )

    def _validate_components(self, components: Any, *, v2: bool) -> None:
        if not components:
            return
        seen: set[str] = set()
        if not v2 and len(components) > 5:
            raise _form_error(
                ["components"], "BASE_TYPE_MAX_LENGTH", "Must be 5 or fewer in length."
            )
        for i, row in enumerate(components):
            path: list[str | int] = ["components", i]
            if not v2 and row.get("type") != 1:
                raise _form_error(
                    path + ["type"],
                    "COMPONENT_TYPE_INVALID",
                    "Top-level components must be action rows without the components v2 flag.",
                )
            if row.get("type") == 1:
                children = row.get("components") or []
                if not children:
                    raise _form_error(
                        path + ["components"],
                        "BASE_TYPE_MIN_LENGTH",
                        "Must be 1 or more in length.",
                    )
                width = sum(5 if c.get("type") in _SELECT_TYPES else 1 for c in children)
                if width > 5:
                    raise _form_error(
                        path + ["components"],
                        "COMPONENT_LAYOUT_WIDTH_EXCEEDED",
                        "The specified component exceeds the maximum width",
                    )
        for comp in _walk_components(components):
            ctype = comp.get("type")
            if ctype == 2:
                if comp.get("style") == 5:
                    if not comp.get("url") or comp.get("custom_id"):
                        raise _form_error(
                            ["components"],
                            "BUTTON_COMPONENT_URL_REQUIRED",
                            "Link buttons need a url and no custom_id.",
                        )
                    continue
                if comp.get("style") == 6:  # premium (sku) button
                    continue
                if len(comp.get("label") or "") > 80:
                    raise _form_error(
                        ["components", "label"],
                        "BASE_TYPE_MAX_LENGTH",
                        "Must be 80 or fewer in length.",
                    )
            if ctype in (2, *_SELECT_TYPES):
                custom_id = comp.get("custom_id")
                self._validate_custom_id(custom_id, ["components"])
                if custom_id in seen:
                    raise _form_error(
                        ["components"],
                        "COMPONENT_CUSTOM_ID_DUPLICATED",
                        "Component custom id cannot be duplicated",
                    )
                seen.add(custom_id)

    @staticmethod
    def _validate_allowed_mentions(am: Any) -> None:
        if am is None:
            return
        parse = am.get("parse") or []
        for kind in parse:
            if kind not in ("users", "roles", "everyone"):
                raise _form_error(
                    ["allowed_mentions", "parse"],
                    "BASE_TYPE_CHOICES",
                    f"Value {kind!r} is not valid.",
                )
        for kind in ("users", "roles"):
            ids = am.get(kind) or []
            if ids and kind in parse:
                raise _form_error(
                    ["allowed_mentions"],
                    "MESSAGE_ALLOWED_MENTIONS_PARSE_EXCLUSIVE",
                    f'parse:["{kind}"] and {kind}: [ids] are mutually exclusive.',
                )
            if len(ids) > 100:
                raise _form_error(
                    ["allowed_mentions", kind],
                    "BASE_TYPE_MAX_LENGTH",
                    "Must be 100 or fewer in length.",
                )

    def _compute_pings(
        self,
        content: str,
        allowed_mentions: dict[str, Any] | None,
        channel: Channel,
        reference: dict[str, Any] | None,
    ) -> Pinged:
        """Who gets notified, by Discord's rules for content + allowed_mentions."""
        users = {int(m) for m in _USER_MENTION.findall(content)}
        roles = {int(m) for m in _ROLE_MENTION.findall(content)}
        everyone = bool(_EVERYONE.search(content))
        here = bool(_HERE.search(content))
        can_mention_all = bool(self._bot_perms(channel) & Perm.MENTION_EVERYONE)
        guild = self.guilds.get(channel.guild_id) if channel.guild_id else None
        if allowed_mentions is None:
            # No allowed_mentions: everything in the content is parsed.
            parse = {"users", "roles", "everyone"}
            allowed_users: set[int] = set()
            allowed_roles: set[int] = set()
            replied_user = True
        else:
            parse = set(allowed_mentions.get("parse") or [])
            allowed_users = {int(u) for u in allowed_mentions.get("users") or []}
            allowed_roles = {int(r) for r in allowed_mentions.get("roles") or []}
            replied_user = bool(allowed_mentions.get("replied_user", False))
        pinged_users = {u for u in users if "users" in parse or u in allowed_users}
        pinged_roles = set()
        if guild is not None:
            for rid in roles:
                role = guild.roles.get(rid)
                if role is None or rid == guild.id:
                    continue
                if ("roles" in parse or rid in allowed_roles) and (
                    role.mentionable or can_mention_all
                ):
                    pinged_roles.add(rid)
        ping_everyone = (everyone or here) and "everyone" in parse and can_mention_all
        if reference and replied_user:
            ref = self._messages.get(int(reference.get("message_id") or 0))
            if ref is not None and ref.author is not self.bot:
                pinged_users.add(ref.author.id)
        return Pinged(
            users=frozenset(pinged_users),
            roles=frozenset(pinged_roles),
            everyone=ping_everyone,
            here=ping_everyone and here,
        )

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

    # ---------------------------------------------------------------- commands

    def _command_scope(self, request: web.Request) -> int | None:
        app_id = _snowflake_int(request.match_info["app_id"], ["application_id"])
        if app_id != self.application_id:
            raise DiscordHTTPError(403, 50001, "Missing Access")
        if "guild_id" not in request.match_info:
            return None
        return self._guild_for(request).id

    def _validate_command(self, cmd: Any, path: list[str | int]) -> None:
        if not isinstance(cmd, dict):
            raise _form_error(path, "DICT_TYPE_CONVERT", "Only dictionaries may be used.")
        ctype = int(cmd.get("type") or 1)
        name = cmd.get("name")
        if not isinstance(name, str) or not 1 <= len(name) <= 32:
            raise _form_error(
                path + ["name"], "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 32 in length."
            )
        if ctype == 1:
            if not _COMMAND_NAME.match(name) or name != name.lower():
                raise _form_error(
                    path + ["name"], "APPLICATION_COMMAND_INVALID_NAME", "Command name is invalid"
                )
            description = cmd.get("description") or ""
            if not 1 <= len(description) <= 100:
                raise _form_error(
                    path + ["description"],
                    "BASE_TYPE_BAD_LENGTH",
                    "Must be between 1 and 100 in length.",
                )
            self._validate_options(cmd.get("options") or [], path + ["options"])

    def _validate_options(self, options: list[dict[str, Any]], path: list[str | int]) -> None:
        if len(options) > 25:
            raise _form_error(path, "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length.")
        names: set[str] = set()
        seen_optional = False
        for i, opt in enumerate(options):
            name = opt.get("name") or ""
            if not _COMMAND_NAME.match(name) or name != name.lower():
                raise _form_error(
                    path + [i, "name"], "APPLICATION_COMMAND_INVALID_NAME", "Option name is invalid"
                )
            if name in names:
                raise _form_error(
                    path + [i, "name"],
                    "APPLICATION_COMMAND_OPTIONS_NAME_ALREADY_EXISTS",
                    "Option names must be unique",
                )
            names.add(name)
            if not 1 <= len(opt.get("description") or "") <= 100:
                raise _form_error(
                    path + [i, "description"],
                    "BASE_TYPE_BAD_LENGTH",
                    "Must be between 1 and 100 in length.",
                )
            if len(opt.get("choices") or []) > 25:
                raise _form_error(
                    path + [i, "choices"], "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length."
                )
            if opt.get("type") in (1, 2):
                self._validate_options(opt.get("options") or [], path + [i, "options"])
                continue
            if opt.get("required"):
                if seen_optional:
                    raise _form_error(
                        path + [i, "required"],
                        "APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID",
                        "Required options must be placed before non-required options",
                    )
            else:
                seen_optional = True

    def _check_create_quota(self, gid: int | None, new: int) -> None:
        if new and self.command_creates(gid) + new > self.command_create_limit:
            now = dt.datetime.fromtimestamp(self.clock.time(), dt.UTC)
            midnight = (now + dt.timedelta(days=1)).replace(
                hour=0, minute=0, second=0, microsecond=0
            )
            retry = (midnight - now).total_seconds()
            raise DiscordHTTPError(
                429,
                30034,
                f"Max number of daily application command creates has been reached "
                f"({self.command_create_limit})",
                extra={"retry_after": retry, "global": False},
                headers={"Via": "1.1 google", "Retry-After": str(math.ceil(retry))},
            )

    def _scope_commands(self, gid: int | None) -> dict[tuple[str, int], Command]:
        return {(c.name, c.type): c for c in self._commands.values() if c.guild_id == gid}

    def _upsert(self, gid: int | None, definition: dict[str, Any]) -> tuple[Command, str | None]:
        existing = self._scope_commands(gid).get(
            (definition["name"], int(definition.get("type") or 1))
        )
        if existing is None:
            cmd = Command(
                id=self.snowflake(), guild_id=gid, definition=definition, version=self.snowflake()
            )
            self._commands[cmd.id] = cmd
            return cmd, "created"
        if existing.definition != definition:
            existing.definition = definition
            existing.version = self.snowflake()
            return existing, "updated"
        return existing, None

    async def _list_commands(self, request: web.Request) -> web.Response:
        gid = self._command_scope(request)
        return self._json(self.commands(gid))

    async def _put_commands(self, request: web.Request) -> web.Response:
        gid = self._command_scope(request)
        body = request[_BODY].json
        if not isinstance(body, list):
            raise _form_error([], "LIST_TYPE_CONVERT", "Only iterables may be used in a ListType.")
        seen: set[tuple[str, int]] = set()
        for i, definition in enumerate(body):
            self._validate_command(definition, [i])
            key = (definition["name"], int(definition.get("type") or 1))
            if key in seen:
                raise _form_error(
                    [i, "name"],
                    "APPLICATION_COMMANDS_DUPLICATE_NAME",
                    f"Application command names must be unique: {key[0]!r}",
                )
            seen.add(key)
        current = self._scope_commands(gid)
        self._check_create_quota(gid, sum(1 for key in seen if key not in current))
        write = CommandWrite("PUT", gid, self._today(), [], [], [])
        for key, cmd in current.items():
            if key not in seen:
                del self._commands[cmd.id]
                write.deleted.append(cmd.name)
        out = []
        for definition in body:
            cmd, what = self._upsert(gid, definition)
            if what == "created":
                write.created.append(cmd.name)
            elif what == "updated":
                write.updated.append(cmd.name)
            out.append(cmd.payload(self.application_id))
        self.command_log.append(write)
        return self._json(out)

    async def _post_command(self, request: web.Request) -> web.Response:
        gid = self._command_scope(request)
        definition = request[_BODY].json
        self._validate_command(definition, [])
        key = (definition["name"], int(definition.get("type") or 1))
        self._check_create_quota(gid, 0 if key in self._scope_commands(gid) else 1)
        cmd, what = self._upsert(gid, definition)
        write = CommandWrite("POST", gid, self._today(), [], [], [])
        (write.created if what == "created" else write.updated).append(cmd.name)
        self.command_log.append(write)
        return self._json(
            cmd.payload(self.application_id), status=201 if what == "created" else 200
        )

    def _command_for(self, request: web.Request) -> tuple[int | None, Command]:
        gid = self._command_scope(request)
        cmd = self._commands.get(_snowflake_int(request.match_info["command_id"], ["command_id"]))
        if cmd is None or cmd.guild_id != gid:
            raise _unknown("application command", 10063)
        return gid, cmd

    async def _get_command(self, request: web.Request) -> web.Response:
        _gid, cmd = self._command_for(request)
        return self._json(cmd.payload(self.application_id))

    async def _patch_command(self, request: web.Request) -> web.Response:
        gid, cmd = self._command_for(request)
        definition = {**cmd.definition, **(request[_BODY].json or {})}
        self._validate_command(definition, [])
        cmd.definition = definition
        cmd.version = self.snowflake()
        self.command_log.append(CommandWrite("PATCH", gid, self._today(), [], [cmd.name], []))
        return self._json(cmd.payload(self.application_id))

    async def _delete_command(self, request: web.Request) -> web.Response:
        gid, cmd = self._command_for(request)
        del self._commands[cmd.id]
        self.command_log.append(CommandWrite("DELETE", gid, self._today(), [], [], [cmd.name]))
        return self._no_content()

    def _check_command_usable(
        self, command: Command, guild: Guild | None, channel: Channel, user: User
    ) -> None:
        d = command.definition
        contexts = d.get("contexts")
        if guild is None:
            if d.get("dm_permission") is False or (contexts is not None and 1 not in contexts):
                raise CommandUnavailable(f"/{command.name} is not offered in DMs")
            return
        if contexts is not None and 0 not in contexts:
            raise CommandUnavailable(f"/{command.name} is not offered in servers")
        have = self.permissions_for(guild, user.id, channel)
        if not have & Perm.USE_APPLICATION_COMMANDS:
            raise CommandUnavailable(f"{user.username} may not use application commands here")
        need = d.get("default_member_permissions")
        if need is None:
            return
        need = int(need)
        admin = bool(have & Perm.ADMINISTRATOR)
        if (need == 0 and not admin) or have & need != need:
            raise CommandUnavailable(
                f"/{command.name} needs permissions {need:#x}; {user.username} has {have:#x}"
            )

    def _user(self, user: User | int) -> User:
        if isinstance(user, User):
            return user
        try:
            return self.users[int(user)]
        except KeyError:
            raise KeyError(f"no user with id {user!r}; create it with add_user()") from None

    def interaction(self, key: int | str) -> Interaction:
        """An interaction by id or by token."""
        found = self._ix_by_token.get(key) if isinstance(key, str) else self._ix_by_id.get(key)
        if found is None:
            raise KeyError(f"no interaction {key!r}")
        return found

    def find_command(self, name: str, guild: Guild | None) -> Command | None:
        """The command a user would see: the guild's own first, then the global one."""
        if guild is not None:
            for cmd in self._commands.values():
                if cmd.guild_id == guild.id and cmd.name == name and cmd.type == 1:
                    return cmd
        for cmd in self._commands.values():
            if cmd.guild_id is None and cmd.name == name and cmd.type == 1:
                return cmd
        return None

    # ---------------------------------------------------------------- interactions (server side)

    def _integration_owners(self, guild: Guild | None, user: User) -> dict[str, str]:
        return {"0": str(guild.id)} if guild is not None else {"1": str(user.id)}

    async def _create_interaction(
        self,
        *,
        itype: int,
        guild: Guild | None,
        channel: Channel,
        user: User,
        data: dict[str, Any],
        message: Message | None = None,
        locale: str = "en-US",
    ) -> Interaction:
        if guild is not None and user.id not in guild.members:
            raise ValueError(f"user {user.username!r} is not a member of guild {guild.name!r}")
        ix = Interaction(
            self,
            id=self.snowflake(),
            token="aW50ZXJhY3Rpb246" + secrets.token_urlsafe(120),
            type=itype,
            guild=guild,
            channel=channel,
            user=user,
            data=data,
            message=message,
            created_at=self.clock.monotonic(),
        )
        payload: dict[str, Any] = {
            "id": str(ix.id),
            "application_id": str(self.application_id),
            "type": itype,
            "data": data,
            "token": ix.token,
            "version": 1,
            "locale": locale,
            "entitlements": [],
            "entitlement_sku_ids": [],
            "authorizing_integration_owners": self._integration_owners(guild, user),
            # discord.py reads this key unconditionally (KeyError without it).
            "attachment_size_limit": self._upload_limit(channel),
            "app_permissions": str(self._bot_perms(channel)),
            "channel_id": str(channel.id),
        }
        if guild is not None:
            member = guild.members[user.id]
            perms = self.permissions_for(guild, user.id, channel)
            payload.update(
                guild_id=str(guild.id),
                guild_locale=guild.locale,
                guild={"id": str(guild.id), "locale": guild.locale, "features": []},
                member={**member.payload(), "permissions": str(perms)},
                channel={**channel.payload(), "permissions": str(perms)},
                context=0,
            )
        else:
            payload.update(user=user.payload(), channel=channel.payload(), context=1)
        if message is not None:
            payload["message"] = self.message_payload(message)
        ix.payload = payload
        self.interactions.append(ix)
        self._ix_by_id[ix.id] = ix
        self._ix_by_token[ix.token] = ix
        session = self._session_for(guild.id if guild else None)
        if session is not None:
            # Buffered for a RESUME if the socket is down; delivered once it is written.
            self._dispatch(session, "INTERACTION_CREATE", payload, interaction=ix)
        loop = asyncio.get_running_loop()
        loop.call_later(self.ack_timeout + 0.02, self._check_deadlines)
        self._notify()
        await asyncio.sleep(0)
        return ix

    def _check_deadlines(self) -> None:
        now = self.clock.monotonic()
        changed = False
        for ix in self.interactions:
            if (
                ix.response_type is None
                and not ix.failed
                and now - ix.created_at >= self.ack_timeout
            ):
                ix.failed = True
                changed = True
        if changed:
            self._notify()

    def _on_clock_advance(self) -> None:
        self._check_deadlines()
        self._notify()

    def _resolve_guild_channel(
        self, guild: Guild | int | None, channel: Channel | int | None, user: User
    ) -> tuple[Guild | None, Channel]:
        g = self.guilds[guild] if isinstance(guild, int) else guild
        if g is None:
            ch = self.dm_channel(user) if channel is None else channel
            if isinstance(ch, int):
                ch = self.channels[ch]
            return None, ch
        if channel is None:
            return g, g.text_channels[0]
        ch = self.channels[channel] if isinstance(channel, int) else channel
        if ch.guild_id != g.id:
            raise ValueError(f"channel {ch.name!r} is not in guild {g.name!r}")
        return g, ch

    def make_attachment(
        self,
        filename: str,
        data: bytes,
        content_type: str | None = None,
        *,
        channel: Channel | None = None,
        **behaviour: Any,
    ) -> Attachment:
        """A user upload on the CDN, for a slash command's attachment option.

        ``behaviour``: status, redirect_to, delay, chunk_delay, extra_bytes, send_length,
        declared_size (see :class:`Attachment`).
        """
        return self._store_attachment(
            filename=filename,
            data=data,
            content_type=content_type
            if content_type is not None
            else mimetypes.guess_type(filename)[0],
            channel_id=channel.id if channel else 0,
            ephemeral=True,
            **behaviour,
        )

    async def slash(
        self,
        guild: Guild | int | None,
        channel: Channel | int | None,
        user: User | int,
        name: str,
        options: dict[str, Any] | None = None,
        attachments: Sequence[tuple[str, bytes, str | None] | Attachment] = (),
        *,
        locale: str = "en-US",
        bypass_permissions: bool = False,
    ) -> Interaction:
        """A user runs ``/name`` (``"group sub"`` for subcommands) -> INTERACTION_CREATE.

        Option types come from the registered command. Attachment options take an
        :class:`Attachment` or ``(filename, bytes, content_type)``; ``attachments`` fills the
        command's attachment options not given in ``options``, in order. Users, roles and
        channels may be passed as model objects. ``guild=None`` runs it in the user's DM.
        Discord only offers a command where its ``contexts``/``default_member_permissions``
        allow it: otherwise :class:`CommandUnavailable` is raised (``bypass_permissions=True``
        plays a server admin's per-command override).
        """
        user = self._user(user)
        g, ch = self._resolve_guild_channel(guild, channel, user)
        words = name.split()
        command = self.find_command(words[0], g)
        if command is None:
            if self.strict_commands:
                scope = f"guild {g.name!r}" if g else "DMs"
                raise LookupError(
                    f"command /{words[0]} is not registered (globally or for {scope})"
                )
            command = Command(
                id=0, guild_id=None, definition={"name": words[0], "options": []}, version=0
            )
        elif not bypass_permissions:
            self._check_command_usable(command, g, ch, user)
        definitions = command.definition.get("options") or []
        leaf_path: list[dict[str, Any]] = []
        for word in words[1:]:
            sub = next(
                (o for o in definitions if o.get("name") == word and o.get("type") in (1, 2)), None
            )
            if sub is None:
                raise LookupError(f"/{name}: no subcommand {word!r}")
            leaf_path.append(sub)
            definitions = sub.get("options") or []
        resolved: dict[str, dict[str, Any]] = {}
        given = dict(options or {})
        pending_files = list(attachments)
        for opt in definitions:
            if opt.get("type") == 11 and opt["name"] not in given and pending_files:
                given[opt["name"]] = pending_files.pop(0)
        if pending_files:
            raise ValueError(
                f"/{name} has no attachment option left for {len(pending_files)} file(s)"
            )
        built = []
        for opt_name, value in given.items():
            spec = next((o for o in definitions if o.get("name") == opt_name), None)
            if spec is None and self.strict_commands:
                raise ValueError(f"/{name} has no option {opt_name!r}")
            otype = spec["type"] if spec else self._guess_option_type(value)
            built.append(
                {
                    "name": opt_name,
                    "type": otype,
                    "value": self._option_value(otype, value, ch, g, resolved),
                }
            )
        for opt in definitions:
            if opt.get("required") and opt["name"] not in given and opt.get("type") not in (1, 2):
                raise ValueError(f"/{name}: required option {opt['name']!r} missing")
        options_tree: list[dict[str, Any]] = built
        for sub in reversed(leaf_path):
            options_tree = [{"name": sub["name"], "type": sub["type"], "options": options_tree}]
        data: dict[str, Any] = {
            "id": str(command.id),
            "name": command.name,
            "type": 1,
            "options": options_tree,
        }
        if resolved:
            data["resolved"] = resolved
        if command.guild_id is not None:
            data["guild_id"] = str(command.guild_id)
        return await self._create_interaction(
            itype=InteractionType.APPLICATION_COMMAND,
            guild=g,
            channel=ch,
            user=user,
            data=data,
            locale=locale,
        )

    async def autocomplete(
        self,
        guild: Guild | int | None,
        channel: Channel | int | None,
        user: User | int,
        name: str,
        focused: str,
        typed: str = "",
        options: dict[str, Any] | None = None,
    ) -> Interaction:
        """A user types ``typed`` into option ``focused`` of top-level command ``/name``.

        Sends an APPLICATION_COMMAND_AUTOCOMPLETE interaction with the options filled so far
        (strings only, as Discord sends while typing); the bot's choices land in
        ``Interaction.autocomplete_choices``.
        """
        user = self._user(user)
        g, ch = self._resolve_guild_channel(guild, channel, user)
        command = self.find_command(name, g)
        if command is None:
            raise LookupError(f"command /{name} is not registered")
        definitions = {o["name"]: o for o in command.definition.get("options") or []}
        if focused not in definitions or not definitions[focused].get("autocomplete"):
            raise ValueError(f"/{name}: option {focused!r} has no autocomplete")
        built = [
            {"name": key, "type": definitions[key]["type"], "value": value}
            for key, value in (options or {}).items()
        ]
        built.append(
            {"name": focused, "type": definitions[focused]["type"], "value": typed, "focused": True}
        )
        data: dict[str, Any] = {"id": str(command.id), "name": command.name, "type": 1}
        data["options"] = built
        if command.guild_id is not None:
            data["guild_id"] = str(command.guild_id)
        return await self._create_interaction(
            itype=InteractionType.AUTOCOMPLETE, guild=g, channel=ch, user=user, data=data
        )

    @staticmethod
    def _guess_option_type(value: Any) -> int:
        if isinstance(value, bool):
            return 5
        if isinstance(value, int):
            return 4
        if isinstance(value, float):
            return 10
        if isinstance(value, (tuple, Attachment)):
            return 11
        if isinstance(value, User):
            return 6
        if isinstance(value, Role):
            return 8
        if isinstance(value, Channel):
            return 7
        return 3

    def _option_value(
        self,
        otype: int,
        value: Any,
        channel: Channel,
        guild: Guild | None,
        resolved: dict[str, dict[str, Any]],
    ) -> Any:
        if otype == 11:
            att = value
            if isinstance(value, tuple):
                filename, raw, ctype = (*value, None)[:3]
                att = self.make_attachment(filename, raw, ctype, channel=channel)
            if not isinstance(att, Attachment):
                raise TypeError(f"attachment option needs an Attachment or tuple, got {value!r}")
            resolved.setdefault("attachments", {})[str(att.id)] = att.payload()
            return str(att.id)
        if otype in (6, 9) and isinstance(value, User):
            resolved.setdefault("users", {})[str(value.id)] = value.payload()
            if guild is not None and value.id in guild.members:
                member = guild.members[value.id].payload()
                member.pop("user")
                member["permissions"] = str(self.permissions_for(guild, value.id, channel))
                resolved.setdefault("members", {})[str(value.id)] = member
            return str(value.id)
        if otype in (8, 9) and isinstance(value, Role):
            resolved.setdefault("roles", {})[str(value.id)] = value.payload()
            return str(value.id)
        if otype == 7 and isinstance(value, Channel):
            info = value.payload()
            info["permissions"] = str(Perm.ALL)
            resolved.setdefault("channels", {})[str(value.id)] = info
            return str(value.id)
        if otype == 4:
            return int(value)
        if otype == 10:
            return float(value)
        if otype == 5:
            return bool(value)
        return value

    async def click(
        self,
        message: Message | int,
        custom_id: str,
        user: User | int,
        *,
        values: Sequence[str] | None = None,
    ) -> Interaction:
        """``user`` clicks a button (or picks ``values`` in a select) on ``message``.

        The INTERACTION_CREATE carries the full message with its components, as Discord's does
        (discord.py's DynamicItem routing needs them).
        """
        user = self._user(user)
        msg = message if isinstance(message, Message) else self.message(message)
        if msg.deleted:
            raise ValueError(f"message {msg.id} was deleted")
        comp = next((c for c in msg.walk_components() if c.get("custom_id") == custom_id), None)
        if comp is None:
            raise ValueError(
                f"message {msg.id} has no component {custom_id!r}; it has {msg.custom_ids}"
            )
        if comp.get("disabled"):
            raise ValueError(f"component {custom_id!r} is disabled")
        if msg.ephemeral and msg.interaction is not None and msg.interaction.user is not user:
            raise ValueError("an ephemeral message can only be used by the user it was sent to")
        channel = self.channels[msg.channel_id]
        guild = self.guilds.get(channel.guild_id) if channel.guild_id else None
        data: dict[str, Any] = {"custom_id": custom_id, "component_type": comp["type"]}
        if comp.get("id") is not None:
            data["id"] = comp["id"]
        if comp["type"] in _SELECT_TYPES:
            data["values"] = list(values or [])
        return await self._create_interaction(
            itype=InteractionType.MESSAGE_COMPONENT,
            guild=guild,
            channel=channel,
            user=user,
            data=data,
            message=msg,
        )

    async def submit_modal(
        self,
        interaction: Interaction,
        values: dict[str, str | Sequence[str]] | None = None,
        *,
        user: User | int | None = None,
    ) -> Interaction:
        """Submit the modal the bot answered ``interaction`` with (prefilled values by default)."""
        modal = interaction.modal
        if modal is None:
            raise ValueError(f"{interaction!r} was not answered with a modal")
        values = dict(values or {})
        out = []
        for row in modal.get("components") or []:
            rtype = row.get("type")
            if rtype == 1:
                inner = [self._modal_value(c, values) for c in row.get("components") or []]
                out.append({"type": 1, "components": inner})
            elif rtype == 18:
                entry = {"type": 18, "component": self._modal_value(row["component"], values)}
                if row.get("id") is not None:
                    entry["id"] = row["id"]
                out.append(entry)
        unknown = set(values) - {
            c.get("custom_id") for c in _walk_components(modal.get("components") or [])
        }
        if unknown:
            raise ValueError(f"modal {modal.get('custom_id')!r} has no inputs {sorted(unknown)}")
        return await self._create_interaction(
            itype=InteractionType.MODAL_SUBMIT,
            guild=interaction.guild,
            channel=interaction.channel,
            user=interaction.user if user is None else self._user(user),
            data={"custom_id": modal["custom_id"], "components": out},
            message=interaction.message,
        )

    @staticmethod
    def _modal_value(comp: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
        custom_id = comp.get("custom_id")
        if comp.get("type") == 4:
            value = values.get(custom_id, comp.get("value") or "")
            if comp.get("required", True) and not value:
                raise ValueError(f"text input {custom_id!r} is required")
            max_length = comp.get("max_length") or 4000
            min_length = comp.get("min_length") or 0
            if value and not min_length <= len(value) <= max_length:
                raise ValueError(
                    f"text input {custom_id!r} takes {min_length}..{max_length} characters"
                )
            return {"type": 4, "custom_id": custom_id, "value": value}
        return {
            "type": comp.get("type"),
            "custom_id": custom_id,
            "values": list(values.get(custom_id, [])),
        }

    # ---------------------------------------------------------------- interactions (REST side)

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
        if ix.response_type is not None:
            raise DiscordHTTPError(400, 40060, "Interaction has already been acknowledged.")
        elapsed = self.clock.monotonic() - ix.created_at
        if ix.failed or elapsed >= self.ack_timeout:
            ix.failed = True
            raise _unknown("interaction", 10062)
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

    def _validate_modal(self, data: dict[str, Any]) -> None:
        self._validate_custom_id(data.get("custom_id"), ["data"])
        title = data.get("title")
        if not isinstance(title, str) or not 1 <= len(title) <= 45:
            raise _form_error(
                ["data", "title"], "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 45 in length."
            )
        rows = data.get("components") or []
        if not 1 <= len(rows) <= 5:
            raise _form_error(
                ["data", "components"], "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 5 in length."
            )
        for comp in _walk_components(rows):
            if comp.get("type") in (4, *_SELECT_TYPES):
                self._validate_custom_id(comp.get("custom_id"), ["data", "components"])
            if comp.get("type") == 4:
                if len(comp.get("label") or "") > 45:
                    raise _form_error(
                        ["data", "components", "label"],
                        "BASE_TYPE_MAX_LENGTH",
                        "Must be 45 or fewer in length.",
                    )
                if len(comp.get("value") or "") > 4000:
                    raise _form_error(
                        ["data", "components", "value"],
                        "BASE_TYPE_MAX_LENGTH",
                        "Must be 4000 or fewer in length.",
                    )

    def _webhook_interaction(self, request: web.Request) -> Interaction:
        webhook_id = _snowflake_int(request.match_info["webhook_id"], ["webhook_id"])
        token = request.match_info["webhook_token"]
        ix = self._ix_by_token.get(token)
        if ix is None or webhook_id != self.application_id:
            raise _unknown("Webhook", 10015)
        if self.clock.monotonic() - ix.created_at >= self.token_lifetime:
            err = DiscordHTTPError(401, 50027, "Invalid Webhook Token")
            ix.webhook_errors.append((request.method, request.path, 401, 50027))
            raise err
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

    # ---------------------------------------------------------------- CDN

    async def _cdn(self, request: web.Request) -> web.StreamResponse:
        try:
            att = self._attachments.get(int(request.match_info["attachment_id"]))
        except ValueError:
            att = None
        if att is None or request.match_info["filename"] != att.filename:
            return web.Response(status=404, text="Not Found")
        expires = request.query.get("ex")
        if expires is not None:
            try:
                expired = int(expires, 16) < self.clock.time()
            except ValueError:
                expired = True
            if expired:
                return web.Response(status=404, text="This content is no longer available.")
        att.downloads += 1
        if att.delay:
            await asyncio.sleep(att.delay)
        if att.status is not None:
            return web.Response(status=att.status, text=f"{att.status}")
        if att.redirect_to is not None:
            return web.Response(status=302, headers={"Location": att.redirect_to})
        total = att.size + att.extra_bytes
        response = web.StreamResponse(status=200)
        response.content_type = att.content_type or "application/octet-stream"
        if att.send_length:
            response.content_length = total
        await response.prepare(request)
        chunk = 64 * 1024
        try:
            for start in range(0, att.size, chunk):
                await response.write(att.data[start : start + chunk])
                if att.chunk_delay:
                    await asyncio.sleep(att.chunk_delay)
            remaining = att.extra_bytes
            zeros = bytes(chunk)
            while remaining > 0:
                n = min(chunk, remaining)
                await response.write(zeros[:n])
                remaining -= n
                if att.chunk_delay:
                    await asyncio.sleep(att.chunk_delay)
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the client gave up (byte cap): that is what the test wanted to see
        return response

    # ---------------------------------------------------------------- gateway

    @property
    def connected(self) -> bool:
        return any(s.conn is not None for s in self._sessions.values())

    async def wait_connected(self, timeout: float = 10.0) -> None:
        await self.wait_for(lambda: self.connected, timeout=timeout, what="a gateway session")

    def _session_for(self, guild_id: int | None) -> _Session | None:
        live = [s for s in self._sessions.values() if not s.invalid and s.covers(guild_id)]
        if not live:
            return None
        connected = [s for s in live if s.conn is not None]
        pool = connected or live
        return max(pool, key=lambda s: s.identified_at)

    def _dispatch(
        self,
        session: _Session,
        event: str,
        data: dict[str, Any],
        *,
        interaction: Interaction | None = None,
    ) -> None:
        session.seq += 1
        frame = json.dumps({"op": 0, "t": event, "s": session.seq, "d": data})
        session.buffer.append((session.seq, frame, interaction))
        if session.conn is not None:
            session.conn.send(frame)
            if interaction is not None:
                interaction.delivered = True

    def _guild_event(
        self, guild_id: int, event: str, data: dict[str, Any], *, intent: int = Intent.GUILDS
    ) -> None:
        guild = self.guilds.get(guild_id)
        if guild is None or self.bot.id not in guild.members:
            return
        for session in self._sessions.values():
            if not session.invalid and session.covers(guild_id) and session.intents & intent:
                self._dispatch(session, event, data)

    def _message_event(
        self, event: str, msg: Message, *, data: dict[str, Any] | None = None
    ) -> None:
        intent = Intent.GUILD_MESSAGES if msg.guild_id is not None else Intent.DIRECT_MESSAGES
        payload = data or self.message_payload(msg)
        if data is None and msg.guild_id is not None:
            payload = {**payload, "guild_id": str(msg.guild_id)}
        for session in self._sessions.values():
            if not session.invalid and session.covers(msg.guild_id) and session.intents & intent:
                self._dispatch(session, event, payload)

    def _guild_create_payload(self, guild: Guild, intents: int) -> dict[str, Any]:
        members = [
            m.payload()
            for m in guild.members.values()
            if intents & Intent.GUILD_MEMBERS or m.user is self.bot or m.user.id == guild.owner_id
        ]
        return {
            **self._guild_payload(guild),
            "unavailable": False,
            "joined_at": _iso(guild.members[self.bot.id].joined_at),
            "large": False,
            "member_count": len(guild.members),
            "channels": [c.payload() for c in guild.channels.values()],
            "members": members,
            "threads": [],
            "presences": [],
            "voice_states": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
            "embedded_activities": [],
        }

    def _broadcast_guild_create(self, guild: Guild) -> None:
        for session in self._sessions.values():
            if not session.invalid and session.covers(guild.id) and session.intents & Intent.GUILDS:
                self._dispatch(
                    session, "GUILD_CREATE", self._guild_create_payload(guild, session.intents)
                )

    async def request_reconnect(self) -> None:
        """Send op 7 RECONNECT to every connected client (they should RESUME)."""
        for session in self._sessions.values():
            if session.conn is not None:
                session.conn.send(json.dumps({"op": 7, "d": None}))
        await asyncio.sleep(0)

    async def drop_connections(self, code: int = 4000) -> None:
        """Close every gateway socket with ``code`` (4000: clients reconnect and RESUME)."""
        for session in self._sessions.values():
            if session.conn is not None:
                session.conn.close(code, "dropped by test")
        await asyncio.sleep(0)

    def invalidate_sessions(self) -> None:
        """Forget every session: a RESUME gets op 9 and the client must IDENTIFY again."""
        for session in self._sessions.values():
            session.invalid = True

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        # autoclose off: the server must see the code of a client's close frame (1000/1001
        # ends the session; other codes keep it resumable).
        ws = web.WebSocketResponse(autoping=True, autoclose=False, max_msg_size=16 * MiB)
        await ws.prepare(request)
        conn = _Connection(ws)
        conn.writer = asyncio.get_running_loop().create_task(conn.run_writer())
        self._connections.add(conn)
        conn.send(json.dumps({"op": 10, "d": {"heartbeat_interval": self.heartbeat_interval_ms}}))
        client_close_code: int | None = None
        try:
            while True:
                msg = await ws.receive()
                if msg.type == WSMsgType.CLOSE:
                    client_close_code = msg.data
                    if not conn.server_closing:
                        await ws.close(code=msg.data)
                    break
                if msg.type in (WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                    break
                if msg.type != WSMsgType.TEXT:
                    conn.close(4002, "Decode error")
                    break
                try:
                    frame = json.loads(msg.data)
                    op = frame["op"]
                except (ValueError, KeyError, TypeError):
                    conn.close(4002, "Decode error")
                    break
                if op == 1:
                    conn.send(json.dumps({"op": 11}))
                elif op == 2:
                    self._identify(conn, frame.get("d") or {})
                elif op == 6:
                    self._resume(conn, frame.get("d") or {})
                elif op == 8:
                    self._request_members(conn, frame.get("d") or {})
                elif op in (3, 4):
                    if conn.session is None:
                        conn.close(4003, "Not authenticated")
                else:
                    conn.close(4001, "Unknown opcode")
                self._notify()
        finally:
            session = conn.session
            if session is not None and session.conn is conn:
                session.conn = None
                if not conn.server_closing and client_close_code in (1000, 1001):
                    # A client that closes with 1000/1001 ends its session (no RESUME).
                    # discord.py's Client.close() puts 4000 on the wire (its reader closes
                    # first), so its sessions stay resumable, as they would on Discord.
                    session.invalid = True
            self._connections.discard(conn)
            if conn.writer is not None:
                # Let queued frames (and a close code) go out before the writer stops.
                conn.queue.put_nowait(None)
                try:
                    await asyncio.wait_for(asyncio.shield(conn.writer), 1.0)
                except TimeoutError:
                    conn.writer.cancel()
            self._notify()
        return ws

    def _identify(self, conn: _Connection, d: dict[str, Any]) -> None:
        if conn.session is not None:
            conn.close(4005, "Already authenticated")
            return
        if d.get("token") != self.token:
            conn.close(4004, "Authentication failed")
            return
        intents = d.get("intents")
        if not isinstance(intents, int) or intents < 0 or intents >= 1 << 26:
            conn.close(4013, "Invalid intent(s)")
            return
        if intents & Intent.PRIVILEGED & ~self.privileged_intents:
            conn.close(4014, "Disallowed intent(s)")
            return
        shard = d.get("shard") or [0, 1]
        if not (isinstance(shard, list) and len(shard) == 2 and 0 <= shard[0] < shard[1]):
            conn.close(4010, "Invalid shard")
            return
        self.identify_count += 1
        session = _Session(
            id=secrets.token_hex(16),
            intents=intents,
            shard=(int(shard[0]), int(shard[1])),
            identified_at=time.monotonic(),
            conn=conn,
        )
        self._sessions[session.id] = session
        conn.session = session
        guilds = [
            g for g in self.guilds.values() if self.bot.id in g.members and session.covers(g.id)
        ]
        ready: dict[str, Any] = {
            "v": 10,
            "user": self._bot_user_payload(),
            "guilds": [{"id": str(g.id), "unavailable": True} for g in guilds],
            "session_id": session.id,
            "session_type": "normal",
            "resume_gateway_url": self.gateway_url,
            "application": {"id": str(self.application_id), "flags": self._application_flags()},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": [],
            "user_settings": {},
            "auth": {},
        }
        if d.get("shard"):
            ready["shard"] = list(session.shard)
        self._dispatch(session, "READY", ready)
        if intents & Intent.GUILDS:
            for guild in guilds:
                self._dispatch(session, "GUILD_CREATE", self._guild_create_payload(guild, intents))

    def _resume(self, conn: _Connection, d: dict[str, Any]) -> None:
        session = self._sessions.get(str(d.get("session_id")))
        if session is None or session.invalid or d.get("token") != self.token:
            conn.send(json.dumps({"op": 9, "d": False}))
            return
        if session.conn is not None and session.conn is not conn:
            session.conn.close(4000, "Session resumed elsewhere")
        self.resume_count += 1
        session.conn = conn
        conn.session = session
        seq = d.get("seq") or 0
        for s, frame, interaction in list(session.buffer):
            if s > seq:
                conn.send(frame)
                if interaction is not None:
                    interaction.delivered = True
        self._dispatch(session, "RESUMED", {})

    def _request_members(self, conn: _Connection, d: dict[str, Any]) -> None:
        if conn.session is None:
            conn.close(4003, "Not authenticated")
            return
        guild = self.guilds.get(int(d.get("guild_id") or 0))
        if guild is None:
            return
        wanted = {int(u) for u in d.get("user_ids") or []}
        query = (d.get("query") or "").lower()
        members = [
            m.payload()
            for m in guild.members.values()
            if (not wanted or m.user.id in wanted) and m.user.username.lower().startswith(query)
        ]
        limit = d.get("limit") or 0
        if limit:
            members = members[:limit]
        chunk: dict[str, Any] = {
            "guild_id": str(guild.id),
            "members": members,
            "chunk_index": 0,
            "chunk_count": 1,
            "not_found": [],
        }
        if d.get("nonce") is not None:
            chunk["nonce"] = d["nonce"]
        self._dispatch(conn.session, "GUILD_MEMBERS_CHUNK", chunk)
