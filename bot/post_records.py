"""A result post in flight, as the database remembers it.

Posting a result and recording its message are two steps, and a bot can die between them (or
lose Discord's answer). Discord's nonce makes a repeated POST return the first message only
for 5 minutes, so the job records when its result post was first attempted
(`result_post_started_at`) before posting: a later attempt that finds it set knows a message
may exist, and bot/post_recovery.py looks for it before posting again.

A Delete clicked on the result after Discord made the message but before the bot recorded it
did nothing (the message was not yet the job's), and the job linked for ever to a deleted
message. The click now records the message it was for (`delete_requested_message_id`); when the
delivery records that same message, the result counts as deleted at once (its ids cleared,
`result_deleted_at` set), so the progress message, /history and /job treat it as deleted.

Each function is one transaction, so a click and a delivery cannot interleave inside one.

Imports: store.
"""

from __future__ import annotations

from bot.store import Job, Store


def record_post_intent(store: Store, job_id: str, *, at: float) -> Job:
    """The result is about to be posted. The first attempt's time is kept: a message that an
    earlier attempt made is no older than it."""
    store.require_job(job_id)
    store.db.execute(
        "UPDATE jobs SET result_post_started_at = COALESCE(result_post_started_at, ?) WHERE id = ?",
        [at, job_id],
    )
    return store.require_job(job_id)


def request_delete(store: Store, job_id: str, *, message_id: int, at: float) -> bool:
    """Delete was clicked on `message_id`, a message showing this job's clip (and deleted by
    the click). Returns whether it was the recorded result message, now recorded as deleted.
    While the result is not yet recorded, the request is kept for `record_delivery`."""
    store.require_job(job_id)
    with store.db.atomic():
        if store.mark_result_deleted(job_id, message_id=message_id, at=at):
            return True
        store.db.execute(
            "UPDATE jobs SET delete_requested_message_id = ? WHERE id = ? AND delivered_at IS NULL",
            [message_id, job_id],
        )
    return False


def record_delivery(
    store: Store, job_id: str, *, message_id: int | None, channel_id: int | None, at: float
) -> Job:
    """`Store.mark_delivered`, and a Delete clicked on that message before it was recorded
    takes effect now."""
    with store.db.atomic():
        store.mark_delivered(job_id, message_id=message_id, channel_id=channel_id, at=at)
        if message_id is not None:
            store.db.execute(
                "UPDATE jobs SET result_deleted_at = ?, result_message_id = NULL, "
                "result_channel_id = NULL "
                "WHERE id = ? AND result_message_id = ? AND delete_requested_message_id = ?",
                [at, job_id, message_id, message_id],
            )
    return store.require_job(job_id)


def deleted_on_delivery(job: Job, message_id: int | None) -> bool:
    """Whether `record_delivery` of `message_id` found a Delete asked for it."""
    return (
        message_id is not None
        and job.result_deleted_at is not None
        and job.delete_requested_message_id == message_id
    )
