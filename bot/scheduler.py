"""The fair queue and the dispatcher that feeds the backend.

Fairness rules:
  * round-robin over guilds that have waiting jobs (a DM counts as its own guild),
  * then round-robin over the members of that guild who have waiting jobs,
  * FIFO per member.
A guild whose first job arrives waits for at most one job of every other active guild,
however many jobs those guilds have queued.

What "fair" means with several presets (mixed worker fleets). A job of a preset can
only run on a worker that serves it, so the workers of one preset are a resource of their own,
and fairness is about sharing a resource. Jobs are therefore kept in *pools*, one per routing
key (the backend's name for where a job may run: "ltx-fast", "local:my-folder"), and:
  * within a pool the rules above hold exactly (one FairQueue per pool);
  * pools never block each other: a job waits only while no slot of its pool is free. The
    fair-next job of a pool whose workers are all busy does not hold up a job of a pool that
    has a free worker (it would otherwise sit inside the backend, holding a slot it cannot use);
  * a member's jobs of different presets are FIFO per pool, not across pools (they run on
    different machines, so an order between them would only make one wait for nothing);
  * when pools compete for the same slot (the pool `None`, see below), they take turns: a
    rotation over the pools with waiting jobs, in which a pool that could not run keeps its
    place at the front and a pool that was served goes to the back.
The pool `None` holds the jobs that any slot can run: with a backend whose `capacity()` takes
no preset (LocalBackend: one worker, one model) every job is in it, and the dispatcher behaves
exactly as a single FairQueue; with the Redis backend and the bot's model "auto", it holds the
jobs that asked for no preset. `None` overlaps every pool when slots are counted.

`FairQueue` is the pure data structure: push and pop are O(1) (a deque of guilds, each
with a deque of members, each with a deque of job ids). Removing a job (cancel) is linear
in the size of that member's queue. `position()` is computed in closed form in
O(members of the job's guild + active guilds); `order()` replays the rotation in O(n).
`PoolQueues` holds one FairQueue per pool and the rotation over pools: push is O(1) and pop
is O(pools it has to look at) -- O(1) with a single pool.

`Scheduler` owns a PoolQueues and a dispatch loop: whenever a pool has a free slot it pops
that pool's next job and runs `run(job_id)` as a task. `capacity(pool)` is the backend's
count of free slots for that pool now (LocalBackend: 1 when idle, else 0); `total(pool)`,
when the backend can say, is its number of slots in all, which caps the runs in flight. A
job just handed over may not show in the backend's count until the backend has seen it, so
each dispatched job holds a slot of its own until the run calls `confirm(job_id)` (on the
backend's first event) or ends. The loop wakes on new jobs, finished runs, confirmations
and `kick()` (a backend reporting a change), and re-checks capacity every `poll_interval`
seconds while jobs wait, because a remote backend's slots come and go.

Public API:

    queue_key(guild_id, user_id) -> str
    FairQueue(pool=None): push(job_id, guild, user, *, front=False), pop() -> Entry | None,
        remove(job_id) -> bool, position(job_id) -> int | None, order() -> list[str],
        positions() -> dict[str, int], waiting_in(guild) -> int, guilds() -> int,
        len(), `job_id in queue`, entry(job_id) -> Entry | None
    PoolQueues(): push(job_id, guild, user, *, pool=None, front=False),
        pop(can_run=None) -> Entry | None, remove(job_id), position(job_id) (within its pool),
        order(pool=ALL), positions(), pools(), pool_of(job_id), waiting_in(guild),
        waiting_for(pool), len(), `job_id in queues`, entry(job_id)
    Scheduler(*, capacity, run, total=None, poll_interval=1.0, on_change=None)
        capacity(pool) -> int and total(pool) -> int | None take the pool of the jobs
        .queue (PoolQueues), .running (dict job_id -> task),
        enqueue(job_id, guild, user, *, pool=None, front=False), remove(job_id),
        position(job_id), confirm(job_id), free_slots(pool=None), running_in(pool),
        kick(), async start(), async close()
"""

from __future__ import annotations

import asyncio
import contextlib
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
    pool: Hashable = None  # the pool the job waited in (see PoolQueues)


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


def _put(queue: deque, item: object, front: bool) -> None:
    if front:
        queue.appendleft(item)
    else:
        queue.append(item)


def _to_front(queue: deque, item: object) -> None:
    """Move `item`, already in `queue`, to its head (O(len) unless it is there already)."""
    if queue[0] is not item:
        queue.remove(item)
        queue.appendleft(item)


