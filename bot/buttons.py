"""The clip buttons (DynamicItems) and the Edit modal. Thin: parse, call the core, respond.

Every button's custom_id is `zoetrope:<action>:<job_id>` and nothing else (render.py owns the
scheme): the job row is the truth, so a message posted before a restart still works once
`setup_hook` has registered `JobButton`. `from_custom_id` only parses the match; all the work
happens in `callback`, which answers within Discord's 3 seconds (a defer when the work may take
longer).

The Edit modal is answered through `on_interaction` (see app.py) by its custom_id
`zoetrope:edit-modal:<job_id>`, not through discord.py's in-memory modal store, so a modal
opened before a restart can still be submitted after it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

import discord

from bot import render
from bot.delivery import reply_error, start_progress
from bot.errors import NotAllowed, ZoetropeError
from bot.recipes import InteractionRef
from bot.store import Job

if TYPE_CHECKING:
    from bot.app import ZoetropeBot

log = logging.getLogger("zoetrope.buttons")

_SPECS: dict[str, render.ButtonSpec] = {
    spec.action: spec for spec in (*render.RESULT_BUTTONS, *render.PROGRESS_BUTTONS)
}


class JobButton(discord.ui.DynamicItem[discord.ui.Button], template=render.CUSTOM_ID_RE):
    """One clip button; the custom_id carries the action and the job id."""

    def __init__(self, action: str, job_id: str) -> None:
        spec = _SPECS[action]
        super().__init__(
            discord.ui.Button(
                style=spec.style,
                label=spec.label,
                emoji=spec.emoji,
                custom_id=render.custom_id(action, job_id),
            ),
            row=spec.row,
        )
        self.action = action
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: Any, /
    ) -> JobButton:
        # Runs inside the 3-second window: parse only, no database, no network.
        return cls(match["action"], match["job_id"])

    async def callback(self, interaction: discord.Interaction) -> None:  # type: ignore[override]
        await handle_click(interaction, self.action, self.job_id)


async def handle_click(interaction: discord.Interaction, action: str, job_id: str) -> None:
    bot: ZoetropeBot = interaction.client  # type: ignore[assignment]
    bot.delivery.note_interaction(interaction)
    handler = _HANDLERS[action]
    try:
        await handler(bot, interaction, job_id)
    except ZoetropeError as exc:
        await reply_error(interaction, exc.message)
    except discord.HTTPException:
        log.exception("job %s: %s click: Discord refused a request", job_id, action)
    except Exception:
        log.exception("job %s: %s click failed", job_id, action)
        await reply_error(interaction, "Something went wrong on my side; please try again.")


def _ref(bot: ZoetropeBot, interaction: discord.Interaction) -> InteractionRef:
    return InteractionRef(
        token=interaction.token,
        application_id=interaction.application_id,
        created_at=bot.clock(),
    )


def _is_moderator(interaction: discord.Interaction) -> bool:
    permissions = interaction.permissions
    return bool(permissions.manage_messages or permissions.administrator)


def _where(interaction: discord.Interaction) -> dict[str, Any]:
    # The new clip lives where the click happened (a /job repost may be in another channel).
    return {"guild_id": interaction.guild_id, "channel_id": interaction.channel_id}


# -- buttons that make a new clip --------------------------------------------------------------


async def _new_clip(
    bot: ZoetropeBot,
    interaction: discord.Interaction,
    make: Callable[[InteractionRef], Awaitable[Job]],
    *,
    defer_first: bool = False,
) -> None:
    """Make a child job and turn the deferred reply into its progress message.

    Fast admissions run before the defer so that a refusal (a pending duplicate, a limit) is
    a truly private reply; slow ones (Extend reads the last frame) defer first, after their
    own quick checks.
    """
    if defer_first:
        response = await interaction.response.defer(thinking=True)
        job = await make(_ref(bot, interaction))
        await start_progress(bot, interaction, job, response)
        return
    job = await make(_ref(bot, interaction))
    try:
        response = await interaction.response.defer(thinking=True)
    except discord.HTTPException:
        log.warning("job %s: the click could not be acknowledged; it runs anyway", job.id)
        return
    await start_progress(bot, interaction, job, response)


async def _reroll(bot: ZoetropeBot, interaction: discord.Interaction, job_id: str) -> None:
    user = interaction.user.id
    await _new_clip(
        bot,
        interaction,
        lambda ref: bot.jobs.reroll(job_id, user_id=user, interaction=ref, **_where(interaction)),
    )


def _vary(strength: str) -> Callable[[ZoetropeBot, discord.Interaction, str], Awaitable[None]]:
    async def vary(bot: ZoetropeBot, interaction: discord.Interaction, job_id: str) -> None:
        user = interaction.user.id
        await _new_clip(
            bot,
            interaction,
            lambda ref: bot.jobs.vary(
                job_id, user_id=user, strength=strength, interaction=ref, **_where(interaction)
            ),
        )

    return vary


async def _extend(bot: ZoetropeBot, interaction: discord.Interaction, job_id: str) -> None:
    user = interaction.user.id
    # Extend must read the clip's last frame (slow), so it defers first; every refusal that
    # needs no frame (limits, a pending child, the length cap) comes before that, privately,
    # checked once: the ticket holds the place until extend() writes the row.
    ticket = bot.jobs.reserve_extend(job_id, user_id=user, **_where(interaction))
    try:
        await _new_clip(
            bot,
            interaction,
            lambda ref: bot.jobs.extend(
                job_id, user_id=user, interaction=ref, ticket=ticket, **_where(interaction)
            ),
            defer_first=True,
        )
    finally:
        bot.jobs.release(ticket)


async def _loop(bot: ZoetropeBot, interaction: discord.Interaction, job_id: str) -> None:
    user = interaction.user.id
    await _new_clip(
        bot,
        interaction,
        lambda ref: bot.jobs.loop(job_id, user_id=user, interaction=ref, **_where(interaction)),
    )


# -- edit (modal) -------------------------------------------------------------------------------

PROMPT_INPUT = "prompt"


class EditModal(discord.ui.Modal):
    """The Edit modal, prefilled with the clip's prompt. Its submit is handled by custom_id."""

    def __init__(self, job: Job, *, max_length: int) -> None:
        super().__init__(title="Edit the prompt", custom_id=render.edit_modal_id(job.id))
        self.prompt: discord.ui.TextInput[Any] = discord.ui.TextInput(
            label="Prompt",
            custom_id=PROMPT_INPUT,
            style=discord.TextStyle.paragraph,
            default=job.prompt[:max_length],
            max_length=max_length,
            required=True,
        )
        self.add_item(self.prompt)


