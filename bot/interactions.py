"""Answering interactions: the one room for how the bot talks back to a click or a command.

Owns: the typed accessor for the bot's services (`services()`), interaction refs
(`ref()`), where a new clip lives (`where()`), the moderator check, the defer that becomes
a progress message (`start_progress()`), private error replies (`reply_error()`, cut to
Discord's 2,000 characters by `fit()`) and the
ONE translator from an exception to what the member reads (`answer_error()`), used by the
slash commands' tree handler, the buttons and the Edit modal alike. The words themselves
come from bot/errors.py (`member_message()`).

Imports: discord, bot.errors, bot.recipes, bot.store; the core's types for `Services`
only under TYPE_CHECKING. Never bot.app: the edge is typed against `Services`, so the
composition root stays out of every other module's imports.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import discord
from discord import app_commands

from bot.errors import ZoetropeError, member_message
from bot.recipes import InteractionRef
from bot.store import Job

if TYPE_CHECKING:
    import aiohttp

    from bot.config import Settings
    from bot.intake import ImageLimits
    from bot.jobs import JobService
    from bot.render import QueueInfo

log = logging.getLogger("zoetrope.interactions")

# Discord refuses a message over 2,000 characters of content (400, 50035: "Must be 2000 or
# fewer in length"; discord.com/developers/docs/resources/message#create-message), and the
# member then reads nothing at all.
MAX_CONTENT = 2000
LOGGED_CHARS = 300  # how much of a reply a log line quotes: echoed input is not logged whole


def fit(text: str, limit: int = MAX_CONTENT) -> str:
    """`text` cut to `limit` characters, the cut marked with an ellipsis."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Deliveries(Protocol):
    """What the edge asks of `bot.delivery.Delivery` (typed here, so that the edge's modules
    need not import delivery's, which imports the buttons)."""

    def note_interaction(self, interaction: discord.Interaction) -> None: ...

    def touch(self, job_id: str) -> None: ...

    def queue_info(self, job: Job) -> QueueInfo: ...

    async def file_for(self, job: Job, limit: int) -> tuple[discord.File | None, str | None]: ...

    async def share(self, job: Job, *, sharer_id: int, showcase_id: int) -> tuple[Job, bool]: ...


class Services(Protocol):
    """What the edge uses of the bot. `bot.app.ZoetropeBot` provides it; typing the edge
    against this instead of the app keeps the composition root out of everyone's imports."""

    jobs: JobService
    delivery: Deliveries
    settings: Settings
    session: aiohttp.ClientSession
    image_limits: ImageLimits
    clock: Callable[[], float]


def services(interaction: discord.Interaction) -> Services:
    """The bot behind an interaction, typed: its jobs, delivery, settings, session."""
    return interaction.client  # type: ignore[return-value]


def ref(interaction: discord.Interaction) -> InteractionRef:
    """The interaction as plain data for the core (its token edits the reply for 15 min)."""
    return InteractionRef(
        token=interaction.token,
        application_id=interaction.application_id,
        created_at=services(interaction).clock(),
    )


def is_moderator(interaction: discord.Interaction) -> bool:
    """Manage Messages (or Administrator) where the interaction happened."""
    permissions = interaction.permissions
    return bool(permissions.manage_messages or permissions.administrator)


def where(interaction: discord.Interaction) -> dict[str, Any]:
    """Where a new clip lives: where the click happened (a /job re-post may be elsewhere)."""
    return {"guild_id": interaction.guild_id, "channel_id": interaction.channel_id}


async def start_progress(
    interaction: discord.Interaction,
    job: Job,
    response: discord.InteractionCallbackResponse[Any] | None,
) -> None:
    """The public deferred reply becomes `job`'s progress message."""
    bot = services(interaction)
    message_id = getattr(response, "message_id", None)
    if message_id is None:
        message_id = (await interaction.original_response()).id
    channel_id = interaction.channel_id or job.channel_id
    job = bot.jobs.mark_progress_message(job.id, channel_id=channel_id, message_id=message_id)
    bot.delivery.touch(job.id)


async def reply_error(interaction: discord.Interaction, message: str) -> None:
    """Tell the member what went wrong, privately, whatever state the response is in. An
    error may echo what the member typed (a 5,000-character preset), so it is cut to fit."""
    message = fit(message)
    response = interaction.response
    try:
        if not response.is_done():
            await response.send_message(message, ephemeral=True)
            return
        if response.type is discord.InteractionResponseType.deferred_channel_message:
            # A public "thinking…" reply: remove it, then answer privately (a followup sent
            # while it is still loading would fill it in, publicly).
            with contextlib.suppress(discord.HTTPException):
                await interaction.delete_original_response()
        await interaction.followup.send(message, ephemeral=True)
    except discord.HTTPException as exc:
        log.warning(
            "could not send an error reply (%s): %s", exc.status, fit(message, LOGGED_CHARS)
        )


async def answer_error(interaction: discord.Interaction, error: BaseException, what: str) -> None:
    """The one translator: a domain error becomes its message, privately; a refused check
    a short refusal; Discord refusing a request is only logged (there is no one to tell);
    anything else is a bug, logged with `what` (the command or "job <id>: <action>")."""
    original = getattr(error, "original", error)  # app_commands.CommandInvokeError
    if isinstance(original, ZoetropeError):
        await reply_error(interaction, member_message(original))
        return
    if isinstance(error, app_commands.CheckFailure):
        await reply_error(interaction, "You can't use this command here.")
        return
    if isinstance(original, discord.HTTPException):
        log.error("%s: Discord refused a request (%s)", what, original.status, exc_info=original)
        return
    log.error("%s failed", what, exc_info=original)
    await reply_error(interaction, member_message(original))
