"""The job lifecycle: submit, fairness, limits, cancel, retries, children, resume, crashes."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from PIL import Image

from bot import intake
from bot.errors import (
    AlreadyPending,
    BadImage,
    BadOption,
    BadPrompt,
    InvalidState,
    LimitReached,
    NotAllowed,
    NotFound,
    QueueFull,
    QuotaExceeded,
)
from bot.jobs import (
    CAMERAS,
    MAX_REQUEUES,
    Cancelled,
    Done,
    Failed,
    InteractionRef,
    JobService,
    Limits,
    PositionChanged,
    Progress,
    Queued,
    Started,
)
from bot.scheduler import FairQueue, queue_key
from bot.store import Job, Store
from generator import encode
from generator import protocol as gp
from tests.jobs_backend import FakeBackend, FleetFakeBackend

PROJECT = Path(__file__).resolve().parent.parent
NOON = 1_795_694_400.0  # 2026-11-26 12:00 UTC


class Clock:
    """The service's clock, moved by hand."""

    def __init__(self, now: float = NOON) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Env:
    """A JobService over a real SQLite file and the test backend, with helpers."""

    def __init__(self, tmp: Path, backend: FakeBackend, limits: Limits | None, **kw) -> None:
        self.tmp = tmp
        self.backend = backend
        self.clock = Clock()
        self.store = Store(tmp / "zoetrope.db")
        self.service = JobService(
            self.store,
            backend,
            data_dir=tmp,
            limits=limits,
            clock=self.clock,
            position_interval=0.01,
            poll_interval=0.02,
            **kw,
        )
        self.events: list = []
        self.service.add_listener(self.events.append)
        self.sha = ""

    async def start(self):
        report = await self.service.start()
        self.sha = self.image()
        return report

    def image(self, colour=(200, 30, 30)) -> str:
        buffer = io.BytesIO()
        Image.new("RGB", (128, 96), colour).save(buffer, "PNG")
        return intake.accept_image(buffer.getvalue(), inputs_dir=self.service.inputs_dir).sha256

    async def submit(self, **kw) -> Job:
        args = dict(
            guild_id=1, channel_id=10, user_id=100, prompt="waves roll in", image_sha256=self.sha
        )
        args.update(kw)
        return await self.service.submit(**args)

    async def wait(self, job_id: str, *statuses: str, timeout: float = 10.0) -> Job:
        statuses = statuses or ("done", "failed", "cancelled")
        async with asyncio.timeout(timeout):
            while True:
                job = self.store.require_job(job_id)
                if job.status in statuses:
                    return job
                await asyncio.sleep(0.005)

    async def until(self, predicate, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.005)

    def of(self, job_id: str, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind) and e.job.id == job_id]

    async def close(self) -> None:
        await self.service.close()
        self.store.close()


@pytest.fixture
async def make_env(tmp_path: Path) -> AsyncIterator:
    envs: list[Env] = []

    async def make(backend: FakeBackend | None = None, limits: Limits | None = None, **kw) -> Env:
        env = Env(tmp_path, backend or FakeBackend(), limits, **kw)
        await env.start()
        envs.append(env)
        return env

    yield make
    for env in envs:
        await env.close()


# -- the happy path -------------------------------------------------------------------


async def test_submit_runs_to_done_with_events_output_and_request(make_env) -> None:
    """A submitted job is queued, started, reports progress and ends done with its file."""
    env = await make_env()
    ref = InteractionRef("s3cr3t-t0ken", 55)
    job = await env.submit(camera="push in", duration="short", seed=7, interaction=ref)
    assert job.status == "queued" and job.seed == 7 and job.camera == "push_in"
    assert (job.interaction_token, job.application_id, job.token_created_at) == (
        "s3cr3t-t0ken",
        55,
        NOON,
    )
    assert "s3cr3t" not in repr(ref)
    done = await env.wait(job.id)
    assert done.status == "done" and done.attempts == 0 and done.delivered_at is None
    assert Path(done.output_path) == env.tmp / "outputs" / f"{job.id}.mp4"
    assert Path(done.output_path).is_file() and done.output_bytes > 0
    assert (done.width, done.height, done.num_frames, done.steps) == (16, 16, 9, 3)
    assert not any((env.tmp / "outputs" / ".tmp").iterdir())
    kinds = [type(e) for e in env.events if e.job.id == job.id]
    assert kinds == [Queued, Started, Progress, Progress, Progress, Progress, Done]
    assert env.of(job.id, Queued)[0].position == 1
    request = env.backend.requests[0]
    assert request.prompt == f"waves roll in, {CAMERAS['push_in']}."
    assert (request.seed, request.duration, request.num_frames) == (7, "short", None)
    assert request.image_path == str(env.tmp / "inputs" / f"{env.sha}.png")
    assert env.store.recent_gen_times("default") != []
    assert env.service.mark_delivered(job.id, message_id=9, channel_id=10).delivered
    assert env.service.mark_delivered(job.id, message_id=10).result_message_id == 9  # idempotent
    assert env.store.undelivered() == []


