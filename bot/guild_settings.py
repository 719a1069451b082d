"""Per-server settings (`/settings`): the `GuildSettings` record and the validation of each
setting, with a clear message naming the setting and the value. bot/store.py stores them.

Imports: bot.errors only. No discord, no torch.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from bot.errors import BadOption


@dataclass(slots=True, frozen=True)
class GuildSettings:
    """Per-server settings; None in a limit means "the bot's default"."""

    guild_id: int
    allowed_channel_ids: tuple[int, ...] = ()  # empty: every channel
    showcase_channel_id: int | None = None
    max_pending_per_user: int | None = None
    max_pending_per_guild: int | None = None
    daily_limit_per_user: int | None = None  # 0: no daily limit on this server
    allowed_presets: tuple[str, ...] = ()  # empty: every preset
    others_can_use_buttons: bool = True  # may members reroll/vary/edit/extend others' clips
    updated_at: float | None = None

    def channel_allowed(self, channel_id: int) -> bool:
        return not self.allowed_channel_ids or channel_id in self.allowed_channel_ids

    def preset_allowed(self, preset: str | None) -> bool:
        return preset is None or not self.allowed_presets or preset in self.allowed_presets


SETTING_FIELDS = tuple(f.name for f in dataclasses.fields(GuildSettings))
# Preset names, and the names a worker fleet serves (`local:<folder>`; see redis_backend).
_PRESET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,99}$")
_SETTING_RANGES = {
    "max_pending_per_user": (1, 100),
    "max_pending_per_guild": (1, 10_000),
    "daily_limit_per_user": (0, 10_000),
}


def check_id(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise BadOption(f"{name} must be a Discord id (a positive whole number), got {value!r}.")
    return value


def validate_setting(name: str, value: Any) -> Any:
    """Return the stored form of one setting or raise BadOption naming it and the value."""
    if name == "allowed_channel_ids":
        if isinstance(value, int | str) or not isinstance(value, Iterable):
            raise BadOption(f"allowed_channel_ids must be a list of channel ids, got {value!r}.")
        ids = tuple(dict.fromkeys(check_id("allowed_channel_ids", v) for v in value))
        if len(ids) > 100:
            raise BadOption(f"allowed_channel_ids may list at most 100 channels, got {len(ids)}.")
        return ids
    if name == "showcase_channel_id":
        return None if value is None else check_id(name, value)
    if name in _SETTING_RANGES:
        if value is None:
            return None
        low, high = _SETTING_RANGES[name]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise BadOption(f"{name} must be a whole number from {low} to {high}, got {value!r}.")
        return value
    if name == "allowed_presets":
        if isinstance(value, str) or not isinstance(value, Iterable):
            raise BadOption(f"allowed_presets must be a list of preset names, got {value!r}.")
        names = tuple(dict.fromkeys(value))
        for preset in names:
            if not isinstance(preset, str) or not _PRESET_NAME.match(preset):
                raise BadOption(f"allowed_presets has a bad preset name: {preset!r}.")
        return names
    if name == "others_can_use_buttons":
        if not isinstance(value, bool):
            raise BadOption(f"others_can_use_buttons must be true or false, got {value!r}.")
        return value
    raise BadOption(f"Unknown server setting {name!r}.")
