"""Scale-out through Redis: a real redis-server, real worker processes with the tiny model, the
real RedisBackend, and (where the job layer matters) the real JobService on a real SQLite file.

The module shares one redis-server and a small fleet of worker processes (two serving the tiny
model "local:tiny-a", one serving a copy named "local:tiny-b"); tests that kill or freeze a
worker start a replacement before the next test needs it. Timings are short (a dead worker is
noticed within about 4 s instead of 18 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import redis
from PIL import Image

from tests.redis_server import REDIS_SERVER, RedisServer

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")

ROOT = Path(__file__).resolve().parent.parent
TINY_STEPS = 100  # about 1 s per clip on one CPU core: long enough to act on a running job

if REDIS_SERVER is not None:  # imported lazily below otherwise: nothing to run
    from bot import intake
    from bot.admission import Limits
    from bot.events import JobDone, JobProgress, Queued, Started
    from bot.jobs import JobService
    from bot.scheduler import FairQueue, queue_key
    from bot.store import Store
    from generator.protocol import BackendState, Done, Failed, GenerationRequest, Progress
    from generator.redis_backend import RedisBackend
    from generator.redis_common import RedisTimings

    TIMINGS = RedisTimings(heartbeat_timeout=3, heartbeat_every=0.5, sweep_every=1, poll_every=0.25)


# -- fixtures ------------------------------------------------------------------------------------


class Fleet:
    """Worker processes (`python main.py worker`), their logs, and their Redis view."""

    def __init__(self, url: str, models: dict[str, Path], log_dir: Path) -> None:
        self.url = url
        self.models = models  # served name -> model folder
        self.log_dir = log_dir
        self.procs: dict[int, tuple[str, subprocess.Popen[bytes]]] = {}
        self.slots = {"local:tiny-b": 2}  # one worker with two model copies
        self._count = 0

    def start(self, served: str) -> subprocess.Popen[bytes]:
        self._count += 1
        env = {
            **os.environ,
            **TIMINGS.to_env(),
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",
        }
        log = open(self.log_dir / f"worker-{self._count}-{served.replace(':', '_')}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "main.py"), "worker", "--redis", self.url]
            + ["--model", str(self.models[served]), "--slots", str(self.slots.get(served, 1))],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.procs[proc.pid] = (served, proc)
        return proc

    def alive(self, served: str) -> list[int]:
        return [pid for pid, (s, p) in self.procs.items() if s == served and p.poll() is None]

    def registrations(self) -> dict[str, dict]:
        """worker id -> registration, read straight from Redis."""
        client = redis.Redis.from_url(self.url, socket_timeout=2)
        try:
            ids = [i.decode() for i in client.smembers("zoetrope:workers")]
            values = client.mget([f"zoetrope:worker:{i}" for i in ids]) if ids else []
            return {i: json.loads(v) for i, v in zip(ids, values, strict=True) if v}
        finally:
            client.close()

    def ready_pids(self, served: str) -> set[int]:
        return {
            r["pid"]
            for r in self.registrations().values()
            if r["served"] == served and r["state"] == "ready"
        }

    def ensure(self, served: str, count: int, timeout: float = 90.0) -> set[int]:
        """Start workers until `count` serve `served`, and wait until all are ready."""
        for _ in range(count - len(self.alive(served))):
            self.start(served)
        deadline = time.monotonic() + timeout
        while True:
            alive = set(self.alive(served))
            ready = self.ready_pids(served) & alive
            if len(ready) >= count:
                return ready
            if time.monotonic() > deadline:
                raise AssertionError(f"workers for {served} not ready: {self.tail()}")
            time.sleep(0.1)

    def pid_of(self, worker_id: str) -> int:
        return int(self.registrations()[worker_id]["pid"])

    def kill(self, pid: int, sig: int = signal.SIGKILL) -> None:
        os.kill(pid, sig)
        if sig == signal.SIGKILL:
            self.procs[pid][1].wait(10)

    def stop_all(self) -> None:
        for _, proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGCONT)
                    proc.terminate()
        for _, proc in self.procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def tail(self, lines: int = 15) -> str:
        out = []
        for path in sorted(self.log_dir.glob("worker-*.log")):
            text = path.read_text(errors="replace").splitlines()
            out.append(f"--- {path.name}\n" + "\n".join(text[-lines:]))
        return "\n".join(out)


@pytest.fixture(scope="module")
def scale_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("scaleout")


@pytest.fixture(scope="module")
def models(scale_dir: Path) -> dict[str, Path]:
    from tests.tiny_models import build_tiny_model

    tiny_a = build_tiny_model("wan21", scale_dir / "tiny-a")
    settings = json.loads((tiny_a / "zoetrope.json").read_text())
    settings["steps"] = TINY_STEPS
    (tiny_a / "zoetrope.json").write_text(json.dumps(settings))
    # The same weights under another folder name: another served name ("another preset").
    tiny_b = Path(shutil.copytree(tiny_a, scale_dir / "tiny-b"))
    return {"local:tiny-a": tiny_a, "local:tiny-b": tiny_b}


@pytest.fixture(scope="module")
def redis_server(scale_dir: Path) -> RedisServer:
    server = RedisServer(scale_dir / "redis").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def fleet(redis_server: RedisServer, models: dict[str, Path], scale_dir: Path) -> Fleet:
    log_dir = scale_dir / "logs"
    log_dir.mkdir()
    fleet = Fleet(redis_server.url, models, log_dir)
    for served in ("local:tiny-a", "local:tiny-a", "local:tiny-b"):
        fleet.start(served)
    try:
        fleet.ensure("local:tiny-a", 2)
        fleet.ensure("local:tiny-b", 1)
        yield fleet
    finally:
        fleet.stop_all()


@pytest.fixture(autouse=True)
def no_backend_errors(caplog: pytest.LogCaptureFixture) -> None:
    """The bot-side backend never logs an error in these scenarios (it would hide a bug)."""
    yield
    errors = [
        r.getMessage() for r in caplog.records if r.name.startswith("zoetrope") and r.levelno >= 40
    ]
    assert not errors, errors


@pytest.fixture
def image_path(tmp_path: Path) -> Path:
    path = tmp_path / "input.png"
    image = Image.new("RGB", (128, 96))
    image.putdata(
        [((x * 7) % 256, (y * 5) % 256, (x * y) % 256) for y in range(96) for x in range(128)]
    )
    image.save(path)
    return path


@contextlib.asynccontextmanager
async def redis_backend(fleet: Fleet, **kwargs: object) -> AsyncIterator[RedisBackend]:
    backend = RedisBackend(
        fleet.url, model=str(fleet.models["local:tiny-a"]), timings=TIMINGS, **kwargs
    )
    try:
        yield backend
    finally:
        await backend.close()


@contextlib.asynccontextmanager
async def job_service(
    tmp_path: Path, backend: RedisBackend, *, poll_interval: float = 0.2
) -> AsyncIterator[tuple[JobService, list]]:
    """The real JobService on a real SQLite file, feeding `backend` and woken by its changes
    (as bot/app.py wires them); yields it and its events."""
    store = Store(tmp_path / "zoetrope.db")
    service = JobService(
        store,
        backend,
        data_dir=tmp_path / "data",
        limits=Limits(pending_per_user=10, pending_per_guild=25),
        position_interval=3600.0,
        poll_interval=poll_interval,
    )
    backend.on_change = service.kick
    events: list = []
    service.add_listener(lambda event: events.append((time.monotonic(), event)))
    await service.start()
    try:
        yield service, events
    finally:
        await service.close()
        store.close()


def stored_image(tmp_path: Path, image_path: Path) -> str:
    normalised = intake.normalise_image(image_path.read_bytes())
    intake.store_image(normalised, tmp_path / "data" / "inputs")
    return normalised.sha256


async def wait_for(
    predicate: Callable[[], bool], timeout: float, what: str, fleet: Fleet | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            logs = f"\n{fleet.tail()}" if fleet is not None else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {what}{logs}")
        await asyncio.sleep(0.05)


def request(job_id: str, image: Path, out_dir: Path, **fields: object) -> GenerationRequest:
    return GenerationRequest(
        job_id=job_id,
        image_path=str(image),
        prompt="waves roll in, the camera slowly pushes forward",
        output_path=str(out_dir / f"{job_id}.mp4"),
        seed=7,
        **fields,
    )


async def run_all(backend: RedisBackend, requests: list[GenerationRequest]) -> dict[str, list]:
    """Submit all at once; job id -> its events."""

    async def one(req: GenerationRequest) -> tuple[str, list]:
        return req.job_id, [event async for event in backend.submit(req)]

    return dict(await asyncio.gather(*(one(r) for r in requests)))


def assert_mp4(path: str | Path) -> None:
    data = Path(path).read_bytes()
    assert len(data) > 500 and data[4:8] == b"ftyp", f"{path} is not an MP4"


def denoising(events: list, job_id: str, *, past_step: int = 3) -> bool:
    """Whether `job_id` has reached denoise step `past_step` (it is running on a worker)."""
    return any(
        isinstance(e, JobProgress)
        and e.job.id == job_id
        and e.stage == "denoise"
        and e.step >= past_step
        for _, e in events
    )


def terminal(store: Store, ids: list[str]) -> bool:
    return all(store.get_job(i).status in ("done", "failed", "cancelled") for i in ids)


# -- tests ---------------------------------------------------------------------------------------


async def test_jobs_go_only_to_workers_serving_their_preset(
    fleet: Fleet, image_path: Path, tmp_path: Path
) -> None:
    """Capacity counts live slots per served name, and each job runs only on a worker serving its preset."""
    tiny_a = fleet.ensure("local:tiny-a", 2)
    tiny_b = fleet.ensure("local:tiny-b", 1)
    async with redis_backend(fleet) as backend:
        assert backend.capacity() == 0  # not started: no Redis, no worker
        await backend.start()
        await backend.wait_ready(20)
        await wait_for(lambda: backend.capacity() == 2, 10, "two tiny-a slots")
        assert backend.served() == {"local:tiny-a": 2, "local:tiny-b": 2}
        assert backend.capacity("local:tiny-b") == 2 and backend.capacity("ltx-fast") == 0

        requests = [request(f"a{i}", image_path, tmp_path) for i in range(4)]
        requests += [
            request(f"b{i}", image_path, tmp_path, preset="local:tiny-b") for i in range(2)
        ]
        times: dict[str, list[float]] = {r.job_id: [] for r in requests}

        async def one(req: GenerationRequest) -> tuple[str, list]:
            events = []
            async for event in backend.submit(req):
                events.append(event)
                times[req.job_id].append(time.monotonic())
            return req.job_id, events

        results = dict(await asyncio.gather(*(one(r) for r in requests)))
        pids = {}
        for job_id, events in results.items():
            final = events[-1]
            assert isinstance(final, Done), (job_id, final, fleet.tail())
            assert_mp4(final.path)
            pids[job_id] = fleet.pid_of(final.facts.worker)
            served = "local:tiny-b" if job_id.startswith("b") else "local:tiny-a"
            assert final.facts.served == served
        assert {pids[f"a{i}"] for i in range(4)} <= tiny_a
        assert pids["b0"] == pids["b1"] and pids["b0"] in tiny_b
        # Its two slots ran both at once: each streamed progress before the other finished.
        assert times["b0"][1] < times["b1"][-1] and times["b1"][1] < times["b0"][-1]

        # A preset nobody serves waits (never handed to a worker that cannot run it) until cancelled.
        events: list = []

        async def orphan() -> None:
            async for event in backend.submit(
                request("ltx", image_path, tmp_path, preset="ltx-fast")
            ):
                events.append(event)

        task = asyncio.create_task(orphan())
        await wait_for(lambda: events, 5, "the waiting job's first event")
        assert events == [Progress(0, 0, "load")]
        await asyncio.sleep(0.5)
        assert len(events) == 1 and backend.capacity("ltx-fast") == 0
        await backend.cancel("ltx")
        await asyncio.wait_for(task, 5)
        assert isinstance(events[-1], Failed) and events[-1].kind == "cancelled"

        # SAQ's job records are JSON, not pickles (nothing from Redis is unpickled).
        client = backend.client
        keys = [k async for k in client.scan_iter(match="saq:job:zoetrope:*")]
        assert keys
        for key in keys[:5]:
            assert isinstance(json.loads(await client.get(key)), dict)


async def test_progress_and_cancel_of_a_running_job(
    fleet: Fleet, image_path: Path, tmp_path: Path
) -> None:
    """Progress streams from a worker process; cancel stops it within a step and the worker keeps serving."""
    fleet.ensure("local:tiny-a", 2)
    async with redis_backend(fleet) as backend:
        await backend.start()
        await backend.wait_ready(20)
        await wait_for(lambda: backend.capacity() == 2, 10, "two tiny-a slots")

        events: list[tuple[float, object]] = []
        cancelled_at: float | None = None
        cancel_step = 0
        worker = None
        async for event in backend.submit(request("c1", image_path, tmp_path, duration="long")):
            events.append((time.monotonic(), event))
            if (
                cancelled_at is None
                and isinstance(event, Progress)
                and event.stage == "denoise"
                and event.step >= 5
            ):
                worker = backend.worker_of("c1")
                cancel_step, cancelled_at = event.step, time.monotonic()
                await backend.cancel("c1")
        final = events[-1][1]
        assert isinstance(final, Failed) and final.kind == "cancelled", (final, fleet.tail())
        assert cancelled_at is not None and worker is not None
        steps = [e for _, e in events if isinstance(e, Progress) and e.stage == "denoise"]
        assert steps[0].total == TINY_STEPS
        # Steps are ~7 ms here; a few may already be on their way. Far from the 100 it would run.
        assert steps[-1].step < cancel_step + 15 and steps[-1].step < TINY_STEPS
        assert events[-1][0] - cancelled_at < 2.0
        assert not Path(tmp_path / "c1.mp4").exists()

        # The worker keeps its model: same process, and it runs the next jobs.
        pid = fleet.pid_of(worker)
        results = await run_all(backend, [request(f"n{i}", image_path, tmp_path) for i in range(2)])
        workers = {events[-1].facts.worker for events in results.values()}
        assert all(isinstance(e[-1], Done) for e in results.values())
        assert worker in workers and fleet.pid_of(worker) == pid

        # A job still waiting for a slot is cancelled at once, never reaching SAQ.
        long_jobs = [request(f"l{i}", image_path, tmp_path, duration="long") for i in range(2)]
        busy = asyncio.create_task(run_all(backend, long_jobs))
        await wait_for(lambda: backend.capacity() == 0, 5, "both slots busy")
        waiting: list = []

        async def third() -> None:
            async for event in backend.submit(request("w1", image_path, tmp_path)):
                waiting.append(event)

        task = asyncio.create_task(third())
        await wait_for(lambda: waiting, 5, "the waiting job's first event")
        await backend.cancel("w1")
        await asyncio.wait_for(task, 2)
        assert [type(e) for e in waiting] == [Progress, Failed] and waiting[-1].kind == "cancelled"
        assert all(isinstance(e[-1], Done) for e in (await busy).values())


async def test_twenty_jobs_from_four_guilds_spread_fairly(
    fleet: Fleet, image_path: Path, tmp_path: Path
) -> None:
    """Through JobService: 20 jobs from 4 guilds run on both workers in round-robin order, SAQ never holds more than the free slots; the backend's changes, not a poll, wake the dispatcher."""
    tiny_a = fleet.ensure("local:tiny-a", 2)
    sha = stored_image(tmp_path, image_path)
    async with (
        redis_backend(fleet) as backend,
        job_service(tmp_path, backend, poll_interval=3600) as (service, events),
    ):
        # Arrival order is lopsided on purpose: guild 1 floods first, the others trickle in.
        arrivals = [(1, 10 + i % 2) for i in range(8)] + [(2, 20), (3, 30), (2, 21), (4, 40)]
        arrivals += [(3, 31), (4, 40), (2, 20), (3, 30), (4, 41), (2, 21), (3, 31), (4, 40)]
        jobs = [
            await service.submit(
                guild_id=g, channel_id=g, user_id=u, prompt="waves roll", image_sha256=sha
            )
            for g, u in arrivals
        ]
        ids = [job.id for job in jobs]
        expected = FairQueue()
        for job in jobs:
            expected.push(job.id, queue_key(job.guild_id, job.user_id), job.user_id)
        expected_order = [expected.pop().job_id for _ in jobs]

        # Only now do workers become visible: everything above waited in SQLite.
        queued_max = 0

        async def watch_saq() -> None:
            nonlocal queued_max
            while True:
                with contextlib.suppress(Exception):
                    queued_max = max(
                        queued_max, await backend.client.llen("saq:zoetrope:local:tiny-a:queued")
                    )
                await asyncio.sleep(0.02)

        await backend.start()
        watcher = asyncio.create_task(watch_saq())
        try:
            await wait_for(lambda: terminal(service.store, ids), 100, "20 jobs to finish", fleet)
        finally:
            watcher.cancel()
        statuses = Counter(service.store.get_job(i).status for i in ids)
        assert statuses == {"done": 20}, statuses
        started = [e.job.id for _, e in events if isinstance(e, Started)]
        assert started == expected_order
        done = Counter(e.job.id for _, e in events if isinstance(e, JobDone))
        assert set(done.values()) == {1} and set(done) == set(ids)  # each delivered once
        per_worker = Counter(fleet.pid_of(service.get(i).meta["worker"]) for i in ids)
        assert set(per_worker) == tiny_a and min(per_worker.values()) >= 4, per_worker
        assert queued_max <= 2  # SAQ got a job only when a worker slot was free
        for job_id in ids:
            assert_mp4(service.get(job_id).output_path)