async def test_fair_dispatch_through_the_service(make_env) -> None:
    """Jobs reach the backend round-robin over guilds, then members, FIFO per member."""
    backend = FakeBackend()
    backend.hold()
    env = await make_env(backend, Limits(pending_per_user=10, pending_per_guild=10))
    plan = [(1, 100), (1, 100), (1, 100), (1, 101), (2, 200), (2, 200), (None, 300), (3, 400)]
    jobs = [
        await env.submit(guild_id=g, user_id=u, prompt=f"p{i}") for i, (g, u) in enumerate(plan)
    ]
    await env.until(lambda: len(backend.requests) == 1)
    # job 0 started at once; the rest wait in fair order
    expected = [jobs[i].id for i in (4, 6, 7, 3, 5, 1, 2)]
    assert [env.service.position(j) for j in expected] == list(range(1, 8))
    backend.release()
    await env.until(lambda: len(backend.requests) == 8)
    assert backend.started_ids == [jobs[0].id, *expected]


async def test_mixed_presets_each_job_waits_only_for_its_own_workers(make_env) -> None:
    """With workers of two presets, a job starts as soon as a worker of its preset is free, even behind a fairer job whose preset is busy; None and the default's name share one queue; the fleet's served names are accepted as presets, unknown names refused."""
    backend = FleetFakeBackend({"ltx-fast": 1, "local:tiny": 1}, default="ltx-fast")
    backend.hold()
    env = await make_env(backend, Limits(pending_per_user=10, pending_per_guild=10))
    a1 = await env.submit(guild_id=1, user_id=1)  # the default model: ltx-fast
    a2 = await env.submit(guild_id=1, user_id=1, preset="ltx-fast")  # the same workers
    b1 = await env.submit(guild_id=2, user_id=2)
    c1 = await env.submit(guild_id=3, user_id=3, preset="local:tiny")
    c2 = await env.submit(guild_id=3, user_id=3, preset="local:tiny")
    await env.until(lambda: len(backend.requests) == 2)
    await asyncio.sleep(0.05)
    assert backend.started_ids == [a1.id, c1.id]  # c1 did not wait behind a2 and b1
    assert [env.service.position(j.id) for j in (b1, a2, c2)] == [1, 2, 1]  # per preset
    assert env.service.eta(c2.id) == pytest.approx(2 * 60.0)  # its own worker, not ltx-fast's
    backend.release()
    await env.until(lambda: len(backend.requests) == 5)
    assert backend.started_ids.index(b1.id) < backend.started_ids.index(a2.id)
    assert backend.misrouted == []
    for job in (a1, a2, b1, c1, c2):
        assert (await env.wait(job.id)).status == "done"

    env.service.precheck(guild_id=1, channel_id=10, user_id=5, preset="local:tiny")
    with pytest.raises(BadOption, match="local:tiny") as info:
        await env.submit(guild_id=1, user_id=5, preset="local:nope")
    assert "ltx-fast" in info.value.message
    env.service.update_guild_settings(1, allowed_presets=["ltx-fast"])
    with pytest.raises(NotAllowed, match="local:tiny"):
        env.service.precheck(guild_id=1, channel_id=10, user_id=5, preset="local:tiny")


# -- limits and refusals --------------------------------------------------------------


