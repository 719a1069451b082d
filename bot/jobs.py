"""The job lifecycle: what the Discord layer calls, and what runs jobs through the backend.

Plain Python and asyncio; no discord, no torch. The database (bot/store.py) is the truth:
every status change is a guarded UPDATE, and `start()` rebuilds the in-memory queue from it.

Public API (the Discord layer codes against this)::

    service = JobService(store, backend, data_dir=Path("data"), limits=Limits(),
                         clock=time.time, max_attempts=2, position_interval=2.0,
                         byte_budget=10 MiB, output_retention_days=None,
                         default_gen_seconds=60.0)
    report: ResumeReport = await service.start()  # resume() + the dispatch loop
    await service.close()                          # before backend.close(): jobs in flight
                                                   # stay `running`, the next start requeues

    # events (Queued, PositionChanged, Started, Progress, Done, Failed, Cancelled)
    service.add_listener(callback) / service.remove_listener(callback)   # sync callbacks
    async with service.subscribe() as events:                            # or an async stream
        async for event in events: ...

    # the limits that need no image (channel, preset, pending, daily quota, queue size):
    # call before downloading; submit() checks them again with the same code
    service.precheck(guild_id=..., channel_id=..., user_id=..., preset=None)
    job = await service.submit(guild_id=..., channel_id=..., user_id=..., prompt=...,
                               image_sha256=..., negative_prompt="", camera=None,
                               duration=None, seed=None, preset=None, interaction=None)
    # children of a finished clip; guild_id/channel_id default to the parent's
    await service.reroll(parent_id, user_id=..., guild_id=..., channel_id=..., interaction=None)
    await service.vary(parent_id, user_id=..., strength="subtle" | "strong", ...)
    await service.edit(parent_id, user_id=..., prompt="...", ...)
    service.check_extend(parent_id, user_id=..., ...)  # Extend's refusals that need no frame
    await service.extend(parent_id, user_id=..., ...)
    await service.loop(parent_id, user_id=..., ...)
    await service.cancel(job_id, user_id=..., moderator=False) -> Job

    service.get(job_id) -> Job                      (NotFound)
    service.position(job_id) -> int | None          (1 = next to run)
    service.eta(job_id) -> float | None             (seconds until the clip should be done)
    service.queue_summary(guild_id, user_id) -> QueueSummary
    service.history(user_id, guild_id=None, limit=10) -> list[Job]
    service.warming_up -> bool                      (the backend is loading its model)
    service.guild_settings(guild_id) / update_guild_settings(guild_id, **changes)
    service.mark_progress_message(job_id, channel_id=..., message_id=...) -> Job
    service.mark_delivered(job_id, message_id=..., channel_id=None) -> Job   (idempotent)
    service.record_delivery_attempt(job_id) -> Job
    service.mark_result_deleted(job_id, message_id=...) -> Job   (Delete; other copies: no-op)
    service.restore_result(job_id, message_id=..., channel_id=...) -> Job   (/job re-post)
    service.mark_shared(job_id, message_id=..., channel_id=...) -> Job      (first share wins)
    service.prune_outputs() -> int
    service.known_presets() -> list[str]            (PRESETS + the backend's served() names)
    service.kick()                                  (look for free slots now: wire a backend's
                                                    change callback here, e.g. a new worker)

Every refusal is a `bot.errors.ZoetropeError` subclass whose `.message` is fit for Discord.

What the service needs from a backend is `generator.protocol.Backend`: `submit(request)`
(an async iterator of Progress..., then Done or Failed), `cancel(job_id)`, `ready`, and per
pool `capacity(pool)` = free slots now and `total_slots(pool)`. With the total, a run keeps
its slot until its result is handled, so a crash retry (put back at the head of the queue)
always gets the freed slot first. The service does not start or close the backend: the
owner does, closing the service first.

Pools: each job waits in the pool `backend.route(preset)` names (bot/scheduler.py) and is
dispatched as soon as a slot *of that pool* is free, in fair order within it. A job's preset
is the request's preset, None meaning the bot's default model. The Redis backend routes to
served names (so None and the default model's own name share one pool, as they share the
workers); LocalBackend routes everything to one pool. `served()` names (a fleet's
`local:<folder>` models) are accepted as presets besides PRESETS.

Kinds and rules: `loop` runs on the CPU outside the GPU queue and is not counted against
the daily quota; `extend` asks for at most what the preset's total-length cap leaves; a
crash or OOM is retried once (OOM with `degraded=True`), then the job fails and its daily
count is refunded (so is a cancelled job's). A `requeue` (the worker gave the job back
unfinished: a graceful stop) puts the job back at the head of its queue without counting
an attempt, at most MAX_REQUEUES times per job (beyond that it counts as a crash).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import os
import random
import sqlite3
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot import intake
from bot.errors import (
    AlreadyPending,
    BadImage,
    BadOption,
    InvalidState,
    LimitReached,
    NotAllowed,
    NotFound,
    QueueFull,
    QuotaExceeded,
)
from bot.scheduler import Scheduler, queue_key
from bot.store import GuildSettings, Job, Store
from generator import encode
from generator import protocol as gp
from generator.presets import DURATIONS, MAX_SEED, PRESETS, Preset

log = logging.getLogger("zoetrope.jobs")

MiB = 1024 * 1024

# Camera moves offered by /animate, appended to the prompt as camera language.
CAMERAS: dict[str, str] = {
    "static": "static camera, the camera does not move",
    "push_in": "the camera slowly pushes in towards the subject",
    "pull_out": "the camera slowly pulls back away from the subject",
    "pan_left": "the camera pans slowly to the left",
    "pan_right": "the camera pans slowly to the right",
    "orbit": "the camera slowly orbits around the subject",
}
VARY_STRENGTHS: dict[str, float] = {"subtle": 0.25, "strong": 0.6}
# Seeds we draw ourselves stay short enough to read and type back into /animate seed:.
RANDOM_SEED_LIMIT = 2**32
# A job interrupted by this many restarts in a row is failed rather than requeued again.
MAX_INTERRUPTIONS = 4
# A job given back unfinished ("requeue": a worker stopping) this many times costs no
# attempt; beyond that it counts as a crash, so a worker that gives every job back cannot
# keep one in the queue for ever.
MAX_REQUEUES = 10

_SAME = object()  # "same as the parent" default for a child job's guild and channel


@dataclass(frozen=True, slots=True)
class Limits:
    """Defaults; each server may override the first three (see GuildSettings)."""

    pending_per_user: int = 2  # queued + running, across all servers
    pending_per_guild: int = 25
    daily_per_user: int | None = None  # clips per member per UTC day; None: no limit
    max_queue: int = 1000  # waiting jobs in the whole bot
    max_prompt_len: int = 600

    def __post_init__(self) -> None:
        for name in ("pending_per_user", "pending_per_guild", "max_queue", "max_prompt_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Limits.{name} must be a positive integer, got {value!r}")
        daily = self.daily_per_user
        if daily is not None and (
            isinstance(daily, bool) or not isinstance(daily, int) or daily < 0
        ):
            raise ValueError(f"Limits.daily_per_user must be None or >= 0, got {daily!r}")


@dataclass(frozen=True, slots=True)
class InteractionRef:
    """The deferred interaction whose reply is the progress message (token lives 15 min)."""

    token: str
    application_id: int
    created_at: float | None = None  # defaults to the service clock at submit

    def __repr__(self) -> str:  # never print a live token
        return f"InteractionRef(application_id={self.application_id}, token=<hidden>)"


# -- events ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JobEvent:
    job: Job


@dataclass(frozen=True, slots=True)
class Queued(JobEvent):
    """A job entered the queue (submit, or put back for a retry: `retry=True`)."""

    position: int | None
    eta: float | None
    retry: bool = False


@dataclass(frozen=True, slots=True)
class PositionChanged(JobEvent):
    """A waiting job moved up (published at most every `position_interval` seconds)."""

    position: int
    eta: float | None


@dataclass(frozen=True, slots=True)
class Started(JobEvent):
    """The job went to the backend (it may still be warming up: see Progress stage "load")."""


@dataclass(frozen=True, slots=True)
class Progress(JobEvent):
    step: int
    total: int
    stage: str  # "load" (warming up), "denoise", "decode", "encode"


@dataclass(frozen=True, slots=True)
class Done(JobEvent):
    """The clip is at `job.output_path`; deliver it, then call mark_delivered."""


@dataclass(frozen=True, slots=True)
class Failed(JobEvent):
    reason: str


@dataclass(frozen=True, slots=True)
class Cancelled(JobEvent):
    pass


Listener = Callable[[JobEvent], None]


class EventStream:
    """An async iterator of JobEvents (unbounded buffer); close it when done."""

    def __init__(self, service: JobService) -> None:
        self._service = service
        self._queue: asyncio.Queue[JobEvent | None] = asyncio.Queue()
        service.add_listener(self._queue.put_nowait)

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> JobEvent:
        event = await self._queue.get()
        if event is None:
            raise StopAsyncIteration
        return event

    async def get(self, timeout: float | None = None) -> JobEvent:
        async with asyncio.timeout(timeout):
            return await self.__anext__()

    def close(self) -> None:
        self._service.remove_listener(self._queue.put_nowait)
        self._queue.put_nowait(None)

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


@dataclass(slots=True)
class ResumeReport:
    requeued: list[Job] = field(default_factory=list)  # back in the queue, in queue order
    interrupted: list[Job] = field(default_factory=list)  # were `running`; attempts + 1
    failed: list[Job] = field(default_factory=list)  # interrupted too often, now failed
    undelivered: list[Job] = field(default_factory=list)  # done, result never delivered
    unnotified: list[Job] = field(default_factory=list)  # failed, member never told


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


@dataclass(frozen=True, slots=True)
class _ClipRules:
    frame_rule: int
    clip_frames: int  # default frames of one generation
    max_clip_frames: int
    max_frames: int  # cap on the total after extends


class JobService:
    """Submit, run, retry, cancel and resume jobs; publish what happens to them."""

    def __init__(
        self,
        store: Store,
        backend: gp.Backend,
        *,
        data_dir: Path,
        limits: Limits | None = None,
        clock: Callable[[], float] = time.time,
        max_attempts: int = 2,
        position_interval: float | None = 2.0,  # None: no PositionChanged events
        byte_budget: int = 10 * MiB,
        output_retention_days: float | None = None,
        default_gen_seconds: float = 60.0,
        poll_interval: float = 1.0,
    ) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts!r}")
        self.store = store
        self.backend = backend
        self.data_dir = Path(data_dir)
        self.inputs_dir = self.data_dir / "inputs"
        self.outputs_dir = self.data_dir / "outputs"
        self.tmp_dir = self.outputs_dir / ".tmp"
        self.limits = limits or Limits()
        self.clock = clock
        self.max_attempts = max_attempts
        self.position_interval = position_interval
        self.byte_budget = byte_budget
        self.output_retention_days = output_retention_days
        self.default_gen_seconds = default_gen_seconds
        self._scheduler = Scheduler(
            capacity=self._backend_capacity,
            total=self._backend_total,
            run=self._run,
            poll_interval=poll_interval,
            on_change=self._queue_changed,
        )
        self._preset_keys: dict[str, str] = {}  # queued job -> key of its typical duration
        self._listeners: list[Listener] = []
        self._cancelled: set[str] = set()  # running jobs cancelled by a member
        self._cpu_tasks: dict[str, asyncio.Task[None]] = {}  # loop jobs (no GPU)
        self._cpu_gate = asyncio.Semaphore(1)
        self._last_positions: dict[str, int] = {}
        self._positions_task: asyncio.Task[None] | None = None
        self._housekeeping: asyncio.Task[None] | None = None
        self._gen_times: dict[str, float] = {}
        self._started = False
        self._closing = False

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> ResumeReport:
        """Resume from the database, then start dispatching. Call once."""
        if self._started:
            raise RuntimeError("JobService.start() was already called")
        self._started = True
        for directory in (self.inputs_dir, self.outputs_dir, self.tmp_dir):
            directory.mkdir(parents=True, exist_ok=True)
        for stale in self.tmp_dir.iterdir():  # half-written files of a previous run
            with contextlib.suppress(OSError):
                stale.unlink()
        report = self.resume()
        await self._scheduler.start()
        if self.output_retention_days is not None:
            self._housekeeping = asyncio.create_task(self._prune_periodically())
        return report

    async def close(self) -> None:
        """Stop dispatching; runs in flight are abandoned and stay `running` in the database,
        so the next start() puts them back in the queue. Close this before the backend."""
        self._closing = True
        tasks = [t for t in (self._positions_task, self._housekeeping) if t is not None]
        tasks += list(self._cpu_tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._scheduler.close()

    def kick(self) -> None:
        """Look for free slots now (wire a backend's change callback here: a worker that
        appears is used at once, not at the next poll)."""
        self._scheduler.kick()

    def resume(self) -> ResumeReport:
        """Rebuild the queue from the database (start() calls this).

        `running` jobs were interrupted: back to `queued` with attempts + 1. Everything
        waiting re-enters the scheduler in submission order, so each member's FIFO and the
        guilds' order of arrival are kept.
        """
        report = ResumeReport()
        for job in self.store.jobs_with_status("running"):
            if job.attempts + 1 > MAX_INTERRUPTIONS:
                failed = self._fail(
                    job,
                    "running",
                    "This clip was interrupted by restarts too many times; please try again.",
                    kind="crash",
                    attempts=job.attempts + 1,
                )
                report.failed.append(failed)
                continue
            job = self.store.transition(
                job.id,
                "running",
                "queued",
                attempts=job.attempts + 1,
                started_at=None,
                progress_step=None,
                progress_total=None,
                stage=None,
            )
            report.interrupted.append(job)
        for job in self.store.jobs_with_status("queued"):
            self._enqueue(job)
            report.requeued.append(job)
        report.undelivered = self.store.undelivered(("done",))
        report.unnotified = self.store.undelivered(("failed",))
        log.info(
            "resumed: %d queued (%d interrupted), %d undelivered",
            len(report.requeued),
            len(report.interrupted),
            len(report.undelivered),
        )
        return report

    # -- events -------------------------------------------------------------------------

    def add_listener(self, callback: Listener) -> None:
        self._listeners.append(callback)

    def remove_listener(self, callback: Listener) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(callback)

    def subscribe(self) -> EventStream:
        return EventStream(self)

    def _publish(self, event: JobEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("job %s: event listener failed on %s", event.job.id, event)

    # -- submitting ---------------------------------------------------------------------

    async def submit(
        self,
        *,
        guild_id: int | None,
        channel_id: int,
        user_id: int,
        prompt: str,
        image_sha256: str,
        negative_prompt: str = "",
        camera: str | None = None,
        duration: str | None = None,
        seed: int | None = None,
        preset: str | None = None,
        interaction: InteractionRef | None = None,
    ) -> Job:
        """Queue a new clip from an image already stored by intake (`image_sha256`)."""
        prompt = intake.normalise_prompt(prompt, max_len=self.limits.max_prompt_len)
        negative_prompt = intake.normalise_prompt(
            negative_prompt or "",
            max_len=self.limits.max_prompt_len,
            allow_empty=True,
            what="negative prompt",
        )
        camera = _check_camera(camera)
        duration = _check_duration(duration)
        seed = _check_seed(seed) if seed is not None else _random_seed()
        self._check_input_image(image_sha256)
        job = self._new_job(
            kind="animate",
            guild_id=guild_id,
            channel_id=channel_id,
            user_id=user_id,
            prompt=prompt,
            negative_prompt=negative_prompt,
            camera=camera,
            duration=duration,
            seed=seed,
            preset=preset,
            input_sha256=image_sha256,
            interaction=interaction,
        )
        return self._admit(job)

    async def reroll(
        self,
        parent_id: str,
        *,
        user_id: int,
        guild_id: Any = _SAME,
        channel_id: Any = _SAME,
        interaction: InteractionRef | None = None,
    ) -> Job:
        """The same image and prompt with a new seed."""
        parent = self._parent_for(parent_id)
        return self._admit(
            self._child(
                parent, "reroll", user_id, guild_id, channel_id, interaction, seed=_random_seed()
            )
        )

    async def vary(
        self,
        parent_id: str,
        *,
        user_id: int,
        strength: str | float = "subtle",
        guild_id: Any = _SAME,
        channel_id: Any = _SAME,
        interaction: InteractionRef | None = None,
    ) -> Job:
        """The same seed with variation noise mixed in (subtle 0.25, strong 0.6)."""
        if isinstance(strength, str):
            if strength not in VARY_STRENGTHS:
                raise BadOption(f"Variation strength must be subtle or strong, not {strength!r}.")
            value = VARY_STRENGTHS[strength]
        elif (
            isinstance(strength, int | float)
            and not isinstance(strength, bool)
            and 0 < strength <= 1
        ):
            value = float(strength)
        else:
            raise BadOption(f"Variation strength must be between 0 and 1, not {strength!r}.")
        parent = self._parent_for(parent_id)
        return self._admit(
            self._child(
                parent,
                "vary",
                user_id,
                guild_id,
                channel_id,
                interaction,
                variation_seed=_random_seed(),
                variation_strength=value,
            )
        )

    async def edit(
        self,
        parent_id: str,
        *,
        user_id: int,
        prompt: str,
        guild_id: Any = _SAME,
        channel_id: Any = _SAME,
        interaction: InteractionRef | None = None,
    ) -> Job:
        """A new prompt on the same image and seed (and the same variation, if any)."""
        prompt = intake.normalise_prompt(prompt, max_len=self.limits.max_prompt_len)
        parent = self._parent_for(parent_id)
        return self._admit(
            self._child(parent, "edit", user_id, guild_id, channel_id, interaction, prompt=prompt)
        )

    def check_extend(
        self,
        parent_id: str,
        *,
        user_id: int,
        guild_id: Any = _SAME,
        channel_id: Any = _SAME,
    ) -> Job:
        """Extend's refusals that need no frame of the clip: the parent is finished and its
        video kept, its length cap (when its frame count is on the row), the button rules
        (owner-only servers, a pending child) and precheck's limits. Returns the parent.

        The Discord layer calls this before deferring, so a refusal is private; extend()
        runs it again, and everything is checked once more right before the row is written.
        """
        parent = self._parent_for(parent_id)
        self._parent_output(parent)
        if parent.num_frames:
            self._extend_frames(parent, parent.num_frames)
        self._check_child_allowed(parent, user_id, guild_id, channel_id)
        guild, channel = self._place_of(parent, guild_id, channel_id)
        self.precheck(guild_id=guild, channel_id=channel, user_id=user_id, preset=parent.preset)
        return parent

    async def extend(
        self,
        parent_id: str,
        *,
        user_id: int,
        guild_id: Any = _SAME,
        channel_id: Any = _SAME,
        interaction: InteractionRef | None = None,
    ) -> Job:
        """Continue the clip from its last frame; the two clips are joined (seam frame
        dropped) and the total length is capped by the preset."""
        # Cheap checks before the (slower) last-frame extraction.
        parent = self.check_extend(
            parent_id, user_id=user_id, guild_id=guild_id, channel_id=channel_id
        )
        source = self._parent_output(parent)
        parent_frames = (
            parent.num_frames or (await asyncio.to_thread(encode.probe, source))["frames"]
        )
        new_frames = self._extend_frames(parent, parent_frames)
        frame = await asyncio.to_thread(encode.last_frame, source)
        image = await asyncio.to_thread(intake.normalise_pil, frame)
        await asyncio.to_thread(intake.store_image, image, self.inputs_dir)
        job = self._child(
            parent,
            "extend",
            user_id,
            guild_id,
            channel_id,
            interaction,
            input_sha256=image.sha256,
        )
        job.meta = {
            "extend_source": str(source),
            "extend_frames": new_frames,
            "parent_frames": parent_frames,
        }
        return self._admit(job)

    def _extend_frames(self, parent: Job, parent_frames: int) -> int:
        """Frames the next extension of `parent` may add, on the model's frame grid; raises
        LimitReached when the clip is already at the preset's total-length cap."""
        rules = self._clip_rules(parent)
        room = rules.max_frames - parent_frames + 1  # the seam frame is shared
        new_frames = min(rules.clip_frames, rules.max_clip_frames, room)
        new_frames = (new_frames - 1) // rules.frame_rule * rules.frame_rule + 1  # snap down
        if new_frames < rules.frame_rule + 1:
            seconds = parent_frames / (parent.fps or 16)
            raise LimitReached(
                f"This clip is already as long as it can get ({parent_frames} frames, "
                f"{seconds:.1f} s)."
            )
        return new_frames

    async def loop(
        self,
        parent_id: str,
        *,
        user_id: int,
        guild_id: Any = _SAME,
        channel_id: Any = _SAME,
        interaction: InteractionRef | None = None,
    ) -> Job:
        """Ping-pong re-encode of the clip (forwards then backwards). No GPU: it does not
        wait in the generation queue and does not count against the daily quota."""
        parent = self._parent_for(parent_id)
        if parent.kind == "loop":
            raise InvalidState("That clip already loops.")
        source = self._parent_output(parent)
        job = self._child(parent, "loop", user_id, guild_id, channel_id, interaction)
        job.meta = {"loop_source": str(source)}
        return self._admit(job)

    # -- cancelling ---------------------------------------------------------------------

    async def cancel(self, job_id: str, *, user_id: int, moderator: bool = False) -> Job:
        """Cancel a waiting or running job: its owner, or a moderator (Manage Messages)."""
        job = self.store.require_job(job_id)
        if job.user_id != user_id and not moderator:
            raise NotAllowed(
                "Only the member who asked for this clip, or a moderator, can cancel it."
            )
        if job.status == "queued":
            self._scheduler.remove(job_id)
            job = self._to_cancelled(job, "queued")
            task = self._cpu_tasks.get(job_id)
            if task is not None:
                task.cancel()
            return job
        if job.status == "running":
            job = self._to_cancelled(job, "running")
            self._cancelled.add(job_id)
            task = self._cpu_tasks.get(job_id)
            if task is not None:
                task.cancel()
            else:
                try:
                    await self.backend.cancel(job_id)
                except Exception:
                    log.exception("job %s: backend cancel failed", job_id)
            return job
        raise InvalidState(f"That clip is already {job.status}.")

    def _to_cancelled(self, job: Job, status: str) -> Job:
        with self.store.db.atomic():
            cancelled = self.store.transition(
                job.id,
                status,
                "cancelled",
                finished_at=self.clock(),
                quota_day=None,
                stage=None,
            )
            self._refund(job)
        self._publish(Cancelled(cancelled))
        return cancelled

    # -- queries ------------------------------------------------------------------------

    def get(self, job_id: str) -> Job:
        return self.store.require_job(job_id)

    @property
    def warming_up(self) -> bool:
        return not self.backend.ready

    def position(self, job_id: str) -> int | None:
        """1-based place in the generation queue; None when not waiting for the GPU."""
        return self._scheduler.position(job_id)

    def eta(self, job_id: str) -> float | None:
        """Seconds until the clip should be done (queued or running); None otherwise."""
        if job_id in self._scheduler.running or job_id in self._cpu_tasks:
            job = self.store.get_job(job_id)
            return self._remaining(job) if job is not None else None
        if job_id not in self._scheduler.queue:
            return None
        return self._etas(until=job_id).get(job_id)

    def queue_summary(self, guild_id: int | None, user_id: int) -> QueueSummary:
        mine = self.store.pending_jobs_for_user(user_id)
        etas = self._etas() if mine else {}
        key = queue_key(guild_id, user_id)
        guild_running = 0
        for running_id in self._scheduler.running:
            job = self.store.get_job(running_id)
            if job is not None and queue_key(job.guild_id, job.user_id) == key:
                guild_running += 1
        return QueueSummary(
            user_jobs=[
                QueuedJobInfo(
                    job,
                    self.position(job.id),
                    etas.get(job.id) if job.status == "queued" else self._remaining(job),
                )
                for job in mine
            ],
            guild_waiting=self._scheduler.queue.waiting_in(key),
            guild_running=guild_running,
            total_waiting=len(self._scheduler.queue),
            total_running=len(self._scheduler.running),
            warming_up=self.warming_up,
        )

    def history(self, user_id: int, guild_id: int | None = None, limit: int = 10) -> list[Job]:
        return self.store.history(user_id, guild_id=guild_id, limit=limit)

    # -- settings -----------------------------------------------------------------------

    def guild_settings(self, guild_id: int) -> GuildSettings:
        return self.store.get_guild_settings(guild_id)

    def update_guild_settings(self, guild_id: int, /, **changes: Any) -> GuildSettings:
        """Validate and save server settings (`/settings`); unknown presets are refused."""
        presets = changes.get("allowed_presets")
        if presets is not None and not isinstance(presets, str):
            known = self.known_presets()
            unknown = [p for p in presets if p not in known]
            if unknown:
                raise BadOption(
                    f"Unknown preset {unknown[0]!r}; the presets are: {', '.join(known)}."
                )
        return self.store.update_guild_settings(guild_id, now=self.clock(), **changes)

    # -- delivery bookkeeping (called by the Discord layer) ------------------------------

    def mark_progress_message(self, job_id: str, *, channel_id: int, message_id: int) -> Job:
        return self.store.update_job(
            job_id, progress_channel_id=channel_id, progress_message_id=message_id
        )

    def mark_delivered(
        self, job_id: str, *, message_id: int | None, channel_id: int | None = None
    ) -> Job:
        """Record that the result (or failure notice) reached the member. Idempotent: the
        first delivery's message is kept."""
        job = self.store.require_job(job_id)
        if job.delivered:
            return job
        return self.store.update_job(
            job_id,
            delivered_at=self.clock(),
            result_message_id=message_id,
            result_channel_id=channel_id,
        )

    def record_delivery_attempt(self, job_id: str) -> Job:
        return self.store.increment_delivery_attempts(job_id)

    def mark_result_deleted(self, job_id: str, *, message_id: int) -> Job:
        """A message showing this clip was deleted (the Delete button). If it was the job's
        result message, the row forgets it (`result_deleted_at` set), so /history and the
        progress message stop linking to it; another copy (a /job re-post) changes nothing."""
        self.store.require_job(job_id)
        self.store.mark_result_deleted(job_id, message_id=message_id, at=self.clock())
        return self.store.require_job(job_id)

    def restore_result(self, job_id: str, *, message_id: int, channel_id: int) -> Job:
        """A /job re-post becomes the result message again, if the result was deleted and the
        re-post is in the clip's own channel (where the progress message's link points)."""
        job = self.store.require_job(job_id)
        if job.result_deleted_at is None or channel_id != job.channel_id:
            return job
        self.store.restore_result(job_id, message_id=message_id, channel_id=channel_id)
        return self.store.require_job(job_id)

    def mark_shared(self, job_id: str, *, message_id: int, channel_id: int) -> Job:
        """Record the clip's showcase post. The first post wins: a clip is shared once."""
        self.store.require_job(job_id)
        self.store.mark_shared(
            job_id, message_id=message_id, channel_id=channel_id, at=self.clock()
        )
        return self.store.require_job(job_id)

    def prune_outputs(self) -> int:
        """Delete output files older than the retention setting; rows stay. Returns count."""
        if self.output_retention_days is None:
            return 0
        now = self.clock()
        cutoff = now - self.output_retention_days * 86400
        pruned = 0
        for job in self.store.outputs_finished_before(cutoff):
            with contextlib.suppress(FileNotFoundError):
                Path(job.output_path or "").unlink()
            self.store.update_job(job.id, output_path=None, output_pruned_at=now)
            pruned += 1
        self.store.prune_daily_counts(_day(now - 7 * 86400))
        return pruned

    async def _prune_periodically(self) -> None:
        while True:
            try:
                pruned = self.prune_outputs()
                if pruned:
                    log.info("pruned %d old outputs", pruned)
            except Exception:
                log.exception("pruning outputs failed")
            await asyncio.sleep(3600)

    # -- admission ----------------------------------------------------------------------

    def _new_job(
        self,
        *,
        kind: str,
        guild_id: int | None,
        channel_id: int,
        user_id: int,
        prompt: str,
        seed: int,
        input_sha256: str,
        interaction: InteractionRef | None,
        **fields: Any,
    ) -> Job:
        now = self.clock()
        job = Job(
            id=Store.new_job_id(),
            kind=kind,
            status="queued",
            guild_id=guild_id,
            channel_id=channel_id,
            user_id=user_id,
            prompt=prompt,
            input_sha256=input_sha256,
            seed=seed,
            created_at=now,
            **fields,
        )
        if interaction is not None:
            job.interaction_token = interaction.token
            job.application_id = interaction.application_id
            job.token_created_at = (
                interaction.created_at if interaction.created_at is not None else now
            )
        return job

    def precheck(
        self,
        *,
        guild_id: int | None,
        channel_id: int,
        user_id: int,
        preset: str | None = None,
    ) -> None:
        """Refuse now what submit() would refuse without looking at the image: an unknown
        or disallowed preset, a disallowed channel, the member's pending clips, the server's
        pending clips, the daily quota, the bot's queue size. Same code, same typed errors
        and messages as submit(), so the Discord layer can call it before it defers and
        downloads the attachment. Passing promises nothing: submit() checks it all again
        when it writes the row."""
        self._check_admission(
            guild_id=guild_id,
            channel_id=channel_id,
            user_id=user_id,
            preset=preset,
            counts_quota=True,
        )

    def _check_admission(
        self,
        *,
        guild_id: int | None,
        channel_id: int,
        user_id: int,
        preset: str | None,
        counts_quota: bool,
        parent_id: str | None = None,
    ) -> str:
        """Every admission rule of a new job (precheck and _admit share it); returns the
        UTC day its daily count goes to."""
        settings = self._settings(guild_id)
        self._check_place(settings, channel_id, preset)
        if parent_id is not None:
            self._check_not_pending(parent_id, user_id)
        day = _day(self.clock())
        self._check_limits(
            settings, user_id=user_id, guild_id=guild_id, day=day, counts_quota=counts_quota
        )
        return day

    def _admit(self, job: Job) -> Job:
        """Check every rule, write the row, count the quota, queue it. Synchronous on
        purpose: no other submit can interleave between the checks and the insert."""
        counts_quota = job.kind != "loop"
        day = self._check_admission(
            guild_id=job.guild_id,
            channel_id=job.channel_id,
            user_id=job.user_id,
            preset=job.preset,
            counts_quota=counts_quota,
            parent_id=job.parent_id,
        )
        for _ in range(5):
            try:
                with self.store.db.atomic():
                    if counts_quota:
                        job.quota_day = day
                        self.store.add_daily(job.user_id, day, 1)
                    self.store.insert_job(job)
                break
            except sqlite3.IntegrityError:  # an id collision (50 random bits): a new id
                if self.store.get_job(job.id) is None:
                    raise
                job.id = Store.new_job_id()
        self._enqueue(job)
        position = self.position(job.id)
        if position is not None:
            self._last_positions[job.id] = position  # told in Queued: no PositionChanged
        self._publish(Queued(job, position, self.eta(job.id)))
        return job

    def _settings(self, guild_id: int | None) -> GuildSettings | None:
        return self.store.get_guild_settings(guild_id) if guild_id is not None else None

    def known_presets(self) -> list[str]:
        """Preset names a job may ask for: PRESETS, and what the backend's workers serve
        now (`served()`: a fleet's `local:<folder>` models)."""
        names = list(PRESETS)
        try:
            names += [name for name in sorted(self.backend.served()) if name not in PRESETS]
        except Exception:  # the backend cannot say now: the built-in presets only
            log.exception("backend served() failed")
        return names

    def _check_preset(self, preset: str | None) -> None:
        if preset is None or preset in PRESETS:
            return
        names = self.known_presets()
        if preset not in names:
            raise BadOption(f"Unknown preset {preset!r}; the presets are: {', '.join(names)}.")

    def _check_place(
        self, settings: GuildSettings | None, channel_id: int, preset: str | None
    ) -> None:
        self._check_preset(preset)
        if settings is None:
            return
        if not settings.channel_allowed(channel_id):
            channels = ", ".join(f"<#{c}>" for c in settings.allowed_channel_ids[:5])
            raise NotAllowed(f"Zoetrope isn't enabled in this channel. Try {channels}.")
        if not settings.preset_allowed(preset):
            raise NotAllowed(
                f"The {preset} preset isn't allowed on this server. "
                f"Allowed: {', '.join(settings.allowed_presets)}."
            )

    def _check_limits(
        self,
        settings: GuildSettings | None,
        *,
        user_id: int,
        guild_id: int | None,
        day: str,
        counts_quota: bool,
    ) -> None:
        per_user = self.limits.pending_per_user
        per_guild = self.limits.pending_per_guild
        daily = self.limits.daily_per_user
        if settings is not None:
            per_user = settings.max_pending_per_user or per_user
            per_guild = settings.max_pending_per_guild or per_guild
            if settings.daily_limit_per_user is not None:
                daily = settings.daily_limit_per_user or None  # 0: no daily limit here
        pending = self.store.pending_for_user(user_id)
        if pending >= per_user:
            clips = "clip" if pending == 1 else "clips"
            raise LimitReached(
                f"You already have {pending} {clips} in the queue — wait for one to finish "
                "or /cancel one."
            )
        if counts_quota and daily is not None:
            used = self.store.daily_count(user_id, day)
            if used >= daily:
                raise QuotaExceeded(
                    f"You've made {used} clips today, the daily limit here. "
                    f"It resets at midnight UTC (<t:{_next_midnight(self.clock())}:R>)."
                )
        if guild_id is not None and self.store.pending_for_guild(guild_id) >= per_guild:
            raise QueueFull(
                f"This server already has {per_guild} clips in the queue — try again in a "
                "few minutes."
            )
        if len(self._scheduler.queue) >= self.limits.max_queue:
            raise QueueFull("Zoetrope's queue is full right now — try again in a few minutes.")

    def _check_input_image(self, sha256: str) -> None:
        try:
            path = intake.input_path(self.inputs_dir, sha256)
        except ValueError:
            raise BadImage("That image was not received properly; attach it again.") from None
        if not path.is_file():
            raise BadImage("That image was not received properly; attach it again.")

    def _parent_for(self, parent_id: str) -> Job:
        parent = self.store.require_job(parent_id)
        if parent.status != "done":
            raise InvalidState("That clip isn't finished yet.")
        return parent

    def _parent_output(self, parent: Job) -> Path:
        if parent.output_path is None or not Path(parent.output_path).is_file():
            raise NotFound("That clip's video is no longer kept, so it can't be used.")
        return Path(parent.output_path)

    def _check_child_allowed(
        self, parent: Job, user_id: int, guild_id: Any, channel_id: Any
    ) -> None:
        guild, channel = self._place_of(parent, guild_id, channel_id)
        settings = self._settings(guild)
        if (
            user_id != parent.user_id
            and settings is not None
            and not settings.others_can_use_buttons
        ):
            raise NotAllowed("On this server only the clip's owner can use its buttons.")
        self._check_place(settings, channel, parent.preset)
        self._check_not_pending(parent.id, user_id)

    def _check_not_pending(self, parent_id: str, user_id: int) -> None:
        if self.store.pending_child(parent_id, user_id) is not None:
            raise AlreadyPending(
                "You already have a clip from this one in the queue — wait for it to "
                "finish, or /cancel it."
            )

    @staticmethod
    def _place_of(parent: Job, guild_id: Any, channel_id: Any) -> tuple[int | None, int]:
        """Where a child job of `parent` lives (_SAME: the parent's server or channel)."""
        guild = parent.guild_id if guild_id is _SAME else guild_id
        channel = parent.channel_id if channel_id is _SAME else channel_id
        return guild, channel

    def _child(
        self,
        parent: Job,
        kind: str,
        user_id: int,
        guild_id: Any,
        channel_id: Any,
        interaction: InteractionRef | None,
        **changes: Any,
    ) -> Job:
        """A child job: the parent's image, prompt, seed and options, owned by whoever
        clicked, crediting the original author when that is someone else."""
        self._check_child_allowed(parent, user_id, guild_id, channel_id)
        fields: dict[str, Any] = {
            "prompt": parent.prompt,
            "negative_prompt": parent.negative_prompt,
            "camera": parent.camera,
            "duration": parent.duration,
            "preset": parent.preset,
            "seed": parent.seed,
            "input_sha256": parent.input_sha256,
            "variation_seed": parent.variation_seed,
            "variation_strength": parent.variation_strength,
        }
        if kind in ("reroll", "extend"):
            fields["variation_seed"], fields["variation_strength"] = None, 0.0
        fields.update(changes)
        credit = parent.owner_id if parent.owner_id != user_id else None
        guild, channel = self._place_of(parent, guild_id, channel_id)
        return self._new_job(
            kind=kind,
            guild_id=guild,
            channel_id=channel,
            user_id=user_id,
            interaction=interaction,
            parent_id=parent.id,
            credit_user_id=credit,
            **fields,
        )

    def _clip_rules(self, job: Job) -> _ClipRules:
        """Frame rules of the model that made `job`: its preset, else what the worker
        reported in the clip's meta, else conservative defaults (Wan's 4k+1 grid, which
        LTX's 8k+1 also satisfies)."""
        name = job.preset or job.meta.get("preset")
        preset: Preset | None = PRESETS.get(name) if isinstance(name, str) else None
        if preset is not None:
            clip = preset.frames_for(job.duration)
            return _ClipRules(preset.frame_rule, clip, preset.max_clip_frames, preset.max_frames)
        meta = job.meta
        first = int(meta.get("clip_frames") or meta.get("num_frames") or job.num_frames or 81)
        rule = int(meta.get("frame_rule") or 4)
        frames = meta.get("duration_frames")
        clip = (
            int(frames.get(job.duration or "standard", first))
            if isinstance(frames, dict)
            else first
        )
        return _ClipRules(
            frame_rule=rule,
            clip_frames=clip,
            max_clip_frames=int(meta.get("max_clip_frames") or clip),
            max_frames=int(meta.get("max_frames") or 3 * clip),
        )

    # -- the queue ----------------------------------------------------------------------

    def _enqueue(self, job: Job, *, front: bool = False) -> None:
        if job.kind == "loop":
            self._cpu_tasks[job.id] = asyncio.create_task(
                self._run_loop(job.id), name=f"loop-{job.id}"
            )
            return
        self._scheduler.enqueue(
            job.id,
            queue_key(job.guild_id, job.user_id),
            job.user_id,
            pool=self._pool(job.preset),
            front=front,
        )
        self._preset_keys[job.id] = _gen_key(job)
        self._queue_changed()

    def _pool(self, preset: str | None) -> str | None:
        """The scheduler pool of a job of `preset` (None: the bot's default model): the
        backend's route (the Redis backend: the served name the job's SAQ queue is named
        after, None for "any worker"; LocalBackend: None, one pool)."""
        return self.backend.route(preset)

    def _backend_capacity(self, pool: Any) -> int:
        return int(self.backend.capacity(pool))

    def _backend_total(self, pool: Any = None) -> int | None:
        """The backend's slots in `pool`, busy or not."""
        return int(self.backend.total_slots(pool))

    def _queue_changed(self) -> None:
        if self.position_interval is None or self._closing:
            return
        if self._positions_task is None or self._positions_task.done():
            # No running loop (resume() called outside one): nobody is listening yet.
            with contextlib.suppress(RuntimeError):
                self._positions_task = asyncio.get_running_loop().create_task(
                    self._publish_positions_later()
                )

    async def _publish_positions_later(self) -> None:
        await asyncio.sleep(self.position_interval)
        self._positions_task = None
        etas = self._etas()
        positions = self._scheduler.queue.positions()
        for job_id, position in positions.items():
            if self._last_positions.get(job_id) == position:
                continue
            job = self.store.get_job(job_id)
            if job is not None and job.status == "queued":
                self._publish(PositionChanged(job, position, etas.get(job_id)))
        self._last_positions = positions

    def _typical_seconds(self, key: str) -> float:
        if key not in self._gen_times:
            recent = self.store.recent_gen_times(key)
            self._gen_times[key] = statistics.median(recent) if recent else self.default_gen_seconds
        return self._gen_times[key]

    def _remaining(self, job: Job) -> float | None:
        if job.status != "running":
            return None
        typical = self._typical_seconds(_gen_key(job))
        elapsed = max(self.clock() - (job.started_at or self.clock()), 0.0)
        if job.stage == "denoise" and job.progress_step and job.progress_total:
            done = job.progress_step / job.progress_total
            return max(elapsed / done - elapsed, 0.0)
        return max(typical - elapsed, 0.0)

    def _etas(self, until: str | None = None) -> dict[str, float]:
        """Seconds until each waiting job is done: each pool's dispatch order played over
        that pool's slots, each job taking its preset's typical time."""
        queue = self._scheduler.queue
        if until is not None:
            pools = [queue.pool_of(until)] if until in queue else []
        else:
            pools = queue.pools()
        out: dict[str, float] = {}
        for pool in pools:
            running = self._scheduler.running_in(pool)
            remaining = []
            for running_id in running:
                job = self.store.get_job(running_id)
                if job is not None:
                    remaining.append(self._remaining(job) or 0.0)
            slots = max(1, len(running) + max(self._scheduler.free_slots(pool), 0))
            free_at = sorted(remaining)[:slots] + [0.0] * max(0, slots - len(remaining))
            heapq.heapify(free_at)
            for job_id in queue.order(pool):
                typical = self._typical_seconds(self._preset_keys.get(job_id, "default"))
                start = heapq.heappop(free_at)
                out[job_id] = start + typical
                heapq.heappush(free_at, start + typical)
                if job_id == until:
                    break
        return out

    # -- running ------------------------------------------------------------------------

    def _build_request(self, job: Job) -> gp.GenerationRequest:
        prompt = job.prompt
        if job.camera:
            prompt = f"{prompt.rstrip(' .,;')}, {CAMERAS[job.camera]}."
        num_frames = job.meta.get("extend_frames") if job.kind == "extend" else None
        return gp.GenerationRequest(
            job_id=job.id,
            image_path=str(intake.input_path(self.inputs_dir, job.input_sha256)),
            prompt=prompt,
            output_path=str(self.tmp_dir / f"{job.id}-{job.attempts}.mp4"),
            seed=job.seed,
            negative_prompt=job.negative_prompt,
            preset=job.preset,
            num_frames=num_frames,
            duration=None if num_frames is not None else job.duration,
            variation_seed=job.variation_seed,
            variation_strength=job.variation_strength if job.variation_seed is not None else 0.0,
            byte_budget=self.byte_budget,
            degraded=bool(job.meta.get("degraded")),
        )

    async def _run(self, job_id: str) -> None:
        """Run one queued job through the backend (the scheduler calls this)."""
        try:
            await self._run_inner(job_id)
        finally:
            self._cancelled.discard(job_id)
            self._preset_keys.pop(job_id, None)

    async def _run_inner(self, job_id: str) -> None:
        job = self.store.get_job(job_id)
        if job is None or job.status != "queued":
            return
        request = self._build_request(job)
        started = self.clock()
        try:
            job = self.store.transition(
                job_id,
                "queued",
                "running",
                started_at=started,
                progress_step=None,
                progress_total=None,
                stage=None,
            )
        except InvalidState:
            return
        self._publish(Started(job))
        outcome: gp.Done | gp.Failed | None = None
        events = self.backend.submit(request)
        try:
            try:
                async for event in events:
                    self._scheduler.confirm(job_id)
                    if isinstance(event, gp.Progress):
                        self._on_progress(job_id, event)
                    else:
                        outcome = event
                        break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("job %s: the backend raised", job_id)
                outcome = gp.Failed(
                    "crash", f"the generator connection failed ({type(exc).__name__})"
                )
            if outcome is None:
                outcome = gp.Failed("crash", "the generator stopped without a result")
            if isinstance(outcome, gp.Failed):
                if self._closing and outcome.kind == "crash":
                    return  # shutting down: the job stays `running`; the next start requeues
                # Before any await: a retry must be back at the head of the queue before
                # the dispatcher can give the freed slot to another job.
                self._finish_failed(job, outcome)
                return
        finally:
            with contextlib.suppress(Exception):
                await events.aclose()
        await self._finish_done(job, outcome, started)

    def _on_progress(self, job_id: str, event: gp.Progress) -> None:
        if job_id in self._cancelled:
            return
        job = self.store.update_job(
            job_id, progress_step=event.step, progress_total=event.total, stage=event.stage
        )
        if job.status == "running":
            self._publish(Progress(job, event.step, event.total, event.stage))

    async def _finish_done(self, job: Job, done: gp.Done, started: float) -> None:
        final = self.outputs_dir / f"{job.id}.mp4"
        produced = Path(done.path)
        facts = done.facts
        meta = {**job.meta, **facts.to_dict()}
        num_frames = facts.num_frames
        try:
            if job.kind == "extend":
                joined = self.tmp_dir / f"{job.id}-joined.mp4"
                result = await asyncio.to_thread(
                    encode.join,
                    job.meta["extend_source"],
                    produced,
                    joined,
                    byte_budget=self.byte_budget,
                )
                os.replace(joined, final)
                produced.unlink(missing_ok=True)
                num_frames = result.frames
                meta.update(
                    clip_frames=facts.num_frames,
                    num_frames=result.frames,
                    video_width=result.width,
                    video_height=result.height,
                    fits=result.fits,
                    note=result.note,
                )
            else:
                os.replace(produced, final)
        except (OSError, ValueError, KeyError, encode.EncodeError) as exc:
            log.exception("job %s: storing the result failed", job.id)
            message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            self._finish_failed(job, gp.Failed("error", f"Saving the clip failed: {message}"))
            return
        now = self.clock()
        wall = now - started
        if job.kind != "extend":
            meta.setdefault("clip_frames", meta.get("num_frames"))
        try:
            job = self.store.transition(
                job.id,
                "running",
                "done",
                output_path=str(final),
                output_bytes=final.stat().st_size,
                finished_at=now,
                gen_seconds=float(facts.gen_seconds or wall),
                width=facts.width,
                height=facts.height,
                num_frames=num_frames,
                fps=facts.fps,
                steps=facts.steps,
                progress_step=None,
                progress_total=None,
                stage=None,
                error=None,
                meta=meta,
            )
        except InvalidState:  # cancelled while it finished: nobody wants the file
            final.unlink(missing_ok=True)
            return
        key = _gen_key(job)
        self.store.record_gen_time(key, wall, now)
        self._gen_times.pop(key, None)
        self._publish(Done(job))

    def _finish_failed(self, job: Job, failed: gp.Failed) -> None:
        with contextlib.suppress(OSError):
            for leftover in self.tmp_dir.glob(f"{job.id}-*"):
                leftover.unlink()
        current = self.store.get_job(job.id)
        if current is None or current.status != "running":
            return  # cancelled by a member meanwhile: already reported
        if failed.kind == "requeue":
            requeues = int(current.meta.get("requeues") or 0) + 1
            if requeues <= MAX_REQUEUES:
                self._requeue(current, failed, requeues)
                return
            failed = gp.Failed("crash", f"given back {requeues} times: {failed.message}")
        attempts = current.attempts + 1
        if failed.kind == "cancelled":
            self._to_cancelled(current, "running")
            return
        if failed.kind in ("crash", "oom") and attempts < self.max_attempts:
            meta = dict(current.meta)
            if failed.kind == "oom":
                meta["degraded"] = True
            try:
                job = self.store.transition(
                    job.id,
                    "running",
                    "queued",
                    attempts=attempts,
                    error_kind=failed.kind,
                    started_at=None,
                    progress_step=None,
                    progress_total=None,
                    stage=None,
                    meta=meta,
                )
            except InvalidState:
                return
            log.warning("job %s: %s (%s); retrying", job.id, failed.kind, failed.message)
            self._enqueue(job, front=True)
            position = self.position(job.id)
            if position is not None:
                self._last_positions[job.id] = position
            self._publish(Queued(job, position, self.eta(job.id), retry=True))
            return
        reason = _failure_reason(failed, attempts)
        log.warning("job %s failed for good: %s (%s)", job.id, failed.kind, failed.message)
        try:
            self._fail(current, "running", reason, kind=failed.kind, attempts=attempts)
        except InvalidState:
            return

    def _requeue(self, job: Job, failed: gp.Failed, requeues: int) -> None:
        """The worker gave the job back unfinished (it was stopping): back to `queued` at
        the head of its queue, attempts unchanged. While the service closes, only the row
        changes; the next start() queues it."""
        try:
            job = self.store.transition(
                job.id,
                "running",
                "queued",
                started_at=None,
                progress_step=None,
                progress_total=None,
                stage=None,
                meta={**job.meta, "requeues": requeues},
            )
        except InvalidState:
            return
        log.info("job %s: given back (%s); queued again at the head", job.id, failed.message)
        if self._closing:
            return
        self._enqueue(job, front=True)
        position = self.position(job.id)
        if position is not None:
            self._last_positions[job.id] = position
        self._publish(Queued(job, position, self.eta(job.id), retry=True))

    def _fail(self, job: Job, status: str, reason: str, *, kind: str, attempts: int) -> Job:
        with self.store.db.atomic():
            failed = self.store.transition(
                job.id,
                status,
                "failed",
                error=reason,
                error_kind=kind,
                attempts=attempts,
                finished_at=self.clock(),
                quota_day=None,
                stage=None,
            )
            self._refund(job)
        self._publish(Failed(failed, reason))
        return failed

    def _refund(self, job: Job) -> None:
        if job.quota_day is not None:
            self.store.add_daily(job.user_id, job.quota_day, -1)

    async def _run_loop(self, job_id: str) -> None:
        """A Loop job: ping-pong re-encode on the CPU, outside the GPU queue."""
        try:
            async with self._cpu_gate:
                job = self.store.get_job(job_id)
                if job is None or job.status != "queued":
                    return
                started = self.clock()
                job = self.store.transition(job_id, "queued", "running", started_at=started)
                self._publish(Started(job))
                produced = self.tmp_dir / f"{job_id}-loop.mp4"
                final = self.outputs_dir / f"{job_id}.mp4"
                try:
                    result = await asyncio.to_thread(
                        encode.pingpong,
                        job.meta["loop_source"],
                        produced,
                        byte_budget=self.byte_budget,
                    )
                    os.replace(produced, final)
                except (OSError, ValueError, KeyError, encode.EncodeError) as exc:
                    message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
                    self._fail(
                        job,
                        "running",
                        f"Making the loop failed: {message}",
                        kind="error",
                        attempts=job.attempts + 1,
                    )
                    return
                now = self.clock()
                meta = {**job.meta, **result.to_dict()}
                try:
                    job = self.store.transition(
                        job_id,
                        "running",
                        "done",
                        output_path=str(final),
                        output_bytes=final.stat().st_size,
                        finished_at=now,
                        gen_seconds=now - started,
                        width=result.width,
                        height=result.height,
                        num_frames=result.frames,
                        fps=result.fps,
                        meta=meta,
                    )
                except InvalidState:
                    final.unlink(missing_ok=True)
                    return
                self._publish(Done(job))
        except asyncio.CancelledError:
            if not self._closing:
                raise
        finally:
            self._cpu_tasks.pop(job_id, None)


