"""The job events and their bus: what happens to a job, told to whoever listens.

Owns: the event classes (`Queued`, `PositionChanged`, `Started`, `JobProgress`, `JobDone`,
`JobFailed`, `Cancelled`) and `EventBus` (sync listeners, or an async `EventStream`). The
names that generator/protocol.py also uses (Progress, Done, Failed) carry a `Job` prefix
here, so a reader of bot/runner.py, which handles both, always knows which side is meant.

Imports: bot.store (the Job row) only. No discord, no torch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from bot.store import Job

log = logging.getLogger("zoetrope.events")


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
    """The job went to the backend (it may still be warming up: see stage "load")."""


@dataclass(frozen=True, slots=True)
class JobProgress(JobEvent):
    step: int
    total: int
    stage: str  # "load" (warming up), "denoise", "decode", "encode"


@dataclass(frozen=True, slots=True)
class JobDone(JobEvent):
    """The clip is at `job.output_path`; deliver it, then call mark_delivered."""


@dataclass(frozen=True, slots=True)
class JobFailed(JobEvent):
    reason: str


@dataclass(frozen=True, slots=True)
class Cancelled(JobEvent):
    pass


Listener = Callable[[JobEvent], None]


class EventBus:
    """Synchronous fan-out of JobEvents; a failing listener is logged, never fatal."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def add_listener(self, callback: Listener) -> None:
        self._listeners.append(callback)

    def remove_listener(self, callback: Listener) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(callback)

    def subscribe(self) -> EventStream:
        return EventStream(self)

    def publish(self, event: JobEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("job %s: event listener failed on %s", event.job.id, event)


class EventStream:
    """An async iterator of JobEvents (unbounded buffer); close it when done."""

    def __init__(self, bus: EventBus) -> None:
        self._bus = bus
        self._queue: asyncio.Queue[JobEvent | None] = asyncio.Queue()
        bus.add_listener(self._queue.put_nowait)

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
        self._bus.remove_listener(self._queue.put_nowait)
        self._queue.put_nowait(None)

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
