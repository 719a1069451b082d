"""What a test user does: run a slash command, autocomplete, click a component, submit a modal;
each becomes an INTERACTION_CREATE on the gateway.
"""

from __future__ import annotations

import asyncio
import mimetypes
import secrets
from collections.abc import Sequence
from typing import Any

from tests.discord_server.constants import _SELECT_TYPES, InteractionType, Perm
from tests.discord_server.interaction import Interaction
from tests.discord_server.model import (
    Attachment,
    Channel,
    Command,
    Guild,
    Message,
    Role,
    User,
    _walk_components,
)


class UserActions:
    """``slash``, ``autocomplete``, ``click``, ``submit_modal``, ``make_attachment``."""

    def _user(self, user: User | int) -> User:
        if isinstance(user, User):
            return user
        try:
            return self.users[int(user)]
        except KeyError:
            raise KeyError(f"no user with id {user!r}; create it with add_user()") from None

    def _integration_owners(self, guild: Guild | None, user: User) -> dict[str, str]:
        return {"0": str(guild.id)} if guild is not None else {"1": str(user.id)}

    async def _create_interaction(
        self,
        *,
        itype: int,
        guild: Guild | None,
        channel: Channel,
        user: User,
        data: dict[str, Any],
        message: Message | None = None,
        locale: str = "en-US",
    ) -> Interaction:
        if guild is not None and user.id not in guild.members:
            raise ValueError(f"user {user.username!r} is not a member of guild {guild.name!r}")
        ix = Interaction(
            self,
            id=self.snowflake(),
            token="aW50ZXJhY3Rpb246" + secrets.token_urlsafe(120),
            type=itype,
            guild=guild,
            channel=channel,
            user=user,
            data=data,
            message=message,
            created_at=self.clock.monotonic(),
        )
        payload: dict[str, Any] = {
            "id": str(ix.id),
            "application_id": str(self.application_id),
            "type": itype,
            "data": data,
            "token": ix.token,
            "version": 1,
            "locale": locale,
            "entitlements": [],
            "entitlement_sku_ids": [],
            "authorizing_integration_owners": self._integration_owners(guild, user),
            # discord.py reads this key unconditionally (KeyError without it).
            "attachment_size_limit": self._upload_limit(channel),
            "app_permissions": str(self._bot_perms(channel)),
            "channel_id": str(channel.id),
        }
        if guild is not None:
            member = guild.members[user.id]
            perms = self.permissions_for(guild, user.id, channel)
            payload.update(
                guild_id=str(guild.id),
                guild_locale=guild.locale,
                guild={"id": str(guild.id), "locale": guild.locale, "features": []},
                member={**member.payload(), "permissions": str(perms)},
                channel={**channel.payload(), "permissions": str(perms)},
                context=0,
            )
        else:
            payload.update(user=user.payload(), channel=channel.payload(), context=1)
        if message is not None:
            payload["message"] = self.message_payload(message)
        ix.payload = payload
        self.interactions.append(ix)
        self._ix_by_id[ix.id] = ix
        self._ix_by_token[ix.token] = ix
        session = self._session_for(guild.id if guild else None)
        if session is not None:
            # Buffered for a RESUME if the socket is down; delivered once it is written.
            self._dispatch(session, "INTERACTION_CREATE", payload, interaction=ix)
        self._schedule_ack_deadline()
        self._notify()
        await asyncio.sleep(0)
        return ix

    def _resolve_guild_channel(
        self, guild: Guild | int | None, channel: Channel | int | None, user: User
    ) -> tuple[Guild | None, Channel]:
        g = self.guilds[guild] if isinstance(guild, int) else guild
        if g is None:
            ch = self.dm_channel(user) if channel is None else channel
            if isinstance(ch, int):
                ch = self.channels[ch]
            return None, ch
        if channel is None:
            return g, g.text_channels[0]
        ch = self.channels[channel] if isinstance(channel, int) else channel
        if ch.guild_id != g.id:
            raise ValueError(f"channel {ch.name!r} is not in guild {g.name!r}")
        return g, ch

    def make_attachment(
        self,
        filename: str,
        data: bytes,
        content_type: str | None = None,
        *,
        channel: Channel | None = None,
        **behaviour: Any,
    ) -> Attachment:
        """A user upload on the CDN, for a slash command's attachment option.

        ``behaviour``: status, redirect_to, delay, chunk_delay, extra_bytes, send_length,
        declared_size (see :class:`Attachment`).
        """
        return self._store_attachment(
            filename=filename,
            data=data,
            content_type=content_type
            if content_type is not None
            else mimetypes.guess_type(filename)[0],
            channel_id=channel.id if channel else 0,
            ephemeral=True,
            **behaviour,
        )

    async def slash(
        self,
        guild: Guild | int | None,
        channel: Channel | int | None,
        user: User | int,
        name: str,
        options: dict[str, Any] | None = None,
        attachments: Sequence[tuple[str, bytes, str | None] | Attachment] = (),
        *,
        locale: str = "en-US",
        bypass_permissions: bool = False,
    ) -> Interaction:
        """A user runs ``/name`` (``"group sub"`` for subcommands) -> INTERACTION_CREATE.

        Option types come from the registered command. Attachment options take an
        :class:`Attachment` or ``(filename, bytes, content_type)``; ``attachments`` fills the
        command's attachment options not given in ``options``, in order. Users, roles and
        channels may be passed as model objects. ``guild=None`` runs it in the user's DM.
        Discord only offers a command where its ``contexts``/``default_member_permissions``
        allow it: otherwise :class:`CommandUnavailable` is raised (``bypass_permissions=True``
        plays a server admin's per-command override).
        """
        user = self._user(user)
        g, ch = self._resolve_guild_channel(guild, channel, user)
        words = name.split()
        command = self.find_command(words[0], g)
        if command is None:
            if self.strict_commands:
                scope = f"guild {g.name!r}" if g else "DMs"
                raise LookupError(
                    f"command /{words[0]} is not registered (globally or for {scope})"
                )
            command = Command(
                id=0, guild_id=None, definition={"name": words[0], "options": []}, version=0
            )
        elif not bypass_permissions:
            self._check_command_usable(command, g, ch, user)
        definitions = command.definition.get("options") or []
        leaf_path: list[dict[str, Any]] = []
        for word in words[1:]:
            sub = next(
                (o for o in definitions if o.get("name") == word and o.get("type") in (1, 2)), None
            )
            if sub is None:
                raise LookupError(f"/{name}: no subcommand {word!r}")
            leaf_path.append(sub)
            definitions = sub.get("options") or []
        resolved: dict[str, dict[str, Any]] = {}
        given = dict(options or {})
        pending_files = list(attachments)
        for opt in definitions:
            if opt.get("type") == 11 and opt["name"] not in given and pending_files:
                given[opt["name"]] = pending_files.pop(0)
        if pending_files:
            raise ValueError(
                f"/{name} has no attachment option left for {len(pending_files)} file(s)"
            )
        built = []
        for opt_name, value in given.items():
            spec = next((o for o in definitions if o.get("name") == opt_name), None)
            if spec is None and self.strict_commands:
                raise ValueError(f"/{name} has no option {opt_name!r}")
            otype = spec["type"] if spec else self._guess_option_type(value)
            built.append(
                {
                    "name": opt_name,
                    "type": otype,
                    "value": self._option_value(otype, value, ch, g, resolved),
                }
            )
        for opt in definitions:
            if opt.get("required") and opt["name"] not in given and opt.get("type") not in (1, 2):
                raise ValueError(f"/{name}: required option {opt['name']!r} missing")
        options_tree: list[dict[str, Any]] = built
        for sub in reversed(leaf_path):
            options_tree = [{"name": sub["name"], "type": sub["type"], "options": options_tree}]
        data: dict[str, Any] = {
            "id": str(command.id),
            "name": command.name,
            "type": 1,
            "options": options_tree,
        }
        if resolved:
            data["resolved"] = resolved
        if command.guild_id is not None:
            data["guild_id"] = str(command.guild_id)
        return await self._create_interaction(
            itype=InteractionType.APPLICATION_COMMAND,
            guild=g,
            channel=ch,
            user=user,
            data=data,
            locale=locale,
        )

    async def autocomplete(
        self,
        guild: Guild | int | None,
        channel: Channel | int | None,
        user: User | int,
        name: str,
        focused: str,
        typed: str = "",
        options: dict[str, Any] | None = None,
    ) -> Interaction:
        """A user types ``typed`` into option ``focused`` of top-level command ``/name``.

        Sends an APPLICATION_COMMAND_AUTOCOMPLETE interaction with the options filled so far
        (strings only, as Discord sends while typing); the bot's choices land in
        ``Interaction.autocomplete_choices``.
        """
        user = self._user(user)
        g, ch = self._resolve_guild_channel(guild, channel, user)
        command = self.find_command(name, g)
        if command is None:
            raise LookupError(f"command /{name} is not registered")
        definitions = {o["name"]: o for o in command.definition.get("options") or []}
        if focused not in definitions or not definitions[focused].get("autocomplete"):
            raise ValueError(f"/{name}: option {focused!r} has no autocomplete")
        built = [
            {"name": key, "type": definitions[key]["type"], "value": value}
            for key, value in (options or {}).items()
        ]
        built.append(
            {"name": focused, "type": definitions[focused]["type"], "value": typed, "focused": True}
        )
        data: dict[str, Any] = {"id": str(command.id), "name": command.name, "type": 1}
        data["options"] = built
        if command.guild_id is not None:
            data["guild_id"] = str(command.guild_id)
        return await self._create_interaction(
            itype=InteractionType.AUTOCOMPLETE, guild=g, channel=ch, user=user, data=data
        )

    @staticmethod
    def _guess_option_type(value: Any) -> int:
        if isinstance(value, bool):
            return 5
        if isinstance(value, int):
            return 4
        if isinstance(value, float):
            return 10
        if isinstance(value, (tuple, Attachment)):
            return 11
        if isinstance(value, User):
            return 6
        if isinstance(value, Role):
            return 8
        if isinstance(value, Channel):
            return 7
        return 3

    def _option_value(
        self,
        otype: int,
        value: Any,
        channel: Channel,
        guild: Guild | None,
        resolved: dict[str, dict[str, Any]],
    ) -> Any:
        if otype == 11:
            att = value
            if isinstance(value, tuple):
                filename, raw, ctype = (*value, None)[:3]
                att = self.make_attachment(filename, raw, ctype, channel=channel)
            if not isinstance(att, Attachment):
                raise TypeError(f"attachment option needs an Attachment or tuple, got {value!r}")
            resolved.setdefault("attachments", {})[str(att.id)] = att.payload()
            return str(att.id)
        if otype in (6, 9) and isinstance(value, User):
            resolved.setdefault("users", {})[str(value.id)] = value.payload()
            if guild is not None and value.id in guild.members:
                member = guild.members[value.id].payload()
                member.pop("user")
                member["permissions"] = str(self.permissions_for(guild, value.id, channel))
                resolved.setdefault("members", {})[str(value.id)] = member
            return str(value.id)
        if otype in (8, 9) and isinstance(value, Role):
            resolved.setdefault("roles", {})[str(value.id)] = value.payload()
            return str(value.id)
        if otype == 7 and isinstance(value, Channel):
            info = value.payload()
            info["permissions"] = str(Perm.ALL)
            resolved.setdefault("channels", {})[str(value.id)] = info
            return str(value.id)
        if otype == 4:
            return int(value)
        if otype == 10:
            return float(value)
        if otype == 5:
            return bool(value)
        return value

    async def click(
        self,
        message: Message | int,
        custom_id: str,
        user: User | int,
        *,
        values: Sequence[str] | None = None,
    ) -> Interaction:
        """``user`` clicks a button (or picks ``values`` in a select) on ``message``.

        The INTERACTION_CREATE carries the full message with its components, as Discord's does
        (discord.py's DynamicItem routing needs them).
        """
        user = self._user(user)
        msg = message if isinstance(message, Message) else self.message(message)
        if msg.deleted:
            raise ValueError(f"message {msg.id} was deleted")
        comp = next((c for c in msg.walk_components() if c.get("custom_id") == custom_id), None)
        if comp is None:
            raise ValueError(
                f"message {msg.id} has no component {custom_id!r}; it has {msg.custom_ids}"
            )
        if comp.get("disabled"):
            raise ValueError(f"component {custom_id!r} is disabled")
        if msg.ephemeral and msg.interaction is not None and msg.interaction.user is not user:
            raise ValueError("an ephemeral message can only be used by the user it was sent to")
        channel = self.channels[msg.channel_id]
        guild = self.guilds.get(channel.guild_id) if channel.guild_id else None
        data: dict[str, Any] = {"custom_id": custom_id, "component_type": comp["type"]}
        if comp.get("id") is not None:
            data["id"] = comp["id"]
        if comp["type"] in _SELECT_TYPES:
            data["values"] = list(values or [])
        return await self._create_interaction(
            itype=InteractionType.MESSAGE_COMPONENT,
            guild=guild,
            channel=channel,
            user=user,
            data=data,
            message=msg,
        )

    async def submit_modal(
        self,
        interaction: Interaction,
        values: dict[str, str | Sequence[str]] | None = None,
        *,
        user: User | int | None = None,
    ) -> Interaction:
        """Submit the modal the bot answered ``interaction`` with (prefilled values by default)."""
        modal = interaction.modal
        if modal is None:
            raise ValueError(f"{interaction!r} was not answered with a modal")
        values = dict(values or {})
        out = []
        for row in modal.get("components") or []:
            rtype = row.get("type")
            if rtype == 1:
                inner = [self._modal_value(c, values) for c in row.get("components") or []]
                out.append({"type": 1, "components": inner})
            elif rtype == 18:
                entry = {"type": 18, "component": self._modal_value(row["component"], values)}
                if row.get("id") is not None:
                    entry["id"] = row["id"]
                out.append(entry)
        unknown = set(values) - {
            c.get("custom_id") for c in _walk_components(modal.get("components") or [])
        }
        if unknown:
            raise ValueError(f"modal {modal.get('custom_id')!r} has no inputs {sorted(unknown)}")
        return await self._create_interaction(
            itype=InteractionType.MODAL_SUBMIT,
            guild=interaction.guild,
            channel=interaction.channel,
            user=interaction.user if user is None else self._user(user),
            data={"custom_id": modal["custom_id"], "components": out},
            message=interaction.message,
        )

    @staticmethod
    def _modal_value(comp: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
        custom_id = comp.get("custom_id")
        if comp.get("type") == 4:
            value = values.get(custom_id, comp.get("value") or "")
            if comp.get("required", True) and not value:
                raise ValueError(f"text input {custom_id!r} is required")
            max_length = comp.get("max_length") or 4000
            min_length = comp.get("min_length") or 0
            if value and not min_length <= len(value) <= max_length:
                raise ValueError(
                    f"text input {custom_id!r} takes {min_length}..{max_length} characters"
                )
            return {"type": 4, "custom_id": custom_id, "value": value}
        return {
            "type": comp.get("type"),
            "custom_id": custom_id,
            "values": list(values.get(custom_id, [])),
        }
