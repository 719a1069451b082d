"""Benchmark of the fair queue (bot/scheduler.py FairQueue).

    python bench/scheduler.py [--jobs 100000 --users 10000 --guilds 1000 --seed 1]

1. Static: enqueue every job (members spread over guilds with a skewed, Zipf-like size
   distribution, so a few guilds hold thousands of jobs), then dispatch them all. Prints
   microseconds per enqueue and per dispatch, the cost of position() and order(), and the
   largest wait of a guild's first job, in dispatches.
2. Dynamic: the same jobs arrive over time while one slot dispatches (one dispatch per
   arrival tick, arrivals in bursts). For each guild whose first job arrives while the
   guild has nothing waiting, its wait in dispatches is compared with the number of guilds
   that had jobs waiting when it arrived: the rule is wait <= active guilds.
3. Pools: the same jobs through PoolQueues (what the Scheduler dispatches from), in one pool
   (every single-model bot) and spread over three presets, one of which has no free worker
   until the other two have drained (each dispatch then looks past the blocked pool).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.scheduler import FairQueue, PoolQueues  # noqa: E402


def make_jobs(jobs: int, users: int, guilds: int, seed: int) -> list[tuple[str, int, int]]:
    rng = random.Random(seed)
    # Members belong to guilds with Zipf-like sizes; jobs come from members with Zipf-like
    # activity: a handful of guilds and members send most of the work.
    guild_weights = [1.0 / (g + 1) for g in range(guilds)]
    member_guild = rng.choices(range(guilds), weights=guild_weights, k=users)
    for g in range(guilds):  # every guild has at least one member
        member_guild[g % users] = g
    member_weights = [1.0 / (u + 1) ** 0.8 for u in range(users)]
    senders = rng.choices(range(users), weights=member_weights, k=jobs)
    out = []
    for i, user in enumerate(senders):
        out.append((f"j{i}", member_guild[user], user))
    return out


def static(plan: list[tuple[str, int, int]]) -> dict[str, float]:
    q = FairQueue()
    t0 = time.perf_counter_ns()
    for job, guild, user in plan:
        q.push(job, guild, user)
    enqueue_ns = time.perf_counter_ns() - t0

    rng = random.Random(2)
    sample = rng.sample([job for job, _, _ in plan], 1000)
    t0 = time.perf_counter_ns()
    for job in sample:
        q.position(job)
    position_ns = (time.perf_counter_ns() - t0) / len(sample)
    t0 = time.perf_counter_ns()
    order = q.order()
    order_ns = time.perf_counter_ns() - t0

    first_job: dict[int, str] = {}
    for job, guild, _ in plan:
        first_job.setdefault(guild, job)
    firsts = set(first_job.values())
    guilds_active = q.guilds()
    worst_first = 0
    t0 = time.perf_counter_ns()
    index = 0
    while (entry := q.pop()) is not None:
        if entry.job_id in firsts:
            worst_first = max(worst_first, index)
        index += 1
    dispatch_ns = time.perf_counter_ns() - t0
    assert index == len(plan) == len(order)
    sizes = {}
    for _, guild, _ in plan:
        sizes[guild] = sizes.get(guild, 0) + 1
    return {
        "enqueue_us": enqueue_ns / len(plan) / 1000,
        "dispatch_us": dispatch_ns / len(plan) / 1000,
        "position_us": position_ns / 1000,
        "order_ms": order_ns / 1e6,
        "worst_first_wait": worst_first,
        "guilds_active": guilds_active,
        "biggest_guild": max(sizes.values()),
        "median_guild": statistics.median(sizes.values()),
    }


def dynamic(plan: list[tuple[str, int, int]], seed: int) -> dict[str, float]:
    """Arrivals in bursts while one job is dispatched per tick."""
    rng = random.Random(seed)
    q = FairQueue()
    arrived_at: dict[str, tuple[int, int]] = {}  # first job -> (dispatch count, active guilds)
    worst_wait = 0
    worst_excess = -(10**9)  # wait - active guilds at arrival; the rule says <= 0
    dispatches = 0
    i = 0
    while i < len(plan) or len(q):
        burst = rng.choice((0, 0, 1, 1, 2, 3, 8))
        for job, guild, user in plan[i : i + burst]:
            if q.waiting_in(guild) == 0:
                arrived_at[job] = (dispatches, q.guilds())
            q.push(job, guild, user)
        i += burst
        entry = q.pop()
        if entry is None:
            continue
        if entry.job_id in arrived_at:
            at, active = arrived_at.pop(entry.job_id)
            wait = dispatches - at
            worst_wait = max(worst_wait, wait)
            worst_excess = max(worst_excess, wait - active)
        dispatches += 1
    return {"worst_first_wait": worst_wait, "worst_excess": worst_excess}


def pooled(plan: list[tuple[str, int, int]], pools: int) -> dict[str, float]:
    """Enqueue and dispatch everything through PoolQueues; with several pools, pool 0 is
    blocked (no free worker) until the others are empty."""
    q = PoolQueues()
    t0 = time.perf_counter_ns()
    for i, (job, guild, user) in enumerate(plan):
        q.push(job, guild, user, pool=i % pools)
    enqueue_ns = time.perf_counter_ns() - t0
    others = len(plan) - len(plan[::pools]) if pools > 1 else 0
    dispatched = 0

    def can_run(pool: object) -> bool:
        return pools == 1 or pool != 0 or dispatched >= others

    t0 = time.perf_counter_ns()
    while q.pop(can_run) is not None:
        dispatched += 1
    dispatch_ns = time.perf_counter_ns() - t0
    assert dispatched == len(plan) and not q
    return {
        "enqueue_us": enqueue_ns / len(plan) / 1000,
        "dispatch_us": dispatch_ns / len(plan) / 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--guilds", type=int, default=1_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    plan = make_jobs(args.jobs, args.users, args.guilds, args.seed)
    print(
        f"FairQueue: {args.jobs:,} jobs from {args.users:,} members in {args.guilds:,} guilds "
        f"(Python {sys.version.split()[0]})"
    )
    s = static(plan)
    print(f"  guild sizes: biggest {s['biggest_guild']:,} jobs, median {s['median_guild']:g}")
    print(f"  enqueue:  {s['enqueue_us']:.2f} µs per job")
    print(f"  dispatch: {s['dispatch_us']:.2f} µs per job")
    print(f"  position(): {s['position_us']:.1f} µs per call (random waiting job)")
    print(f"  order() of the whole queue: {s['order_ms']:.1f} ms")
    print(
        f"  static: largest wait of a guild's first job: {s['worst_first_wait']:,} dispatches "
        f"({s['guilds_active']:,} guilds active; rule: at most one job per active guild)"
    )
    d = dynamic(plan, args.seed)
    print(
        f"  dynamic: largest wait of a guild's first job: {d['worst_first_wait']:,} dispatches; "
        f"worst (wait - guilds active at arrival): {d['worst_excess']:+d} (rule: <= 0)"
    )
    for pools in (1, 3):
        r = pooled(plan, pools)
        blocked = ", one blocked" if pools > 1 else ""
        print(
            f"  PoolQueues, {pools} pool{'s' if pools > 1 else ''}{blocked}: "
            f"enqueue {r['enqueue_us']:.2f} µs, dispatch {r['dispatch_us']:.2f} µs per job"
        )
    if s["worst_first_wait"] >= s["guilds_active"] or d["worst_excess"] > 0:
        raise SystemExit("fairness rule broken")


if __name__ == "__main__":
    main()
