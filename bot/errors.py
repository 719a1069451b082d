"""Zoetrope's exception tree: every refusal a member can meet, with a message they can read.

Each error carries `message`, a complete sentence fit to show in Discord as-is (no ids of
internal objects, no tracebacks). `member_message()` is what a member reads for any
exception; bot/interactions.py `answer_error()` is the one place that sends it.

    ZoetropeError
    ├── BadInput
    │   ├── BadImage          the attachment is not an image we accept
    │   ├── BadPrompt         empty or too long prompt
    │   └── BadOption         a command option or setting has a bad value (seed, camera, ...)
    ├── DownloadFailed        the attachment could not be fetched
    ├── QueueFull             the global queue (or a server's queue) is full
    ├── LimitReached          a per-user limit (pending jobs)
    │   ├── QuotaExceeded     the per-user daily clip quota
    │   └── AlreadyPending    the same member already has a job from this clip waiting
    ├── NotAllowed            channel/preset/button not allowed, or not the owner
    │   └── ContentRefused    a content check refused the request (the prompt screen)
    ├── NotFound              unknown job id, or a clip file that is gone
    └── InvalidState          the job is not in a state that allows the action (also lost races)
"""

from __future__ import annotations


class ZoetropeError(Exception):
    """Base of every error whose message may be shown to a Discord member."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class BadInput(ZoetropeError):
    """Something the member sent is not acceptable."""


class BadImage(BadInput):
    """The attachment is not an image Zoetrope accepts (format, size, damage, bomb...)."""


class BadPrompt(BadInput):
    """The prompt is empty after clean-up or too long."""


class BadOption(BadInput):
    """A command option or a server setting has a bad value."""


class DownloadFailed(ZoetropeError):
    """The attachment could not be downloaded (wrong host, redirect, timeout, HTTP error)."""


class QueueFull(ZoetropeError):
    """The bot's queue or this server's queue has no room right now."""


class LimitReached(ZoetropeError):
    """A per-member limit was reached (too many pending clips)."""


class QuotaExceeded(LimitReached):
    """The member has used their clips for today."""


class AlreadyPending(LimitReached):
    """The member already has a job made from this clip waiting or running."""


class NotAllowed(ZoetropeError):
    """The action is not allowed here or not for this member."""


class ContentRefused(NotAllowed):
    """A content check refused the request; `rule` names which (generator/safety.py RULE_*)."""

    def __init__(self, message: str, *, rule: str) -> None:
        super().__init__(message)
        self.rule = rule


class NotFound(ZoetropeError):
    """No such job, or its file is no longer kept."""


class InvalidState(ZoetropeError):
    """The job's status does not allow the action (for example cancelling a finished job)."""


UNEXPECTED = "Something went wrong on my side; please try again."


def member_message(error: BaseException) -> str:
    """What a member reads for `error`: a domain error's own sentence, else a generic one
    (an unexpected error is a bug: its details go to the log, never to Discord)."""
    return error.message if isinstance(error, ZoetropeError) else UNEXPECTED
