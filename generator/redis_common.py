"""The Redis transport's shared ground (DESIGN.md §7): names, keys, timings, the JSON codec
and connection helpers that the bot-side client (generator/redis_backend.py) and the remote
worker (generator/redis_worker.py) both need, so that neither imports the other (the split of
arq's `constants`/`connections` from its client and worker). The SAQ queue wrapper both use is
in generator/redis_queue.py.

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
import dataclasses
import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from redis import asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import AuthenticationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from generator.protocol import Event, event_from_dict, event_to_dict

log = logging.getLogger("zoetrope.redis")

MIB = 1024 * 1024
DEFAULT_NAMESPACE = "zoetrope"
MAX_INPUT_BYTES = 32 * MIB  # the normalised PNG of an input image; intake caps pixels well below
MAX_OUTPUT_BYTES = 64 * MIB  # an MP4 coming back; the encoder aims at 10 MiB by default
DATA_TTL_S = 24 * 3600  # inputs, outputs and event streams nobody collected expire after a day
JOB_TTL_S = 3600  # how long SAQ keeps a finished job's record
GENERATE = "generate"  # the SAQ function name workers register
SWEPT = "swept"  # SAQ error text of a job whose worker went silent
# The sweep's reason for a job a worker took from the queue but never marked active (it
# stalled or died between BLMOVE and its first update, SAQ issue #277): it never started, so
# the bot gives it back as "requeue", which costs the job no attempt.
NEVER_STARTED = "taken from the queue but never started"

# Redis errors that mean "cannot talk to Redis right now" (as opposed to a bad command).
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError, OSError)

# The backend's status note while Redis refuses our password (see down_detail).
AUTH_FAILED = "Redis refused the password (authentication failed)"


def down_detail(exc: BaseException) -> str:
    """Why Redis cannot be used, for status notes: a refused password (WRONGPASS, NOAUTH,
    which redis-py raises as AuthenticationError, a ConnectionError) is not "waiting"."""
    if isinstance(exc, AuthenticationError):
        return AUTH_FAILED
    return "waiting for Redis"


# Job ids become parts of Redis keys: the bot's ids are short tokens, nothing else is taken.
JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,80}")
_SERVED = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+-]{0,99}")


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


# Query parameters that redis-py reads as credentials (`?password=`, and `?username=` beside
# it), and names that carry secrets in other clients' URLs: all are hidden in logs.
_SECRET_PARAMS = re.compile(r"(?i)^(password|pass|passwd|pwd|auth|token|secret|username|user)$")


def redacted(url: str) -> str:
    """The URL with every password replaced, for logs: the user-info one (`:pw@host`) and any
    credential query parameter (`?password=`). A URL that does not parse is not echoed."""
    try:
        parts = urlsplit(url or "")
        password = parts.password
    except ValueError:
        return "<an unreadable Redis URL>"
    if password is not None:
        netloc = parts.netloc.rsplit("@", 1)[-1]
        user = f"{parts.username}:" if parts.username else ":"
        parts = parts._replace(netloc=f"{user}***@{netloc}")
    if parts.query:
        fields = []
        for field in parts.query.split("&"):
            name, sep, _value = field.partition("=")
            fields.append(f"{name}=***" if sep and _SECRET_PARAMS.match(unquote(name)) else field)
        parts = parts._replace(query="&".join(fields))
    if parts.fragment:
        parts = parts._replace(fragment="***")
    return parts.geturl()


DEFAULT_MAX_WORKER_SLOTS = 8
MAX_WORKER_SLOTS_ENV = "ZOETROPE_MAX_WORKER_SLOTS"


def max_worker_slots_from_env(env: Mapping[str, str] | None = None) -> int:
    """The most slots the bot believes one worker registration (ZOETROPE_MAX_WORKER_SLOTS,
    default 8). A registration is written by whoever can write Redis; without a cap one
    claiming 64 slots would have the bot hand it 64 jobs at once, out of the fair order."""
    env = os.environ if env is None else env
    raw = env.get(MAX_WORKER_SLOTS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_WORKER_SLOTS
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{MAX_WORKER_SLOTS_ENV} must be a whole number from 1 to 64") from None
    if not 1 <= value <= 64:
        raise ValueError(f"{MAX_WORKER_SLOTS_ENV} must be a whole number from 1 to 64")
    return value


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


def dump_json(data: dict[str, Any]) -> str:
    """SAQ's serializer: JSON, never pickle (see the module docstring)."""
    return json.dumps(data, separators=(",", ":"))


