"""Admission: whether a request may become a job, checked once, with a place held for it.

Owns: the camera moves /animate offers, the validators of a request's options (against
the figures in bot/limits.py), a parent clip's length cap, and `Admission`, which
applies every rule of a new job -- the prompt screen, preset known, channel and preset
allowed, the buttons rule of the server, no pending child of the same clip, the member's
and the server's pending clips, the daily quota, the bot's queue size -- in one call,
`hold()`.

The prompt screen (generator/prompt_screen.py) runs first, before anything is queued or
counted: its built-in block (sexual content involving minors) is always on, in every
channel, whatever the server's settings. A server's own term list is not wired yet (no
`GuildSettings` field for it).

Why a hold. A request that passes may still have slow work to do before its row is
written (/animate downloads the image, Extend reads the clip's last frame), and other
requests arrive meanwhile. `hold()` checks the rules once and returns a `Ticket` that the
next checks count like a pending job, so nothing needs checking again when the row is
finally written (`admit()`); `release()` gives the place back if the request goes no
further. Synchronous on purpose: no other check can interleave with one.

Imports: bot.errors, bot.limits, bot.store, bot.intake (prompt clean-up),
generator.presets (pure data), generator.prompt_screen (pure text rules). No discord, no
torch.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot import intake
from bot.errors import (
    AlreadyPending,
    BadOption,
    ContentRefused,
    InvalidState,
    LimitReached,
    NotAllowed,
    NotFound,
    QueueFull,
    QuotaExceeded,
)
from bot.limits import SEED_MAX, VARY_STRENGTHS, Limits
from bot.store import GuildSettings, Job, JobStatus, Store
from generator.presets import DURATIONS, PRESETS, Preset
from generator.prompt_screen import screen_prompt

# Camera moves offered by /animate, appended to the prompt as camera language.
CAMERAS: dict[str, str] = {
    "static": "static camera, the camera does not move",
    "push_in": "the camera slowly pushes in towards the subject",
    "pull_out": "the camera slowly pulls back away from the subject",
    "pan_left": "the camera pans slowly to the left",
    "pan_right": "the camera pans slowly to the right",
    "orbit": "the camera slowly orbits around the subject",
}


# -- validators of a request's options ---------------------------------------------------


def random_seed() -> int:
    return random.SystemRandom().randrange(SEED_MAX + 1)


def check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise BadOption(f"The seed must be a whole number from 0 to {SEED_MAX}, not {seed!r}.")
    return seed


def check_camera(camera: str | None) -> str | None:
    if camera is None or camera == "":
        return None
    key = str(camera).strip().lower().replace(" ", "_").replace("-", "_")
    if key not in CAMERAS:
        names = ", ".join(c.replace("_", " ") for c in CAMERAS)
        raise BadOption(f"Camera must be one of {names}, not {camera!r}.")
    return key


def check_duration(duration: str | None) -> str | None:
    if duration is None or duration == "":
        return None
    if duration not in DURATIONS:
        raise BadOption(f"Duration must be one of {', '.join(DURATIONS)}, not {duration!r}.")
    return duration


def vary_strength(strength: str | float) -> float:
    if isinstance(strength, str):
        if strength not in VARY_STRENGTHS:
            raise BadOption(f"Variation strength must be subtle or strong, not {strength!r}.")
        return VARY_STRENGTHS[strength]
    if isinstance(strength, int | float) and not isinstance(strength, bool) and 0 < strength <= 1:
        return float(strength)
    raise BadOption(f"Variation strength must be between 0 and 1, not {strength!r}.")


def screen(prompt: str) -> None:
    """Raise ContentRefused when the prompt screen refuses `prompt`. The negative prompt is
    never screened: "nude, nsfw" there steers away from such content (see prompt_screen)."""
    verdict = screen_prompt(prompt)
    if not verdict.allowed:
        raise ContentRefused(verdict.reason, rule=verdict.rule)


def check_prompt(prompt: str, limits: Limits, *, negative: bool = False) -> str:
    if negative:
        return intake.normalise_prompt(
            prompt or "", max_len=limits.max_prompt_len, allow_empty=True, what="negative prompt"
        )
    return intake.normalise_prompt(prompt, max_len=limits.max_prompt_len)


# -- a parent clip and its length --------------------------------------------------------


def finished(parent: Job) -> Job:
    """A clip that buttons may act on: finished."""
    if parent.status != JobStatus.DONE:
        raise InvalidState("That clip isn't finished yet.")
    return parent


def kept_output(parent: Job) -> Path:
    if parent.output_path is None or not Path(parent.output_path).is_file():
        raise NotFound("That clip's video is no longer kept, so it can't be used.")
    return Path(parent.output_path)


@dataclass(frozen=True, slots=True)
class ClipRules:
    frame_rule: int
    clip_frames: int  # default frames of one generation
    max_clip_frames: int
    max_frames: int  # cap on the total after extends


def clip_rules(job: Job) -> ClipRules:
    """Frame rules of the model that made `job`: its preset, else what the worker reported
    in the clip's meta, else conservative defaults (Wan's 4k+1 grid, which LTX's 8k+1
    also satisfies)."""
    name = job.preset or job.meta.get("preset")
    preset: Preset | None = PRESETS.get(name) if isinstance(name, str) else None
    if preset is not None:
        clip = preset.frames_for(job.duration)
        return ClipRules(preset.frame_rule, clip, preset.max_clip_frames, preset.max_frames)
    meta = job.meta
    first = int(meta.get("clip_frames") or meta.get("num_frames") or job.num_frames or 81)
    rule = int(meta.get("frame_rule") or 4)
    frames = meta.get("duration_frames")
    clip = int(frames.get(job.duration or "standard", first)) if isinstance(frames, dict) else first
    return ClipRules(
        frame_rule=rule,
        clip_frames=clip,
        max_clip_frames=int(meta.get("max_clip_frames") or clip),
        max_frames=int(meta.get("max_frames") or 3 * clip),
    )


def extend_frames(parent: Job, parent_frames: int) -> int:
    """Frames the next extension of `parent` may add, on the model's frame grid; raises
    LimitReached when the clip is already at the preset's total-length cap."""
    rules = clip_rules(parent)
    room = rules.max_frames - parent_frames + 1  # the seam frame is shared
    new_frames = min(rules.clip_frames, rules.max_clip_frames, room)
    new_frames = (new_frames - 1) // rules.frame_rule * rules.frame_rule + 1  # snap down
    if new_frames < rules.frame_rule + 1:
        seconds = parent_frames / (parent.fps or 16)
        raise LimitReached(
            f"This clip is already as long as it can get ({parent_frames} frames, {seconds:.1f} s)."
        )
    return new_frames


