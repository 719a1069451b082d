"""Running jobs: the request, the backend, and what to do with each outcome.

Owns: `Runner`, which puts jobs in the scheduler (or, for Loop, on the CPU), builds each
`GenerationRequest`, runs it, stores the clip, and handles Done / Failed / requeue:
a crash is retried once at the head of the queue (an OOM is final: the worker already
retried it degraded), a `requeue` (a worker stopping) goes
back without counting an attempt, anything else fails for good with a clear reason and
a refund of the daily count; and `resume()`, which rebuilds the queue from the database.

A run keeps its scheduler slot until its result is handled, so a retry put back at the
head of the queue always gets the freed slot first (see bot/scheduler.py).

Imports: bot.backend_port, bot.events, bot.estimates, bot.scheduler, bot.store, bot.intake, bot.admission
(camera language), generator.protocol, generator.encode and generator.provenance (plain
data, ffmpeg, c2pa). No discord, no torch.

Every clip the bot re-encodes itself (Extend's join, Loop's ping-pong) is marked as
AI-generated again afterwards, naming the model the source clip's own mark names.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot import intake
from bot.admission import CAMERAS
from bot.backend_port import BackendPort
from bot.errors import InvalidState
from bot.estimates import Estimates
from bot.events import Cancelled, EventBus, JobDone, JobFailed, JobProgress, Started
from bot.scheduler import Scheduler, queue_key
from bot.store import Job, JobStatus, Store
from generator import encode, provenance
from generator import protocol as gp

log = logging.getLogger("zoetrope.jobs")

QUEUED, RUNNING = JobStatus.QUEUED, JobStatus.RUNNING
# A job interrupted by this many restarts in a row is failed rather than requeued again.
MAX_INTERRUPTIONS = 4
# A job given back unfinished ("requeue": a worker stopping) this many times costs no
# attempt; beyond that it counts as a crash, so a worker that gives every job back cannot
# keep one in the queue for ever.
MAX_REQUEUES = 10
# Fields cleared whenever a job goes back to the queue.
_NOT_RUNNING: dict[str, Any] = dict(
    started_at=None, progress_step=None, progress_total=None, stage=None
)


def generation_started(job: Job) -> bool:
    """A running job's generation began: a progress step past the model load was recorded
    (the row keeps the last Progress; "load" is the backend still loading, and no stage at
    all is a job handed over that has not reported yet)."""
    return job.stage is not None and job.stage != "load"


@dataclass(frozen=True, slots=True)
class DataDirs:
    inputs: Path
    outputs: Path
    tmp: Path  # half-written outputs, emptied on start

    @classmethod
    def under(cls, data_dir: Path) -> DataDirs:
        outputs = Path(data_dir) / "outputs"
        return cls(Path(data_dir) / "inputs", outputs, outputs / ".tmp")

    @property
    def root(self) -> Path:
        """The data dir itself (the signing identity lives in it)."""
        return self.outputs.parent


async def clip_model(path: Path | str, fallback: str | None) -> str:
    """The model a clip's own mark names (what `verify` shows), else `fallback`."""
    try:
        tags = await asyncio.to_thread(provenance.read_metadata, path)
    except (provenance.ProvenanceError, OSError):
        tags = {}
    return tags.get("model") or fallback or "unknown model"


async def mark(path: Path, *, model: str, data_dir: Path, job_id: str) -> str:
    """Mark a clip the bot re-encoded (in a thread: ffmpeg and signing take ~0.1 s)."""
    return await asyncio.to_thread(
        provenance.mark_finished, path, model=model, data_dir=data_dir, job_id=job_id
    )


@dataclass(slots=True)
class ResumeReport:
    requeued: list[Job] = field(default_factory=list)  # back in the queue, in queue order
    interrupted: list[Job] = field(default_factory=list)  # were `running`; attempts + 1
    failed: list[Job] = field(default_factory=list)  # interrupted too often, now failed
    undelivered: list[Job] = field(default_factory=list)  # done, result never delivered
    unnotified: list[Job] = field(default_factory=list)  # failed, member never told


