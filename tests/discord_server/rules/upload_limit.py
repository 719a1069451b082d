"""Rule: at most 10 files per message, each within the guild's upload limit (413 40005)."""

from __future__ import annotations

from tests.discord_server.errors import DiscordHTTPError, _form_error
from tests.discord_server.http import _Body
from tests.discord_server.model import Channel


class UploadLimitRule:
    """The per-file size limit (by guild boost tier) and the file count."""

    def _upload_limit(self, channel: Channel) -> int:
        if channel.guild_id is None:
            return self.default_upload_limit
        return self.guilds[channel.guild_id].upload_limit

    def _check_files(self, body: _Body, channel: Channel) -> None:
        limit = self._upload_limit(channel)
        if len(body.files) > 10:
            raise _form_error(["files"], "BASE_TYPE_MAX_LENGTH", "Must be 10 or fewer in length.")
        for _index, _name, _ctype, data in body.files:
            if len(data) > limit:
                raise DiscordHTTPError(413, 40005, "Request entity too large")
