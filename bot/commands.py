"""Slash commands. Thin: validate what Discord gives us, call one JobService function, reply.

`build_commands()` makes fresh command objects for one bot (tests run several bots in one
process). Every callback answers within Discord's 3 seconds: /animate refuses what needs no
image (limits: SQLite reads) privately, then defers, and only then downloads; the others read
SQLite and answer directly.

Errors are `ZoetropeError`s and become private replies through `delivery.reply_error` (the
tree's error handler catches anything that escapes).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands

from bot import intake, render
from bot.admission import CAMERAS
from bot.delivery import build_view, reply_error, start_progress
from bot.errors import BadImage, NotAllowed, NotFound, ZoetropeError
from bot.limits import PROMPT_MAX_LEN as PROMPT_MAX
from bot.limits import SEED_MAX
from bot.recipes import InteractionRef
from bot.render import QueueInfo
from generator.presets import DURATIONS

if TYPE_CHECKING:
    from bot.app import ZoetropeBot

log = logging.getLogger("zoetrope.commands")


CAMERA_CHOICES = [app_commands.Choice(name=key.replace("_", " "), value=key) for key in CAMERAS]
DURATION_CHOICES = [app_commands.Choice(name=d, value=d) for d in DURATIONS]


def _bot(interaction: discord.Interaction) -> ZoetropeBot:
    return interaction.client  # type: ignore[return-value]


def _ref(bot: ZoetropeBot, interaction: discord.Interaction) -> InteractionRef:
    return InteractionRef(
        token=interaction.token, application_id=interaction.application_id, created_at=bot.clock()
    )


def _moderator(interaction: discord.Interaction) -> bool:
    return bool(interaction.permissions.manage_messages or interaction.permissions.administrator)


def build_commands() -> list[app_commands.Command[Any, ..., Any] | app_commands.Group]:
    """The bot's slash commands, as new objects."""

    @app_commands.command(name="animate", description="Bring an image to life as a short clip")
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
        bot = _bot(interaction)
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
                interaction=_ref(bot, interaction),
                ticket=ticket,
            )
        except ZoetropeError as exc:
            await reply_error(interaction, exc.message)
            return
        finally:
            bot.jobs.release(ticket)
        await start_progress(bot, interaction, job, response)

    @animate.autocomplete("preset")
    async def animate_preset_autocomplete(
        interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        # Built-in presets plus what a worker fleet serves now (`local:<folder>` models),
        # narrowed to this server's allowed presets. A typed name is checked again on submit.
        bot = _bot(interaction)
        allowed = bot.jobs.guild_settings(interaction.guild_id).preset_allowed
        typed = current.strip().lower()
        return [
            app_commands.Choice(name=name, value=name)
            for name in bot.jobs.known_presets()
            if allowed(name) and typed in name.lower()
        ][:25]

    @app_commands.command(name="queue", description="Your clips in the queue, and this server's")
    async def queue(interaction: discord.Interaction) -> None:
        bot = _bot(interaction)
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

    @app_commands.command(name="cancel", description="Cancel one of your clips in the queue")
    @app_commands.describe(job="The clip's id (default: your newest waiting clip)")
    async def cancel(interaction: discord.Interaction, job: str | None = None) -> None:
        bot = _bot(interaction)
        job_id = job.strip().lower() if job else None
        if job_id is None:
            pending = bot.jobs.queue_summary(interaction.guild_id, interaction.user.id).user_jobs
            if not pending:
                raise NotFound("You have no clips in the queue.")
            job_id = pending[-1].job.id
        cancelled = await bot.jobs.cancel(
            job_id, user_id=interaction.user.id, moderator=_moderator(interaction)
        )
        await interaction.response.send_message(f"✖️ Cancelled `{cancelled.id}`.", ephemeral=True)

    @cancel.autocomplete("job")
    async def cancel_autocomplete(
        interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        bot = _bot(interaction)
        pending = bot.jobs.queue_summary(interaction.guild_id, interaction.user.id).user_jobs
        return [
            app_commands.Choice(name=f"{i.job.id} — {i.job.prompt[:80]}", value=i.job.id)
            for i in pending
            if i.job.id.startswith(current.strip().lower())
        ][:25]

    @app_commands.command(name="history", description="Your recent clips")
    async def history(interaction: discord.Interaction) -> None:
        bot = _bot(interaction)
        jobs = bot.jobs.history(interaction.user.id, guild_id=interaction.guild_id, limit=10)
        await interaction.response.send_message(render.history_content(jobs), ephemeral=True)

    @app_commands.command(name="job", description="Post a clip again, with its buttons")
    @app_commands.describe(id="The clip's id (shown on every clip and in /history)")
    async def job_command(interaction: discord.Interaction, id: str) -> None:
        bot = _bot(interaction)
        job = bot.jobs.get(id.strip().lower())
        if job.guild_id != interaction.guild_id and job.user_id != interaction.user.id:
            raise NotAllowed("That clip was made somewhere else; only its author can post it here.")
        if job.status != "done":
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

    return [animate, queue, cancel, history, job_command, _settings_group()]


# -- /settings ---------------------------------------------------------------------------------


def _settings_group() -> app_commands.Group:
    group = app_commands.Group(
        name="settings",
        description="Zoetrope's settings for this server",
        guild_only=True,
        default_permissions=discord.Permissions(manage_guild=True),
    )

    def check(interaction: discord.Interaction) -> int:
        # default_permissions only hides the command; server admins can re-grant it, so the
        # permission is checked on every use as well.
        if interaction.guild_id is None:
            raise NotAllowed("Settings belong to a server; use this in one.")
        if not (interaction.permissions.manage_guild or interaction.permissions.administrator):
            raise NotAllowed("You need the Manage Server permission to change Zoetrope's settings.")
        return interaction.guild_id

    async def show(interaction: discord.Interaction, note: str | None = None) -> None:
        bot = _bot(interaction)
        settings = bot.jobs.guild_settings(check(interaction))
        text = render.settings_content(settings, bot.jobs.limits)
        await interaction.response.send_message(f"{note}\n{text}" if note else text, ephemeral=True)

    @group.command(name="show", description="Show this server's settings")
    async def show_command(interaction: discord.Interaction) -> None:
        await show(interaction)

    @group.command(name="channel", description="Allow or disallow Zoetrope in a channel")
    @app_commands.describe(
        channel="The channel",
        allowed="True: add it to the allowed channels (once any is listed, only those work)",
    )
    async def channel(
        interaction: discord.Interaction, channel: discord.TextChannel, allowed: bool
    ) -> None:
        bot = _bot(interaction)
        guild_id = check(interaction)
        current = list(bot.jobs.guild_settings(guild_id).allowed_channel_ids)
        if allowed and channel.id not in current:
            current.append(channel.id)
        elif not allowed and channel.id in current:
            current.remove(channel.id)
        bot.jobs.update_guild_settings(guild_id, allowed_channel_ids=current)
        await show(interaction, "Saved.")

    @group.command(name="all-channels", description="Allow Zoetrope in every channel again")
    async def all_channels(interaction: discord.Interaction) -> None:
        bot = _bot(interaction)
        bot.jobs.update_guild_settings(check(interaction), allowed_channel_ids=[])
        await show(interaction, "Saved.")

    @group.command(name="showcase", description="Where Share reposts clips (leave empty: none)")
    async def showcase(
        interaction: discord.Interaction, channel: discord.TextChannel | None = None
    ) -> None:
        bot = _bot(interaction)
        bot.jobs.update_guild_settings(
            check(interaction), showcase_channel_id=channel.id if channel else None
        )
        await show(interaction, "Saved.")

    @group.command(name="limits", description="Queue limits for this server")
    @app_commands.describe(
        pending_per_user="Clips a member may have waiting or running",
        pending_per_guild="Clips this server may have waiting or running",
        daily_limit="Clips per member per day (0: no limit)",
        reset="Go back to the bot's defaults",
    )
    async def limits(
        interaction: discord.Interaction,
        pending_per_user: app_commands.Range[int, 1, 100] | None = None,
        pending_per_guild: app_commands.Range[int, 1, 10_000] | None = None,
        daily_limit: app_commands.Range[int, 0, 10_000] | None = None,
        reset: bool = False,
    ) -> None:
        bot = _bot(interaction)
        guild_id = check(interaction)
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
        await show(interaction, "Saved." if changes else None)

    @group.command(name="presets", description="Which model presets members may pick")
    @app_commands.describe(presets="Comma-separated preset names, or 'all'")
    async def presets(interaction: discord.Interaction, presets: str) -> None:
        bot = _bot(interaction)
        names = (
            []
            if presets.strip().lower() == "all"
            else [p.strip() for p in presets.split(",") if p.strip()]
        )
        bot.jobs.update_guild_settings(check(interaction), allowed_presets=names)
        await show(interaction, "Saved.")

    @group.command(name="buttons", description="May members use the buttons of others' clips?")
    async def buttons(interaction: discord.Interaction, others_can_use: bool) -> None:
        bot = _bot(interaction)
        bot.jobs.update_guild_settings(check(interaction), others_can_use_buttons=others_can_use)
        await show(interaction, "Saved.")

    return group


async def on_command_error(
    interaction: discord.Interaction, error: app_commands.AppCommandError
) -> None:
    """The tree's error handler: domain errors become private replies, the rest is logged."""
    original = getattr(error, "original", error)
    if isinstance(original, ZoetropeError):
        await reply_error(interaction, original.message)
        return
    if isinstance(error, app_commands.CheckFailure):
        await reply_error(interaction, "You can't use this command here.")
        return
    command = interaction.command.qualified_name if interaction.command else "?"
    log.error("/%s failed", command, exc_info=original)
    await reply_error(interaction, "Something went wrong on my side; please try again.")
