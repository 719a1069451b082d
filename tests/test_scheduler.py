"""The fair queue (round-robin over guilds, then members, FIFO per member) and the dispatcher."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.scheduler import FairQueue, PoolQueues, Scheduler, queue_key


def drain(queue: FairQueue) -> list[str]:
    out = []
    while (entry := queue.pop()) is not None:
        out.append(entry.job_id)
    return out


def test_round_robin_over_guilds_then_users() -> None:
    """Guilds take turns, members within a guild take turns, each member is FIFO."""
    q = FairQueue()
    for job, guild, user in [
        ("a1", "A", 1),
        ("a2", "A", 1),
        ("a3", "A", 2),
        ("a4", "A", 1),
        ("b1", "B", 3),
        ("b2", "B", 3),
        ("c1", "C", 4),
    ]:
        q.push(job, guild, user)
    assert q.order() == ["a1", "b1", "c1", "a3", "b2", "a2", "a4"]
    assert drain(q) == ["a1", "b1", "c1", "a3", "b2", "a2", "a4"]
    assert len(q) == 0 and q.pop() is None


def test_busy_guild_never_delays_a_new_guild_by_more_than_one_job_per_active_guild() -> None:
    """A guild with 1,000 waiting jobs lets a newcomer's first job through after one of its own."""
    q = FairQueue()
    for i in range(1000):
        q.push(f"big{i}", "big", i % 7)
    q.pop()
    q.push("new", "small", 99)
    assert q.position("new") == 2
    assert [q.pop().job_id for _ in range(2)][1] == "new"


def test_dm_is_its_own_guild() -> None:
    """A DM's fairness key is the member's own, apart from every guild."""
    assert queue_key(None, 5) != queue_key(5, 5)
    assert queue_key(None, 5) == queue_key(None, 5)
    assert queue_key(7, 1) == queue_key(7, 2)


def test_remove_and_front_push() -> None:
    """A cancelled job leaves the rotation; a retried job goes back to the head."""
    q = FairQueue()
    q.push("a1", "A", 1)
    q.push("b1", "B", 2)
    q.push("b2", "B", 2)
    assert q.remove("b1") and not q.remove("b1")
    assert q.remove("a1")
    assert q.order() == ["b2"]
    q.push("c1", "C", 3)
    q.push("c2", "C", 4)
    q.push("r", "C", 4, front=True)  # a retry runs next: its guild and member go first
    assert q.order() == ["r", "b2", "c1", "c2"]
    q.push("z", "Z", 9, front=True)
    assert q.order() == ["z", "r", "b2", "c1", "c2"]
    with pytest.raises(ValueError, match="already queued"):
        q.push("z", "Z", 9)


# One step of an arrival pattern: push a job for (guild, member), pop, or cancel the k-th
# waiting job.
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.integers(0, 5), st.integers(0, 3)),
        st.tuples(st.just("pop")),
        st.tuples(st.just("remove"), st.integers(0, 50)),
    ),
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(_ops)
def test_dispatch_order_obeys_round_robin_for_any_arrival_pattern(ops: list[tuple]) -> None:
    """For any arrivals, pops and cancels: FIFO per member; between two turns of a waiting guild (member) no other guild (member of that guild) gets two; a new guild's first job waits at most one job per active guild; position() and order() predict the pops."""
    q = FairQueue()
    pushed: dict[tuple[int, int], list[str]] = {}
    popped: dict[tuple[int, int], list[str]] = {}
    # guild -> other guilds served since it last had a turn (while it waited)
    since_guild: dict[int, set[int]] = {}
    since_user: dict[tuple[int, int], set[int]] = {}
    first_job_budget: dict[str, int] = {}  # job -> pops left before it must have run
    waiting: list[str] = []
    owner: dict[str, tuple[int, int]] = {}
    n = 0
    for op in ops:
        if op[0] == "push":
            _, guild, user = op
            job = f"j{n}"
            n += 1
            if q.waiting_in(guild) == 0:
                first_job_budget[job] = q.guilds() + 1
                since_guild[guild] = set()
            if (guild, user) not in {owner[j] for j in waiting}:
                since_user[(guild, user)] = set()
            q.push(job, guild, user)
            pushed.setdefault((guild, user), []).append(job)
            waiting.append(job)
            owner[job] = (guild, user)
        elif op[0] == "remove":
            if waiting:
                job = waiting[op[1] % len(waiting)]
                assert q.remove(job)
                waiting.remove(job)
                pushed[owner[job]].remove(job)
                first_job_budget.pop(job, None)
        else:
            expected_next = q.order()[:1]
            entry = q.pop()
            if not waiting:
                assert entry is None
                continue
            assert entry is not None and [entry.job_id] == expected_next
            guild, user = entry.guild, entry.user
            waiting.remove(entry.job_id)
            popped.setdefault((guild, user), []).append(entry.job_id)
            # FIFO per member
            assert popped[(guild, user)] == pushed[(guild, user)][: len(popped[(guild, user)])]
            # round-robin over guilds
            for other, served in since_guild.items():
                if other != guild and q.waiting_in(other) + 0 > 0:
                    assert guild not in served, f"guild {guild} served twice before {other}"
                    served.add(guild)
            since_guild[guild] = set()
            # round-robin over members of the guild
            for (g, u), served in since_user.items():
                if g == guild and u != user and any(owner[j] == (g, u) for j in waiting):
                    assert user not in served, f"member {user} served twice before {u}"
                    served.add(user)
            since_user[(guild, user)] = set()
            # a guild's first job waits at most one job per guild active at its arrival
            for job in list(first_job_budget):
                if job == entry.job_id:
                    del first_job_budget[job]
                    continue
                first_job_budget[job] -= 1
                assert first_job_budget[job] > 0, f"{job} waited too long"
        assert len(q) == len(waiting)
    # With no more arrivals, the predicted positions are exactly the dispatch order.
    predicted = {job: q.position(job) for job in waiting}
    assert predicted == q.positions()
    order = q.order()
    assert drain(q) == order
    assert sorted(predicted.values()) == list(range(1, len(waiting) + 1))
    assert [job for job, _ in sorted(predicted.items(), key=lambda kv: kv[1])] == order