# -- helpers ----------------------------------------------------------------------------


def _gen_key(job: Job) -> str:
    return job.preset or "default"


def _day(ts: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


def _next_midnight(ts: float) -> int:
    return (int(ts) // 86400 + 1) * 86400


def _random_seed() -> int:
    return random.SystemRandom().randrange(RANDOM_SEED_LIMIT)


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise BadOption(f"The seed must be a whole number from 0 to {MAX_SEED}, not {seed!r}.")
    return seed


def _check_camera(camera: str | None) -> str | None:
    if camera is None or camera == "":
        return None
    key = str(camera).strip().lower().replace(" ", "_").replace("-", "_")
    if key not in CAMERAS:
        names = ", ".join(c.replace("_", " ") for c in CAMERAS)
        raise BadOption(f"Camera must be one of {names}, not {camera!r}.")
    return key


def _check_duration(duration: str | None) -> str | None:
    if duration is None or duration == "":
        return None
    if duration not in DURATIONS:
        raise BadOption(f"Duration must be one of {', '.join(DURATIONS)}, not {duration!r}.")
    return duration


def _failure_reason(failed: gp.Failed, attempts: int) -> str:
    tries = "twice" if attempts == 2 else f"{attempts} times" if attempts > 2 else "once"
    if failed.kind == "oom":
        return (
            f"The GPU ran out of memory on this clip ({tries}). Try a shorter duration or a "
            "smaller image."
        )
    if failed.kind == "crash":
        return f"The generator crashed while making this clip ({tries}). Please try again later."
    if failed.kind == "bad_request":
        return f"The generator refused this request: {failed.message}"
    return f"Generation failed: {failed.message}"


__all__ = [
    "CAMERAS",
    "VARY_STRENGTHS",
    "Cancelled",
    "Done",
    "EventStream",
    "Failed",
    "InteractionRef",
    "JobEvent",
    "JobService",
    "Limits",
    "PositionChanged",
    "Progress",
    "Queued",
    "QueueSummary",
    "QueuedJobInfo",
    "ResumeReport",
    "Started",
]
