"""The backend as the bot uses it: the one place the bot touches a backend object.

Owns: `BackendPort` -- capacity per pool, total slots, routing a preset to a pool, the
presets the fleet serves, readiness and its status note, change notification, submit and
cancel. The rest of the bot asks this object, never the backend itself, so the backend's
contract (`generator.protocol.Backend`) is read in one place.

Imports: generator.protocol and generator.presets (plain data). No discord, no torch.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable

from generator import protocol as gp
from generator.presets import PRESETS

log = logging.getLogger("zoetrope.jobs")


class BackendPort:
    """The backend as the bot uses it, through `generator.protocol.Backend`.

    Pools: a job waits in the pool `route(preset)` names. LocalBackend routes everything to
    one pool (None); the Redis fleet routes to the served name the job's queue is named
    after, so None and the default model's own name share the workers."""

    def __init__(self, backend: gp.Backend) -> None:
        self.backend = backend

    def capacity(self, pool: str | None) -> int:
        return int(self.backend.capacity(pool))

    def total(self, pool: str | None = None) -> int:
        """Slots in all, busy or not: with it a run keeps its slot until its result is
        handled, so a crash retry (back at the head of the queue) gets the freed slot."""
        return int(self.backend.total_slots(pool))

    def pool(self, preset: str | None) -> str | None:
        """The scheduler pool of a job of `preset` (None: the bot's default model)."""
        try:
            return self.backend.route(preset)
        except Exception:  # a name it cannot route: dispatched, then refused by submit
            log.exception("backend route(%r) failed", preset)
            return None

    def known_presets(self) -> list[str]:
        """PRESETS, and what the backend's workers serve now (a fleet's `local:` models)."""
        names = list(PRESETS)
        try:
            names += [name for name in sorted(self.backend.served()) if name not in PRESETS]
        except Exception:  # the backend cannot say now: the built-in presets only
            log.exception("backend served() failed")
        return names

    @property
    def ready(self) -> bool:
        return self.backend.ready

    def status_note(self) -> str | None:
        """Why queued jobs do not start, when it is not the usual model warm-up."""
        if self.backend.ready:
            return None
        if self.backend.error:
            return f"the model could not be loaded ({self.backend.error})"
        detail = self.backend.detail  # RedisBackend: "waiting for a worker"...
        if detail and "loading" not in detail:
            return detail
        return None

    def watch(self, callback: Callable[[], None]) -> None:
        """Have the backend call `callback` when its capacity changes (a job ended, a worker
        came or went, the model became ready), so the dispatcher wakes at once instead of at
        its next poll. A backend already watched by another owner keeps its callback."""
        if self.backend.on_change is None:
            self.backend.on_change = callback

    def submit(self, request: gp.GenerationRequest) -> AsyncIterator[gp.Event]:
        return self.backend.submit(request)

    async def cancel(self, job_id: str) -> None:
        await self.backend.cancel(job_id)
