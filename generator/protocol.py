"""The plain-data contract between the bot and any generation backend.

A request travels to a worker (a child process on this machine, or a remote worker through
Redis) and events travel back. Everything here is JSON-serialisable so that nothing is ever
pickled across a process or machine boundary, and nothing here imports torch or discord.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

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


@dataclass(slots=True, frozen=True)
class Done:
    path: str
    meta: dict[str, Any]


@dataclass(slots=True, frozen=True)
class Failed:
    kind: FailureKind
    message: str


Event = Progress | Done | Failed
_EVENT_TYPES: dict[str, type] = {"progress": Progress, "done": Done, "failed": Failed}


def event_to_dict(event: Event) -> dict[str, Any]:
    name = {Progress: "progress", Done: "done", Failed: "failed"}[type(event)]
    return {"type": name, **dataclasses.asdict(event)}


def event_from_dict(data: dict[str, Any]) -> Event:
    data = dict(data)
    kind = data.pop("type", None)
    if kind not in _EVENT_TYPES:
        raise ValueError(f"unknown event type: {kind!r}")
    return _EVENT_TYPES[kind](**data)