class Runner:
    """Queues, runs and finishes jobs; the only code that moves a job out of `running`."""

    def __init__(
        self,
        store: Store,
        port: BackendPort,
        scheduler: Scheduler,
        estimates: Estimates,
        events: EventBus,
        *,
        dirs: DataDirs,
        clock: Callable[[], float],
        max_attempts: int = 2,
        byte_budget: int,
    ) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts!r}")
        self.store = store
        self.port = port
        self.scheduler = scheduler
        self.estimates = estimates
        self.events = events
        self.dirs = dirs
        self.clock = clock
        self.max_attempts = max_attempts
        self.byte_budget = byte_budget
        self._cancelled: set[str] = set()  # running jobs cancelled by a member
        self._cpu_tasks: dict[str, asyncio.Task[None]] = {}  # loop jobs (no GPU)
        self._cpu_gate = asyncio.Semaphore(1)
        self.closing = False

    async def close(self) -> None:
        """Stop: CPU jobs are abandoned (they stay `running`; the next start requeues)."""
        self.closing = True
        tasks = list(self._cpu_tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # -- the queue ---------------------------------------------------------------------

    def enqueue(self, job: Job, *, front: bool = False) -> None:
        """Into the generation queue of its pool; a Loop job starts on the CPU instead."""
        if job.kind == "loop":
            self._cpu_tasks[job.id] = asyncio.create_task(
                self._run_loop(job.id), name=f"loop-{job.id}"
            )
            return
        self.estimates.waiting(job)
        self.scheduler.enqueue(
            job.id,
            queue_key(job.guild_id, job.user_id),
            job.user_id,
            pool=self.port.pool(job.preset),
            front=front,
        )
        self.estimates.queue_changed()

    def on_cpu(self, job_id: str) -> bool:
        return job_id in self._cpu_tasks

    def resume(self) -> ResumeReport:
        """Rebuild the queue from the database. `running` jobs were interrupted: back to
        `queued`, with attempts + 1 (failed after MAX_INTERRUPTIONS) only if generation had
        started (`generation_started`): a restart while the backend still loads the model
        costs the job nothing, however often it happens. Everything waiting re-enters the
        scheduler in submission order, so each member's FIFO and the guilds' order of
        arrival are kept."""
        report = ResumeReport()
        for job in self.store.jobs_with_status(RUNNING):
            attempts = job.attempts + 1 if generation_started(job) else job.attempts
            if attempts > MAX_INTERRUPTIONS:
                reason = "This clip was interrupted by restarts too many times; please try again."
                report.failed.append(self.fail(job, RUNNING, reason, "crash", attempts))
                continue
            requeued = self._back_to_queue(job, announce=False, attempts=attempts)
            if requeued is not None:
                report.interrupted.append(requeued)
        for job in self.store.jobs_with_status(QUEUED):
            self.enqueue(job)
            report.requeued.append(job)
        report.undelivered = self.store.undelivered((JobStatus.DONE,))
        report.unnotified = self.store.undelivered((JobStatus.FAILED,))
        log.info(
            "resumed: %d queued (%d interrupted), %d undelivered",
            len(report.requeued),
            len(report.interrupted),
            len(report.undelivered),
        )
        return report

    def _back_to_queue(self, job: Job, *, announce: bool, **fields: Any) -> Job | None:
        """`running -> queued` (a retry, a job given back, a resume). With `announce`, at
        the head of its queue at once -- before any await, so the dispatcher cannot give
        the freed slot to another job -- and told as Queued(retry=True). While the
        service closes only the row changes; the next start queues it."""
        try:
            job = self.store.transition(job.id, RUNNING, QUEUED, **_NOT_RUNNING, **fields)
        except InvalidState:
            return None
        if announce and not self.closing:
            self.enqueue(job, front=True)
            self.estimates.queued(job, retry=True)
        return job

    # -- cancel and fail ---------------------------------------------------------------

    async def cancel(self, job: Job) -> Job:
        """Cancel a waiting or running job (the caller checked who may)."""
        if job.status == QUEUED:
            self.scheduler.remove(job.id)
        cancelled = self.cancelled(job, job.status)
        task = self._cpu_tasks.get(job.id)
        if task is not None:
            task.cancel()
        elif job.status == RUNNING:
            self._cancelled.add(job.id)
            try:
                await self.port.cancel(job.id)
            except Exception:
                log.exception("job %s: backend cancel failed", job.id)
        return cancelled

    def cancelled(self, job: Job, status: str) -> Job:
        cancelled = self.store.finish_refunded(
            job, status, JobStatus.CANCELLED, finished_at=self.clock(), stage=None
        )
        self.events.publish(Cancelled(cancelled))
        return cancelled

    def fail(self, job: Job, status: str, reason: str, kind: str, attempts: int) -> Job:
        failed = self.store.finish_refunded(
            job,
            status,
            JobStatus.FAILED,
            error=reason,
            error_kind=kind,
            attempts=attempts,
            finished_at=self.clock(),
            stage=None,
        )
        self.events.publish(JobFailed(failed, reason))
        return failed

    # -- running -----------------------------------------------------------------------

    def build_request(self, job: Job) -> gp.GenerationRequest:
        prompt = job.prompt
        if job.camera:
            prompt = f"{prompt.rstrip(' .,;')}, {CAMERAS[job.camera]}."
        num_frames = job.meta.get("extend_frames") if job.kind == "extend" else None
        return gp.GenerationRequest(
            job_id=job.id,
            image_path=str(intake.input_path(self.dirs.inputs, job.input_sha256)),
            prompt=prompt,
            output_path=str(self.dirs.tmp / f"{job.id}-{job.attempts}.mp4"),
            seed=job.seed,
            negative_prompt=job.negative_prompt,
            preset=job.preset,
            num_frames=num_frames,
            duration=None if num_frames is not None else job.duration,
            variation_seed=job.variation_seed,
            variation_strength=job.variation_strength if job.variation_seed is not None else 0.0,
            byte_budget=self.byte_budget,
            # Rows written before OOM became final may still carry the flag.
            degraded=bool(job.meta.get("degraded")),
        )

    async def run(self, job_id: str) -> None:
        """Run one queued job through the backend (the scheduler calls this)."""
        try:
            await self._run(job_id)
        finally:
            self._cancelled.discard(job_id)
            self.estimates.forget(job_id)

    async def _run(self, job_id: str) -> None:
        job = self.store.get_job(job_id)
        if job is None or job.status != QUEUED:
            return
        request = self.build_request(job)
        started = self.clock()
        try:
            job = self.store.transition(
                job_id, QUEUED, RUNNING, **{**_NOT_RUNNING, "started_at": started}
            )
        except InvalidState:
            return
        self.events.publish(Started(job))
        outcome = await self._outcome(job_id, request)
        if isinstance(outcome, gp.Failed):
            if self.closing and outcome.kind == "crash":
                return  # shutting down: the job stays `running`; the next start requeues
            # Before any await: a retry must be back at the head of the queue before the
            # dispatcher can give the freed slot to another job.
            self.finish_failed(job, outcome)
            return
        await self._finish_done(job, outcome, started)

    async def _outcome(self, job_id: str, request: gp.GenerationRequest) -> gp.Done | gp.Failed:
        """Pass the backend's progress on; its Done or Failed (a backend that raises or ends
        without a result counts as a crash)."""
        events = self.port.submit(request)
        try:
            async for event in events:
                self.scheduler.confirm(job_id)
                if isinstance(event, gp.Progress):
                    self._on_progress(job_id, event)
                else:
                    return event
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("job %s: the backend raised", job_id)
            return gp.Failed("crash", f"the generator connection failed ({type(exc).__name__})")
        finally:
            with contextlib.suppress(Exception):
                await events.aclose()
        return gp.Failed("crash", "the generator stopped without a result")

    def _on_progress(self, job_id: str, event: gp.Progress) -> None:
        if job_id in self._cancelled:
            return
        job = self.store.update_job(
            job_id, progress_step=event.step, progress_total=event.total, stage=event.stage
        )
        if job.status == RUNNING:
            self.events.publish(JobProgress(job, event.step, event.total, event.stage))

    async def _finish_done(self, job: Job, done: gp.Done, started: float) -> None:
        final = self.dirs.outputs / f"{job.id}.mp4"
        produced = Path(done.path)
        facts = done.facts
        meta = {**job.meta, **facts.to_dict()}
        num_frames = facts.num_frames
        # The worker marked its clip; the label shown is the model that mark names.
        meta["ai_model"] = await clip_model(produced, facts.preset or job.preset)
        try:
            if job.kind == "extend":
                joined = self.dirs.tmp / f"{job.id}-joined.mp4"
                result = await asyncio.to_thread(
                    encode.join,
                    job.meta["extend_source"],
                    produced,
                    joined,
                    byte_budget=self.byte_budget,
                )
                await mark(joined, model=meta["ai_model"], data_dir=self.dirs.root, job_id=job.id)
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
                meta.setdefault("clip_frames", meta.get("num_frames"))
        except (OSError, ValueError, KeyError, encode.EncodeError) as exc:
            log.exception("job %s: storing the result failed", job.id)
            message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            self.finish_failed(job, gp.Failed("error", f"Saving the clip failed: {message}"))
            return
        now = self.clock()
        wall = now - started
        fields = dict(
            gen_seconds=float(facts.gen_seconds or wall),
            width=facts.width,
            height=facts.height,
            num_frames=num_frames,
            fps=facts.fps,
            steps=facts.steps,
            progress_step=None,
            progress_total=None,
            error=None,
        )
        finished = self._to_done(job, final, now, meta, **fields)
        if finished is not None:
            self.estimates.record_gen_time(finished, wall, now)
            self.events.publish(JobDone(finished))

    def _to_done(self, job: Job, final: Path, now: float, meta: dict, **fields: Any) -> Job | None:
        """`running -> done` with the clip at `final`; None (and the file deleted) when the
        job was cancelled while it finished: nobody wants it."""
        try:
            return self.store.transition(
                job.id,
                RUNNING,
                JobStatus.DONE,
                output_path=str(final),
                output_bytes=final.stat().st_size,
                finished_at=now,
                stage=None,
                meta=meta,
                **fields,
            )
        except InvalidState:
            final.unlink(missing_ok=True)
            return None

    def finish_failed(self, job: Job, failed: gp.Failed) -> None:
        """A run ended without a clip: requeue, retry once, or fail for good."""
        with contextlib.suppress(OSError):
            for leftover in self.dirs.tmp.glob(f"{job.id}-*"):
                leftover.unlink()
        current = self.store.get_job(job.id)
        if current is None or current.status != RUNNING:
            return  # cancelled by a member meanwhile: already reported
        if failed.kind == "requeue":
            requeues = int(current.meta.get("requeues") or 0) + 1
            if requeues <= MAX_REQUEUES:
                log.info(
                    "job %s: given back (%s); queued again at the head", job.id, failed.message
                )
                self._back_to_queue(
                    current, announce=True, meta={**current.meta, "requeues": requeues}
                )
                return
            failed = gp.Failed("crash", f"given back {requeues} times: {failed.message}")
        if failed.kind == "cancelled":
            self.cancelled(current, RUNNING)
            return
        attempts = current.attempts + 1
        # Only a crash is retried here. An OOM is final: the worker already retried it in
        # process with degraded settings (generator/worker.py), so one layer retries, once.
        if failed.kind == "crash" and attempts < self.max_attempts:
            log.warning("job %s: crash (%s); retrying", job.id, failed.message)
            self._back_to_queue(current, announce=True, attempts=attempts, error_kind="crash")
            return
        log.warning("job %s failed for good: %s (%s)", job.id, failed.kind, failed.message)
        with contextlib.suppress(InvalidState):
            self.fail(current, RUNNING, failure_reason(failed, attempts), failed.kind, attempts)

    async def _run_loop(self, job_id: str) -> None:
        """A Loop job: ping-pong re-encode on the CPU, outside the GPU queue."""
        try:
            async with self._cpu_gate:
                job = self.store.get_job(job_id)
                if job is None or job.status != QUEUED:
                    return
                await self._make_loop(job)
        except asyncio.CancelledError:
            if not self.closing:
                raise
        finally:
            self._cpu_tasks.pop(job_id, None)

    async def _make_loop(self, job: Job) -> None:
        started = self.clock()
        job = self.store.transition(job.id, QUEUED, RUNNING, started_at=started)
        self.events.publish(Started(job))
        produced = self.dirs.tmp / f"{job.id}-loop.mp4"
        final = self.dirs.outputs / f"{job.id}.mp4"
        try:
            model = await clip_model(job.meta["loop_source"], job.preset)
            result = await asyncio.to_thread(
                encode.pingpong, job.meta["loop_source"], produced, byte_budget=self.byte_budget
            )
            await mark(produced, model=model, data_dir=self.dirs.root, job_id=job.id)
            os.replace(produced, final)
        except (OSError, ValueError, KeyError, encode.EncodeError) as exc:
            message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            reason = f"Making the loop failed: {message}"
            self.fail(job, RUNNING, reason, "error", job.attempts + 1)
            return
        now = self.clock()
        done = self._to_done(
            job,
            final,
            now,
            {**job.meta, **result.to_dict(), "ai_model": model},
            gen_seconds=now - started,
            width=result.width,
            height=result.height,
            num_frames=result.frames,
            fps=result.fps,
        )
        if done is not None:
            self.events.publish(JobDone(done))


def failure_reason(failed: gp.Failed, attempts: int) -> str:
    tries = "twice" if attempts == 2 else f"{attempts} times" if attempts > 2 else "once"
    if failed.kind == "oom":
        return (
            "The GPU ran out of memory on this clip, even with lighter settings. Try a "
            "shorter duration or a smaller image."
        )
    if failed.kind == "crash":
        return f"The generator crashed while making this clip ({tries}). Please try again later."
    if failed.kind == "bad_request":
        return f"The generator refused this request: {failed.message}"
    return f"Generation failed: {failed.message}"