async def test_limits_refuse_with_readable_messages(make_env) -> None:
    """Per-member, per-server and global limits refuse with a message; guilds override."""
    backend = FakeBackend()
    backend.hold()
    env = await make_env(backend, Limits(max_queue=6))
    await env.submit(user_id=1)
    await env.submit(user_id=1)
    with pytest.raises(LimitReached) as info:
        await env.submit(user_id=1, guild_id=2)
    assert info.value.message == (
        "You already have 2 clips in the queue — wait for one to finish or /cancel one."
    )
    env.service.update_guild_settings(1, max_pending_per_guild=3, max_pending_per_user=1)
    with pytest.raises(LimitReached, match="already have 2 clips"):
        await env.submit(user_id=1)
    await env.submit(user_id=2)
    with pytest.raises(QueueFull, match="This server already has 3 clips in the queue"):
        await env.submit(user_id=3)
    for user in (4, 5, 6):
        await env.submit(user_id=user, guild_id=None)  # DMs: each its own "server"
    with pytest.raises(QueueFull, match="Zoetrope's queue is full"):
        await env.submit(user_id=7, guild_id=9)
    assert len(env.store.jobs_with_status("queued", "running")) == 6


async def test_daily_quota_and_refund(make_env) -> None:
    """The daily quota counts clips, a failed clip is refunded, and it resets at midnight."""
    backend = FakeBackend()
    env = await make_env(backend, Limits(daily_per_user=2))
    first = await env.wait((await env.submit()).id)
    assert first.status == "done"
    backend.script("error")
    failed = await env.wait((await env.submit()).id)
    assert failed.status == "failed" and failed.quota_day is None
    assert env.store.daily_count(100, "2026-11-26") == 1  # the failure was refunded
    await env.wait((await env.submit()).id)
    with pytest.raises(QuotaExceeded) as info:
        await env.submit()
    assert "You've made 2 clips today" in info.value.message
    assert f"<t:{int(NOON) // 86400 * 86400 + 86400}:R>" in info.value.message
    env.service.update_guild_settings(1, daily_limit_per_user=0)  # this server: no limit
    await env.wait((await env.submit()).id)
    env.service.update_guild_settings(1, daily_limit_per_user=None)
    env.clock.now += 12 * 3600  # the next UTC day
    assert (await env.submit()).quota_day == "2026-11-27"


async def test_bad_options_are_refused_and_nothing_is_written(make_env) -> None:
    """Bad channel, preset, camera, duration, seed, prompt or image: typed errors, no rows."""
    env = await make_env()
    env.service.update_guild_settings(1, allowed_channel_ids=[77], allowed_presets=["ltx-fast"])
    cases = [
        (dict(channel_id=10), NotAllowed, "isn't enabled in this channel. Try <#77>."),
        (dict(channel_id=77, preset="wan22-5b"), NotAllowed, "preset isn't allowed"),
        (dict(preset="nope"), BadOption, "Unknown preset 'nope'"),
        (dict(camera="dolly zoom"), BadOption, "Camera must be one of static, push in"),
        (dict(duration="epic"), BadOption, "Duration must be one of short, standard, long"),
        (dict(seed=-1), BadOption, "seed must be a whole number"),
        (dict(prompt="\u200b "), BadPrompt, "empty"),
        (dict(prompt="x" * 601), BadPrompt, "limit is 600"),
        (dict(image_sha256="f" * 64), BadImage, "attach it again"),
        (dict(image_sha256="../x"), BadImage, "attach it again"),
    ]
    for kwargs, error, text in cases:
        with pytest.raises(error) as info:
            await env.submit(**kwargs)
        assert text in info.value.message, info.value.message
    with pytest.raises(BadOption, match="Unknown preset"):
        env.service.update_guild_settings(1, allowed_presets=["mine"])
    assert env.store.jobs_with_status("queued", "running", "failed") == []
    assert (await env.submit(channel_id=77, preset="ltx-fast")).preset == "ltx-fast"