async def test_worker_killed_mid_job_job_completes_elsewhere(
    fleet: Fleet, image_path: Path, tmp_path: Path
) -> None:
    """kill -9 of a worker mid-job: noticed by missed heartbeats, requeued at the head of its queue, done once on the other worker."""
    fleet.ensure("local:tiny-a", 2)
    sha = stored_image(tmp_path, image_path)
    async with redis_backend(fleet) as backend, job_service(tmp_path, backend) as (service, events):
        await backend.start()
        await backend.wait_ready(20)
        await wait_for(lambda: backend.capacity() == 2, 10, "two tiny-a slots")
        jobs = [
            await service.submit(
                guild_id=1,
                channel_id=1,
                user_id=5,
                prompt="waves",
                image_sha256=sha,
                duration="long",
            )
            for _ in range(5)
        ]
        ids = [job.id for job in jobs]
        victim = ids[0]

        await wait_for(lambda: denoising(events, victim), 30, "the first job to run", fleet)
        worker = backend.worker_of(victim)
        pid = fleet.pid_of(worker)
        killed_at = time.monotonic()
        fleet.kill(pid)

        await wait_for(lambda: terminal(service.store, ids), 90, "all jobs to finish", fleet)
        assert Counter(service.store.get_job(i).status for i in ids) == {"done": 5}
        retried = [(t, e) for t, e in events if isinstance(e, Queued) and e.retry]
        assert [e.job.id for _, e in retried] == [victim]
        noticed = retried[0][0] - killed_at
        assert noticed < TIMINGS.detect_within + 3, noticed
        # Requeued at the head of its queue: the next job to start after the crash is the victim.
        after = [e.job.id for t, e in events if isinstance(e, Started) and t > retried[0][0]]
        assert after[0] == victim
        job = service.get(victim)
        assert job.attempts == 1 and job.meta["worker"] != worker
        done = Counter(e.job.id for _, e in events if isinstance(e, JobDone))
        assert done == Counter(ids)  # nothing lost, nothing delivered twice
        assert_mp4(job.output_path)


