"""Error answers in Discord's format, and the errors the server raises at a test."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class DiscordHTTPError(Exception):
    """An error answer in Discord's format: HTTP status + JSON ``{"code", "message"[, errors]}``."""

    def __init__(
        self,
        status: int,
        code: int,
        message: str,
        *,
        errors: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {code} {message}")
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors
        self.extra = extra or {}
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"message": self.message, "code": self.code}
        if self.errors is not None:
            body["errors"] = self.errors
        body.update(self.extra)
        return body


def _form_error(path: Sequence[str | int], code: str, message: str) -> DiscordHTTPError:
    """400 "Invalid Form Body" (50035) with the error nested at ``path`` as Discord does."""
    tree: dict[str, Any] = {}
    node = tree
    for part in path:
        node = node.setdefault(str(part), {})
    node["_errors"] = [{"code": code, "message": message}]
    return DiscordHTTPError(400, 50035, "Invalid Form Body", errors=tree)


def _unknown(what: str, code: int) -> DiscordHTTPError:
    return DiscordHTTPError(404, code, f"Unknown {what}")


def _missing_permissions() -> DiscordHTTPError:
    return DiscordHTTPError(403, 50013, "Missing Permissions")


class CommandUnavailable(LookupError):
    """Discord would not offer this command to this user here (context or permissions)."""


class InteractionFailed(AssertionError):
    """The interaction was not acknowledged in time: the user sees "This interaction failed"."""