async def test_precheck_refuses_what_submit_would_and_writes_nothing(make_env) -> None:
    """precheck raises submit's own error and message for each limit that needs no image (channel, preset, member and server pending, daily quota, queue size) and writes nothing."""
    backend = FakeBackend()
    backend.hold()
    env = await make_env(backend, Limits(max_queue=5, daily_per_user=3))
    env.service.update_guild_settings(1, allowed_channel_ids=[10], allowed_presets=["ltx-fast"])

    async def same_refusal(error: type, text: str, **where) -> None:
        where = {"guild_id": 1, "channel_id": 10, "user_id": 100, **where}
        rows = env.store.db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
        with pytest.raises(error) as early:
            env.service.precheck(**where)
        with pytest.raises(error) as late:
            await env.submit(**where)
        assert type(early.value) is type(late.value)
        assert early.value.message == late.value.message and text in early.value.message
        assert env.store.db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == rows

    assert env.service.precheck(guild_id=1, channel_id=10, user_id=100, preset="ltx-fast") is None
    assert env.store.daily_count(100, "2026-11-26") == 0  # a precheck counts nothing
    await same_refusal(NotAllowed, "isn't enabled in this channel", channel_id=11)
    await same_refusal(NotAllowed, "preset isn't allowed", preset="wan22-5b")
    await env.submit()
    await env.until(lambda: backend.started_ids)  # held while running: the rest wait
    await env.submit()
    await same_refusal(LimitReached, "You already have 2 clips in the queue")
    env.service.update_guild_settings(1, max_pending_per_guild=3)
    await env.submit(user_id=101)
    await same_refusal(QueueFull, "This server already has 3 clips", user_id=102)
    env.store.add_daily(103, "2026-11-26", 3)
    await same_refusal(QuotaExceeded, "You've made 3 clips today", guild_id=2, user_id=103)
    for user in (104, 105, 106):  # DMs: each its own "server"; 1 running + 5 waiting
        await env.submit(guild_id=None, user_id=user)
    await same_refusal(QueueFull, "Zoetrope's queue is full", guild_id=None, user_id=107)
    backend.release()


async def test_check_extend_refuses_before_the_last_frame_is_read(make_env) -> None:
    """Extend's limit, duplicate and length refusals come from check_extend without reading the clip; extend() gives the same ones before it extracts and stores the last frame."""
    backend = FakeBackend(real_video=True)
    env = await make_env(backend, Limits(pending_per_user=2))
    parent = await env.wait((await env.submit(preset="wan-480p-fast", duration="short")).id)
    assert env.service.check_extend(parent.id, user_id=100).id == parent.id
    inputs = sorted((env.tmp / "inputs").iterdir())
    backend.hold()
    await env.submit()
    await env.submit()
    with pytest.raises(LimitReached, match="You already have 2 clips"):
        env.service.check_extend(parent.id, user_id=100)
    with pytest.raises(LimitReached, match="You already have 2 clips"):
        await env.service.extend(parent.id, user_id=100)
    assert sorted((env.tmp / "inputs").iterdir()) == inputs  # no last frame was stored
    await env.service.reroll(parent.id, user_id=200)
    with pytest.raises(AlreadyPending, match="already have a clip from this one"):
        env.service.check_extend(parent.id, user_id=200)
    env.store.update_job(parent.id, num_frames=241)  # wan-480p-fast's cap on the total
    with pytest.raises(LimitReached, match="already as long as it can get"):
        env.service.check_extend(parent.id, user_id=300)
    env.store.update_job(parent.id, num_frames=parent.num_frames)
    env.service.update_guild_settings(1, others_can_use_buttons=False)
    with pytest.raises(NotAllowed, match="only the clip's owner"):
        env.service.check_extend(parent.id, user_id=300, channel_id=11)
    backend.release()


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


# -- cancel ---------------------------------------------------------------------------


async def test_cancel_queued_and_running(make_env) -> None:
    """Owners and moderators cancel waiting and running jobs; others and finished jobs can't."""
    backend = FakeBackend()
    backend.hold()
    env = await make_env(backend, Limits(daily_per_user=5))
    running = await env.submit(user_id=1)
    waiting = await env.submit(user_id=2)
    await env.wait(running.id, "running")
    with pytest.raises(NotAllowed, match="Only the member who asked"):
        await env.service.cancel(waiting.id, user_id=3)
    cancelled = await env.service.cancel(waiting.id, user_id=3, moderator=True)
    assert cancelled.status == "cancelled" and env.service.position(waiting.id) is None
    assert env.store.daily_count(2, "2026-11-26") == 0  # refunded
    await env.until(lambda: backend.held)
    cancelled = await env.service.cancel(running.id, user_id=1)
    assert cancelled.status == "cancelled" and backend.cancels == [running.id]
    assert env.of(running.id, Cancelled) and env.of(waiting.id, Cancelled)
    with pytest.raises(InvalidState, match="already cancelled"):
        await env.service.cancel(running.id, user_id=1)
    # the slot frees once the backend stops, and the next job runs
    backend.release()
    nxt = await env.submit(user_id=4)
    assert (await env.wait(nxt.id)).status == "done"
    assert not env.of(running.id, Done) and env.store.require_job(running.id).output_path is None
    assert not (env.tmp / "outputs" / f"{running.id}.mp4").exists()
    with pytest.raises(NotFound):
        await env.service.cancel("nosuchjob0", user_id=1)


