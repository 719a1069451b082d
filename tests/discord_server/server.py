"""``FakeDiscord``: the parts put together, its lifecycle and its addresses."""

from __future__ import annotations

from aiohttp import web

from tests.discord_server.cdn import Cdn
from tests.discord_server.constants import API_PREFIX, MiB
from tests.discord_server.faults import FaultInjection
from tests.discord_server.gateway import Gateway
from tests.discord_server.holds import RequestHolds
from tests.discord_server.http import HttpPlumbing
from tests.discord_server.inspection import Inspection
from tests.discord_server.messages import MessageStore
from tests.discord_server.rest_channels import ChannelRoutes
from tests.discord_server.rest_commands import CommandRoutes
from tests.discord_server.rest_interactions import InteractionRoutes
from tests.discord_server.rest_users_guilds import UsersGuildsRoutes
from tests.discord_server.routes import Routes
from tests.discord_server.rules.ack_deadline import AckDeadlineRule
from tests.discord_server.rules.commands import CommandRules
from tests.discord_server.rules.components import ComponentRules
from tests.discord_server.rules.mentions import MentionRules
from tests.discord_server.rules.message_body import MessageBodyRule
from tests.discord_server.rules.permissions import PermissionRules
from tests.discord_server.rules.token_lifetime import TokenLifetimeRule
from tests.discord_server.rules.upload_limit import UploadLimitRule
from tests.discord_server.spec_checks import SpecChecks
from tests.discord_server.state import ServerState
from tests.discord_server.user_actions import UserActions
from tests.discord_server.world import WorldBuilding


class FakeDiscord(
    Routes,
    HttpPlumbing,
    SpecChecks,
    FaultInjection,
    RequestHolds,
    UsersGuildsRoutes,
    ChannelRoutes,
    CommandRoutes,
    InteractionRoutes,
    Cdn,
    Gateway,
    UserActions,
    MessageStore,
    WorldBuilding,
    Inspection,
    AckDeadlineRule,
    TokenLifetimeRule,
    UploadLimitRule,
    MessageBodyRule,
    ComponentRules,
    MentionRules,
    PermissionRules,
    CommandRules,
    ServerState,
):
    """A Discord-compatible REST + gateway + CDN server on 127.0.0.1 (random port).

    World: ``add_user``, ``add_guild`` (owner, @everyone, channels, the bot), ``add_channel``,
    ``add_role``, ``add_member(permissions=...)``, ``set_overwrite``, ``set_bot_can_send``,
    ``close_dms``, ``set_upload_limit``, ``bot_join``. Users act: ``slash``, ``click``,
    ``submit_modal`` (each returns an :class:`Interaction` record). Inspect: ``messages``,
    ``message``, ``dm_messages``, ``interactions``/``interaction``, ``commands``,
    ``command_creates``, ``command_writes``, ``requests``/``requests_for``, ``errors``,
    ``unhandled``, ``spec_violations``. Control: ``clock.advance``, ``inject``, ``hold``,
    ``drop_connections``, ``request_reconnect``, ``invalidate_sessions``, ``wait_for``.
    Messages listed by ``messages()`` include ephemeral ones (see ``Message.ephemeral``).

    Each base is one part of the server with its own methods (no name is defined in two of
    them); ``ServerState`` holds the state they share.
    """

    async def start(self) -> FakeDiscord:
        app = web.Application(middlewares=[self._middleware], client_max_size=512 * MiB)
        self._add_routes(app)
        self._runner = web.AppRunner(
            app, handle_signals=False, access_log=None, shutdown_timeout=0.5
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None and server.sockets
        self._port = server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        self._release_holds()
        for conn in list(self._connections):
            if not conn.ws.closed:
                await conn.ws.close(code=1001, message=b"server shutting down")
            if conn.writer is not None:
                conn.writer.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeDiscord:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def url(self) -> str:
        if self._port is None:
            raise RuntimeError("FakeDiscord is not started: call await server.start() first")
        return f"http://127.0.0.1:{self._port}"

    @property
    def api_base(self) -> str:
        """For ``discord.http.Route.BASE``."""
        return self.url + API_PREFIX

    @property
    def gateway_url(self) -> str:
        """For ``discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY`` (wrap it in yarl.URL)."""
        return f"ws://127.0.0.1:{self._port}/gateway"

    @property
    def cdn_base(self) -> str:
        return self.url + "/cdn"
