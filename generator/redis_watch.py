"""The watch over the Redis transport, bot side: one task (`Watcher.run`) that reads the event
streams of the attempts in SAQ, looks at their SAQ jobs and the worker list every
`poll_every`, sweeps for jobs whose worker stopped sending heartbeats, resends cancels, takes
back jobs that no live worker serves, and cancels attempts a previous run of the bot left.

It works on the backend through `Host` (what generator/redis_backend.py's `RedisBackend`
offers it), so this module does not import the backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from redis import asyncio as aioredis
from redis.exceptions import RedisError
from saq.job import TERMINAL_STATUSES, Status

from generator.protocol import BackendState, Done, Failed, Progress
from generator.redis_attempts import (
    Attempt,
    AttemptBook,
    crash_reason,
    new_attempt_key,
    read_capped,
    write_atomic,
)
from generator.redis_common import (
    AUTH_FAILED,
    DATA_TTL_S,
    NEVER_STARTED,
    SWEPT,
    UNREACHABLE,
    Keys,
    RedisTimings,
    decode_entry,
    down_detail,
    entry_worker,
)
from generator.redis_fleet import Fleet
from generator.redis_queue import ZoetropeQueue

log = logging.getLogger("zoetrope.redis")


class Host(Protocol):
    """What the watcher needs of the backend it watches for."""

    keys: Keys
    timings: RedisTimings
    fleet: Fleet
    attempts: AttemptBook
    max_input_bytes: int
    max_output_bytes: int

    @property
    def client(self) -> aioredis.Redis | None: ...

    @property
    def closing(self) -> bool: ...

    @property
    def detail(self) -> str: ...

    def queue(self, served: str) -> ZoetropeQueue: ...

    def queues(self) -> Iterable[ZoetropeQueue]: ...

    def finish(self, attempt: Attempt, event: Done | Failed) -> None: ...

    def grant_slots(self) -> None: ...

    def set_state(self, state: BackendState, detail: str) -> None: ...

    def changed(self) -> None: ...


class Watcher:
    def __init__(self, host: Host) -> None:
        self.host = host
        self.wake_key = host.keys.wake(uuid.uuid4().hex[:12])
        self._wake_last = "0-0"
        self._next_poll = 0.0
        self._next_sweep = 0.0
        self._orphans_done = False

    async def _on_entry(self, attempt: Attempt, fields: dict[bytes, bytes]) -> None:
        """One entry of an attempt's stream. Redis is not trusted: an entry counts only when it
        comes from the worker SAQ handed the attempt to, and a malformed one from that worker
        ends this job alone, with the reason (the caller advances the read position either
        way, so a bad entry is read once and never wedges the other jobs)."""
        sender = entry_worker(fields)
        owner = await self._owner(attempt)
        if owner is None or sender != owner:
            if not attempt.foreign_noted:
                attempt.foreign_noted = True
                log.warning(
                    "job %s: ignoring an event from worker %r; the attempt was handed to %r",
                    attempt.request.job_id,
                    sender,
                    owner,
                )
            return
        attempt.worker = owner
        try:
            event = decode_entry(fields)
        except ValueError as exc:
            reason = str(exc)[:300]
            log.warning(
                "job %s: unreadable event from worker %s (%s); failing the job",
                attempt.request.job_id,
                owner,
                reason,
            )
            with contextlib.suppress(*UNREACHABLE, RedisError):
                await self._mark_stale(attempt)
            self.host.finish(
                attempt,
                Failed("error", f"The worker sent an event that could not be read: {reason}"),
            )
            return
        if isinstance(event, Progress):
            attempt.started = True
            attempt.events.put_nowait(event)
        elif isinstance(event, Failed):
            self.host.finish(attempt, Failed(event.kind, event.message[:2000]))
        else:
            self.host.finish(attempt, await self._collect_output(attempt, event))

    async def _owner(self, attempt: Attempt) -> str | None:
        """The worker SAQ handed the attempt to: the `worker_id` its worker wrote into the job
        record when it marked it active (None while no worker has)."""
        if attempt.owner is None and attempt.served is not None:
            try:
                job = await self.host.queue(attempt.served).job(attempt.key)
            except (ValueError, TypeError, KeyError):
                job = None
            worker_id = getattr(job, "worker_id", None)
            if isinstance(worker_id, str) and 0 < len(worker_id) <= 100:
                attempt.owner = worker_id
        return attempt.owner

    async def _collect_output(self, attempt: Attempt, done: Done) -> Done | Failed:
        """Fetch the MP4 the worker left in Redis and write it where the request wants it."""
        assert self.host.client is not None
        key = self.host.keys.output(attempt.key)
        size = await self.host.client.strlen(key)
        if size == 0:
            return Failed(
                "crash", "The finished clip was lost in Redis before it could be fetched."
            )
        if size > self.host.max_output_bytes:
            await self.host.client.delete(key)
            return Failed(
                "error",
                f"The clip is {size} bytes, over the {self.host.max_output_bytes} byte limit.",
            )
        data = await self.host.client.get(key)
        if not data:
            return Failed(
                "crash", "The finished clip was lost in Redis before it could be fetched."
            )
        path = Path(attempt.request.output_path)
        try:
            await asyncio.to_thread(write_atomic, path, data)
        except OSError as exc:
            return Failed("error", f"Cannot write the clip to {path}: {exc.strerror or exc}")
        with contextlib.suppress(*UNREACHABLE, RedisError):
            await self.host.client.delete(
                key, self.host.keys.input(attempt.key), self.host.keys.events(attempt.key)
            )
        facts = dataclasses.replace(done.facts, worker=attempt.worker, bytes=len(data))
        return Done(str(path), facts)

    # -- the pump -----------------------------------------------------------------------------

    async def run(self) -> None:
        """One task does all the watching: reads event streams, looks at job states and the
        worker list, sweeps, resends cancels. It survives Redis going away."""
        backoff = 0.2
        while not self.host.closing:
            try:
                if not self._orphans_done:
                    await self._cancel_orphans()
                    self._orphans_done = True
                now = time.monotonic()
                if now >= self._next_poll:
                    self._next_poll = now + self.host.timings.poll_every
                    await self._refresh_workers()
                    await self._check_jobs()
                    await self.send_cancels([a for a in self.host.attempts if a.cancel_requested])
                if now >= self._next_sweep:
                    self._next_sweep = now + self.host.timings.sweep_every
                    await self._sweep()
                await self._read_events(block_ms=int(min(1.0, self.host.timings.poll_every) * 1000))
                backoff = 0.2
            except asyncio.CancelledError:
                raise
            except UNREACHABLE as exc:
                self.note_down(exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            except Exception:
                # A server-side error (a key of the wrong type) or a bug: never stop watching,
                # or every job in flight would hang.
                log.exception("Redis backend: unexpected error; continuing")
                await asyncio.sleep(1.0)

    def note_down(self, exc: BaseException) -> None:
        """Redis did not answer: no slots until it does; the pump keeps trying. A refused
        password is said as such (redis-py raises it as a ConnectionError)."""
        detail = down_detail(exc)
        if self.host.fleet.up or self.host.detail != detail:
            if detail == AUTH_FAILED:
                log.error(
                    "Redis authentication failed (%s): check the password in ZOETROPE_REDIS_URL;"
                    " no new jobs until Redis accepts it",
                    exc,
                )
            else:
                log.warning("Redis unreachable (%s): no new jobs until it answers", exc)
        self.host.fleet.down()
        for queue in self.host.queues():
            queue.note_reachable(False)
        self._next_poll = 0.0
        if not self.host.closing:
            self.host.set_state(BackendState.STARTING, detail)
        self.host.changed()

    async def _refresh_workers(self) -> None:
        assert self.host.client is not None
        changed = await self.host.fleet.refresh(self.host.client)
        for queue in self.host.queues():
            queue.note_reachable(True)
        self.host.set_state(*self.host.fleet.status())
        self.host.grant_slots()
        if changed:
            self.host.changed()

    async def _check_jobs(self) -> None:
        """Find attempts whose SAQ job ended without a final event (dead worker, lost data),
        and attempts stuck in a SAQ queue that no live worker serves."""
        assert self.host.client is not None
        enqueued = [a for a in self.host.attempts if a.phase == "enqueued"]
        if not enqueued:
            return
        raws = await self.host.client.mget(
            [self.host.queue(a.served).job_id(a.key) for a in enqueued]
        )  # type: ignore[arg-type]
        served = self.host.fleet.served()
        for attempt, raw in zip(enqueued, raws, strict=True):
            if attempt.finished:
                continue
            queue = self.host.queue(attempt.served)  # type: ignore[arg-type]
            try:
                job = queue.deserialize(raw)
            except (ValueError, TypeError, KeyError):
                job = None
            if job is None or job.status in TERMINAL_STATUSES:
                await self._drain(attempt)  # the final event may have come with the ending
                if not attempt.finished:
                    await self._mark_stale(attempt)
                    if job is not None and (job.error or "").startswith(
                        f"{SWEPT}: {NEVER_STARTED}"
                    ):
                        # SAQ #277: swept between dequeue and active. It never ran: give it
                        # back at the head of its queue without counting an attempt.
                        log.warning(
                            "job %s: swept before its worker started it; queueing it again",
                            attempt.request.job_id,
                        )
                        self.host.finish(
                            attempt,
                            Failed(
                                "requeue",
                                "The worker that took this job stalled before it started.",
                            ),
                        )
                    else:
                        self.host.finish(attempt, Failed("crash", crash_reason(job)))
            elif job.status in (Status.QUEUED, Status.NEW) and not served.get(attempt.served or ""):
                await self._maybe_pull_back(attempt, queue)
            else:
                attempt.alone_since = None

    async def _maybe_pull_back(self, attempt: Attempt, queue: ZoetropeQueue) -> None:
        """A job waiting in SAQ whose workers all left: after a heartbeat timeout take it back
        and wait for a slot again (it never ran, so this costs the job no attempt)."""
        now = time.monotonic()
        if attempt.alone_since is None:
            attempt.alone_since = now
            return
        if now - attempt.alone_since < self.host.timings.heartbeat_timeout:
            return
        if await queue.pull_back(attempt.key):
            log.warning(
                "job %s: no live worker serves %s; waiting for one",
                attempt.request.job_id,
                attempt.served,
            )
            old_key = attempt.key
            await queue.finish_pulled(old_key, "no worker")
            try:
                attempt.image = await asyncio.to_thread(
                    read_capped, attempt.request.image_path, self.host.max_input_bytes
                )
            except ValueError as exc:
                self.host.finish(attempt, Failed("bad_request", str(exc)))
                return
            self.host.attempts.rekey(attempt, new_attempt_key(attempt.request.job_id))
            attempt.phase, attempt.last_id, attempt.alone_since = "waiting", "0-0", None
            if self.host.fleet.default_served is None and attempt.request.preset is None:
                attempt.served = None
            attempt.events.put_nowait(Progress(0, 0, "load"))
            await self.host.client.delete(self.host.keys.input(old_key))  # type: ignore[union-attr]
        attempt.alone_since = None

    async def _drain(self, attempt: Attempt) -> None:
        assert self.host.client is not None
        start = "-" if attempt.last_id == "0-0" else f"({attempt.last_id}"
        for entry_id, fields in await self.host.client.xrange(
            self.host.keys.events(attempt.key), start, "+"
        ):
            await self._on_entry(attempt, fields)
            attempt.last_id = entry_id.decode()
            if attempt.finished:
                return

    async def _read_events(self, block_ms: int) -> None:
        assert self.host.client is not None
        streams: dict[str, str] = {self.wake_key: self._wake_last}
        by_stream: dict[str, Attempt] = {}
        for attempt in self.host.attempts:
            if attempt.phase == "enqueued":
                name = self.host.keys.events(attempt.key)
                streams[name] = attempt.last_id
                by_stream[name] = attempt
        reply = await self.host.client.xread(streams, count=100, block=block_ms)
        for stream, entries in reply or []:
            name = stream.decode()
            if name == self.wake_key:
                self._wake_last = entries[-1][0].decode()
                continue
            attempt = by_stream.get(name)
            for entry_id, fields in entries:
                if attempt is None or attempt.finished:
                    break
                await self._on_entry(attempt, fields)
                attempt.last_id = entry_id.decode()

    async def wake(self) -> None:
        """Make the pump re-read its stream list now (a job was just handed to SAQ)."""
        if self.host.client is None:
            return
        with contextlib.suppress(*UNREACHABLE):
            async with self.host.client.pipeline(transaction=False) as pipe:
                await (
                    pipe.xadd(self.wake_key, {"w": b"1"}, maxlen=16, approximate=True)
                    .expire(self.wake_key, 3600)
                    .execute()
                )

    async def send_cancels(self, attempts: Iterable[Attempt], *, force: bool = False) -> None:
        """Tell workers to stop these attempts; pull back those no worker has taken yet."""
        assert self.host.client is not None
        for attempt in attempts:
            if attempt.cancel_sent or (attempt.phase not in ("enqueued", "finished")):
                continue
            if attempt.finished and not force:
                continue
            await self.host.client.set(self.host.keys.cancel(attempt.key), b"1", ex=DATA_TTL_S)
            await self.host.client.publish(self.host.keys.cancel_channel, attempt.key)
            attempt.cancel_sent = True
            if attempt.served is not None and await self.host.queue(attempt.served).pull_back(
                attempt.key
            ):
                # Nobody took it: end it here instead of waiting for a worker to refuse it.
                queue = self.host.queue(attempt.served)
                await queue.finish_pulled(attempt.key, "cancelled")
                await self.host.client.delete(self.host.keys.input(attempt.key))
                self.host.finish(attempt, Failed("cancelled", "Cancelled before it started."))

    async def _mark_stale(self, attempt: Attempt) -> None:
        """Set the cancel key of an attempt the bot gives up on, so a worker still holding it
        (presumed dead, or stalled before it started) stops and publishes nothing."""
        assert self.host.client is not None
        await self.host.client.set(self.host.keys.cancel(attempt.key), b"1", ex=DATA_TTL_S)
        await self.host.client.publish(self.host.keys.cancel_channel, attempt.key)

    async def _sweep(self) -> None:
        names = {w.served for w in self.host.fleet.workers.values()}
        names.update(a.served for a in self.host.attempts if a.phase == "enqueued" and a.served)
        for name in sorted(names):
            await self.host.queue(name).sweep(lock=self.host.timings.sweep_every)

    async def _cancel_orphans(self) -> None:
        """Jobs handed out by a previous run of the bot: the job layer requeues them on
        start-up (resume), so their old attempts are cancelled to free the workers."""
        assert self.host.client is not None
        names: set[str] = set()
        async for key in self.host.client.scan_iter(
            match=f"saq:{self.host.keys.ns}:*:incomplete", count=100
        ):
            name = self.host.keys.served_from_incomplete(key.decode("utf-8", "replace"))
            if name:
                names.add(name)
        for name in sorted(names):
            queue = self.host.queue(name)
            for raw_id in await self.host.client.zrange(queue._incomplete, 0, -1):
                key = queue.job_key_from_id(raw_id.decode("utf-8", "replace"))
                if self.host.attempts.has_key(key):
                    continue
                log.info("cancelling job attempt %s left by a previous run of the bot", key)
                await self.host.client.set(self.host.keys.cancel(key), b"1", ex=DATA_TTL_S)
                await self.host.client.publish(self.host.keys.cancel_channel, key)
                if await queue.pull_back(key):
                    await queue.finish_pulled(key, "cancelled: bot restarted")
                    await self.host.client.delete(self.host.keys.input(key))

    # -- internals: misc ----------------------------------------------------------------------