async def test_worker_stopped_gracefully_gives_its_job_back(
    fleet: Fleet, image_path: Path, tmp_path: Path
) -> None:
    """SIGTERM to a worker mid-job: it gives the job back at once ("requeue"), which completes on the other worker with no attempt counted."""
    fleet.ensure("local:tiny-a", 2)
    sha = stored_image(tmp_path, image_path)
    async with redis_backend(fleet) as backend, job_service(tmp_path, backend) as (service, events):
        await backend.start()
        await backend.wait_ready(20)
        await wait_for(lambda: backend.capacity() == 2, 10, "two tiny-a slots")
        jobs = [
            await service.submit(
                guild_id=1,
                channel_id=1,
                user_id=5,
                prompt="waves",
                image_sha256=sha,
                duration="long",
            )
            for _ in range(3)
        ]
        ids = [job.id for job in jobs]
        victim = ids[0]

        await wait_for(lambda: denoising(events, victim), 30, "the first job to run", fleet)
        worker = backend.worker_of(victim)
        pid = fleet.pid_of(worker)
        stopped_at = time.monotonic()
        fleet.kill(pid, signal.SIGTERM)

        await wait_for(lambda: terminal(service.store, ids), 90, "all jobs to finish", fleet)
        assert fleet.procs[pid][1].wait(30) == 0  # the worker left cleanly
        assert Counter(service.store.get_job(i).status for i in ids) == {"done": 3}
        given_back = [(t, e) for t, e in events if isinstance(e, Queued) and e.retry]
        assert {e.job.id for _, e in given_back} == {victim}
        # Reported by the stopping worker itself, not found later by a heartbeat sweep.
        assert given_back[0][0] - stopped_at < TIMINGS.heartbeat_timeout
        job = service.get(victim)
        assert job.attempts == 0 and job.meta["requeues"] >= 1
        assert job.meta["worker"] != worker
        after = [e.job.id for t, e in events if isinstance(e, Started) and t > given_back[0][0]]
        assert after[0] == victim  # back at the head of its queue
        done = Counter(e.job.id for _, e in events if isinstance(e, JobDone))
        assert done == Counter(ids)  # nothing lost, nothing delivered twice
        assert_mp4(job.output_path)


