"""Recipes of job rows: a new clip, a child of a finished clip, Extend's input frame.

Owns: `InteractionRef` (the deferred interaction a job's progress message lives in, as
plain data), `new_job()` and `child_job()` (which fields a job copies from its parent),
the check that an input image was stored, and `last_frame_input()` (Extend starts from
the clip's last frame, stored like any input image).

Imports: bot.store, bot.intake, bot.errors, generator.encode. No discord, no torch.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot import intake
from bot.errors import BadImage
from bot.store import Job, JobStatus, Store
from generator import encode


@dataclass(frozen=True, slots=True)
class InteractionRef:
    """The deferred interaction whose reply is the progress message (token lives 15 min)."""

    token: str
    application_id: int
    created_at: float | None = None  # defaults to the service clock at submit

    def __repr__(self) -> str:  # never print a live token
        return f"InteractionRef(application_id={self.application_id}, token=<hidden>)"


def new_job(*, now: float, interaction: InteractionRef | None, **fields: Any) -> Job:
    """A `queued` job row (not yet written) with a fresh id."""
    job = Job(id=Store.new_job_id(), status=JobStatus.QUEUED, created_at=now, **fields)
    if interaction is not None:
        job.interaction_token = interaction.token
        job.application_id = interaction.application_id
        job.token_created_at = interaction.created_at if interaction.created_at is not None else now
    return job


def child_job(
    parent: Job,
    kind: str,
    *,
    now: float,
    user_id: int,
    guild_id: int | None,
    channel_id: int,
    interaction: InteractionRef | None,
    **changes: Any,
) -> Job:
    """A child job: the parent's image, prompt, seed and options, owned by whoever
    clicked, crediting the original author when that is someone else."""
    fields: dict[str, Any] = {
        "prompt": parent.prompt,
        "negative_prompt": parent.negative_prompt,
        "camera": parent.camera,
        "duration": parent.duration,
        "preset": parent.preset,
        "seed": parent.seed,
        "input_sha256": parent.input_sha256,
        "variation_seed": parent.variation_seed,
        "variation_strength": parent.variation_strength,
    }
    if kind in ("reroll", "extend"):
        fields["variation_seed"], fields["variation_strength"] = None, 0.0
    fields.update(changes)
    credit = parent.owner_id if parent.owner_id != user_id else None
    return new_job(
        now=now,
        interaction=interaction,
        kind=kind,
        guild_id=guild_id,
        channel_id=channel_id,
        user_id=user_id,
        parent_id=parent.id,
        credit_user_id=credit,
        **fields,
    )


def check_input_image(inputs_dir: Path, sha256: str) -> None:
    """The image `sha256` was stored by intake (and the name is one intake makes)."""
    try:
        path = intake.input_path(inputs_dir, sha256)
    except ValueError:
        raise BadImage("That image was not received properly; attach it again.") from None
    if not path.is_file():
        raise BadImage("That image was not received properly; attach it again.")


async def clip_frames(source: Path, known: int | None) -> int:
    """Frames of the clip at `source` (`known`: the row's count, when it has one)."""
    return known or (await asyncio.to_thread(encode.probe, source))["frames"]


async def last_frame_input(source: Path, inputs_dir: Path) -> str:
    """Store the clip's last frame as an input image; its sha256."""
    frame = await asyncio.to_thread(encode.last_frame, source)
    image = await asyncio.to_thread(intake.normalise_pil, frame)
    await asyncio.to_thread(intake.store_image, image, inputs_dir)
    return image.sha256
