"""The JobService facade: children of a clip, delivery bookkeeping, housekeeping, walls."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from bot.admission import Limits
from bot.errors import (
    AlreadyPending,
    BadOption,
    InvalidState,
    LimitReached,
    NotAllowed,
    NotFound,
)
from generator import encode
from generator import protocol as gp
from tests.jobs_backend import FakeBackend
from tests.jobs_env import NOON, PROJECT


async def test_deleted_result_and_showcase_post_are_recorded(make_env) -> None:
    """Deleting the result message forgets it (deleting a copy does not); a re-post in the clip's channel takes its place; the first showcase post is kept for good."""
    env = await make_env()
    job = await env.wait((await env.submit()).id)
    env.service.mark_delivered(job.id, message_id=500, channel_id=10)
    copy = env.service.mark_result_deleted(job.id, message_id=501)  # a /job re-post
    assert (copy.result_message_id, copy.result_deleted_at) == (500, None)
    deleted = env.service.mark_result_deleted(job.id, message_id=500)
    assert (deleted.result_message_id, deleted.result_channel_id) == (None, None)
    assert deleted.result_deleted_at == NOON and deleted.delivered
    assert env.store.undelivered() == []  # not posted again at the next start
    elsewhere = env.service.restore_result(job.id, message_id=600, channel_id=99)
    assert elsewhere.result_message_id is None and elsewhere.result_deleted_at == NOON
    restored = env.service.restore_result(job.id, message_id=601, channel_id=10)
    assert (restored.result_message_id, restored.result_channel_id) == (601, 10)
    assert restored.result_deleted_at is None
    live = env.service.restore_result(job.id, message_id=602, channel_id=10)
    assert live.result_message_id == 601  # a re-post of a live result is only a copy
    shared = env.service.mark_shared(job.id, message_id=700, channel_id=20)
    assert (shared.shared_message_id, shared.shared_channel_id, shared.shared_at) == (700, 20, NOON)
    env.clock.now += 3600
    again = env.service.mark_shared(job.id, message_id=701, channel_id=21)
    assert (again.shared_message_id, again.shared_channel_id, again.shared_at) == (700, 20, NOON)
    with pytest.raises(NotFound):
        env.service.mark_result_deleted("nosuchjob1", message_id=1)


async def test_children_copy_the_parent_and_credit_the_owner(make_env) -> None:
    """Reroll, vary and edit copy image/prompt/seed; a click by someone else is theirs, crediting the original; a second pending child from the same clip is refused."""
    backend = FakeBackend()
    env = await make_env(backend, Limits(pending_per_user=5))
    parent = await env.submit(user_id=1, seed=1234, camera="orbit", duration="short")
    with pytest.raises(InvalidState, match="isn't finished"):
        await env.service.reroll(parent.id, user_id=1)
    parent = await env.wait(parent.id)
    backend.hold()
    reroll = await env.service.reroll(parent.id, user_id=1)
    assert (reroll.kind, reroll.parent_id, reroll.credit_user_id) == ("reroll", parent.id, None)
    assert reroll.seed != parent.seed and reroll.input_sha256 == parent.input_sha256
    assert (reroll.prompt, reroll.camera, reroll.duration) == (parent.prompt, "orbit", "short")
    with pytest.raises(AlreadyPending, match="already have a clip from this one"):
        await env.service.vary(parent.id, user_id=1, strength="strong")
    vary = await env.service.vary(parent.id, user_id=2, strength="strong", channel_id=11)
    assert (vary.user_id, vary.credit_user_id, vary.channel_id, vary.guild_id) == (2, 1, 11, 1)
    assert vary.seed == 1234 and vary.variation_strength == 0.6 and vary.variation_seed is not None
    edit = await env.service.edit(parent.id, user_id=3, prompt="  a  storm  ")
    assert edit.prompt == "a storm" and edit.seed == 1234 and edit.credit_user_id == 1
    backend.release()
    vary = await env.wait(vary.id)
    request = next(r for r in backend.requests if r.job_id == vary.id)
    assert (request.seed, request.variation_strength) == (1234, 0.6)
    # a child of a child still credits the original author
    grandchild = await env.service.reroll(vary.id, user_id=4)
    assert grandchild.credit_user_id == 1
    env.service.update_guild_settings(1, others_can_use_buttons=False)
    with pytest.raises(NotAllowed, match="only the clip's owner"):
        await env.service.reroll(parent.id, user_id=5)
    with pytest.raises(BadOption, match="subtle or strong"):
        await env.service.vary(parent.id, user_id=1, strength="wild")


