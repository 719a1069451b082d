"""Keep secrets out of the bot's logs at every level (issue 9, item 4).

At DEBUG, discord.py logs every gateway event (`WebSocket Event: {...}`: an
INTERACTION_CREATE carries the interaction's 15-minute `token`) and every HTTP request URL
(`POST .../interactions/<id>/<token>/callback`, `.../webhooks/<app id>/<token>/...`), and a
traceback may show a Redis URL with its password. `SecretFilter` rewrites each record's text
before any handler writes it: interaction and webhook tokens in URLs, `token` fields of
gateway payloads, passwords in Redis URLs, and the exact secrets it is given (the bot token,
the Redis password).

It is a handler filter (`install`), not a logger filter: a filter on a logger does not see
the records of its child loggers ("discord.http", "discord.gateway"), one on the handler
sees every record that is written.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit

MASK = "***"

# Discord's interaction and webhook tokens sit in the URL path after the snowflake id:
# /interactions/{interaction.id}/{interaction.token}/callback,
# /webhooks/{application.id}/{interaction.token}/messages/@original (Discord API docs,
# "Receiving and Responding").
_PATH_TOKEN = re.compile(r"(/(?:interactions|webhooks)/\d+/)[^/\s?'\"]+")
# A `token` member of a payload as discord.py logs it (a Python dict repr) or as JSON.
_FIELD_TOKEN = re.compile(r"""(['"]token['"]\s*:\s*)(['"])[^'"]*\2""")
# "Authorization: Bot <token>" / "Bearer <token>" in a header dump.
_AUTH_HEADER = re.compile(r"(?i)\b(Bot|Bearer)\s+[A-Za-z0-9._\-]{20,}")
# A Redis URL's password (user-info and ?password=): see generator.redis_common.redacted.
_REDIS_URL = re.compile(r"\b(?:redis|rediss|unix)://[^\s'\"<>]+")


def _redis_redacted(match: re.Match[str]) -> str:
    # Imported here: generator.redis_common pulls in redis-py, which only scale-out needs.
    from generator.redis_common import redacted

    return redacted(match.group(0))


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with every token, password and given secret masked."""
    for secret in secrets:
        text = text.replace(secret, MASK)
    text = _PATH_TOKEN.sub(rf"\1{MASK}", text)
    text = _FIELD_TOKEN.sub(rf"\1\2{MASK}\2", text)
    text = _AUTH_HEADER.sub(rf"\1 {MASK}", text)
    return _REDIS_URL.sub(_redis_redacted, text)


def _url_secrets(url: str | None) -> list[str]:
    """The password in a Redis URL, in both of its spellings (it may be percent-encoded)."""
    if not url:
        return []
    try:
        parts = urlsplit(url)
        found = [parts.password] if parts.password else []
    except ValueError:
        return []
    for field in parts.query.split("&"):
        name, _, value = field.partition("=")
        if name.lower() in ("password", "pass", "passwd", "pwd", "auth", "token") and value:
            found.append(value)
    return [s for item in found for s in {item, unquote(item)} if len(s) >= 4]


class SecretFilter(logging.Filter):
    """Rewrites a record's message (and its traceback text) with `redact`; never drops one."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        super().__init__()
        # Longest first: a secret that contains another is masked whole.
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: the handler reports it, as without us
            return True
        clean = redact(message, self.secrets)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.secrets)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, self.secrets)
        return True


def install(bot_token: str | None, redis_url: str | None = None) -> SecretFilter:
    """Put one SecretFilter on every handler of the root logger (call after basicConfig)."""
    secret_filter = SecretFilter([bot_token, *_url_secrets(redis_url)])
    for handler in logging.getLogger().handlers:
        handler.addFilter(secret_filter)
    return secret_filter
