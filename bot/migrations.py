"""The database schema as numbered migrations: applied in order by bot/store.py, each in one
transaction with its record in `_migrations`. Never edit a released migration; add the
next number.

Imports: sqlite_utils only.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlite_utils


def _migration_1(db: sqlite_utils.Database) -> None:
    # One statement at a time: executescript() would COMMIT the migration's transaction.
    for statement in _MIGRATION_1_SQL.split(";"):
        if statement.strip():
            db.conn.execute(statement)


_MIGRATION_1_SQL = """
        CREATE TABLE jobs (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            kind TEXT NOT NULL,
            parent_id TEXT,
            guild_id INTEGER,
            channel_id INTEGER NOT NULL,
            user_id INTEGER NOT NULL,
            prompt TEXT NOT NULL,
            negative_prompt TEXT NOT NULL DEFAULT '',
            camera TEXT,
            duration TEXT,
            input_sha256 TEXT NOT NULL,
            preset TEXT,
            width INTEGER,
            height INTEGER,
            num_frames INTEGER,
            fps REAL,
            steps INTEGER,
            seed INTEGER NOT NULL,
            variation_seed INTEGER,
            variation_strength REAL NOT NULL DEFAULT 0,
            status TEXT NOT NULL
                CHECK (status IN ('queued', 'running', 'done', 'failed', 'cancelled')),
            attempts INTEGER NOT NULL DEFAULT 0,
            error TEXT,
            error_kind TEXT,
            progress_message_id INTEGER,
            result_message_id INTEGER,
            output_path TEXT,
            output_bytes INTEGER,
            quota_day TEXT,
            meta TEXT NOT NULL DEFAULT '{}',
            created_at REAL NOT NULL,
            started_at REAL,
            finished_at REAL,
            gen_seconds REAL
        );
        CREATE INDEX jobs_status_user ON jobs (status, user_id);
        CREATE INDEX jobs_status_guild ON jobs (status, guild_id);
        CREATE INDEX jobs_parent_user ON jobs (parent_id, user_id);
        CREATE INDEX jobs_user_seq ON jobs (user_id, seq);
        CREATE TABLE guild_settings (
            guild_id INTEGER PRIMARY KEY,
            allowed_channel_ids TEXT NOT NULL DEFAULT '[]',
            showcase_channel_id INTEGER,
            max_pending_per_user INTEGER,
            max_pending_per_guild INTEGER,
            daily_limit_per_user INTEGER,
            allowed_presets TEXT NOT NULL DEFAULT '[]',
            others_can_use_buttons INTEGER NOT NULL DEFAULT 1,
            updated_at REAL
        );
        CREATE TABLE daily_counts (
            user_id INTEGER NOT NULL,
            day TEXT NOT NULL,
            count INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (user_id, day)
        );
"""


def _migration_2(db: sqlite_utils.Database) -> None:
    # What the Discord layer needs to finish a job after a restart: the interaction token
    # (edits the deferred reply for 15 minutes), where the messages are, whether the result
    # was delivered; credit for clips made from someone else's clip; generation times.
    for column, kind in [
        ("credit_user_id", "INTEGER"),
        ("progress_channel_id", "INTEGER"),
        ("result_channel_id", "INTEGER"),
        ("interaction_token", "TEXT"),
        ("application_id", "INTEGER"),
        ("token_created_at", "REAL"),
        ("delivered_at", "REAL"),
        ("delivery_attempts", "INTEGER NOT NULL DEFAULT 0"),
        ("progress_step", "INTEGER"),
        ("progress_total", "INTEGER"),
        ("stage", "TEXT"),
        ("output_pruned_at", "REAL"),
    ]:
        db.conn.execute(f"ALTER TABLE jobs ADD COLUMN {column} {kind}")
    db.conn.execute("CREATE INDEX jobs_status_delivered ON jobs (status, delivered_at)")
    db.conn.execute("CREATE INDEX jobs_status_finished ON jobs (status, finished_at)")
    db.conn.execute(
        """CREATE TABLE gen_times (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            preset TEXT NOT NULL,
            seconds REAL NOT NULL,
            finished_at REAL NOT NULL
        )"""
    )
    db.conn.execute("CREATE INDEX gen_times_preset ON gen_times (preset, id)")


def _migration_3(db: sqlite_utils.Database) -> None:
    # A deleted result message (so /history and /job stop linking to it) and the clip's
    # showcase post (so Share posts once, beyond Discord's 5-minute nonce window).
    for column, kind in [
        ("result_deleted_at", "REAL"),
        ("shared_channel_id", "INTEGER"),
        ("shared_message_id", "INTEGER"),
        ("shared_at", "REAL"),
    ]:
        db.conn.execute(f"ALTER TABLE jobs ADD COLUMN {column} {kind}")


def _migration_4(db: sqlite_utils.Database) -> None:
    # A result post in flight (bot/post_records.py): when the first post was attempted (a run
    # that died before recording the message looks for it before posting again), and a Delete
    # clicked on the result before its message was recorded (honoured on delivery).
    for column, kind in [
        ("result_post_started_at", "REAL"),
        ("delete_requested_message_id", "INTEGER"),
    ]:
        db.conn.execute(f"ALTER TABLE jobs ADD COLUMN {column} {kind}")


MIGRATIONS: list[tuple[int, str, Callable[[sqlite_utils.Database], None]]] = [
    (1, "jobs, guild settings, daily counts", _migration_1),
    (2, "delivery tracking, interaction tokens, credits, generation times", _migration_2),
    (3, "deleted result messages, showcase posts", _migration_3),
    (4, "result posts in flight: post intent, Delete before the post was recorded", _migration_4),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]
