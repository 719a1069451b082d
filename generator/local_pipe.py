"""The local pipe transport: the JSON-lines messages between `LocalBackend` (the bot's side,
generator/backends.py) and its worker process (`StdioServer` in generator/worker.py).

One line is one JSON object. Both ends encode and decode here, so the two cannot drift apart.

- bot -> worker, commands: `generate(request)`, `cancel(job_id)`, `shutdown()`. End of input
  also means shutdown: the parent is gone.
- worker -> bot: `loading(step, total)` while the model loads, then `ready(info)`, or
  `load_error(message)` and exit code 1; per job `job_event(job_id, event)`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from generator.protocol import Event, GenerationRequest, event_to_dict

LINE_LIMIT = 16 * 1024 * 1024  # one line; a Done's facts are small, but never choke on one


def encode_line(message: dict[str, Any]) -> str:
    """One message as a line of JSON, newline included."""
    return json.dumps(message, separators=(",", ":"), allow_nan=False) + "\n"


def decode_line(line: bytes | str) -> dict[str, Any]:
    """One line back into a message; ValueError when it is not a JSON object."""
    message = json.loads(line)
    if not isinstance(message, dict):
        raise ValueError(f"a message must be a JSON object, got {type(message).__name__}")
    return message


# -- commands (bot -> worker) -------------------------------------------------------------------


def generate(request: GenerationRequest) -> dict[str, Any]:
    return {"op": "generate", "request": dataclasses.asdict(request)}


def cancel(job_id: str) -> dict[str, Any]:
    return {"op": "cancel", "job_id": job_id}


def shutdown() -> dict[str, Any]:
    return {"op": "shutdown"}


# -- events (worker -> bot) ---------------------------------------------------------------------


def loading(step: int, total: int) -> dict[str, Any]:
    return {"type": "loading", "step": int(step), "total": int(total)}


def ready(info: dict[str, Any]) -> dict[str, Any]:
    return {"type": "ready", **info}


def load_error(message: str) -> dict[str, Any]:
    return {"type": "error", "stage": "load", "message": message}


def job_event(job_id: str, event: Event) -> dict[str, Any]:
    return {"job_id": job_id, "event": event_to_dict(event)}
