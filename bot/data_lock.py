"""One bot per data dir: an exclusive lock held for the bot's life.

Two bots on one data dir would both resume the same jobs (generating them twice), prune each
other's files and answer every interaction twice. The first bot holds `fcntl.flock` on
`<data_dir>/zoetrope.lock` and writes its pid and start time in it; a second one finds the lock
taken and stops before it opens the database or connects to Discord, saying which process holds
it. The kernel drops the lock when its holder exits, however it exits (a crash, SIGKILL): a lock
file left behind never blocks the next start. The descriptor is not inherited by the worker
processes (Python opens files non-inheritable), so a worker that outlives its bot holds nothing.

flock works on local file systems; on some network file systems it is not shared between
machines, so two machines must not share one data dir.

Imports: nothing of ours.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import time
from pathlib import Path

LOCK_FILE = "zoetrope.lock"


class DataDirBusy(Exception):
    """Another process holds the data dir's lock; `str()` is the one line to print."""

    def __init__(self, data_dir: Path, holder: str) -> None:
        self.data_dir = data_dir
        self.holder = holder
        super().__init__(
            f"another Zoetrope bot ({holder}) is using the data dir {data_dir}; stop it first, "
            "or give this one its own ZOETROPE_DATA_DIR"
        )


class DataDirLock:
    """The held lock. `DataDirLock.acquire(data_dir)` or raise `DataDirBusy`; `release()`
    (or leaving the `with` block) frees it."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, data_dir: Path, *, now: float | None = None) -> DataDirLock:
        data_dir.mkdir(parents=True, exist_ok=True)
        path = data_dir / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DataDirBusy(data_dir, _holder(path)) from None
        except BaseException:
            os.close(fd)
            raise
        started = time.time() if now is None else now
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} started {_stamp(started)}\n".encode(), 0)
        return cls(path, fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Free the lock (idempotent). The file stays: its content is only read while held."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        os.close(fd)  # closing the only descriptor releases the flock

    def __enter__(self) -> DataDirLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _stamp(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _holder(path: Path) -> str:
    """What the holder wrote ("pid N started T"), as "pid N, started T". It writes right after
    taking the lock, so a read in between can find the file empty: look again briefly."""
    for _ in range(20):
        try:
            text = path.read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            text = ""
        if text.startswith("pid "):
            return text.splitlines()[0][:120].replace(" started ", ", started ", 1)
        time.sleep(0.05)
    return "a process that has not said which"
