"""Settings from the environment and an optional `.env`, validated once at start-up.

Everything the bot needs to know about its surroundings lives in one frozen `Settings`
object. `load_settings()` reads `os.environ` first and a `.env` file second (the environment
wins, as with every twelve-factor tool), checks every value and raises `ConfigError` with a
one-line message that names the variable; `main.py bot` prints that line and exits 2.

The token is kept out of `repr()` and out of every error message: a typo in it must never end
up in a log, a bug report or a screenshot.

This module imports neither discord nor torch: it is safe to import anywhere.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

from bot.limits import Limits

DEFAULT_API_BASE = "https://discord.com/api/v10"
DEFAULT_GATEWAY_URL = "wss://gateway.discord.gg/"
# Discord serves attachments from these two hosts; nothing else is ever fetched.
DEFAULT_CDN_HOSTS = ("cdn.discordapp.com", "media.discordapp.net")
MIB = 1024 * 1024

# Hostnames as RFC 1123 labels (an optional :port is allowed on loopback test servers).
_HOST_RE = re.compile(r"^(?=.{1,253}$)(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))*$")


class ConfigError(Exception):
    """A setting is missing or invalid. `str()` is one line naming the variable, never a secret."""

    def __init__(self, variable: str, problem: str) -> None:
        self.variable = variable
        self.problem = problem
        super().__init__(f"{variable}: {problem}")


@dataclass(frozen=True, slots=True)
class Settings:
    """The bot's configuration. Build with `load_settings()`; `replace()` for tests."""

    discord_token: str = field(repr=False)
    data_dir: Path = Path("data")
    model: str = "auto"
    dev_guild: int | None = None
    api_base: str = DEFAULT_API_BASE
    gateway_url: str = DEFAULT_GATEWAY_URL
    cdn_hosts: tuple[str, ...] = DEFAULT_CDN_HOSTS
    # When set, app.build_backend() uses GPU workers through Redis instead of a local worker.
    redis_url: str | None = field(default=None, repr=False)  # may carry a password
    max_worker_slots: int = 8  # most slots one Redis worker registration counts for
    limits: Limits = field(default_factory=Limits)
    log_level: str = "INFO"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "zoetrope.db"

    def with_changes(self, **changes: object) -> Settings:
        """A copy with some fields replaced (tests, the CLI)."""
        return replace(self, **changes)


# -- parsing helpers -----------------------------------------------------------------------------


def _int(env: Mapping[str, str], name: str, default: int, *, minimum: int = 0) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        # Never echo the value: a token pasted into the wrong variable would be printed.
        raise ConfigError(name, "expected a whole number such as 5") from None
    if value < minimum:
        raise ConfigError(name, f"must be at least {minimum}")
    return value


