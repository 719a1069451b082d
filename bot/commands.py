"""Slash commands. Thin: validate what Discord gives us, call one JobService function, reply.

`build_commands()` makes fresh command objects for one bot (tests run several bots in one
process). Every callback answers within Discord's 3 seconds: /animate refuses what needs no
image (limits: SQLite reads) privately, then defers, and only then downloads; the others read
SQLite and answer directly.

Errors are not caught here: whatever escapes a callback reaches the tree's error handler,
`on_command_error`, which hands it to the one translator, bot/interactions.py `answer_error`.
Each command is a named function (reachable by tests and tooling); `build_commands()` wraps
them in command objects.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import discord
from discord import app_commands

from bot import intake, policy, render
from bot.admission import CAMERAS
from bot.buttons import build_view
from bot.errors import BadImage, NotAllowed, NotFound
from bot.interactions import answer_error, is_moderator, ref, services, start_progress
from bot.limits import PROMPT_MAX_LEN as PROMPT_MAX
from bot.limits import SEED_MAX
from bot.render import QueueInfo
from bot.store import JobStatus
from generator.presets import DURATIONS

log = logging.getLogger("zoetrope.commands")


CAMERA_CHOICES = [app_commands.Choice(name=key.replace("_", " "), value=key) for key in CAMERAS]
DURATION_CHOICES = [app_commands.Choice(name=d, value=d) for d in DURATIONS]


@app_commands.describe(
    image="The picture to animate (PNG, JPEG, WebP, GIF, BMP or TIFF)",
    prompt="What should happen, e.g. 'waves roll in, the camera slowly pushes forward'",
    negative="What to avoid in the clip",
    camera="A camera move",
    duration="How long the clip is",
    seed="A number that reproduces a clip (see Info on a result)",
    preset="Which model preset to use",
)
@app_commands.choices(camera=CAMERA_CHOICES, duration=DURATION_CHOICES)
async def animate(
    interaction: discord.Interaction,
    image: discord.Attachment,
    prompt: app_commands.Range[str, 1, PROMPT_MAX],
    negative: app_commands.Range[str, 1, PROMPT_MAX] | None = None,
    camera: str | None = None,
    duration: str | None = None,
    seed: app_commands.Range[int, 0, SEED_MAX] | None = None,
    preset: str | None = None,
) -> None:
    bot = services(interaction)
    bot.delivery.note_interaction(interaction)
    cap = bot.settings.limits.max_download_bytes
    # What Discord says about the file is checked before anything slow: an instant,
    # private refusal. The bytes themselves are checked again by intake.
    if image.size == 0:
        raise BadImage("That file is empty. Attach the image again.")
    if image.size > cap:
        raise BadImage(f"That file is too big: the limit is {cap / 2**20:.0f} MiB.")
    # Every limit that needs no image (channel, preset, pending clips, daily quota, queue
    # size), refused before the (public) defer and before a byte is downloaded, checked
    # once: the ticket holds the place until submit writes the row.
    ticket = bot.jobs.reserve(
        guild_id=interaction.guild_id,
        channel_id=interaction.channel_id or 0,
        user_id=interaction.user.id,
        preset=preset,
        prompt=prompt,
    )
    try:
        response = await interaction.response.defer(thinking=True)
        data = await intake.fetch_attachment(
            image.url, session=bot.session, allowed_hosts=bot.settings.cdn_hosts, max_bytes=cap
        )
        accepted = await asyncio.to_thread(
            intake.accept_image, data, inputs_dir=bot.jobs.inputs_dir, limits=bot.image_limits
        )
        job = await bot.jobs.submit(
            guild_id=interaction.guild_id,
            channel_id=interaction.channel_id or 0,
            user_id=interaction.user.id,
            prompt=prompt,
            image_sha256=accepted.sha256,
            negative_prompt=negative or "",
            camera=camera,
            duration=duration,
            seed=seed,
            preset=preset,
            interaction=ref(interaction),
            ticket=ticket,
        )
    finally:
        bot.jobs.release(ticket)
    await start_progress(interaction, job, response)


async def animate_preset_autocomplete(
    interaction: discord.Interaction, current: str
) -> list[app_commands.Choice[str]]:
    # Built-in presets plus what a worker fleet serves now (`local:<folder>` models),
    # narrowed to this server's allowed presets. A typed name is checked again on submit.
    bot = services(interaction)
    allowed = bot.jobs.guild_settings(interaction.guild_id).preset_allowed
    typed = current.strip().lower()
    return [
        app_commands.Choice(name=name, value=name)
        for name in bot.jobs.known_presets()
        if allowed(name) and typed in name.lower()
    ][:25]


async def queue(interaction: discord.Interaction) -> None:
    bot = services(interaction)
    summary = bot.jobs.queue_summary(interaction.guild_id, interaction.user.id)
    now = bot.clock()
    mine = [
        (
            info.job,
            QueueInfo(position=info.position, eta=None if info.eta is None else now + info.eta),
        )
        for info in summary.user_jobs
    ]
    text = render.queue_content(
        mine, guild_waiting=summary.guild_waiting, guild_running=summary.guild_running
    )
    if summary.warming_up:
        text += "\n-# The model is warming up; the first clip takes a little longer."
    await interaction.response.send_message(text, ephemeral=True)


@app_commands.describe(job="The clip's id (default: your newest waiting clip)")
async def cancel(interaction: discord.Interaction, job: str | None = None) -> None:
    bot = services(interaction)
    job_id = job.strip().lower() if job else None
    if job_id is None:
        pending = bot.jobs.queue_summary(interaction.guild_id, interaction.user.id).user_jobs
        if not pending:
            raise NotFound("You have no clips in the queue.")
        job_id = pending[-1].job.id
    cancelled = await bot.jobs.cancel(
        job_id,
        user_id=interaction.user.id,
        guild_id=interaction.guild_id,
        moderator=is_moderator(interaction),
    )
    await interaction.response.send_message(f"✖️ Cancelled `{cancelled.id}`.", ephemeral=True)


async def cancel_autocomplete(
    interaction: discord.Interaction, current: str
) -> list[app_commands.Choice[str]]:
    bot = services(interaction)
    pending = bot.jobs.queue_summary(interaction.guild_id, interaction.user.id).user_jobs
    return [
        app_commands.Choice(name=f"{i.job.id} — {i.job.prompt[:80]}", value=i.job.id)
        for i in pending
        if i.job.id.startswith(current.strip().lower())
    ][:25]


async def history(interaction: discord.Interaction) -> None:
    bot = services(interaction)
    jobs = bot.jobs.history(interaction.user.id, guild_id=interaction.guild_id, limit=10)
    await interaction.response.send_message(render.history_content(jobs), ephemeral=True)


@app_commands.describe(id="The clip's id (shown on every clip and in /history)")
async def job_command(interaction: discord.Interaction, id: str) -> None:
    bot = services(interaction)
    job = policy.check_visible_here(
        bot.jobs.lookup(
            id.strip().lower(), guild_id=interaction.guild_id, user_id=interaction.user.id
        ),
        guild_id=interaction.guild_id,
        user_id=interaction.user.id,
    )
    if job.status != JobStatus.DONE:
        await interaction.response.send_message(
            render.progress_content(job, bot.delivery.queue_info(job)), ephemeral=True
        )
        return
    await interaction.response.defer(thinking=True)
    upload, note = await bot.delivery.file_for(job, interaction.filesize_limit)
    content = render.result_content(job, note=note if upload is not None else None)
    if upload is None and note:
        content = f"{content}\n{note}"[: render.MAX_CONTENT]
    posted = await interaction.edit_original_response(
        content=content,
        attachments=[upload] if upload is not None else [],
        view=build_view(job.id, render.RESULT_BUTTONS),
    )
    if upload is not None and interaction.channel_id is not None:
        # A re-post of a clip whose result message was deleted takes its place (in the
        # clip's own channel only), so /history links to a message that exists.
        restored = bot.jobs.restore_result(
            job.id, message_id=posted.id, channel_id=interaction.channel_id
        )
        if restored.result_message_id == posted.id and restored.progress_message_id:
            bot.delivery.touch(job.id)  # its progress message links to the clip again


def build_commands() -> list[app_commands.Command[Any, ..., Any] | app_commands.Group]:
    """The bot's slash commands, as new objects (the callbacks are the named functions
    above, shared; tests run several bots in one process)."""
    animate_cmd = app_commands.command(
        name="animate", description="Bring an image to life as a short clip"
    )(animate)
    queue_cmd = app_commands.command(
        name="queue", description="Your clips in the queue, and this server's"
    )(queue)
    cancel_cmd = app_commands.command(
        name="cancel", description="Cancel one of your clips in the queue"
    )(cancel)
    history_cmd = app_commands.command(name="history", description="Your recent clips")(history)
    job_command_cmd = app_commands.command(
        name="job", description="Post a clip again, with its buttons"
    )(job_command)
    animate_cmd.autocomplete("preset")(animate_preset_autocomplete)
    cancel_cmd.autocomplete("job")(cancel_autocomplete)
    return [animate_cmd, queue_cmd, cancel_cmd, history_cmd, job_command_cmd, _settings_group()]


# -- /settings ---------------------------------------------------------------------------------


def _managed_guild(interaction: discord.Interaction) -> int:
    # default_permissions only hides the command; server admins can re-grant it, so the
    # permission is checked on every use as well.
    if interaction.guild_id is None:
        raise NotAllowed("Settings belong to a server; use this in one.")
    if not (interaction.permissions.manage_guild or interaction.permissions.administrator):
        raise NotAllowed("You need the Manage Server permission to change Zoetrope's settings.")
    return interaction.guild_id


async def _show_settings(interaction: discord.Interaction, note: str | None = None) -> None:
    bot = services(interaction)
    settings = bot.jobs.guild_settings(_managed_guild(interaction))
    text = render.settings_content(settings, bot.jobs.limits)
    await interaction.response.send_message(f"{note}\n{text}" if note else text, ephemeral=True)


async def settings_show(interaction: discord.Interaction) -> None:
    await _show_settings(interaction)


@app_commands.describe(
    channel="The channel",
    allowed="True: add it to the allowed channels (once any is listed, only those work)",
)
async def settings_channel(
    interaction: discord.Interaction, channel: discord.TextChannel, allowed: bool
) -> None:
    bot = services(interaction)
    guild_id = _managed_guild(interaction)
    current = list(bot.jobs.guild_settings(guild_id).allowed_channel_ids)
    if allowed and channel.id not in current:
        current.append(channel.id)
    elif not allowed and channel.id in current:
        current.remove(channel.id)
    bot.jobs.update_guild_settings(guild_id, allowed_channel_ids=current)
    await _show_settings(interaction, "Saved.")


async def settings_all_channels(interaction: discord.Interaction) -> None:
    bot = services(interaction)
    bot.jobs.update_guild_settings(_managed_guild(interaction), allowed_channel_ids=[])
    await _show_settings(interaction, "Saved.")


async def settings_showcase(
    interaction: discord.Interaction, channel: discord.TextChannel | None = None
) -> None:
    bot = services(interaction)
    bot.jobs.update_guild_settings(
        _managed_guild(interaction), showcase_channel_id=channel.id if channel else None
    )
    await _show_settings(interaction, "Saved.")


@app_commands.describe(
    pending_per_user="Clips a member may have waiting or running",
    pending_per_guild="Clips this server may have waiting or running",
    daily_limit="Clips per member per day (0: no limit)",
    reset="Go back to the bot's defaults",
)
async def settings_limits(
    interaction: discord.Interaction,
    pending_per_user: app_commands.Range[int, 1, 100] | None = None,
    pending_per_guild: app_commands.Range[int, 1, 10_000] | None = None,
    daily_limit: app_commands.Range[int, 0, 10_000] | None = None,
    reset: bool = False,
) -> None:
    bot = services(interaction)
    guild_id = _managed_guild(interaction)
    changes: dict[str, Any] = {}
    if reset:
        changes = dict.fromkeys(
            ("max_pending_per_user", "max_pending_per_guild", "daily_limit_per_user")
        )
    if pending_per_user is not None:
        changes["max_pending_per_user"] = pending_per_user
    if pending_per_guild is not None:
        changes["max_pending_per_guild"] = pending_per_guild
    if daily_limit is not None:
        changes["daily_limit_per_user"] = daily_limit
    if changes:
        bot.jobs.update_guild_settings(guild_id, **changes)
    await _show_settings(interaction, "Saved." if changes else None)


@app_commands.describe(presets="Comma-separated preset names, or 'all'")
async def settings_presets(interaction: discord.Interaction, presets: str) -> None:
    bot = services(interaction)
    names = (
        []
        if presets.strip().lower() == "all"
        else [p.strip() for p in presets.split(",") if p.strip()]
    )
    bot.jobs.update_guild_settings(_managed_guild(interaction), allowed_presets=names)
    await _show_settings(interaction, "Saved.")


async def settings_buttons(interaction: discord.Interaction, others_can_use: bool) -> None:
    bot = services(interaction)
    bot.jobs.update_guild_settings(
        _managed_guild(interaction), others_can_use_buttons=others_can_use
    )
    await _show_settings(interaction, "Saved.")


def _settings_group() -> app_commands.Group:
    group = app_commands.Group(
        name="settings",
        description="Zoetrope's settings for this server",
        guild_only=True,
        default_permissions=discord.Permissions(manage_guild=True),
    )
    group.add_command(
        app_commands.command(name="show", description="Show this server's settings")(settings_show)
    )
    group.add_command(
        app_commands.command(name="channel", description="Allow or disallow Zoetrope in a channel")(
            settings_channel
        )
    )
    group.add_command(
        app_commands.command(
            name="all-channels", description="Allow Zoetrope in every channel again"
        )(settings_all_channels)
    )
    group.add_command(
        app_commands.command(
            name="showcase", description="Where Share reposts clips (leave empty: none)"
        )(settings_showcase)
    )
    group.add_command(
        app_commands.command(name="limits", description="Queue limits for this server")(
            settings_limits
        )
    )
    group.add_command(
        app_commands.command(name="presets", description="Which model presets members may pick")(
            settings_presets
        )
    )
    group.add_command(
        app_commands.command(
            name="buttons", description="May members use the buttons of others' clips?"
        )(settings_buttons)
    )
    return group


async def on_command_error(
    interaction: discord.Interaction, error: app_commands.AppCommandError
) -> None:
    """The tree's error handler: the one translator (bot/interactions.py) answers."""
    command = interaction.command.qualified_name if interaction.command else "?"
    await answer_error(interaction, error, f"/{command}")
