"""The bot's limits and the figures of a request: the one home of each constant.

Owns: `Limits` (queue limits -- each server may override the pending and daily ones in its
settings, see bot/store.py GuildSettings -- and byte sizes), filled from the environment by
bot/config.py; the prompt length, the seed bounds, the upload budget and the vary strengths.

Imports: nothing of ours (config, admission, commands and the generator side may all use
it). No discord, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1024 * 1024

# The bot's seed rule: every seed it accepts (/animate seed:) or draws is 0 .. 2**32-1.
# Short enough to read and type back, inside Discord's integer option range (2**53) and
# inside the generator's own bound (generator/presets.py MAX_SEED = 2**63-1).
SEED_MAX = 2**32 - 1
PROMPT_MAX_LEN = 600
# Discord's default upload limit per file since January 2025; also the encoder's budget.
UPLOAD_LIMIT_BYTES = 10 * MiB
DOWNLOAD_LIMIT_BYTES = 25 * MiB  # attachment byte cap (the download stops there)
VARY_STRENGTHS: dict[str, float] = {"subtle": 0.25, "strong": 0.6}


@dataclass(frozen=True, slots=True)
class Limits:
    """The bot's limits: queue limits (each server may override the pending and daily
    ones, see GuildSettings) and sizes. The one home of these figures on the bot side;
    bot/config.py fills it from the environment."""

    pending_per_user: int = 2  # queued + running, across all servers
    pending_per_guild: int = 25
    daily_per_user: int | None = None  # clips per member per UTC day; None: no limit
    max_queue: int = 1000  # waiting jobs in the whole bot
    max_prompt_len: int = PROMPT_MAX_LEN
    max_download_bytes: int = DOWNLOAD_LIMIT_BYTES
    upload_limit_bytes: int = UPLOAD_LIMIT_BYTES  # when Discord does not tell the guild's
    retention_days: float | None = None  # None: keep outputs forever

    def __post_init__(self) -> None:
        for name in (
            "pending_per_user",
            "pending_per_guild",
            "max_queue",
            "max_prompt_len",
            "max_download_bytes",
            "upload_limit_bytes",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Limits.{name} must be a positive integer, got {value!r}")
        daily = self.daily_per_user
        if daily is not None and (
            isinstance(daily, bool) or not isinstance(daily, int) or daily < 0
        ):
            raise ValueError(f"Limits.daily_per_user must be None or >= 0, got {daily!r}")
        days = self.retention_days
        if days is not None and (isinstance(days, bool) or not days > 0):
            raise ValueError(f"Limits.retention_days must be None or > 0, got {days!r}")