# -- the rules of a new job ----------------------------------------------------------------


@dataclass(eq=False, slots=True)
class Ticket:
    """A place held for one request that passed admission (see the module docstring)."""

    guild_id: int | None
    channel_id: int
    user_id: int
    preset: str | None
    parent_id: str | None
    quota_day: str | None  # the UTC day its clip counts against; None: not counted
    prompt: str | None = None  # the prompt screened by hold(); None: none was given
    released: bool = False


class Admission:
    """Every rule of a new job, applied once per request by `hold()`."""

    def __init__(
        self,
        store: Store,
        *,
        limits: Limits,
        clock: Callable[[], float],
        presets: Callable[[], list[str]],
        waiting: Callable[[], int],
    ) -> None:
        self.store = store
        self.limits = limits
        self.clock = clock
        self._presets = presets  # names a job may ask for (built-in + what the fleet serves)
        self._waiting = waiting  # jobs waiting in the generation queue now
        self._held: list[Ticket] = []

    def settings(self, guild_id: int | None) -> GuildSettings | None:
        return self.store.get_guild_settings(guild_id) if guild_id is not None else None

    def hold(
        self,
        *,
        guild_id: int | None,
        channel_id: int,
        user_id: int,
        preset: str | None = None,
        parent: Job | None = None,
        counts_quota: bool = True,
        prompt: str | None = None,
    ) -> Ticket:
        """Check every rule of a new job; hold its place. Raises the first refusal. With
        `prompt`, the prompt screen runs first (the ticket records what it passed)."""
        if prompt is not None:
            screen(prompt)
        settings = self.settings(guild_id)
        if parent is not None:
            self._check_buttons_rule(settings, parent, user_id)
        self._check_place(settings, channel_id, preset)
        if parent is not None:
            self._check_not_pending(parent.id, user_id)
        day = _day(self.clock())
        self._check_limits(
            settings, user_id=user_id, guild_id=guild_id, day=day, counts_quota=counts_quota
        )
        ticket = Ticket(
            guild_id,
            channel_id,
            user_id,
            preset,
            parent.id if parent is not None else None,
            day if counts_quota else None,
            prompt,
        )
        self._held.append(ticket)
        return ticket

    def release(self, ticket: Ticket) -> None:
        """Give a held place back (idempotent)."""
        if not ticket.released:
            ticket.released = True
            self._held.remove(ticket)

    def admit(self, job: Job, ticket: Ticket) -> Job:
        """Write the row of a held request (and count its day), releasing the hold."""
        if ticket.released:
            raise RuntimeError("admit() with a ticket that was already used or released")
        try:
            job.quota_day = ticket.quota_day
            return self.store.insert_counted(job)
        finally:
            self.release(ticket)

    # -- the rules ---------------------------------------------------------------------

    def _check_buttons_rule(
        self, settings: GuildSettings | None, parent: Job, user_id: int
    ) -> None:
        if (
            user_id != parent.user_id
            and settings is not None
            and not settings.others_can_use_buttons
        ):
            raise NotAllowed("On this server only the clip's owner can use its buttons.")

    def check_preset(self, preset: str | None) -> None:
        if preset is None or preset in PRESETS:
            return
        names = self._presets()
        if preset not in names:
            raise BadOption(f"Unknown preset {preset!r}; the presets are: {', '.join(names)}.")

    def _check_place(
        self, settings: GuildSettings | None, channel_id: int, preset: str | None
    ) -> None:
        self.check_preset(preset)
        if settings is None:
            return
        if not settings.channel_allowed(channel_id):
            channels = ", ".join(f"<#{c}>" for c in settings.allowed_channel_ids[:5])
            raise NotAllowed(f"Zoetrope isn't enabled in this channel. Try {channels}.")
        if not settings.preset_allowed(preset):
            raise NotAllowed(
                f"The {preset} preset isn't allowed on this server. "
                f"Allowed: {', '.join(settings.allowed_presets)}."
            )

    def _check_not_pending(self, parent_id: str, user_id: int) -> None:
        held = any(t.parent_id == parent_id and t.user_id == user_id for t in self._held)
        if held or self.store.pending_child(parent_id, user_id) is not None:
            raise AlreadyPending(
                "You already have a clip from this one in the queue — wait for it to "
                "finish, or /cancel it."
            )

    def _check_limits(
        self,
        settings: GuildSettings | None,
        *,
        user_id: int,
        guild_id: int | None,
        day: str,
        counts_quota: bool,
    ) -> None:
        per_user = self.limits.pending_per_user
        per_guild = self.limits.pending_per_guild
        daily = self.limits.daily_per_user
        if settings is not None:
            per_user = settings.max_pending_per_user or per_user
            per_guild = settings.max_pending_per_guild or per_guild
            if settings.daily_limit_per_user is not None:
                daily = settings.daily_limit_per_user or None  # 0: no daily limit here
        held = self._held
        pending = self.store.pending_for_user(user_id) + sum(t.user_id == user_id for t in held)
        if pending >= per_user:
            clips = "clip" if pending == 1 else "clips"
            raise LimitReached(
                f"You already have {pending} {clips} in the queue — wait for one to finish "
                "or /cancel one."
            )
        if counts_quota and daily is not None:
            used = self.store.daily_count(user_id, day)
            used += sum(t.user_id == user_id and t.quota_day == day for t in held)
            if used >= daily:
                raise QuotaExceeded(
                    f"You've made {used} clips today, the daily limit here. "
                    f"It resets at midnight UTC (<t:{_next_midnight(self.clock())}:R>)."
                )
        if guild_id is not None:
            guild_pending = self.store.pending_for_guild(guild_id)
            if guild_pending + sum(t.guild_id == guild_id for t in held) >= per_guild:
                raise QueueFull(
                    f"This server already has {per_guild} clips in the queue — try again in "
                    "a few minutes."
                )
        if self._waiting() + len(held) >= self.limits.max_queue:
            raise QueueFull("Zoetrope's queue is full right now — try again in a few minutes.")


def _day(ts: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


def _next_midnight(ts: float) -> int:
    return (int(ts) // 86400 + 1) * 86400


def day_of(ts: float) -> str:
    """The UTC day (YYYY-MM-DD) that a daily count at `ts` goes to."""
    return _day(ts)
