"""Holding requests: a test pauses matching requests, before or after the server processes
them, until it lets them go (a slow Discord, or a window to act in while a post is in flight).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field


@dataclass(eq=False)
class Hold:
    """Requests matched by ``FakeDiscord.hold``; ``await reached()``, then ``release()``."""

    method: str
    path_regex: re.Pattern[str]
    after: bool  # True: the request is processed (the message exists) and its answer waits
    count: int
    hits: int = 0
    _reached: asyncio.Event = field(default_factory=asyncio.Event)
    _released: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def remaining(self) -> int:
        return self.count - self.hits

    async def reached(self, timeout: float = 30.0) -> None:
        """Wait until a matching request is being held."""
        await asyncio.wait_for(self._reached.wait(), timeout)

    def release(self) -> None:
        """Let every request held here (and any later match) go on."""
        self._released.set()

    async def _wait(self) -> None:
        self._reached.set()
        await self._released.wait()


class RequestHolds:
    """``hold`` arms a hold; the middleware waits on it for a matching request."""

    def hold(self, method: str, path_regex: str, *, after: bool = False, count: int = 1) -> Hold:
        """Hold the next ``count`` requests matching ``method`` and ``path_regex`` (searched in
        the path relative to /api/v10) until ``release()``. ``after=True`` processes the request
        first and holds its answer: the client has not heard back yet, though it happened."""
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count!r}")
        hold = Hold(
            method=method.upper(), path_regex=re.compile(path_regex), after=after, count=count
        )
        self.holds.append(hold)
        return hold

    def _take_hold(self, method: str, path: str) -> Hold | None:
        for hold in self.holds:
            if hold.remaining > 0 and hold.method in ("*", method) and hold.path_regex.search(path):
                hold.hits += 1
                return hold
        return None

    def _release_holds(self) -> None:
        for hold in self.holds:
            hold.release()