def load_json(payload: str | bytes) -> dict[str, Any]:
    """SAQ's deserializer: a JSON object or ValueError."""
    data = json.loads(payload)
    if not isinstance(data, dict):
        raise ValueError("a SAQ job record must be a JSON object")
    return data


# -- what travels: event stream entries and worker registrations --------------------------------


def encode_entry(event: Event, worker_id: str) -> dict[str, str]:
    """The fields of one entry of an attempt's event stream (written by the worker)."""
    return {"e": json.dumps(event_to_dict(event), allow_nan=False), "w": worker_id}


def entry_worker(fields: Mapping[bytes, bytes]) -> str | None:
    """The worker an event stream entry says it comes from (None when it names none)."""
    raw = fields.get(b"w", b"")
    if not isinstance(raw, bytes):
        return None
    return raw.decode("utf-8", "replace")[:100] or None


def decode_entry(fields: Mapping[bytes, bytes]) -> Event:
    """An event stream entry read back (by the backend), validated into a typed event.
    ValueError naming the problem when the entry is malformed: Redis is not trusted, and no
    other error escapes (a number too large for a float, JSON nested past the recursion
    limit, bytes that are not UTF-8)."""
    raw = fields.get(b"e")
    if raw is None:
        raise ValueError("an event entry without an event")
    if len(raw) > 1 << 20:
        raise ValueError(f"an event entry of {len(raw)} bytes, over the 1 MiB limit")
    try:
        return event_from_dict(json.loads(raw))
    except (OverflowError, RecursionError, TypeError) as exc:
        raise ValueError(f"an unreadable event ({type(exc).__name__})") from None


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A worker's registration (`<ns>:worker:<id>`): written by the worker, read and
    validated by the backend (Redis is not trusted)."""

    worker_id: str
    served: str
    slots: int
    busy: int
    state: str  # "loading" | "ready" | "stopping"
    host: str = ""
    pid: int | None = None
    model: str = ""

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        del data["worker_id"]  # the key names the worker
        return json.dumps(data)

    @classmethod
    def parse(cls, worker_id: str, raw: bytes | str) -> WorkerInfo:
        """Validate a registration read from Redis; ValueError naming the bad field (no
        other error: a float too large for int(), deep JSON, a list where an object goes)."""
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise ValueError(f"not JSON ({type(exc).__name__})") from None
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")

        def whole(name: str, low: int, high: int, default: int | None = None) -> int | None:
            value = data.get(name, default)
            if value is None and default is None and name == "pid":
                return None
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"{name} must be a whole number from {low} to {high}")
            return value

        def text(name: str, limit: int) -> str:
            value = data.get(name, "")
            if not isinstance(value, str):
                raise ValueError(f"{name} must be text")
            return value[:limit]

        served = data.get("served")
        if not isinstance(served, str):
            raise ValueError("served must be text")
        state = text("state", 20)
        if state not in ("loading", "ready", "stopping"):
            raise ValueError("state must be loading, ready or stopping")
        return cls(
            worker_id=worker_id,
            served=check_served(served),
            slots=whole("slots", 1, 64),  # type: ignore[arg-type]
            busy=whole("busy", 0, 64, 0),  # type: ignore[arg-type]
            state=state,
            host=text("host", 100),
            pid=whole("pid", 1, 2**31 - 1),
            model=text("model", 200),
        )
