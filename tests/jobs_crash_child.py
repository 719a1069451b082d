"""Run by tests/test_jobs.py as a subprocess: submit jobs into a real SQLite file, one line
per acknowledged job on stdout, until the test kills this process with SIGKILL."""

from __future__ import annotations

import asyncio
import io
import sys
from pathlib import Path

from PIL import Image

from bot import intake
from bot.admission import Limits
from bot.jobs import JobService
from bot.store import Store
from tests.jobs_backend import FakeBackend


async def main(data_dir: Path) -> None:
    store = Store(data_dir / "zoetrope.db")
    backend = FakeBackend(slots=1)
    backend.hold()  # the first job starts and never finishes: it is `running` when killed
    limits = Limits(pending_per_user=10_000, pending_per_guild=10_000, max_queue=10_000)
    service = JobService(store, backend, data_dir=data_dir, limits=limits, position_interval=None)
    await service.start()
    buffer = io.BytesIO()
    Image.new("RGB", (96, 64), (10, 200, 30)).save(buffer, "PNG")
    sha = intake.accept_image(buffer.getvalue(), inputs_dir=service.inputs_dir).sha256
    i = 0
    while True:
        job = await service.submit(
            guild_id=[11, 22, 33][i % 3] if i % 7 else None,
            channel_id=5,
            user_id=100 + (i * 5) % 4,
            prompt=f"clip number {i}",
            image_sha256=sha,
        )
        print(job.id, flush=True)
        i += 1
        await asyncio.sleep(0.001)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
