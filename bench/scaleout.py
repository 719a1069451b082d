"""Benchmark scale-out through Redis: throughput and dispatch overhead with 1, 2 and 4 workers.

    python bench/scaleout.py [--workers 1,2,4] [--jobs-per-worker 8] [--steps 20]

Everything is real: a redis-server of its own (loopback, temp dir, AOF on), worker processes
(`python main.py worker`) with the tiny test model on the CPU, the RedisBackend,
and the bot's JobService on a SQLite file. For each fleet size the jobs (from 4 guilds) are
queued while no worker is visible, then the backend starts and all of them run.

Figures printed per fleet size:
- jobs per minute: jobs / (first job started -> last job done on the workers);
- dispatch overhead: on each worker, the time from one job finishing (its result sent, the
  slot free) to the next job starting there (taken from the queue), read from SAQ's job
  records (both ends stamped by the same worker's clock). This is the whole loop: result
  read by the bot, clip written, job marked done in SQLite, the fair queue asked for the next
  job, input image and job put in Redis, the worker woken from BLMOVE.

The tiny model is CPU-bound: with more worker processes than CPU cores, throughput stops
growing because the workers share the cores, not because of dispatch. The overhead column
is the figure that carries over to GPU machines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot import intake  # noqa: E402
from bot.admission import Limits  # noqa: E402
from bot.jobs import JobService  # noqa: E402
from bot.store import Store  # noqa: E402
from generator.redis_backend import RedisBackend  # noqa: E402
from generator.redis_common import RedisTimings  # noqa: E402
from tests.redis_server import REDIS_SERVER, RedisServer  # noqa: E402

TIMINGS = RedisTimings()  # production defaults: the overhead must not depend on short timers


def build_model(directory: Path, steps: int) -> Path:
    from tests.tiny_models import build_tiny_model

    model = build_tiny_model("wan21", directory / "tiny-bench")
    settings = json.loads((model / "zoetrope.json").read_text())
    settings["steps"] = steps
    (model / "zoetrope.json").write_text(json.dumps(settings))
    return model


def input_image(data_dir: Path) -> str:
    from PIL import Image

    image = Image.new("RGB", (128, 96))
    image.putdata(
        [((x * 7) % 256, (y * 5) % 256, (x * y) % 256) for y in range(96) for x in range(128)]
    )
    path = data_dir / "source.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    normalised = intake.normalise_image(path.read_bytes())
    intake.store_image(normalised, data_dir / "inputs")
    return normalised.sha256


def start_worker(url: str, model: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    with open(log, "wb") as handle:
        return subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "main.py"),
                "worker",
                "--redis",
                url,
                "--model",
                str(model),
            ],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )


async def wait_workers(backend: RedisBackend, count: int, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while sum(backend.served().values()) < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {sum(backend.served().values())} of {count} workers came up")
        await asyncio.sleep(0.1)


async def run_round(url: str, workdir: Path, workers: int, jobs: int) -> dict[str, float]:
    data_dir = workdir / "data"
    sha = input_image(data_dir)
    store = Store(workdir / "zoetrope.db")
    backend = RedisBackend(url, timings=TIMINGS)
    service = JobService(
        store,
        backend,
        data_dir=data_dir,
        limits=Limits(pending_per_user=jobs, pending_per_guild=jobs, max_queue=10 * jobs),
        position_interval=3600.0,
    )
    await service.start()
    ids = []
    for index in range(jobs):
        guild = 1 + index % 4
        job = await service.submit(
            guild_id=guild,
            channel_id=guild,
            user_id=100 + index % 7,
            prompt="waves roll",
            image_sha256=sha,
        )
        ids.append(job.id)
    try:
        await backend.start()
        await wait_workers(backend, workers)
        while not all(store.get_job(i).status in ("done", "failed") for i in ids):
            await asyncio.sleep(0.05)
        statuses = {store.get_job(i).status for i in ids}
        if statuses != {"done"}:
            raise SystemExit(f"some jobs did not finish: {statuses}")
        records = await saq_records(backend, ids)
    finally:
        await service.close()
        await backend.close()
        store.close()
    return figures(records, jobs)


async def saq_records(backend: RedisBackend, ids: list[str]) -> list[dict]:
    """The SAQ job records of these jobs' attempts (JSON), read back from Redis."""
    client = backend.client
    assert client is not None
    wanted = set(ids)
    records = []
    async for key in client.scan_iter(match="saq:job:zoetrope:*", count=500):
        job_key = key.decode().rsplit(":", 1)[-1]
        if job_key.split(".", 1)[0] in wanted:
            records.append(json.loads(await client.get(key)))
    return records


