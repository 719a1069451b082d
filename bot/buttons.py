"""The clip buttons (DynamicItems), their custom_id scheme and view, and the Edit modal.

Thin: parse, call the core, respond. Every button's custom_id is `zoetrope:<action>:<job_id>`
and nothing else (the scheme lives here, next to the button class): the job row is the truth, so a message posted before a restart still works once
`setup_hook` has registered `JobButton`. `from_custom_id` only parses the match; all the work
happens in `callback`, which answers within Discord's 3 seconds (a defer when the work may take
longer).

The Edit modal is answered through `on_interaction` (see app.py) by its custom_id
`zoetrope:edit-modal:<job_id>`, not through discord.py's in-memory modal store, so a modal
opened before a restart can still be submitted after it.

Who may Share or Delete, and when Edit opens, is decided in the core (bot/policy.py); errors
are answered by bot/interactions.py `answer_error`, the one translator.

Imports: discord, bot.render (labels), bot.interactions, bot.policy, bot.recipes, bot.store.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import discord

from bot import policy, render
from bot.errors import NotAllowed
from bot.interactions import (
    Services,
    answer_error,
    is_moderator,
    ref,
    services,
    start_progress,
    where,
)
from bot.recipes import InteractionRef
from bot.render import ButtonSpec
from bot.store import Job

log = logging.getLogger("zoetrope.buttons")

# -- custom ids ----------------------------------------------------------------------------------

CUSTOM_ID_PREFIX = "zoetrope"
# Every action a button can carry. The custom_id is `zoetrope:<action>:<job_id>` and holds
# nothing else: the job row is the truth, so an old message still works after a restart.
ACTIONS: tuple[str, ...] = (
    "reroll",
    "vary-subtle",
    "vary-strong",
    "edit",
    "extend",
    "loop",
    "share",
    "info",
    "delete",
    "cancel",
)
JOB_ID_PATTERN = r"[a-z0-9][a-z0-9_-]{0,63}"
CUSTOM_ID_RE = re.compile(
    rf"{CUSTOM_ID_PREFIX}:(?P<action>{'|'.join(re.escape(a) for a in ACTIONS)}):(?P<job_id>{JOB_ID_PATTERN})"
)
EDIT_MODAL_RE = re.compile(rf"{CUSTOM_ID_PREFIX}:edit-modal:(?P<job_id>{JOB_ID_PATTERN})")
MAX_CUSTOM_ID = 100  # Discord's limit


def custom_id(action: str, job_id: str) -> str:
    """`zoetrope:<action>:<job_id>`; raises ValueError for an unknown action or a bad id."""
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {ACTIONS}, got {action!r}")
    value = f"{CUSTOM_ID_PREFIX}:{action}:{job_id}"
    if not CUSTOM_ID_RE.fullmatch(value) or len(value) > MAX_CUSTOM_ID:
        raise ValueError(f"job_id {job_id!r} cannot go into a custom_id")
    return value


def edit_modal_id(job_id: str) -> str:
    value = f"{CUSTOM_ID_PREFIX}:edit-modal:{job_id}"
    if not EDIT_MODAL_RE.fullmatch(value):
        raise ValueError(f"job_id {job_id!r} cannot go into a custom_id")
    return value


def build_view(job_id: str, specs: tuple[ButtonSpec, ...]) -> discord.ui.View | None:
    """A persistent view of JobButtons (DynamicItems), or None for no buttons."""
    if not specs:
        return None
    view = discord.ui.View(timeout=None)
    for spec in specs:
        view.add_item(JobButton(spec.action, job_id))
    return view


_SPECS: dict[str, render.ButtonSpec] = {
    spec.action: spec for spec in (*render.RESULT_BUTTONS, *render.PROGRESS_BUTTONS)
}


class JobButton(discord.ui.DynamicItem[discord.ui.Button], template=CUSTOM_ID_RE):
    """One clip button; the custom_id carries the action and the job id."""

    def __init__(self, action: str, job_id: str) -> None:
        spec = _SPECS[action]
        super().__init__(
            discord.ui.Button(
                style=spec.style,
                label=spec.label,
                emoji=spec.emoji,
                custom_id=custom_id(action, job_id),
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
    bot = services(interaction)
    bot.delivery.note_interaction(interaction)
    handler = _HANDLERS[action]
    try:
        await handler(bot, interaction, job_id)
    except Exception as exc:
        await answer_error(interaction, exc, f"job {job_id}: {action} click")


# -- buttons that make a new clip --------------------------------------------------------------


async def _new_clip(
    bot: Services,
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
        job = await make(ref(interaction))
        await start_progress(interaction, job, response)
        return
    job = await make(ref(interaction))
    try:
        response = await interaction.response.defer(thinking=True)
    except discord.HTTPException:
        log.warning("job %s: the click could not be acknowledged; it runs anyway", job.id)
        return
    await start_progress(interaction, job, response)


async def _reroll(bot: Services, interaction: discord.Interaction, job_id: str) -> None:
    user = interaction.user.id
    await _new_clip(
        bot,
        interaction,
        lambda ref: bot.jobs.reroll(job_id, user_id=user, interaction=ref, **where(interaction)),
    )


def _vary(strength: str) -> Callable[[Services, discord.Interaction, str], Awaitable[None]]:
    async def vary(bot: Services, interaction: discord.Interaction, job_id: str) -> None:
        user = interaction.user.id
        await _new_clip(
            bot,
            interaction,
            lambda ref: bot.jobs.vary(
                job_id, user_id=user, strength=strength, interaction=ref, **where(interaction)
            ),
        )

    return vary


async def _extend(bot: Services, interaction: discord.Interaction, job_id: str) -> None:
    user = interaction.user.id
    # Extend must read the clip's last frame (slow), so it defers first; every refusal that
    # needs no frame (limits, a pending child, the length cap) comes before that, privately,
    # checked once: the ticket holds the place until extend() writes the row.
    ticket = bot.jobs.reserve_extend(job_id, user_id=user, **where(interaction))
    try:
        await _new_clip(
            bot,
            interaction,
            lambda ref: bot.jobs.extend(
                job_id, user_id=user, interaction=ref, ticket=ticket, **where(interaction)
            ),
            defer_first=True,
        )
    finally:
        bot.jobs.release(ticket)


async def _loop(bot: Services, interaction: discord.Interaction, job_id: str) -> None:
    user = interaction.user.id
    await _new_clip(
        bot,
        interaction,
        lambda ref: bot.jobs.loop(job_id, user_id=user, interaction=ref, **where(interaction)),
    )


# -- edit (modal) -------------------------------------------------------------------------------

PROMPT_INPUT = "prompt"


class EditModal(discord.ui.Modal):
    """The Edit modal, prefilled with the clip's prompt. Its submit is handled by custom_id."""

    def __init__(self, job: Job, *, max_length: int) -> None:
        super().__init__(title="Edit the prompt", custom_id=edit_modal_id(job.id))
        self.prompt: discord.ui.TextInput[Any] = discord.ui.TextInput(
            label="Prompt",
            custom_id=PROMPT_INPUT,
            style=discord.TextStyle.paragraph,
            default=job.prompt[:max_length],
            max_length=max_length,
            required=True,
        )
        self.add_item(self.prompt)


