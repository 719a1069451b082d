"""Issue 9, the Redis transport against bad luck and bad actors: a real redis-server and the
real RedisBackend; the test plays the worker side (or the attacker, which is anyone who can
write to Redis) with the same SAQ queue and stream entry codec a real worker uses.

Items: 2 (poisoned entries), 3 (results from the wrong worker, slot cap), 4 (secrets in logs
and in the worker's errors), 9 (SAQ #277: a job swept between dequeue and active).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from tests.redis_server import REDIS_SERVER, RedisServer

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")

ROOT = Path(__file__).resolve().parent.parent
SERVED = "local:tiny"

if REDIS_SERVER is not None:
    from redis import asyncio as aioredis
    from saq.job import Job, Status
    from saq.utils import now as saq_now

    from generator.protocol import Done, Failed, GenerationRequest, Progress
    from generator.redis_backend import RedisBackend
    from generator.redis_common import Keys, RedisTimings, redacted
    from generator.redis_queue import ZoetropeQueue

    TIMINGS = RedisTimings(heartbeat_timeout=2, heartbeat_every=0.5, sweep_every=1, poll_every=0.2)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> RedisServer:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    redis = aioredis.from_url(redis_server.url, protocol=2)
    await redis.flushall()
    yield redis
    await redis.aclose()


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "input.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)  # the backend moves bytes, not pixels
    return path


@contextlib.asynccontextmanager
async def backend_for(url: str, **kwargs: object) -> AsyncIterator[RedisBackend]:
    backend = RedisBackend(url, model=SERVED, timings=TIMINGS, **kwargs)
    await backend.start()
    try:
        yield backend
    finally:
        await backend.close()


async def register(
    client: aioredis.Redis, worker_id: str, *, slots: object = 1, raw: str | None = None
) -> None:
    """A worker registration as generator/redis_worker.py writes it (or a forged one)."""
    keys = Keys()
    body = raw or json.dumps({"served": SERVED, "slots": slots, "busy": 0, "state": "ready"})
    await client.set(keys.worker(worker_id), body, ex=60)
    await client.sadd(keys.workers, worker_id)


async def wait_for(probe: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


def request(job_id: str, image: Path, out_dir: Path) -> GenerationRequest:
    return GenerationRequest(
        job_id=job_id,
        image_path=str(image),
        prompt="waves",
        output_path=str(out_dir / f"{job_id}.mp4"),
        seed=1,
    )


class Run:
    """One submit() in a task: its events as they come."""

    def __init__(self, backend: RedisBackend, req: GenerationRequest) -> None:
        self.events: list[object] = []
        self.task = asyncio.create_task(self._run(backend, req))

    async def _run(self, backend: RedisBackend, req: GenerationRequest) -> None:
        async for event in backend.submit(req):
            self.events.append(event)

    async def final(self, timeout: float = 15.0) -> Done | Failed:
        await asyncio.wait_for(self.task, timeout)
        final = self.events[-1]
        assert isinstance(final, Done | Failed), self.events
        return final


async def take(client: aioredis.Redis, worker_id: str, *, active: bool = True) -> Job:
    """Dequeue the next job as a worker does (BLMOVE), and mark it active the way SAQ's
    Worker.process does (started, worker_id, update(status=ACTIVE))."""
    queue = ZoetropeQueue(client, Keys().queue_name(SERVED), timings=TIMINGS)
    queue.note_reachable(True)
    job = None
    deadline = time.monotonic() + 10
    while job is None and time.monotonic() < deadline:
        job = await queue.dequeue(timeout=1)
    assert job is not None, "no job was handed to SAQ"
    if active:
        job.started = saq_now()
        job.worker_id = worker_id
        await job.update(status=Status.ACTIVE)
    return job


def facts(**changes: object) -> dict:
    values = {
        "width": 64,
        "height": 64,
        "num_frames": 9,
        "fps": 8.0,
        "bytes": 1000,
        "video_width": 64,
        "video_height": 64,
    }
    return {**values, **changes}


async def send(client: aioredis.Redis, job: Job, worker_id: str, event_json: str) -> None:
    await client.xadd(Keys().events(job.key), {"e": event_json, "w": worker_id})


def done_json(**raw_facts: str) -> str:
    """A Done event's JSON with some facts given as raw JSON text (1e999, 10**30, {}): what a
    hostile writer can put in Redis, which json.dumps would not write."""
    marked = {name: f"@@{name}@@" for name in raw_facts}
    body = json.dumps({"type": "done", "path": "", "facts": facts(**marked)})
    for name, text in raw_facts.items():
        body = body.replace(f'"@@{name}@@"', text)
    return body


# -- item 2: poisoned entries ----------------------------------------------------------------


async def test_progress_step_1e999_fails_only_its_job_and_is_read_once(
    client: aioredis.Redis,
    redis_server: RedisServer,
    image: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An event with "step": 1e999 fails its own job with a reason, is logged once, and the other job's events, result and the backend keep flowing."""
    caplog.set_level(logging.INFO, logger="zoetrope")
    await register(client, "w1", slots=2)
    async with backend_for(redis_server.url) as backend:
        await wait_for(lambda: backend.capacity() == 2, 10, "two slots")
        poisoned = Run(backend, request("p1", image, tmp_path))
        healthy = Run(backend, request("h1", image, tmp_path))
        first, second = await take(client, "w1"), await take(client, "w1")
        jobs = {first.key.split(".")[0]: first, second.key.split(".")[0]: second}
        await send(
            client,
            jobs["p1"],
            "w1",
            '{"type": "progress", "step": 1e999, "total": 10, "stage": "denoise"}',
        )
        final = await poisoned.final()
        assert isinstance(final, Failed) and final.kind == "error", final
        assert "step" in final.message
        # The backend is not wedged: the other job's progress and clip still arrive.
        await send(
            client,
            jobs["h1"],
            "w1",
            '{"type": "progress", "step": 1, "total": 10, "stage": "denoise"}',
        )
        await client.set(Keys().output(jobs["h1"].key), b"clip-bytes")
        await send(client, jobs["h1"], "w1", done_json())
        result = await healthy.final()
        assert isinstance(result, Done), result
        assert Progress(1, 10, "denoise") in healthy.events
        assert Path(result.path).read_bytes() == b"clip-bytes"
        await asyncio.sleep(4 * TIMINGS.poll_every)  # more polls: the bad entry is not re-read
    notes = [r for r in caplog.records if "unreadable event" in r.getMessage()]
    assert len(notes) == 1, [r.getMessage() for r in notes]


