"""Rule: an interaction gets one initial response, within 3 s of its creation.

Past the deadline Discord shows the user "This interaction failed" and the callback answers
404 10062 (Unknown interaction); a second initial response answers 400 40060.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from tests.discord_server.errors import DiscordHTTPError, _unknown

if TYPE_CHECKING:
    from tests.discord_server.interaction import Interaction


# Discord docs, "Receiving and Responding": an initial response within 3 seconds.
# https://discord.com/developers/docs/interactions/receiving-and-responding
ACK_TIMEOUT = 3.0


class AckDeadlineRule:
    """Marks unanswered interactions failed when their 3 s run out."""

    def _check_initial_response(self, ix: Interaction) -> float:
        """Seconds since ``ix`` was created; raises unless this is its first, timely response."""
        if ix.response_type is not None:
            raise DiscordHTTPError(400, 40060, "Interaction has already been acknowledged.")
        elapsed = self.clock.monotonic() - ix.created_at
        if ix.failed or elapsed >= self.ack_timeout:
            ix.failed = True
            raise _unknown("interaction", 10062)
        return elapsed

    def _schedule_ack_deadline(self) -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(self.ack_timeout + 0.02, self._check_deadlines)

    def _check_deadlines(self) -> None:
        now = self.clock.monotonic()
        changed = False
        for ix in self.interactions:
            if (
                ix.response_type is None
                and not ix.failed
                and now - ix.created_at >= self.ack_timeout
            ):
                ix.failed = True
                changed = True
        if changed:
            self._notify()

    def _on_clock_advance(self) -> None:
        self._check_deadlines()
        self._notify()
