"""The plain-data contract between the bot and any generation backend.

A request travels to a worker (a child process on this machine, or a remote worker through
Redis) and events travel back. Everything here is JSON-serialisable so that nothing is ever
pickled across a process or machine boundary, and nothing here imports torch or discord.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, Protocol, get_args, runtime_checkable

# Where a job is in its run; the Discord layer shows these to the member.
Stage = Literal["load", "denoise", "decode", "encode"]
# Why a job failed. "crash" and "oom" are retried once by the job layer (an attempt is
# counted); "requeue" is not a failure of the job: the worker gave it back unfinished because
# it was stopping gracefully (a remote worker's SIGTERM, the bot shutting its local worker
# down), so the job layer puts it back at the head of its queue without counting an attempt.
# The rest are final.
FailureKind = Literal["crash", "oom", "cancelled", "bad_request", "error", "requeue"]


@dataclass(slots=True)
class GenerationRequest:
    """One clip to generate. Paths are local to the machine that runs the worker."""

    job_id: str
    image_path: str
    prompt: str
    output_path: str
    seed: int
    negative_prompt: str = ""
    preset: str | None = None
    num_frames: int | None = None  # None: the preset's default (snapped to its frame rule)
    duration: str | None = None  # "short" | "standard" | "long"; ignored when num_frames is set
    variation_seed: int | None = None
    variation_strength: float = 0.0
    byte_budget: int = 10 * 1024 * 1024
    degraded: bool = False  # a retry after OOM: offload, VAE tiling, fewer frames
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerationRequest:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown request fields: {sorted(unknown)}")
        return cls(**data)


@dataclass(slots=True, frozen=True)
class Progress:
    step: int
    total: int
    stage: Stage


# Bounds of the facts a worker reports. Redis is not trusted (DESIGN.md §7): whatever comes
# back is checked against these before the bot stores it. Generous, but finite: a clip's
# size, length and timings stay far inside them on any real model.
_MAX_PIXELS_SIDE = 16_384
_MAX_FRAMES = 100_000
_MAX_BYTES = 1 << 40
_MAX_SEED = 2**64 - 1
_MAX_STEPS = 10_000
_MAX_FRAME_RULE = 64
_MAX_FPS = 1_000.0
_MAX_SECONDS = 1e7
_MAX_TEXT = 2_000
_MAX_ENTRIES = 32  # timings, per-duration frame counts, speed-ups


@dataclass(slots=True, frozen=True)
class ClipFacts:
    """What the worker knows about a clip it made: size, length, timings and the frame rules
    of the model that made it (a `local:` folder has no entry in PRESETS, so the bot learns
    its rules only from here, e.g. to size an Extend).

    `width`/`height` are the generated size; `video_width`/`video_height` the file's, smaller
    when the encoder downscaled to fit the byte budget. `worker`/`served` are set by the Redis
    transport (which machine made it, under which served name).
    """

    width: int
    height: int
    num_frames: int
    fps: float
    bytes: int
    video_width: int
    video_height: int
    fits: bool = True
    crf: int | None = None
    note: str | None = None
    steps: int | None = None
    seed: int | None = None
    preset: str | None = None
    frame_rule: int | None = None  # k in "k * n + 1" of the model actually used
    max_clip_frames: int | None = None  # most frames one generation of that model may make
    max_frames: int | None = None  # cap on the clip's total length after extends
    duration_frames: Mapping[str, int] = field(default_factory=dict)  # "short" -> frames
    gen_seconds: float = 0.0
    encode_seconds: float = 0.0
    timings: Mapping[str, float] = field(default_factory=dict)
    degraded: bool = False  # made with the low-memory settings
    oom_retry: bool = False  # the first try ran out of memory
    device: str | None = None
    speedups: tuple[str, ...] = ()
    lora: str | None = None
    worker: str | None = None
    served: str | None = None

    def __post_init__(self) -> None:
        for name, low, high in _INT_FIELDS:
            value = getattr(self, name)
            if value is None and name in _OPTIONAL:
                continue
            _check_int(name, value, low, high)
        for name in ("fps", "gen_seconds", "encode_seconds"):
            _check_number(
                name, getattr(self, name), 0.0, _MAX_FPS if name == "fps" else _MAX_SECONDS
            )
        if not self.fps > 0:
            raise ValueError(f"clip facts: fps must be positive, got {self.fps!r}")
        for name in ("fits", "degraded", "oom_retry"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(
                    f"clip facts: {name} must be true or false, got {getattr(self, name)!r}"
                )
        for name in ("note", "preset", "device", "lora", "worker", "served"):
            _check_text(name, getattr(self, name))
        _check_mapping("timings", self.timings, lambda k, v: _check_number(k, v, 0.0, _MAX_SECONDS))
        _check_mapping(
            "duration_frames",
            self.duration_frames,
            lambda k, v: _check_int(k, v, 1, _MAX_FRAMES),
        )
        if not isinstance(self.speedups, tuple) or len(self.speedups) > _MAX_ENTRIES:
            raise ValueError(f"clip facts: speedups must be a list of at most {_MAX_ENTRIES} names")
        for item in self.speedups:
            if not isinstance(item, str) or not 0 < len(item) <= 100:
                raise ValueError(f"clip facts: speedups holds {item!r}, not a short name")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["duration_frames"] = dict(self.duration_frames)
        data["timings"] = dict(self.timings)
        data["speedups"] = list(self.speedups)
        return data

    @classmethod
    def from_dict(cls, data: Any) -> ClipFacts:
        """Parse and validate facts read from a pipe or from Redis; raises ValueError naming
        the first bad field."""
        if not isinstance(data, dict):
            raise ValueError(f"clip facts must be an object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"clip facts: unknown fields {sorted(map(str, unknown))}")
        values = dict(data)
        if "speedups" in values:
            speedups = values["speedups"]
            if not isinstance(speedups, list | tuple):
                raise ValueError(f"clip facts: speedups must be a list, got {speedups!r}")
            values["speedups"] = tuple(speedups)
        try:
            return cls(**values)
        except TypeError as exc:  # a required field is missing
            raise ValueError(f"clip facts: {exc}") from None


_OPTIONAL = frozenset({"crf", "steps", "seed", "frame_rule", "max_clip_frames", "max_frames"})
_INT_FIELDS: tuple[tuple[str, int, int], ...] = (
    ("width", 1, _MAX_PIXELS_SIDE),
    ("height", 1, _MAX_PIXELS_SIDE),
    ("video_width", 1, _MAX_PIXELS_SIDE),
    ("video_height", 1, _MAX_PIXELS_SIDE),
    ("num_frames", 1, _MAX_FRAMES),
    ("bytes", 0, _MAX_BYTES),
    ("crf", 0, 63),  # libx264's CRF range
    ("steps", 0, _MAX_STEPS),
    ("seed", 0, _MAX_SEED),
    ("frame_rule", 1, _MAX_FRAME_RULE),
    ("max_clip_frames", 1, _MAX_FRAMES),
    ("max_frames", 1, _MAX_FRAMES),
)


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(
            f"clip facts: {name} must be a whole number from {low} to {high}, got {value!r}"
        )


def _check_number(name: str, value: Any, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"clip facts: {name} must be a number, got {value!r}")
    if not math.isfinite(value) or not low <= value <= high:
        raise ValueError(
            f"clip facts: {name} must be a finite number from {low:g} to {high:g}, got {value!r}"
        )


def _check_text(name: str, value: Any) -> None:
    if value is not None and (not isinstance(value, str) or len(value) > _MAX_TEXT):
        raise ValueError(f"clip facts: {name} must be text of at most {_MAX_TEXT} characters")


def _check_mapping(name: str, value: Any, check: Callable[[str, Any], None]) -> None:
    if not isinstance(value, Mapping) or len(value) > _MAX_ENTRIES:
        raise ValueError(f"clip facts: {name} must be an object of at most {_MAX_ENTRIES} entries")
    for key, item in value.items():
        if not isinstance(key, str) or not 0 < len(key) <= 40:
            raise ValueError(f"clip facts: {name} has the key {key!r}, not a short name")
        check(f"{name}[{key!r}]", item)


@dataclass(slots=True, frozen=True)
class Done:
    path: str
    facts: ClipFacts


@dataclass(slots=True, frozen=True)
class Failed:
    kind: FailureKind
    message: str


Event = Progress | Done | Failed
_FAILURE_KINDS: frozenset[str] = frozenset(get_args(FailureKind))
_STAGES: frozenset[str] = frozenset(get_args(Stage))


def event_to_dict(event: Event) -> dict[str, Any]:
    if isinstance(event, Done):
        return {"type": "done", "path": event.path, "facts": event.facts.to_dict()}
    name = "progress" if isinstance(event, Progress) else "failed"
    return {"type": name, **dataclasses.asdict(event)}


def event_from_dict(data: Any) -> Event:
    """Parse an event read from a pipe or Redis; raises ValueError when it is malformed."""
    if not isinstance(data, dict):
        raise ValueError(f"an event must be an object, got {type(data).__name__}")
    kind = data.get("type")
    fields = {k: v for k, v in data.items() if k != "type"}
    if kind == "progress":
        if set(fields) != {"step", "total", "stage"}:
            raise ValueError(f"a progress event has step, total and stage, got {sorted(fields)}")
        step, total, stage = fields["step"], fields["total"], fields["stage"]
        for name, value in (("step", step), ("total", total)):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 1 << 31:
                raise ValueError(f"progress {name} must be a whole number >= 0, got {value!r}")
        if stage not in _STAGES:
            raise ValueError(f"unknown progress stage {stage!r}")
        return Progress(step, total, stage)
    if kind == "failed":
        if set(fields) != {"kind", "message"}:
            raise ValueError(f"a failed event has kind and message, got {sorted(fields)}")
        message = fields["message"]
        if fields["kind"] not in _FAILURE_KINDS:
            raise ValueError(f"unknown failure kind {fields['kind']!r}")
        if not isinstance(message, str):
            raise ValueError(f"a failure message must be text, got {type(message).__name__}")
        return Failed(fields["kind"], message)
    if kind == "done":
        if set(fields) != {"path", "facts"}:
            raise ValueError(f"a done event has path and facts, got {sorted(fields)}")
        if not isinstance(fields["path"], str):
            raise ValueError("a done event's path must be text")
        return Done(fields["path"], ClipFacts.from_dict(fields["facts"]))
    raise ValueError(f"unknown event type: {kind!r}")


# -- the Backend contract -----------------------------------------------------------------------


class BackendState(StrEnum):
    STOPPED = "stopped"  # not started yet (submit starts it)
    STARTING = "starting"  # worker up, model loading, or waiting for Redis/workers
    READY = "ready"
    FAILED = "failed"  # the model could not be loaded; `error` says why; start() retries
    CLOSED = "closed"


class BackendClosed(RuntimeError):
    """The backend was closed; it cannot start again."""


class WorkerStartError(RuntimeError):
    """The worker could not load the model. `message` is fit to show to a user."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@runtime_checkable
