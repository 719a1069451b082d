"""Posting and editing what members see: progress messages, results, failure notices.

Progress: the deferred reply of the command (or button) is the job's progress message. It is
edited at most once every `edit_interval` seconds per message; edits in between are coalesced
and the newest state is rendered at send time (from the job row), so the final state always
lands. While the interaction token lives (15 minutes) edits go through the interaction
webhook; after that, or when the token is refused (401 / 50027), through the bot's own
channel endpoint.

Results: a NEW channel message (nonce = job id, `enforce_nonce`, so a retried POST whose
first answer was lost does not post twice) that mentions only the requester and carries the
MP4 and every button. If the bot may not post in the channel: the interaction webhook while
the token lives, then a DM, then a clear reason on the progress message. A clip over the
upload limit is re-encoded to fit (generator.encode.fit_to_budget, in a thread) and marked as
AI-generated again (generator.provenance, the re-encode drops the mark); if it still cannot fit the message says so and the job stays `done` with its file on disk.

Share reposts a clip to the server's showcase channel once: the post is recorded on the job
(Discord's nonce only dedupes for 5 minutes), and a later Share links to it.

Delivery failures that may heal (5xx, network) are retried a bounded number of times; a
result still undelivered then is delivered at the next start (JobService reports it).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import discord

from bot import events as ev
from bot import post_recovery, render
from bot.buttons import build_view
from bot.errors import ZoetropeError
from bot.render import QueueInfo
from bot.store import Job, JobStatus
from generator import encode, provenance

if TYPE_CHECKING:
    from bot.jobs import JobService
    from bot.runner import ResumeReport

# Room for the container tags alone (measured ~0.3 KB), the fallback mark of a re-encode.
TAGS_HEADROOM_BYTES = 1024
log = logging.getLogger("zoetrope.delivery")

# Errors that may heal on their own: Discord 5xx (after discord.py's own retries), a dropped
# connection, a timeout. 429s never reach us: discord.py waits them out itself.
RETRYABLE: tuple[type[BaseException], ...] = (
    discord.DiscordServerError,
    aiohttp.ClientError,
    ConnectionError,
    TimeoutError,
)
TOKEN_DEAD_CODES = {50027, 10015}  # Invalid Webhook Token, Unknown Webhook
UNKNOWN_MESSAGE = 10008
CANNOT_DM = 50007
TOO_LARGE = 40005


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How delivery retries failures that may heal. `attempts=1` switches retries off."""

    attempts: int = 4
    base_delay: float = 2.0
    max_delay: float = 60.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {self.attempts!r}")
        if self.base_delay < 0:
            raise ValueError(f"base_delay must be >= 0, got {self.base_delay!r}")

    def delays(self) -> Iterator[float]:
        """The waits between attempts (attempts - 1 of them), doubling up to max_delay."""
        for n in range(self.attempts - 1):
            yield min(self.base_delay * 2**n, self.max_delay)


def requester_only(user_id: int) -> discord.AllowedMentions:
    """Mentions that ping exactly one member. Built from none(): AllowedMentions(users=[...])
    alone leaves everyone=True (PITFALLS)."""
    mentions = discord.AllowedMentions.none()
    mentions.users = [discord.Object(id=user_id)]
    return mentions


@dataclass(eq=False)
class _Tracker:
    """One progress message and its edit pacing."""

    job_id: str
    last_sent_at: float = -1e9  # loop time of the last edit
    last_rendered: tuple[str, tuple[str, ...]] | None = None
    eta: float | None = None  # the ETA shown, kept while new estimates stay close to it
    dirty: bool = False
    task: asyncio.Task[None] | None = None
    gone: bool = False  # the message was deleted: stop editing
    finished: bool = False


