"""The fair queue and the dispatcher that feeds the backend.

Fairness rules (issue 3):
  * round-robin over guilds that have waiting jobs (a DM counts as its own guild),
  * then round-robin over the members of that guild who have waiting jobs,
  * FIFO per member.
A guild whose first job arrives waits for at most one job of every other active guild,
however many jobs those guilds have queued.

`FairQueue` is the pure data structure: push and pop are O(1) (a deque of guilds, each
with a deque of members, each with a deque of job ids). Removing a job (cancel) is linear
in the size of that member's queue. `position()` is computed in closed form in
O(members of the job's guild + active guilds); `order()` replays the rotation in O(n).

`Scheduler` owns a FairQueue and a dispatch loop: whenever the backend has a free slot it
pops the next job and runs `run(job_id)` as a task. `capacity()` is the backend's count of
free slots now (LocalBackend: 1 when idle, else 0); `total()`, when the backend can say, is
its number of slots in all (LocalBackend.slots), which caps the runs in flight. A job just handed over may not show in
the backend's count until the backend has seen it, so each dispatched job holds a slot of
its own until the run calls `confirm(job_id)` (on the backend's first event) or ends. The
loop wakes on new jobs and finished runs, and re-checks `capacity()` every `poll_interval`
seconds while jobs wait, because a remote backend's slots come and go.

Public API:

    queue_key(guild_id, user_id) -> str
    FairQueue(): push(job_id, guild, user, *, front=False), pop() -> Entry | None,
        remove(job_id) -> bool, position(job_id) -> int | None, order() -> list[str],
        positions() -> dict[str, int], waiting_in(guild) -> int, guilds() -> int,
        len(), `job_id in queue`, entry(job_id) -> Entry | None
    estimate_wait(position, running_remaining, slots, per_job) -> float
    Scheduler(*, capacity, run, total=None, poll_interval=1.0, on_change=None)
        .queue, .running (dict job_id -> task), enqueue(...), remove(job_id),
        position(job_id), confirm(job_id), free_slots(), kick(), async start(), async close()
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Iterator
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


def queue_key(guild_id: int | None, user_id: int) -> str:
    """The fairness key of a job: its guild, or for a DM the member's own "guild"."""
    return f"g{guild_id}" if guild_id is not None else f"dm{user_id}"


@dataclass(slots=True, frozen=True)
class Entry:
    job_id: str
    guild: Hashable
    user: Hashable


@dataclass(slots=True, eq=False)
class _User:
    key: Hashable
    jobs: deque[str] = field(default_factory=deque)


@dataclass(slots=True, eq=False)
class _Guild:
    key: Hashable
    users: deque[_User] = field(default_factory=deque)
    by_user: dict[Hashable, _User] = field(default_factory=dict)
    count: int = 0


class FairQueue:
    """Round-robin over guilds, then over members within a guild, FIFO per member."""

    def __init__(self) -> None:
        # The deques hold exactly the guilds (members) that have waiting jobs, in the order
        # they will be served next: the front is served, then goes to the back.
        self._guilds: deque[_Guild] = deque()
        self._by_guild: dict[Hashable, _Guild] = {}
        self._where: dict[str, tuple[Hashable, Hashable]] = {}

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._where

    def __iter__(self) -> Iterator[str]:
        return iter(self.order())

    def guilds(self) -> int:
        """How many guilds have waiting jobs."""
        return len(self._guilds)

    def waiting_in(self, guild: Hashable) -> int:
        g = self._by_guild.get(guild)
        return g.count if g else 0

    def entry(self, job_id: str) -> Entry | None:
        where = self._where.get(job_id)
        return Entry(job_id, *where) if where else None

    def push(self, job_id: str, guild: Hashable, user: Hashable, *, front: bool = False) -> None:
        """Add a job at the end of its member's queue.

        `front=True` is for a job put back after a failed run (crash/OOM retry): it already
        had its turn, so it goes to the very head: first of its member, its member first
        in the guild, its guild first in the rotation. It runs next. O(guilds) for that.
        """
        if job_id in self._where:
            raise ValueError(f"job {job_id!r} is already queued")
        g = self._by_guild.get(guild)
        if g is None:
            g = self._by_guild[guild] = _Guild(guild)
            if front:
                self._guilds.appendleft(g)
            else:
                self._guilds.append(g)
        elif front and self._guilds[0] is not g:
            self._guilds.remove(g)
            self._guilds.appendleft(g)
        u = g.by_user.get(user)
        if u is None:
            u = g.by_user[user] = _User(user)
            if front:
                g.users.appendleft(u)
            else:
                g.users.append(u)
        elif front and g.users[0] is not u:
            g.users.remove(u)
            g.users.appendleft(u)
        if front:
            u.jobs.appendleft(job_id)
        else:
            u.jobs.append(job_id)
        g.count += 1
        self._where[job_id] = (guild, user)

    def pop(self) -> Entry | None:
        """The next job to run, or None if nothing waits. O(1)."""
        if not self._guilds:
            return None
        g = self._guilds.popleft()
        u = g.users.popleft()
        job_id = u.jobs.popleft()
        g.count -= 1
        if u.jobs:
            g.users.append(u)
        else:
            del g.by_user[u.key]
        if g.users:
            self._guilds.append(g)
        else:
            del self._by_guild[g.key]
        del self._where[job_id]
        return Entry(job_id, g.key, u.key)

    def remove(self, job_id: str) -> bool:
        """Take a waiting job out (cancel). False if it was not waiting."""
        where = self._where.pop(job_id, None)
        if where is None:
            return False
        g = self._by_guild[where[0]]
        u = g.by_user[where[1]]
        u.jobs.remove(job_id)
        g.count -= 1
        if not u.jobs:
            g.users.remove(u)
            del g.by_user[u.key]
        if not g.users:
            self._guilds.remove(g)
            del self._by_guild[g.key]
        return True

    def position(self, job_id: str) -> int | None:
        """1-based: how many dispatches until this job runs, if nothing else arrives."""
        where = self._where.get(job_id)
        if where is None:
            return None
        g = self._by_guild[where[0]]
        # Within the guild: the job is the k-th of its member; members before that member
        # in the rotation give k + 1 jobs before its turn comes round, those after give k.
        me = g.by_user[where[1]]
        k = me.jobs.index(job_id)
        c = k
        seen_self = False
        for u in g.users:
            if u is me:
                seen_self = True
                continue
            c += min(len(u.jobs), k if seen_self else k + 1)
        # The job is the guild's c-th dispatch (0-based); the same reasoning over guilds.
        position = c + 1
        seen_self = False
        for h in self._guilds:
            if h is g:
                seen_self = True
                continue
            position += min(h.count, c if seen_self else c + 1)
        return position

    def order(self) -> list[str]:
        """Every waiting job in dispatch order (a replay of the rotation; O(n))."""
        guilds = deque(deque(deque(u.jobs) for u in g.users) for g in self._guilds)
        out: list[str] = []
        while guilds:
            users = guilds.popleft()
            jobs = users.popleft()
            out.append(jobs.popleft())
            if jobs:
                users.append(jobs)
            if users:
                guilds.append(users)
        return out

    def positions(self) -> dict[str, int]:
        return {job_id: i for i, job_id in enumerate(self.order(), start=1)}