async def test_extend_and_loop_frame_counts(make_env) -> None:
    """Extend continues from the last frame and joins (F1 + F2 - 1) up to the preset's cap; Loop ping-pongs (2F - 2) without the GPU queue."""
    backend = FakeBackend(real_video=True)
    env = await make_env(backend, Limits(pending_per_user=5))
    # wan-480p-fast: short = 49 frames, one clip at most 81, a whole clip at most 241
    parent = await env.wait((await env.submit(preset="wan-480p-fast", duration="short")).id)
    assert parent.num_frames == 49
    frames = [49]
    current = parent
    for _ in range(4):
        child = await env.service.extend(current.id, user_id=2)
        assert child.kind == "extend" and child.input_sha256 != parent.input_sha256
        current = await env.wait(child.id)
        assert current.status == "done", current.error
        frames.append(current.num_frames)
        assert encode.probe(current.output_path)["frames"] == current.num_frames
    assert frames == [49, 97, 145, 193, 241]
    # the new clip started on the parent's last frame (the input image of the extend)
    first_extend = env.store.history(2, limit=10)[-1]
    last = encode.last_frame(parent.output_path)
    stored = Image.open(env.tmp / "inputs" / f"{first_extend.input_sha256}.png")
    assert abs(stored.getpixel((8, 8))[0] - last.getpixel((8, 8))[0]) <= 2
    with pytest.raises(LimitReached, match="already as long as it can get"):
        await env.service.extend(current.id, user_id=2)

    requests_before = len(backend.requests)
    loop = await env.service.loop(parent.id, user_id=3)
    assert env.service.position(loop.id) is None  # not in the GPU queue
    loop = await env.wait(loop.id)
    assert loop.status == "done" and loop.num_frames == 2 * 49 - 2 and loop.quota_day is None
    assert encode.probe(loop.output_path)["frames"] == 96
    assert len(backend.requests) == requests_before
    with pytest.raises(InvalidState, match="already loops"):
        await env.service.loop(loop.id, user_id=3)
    Path(parent.output_path).unlink()
    with pytest.raises(NotFound, match="no longer kept"):
        await env.service.loop(parent.id, user_id=4)


class LocalFolderBackend(FakeBackend):
    """Reports what a worker running a `local:` folder reports: the folder's own frame grid
    (8k+1, as LTX) and caps, which no entry in PRESETS knows."""

    def _write_output(self, request: gp.GenerationRequest) -> gp.ClipFacts:
        return dataclasses.replace(
            super()._write_output(request),
            preset="local:tiny-ltx",
            frame_rule=8,
            max_clip_frames=17,
            max_frames=29,
            duration_frames={"short": 9, "standard": 17, "long": 17},
        )


async def test_extend_follows_the_frame_rules_a_local_model_reports(make_env) -> None:
    """Extend of a `local:` model's clip uses the frame rule and caps its worker reported, not a 4k+1 grid and 3x the clip."""
    backend = LocalFolderBackend(real_video=True, frames=17)
    env = await make_env(backend, Limits(pending_per_user=5))
    parent = await env.wait((await env.submit()).id)  # the bot's default model: no preset
    assert parent.status == "done" and parent.num_frames == 17
    assert parent.meta["frame_rule"] == 8 and parent.meta["max_frames"] == 29
    child = await env.wait((await env.service.extend(parent.id, user_id=2)).id)
    assert child.status == "done", child.error
    # 29 - 17 + 1 = 13 frames of room, snapped down to the 8k+1 grid (a 4k+1 grid: 13)
    assert backend.requests[-1].num_frames == 9
    assert child.num_frames == 17 + 9 - 1 == encode.probe(child.output_path)["frames"]
    # 29 - 25 + 1 = 5 frames of room: nothing on an 8k+1 grid fits (a 4k+1 grid would take 5)
    with pytest.raises(LimitReached, match="already as long as it can get"):
        await env.service.extend(child.id, user_id=2)


async def test_prune_outputs_keeps_rows(make_env) -> None:
    """Outputs older than the retention are deleted; their rows stay."""
    env = await make_env(output_retention_days=1.0)
    job = await env.wait((await env.submit()).id)
    assert env.service.prune_outputs() == 0
    env.clock.now += 2 * 86400
    assert env.service.prune_outputs() == 1
    row = env.store.require_job(job.id)
    assert row.status == "done" and row.output_path is None and row.output_pruned_at is not None
    assert not (env.tmp / "outputs" / f"{job.id}.mp4").exists()


def test_core_modules_import_neither_torch_nor_discord() -> None:
    """bot/store, scheduler, jobs, intake and errors stay free of torch, diffusers and discord."""
    code = (
        "import sys, bot.store, bot.scheduler, bot.jobs, bot.intake, bot.errors\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'diffusers', 'transformers', 'discord')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=PROJECT, check=True, timeout=60)
