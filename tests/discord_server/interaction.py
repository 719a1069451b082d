"""One interaction a test user created, and everything the bot did with it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tests.discord_server.constants import MessageFlag
from tests.discord_server.errors import InteractionFailed
from tests.discord_server.model import Channel, Guild, Message, User

if TYPE_CHECKING:
    from tests.discord_server.server import FakeDiscord


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
