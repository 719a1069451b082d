"""Scale-out: GPU workers on other machines, fed through Redis with SAQ (DESIGN.md §7).

`RedisBackend` has the interface of `LocalBackend` (generator/backends.py); setting
`ZOETROPE_REDIS_URL` makes the bot use it. Each GPU machine runs
`python main.py worker --redis URL --preset NAME` (generator/redis_worker.py). Workers only need
an outbound connection to Redis.

The bot stays the only scheduler. A job reaches SAQ only when a live worker serving its preset
has a free slot, so the bot's per-guild round-robin decides the order whatever the number of
workers. There is one SAQ queue per served name ("ltx-fast", "local:my-folder"), so a job can
only ever be taken by a worker that can run it.

Everything that crosses Redis is JSON or raw bytes; nothing read from Redis is unpickled (SAQ is
given explicit JSON `dump`/`load`), because a Redis may be shared and whoever can write to it
must not be able to run code in the bot or a worker.

Keys (namespace `zoetrope` by default; the SAQ queue of a served name is `<namespace>:<name>`):

    <ns>:workers              set of worker ids
    <ns>:worker:<id>          JSON registration {served, slots, busy, state, ...}; TTL = the
                              heartbeat timeout, refreshed by the worker: a key that exists is
                              a live worker (Redis' clock decides, not the machines')
    <ns>:input:<attempt>      the input image (bytes, size-capped), written by the bot
    <ns>:events:<attempt>     stream of events from the worker: {"e": event JSON, "w": worker}
    <ns>:output:<attempt>     the MP4 (bytes, size-capped), written by the worker
    <ns>:cancel:<attempt>     set by the bot to stop the attempt; also announced on the
                              <ns>:cancel pub/sub channel so the worker sees it within a step

An *attempt* is one submission of a job (`<job_id>.<nonce>`): a retry of the same job is a new
attempt, so a late event of an old attempt (a worker that was presumed dead) is never taken for
the new one, and a job id that has finished ignores anything still arriving.

Failure handling:
- A worker that dies mid-job stops sending SAQ heartbeats (`job.update()` from the worker's
  event loop while the generation runs in a thread). A sweep (run by every worker and by this
  backend, at most once per `sweep_every` across all of them) marks the job aborted once it has
  been silent for `heartbeat_timeout`; the backend then ends it with `Failed("crash")` and the
  job layer retries it. Worst case: heartbeat_timeout + sweep_every + poll_every (18 s with
  the defaults; a dead worker must be noticed within 30 s).
- A worker stopped gracefully (SIGTERM/SIGINT) stops its running jobs at their next step and
  gives them back as `Failed("requeue")`: the job layer queues them again at the head of their
  queue without counting an attempt, and they run on another worker.
- Redis unreachable: capacity is 0 and the state says so; jobs stay queued in the bot's SQLite;
  jobs already handed out wait (nothing is reported while Redis cannot be asked). After Redis
  comes back each such job is either completed or, if its worker stopped or Redis lost it (no
  AOF), reported `Failed("crash")`. Sweeps wait for one heartbeat timeout after a reconnect so a
  live job whose heartbeats could not be written is not mistaken for a dead one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import re
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, get_args
from urllib.parse import urlsplit

from redis import asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from saq.job import TERMINAL_STATUSES, Job, Status
from saq.queue.redis import RedisQueue
from saq.utils import now as saq_now

from generator.backends import BackendClosed, BackendState
from generator.protocol import (
    Done,
    Event,
    Failed,
    FailureKind,
    GenerationRequest,
    Progress,
    event_from_dict,
)

log = logging.getLogger("zoetrope.redis")

MIB = 1024 * 1024
DEFAULT_NAMESPACE = "zoetrope"
MAX_INPUT_BYTES = 32 * MIB  # the normalised PNG of an input image; intake caps pixels well below
MAX_OUTPUT_BYTES = 64 * MIB  # an MP4 coming back; the encoder aims at 10 MiB by default
DATA_TTL_S = 24 * 3600  # inputs, outputs and event streams nobody collected expire after a day
JOB_TTL_S = 3600  # how long SAQ keeps a finished job's record
GENERATE = "generate"  # the SAQ function name workers register
SWEPT = "swept"  # SAQ error text of a job whose worker went silent

# Redis errors that mean "cannot talk to Redis right now" (as opposed to a bad command).
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError, OSError)

_JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,80}")
_SERVED = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+-]{0,99}")
_FAILURE_KINDS: frozenset[str] = frozenset(get_args(FailureKind))


# -- settings shared by the backend and the workers --------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class RedisTimings:
    """How fast a dead worker is noticed, and what it costs in Redis traffic.

    Both sides read the same environment variables (`from_env`) so that tests, which use short
    values, can hand them to worker processes. Clocks: SAQ compares a job's last heartbeat,
    written with the worker's clock, to the sweeper's clock, so machines must keep their clocks
    in sync (NTP) to well under `heartbeat_timeout`.
    """

    heartbeat_timeout: int = 12  # s without a heartbeat before a job / worker counts as dead
    heartbeat_every: float = 3.0  # s between a worker's heartbeats (job and registration)
    sweep_every: int = 5  # s between sweeps for dead jobs (SAQ sweep lock)
    poll_every: float = 1.0  # s between the backend's looks at job states and the worker list

    def __post_init__(self) -> None:
        for name in ("heartbeat_timeout", "sweep_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number of seconds >= 1, got {value!r}")
        for name in ("heartbeat_every", "poll_every"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"{name} must be positive, got {value!r}")
        if self.heartbeat_every * 2 > self.heartbeat_timeout:
            raise ValueError(
                f"heartbeat_every ({self.heartbeat_every}) must be at most half of "
                f"heartbeat_timeout ({self.heartbeat_timeout}): one late heartbeat must not "
                "make a live worker look dead"
            )

    @property
    def detect_within(self) -> float:
        """Upper bound of the time from a worker's death to its job being reported."""
        return self.heartbeat_timeout + self.sweep_every + self.poll_every

    ENV = {
        "heartbeat_timeout": "ZOETROPE_REDIS_HEARTBEAT_TIMEOUT",
        "heartbeat_every": "ZOETROPE_REDIS_HEARTBEAT_EVERY",
        "sweep_every": "ZOETROPE_REDIS_SWEEP_EVERY",
        "poll_every": "ZOETROPE_REDIS_POLL_EVERY",
    }

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RedisTimings:
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for name, var in cls.ENV.items():
            raw = env.get(var, "").strip()
            if not raw:
                continue
            try:
                values[name] = (
                    int(raw) if name in ("heartbeat_timeout", "sweep_every") else float(raw)
                )
            except ValueError:
                raise ValueError(f"{var} must be a number of seconds, got {raw!r}") from None
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """Environment variables that make `from_env` return these timings."""
        return {var: str(getattr(self, name)) for name, var in self.ENV.items()}


