"""Fixtures shared by the job tests (tests/test_admission, test_runner, test_estimates,
test_jobs): `make_env` builds a started JobService over a real SQLite file."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.admission import Limits
from tests.jobs_backend import FakeBackend
from tests.jobs_env import Env


@pytest.fixture
async def make_env(tmp_path: Path) -> AsyncIterator:
    envs: list[Env] = []

    async def make(backend: FakeBackend | None = None, limits: Limits | None = None, **kw) -> Env:
        env = Env(tmp_path, backend or FakeBackend(), limits, **kw)
        await env.start()
        envs.append(env)
        return env

    yield make
    for env in envs:
        await env.close()