async def _open_edit(bot: ZoetropeBot, interaction: discord.Interaction, job_id: str) -> None:
    job = bot.jobs.get(job_id)
    if job.status != "done":
        raise NotAllowed("That clip isn't finished yet.")
    modal = EditModal(job, max_length=min(bot.jobs.limits.max_prompt_len, 4000))
    # Not kept in discord.py's modal store (which a restart empties): the submit is routed by
    # its custom_id in on_interaction -> handle_edit_submit.
    modal.stop()
    await interaction.response.send_modal(modal)


def modal_values(components: Iterable[dict[str, Any]]) -> dict[str, str]:
    """custom_id -> value of every text input in a modal submit (action rows or labels)."""
    values: dict[str, str] = {}
    stack = list(components)
    while stack:
        comp = stack.pop()
        if comp.get("type") == 4 and "custom_id" in comp:
            values[comp["custom_id"]] = str(comp.get("value") or "")
        stack.extend(comp.get("components") or [])
        if isinstance(comp.get("component"), dict):
            stack.append(comp["component"])
    return values


async def handle_edit_submit(interaction: discord.Interaction, job_id: str) -> None:
    bot: ZoetropeBot = interaction.client  # type: ignore[assignment]
    bot.delivery.note_interaction(interaction)
    data: dict[str, Any] = interaction.data or {}  # type: ignore[assignment]
    prompt = modal_values(data.get("components") or []).get(PROMPT_INPUT, "")
    user = interaction.user.id
    try:
        await _new_clip(
            bot,
            interaction,
            lambda ref: bot.jobs.edit(
                job_id, user_id=user, prompt=prompt, interaction=ref, **_where(interaction)
            ),
        )
    except ZoetropeError as exc:
        await reply_error(interaction, exc.message)
    except Exception:
        log.exception("job %s: edit submit failed", job_id)
        await reply_error(interaction, "Something went wrong on my side; please try again.")


