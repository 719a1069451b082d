"""REST routes for application commands, global and per guild (bulk overwrite, CRUD)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tests.discord_server.errors import DiscordHTTPError, _form_error, _unknown
from tests.discord_server.http import _BODY, _snowflake_int
from tests.discord_server.model import Command, CommandWrite


class CommandRoutes:
    """/applications/{id}[/guilds/{id}]/commands."""

    def _command_scope(self, request: web.Request) -> int | None:
        app_id = _snowflake_int(request.match_info["app_id"], ["application_id"])
        if app_id != self.application_id:
            raise DiscordHTTPError(403, 50001, "Missing Access")
        if "guild_id" not in request.match_info:
            return None
        return self._guild_for(request).id

    def _scope_commands(self, gid: int | None) -> dict[tuple[str, int], Command]:
        return {(c.name, c.type): c for c in self._commands.values() if c.guild_id == gid}

    def _upsert(self, gid: int | None, definition: dict[str, Any]) -> tuple[Command, str | None]:
        existing = self._scope_commands(gid).get(
            (definition["name"], int(definition.get("type") or 1))
        )
        if existing is None:
            cmd = Command(
                id=self.snowflake(), guild_id=gid, definition=definition, version=self.snowflake()
            )
            self._commands[cmd.id] = cmd
            return cmd, "created"
        if existing.definition != definition:
            existing.definition = definition
            existing.version = self.snowflake()
            return existing, "updated"
        return existing, None

    async def _list_commands(self, request: web.Request) -> web.Response:
        gid = self._command_scope(request)
        return self._json(self.commands(gid))

    async def _put_commands(self, request: web.Request) -> web.Response:
        gid = self._command_scope(request)
        body = request[_BODY].json
        if not isinstance(body, list):
            raise _form_error([], "LIST_TYPE_CONVERT", "Only iterables may be used in a ListType.")
        seen: set[tuple[str, int]] = set()
        for i, definition in enumerate(body):
            self._validate_command(definition, [i])
            key = (definition["name"], int(definition.get("type") or 1))
            if key in seen:
                raise _form_error(
                    [i, "name"],
                    "APPLICATION_COMMANDS_DUPLICATE_NAME",
                    f"Application command names must be unique: {key[0]!r}",
                )
            seen.add(key)
        current = self._scope_commands(gid)
        self._check_create_quota(gid, sum(1 for key in seen if key not in current))
        write = CommandWrite("PUT", gid, self._today(), [], [], [])
        for key, cmd in current.items():
            if key not in seen:
                del self._commands[cmd.id]
                write.deleted.append(cmd.name)
        out = []
        for definition in body:
            cmd, what = self._upsert(gid, definition)
            if what == "created":
                write.created.append(cmd.name)
            elif what == "updated":
                write.updated.append(cmd.name)
            out.append(cmd.payload(self.application_id))
        self.command_log.append(write)
        return self._json(out)

    async def _post_command(self, request: web.Request) -> web.Response:
        gid = self._command_scope(request)
        definition = request[_BODY].json
        self._validate_command(definition, [])
        key = (definition["name"], int(definition.get("type") or 1))
        self._check_create_quota(gid, 0 if key in self._scope_commands(gid) else 1)
        cmd, what = self._upsert(gid, definition)
        write = CommandWrite("POST", gid, self._today(), [], [], [])
        (write.created if what == "created" else write.updated).append(cmd.name)
        self.command_log.append(write)
        return self._json(
            cmd.payload(self.application_id), status=201 if what == "created" else 200
        )

    def _command_for(self, request: web.Request) -> tuple[int | None, Command]:
        gid = self._command_scope(request)
        cmd = self._commands.get(_snowflake_int(request.match_info["command_id"], ["command_id"]))
        if cmd is None or cmd.guild_id != gid:
            raise _unknown("application command", 10063)
        return gid, cmd

    async def _get_command(self, request: web.Request) -> web.Response:
        _gid, cmd = self._command_for(request)
        return self._json(cmd.payload(self.application_id))

    async def _patch_command(self, request: web.Request) -> web.Response:
        gid, cmd = self._command_for(request)
        definition = {**cmd.definition, **(request[_BODY].json or {})}
        self._validate_command(definition, [])
        cmd.definition = definition
        cmd.version = self.snowflake()
        self.command_log.append(CommandWrite("PATCH", gid, self._today(), [], [cmd.name], []))
        return self._json(cmd.payload(self.application_id))

    async def _delete_command(self, request: web.Request) -> web.Response:
        gid, cmd = self._command_for(request)
        del self._commands[cmd.id]
        self.command_log.append(CommandWrite("DELETE", gid, self._today(), [], [], [cmd.name]))
        return self._no_content()
