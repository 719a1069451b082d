"""Pure functions from a job to what Discord shows: texts, embeds, progress bars, buttons.

Nothing here talks to Discord or to the store; every function takes plain values (a `Job`,
numbers, timestamps) and returns strings, embeds or button specs, so each is tested without
a client. `discord` is imported for its types and escaping helpers only.

Member text (prompts) is always shown escaped: mentions get a zero-width space after the `@`
and markdown characters a backslash, so a prompt renders as typed and pings nobody even if
the allowed-mentions guard were ever lost.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import discord

from bot.store import JobStatus

if TYPE_CHECKING:
    from bot.store import GuildSettings, Job


@dataclass(frozen=True, slots=True)
class ButtonSpec:
    """One button, as plain data; buttons.py turns it into a DynamicItem."""

    action: str
    label: str
    emoji: str
    style: discord.ButtonStyle
    row: int


# Two rows: the ones that make a new clip, then the ones that act on this one.
RESULT_BUTTONS: tuple[ButtonSpec, ...] = (
    ButtonSpec("reroll", "Reroll", "🔄", discord.ButtonStyle.primary, 0),
    ButtonSpec("vary-subtle", "Vary subtle", "🎲", discord.ButtonStyle.secondary, 0),
    ButtonSpec("vary-strong", "Vary strong", "🎲", discord.ButtonStyle.secondary, 0),
    ButtonSpec("edit", "Edit", "✏️", discord.ButtonStyle.secondary, 0),
    ButtonSpec("extend", "Extend", "➕", discord.ButtonStyle.secondary, 0),
    ButtonSpec("loop", "Loop", "🔁", discord.ButtonStyle.secondary, 1),
    ButtonSpec("share", "Share", "📌", discord.ButtonStyle.success, 1),
    ButtonSpec("info", "Info", "ℹ️", discord.ButtonStyle.secondary, 1),
    ButtonSpec("delete", "Delete", "🗑️", discord.ButtonStyle.danger, 1),
)
PROGRESS_BUTTONS: tuple[ButtonSpec, ...] = (
    ButtonSpec("cancel", "Cancel", "✖️", discord.ButtonStyle.danger, 0),
)

# Which kind of child job each button makes, with its variation strength.
VARY_STRENGTH = {"vary-subtle": 0.25, "vary-strong": 0.6}

# -- text helpers --------------------------------------------------------------------------------

MAX_CONTENT = 2000  # Discord's message content limit
PROMPT_SHOWN = 900  # characters of a prompt shown in a message (before escaping)
BAR_WIDTH = 16


def escape(text: str) -> str:
    """Member text made inert: no mention pings, no markdown, shown as typed."""
    return discord.utils.escape_markdown(discord.utils.escape_mentions(text))


def quote_prompt(prompt: str, *, limit: int = PROMPT_SHOWN) -> str:
    """The prompt as a block quote, escaped, cut at `limit` characters with an ellipsis."""
    text = " ".join(prompt.split()) if len(prompt) > limit else prompt
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    lines = [line for line in text.splitlines() if line.strip()] or ["(empty prompt)"]
    return "\n".join(f"> {escape(line)}" for line in lines)


def relative_time(ts: float) -> str:
    """A Discord timestamp that every client renders in its own words ("in 2 minutes")."""
    return f"<t:{int(math.ceil(ts))}:R>"


def progress_bar(step: int, total: int, *, width: int = BAR_WIDTH) -> str:
    """`▰▰▰▱▱▱ 50%`-style bar; clamps out-of-range steps instead of failing."""
    if total <= 0:
        return "▱" * width + "   0%"
    ratio = min(max(step / total, 0.0), 1.0)
    filled = int(ratio * width)
    return "▰" * filled + "▱" * (width - filled) + f" {int(ratio * 100):3d}%"


def seconds_text(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes} min {rest:02d} s"


def clip_length(job: Job) -> float | None:
    if job.num_frames and job.fps:
        return job.num_frames / job.fps
    return None


def mention(user_id: int) -> str:
    return f"<@{user_id}>"


def _fit(text: str) -> str:
    return text if len(text) <= MAX_CONTENT else text[: MAX_CONTENT - 1] + "…"


# -- progress message ----------------------------------------------------------------------------

_KIND_WORDS = {
    "animate": "Animating",
    "reroll": "Rerolling",
    "vary": "Varying",
    "edit": "Editing",
    "extend": "Extending",
    "loop": "Looping",
}


@dataclass(frozen=True, slots=True)
class QueueInfo:
    """Where a waiting job stands: 1-based position, ETA (Unix seconds), model state."""

    position: int | None = None
    eta: float | None = None
    warming_up: bool = False
    note: str | None = None  # why nothing runs yet, from the backend ("waiting for a worker")


def progress_content(job: Job, queue: QueueInfo | None = None) -> str:
    """The progress message: one status line over the prompt. Shows every state of a job."""
    queue = queue or QueueInfo()
    head = f"{_KIND_WORDS.get(job.kind, 'Animating')} for {mention(job.user_id)}"
    status = job.status
    if status == JobStatus.QUEUED:
        if queue.note:
            line = f"⏳ Queued · {escape(queue.note)}"
            if queue.position is not None:
                line += f" · position {queue.position}"
        elif queue.position is not None and queue.position <= 1 and queue.warming_up:
            line = "🔥 Warming up the model · you're next"
        else:
            line = "⏳ Queued"
            if queue.position is not None:
                line += f" · position {queue.position}"
            if queue.warming_up:
                line += " · model warming up"
        if queue.eta is not None:
            line += f" · ETA {relative_time(queue.eta)}"
    elif status == JobStatus.RUNNING:
        stage = job.stage or "load"
        if stage == "load" or queue.warming_up:
            line = "🔥 Warming up the model…"
        elif stage == "denoise":
            step, total = job.progress_step or 0, job.progress_total or 0
            line = f"🎬 Generating `{progress_bar(step, total)}`"
            if total:
                line += f" · step {step}/{total}"
        elif stage == "decode":
            line = "🎞️ Decoding frames…"
        else:
            line = "📦 Encoding the clip…"
        if queue.eta is not None and stage == "denoise":
            line += f" · done {relative_time(queue.eta)}"
    elif status == JobStatus.DONE:
        line = _done_line(job)
    elif status == JobStatus.CANCELLED:
        line = "✖️ Cancelled."
    else:
        reason = job.error or "the generator failed"
        line = f"❌ Failed: {escape(reason)}"
    return _fit(f"**{head}** · `{job.id}`\n{line}\n{quote_prompt(job.prompt, limit=300)}")


def _done_line(job: Job) -> str:
    if job.result_deleted_at is not None:
        return f"✅ Done — the clip's message was deleted; `/job {job.id}` posts it again."
    if job.result_message_id is None:
        if job.delivered_at is None:
            return "✅ Done — posting the clip…"
        return (
            "✅ Done, but I can't post files in this channel and your DMs are closed. Ask a "
            f"server admin to let me Send Messages and Attach Files here, then use `/job {job.id}`."
        )
    if job.result_channel_id not in (None, job.channel_id):
        return "✅ Done — I couldn't post in this channel, so I sent the clip to you by DM."
    url = result_url(job)
    return f"✅ Done — [watch the clip]({url})" if url else "✅ Done — the clip is posted below."


def progress_buttons(job: Job) -> tuple[ButtonSpec, ...]:
    """Cancel while the job is pending; nothing once it has finished."""
    return PROGRESS_BUTTONS if job.status in (JobStatus.QUEUED, JobStatus.RUNNING) else ()


def progress_is_final(job: Job) -> bool:
    return job.status in (JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED)


# -- result message ------------------------------------------------------------------------------


def result_details(job: Job) -> str:
    """`seed 42 · wan-480p-fast · 5.1 s clip · made in 38.2 s`."""
    parts = [f"seed `{job.seed}`"]
    if job.variation_seed is not None and job.variation_strength:
        parts.append(f"variation `{job.variation_seed}` × {job.variation_strength:g}")
    if job.preset:
        parts.append(escape(job.preset))
    length = clip_length(job)
    if length is not None:
        parts.append(f"{length:.1f} s clip")
    if job.gen_seconds is not None:
        parts.append(f"made in {seconds_text(job.gen_seconds)}")
    return " · ".join(parts)


def ai_label(job: Job) -> str:
    """The visible mark every posted clip carries (EU AI Act Art. 50: people must be told the
    video is AI-generated); the model is the one the clip's machine-readable mark names."""
    model = job.meta.get("ai_model") or job.preset or "an unknown model"
    return f"-# 🤖 AI-generated video · made with {escape(str(model))}"


