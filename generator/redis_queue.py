"""SAQ as the Redis transport uses it: the queue both sides share (JSON only, quiet while Redis
is away, a sweep that judges deadness by heartbeats alone) and the worker's SAQ `Worker`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

from redis import asyncio as aioredis
from redis.exceptions import RedisError
from saq import Worker
from saq.job import TERMINAL_STATUSES, Job, Status
from saq.queue.redis import RedisQueue
from saq.utils import now as saq_now

from generator.redis_common import SWEPT, UNREACHABLE, RedisTimings, dump_json, load_json

log = logging.getLogger("zoetrope.redis")


class ZoetropeQueue(RedisQueue):
    """A SAQ RedisQueue with JSON (de)serialisation pinned and two behaviours changed.

    - `dequeue` waits (with back-off) instead of raising while Redis is unreachable: SAQ's
      worker loop would otherwise spin on a refused connection at 100 % CPU.
    - `sweep` decides deadness from heartbeats only, finishes a dead job as aborted without
      SAQ's own retry (the bot is the only scheduler: it retries through its fair queue), does
      not sweep a job that a worker has just taken but not yet marked active (SAQ would), and
      does nothing until Redis has been reachable for a whole heartbeat timeout.
    - `_update` never brings an ended job back (SAQ issue #277): SAQ's worker marks a job
      active with a blind SET of the whole record, so a job swept between the worker's BLMOVE
      and that SET came back to life as active, outside the active list, and ran although the
      bot had already given up on it. Here the write happens only while the stored record is
      still there and not ended; `is_current` tells the worker whether its write took.
    """

    def __init__(self, redis: aioredis.Redis, name: str, *, timings: RedisTimings) -> None:
        super().__init__(redis, name=name, dump=dump_json, load=load_json)
        self.timings = timings
        self.reachable_since: float | None = None  # monotonic; None while Redis fails
        self._backoff = 0.1
        self._update_script: Any = None

    async def _update(self, job: Job, status: Status | None = None, **kwargs: Any) -> None:
        if self._update_script is None:
            self._update_script = self.redis.register_script(
                """
                local current = redis.call('GET', KEYS[1])
                if not current then return 0 end
                local ok, record = pcall(cjson.decode, current)
                if ok and type(record) == 'table' then
                    local status = record['status']
                    if status == 'aborted' or status == 'complete' or status == 'failed' then
                        return 0
                    end
                end
                redis.call('SET', KEYS[1], ARGV[1])
                return 1
                """
            )
        if not status:  # SAQ's rule: a heartbeat keeps the stored status
            stored = await self.job(job.key)
            if stored is None:
                return
            status = stored.status
        job.status = status
        written = await self._update_script(
            keys=[job.id], args=[self.serialize(job)], client=self.redis
        )
        if written:
            await self.notify(job)
        else:
            log.info("job %s ended meanwhile (swept or lost); not marking it %s", job.key, status)

    async def is_current(self, job: Job, worker_id: str) -> bool:
        """Whether the stored record still says `job` is active on `worker_id` (not swept,
        not lost, not taken over): checked before a worker starts and before it publishes."""
        stored = await self.job(job.key)
        return (
            stored is not None
            and stored.status in (Status.ACTIVE, Status.ABORTING)
            and stored.worker_id == worker_id
        )

    def note_reachable(self, reachable: bool) -> None:
        if not reachable:
            self.reachable_since = None
        elif self.reachable_since is None:
            self.reachable_since = time.monotonic()

    @property
    def settled(self) -> bool:
        """Redis has answered for at least a heartbeat timeout without a failure."""
        since = self.reachable_since
        return since is not None and time.monotonic() - since >= self.timings.heartbeat_timeout

    async def dequeue(self, timeout: float = 0.0, poll_interval: float = 0.0) -> Job | None:
        try:
            job = await super().dequeue(timeout, poll_interval)
        except UNREACHABLE as exc:
            if self.reachable_since is not None or self._backoff == 0.1:
                log.warning("queue %s: Redis unreachable (%s); waiting", self.name, exc)
            self.note_reachable(False)
            await asyncio.sleep(self._backoff)
            self._backoff = min(self._backoff * 2, 5.0)
            return None
        except (ValueError, TypeError) as exc:
            # A record that is not a job of ours: leave it to the sweep (it drops it).
            log.error("queue %s: unreadable job record (%s)", self.name, exc)
            return None
        self.note_reachable(True)
        self._backoff = 0.1
        return job

    async def sweep(self, lock: int = 60, abort: float = 5.0) -> list[str]:
        if not self.settled:
            return []
        if self._cleanup_script is None:
            # The same lock-then-list script as SAQ's: one sweeper per `lock` seconds.
            self._cleanup_script = self.redis.register_script(
                """
                local id_jobs = {}
                if redis.call('EXISTS', KEYS[1]) == 0 then
                    redis.call('SETEX', KEYS[1], ARGV[1], 1)
                    for i, v in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do
                        id_jobs[i] = {v, redis.call('GET', v)}
                    end
                end
                return id_jobs
                """
            )
        try:
            id_jobs = await self._cleanup_script(
                keys=[self._sweep, self._active], args=[max(1, int(lock))], client=self.redis
            )
        except UNREACHABLE:
            self.note_reachable(False)
            return []
        swept: list[str] = []
        for job_id, job_bytes in id_jobs:
            job_id = job_id.decode() if isinstance(job_id, bytes) else str(job_id)
            try:
                job = self.deserialize(job_bytes)
            except (ValueError, TypeError, KeyError):
                job = None
            if job is None:
                async with self.redis.pipeline(transaction=True) as pipe:
                    await (
                        pipe.lrem(self._active, 0, job_id).zrem(self._incomplete, job_id).execute()
                    )
                log.warning("swept a missing or unreadable job record %s", job_id)
                swept.append(job_id)
                continue
            if job.status in TERMINAL_STATUSES:
                await self.redis.lrem(self._active, 0, job_id)  # finished; only the list lagged
                continue
            reason = self._dead_reason(job)
            if reason is not None:
                log.warning("sweeping job %s: %s", job.key, reason)
                await self.finish(job, Status.ABORTED, error=f"{SWEPT}: {reason}")
                swept.append(job_id)
        return swept

    def _dead_reason(self, job: Job) -> str | None:
        now_ms = saq_now()
        if job.status in (Status.ACTIVE, Status.ABORTING):
            if job.heartbeat and now_ms - job.touched > job.heartbeat * 1000:
                return f"no heartbeat for {(now_ms - job.touched) / 1000:.0f} s"
            if job.timeout and now_ms - job.started > job.timeout * 1000:
                return f"ran past its {job.timeout} s timeout"
            return None
        # Taken from the queue (it is in the active list) but never marked active: either the
        # worker is between BLMOVE and its first update (milliseconds), or it died there.
        since = max(job.touched, job.queued)
        limit = max(job.heartbeat, self.timings.heartbeat_timeout) * 1000
        if now_ms - since > limit:
            return "taken from the queue but never started"
        return None

    # SAQ writes these with SETEX, which redis-py 8 deprecates (a DeprecationWarning on every
    # call); the same writes with SET ... EX.

    async def _finish(
        self, job: Job, status: Status, *, result: Any = None, error: str | None = None
    ) -> None:
        job_id = job.id
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.lrem(self._active, 1, job_id).zrem(self._incomplete, job_id)
            if job.ttl > 0:
                pipe.set(job_id, self.serialize(job), ex=job.ttl)
            elif job.ttl == 0:
                pipe.set(job_id, self.serialize(job))
            else:
                pipe.delete(job_id)
            await pipe.execute()
        await self.notify(job)

    async def write_worker_info(self, worker_id: str, info: Any, ttl: int) -> None:
        current = saq_now()
        key = self.namespace(f"worker_info:{worker_id}")
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(key, json.dumps(info), ex=ttl)
            pipe.zremrangebyscore(self._stats, 0, current)
            pipe.zadd(self._stats, {key: current + ttl * 1000})
            pipe.expire(self._stats, ttl)
            await pipe.execute()

    async def abort(self, job: Job, error: str, ttl: float = 5) -> None:
        async with self._op_sem:
            job.status = Status.ABORTING
            job.error = error
            async with self.redis.pipeline(transaction=True) as pipe:
                dequeued, *_ = await (
                    pipe.lrem(self._queued, 0, job.id)
                    .zrem(self._incomplete, job.id)
                    .set(job.id, self.serialize(job))
                    .set(job.abort_id, error, ex=max(1, int(ttl)))
                    .publish(job.id, job.status)
                    .execute()
                )
            if dequeued:
                await self.finish(job, Status.ABORTED, error=error)
                await self.redis.delete(job.abort_id)
            else:
                await self.redis.lrem(self._active, 0, job.id)

    async def pull_back(self, key: str) -> bool:
        """Take a job that no worker has taken yet out of the queue; True if it was there."""
        job_id = self.job_id(key)
        async with self.redis.pipeline(transaction=True) as pipe:
            removed, _ = (
                await pipe.lrem(self._queued, 0, job_id).zrem(self._incomplete, job_id).execute()
            )
        return bool(removed)

    async def finish_pulled(self, key: str, error: str) -> None:
        """Mark a job taken back by `pull_back` as aborted (an unreadable record is deleted)."""
        try:
            job = await self.job(key)
        except (ValueError, TypeError, KeyError):
            await self.redis.delete(self.job_id(key))
            return
        if job is not None:
            await self.finish(job, Status.ABORTED, error=error)

    async def close(self) -> None:
        """Drop the queue's pub/sub helper without opening a connection to do so."""
        if self._pubsub._daemon_task is not None:
            with contextlib.suppress(*UNREACHABLE, RedisError):
                await self._pubsub.close()


class QuietWorker(Worker):
    """SAQ's worker, quiet about Redis outages in its upkeep tasks (SAQ logs a traceback per
    task and second; our registration loop says it once)."""

    async def abort(self, abort_threshold: float) -> None:
        with contextlib.suppress(*UNREACHABLE):
            await super().abort(abort_threshold)

    async def schedule(self, lock: int = 1) -> None:
        with contextlib.suppress(*UNREACHABLE):
            await super().schedule(lock)

    async def worker_info(self, ttl: int = 60) -> Any:
        with contextlib.suppress(*UNREACHABLE):
            return await super().worker_info(ttl)
        return None
