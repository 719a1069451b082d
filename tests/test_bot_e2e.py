"""End to end: the real ZoetropeBot against the local Discord server and a real worker process.

One worker process (the tiny Wan 2.1 model) is shared by the module; a second "slow" one (the
same weights, 300 steps, about 2-3 s a clip) serves the tests that need a job caught
mid-generation. Each test gets a fresh FakeDiscord, data dir and bot. Every test ends with no
spec violation, no unimplemented route and no server error.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import discord  # noqa: F401
import numpy as np
import pytest
import pytest_asyncio
from PIL import Image

from bot import buttons, render
from bot.app import ZoetropeBot
from bot.config import load_settings
from bot.delivery import RetryPolicy
from bot.store import Job
from generator import encode
from generator.backends import LocalBackend
from generator.provenance import Provenance, read_provenance
from tests.discord_server import FakeDiscord, Guild, Interaction, Message, Perm, User
from tests.discord_spec import SPEC_ENV, load_spec

pytestmark = pytest.mark.asyncio(loop_scope="module")

ROOT = Path(__file__).resolve().parent.parent
RESULT_ACTIONS = [spec.action for spec in render.RESULT_BUTTONS]
SLOW_STEPS = 300


def png(width: int = 128, height: int = 96, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = (rng.random((height, width, 3)) * 255).astype("uint8")
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _spec_path() -> str | None:
    env = os.environ.get(SPEC_ENV, "").strip()
    if env:
        return env
    candidate = ROOT.parent / "shared/discord-api-spec/openapi.json"
    return str(candidate) if candidate.exists() else None


# Each clip of the slow model (300 steps) takes seconds on an idle machine and up to about a
# minute on a loaded 2-core one: these tests wait for up to two of them.
SLOW_TEST = pytest.mark.timeout(300)


# -- module fixtures: models and workers --------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Wan 2.1 model, built in a subprocess (this process stays torch-free)."""
    out = tmp_path_factory.mktemp("models") / "wan21"
    subprocess.run(
        [sys.executable, "-m", "tests.tiny_models", "wan21", str(out)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=120,
    )
    return out


@pytest.fixture(scope="module")
def slow_model_dir(model_dir: Path) -> Path:
    """The same weights with many more steps: a clip takes a few seconds."""
    slow = model_dir.parent / "wan21-slow"
    slow.mkdir(exist_ok=True)
    for item in model_dir.iterdir():
        if item.name != "zoetrope.json" and not (slow / item.name).exists():
            (slow / item.name).symlink_to(item)
    settings = json.loads((model_dir / "zoetrope.json").read_text())
    settings["steps"] = SLOW_STEPS
    (slow / "zoetrope.json").write_text(json.dumps(settings))
    return slow


@pytest.fixture(scope="module")
def worker_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The shared workers' data dir (their signing identity); the bot's is per test."""
    return {"ZOETROPE_DATA_DIR": str(tmp_path_factory.mktemp("worker-data"))}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def backend(model_dir: Path, worker_env: dict[str, str]) -> AsyncIterator[LocalBackend]:
    worker = LocalBackend(str(model_dir), env=worker_env)
    await worker.start()
    await worker.wait_ready(120)
    yield worker
    await worker.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def slow_backend(
    slow_model_dir: Path, worker_env: dict[str, str]
) -> AsyncIterator[LocalBackend]:
    worker = LocalBackend(str(slow_model_dir), env=worker_env)
    await worker.start()
    await worker.wait_ready(120)
    yield worker
    await worker.close()


# -- per-test harness ----------------------------------------------------------------------------


class Harness:
    """A FakeDiscord world (one guild, alice and bob) and a way to run ZoetropeBots in it."""

    def __init__(self, server: FakeDiscord, data_dir: Path) -> None:
        self.server = server
        self.data_dir = data_dir
        self.guild: Guild = server.add_guild("Zoetrope Test", channels=("general", "showcase"))
        self.alice: User = server.add_user("alice")
        self.bob: User = server.add_user("bob")
        server.add_member(self.guild, self.alice)
        server.add_member(self.guild, self.bob)
        self.bot: ZoetropeBot | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def channel(self) -> Any:
        return self.guild.channel("general")

    def settings(self, **env: str) -> Any:
        base = {
            "DISCORD_TOKEN": self.server.token,
            "ZOETROPE_DATA_DIR": str(self.data_dir),
            "DISCORD_API_BASE": self.server.api_base,
            "DISCORD_GATEWAY_URL": self.server.gateway_url,
            "DISCORD_CDN_HOSTS": self.server.url.removeprefix("http://"),
        }
        return load_settings({**base, **env}, env_file=None)

    async def start_bot(
        self,
        backend: Any,
        *,
        env: dict[str, str] | None = None,
        **options: Any,
    ) -> ZoetropeBot:
        options.setdefault("edit_interval", 0.3)
        options.setdefault("position_interval", 0.2)
        options.setdefault("retry", RetryPolicy(attempts=3, base_delay=0.1))
        options.setdefault("guild_ready_timeout", 0.05)
        bot = ZoetropeBot(self.settings(**(env or {})), backend=backend, **options)
        self.bot = bot
        self._task = asyncio.create_task(bot.start(self.server.token))
        ready = asyncio.create_task(bot.wait_until_ready())
        done, _ = await asyncio.wait({self._task, ready}, timeout=20, return_when="FIRST_COMPLETED")
        if ready not in done:
            ready.cancel()
            if self._task in done:
                self._task.result()
            raise TimeoutError("the bot did not become ready")
        return bot

    async def stop_bot(self) -> None:
        if self.bot is not None:
            await self.bot.close()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, discord.DiscordException):
                await asyncio.wait_for(self._task, 10)
        self.bot, self._task = None, None

    # -- driving -----------------------------------------------------------------------------

    async def animate(
        self,
        user: User,
        prompt: str = "waves roll in, the camera slowly pushes forward",
        *,
        guild: Guild | None = None,
        channel: Any = None,
        image: bytes | None = None,
        filename: str = "photo.png",
        **options: Any,
    ) -> Interaction:
        guild = guild or self.guild
        return await self.server.slash(
            guild,
            channel or guild.text_channels[0],
            user,
            "animate",
            options={"prompt": prompt, **options},
            attachments=[(filename, image if image is not None else png(), "image/png")],
        )

    def job(self, job_id: str) -> Job:
        assert self.bot is not None
        return self.bot.jobs.get(job_id)

    def latest_job(self, user: User) -> Job | None:
        assert self.bot is not None
        jobs = self.bot.jobs.history(user.id, limit=1)
        return jobs[0] if jobs else None

    async def job_of(self, ix: Interaction, timeout: float = 10) -> Job:
        """The job an interaction created (its progress message is the deferred reply)."""
        assert self.bot is not None
        bot = self.bot

        def find() -> Job | None:
            if ix.original is None:
                return None
            rows = bot.store.db.query(
                "SELECT id FROM jobs WHERE progress_message_id = ?", [ix.original.id]
            )
            row = next(iter(rows), None)
            return bot.jobs.get(row["id"]) if row else None

        return await self.server.wait_for(find, timeout=timeout, what="the interaction's job")

    async def delivered(self, job_id: str, timeout: float = 30) -> tuple[Job, Message]:
        """Wait until the job's result is posted and its progress message shows the end."""
        job = await self.server.wait_for(
            lambda: (j := self.job(job_id)).delivered and j, timeout=timeout, what="delivery"
        )
        assert job.result_message_id is not None, job
        return job, self.server.message(job.result_message_id)

    async def settled(self, message: Message, needle: str, timeout: float = 15) -> Message:
        await self.server.wait_for(
            lambda: needle in message.content, timeout=timeout, what=f"{needle!r} in a message"
        )
        return message


@pytest_asyncio.fixture(loop_scope="module")
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    path = _spec_path()
    async with FakeDiscord(spec=load_spec(path) if path else None) as server:
        harness = Harness(server, tmp_path / "data")
        try:
            yield harness
        finally:
            await harness.stop_bot()
        assert server.errors == [], server.errors
        assert server.unhandled == [], server.unhandled
        assert server.spec_violations == [], [str(v) for v in server.spec_violations]


def probe_bytes(data: bytes, tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / f"probe-{time.monotonic_ns()}.mp4"
    path.write_bytes(data)
    return encode.probe(path)


def marking_of(data: bytes, folder: Path, *, data_dir: Path | None = None) -> Provenance:
    """What a posted clip says about itself; it must be validly marked as AI-generated by the
    tiny model (the worker's mark, or the bot's own after a re-encode)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"posted-{time.monotonic_ns()}.mp4"
    path.write_bytes(data)
    found = read_provenance(path, data_dir=data_dir)
    assert found.valid and not found.tampered and found.ai_generated, found.summary
    assert found.metadata["model"] == "local:wan21"
    return found


LABEL = "AI-generated video · made with local:wan21"


def private_replies(ix: Interaction) -> list[str]:
    """Texts the member saw privately: an ephemeral initial response or ephemeral followups."""
    texts = []
    if ix.original is not None and ix.original.ephemeral and not ix.original.deleted:
        texts.append(ix.original.content)
    texts += [m.content for m in ix.followups if m.ephemeral and not m.deleted]
    return texts


# -- the tests -----------------------------------------------------------------------------------


async def test_animate_progress_and_result(
    h: Harness, backend: LocalBackend, tmp_path: Path
) -> None:
    """/animate: deferred at once, paced progress edits, then a new message with MP4 and buttons."""
    await h.start_bot(backend, edit_interval=2.0)
    ix = await h.animate(h.alice)
    assert await ix.acknowledged() == 5  # deferred "thinking…", public
    assert ix.responded_after is not None and ix.responded_after < 1.0
    progress = ix.original
    assert progress is not None and not progress.ephemeral
    seen: list[tuple[float, int]] = []

    async def watch() -> None:
        while True:
            if not seen or seen[-1][1] != len(progress.edits):
                seen.append((time.monotonic(), len(progress.edits)))
            await asyncio.sleep(0.02)

    watcher = asyncio.create_task(watch())
    try:
        job = await h.job_of(ix)
        job, result = await h.delivered(job.id)
        await h.settled(progress, "watch the clip")
    finally:
        watcher.cancel()
    # Paced: consecutive edits of the progress message at least ~2 s apart.
    times = [t for t, n in seen if n > 0]
    assert len(progress.edits) >= 2
    assert all(b - a >= 1.8 for a, b in zip(times, times[1:], strict=False)), times
    assert progress.components == []  # Cancel is gone once the job has finished
    # The result: a new, public message pinging only the requester, with the clip and buttons.
    assert result.id != progress.id and not result.ephemeral
    assert result.pinged.users == {h.alice.id} and not result.pinged.everyone
    assert result.custom_ids == [buttons.custom_id(a, job.id) for a in RESULT_ACTIONS]
    assert len(result.attachments) == 1 and result.attachments[0].filename.endswith(".mp4")
    info = probe_bytes(result.file(), tmp_path)
    assert info["codec"] == "h264" and info["pix_fmt"] == "yuv420p" and info["faststart"]
    assert f"seed `{job.seed}`" in result.content and job.id in result.content
    assert LABEL in result.content
    assert marking_of(result.file(), tmp_path).metadata["job_id"] == job.id
    assert str(job.seed) and job.status == "done" and job.kind == "animate"
    assert len([m for m in h.server.messages(h.channel) if m.attachments]) == 1


async def test_prompt_mentions_never_ping(h: Harness, backend: LocalBackend) -> None:
    """@everyone, @here, role and user mentions and markdown in a prompt ping nobody."""
    role = h.server.add_role(h.guild, "artists", mentionable=True)
    await h.start_bot(backend)
    prompt = f"@everyone @here <@{h.bob.id}> <@&{role.id}> **bold** waves"
    ix = await h.animate(h.alice, prompt)
    job, result = await h.delivered((await h.job_of(ix)).id)
    assert job.prompt == prompt
    assert result.pinged.users == {h.alice.id}  # the requester only
    assert not result.pinged.everyone and not result.pinged.roles
    assert ix.original is not None and ix.original.pinged.nobody
    assert "@\u200beveryone" in result.content and "\\*\\*bold\\*\\*" in result.content
    for message in h.server.messages(h.channel):
        assert h.bob.id not in message.pinged.users and not message.pinged.everyone


async def test_reroll_vary_extend_loop(h: Harness, backend: LocalBackend, tmp_path: Path) -> None:
    """Each button makes a child job with its own progress message and a full new result, each
    clip marked as AI-generated; Extend's join and Loop's ping-pong are marked again by the
    bot (signed with the identity in its data dir, hence "Trusted" with that dir)."""
    await h.start_bot(backend)
    parent, result = await h.delivered((await h.job_of(await h.animate(h.alice))).id)
    expectations: dict[str, Callable[[Job], bool]] = {
        "reroll": lambda j: j.kind == "reroll" and j.variation_seed is None,
        "vary-subtle": lambda j: (
            j.kind == "vary" and j.seed == parent.seed and j.variation_strength == 0.25
        ),
        "vary-strong": lambda j: j.kind == "vary" and j.variation_strength == 0.6,
        "extend": lambda j: j.kind == "extend" and j.num_frames == 2 * parent.num_frames - 1,
        "loop": lambda j: j.kind == "loop" and j.num_frames == 2 * parent.num_frames - 2,
    }
    for action, check in expectations.items():
        ix = await h.server.click(result, buttons.custom_id(action, parent.id), h.alice)
        assert await ix.acknowledged() == 5, action
        child, child_result = await h.delivered((await h.job_of(ix)).id)
        assert child.parent_id == parent.id and child.user_id == h.alice.id, action
        assert check(child), (action, child)
        assert child_result.custom_ids == [buttons.custom_id(a, child.id) for a in RESULT_ACTIONS]
        assert child_result.pinged.users == {h.alice.id}
        assert LABEL in child_result.content, action
        if action in ("extend", "loop"):
            found = marking_of(child_result.file(), tmp_path, data_dir=h.data_dir)
            assert found.validation_state == "Trusted" and found.metadata["job_id"] == child.id
        else:
            assert marking_of(child_result.file(), tmp_path).metadata["job_id"] == child.id


async def test_edit_opens_prefilled_modal(h: Harness, backend: LocalBackend) -> None:
    """Edit opens a modal holding the prompt; submitting it makes an edit job, same seed."""
    await h.start_bot(backend)
    parent, result = await h.delivered((await h.job_of(await h.animate(h.alice, "a calm sea"))).id)
    ix = await h.server.click(result, buttons.custom_id("edit", parent.id), h.alice)
    assert await ix.acknowledged() == 9  # a modal
    assert ix.modal is not None and ix.modal["custom_id"] == f"zoetrope:edit-modal:{parent.id}"
    values = [c.get("value") for c in _walk(ix.modal["components"]) if c.get("type") == 4]
    assert values == ["a calm sea"]
    submit = await h.server.submit_modal(ix, {"prompt": "a stormy sea, lightning"})
    assert await submit.acknowledged() == 5
    child, child_result = await h.delivered((await h.job_of(submit)).id)
    assert child.kind == "edit" and child.prompt == "a stormy sea, lightning"
    assert child.seed == parent.seed and child.parent_id == parent.id
    assert "stormy" in child_result.content


async def test_refused_prompts_are_private_and_queue_nothing(
    h: Harness, backend: LocalBackend
) -> None:
    """A prompt the built-in screen refuses, in /animate or in Edit's modal, is refused
    privately before any defer: the image is never downloaded, no job is written or counted."""
    await h.start_bot(backend)
    attachment = h.server.make_attachment("photo.png", png(seed=5), "image/png")
    refused = await h.server.slash(
        h.guild,
        h.channel,
        h.alice,
        "animate",
        options={"prompt": "a nude child on a beach"},
        attachments=[attachment],
    )
    assert await refused.acknowledged() == 4 and refused.ephemeral
    assert "never allowed, in any channel" in refused.original.content
    assert attachment.downloads == 0
    parent, result = await h.delivered((await h.job_of(await h.animate(h.alice, "a calm sea"))).id)
    ix = await h.server.click(result, buttons.custom_id("edit", parent.id), h.alice)
    assert await ix.acknowledged() == 9
    submit = await h.server.submit_modal(ix, {"prompt": "a calm sea, nude kids"})
    assert await submit.acknowledged() == 4 and submit.ephemeral
    assert "never allowed, in any channel" in submit.original.content
    store = h.bot.jobs.store
    assert [j.id for j in store.jobs_with_status("queued", "running", "done", "failed")] == [
        parent.id
    ]
    assert store.daily_count(h.alice.id, parent.quota_day) == 1


def _walk(components: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for comp in components:
        out.append(comp)
        out += _walk(comp.get("components") or [])
        if isinstance(comp.get("component"), dict):
            out += _walk([comp["component"]])
    return out


async def test_info_share_delete(h: Harness, backend: LocalBackend) -> None:
    """Info is private; Share reposts with credit and a link; Delete is the owner's (or a mod's)."""
    showcase = h.guild.channel("showcase")
    await h.start_bot(backend)
    job, result = await h.delivered((await h.job_of(await h.animate(h.alice))).id)

    info = await h.server.click(result, buttons.custom_id("info", job.id), h.bob)
    assert await info.acknowledged() == 4 and info.ephemeral
    assert info.original is not None and info.original.embeds
    fields = {f["name"]: f["value"] for f in info.original.embeds[0]["fields"]}
    assert fields["Seed"] == str(job.seed)

    share = await h.server.click(result, buttons.custom_id("share", job.id), h.alice)
    await share.acknowledged()
    assert any("showcase" in t for t in await _private(h, share)), "no showcase set: refused"

    owner = h.server.users[h.guild.owner_id]
    settings = await h.server.slash(
        h.guild, h.channel, owner, "settings showcase", {"channel": showcase}
    )
    assert await settings.acknowledged() == 4 and settings.ephemeral
    share = await h.server.click(result, buttons.custom_id("share", job.id), h.alice)
    await h.server.wait_for(lambda: h.server.messages(showcase), what="the showcase post")
    post = h.server.messages(showcase)[0]
    assert post.attachments and f"<@{h.alice.id}>" in post.content
    assert render.result_url(h.job(job.id)) in post.content
    assert post.pinged.nobody
    assert any("Shared" in t for t in await _private(h, share))

    refused = await h.server.click(result, buttons.custom_id("delete", job.id), h.bob)
    assert any("Only the member" in t for t in await _private(h, refused))
    assert not result.deleted
    delete = await h.server.click(result, buttons.custom_id("delete", job.id), h.alice)
    await h.server.wait_for(lambda: result.deleted, what="the result deleted")
    assert delete.acknowledged_ok
    assert h.job(job.id).status == "done"  # the clip stays; only the message is gone


async def test_share_posts_once(h: Harness, backend: LocalBackend) -> None:
    """A clip is shared once: a double click posts once, and a Share after Discord's 5-minute nonce window answers privately with the link to the existing showcase post."""
    showcase = h.guild.channel("showcase")
    await h.start_bot(backend)
    owner = h.server.users[h.guild.owner_id]
    chosen = await h.server.slash(
        h.guild, h.channel, owner, "settings showcase", {"channel": showcase}
    )
    await chosen.acknowledged()
    job, result = await h.delivered((await h.job_of(await h.animate(h.alice))).id)
    clicks = await asyncio.gather(
        h.server.click(result, buttons.custom_id("share", job.id), h.alice),
        h.server.click(result, buttons.custom_id("share", job.id), h.alice),
    )
    replies = [await _private(h, ix) for ix in clicks]
    shared = await h.server.wait_for(
        lambda: (j := h.job(job.id)).shared_message_id and j, what="the share recorded"
    )
    [post] = h.server.messages(showcase)
    assert (shared.shared_message_id, shared.shared_channel_id) == (post.id, showcase.id)
    url = render.shared_url(shared)
    assert all(any(url in text for text in texts) for texts in replies), replies

    h.server.clock.advance(6 * 60)  # past the nonce window: only our record stops a repost
    again = await h.server.click(result, buttons.custom_id("share", job.id), h.alice)
    assert await again.acknowledged() == 4 and again.ephemeral
    assert "already in the showcase" in again.original.content and url in again.original.content
    assert [m.id for m in h.server.messages(showcase)] == [post.id]
    assert len(h.server.requests_for("POST", rf"^/channels/{showcase.id}/messages$")) == 1


async def test_delete_is_recorded_and_job_reposts(h: Harness, backend: LocalBackend) -> None:
    """Deleting a result is recorded: the progress message and /history stop linking to it; /job re-posts it with live buttons and /history then links to the re-post."""
    await h.start_bot(backend)
    ix = await h.animate(h.alice)
    job, result = await h.delivered((await h.job_of(ix)).id)
    await h.settled(ix.original, "watch the clip")
    old_url = render.result_url(job)
    assert old_url in ix.original.content
    await h.server.click(result, buttons.custom_id("delete", job.id), h.alice)
    gone = await h.server.wait_for(
        lambda: (j := h.job(job.id)).result_deleted_at and j, what="the deletion recorded"
    )
    assert result.deleted and gone.result_message_id is None
    assert gone.status == "done" and gone.delivered and Path(gone.output_path).is_file()
    await h.settled(ix.original, "was deleted")
    assert old_url not in ix.original.content and f"/job {job.id}" in ix.original.content
    history = await h.server.slash(h.guild, h.channel, h.alice, "history")
    text = (await _private(h, history))[0]
    assert f"`{job.id}` deleted" in text and old_url not in text

    repost = await h.server.slash(h.guild, h.channel, h.alice, "job", {"id": job.id})
    assert await repost.acknowledged() == 5
    await h.server.wait_for(lambda: repost.original.attachments, what="the re-post")
    assert repost.original.custom_ids == [buttons.custom_id(a, job.id) for a in RESULT_ACTIONS]
    back = await h.server.wait_for(
        lambda: (j := h.job(job.id)).result_message_id and j, what="the re-post recorded"
    )
    assert back.result_message_id == repost.original.id and back.result_deleted_at is None
    new_url = render.result_url(back)
    await h.settled(ix.original, new_url)
    history = await h.server.slash(h.guild, h.channel, h.alice, "history")
    assert new_url in (await _private(h, history))[0]


@SLOW_TEST
async def test_limits_are_checked_before_the_download(
    h: Harness, slow_backend: LocalBackend
) -> None:
    """At their pending limit a member's /animate and Extend are refused privately before any defer, and the refused image is never downloaded."""
    await h.start_bot(slow_backend)
    # The slow model's first clip took 38 s of this 2-core machine under load before clips
    # were marked (the mark adds ~0.3 s): 90 s leaves a margin.
    first = (await h.job_of(await h.animate(h.alice))).id
    parent, result = await h.delivered(first, timeout=90)
    pending = [await h.job_of(await h.animate(h.alice, p)) for p in ("second", "third")]
    attachment = h.server.make_attachment("photo.png", png(seed=3), "image/png")
    refused = await h.server.slash(
        h.guild,
        h.channel,
        h.alice,
        "animate",
        options={"prompt": "one too many"},
        attachments=[attachment],
    )
    assert await refused.acknowledged() == 4 and refused.ephemeral
    assert "You already have 2 clips in the queue" in refused.original.content
    assert attachment.downloads == 0
    assert h.server.requests_for("GET", rf"^/cdn/attachments/\d+/{attachment.id}/") == []
    extend = await h.server.click(result, buttons.custom_id("extend", parent.id), h.alice)
    assert await extend.acknowledged() == 4 and extend.ephemeral
    assert "You already have 2 clips in the queue" in extend.original.content
    assert len(h.bot.jobs.history(h.alice.id, limit=10)) == 3
    for job in reversed(pending):
        await h.bot.jobs.cancel(job.id, user_id=h.alice.id, guild_id=job.guild_id)


async def _private(h: Harness, ix: Interaction, timeout: float = 10) -> list[str]:
    await ix.acknowledged()
    return await h.server.wait_for(
        lambda: [t for t in private_replies(ix) if t], timeout=timeout, what="a private reply"
    )


async def test_others_clicks_and_duplicates(h: Harness, backend: LocalBackend) -> None:
    """Bob's Reroll on Alice's clip is Bob's job crediting Alice; a second click while it waits is refused; with the server setting off, Bob's click is refused."""
    await h.start_bot(backend)
    parent, result = await h.delivered((await h.job_of(await h.animate(h.alice))).id)
    first, second = await asyncio.gather(
        h.server.click(result, buttons.custom_id("reroll", parent.id), h.bob),
        h.server.click(result, buttons.custom_id("reroll", parent.id), h.bob),
    )
    await first.acknowledged()
    await second.acknowledged()
    accepted = [ix for ix in (first, second) if ix.response_type == 5]
    refused = [ix for ix in (first, second) if ix.response_type == 4]
    assert len(accepted) == 1 and len(refused) == 1
    assert (
        refused[0].ephemeral and "already have a clip from this one" in refused[0].original.content
    )
    child, child_result = await h.delivered((await h.job_of(accepted[0])).id)
    assert child.user_id == h.bob.id and child.credit_user_id == h.alice.id
    assert child_result.pinged.users == {h.bob.id}  # the credit does not ping Alice
    assert f"<@{h.alice.id}>" in child_result.content

    owner = h.server.users[h.guild.owner_id]
    off = await h.server.slash(
        h.guild, h.channel, owner, "settings buttons", {"others_can_use": False}
    )
    await off.acknowledged()
    denied = await h.server.click(result, buttons.custom_id("vary-subtle", parent.id), h.bob)
    assert await denied.acknowledged() == 4 and denied.ephemeral
    assert "only the clip's owner" in denied.original.content
    mine = await h.server.click(result, buttons.custom_id("vary-subtle", parent.id), h.alice)
    assert await mine.acknowledged() == 5
    await h.delivered((await h.job_of(mine)).id)


async def _until_running(h: Harness, job_id: str, timeout: float = 30) -> Job:
    return await h.server.wait_for(
        lambda: (j := h.job(job_id)).status == "running" and j.stage == "denoise" and j,
        timeout=timeout,
        what="the job generating",
    )


async def test_cancel_from_progress_message(h: Harness, slow_backend: LocalBackend) -> None:
    """Cancel on a progress message: refused for others, works for the owner (queued) and for a moderator (running, stops within a step); the worker then runs the next clip."""
    mod = h.server.add_user("mod")
    h.server.add_member(h.guild, mod, permissions=Perm.MANAGE_MESSAGES)
    await h.start_bot(slow_backend)
    running_ix = await h.animate(h.alice)
    running = await _until_running(h, (await h.job_of(running_ix)).id)
    queued_ix = await h.animate(h.alice, "second clip")
    queued = await h.job_of(queued_ix)
    await h.settled(queued_ix.original, "Queued")
    assert buttons.custom_id("cancel", queued.id) in queued_ix.original.custom_ids

    denied = await h.server.click(
        running_ix.original, buttons.custom_id("cancel", running.id), h.bob
    )
    assert await denied.acknowledged() == 4 and denied.ephemeral
    assert h.job(running.id).status == "running"

    mine = await h.server.click(queued_ix.original, buttons.custom_id("cancel", queued.id), h.alice)
    assert await mine.acknowledged() == 6
    await h.settled(queued_ix.original, "Cancelled")
    assert h.job(queued.id).status == "cancelled" and queued_ix.original.components == []

    stopped = await h.server.click(running_ix.original, buttons.custom_id("cancel", running.id), mod)
    assert await stopped.acknowledged() == 6
    await h.settled(running_ix.original, "Cancelled")
    assert h.job(running.id).status == "cancelled"
    # The worker is free again at once: the next clip starts generating.
    nxt = await h.job_of(await h.animate(h.alice, "third clip"))
    await _until_running(h, nxt.id, timeout=10)
    await h.bot.jobs.cancel(nxt.id, user_id=h.alice.id, guild_id=nxt.guild_id)


async def test_cancel_from_another_server_is_no_such_job(
    h: Harness, slow_backend: LocalBackend
) -> None:
    """/cancel job:<id> from another server: even its moderator reads the missing-id reply, and the job goes on."""
    other = h.server.add_guild("Elsewhere", channels=("general",))
    mod = h.server.add_user("mod")
    h.server.add_member(other, mod, permissions=Perm.MANAGE_MESSAGES)
    await h.start_bot(slow_backend)
    job = await h.job_of(await h.animate(h.alice))
    channel = other.channel("general")
    refused = await h.server.slash(other, channel, mod, "cancel", {"job": job.id})
    missing = await h.server.slash(other, channel, mod, "cancel", {"job": "nosuchjob0"})
    assert await refused.acknowledged() == 4 and refused.ephemeral
    assert await missing.acknowledged() == 4
    assert refused.original.content == missing.original.content.replace("nosuchjob0", job.id)
    assert "no job" in refused.original.content
    assert h.job(job.id).status in ("queued", "running")
    await h.bot.jobs.cancel(job.id, user_id=h.alice.id, guild_id=job.guild_id)


@SLOW_TEST
async def test_restart_mid_generation(h: Harness, slow_backend: LocalBackend) -> None:
    """A restart mid-generation: the job runs again and is delivered once; buttons on a message from before the restart still work."""
    bot = await h.start_bot(slow_backend)
    first = (await h.job_of(await h.animate(h.alice))).id
    old, old_result = await h.delivered(first, timeout=90)  # a slow clip: see above
    ix = await h.animate(h.alice, "interrupted clip")
    job = await _until_running(h, (await h.job_of(ix)).id)
    await h.stop_bot()
    assert bot.is_closed()

    await h.start_bot(slow_backend)
    done, result = await h.delivered(job.id, timeout=90)
    assert done.attempts == 1  # the interrupted run was counted
    assert result.attachments and result.pinged.users == {h.alice.id}
    finished = [m for m in h.server.messages(h.channel) if m.attachments]
    assert [m.id for m in finished] == [old_result.id, result.id]  # delivered once
    await h.settled(ix.original, "watch the clip")  # the old progress message was finished

    info = await h.server.click(old_result, buttons.custom_id("info", old.id), h.bob)
    assert await info.acknowledged() == 4 and info.original.embeds
    loop = await h.server.click(old_result, buttons.custom_id("loop", old.id), h.alice)
    assert await loop.acknowledged() == 5
    await h.delivered((await h.job_of(loop)).id)


@SLOW_TEST
async def test_token_expiry_falls_back_to_channel_messages(
    h: Harness, slow_backend: LocalBackend
) -> None:
    """After 16 minutes the interaction token is dead: progress edits go through the channel endpoint and the result is still delivered."""
    await h.start_bot(slow_backend)  # the bot's own clock does not know: it learns from the 401
    ix = await h.animate(h.alice)
    job = await _until_running(h, (await h.job_of(ix)).id)
    h.server.clock.advance(16 * 60)
    done, result = await h.delivered(job.id, timeout=90)
    await h.settled(ix.original, "watch the clip")
    assert (401, 50027) in {(s, c) for _, _, s, c in ix.webhook_errors}
    channel_edits = h.server.requests_for("PATCH", rf"^/channels/\d+/messages/{ix.original.id}$")
    assert any(r.status == 200 for r in channel_edits)
    assert result.attachments and result.pinged.users == {h.alice.id}


@SLOW_TEST
async def test_unwritable_channel_goes_to_dm_or_says_why(
    h: Harness, slow_backend: LocalBackend
) -> None:
    """Bot may not post in the channel and the token is dead: the clip goes by DM; with DMs closed too, the progress message says why and the job stays done."""
    await h.start_bot(slow_backend, clock=h.server.clock.time)
    h.server.set_bot_can_send(h.channel, False)
    ix = await h.animate(h.alice)
    job = await _until_running(h, (await h.job_of(ix)).id)
    h.server.clock.advance(16 * 60)
    done = await h.server.wait_for(lambda: (j := h.job(job.id)).delivered and j, timeout=90)
    dms = h.server.dm_messages(h.alice)
    assert dms and dms[-1].attachments and done.result_message_id == dms[-1].id
    await h.settled(ix.original, "by DM")

    h.server.close_dms(h.bob)
    ix = await h.animate(h.bob)
    job = await h.job_of(ix)
    h.server.clock.advance(16 * 60)
    done = await h.server.wait_for(lambda: (j := h.job(job.id)).delivered and j, timeout=90)
    assert done.status == "done" and done.result_message_id is None
    assert Path(done.output_path).is_file()
    await h.settled(ix.original, "DMs are closed")


async def test_delivery_survives_429_and_5xx(h: Harness, backend: LocalBackend) -> None:
    """A 429, a 502 whose response was lost after the post, and a 503 during delivery: the result is posted exactly once (the retry finds the message the lost answer was for)."""
    bot = await h.start_bot(backend)
    route = r"^/channels/\d+/messages$"
    h.server.inject("POST", route, status=429, retry_after=0.2)
    h.server.inject("POST", route, status=502, after=True)  # posted, answer lost: nonce dedupes
    h.server.inject("POST", route, status=503)  # not retried by discord.py: ours retries
    # Progress edits through the interaction token fail twice: the final state still lands.
    h.server.inject("PATCH", r"^/webhooks/\d+/[^/]+/messages/\d+$", status=503, count=2)
    ix = await h.animate(h.alice)
    job, result = await h.delivered((await h.job_of(ix)).id)
    await h.settled(ix.original, "watch the clip")
    posts = h.server.requests_for("POST", route)
    assert [r.status for r in posts] == [429, 502, 503]  # then found, not posted again
    assert h.server.requests_for("GET", route)
    results = [m for m in h.server.messages(h.channel) if m.attachments]
    assert [m.id for m in results] == [result.id]
    assert bot.delivery.stats.retries >= 1 and job.delivery_attempts >= 1


async def test_fair_dispatch_and_warming_up(h: Harness, model_dir: Path) -> None:
    """30 /animate from 6 servers at once, sent while the model warms up: every job shows "warming up" and they run round-robin over servers (then over members)."""
    worker = LocalBackend(str(model_dir), env={"ZOETROPE_DATA_DIR": str(h.data_dir)})
    guilds = [h.server.add_guild(f"Guild {i}") for i in range(6)]
    members: dict[int, list[User]] = {}
    for guild in guilds:
        members[guild.id] = [h.server.add_user(f"{guild.name}-{n}") for n in range(3)]
        for user in members[guild.id]:
            h.server.add_member(guild, user)
    try:
        await h.start_bot(worker)  # starts the worker: the model loads in the background
        assert not worker.ready
        arrivals = []
        for guild in guilds:  # per server: members 0, 1, 2, 0, 1 (two clips each at most)
            for n in (0, 1, 2, 0, 1):
                arrivals.append(h.animate(members[guild.id][n], image=png(seed=n), guild=guild))
        interactions = await asyncio.gather(*arrivals)
        acks = await asyncio.gather(*(ix.acknowledged() for ix in interactions))
        assert acks == [5] * 30
        jobs = [await h.job_of(ix, timeout=20) for ix in interactions]
        assert not worker.ready, "the test needs the jobs queued while the model loads"
        for ix in interactions:  # "Warming up the model" or "Queued · … · model warming up"
            await h.settled(ix.original, "arming up")
        for job in jobs:
            await h.delivered(job.id, timeout=60)
    finally:
        await h.stop_bot()
        await worker.close()
    rows = sorted((_reload(h, job.id) for job in jobs), key=lambda j: j.started_at or 0)
    order = [j.guild_id for j in rows]
    # The first job went straight to the worker; the other 29 all waited together, so they
    # must come round-robin over servers...
    assert_round_robin(order[1:], order)
    # ...and, within each server, round-robin over its members.
    for guild in guilds:
        users = [j.user_id for j in rows[1:] if j.guild_id == guild.id]
        assert_round_robin(users, (guild.name, users))


def assert_round_robin(sequence: list[Any], context: Any) -> None:
    """No key comes again before every other key that still has items has had its turn."""
    remaining: dict[Any, int] = {}
    for key in sequence:
        remaining[key] = remaining.get(key, 0) + 1
    served: set[Any] = set()
    for key in sequence:
        live = {k for k, n in remaining.items() if n > 0}
        if served >= live:
            served = set()
        assert key not in served, context
        served.add(key)
        remaining[key] -= 1


def _reload(h: Harness, job_id: str) -> Job:
    from bot.store import Store

    with Store(h.data_dir / "zoetrope.db") as store:
        return store.require_job(job_id)


async def test_bad_attachments_are_refused_privately(h: Harness, backend: LocalBackend) -> None:
    """Each bad attachment gets a private, specific reply; no job row, no stored image."""
    await h.start_bot(backend)
    good = png()
    cases: list[tuple[Any, str]] = [
        (("notes.png", b"just some text, not a picture", "image/png"), "isn't an image"),
        (("cut.png", good[: len(good) // 2], "image/png"), "damaged"),
        (("dot.png", png(1, 1), "image/png"), "only 1×1"),
        (("strip.png", png(1000, 64), "image/png"), "long and thin"),
        (h.server.make_attachment("empty.png", b""), "empty"),
        (h.server.make_attachment("huge.png", good, declared_size=200 * 2**20), "too big"),
        (
            h.server.make_attachment("moved.png", good, redirect_to="http://example.com/x.png"),
            "redirect",
        ),
        (h.server.make_attachment("gone.png", good, status=404), "answered 404"),
    ]
    for attachment, needle in cases:
        ix = await h.server.slash(
            h.guild,
            h.channel,
            h.alice,
            "animate",
            options={"prompt": "x"},
            attachments=[attachment],
        )
        replies = await _private(h, ix)
        assert any(needle in text for text in replies), (needle, replies)
        # Nothing public is left behind: the "thinking…" reply (if any) was removed.
        assert ix.original is None or ix.original.ephemeral or ix.original.deleted, needle
    assert h.bot.store.db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 0
    inputs = h.data_dir / "inputs"
    assert not inputs.exists() or not any(inputs.iterdir())


async def test_upload_limit_reencode_or_explain(h: Harness, backend: LocalBackend) -> None:
    """Over the server's upload limit the clip is re-encoded to fit; if it cannot fit, the message says so, carries no file, and the job stays done with its file kept."""
    await h.start_bot(backend)
    first, result = await h.delivered((await h.job_of(await h.animate(h.alice))).id)
    size = len(result.file())
    h.server.set_upload_limit(h.guild, int(size * 0.8))
    job, fitted = await h.delivered((await h.job_of(await h.animate(h.alice, "again"))).id)
    assert fitted.attachments and len(fitted.file()) <= size * 0.8
    assert "re-encoded" in fitted.content and LABEL in fitted.content
    # A clip of a few KB has no room for the ~3.8 KB C2PA manifest: the tags alone mark it.
    (h.data_dir.parent / "fitted.mp4").write_bytes(fitted.file())
    found = read_provenance(h.data_dir.parent / "fitted.mp4", data_dir=h.data_dir)
    assert found.ai_generated and found.metadata["model"] == "local:wan21"
    assert found.metadata["job_id"] == job.id and not found.tampered

    h.server.set_upload_limit(h.guild, 300)
    job, refused = await h.delivered((await h.job_of(await h.animate(h.alice, "tiny"))).id)
    assert not refused.attachments and "upload limit" in refused.content
    assert job.status == "done" and Path(job.output_path).is_file()
    assert refused.custom_ids == [buttons.custom_id(a, job.id) for a in RESULT_ACTIONS]


async def test_commands_sync_only_when_changed(h: Harness, backend: LocalBackend) -> None:
    """A second start with the same definitions sends no sync; a dev guild gets its own."""
    bot = await h.start_bot(backend)
    assert bot.synced is True
    names = sorted(c["name"] for c in h.server.commands())
    assert names == ["animate", "cancel", "history", "job", "queue", "settings"]
    creates = h.server.command_creates()
    writes = len(h.server.command_writes())
    await h.stop_bot()
    bot = await h.start_bot(backend)
    assert bot.synced is False
    assert h.server.command_creates() == creates and len(h.server.command_writes()) == writes
    await h.stop_bot()
    bot = await h.start_bot(backend, env={"ZOETROPE_DEV_GUILD": str(h.guild.id)})
    assert bot.synced is True and len(h.server.commands(h.guild)) == 6


@SLOW_TEST
async def test_queue_history_job_commands(h: Harness, slow_backend: LocalBackend) -> None:
    """/queue shows positions; /history links clips; /job re-posts a clip with live buttons."""
    await h.start_bot(slow_backend)
    first = await h.job_of(await h.animate(h.alice))
    second = await h.job_of(await h.animate(h.alice, "next"))
    queue = await h.server.slash(h.guild, h.channel, h.alice, "queue")
    text = (await _private(h, queue))[0]
    assert first.id in text and second.id in text and "position 1" in text
    await h.delivered(first.id, timeout=90)
    await h.delivered(second.id, timeout=90)
    history = await h.server.slash(h.guild, h.channel, h.alice, "history")
    text = (await _private(h, history))[0]
    assert render.result_url(h.job(first.id)) in text
    repost = await h.server.slash(h.guild, h.channel, h.bob, "job", {"id": first.id})
    assert await repost.acknowledged() == 5
    await h.server.wait_for(lambda: repost.original.attachments, what="the re-post")
    assert repost.original.custom_ids == [buttons.custom_id(a, first.id) for a in RESULT_ACTIONS]
    assert repost.original.pinged.nobody
    unknown = await h.server.slash(h.guild, h.channel, h.bob, "job", {"id": "nosuchjob1"})
    assert any("no job" in t for t in await _private(h, unknown))


async def test_rejected_token_is_one_line(h: Harness) -> None:
    """`python main.py bot` with a token Discord refuses: one line, exit 2, no token printed."""
    bad = "MTIz.bad-token.never-printed"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DISCORD_", "ZOETROPE_"))},
        "DISCORD_TOKEN": bad,
        "ZOETROPE_DATA_DIR": str(h.data_dir),
        "DISCORD_API_BASE": h.server.api_base,
        "DISCORD_GATEWAY_URL": h.server.gateway_url,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "main.py"),
        "bot",
        cwd=h.data_dir.parent,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2, err.decode()
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: DISCORD_TOKEN"), lines
    assert "Traceback" not in err.decode() and bad not in (out + err).decode()


async def test_settings_are_for_managers_and_apply(h: Harness, backend: LocalBackend) -> None:
    """/settings is offered to Manage Server only; channel and daily limits then apply."""
    from tests.discord_server import CommandUnavailable

    await h.start_bot(backend)
    owner = h.server.users[h.guild.owner_id]
    with pytest.raises(CommandUnavailable):
        await h.server.slash(h.guild, h.channel, h.bob, "settings show")
    showcase = h.guild.channel("showcase")
    only = await h.server.slash(
        h.guild, h.channel, owner, "settings channel", {"channel": showcase, "allowed": True}
    )
    assert any(f"<#{showcase.id}>" in t for t in await _private(h, only))
    refused = await h.animate(h.alice)  # in #general
    assert any("isn't enabled in this channel" in t for t in await _private(h, refused))
    assert h.latest_job(h.alice) is None

    daily = await h.server.slash(h.guild, h.channel, owner, "settings limits", {"daily_limit": 1})
    assert any("per member per day: 1" in t for t in await _private(h, daily))
    first = await h.job_of(await h.animate(h.alice, channel=showcase))
    await h.delivered(first.id)
    second = await h.animate(h.alice, "one more", channel=showcase)
    assert any("daily limit" in t for t in await _private(h, second))
    shown = await h.server.slash(h.guild, h.channel, owner, "settings show")
    text = (await _private(h, shown))[0]
    assert f"<#{showcase.id}>" in text and "per member per day: 1" in text


async def test_failed_job_is_explained(h: Harness, backend: LocalBackend) -> None:
    """A job the worker refuses ends as failed with the reason on its progress message."""
    await h.start_bot(backend)
    ix = await h.animate(h.alice, preset="ltx-fast")  # this worker serves the tiny model only
    job = await h.job_of(ix)
    failed = await h.server.wait_for(
        lambda: (j := h.job(job.id)).delivered and j, timeout=30, what="the failure notice"
    )
    assert failed.status == "failed" and failed.error
    await h.settled(ix.original, "Failed")
    assert ix.original.components == []
    assert not [m for m in h.server.messages(h.channel) if m.attachments]


async def test_undelivered_result_is_posted_after_restart(
    h: Harness, backend: LocalBackend
) -> None:
    """With retries off and Discord failing, a finished clip stays undelivered; the next start posts it (once)."""
    await h.start_bot(backend, retry=RetryPolicy(attempts=1))
    h.server.inject("POST", r"^/channels/\d+/messages$", status=503, count=1)
    ix = await h.animate(h.alice)
    job = await h.job_of(ix)
    await h.server.wait_for(
        lambda: (j := h.job(job.id)).status == "done" and j.delivery_attempts == 1,
        what="a failed delivery",
    )
    assert not h.job(job.id).delivered
    await h.stop_bot()
    await h.start_bot(backend)
    done, result = await h.delivered(job.id)
    assert result.attachments and done.delivery_attempts == 1
    assert len([m for m in h.server.messages(h.channel) if m.attachments]) == 1
    await h.settled(ix.original, "watch the clip")


async def test_long_echoed_input_is_cut_to_fit(
    h: Harness, backend: LocalBackend, caplog: pytest.LogCaptureFixture
) -> None:
    """A 5,000-character preset echoed in the refusal: the private reply fits Discord's 2,000 characters, cut with an ellipsis, and no log line holds the whole input."""
    await h.start_bot(backend)
    typed = "z" * 5000
    with caplog.at_level(logging.DEBUG):
        ix = await h.animate(h.alice, preset=typed)
        assert await ix.acknowledged() == 4 and ix.ephemeral
    text = ix.original.content
    assert text.startswith("Unknown preset") and len(text) == 2000 and text.endswith("…")
    # discord.py's own gateway DEBUG lines carry whole payloads; ours and INFO+ must not.
    leaked = [
        (r.name, r.getMessage()[:150])
        for r in caplog.records
        if (r.name.startswith("zoetrope") or r.levelno >= logging.INFO)
        and typed[:1000] in r.getMessage()
    ]
    assert not leaked, leaked
    assert h.bot is not None and h.bot.jobs.history(h.alice.id) == []


async def test_preset_autocomplete_offers_allowed_presets(
    h: Harness, backend: LocalBackend
) -> None:
    """/animate's preset autocomplete lists the presets matching what was typed, only those the server allows."""
    await h.start_bot(backend)
    ix = await h.server.autocomplete(h.guild, h.channel, h.alice, "animate", "preset", "wan")
    await ix.acknowledged()
    assert [c["value"] for c in ix.autocomplete_choices] == [
        "wan22-a14b-480p",
        "wan22-a14b-720p",
        "wan-480p-fast",
        "wan22-5b",
    ]
    assert h.bot is not None
    h.bot.jobs.update_guild_settings(h.guild.id, allowed_presets=["wan22-5b", "ltx-fast"])
    ix = await h.server.autocomplete(h.guild, h.channel, h.alice, "animate", "preset", "")
    await ix.acknowledged()
    assert [c["value"] for c in ix.autocomplete_choices] == ["ltx-fast", "wan22-5b"]
