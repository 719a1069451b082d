"""The backend as the bot uses it: the one place the bot touches a backend object.

Owns: `BackendPort` -- capacity per pool, total slots, routing a preset to a pool, the
presets the fleet serves, readiness and its status note, change notification, submit and
cancel. The rest of the bot asks this object, never the backend itself, so the backend's
contract (generator/protocol.py) is read in one place.

Imports: generator.protocol and generator.presets (plain data). No discord, no torch.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

from generator import protocol as gp
from generator.presets import PRESETS

log = logging.getLogger("zoetrope.jobs")


class BackendPort:
    """The backend as the bot uses it. Everything the bot asks a backend goes through
    here, so the backend's contract is read in one place.

    LocalBackend has one pool (its capacity() takes no preset); a backend whose
    capacity(preset) takes a preset (the Redis fleet) has one pool per routed name."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.preset_aware = _takes_argument(getattr(backend, "capacity", None))

    def capacity(self, pool: Any) -> int:
        if self.preset_aware:
            return int(self.backend.capacity(pool))
        return int(self.backend.capacity())

    def total(self, pool: Any = None) -> int | None:
        """Slots in all, busy or not, if the backend can say: `total_slots(pool)` (Redis)
        or a `slots` attribute (LocalBackend: one per worker process)."""
        total_slots = getattr(self.backend, "total_slots", None)
        if callable(total_slots):
            if self.preset_aware and _takes_argument(total_slots):
                return int(total_slots(pool))
            return int(total_slots())
        slots = getattr(self.backend, "slots", None)
        return slots if isinstance(slots, int) else None

    def pool(self, preset: str | None) -> Any:
        """The scheduler pool of a job of `preset` (None: the bot's default model): one
        pool for all with a single-pool backend, else its `route(preset)` when it has one
        (so None and the default model's own name share the workers), else the preset."""
        if not self.preset_aware:
            return None
        route = getattr(self.backend, "route", None)
        if callable(route):
            try:
                return route(preset)
            except Exception:  # a name it cannot route: dispatched, then refused by submit
                log.exception("backend route(%r) failed", preset)
                return None
        return preset

    def known_presets(self) -> list[str]:
        """PRESETS, and what the backend's workers serve now (a fleet's `local:` models)."""
        names = list(PRESETS)
        served = getattr(self.backend, "served", None)
        if callable(served):
            try:
                names += [name for name in sorted(served()) if name not in PRESETS]
            except Exception:  # the backend cannot say now: the built-in presets only
                log.exception("backend served() failed")
        return names

    @property
    def ready(self) -> bool:
        return bool(getattr(self.backend, "ready", True))

    def status_note(self) -> str | None:
        """Why queued jobs do not start, when it is not the usual model warm-up."""
        if self.ready:
            return None
        error = getattr(self.backend, "error", None)
        if error:
            return f"the model could not be loaded ({error})"
        detail = getattr(self.backend, "detail", None)  # RedisBackend: "waiting for a worker"
        if isinstance(detail, str) and detail and "loading" not in detail:
            return detail
        return None

    def watch(self, callback: Callable[[], None]) -> None:
        """Have a backend that reports capacity changes (Redis: a worker came or went) call
        `callback`, so the dispatcher wakes at once instead of at its next poll."""
        if getattr(self.backend, "on_change", False) is None:
            self.backend.on_change = callback

    def submit(self, request: gp.GenerationRequest) -> Any:
        return self.backend.submit(request)

    async def cancel(self, job_id: str) -> None:
        await self.backend.cancel(job_id)


def _takes_argument(fn: Any) -> bool:
    """Whether `fn` can be called with one positional argument (a backend's capacity(preset)
    or total_slots(preset)); False for capacity() without one (LocalBackend)."""
    if not callable(fn):
        return False
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return any(
        p.kind in positional or p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters
    )
