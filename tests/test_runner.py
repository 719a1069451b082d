"""Running jobs: dispatch, cancel, retries, requeue, resume and crashes (bot/runner.py through JobService)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bot import intake
from bot.admission import CAMERAS, Limits
from bot.errors import (
    BadOption,
    InvalidState,
    NotAllowed,
    NotFound,
)
from bot.events import Cancelled, JobDone, JobFailed, JobProgress, Queued, Started
from bot.recipes import InteractionRef
from bot.runner import MAX_INTERRUPTIONS, MAX_REQUEUES
from bot.scheduler import FairQueue, queue_key
from generator import encode
from generator import protocol as gp
from tests.jobs_backend import FakeBackend, FleetFakeBackend
from tests.jobs_env import NOON, PROJECT, Env


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
    assert kinds == [Queued, Started, JobProgress, JobProgress, JobProgress, JobProgress, JobDone]
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


async def test_another_servers_job_is_no_such_job(make_env) -> None:
    """A job id from another server is NotFound (the missing-id text) for cancel, lookup and
    every child, moderators included; only its author may still name it; nothing changes."""
    backend = FakeBackend()
    backend.hold()
    env = await make_env(backend, Limits(daily_per_user=5))
    running = await env.submit(guild_id=1, user_id=1)
    theirs = await env.submit(guild_id=1, user_id=2)
    await env.wait(running.id, "running")
    with pytest.raises(NotFound) as missing:
        env.service.lookup("nosuchjob0", guild_id=1, user_id=3)
    for job in (running, theirs):
        for who, moderator in ((3, True), (3, False)):
            with pytest.raises(NotFound) as info:
                await env.service.cancel(job.id, user_id=who, guild_id=2, moderator=moderator)
            assert info.value.message == missing.value.message.replace("nosuchjob0", job.id)
            with pytest.raises(NotFound):
                env.service.lookup(job.id, guild_id=2, user_id=who)
            with pytest.raises(NotFound):
                env.service.lookup(job.id, guild_id=None, user_id=who)  # a DM
    assert env.store.require_job(theirs.id).status == "queued"
    assert env.store.require_job(running.id).status == "running" and backend.cancels == []
    assert env.service.lookup(theirs.id, guild_id=2, user_id=2).id == theirs.id  # its author
    assert (await env.service.cancel(theirs.id, user_id=3, guild_id=1, moderator=True)).status == (
        "cancelled"
    )  # a moderator of the job's own server still may
    backend.release()
    done = await env.wait(running.id)
    assert done.status == "done"
    count = len(env.store.history(3, limit=50))
    for child in (
        env.service.reroll(done.id, user_id=3, guild_id=2, channel_id=20),
        env.service.vary(done.id, user_id=3, strength="subtle", guild_id=2, channel_id=20),
        env.service.edit(done.id, user_id=3, prompt="a new one", guild_id=2, channel_id=20),
        env.service.loop(done.id, user_id=3, guild_id=2, channel_id=20),
        env.service.extend(done.id, user_id=3, guild_id=2, channel_id=20),
    ):
        with pytest.raises(NotFound):
            await child
    with pytest.raises(NotFound):
        env.service.reserve_extend(done.id, user_id=3, guild_id=2, channel_id=20)
    assert len(env.store.history(3, limit=50)) == count  # no row written
    reroll = await env.service.reroll(done.id, user_id=3, guild_id=1, channel_id=10)
    assert reroll.parent_id == done.id  # from the clip's own server a child is still made


async def test_cancel_queued_and_running(make_env) -> None:
    """Owners and moderators cancel waiting and running jobs; others and finished jobs can't."""
    backend = FakeBackend()
    backend.hold()
    env = await make_env(backend, Limits(daily_per_user=5))
    running = await env.submit(user_id=1)
    waiting = await env.submit(user_id=2)
    await env.wait(running.id, "running")
    with pytest.raises(NotAllowed, match="Only the member who asked"):
        await env.service.cancel(waiting.id, user_id=3, guild_id=1)
    cancelled = await env.service.cancel(waiting.id, user_id=3, guild_id=1, moderator=True)
    assert cancelled.status == "cancelled" and env.service.position(waiting.id) is None
    assert env.store.daily_count(2, "2026-11-26") == 0  # refunded
    await env.until(lambda: backend.held)
    cancelled = await env.service.cancel(running.id, user_id=1, guild_id=1)
    assert cancelled.status == "cancelled" and backend.cancels == [running.id]
    assert env.of(running.id, Cancelled) and env.of(waiting.id, Cancelled)
    with pytest.raises(InvalidState, match="already cancelled"):
        await env.service.cancel(running.id, user_id=1, guild_id=1)
    # the slot frees once the backend stops, and the next job runs
    backend.release()
    nxt = await env.submit(user_id=4)
    assert (await env.wait(nxt.id)).status == "done"
    assert not env.of(running.id, JobDone) and env.store.require_job(running.id).output_path is None
    assert not (env.tmp / "outputs" / f"{running.id}.mp4").exists()
    with pytest.raises(NotFound):
        await env.service.cancel("nosuchjob0", user_id=1, guild_id=1)


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
    assert not env.of(first.id, JobFailed) and env.store.daily_count(1, "2026-11-26") == 1

    backend.script(*["requeue"] * (MAX_REQUEUES + 1))
    stubborn = await env.wait((await env.submit(guild_id=3, user_id=3)).id)
    assert stubborn.status == "done" and stubborn.attempts == 1
    assert stubborn.error_kind == "crash" and len(env.of(stubborn.id, Started)) == MAX_REQUEUES + 2


