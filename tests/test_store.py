"""The SQLite store: pragmas, migrations, guarded transitions, quotas, settings."""

from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path

import pytest

from bot.errors import BadOption, InvalidState, NotFound
from bot.store import SCHEMA_VERSION, Job, Store


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "zoetrope.db")
    yield s
    s.close()


def make_job(store: Store, **overrides) -> Job:
    fields = dict(
        id=store.new_job_id(),
        kind="animate",
        status="queued",
        guild_id=1,
        channel_id=10,
        user_id=100,
        prompt="waves roll in",
        input_sha256="a" * 64,
        seed=42,
        created_at=time.time(),
    )
    fields.update(overrides)
    return store.insert_job(Job(**fields))


def test_pragmas_and_schema(store: Store) -> None:
    """The file is in WAL mode with synchronous=NORMAL and a busy timeout, at the latest schema."""
    conn = store.conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
    assert store.schema_version == SCHEMA_VERSION == 4
    rows = conn.execute("SELECT version, name FROM _migrations ORDER BY version").fetchall()
    assert [r[0] for r in rows] == [1, 2, 3, 4]


def test_v1_file_upgrades_in_place(tmp_path: Path) -> None:
    """A database written at schema 1 opens at the latest schema with its rows intact."""
    path = tmp_path / "old.db"
    old = Store(path, migrate_to=1)
    assert old.schema_version == 1
    old.conn.execute(
        "INSERT INTO jobs (id, kind, guild_id, channel_id, user_id, prompt, input_sha256, seed,"
        " status, created_at, output_path) VALUES"
        " ('oldjob0001', 'animate', 5, 6, 7, 'a cat', ?, 9, 'done', 1.0, '/x.mp4')",
        ["b" * 64],
    )
    old.conn.commit()
    old.close()

    new = Store(path)
    assert new.schema_version == SCHEMA_VERSION
    job = new.require_job("oldjob0001")
    assert (job.prompt, job.status, job.seed, job.output_path) == ("a cat", "done", 9, "/x.mp4")
    # columns added by migration 2 read as their defaults
    assert job.delivered_at is None and job.delivery_attempts == 0 and job.credit_user_id is None
    assert [j.id for j in new.undelivered()] == ["oldjob0001"]
    new.record_gen_time("p", 3.0, 1.0)  # a table migration 2 created
    new.close()
    # opening again applies nothing twice
    again = Store(path)
    assert again.conn.execute("SELECT COUNT(*) FROM _migrations").fetchone()[0] == SCHEMA_VERSION
    again.close()


def test_v2_file_upgrades_to_result_and_share_tracking(tmp_path: Path) -> None:
    """A schema-2 file gains the deleted-result and showcase columns, its delivered row intact."""
    path = tmp_path / "v2.db"
    old = Store(path, migrate_to=2)
    assert old.schema_version == 2
    old.conn.execute(
        "INSERT INTO jobs (id, kind, guild_id, channel_id, user_id, prompt, input_sha256, seed,"
        " status, created_at, delivered_at, result_message_id, result_channel_id) VALUES"
        " ('v2job00001', 'animate', 5, 10, 7, 'a cat', ?, 9, 'done', 1.0, 5.0, 50, 10)",
        ["b" * 64],
    )
    old.conn.commit()
    old.close()

    new = Store(path)
    assert new.schema_version == SCHEMA_VERSION
    back = new.require_job("v2job00001")
    assert (back.result_message_id, back.result_channel_id, back.delivered_at) == (50, 10, 5.0)
    assert back.result_deleted_at is None and back.shared_message_id is None
    assert new.mark_result_deleted(back.id, message_id=50, at=6.0)
    new.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    """A file from a newer Zoetrope is not silently used by an older one."""
    path = tmp_path / "future.db"
    Store(path).close()
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO _migrations VALUES (99, 'future', 'now')")
    conn.commit()
    conn.close()
    with pytest.raises(RuntimeError, match="schema version 99"):
        Store(path)


def test_job_roundtrip_and_ids(store: Store) -> None:
    """A Job comes back as the same typed dataclass; ids are 10 custom_id-safe chars."""
    job = make_job(store, meta={"a": [1, 2]}, camera="orbit", guild_id=None)
    assert re.fullmatch(r"[a-z2-7]{10}", job.id)
    assert len(f"zoetrope:vary_strong:{job.id}") < 100
    back = store.require_job(job.id)
    assert back == job
    assert back.seq == job.seq > 0
    later = make_job(store)
    assert later.seq > job.seq
    assert store.get_job("nope") is None
    with pytest.raises(NotFound):
        store.require_job("nope")


def test_transition_is_guarded(tmp_path: Path) -> None:
    """A status change lost to another connection is detected and overwrites nothing."""
    path = tmp_path / "z.db"
    a, b = Store(path), Store(path)
    job = make_job(a)
    running = a.transition(job.id, "queued", "running", started_at=5.0)
    assert running.status == "running" and running.started_at == 5.0
    with pytest.raises(InvalidState, match="being generated"):
        b.transition(job.id, "queued", "cancelled")
    assert b.require_job(job.id).status == "running"
    with pytest.raises(ValueError, match="no transition"):
        a.transition(job.id, "done", "queued")
    with pytest.raises(ValueError, match="cannot set"):
        a.transition(job.id, "running", "done", status="x")
    with pytest.raises(ValueError, match="cannot set"):
        a.update_job(job.id, status="done")
    a.close()
    b.close()