@dataclass(eq=False)
class _Gate:
    """A lock with a count of who holds or waits for it, so it can be dropped when idle."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


@dataclass(slots=True)
class _Posted:
    message_id: int | None
    channel_id: int | None
    how: str  # "channel", "webhook", "dm", "none", "found" (posted by an earlier attempt)
    reason: str | None = None


@dataclass
class DeliveryStats:
    """Counters for tests and the benchmark."""

    edits: int = 0
    results: int = 0
    retries: int = 0
    fallbacks: dict[str, int] = field(default_factory=dict)


class Delivery:
    """Keeps progress messages current and posts results. One per bot."""

    def __init__(
        self,
        bot: discord.Client,
        jobs: JobService,
        *,
        clock: Callable[[], float] = time.time,
        edit_interval: float = 2.0,
        retry: RetryPolicy | None = None,
        default_upload_limit: int = 10 * 1024 * 1024,
        uploads_dir: Path,
    ) -> None:
        self.bot = bot
        self.jobs = jobs
        self.clock = clock
        self.edit_interval = edit_interval
        self.retry = retry or RetryPolicy()
        self.default_upload_limit = default_upload_limit
        self.uploads_dir = uploads_dir
        self.stats = DeliveryStats()
        self._trackers: dict[str, _Tracker] = {}
        self._deliveries: dict[str, asyncio.Task[None]] = {}
        self._guild_limits: dict[int | None, int] = {}  # last attachment_size_limit seen
        self._dead_tokens: set[str] = set()  # jobs whose interaction token was refused
        self._share_gates: dict[str, _Gate] = {}  # Share in progress, per job
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False

    # -- wiring -----------------------------------------------------------------------------

    def start(self, report: ResumeReport | None = None) -> None:
        """Listen to job events; finish what a previous run left undelivered."""
        self.jobs.add_listener(self._on_event)
        if report is None:
            return
        for job in [*report.requeued, *report.failed]:
            if job.progress_message_id is not None:
                self.touch(job.id)
        for job in report.undelivered:
            self.deliver_later(job.id)
        for job in report.unnotified:
            self.touch(job.id)

    async def close(self) -> None:
        self._closing = True
        self.jobs.remove_listener(self._on_event)
        tasks = [t for t in self._tasks if not t.done()]
        tasks += [t.task for t in self._trackers.values() if t.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def note_interaction(self, interaction: discord.Interaction) -> None:
        """Remember the upload limit Discord announced for this guild (or DM)."""
        limit = getattr(interaction, "filesize_limit", None)
        if isinstance(limit, int) and limit > 0:
            self._guild_limits[interaction.guild_id] = limit

    def upload_limit(self, guild_id: int | None) -> int:
        if guild_id in self._guild_limits:
            return self._guild_limits[guild_id]
        guild = self.bot.get_guild(guild_id) if guild_id is not None else None
        if guild is not None:
            return max(guild.filesize_limit, self.default_upload_limit)
        return self.default_upload_limit

    # -- events -----------------------------------------------------------------------------

    def _on_event(self, event: ev.JobEvent) -> None:
        if self._closing:
            return
        job = event.job
        if isinstance(event, ev.Queued | ev.PositionChanged):
            tracker = self._trackers.get(job.id)
            if tracker is not None and event.eta is not None:
                tracker.eta = self._steady_eta(tracker.eta, self.clock() + event.eta)
        if isinstance(event, ev.JobDone):
            self.deliver_later(job.id)  # the progress edit follows the delivery (with a link)
            return
        # A failure is always told, even for a job whose progress message is unknown.
        if (
            job.progress_message_id is not None
            or job.id in self._trackers
            or isinstance(event, ev.JobFailed)
        ):
            self.touch(job.id)

    def _steady_eta(self, shown: float | None, new: float) -> float:
        """Keep the ETA on screen unless the new estimate moved noticeably: every edit costs a
        request, and a relative timestamp keeps counting down by itself."""
        if shown is None:
            return new
        left = max(shown - self.clock(), 1.0)
        return shown if abs(new - shown) < max(20.0, 0.2 * left) else new

    # -- progress messages --------------------------------------------------------------------

    def touch(self, job_id: str) -> None:
        """The job changed: re-render its progress message soon (paced, coalesced)."""
        if self._closing:
            return
        tracker = self._trackers.get(job_id)
        if tracker is None:
            tracker = self._trackers[job_id] = _Tracker(job_id)
        if tracker.gone:
            return
        tracker.dirty = True
        if tracker.task is None or tracker.task.done():
            tracker.task = asyncio.get_running_loop().create_task(
                self._pump(tracker), name=f"progress-{job_id}"
            )

    async def _pump(self, tracker: _Tracker) -> None:
        loop = asyncio.get_running_loop()
        delays = self.retry.delays()
        try:
            while tracker.dirty and not tracker.gone:
                wait = tracker.last_sent_at + self.edit_interval - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                tracker.dirty = False
                try:
                    sent = await self._render_and_edit(tracker)
                except RETRYABLE as exc:
                    # The newest state must still land: try again (bounded), re-rendering then.
                    delay = next(delays, None)
                    if delay is None:
                        log.warning("job %s: progress edits keep failing (%s)", tracker.job_id, exc)
                        return
                    tracker.dirty = True
                    await asyncio.sleep(delay)
                    continue
                delays = self.retry.delays()
                if sent:
                    tracker.last_sent_at = loop.time()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("job %s: progress update failed", tracker.job_id)
        finally:
            if tracker.finished and not tracker.dirty:
                self._trackers.pop(tracker.job_id, None)

    def queue_info(self, job: Job, tracker: _Tracker | None = None) -> QueueInfo:
        position = self.jobs.position(job.id) if job.status == JobStatus.QUEUED else None
        eta = None
        seconds = (
            self.jobs.eta(job.id) if job.status in (JobStatus.QUEUED, JobStatus.RUNNING) else None
        )
        if seconds is not None:
            eta = self.clock() + seconds
            if tracker is not None:
                eta = tracker.eta = self._steady_eta(tracker.eta, eta)
        return QueueInfo(
            position=position,
            eta=eta,
            warming_up=self.jobs.warming_up,
            note=self.jobs.backend_note(),
        )

    async def _render_and_edit(self, tracker: _Tracker) -> bool:
        job = self.jobs.get(tracker.job_id)
        if job.progress_message_id is None:
            if job.status == JobStatus.FAILED and not job.delivered:
                await self._post_failure(job)
            tracker.finished = render.progress_is_final(job)
            return False
        final = render.progress_is_final(job)
        if job.status == JobStatus.DONE and not job.delivered:
            return False  # wait for the result: the final text links to it
        content = render.progress_content(job, self.queue_info(job, tracker))
        specs = render.progress_buttons(job)
        key = (content, tuple(s.action for s in specs))
        if key == tracker.last_rendered:
            tracker.finished = final
            return False
        ok = await self._edit_progress(job, content, build_view(job.id, specs))
        if not ok:
            tracker.gone = True
            if job.status == JobStatus.FAILED and not job.delivered:
                await self._post_failure(job)
            return False
        tracker.last_rendered = key
        self.stats.edits += 1
        if final:
            tracker.finished = True
            if job.status == JobStatus.FAILED and not job.delivered:
                self.jobs.mark_delivered(
                    job.id,
                    message_id=job.progress_message_id,
                    channel_id=self._progress_channel(job),
                )
        return True

    def _progress_channel(self, job: Job) -> int:
        return job.progress_channel_id or job.channel_id

    def _token_usable(self, job: Job) -> bool:
        return (
            job.interaction_token is not None
            and job.application_id is not None
            and job.id not in self._dead_tokens
            and job.token_alive(self.clock())
        )

    def webhook(self, job: Job) -> discord.Webhook:
        assert job.application_id is not None and job.interaction_token is not None
        return discord.Webhook.partial(job.application_id, job.interaction_token, client=self.bot)

    async def _edit_progress(self, job: Job, content: str, view: discord.ui.View | None) -> bool:
        """Edit the progress message; False when it no longer exists (deleted by someone)."""
        assert job.progress_message_id is not None
        none = discord.AllowedMentions.none()
        if self._token_usable(job):
            try:
                await self.webhook(job).edit_message(
                    job.progress_message_id, content=content, view=view, allowed_mentions=none
                )
                return True
            except discord.HTTPException as exc:
                if not self._token_refused(job, exc):
                    if exc.code == UNKNOWN_MESSAGE:
                        return False
                    raise
        message = self.bot.get_partial_messageable(
            self._progress_channel(job), guild_id=job.guild_id
        ).get_partial_message(job.progress_message_id)
        try:
            await message.edit(content=content, view=view, allowed_mentions=none)
        except (discord.NotFound, discord.Forbidden) as exc:
            log.info("job %s: progress message not editable (%s)", job.id, exc.text or exc.status)
            return False
        return True

    def _token_refused(self, job: Job, exc: discord.HTTPException) -> bool:
        if exc.status == 401 or exc.code in TOKEN_DEAD_CODES:
            self._dead_tokens.add(job.id)
            self.stats.fallbacks["token"] = self.stats.fallbacks.get("token", 0) + 1
            log.info("job %s: interaction token expired; using channel messages", job.id)
            return True
        return False

    # -- results ------------------------------------------------------------------------------

    def deliver_later(self, job_id: str) -> None:
        """Post the job's result in the background (at most one delivery per job at a time)."""
        if self._closing:
            return
        running = self._deliveries.get(job_id)
        if running is not None and not running.done():
            return
        task = self._spawn(self._deliver_with_retries(job_id), f"deliver-{job_id}")
        self._deliveries[job_id] = task
        task.add_done_callback(lambda _t, j=job_id: self._deliveries.pop(j, None))

    async def _deliver_with_retries(self, job_id: str) -> None:
        delays = self.retry.delays()
        while True:
            job = self.jobs.get(job_id)
            if job.delivered or job.status != JobStatus.DONE:
                return
            try:
                # An earlier attempt may have posted it (bot/post_recovery.py).
                found = await post_recovery.find_posted_result(self.bot, job)
                if found is not None:
                    posted = _Posted(*found, "found")
                else:
                    self.jobs.record_post_intent(job_id)
                    posted = await self._post_result(job)
            except RETRYABLE as exc:
                self.jobs.record_delivery_attempt(job_id)
                delay = next(delays, None)
                if delay is None:
                    log.error(
                        "job %s: delivery failed (%s); it will be retried at the next start",
                        job_id,
                        type(exc).__name__,
                    )
                    return
                self.stats.retries += 1
                log.warning("job %s: delivery failed (%s); retrying in %.1f s", job_id, exc, delay)
                await asyncio.sleep(delay)
                continue
            except Exception:
                log.exception("job %s: delivery failed", job_id)
                return
            job = self.jobs.mark_delivered(
                job_id, message_id=posted.message_id, channel_id=posted.channel_id
            )
            await post_recovery.delete_if_requested(
                self.bot, job, posted.message_id, posted.channel_id
            )
            self.stats.results += 1
            if posted.how != "channel":
                self.stats.fallbacks[posted.how] = self.stats.fallbacks.get(posted.how, 0) + 1
            if posted.reason:
                log.info("job %s: %s", job_id, posted.reason)
            self.touch(job_id)
            return

    async def _fitted(self, job: Job, limit: int) -> tuple[Path | None, str | None]:
        """The file to upload under `limit` bytes and a note, or (None, None) if it cannot fit."""
        source = Path(job.output_path or "")
        if not source.is_file():
            return None, None
        if source.stat().st_size <= limit:
            return source, None
        self.uploads_dir.mkdir(parents=True, exist_ok=True)
        target = self.uploads_dir / f"{job.id}-{limit}.mp4"
        if target.is_file() and target.stat().st_size <= limit:
            return target, "re-encoded to fit this server's upload limit"
        # A re-encode drops the mark, so the file is marked again. The full mark (C2PA, ~3.8 KB)
        # first; where that cannot fit (a clip of a few KB), the container tags alone (~0.3 KB,
        # still machine-readable). Made under another name: `target` only exists marked.
        staging = self.uploads_dir / f".{job.id}-{limit}.partial.mp4"
        model = job.meta.get("ai_model") or job.preset or "unknown model"
        mark_c2pa = functools.partial(
            provenance.mark_finished, model=model, data_dir=self.jobs.dirs.root, job_id=job.id
        )
        mark_tags = functools.partial(provenance.mark_metadata, model=model, job_id=job.id)
        for headroom, mark in (
            (provenance.MARK_HEADROOM_BYTES, mark_c2pa),
            (TAGS_HEADROOM_BYTES, mark_tags),
        ):
            budget = limit - headroom
            if budget <= 0:
                continue
            result = await asyncio.to_thread(encode.fit_to_budget, source, staging, budget)
            if not result.fits:
                continue
            try:
                await asyncio.to_thread(mark, staging)
            except (provenance.ProvenanceError, OSError) as exc:
                log.error("job %s: the re-encoded clip could not be marked: %s", job.id, exc)
            if staging.stat().st_size <= limit:
                staging.replace(target)
                return target, "re-encoded to fit this server's upload limit"
        staging.unlink(missing_ok=True)
        return None, None

    async def _post_result(self, job: Job) -> _Posted:
        limit = self.upload_limit(job.guild_id)
        for _ in range(3):
            try:
                return await self._post_result_under(job, limit)
            except discord.HTTPException as exc:
                if exc.status != 413 and exc.code != TOO_LARGE:
                    raise
                limit //= 2  # Discord's limit is lower than we thought: aim lower
                log.warning("job %s: upload refused as too large; trying %d bytes", job.id, limit)
        return await self._post_result_under(job, limit, with_file=False)

    async def _post_result_under(self, job: Job, limit: int, *, with_file: bool = True) -> _Posted:
        path, note = await self._fitted(job, limit) if with_file else (None, None)
        if path is None:
            if job.output_path is None or not Path(job.output_path).is_file():
                content = render.result_content(job, note="the video file is no longer kept")
            else:
                content = render.too_big_content(job, size=job.output_bytes or 0, limit=limit)
        else:
            content = render.result_content(job, note=note)
        view = build_view(job.id, render.RESULT_BUTTONS)
        mentions = requester_only(job.user_id)

        def file() -> discord.File | discord.utils._MissingSentinel:
            if path is None:
                return discord.utils.MISSING
            return discord.File(path, filename=f"zoetrope-{job.id}.mp4")

        channel = self.bot.get_partial_messageable(job.channel_id, guild_id=job.guild_id)
        try:
            message = await channel.send(
                content, file=file(), view=view, allowed_mentions=mentions, nonce=job.id
            )
            return _Posted(message.id, message.channel.id, "channel")
        except (discord.Forbidden, discord.NotFound) as exc:
            reason = f"can't post in channel {job.channel_id} ({exc.text or exc.status})"
        if self._token_usable(job):
            try:
                message = await self.webhook(job).send(
                    content, file=file(), view=view, allowed_mentions=mentions, wait=True
                )
                return _Posted(message.id, message.channel.id, "webhook", reason)
            except discord.HTTPException as exc:
                if not self._token_refused(job, exc):
                    raise
        try:
            dm = await self.bot.create_dm(discord.Object(id=job.user_id))
            where = f"<#{job.channel_id}>" if job.guild_id is not None else "there"
            dm_note = f"-# I can't post in {where}, so here is your clip."
            message = await dm.send(
                f"{content}\n{dm_note}"[: render.MAX_CONTENT],
                file=file(),
                view=view,
                allowed_mentions=mentions,
                nonce=job.id,
            )
            return _Posted(message.id, dm.id, "dm", reason)
        except discord.Forbidden as exc:
            reason += f"; DM refused ({exc.text or exc.status})"
        # Nowhere to post: the progress message says why (render._done_line) and we stop.
        return _Posted(None, None, "none", reason)

    async def _post_failure(self, job: Job) -> None:
        """The progress message is gone: tell the member in the channel, or by DM."""
        content = render.failed_notice(job)
        mentions = requester_only(job.user_id)
        channel = self.bot.get_partial_messageable(job.channel_id, guild_id=job.guild_id)
        message_id: int | None = None
        channel_id: int | None = None
        try:
            message = await channel.send(content, allowed_mentions=mentions, nonce=job.id)
            message_id, channel_id = message.id, job.channel_id
        except (discord.Forbidden, discord.NotFound):
            with contextlib.suppress(discord.HTTPException):
                dm = await self.bot.create_dm(discord.Object(id=job.user_id))
                message = await dm.send(content, allowed_mentions=mentions, nonce=job.id)
                message_id, channel_id = message.id, dm.id
        self.jobs.mark_delivered(job.id, message_id=message_id, channel_id=channel_id)

    # -- other posts ---------------------------------------------------------------------------

    async def file_for(self, job: Job, limit: int) -> tuple[discord.File | None, str | None]:
        """The job's clip as an upload under `limit`, or (None, reason)."""
        path, note = await self._fitted(job, limit)
        if path is None:
            if job.output_path is None or not Path(job.output_path).is_file():
                return None, "The video file of this clip is no longer kept."
            return None, (
                f"At {render.megabytes(job.output_bytes or 0)} this clip is over the upload limit "
                f"here ({render.megabytes(limit)}) even re-encoded."
            )
        return discord.File(path, filename=f"zoetrope-{job.id}.mp4"), note

    async def share(self, job: Job, *, sharer_id: int, showcase_id: int) -> tuple[Job, bool]:
        """Repost a clip to the showcase channel, crediting its author (no ping), once per
        clip: the post is recorded on the job. Returns the job and whether it was posted now
        (False: it had been shared already, see `shared_message_id`)."""
        job_id = job.id
        gate = self._share_gates.get(job_id)
        if gate is None:
            gate = self._share_gates[job_id] = _Gate()
        gate.users += 1
        try:
            async with gate.lock:  # two clicks at once: the second sees the first's post
                job = self.jobs.get(job_id)
                if job.shared_message_id is not None:
                    return job, False
                upload, reason = await self.file_for(job, self.upload_limit(job.guild_id))
                if upload is None:
                    raise ZoetropeError(reason or "This clip can't be shared.")
                channel = self.bot.get_partial_messageable(showcase_id, guild_id=job.guild_id)
                content = render.showcase_content(
                    job, original_url=render.result_url(job), sharer_id=sharer_id
                )
                info = tuple(spec for spec in render.RESULT_BUTTONS if spec.action == "info")
                # The nonce makes a retried request (its first answer lost) post once.
                message = await channel.send(
                    content,
                    file=upload,
                    view=build_view(job.id, info),
                    allowed_mentions=discord.AllowedMentions.none(),
                    nonce=f"s{job.id}",
                )
                job = self.jobs.mark_shared(job.id, message_id=message.id, channel_id=showcase_id)
                return job, True
        finally:
            gate.users -= 1
            if gate.users == 0:
                self._share_gates.pop(job_id, None)
