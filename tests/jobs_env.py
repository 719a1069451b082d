"""A JobService over a real SQLite file and the fake backend, for the job tests."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

from PIL import Image

from bot import intake
from bot.admission import Limits
from bot.jobs import JobService
from bot.store import Job, Store
from tests.jobs_backend import FakeBackend

PROJECT = Path(__file__).resolve().parent.parent
NOON = 1_795_694_400.0  # 2026-11-26 12:00 UTC


class Clock:
    """The service's clock, moved by hand."""

    def __init__(self, now: float = NOON) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Env:
    """A JobService over a real SQLite file and the test backend, with helpers."""

    def __init__(self, tmp: Path, backend: FakeBackend, limits: Limits | None, **kw) -> None:
        self.tmp = tmp
        self.backend = backend
        self.clock = Clock()
        self.store = Store(tmp / "zoetrope.db")
        self.service = JobService(
            self.store,
            backend,
            data_dir=tmp,
            limits=limits,
            clock=self.clock,
            position_interval=0.01,
            poll_interval=0.02,
            **kw,
        )
        self.events: list = []
        self.service.add_listener(self.events.append)
        self.sha = ""

    async def start(self):
        report = await self.service.start()
        self.sha = self.image()
        return report

    def image(self, colour=(200, 30, 30)) -> str:
        buffer = io.BytesIO()
        Image.new("RGB", (128, 96), colour).save(buffer, "PNG")
        return intake.accept_image(buffer.getvalue(), inputs_dir=self.service.inputs_dir).sha256

    async def submit(self, **kw) -> Job:
        args = dict(
            guild_id=1, channel_id=10, user_id=100, prompt="waves roll in", image_sha256=self.sha
        )
        args.update(kw)
        return await self.service.submit(**args)

    async def wait(self, job_id: str, *statuses: str, timeout: float = 10.0) -> Job:
        statuses = statuses or ("done", "failed", "cancelled")
        async with asyncio.timeout(timeout):
            while True:
                job = self.store.require_job(job_id)
                if job.status in statuses:
                    return job
                await asyncio.sleep(0.005)

    async def until(self, predicate, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.005)

    def of(self, job_id: str, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind) and e.job.id == job_id]

    async def close(self) -> None:
        await self.service.close()
        self.store.close()