class Keys:
    """Redis key names under one namespace (see the module docstring)."""

    def __init__(self, namespace: str = DEFAULT_NAMESPACE) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", namespace):
            raise ValueError(f"namespace must be 1-40 letters, digits, _ or -, got {namespace!r}")
        self.ns = namespace
        self.workers = f"{namespace}:workers"
        self.cancel_channel = f"{namespace}:cancel"

    def worker(self, worker_id: str) -> str:
        return f"{self.ns}:worker:{worker_id}"

    def input(self, attempt: str) -> str:
        return f"{self.ns}:input:{attempt}"

    def output(self, attempt: str) -> str:
        return f"{self.ns}:output:{attempt}"

    def events(self, attempt: str) -> str:
        return f"{self.ns}:events:{attempt}"

    def cancel(self, attempt: str) -> str:
        return f"{self.ns}:cancel:{attempt}"

    def wake(self, backend_id: str) -> str:
        return f"{self.ns}:wake:{backend_id}"

    def queue_name(self, served: str) -> str:
        return f"{self.ns}:{check_served(served)}"

    def served_from_incomplete(self, key: str) -> str | None:
        """The served name in a SAQ `saq:<ns>:<served>:incomplete` key, else None."""
        prefix, suffix = f"saq:{self.ns}:", ":incomplete"
        if key.startswith(prefix) and key.endswith(suffix):
            name = key[len(prefix) : -len(suffix)]
            return name if _SERVED.fullmatch(name) else None
        return None


def check_served(name: str) -> str:
    """Validate a served name (a preset name or `local:<folder>`); returns it."""
    if not isinstance(name, str) or not _SERVED.fullmatch(name):
        raise ValueError(
            f"served model name must be 1-100 letters, digits or ._:+- characters, got {name!r}"
        )
    return name


def served_name(model: str | None) -> str | None:
    """The name a worker loaded with `model` advertises, or None for "auto" (any worker).

    A preset serves its own name; a local diffusers folder serves `local:<folder name>`, the
    preset name VideoGenerator gives it, so a bot configured with the same folder name finds
    the workers that loaded it (the folder may live elsewhere on each machine).
    """
    if model is None or model in ("", "auto"):
        return None
    if model.startswith("local:"):  # already a served name (a job asking for a fleet's model)
        return check_served(model)
    if "/" in model or os.sep in model or Path(model).expanduser().is_dir():
        return check_served(f"local:{Path(model).expanduser().name}")
    return check_served(model)