def test_queries(store: Store) -> None:
    """Pending counts, a member's pending child, history and undelivered results."""
    parent = make_job(store, status="done", user_id=1)
    child = make_job(store, parent_id=parent.id, user_id=2)
    make_job(store, user_id=2, guild_id=3)
    make_job(store, user_id=2, status="failed")
    assert store.pending_for_user(2) == 2
    assert store.pending_for_guild(1) == 1
    assert store.pending_for_guild(3) == 1
    assert len(store.jobs_with_status("queued")) == 2 and store.count_jobs() == 4
    assert store.pending_child(parent.id, 2).id == child.id
    assert store.pending_child(parent.id, 1) is None
    assert [j.kind for j in store.history(2, limit=2)] == ["animate", "animate"]
    assert len(store.history(2, guild_id=3)) == 1
    assert [j.id for j in store.undelivered()] == [parent.id]
    store.update_job(parent.id, delivered_at=1.0)
    assert store.undelivered() == []
    assert [j.id for j in store.jobs_with_status("queued")] == [
        j.id for j in sorted(store.jobs_with_status("queued"), key=lambda j: j.seq)
    ]


def test_result_deletion_restore_and_share_are_guarded(store: Store) -> None:
    """Only the recorded result message's deletion counts, a re-post restores only a deleted result, and the first showcase post is never overwritten."""
    job = make_job(store, status="done")
    store.update_job(job.id, delivered_at=1.0, result_message_id=50, result_channel_id=10)
    assert not store.mark_result_deleted(
        job.id, message_id=51, at=2.0
    )  # another message showing the clip
    assert store.require_job(job.id).result_message_id == 50
    assert not store.restore_result(job.id, message_id=60, channel_id=10)  # not deleted
    assert store.mark_result_deleted(job.id, message_id=50, at=2.0)
    gone = store.require_job(job.id)
    assert (gone.result_message_id, gone.result_channel_id, gone.result_deleted_at) == (
        None,
        None,
        2.0,
    )
    assert not store.mark_result_deleted(job.id, message_id=50, at=3.0)  # recorded once
    assert store.restore_result(job.id, message_id=60, channel_id=10)
    back = store.require_job(job.id)
    assert (back.result_message_id, back.result_channel_id, back.result_deleted_at) == (
        60,
        10,
        None,
    )
    assert store.mark_shared(job.id, message_id=70, channel_id=20, at=4.0)
    assert not store.mark_shared(job.id, message_id=71, channel_id=21, at=5.0)
    shared = store.require_job(job.id)
    assert (shared.shared_message_id, shared.shared_channel_id, shared.shared_at) == (70, 20, 4.0)


def test_daily_counts_never_go_negative(store: Store) -> None:
    """Daily quota counts add up, refunds take away, and never below zero."""
    assert store.add_daily(1, "2026-01-01", 1) == 1
    assert store.add_daily(1, "2026-01-01", 1) == 2
    assert store.add_daily(1, "2026-01-01", -1) == 1
    assert store.add_daily(1, "2026-01-01", -5) == 0
    assert store.add_daily(2, "2026-01-01", -1) == 0
    assert store.daily_count(1, "2026-01-02") == 0


def test_gen_times_keep_the_latest(store: Store) -> None:
    """Recent generation times per preset, newest first, a bounded history."""
    for i in range(60):
        store.record_gen_time("wan", float(i), float(i))
    store.record_gen_time("ltx", 1.5, 0.0)
    assert store.recent_gen_times("wan", limit=3) == [59.0, 58.0, 57.0]
    assert len(store.recent_gen_times("wan", limit=100)) == 50
    assert store.recent_gen_times("ltx") == [1.5]


def test_guild_settings_validate_and_persist(tmp_path: Path) -> None:
    """Settings default sensibly, validate every value, and survive a reopen."""
    path = tmp_path / "z.db"
    store = Store(path)
    s = store.get_guild_settings(7)
    assert s.allowed_channel_ids == () and s.others_can_use_buttons and s.channel_allowed(1)
    s = store.update_guild_settings(
        7,
        allowed_channel_ids=[5, 6, 5],
        showcase_channel_id=9,
        max_pending_per_user=3,
        daily_limit_per_user=0,
        allowed_presets=["ltx-fast"],
        others_can_use_buttons=False,
    )
    assert s.allowed_channel_ids == (5, 6) and not s.channel_allowed(1) and s.channel_allowed(6)
    assert s.preset_allowed("ltx-fast") and not s.preset_allowed("wan22-5b")
    bad = [
        {"max_pending_per_user": 0},
        {"max_pending_per_guild": "5"},
        {"allowed_channel_ids": 5},
        {"allowed_channel_ids": [-1]},
        {"showcase_channel_id": True},
        {"allowed_presets": ["Bad Name"]},
        {"others_can_use_buttons": "yes"},
        {"colour": "red"},
        {"guild_id": 3},
    ]
    for change in bad:
        with pytest.raises(BadOption) as info:
            store.update_guild_settings(7, **change)
        assert list(change)[0] in info.value.message
    store.update_guild_settings(7, max_pending_per_user=None)
    store.close()
    again = Store(path)
    s = again.get_guild_settings(7)
    assert s.allowed_channel_ids == (5, 6) and s.showcase_channel_id == 9
    assert s.max_pending_per_user is None and s.daily_limit_per_user == 0
    assert s.allowed_presets == ("ltx-fast",) and s.others_can_use_buttons is False
    again.close()


def test_token_alive() -> None:
    """An interaction token counts as alive for 15 minutes less a safety margin."""
    job = Job(
        id="x",
        kind="animate",
        status="queued",
        guild_id=1,
        channel_id=1,
        user_id=1,
        prompt="p",
        input_sha256="a" * 64,
        seed=1,
        created_at=0.0,
        interaction_token="t",
        token_created_at=1000.0,
    )
    assert job.token_alive(1000.0 + 14 * 60)
    assert not job.token_alive(1000.0 + 15 * 60)
