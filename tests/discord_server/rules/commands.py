"""Rules for application commands: name/description/option validation, the daily create quota,
and where Discord offers a command to a user (contexts, default member permissions).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from typing import Any

from tests.discord_server.constants import Perm
from tests.discord_server.errors import CommandUnavailable, DiscordHTTPError, _form_error
from tests.discord_server.model import Channel, Command, Guild, User

_COMMAND_NAME = re.compile(r"^[-_'\w]{1,32}$")


class CommandRules:
    """What a command definition may be, and who may run it where."""

    def _validate_command(self, cmd: Any, path: list[str | int]) -> None:
        if not isinstance(cmd, dict):
            raise _form_error(path, "DICT_TYPE_CONVERT", "Only dictionaries may be used.")
        ctype = int(cmd.get("type") or 1)
        name = cmd.get("name")
        if not isinstance(name, str) or not 1 <= len(name) <= 32:
            raise _form_error(
                path + ["name"], "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 32 in length."
            )
        if ctype == 1:
            if not _COMMAND_NAME.match(name) or name != name.lower():
                raise _form_error(
                    path + ["name"], "APPLICATION_COMMAND_INVALID_NAME", "Command name is invalid"
                )
            description = cmd.get("description") or ""
            if not 1 <= len(description) <= 100:
                raise _form_error(
                    path + ["description"],
                    "BASE_TYPE_BAD_LENGTH",
                    "Must be between 1 and 100 in length.",
                )
            self._validate_options(cmd.get("options") or [], path + ["options"])

    def _validate_options(self, options: list[dict[str, Any]], path: list[str | int]) -> None:
        if len(options) > 25:
            raise _form_error(path, "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length.")
        names: set[str] = set()
        seen_optional = False
        for i, opt in enumerate(options):
            name = opt.get("name") or ""
            if not _COMMAND_NAME.match(name) or name != name.lower():
                raise _form_error(
                    path + [i, "name"], "APPLICATION_COMMAND_INVALID_NAME", "Option name is invalid"
                )
            if name in names:
                raise _form_error(
                    path + [i, "name"],
                    "APPLICATION_COMMAND_OPTIONS_NAME_ALREADY_EXISTS",
                    "Option names must be unique",
                )
            names.add(name)
            if not 1 <= len(opt.get("description") or "") <= 100:
                raise _form_error(
                    path + [i, "description"],
                    "BASE_TYPE_BAD_LENGTH",
                    "Must be between 1 and 100 in length.",
                )
            if len(opt.get("choices") or []) > 25:
                raise _form_error(
                    path + [i, "choices"], "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length."
                )
            if opt.get("type") in (1, 2):
                self._validate_options(opt.get("options") or [], path + [i, "options"])
                continue
            if opt.get("required"):
                if seen_optional:
                    raise _form_error(
                        path + [i, "required"],
                        "APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID",
                        "Required options must be placed before non-required options",
                    )
            else:
                seen_optional = True

    def _check_create_quota(self, gid: int | None, new: int) -> None:
        if new and self.command_creates(gid) + new > self.command_create_limit:
            now = dt.datetime.fromtimestamp(self.clock.time(), dt.UTC)
            midnight = (now + dt.timedelta(days=1)).replace(
                hour=0, minute=0, second=0, microsecond=0
            )
            retry = (midnight - now).total_seconds()
            raise DiscordHTTPError(
                429,
                30034,
                f"Max number of daily application command creates has been reached "
                f"({self.command_create_limit})",
                extra={"retry_after": retry, "global": False},
                headers={"Via": "1.1 google", "Retry-After": str(math.ceil(retry))},
            )

    def _check_command_usable(
        self, command: Command, guild: Guild | None, channel: Channel, user: User
    ) -> None:
        d = command.definition
        contexts = d.get("contexts")
        if guild is None:
            if d.get("dm_permission") is False or (contexts is not None and 1 not in contexts):
                raise CommandUnavailable(f"/{command.name} is not offered in DMs")
            return
        if contexts is not None and 0 not in contexts:
            raise CommandUnavailable(f"/{command.name} is not offered in servers")
        have = self.permissions_for(guild, user.id, channel)
        if not have & Perm.USE_APPLICATION_COMMANDS:
            raise CommandUnavailable(f"{user.username} may not use application commands here")
        need = d.get("default_member_permissions")
        if need is None:
            return
        need = int(need)
        admin = bool(have & Perm.ADMINISTRATOR)
        if (need == 0 and not admin) or have & need != need:
            raise CommandUnavailable(
                f"/{command.name} needs permissions {need:#x}; {user.username} has {have:#x}"
            )

    def find_command(self, name: str, guild: Guild | None) -> Command | None:
        """The command a user would see: the guild's own first, then the global one."""
        if guild is not None:
            for cmd in self._commands.values():
                if cmd.guild_id == guild.id and cmd.name == name and cmd.type == 1:
                    return cmd
        for cmd in self._commands.values():
            if cmd.guild_id is None and cmd.name == name and cmd.type == 1:
                return cmd
        return None
