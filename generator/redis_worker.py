"""The remote GPU worker: serves jobs from Redis (SAQ) on this machine.

    python main.py worker --redis URL [--preset NAME | --model DIR] [--slots N]
    python -m generator.redis_worker --redis URL [--preset NAME | --model DIR] [--slots N]

It loads its model once (one copy per slot) and keeps it warm, advertises what it serves and
its free slots in Redis, and takes jobs only from the SAQ queue of its served name, so it never
receives a job it cannot run. It needs nothing but an outbound connection to Redis.

Each job runs `WorkerCore.run` (generator/worker.py) in a thread while the asyncio loop keeps
sending SAQ heartbeats (`job.update()`), reads cancels (pub/sub, and the cancel key on every
heartbeat as a fallback) and streams progress. The input image arrives as bytes in Redis and
the MP4 goes back as bytes; both size-capped, neither ever pickled.

SIGTERM / SIGINT: stop taking jobs, stop the running ones at their next step and give them
back as `Failed("requeue")` (the job did not fail: the bot queues it again at the head of its
queue without counting an attempt, and another worker runs it), then leave Redis. A job taken
while stopping is given back the same way. kill -9 (or a lost machine) is noticed by the
missing heartbeats instead, and costs the job an attempt (`Failed("crash")`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any

from saq.job import TERMINAL_STATUSES, Job

from generator.protocol import Done, Failed, GenerationRequest
from generator.redis_common import (
    AUTH_FAILED,
    DEFAULT_NAMESPACE,
    GENERATE,
    MAX_INPUT_BYTES,
    MAX_OUTPUT_BYTES,
    UNREACHABLE,
    Keys,
    RedisTimings,
    WorkerInfo,
    check_served,
    check_url,
    connect,
    down_detail,
    redacted,
    served_name,
    stop_task,
)
from generator.redis_events import AttemptEvents
from generator.redis_queue import QuietWorker, ZoetropeQueue

log = logging.getLogger("zoetrope.redis_worker")

STOP_WAIT_S = 120.0  # how long a stopping worker waits for its running jobs to reach a step
EXIT_BAD_INPUT = 2


@dataclasses.dataclass(eq=False)
class _Run:
    """One job on this worker: its cancel flag, read by the generation thread every step."""

    key: str
    flag: threading.Event = dataclasses.field(default_factory=threading.Event)
    reason: str | None = None  # "member" (the bot cancelled), "shutdown", "lost"
    finished: bool = False  # the generation is over: heartbeats stop

    def cancel(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        self.flag.set()


class RedisWorker:
    """Loads the model, registers, and serves the SAQ queue of its served name."""

    def __init__(
        self,
        url: str,
        *,
        model: str,
        slots: int = 1,
        device: str | None = None,
        namespace: str = DEFAULT_NAMESPACE,
        timings: RedisTimings | None = None,
        max_input_bytes: int = MAX_INPUT_BYTES,
        max_output_bytes: int = MAX_OUTPUT_BYTES,
    ) -> None:
        self.url = check_url(url)
        if not isinstance(slots, int) or not 1 <= slots <= 64:
            raise ValueError(f"slots must be a whole number from 1 to 64, got {slots!r}")
        if not model:
            raise ValueError(f"model must be a preset name, 'auto' or a folder, got {model!r}")
        self.model = model
        self.slots = slots
        self.device = device
        self.keys = Keys(namespace)
        self.timings = timings or RedisTimings.from_env()
        self.max_input_bytes = max_input_bytes
        self.max_output_bytes = max_output_bytes
        host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:40] or "host"
        self.worker_id = f"{host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.served = "auto" if model == "auto" else served_name(model)
        self.state = "loading"
        self.redis = connect(url)
        self._cores: list[Any] = []  # WorkerCore, one per slot; the free ones
        self._runs: dict[str, _Run] = {}
        self._pool = concurrent.futures.ThreadPoolExecutor(slots, thread_name_prefix="generate")
        self._stopping = False
        self._closed = False  # the background loops' stop flag
        # Set while no job is being run *or reported*: a stopping worker waits for it, so the
        # final event of a job it gives back is in Redis before SAQ's stop cancels the tasks.
        self._idle = asyncio.Event()
        self._idle.set()
        self._active = 0
        self._warned_down = False

    # -- main ---------------------------------------------------------------------------------

    async def serve(self) -> int:
        """Run until SIGTERM/SIGINT. Returns the exit code."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        log.info(
            "worker %s: Redis %s, model %s, %d slot(s)",
            self.worker_id,
            redacted(self.url),
            self.model,
            self.slots,
        )
        register = asyncio.create_task(self._register_loop(), name="register")
        cancels: asyncio.Task[None] | None = None
        saq_worker: QuietWorker | None = None
        saq_task: asyncio.Task[None] | None = None
        try:
            loaded = await self._load(stop)
            if loaded is None:
                return 0  # stopped while loading
            if loaded is False:
                return 1
            self.state = "ready"
            with contextlib.suppress(*UNREACHABLE):
                await self._register()
            queue = ZoetropeQueue(
                self.redis, self.keys.queue_name(self.served), timings=self.timings
            )
            saq_worker = QuietWorker(
                queue,
                functions=[(GENERATE, self._generate)],
                id=self.worker_id,
                concurrency=self.slots,  # one dequeue loop per slot: a slot takes one job
                timers={
                    "schedule": 60,  # no scheduled jobs here
                    "worker_info": max(1, int(self.timings.heartbeat_every)),
                    "sweep": self.timings.sweep_every,
                    "abort": 1,  # a job swept while alive (stalled) is stopped within 1 s
                },
                dequeue_timeout=5.0,  # BLMOVE returns every 5 s: a dead link is noticed
                metadata={"served": self.served, "slots": self.slots},
                cancellation_hard_deadline_s=STOP_WAIT_S,
            )
            saq_worker.SIGNALS = []  # our own handlers: stop the running jobs first
            cancels = asyncio.create_task(self._listen_cancels(), name="cancels")
            saq_task = asyncio.create_task(saq_worker.start(), name="saq-worker")
            log.info(
                "worker %s ready: serving %s (SAQ queue %s)",
                self.worker_id,
                self.served,
                queue.name,
            )
            stop_wait = asyncio.create_task(stop.wait())
            await asyncio.wait({stop_wait, saq_task}, return_when=asyncio.FIRST_COMPLETED)
            stop_wait.cancel()
            log.info("worker %s stopping", self.worker_id)
            await self._stop_jobs()
            return 0
        finally:
            self._stopping = True
            self.state = "stopping"
            if saq_worker is not None and saq_task is not None:
                saq_worker.event.set()
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.wait_for(saq_task, 30)
            self._closed = True
            for task in (register, cancels):
                await stop_task(task)
            with contextlib.suppress(*UNREACHABLE, Exception):
                async with asyncio.timeout(3):
                    await self.redis.delete(self.keys.worker(self.worker_id))
                    await self.redis.srem(self.keys.workers, self.worker_id)
            with contextlib.suppress(Exception):
                await self.redis.aclose()
            self._pool.shutdown(wait=False, cancel_futures=True)
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)

    async def _load(self, stop: asyncio.Event) -> bool | None:
        """Load one model copy per slot in a daemon thread (a stop does not wait for it)."""
        from generator.auto import resolve_for_copies
        from generator.presets import NeedsGPU
        from generator.worker import WorkerCore  # torch: only in this process

        try:  # once for all copies: each one loads the same preset
            model = resolve_for_copies(self.model, self.device, self.slots)
        except NeedsGPU as exc:
            print(f"error: cannot load model {self.model!r}: {exc}", file=sys.stderr)
            return False
        loop = asyncio.get_running_loop()
        for index in range(self.slots):
            future: asyncio.Future[Any] = loop.create_future()

            def load(fut: asyncio.Future[Any] = future) -> None:
                try:
                    core = WorkerCore.load(model, device=self.device)
                except BaseException as exc:  # reported to the loop, which decides
                    loop.call_soon_threadsafe(_settle, fut, None, exc)
                else:
                    loop.call_soon_threadsafe(_settle, fut, core, None)

            threading.Thread(target=load, name=f"load-{index}", daemon=True).start()
            stop_wait = asyncio.create_task(stop.wait())
            await asyncio.wait({future, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
            stop_wait.cancel()
            if not future.done():
                log.info("stopped while loading the model")
                return None
            error = future.exception()
            if error is not None:
                log.error("cannot load model %r: %s", self.model, error, exc_info=error)
                print(f"error: cannot load model {self.model!r}: {error}", file=sys.stderr)
                return False
            core = future.result()
            self._cores.append(core)
            served = core.info().get("preset") or self.served
            self.served = check_served(str(served))
            log.info("model copy %d/%d loaded in %.1f s", index + 1, self.slots, core.load_seconds)
        return True

    async def _stop_jobs(self) -> None:
        self._stopping = True
        self.state = "stopping"
        with contextlib.suppress(*UNREACHABLE):
            await self._register()
        for run in list(self._runs.values()):
            run.cancel("shutdown")
        try:
            await asyncio.wait_for(self._idle.wait(), STOP_WAIT_S)
        except TimeoutError:
            log.warning("jobs still running after %.0f s; leaving anyway", STOP_WAIT_S)

    # -- registration and cancels -------------------------------------------------------------

    def _registration(self) -> str:
        return WorkerInfo(
            worker_id=self.worker_id,
            served=self.served,
            slots=self.slots,
            busy=len(self._runs),
            state=self.state,
            host=socket.gethostname()[:100],
            pid=os.getpid(),
            model=Path(self.model).name if os.sep in self.model else self.model,
        ).to_json()

    async def _register(self) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(
                self.keys.worker(self.worker_id),
                self._registration(),
                ex=self.timings.heartbeat_timeout,
            )
            pipe.sadd(self.keys.workers, self.worker_id)
            await pipe.execute()

    async def _register_loop(self) -> None:
        while not self._closed:
            try:
                await self._register()
                if self._warned_down:
                    log.info("Redis reachable again")
                self._warned_down = False
            except UNREACHABLE as exc:
                if not self._warned_down:
                    if down_detail(exc) == AUTH_FAILED:
                        log.error(
                            "Redis authentication failed (%s): check the password in "
                            "ZOETROPE_REDIS_URL; retrying",
                            exc,
                        )
                    else:
                        log.warning("Redis unreachable (%s); retrying", exc)
                self._warned_down = True
            await asyncio.sleep(self.timings.heartbeat_every)

    async def _listen_cancels(self) -> None:
        """Cancels announced on pub/sub reach a running job within one step; the heartbeat
        also checks the cancel key, for cancels published while this link was down."""
        backoff = 0.2
        while not self._closed:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.keys.cancel_channel)
                backoff = 0.2
                while not self._closed:
                    message = await pubsub.get_message(timeout=1.0)
                    if message and message.get("type") == "message":
                        key = message["data"].decode("utf-8", "replace")
                        run = self._runs.get(key)
                        if run is not None:
                            log.info("attempt %s: cancel requested", key)
                            run.cancel("member")
            except UNREACHABLE:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def _heartbeat(self, job: Job, run: _Run) -> None:
        """SAQ's heartbeat (`job.update()` refreshes `touched`), sent from the event loop
        while the generation thread runs; plus the fallback look at the cancel key."""
        queue = job.get_queue()
        every = min(
            self.timings.heartbeat_every, max(0.2, job.heartbeat / 4 if job.heartbeat else 1.0)
        )
        while not run.finished:
            await asyncio.sleep(every)
            if run.finished:
                return
            try:
                stored = await queue.job(job.key)
                if stored is None or stored.status in TERMINAL_STATUSES:
                    # Swept while we were cut off, or lost by Redis: the bot has reported it
                    # already; stop working on a job nobody waits for.
                    run.cancel("lost")
                    return
                await job.update()
                if await self.redis.exists(self.keys.cancel(run.key)):
                    run.cancel("member")
            except UNREACHABLE:
                pass  # the registration loop logs it; the sweep waits for us after a reconnect

    # -- one job ------------------------------------------------------------------------------

    async def _generate(self, ctx: dict[str, Any], *, request: Any = None) -> dict[str, Any]:
        """The SAQ job function. Never raises for a job's own failure: the outcome travels as
        an event; SAQ marks the job complete either way."""
        self._active += 1
        self._idle.clear()
        try:
            return await self._generate_and_report(ctx["job"], request)
        finally:
            self._active -= 1
            if not self._active:
                self._idle.set()

    async def _generate_and_report(self, job: Job, request: Any) -> dict[str, Any]:
        key = job.key
        events = AttemptEvents(self.redis, self.keys, self.worker_id, key)
        run = _Run(key)
        self._runs[key] = run  # before the cancel-key check: a cancel cannot slip between
        outcome: Done | Failed
        output: bytes | None = None
        try:
            if self._stopping:
                run.cancel("shutdown")
            elif await self.redis.exists(self.keys.cancel(key)):
                run.cancel("member")
            elif not await job.get_queue().is_current(job, self.worker_id):
                # Swept between our dequeue and our "active" write (SAQ #277): the bot has
                # queued it again; running it too would make the clip twice.
                run.cancel("lost")
            if run.reason == "shutdown":
                outcome = Failed("requeue", "The worker was stopped before this job started.")
            elif run.reason == "lost":
                outcome = Failed("crash", "The worker lost this job.")
            elif run.flag.is_set():
                outcome = Failed("cancelled", "Cancelled before it started.")
            else:
                with contextlib.suppress(*UNREACHABLE):
                    await self._register()  # busy now
                outcome, output = await self._run(job, run, request, events)
        except asyncio.CancelledError:
            events.close()  # swept while alive: the bot has reported it already
            raise
        except Exception as exc:
            # Our plumbing failed (not the generation, which WorkerCore reports itself).
            log.exception("attempt %s: worker error", key)
            outcome = Failed("crash", f"The worker failed: {type(exc).__name__}: {exc}")
        finally:
            self._runs.pop(key, None)
        if (
            run.reason != "lost"
            and isinstance(outcome, Done)
            and not await self._still_current(job)
        ):
            run.cancel("lost")  # the bot gave up on this attempt meanwhile: publish nothing
        if run.reason == "lost":
            log.info("attempt %s: dropped (swept or lost in Redis)", key)
            await events.final(Failed("crash", "The worker lost this job."))
            return {"outcome": "lost"}
        with contextlib.suppress(*UNREACHABLE):
            await self._register()  # a slot is free again
        await events.final(outcome, output)
        kind = "done" if isinstance(outcome, Done) else outcome.kind
        log.info(
            "attempt %s: %s",
            key,
            kind if isinstance(outcome, Done) else f"{kind}: {outcome.message}",
        )
        return {"outcome": kind}

    async def _still_current(self, job: Job) -> bool:
        """Before publishing a clip: the attempt is still ours (not swept, not given up on by
        the bot). While Redis cannot be asked, publish: the bot checks the sender again."""
        try:
            if await self.redis.exists(self.keys.cancel(job.key)):
                return False
            return await job.get_queue().is_current(job, self.worker_id)
        except UNREACHABLE:
            return True

    async def _run(
        self, job: Job, run: _Run, data: Any, events: AttemptEvents
    ) -> tuple[Done | Failed, bytes | None]:
        heartbeat = asyncio.create_task(self._heartbeat(job, run), name=f"heartbeat-{run.key}")
        workdir = Path(tempfile.mkdtemp(prefix="zoetrope-job-"))
        try:
            image = await self._fetch_input(run.key)
            if isinstance(image, Failed):
                return image, None
            image_path = workdir / "input.png"
            output_path = workdir / "clip.mp4"
            await asyncio.to_thread(image_path.write_bytes, image)
            try:
                if not isinstance(data, dict):
                    raise ValueError(f"request must be an object, got {type(data).__name__}")
                data = {**data, "image_path": str(image_path), "output_path": str(output_path)}
                request = GenerationRequest.from_dict(data)
            except (TypeError, ValueError) as exc:
                return Failed("bad_request", f"invalid request: {exc}"), None
            core = self._cores.pop()
            try:
                result = await self._in_thread(
                    run,
                    lambda: core.run(
                        request,
                        on_progress=events.progress,
                        should_cancel=run.flag.is_set,
                        # SIGTERM: the job is handed back, not failed
                        stopping=lambda: run.reason == "shutdown",
                    ),
                )
            finally:
                self._cores.append(core)
            if isinstance(result, Failed):
                return result, None
            size = output_path.stat().st_size
            if size > self.max_output_bytes:
                return Failed(
                    "error",
                    f"The clip is {size} bytes, over the {self.max_output_bytes} byte limit.",
                ), None
            clip = await asyncio.to_thread(output_path.read_bytes)
            facts = dataclasses.replace(result.facts, worker=self.worker_id, served=self.served)
            return Done("", facts), clip
        finally:
            run.finished = True  # the heartbeat loop's stop flag
            await stop_task(heartbeat)
            shutil.rmtree(workdir, ignore_errors=True)

    async def _in_thread(self, run: _Run, fn: Any) -> Any:
        """Run `fn` in a generation thread. If this task is cancelled (SAQ stops a job that
        was swept), stop the generation at its next step and wait for the thread first."""
        future = asyncio.get_running_loop().run_in_executor(self._pool, fn)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            run.cancel("lost")
            with contextlib.suppress(Exception):
                await future
            raise

    async def _fetch_input(self, key: str) -> bytes | Failed:
        name = self.keys.input(key)
        while True:
            try:
                size = await self.redis.strlen(name)
                if size > self.max_input_bytes:
                    return Failed(
                        "bad_request",
                        f"The input image is {size} bytes, over the {self.max_input_bytes} byte limit.",
                    )
                image = await self.redis.get(name) if size else None
                break
            except UNREACHABLE:
                await asyncio.sleep(1.0)
        if not image:
            return Failed("crash", "The input image is no longer in Redis (expired or lost).")
        return image


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


def run_redis_worker(
    url: str,
    *,
    model: str,
    slots: int = 1,
    device: str | None = None,
    namespace: str = DEFAULT_NAMESPACE,
) -> int:
    """Serve jobs from the Redis at `url` until SIGTERM/SIGINT. Returns the exit code
    (0 stopped, 1 the model could not be loaded, 2 bad arguments)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO,
            stream=sys.stderr,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        logging.getLogger("saq").setLevel(logging.WARNING)
    try:
        worker = RedisWorker(url, model=model, slots=slots, device=device, namespace=namespace)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return asyncio.run(_serve(worker))


async def _serve(worker: RedisWorker) -> int:
    return await worker.serve()