# -- retries --------------------------------------------------------------------------


async def test_crash_is_retried_once_then_succeeds(make_env) -> None:
    """A crash puts the job back at the head of the queue once; the retry completes."""
    backend = FakeBackend()
    env = await make_env(backend)
    backend.script("crash")
    job = await env.submit()
    done = await env.wait(job.id)
    assert done.status == "done" and done.attempts == 1 and done.error_kind == "crash"
    assert [r.job_id for r in backend.requests] == [job.id, job.id]
    assert backend.requests[1].output_path != backend.requests[0].output_path
    assert [e.retry for e in env.of(job.id, Queued)] == [False, True]


async def test_requeue_goes_back_to_the_head_without_an_attempt(make_env) -> None:
    """A job given back by a stopping worker ("requeue") runs next, attempts and quota unchanged; a job given back over and over counts as a crash in the end."""
    backend = FakeBackend()
    backend.hold()
    env = await make_env(backend, Limits(pending_per_user=5, daily_per_user=5))
    backend.script("requeue")
    first = await env.submit(guild_id=1, user_id=1)
    other = await env.submit(guild_id=2, user_id=2)
    await env.until(lambda: backend.held)
    backend.release()
    done = await env.wait(first.id)
    assert done.status == "done" and done.attempts == 0 and done.meta["requeues"] == 1
    assert backend.started_ids[:2] == [first.id, first.id]  # before the other guild's job
    assert (await env.wait(other.id)).status == "done"
    assert [e.retry for e in env.of(first.id, Queued)] == [False, True]
    assert not env.of(first.id, Failed) and env.store.daily_count(1, "2026-11-26") == 1

    backend.script(*["requeue"] * (MAX_REQUEUES + 1))
    stubborn = await env.wait((await env.submit(guild_id=3, user_id=3)).id)
    assert stubborn.status == "done" and stubborn.attempts == 1
    assert stubborn.error_kind == "crash" and len(env.of(stubborn.id, Started)) == MAX_REQUEUES + 2


async def test_oom_twice_fails_with_reason_and_refund(make_env) -> None:
    """OOM retries once degraded; a second OOM fails with a clear reason and a refund."""
    backend = FakeBackend()
    env = await make_env(backend, Limits(daily_per_user=3))
    backend.script("oom", "oom")
    job = await env.submit()
    failed = await env.wait(job.id)
    assert failed.status == "failed" and failed.attempts == 2 and failed.error_kind == "oom"
    assert [r.degraded for r in backend.requests] == [False, True]
    assert "ran out of memory" in failed.error and "twice" in failed.error
    assert env.of(job.id, Failed)[0].reason == failed.error
    assert env.store.daily_count(100, "2026-11-26") == 0
    assert [j.id for j in env.store.undelivered(("failed",))] == [job.id]


async def test_final_errors_and_broken_backends(make_env) -> None:
    """An "error" fails at once; a backend that raises or ends silently counts as a crash."""
    backend = FakeBackend()
    env = await make_env(backend, Limits(pending_per_user=5))
    backend.script("error")
    failed = await env.wait((await env.submit()).id)
    assert failed.status == "failed" and failed.attempts == 1
    assert failed.error == "Generation failed: scripted error" and len(backend.requests) == 1
    backend.script("raise", "silent")
    crashed = await env.wait((await env.submit()).id)
    assert crashed.status == "failed" and crashed.error_kind == "crash"
    assert "crashed" in crashed.error and crashed.attempts == 2
    backend.script("bad_request")
    refused = await env.wait((await env.submit()).id)
    assert refused.error.startswith("The generator refused this request")


# -- children -------------------------------------------------------------------------


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


# -- positions, ETAs, summaries, housekeeping -----------------------------------------