async def test_mixed_presets_a_job_never_waits_behind_another_presets_queue(
    fleet: Fleet, image_path: Path, tmp_path: Path
) -> None:
    """Through JobService with both presets served: while tiny-a's workers are busy and its jobs queue, a tiny-b job (a served name, accepted as a preset) starts at once on a tiny-b worker."""
    fleet.ensure("local:tiny-a", 2)
    fleet.ensure("local:tiny-b", 1)
    sha = stored_image(tmp_path, image_path)
    async with redis_backend(fleet) as backend, job_service(tmp_path, backend) as (service, events):
        await backend.start()
        await backend.wait_ready(20)
        await wait_for(
            lambda: backend.served() == {"local:tiny-a": 2, "local:tiny-b": 2}, 10, "both presets"
        )
        a_jobs = [
            await service.submit(
                guild_id=1, channel_id=1, user_id=5, prompt="waves", image_sha256=sha
            )
            for _ in range(4)
        ]
        b_job = await service.submit(
            guild_id=2,
            channel_id=2,
            user_id=6,
            prompt="waves",
            image_sha256=sha,
            preset="local:tiny-b",
        )
        assert service.position(b_job.id) == 1  # first of its preset, whatever tiny-a holds
        ids = [j.id for j in a_jobs] + [b_job.id]
        await wait_for(lambda: terminal(service.store, ids), 90, "all jobs to finish", fleet)
        assert Counter(service.store.get_job(i).status for i in ids) == {"done": 5}
        started = {e.job.id: t for t, e in reversed(events) if isinstance(e, Started)}
        first_done = min(t for t, e in events if isinstance(e, JobDone))
        assert started[b_job.id] < first_done  # it did not wait for a tiny-a slot
        assert service.get(b_job.id).meta["served"] == "local:tiny-b"
        assert {service.get(j.id).meta["served"] for j in a_jobs} == {"local:tiny-a"}


