"""A remote worker's side of one attempt's event stream in Redis (`<ns>:events:<attempt>`).

Progress is coalesced (only the latest is sent when the generation thread outruns Redis) and
dropped while Redis is away; the final event is retried until it lands or FINAL_RETRY_S
passes, and a Done is written in one transaction with the clip, so the event never exists
without it. The entry format is `redis_common.encode_entry`, which the backend decodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from redis import asyncio as aioredis

from generator.protocol import Done, Event, Failed, Progress
from generator.redis_common import DATA_TTL_S, UNREACHABLE, Keys, encode_entry, stop_task

log = logging.getLogger("zoetrope.redis_worker")

FINAL_RETRY_S = 600.0  # how long a finished job's result is retried while Redis is away


class AttemptEvents:
    """Sends one attempt's events to its Redis stream. Progress is coalesced (only the latest
    is sent when the thread outruns Redis) and dropped while Redis is away; the final event is
    retried until it lands or FINAL_RETRY_S passes."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, worker_id: str, key: str) -> None:
        self._redis = redis
        self._keys = keys
        self._worker_id = worker_id
        self._stream = keys.events(key)
        self._key = key
        self._loop = asyncio.get_running_loop()
        self._latest: Progress | None = None
        self._pending = asyncio.Event()
        self._closed = False
        self._task = asyncio.create_task(self._send_progress(), name=f"progress-{key}")

    def progress(self, event: Progress) -> None:
        """Called from the generation thread."""
        self._loop.call_soon_threadsafe(self._set, event)

    def _set(self, event: Progress) -> None:
        self._latest = event
        self._pending.set()

    async def _send_progress(self) -> None:
        while not self._closed:
            await self._pending.wait()
            self._pending.clear()
            event, self._latest = self._latest, None
            if event is None or self._closed:
                continue
            with contextlib.suppress(*UNREACHABLE):
                await self._xadd(event)

    async def _stop_progress(self) -> None:
        self._closed = True
        self._pending.set()  # wakes the sender, which sees the flag and ends
        await stop_task(self._task)

    async def _xadd(self, event: Event, output: bytes | None = None) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            if output is not None:
                # In the same transaction as Done: the event never exists without the clip.
                pipe.set(self._keys.output(self._key), output, ex=DATA_TTL_S)
            fields: Any = encode_entry(event, self._worker_id)
            pipe.xadd(self._stream, fields, maxlen=200, approximate=True)
            pipe.expire(self._stream, DATA_TTL_S)
            await pipe.execute()

    def close(self) -> None:
        self._closed = True
        self._pending.set()

    async def final(self, event: Done | Failed, output: bytes | None = None) -> bool:
        await self._stop_progress()  # no progress may land after the final event
        deadline = time.monotonic() + FINAL_RETRY_S
        backoff = 0.2
        while True:
            try:
                await self._xadd(event, output)
                return True
            except UNREACHABLE as exc:
                if time.monotonic() > deadline:
                    log.error("attempt %s: result lost, Redis unreachable (%s)", self._key, exc)
                    return False
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