class FairQueue:
    """Round-robin over guilds, then over members within a guild, FIFO per member."""

    def __init__(self, pool: Hashable = None) -> None:
        self.pool = pool  # carried into the entries it pops
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
        return Entry(job_id, *where, self.pool) if where else None

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
            _put(self._guilds, g, front)
        elif front:
            _to_front(self._guilds, g)
        u = g.by_user.get(user)
        if u is None:
            u = g.by_user[user] = _User(user)
            _put(g.users, u, front)
        elif front:
            _to_front(g.users, u)
        _put(u.jobs, job_id, front)
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
        return Entry(job_id, g.key, u.key, self.pool)

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


ALL: object = object()  # PoolQueues.order(): every pool


class PoolQueues:
    """One FairQueue per pool, and a rotation over the pools that have waiting jobs.

    `pop(can_run)` serves the first pool in the rotation for which `can_run(pool)` is true
    and sends that pool to the back; pools it skipped keep their place, so a pool that was
    blocked (all its workers busy) is first in line for the next slot it can use. With one
    pool this is a FairQueue with a dict lookup in front.
    """

    def __init__(self) -> None:
        self._queues: dict[Hashable, FairQueue] = {}
        self._rotation: deque[Hashable] = deque()  # pools with waiting jobs, next first
        self._pool_of: dict[str, Hashable] = {}

    def __len__(self) -> int:
        return len(self._pool_of)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._pool_of

    def __iter__(self) -> Iterator[str]:
        return iter(self.order())

    def pools(self) -> list[Hashable]:
        """The pools with waiting jobs, in turn order."""
        return list(self._rotation)

    def pool_of(self, job_id: str) -> Hashable:
        """The pool a waiting job is in; KeyError if it is not waiting."""
        return self._pool_of[job_id]

    def entry(self, job_id: str) -> Entry | None:
        if job_id not in self._pool_of:
            return None
        return self._queues[self._pool_of[job_id]].entry(job_id)

    def waiting_in(self, guild: Hashable) -> int:
        """Jobs of this guild waiting, in all pools."""
        return sum(q.waiting_in(guild) for q in self._queues.values())

    def waiting_for(self, pool: Hashable) -> int:
        queue = self._queues.get(pool)
        return len(queue) if queue is not None else 0

    def push(
        self,
        job_id: str,
        guild: Hashable,
        user: Hashable,
        *,
        pool: Hashable = None,
        front: bool = False,
    ) -> None:
        """Add a job to its pool's FairQueue. `front=True` (a job given back or retried):
        the head of its pool, and its pool first in the rotation."""
        if job_id in self._pool_of:
            raise ValueError(f"job {job_id!r} is already queued")
        queue = self._queues.get(pool)
        if queue is None:  # a pool exists exactly while it has waiting jobs
            queue = self._queues[pool] = FairQueue(pool)
            if front:
                self._rotation.appendleft(pool)
            else:
                self._rotation.append(pool)
        elif front and self._rotation[0] != pool:
            self._rotation.remove(pool)
            self._rotation.appendleft(pool)
        queue.push(job_id, guild, user, front=front)
        self._pool_of[job_id] = pool

    def pop(self, can_run: Callable[[Hashable], bool] | None = None) -> Entry | None:
        """The next job of the first pool in turn that `can_run` (None: any pool), or None."""
        rotation = self._rotation
        if len(rotation) == 1:  # the common case (one model): no rotation to keep
            pool = rotation[0]
            if can_run is not None and not can_run(pool):
                return None
            queue = self._queues[pool]
            entry = queue.pop()
            assert entry is not None
            del self._pool_of[entry.job_id]
            if not queue._where:  # empty (len() without a method call: this is the hot path)
                rotation.clear()
                del self._queues[pool]
            return entry
        for index, pool in enumerate(rotation):
            if can_run is not None and not can_run(pool):
                continue
            queue = self._queues[pool]
            entry = queue.pop()
            assert entry is not None
            del self._pool_of[entry.job_id]
            del rotation[index]
            if queue:
                rotation.append(pool)
            else:
                del self._queues[pool]
            return entry
        return None

    def remove(self, job_id: str) -> bool:
        """Take a waiting job out (cancel). False if it was not waiting."""
        if job_id not in self._pool_of:
            return False
        pool = self._pool_of.pop(job_id)
        queue = self._queues[pool]
        queue.remove(job_id)
        if not queue:
            del self._queues[pool]
            self._rotation.remove(pool)
        return True

    def position(self, job_id: str) -> int | None:
        """1-based: how many dispatches *of its pool* until this job runs, if nothing else
        arrives. Other pools' jobs do not wait for the same workers, so they do not count."""
        pool = self._pool_of.get(job_id, ALL)
        if pool is ALL:
            return None
        return self._queues[pool].position(job_id)

    def order(self, pool: Hashable = ALL) -> list[str]:
        """Waiting jobs of `pool` in dispatch order; by default every waiting job, the pools'
        orders interleaved in turn (the dispatch order if the pools shared one slot)."""
        if pool is not ALL:
            queue = self._queues.get(pool)
            return queue.order() if queue is not None else []
        if len(self._rotation) == 1:
            return self._queues[self._rotation[0]].order()
        orders = deque(deque(self._queues[p].order()) for p in self._rotation)
        out: list[str] = []
        while orders:
            jobs = orders.popleft()
            out.append(jobs.popleft())
            if jobs:
                orders.append(jobs)
        return out

    def positions(self) -> dict[str, int]:
        """Every waiting job's position within its pool."""
        out: dict[str, int] = {}
        for queue in self._queues.values():
            out.update(queue.positions())
        return out


