"""Positions and ETAs (bot/estimates.py through JobService)."""

from __future__ import annotations

import pytest

from bot.admission import Limits
from bot.events import JobProgress, PositionChanged
from tests.jobs_backend import FakeBackend


async def test_positions_etas_and_summary(make_env) -> None:
    """Waiting jobs know their position and ETA; moves are published; /queue has a summary."""
    backend = FakeBackend()
    backend.hold()
    backend.set_ready(False)
    env = await make_env(backend, Limits(pending_per_user=5), default_gen_seconds=30.0)
    assert env.service.warming_up
    jobs = [await env.submit(user_id=1, prompt=f"p{i}") for i in range(3)]
    await env.wait(jobs[0].id, "running")
    await env.until(lambda: env.of(jobs[0].id, JobProgress))
    assert env.of(jobs[0].id, JobProgress)[0].stage == "load"
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
    # jobs[1] starts (and is held)
    await env.service.cancel(jobs[0].id, user_id=1, guild_id=jobs[0].guild_id)
    await env.until(lambda: [e.position for e in env.of(jobs[2].id, PositionChanged)][-1:] == [1])
    moves = [e.position for e in env.of(jobs[2].id, PositionChanged)]
    assert moves in ([2, 1], [1])  # it was told 3 when it was queued
    backend.release()
    await env.wait(jobs[2].id)
    assert env.service.history(1, limit=2)[0].id == jobs[2].id
