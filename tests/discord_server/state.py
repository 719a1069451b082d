"""The server's state and knobs (what ``FakeDiscord(...)`` takes), ids, and waiting for changes."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import secrets
from collections.abc import Callable
from typing import Any

from aiohttp import web

from tests.discord_server.clock import Clock
from tests.discord_server.constants import DEFAULT_UPLOAD_LIMIT, DISCORD_EPOCH_MS
from tests.discord_server.gateway import _Connection, _Session
from tests.discord_server.holds import Hold
from tests.discord_server.interaction import Interaction
from tests.discord_server.model import (
    Attachment,
    Channel,
    Command,
    CommandWrite,
    Fault,
    Guild,
    Message,
    RequestRecord,
    User,
)
from tests.discord_server.rules.ack_deadline import ACK_TIMEOUT
from tests.discord_server.rules.token_lifetime import TOKEN_LIFETIME
from tests.discord_spec import DiscordSpec, SpecViolation, spec_from_env

_FROM_ENV = object()


class ServerState:
    """Everything the server holds; the other parts read and change it."""

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
        self.holds: list[Hold] = []  # see holds.py

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
