"""A local Discord-compatible server for end-to-end tests (REST v10 + gateway + CDN).

The tests run the real discord.py client against it: point the client at
``server.api_base`` (``discord.http.Route.BASE``) and ``server.gateway_url``
(``discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(...)``).

The server keeps an inspectable model of what a bot did (messages with their attachments'
bytes, interaction responses, edits, command syncs, what each message pinged) and enforces the
Discord rules a bot can break: 3 s to acknowledge an interaction, one initial response, the
15-minute interaction token, upload size, component and modal limits, allowed mentions,
channel permissions, closed DMs, nonce idempotency. Faults (429 with retry_after, 5xx) can be
injected per route. When ``ZOETROPE_DISCORD_SPEC`` names Discord's OpenAPI file, every request
body is validated against it (see tests/discord_spec.py).

Typical use::

    async with FakeDiscord() as server:
        guild = server.add_guild("Test")
        alice = server.add_user("alice")
        server.add_member(guild, alice)
        # ... start a discord.py client with token=server.token ...
        ix = await server.slash(guild, guild.text_channels[0], alice, "animate",
                                options={"prompt": "waves"},
                                attachments=[("cat.png", png_bytes, "image/png")])
        assert await ix.acknowledged() == 5
        await server.wait_for(lambda: ix.followups, what="a followup")

Nothing here imports discord.py: the server speaks the wire protocol only.

Where things live (the rules Discord enforces each have a file under ``rules/``)::

    server.py             FakeDiscord: the parts below put together; start/close, addresses
    state.py              the server's state and constructor knobs, snowflakes, wait_for
    constants.py          API prefix, limits, permission/flag/intent bits, enum values
    errors.py             Discord-format error answers; CommandUnavailable, InteractionFailed
    clock.py              the clock tests advance (deadlines, token lifetimes, URL expiry)
    model.py              users, roles, channels, members, guilds, attachments, messages, commands
    interaction.py        one interaction and what the bot did with it
    world.py              building the world from a test (add_guild, add_member, ...)
    inspection.py         reading back what the bot did (messages, commands, requests)
    user_actions.py       a user runs slash / autocomplete / click / submit_modal
    messages.py           the message store: create, edit, delete, attachments, payloads
    http.py               middleware: request records, auth, body parsing, rate-limit headers
    spec_checks.py        every request body validated against Discord's OpenAPI spec
    faults.py             injected 429s and 5xx
    holds.py              requests held (before or after processing) until the test lets go
    routes.py             the REST route table
    rest_users_guilds.py  REST: gateway URL, users, application, guilds, members, DMs
    rest_channels.py      REST: channels and channel messages (nonce idempotency)
    rest_commands.py      REST: application commands
    rest_interactions.py  REST: the interaction callback and the interaction webhook
    cdn.py                the CDN (signed URL expiry, download behaviour knobs)
    gateway.py            the gateway websocket (identify, resume, intents, dispatch)
    rules/ack_deadline.py     3 s to acknowledge, one initial response
    rules/token_lifetime.py   the 15-minute interaction token
    rules/upload_limit.py     per-file upload limit, 10 files per message
    rules/message_body.py     content/nonce/embed limits, no empty message
    rules/components.py       components, custom_id, modals
    rules/mentions.py         allowed_mentions and who a message pings
    rules/permissions.py      permission computation (roles, overwrites)
    rules/commands.py         command validation, daily create quota, who is offered a command
"""

from tests.discord_server.clock import Clock
from tests.discord_server.constants import (
    API_PREFIX,
    ATTACHMENT_URL_LIFETIME,
    DEFAULT_BOT_PERMISSIONS,
    DEFAULT_EVERYONE_PERMISSIONS,
    DEFAULT_UPLOAD_LIMIT,
    DISCORD_EPOCH_MS,
    Callback,
    ChannelType,
    Intent,
    InteractionType,
    MessageFlag,
    MiB,
    Perm,
)
from tests.discord_server.errors import CommandUnavailable, DiscordHTTPError, InteractionFailed
from tests.discord_server.holds import Hold
from tests.discord_server.interaction import Interaction
from tests.discord_server.model import (
    NOBODY,
    Attachment,
    Channel,
    Command,
    CommandWrite,
    Fault,
    Guild,
    Member,
    Message,
    Overwrite,
    Pinged,
    RequestRecord,
    Role,
    User,
)
from tests.discord_server.rules.ack_deadline import ACK_TIMEOUT
from tests.discord_server.rules.token_lifetime import TOKEN_LIFETIME
from tests.discord_server.server import FakeDiscord
from tests.discord_spec import DiscordSpec, SpecViolation

__all__ = [
    "ACK_TIMEOUT",
    "API_PREFIX",
    "ATTACHMENT_URL_LIFETIME",
    "Attachment",
    "Callback",
    "Channel",
    "ChannelType",
    "Clock",
    "Command",
    "CommandUnavailable",
    "CommandWrite",
    "DEFAULT_BOT_PERMISSIONS",
    "DEFAULT_EVERYONE_PERMISSIONS",
    "DEFAULT_UPLOAD_LIMIT",
    "DISCORD_EPOCH_MS",
    "DiscordHTTPError",
    "DiscordSpec",
    "FakeDiscord",
    "Fault",
    "Guild",
    "Hold",
    "Intent",
    "Interaction",
    "InteractionFailed",
    "InteractionType",
    "Member",
    "Message",
    "MessageFlag",
    "MiB",
    "NOBODY",
    "Overwrite",
    "Perm",
    "Pinged",
    "RequestRecord",
    "Role",
    "SpecViolation",
    "TOKEN_LIFETIME",
    "User",
]
