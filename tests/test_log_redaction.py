"""bot/log_redaction.py: discord.py-shaped DEBUG records (gateway events, HTTP and webhook
URLs), tracebacks and Redis URLs pass through a real handler and come out without a secret."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from bot.log_redaction import SecretFilter, install, redact

BOT_TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4.GabcDE.bot-token-secret_part"
INTERACTION_TOKEN = "aW50ZXJhY3Rpb246MTIzNDU2Nzg5OmludGVyYWN0aW9uLXRva2VuLXNlY3JldA"
REDIS_PASSWORD = "redis-pa55-word"


@pytest.fixture
def written() -> Iterator[tuple[io.StringIO, logging.Handler]]:
    """A stream handler on the root logger with the filter installed, as bot/app.py would."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.DEBUG)
    discord_level = logging.getLogger("discord").level
    logging.getLogger("discord").setLevel(logging.DEBUG)
    try:
        install(BOT_TOKEN, f"redis://:{REDIS_PASSWORD}@gpu-host:6379/0")
        yield stream, handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        logging.getLogger("discord").setLevel(discord_level)


def test_discord_debug_records_lose_their_tokens(
    written: tuple[io.StringIO, logging.Handler],
) -> None:
    """Gateway INTERACTION_CREATE payloads, interaction callback and webhook URLs and a bot token logged by discord.py's loggers reach the handler masked."""
    stream, _ = written
    event = {
        "t": "INTERACTION_CREATE",
        "s": 4,
        "op": 0,
        "d": {"id": "1234567890123", "application_id": "42", "type": 2, "token": INTERACTION_TOKEN},
    }
    # The calls discord/gateway.py, discord/http.py and discord/webhook/async_.py make.
    logging.getLogger("discord.gateway").debug("For Shard ID %s: WebSocket Event: %s", None, event)
    logging.getLogger("discord.http").debug(
        "%s %s with %s has returned %s",
        "POST",
        f"https://discord.com/api/v10/interactions/1234567890123/{INTERACTION_TOKEN}/callback",
        '{"type": 5}',
        204,
    )
    logging.getLogger("discord.webhook.async_").debug(
        "Webhook ID %s with %s %s has returned status code %s",
        42,
        "PATCH",
        f"https://discord.com/api/v10/webhooks/42/{INTERACTION_TOKEN}/messages/@original",
        200,
    )
    logging.getLogger("discord.http").debug("headers: %s", {"Authorization": f"Bot {BOT_TOKEN}"})
    logging.getLogger("discord.client").warning("logging in using static token %s", BOT_TOKEN)
    text = stream.getvalue()
    assert INTERACTION_TOKEN not in text and BOT_TOKEN not in text, text
    assert "bot-token-secret" not in text
    assert text.count("***") >= 5
    assert "/interactions/1234567890123/***/callback" in text  # what is left still says what it was
    assert "INTERACTION_CREATE" in text


def test_tracebacks_and_redis_urls_are_masked(written: tuple[io.StringIO, logging.Handler]) -> None:
    """A Redis URL's password (user-info or ?password=) and a secret inside a traceback are masked; the record is still written."""
    stream, _ = written
    log = logging.getLogger("zoetrope.test")
    log.info("connecting to %s", f"redis://gpu-host:6379/0?password={REDIS_PASSWORD}")
    log.info("and to rediss://:other-secret-1@host:1/0")
    try:
        raise RuntimeError(f"failed with token {BOT_TOKEN} and {REDIS_PASSWORD}")
    except RuntimeError:
        log.exception("boom")
    text = stream.getvalue()
    for secret in (REDIS_PASSWORD, "other-secret-1", BOT_TOKEN):
        assert secret not in text, text
    assert "boom" in text and "RuntimeError" in text and "gpu-host:6379" in text


def test_redact_keeps_ordinary_text() -> None:
    """Text without secrets passes unchanged, and a filter given no secrets still masks tokens."""
    line = "job abc123 done in 4.2 s (token bucket: 3 left)"
    assert redact(line) == line
    record = logging.LogRecord(
        "discord.http",
        logging.DEBUG,
        __file__,
        1,
        "%s",
        (f"/webhooks/1/{INTERACTION_TOKEN}",),
        None,
    )
    assert SecretFilter().filter(record) and INTERACTION_TOKEN not in record.getMessage()


def test_the_bots_own_logging_setup_masks_tokens_at_debug() -> None:
    """bot/app.py's logging setup at ZOETROPE_LOG_LEVEL=DEBUG installs the filter: discord.py's DEBUG lines reach stderr without the tokens."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        f"""
        import logging
        from bot.app import _setup_logging
        from bot.config import load_settings
        settings = load_settings(
            {{"DISCORD_TOKEN": {BOT_TOKEN!r}, "ZOETROPE_LOG_LEVEL": "DEBUG",
              "ZOETROPE_REDIS_URL": "redis://:{REDIS_PASSWORD}@gpu-host:6379/0"}},
            env_file=None,
        )
        _setup_logging(settings)
        logging.getLogger("discord.http").debug(
            "POST https://discord.com/api/v10/interactions/1/{INTERACTION_TOKEN}/callback "
            "with Authorization: Bot {BOT_TOKEN} via redis://:{REDIS_PASSWORD}@gpu-host:6379/0"
        )
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "interactions/1/" in result.stderr  # the line itself was logged
    for secret in (BOT_TOKEN, INTERACTION_TOKEN, REDIS_PASSWORD):
        assert secret not in result.stderr
