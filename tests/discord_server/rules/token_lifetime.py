"""Rule: an interaction token lives 15 minutes.

Followups and edits of the original response go through the token's webhook while it lives;
after that Discord answers 401 50027 (Invalid Webhook Token) and a bot must fall back to its
own channel messages.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from tests.discord_server.errors import DiscordHTTPError

if TYPE_CHECKING:
    from tests.discord_server.interaction import Interaction


# Discord docs, "Receiving and Responding": interaction tokens are valid for 15 minutes.
# https://discord.com/developers/docs/interactions/receiving-and-responding
TOKEN_LIFETIME = 15 * 60.0


class TokenLifetimeRule:
    """Refuses webhook calls with an interaction token older than the lifetime."""

    def _check_token_alive(self, ix: Interaction, request: web.Request) -> None:
        if self.clock.monotonic() - ix.created_at >= self.token_lifetime:
            err = DiscordHTTPError(401, 50027, "Invalid Webhook Token")
            ix.webhook_errors.append((request.method, request.path, 401, 50027))
            raise err
