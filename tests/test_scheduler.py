"""The fair queue (round-robin over guilds, then members, FIFO per member) and the dispatcher."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.scheduler import FairQueue, Scheduler, estimate_wait, queue_key


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
    """For any arrivals, pops and cancels: FIFO per member; between two turns of a waiting
    guild (member) no other guild (member of that guild) gets two; a new guild's first job
    waits at most one job per active guild; position() and order() predict the pops."""
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


def test_estimate_wait() -> None:
    """ETAs play the queue over the slots: running jobs first, then typical durations."""
    assert estimate_wait(1, [], 1, 60.0) == 0.0
    assert estimate_wait(1, [20.0], 1, 60.0) == 20.0
    assert estimate_wait(3, [20.0], 1, 60.0) == 140.0
    assert estimate_wait(3, [20.0, 5.0], 2, 60.0) == 65.0
    assert estimate_wait(10_001, [], 2, 1.0) == pytest.approx(5000.0)


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

    scheduler = Scheduler(capacity=lambda: slots - len(active), run=run, poll_interval=0.05)
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

    scheduler = Scheduler(capacity=lambda: 1 - len(registered), run=run, poll_interval=0.01)
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
    """Slots that appear without a wake-up (remote workers) are noticed by the poll; close()
    cancels runs in flight."""
    capacity = 0
    cancelled: list[str] = []

    async def run(job_id: str) -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(job_id)
            raise

    scheduler = Scheduler(capacity=lambda: capacity, run=run, poll_interval=0.02)
    await scheduler.start()
    scheduler.enqueue("j", "g", 1)
    await asyncio.sleep(0.05)
    assert not scheduler.running
    capacity = 1
    await asyncio.sleep(0.08)
    assert list(scheduler.running) == ["j"]
    await scheduler.close()
    assert cancelled == ["j"] and not scheduler.running
