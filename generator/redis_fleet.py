"""The bot's view of the worker fleet: who is live, what each serves, and the slot arithmetic
that routes a job to the SAQ queue of a served name with room for it.

Workers register themselves (`redis_common.WorkerInfo`, a key with a TTL of one heartbeat
timeout); `Fleet.refresh` reads the registrations every `poll_every`. The backend's jobs in
flight are subtracted from the live slots, so a job is handed to SAQ only when a worker that
serves it can take it at once.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from collections.abc import Iterable

from redis import asyncio as aioredis

from generator.protocol import BackendState
from generator.redis_attempts import Attempt
from generator.redis_common import (
    MAX_WORKER_SLOTS_ENV,
    Keys,
    WorkerInfo,
    max_worker_slots_from_env,
    served_name,
)

log = logging.getLogger("zoetrope.redis")


class Fleet:
    """Live workers as of the last look, and the routing of presets to served names."""

    def __init__(
        self, keys: Keys, default_served: str | None, *, max_slots: int | None = None
    ) -> None:
        self.keys = keys
        self.default_served = default_served  # None: any worker ("auto")
        self.max_slots = max_worker_slots_from_env() if max_slots is None else max_slots
        if not 1 <= self.max_slots <= 64:
            raise ValueError(f"max worker slots must be from 1 to 64, got {self.max_slots!r}")
        self.up = False  # Redis answered the last look
        self.workers: dict[str, WorkerInfo] = {}
        self._warned: dict[str, str] = {}  # worker id -> the last warning logged for it

    def _warn_once(self, worker_id: str, message: str) -> None:
        """Registrations are read every poll: a bad one is logged once, not every second."""
        if self._warned.get(worker_id) != message:
            if len(self._warned) > 1000:
                self._warned.clear()
            self._warned[worker_id] = message
            log.warning("%s", message)

    def served(self) -> dict[str, int]:
        """Served name -> slots of live, loaded workers."""
        slots: dict[str, int] = defaultdict(int)
        for worker in self.workers.values():
            if worker.state == "ready":
                slots[worker.served] += worker.slots
        return dict(slots)

    def target(self, preset: str | None) -> str | None:
        """The served name a job of `preset` goes to; None: any worker (or a name that is not
        valid, which submit refuses)."""
        try:
            return served_name(preset) or self.default_served
        except ValueError:
            return None

    def total_slots(self, preset: str | None) -> int:
        name = self.target(preset)
        slots = self.served()
        return slots.get(name, 0) if name else sum(slots.values())

    def free_slots(self, attempts: Iterable[Attempt]) -> dict[str, int]:
        """Served name -> slots not taken by the attempts handed to SAQ (may go negative when
        a worker left with jobs of ours)."""
        free: dict[str, int] = defaultdict(int, self.served())
        for attempt in attempts:
            if attempt.holds_slot and attempt.served is not None:
                free[attempt.served] -= 1
        return free

    def capacity(self, preset: str | None, attempts: Iterable[Attempt]) -> int:
        """Free slots now for a job of `preset`, after the attempts still waiting for one."""
        attempts = list(attempts)
        free = self.free_slots(attempts)
        name = self.target(preset)
        waiting = [a for a in attempts if a.phase == "waiting"]
        if name is not None:
            waiting_here = sum(1 for a in waiting if a.served in (name, None))
            return max(0, free.get(name, 0) - waiting_here)
        return max(0, sum(max(0, n) for n in free.values()) - len(waiting))

    def pick(self, free: dict[str, int]) -> str | None:
        """For a job any worker may run: the served name with the most free slots."""
        candidates = [(n, name) for name, n in free.items() if n > 0]
        return max(candidates)[1] if candidates else None

    def status(self) -> tuple[BackendState, str]:
        """The backend's state and note as the fleet stands."""
        if any(w.state == "ready" for w in self.workers.values()):
            return BackendState.READY, "ready"
        if any(w.state == "loading" for w in self.workers.values()):
            return BackendState.STARTING, "a worker is loading its model"
        return BackendState.STARTING, "waiting for a worker"

    async def refresh(self, redis: aioredis.Redis) -> bool:
        """Read the registrations; forget workers whose key expired. Returns whether what
        the fleet serves changed."""
        ids = sorted(i.decode("utf-8", "replace") for i in await redis.smembers(self.keys.workers))
        values = await redis.mget([self.keys.worker(i) for i in ids]) if ids else []
        live: dict[str, WorkerInfo] = {}
        gone: list[str] = []
        for worker_id, raw in zip(ids, values, strict=True):
            if raw is None:
                gone.append(worker_id)
            else:
                try:
                    info = WorkerInfo.parse(worker_id, raw)
                except ValueError as exc:
                    self._warn_once(
                        worker_id, f"ignoring the worker registration {worker_id}: {exc}"
                    )
                    continue
                if info.slots > self.max_slots:
                    self._warn_once(
                        worker_id,
                        f"worker {worker_id} claims {info.slots} slots; counting "
                        f"{self.max_slots} ({MAX_WORKER_SLOTS_ENV})",
                    )
                    info = dataclasses.replace(info, slots=self.max_slots)
                live[worker_id] = info
        if gone:
            await redis.srem(self.keys.workers, *gone)
        if not self.up:
            log.info("Redis reachable again: %d worker(s) live", len(live))
        before = self.served()
        self.up = True
        self.workers = live
        return self.served() != before

    def down(self) -> None:
        """Redis stopped answering: no worker counts until it answers again."""
        self.up = False
        self.workers = {}
