"""Where generation runs, behind one interface the bot codes against (DESIGN.md §3).

`LocalBackend` keeps one long-lived worker process (`python -m generator.worker`) per GPU and
talks to it over pipes with JSON lines (generator/local_pipe.py). Torch-free: the bot imports
this module, the worker process is the only one that imports torch. The Redis backend
(generator/redis_backend.py) implements the same `Backend` protocol (generator/protocol.py).

Usage::

    backend = LocalBackend("wan-480p-fast")
    await backend.start()                       # returns at once; the model loads meanwhile
    async for event in backend.submit(request):  # Progress..., then one Done or Failed
        ...
    await backend.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

from generator import local_pipe
from generator.protocol import (
    BackendClosed,
    BackendState,
    Event,
    Failed,
    GenerationRequest,
    Progress,
    WorkerStartError,
    event_from_dict,
)

log = logging.getLogger("zoetrope.backend")

_PROJECT_ROOT = Path(__file__).resolve().parent.parent
_STDERR_TAIL = 30  # lines of the worker's log kept to explain a crash
_CRASH_WINDOW_S = 120.0
_MAX_CRASHES = 3  # crashes within the window before we stop restarting and report "failed"


@dataclasses.dataclass(eq=False)
class _Job:
    request: GenerationRequest
    events: asyncio.Queue[Event] = dataclasses.field(default_factory=asyncio.Queue)
    finished: bool = False
    cancel_sent: bool = False

    @property
    def job_id(self) -> str:
        return self.request.job_id

    def put(self, event: Event) -> None:
        if self.finished:
            return
        if not isinstance(event, Progress):
            self.finished = True
        self.events.put_nowait(event)


class LocalBackend:
    """One worker process on this machine, one job at a time.

    - Never blocks the event loop: the worker is an asyncio subprocess.
    - Jobs submitted while the model loads wait and see `Progress(0, 0, "load")`.
    - A worker that dies mid-job fails that job with `Failed("crash")` and is restarted.
    - `env` holds extra environment variables for the worker, on top of ours.

    One model, one pool: `route()` is always None, `served()` names nothing beyond the
    built-in presets, `total_slots()` is `slots`.
    """

    slots = 1

    def __init__(
        self,
        model: str,
        *,
        device: str | None = None,
        python: str = sys.executable,
        env: Mapping[str, str] | None = None,
        start_timeout: float = 900.0,
        stop_timeout: float = 10.0,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        if not model or not isinstance(model, str):
            raise ValueError(f"model must be a preset name, 'auto' or a folder, got {model!r}")
        if start_timeout <= 0:
            raise ValueError(f"start_timeout must be positive, got {start_timeout!r}")
        self.model = model
        self.device = device
        self.python = python
        self.env = dict(env or {})
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.on_change = on_change

        self._state = BackendState.STOPPED
        self._proc: asyncio.subprocess.Process | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._restart: asyncio.Task[None] | None = None
        self._state_changed = asyncio.Event()
        self._waiting: deque[_Job] = deque()
        self._running: _Job | None = None
        self._jobs: dict[str, _Job] = {}
        self._info: dict[str, Any] = {}
        self._error: str | None = None
        self._load_error: str | None = None
        self._stderr_tail: deque[str] = deque(maxlen=_STDERR_TAIL)
        self._crashes: deque[float] = deque()
        self._closing = False
        self.restarts = 0  # worker processes started after the first one

    # -- what the bot reads -------------------------------------------------------------------

    @property
    def state(self) -> BackendState:
        return self._state

    @property
    def ready(self) -> bool:
        return self._state is BackendState.READY

    @property
    def error(self) -> str | None:
        """Why the backend is `failed`, in words a user can read."""
        return self._error

    @property
    def detail(self) -> str | None:
        """No status note beyond `state` and `error`: the only wait is the model loading."""
        return None

    @property
    def info(self) -> dict[str, Any]:
        """What the worker said when it became ready (model, preset, fps, device...)."""
        return dict(self._info)

    @property
    def pid(self) -> int | None:
        """The worker process id, None when no worker runs."""
        return self._proc.pid if self._proc is not None else None

    def route(self, preset: str | None) -> str | None:
        return None

    def capacity(self, pool: str | None = None) -> int:
        """Free slots now: 1 when no job is held (also while the model loads), else 0."""
        if self._state in (BackendState.FAILED, BackendState.CLOSED):
            return 0
        busy = len(self._waiting) + (self._running is not None)
        return max(0, self.slots - busy)

    def total_slots(self, pool: str | None = None) -> int:
        return self.slots

    def served(self) -> dict[str, int]:
        return {}

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the worker if none runs. Returns at once: the model loads in the background
        (see `wait_ready`). From `failed`, tries again."""
        if self._state is BackendState.CLOSED:
            raise BackendClosed("the backend is closed")
        if self._state in (BackendState.STOPPED, BackendState.FAILED):
            self._crashes.clear()
            await self._spawn()

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until the model is loaded; raises WorkerStartError if it cannot be."""
        async with asyncio.timeout(timeout):
            while True:
                if self._state is BackendState.READY:
                    return
                if self._state is BackendState.FAILED:
                    raise WorkerStartError(self._error or "the generator failed to start")
                if self._state is BackendState.CLOSED:
                    raise BackendClosed("the backend is closed")
                if self._state is BackendState.STOPPED:
                    await self.start()
                self._state_changed.clear()
                await self._state_changed.wait()

    async def close(self) -> None:
        """Shut the worker down: the shutdown op, then SIGTERM, then SIGKILL after
        `stop_timeout` each. Jobs still held end with Failed("requeue"): they did not fail,
        the generator stopped, so the job layer queues them again without counting an
        attempt. Idempotent."""
        if self._state is BackendState.CLOSED and self._proc is None:
            return
        self._closing = True
        self._set_state(BackendState.CLOSED)
        if self._restart is not None:
            # _spawn returns at once when closing, or has spawned a worker we stop below
            with contextlib.suppress(Exception):
                await self._restart
        proc, watcher = self._proc, self._watcher
        if proc is not None and watcher is not None:
            self._send(local_pipe.shutdown())
            with contextlib.suppress(Exception):
                if proc.stdin is not None:
                    proc.stdin.close()  # EOF also means shutdown to the worker
            for stop in (None, proc.terminate, proc.kill):
                if stop is not None and proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        stop()
                try:
                    await asyncio.wait_for(asyncio.shield(watcher), self.stop_timeout)
                    break
                except TimeoutError:
                    log.warning("worker %s did not stop in %.0f s", proc.pid, self.stop_timeout)
            await watcher
        for job in self._held_jobs():
            job.put(Failed("requeue", "The generator shut down before this job finished."))
        self._waiting.clear()
        self._running = None

    # -- jobs ---------------------------------------------------------------------------------

    async def submit(self, request: GenerationRequest) -> AsyncIterator[Event]:
        """Run one request. Yields Progress events, then one Done or Failed."""
        if not isinstance(request, GenerationRequest):
            raise TypeError(f"request must be a GenerationRequest, got {type(request).__name__}")
        job_id = request.job_id
        if self._state is BackendState.CLOSED:
            yield Failed("crash", "The generator is shut down.")
            return
        if job_id in self._jobs:
            yield Failed("bad_request", f"job {job_id!r} is already submitted")
            return
        if self._state is BackendState.FAILED:
            yield Failed("error", f"The generator failed to start: {self._error}")
            return
        job = _Job(request)
        self._jobs[job_id] = job
        try:
            self._waiting.append(job)
            if self._state is not BackendState.READY:
                job.put(Progress(0, 0, "load"))
            if self._state is BackendState.STOPPED:
                await self._spawn()  # a failure to spawn fails the waiting jobs, this one too
            self._pump()
            while True:
                event = await job.events.get()
                yield event
                if not isinstance(event, Progress):
                    return
        finally:
            self._jobs.pop(job_id, None)
            if not job.finished:
                # The caller stopped listening (or was cancelled): drop the job.
                job.finished = True
                self._drop(job)

    async def cancel(self, job_id: str) -> None:
        """Cancel a job: a waiting one ends with Failed("cancelled") at once; a running one
        stops at its next denoising step. Unknown or finished jobs are ignored."""
        job = self._jobs.get(job_id)
        if job is None or job.finished:
            return
        if job in self._waiting:
            self._waiting.remove(job)
            job.put(Failed("cancelled", "Cancelled before it started."))
        elif job is self._running and not job.cancel_sent:
            job.cancel_sent = True
            self._send(local_pipe.cancel(job_id))

    # -- internals ----------------------------------------------------------------------------

    def _held_jobs(self) -> list[_Job]:
        return ([self._running] if self._running else []) + list(self._waiting)

    def _drop(self, job: _Job) -> None:
        if job in self._waiting:
            self._waiting.remove(job)
        elif job is self._running and not job.cancel_sent:
            job.cancel_sent = True
            self._send(local_pipe.cancel(job.job_id))

    def _set_state(self, state: BackendState) -> None:
        if self._closing and state is not BackendState.CLOSED:
            return  # a late "ready" from a worker being shut down changes nothing
        if state is not self._state:
            log.info("backend %s -> %s", self._state.value, state.value)
            self._state = state
        self._state_changed.set()

    def _worker_command(self) -> list[str]:
        cmd = [self.python, "-m", "generator.worker", "--model", self.model]
        if self.device:
            cmd += ["--device", self.device]
        return cmd

    async def _spawn(self) -> None:
        if self._closing:
            return
        env = {**os.environ, **self.env}
        # The worker imports `generator` from this checkout whatever the caller's cwd is.
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(_PROJECT_ROOT), env.get("PYTHONPATH", "")) if p
        )
        self._load_error = None
        self._stderr_tail.clear()
        self._set_state(BackendState.STARTING)
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._worker_command(),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                limit=local_pipe.LINE_LIMIT,
            )
        except OSError as exc:
            self._fail_start(f"cannot start the worker process ({self.python}): {exc}")
            return
        self._proc = proc
        log.info("worker %s started for model %r", proc.pid, self.model)
        self._watcher = asyncio.create_task(self._watch(proc), name=f"worker-{proc.pid}")

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None and proc.stderr is not None
        stderr_task = asyncio.create_task(self._drain_stderr(proc.stderr, proc.pid))
        loop = asyncio.get_running_loop()
        timer = loop.call_later(self.start_timeout, self._start_timed_out, proc)
        try:
            while line := await proc.stdout.readline():
                self._on_line(line)
                if self._state is BackendState.READY:
                    timer.cancel()
        except (ValueError, asyncio.LimitOverrunError) as exc:
            log.error("worker %s sent an unreadable event line (%s); stopping it", proc.pid, exc)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        finally:
            timer.cancel()
        code = await proc.wait()
        # A grandchild (ffmpeg) may hold the log pipe for a moment after a kill -9.
        try:
            await asyncio.wait_for(stderr_task, 5.0)
        except TimeoutError:
            log.warning("worker %s log pipe still open after exit", proc.pid)
        self._on_exit(proc, code)

    async def _drain_stderr(self, stream: asyncio.StreamReader, pid: int) -> None:
        wlog = logging.getLogger("zoetrope.worker")
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # a line over the limit: skip what is buffered
                continue
            if not line:
                return
            text = line.decode("utf-8", "replace").rstrip()
            if text:
                self._stderr_tail.append(text)
                wlog.info("[%s] %s", pid, text)

    def _on_line(self, line: bytes) -> None:
        try:
            message = local_pipe.decode_line(line)
        except ValueError:
            log.warning("worker sent a line that is not a JSON object: %r", line[:200])
            return
        kind = message.get("type")
        if kind == "ready":
            self._info = {k: v for k, v in message.items() if k != "type"}
            self._set_state(BackendState.READY)
            self._pump()
            self._changed()
        elif kind == "loading":
            step, total = int(message.get("step", 0)), int(message.get("total", 0))
            for job in self._waiting:
                job.put(Progress(step, total, "load"))
        elif kind == "error":
            self._load_error = str(message.get("message") or "unknown error")
        elif "job_id" in message and "event" in message:
            self._on_job_event(str(message["job_id"]), message["event"])
        else:
            log.warning("worker sent an unknown message: %r", message)

    def _on_job_event(self, job_id: str, data: dict[str, Any]) -> None:
        job = self._running
        if job is None or job.job_id != job_id:
            log.warning("event for job %r which is not running: %r", job_id, data)
            return
        try:
            event = event_from_dict(data)
        except (TypeError, ValueError) as exc:
            log.warning("worker sent a bad event for %r (%s): %r", job_id, exc, data)
            return
        job.put(event)
        if not isinstance(event, Progress):
            self._running = None
            self._pump()
            self._changed()

    def _pump(self) -> None:
        """Hand the next waiting job to the worker when it is ready and idle."""
        if self._state is not BackendState.READY or self._running is not None:
            return
        while self._waiting:
            job = self._waiting.popleft()
            if job.finished:
                continue
            self._running = job
            self._send(local_pipe.generate(job.request))
            return

    def _send(self, message: dict[str, Any]) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.stdin.is_closing():
            return
        try:
            proc.stdin.write(local_pipe.encode_line(message).encode())
        except (BrokenPipeError, ConnectionResetError) as exc:
            # The watcher sees the exit and reports it; nothing to do here.
            log.warning("cannot write to worker %s: %s", proc.pid, exc)

    def _start_timed_out(self, proc: asyncio.subprocess.Process) -> None:
        if self._proc is proc and self._state is BackendState.STARTING:
            self._load_error = f"the model did not load within {self.start_timeout:.0f} s"
            log.error("worker %s: %s; killing it", proc.pid, self._load_error)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()

    def _on_exit(self, proc: asyncio.subprocess.Process, code: int) -> None:
        if proc is not self._proc:
            return
        self._proc = None
        self._watcher = None
        how = _describe_exit(code)
        if self._closing:
            log.info("worker %s stopped (%s)", proc.pid, how)
            return
        loaded = self._state is BackendState.READY
        tail = self._stderr_tail[-1] if self._stderr_tail else ""
        if self._running is not None:
            job, self._running = self._running, None
            log.error("worker %s died (%s) while running job %s", proc.pid, how, job.job_id)
            job.put(Failed("crash", f"The generator process died ({how}) while running this job."))
        if not loaded:
            reason = self._load_error or f"the worker exited ({how}) while loading: {tail}"
            self._fail_start(reason)
            return
        now = time.monotonic()
        self._crashes.append(now)
        while self._crashes and now - self._crashes[0] > _CRASH_WINDOW_S:
            self._crashes.popleft()
        if len(self._crashes) > _MAX_CRASHES:
            self._fail_start(f"the worker crashed {len(self._crashes)} times in a row ({how})")
            return
        log.warning("worker %s exited (%s); starting a fresh one", proc.pid, how)
        self.restarts += 1
        self._set_state(BackendState.STARTING)  # held jobs wait for the new worker
        self._restart = asyncio.create_task(self._spawn(), name="worker-restart")
        self._restart.add_done_callback(_log_task_error)

    def _changed(self) -> None:
        if self.on_change is not None:
            try:
                self.on_change()
            except Exception:
                log.exception("on_change callback failed")

    def _fail_start(self, reason: str) -> None:
        log.error("generator failed to start: %s", reason)
        self._error = reason
        self._set_state(BackendState.FAILED)
        for job in list(self._waiting):
            job.put(Failed("error", f"The generator failed to start: {reason}"))
        self._waiting.clear()


def _describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exit code {code}"


def _log_task_error(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background task %s failed", task.get_name(), exc_info=task.exception())
