"""The bot's side of the content check: the classifier runs in a child process.

Why a child: the model (onnxruntime plus open_nsfw's ~24 MB of weights, about 100 MB resident
once loaded) must not live in the bot process, which stays light, and a check (~150 ms of CPU
per image) must never block the event loop. One spawned process (not forked: the parent's
threads and sockets must not be copied) serves checks one at a time; the bot awaits them.

Bounded and timed: at most `max_pending` checks wait or run at once; one more is refused at
once (`RULE_BUSY`) rather than queued without limit. A check that takes longer than
`timeout_s` is refused, its child is killed (it may be stuck in native code) and a fresh one
starts for the next check. Every failure is a refusal: nothing is ever allowed unchecked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from generator import safety
from generator.safety import (
    DEFAULT_CLIP_SAMPLES,
    RULE_BUSY,
    RULE_UNAVAILABLE,
    SafetyPolicy,
    Verdict,
    refusal,
)

log = logging.getLogger(__name__)

DEFAULT_FACTORY = "generator.safety:OpenNsfwClassifier"


class SafetyClient:
    """Runs content checks in a child process. `start()` loads the model there and says which
    check is active; `check_image` / `check_clip` never raise, they return a Verdict.

    `factory` is "module:callable" building the classifier in the child (tests pass a
    test-only one); `factory_kwargs` must be plain data."""

    def __init__(
        self,
        *,
        factory: str = DEFAULT_FACTORY,
        factory_kwargs: dict[str, Any] | None = None,
        max_pending: int = 16,
        timeout_s: float = 30.0,
        start_timeout_s: float = 60.0,
        clip_samples: int = DEFAULT_CLIP_SAMPLES,
    ) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending {max_pending}: must be at least 1")
        if timeout_s <= 0 or start_timeout_s <= 0:
            raise ValueError(f"timeout_s {timeout_s} / start_timeout_s {start_timeout_s}: > 0")
        if clip_samples < 1:
            raise ValueError(f"clip_samples {clip_samples}: must be at least 1")
        self._factory = factory
        self._factory_kwargs = dict(factory_kwargs or {})
        self._max_pending = max_pending
        self._timeout_s = timeout_s
        self._start_timeout_s = start_timeout_s
        self._clip_samples = clip_samples
        self._pending = 0
        self._pool: ProcessPoolExecutor | None = None
        self._pid: int | None = None
        self._status: dict[str, Any] = {"active": False, "name": None, "error": "not started"}
        self._restart = asyncio.Lock()
        self._closed = False

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> str:
        """Start the child and load the model; returns the start-up line saying which check is
        active (or why none is: then every check refuses)."""
        await self._ensure_pool()
        return self.describe()

    def describe(self) -> str:
        status = self._status
        if status.get("active"):
            return f"content check active: {status['name']} (child process {self._pid})"
        return f"content check UNAVAILABLE, every job will be refused: {status.get('error')}"

    @property
    def active(self) -> bool:
        return bool(self._status.get("active"))

    @property
    def child_pid(self) -> int | None:
        return self._pid

    async def close(self) -> None:
        self._closed = True
        await self._drop_pool()

    async def __aenter__(self) -> SafetyClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- checks ---------------------------------------------------------------------------------

    async def check_image(
        self, path: str | Path, policy: SafetyPolicy, channel_is_age_restricted: bool
    ) -> Verdict:
        """The input check (a stored input image on disk) before anything is queued."""
        return await self._check("image", path, policy, channel_is_age_restricted)

    async def check_clip(
        self, path: str | Path, policy: SafetyPolicy, channel_is_age_restricted: bool
    ) -> Verdict:
        """The output check (frames sampled from the finished MP4) before it is posted."""
        return await self._check("clip", path, policy, channel_is_age_restricted)

    async def _check(
        self, kind: str, path: str | Path, policy: SafetyPolicy, age_restricted: bool
    ) -> Verdict:
        if self._closed:
            return refusal(RULE_UNAVAILABLE, "The content check has been shut down.")
        if self._pending >= self._max_pending:
            return refusal(
                RULE_BUSY, "The content check is busy right now; please try again in a minute."
            )
        self._pending += 1
        try:
            return await self._run(kind, path, policy, age_restricted)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # our caller is being cancelled: let it
            # close() cancelled the queued work under us: a refusal, not a cancelled caller.
            return refusal(RULE_UNAVAILABLE, "The content check was shut down.")
        except Exception:
            log.exception("content check of %s failed", kind)
            return refusal(RULE_UNAVAILABLE, "The content check failed, so it was refused.")
        finally:
            self._pending -= 1

    async def _run(
        self, kind: str, path: str | Path, policy: SafetyPolicy, age_restricted: bool
    ) -> Verdict:
        args = (kind, str(path), policy.to_dict(), bool(age_restricted), self._clip_samples)
        loop = asyncio.get_running_loop()
        for attempt in (1, 2):
            pool = await self._ensure_pool()
            if pool is None:
                return refusal(RULE_UNAVAILABLE, self._status.get("error") or "not available")
            try:
                future = loop.run_in_executor(pool, safety.worker_check, *args)
            except (BrokenProcessPool, RuntimeError):
                # The child died while idle (or the pool was shut down after a timeout): this
                # check never started, so it may safely go to a fresh child, once.
                await self._forget(pool)
                if attempt == 2:
                    raise
                continue
            try:
                return Verdict.from_dict(await asyncio.wait_for(future, self._timeout_s))
            except TimeoutError:
                log.warning("content check of %s timed out after %ss", kind, self._timeout_s)
                await self._kill_child(pool)
                return refusal(
                    RULE_UNAVAILABLE,
                    f"The content check took longer than {self._timeout_s:g} s, so it was refused.",
                )
            except BrokenProcessPool:
                # The child died during this check (a timeout of another check killed it, or
                # it crashed): this one is refused; the next check starts a fresh child.
                await self._forget(pool)
                return refusal(RULE_UNAVAILABLE, "The content check stopped unexpectedly.")
        raise AssertionError("unreachable")

    # -- the child ------------------------------------------------------------------------------

    async def _ensure_pool(self) -> ProcessPoolExecutor | None:
        async with self._restart:
            if self._pool is not None:
                return self._pool if self._status.get("active") else None
            if self._closed:
                return None
            pool = ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=safety.worker_init,
                initargs=(self._factory, self._factory_kwargs),
            )
            loop = asyncio.get_running_loop()
            try:
                status = await asyncio.wait_for(
                    loop.run_in_executor(pool, safety.worker_describe), self._start_timeout_s
                )
            except (TimeoutError, BrokenProcessPool, OSError) as exc:
                pool.shutdown(wait=False, cancel_futures=True)
                self._status = {"active": False, "name": None, "error": f"child failed: {exc!r}"}
                log.error("content check child did not start: %r", exc)
                return None
            self._pool, self._pid, self._status = pool, status["pid"], status
            log.info(self.describe())
            return pool if status["active"] else None

    async def _kill_child(self, pool: ProcessPoolExecutor) -> None:
        pid = self._pid
        await self._forget(pool)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):  # it may have died on its own
                os.kill(pid, signal.SIGKILL)
        await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)

    async def _forget(self, pool: ProcessPoolExecutor) -> None:
        async with self._restart:
            if self._pool is pool:
                self._pool, self._pid = None, None

    async def _drop_pool(self) -> None:
        async with self._restart:
            pool, self._pool, self._pid = self._pool, None, None
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)
