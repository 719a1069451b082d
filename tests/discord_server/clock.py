"""The server's clock, which tests can advance to expire deadlines and tokens."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable


class Clock:
    """Time as the server sees it: real time plus an offset that tests can advance.

    Interaction deadlines (3 s), token lifetimes (15 min), nonce windows, attachment URL expiry
    and the per-day command-create count all read this clock.
    """

    def __init__(self) -> None:
        self.offset = 0.0
        self._listeners: list[Callable[[], None]] = []

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    def time(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        """Jump forward by ``seconds`` (e.g. 16 * 60 to kill every interaction token)."""
        if seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds!r}")
        self.offset += seconds
        for listener in list(self._listeners):
            listener()

    def on_advance(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat()
