"""`ZoetropeBot`: the Discord client, wired together in `setup_hook`; and `run_bot()`.

Nothing async happens in `__init__`. `setup_hook` (called by discord.py after login, before
the gateway connects) opens the store, starts the job service and the backend (in the
background: the bot is ready long before the model is loaded), registers the DynamicItem
buttons and syncs the slash commands when, and only when, their definitions changed.

The bot process never imports torch, diffusers or transformers: the backend runs the model in
a worker process (tests/test_bot_e2e.py checks `sys.modules`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import discord
import yarl
from discord import app_commands

from bot import commands as command_defs
from bot import intake, log_redaction
from bot.buttons import EDIT_MODAL_RE, JobButton, handle_edit_submit
from bot.config import ConfigError, Settings, load_settings
from bot.data_lock import DataDirBusy, DataDirLock
from bot.delivery import Delivery, RetryPolicy
from bot.jobs import JobService
from bot.store import Store
from generator.protocol import Backend

log = logging.getLogger("zoetrope.bot")

COMMAND_HASHES = "command-sync.json"


def configure_discord_endpoints(settings: Settings) -> None:
    """Point discord.py at the configured REST and gateway bases (a proxy, or the tests'
    local server). Both are process-wide class attributes in discord.py."""
    discord.http.Route.BASE = settings.api_base
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.gateway_url)


def build_backend(settings: Settings) -> Backend:
    """The generation backend: GPU workers through Redis when ZOETROPE_REDIS_URL is set,
    otherwise one local worker process."""
    if settings.redis_url:
        try:
            from generator.redis_backend import RedisBackend
        except ImportError as exc:
            raise ConfigError(
                "ZOETROPE_REDIS_URL", f"the Redis backend cannot be loaded ({exc})"
            ) from None
        return RedisBackend(
            settings.redis_url, model=settings.model, max_worker_slots=settings.max_worker_slots
        )
    from generator.backends import LocalBackend

    # The worker marks clips with the signing identity in the bot's data dir (one key).
    return LocalBackend(settings.model, env={"ZOETROPE_DATA_DIR": str(settings.data_dir.resolve())})


def build_job_service(
    settings: Settings,
    store: Store,
    backend: Backend,
    *,
    clock: Callable[[], float] = time.time,
    position_interval: float | None = 2.0,
) -> JobService:
    """The job service of these settings: their limits, and the configured upload limit as
    the encoder's byte budget (ZOETROPE_UPLOAD_LIMIT_MB), so a clip is made to fit it."""
    limits = settings.limits
    return JobService(
        store,
        backend,
        data_dir=settings.data_dir,
        limits=limits,
        clock=clock,
        position_interval=position_interval,
        byte_budget=limits.upload_limit_bytes,
        output_retention_days=limits.retention_days,
    )