def _mib(env: Mapping[str, str], name: str, default_bytes: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default_bytes
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(name, "expected a size in MiB such as 8 or 0.5") from None
    if not value > 0 or not math.isfinite(value):
        raise ConfigError(name, "must be a finite size of more than 0 MiB")
    return int(value * MIB)


def _token(env: Mapping[str, str]) -> str:
    token = env.get("DISCORD_TOKEN", "").strip()
    if not token:
        raise ConfigError(
            "DISCORD_TOKEN",
            "not set; put your bot token in the environment or in a .env file "
            "(Discord developer portal > your application > Bot > Reset Token)",
        )
    if token.lower().startswith("bot "):
        token = token[4:].strip()
    # Never echo the value: a partial token is still a leak.
    if any(ch.isspace() for ch in token) or not token.isprintable():
        raise ConfigError("DISCORD_TOKEN", "contains spaces or control characters; paste it again")
    return token


def _url(env: Mapping[str, str], name: str, default: str, schemes: tuple[str, ...]) -> str:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    parts = urlsplit(raw)
    if parts.scheme not in schemes or not parts.hostname:
        raise ConfigError(name, f"expected a {' or '.join(schemes)} URL")
    if parts.query or parts.fragment or parts.password is not None:
        raise ConfigError(name, "must not carry a query, a fragment or a password")
    return raw


def _cdn_hosts(env: Mapping[str, str]) -> tuple[str, ...]:
    raw = env.get("DISCORD_CDN_HOSTS", "").strip()
    if not raw:
        return DEFAULT_CDN_HOSTS
    hosts: list[str] = []
    for number, entry in enumerate((part.strip().lower() for part in raw.split(",")), 1):
        if not entry:
            continue
        host, _, port = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
        if not _HOST_RE.match(host) and not _is_ip(host):
            raise ConfigError(
                "DISCORD_CDN_HOSTS",
                f"entry {number} is not a host name (write hosts only, comma-separated, "
                "e.g. cdn.discordapp.com,media.discordapp.net)",
            )
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise ConfigError("DISCORD_CDN_HOSTS", f"entry {number} has a bad port")
        hosts.append(entry)
    if not hosts:
        raise ConfigError("DISCORD_CDN_HOSTS", "is set but names no host")
    return tuple(dict.fromkeys(hosts))


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _snowflake(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or not 0 < int(raw) < 2**64:
        raise ConfigError(name, "expected a server (guild) id such as 123456789012345678")
    return int(raw)


def _model(env: Mapping[str, str]) -> str:
    raw = env.get("ZOETROPE_MODEL", "").strip() or "auto"
    path = Path(raw).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ConfigError("ZOETROPE_MODEL", f"{raw!r} is a folder without model_index.json")
        return str(path.resolve())
    # The preset table is plain data (torch-free), so the name is checked here, at start-up.
    from generator.presets import PRESETS

    if raw == "auto" or raw in PRESETS:
        return raw
    raise ConfigError(
        "ZOETROPE_MODEL",
        # the value is not echoed: it is no preset and no folder here, so it may be anything
        f"is neither a preset ({', '.join(['auto', *PRESETS])}) nor a diffusers folder",
    )


def _redis(env: Mapping[str, str]) -> str | None:
    raw = env.get("ZOETROPE_REDIS_URL", "").strip()
    if not raw:
        return None
    # Do not echo the value: Redis URLs often carry a password.
    try:
        parts = urlsplit(raw)
        _ = parts.port  # a bad port raises here, not later in redis-py with the URL in the text
    except ValueError:
        raise ConfigError(
            "ZOETROPE_REDIS_URL", "expected redis://[:password@]host:port/db"
        ) from None
    if parts.scheme not in ("redis", "rediss", "unix") or not (parts.hostname or parts.path):
        raise ConfigError("ZOETROPE_REDIS_URL", "expected redis://[:password@]host:port/db")
    return raw


def _worker_slots(env: Mapping[str, str]) -> int:
    # A registration is written by anyone who can write Redis: the cap keeps one that claims
    # 64 slots from being handed 64 jobs out of the fair order (see generator/redis_common).
    value = _int(env, "ZOETROPE_MAX_WORKER_SLOTS", 8, minimum=1)
    if value > 64:
        raise ConfigError("ZOETROPE_MAX_WORKER_SLOTS", "must be at most 64")
    return value


def _log_level(env: Mapping[str, str]) -> str:
    raw = env.get("ZOETROPE_LOG_LEVEL", "").strip().upper() or "INFO"
    if raw not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError("ZOETROPE_LOG_LEVEL", "expected DEBUG, INFO, WARNING or ERROR")
    return raw


def _limits(env: Mapping[str, str]) -> Limits:
    d = Limits()
    return Limits(
        pending_per_user=_int(env, "ZOETROPE_MAX_PENDING_PER_USER", d.pending_per_user, minimum=1),
        pending_per_guild=_int(
            env, "ZOETROPE_MAX_PENDING_PER_GUILD", d.pending_per_guild, minimum=1
        ),
        # 0 in the environment means "no daily quota" / "keep outputs forever".
        daily_per_user=_int(env, "ZOETROPE_DAILY_LIMIT", 0) or None,
        max_queue=_int(env, "ZOETROPE_MAX_QUEUE", d.max_queue, minimum=1),
        max_download_bytes=_mib(env, "ZOETROPE_MAX_DOWNLOAD_MB", d.max_download_bytes),
        upload_limit_bytes=_mib(env, "ZOETROPE_UPLOAD_LIMIT_MB", d.upload_limit_bytes),
        retention_days=_int(env, "ZOETROPE_RETENTION_DAYS", 0) or None,
    )


# -- entry point ---------------------------------------------------------------------------------


def read_environment(
    environ: Mapping[str, str] | None = None, *, env_file: str | os.PathLike[str] | None = ".env"
) -> dict[str, str]:
    """The process environment over the `.env` file's values (the environment wins)."""
    merged: dict[str, str] = {}
    if env_file is not None and Path(env_file).is_file():
        from dotenv import dotenv_values

        merged.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    merged.update(os.environ if environ is None else environ)
    return merged


def load_settings(
    environ: Mapping[str, str] | None = None, *, env_file: str | os.PathLike[str] | None = ".env"
) -> Settings:
    """Read and validate every setting; raise `ConfigError` naming the first bad variable."""
    env = read_environment(environ, env_file=env_file)
    return Settings(
        discord_token=_token(env),
        data_dir=Path(env.get("ZOETROPE_DATA_DIR", "").strip() or "data").expanduser(),
        model=_model(env),
        dev_guild=_snowflake(env, "ZOETROPE_DEV_GUILD"),
        api_base=_url(env, "DISCORD_API_BASE", DEFAULT_API_BASE, ("https", "http")).rstrip("/"),
        gateway_url=_url(env, "DISCORD_GATEWAY_URL", DEFAULT_GATEWAY_URL, ("wss", "ws")),
        cdn_hosts=_cdn_hosts(env),
        redis_url=_redis(env),
        max_worker_slots=_worker_slots(env),
        limits=_limits(env),
        log_level=_log_level(env),
    )


# Settings rows printed by `python main.py bot --help`-style docs and the README table.
ENVIRONMENT = (
    ("DISCORD_TOKEN", "required", "the bot token (never printed)"),
    ("ZOETROPE_DATA_DIR", "data", "database, input images and output clips"),
    ("ZOETROPE_MODEL", "auto", "a preset name, auto, or a local diffusers folder"),
    ("ZOETROPE_DEV_GUILD", "", "a server id: sync commands there only (instant)"),
    ("DISCORD_API_BASE", DEFAULT_API_BASE, "REST base (a proxy, or the tests' local server)"),
    ("DISCORD_GATEWAY_URL", DEFAULT_GATEWAY_URL, "gateway websocket URL"),
    ("DISCORD_CDN_HOSTS", ",".join(DEFAULT_CDN_HOSTS), "hosts attachments may come from"),
    ("ZOETROPE_REDIS_URL", "", "use GPU workers through Redis (scale-out)"),
    ("ZOETROPE_MAX_WORKER_SLOTS", "8", "most slots one Redis worker counts for"),
    ("ZOETROPE_MAX_PENDING_PER_USER", "2", "queued + running clips per member"),
    ("ZOETROPE_MAX_PENDING_PER_GUILD", "25", "queued + running clips per server"),
    ("ZOETROPE_DAILY_LIMIT", "0", "clips per member per day (0 = off)"),
    ("ZOETROPE_MAX_QUEUE", "1000", "queued clips across all servers"),
    ("ZOETROPE_MAX_DOWNLOAD_MB", "25", "largest attachment downloaded"),
    ("ZOETROPE_UPLOAD_LIMIT_MB", "10", "upload limit when Discord does not say"),
    ("ZOETROPE_RETENTION_DAYS", "0", "delete output clips older than this (0 = keep)"),
    ("ZOETROPE_LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING or ERROR"),
)