async def test_frozen_worker_late_result_is_ignored(
    fleet: Fleet, image_path: Path, tmp_path: Path
) -> None:
    """A worker frozen mid-job (SIGSTOP) is presumed dead; the retry wins and whatever it sends after SIGCONT is ignored."""
    fleet.ensure("local:tiny-a", 2)
    async with redis_backend(fleet) as backend:
        await backend.start()
        await backend.wait_ready(20)
        await wait_for(lambda: backend.capacity() == 2, 10, "two tiny-a slots")
        first: list = []
        worker = None
        pid = 0
        async for event in backend.submit(request("z1", image_path, tmp_path, duration="long")):
            first.append(event)
            if (
                worker is None
                and isinstance(event, Progress)
                and event.stage == "denoise"
                and event.step >= 3
            ):
                worker = backend.worker_of("z1")
                pid = fleet.pid_of(worker)
                fleet.kill(pid, signal.SIGSTOP)
        try:
            assert isinstance(first[-1], Failed) and first[-1].kind == "crash", first[-1]
            retry = await run_all(backend, [request("z1", image_path, tmp_path, duration="long")])
            final = retry["z1"][-1]
            assert isinstance(final, Done) and final.facts.worker != worker
            size = Path(final.path).stat().st_size
        finally:
            fleet.kill(pid, signal.SIGCONT)
        # The frozen worker wakes up, finds its job swept, and stops it; its late event (if
        # any) goes to the old attempt's stream, which nobody reads.
        await asyncio.sleep(2.0)
        assert Path(final.path).stat().st_size == size
        assert pid in fleet.ensure("local:tiny-a", 2)  # it serves again
        streams = [k async for k in backend.client.scan_iter(match="zoetrope:events:z1.*")]
        assert len(streams) <= 1  # the retry's stream was collected; at most the old one is left