class Backend(Protocol):
    """Everything the bot asks of a place that runs generations (LocalBackend: one worker
    process here; RedisBackend: a fleet of remote workers).

    `submit(request)` is an async generator: iterate it with `async for`. It yields Progress
    events, then exactly one Done or Failed, then stops. Leaving the loop early cancels the
    job. `Failed("requeue")` hands a job back unfinished because the generator is stopping:
    the bot queues it again without counting an attempt.

    Pools: the bot keeps one fair queue per `route(preset)` and hands a job over only when
    `capacity(route)` is positive. A backend with one model routes everything to None.
    """

    # Called (no arguments, on the event loop) when capacity may have grown: a job ended,
    # the model became ready, workers came or went. The bot sets it to its dispatcher's kick.
    on_change: Callable[[], None] | None

    @property
    def state(self) -> BackendState: ...

    @property
    def ready(self) -> bool: ...

    @property
    def error(self) -> str | None:
        """Why the backend is FAILED, in words a member can read; None otherwise."""
        ...

    @property
    def detail(self) -> str | None:
        """A status note for members while not ready ("waiting for a worker"); None if none."""
        ...

    async def start(self) -> None: ...

    def submit(self, request: GenerationRequest) -> AsyncIterator[Event]: ...

    async def cancel(self, job_id: str) -> None: ...

    def route(self, preset: str | None) -> str | None:
        """The pool a job of `preset` runs in (None: the one default pool)."""
        ...

    def capacity(self, pool: str | None = None) -> int:
        """Free slots now in `pool`."""
        ...

    def total_slots(self, pool: str | None = None) -> int:
        """Slots in `pool`, busy or not."""
        ...

    def served(self) -> dict[str, int]:
        """Model names a job may ask for beyond the built-in presets -> their slots."""
        ...

    async def close(self) -> None: ...