def connect(url: str, **options: Any) -> aioredis.Redis:
    """A Redis client with deliberate timeouts (a blocked call never hangs for ever).

    socket_timeout must stay above the longest blocking read we issue (XREAD BLOCK 1 s, BLMOVE
    5 s). `rediss://` URLs give TLS; a password in the URL is used for AUTH.
    """
    check_url(url)
    settings: dict[str, Any] = {
        "socket_timeout": 15.0,
        "socket_connect_timeout": 5.0,
        "socket_keepalive": True,
        "health_check_interval": 15,
        "protocol": 2,  # reply shapes (XREAD lists) as this module reads them
        "retry": Retry(ExponentialBackoff(cap=1.0, base=0.05), 2),
    }
    settings.update(options)
    return aioredis.from_url(url, **settings)


def check_url(url: str) -> str:
    """Refuse anything but redis://, rediss:// and unix:// URLs without echoing a password."""
    parts = urlsplit(url or "")
    if parts.scheme not in ("redis", "rediss", "unix") or not (parts.hostname or parts.path):
        raise ValueError(
            "Redis URL must look like redis://[:password@]host:port/db or rediss://..."
        )
    return url


def redacted(url: str) -> str:
    """The URL with any password replaced, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[-1]
    user = f"{parts.username}:" if parts.username else ":"
    return parts._replace(netloc=f"{user}***@{netloc}").geturl()


async def stop_task(task: asyncio.Task[Any] | None, *, grace: float = 2.0) -> None:
    """Cancel `task` and wait until it has ended.

    One cancel is not trusted: on Python 3.11, `asyncio.wait_for` (which redis-py uses around
    every socket write) swallows a cancellation that lands just as its inner call completes,
    and the task carries on. So the loops here also check a stop flag, and this keeps
    cancelling every `grace` seconds until the task is done.
    """
    if task is None:
        return
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=grace)
    if not task.cancelled() and task.exception() is not None:
        log.warning("task %s ended with %r", task.get_name(), task.exception())


def _dump_json(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"))


def _load_json(payload: str | bytes) -> dict[str, Any]:
    data = json.loads(payload)
    if not isinstance(data, dict):
        raise ValueError("a SAQ job record must be a JSON object")
    return data


class ZoetropeQueue(RedisQueue):
    """A SAQ RedisQueue with JSON (de)serialisation pinned and two behaviours changed.

    - `dequeue` waits (with back-off) instead of raising while Redis is unreachable: SAQ's
      worker loop would otherwise spin on a refused connection at 100 % CPU.
    - `sweep` decides deadness from heartbeats only, finishes a dead job as aborted without
      SAQ's own retry (the bot is the only scheduler: it retries through its fair queue), does
      not sweep a job that a worker has just taken but not yet marked active (SAQ would), and
      does nothing until Redis has been reachable for a whole heartbeat timeout.
    """

    def __init__(self, redis: aioredis.Redis, name: str, *, timings: RedisTimings) -> None:
        super().__init__(redis, name=name, dump=_dump_json, load=_load_json)
        self.timings = timings
        self.reachable_since: float | None = None  # monotonic; None while Redis fails
        self._backoff = 0.1

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


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A worker's registration as read from Redis (validated: Redis is not trusted)."""

    worker_id: str
    served: str
    slots: int
    busy: int
    state: str  # "loading" | "ready" | "stopping"
    host: str = ""

    @classmethod
    def parse(cls, worker_id: str, raw: bytes | str) -> WorkerInfo | None:
        try:
            data = json.loads(raw)
            info = cls(
                worker_id=worker_id,
                served=check_served(str(data["served"])),
                slots=int(data["slots"]),
                busy=int(data.get("busy", 0)),
                state=str(data.get("state", "")),
                host=str(data.get("host", ""))[:100],
            )
        except (ValueError, TypeError, KeyError):
            log.warning("ignoring an unreadable worker registration %s", worker_id)
            return None
        if not 1 <= info.slots <= 64:
            log.warning("ignoring worker %s: slots %r out of range 1-64", worker_id, info.slots)
            return None
        return info


# -- the backend -------------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class _Attempt:
    request: GenerationRequest
    key: str  # SAQ job key: "<job_id>.<nonce>"
    served: str | None  # None: any worker (bound when a slot is granted)
    image: bytes
    events: asyncio.Queue[Event] = dataclasses.field(default_factory=asyncio.Queue)
    # waiting (no slot yet) -> enqueuing -> enqueued (in SAQ) -> finished
    phase: str = "waiting"
    last_id: str = "0-0"  # last event stream entry read
    cancel_requested: bool = False
    cancel_sent: bool = False
    alone_since: float | None = None  # queued in SAQ while no worker serves it, since when
    worker: str | None = None
    enqueued_at: float = 0.0
    started: bool = False

    @property
    def finished(self) -> bool:
        return self.phase == "finished"

    @property
    def holds_slot(self) -> bool:
        return self.phase in ("enqueuing", "enqueued")