def result_content(job: Job, *, note: str | None = None) -> str:
    """The result message: pings the requester (only them: see delivery's allowed mentions)."""
    verb = {"loop": "looped", "extend": "extended", "edit": "edited", "vary": "varied"}.get(
        job.kind, "animated"
    )
    head = f"{mention(job.user_id)} your clip is {verb}"
    if job.credit_user_id is not None and job.credit_user_id != job.user_id:
        # Credit without a ping: the client's allowed mentions only let the requester through.
        head += f" (from a clip by {mention(job.credit_user_id)})"
    # The label sits right under the head line, so a long message is never cut through it.
    lines = [head + f" · `{job.id}`", ai_label(job), quote_prompt(job.prompt), result_details(job)]
    if note:
        lines.append(f"-# {note}")
    return _fit("\n".join(lines))


def too_big_content(job: Job, *, size: int, limit: int) -> str:
    """The result message when the clip cannot fit the upload limit even re-encoded."""
    return _fit(
        f"{mention(job.user_id)} your clip `{job.id}` is ready, but at {megabytes(size)} it is "
        f"over this server's upload limit ({megabytes(limit)}) even after re-encoding, so I "
        "can't attach it here. It is kept: try Loop or a shorter duration, or ask a server "
        f"admin to boost the upload limit.\n{quote_prompt(job.prompt)}\n{result_details(job)}"
    )


