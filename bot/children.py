"""Children of a finished clip: Reroll, Vary, Edit, Extend and Loop, as recipes admitted once.

Owns: which checks each child needs before its row (finished, video kept, Extend's length
cap) and the work some need first (Extend reads the clip's last frame). The rules of a new
job themselves are bot/admission.py's; the row is written and queued by the `admit`
callable it is handed (JobService's, so a child enters the queue exactly as /animate does).
JobService exposes these methods as its own.

Imports: bot.admission, bot.policy, bot.recipes, bot.store, bot.runner (DataDirs). No discord.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bot import admission as adm
from bot import policy, recipes
from bot.admission import Admission, Ticket
from bot.errors import InvalidState
from bot.limits import Limits
from bot.recipes import InteractionRef
from bot.runner import DataDirs
from bot.store import Job, Store

_SAME: Any = object()  # "same as the parent" default for a child job's guild and channel


class Children:
    """The child jobs of a finished clip."""

    def __init__(
        self,
        store: Store,
        admission: Admission,
        *,
        admit: Callable[[Job, Ticket], Job],
        dirs: DataDirs,
        limits: Limits,
        clock: Callable[[], float],
    ) -> None:
        self.store = store
        self.admission = admission
        self._admit = admit
        self.dirs = dirs
        self.limits = limits
        self.clock = clock

    def _parent(self, parent_id: str, user_id: int, guild_id: Any) -> Job:
        """The parent a member named (a button's custom_id may be forged): from a server
        (`guild_id` given), another server's clip is "no such job" (bot/policy.py)."""
        parent = self.store.require_job(parent_id)
        if guild_id is not _SAME:
            policy.check_in_scope(parent, guild_id=guild_id, user_id=user_id)
        return parent

    async def reroll(
        self,
        parent_id: str,
        *,
        user_id: int,
        guild_id: Any = _SAME,
        channel_id: Any = _SAME,
        interaction: InteractionRef | None = None,
    ) -> Job:
        """The same image and prompt with a new seed."""
        return self._child_job(
            parent_id,
            "reroll",
            user_id,
            guild_id,
            channel_id,
            interaction,
            seed=adm.random_seed(),
        )

    async def vary(
        self,
        parent_id: str,
        *,
        user_id: int,
        strength: str | float = "subtle",
        guild_id: Any = _SAME,
        channel_id: Any = _SAME,
        interaction: InteractionRef | None = None,
    ) -> Job:
        """The same seed with variation noise mixed in (subtle 0.25, strong 0.6)."""
        value = adm.vary_strength(strength)
        return self._child_job(
            parent_id,
            "vary",
            user_id,
            guild_id,
            channel_id,
            interaction,
            variation_seed=adm.random_seed(),
            variation_strength=value,
        )

    async def edit(
        self,
        parent_id: str,
        *,
        user_id: int,
        prompt: str,
        guild_id: Any = _SAME,
        channel_id: Any = _SAME,
        interaction: InteractionRef | None = None,
    ) -> Job:
        """A new prompt on the same image and seed (and the same variation, if any)."""
        prompt = adm.check_prompt(prompt, self.limits)
        return self._child_job(
            parent_id, "edit", user_id, guild_id, channel_id, interaction, prompt=prompt
        )

    async def loop(
        self,
        parent_id: str,
        *,
        user_id: int,
        guild_id: Any = _SAME,
        channel_id: Any = _SAME,
        interaction: InteractionRef | None = None,
    ) -> Job:
        """Ping-pong re-encode of the clip (forwards then backwards). No GPU: it does not
        wait in the generation queue and does not count against the daily quota."""
        parent = adm.finished(self._parent(parent_id, user_id, guild_id))
        if parent.kind == "loop":
            raise InvalidState("That clip already loops.")
        source = adm.kept_output(parent)
        return self._child_job(
            parent,
            "loop",
            user_id,
            guild_id,
            channel_id,
            interaction,
            meta={"loop_source": str(source)},
        )

    def _child_job(
        self,
        parent: str | Job,
        kind: str,
        user_id: int,
        guild_id: Any,
        channel_id: Any,
        interaction: InteractionRef | None,
        **changes: Any,
    ) -> Job:
        """Admit a child of `parent` (checked once) and queue it."""
        if isinstance(parent, str):
            parent = adm.finished(self._parent(parent, user_id, guild_id))
        guild, channel = _place_of(parent, guild_id, channel_id)
        # Every child that generates is screened: Edit's new prompt, and the parent's own
        # for the rest (a clip made before the screen existed is not a way around it).
        prompt = changes.get("prompt", parent.prompt) if kind != "loop" else None
        ticket = self.admission.hold(
            guild_id=guild,
            channel_id=channel,
            user_id=user_id,
            preset=parent.preset,
            parent=parent,
            counts_quota=kind != "loop",
            prompt=prompt,
        )
        child = recipes.child_job(
            parent,
            kind,
            now=self.clock(),
            user_id=user_id,
            guild_id=guild,
            channel_id=channel,
            interaction=interaction,
            **changes,
        )
        return self._admit(child, ticket)

    def reserve_extend(
        self, parent_id: str, *, user_id: int, guild_id: Any = _SAME, channel_id: Any = _SAME
    ) -> Ticket:
        """Extend's refusals that need no frame of the clip -- finished, video kept, its
        length cap (when its frame count is on the row), and every admission rule -- and
        its place held. The Discord layer calls this before deferring, so a refusal is
        private; spend the ticket with extend(ticket=...) or release() it."""
        return self._hold_extend(parent_id, user_id, guild_id, channel_id)[1]

    def check_extend(
        self, parent_id: str, *, user_id: int, guild_id: Any = _SAME, channel_id: Any = _SAME
    ) -> Job:
        """reserve_extend() without holding anything; returns the parent."""
        parent, ticket = self._hold_extend(parent_id, user_id, guild_id, channel_id)
        self.admission.release(ticket)
        return parent

    def _hold_extend(
        self, parent_id: str, user_id: int, guild_id: Any, channel_id: Any
    ) -> tuple[Job, Ticket]:
        parent = adm.finished(self._parent(parent_id, user_id, guild_id))
        adm.kept_output(parent)
        if parent.num_frames:
            adm.extend_frames(parent, parent.num_frames)
        guild, channel = _place_of(parent, guild_id, channel_id)
        ticket = self.admission.hold(
            guild_id=guild,
            channel_id=channel,
            user_id=user_id,
            preset=parent.preset,
            parent=parent,
            prompt=parent.prompt,
        )
        return parent, ticket

    async def extend(
        self,
        parent_id: str,
        *,
        user_id: int,
        guild_id: Any = _SAME,
        channel_id: Any = _SAME,
        interaction: InteractionRef | None = None,
        ticket: Ticket | None = None,
    ) -> Job:
        """Continue the clip from its last frame; the two clips are joined (seam frame
        dropped) and the total length is capped by the preset."""
        if ticket is None:
            parent, ticket = self._hold_extend(parent_id, user_id, guild_id, channel_id)
        else:
            parent = adm.finished(self._parent(parent_id, user_id, guild_id))
        try:
            source = adm.kept_output(parent)
            parent_frames = await recipes.clip_frames(source, parent.num_frames)
            new_frames = adm.extend_frames(parent, parent_frames)
            sha256 = await recipes.last_frame_input(source, self.dirs.inputs)
            guild, channel = _place_of(parent, guild_id, channel_id)
            job = recipes.child_job(
                parent,
                "extend",
                now=self.clock(),
                user_id=user_id,
                guild_id=guild,
                channel_id=channel,
                interaction=interaction,
                input_sha256=sha256,
                meta={
                    "extend_source": str(source),
                    "extend_frames": new_frames,
                    "parent_frames": parent_frames,
                },
            )
            return self._admit(job, ticket)
        finally:
            self.admission.release(ticket)  # a no-op once admitted


def _place_of(parent: Job, guild_id: Any, channel_id: Any) -> tuple[int | None, int]:
    """Where a child job of `parent` lives (_SAME: the parent's server or channel)."""
    guild = parent.guild_id if guild_id is _SAME else guild_id
    channel = parent.channel_id if channel_id is _SAME else channel_id
    return guild, channel