async def _open_edit(bot: Services, interaction: discord.Interaction, job_id: str) -> None:
    job = policy.check_editable(bot.jobs.lookup(job_id, **_asker(interaction)))
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
    bot = services(interaction)
    bot.delivery.note_interaction(interaction)
    data: dict[str, Any] = interaction.data or {}  # type: ignore[assignment]
    prompt = modal_values(data.get("components") or []).get(PROMPT_INPUT, "")
    user = interaction.user.id
    try:
        await _new_clip(
            bot,
            interaction,
            lambda ref: bot.jobs.edit(
                job_id, user_id=user, prompt=prompt, interaction=ref, **where(interaction)
            ),
        )
    except Exception as exc:
        await answer_error(interaction, exc, f"job {job_id}: edit submit")


# -- buttons that act on this clip ---------------------------------------------------------------


def _asker(interaction: discord.Interaction) -> dict[str, Any]:
    """Who asks about a job id and from which server (a custom_id can be forged)."""
    return {"guild_id": interaction.guild_id, "user_id": interaction.user.id}


async def _info(bot: Services, interaction: discord.Interaction, job_id: str) -> None:
    job = bot.jobs.lookup(job_id, **_asker(interaction))
    await interaction.response.send_message(embed=render.info_embed(job), ephemeral=True)


async def _share(bot: Services, interaction: discord.Interaction, job_id: str) -> None:
    job = bot.jobs.lookup(job_id, **_asker(interaction))
    policy.check_shareable(
        job,
        guild_id=interaction.guild_id,
        user_id=interaction.user.id,
        moderator=is_moderator(interaction),
    )
    if job.shared_message_id is not None:
        # Once per clip, for good (Discord's nonce only dedupes within 5 minutes).
        await interaction.response.send_message(_already_shared(job), ephemeral=True)
        return
    assert job.guild_id is not None  # check_shareable: made in a server
    showcase = policy.showcase_channel(bot.jobs.guild_settings(job.guild_id))
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


async def _delete(bot: Services, interaction: discord.Interaction, job_id: str) -> None:
    job = bot.jobs.lookup(job_id, **_asker(interaction))
    policy.check_owner_or_moderator(
        job, interaction.user.id, moderator=is_moderator(interaction), action="delete"
    )
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
    # recorded as deleted, /history and the progress message stop linking to it. A click on
    # a result whose post is not recorded yet is remembered and honoured on delivery.
    if message is None:
        return
    job = bot.jobs.mark_result_deleted(job_id, message_id=message.id)
    if job.result_deleted_at is not None and job.progress_message_id is not None:
        bot.delivery.touch(job_id)


async def _cancel(bot: Services, interaction: discord.Interaction, job_id: str) -> None:
    await bot.jobs.cancel(
        job_id,
        user_id=interaction.user.id,
        guild_id=interaction.guild_id,
        moderator=is_moderator(interaction),
    )
    # The progress message updates itself from the Cancelled event.
    await interaction.response.defer()


_HANDLERS: dict[str, Callable[[Services, discord.Interaction, str], Awaitable[None]]] = {
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
assert set(_HANDLERS) == set(ACTIONS)
