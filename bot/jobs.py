"""`JobService`: the thin facade the Discord layer calls -- submit, children, cancel, queries.

Plain Python and asyncio; no discord, no torch. The database (bot/store.py) is the truth.
The work is done by collaborators that own their state, each handed what it needs:

    EventBus     (bot/events.py)      the job events and their listeners
    Admission    (bot/admission.py)   every rule of a new job, checked once per request
    Estimates    (bot/estimates.py)   positions, ETAs, PositionChanged pacing
    Runner       (bot/runner.py)      the queue, the backend runs, Done/Failed/requeue, resume
    BackendPort  (bot/backend_port.py) the one place a backend object is touched
    Scheduler    (bot/scheduler.py)   the fair queue and its dispatch loop

Public API (the Discord layer codes against this): `start()`/`close()` (close before the
backend: jobs in flight stay `running` and the next start requeues them); listeners and
`subscribe()`; `submit()` and the children `reroll/vary/edit/extend/loop` of a finished
clip (guild and channel default to the parent's); `cancel()`; `lookup()` (a member's id,
scoped to the server asked from); the queries `get, position,
eta, queue_summary, history, warming_up, backend_note, known_presets`; server settings;
the delivery bookkeeping `mark_*`/`restore_result`; `prune_outputs()`; `kick()`.

A request whose row is written only after slow work (a download, a clip's last frame)
holds its place first: `reserve()` / `reserve_extend()` check every rule once and return a
`Ticket`, which `submit(ticket=...)` / `extend(ticket=...)` spend without checking again,
and `release()` gives back (idempotent). Without a ticket they check themselves, once.
`precheck()` / `check_extend()` are reserve-then-release: the refusals, nothing held.

Every refusal is a `bot.errors.ZoetropeError` subclass whose `.message` is fit for Discord.
The service does not start or close the backend: the owner does, closing the service first.

Kinds and rules: `loop` runs on the CPU outside the GPU queue and is not counted against
the daily quota; `extend` asks for at most what the preset's total-length cap leaves; a
crash is retried once, then the job fails and its daily count is refunded (so is a
cancelled job's). A `requeue` (the worker gave the job back unfinished: a graceful stop)
puts the job back at the head of its queue without counting an attempt.

Imports: the collaborators above, bot.recipes, bot.store. No discord, no torch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bot import admission as adm
from bot import policy, post_records, recipes
from bot.admission import Admission, Ticket
from bot.backend_port import BackendPort
from bot.children import Children
from bot.errors import BadOption, InvalidState, NotAllowed
from bot.estimates import Estimates, QueueSummary
from bot.events import EventBus, EventStream, Listener
from bot.limits import UPLOAD_LIMIT_BYTES, Limits
from bot.recipes import InteractionRef
from bot.runner import DataDirs, ResumeReport, Runner
from bot.scheduler import Scheduler
from bot.store import GuildSettings, Job, Store
from generator.protocol import Backend

log = logging.getLogger("zoetrope.jobs")


class JobService:
    """Submit, run, retry, cancel and resume jobs; publish what happens to them."""

    def __init__(
        self,
        store: Store,
        backend: Backend,
        *,
        data_dir: Path,
        limits: Limits | None = None,
        clock: Callable[[], float] = time.time,
        max_attempts: int = 2,
        position_interval: float | None = 2.0,  # None: no PositionChanged events
        byte_budget: int = UPLOAD_LIMIT_BYTES,
        output_retention_days: float | None = None,
        default_gen_seconds: float = 60.0,
        poll_interval: float = 1.0,
    ) -> None:
        self.store = store
        self.backend = backend
        self.port = BackendPort(backend)
        self.dirs = DataDirs.under(data_dir)
        self.limits = limits or Limits()
        self.clock = clock
        self.output_retention_days = output_retention_days
        self.events = EventBus()
        self.scheduler = Scheduler(
            capacity=self.port.capacity,
            total=self.port.total,
            run=self._run,
            poll_interval=poll_interval,
            on_change=self._queue_changed,
        )
        self.estimates = Estimates(
            store,
            self.scheduler,
            self.events,
            clock=clock,
            default_gen_seconds=default_gen_seconds,
            position_interval=position_interval,
        )
        self.runner = Runner(
            store,
            self.port,
            self.scheduler,
            self.estimates,
            self.events,
            dirs=self.dirs,
            clock=clock,
            max_attempts=max_attempts,
            byte_budget=byte_budget,
        )
        self.admission = Admission(
            store,
            limits=self.limits,
            clock=clock,
            presets=self.port.known_presets,
            waiting=lambda: self.scheduler.waiting,
        )
        self.children = Children(
            store,
            self.admission,
            admit=self._admit,
            dirs=self.dirs,
            limits=self.limits,
            clock=clock,
        )
        # The children of a finished clip, as the facade's own methods.
        self.reroll = self.children.reroll
        self.vary = self.children.vary
        self.edit = self.children.edit
        self.loop = self.children.loop
        self.extend = self.children.extend
        self.reserve_extend = self.children.reserve_extend
        self.check_extend = self.children.check_extend
        self._housekeeping: asyncio.Task[None] | None = None
        self._started = False
        # A worker that appears is used at once, not at the next poll.
        self.port.watch(self.kick)

    # The scheduler is built before the runner and the estimates it feeds: these two
    # forward its callbacks to them.
    async def _run(self, job_id: str) -> None:
        await self.runner.run(job_id)

    def _queue_changed(self) -> None:
        self.estimates.queue_changed()

    @property
    def inputs_dir(self) -> Path:
        return self.dirs.inputs

    @property
    def position_interval(self) -> float | None:
        return self.estimates.position_interval

    @position_interval.setter
    def position_interval(self, value: float | None) -> None:
        self.estimates.position_interval = value

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> ResumeReport:
        """Resume from the database, then start dispatching. Call once."""
        if self._started:
            raise RuntimeError("JobService.start() was already called")
        self._started = True
        for directory in (self.dirs.inputs, self.dirs.outputs, self.dirs.tmp):
            directory.mkdir(parents=True, exist_ok=True)
        for stale in self.dirs.tmp.iterdir():  # half-written files of a previous run
            with contextlib.suppress(OSError):
                stale.unlink()
        report = self.resume()
        await self.scheduler.start()
        if self.output_retention_days is not None:
            self._housekeeping = asyncio.create_task(self._prune_periodically())
        return report

    async def close(self) -> None:
        """Stop dispatching; runs in flight are abandoned and stay `running` in the database,
        so the next start() puts them back in the queue. Close this before the backend."""
        self.runner.closing = True
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._housekeeping
        await self.estimates.close()
        await self.runner.close()
        await self.scheduler.close()

    def kick(self) -> None:
        """Look for free slots now (wire a backend's change callback here)."""
        self.scheduler.kick()

    def resume(self) -> ResumeReport:
        """Rebuild the queue from the database (start() calls this)."""
        return self.runner.resume()

    # -- events -------------------------------------------------------------------------

    def add_listener(self, callback: Listener) -> None:
        self.events.add_listener(callback)

    def remove_listener(self, callback: Listener) -> None:
        self.events.remove_listener(callback)

    def subscribe(self) -> EventStream:
        return self.events.subscribe()

    # -- admission ------------------------------------------------------------------------

    def reserve(
        self,
        *,
        guild_id: int | None,
        channel_id: int,
        user_id: int,
        preset: str | None = None,
        prompt: str | None = None,
    ) -> Ticket:
        """Check every rule of a new clip that needs no image (with `prompt`, the prompt
        screen too) and hold its place; spend the ticket with submit(ticket=...) or give it
        back with release()."""
        return self.admission.hold(
            guild_id=guild_id, channel_id=channel_id, user_id=user_id, preset=preset, prompt=prompt
        )

    def release(self, ticket: Ticket) -> None:
        self.admission.release(ticket)

    def precheck(
        self, *, guild_id: int | None, channel_id: int, user_id: int, preset: str | None = None
    ) -> None:
        """Refuse now what submit() would refuse without looking at the image (same errors
        and messages); holds nothing. Passing promises nothing: see reserve()."""
        self.release(
            self.reserve(guild_id=guild_id, channel_id=channel_id, user_id=user_id, preset=preset)
        )

    def _admit(self, job: Job, ticket: Ticket) -> Job:
        """Write the row of an admitted job, count its quota, queue it, tell listeners."""
        job = self.admission.admit(job, ticket)
        self.runner.enqueue(job)
        self.estimates.queued(job)
        return job

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
        ticket: Ticket | None = None,
    ) -> Job:
        """Queue a new clip from an image already stored by intake (`image_sha256`)."""
        if ticket is None or ticket.prompt != prompt:  # screened once: here or by reserve()
            adm.screen(prompt)
        prompt = adm.check_prompt(prompt, self.limits)
        negative_prompt = adm.check_prompt(negative_prompt, self.limits, negative=True)
        camera = adm.check_camera(camera)
        duration = adm.check_duration(duration)
        seed = adm.check_seed(seed) if seed is not None else adm.random_seed()
        recipes.check_input_image(self.dirs.inputs, image_sha256)
        if ticket is None:
            ticket = self.reserve(
                guild_id=guild_id, channel_id=channel_id, user_id=user_id, preset=preset
            )
        elif (ticket.guild_id, ticket.channel_id, ticket.user_id, ticket.preset) != (
            guild_id,
            channel_id,
            user_id,
            preset,
        ):
            raise ValueError("submit(): the ticket was reserved for another request")
        job = recipes.new_job(
            now=self.clock(),
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
        return self._admit(job, ticket)

    # -- cancelling ---------------------------------------------------------------------

    async def cancel(
        self, job_id: str, *, user_id: int, guild_id: int | None, moderator: bool = False
    ) -> Job:
        """Cancel a waiting or running job: its owner, or a moderator (Manage Messages) of
        the server the job belongs to (`guild_id`: where the request comes from)."""
        job = self.lookup(job_id, guild_id=guild_id, user_id=user_id)
        if job.user_id != user_id and not moderator:
            raise NotAllowed(
                "Only the member who asked for this clip, or a moderator, can cancel it."
            )
        if not job.pending:
            raise InvalidState(f"That clip is already {job.status}.")
        return await self.runner.cancel(job)

    # -- queries ------------------------------------------------------------------------

    def get(self, job_id: str) -> Job:
        """A job by id, unscoped: for the bot's own bookkeeping, never for a member's id."""
        return self.store.require_job(job_id)

    def lookup(self, job_id: str, *, guild_id: int | None, user_id: int) -> Job:
        """A job by the id a member gave, from `guild_id`: another server's job is NotFound
        (bot/policy.py `check_in_scope`)."""
        return policy.check_in_scope(
            self.store.require_job(job_id), guild_id=guild_id, user_id=user_id
        )

    @property
    def warming_up(self) -> bool:
        return not self.port.ready

    def backend_note(self) -> str | None:
        """Why queued jobs do not start, when it is not the usual model warm-up."""
        return self.port.status_note()

    def known_presets(self) -> list[str]:
        """Preset names a job may ask for: PRESETS and what the fleet serves now."""
        return self.port.known_presets()

    def position(self, job_id: str) -> int | None:
        """1-based place in the generation queue; None when not waiting for the GPU."""
        return self.estimates.position(job_id)

    def eta(self, job_id: str) -> float | None:
        """Seconds until the clip should be done (queued or running); None otherwise."""
        return self.estimates.eta(job_id, running=self.runner.on_cpu(job_id))

    def queue_summary(self, guild_id: int | None, user_id: int) -> QueueSummary:
        return self.estimates.queue_summary(guild_id, user_id, warming_up=self.warming_up)

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
        first delivery's message is kept. A Delete clicked on that message before it was
        recorded takes effect now (bot/post_records.py)."""
        return post_records.record_delivery(
            self.store, job_id, message_id=message_id, channel_id=channel_id, at=self.clock()
        )

    def record_post_intent(self, job_id: str) -> Job:
        """The result is about to be posted (a later attempt then looks for the message)."""
        return post_records.record_post_intent(self.store, job_id, at=self.clock())

    def record_delivery_attempt(self, job_id: str) -> Job:
        return self.store.increment_delivery_attempts(job_id)

    def mark_result_deleted(self, job_id: str, *, message_id: int) -> Job:
        """A message showing this clip was deleted (the Delete button). If it was the job's
        result message, the row forgets it (`result_deleted_at` set), so /history and the
        progress message stop linking to it; another copy (a /job re-post) changes nothing.
        Before the result is recorded the request is kept, and honoured on delivery."""
        post_records.request_delete(self.store, job_id, message_id=message_id, at=self.clock())
        return self.get(job_id)

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

    # -- housekeeping -------------------------------------------------------------------

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
            self.store.forget_output(job.id, at=now)
            pruned += 1
        self.store.prune_daily_counts(adm.day_of(now - 7 * 86400))
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
