"""One bot per data dir (bot/data_lock.py): the lock is exclusive, names its holder, is freed
when its holder dies however it dies, and a ZoetropeBot takes it before opening the store."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bot.data_lock import LOCK_FILE, DataDirBusy, DataDirLock

ROOT = Path(__file__).resolve().parent.parent
STARTED = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC


@pytest.mark.timeout(10)
def test_second_lock_is_refused_naming_the_holder(tmp_path: Path) -> None:
    """A second lock on a held data dir is refused with one line naming the holder's pid and start time; released, the dir can be locked again."""
    data = tmp_path / "data"
    lock = DataDirLock.acquire(data, now=STARTED)
    assert (data / LOCK_FILE).read_text() == f"pid {os.getpid()} started 2027-01-15 08:00:00 UTC\n"
    assert lock._fd is not None and not os.get_inheritable(lock._fd)  # workers do not hold it
    with pytest.raises(DataDirBusy) as refused:
        DataDirLock.acquire(data)
    text = str(refused.value)
    assert "\n" not in text
    assert f"(pid {os.getpid()}, started 2027-01-15 08:00:00 UTC)" in text and str(data) in text
    lock.release()
    lock.release()  # idempotent
    with DataDirLock.acquire(data) as again:
        assert again.held
    assert not again.held


@pytest.mark.timeout(30)
def test_lock_of_a_killed_holder_is_free(tmp_path: Path) -> None:
    """A holder killed with SIGKILL leaves its lock file behind but not the lock: the next start gets it."""
    data = tmp_path / "data"
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from bot.data_lock import DataDirLock; "
            "lock = DataDirLock.acquire(Path(sys.argv[1])); print('held', flush=True); "
            "time.sleep(60)",
            str(data),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "held"
        with pytest.raises(DataDirBusy, match=rf"\(pid {child.pid}, started "):
            DataDirLock.acquire(data)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        if child.stdout is not None:
            child.stdout.close()
    assert (data / LOCK_FILE).is_file()
    with DataDirLock.acquire(data) as lock:
        assert lock.held
        assert (data / LOCK_FILE).read_text().startswith(f"pid {os.getpid()} ")


@pytest.mark.timeout(30)
def test_bot_takes_the_lock_before_opening_the_store(tmp_path: Path) -> None:
    """A ZoetropeBot on a data dir another bot holds stops in setup_hook with DataDirBusy, before the database is created."""
    from bot.app import ZoetropeBot
    from bot.config import load_settings

    data = tmp_path / "data"
    settings = load_settings(
        {"DISCORD_TOKEN": "MTIz.test.token", "ZOETROPE_DATA_DIR": str(data)}, env_file=None
    )

    async def start_second() -> None:
        bot = ZoetropeBot(settings)
        with pytest.raises(DataDirBusy):
            await bot.setup_hook()
        assert bot.store is None and bot.session is None

    with DataDirLock.acquire(data):
        asyncio.run(start_second())
    assert not (data / "zoetrope.db").exists()