async def test_redis_restart_mid_run_every_job_completes(
    fleet: Fleet, redis_server: RedisServer, image_path: Path, tmp_path: Path
) -> None:
    """Redis restarted (AOF) mid-run: the bot waits for it ("waiting for Redis", capacity 0) and every job completes once."""
    fleet.ensure("local:tiny-a", 2)
    sha = stored_image(tmp_path, image_path)
    async with redis_backend(fleet) as backend, job_service(tmp_path, backend) as (service, events):
        await backend.start()
        await backend.wait_ready(20)
        jobs = [
            await service.submit(
                guild_id=g,
                channel_id=g,
                user_id=g,
                prompt="waves",
                image_sha256=sha,
                duration="long",
            )
            for g in (1, 2) * 4
        ]
        ids = [job.id for job in jobs]
        await wait_for(
            lambda: sum(service.store.get_job(i).status == "done" for i in ids) >= 2,
            40,
            "two jobs done",
            fleet,
        )
        seen: list[tuple[int, str]] = []

        async def sample() -> None:
            while True:
                seen.append((backend.capacity(), backend.detail))
                await asyncio.sleep(0.05)

        sampler = asyncio.create_task(sample())
        restart = asyncio.create_task(asyncio.to_thread(redis_server.restart, 2.0))
        await wait_for(lambda: (0, "waiting for Redis") in seen, 10, "the outage to be seen")
        # A bot starting while Redis is down does not fail: it waits. (Its own namespace:
        # one bot per namespace, or it would take the other's jobs for orphans.)
        late = RedisBackend(fleet.url, namespace="late", timings=TIMINGS)
        await late.start()
        await restart
        await wait_for(
            lambda: terminal(service.store, ids), 90, "all jobs after the restart", fleet
        )
        sampler.cancel()
        try:
            assert late.detail in ("waiting for Redis", "waiting for a worker")
            await wait_for(lambda: late.detail == "waiting for a worker", 10, "the late backend")
            assert late.capacity() == 0 and not late.ready
        finally:
            await late.close()
        assert Counter(service.store.get_job(i).status for i in ids) == {"done": 8}
        done = Counter(e.job.id for _, e in events if isinstance(e, JobDone))
        assert done == Counter(ids)
        assert backend.state is BackendState.READY