class ZoetropeBot(discord.Client):
    """The Discord side of Zoetrope. Pass `backend` to share a started backend (tests)."""

    def __init__(
        self,
        settings: Settings,
        *,
        backend: Backend | None = None,
        clock: Callable[[], float] = time.time,
        retry: RetryPolicy | None = None,
        edit_interval: float = 2.0,
        position_interval: float = 2.0,
        data_lock: DataDirLock | None = None,
        **client_options: Any,
    ) -> None:
        configure_discord_endpoints(settings)
        # No privileged intent: slash commands and buttons need none. `guilds` gives the
        # guild cache (upload limits, channel names); no message content, no members.
        intents = discord.Intents.none()
        intents.guilds = True
        super().__init__(
            intents=intents, allowed_mentions=discord.AllowedMentions.none(), **client_options
        )
        self.settings = settings
        self.clock = clock
        self.tree = app_commands.CommandTree(self)
        self.tree.error(command_defs.on_command_error)
        self._backend = backend
        self._owns_backend = backend is None
        self._retry = retry
        self._edit_interval = edit_interval
        self._position_interval = position_interval
        # One bot per data dir (bot/data_lock.py): `run_bot` takes it before logging in; a bot
        # built without one takes it in setup_hook, before the store is opened.
        self._data_lock = data_lock
        self._owns_lock = data_lock is None
        self.image_limits = intake.ImageLimits(max_bytes=settings.limits.max_download_bytes)
        # Created in setup_hook:
        self.store: Store = None  # type: ignore[assignment]
        self.jobs: JobService = None  # type: ignore[assignment]
        self.delivery: Delivery = None  # type: ignore[assignment]
        self.session: aiohttp.ClientSession = None  # type: ignore[assignment]
        self.synced: bool | None = None  # whether setup_hook pushed the commands
        self._shutdown_done = False

    @property
    def backend(self) -> Backend:
        return self._backend

    # -- start-up ---------------------------------------------------------------------------

    async def setup_hook(self) -> None:
        settings = self.settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        if self._data_lock is None:
            self._data_lock = DataDirLock.acquire(settings.data_dir)  # raises DataDirBusy
        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=60, connect=10),
            headers={"User-Agent": "Zoetrope (image-to-video Discord bot)"},
        )
        self.store = Store(settings.db_path)
        if self._backend is None:
            self._backend = build_backend(settings)
        limits = settings.limits
        self.jobs = build_job_service(
            settings,
            self.store,
            self._backend,
            clock=self.clock,
            position_interval=self._position_interval,
        )
        self.delivery = Delivery(
            self,
            self.jobs,
            clock=self.clock,
            edit_interval=self._edit_interval,
            retry=self._retry,
            default_upload_limit=limits.upload_limit_bytes,
            uploads_dir=settings.data_dir / "outputs" / ".uploads",
        )
        self.add_dynamic_items(JobButton)
        for command in command_defs.build_commands():
            self.tree.add_command(command)
        # The model loads in the worker while we connect: start() returns at once.
        await self._backend.start()
        report = await self.jobs.start()
        self.delivery.start(report)
        self.synced = await self.sync_commands()
        log.info(
            "ready to connect: %d queued, %d to deliver",
            len(report.requeued),
            len(report.undelivered),
        )

    def _command_scope(self) -> discord.Object | None:
        return discord.Object(self.settings.dev_guild) if self.settings.dev_guild else None

    def command_payload(self) -> list[dict[str, Any]]:
        guild = self._command_scope()
        if guild is not None:
            self.tree.copy_global_to(guild=guild)
        return [command.to_dict(self.tree) for command in self.tree.get_commands(guild=guild)]

    async def sync_commands(self, *, force: bool = False) -> bool:
        """Push the command definitions if they changed since the last push (Discord allows
        200 creates a day per guild). Returns whether a sync was sent."""
        guild = self._command_scope()
        payload = self.command_payload()
        digest = hashlib.sha256(
            json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
        ).hexdigest()
        key = f"{self.application_id}:{guild.id if guild else 'global'}"
        path = self.settings.data_dir / COMMAND_HASHES
        try:
            hashes: dict[str, str] = json.loads(path.read_text()) if path.is_file() else {}
        except (OSError, ValueError):
            hashes = {}
        if not force and hashes.get(key) == digest:
            log.info("slash commands unchanged; not syncing")
            return False
        try:
            await self.tree.sync(guild=guild)
        except discord.HTTPException as exc:
            log.error("syncing slash commands failed (%s); the old ones stay", exc)
            return False
        hashes[key] = digest
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(hashes, indent=1, sort_keys=True))
        os.replace(tmp, path)
        log.info("slash commands synced (%s)", f"guild {guild.id}" if guild else "global")
        return True

    # -- events -----------------------------------------------------------------------------

    async def on_ready(self) -> None:
        user = self.user
        log.info(
            "connected as %s (%s) in %d servers", user, user.id if user else "?", len(self.guilds)
        )

    async def on_interaction(self, interaction: discord.Interaction) -> None:
        # Modal submits are routed by custom_id (restart-proof); see buttons.py.
        if interaction.type is not discord.InteractionType.modal_submit:
            return
        custom_id = (interaction.data or {}).get("custom_id", "")
        match = EDIT_MODAL_RE.fullmatch(str(custom_id))
        if match is not None:
            await handle_edit_submit(interaction, match["job_id"])

    # -- shutdown ---------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop taking work, close Discord, then the core: jobs in flight stay `running` and
        the next start requeues them; undelivered results are delivered then."""
        if not self._shutdown_done:
            self._shutdown_done = True
            if self.delivery is not None:
                await self.delivery.close()
            if self.jobs is not None:
                await self.jobs.close()
        await super().close()
        if self._owns_backend and self._backend is not None:
            with contextlib.suppress(Exception):
                await self._backend.close()
        if self.session is not None and not self.session.closed:
            await self.session.close()
        if self.store is not None:
            self.store.close()
            self.store = None  # type: ignore[assignment]
        if self._owns_lock and self._data_lock is not None:
            self._data_lock.release()
            self._data_lock = None


# -- the `bot` subcommand ---------------------------------------------------------------------


def _setup_logging(settings: Settings) -> None:
    level = settings.log_level
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # On the handlers, so every logger's records pass it (discord.py's DEBUG lines carry each
    # interaction's 15-minute token; a Redis URL may carry its password).
    log_redaction.install(settings.discord_token, settings.redis_url)
    # discord.py's INFO lines (gateway chatter) only when debugging; and a bot without voice
    # does not need to hear that PyNaCl is missing on every start.
    logging.getLogger("discord").setLevel(logging.DEBUG if level == "DEBUG" else logging.WARNING)
    # SAQ logs every enqueue at INFO (scale-out): too chatty for a bot's log.
    logging.getLogger("saq").setLevel(logging.DEBUG if level == "DEBUG" else logging.WARNING)
    logging.getLogger("discord.client").addFilter(
        lambda record: "voice will NOT be supported" not in record.getMessage()
    )


async def _run(bot: ZoetropeBot) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    async with bot:
        runner = asyncio.create_task(bot.start(bot.settings.discord_token))
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if stopper in done:
            log.info("stopping")
            await bot.close()
        stopper.cancel()
        await runner  # raises what start() raised (login failure...)


def run_bot() -> int:
    """`python main.py bot`: run until stopped. Problems a user can fix are one line, exit 2."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # Before anything else touches the data dir or Discord: a second bot stops here.
    try:
        data_lock = DataDirLock.acquire(settings.data_dir)
    except DataDirBusy as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot lock the data dir {settings.data_dir} ({exc})", file=sys.stderr)
        return 2
    with data_lock:
        return _run_locked(settings, data_lock)


def _run_locked(settings: Settings, data_lock: DataDirLock) -> int:
    _setup_logging(settings)
    try:
        bot = ZoetropeBot(settings, data_lock=data_lock)
        asyncio.run(_run(bot))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except discord.LoginFailure:
        print(
            "error: DISCORD_TOKEN was rejected by Discord (401 Unauthorized); reset the token "
            "in the developer portal (Bot > Reset Token) and update your .env",
            file=sys.stderr,
        )
        return 2
    except discord.PrivilegedIntentsRequired:
        print("error: Discord refused a privileged intent this bot asked for", file=sys.stderr)
        return 2
    except (aiohttp.ClientConnectionError, OSError) as exc:
        print(
            f"error: cannot reach Discord at {settings.api_base} ({type(exc).__name__}); "
            "check the network or DISCORD_API_BASE",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