async def test_positions_etas_and_summary(make_env) -> None:
    """Waiting jobs know their position and ETA; moves are published; /queue has a summary."""
    backend = FakeBackend()
    backend.hold()
    backend.set_ready(False)
    env = await make_env(backend, Limits(pending_per_user=5), default_gen_seconds=30.0)
    assert env.service.warming_up
    jobs = [await env.submit(user_id=1, prompt=f"p{i}") for i in range(3)]
    await env.wait(jobs[0].id, "running")
    await env.until(lambda: env.of(jobs[0].id, Progress))
    assert env.of(jobs[0].id, Progress)[0].stage == "load"
    assert [env.service.position(j.id) for j in jobs] == [None, 1, 2]
    assert env.service.eta(jobs[1].id) == pytest.approx(60.0)
    assert env.service.eta(jobs[2].id) == pytest.approx(90.0)
    env.clock.now += 10
    assert env.service.eta(jobs[0].id) == pytest.approx(20.0)
    summary = env.service.queue_summary(1, 1)
    assert [(i.job.id, i.position) for i in summary.user_jobs] == [
        (jobs[0].id, None),
        (jobs[1].id, 1),
        (jobs[2].id, 2),
    ]
    assert (summary.guild_waiting, summary.guild_running, summary.total_waiting) == (2, 1, 2)
    assert summary.warming_up
    backend.set_ready(True)
    await env.service.cancel(jobs[0].id, user_id=1)  # jobs[1] starts (and is held)
    await env.until(lambda: [e.position for e in env.of(jobs[2].id, PositionChanged)][-1:] == [1])
    moves = [e.position for e in env.of(jobs[2].id, PositionChanged)]
    assert moves in ([2, 1], [1])  # it was told 3 when it was queued
    backend.release()
    await env.wait(jobs[2].id)
    assert env.service.history(1, limit=2)[0].id == jobs[2].id


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


# -- restarts -------------------------------------------------------------------------


async def test_resume_requeues_in_order_and_reports_undelivered(tmp_path: Path) -> None:
    """After a restart: running jobs are back in the queue (attempts + 1), queued jobs keep their order, done-but-undelivered results are reported."""
    limits = Limits(pending_per_user=10, pending_per_guild=10)
    backend = FakeBackend()
    first = Env(tmp_path, backend, limits)
    await first.start()
    delivered = await first.wait((await first.submit(user_id=9)).id)
    first.service.mark_delivered(delivered.id, message_id=1)
    undelivered = await first.wait((await first.submit(user_id=9)).id)
    backend.hold()
    plan = [(1, 1), (1, 1), (2, 2), (1, 3), (None, 4), (2, 2)]
    jobs = [await first.submit(guild_id=g, user_id=u) for g, u in plan]
    await first.wait(jobs[0].id, "running")
    await first.close()  # the bot stops with one job running and five waiting

    second = Env(tmp_path, FakeBackend(slots=0), limits)
    report = await second.start()
    assert [j.id for j in report.interrupted] == [jobs[0].id]
    assert [j.id for j in report.requeued] == [j.id for j in jobs]
    assert report.requeued[0].attempts == 1 and report.requeued[0].status == "queued"
    assert [j.id for j in report.undelivered] == [undelivered.id]
    expected = FairQueue()
    for job in jobs:
        expected.push(job.id, queue_key(job.guild_id, job.user_id), job.user_id)
    assert second.service._scheduler.queue.order() == expected.order()
    await second.close()


