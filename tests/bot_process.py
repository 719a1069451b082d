"""`python main.py bot` as a real process against the local Discord server: for what only a
separate process shows (a second bot on one data dir, a bot killed with SIGKILL mid-post).

Its log goes to a file beside the data dir (no pipe to fill); its database is read through a
read-only SQLite connection, as another process would.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

from tests.discord_server import FakeDiscord, Guild

ROOT = Path(__file__).resolve().parent.parent


def bot_env(server: FakeDiscord, data_dir: Path, model_dir: Path | None) -> dict[str, str]:
    """The environment of a bot in `data_dir` talking to `server`, nothing inherited that
    could change it (DISCORD_* / ZOETROPE_* of the caller)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISCORD_", "ZOETROPE_"))}
    env.update(
        DISCORD_TOKEN=server.token,
        ZOETROPE_DATA_DIR=str(data_dir),
        DISCORD_API_BASE=server.api_base,
        DISCORD_GATEWAY_URL=server.gateway_url,
        DISCORD_CDN_HOSTS=server.url.removeprefix("http://"),
        OMP_NUM_THREADS="1",
    )
    if model_dir is not None:
        env["ZOETROPE_MODEL"] = str(model_dir)
    return env


class BotProcess:
    """One `main.py bot` process."""

    def __init__(self, proc: asyncio.subprocess.Process, log_path: Path, data_dir: Path) -> None:
        self.proc = proc
        self.log_path = log_path
        self.data_dir = data_dir
        self.started = time.monotonic()

    @classmethod
    async def start(
        cls, server: FakeDiscord, data_dir: Path, *, model_dir: Path | None, name: str
    ) -> BotProcess:
        log_path = data_dir.parent / f"{name}.log"
        with log_path.open("wb") as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                str(ROOT / "main.py"),
                "bot",
                cwd=data_dir.parent,
                env=bot_env(server, data_dir, model_dir),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        return cls(proc, log_path, data_dir)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def connected(self, server: FakeDiscord, guild: Guild, timeout: float = 90) -> None:
        """Wait until this bot holds the guild's live gateway session, then for discord.py's
        own guild-ready wait (2 s) to pass."""
        before = server.identify_count

        def live() -> bool:
            if self.proc.returncode is not None:
                raise AssertionError(f"the bot exited ({self.proc.returncode}):\n{self.log}")
            session = server._session_for(guild.id)
            return server.identify_count > before and session is not None and session.conn

        await server.wait_for(live, timeout=timeout, what="the bot's gateway session")
        await asyncio.sleep(2.5)

    async def wait(self, timeout: float) -> int:
        return await asyncio.wait_for(self.proc.wait(), timeout)

    async def kill(self) -> None:
        """SIGKILL: nothing after this instant runs (no cleanup, no last write)."""
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)
        await self.wait(30)

    async def stop(self) -> None:
        if self.proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            await self.wait(30)
        except TimeoutError:
            await self.kill()


def read_jobs(
    data_dir: Path, where: str = "1", params: tuple[Any, ...] = ()
) -> list[dict[str, Any]]:
    """Job rows of a bot's database, read as another process would (read-only)."""
    conn = sqlite3.connect(f"file:{data_dir / 'zoetrope.db'}?mode=ro", uri=True, timeout=10)
    try:
        conn.row_factory = sqlite3.Row
        rows = conn.execute(f"SELECT * FROM jobs WHERE {where} ORDER BY seq", params).fetchall()
        return [dict(row) for row in rows]
    finally:
        conn.close()