async def test_scheduler_fills_free_slots_and_never_more() -> None:
    """Jobs run as soon as a slot is free, never more at once than the backend's slots."""
    slots = 2
    active: set[str] = set()
    peak = 0
    finished: list[str] = []
    gate = asyncio.Event()
    scheduler: Scheduler

    async def run(job_id: str) -> None:
        nonlocal peak
        active.add(job_id)
        scheduler.confirm(job_id)
        peak = max(peak, len(active))
        await gate.wait()
        active.discard(job_id)
        finished.append(job_id)

    scheduler = Scheduler(capacity=lambda pool: slots - len(active), run=run, poll_interval=0.05)
    await scheduler.start()
    for i in range(6):
        scheduler.enqueue(f"j{i}", "g", i % 3)
    await asyncio.sleep(0.05)
    assert len(active) == 2 and scheduler.waiting == 4
    gate.set()
    for _ in range(100):
        if len(finished) == 6:
            break
        await asyncio.sleep(0.01)
    assert sorted(finished) == [f"j{i}" for i in range(6)] and peak == 2
    await scheduler.close()


async def test_dispatched_job_holds_its_slot_until_the_backend_confirms_it() -> None:
    """A backend that counts a job only once it has seen it is not over-filled meanwhile."""
    registered: set[str] = set()
    started: list[str] = []
    scheduler: Scheduler

    async def run(job_id: str) -> None:
        started.append(job_id)
        await asyncio.sleep(0.05)  # the backend takes a while to pick the job up
        registered.add(job_id)
        scheduler.confirm(job_id)
        await asyncio.sleep(0.05)
        registered.discard(job_id)

    scheduler = Scheduler(capacity=lambda pool: 1 - len(registered), run=run, poll_interval=0.01)
    await scheduler.start()
    for i in range(3):
        scheduler.enqueue(f"j{i}", "g", i)
    await asyncio.sleep(0.03)
    assert started == ["j0"]
    for _ in range(100):
        if len(started) == 3 and not scheduler.running:
            break
        await asyncio.sleep(0.01)
    assert started == ["j0", "j1", "j2"]
    await scheduler.close()


async def test_scheduler_polls_capacity_that_appears_later_and_close_cancels_runs() -> None:
    """Slots that appear without a wake-up (remote workers) are noticed by the poll; close() cancels runs in flight."""
    capacity = 0
    cancelled: list[str] = []

    async def run(job_id: str) -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(job_id)
            raise

    scheduler = Scheduler(capacity=lambda pool: capacity, run=run, poll_interval=0.02)
    await scheduler.start()
    scheduler.enqueue("j", "g", 1)
    await asyncio.sleep(0.05)
    assert not scheduler.running
    capacity = 1
    await asyncio.sleep(0.08)
    assert list(scheduler.running) == ["j"]
    await scheduler.close()
    assert cancelled == ["j"] and not scheduler.running


# -- several presets (pools) ------------------------------------------------------------


