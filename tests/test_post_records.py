"""A result post in flight in the database: the post intent, and a Delete clicked before the
post was recorded (bot/post_records.py), on a real SQLite file."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot import post_records
from bot.store import Job, Store
from tests.test_store import make_job


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "zoetrope.db")
    yield s
    s.close()


def _done(store: Store) -> Job:
    return make_job(store, status="done", finished_at=1.0)


@pytest.mark.timeout(10)
def test_intent_keeps_the_first_attempts_time(store: Store) -> None:
    """The post intent is recorded once: a retry keeps the first attempt's time (the earliest a posted message can be)."""
    job = _done(store)
    assert job.result_post_started_at is None
    assert post_records.record_post_intent(store, job.id, at=100.0).result_post_started_at == 100.0
    assert post_records.record_post_intent(store, job.id, at=250.0).result_post_started_at == 100.0


@pytest.mark.timeout(10)
def test_delete_before_the_post_is_recorded_counts_on_delivery(store: Store) -> None:
    """A Delete on the result before its message is recorded is kept; recording that message then marks the result deleted, so nothing links to it."""
    job = _done(store)
    assert post_records.request_delete(store, job.id, message_id=555, at=10.0) is False
    assert store.require_job(job.id).result_deleted_at is None  # nothing to delete yet
    row = post_records.record_delivery(store, job.id, message_id=555, channel_id=10, at=11.0)
    assert row.delivered_at == 11.0 and row.result_deleted_at == 11.0
    assert row.result_message_id is None and row.result_channel_id is None
    assert post_records.deleted_on_delivery(row, 555)


@pytest.mark.timeout(10)
def test_delete_of_another_copy_leaves_the_result(store: Store) -> None:
    """A Delete on another message showing the clip (a /job re-post) before delivery does not delete the result that is then recorded."""
    job = _done(store)
    post_records.request_delete(store, job.id, message_id=444, at=10.0)
    row = post_records.record_delivery(store, job.id, message_id=555, channel_id=10, at=11.0)
    assert row.result_message_id == 555 and row.result_deleted_at is None
    assert not post_records.deleted_on_delivery(row, 555)


@pytest.mark.timeout(10)
def test_delete_after_delivery_is_immediate_and_a_late_request_is_not_kept(store: Store) -> None:
    """A Delete on the recorded result marks it deleted at once; once delivered, a Delete of another copy is not kept."""
    job = _done(store)
    post_records.record_delivery(store, job.id, message_id=555, channel_id=10, at=11.0)
    assert post_records.request_delete(store, job.id, message_id=444, at=12.0) is False
    assert store.require_job(job.id).delete_requested_message_id is None
    assert post_records.request_delete(store, job.id, message_id=555, at=13.0) is True
    row = store.require_job(job.id)
    assert row.result_deleted_at == 13.0 and row.result_message_id is None