def figures(records: list[dict], jobs: int) -> dict[str, float]:
    by_worker: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        if record.get("status") == "complete":
            by_worker[record["worker_id"]].append(record)
    gaps: list[float] = []
    bot_side: list[float] = []  # slot free -> next job in SAQ (the bot's share)
    pickup: list[float] = []  # next job in SAQ -> a worker has taken it
    for runs in by_worker.values():
        runs.sort(key=lambda r: r["started"])
        for a, b in zip(runs, runs[1:], strict=False):
            gaps.append(b["started"] - a["completed"])
            bot_side.append(max(0, b["queued"] - a["completed"]))
            pickup.append(b["started"] - max(b["queued"], a["completed"]))
    first = min(r["started"] for r in records)
    last = max(r["completed"] for r in records if r.get("completed"))
    wall = (last - first) / 1000
    busy = [r["completed"] - r["started"] for r in records if r.get("completed")]
    gaps.sort()
    return {
        "jobs": jobs,
        "wall_s": wall,
        "jobs_per_min": jobs / wall * 60,
        "job_ms_p50": statistics.median(busy),
        "gap_ms_p50": statistics.median(gaps) if gaps else float("nan"),
        "gap_ms_p95": gaps[int(0.95 * (len(gaps) - 1))] if gaps else float("nan"),
        "gap_ms_max": gaps[-1] if gaps else float("nan"),
        "bot_ms_p50": statistics.median(bot_side) if bot_side else float("nan"),
        "pickup_ms_p50": statistics.median(pickup) if pickup else float("nan"),
        "used_workers": len(by_worker),
    }


async def main_async(args: argparse.Namespace) -> None:
    sizes = [int(n) for n in args.workers.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="zoetrope-bench-scaleout-"))
    procs: list[subprocess.Popen[bytes]] = []
    results: list[tuple[int, dict[str, float]]] = []
    try:
        print(f"building the tiny model ({args.steps} steps) ...", flush=True)
        model = build_model(workdir, args.steps)
        with RedisServer(workdir / "redis") as server:
            for size in sizes:
                while len(procs) < size:
                    procs.append(
                        start_worker(server.url, model, workdir / f"worker-{len(procs)}.log")
                    )
                for proc in procs[size:]:  # a smaller fleet after a larger one
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(60)
                procs = procs[:size]
                jobs = args.jobs_per_worker * size
                print(f"{size} worker(s): {jobs} jobs ...", flush=True)
                result = await run_round(server.url, workdir / f"round-{size}", size, jobs)
                results.append((size, result))
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                proc.wait(60)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        shutil.rmtree(workdir, ignore_errors=True)

    print()
    print(f"scale-out through Redis: tiny model, {args.steps} steps, {os.cpu_count()} CPU cores")
    header = f"{'workers':>7} {'jobs':>5} {'wall s':>7} {'jobs/min':>9} {'job ms p50':>10} "
    header += f"{'dispatch ms p50':>15} {'p95':>6} {'max':>6} {'(bot p50':>9} {'pickup p50)':>11}"
    print(header)
    for size, r in results:
        print(
            f"{size:>7} {r['jobs']:>5.0f} {r['wall_s']:>7.1f} {r['jobs_per_min']:>9.1f} "
            f"{r['job_ms_p50']:>10.0f} {r['gap_ms_p50']:>15.0f} {r['gap_ms_p95']:>6.0f} "
            f"{r['gap_ms_max']:>6.0f} {r['bot_ms_p50']:>9.0f} {r['pickup_ms_p50']:>11.0f}"
        )
    print(
        "dispatch = on one worker, a job's result sent -> its next job taken from the queue "
        "(bot: -> next job handed to SAQ; pickup: -> a worker took it)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2,4", help="fleet sizes, comma-separated")
    parser.add_argument("--jobs-per-worker", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20, help="denoising steps of the tiny model")
    args = parser.parse_args()
    if REDIS_SERVER is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