class Scheduler:
    """Feeds the backend from PoolQueues whenever a slot of a waiting job's pool is free."""

    def __init__(
        self,
        *,
        capacity: Callable[[Hashable], int],
        run: Callable[[str], Awaitable[None]],
        total: Callable[[Hashable], int | None] | None = None,
        poll_interval: float = 1.0,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.queue = PoolQueues()
        self.running: dict[str, asyncio.Task[None]] = {}
        self._capacity = capacity
        self._total = total
        self._pools: dict[str, Hashable] = {}  # dispatched job -> its pool (until it ends)
        self._unconfirmed: set[str] = set()
        self._run = run
        self._poll_interval = poll_interval
        self._on_change = on_change
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    # -- queue --------------------------------------------------------------------------

    def enqueue(
        self,
        job_id: str,
        guild: Hashable,
        user: Hashable,
        *,
        pool: Hashable = None,
        front: bool = False,
    ) -> None:
        self.queue.push(job_id, guild, user, pool=pool, front=front)
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

    def _unconfirmed_in(self, pool: Hashable) -> int:
        """Jobs handed over but not yet confirmed that may take a slot of `pool`: all of
        them for the pool None (it overlaps every pool), else those of `pool` or of None."""
        if pool is None:
            return len(self._unconfirmed)
        pools = self._pools
        return sum(1 for job_id in self._unconfirmed if pools.get(job_id) in (pool, None))

    def running_in(self, pool: Hashable) -> list[str]:
        """Runs in flight of `pool` (all of them for the pool None)."""
        if pool is None:
            return list(self.running)
        return [job_id for job_id in self.running if self._pools.get(job_id) == pool]

    def free_slots(self, pool: Hashable = None) -> int:
        """The backend's free slots for `pool`, less the jobs handed over but not yet
        confirmed that may take one of them, and never more than its total slots less the
        runs of that pool we still have in hand (a run holds its slot until it has finished
        handling its result, so a retry put back at the head of the queue gets the slot
        before anything else)."""
        try:
            free = int(self._capacity(pool)) - self._unconfirmed_in(pool)
            total = self._total(pool) if self._total is not None else None
        except Exception:  # a backend that cannot say has no free slot right now
            log.exception("backend capacity() failed")
            return 0
        if total is not None:
            # Runs of the pool None that went to this pool's workers are not counted here:
            # which worker took them only the backend knows, and counting them all would
            # keep this pool waiting while its workers are free.
            free = min(free, int(total) - len(self.running_in(pool)))
        return free

    def confirm(self, job_id: str) -> None:
        """The backend has seen this job (its capacity() now counts it)."""
        if job_id in self._unconfirmed:
            self._unconfirmed.discard(job_id)
            if self.queue:
                self.kick()  # a slot held for this job may belong to another pool's job

    def _has_slot(self, pool: Hashable) -> bool:
        return self.free_slots(pool) > 0

    def dispatch_ready(self) -> int:
        """Start waiting jobs, in fair order, while their pools have free slots; returns
        how many were started."""
        started = 0
        while self.queue:
            entry = self.queue.pop(self._has_slot)
            if entry is None:
                break
            self._unconfirmed.add(entry.job_id)
            self._pools[entry.job_id] = entry.pool
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
            self._pools.pop(job_id, None)
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
        self._pools.clear()
