"""Finishing a result post that an earlier attempt left unrecorded (see bot/post_records.py).

Before posting a result, delivery records the intent. An attempt that finds it recorded (the
bot died after posting but before recording the message, or Discord's answer was lost) first
looks for the message: the channel's messages since shortly before that first attempt, from
this bot, carrying this job's buttons (custom_ids hold the job id; message nonces are not
returned when reading a channel). Found, it becomes the job's result message and nothing is
posted again; Discord's nonce would only catch the repeat within 5 minutes.

Where the channel cannot be read (no Read Message History there, or the clip went by DM or
through the interaction webhook because the channel refused it), nothing can be found and the
result is posted again: a possible duplicate beats a lost clip.

A Delete clicked on the result before its message was recorded is honoured on delivery: the
message is deleted if the click could not delete it itself.

Imports: discord, bot.buttons, bot.post_records, bot.store.
"""

from __future__ import annotations

import datetime as dt
import logging

import aiohttp
import discord

from bot import post_records
from bot.buttons import custom_id
from bot.store import Job

log = logging.getLogger("zoetrope.delivery")

# How many of the channel's messages since the first attempt are read (two requests).
HISTORY_LIMIT = 200
# Our clock and Discord's may disagree: look from a little before the first attempt.
CLOCK_SKEW_S = 120.0


def _custom_ids(message: discord.Message) -> set[str]:
    ids: set[str] = set()
    for row in message.components:
        for item in getattr(row, "children", [row]):
            value = getattr(item, "custom_id", None)
            if isinstance(value, str):
                ids.add(value)
    return ids


async def find_posted_result(bot: discord.Client, job: Job) -> tuple[int, int] | None:
    """(message id, channel id) of the result an earlier attempt posted, or None (nothing was
    attempted, or nothing is found: post it)."""
    if job.result_post_started_at is None:
        return None
    if job.delete_requested_message_id is not None:
        # Delete was clicked on the result before it was recorded: it was posted, and is gone.
        return job.delete_requested_message_id, job.channel_id
    me = bot.user
    if me is None:
        return None
    marker = custom_id("delete", job.id)  # every result message carries Delete
    since = dt.datetime.fromtimestamp(job.result_post_started_at - CLOCK_SKEW_S, dt.UTC)
    channel = bot.get_partial_messageable(job.channel_id, guild_id=job.guild_id)
    try:
        async for message in channel.history(
            limit=HISTORY_LIMIT, after=discord.Object(id=discord.utils.time_snowflake(since))
        ):
            if message.author.id == me.id and marker in _custom_ids(message):
                log.info("job %s: found its result posted by an earlier attempt", job.id)
                return message.id, message.channel.id
    except (discord.Forbidden, discord.NotFound) as exc:
        log.warning(
            "job %s: cannot read channel %s to look for an earlier post (%s); posting again",
            job.id,
            job.channel_id,
            exc.text or exc.status,
        )
    return None


async def delete_if_requested(
    bot: discord.Client, job: Job, message_id: int | None, channel_id: int | None
) -> None:
    """`job` was just recorded as delivered in `message_id`: if a Delete was clicked on it
    before that, make sure the message is gone."""
    if not post_records.deleted_on_delivery(job, message_id) or channel_id is None:
        return
    assert message_id is not None
    log.info("job %s: Delete was clicked while its result was posted; deleting it", job.id)
    message = bot.get_partial_messageable(channel_id, guild_id=job.guild_id).get_partial_message(
        message_id
    )
    try:
        await message.delete()
    except discord.NotFound:
        pass  # the click deleted it already
    except (discord.HTTPException, aiohttp.ClientError, OSError) as exc:
        log.warning("job %s: could not delete its result message (%s)", job.id, exc)