async def test_redis_restart_without_persistence_retries_lost_jobs(
    fleet: Fleet, redis_server: RedisServer, image_path: Path, tmp_path: Path
) -> None:
    """Redis restarted with its data lost: jobs in flight are reported as crashes, retried once, and all complete once."""
    workers = fleet.ensure("local:tiny-a", 2)
    sha = stored_image(tmp_path, image_path)
    async with redis_backend(fleet) as backend, job_service(tmp_path, backend) as (service, events):
        await backend.start()
        await backend.wait_ready(20)
        jobs = [
            await service.submit(
                guild_id=g,
                channel_id=g,
                user_id=g,
                prompt="waves",
                image_sha256=sha,
                duration="long",
            )
            for g in (1, 2, 3, 4)
        ]
        ids = [job.id for job in jobs]

        def running() -> set[str]:
            return {
                e.job.id for _, e in events if isinstance(e, JobProgress) and e.stage == "denoise"
            }

        await wait_for(lambda: len(running()) >= 2, 30, "two jobs running", fleet)
        # Freeze the workers so that their jobs cannot finish while Redis is away: the loss
        # is then certain, not a race between the restart and a short tiny-model job.
        for pid in workers:
            fleet.kill(pid, signal.SIGSTOP)
        await asyncio.sleep(0.5)  # a result already on its way lands first
        in_flight = {i for i in ids if service.store.get_job(i).status == "running"}
        assert in_flight
        redis_server.appendonly = False  # the restart starts empty: everything in Redis is lost
        try:
            await asyncio.to_thread(redis_server.restart, 0.5)

            def retried() -> set[str]:
                return {e.job.id for _, e in events if isinstance(e, Queued) and e.retry}

            await wait_for(lambda: retried() == in_flight, 20, "the lost jobs reported", fleet)
        finally:
            redis_server.appendonly = True
            for pid in workers:
                fleet.kill(pid, signal.SIGCONT)
        await wait_for(lambda: terminal(service.store, ids), 90, "all jobs after data loss", fleet)
        assert Counter(service.store.get_job(i).status for i in ids) == {"done": 4}
        assert Counter(e.job.id for _, e in events if isinstance(e, JobDone)) == Counter(ids)
        assert {i for i in ids if service.get(i).attempts == 1} == in_flight