def test_pool_queues_skip_a_blocked_pool_and_keep_its_turn() -> None:
    """A pool that cannot run is skipped without losing its place; each pool is a FairQueue."""
    q = PoolQueues()
    q.push("x1", "A", 1, pool="x")
    q.push("x2", "B", 2, pool="x")
    q.push("y1", "A", 1, pool="y")
    q.push("x3", "A", 1, pool="x")
    assert q.pools() == ["x", "y"] and len(q) == 4 and "y1" in q
    assert [q.position(j) for j in ("x1", "x2", "x3", "y1")] == [1, 2, 3, 1]
    assert q.order() == ["x1", "y1", "x2", "x3"] and q.order("x") == ["x1", "x2", "x3"]
    assert q.waiting_in("A") == 3 and q.waiting_for("x") == 3 and q.pool_of("y1") == "y"
    # x has no free slot: y is served, x stays first in line.
    entry = q.pop(lambda pool: pool == "y")
    assert entry is not None and (entry.job_id, entry.pool) == ("y1", "y")
    assert q.pools() == ["x"] and q.pop(lambda pool: False) is None
    q.push("y2", "C", 3, pool="y")
    assert [q.pop().job_id, q.pop().job_id] == ["x1", "y2"]  # x kept its turn
    q.push("r", "C", 3, pool="y", front=True)  # given back: its pool first, its job first
    assert q.pools() == ["y", "x"] and q.order() == ["r", "x2", "x3"]
    assert q.remove("x2") and not q.remove("x2") and q.remove("r")
    assert q.pools() == ["x"] and q.entry("x3") is not None and q.entry("r") is None
    assert q.positions() == {"x3": 1}
    with pytest.raises(ValueError, match="already queued"):
        q.push("x3", "A", 1, pool="y")


def test_one_pool_is_exactly_a_fair_queue() -> None:
    """With every job in the pool None (LocalBackend), pops and positions are the FairQueue's."""
    q, ref = PoolQueues(), FairQueue()
    for i, (guild, user) in enumerate([(1, 1), (1, 1), (2, 2), (1, 3), (3, 4), (2, 2)]):
        q.push(f"j{i}", guild, user)
        ref.push(f"j{i}", guild, user)
    assert q.order() == ref.order() and q.positions() == ref.positions()
    assert [q.pop().job_id for _ in range(6)] == drain(ref)


async def test_a_job_is_dispatched_when_its_preset_has_a_slot_even_behind_a_blocked_one() -> None:
    """The fair-next job whose preset is busy stays queued; a later job whose preset has a free worker starts at once; kick() (a backend reporting a new worker) dispatches without a poll."""
    slots = {"x": 1, "y": 1}
    busy: dict[str, set[str]] = {"x": set(), "y": set()}
    pool_of: dict[str, str] = {}
    started: list[str] = []
    overfilled: list[str] = []  # jobs handed over while their preset had no free slot
    gate = asyncio.Event()
    scheduler: Scheduler

    async def run(job_id: str) -> None:
        pool = pool_of[job_id]
        if slots[pool] - len(busy[pool]) <= 0:
            overfilled.append(job_id)
        busy[pool].add(job_id)
        started.append(job_id)
        scheduler.confirm(job_id)
        await gate.wait()
        busy[pool].discard(job_id)

    scheduler = Scheduler(
        capacity=lambda pool: slots.get(pool, 0) - len(busy.get(pool, ())),
        total=lambda pool: slots.get(pool, 0),
        run=run,
        poll_interval=3600,  # only wake-ups dispatch here
    )
    await scheduler.start()
    for job_id, guild, pool in [("x1", "A", "x"), ("x2", "A", "x"), ("y1", "B", "y")]:
        pool_of[job_id] = pool
        scheduler.enqueue(job_id, guild, guild, pool=pool)
    pool_of["z1"] = "z"
    scheduler.enqueue("z1", "C", "C", pool="z")  # nobody serves z yet
    await asyncio.sleep(0.02)
    assert started == ["x1", "y1"] and scheduler.position("x2") == 1
    assert scheduler.free_slots("x") == 0 and scheduler.free_slots("y") == 0
    slots["z"], busy["z"] = 1, set()  # a worker for z appears
    await asyncio.sleep(0.02)
    assert "z1" not in started  # nothing woke the dispatcher
    scheduler.kick()
    await asyncio.sleep(0.02)
    assert started == ["x1", "y1", "z1"]
    gate.set()
    for _ in range(100):
        if len(started) == 4 and not scheduler.running:
            break
        await asyncio.sleep(0.01)
    assert started == ["x1", "y1", "z1", "x2"] and not overfilled
    await scheduler.close()


