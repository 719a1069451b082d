"""Who may do what with a clip: the rules the buttons and commands apply, kept in the core.

Owns: which jobs an id names at all (`check_in_scope`: another server's job is "no such
job", so moderator rights count only in the job's own server), Share and Delete (the clip's owner or a moderator), Edit only on a finished clip,
where `/job` may re-post a clip, and where Share posts. Each rule raises `NotAllowed`
with the sentence the member reads; the edge only says whether the member is a
moderator (bot/interactions.py `is_moderator`).

Imports: bot.errors, bot.store. No discord, no torch.
"""

from __future__ import annotations

from bot.errors import NotAllowed, NotFound
from bot.store import GuildSettings, Job, JobStatus


def check_in_scope(job: Job, *, guild_id: int | None, user_id: int) -> Job:
    """Every id-taking path: a job of another server (or of a DM) exists only for its author.

    Job ids are printed on every public message, so without this a moderator of any server
    could cancel (and read the status of) any other server's job. The refusal is the very
    NotFound a missing id gets, so it tells nothing about the job. Checked before any rule
    that honours moderator rights, so those rights only count in the job's own server."""
    if job.guild_id != guild_id and job.user_id != user_id:
        raise NotFound(f"There is no job `{job.id}`.")
    return job


def check_owner_or_moderator(job: Job, user_id: int, *, moderator: bool, action: str) -> None:
    """Share and Delete: only the member who made the clip, or a moderator."""
    if job.user_id != user_id and not moderator:
        raise NotAllowed(f"Only the member who made this clip, or a moderator, can {action} it.")


def check_editable(job: Job) -> Job:
    """Edit opens on a finished clip only (the modal is prefilled with its prompt)."""
    if job.status != JobStatus.DONE:
        raise NotAllowed("That clip isn't finished yet.")
    return job


def check_visible_here(job: Job, *, guild_id: int | None, user_id: int) -> Job:
    """`/job`: a clip may be re-posted in its own server, or anywhere by its author."""
    if job.guild_id != guild_id and job.user_id != user_id:
        raise NotAllowed("That clip was made somewhere else; only its author can post it here.")
    return job


def check_shareable(job: Job, *, guild_id: int | None, user_id: int, moderator: bool) -> None:
    """Share: a clip made in a server, by its owner or a moderator."""
    if guild_id is None or job.guild_id is None:
        raise NotAllowed("Sharing works for clips made in a server.")
    check_owner_or_moderator(job, user_id, moderator=moderator, action="share")


def showcase_channel(settings: GuildSettings) -> int:
    """Where Share posts in this server; refuses when no channel was picked."""
    if settings.showcase_channel_id is None:
        raise NotAllowed(
            "This server has no showcase channel yet. A server admin can pick one with "
            "`/settings showcase`."
        )
    return settings.showcase_channel_id