def megabytes(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MiB"


def showcase_content(job: Job, *, original_url: str | None, sharer_id: int) -> str:
    """The Share repost: credit to the clip's author (no ping) and a link to the original."""
    author = job.user_id
    credit = f"🎬 by {mention(author)}"
    if sharer_id != author:
        credit += f" · shared by {mention(sharer_id)}"
    if original_url:
        credit += f" · [original]({original_url})"
    return _fit(f"{credit}\n{ai_label(job)}\n{quote_prompt(job.prompt)}\n{result_details(job)}")


def failed_notice(job: Job) -> str:
    return _fit(
        f"{mention(job.user_id)} your clip `{job.id}` failed: {escape(job.error or 'unknown error')}"
    )


# -- info, queue, history ------------------------------------------------------------------------


def info_embed(job: Job) -> discord.Embed:
    """Ephemeral Info: everything needed to reproduce the clip."""
    embed = discord.Embed(title=f"Clip {job.id}", description=quote_prompt(job.prompt))
    if job.negative_prompt:
        embed.add_field(name="Negative", value=escape(job.negative_prompt)[:1024], inline=False)
    embed.add_field(name="Seed", value=str(job.seed))
    if job.variation_seed is not None:
        embed.add_field(
            name="Variation", value=f"{job.variation_seed} × {job.variation_strength:g}"
        )
    embed.add_field(name="Preset", value=escape(job.preset or "default"))
    if job.camera:
        embed.add_field(name="Camera", value=escape(job.camera))
    if job.width and job.height:
        embed.add_field(name="Size", value=f"{job.width}×{job.height}")
    if job.num_frames:
        fps = f" @ {job.fps:g} fps" if job.fps else ""
        embed.add_field(name="Frames", value=f"{job.num_frames}{fps}")
    if job.steps:
        embed.add_field(name="Steps", value=str(job.steps))
    embed.add_field(name="Made in", value=seconds_text(job.gen_seconds))
    if job.started_at and job.created_at:
        embed.add_field(
            name="Waited", value=seconds_text(max(0.0, job.started_at - job.created_at))
        )
    embed.add_field(name="Kind", value=job.kind)
    if job.parent_id:
        embed.add_field(name="From", value=f"`{job.parent_id}`")
    if job.output_bytes:
        embed.add_field(name="File", value=megabytes(job.output_bytes))
    embed.add_field(name="Status", value=job.status)
    return embed


def message_url(guild_id: int | None, channel_id: int | None, message_id: int | None) -> str | None:
    if channel_id is None or message_id is None:
        return None
    return f"https://discord.com/channels/{guild_id or '@me'}/{channel_id}/{message_id}"


def result_url(job: Job) -> str | None:
    """The result message's link; None when there is none (not posted, or deleted)."""
    return message_url(job.guild_id, job.result_channel_id or job.channel_id, job.result_message_id)


def shared_url(job: Job) -> str | None:
    """The link to the clip's showcase post (Share), if it was shared."""
    return message_url(job.guild_id, job.shared_channel_id, job.shared_message_id)


def queue_content(
    mine: Sequence[tuple[Job, QueueInfo]], *, guild_waiting: int, guild_running: int
) -> str:
    """/queue: the member's pending jobs with positions, and the server's queue length."""
    lines = [f"**Server queue:** {guild_waiting} waiting · {guild_running} generating"]
    if not mine:
        lines.append("You have no clips in the queue.")
    for job, info in mine:
        if job.status == JobStatus.RUNNING:
            state = "generating"
            if job.stage == "denoise" and job.progress_total:
                state += f" `{progress_bar(job.progress_step or 0, job.progress_total)}`"
        else:
            state = f"position {info.position}" if info.position else "queued"
            if info.eta is not None:
                state += f" · ETA {relative_time(info.eta)}"
        lines.append(f"• `{job.id}` {state} — {escape(_short(job.prompt, 60))}")
    return _fit("\n".join(lines))


def history_content(jobs: Iterable[Job]) -> str:
    lines = []
    for job in jobs:
        url = result_url(job)
        if job.status == JobStatus.DONE and job.result_deleted_at is not None:
            where = "deleted"  # its message is gone: no dead link
        else:
            where = f"[clip]({url})" if url and job.status == JobStatus.DONE else job.status
        lines.append(f"• `{job.id}` {where} — {escape(_short(job.prompt, 60))}")
    return _fit("\n".join(lines) or "You have no clips yet. Try `/animate`.")


def _short(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def settings_content(settings: GuildSettings, defaults: Any) -> str:
    """/settings show: every server setting, with the bot's defaults where none is set."""

    def limit(value: int | None, default: int | None, *, zero: str = "no limit") -> str:
        shown = value if value is not None else default
        text = zero if not shown else str(shown)
        return text if value is not None else f"{text} (default)"

    channels = (
        ", ".join(f"<#{c}>" for c in settings.allowed_channel_ids)
        if settings.allowed_channel_ids
        else "every channel"
    )
    showcase = f"<#{settings.showcase_channel_id}>" if settings.showcase_channel_id else "none"
    presets = ", ".join(settings.allowed_presets) if settings.allowed_presets else "all"
    lines = [
        "**Zoetrope settings**",
        f"• Channels: {channels}",
        f"• Showcase: {showcase}",
        f"• Clips per member in the queue: {limit(settings.max_pending_per_user, defaults.pending_per_user)}",
        f"• Clips in this server's queue: {limit(settings.max_pending_per_guild, defaults.pending_per_guild)}",
        f"• Clips per member per day: {limit(settings.daily_limit_per_user, defaults.daily_per_user)}",
        f"• Presets: {escape(presets)}",
        "• Others may use a clip's buttons: "
        + ("yes" if settings.others_can_use_buttons else "no"),
    ]
    return _fit("\n".join(lines))
