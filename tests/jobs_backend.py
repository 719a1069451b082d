"""A test backend: the Backend protocol of generator/protocol.py in plain asyncio.

It is a fake at our own seam (the job layer's view of a GPU worker), with knobs the real
worker cannot offer on demand: scripted failures per submit, a gate that holds jobs
mid-run, and MP4 outputs written with the real encoder when a test needs real clips.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np

from generator import encode
from generator.presets import PRESETS
from generator.protocol import (
    BackendState,
    ClipFacts,
    Done,
    Event,
    Failed,
    GenerationRequest,
    Progress,
)

# Outcomes a submit can be scripted to have ("requeue": the worker gives the job back after
# its first step, as a stopping worker does).
OUTCOMES = ("ok", "crash", "oom", "error", "bad_request", "raise", "silent", "requeue")


class FakeBackend:
    """`slots` concurrent jobs; each runs `steps` denoise steps then writes its output.

    - `script(*outcomes)`: the next submits end with these outcomes, in order ("ok" after).
    - `hold()` / `release()`: jobs stop before their first step until released.
    - `real_video=True`: outputs are real MP4s (frames: request.num_frames, else the
      preset's frames for the duration, else `frames`), else a few placeholder bytes.
    """

    def __init__(
        self,
        *,
        slots: int = 1,
        steps: int = 3,
        step_delay: float = 0.0,
        real_video: bool = False,
        frames: int = 9,
        size: int = 16,
        fps: int = 8,
        ready: bool = True,
    ) -> None:
        self.slots = slots
        self.steps = steps
        self.step_delay = step_delay
        self.real_video = real_video
        self.frames = frames
        self.size = size
        self.fps = fps
        self._ready = ready
        self.on_change: Callable[[], None] | None = None
        self.closed = False
        self.requests: list[GenerationRequest] = []  # every submit, in order
        self.cancels: list[str] = []
        self.held: dict[str, asyncio.Event] = {}  # job id -> its cancel event
        self._script: deque[str] = deque()
        self._gate = asyncio.Event()
        self._gate.set()

    # -- the Backend protocol -----------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._ready and not self.closed

    @property
    def state(self) -> BackendState:
        if self.closed:
            return BackendState.CLOSED
        return BackendState.READY if self._ready else BackendState.STARTING

    @property
    def error(self) -> str | None:
        return None

    @property
    def detail(self) -> str | None:
        return None

    async def start(self) -> None:
        self._ready = True

    async def close(self) -> None:
        self.closed = True

    def route(self, preset: str | None) -> str | None:
        return None  # one pool, as LocalBackend

    def capacity(self, pool: str | None = None) -> int:
        return 0 if self.closed else max(0, self.slots - len(self.held))

    def total_slots(self, pool: str | None = None) -> int:
        return self.slots

    def served(self) -> dict[str, int]:
        return {}

    async def cancel(self, job_id: str) -> None:
        self.cancels.append(job_id)
        event = self.held.get(job_id)
        if event is not None:
            event.set()

    async def submit(self, request: GenerationRequest) -> AsyncIterator[Event]:
        self.requests.append(request)
        cancelled = asyncio.Event()
        self.held[request.job_id] = cancelled
        outcome = self._script.popleft() if self._script else "ok"
        try:
            if not self._ready:
                yield Progress(0, 0, "load")
            for step in range(1, self.steps + 1):
                if await self._wait(cancelled):
                    yield Failed("cancelled", "Cancelled.")
                    return
                yield Progress(step, self.steps, "denoise")
                if step == 1 and outcome != "ok":
                    break
            if outcome == "raise":
                raise ConnectionResetError("worker pipe closed")
            if outcome == "silent":
                return
            if outcome != "ok":
                yield Failed(outcome, f"scripted {outcome}")
                return
            yield Progress(0, 1, "encode")
            facts = await asyncio.to_thread(self._write_output, request)
            yield Done(request.output_path, facts)
        finally:
            self.held.pop(request.job_id, None)

    # -- test knobs ---------------------------------------------------------------------

    def script(self, *outcomes: str) -> None:
        for outcome in outcomes:
            if outcome not in OUTCOMES:
                raise ValueError(f"outcome must be one of {OUTCOMES}, got {outcome!r}")
        self._script.extend(outcomes)

    def hold(self) -> None:
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    def set_ready(self, ready: bool) -> None:
        self._ready = ready

    @property
    def started_ids(self) -> list[str]:
        return [r.job_id for r in self.requests]

    # -- internals ----------------------------------------------------------------------

    async def _wait(self, cancelled: asyncio.Event) -> bool:
        """Wait for the gate (and the step delay); True if the job was cancelled."""
        gate = asyncio.ensure_future(self._gate.wait())
        stop = asyncio.ensure_future(cancelled.wait())
        try:
            await asyncio.wait({gate, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gate.cancel()
            stop.cancel()
        if cancelled.is_set():
            return True
        if self.step_delay:
            await asyncio.sleep(self.step_delay)
        return cancelled.is_set()

    def _frame_count(self, request: GenerationRequest) -> int:
        if request.num_frames is not None:
            return request.num_frames
        preset = PRESETS.get(request.preset or "")
        return preset.frames_for(request.duration) if preset else self.frames

    def _write_output(self, request: GenerationRequest) -> ClipFacts:
        count = self._frame_count(request)
        path = Path(request.output_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.real_video:
            # Each frame a different grey level, so joins and loops can be checked by value.
            levels = np.linspace(16, 240, count).astype(np.uint8)
            frames = np.broadcast_to(
                levels[:, None, None, None], (count, self.size, self.size, 3)
            ).copy()
            encode.encode_mp4(frames, path, fps=self.fps, byte_budget=request.byte_budget)
        else:
            path.write_bytes(b"not really an mp4 " + request.job_id.encode())
        return ClipFacts(
            preset=request.preset or "fake",
            width=self.size,
            height=self.size,
            video_width=self.size,
            video_height=self.size,
            num_frames=count,
            fps=self.fps,
            bytes=path.stat().st_size,
            steps=self.steps,
            gen_seconds=0.01,
            seed=request.seed,
        )


class FleetFakeBackend(FakeBackend):
    """A fleet of workers serving several presets, as the Redis backend sees it.

    `served`: served name -> slots. `capacity(pool)`, `total_slots(pool)` and
    `route(preset)` follow the Redis backend's rules (None: the `default` model's name, or
    any worker when `default` is None); `served()` lists the names. A job submitted while no
    slot of its route is free is recorded in `misrouted` (the real backend would make it
    wait inside itself, out of the bot's fair order), and still runs.
    """

    def __init__(self, served: dict[str, int], *, default: str | None = None, **kw: Any) -> None:
        super().__init__(slots=sum(served.values()), **kw)
        self.served_slots = dict(served)
        self.default = default
        self.placed: dict[str, str] = {}  # running job id -> the served name it runs on
        self.misrouted: list[str] = []

    def route(self, preset: str | None) -> str | None:
        return preset or self.default

    def served(self) -> dict[str, int]:
        return dict(self.served_slots)

    def _free(self) -> dict[str, int]:
        busy = Counter(self.placed.values())
        return {name: n - busy[name] for name, n in self.served_slots.items()}

    def total_slots(self, pool: str | None = None) -> int:
        name = self.route(pool)
        return self.served_slots.get(name, 0) if name else sum(self.served_slots.values())

    def capacity(self, pool: str | None = None) -> int:
        if self.closed:
            return 0
        name = self.route(pool)
        free = self._free()
        if name is None:
            return sum(max(0, n) for n in free.values())
        return max(0, free.get(name, 0))

    async def submit(self, request: GenerationRequest) -> AsyncIterator[Event]:
        name = self.route(request.preset)
        free = self._free()
        if name is None:  # any worker: the served name with the most free slots
            name = max(free, key=lambda served: free[served])
        if free.get(name, 0) <= 0:
            self.misrouted.append(request.job_id)
        self.placed[request.job_id] = name
        try:
            async for event in super().submit(request):
                yield event
        finally:
            self.placed.pop(request.job_id, None)