def test_sigkill_mid_run_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    """A bot killed with SIGKILL while submitting and running jobs: on reopen every acknowledged job is there once, and resume() restores the queue in submission order."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    log = tmp_path / "child.log"
    acknowledged: list[str] = []
    with (
        log.open("w") as stderr,
        subprocess.Popen(
            [sys.executable, "-m", "tests.jobs_crash_child", str(tmp_path)],
            cwd=PROJECT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        ) as child,
    ):
        try:
            assert child.stdout is not None
            while len(acknowledged) < 60:
                line = child.stdout.readline()
                assert line, f"the child died: {log.read_text()}"
                acknowledged.append(line.strip())
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL

    async def reopen() -> None:
        limits = Limits(pending_per_user=10_000, pending_per_guild=10_000, max_queue=10_000)
        backend = FakeBackend(slots=0)  # look at the queue before anything runs
        after = Env(tmp_path, backend, limits)
        report = await after.start()
        rows = after.store.jobs_with_status("queued", "running", "done", "failed", "cancelled")
        ids = [job.id for job in rows]
        assert len(ids) == len(set(ids))
        assert ids[: len(acknowledged)] == acknowledged  # all there, in submission order
        assert len(ids) - len(acknowledged) <= 1  # at most one written but not yet printed
        assert [j.id for j in report.interrupted] == [acknowledged[0]]
        assert [j.id for j in report.requeued] == ids
        expected = FairQueue()
        for job in rows:
            expected.push(job.id, queue_key(job.guild_id, job.user_id), job.user_id)
        assert after.service._scheduler.queue.order() == expected.order()
        # and every job then runs exactly once
        backend.slots = 4
        after.service._scheduler.kick()
        await after.until(lambda: len(after.store.jobs_with_status("done")) == len(ids), 30)
        assert sorted(r.job_id for r in backend.requests) == sorted(ids)
        await after.close()

    asyncio.run(reopen())


# -- the real worker ------------------------------------------------------------------


async def test_jobs_through_the_real_local_backend(tmp_path: Path) -> None:
    """With a tiny model in a real worker process: jobs from two guilds run fairly to real MP4s, a worker killed with SIGKILL mid-job is retried to success, extend and loop work; closing the backend gives the jobs it holds back ("requeue"), not as crashes."""
    from generator.backends import LocalBackend

    model = tmp_path / "model"
    # Built in a child process so this test process never imports torch.
    subprocess.run(
        [sys.executable, "-m", "tests.tiny_models", "wan21", str(model)],
        cwd=PROJECT,
        check=True,
        capture_output=True,
        timeout=120,
    )
    backend = LocalBackend(str(model), start_timeout=120, stop_timeout=10)
    await backend.start()
    env = Env(tmp_path / "data", backend, Limits(pending_per_user=5))  # type: ignore[arg-type]
    env.service.position_interval = None
    try:
        await env.start()
        assert env.service.warming_up
        a1 = await env.submit(guild_id=1, user_id=1, prompt="waves roll in")
        a2 = await env.submit(guild_id=1, user_id=1, prompt="the sea at night")
        b1 = await env.submit(guild_id=2, user_id=2, prompt="a cat walks", duration="long")
        # kill the worker while it denoises the first job: retried once, on a fresh worker
        await env.until(
            lambda: any(e.stage == "denoise" for e in env.of(a1.id, Progress)), timeout=90
        )
        assert backend.pid is not None
        os.kill(backend.pid, signal.SIGKILL)
        done = [await env.wait(j.id, timeout=120) for j in (a1, a2, b1)]
        assert [j.status for j in done] == ["done"] * 3, [j.error for j in done]
        assert done[0].attempts == 1 and done[0].error_kind == "crash"
        started = [e.job.id for e in env.events if isinstance(e, Started)]
        assert started == [a1.id, a1.id, b1.id, a2.id]  # the retry first, then fair order
        for job in done:
            info = encode.probe(job.output_path)
            assert (info["codec"], info["faststart"]) == ("h264", True)
            assert info["frames"] == job.num_frames
        assert (done[0].num_frames, done[2].num_frames) == (9, 17)  # standard, long

        extended = await env.wait((await env.service.extend(a1.id, user_id=3)).id, timeout=60)
        assert extended.status == "done", extended.error
        assert extended.num_frames == 9 + 9 - 1 == encode.probe(extended.output_path)["frames"]
        looped = await env.wait((await env.service.loop(a1.id, user_id=3)).id, timeout=60)
        assert looped.num_frames == 2 * 9 - 2

        image = str(intake.input_path(env.service.inputs_dir, env.sha))
        last: dict[str, object] = {}

        async def consume(req: gp.GenerationRequest) -> None:
            async for event in backend.submit(req):
                last[req.job_id] = event

        held = [
            gp.GenerationRequest(f"close{i}", image, "waves", str(tmp_path / f"{i}.mp4"), seed=1)
            for i in range(2)
        ]
        tasks = [asyncio.create_task(consume(req)) for req in held]
        await env.until(lambda: "close0" in last, timeout=60)  # close1 waits behind it
        await backend.close()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
        assert isinstance(last["close1"], gp.Failed) and last["close1"].kind == "requeue"
        assert isinstance(last["close0"], gp.Done) or last["close0"].kind == "requeue"
    finally:
        await env.close()
        await backend.close()


def test_core_modules_import_neither_torch_nor_discord() -> None:
    """bot/store, scheduler, jobs, intake and errors stay free of torch, diffusers and discord."""
    code = (
        "import sys, bot.store, bot.scheduler, bot.jobs, bot.intake, bot.errors\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'diffusers', 'transformers', 'discord')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=PROJECT, check=True, timeout=60)
