"""Settings: environment and .env, validation with one clear line, the token never shown."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot.config import (
    DEFAULT_API_BASE,
    DEFAULT_CDN_HOSTS,
    MIB,
    ConfigError,
    load_settings,
)
from bot.errors import DownloadFailed
from bot.intake import check_attachment_url

TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4.GabcDE.secret-part-of-the-token_xyz"
ROOT = Path(__file__).resolve().parent.parent


def test_defaults_with_only_a_token() -> None:
    """A token alone gives Discord's endpoints, Discord's CDN hosts and the default limits."""
    settings = load_settings({"DISCORD_TOKEN": TOKEN}, env_file=None)
    assert settings.discord_token == TOKEN
    assert settings.api_base == DEFAULT_API_BASE
    assert settings.cdn_hosts == DEFAULT_CDN_HOSTS
    assert settings.data_dir == Path("data")
    assert settings.model == "auto"
    assert settings.dev_guild is None and settings.redis_url is None
    assert settings.limits.pending_per_user == 2 and settings.limits.pending_per_guild == 25
    assert settings.limits.upload_limit_bytes == 10 * MIB


def test_token_hidden_from_repr() -> None:
    """repr() and str() of the settings never contain the token (logs, tracebacks)."""
    settings = load_settings({"DISCORD_TOKEN": TOKEN}, env_file=None)
    assert TOKEN not in repr(settings) and TOKEN not in str(settings)
    assert "secret-part" not in repr(settings)


@pytest.mark.parametrize("value", ["", "   "])
def test_missing_token_is_one_clear_line(value: str) -> None:
    """No token: ConfigError naming DISCORD_TOKEN, one line."""
    with pytest.raises(ConfigError) as caught:
        load_settings({"DISCORD_TOKEN": value}, env_file=None)
    assert str(caught.value).startswith("DISCORD_TOKEN:")
    assert "\n" not in str(caught.value)


def test_bad_token_message_does_not_echo_it() -> None:
    """A token with spaces is refused without repeating any of it."""
    with pytest.raises(ConfigError) as caught:
        load_settings({"DISCORD_TOKEN": "abc def-secret"}, env_file=None)
    assert "secret" not in str(caught.value) and "abc" not in str(caught.value)


def test_bot_prefix_is_stripped() -> None:
    """'Bot <token>' (a common paste) becomes the bare token."""
    assert load_settings({"DISCORD_TOKEN": f"Bot {TOKEN}"}, env_file=None).discord_token == TOKEN


def test_dotenv_is_read_and_environment_wins(tmp_path: Path) -> None:
    """Values come from .env, but a variable set in the environment overrides it."""
    env_file = tmp_path / ".env"
    env_file.write_text(
        f"DISCORD_TOKEN={TOKEN}\nZOETROPE_DEV_GUILD=111111111111111111\n"
        "ZOETROPE_MAX_PENDING_PER_USER=4\n"
    )
    settings = load_settings({"ZOETROPE_MAX_PENDING_PER_USER": "3"}, env_file=env_file)
    assert settings.discord_token == TOKEN
    assert settings.dev_guild == 111111111111111111
    assert settings.limits.pending_per_user == 3


@pytest.mark.parametrize(
    ("name", "value", "needle"),
    [
        ("ZOETROPE_DEV_GUILD", "my-server", "ZOETROPE_DEV_GUILD"),
        ("DISCORD_API_BASE", "ftp://example.com/api", "DISCORD_API_BASE"),
        ("DISCORD_GATEWAY_URL", "https://gateway.discord.gg", "DISCORD_GATEWAY_URL"),
        ("DISCORD_CDN_HOSTS", "https://cdn.discordapp.com/x", "DISCORD_CDN_HOSTS"),
        ("DISCORD_CDN_HOSTS", " , ", "DISCORD_CDN_HOSTS"),
        ("ZOETROPE_MAX_PENDING_PER_USER", "two", "ZOETROPE_MAX_PENDING_PER_USER"),
        ("ZOETROPE_MAX_PENDING_PER_GUILD", "0", "ZOETROPE_MAX_PENDING_PER_GUILD"),
        ("ZOETROPE_MAX_DOWNLOAD_MB", "-1", "ZOETROPE_MAX_DOWNLOAD_MB"),
        ("ZOETROPE_REDIS_URL", "http://user:pw@host", "ZOETROPE_REDIS_URL"),
        ("ZOETROPE_MODEL", "Not A Preset!", "ZOETROPE_MODEL"),
        ("ZOETROPE_LOG_LEVEL", "LOUD", "ZOETROPE_LOG_LEVEL"),
        ("ZOETROPE_MAX_WORKER_SLOTS", "65", "ZOETROPE_MAX_WORKER_SLOTS"),
        ("ZOETROPE_MAX_WORKER_SLOTS", "0", "ZOETROPE_MAX_WORKER_SLOTS"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str, needle: str) -> None:
    """Each bad value raises ConfigError whose one-line message starts with the variable."""
    with pytest.raises(ConfigError) as caught:
        load_settings({"DISCORD_TOKEN": TOKEN, name: value}, env_file=None)
    assert str(caught.value).startswith(needle + ":")
    assert caught.value.variable == name


def test_redis_password_not_echoed() -> None:
    """A malformed Redis URL is refused without printing its password."""
    with pytest.raises(ConfigError) as caught:
        load_settings(
            {"DISCORD_TOKEN": TOKEN, "ZOETROPE_REDIS_URL": "x://:hunter2@h"}, env_file=None
        )
    assert "hunter2" not in str(caught.value)


def test_model_folder_needs_model_index(tmp_path: Path) -> None:
    """ZOETROPE_MODEL may be a diffusers folder, which must hold model_index.json."""
    with pytest.raises(ConfigError, match="model_index.json"):
        load_settings({"DISCORD_TOKEN": TOKEN, "ZOETROPE_MODEL": str(tmp_path)}, env_file=None)
    (tmp_path / "model_index.json").write_text("{}")
    settings = load_settings(
        {"DISCORD_TOKEN": TOKEN, "ZOETROPE_MODEL": str(tmp_path)}, env_file=None
    )
    assert settings.model == str(tmp_path.resolve())


def test_test_server_endpoints_accepted() -> None:
    """Loopback http/ws endpoints and a host:port CDN entry (what the tests use) are valid."""
    settings = load_settings(
        {
            "DISCORD_TOKEN": TOKEN,
            "DISCORD_API_BASE": "http://127.0.0.1:5555/api/v10/",
            "DISCORD_GATEWAY_URL": "ws://127.0.0.1:5555/gateway",
            "DISCORD_CDN_HOSTS": "127.0.0.1:5555, cdn.discordapp.com",
        },
        env_file=None,
    )
    assert settings.api_base == "http://127.0.0.1:5555/api/v10"
    assert settings.cdn_hosts == ("127.0.0.1:5555", "cdn.discordapp.com")


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://cdn.discordapp.com/attachments/1/2/a.png", True),
        ("https://media.discordapp.net/attachments/1/2/a.png?ex=1", True),
        ("http://cdn.discordapp.com/attachments/1/2/a.png", False),  # plain http off loopback
        ("https://evil.example/attachments/a.png", False),
        ("https://cdn.discordapp.com.evil.example/a.png", False),
        ("https://user:pw@cdn.discordapp.com/a.png", False),
        ("file:///etc/passwd", False),
        ("http://127.0.0.1:5555/a.png", True),  # loopback test CDN, port listed
        ("http://127.0.0.1:6666/a.png", False),  # another port
        ("https://127.0.0.1:5555/a.png", True),
    ],
)
def test_cdn_hosts_setting_gates_downloads(url: str, allowed: bool) -> None:
    """With the parsed setting, intake fetches only https to a listed host (or http to loopback)."""
    hosts = load_settings(
        {
            "DISCORD_TOKEN": TOKEN,
            "DISCORD_CDN_HOSTS": ",".join(DEFAULT_CDN_HOSTS) + ",127.0.0.1:5555",
        },
        env_file=None,
    ).cdn_hosts
    try:
        check_attachment_url(url, hosts)
    except DownloadFailed:
        assert not allowed
    else:
        assert allowed


def test_missing_token_from_cli_is_one_line(tmp_path: Path) -> None:
    """`python main.py bot` without a token prints one line, exit 2, no traceback."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISCORD_", "ZOETROPE_"))}
    result = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "bot"],
        cwd=tmp_path,  # no .env there
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "DISCORD_TOKEN" in lines[0]
    assert "Traceback" not in result.stderr