# One step with several presets: push a job (guild, member, pool, given back?), end the k-th
# running job, cancel the k-th waiting job, or change a pool's number of workers' slots. The
# pool None holds jobs that any worker may run (the Redis backend with the model "auto").
_POOLS = ("x", "y", "z", None)
_pool_ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("push"),
            st.integers(0, 4),
            st.integers(0, 2),
            st.sampled_from(_POOLS),
            st.sampled_from((False, False, False, True)),
        ),
        st.tuples(st.just("finish"), st.integers(0, 20)),
        st.tuples(st.just("remove"), st.integers(0, 50)),
        st.tuples(st.just("slots"), st.sampled_from(_POOLS[:-1]), st.integers(0, 3)),
    ),
    max_size=100,
)


@settings(max_examples=200, deadline=None)
@given(_pool_ops, st.booleans())
def test_several_presets_no_job_waits_while_a_worker_of_its_preset_is_free(
    ops: list[tuple], with_total: bool
) -> None:
    """For any arrivals, endings, cancels and fleet changes over several presets: no job is handed over without a free worker of its preset, none waits while one is free, and each preset's dispatch order is exactly its own FairQueue's (round-robin within the preset, a guild's first job waiting at most one dispatch per guild active in that preset)."""
    asyncio.run(_run_pool_ops(ops, with_total))


async def _run_pool_ops(ops: list[tuple], with_total: bool) -> None:
    slots = {"x": 1, "y": 2, "z": 0}
    placed: dict[str, str] = {}  # running job -> the worker pool it runs on
    pool_of: dict[str, object] = {}
    ends: dict[str, asyncio.Event] = {}
    started: list[str] = []
    overfilled: list[str] = []  # jobs handed over while no worker of their pool was free
    reference: dict[object, FairQueue] = {pool: FairQueue(pool) for pool in _POOLS}
    budget: dict[str, int] = {}  # a guild's first job in a pool -> that pool's dispatches left
    scheduler: Scheduler

    def free(pool: str) -> int:
        return slots[pool] - sum(1 for p in placed.values() if p == pool)

    def capacity(pool: object) -> int:
        if pool is None:  # any worker
            return sum(max(0, free(p)) for p in slots)
        return max(0, free(pool))  # type: ignore[arg-type]

    def total(pool: object) -> int:
        return sum(slots.values()) if pool is None else slots[pool]  # type: ignore[index]

    async def run(job_id: str) -> None:
        pool = pool_of[job_id]
        if pool is None:  # like the Redis backend: the served name with the most free slots
            pool = max(slots, key=free)
        if free(pool) <= 0:
            overfilled.append(job_id)
        placed[job_id] = pool
        started.append(job_id)
        scheduler.confirm(job_id)
        try:
            await ends[job_id].wait()
        finally:
            del placed[job_id]

    async def settle() -> None:
        for _ in range(8):
            await asyncio.sleep(0)

    scheduler = Scheduler(
        capacity=capacity, total=total if with_total else None, run=run, poll_interval=3600
    )
    n = 0
    for op in ops:
        if op[0] == "push":
            _, guild, user, pool, front = op
            job = f"j{n}"
            n += 1
            ref = reference[pool]
            if front:  # a job given back runs first in its pool: the others may wait one more
                for other in budget:
                    if pool_of[other] == pool:
                        budget[other] += 1
            elif ref.waiting_in(guild) == 0:
                budget[job] = ref.guilds() + 1
            pool_of[job] = pool
            ends[job] = asyncio.Event()
            scheduler.enqueue(job, guild, user, pool=pool, front=front)
            ref.push(job, guild, user, front=front)
        elif op[0] == "finish":
            running = sorted(placed)
            if running:
                ends[running[op[1] % len(running)]].set()
        elif op[0] == "remove":
            waiting = scheduler.queue.order()
            if waiting:
                job = waiting[op[1] % len(waiting)]
                assert scheduler.remove(job) and reference[pool_of[job]].remove(job)
                budget.pop(job, None)
        else:
            _, pool, count = op
            busy = sum(1 for p in placed.values() if p == pool)
            slots[pool] = max(count, busy)  # a worker leaving mid-job is a crash: not here
        await settle()
        before = len(started)
        scheduler.dispatch_ready()
        await settle()
        assert not overfilled, f"{overfilled} handed over with no free worker"
        for job in started[before:]:
            pool = pool_of[job]
            expected = reference[pool].pop()
            assert expected is not None and expected.job_id == job, (job, expected)
            budget.pop(job, None)
            for other in budget:
                if pool_of[other] == pool:
                    budget[other] -= 1
                    assert budget[other] > 0, f"{other} waited too long in pool {pool}"
        # Nothing waits while a worker that can run it is free.
        for pool in scheduler.queue.pools():
            assert capacity(pool) == 0, f"pool {pool} has a free worker and waiting jobs"
        assert sum(len(r) for r in reference.values()) == len(scheduler.queue)
    for event in ends.values():
        event.set()
    await settle()
    await scheduler.close()