@pytest.mark.parametrize(
    ("field", "text"),
    [("width", "1e999"), ("fps", "{}"), ("num_frames", str(10**30)), ("gen_seconds", '"fast"')],
)
async def test_done_with_odd_clip_facts_fails_the_job_with_the_field_named(
    client: aioredis.Redis,
    redis_server: RedisServer,
    image: Path,
    tmp_path: Path,
    field: str,
    text: str,
) -> None:
    """A Done whose facts are out of type or bounds ends the job as an error naming the field, instead of leaving it running."""
    await register(client, "w1")
    async with backend_for(redis_server.url) as backend:
        await wait_for(lambda: backend.capacity() == 1, 10, "a slot")
        run = Run(backend, request("j1", image, tmp_path))
        job = await take(client, "w1")
        await client.set(Keys().output(job.key), b"clip-bytes")
        await send(client, job, "w1", done_json(**{field: text}))
        final = await run.final()
    assert isinstance(final, Failed) and final.kind == "error", final
    assert field in final.message and len(final.message) < 500
    assert not (tmp_path / "j1.mp4").exists()


async def test_unreadable_registration_does_not_wedge_the_backend(
    client: aioredis.Redis, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A registration with "slots": 1e999 (OverflowError in int()) or junk is ignored, logged once, and the good worker still counts."""
    caplog.set_level(logging.INFO, logger="zoetrope")
    await register(
        client, "bad1", raw=f'{{"served": "{SERVED}", "slots": 1e999, "state": "ready"}}'
    )
    await register(client, "bad2", raw="[" * 50_000)
    await register(client, "good", slots=2)
    async with backend_for(redis_server.url) as backend:
        await wait_for(lambda: backend.capacity() == 2, 10, "the good worker's slots")
        await asyncio.sleep(5 * TIMINGS.poll_every)
        assert backend.total_slots() == 2
    for worker_id in ("bad1", "bad2"):
        notes = [r for r in caplog.records if f"registration {worker_id}" in r.getMessage()]
        assert len(notes) == 1, [r.getMessage() for r in notes]


# -- item 3: results from the wrong worker, slot cap ---------------------------------------------


async def test_forged_done_from_another_worker_is_not_delivered(
    client: aioredis.Redis, redis_server: RedisServer, image: Path, tmp_path: Path
) -> None:
    """A Done + clip written under another worker's name is ignored; the worker SAQ handed the attempt to delivers its own clip."""
    await register(client, "w1")
    await register(client, "intruder")
    async with backend_for(redis_server.url) as backend:
        await wait_for(lambda: backend.capacity() == 2, 10, "two slots")
        run = Run(backend, request("j1", image, tmp_path))
        job = await take(client, "w1")
        await client.set(Keys().output(job.key), b"forged-clip")
        await send(client, job, "intruder", done_json())
        await send(client, job, "intruder", '{"type": "failed", "kind": "error", "message": "x"}')
        await asyncio.sleep(5 * TIMINGS.poll_every)
        assert not run.task.done(), run.events
        await client.set(Keys().output(job.key), b"genuine-clip")
        await send(client, job, "w1", done_json())
        final = await run.final()
    assert isinstance(final, Done) and final.facts.worker == "w1", final
    assert Path(final.path).read_bytes() == b"genuine-clip"


async def test_an_event_before_any_worker_took_the_attempt_is_ignored(
    client: aioredis.Redis, redis_server: RedisServer, image: Path, tmp_path: Path
) -> None:
    """While the attempt waits in SAQ (no worker marked it active), a Done written into its stream is not delivered."""
    await register(client, "w1")
    async with backend_for(redis_server.url) as backend:
        await wait_for(lambda: backend.capacity() == 1, 10, "a slot")
        run = Run(backend, request("j1", image, tmp_path))
        await wait_for(lambda: backend.capacity() == 0, 10, "the job handed to SAQ")
        attempt = backend.attempts.of_job("j1")
        assert attempt is not None
        await client.set(Keys().output(attempt.key), b"forged-clip")
        await client.xadd(Keys().events(attempt.key), {"e": done_json(), "w": "w1"})
        await asyncio.sleep(5 * TIMINGS.poll_every)
        assert not run.task.done(), run.events
        run.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await run.task


async def test_a_registration_claiming_64_slots_counts_as_the_cap(
    client: aioredis.Redis, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One registration claiming 64 slots counts ZOETROPE_MAX_WORKER_SLOTS (default 8), or the backend's own setting."""
    await register(client, "greedy", slots=64)
    async with backend_for(redis_server.url) as backend:
        await wait_for(lambda: backend.total_slots() > 0, 10, "the worker")
        assert backend.total_slots() == 8 and backend.capacity() == 8
    monkeypatch.setenv("ZOETROPE_MAX_WORKER_SLOTS", "3")
    async with backend_for(redis_server.url) as backend:
        await wait_for(lambda: backend.total_slots() > 0, 10, "the worker")
        assert backend.total_slots() == 3
    async with backend_for(redis_server.url, max_worker_slots=2) as backend:
        await wait_for(lambda: backend.total_slots() > 0, 10, "the worker")
        assert backend.total_slots() == 2
    monkeypatch.setenv("ZOETROPE_MAX_WORKER_SLOTS", "many")
    with pytest.raises(ValueError, match="ZOETROPE_MAX_WORKER_SLOTS"):
        RedisBackend(redis_server.url, model=SERVED, timings=TIMINGS)


# -- item 9: SAQ #277 ------------------------------------------------------------------------------


async def test_job_swept_between_dequeue_and_active_is_requeued_and_stays_ended(
    client: aioredis.Redis, redis_server: RedisServer, image: Path, tmp_path: Path
) -> None:
    """A job a worker took but never marked active is swept as "requeue" (no attempt counted), its cancel key is set, and the stalled worker's late "active" write cannot revive it."""
    await register(client, "w1")
    async with backend_for(redis_server.url) as backend:
        await wait_for(lambda: backend.capacity() == 1, 10, "a slot")
        run = Run(backend, request("j1", image, tmp_path))
        job = await take(client, "w1", active=False)  # the worker stalls right after BLMOVE
        final = await run.final(timeout=TIMINGS.detect_within + 10)
        assert isinstance(final, Failed) and final.kind == "requeue", final
        assert await client.exists(Keys().cancel(job.key))
        # The stalled worker wakes and does what SAQ's Worker.process does next.
        job.started = saq_now()
        job.worker_id = "w1"
        await job.update(status=Status.ACTIVE)
        queue = job.get_queue()
        stored = await queue.job(job.key)
        assert stored is not None and stored.status is Status.ABORTED
        assert not await queue.is_current(job, "w1")
        # ... and its heartbeats (update() without a status) do not revive it either.
        await job.update()
        stored = await queue.job(job.key)
        assert stored is not None and stored.status is Status.ABORTED


async def test_a_live_job_stays_current_for_its_worker_only(
    client: aioredis.Redis, redis_server: RedisServer, image: Path, tmp_path: Path
) -> None:
    """The conditional update still lets the worker that holds a job mark it active and heartbeat it; is_current is true for it and false for any other worker."""
    await register(client, "w1")
    async with backend_for(redis_server.url) as backend:
        await wait_for(lambda: backend.capacity() == 1, 10, "a slot")
        run = Run(backend, request("j1", image, tmp_path))
        job = await take(client, "w1")
        queue = job.get_queue()
        touched = (await queue.job(job.key)).touched
        await asyncio.sleep(0.01)
        await job.update()
        stored = await queue.job(job.key)
        assert stored.status is Status.ACTIVE and stored.touched > touched
        assert await queue.is_current(job, "w1") and not await queue.is_current(job, "w2")
        await send(client, job, "w1", '{"type": "failed", "kind": "error", "message": "no"}')
        final = await run.final()
    assert final == Failed("error", "no")


# -- item 4: secrets -------------------------------------------------------------------------------


def test_redacted_hides_every_form_of_password() -> None:
    """User-info passwords, ?password= (and other credential parameters) and unparsable URLs are all hidden."""
    cases = [
        "redis://:s3cret-A@host:6379/0",
        "redis://user:s3cret-A@host:6379/0",
        "redis://host:6379/0?password=s3cret-A",
        "rediss://host:6379/0?ssl_cert_reqs=none&password=s3cret-A&username=bob",
        "redis://host:6379/0?PassWord=s3cret-A",
        "redis://host:6379/0?db=1#s3cret-A",
        "redis://[::1:s3cret-A@host/0",  # urlsplit raises on it
    ]
    for url in cases:
        assert "s3cret-A" not in redacted(url), url
    assert redacted("redis://host:6379/0?db=1") == "redis://host:6379/0?db=1"
    assert "ssl_cert_reqs=none" in redacted(cases[3])


@pytest.mark.timeout(60)
async def test_wrong_password_is_logged_as_an_authentication_failure_without_the_password(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Against a server with requirepass, a `?password=` that is wrong is logged as an authentication failure, and the password appears in no log record."""
    caplog.set_level(logging.DEBUG)
    with RedisServer(tmp_path / "auth", password="right-pass-1") as server:
        url = f"{server.url}?password=wrong-pass-2"
        async with backend_for(url) as backend:
            await wait_for(lambda: "authentication" in (backend.detail or ""), 10, "the refusal")
            assert "wrong-pass-2" not in repr(backend) and "wrong-pass-2" not in str(backend.info)
        good = f"{server.url}?password=right-pass-1"
        async with backend_for(good) as backend:
            await wait_for(lambda: backend.detail == "waiting for a worker", 10, "a login")
    messages = [r.getMessage() for r in caplog.records]
    assert any("authentication failed" in m for m in messages), messages
    for secret in ("wrong-pass-2", "right-pass-1"):
        assert not [m for m in messages if secret in m]


def run_worker(
    args: list[str], env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "worker", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.timeout(90)
def test_worker_never_echoes_a_malformed_url_and_reads_it_from_the_environment() -> None:
    """A malformed URL (from --redis or ZOETROPE_REDIS_URL) is refused naming its source, without the password; with neither the worker says where to put it."""
    bad = "redis://host:notaport/0?password=hunter2-xyz"
    for args, env, source in (
        (["--redis", bad], {}, "--redis"),
        ([], {"ZOETROPE_REDIS_URL": bad}, "ZOETROPE_REDIS_URL"),
        ([], {"ZOETROPE_REDIS_URL": "http://:hunter2-xyz@host/"}, "ZOETROPE_REDIS_URL"),
    ):
        done = run_worker([*args, "--preset", "ltx-fast"], env)
        assert done.returncode == 2, done
        assert "hunter2-xyz" not in done.stdout + done.stderr
        assert source in done.stderr
    env = {k: v for k, v in os.environ.items() if k != "ZOETROPE_REDIS_URL"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "worker", "--preset", "ltx-fast"],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "ZOETROPE_REDIS_URL" in done.stderr, done


@pytest.mark.timeout(120)
def test_worker_with_a_wrong_password_logs_an_authentication_failure(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A real worker given a wrong ?password= through ZOETROPE_REDIS_URL logs an authentication failure, and its log never shows the password."""
    from tests.tiny_models import build_tiny_model

    model = build_tiny_model("wan21", tmp_path / "tiny")
    with RedisServer(tmp_path / "auth", password="right-pass-1") as server:
        log_path = tmp_path / "worker.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, str(ROOT / "main.py"), "worker", "--model", str(model)],
                cwd=ROOT,
                env={
                    **os.environ,
                    **TIMINGS.to_env(),
                    "PYTHONPATH": str(ROOT),
                    "PYTHONUNBUFFERED": "1",
                    "OMP_NUM_THREADS": "1",
                    "ZOETROPE_REDIS_URL": f"{server.url}?password=wrong-pass-2",
                },
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + 90
            while "authentication failed" not in log_path.read_text(errors="replace"):
                assert proc.poll() is None, log_path.read_text(errors="replace")
                assert time.monotonic() < deadline, log_path.read_text(errors="replace")
                time.sleep(0.2)
        finally:
            proc.terminate()
            proc.wait(30)
    text = log_path.read_text(errors="replace")
    assert "wrong-pass-2" not in text and "password=***" in text, text
