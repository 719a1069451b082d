"""Scale-out, the bot's side: `RedisBackend`, the `Backend` (generator/protocol.py) that runs
jobs on GPU workers on other machines through Redis with SAQ (DESIGN.md §7).

Setting `ZOETROPE_REDIS_URL` makes the bot use it. Each GPU machine runs
`python main.py worker --redis URL --preset NAME` (generator/redis_worker.py). Workers only
need an outbound connection to Redis. The keys, the failure handling and what may cross Redis
are described in generator/redis_common.py, which both sides share.

The transport's bot side, by concern:
- this module: the client the bot calls (submit, cancel, capacity, lifecycle) and the granting
  of free slots to waiting attempts;
- generator/redis_fleet.py: the live workers and the routing of presets to served names;
- generator/redis_watch.py: the one task that reads event streams, job states, sweeps for
  dead workers and resends cancels;
- generator/redis_attempts.py: the attempts in flight and their input/output files.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from redis import asyncio as aioredis
from saq.job import Job

from generator.protocol import (
    BackendClosed,
    BackendState,
    Done,
    Event,
    Failed,
    GenerationRequest,
    Progress,
)
from generator.redis_attempts import Attempt, AttemptBook, new_attempt_key, read_capped
from generator.redis_common import (
    DATA_TTL_S,
    DEFAULT_NAMESPACE,
    GENERATE,
    JOB_ID,
    JOB_TTL_S,
    MAX_INPUT_BYTES,
    MAX_OUTPUT_BYTES,
    UNREACHABLE,
    Keys,
    RedisTimings,
    WorkerInfo,
    check_url,
    connect,
    redacted,
    served_name,
    stop_task,
)
from generator.redis_fleet import Fleet
from generator.redis_queue import ZoetropeQueue
from generator.redis_watch import Watcher

log = logging.getLogger("zoetrope.redis")


class RedisBackend:
    """Runs jobs on remote workers through Redis; the same interface as `LocalBackend`.

    - `capacity(preset=None)`: free slots of live, loaded workers (serving `preset`, or the
      default model, or any), minus the jobs this backend holds. 0 while Redis is unreachable.
    - `route(preset)`: the served name a job of `preset` goes to (None: any worker, when the
      bot's model is "auto" and the job names no preset). The bot's scheduler keeps one fair
      queue per route, so a job is handed over only when a worker serving it has a free slot.
    - `on_change`: called (no arguments, on the event loop) when capacity may have grown: a
      job ended, workers came or went. Settable after construction; the bot wires it to its
      scheduler's kick so a new worker is used at once rather than at the next poll.
    - `submit(request)`: an async generator of Progress..., then one Done or Failed. Leaving the
      loop early cancels the job. If no slot is free when it is called (the scheduler raced a
      worker leaving), it waits for one, yielding `Progress(0, 0, "load")`.
    - `cancel(job_id)`: a job not yet taken by a worker ends at once; a running one stops at its
      next denoising step (its worker keeps its model).
    - `state` / `detail`: READY when a worker is live; otherwise STARTING with `detail` saying
      "waiting for Redis", "waiting for a worker" or "a worker is loading its model".
    """

    def __init__(
        self,
        url: str,
        *,
        model: str | None = None,
        namespace: str = DEFAULT_NAMESPACE,
        timings: RedisTimings | None = None,
        max_input_bytes: int = MAX_INPUT_BYTES,
        max_output_bytes: int = MAX_OUTPUT_BYTES,
        on_change: Callable[[], None] | None = None,
        redis_options: Mapping[str, Any] | None = None,
        max_worker_slots: int | None = None,
    ) -> None:
        self._url = check_url(url)
        self.keys = Keys(namespace)
        # max_worker_slots None: ZOETROPE_MAX_WORKER_SLOTS (default 8), see redis_common
        self.fleet = Fleet(self.keys, served_name(model), max_slots=max_worker_slots)
        self.timings = timings or RedisTimings.from_env()
        if max_input_bytes < 1 or max_output_bytes < 1:
            raise ValueError("max_input_bytes and max_output_bytes must be positive")
        self.max_input_bytes = max_input_bytes
        self.max_output_bytes = max_output_bytes
        self.on_change = on_change
        self._redis_options = dict(redis_options or {})

        self._redis: aioredis.Redis | None = None
        self._queues: dict[str, ZoetropeQueue] = {}
        self._state = BackendState.STOPPED
        self._state_changed = asyncio.Event()
        self._detail = "not started"
        self.attempts = AttemptBook()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._watcher = Watcher(self)
        self._pump_task: asyncio.Task[None] | None = None
        self._closing = False

    def __repr__(self) -> str:
        return f"RedisBackend({redacted(self._url)!r}, state={self._state.value})"

    # -- what the bot reads -------------------------------------------------------------------

    @property
    def state(self) -> BackendState:
        return self._state

    @property
    def ready(self) -> bool:
        return self._state is BackendState.READY

    @property
    def detail(self) -> str:
        """Why the backend is not ready, in words for a member ("waiting for a worker")."""
        return self._detail

    @property
    def error(self) -> str | None:
        return None  # Redis being away is never final: the backend keeps trying

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def info(self) -> dict[str, Any]:
        """A summary for logs and /queue: workers, their slots and what they serve."""
        return {
            "redis": redacted(self._url),
            "reachable": self.fleet.up,
            "workers": [dataclasses.asdict(w) for w in self.fleet.workers.values()],
            "jobs": len(self.attempts),
        }

    @property
    def client(self) -> aioredis.Redis | None:
        """The Redis client (None before start()); for diagnostics and benchmarks."""
        return self._redis

    def worker_of(self, job_id: str) -> str | None:
        """The id of the worker running `job_id` (known from its first event), else None."""
        attempt = self.attempts.of_job(job_id)
        return attempt.worker if attempt is not None else None

    def workers(self) -> list[WorkerInfo]:
        """Live workers as of the last look (every `poll_every`)."""
        return list(self.fleet.workers.values())

    def served(self) -> dict[str, int]:
        """Served name -> slots of live, loaded workers."""
        return self.fleet.served()

    def total_slots(self, pool: str | None = None) -> int:
        """Slots of live, loaded workers (busy or not) for `pool` (None: the default/any)."""
        if not self.fleet.up or self._closing:
            return 0
        return self.fleet.total_slots(pool)

    def route(self, preset: str | None) -> str | None:
        """The served name (SAQ queue) a job of `preset` goes to; None: any worker. The same
        mapping submit() and capacity() use, so two names for one model (None and the
        default model's name) give one route."""
        return self.fleet.target(preset)

    def capacity(self, pool: str | None = None) -> int:
        """Free slots now for a job of `pool` (None: the default model, or any worker)."""
        if not self.fleet.up or self._closing:
            return 0
        return self.fleet.capacity(pool, self.attempts)

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect lazily and start watching Redis. Returns at once, even if Redis is down."""
        if self._state is BackendState.CLOSED:
            raise BackendClosed("the backend is closed")
        if self._pump_task is not None:
            return
        self._redis = connect(self._url, **self._redis_options)
        self.set_state(BackendState.STARTING, "waiting for Redis")
        self._pump_task = asyncio.create_task(self._watcher.run(), name="redis-backend")
        log.info("Redis backend watching %s (namespace %s)", redacted(self._url), self.keys.ns)

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until at least one worker is live and loaded."""
        async with asyncio.timeout(timeout):
            while True:
                if self._state is BackendState.READY:
                    return
                if self._state is BackendState.CLOSED:
                    raise BackendClosed("the backend is closed")
                if self._state is BackendState.STOPPED:
                    await self.start()
                self._state_changed.clear()
                await self._state_changed.wait()

    async def close(self) -> None:
        """Stop watching Redis. Jobs still held are cancelled on their workers (best effort)
        and end with Failed("requeue"): the bot is stopping, not the job failing, so the job
        layer queues them again without counting an attempt. Idempotent."""
        if self._state is BackendState.CLOSED:
            return
        self._closing = True
        self.set_state(BackendState.CLOSED, "closed")
        held = [a for a in self.attempts if not a.finished]
        if self._tasks:  # cancels of abandoned jobs and enqueues under way: let them land
            await asyncio.wait(set(self._tasks), timeout=1.0)
        for task in [self._pump_task, *self._tasks]:
            await stop_task(task)
        if self._redis is not None and self.fleet.up and held:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await self._watcher.send_cancels([a for a in held if a.phase == "enqueued"])
        for attempt in held:
            self.finish(
                attempt, Failed("requeue", "The generator shut down before this job finished.")
            )
        for queue in self._queues.values():
            await queue.close()
        if self._redis is not None:
            with contextlib.suppress(Exception):
                await self._redis.aclose()
        self.fleet.up = False

    # -- jobs ---------------------------------------------------------------------------------

    async def submit(self, request: GenerationRequest) -> AsyncIterator[Event]:
        """Run one request on a worker. Yields Progress events, then one Done or Failed."""
        if not isinstance(request, GenerationRequest):
            raise TypeError(f"request must be a GenerationRequest, got {type(request).__name__}")
        job_id = request.job_id
        if self._state is BackendState.CLOSED:
            yield Failed("crash", "The generator is shut down.")
            return
        if not isinstance(job_id, str) or not JOB_ID.fullmatch(job_id):
            yield Failed(
                "bad_request", f"job id must be 1-80 letters, digits, _ or -, got {job_id!r}"
            )
            return
        if self.attempts.of_job(job_id) is not None:
            yield Failed("bad_request", f"job {job_id!r} is already submitted")
            return
        try:
            served = served_name(request.preset) or self.fleet.default_served
        except ValueError as exc:
            yield Failed("bad_request", str(exc))
            return
        try:
            image = await asyncio.to_thread(read_capped, request.image_path, self.max_input_bytes)
        except ValueError as exc:
            yield Failed("bad_request", str(exc))
            return
        if self._state is BackendState.STOPPED:
            await self.start()
        attempt = Attempt(request, new_attempt_key(job_id), served, image)
        self.attempts.add(attempt)
        try:
            # A first event at once: the job layer counts the job as ours from here on (its
            # scheduler holds a slot for a dispatched job until the backend's first event).
            attempt.events.put_nowait(Progress(0, 0, "load"))
            self.grant_slots()
            while True:
                event = await attempt.events.get()
                yield event
                if not isinstance(event, Progress):
                    return
        finally:
            self.attempts.release(attempt)
            if not attempt.finished:
                # The caller stopped listening (or was cancelled): the job is not wanted.
                attempt.cancel_requested = True
                self.finish(attempt, Failed("cancelled", "Nobody waits for this job any more."))
                if attempt.key:
                    self._spawn(self._watcher.send_cancels([attempt], force=True), "redis-abandon")

    async def cancel(self, job_id: str) -> None:
        """Cancel a job: one not yet taken by a worker ends with Failed("cancelled") at once; a
        running one stops at its next denoising step. Unknown or finished jobs are ignored."""
        attempt = self.attempts.of_job(job_id)
        if attempt is None or attempt.finished or attempt.cancel_requested:
            return
        attempt.cancel_requested = True
        if attempt.phase == "waiting":
            self.finish(attempt, Failed("cancelled", "Cancelled before it started."))
            return
        if attempt.phase == "enqueued":
            try:
                await self._watcher.send_cancels([attempt])
            except UNREACHABLE as exc:
                # The pump sends it again once Redis answers; the job cannot finish unseen.
                log.warning("job %s: cannot reach Redis to cancel (%s); will retry", job_id, exc)
        # "enqueuing": the enqueue task sees cancel_requested when it is done and sends it.

    # -- slots (the watcher calls these too) -------------------------------------------------

    def grant_slots(self) -> None:
        """Hand waiting attempts to SAQ, oldest first, while their served name has a slot."""
        if not self.fleet.up or self._closing:
            return
        free = self.fleet.free_slots(self.attempts)
        for attempt in self.attempts:
            if attempt.phase != "waiting":
                continue
            if attempt.cancel_requested:
                self.finish(attempt, Failed("cancelled", "Cancelled before it started."))
                continue
            target = attempt.served or self.fleet.pick(free)  # None: any worker
            if target is None or free.get(target, 0) <= 0:
                continue
            free[target] -= 1
            attempt.served = attempt.served or target
            attempt.phase = "enqueuing"
            self._spawn(self._enqueue(attempt, target), f"redis-enqueue-{attempt.key}")

    async def _enqueue(self, attempt: Attempt, served: str) -> None:
        assert self._redis is not None
        request = dataclasses.replace(attempt.request, image_path="", output_path="")
        job = Job(
            GENERATE,
            kwargs={"request": dataclasses.asdict(request)},
            key=attempt.key,
            timeout=0,  # video jobs run for minutes: SAQ's 10 s default would kill them
            heartbeat=self.timings.heartbeat_timeout,
            retries=1,  # SAQ never retries on its own: the bot requeues through its fair queue
            ttl=JOB_TTL_S,
        )
        try:
            await self._redis.set(self.keys.input(attempt.key), attempt.image, ex=DATA_TTL_S)
            await self.queue(served).enqueue(job)  # None: already there (a repeated try)
        except UNREACHABLE as exc:
            self._watcher.note_down(exc)
            if attempt.phase == "enqueuing":
                attempt.phase = "waiting"  # granted again once Redis answers
            return
        if attempt.phase != "enqueuing":
            return  # finished meanwhile (cancelled, closed): the pump cleans up
        attempt.phase = "enqueued"
        attempt.served = served
        attempt.enqueued_at = time.monotonic()
        attempt.image = b""
        if attempt.cancel_requested:
            with contextlib.suppress(*UNREACHABLE):
                await self._watcher.send_cancels([attempt])
        await self._watcher.wake()

    def queue(self, served: str) -> ZoetropeQueue:
        """The SAQ queue of a served name (made on first use)."""
        queue = self._queues.get(served)
        if queue is None:
            assert self._redis is not None
            queue = ZoetropeQueue(self._redis, self.keys.queue_name(served), timings=self.timings)
            if self.fleet.up:
                queue.note_reachable(True)
            self._queues[served] = queue
        return queue

    def queues(self) -> list[ZoetropeQueue]:
        return list(self._queues.values())

    def finish(self, attempt: Attempt, event: Done | Failed) -> None:
        """End an attempt with its final event (at most once) and give its slot away."""
        if attempt.finished:
            return
        if isinstance(event, Failed) and attempt.cancel_requested and event.kind != "cancelled":
            event = Failed("cancelled", "Cancelled.")
        attempt.phase = "finished"
        attempt.image = b""
        self.attempts.drop(attempt)
        attempt.events.put_nowait(event)
        self.grant_slots()
        self.changed()

    def set_state(self, state: BackendState, detail: str) -> None:
        if self._closing and state is not BackendState.CLOSED:
            return
        if state is not self._state or detail != self._detail:
            log.info("Redis backend %s (%s)", state.value, detail)
        self._state, self._detail = state, detail
        self._state_changed.set()

    def changed(self) -> None:
        if self.on_change is not None:
            try:
                self.on_change()
            except Exception:
                log.exception("on_change callback failed")

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            if isinstance(exc, UNREACHABLE):
                log.warning("task %s: Redis unreachable (%s)", task.get_name(), exc)
            else:
                log.error("task %s failed", task.get_name(), exc_info=exc)