# -- buttons that act on this clip ---------------------------------------------------------------


async def _info(bot: ZoetropeBot, interaction: discord.Interaction, job_id: str) -> None:
    job = bot.jobs.get(job_id)
    await interaction.response.send_message(embed=render.info_embed(job), ephemeral=True)


async def _share(bot: ZoetropeBot, interaction: discord.Interaction, job_id: str) -> None:
    job = bot.jobs.get(job_id)
    if interaction.guild_id is None or job.guild_id is None:
        raise NotAllowed("Sharing works for clips made in a server.")
    if job.user_id != interaction.user.id and not _is_moderator(interaction):
        raise NotAllowed("Only the member who made this clip, or a moderator, can share it.")
    if job.shared_message_id is not None:
        # Once per clip, for good (Discord's nonce only dedupes within 5 minutes).
        await interaction.response.send_message(_already_shared(job), ephemeral=True)
        return
    showcase = bot.jobs.guild_settings(job.guild_id).showcase_channel_id
    if showcase is None:
        raise NotAllowed(
            "This server has no showcase channel yet. A server admin can pick one with "
            "`/settings showcase`."
        )
    await interaction.response.defer(ephemeral=True, thinking=True)
    try:
        shared, new = await bot.delivery.share(
            job, sharer_id=interaction.user.id, showcase_id=showcase
        )
    except (discord.Forbidden, discord.NotFound):
        raise NotAllowed(
            f"I can't post in <#{showcase}>. Ask a server admin to let me Send Messages and "
            "Attach Files there."
        ) from None
    text = f"📌 Shared to {render.shared_url(shared)}" if new else _already_shared(shared)
    await interaction.edit_original_response(content=text)


def _already_shared(job: Job) -> str:
    return f"📌 This clip is already in the showcase: {render.shared_url(job)}"


async def _delete(bot: ZoetropeBot, interaction: discord.Interaction, job_id: str) -> None:
    job = bot.jobs.get(job_id)
    if job.user_id != interaction.user.id and not _is_moderator(interaction):
        raise NotAllowed("Only the member who made this clip, or a moderator, can delete it.")
    # Acknowledge without a new message; the clicked message is the interaction's "original",
    # which its token may delete even where the bot lacks Manage Messages.
    await interaction.response.defer()
    try:
        await interaction.delete_original_response()
    except discord.NotFound:
        pass  # already gone
    except discord.HTTPException:
        # The token route refused: the bot may delete its own message in the channel.
        if interaction.message is None:
            raise
        with contextlib.suppress(discord.NotFound):  # already gone
            await interaction.message.delete()
    message = interaction.message
    # Only the job's result message counts (a /job re-post is just a copy); once it is
    # recorded as deleted, /history and the progress message stop linking to it.
    if message is None or message.id != job.result_message_id:
        return
    job = bot.jobs.mark_result_deleted(job_id, message_id=message.id)
    if job.progress_message_id is not None:
        bot.delivery.touch(job_id)


async def _cancel(bot: ZoetropeBot, interaction: discord.Interaction, job_id: str) -> None:
    await bot.jobs.cancel(job_id, user_id=interaction.user.id, moderator=_is_moderator(interaction))
    # The progress message updates itself from the Cancelled event.
    await interaction.response.defer()


_HANDLERS: dict[str, Callable[[ZoetropeBot, discord.Interaction, str], Awaitable[None]]] = {
    "reroll": _reroll,
    "vary-subtle": _vary("subtle"),
    "vary-strong": _vary("strong"),
    "edit": _open_edit,
    "extend": _extend,
    "loop": _loop,
    "share": _share,
    "info": _info,
    "delete": _delete,
    "cancel": _cancel,
}
assert set(_HANDLERS) == set(render.ACTIONS)