def test_upload_limit_is_the_encoders_byte_budget(tmp_path: Path) -> None:
    """ZOETROPE_UPLOAD_LIMIT_MB reaches every GenerationRequest as its byte_budget, so the encoder makes a clip that fits the configured limit."""
    from bot.app import build_job_service
    from bot.recipes import new_job
    from bot.store import Store
    from tests.jobs_backend import FakeBackend

    env = {"DISCORD_TOKEN": TOKEN, "ZOETROPE_DATA_DIR": str(tmp_path)}
    for raw, expected in (("8", 8 * MIB), (None, 10 * MIB)):
        settings = load_settings(
            {**env, "ZOETROPE_UPLOAD_LIMIT_MB": raw} if raw else env, env_file=None
        )
        with Store(tmp_path / "zoetrope.db") as store:
            service = build_job_service(settings, store, FakeBackend())
            job = new_job(
                now=0.0,
                interaction=None,
                kind="animate",
                guild_id=1,
                channel_id=2,
                user_id=3,
                prompt="waves",
                input_sha256="a" * 64,
                seed=1,
            )
            assert service.runner.build_request(job).byte_budget == expected
            assert settings.limits.upload_limit_bytes == expected


SECRET_VARIABLES = [
    "ZOETROPE_MAX_PENDING_PER_USER",
    "ZOETROPE_MAX_PENDING_PER_GUILD",
    "ZOETROPE_DAILY_LIMIT",
    "ZOETROPE_MAX_QUEUE",
    "ZOETROPE_RETENTION_DAYS",
    "ZOETROPE_MAX_DOWNLOAD_MB",
    "ZOETROPE_UPLOAD_LIMIT_MB",
    "ZOETROPE_DEV_GUILD",
    "ZOETROPE_LOG_LEVEL",
    "ZOETROPE_MODEL",
    "DISCORD_CDN_HOSTS",
    "DISCORD_API_BASE",
    "DISCORD_GATEWAY_URL",
    "ZOETROPE_REDIS_URL",
    "ZOETROPE_MAX_WORKER_SLOTS",
]


@pytest.mark.parametrize("name", SECRET_VARIABLES)
def test_a_token_pasted_into_the_wrong_variable_is_never_echoed(name: str) -> None:
    """The bot token (or a password) put into any other variable is refused naming the variable, without the value."""
    for value in (TOKEN, f"https://x:{TOKEN}@h:1/?q={TOKEN}", f"redis://h:port/0?password={TOKEN}"):
        try:
            load_settings({"DISCORD_TOKEN": "a-real-token", name: value}, env_file=None)
        except ConfigError as exc:
            assert str(exc).startswith(name + ":")
            assert "secret-part" not in str(exc), str(exc)
        else:
            pytest.fail(f"{name} accepted a value that is no valid setting")


def test_max_worker_slots_default_and_setting() -> None:
    """ZOETROPE_MAX_WORKER_SLOTS defaults to 8 and is read from the environment or .env."""
    assert load_settings({"DISCORD_TOKEN": TOKEN}, env_file=None).max_worker_slots == 8
    env = {"DISCORD_TOKEN": TOKEN, "ZOETROPE_MAX_WORKER_SLOTS": "3"}
    assert load_settings(env, env_file=None).max_worker_slots == 3
