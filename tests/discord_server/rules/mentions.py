"""Rule: who a message pings, from its content, ``allowed_mentions`` and the bot's permissions
(escaped mentions ping no one; @everyone needs Mention Everyone).
"""

from __future__ import annotations

import re
from typing import Any

from tests.discord_server.constants import Perm
from tests.discord_server.errors import _form_error
from tests.discord_server.model import Channel, Pinged

_USER_MENTION = re.compile(r"(?<!\\)<@!?(\d{1,20})>")


_ROLE_MENTION = re.compile(r"(?<!\\)<@&(\d{1,20})>")


_EVERYONE = re.compile(r"(?<!\\)@everyone")


_HERE = re.compile(r"(?<!\\)@here")


class MentionRules:
    """Validates ``allowed_mentions`` and computes the pings."""

    @staticmethod
    def _validate_allowed_mentions(am: Any) -> None:
        if am is None:
            return
        parse = am.get("parse") or []
        for kind in parse:
            if kind not in ("users", "roles", "everyone"):
                raise _form_error(
                    ["allowed_mentions", "parse"],
                    "BASE_TYPE_CHOICES",
                    f"Value {kind!r} is not valid.",
                )
        for kind in ("users", "roles"):
            ids = am.get(kind) or []
            if ids and kind in parse:
                raise _form_error(
                    ["allowed_mentions"],
                    "MESSAGE_ALLOWED_MENTIONS_PARSE_EXCLUSIVE",
                    f'parse:["{kind}"] and {kind}: [ids] are mutually exclusive.',
                )
            if len(ids) > 100:
                raise _form_error(
                    ["allowed_mentions", kind],
                    "BASE_TYPE_MAX_LENGTH",
                    "Must be 100 or fewer in length.",
                )

    def _compute_pings(
        self,
        content: str,
        allowed_mentions: dict[str, Any] | None,
        channel: Channel,
        reference: dict[str, Any] | None,
    ) -> Pinged:
        """Who gets notified, by Discord's rules for content + allowed_mentions."""
        users = {int(m) for m in _USER_MENTION.findall(content)}
        roles = {int(m) for m in _ROLE_MENTION.findall(content)}
        everyone = bool(_EVERYONE.search(content))
        here = bool(_HERE.search(content))
        can_mention_all = bool(self._bot_perms(channel) & Perm.MENTION_EVERYONE)
        guild = self.guilds.get(channel.guild_id) if channel.guild_id else None
        if allowed_mentions is None:
            # No allowed_mentions: everything in the content is parsed.
            parse = {"users", "roles", "everyone"}
            allowed_users: set[int] = set()
            allowed_roles: set[int] = set()
            replied_user = True
        else:
            parse = set(allowed_mentions.get("parse") or [])
            allowed_users = {int(u) for u in allowed_mentions.get("users") or []}
            allowed_roles = {int(r) for r in allowed_mentions.get("roles") or []}
            replied_user = bool(allowed_mentions.get("replied_user", False))
        pinged_users = {u for u in users if "users" in parse or u in allowed_users}
        pinged_roles = set()
        if guild is not None:
            for rid in roles:
                role = guild.roles.get(rid)
                if role is None or rid == guild.id:
                    continue
                if ("roles" in parse or rid in allowed_roles) and (
                    role.mentionable or can_mention_all
                ):
                    pinged_roles.add(rid)
        ping_everyone = (everyone or here) and "everyone" in parse and can_mention_all
        if reference and replied_user:
            ref = self._messages.get(int(reference.get("message_id") or 0))
            if ref is not None and ref.author is not self.bot:
                pinged_users.add(ref.author.id)
        return Pinged(
            users=frozenset(pinged_users),
            roles=frozenset(pinged_roles),
            everyone=ping_everyone,
            here=ping_everyone and here,
        )