async def test_unpicklable_garbage_in_a_queue_is_dropped(
    fleet: Fleet, image_path: Path, tmp_path: Path
) -> None:
    """A job record that is not JSON (e.g. a pickle planted in Redis) is never loaded; the worker drops it and keeps serving."""
    fleet.ensure("local:tiny-a", 2)
    import pickle

    client = redis.Redis.from_url(fleet.url)
    try:
        job_id = "saq:job:zoetrope:local:tiny-a:evil"
        client.set(job_id, pickle.dumps({"function": "generate"}))
        client.zadd("saq:zoetrope:local:tiny-a:incomplete", {job_id: 0})
        client.rpush("saq:zoetrope:local:tiny-a:queued", job_id)
    finally:
        client.close()
    async with redis_backend(fleet) as backend:
        await backend.start()
        await backend.wait_ready(20)
        results = await run_all(backend, [request(f"g{i}", image_path, tmp_path) for i in range(2)])
        assert all(isinstance(events[-1], Done) for events in results.values())
        client = backend.client
        await wait_for_async(lambda: client.llen("saq:zoetrope:local:tiny-a:active"), 0, 10)
    assert len(fleet.alive("local:tiny-a")) == 2


async def wait_for_async(probe: Callable[[], object], want: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (got := await probe()) != want:  # type: ignore[misc]
        assert time.monotonic() < deadline, f"still {got!r}, want {want!r}"
        await asyncio.sleep(0.1)