async def test_oom_is_final_with_a_clear_reason_and_refund(make_env) -> None:
    """An OOM (the worker already retried it degraded in process) is not queued again: the job fails at once with a clear reason and its daily count back; a crash after it still gets its one retry."""
    backend = FakeBackend()
    env = await make_env(backend, Limits(daily_per_user=3))
    backend.script("oom")
    job = await env.submit()
    failed = await env.wait(job.id)
    assert failed.status == "failed" and failed.attempts == 1 and failed.error_kind == "oom"
    assert [r.degraded for r in backend.requests] == [False]  # one run, no second degraded
    assert "ran out of memory" in failed.error and "lighter settings" in failed.error
    assert env.of(job.id, JobFailed)[0].reason == failed.error
    assert not [e for e in env.of(job.id, Queued) if e.retry]
    assert env.store.daily_count(100, "2026-11-26") == 0
    assert [j.id for j in env.store.undelivered(("failed",))] == [job.id]
    backend.script("crash")
    crashed = await env.wait((await env.submit()).id)
    assert crashed.status == "done" and crashed.attempts == 1 and crashed.error_kind == "crash"


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


async def test_resume_requeues_in_order_and_reports_undelivered(tmp_path: Path) -> None:
    """After a restart: running jobs are back in the queue (no attempt counted: it never reported a step), queued jobs keep their order, done-but-undelivered results are reported."""
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
    assert report.requeued[0].attempts == 0 and report.requeued[0].status == "queued"
    assert [j.id for j in report.undelivered] == [undelivered.id]
    expected = FairQueue()
    for job in jobs:
        expected.push(job.id, queue_key(job.guild_id, job.user_id), job.user_id)
    assert second.service.scheduler.queue.order() == expected.order()
    await second.close()


async def test_resume_counts_an_attempt_only_once_generation_started(tmp_path: Path) -> None:
    """Restarts while the backend still loads the model (more than MAX_INTERRUPTIONS of them) cost the job no attempt and never fail it; a restart after a denoise step costs one."""
    job_id = None
    for _ in range(MAX_INTERRUPTIONS + 2):
        backend = FakeBackend(ready=False)  # reports Progress(stage="load"), then waits
        backend.hold()
        env = Env(tmp_path, backend, None)
        report = await env.start()
        if job_id is None:
            job_id = (await env.submit()).id
        else:
            assert [j.id for j in report.interrupted] == [job_id] and report.failed == []
            assert report.interrupted[0].attempts == 0
        await env.until(
            lambda env=env, job_id=job_id: env.store.require_job(job_id).stage == "load"
        )
        await env.close()

    backend = FakeBackend(steps=10_000, step_delay=0.05)
    env = Env(tmp_path, backend, None)
    report = await env.start()
    assert report.interrupted[0].attempts == 0
    await env.until(lambda: env.store.require_job(job_id).stage == "denoise")
    await env.close()
    env = Env(tmp_path, FakeBackend(), None)
    report = await env.start()
    assert [j.id for j in report.interrupted] == [job_id]
    assert report.interrupted[0].attempts == 1
    assert (await env.wait(job_id)).status == "done"
    await env.close()


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
        assert after.service.scheduler.queue.order() == expected.order()
        # and every job then runs exactly once
        backend.slots = 4
        after.service.scheduler.kick()
        await after.until(lambda: len(after.store.jobs_with_status("done")) == len(ids), 30)
        assert sorted(r.job_id for r in backend.requests) == sorted(ids)
        await after.close()

    asyncio.run(reopen())


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
            lambda: any(e.stage == "denoise" for e in env.of(a1.id, JobProgress)), timeout=90
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
