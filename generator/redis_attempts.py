"""The bot-side bookkeeping of the Redis transport: one `Attempt` per submission of a job, the
`AttemptBook` that finds them by job id and by attempt key in submission order, and the file
helpers that move an attempt's input and output between this machine and Redis."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

from saq.job import Job, Status

from generator.protocol import Event, GenerationRequest
from generator.redis_common import SWEPT


@dataclasses.dataclass(eq=False)
class Attempt:
    """One submission of a job to the fleet (see redis_common: an attempt)."""

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
    owner: str | None = None  # the worker SAQ handed it to (from the job record); see Watcher
    foreign_noted: bool = False  # an entry from another worker was logged (log it once)
    enqueued_at: float = 0.0
    started: bool = False

    @property
    def finished(self) -> bool:
        return self.phase == "finished"

    @property
    def holds_slot(self) -> bool:
        return self.phase in ("enqueuing", "enqueued")


def new_attempt_key(job_id: str) -> str:
    return f"{job_id}.{uuid.uuid4().hex[:12]}"


class AttemptBook:
    """The attempts not finished yet: by job id (the current attempt of each job), by attempt
    key (what Redis names), and in submission order (who gets a free slot first)."""

    def __init__(self) -> None:
        self._by_job: dict[str, Attempt] = {}
        self._by_key: dict[str, Attempt] = {}
        self._order: list[Attempt] = []

    def __iter__(self) -> Iterator[Attempt]:
        return iter(list(self._order))  # a copy: finishing an attempt while iterating is fine

    def __len__(self) -> int:
        return len(self._order)

    def add(self, attempt: Attempt) -> None:
        self._by_job[attempt.request.job_id] = attempt
        self._by_key[attempt.key] = attempt
        self._order.append(attempt)

    def of_job(self, job_id: str) -> Attempt | None:
        return self._by_job.get(job_id)

    def has_key(self, key: str) -> bool:
        return key in self._by_key

    def rekey(self, attempt: Attempt, key: str) -> None:
        """A new attempt key for an attempt taken back from SAQ (old events are ignored)."""
        self._by_key.pop(attempt.key, None)
        attempt.key = key
        self._by_key[key] = attempt

    def drop(self, attempt: Attempt) -> None:
        """Forget a finished attempt; a retry may submit the same job id again."""
        self._by_key.pop(attempt.key, None)
        with contextlib.suppress(ValueError):
            self._order.remove(attempt)
        if self._by_job.get(attempt.request.job_id) is attempt:
            del self._by_job[attempt.request.job_id]

    def release(self, attempt: Attempt) -> None:
        """The caller stopped listening: the job id is free even if the attempt lingers."""
        if self._by_job.get(attempt.request.job_id) is attempt:
            del self._by_job[attempt.request.job_id]

    def in_phase(self, phase: str) -> list[Attempt]:
        return [a for a in self._order if a.phase == phase]


def crash_reason(job: Job | None) -> str:
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


def read_capped(path: str, cap: int) -> bytes:
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


def write_atomic(path: Path, data: bytes) -> None:
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