def estimate_wait(
    position: int,
    running_remaining: list[float],
    slots: int,
    per_job: float,
) -> float:
    """Seconds until the job at `position` (1-based) starts.

    `running_remaining`: estimated seconds left for each running job; `per_job`: typical
    seconds per job. Each free slot takes the next job; exact for small queues, a closed
    form (work divided by slots) beyond a few thousand jobs ahead.
    """
    slots = max(slots, 1)
    free_at = sorted(max(r, 0.0) for r in running_remaining)[:slots]
    free_at += [0.0] * (slots - len(free_at))
    ahead = position - 1
    if ahead > 5000:
        return (sum(free_at) + ahead * per_job) / slots
    heapq.heapify(free_at)
    for _ in range(ahead):
        heapq.heappush(free_at, heapq.heappop(free_at) + per_job)
    return free_at[0]


class Scheduler:
    """Feeds the backend from a FairQueue whenever a slot is free."""

    def __init__(
        self,
        *,
        capacity: Callable[[], int],
        run: Callable[[str], Awaitable[None]],
        total: Callable[[], int | None] | None = None,
        poll_interval: float = 1.0,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.queue = FairQueue()
        self.running: dict[str, asyncio.Task[None]] = {}
        self._capacity = capacity
        self._total = total
        self._unconfirmed: set[str] = set()
        self._run = run
        self._poll_interval = poll_interval
        self._on_change = on_change
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    # -- queue --------------------------------------------------------------------------

    def enqueue(self, job_id: str, guild: Hashable, user: Hashable, *, front: bool = False) -> None:
        self.queue.push(job_id, guild, user, front=front)
        self.kick()

    def remove(self, job_id: str) -> bool:
        removed = self.queue.remove(job_id)
        if removed:
            self._changed()
        return removed

    def position(self, job_id: str) -> int | None:
        return self.queue.position(job_id)

    @property
    def waiting(self) -> int:
        return len(self.queue)

    def kick(self) -> None:
        """Look for work now (a job arrived, a slot freed, capacity changed)."""
        self._wake.set()

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()

    # -- dispatch -----------------------------------------------------------------------

    def free_slots(self) -> int:
        """The backend's free slots, less the jobs handed over but not yet confirmed, and
        never more than its total slots less the runs we still have in hand (a run holds
        its slot until it has finished handling its result, so a retry put back at the
        head of the queue gets the slot before anything else)."""
        try:
            free = int(self._capacity()) - len(self._unconfirmed)
            total = self._total() if self._total is not None else None
        except Exception:  # a backend that cannot say has no free slot right now
            log.exception("backend capacity() failed")
            return 0
        if total is not None:
            free = min(free, int(total) - len(self.running))
        return free

    def confirm(self, job_id: str) -> None:
        """The backend has seen this job (its capacity() now counts it)."""
        self._unconfirmed.discard(job_id)

    def dispatch_ready(self) -> int:
        """Start as many waiting jobs as there are free slots; returns how many."""
        started = 0
        while self.queue and self.free_slots() > 0:
            entry = self.queue.pop()
            assert entry is not None
            self._unconfirmed.add(entry.job_id)
            task = asyncio.create_task(self._run_one(entry.job_id), name=f"job-{entry.job_id}")
            self.running[entry.job_id] = task
            started += 1
        if started:
            self._changed()
        return started

    async def _run_one(self, job_id: str) -> None:
        try:
            await self._run(job_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("job %s: run failed unexpectedly", job_id)
        finally:
            self.running.pop(job_id, None)
            self._unconfirmed.discard(job_id)
            self.kick()

    async def _loop(self) -> None:
        while not self._closed:
            self._wake.clear()
            self.dispatch_ready()
            timeout = self._poll_interval if self.queue else None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    async def start(self) -> None:
        if self._task is None:
            self._closed = False
            self._task = asyncio.create_task(self._loop(), name="zoetrope-scheduler")

    async def close(self) -> None:
        """Stop dispatching and cancel the runs in flight (their jobs stay `running` in the
        database; resume() puts them back in the queue on the next start)."""
        self._closed = True
        tasks = [t for t in [self._task, *self.running.values()] if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._task = None
        self.running.clear()
        self._unconfirmed.clear()
