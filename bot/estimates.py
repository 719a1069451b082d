"""Positions and ETAs of jobs, and the PositionChanged events that keep them on screen.

Owns: the typical generation time per preset (median of recent runs, from the store), the
ETA of each waiting or running job (each pool's dispatch order played over that pool's
slots), which gen-time key each queued job uses, and the paced publishing of positions.

Imports: bot.events, bot.scheduler, bot.store. No discord, no torch.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import statistics
from collections.abc import Callable
from dataclasses import dataclass

from bot.events import EventBus, PositionChanged, Queued
from bot.scheduler import Scheduler, queue_key
from bot.store import Job, JobStatus, Store


def gen_key(job: Job) -> str:
    """The key its typical generation time is kept under: its preset."""
    return job.preset or "default"


@dataclass(frozen=True, slots=True)
class QueuedJobInfo:
    job: Job
    position: int | None  # None while running
    eta: float | None


@dataclass(frozen=True, slots=True)
class QueueSummary:
    user_jobs: list[QueuedJobInfo]  # the member's pending jobs, oldest first
    guild_waiting: int
    guild_running: int
    total_waiting: int
    total_running: int
    warming_up: bool


class Estimates:
    """ETAs and positions over one scheduler; publishes Queued and PositionChanged."""

    def __init__(
        self,
        store: Store,
        scheduler: Scheduler,
        events: EventBus,
        *,
        clock: Callable[[], float],
        default_gen_seconds: float = 60.0,
        position_interval: float | None = 2.0,  # None: no PositionChanged events
    ) -> None:
        self.store = store
        self.scheduler = scheduler
        self.events = events
        self.clock = clock
        self.default_gen_seconds = default_gen_seconds
        self.position_interval = position_interval
        self._keys: dict[str, str] = {}  # queued job -> key of its typical duration
        self._gen_times: dict[str, float] = {}
        self._last_positions: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    # -- what the runner and the facade tell us ----------------------------------------

    def queued(self, job: Job, *, retry: bool = False) -> None:
        """`job` is in the generation queue now (or a CPU job started): tell listeners."""
        position = self.scheduler.position(job.id)
        if position is not None:
            self._last_positions[job.id] = position  # told in Queued: no PositionChanged
        self.events.publish(Queued(job, position, self.eta(job.id), retry=retry))

    def waiting(self, job: Job) -> None:
        """Remember the gen-time key of a job entering the queue."""
        self._keys[job.id] = gen_key(job)

    def forget(self, job_id: str) -> None:
        self._keys.pop(job_id, None)

    def record_gen_time(self, job: Job, seconds: float, at: float) -> None:
        key = gen_key(job)
        self.store.record_gen_time(key, seconds, at)
        self._gen_times.pop(key, None)

    def queue_changed(self) -> None:
        """The scheduler's queue moved: publish the new positions soon (paced)."""
        if self.position_interval is None or self._closing:
            return
        if self._task is None or self._task.done():
            # No running loop (resume() called outside one): nobody is listening yet.
            with contextlib.suppress(RuntimeError):
                self._task = asyncio.get_running_loop().create_task(self._publish_later())

    async def _publish_later(self) -> None:
        await asyncio.sleep(self.position_interval or 0)
        self._task = None
        etas = self.etas()
        positions = self.scheduler.queue.positions()
        for job_id, position in positions.items():
            if self._last_positions.get(job_id) == position:
                continue
            job = self.store.get_job(job_id)
            if job is not None and job.status == JobStatus.QUEUED:
                self.events.publish(PositionChanged(job, position, etas.get(job_id)))
        self._last_positions = positions

    # -- estimates ---------------------------------------------------------------------

    def position(self, job_id: str) -> int | None:
        """1-based place in the generation queue; None when not waiting for the GPU."""
        return self.scheduler.position(job_id)

    def eta(self, job_id: str, *, running: bool = False) -> float | None:
        """Seconds until the clip should be done (queued or running); None otherwise.
        `running`: the job runs outside the scheduler (a CPU job)."""
        if running or job_id in self.scheduler.running:
            job = self.store.get_job(job_id)
            return self.remaining(job) if job is not None else None
        if job_id not in self.scheduler.queue:
            return None
        return self.etas(until=job_id).get(job_id)

    def typical_seconds(self, key: str) -> float:
        if key not in self._gen_times:
            recent = self.store.recent_gen_times(key)
            self._gen_times[key] = statistics.median(recent) if recent else self.default_gen_seconds
        return self._gen_times[key]

    def remaining(self, job: Job) -> float | None:
        if job.status != JobStatus.RUNNING:
            return None
        typical = self.typical_seconds(gen_key(job))
        elapsed = max(self.clock() - (job.started_at or self.clock()), 0.0)
        if job.stage == "denoise" and job.progress_step and job.progress_total:
            done = job.progress_step / job.progress_total
            return max(elapsed / done - elapsed, 0.0)
        return max(typical - elapsed, 0.0)

    def etas(self, until: str | None = None) -> dict[str, float]:
        """Seconds until each waiting job is done: each pool's dispatch order played over
        that pool's slots, each job taking its preset's typical time."""
        queue = self.scheduler.queue
        if until is not None:
            pools = [queue.pool_of(until)] if until in queue else []
        else:
            pools = queue.pools()
        out: dict[str, float] = {}
        for pool in pools:
            running = self.scheduler.running_in(pool)
            remaining = []
            for running_id in running:
                job = self.store.get_job(running_id)
                if job is not None:
                    remaining.append(self.remaining(job) or 0.0)
            slots = max(1, len(running) + max(self.scheduler.free_slots(pool), 0))
            free_at = sorted(remaining)[:slots] + [0.0] * max(0, slots - len(remaining))
            heapq.heapify(free_at)
            for job_id in queue.order(pool):
                typical = self.typical_seconds(self._keys.get(job_id, "default"))
                start = heapq.heappop(free_at)
                out[job_id] = start + typical
                heapq.heappush(free_at, start + typical)
                if job_id == until:
                    break
        return out

    def queue_summary(
        self, guild_id: int | None, user_id: int, *, warming_up: bool
    ) -> QueueSummary:
        """The member's pending jobs with positions and ETAs, and the queue around them."""
        mine = self.store.pending_jobs_for_user(user_id)
        etas = self.etas() if mine else {}
        key = queue_key(guild_id, user_id)
        guild_running = 0
        for running_id in self.scheduler.running:
            job = self.store.get_job(running_id)
            if job is not None and queue_key(job.guild_id, job.user_id) == key:
                guild_running += 1
        infos = [
            QueuedJobInfo(
                job,
                self.position(job.id),
                etas.get(job.id) if job.status == JobStatus.QUEUED else self.remaining(job),
            )
            for job in mine
        ]
        return QueueSummary(
            user_jobs=infos,
            guild_waiting=self.scheduler.queue.waiting_in(key),
            guild_running=guild_running,
            total_waiting=len(self.scheduler.queue),
            total_running=len(self.scheduler.running),
            warming_up=warming_up,
        )