def _new_attempt_key(job_id: str) -> str:
    return f"{job_id}.{uuid.uuid4().hex[:12]}"


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
    ) -> None:
        self._url = check_url(url)
        self.default_served = served_name(model)
        self.keys = Keys(namespace)
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
        self._up = False
        self._orphans_done = False
        self._workers: dict[str, WorkerInfo] = {}
        self._jobs: dict[str, _Attempt] = {}  # job id -> its current attempt
        self._by_key: dict[str, _Attempt] = {}  # attempt key -> attempt (until finished)
        self._order: list[_Attempt] = []  # attempts not finished, in submission order
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pump_task: asyncio.Task[None] | None = None
        self._wake_key = self.keys.wake(uuid.uuid4().hex[:12])
        self._wake_last = "0-0"
        self._next_poll = 0.0
        self._next_sweep = 0.0
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
    def info(self) -> dict[str, Any]:
        """A summary for logs and /queue: workers, their slots and what they serve."""
        return {
            "redis": redacted(self._url),
            "reachable": self._up,
            "workers": [dataclasses.asdict(w) for w in self._workers.values()],
            "jobs": len(self._order),
        }

    @property
    def client(self) -> aioredis.Redis | None:
        """The Redis client (None before start()); for diagnostics and benchmarks."""
        return self._redis

    def worker_of(self, job_id: str) -> str | None:
        """The id of the worker running `job_id` (known from its first event), else None."""
        attempt = self._jobs.get(job_id)
        return attempt.worker if attempt is not None else None

    def workers(self) -> list[WorkerInfo]:
        """Live workers as of the last look (every `poll_every`)."""
        return list(self._workers.values())

    def served(self) -> dict[str, int]:
        """Served name -> slots of live, loaded workers."""
        slots: dict[str, int] = defaultdict(int)
        for worker in self._workers.values():
            if worker.state == "ready":
                slots[worker.served] += worker.slots
        return dict(slots)

    def total_slots(self, preset: str | None = None) -> int:
        """Slots of live, loaded workers (busy or not) for `preset` (None: the default/any)."""
        if not self._up or self._closing:
            return 0
        name = self._target(preset)
        slots = self.served()
        return slots.get(name, 0) if name else sum(slots.values())

    def route(self, preset: str | None) -> str | None:
        """The served name (SAQ queue) a job of `preset` goes to; None: any worker. The same
        mapping submit() and capacity() use, so two names for one model (None and the
        default model's name) give one route."""
        return self._target(preset)

    def capacity(self, preset: str | None = None) -> int:
        """Free slots now for a job of `preset` (None: the default model, or any worker)."""
        if not self._up or self._closing:
            return 0
        free = self._free_slots()
        name = self._target(preset)
        waiting = [a for a in self._order if a.phase == "waiting"]
        if name is not None:
            waiting_here = sum(1 for a in waiting if a.served in (name, None))
            return max(0, free.get(name, 0) - waiting_here)
        return max(0, sum(max(0, n) for n in free.values()) - len(waiting))

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect lazily and start watching Redis. Returns at once, even if Redis is down."""
        if self._state is BackendState.CLOSED:
            raise BackendClosed("the backend is closed")
        if self._pump_task is not None:
            return
        self._redis = connect(self._url, **self._redis_options)
        self._set_state(BackendState.STARTING, "waiting for Redis")
        self._pump_task = asyncio.create_task(self._pump(), name="redis-backend")
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
        self._set_state(BackendState.CLOSED, "closed")
        held = [a for a in self._order if not a.finished]
        if self._tasks:  # cancels of abandoned jobs and enqueues under way: let them land
            await asyncio.wait(set(self._tasks), timeout=1.0)
        for task in [self._pump_task, *self._tasks]:
            await stop_task(task)
        if self._redis is not None and self._up and held:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await self._send_cancels([a for a in held if a.phase == "enqueued"])
        for attempt in held:
            self._finish(
                attempt, Failed("requeue", "The generator shut down before this job finished.")
            )
        for queue in self._queues.values():
            await queue.close()
        if self._redis is not None:
            with contextlib.suppress(Exception):
                await self._redis.aclose()
        self._up = False

    # -- jobs ---------------------------------------------------------------------------------

    async def submit(self, request: GenerationRequest) -> AsyncIterator[Event]:
        """Run one request on a worker. Yields Progress events, then one Done or Failed."""
        if not isinstance(request, GenerationRequest):
            raise TypeError(f"request must be a GenerationRequest, got {type(request).__name__}")
        job_id = request.job_id
        if self._state is BackendState.CLOSED:
            yield Failed("crash", "The generator is shut down.")
            return
        if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
            yield Failed(
                "bad_request", f"job id must be 1-80 letters, digits, _ or -, got {job_id!r}"
            )
            return
        if job_id in self._jobs:
            yield Failed("bad_request", f"job {job_id!r} is already submitted")
            return
        try:
            served = served_name(request.preset) or self.default_served
        except ValueError as exc:
            yield Failed("bad_request", str(exc))
            return
        try:
            image = await asyncio.to_thread(_read_capped, request.image_path, self.max_input_bytes)
        except ValueError as exc:
            yield Failed("bad_request", str(exc))
            return
        if self._state is BackendState.STOPPED:
            await self.start()
        attempt = _Attempt(request, _new_attempt_key(job_id), served, image)
        self._jobs[job_id] = attempt
        self._by_key[attempt.key] = attempt
        self._order.append(attempt)
        try:
            # A first event at once: the job layer counts the job as ours from here on (its
            # scheduler holds a slot for a dispatched job until the backend's first event).
            attempt.events.put_nowait(Progress(0, 0, "load"))
            self._grant_slots()
            while True:
                event = await attempt.events.get()
                yield event
                if not isinstance(event, Progress):
                    return
        finally:
            if self._jobs.get(job_id) is attempt:
                del self._jobs[job_id]
            if not attempt.finished:
                # The caller stopped listening (or was cancelled): the job is not wanted.
                attempt.cancel_requested = True
                self._finish(attempt, Failed("cancelled", "Nobody waits for this job any more."))
                if attempt.key:
                    self._spawn(self._send_cancels([attempt], force=True), "redis-abandon")

    async def cancel(self, job_id: str) -> None:
        """Cancel a job: one not yet taken by a worker ends with Failed("cancelled") at once; a
        running one stops at its next denoising step. Unknown or finished jobs are ignored."""
        attempt = self._jobs.get(job_id)
        if attempt is None or attempt.finished or attempt.cancel_requested:
            return
        attempt.cancel_requested = True
        if attempt.phase == "waiting":
            self._finish(attempt, Failed("cancelled", "Cancelled before it started."))
            return
        if attempt.phase == "enqueued":
            try:
                await self._send_cancels([attempt])
            except UNREACHABLE as exc:
                # The pump sends it again once Redis answers; the job cannot finish unseen.
                log.warning("job %s: cannot reach Redis to cancel (%s); will retry", job_id, exc)
        # "enqueuing": the enqueue task sees cancel_requested when it is done and sends it.

    # -- internals: slots ---------------------------------------------------------------------

    def _target(self, preset: str | None) -> str | None:
        try:
            return served_name(preset) or self.default_served
        except ValueError:
            return None

    def _free_slots(self) -> dict[str, int]:
        free: dict[str, int] = defaultdict(int, self.served())
        for attempt in self._order:
            if attempt.holds_slot and attempt.served is not None:
                free[attempt.served] -= 1
        return free

    def _grant_slots(self) -> None:
        """Hand waiting attempts to SAQ, oldest first, while their served name has a slot."""
        if not self._up or self._closing:
            return
        free = self._free_slots()
        for attempt in list(self._order):
            if attempt.phase != "waiting":
                continue
            if attempt.cancel_requested:
                self._finish(attempt, Failed("cancelled", "Cancelled before it started."))
                continue
            target = attempt.served
            if target is None:  # any worker: the served name with the most free slots
                candidates = [(n, name) for name, n in free.items() if n > 0]
                target = max(candidates)[1] if candidates else None
            if target is None or free.get(target, 0) <= 0:
                continue
            free[target] -= 1
            attempt.served = attempt.served or target
            attempt.phase = "enqueuing"
            self._spawn(self._enqueue(attempt, target), f"redis-enqueue-{attempt.key}")

    async def _enqueue(self, attempt: _Attempt, served: str) -> None:
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
            await self._queue(served).enqueue(job)  # None: already there (a repeated try)
        except UNREACHABLE as exc:
            self._note_down(exc)
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
                await self._send_cancels([attempt])
        await self._wake()

    def _queue(self, served: str) -> ZoetropeQueue:
        queue = self._queues.get(served)
        if queue is None:
            assert self._redis is not None
            queue = ZoetropeQueue(self._redis, self.keys.queue_name(served), timings=self.timings)
            if self._up:
                queue.note_reachable(True)
            self._queues[served] = queue
        return queue

    # -- internals: events --------------------------------------------------------------------

    def _finish(self, attempt: _Attempt, event: Done | Failed) -> None:
        if attempt.finished:
            return
        if isinstance(event, Failed) and attempt.cancel_requested and event.kind != "cancelled":
            event = Failed("cancelled", "Cancelled.")
        attempt.phase = "finished"
        attempt.image = b""
        self._by_key.pop(attempt.key, None)
        with contextlib.suppress(ValueError):
            self._order.remove(attempt)
        if self._jobs.get(attempt.request.job_id) is attempt:
            del self._jobs[attempt.request.job_id]  # a retry may submit the same id again
        attempt.events.put_nowait(event)
        self._grant_slots()
        self._changed()

    async def _on_entry(self, attempt: _Attempt, fields: dict[bytes, bytes]) -> None:
        raw = fields.get(b"e")
        worker = fields.get(b"w", b"").decode("utf-8", "replace")[:100] or None
        try:
            data = json.loads(raw) if raw is not None else None
            if not isinstance(data, dict):
                raise ValueError("not an object")
            event = event_from_dict(data)
        except (TypeError, ValueError) as exc:
            log.warning("job %s: ignoring an unreadable event (%s)", attempt.request.job_id, exc)
            return
        attempt.worker = worker or attempt.worker
        if isinstance(event, Progress):
            try:
                event = Progress(int(event.step), int(event.total), str(event.stage))  # type: ignore[arg-type]
            except (TypeError, ValueError):
                return
            attempt.started = True
            attempt.events.put_nowait(event)
        elif isinstance(event, Failed):
            kind = event.kind if event.kind in _FAILURE_KINDS else "error"
            self._finish(attempt, Failed(kind, str(event.message)[:2000]))
        else:
            self._finish(attempt, await self._collect_output(attempt, event))

    async def _collect_output(self, attempt: _Attempt, done: Done) -> Done | Failed:
        """Fetch the MP4 the worker left in Redis and write it where the request wants it."""
        assert self._redis is not None
        key = self.keys.output(attempt.key)
        size = await self._redis.strlen(key)
        if size == 0:
            return Failed(
                "crash", "The finished clip was lost in Redis before it could be fetched."
            )
        if size > self.max_output_bytes:
            await self._redis.delete(key)
            return Failed(
                "error", f"The clip is {size} bytes, over the {self.max_output_bytes} byte limit."
            )
        data = await self._redis.get(key)
        if not data:
            return Failed(
                "crash", "The finished clip was lost in Redis before it could be fetched."
            )
        path = Path(attempt.request.output_path)
        try:
            await asyncio.to_thread(_write_atomic, path, data)
        except OSError as exc:
            return Failed("error", f"Cannot write the clip to {path}: {exc.strerror or exc}")
        with contextlib.suppress(*UNREACHABLE, RedisError):
            await self._redis.delete(
                key, self.keys.input(attempt.key), self.keys.events(attempt.key)
            )
        meta = dict(done.meta) if isinstance(done.meta, dict) else {}
        meta.update(worker=attempt.worker, bytes=len(data))
        return Done(str(path), meta)

    # -- internals: the pump ------------------------------------------------------------------

    async def _pump(self) -> None:
        """One task does all the watching: reads event streams, looks at job states and the
        worker list, sweeps, resends cancels. It survives Redis going away."""
        backoff = 0.2
        while not self._closing:
            try:
                if not self._orphans_done:
                    await self._cancel_orphans()
                    self._orphans_done = True
                now = time.monotonic()
                if now >= self._next_poll:
                    self._next_poll = now + self.timings.poll_every
                    await self._refresh_workers()
                    await self._check_jobs()
                    await self._send_cancels([a for a in self._order if a.cancel_requested])
                if now >= self._next_sweep:
                    self._next_sweep = now + self.timings.sweep_every
                    await self._sweep()
                await self._read_events(block_ms=int(min(1.0, self.timings.poll_every) * 1000))
                backoff = 0.2
            except asyncio.CancelledError:
                raise
            except UNREACHABLE as exc:
                self._note_down(exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            except Exception:
                # A server-side error (a key of the wrong type) or a bug: never stop watching,
                # or every job in flight would hang.
                log.exception("Redis backend: unexpected error; continuing")
                await asyncio.sleep(1.0)

    def _note_down(self, exc: BaseException) -> None:
        if self._up or self._detail != "waiting for Redis":
            log.warning("Redis unreachable (%s): no new jobs until it answers", exc)
        self._up = False
        self._workers = {}
        for queue in self._queues.values():
            queue.note_reachable(False)
        self._next_poll = 0.0
        if not self._closing:
            self._set_state(BackendState.STARTING, "waiting for Redis")
        self._changed()

    async def _refresh_workers(self) -> None:
        assert self._redis is not None
        ids = sorted(
            i.decode("utf-8", "replace") for i in await self._redis.smembers(self.keys.workers)
        )
        values = await self._redis.mget([self.keys.worker(i) for i in ids]) if ids else []
        live: dict[str, WorkerInfo] = {}
        gone: list[str] = []
        for worker_id, raw in zip(ids, values, strict=True):
            if raw is None:
                gone.append(worker_id)
            elif (info := WorkerInfo.parse(worker_id, raw)) is not None:
                live[worker_id] = info
        if gone:
            await self._redis.srem(self.keys.workers, *gone)
        if not self._up:
            log.info("Redis reachable again: %d worker(s) live", len(live))
        before = self.served()
        self._up = True
        for queue in self._queues.values():
            queue.note_reachable(True)
        self._workers = live
        ready = [w for w in live.values() if w.state == "ready"]
        if ready:
            self._set_state(BackendState.READY, "ready")
        elif any(w.state == "loading" for w in live.values()):
            self._set_state(BackendState.STARTING, "a worker is loading its model")
        else:
            self._set_state(BackendState.STARTING, "waiting for a worker")
        self._grant_slots()
        if self.served() != before:
            self._changed()

    async def _check_jobs(self) -> None:
        """Find attempts whose SAQ job ended without a final event (dead worker, lost data),
        and attempts stuck in a SAQ queue that no live worker serves."""
        assert self._redis is not None
        enqueued = [a for a in self._order if a.phase == "enqueued"]
        if not enqueued:
            return
        raws = await self._redis.mget([self._queue(a.served).job_id(a.key) for a in enqueued])  # type: ignore[arg-type]
        served = self.served()
        for attempt, raw in zip(enqueued, raws, strict=True):
            if attempt.finished:
                continue
            queue = self._queue(attempt.served)  # type: ignore[arg-type]
            try:
                job = queue.deserialize(raw)
            except (ValueError, TypeError, KeyError):
                job = None
            if job is None or job.status in TERMINAL_STATUSES:
                await self._drain(attempt)  # the final event may have come with the ending
                if not attempt.finished:
                    self._finish(attempt, Failed("crash", _crash_reason(job)))
            elif job.status in (Status.QUEUED, Status.NEW) and not served.get(attempt.served or ""):
                await self._maybe_pull_back(attempt, queue)
            else:
                attempt.alone_since = None

    async def _maybe_pull_back(self, attempt: _Attempt, queue: ZoetropeQueue) -> None:
        """A job waiting in SAQ whose workers all left: after a heartbeat timeout take it back
        and wait for a slot again (it never ran, so this costs the job no attempt)."""
        now = time.monotonic()
        if attempt.alone_since is None:
            attempt.alone_since = now
            return
        if now - attempt.alone_since < self.timings.heartbeat_timeout:
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
                    _read_capped, attempt.request.image_path, self.max_input_bytes
                )
            except ValueError as exc:
                self._finish(attempt, Failed("bad_request", str(exc)))
                return
            self._by_key.pop(old_key, None)
            attempt.key = _new_attempt_key(attempt.request.job_id)
            self._by_key[attempt.key] = attempt
            attempt.phase, attempt.last_id, attempt.alone_since = "waiting", "0-0", None
            if self.default_served is None and attempt.request.preset is None:
                attempt.served = None
            attempt.events.put_nowait(Progress(0, 0, "load"))
            await self._redis.delete(self.keys.input(old_key))  # type: ignore[union-attr]
        attempt.alone_since = None

    async def _drain(self, attempt: _Attempt) -> None:
        assert self._redis is not None
        start = "-" if attempt.last_id == "0-0" else f"({attempt.last_id}"
        for entry_id, fields in await self._redis.xrange(self.keys.events(attempt.key), start, "+"):
            await self._on_entry(attempt, fields)
            attempt.last_id = entry_id.decode()
            if attempt.finished:
                return

    async def _read_events(self, block_ms: int) -> None:
        assert self._redis is not None
        streams: dict[str, str] = {self._wake_key: self._wake_last}
        by_stream: dict[str, _Attempt] = {}
        for attempt in self._order:
            if attempt.phase == "enqueued":
                name = self.keys.events(attempt.key)
                streams[name] = attempt.last_id
                by_stream[name] = attempt
        reply = await self._redis.xread(streams, count=100, block=block_ms)
        for stream, entries in reply or []:
            name = stream.decode()
            if name == self._wake_key:
                self._wake_last = entries[-1][0].decode()
                continue
            attempt = by_stream.get(name)
            for entry_id, fields in entries:
                if attempt is None or attempt.finished:
                    break
                await self._on_entry(attempt, fields)
                attempt.last_id = entry_id.decode()

    async def _wake(self) -> None:
        """Make the pump re-read its stream list now (a job was just handed to SAQ)."""
        if self._redis is None:
            return
        with contextlib.suppress(*UNREACHABLE):
            async with self._redis.pipeline(transaction=False) as pipe:
                await (
                    pipe.xadd(self._wake_key, {"w": b"1"}, maxlen=16, approximate=True)
                    .expire(self._wake_key, 3600)
                    .execute()
                )

    async def _send_cancels(self, attempts: Iterable[_Attempt], *, force: bool = False) -> None:
        """Tell workers to stop these attempts; pull back those no worker has taken yet."""
        assert self._redis is not None
        for attempt in attempts:
            if attempt.cancel_sent or (attempt.phase not in ("enqueued", "finished")):
                continue
            if attempt.finished and not force:
                continue
            await self._redis.set(self.keys.cancel(attempt.key), b"1", ex=DATA_TTL_S)
            await self._redis.publish(self.keys.cancel_channel, attempt.key)
            attempt.cancel_sent = True
            if attempt.served is not None and await self._queue(attempt.served).pull_back(
                attempt.key
            ):
                # Nobody took it: end it here instead of waiting for a worker to refuse it.
                queue = self._queue(attempt.served)
                await queue.finish_pulled(attempt.key, "cancelled")
                await self._redis.delete(self.keys.input(attempt.key))
                self._finish(attempt, Failed("cancelled", "Cancelled before it started."))

    async def _sweep(self) -> None:
        names = {w.served for w in self._workers.values()}
        names.update(a.served for a in self._order if a.phase == "enqueued" and a.served)
        for name in sorted(names):
            await self._queue(name).sweep(lock=self.timings.sweep_every)

    async def _cancel_orphans(self) -> None:
        """Jobs handed out by a previous run of the bot: the job layer requeues them on
        start-up (resume), so their old attempts are cancelled to free the workers."""
        assert self._redis is not None
        names: set[str] = set()
        async for key in self._redis.scan_iter(match=f"saq:{self.keys.ns}:*:incomplete", count=100):
            name = self.keys.served_from_incomplete(key.decode("utf-8", "replace"))
            if name:
                names.add(name)
        for name in sorted(names):
            queue = self._queue(name)
            for raw_id in await self._redis.zrange(queue._incomplete, 0, -1):
                key = queue.job_key_from_id(raw_id.decode("utf-8", "replace"))
                if key in self._by_key:
                    continue
                log.info("cancelling job attempt %s left by a previous run of the bot", key)
                await self._redis.set(self.keys.cancel(key), b"1", ex=DATA_TTL_S)
                await self._redis.publish(self.keys.cancel_channel, key)
                if await queue.pull_back(key):
                    await queue.finish_pulled(key, "cancelled: bot restarted")
                    await self._redis.delete(self.keys.input(key))

    # -- internals: misc ----------------------------------------------------------------------

    def _set_state(self, state: BackendState, detail: str) -> None:
        if self._closing and state is not BackendState.CLOSED:
            return
        if state is not self._state or detail != self._detail:
            log.info("Redis backend %s (%s)", state.value, detail)
        self._state, self._detail = state, detail
        self._state_changed.set()

    def _changed(self) -> None:
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


def _crash_reason(job: Job | None) -> str:
    if job is None:
        return "The job vanished from Redis (was Redis restarted without persistence?)."
    error = (job.error or "").strip()
    if job.status is Status.ABORTED and error.startswith(SWEPT):
        return "The worker running this job stopped sending heartbeats (it crashed or lost its connection)."
    if job.status is Status.ABORTED:
        return f"The job was aborted in Redis ({error.splitlines()[0] if error else 'no reason'})."
    if job.status is Status.FAILED:
        last = error.splitlines()[-1] if error else "no reason given"
        return f"The worker failed while running this job ({last[:300]})."
    return "The worker finished without sending the result."


def _read_capped(path: str, cap: int) -> bytes:
    """Read the input image for the trip to a worker; errors name the path and the limit."""
    try:
        size = os.path.getsize(path)
        if size > cap:
            raise ValueError(f"input image {path} is {size} bytes, over the {cap} byte limit")
        with open(path, "rb") as handle:
            data = handle.read(cap + 1)
    except OSError as exc:
        raise ValueError(f"cannot read input image {path!r}: {exc.strerror or exc}") from None
    if not data:
        raise ValueError(f"input image {path} is empty")
    if len(data) > cap:
        raise ValueError(f"input image {path} is over the {cap} byte limit")
    return data


def _write_atomic(path: Path, data: bytes) -> None:
    """Write to a temp name beside `path`, then os.replace: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


__all__ = [
    "DEFAULT_NAMESPACE",
    "Keys",
    "RedisBackend",
    "RedisTimings",
    "WorkerInfo",
    "ZoetropeQueue",
    "check_served",
    "connect",
    "redacted",
    "served_name",
    "stop_task",
]
