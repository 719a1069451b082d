"""The database: one SQLite file that is the single source of truth for jobs and settings.

`Store` wraps a sqlite-utils `Database` over one `sqlite3` connection. That connection is
the only writer (the bot is one process with one event loop; SQLite allows one writer at a
time anyway), in WAL mode so readers never block it, with `synchronous=NORMAL` (a commit
survives a crash of the process; only an OS crash or power loss can lose the last
transactions) and a `busy_timeout` so another process (a CLI, a backup) holding the lock
makes us wait instead of failing.

Schema changes are numbered migrations recorded in `_migrations`; opening an older file
upgrades it in place, each migration in its own transaction.

Every status change goes through `transition()`: one `UPDATE ... WHERE id=? AND status IN
(...)` whose row count tells whether we won. A lost race raises `InvalidState` instead of
overwriting what the other side wrote.

Public API (all synchronous, call from the event-loop thread; each call is a few µs-ms):

    Store(path, *, busy_timeout_ms=5000, migrate_to=None)
    Store.schema_version -> int ; Store.close()
    Store.new_job_id() -> str
    Store.insert_job(job: Job) -> Job                      # assigns seq (submission order)
    Store.get_job(job_id) -> Job | None ; Store.require_job(job_id) -> Job  (NotFound)
    Store.transition(job_id, from_status, to_status, **fields) -> Job   (InvalidState/NotFound)
    Store.update_job(job_id, **fields) -> Job              # never the status
    Store.insert_counted(job) -> Job                       # + its daily count, one transaction
    Store.finish_refunded(job, from_status, to_status, **fields) -> Job   # + the refund
    Store.mark_delivered(job_id, *, message_id, channel_id, at) -> Job    # the first wins
    Store.forget_output(job_id, *, at) -> Job ; Store.increment_delivery_attempts(job_id)
    Store.jobs_with_status(*statuses) -> list[Job]         # oldest first (seq order)
    Store.pending_for_user(user_id) -> int ; pending_for_guild(guild_id) -> int
    Store.count_jobs() -> int
    Store.pending_jobs_for_user(user_id) -> list[Job]
    Store.pending_child(parent_id, user_id) -> Job | None
    Store.history(user_id, *, guild_id=None, limit=10) -> list[Job]
    Store.undelivered(statuses=("done",)) -> list[Job]
    Store.mark_result_deleted(job_id, *, message_id, at) -> bool   # that message only
    Store.restore_result(job_id, *, message_id, channel_id) -> bool   # a deleted result only
    Store.mark_shared(job_id, *, message_id, channel_id, at) -> bool  # the first share only
    Store.outputs_finished_before(ts) -> list[Job]
    Store.daily_count(user_id, day) -> int ; Store.add_daily(user_id, day, delta) -> int
    Store.record_gen_time(preset, seconds, at) ; Store.recent_gen_times(preset, limit=20)
    Store.get_guild_settings(guild_id) -> GuildSettings
    Store.update_guild_settings(guild_id, **changes) -> GuildSettings   (BadOption)
"""

from __future__ import annotations

import base64
import dataclasses
import json
import secrets
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import sqlite_utils

from bot.errors import BadOption, InvalidState, NotFound
from bot.guild_settings import SETTING_FIELDS as _SETTING_FIELDS
from bot.guild_settings import GuildSettings, check_id, validate_setting
from bot.migrations import MIGRATIONS, SCHEMA_VERSION


class JobStatus(StrEnum):
    """A job's status; equal to its string, which is what the `jobs.status` column holds."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


JobKind = Literal["animate", "reroll", "vary", "edit", "extend", "loop"]

STATUSES: tuple[JobStatus, ...] = tuple(JobStatus)
PENDING: tuple[JobStatus, ...] = (JobStatus.QUEUED, JobStatus.RUNNING)
FINISHED: tuple[JobStatus, ...] = (JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED)
KINDS: tuple[str, ...] = ("animate", "reroll", "vary", "edit", "extend", "loop")

# Allowed status changes. `running -> queued` is the retry/resume path only.
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED, JobStatus.FAILED}),
    JobStatus.RUNNING: frozenset(
        {JobStatus.QUEUED, JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED}
    ),
    JobStatus.DONE: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}

# How a member reads a status in "That clip is already ..." messages.
_STATUS_WORDS = {
    JobStatus.QUEUED: "still waiting in the queue",
    JobStatus.RUNNING: "being generated right now",
    JobStatus.DONE: "already finished",
    JobStatus.FAILED: "already failed",
    JobStatus.CANCELLED: "already cancelled",
}


@dataclass(slots=True)
class Job:
    """One row of `jobs`, as plain typed data. Timestamps are Unix seconds (floats)."""

    id: str
    kind: str
    status: JobStatus
    guild_id: int | None  # None: a DM (the DM counts as its own server for fairness)
    channel_id: int
    user_id: int  # who owns the job: the requester, or whoever clicked a clip's button
    prompt: str
    input_sha256: str
    seed: int
    created_at: float
    seq: int = 0  # submission order, assigned by the store; queue order on resume
    parent_id: str | None = None
    credit_user_id: int | None = None  # owner of the parent clip when someone else clicked
    negative_prompt: str = ""
    camera: str | None = None
    duration: str | None = None
    preset: str | None = None
    width: int | None = None
    height: int | None = None
    num_frames: int | None = None
    fps: float | None = None
    steps: int | None = None
    variation_seed: int | None = None
    variation_strength: float = 0.0
    attempts: int = 0  # failed or interrupted runs so far (crash, oom, restart mid-run)
    error: str | None = None  # user-facing reason of a failure
    error_kind: str | None = None
    progress_step: int | None = None
    progress_total: int | None = None
    stage: str | None = None
    progress_channel_id: int | None = None
    progress_message_id: int | None = None
    result_channel_id: int | None = None
    result_message_id: int | None = None
    # The deferred interaction: its token edits the progress message for 15 minutes.
    interaction_token: str | None = field(default=None, repr=False)  # a secret: never logged
    application_id: int | None = None
    token_created_at: float | None = None
    output_path: str | None = None
    output_bytes: int | None = None
    output_pruned_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    gen_seconds: float | None = None
    delivered_at: float | None = None
    delivery_attempts: int = 0
    # The result message was deleted (Delete button): result_message_id/result_channel_id are
    # cleared with it, so nothing links to a message that is gone.
    result_deleted_at: float | None = None
    # The clip's one showcase post (Share), so a second Share links to it instead of reposting.
    shared_channel_id: int | None = None
    shared_message_id: int | None = None
    shared_at: float | None = None
    # A result post in flight (bot/post_records.py): first attempted at; a Delete clicked on a
    # message of this job before the post was recorded.
    result_post_started_at: float | None = None
    delete_requested_message_id: int | None = None
    quota_day: str | None = None  # UTC day counted against the daily quota; None = not counted
    meta: dict[str, Any] = field(default_factory=dict)  # the backend's Done.meta and extras

    @property
    def pending(self) -> bool:
        return self.status in PENDING

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def delivered(self) -> bool:
        return self.delivered_at is not None

    @property
    def owner_id(self) -> int:
        """The member who gets credit for the clip's look: the original author if any."""
        return self.credit_user_id if self.credit_user_id is not None else self.user_id

    def token_alive(self, now: float, *, lifetime: float = 15 * 60, margin: float = 30) -> bool:
        """Whether the interaction token can still edit the reply (Discord: 15 minutes)."""
        if self.interaction_token is None or self.token_created_at is None:
            return False
        return now < self.token_created_at + lifetime - margin

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Job:
        data = {k: row[k] for k in _JOB_FIELDS if k in row}
        data["meta"] = json.loads(row.get("meta") or "{}")
        data["status"] = JobStatus(data["status"])
        return cls(**data)


_JOB_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Job))
_MUTABLE_FIELDS = frozenset(_JOB_FIELDS) - {"id", "seq", "status", "created_at"}


def _encode(name: str, value: Any) -> Any:
    if name == "meta":
        return json.dumps(value or {}, sort_keys=True)
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, StrEnum):
        return value.value
    return value


# Keep this many recent generation times per preset for ETAs.
GEN_TIMES_KEPT = 50


class Store:
    """The SQLite store. One instance per process; use it from one thread."""

    def __init__(
        self,
        path: str | Path,
        *,
        busy_timeout_ms: int = 5000,
        migrate_to: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level stays the default: sqlite-utils needs legacy transaction control.
        conn = sqlite3.connect(str(self.path), timeout=busy_timeout_ms / 1000)
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise RuntimeError(f"could not switch {self.path} to WAL mode (got {mode!r})")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        self.conn = conn
        self.db = sqlite_utils.Database(conn)
        self._migrate(SCHEMA_VERSION if migrate_to is None else migrate_to)

    # -- lifecycle ----------------------------------------------------------------------

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        row = self.conn.execute("SELECT MAX(version) FROM _migrations").fetchone()
        return row[0] or 0

    def _migrate(self, target: int) -> None:
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS _migrations ("
            "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
        )
        current = self.schema_version
        if current > SCHEMA_VERSION:
            raise RuntimeError(
                f"{self.path} has schema version {current}, newer than this Zoetrope "
                f"({SCHEMA_VERSION}); upgrade Zoetrope instead of downgrading the database"
            )
        for version, name, apply in MIGRATIONS:
            if version <= current or version > target:
                continue
            with self.db.atomic():
                apply(self.db)
                self.conn.execute(
                    "INSERT INTO _migrations (version, name, applied_at) "
                    "VALUES (?, ?, datetime('now'))",
                    (version, name),
                )

    # -- jobs ---------------------------------------------------------------------------

    @staticmethod
    def new_job_id() -> str:
        """10 lowercase base32 characters (50 random bits): safe in URLs and custom_ids."""
        return base64.b32encode(secrets.token_bytes(7)).decode("ascii").lower()[:10]

    def insert_job(self, job: Job) -> Job:
        """Insert a new job row; returns it with its `seq` (submission order) filled in."""
        if job.status not in STATUSES:
            raise ValueError(f"job status must be one of {STATUSES}, got {job.status!r}")
        if job.kind not in KINDS:
            raise ValueError(f"job kind must be one of {KINDS}, got {job.kind!r}")
        row = {k: _encode(k, getattr(job, k)) for k in _JOB_FIELDS if k != "seq"}
        columns = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        cursor = self.db.execute(
            f"INSERT INTO jobs ({columns}) VALUES ({marks})", list(row.values())
        )
        job.seq = cursor.lastrowid or 0
        return job

    def get_job(self, job_id: str) -> Job | None:
        rows = list(self.db.query("SELECT * FROM jobs WHERE id = ?", [job_id]))
        return Job.from_row(rows[0]) if rows else None

    def require_job(self, job_id: str) -> Job:
        job = self.get_job(job_id)
        if job is None:
            raise NotFound(f"There is no job `{job_id}`.")
        return job

    def transition(
        self,
        job_id: str,
        from_status: str | Iterable[str],
        to_status: str,
        **fields: Any,
    ) -> Job:
        """Move a job from one of `from_status` to `to_status`, setting `fields` with it.

        One guarded UPDATE: if another path changed the status first, nothing is written
        and InvalidState says what the job is now.
        """
        sources = (from_status,) if isinstance(from_status, str) else tuple(from_status)
        for source in sources:
            if to_status not in TRANSITIONS.get(source, ()):
                raise ValueError(f"no transition from {source!r} to {to_status!r}")
        bad = set(fields) - _MUTABLE_FIELDS
        if bad:
            raise ValueError(f"cannot set job fields {sorted(bad)} in a transition")
        sets = ["status = ?"] + [f"{name} = ?" for name in fields]
        values = [to_status] + [_encode(k, v) for k, v in fields.items()]
        marks = ", ".join("?" for _ in sources)
        cursor = self.db.execute(
            f"UPDATE jobs SET {', '.join(sets)} WHERE id = ? AND status IN ({marks})",
            [*values, job_id, *sources],
        )
        job = self.require_job(job_id)
        if cursor.rowcount != 1:
            raise InvalidState(f"That clip is {_STATUS_WORDS.get(job.status, job.status)}.")
        return job

    def update_job(self, job_id: str, **fields: Any) -> Job:
        """Set non-status fields (message ids, progress, delivery). Never the status."""
        bad = set(fields) - _MUTABLE_FIELDS
        if bad:
            raise ValueError(f"cannot set job fields {sorted(bad)} with update_job")
        if fields:
            sets = ", ".join(f"{name} = ?" for name in fields)
            values = [_encode(k, v) for k, v in fields.items()]
            self.db.execute(f"UPDATE jobs SET {sets} WHERE id = ?", [*values, job_id])
        return self.require_job(job_id)

    def increment_delivery_attempts(self, job_id: str) -> Job:
        self.db.execute(
            "UPDATE jobs SET delivery_attempts = delivery_attempts + 1 WHERE id = ?", [job_id]
        )
        return self.require_job(job_id)

    # -- compound writes (each one transaction) -----------------------------------------

    def insert_counted(self, job: Job, *, tries: int = 5) -> Job:
        """Insert a new job and, when `job.quota_day` is set, count it against that day, in
        one transaction. An id collision (50 random bits) gets a new id and another try."""
        for attempt in range(tries):
            try:
                with self.db.atomic():
                    if job.quota_day is not None:
                        self.add_daily(job.user_id, job.quota_day, 1)
                    return self.insert_job(job)
            except sqlite3.IntegrityError:
                if self.get_job(job.id) is None or attempt == tries - 1:
                    raise
                job.id = self.new_job_id()
        raise AssertionError("unreachable")

    def finish_refunded(
        self, job: Job, from_status: str, to_status: JobStatus, **fields: Any
    ) -> Job:
        """Move `job` to failed or cancelled and give its daily count back, in one
        transaction (a clip that was not made does not count)."""
        with self.db.atomic():
            finished = self.transition(job.id, from_status, to_status, quota_day=None, **fields)
            if job.quota_day is not None:
                self.add_daily(job.user_id, job.quota_day, -1)
        return finished

    def mark_delivered(
        self, job_id: str, *, message_id: int | None, channel_id: int | None, at: float
    ) -> Job:
        """Record where the result (or failure notice) reached the member; the first
        delivery wins (guarded on `delivered_at IS NULL`)."""
        self.require_job(job_id)
        self.db.execute(
            "UPDATE jobs SET delivered_at = ?, result_message_id = ?, result_channel_id = ? "
            "WHERE id = ? AND delivered_at IS NULL",
            [at, message_id, channel_id, job_id],
        )
        return self.require_job(job_id)

    def forget_output(self, job_id: str, *, at: float) -> Job:
        """The output file was pruned: the row stays, without a path."""
        return self.update_job(job_id, output_path=None, output_pruned_at=at)

    def _jobs(self, sql: str, params: list[Any]) -> list[Job]:
        return [Job.from_row(row) for row in self.db.query(sql, params)]

    def jobs_with_status(self, *statuses: str) -> list[Job]:
        """Jobs in any of `statuses`, oldest submission first."""
        marks = ", ".join("?" for _ in statuses)
        return self._jobs(
            f"SELECT * FROM jobs WHERE status IN ({marks}) ORDER BY seq", list(statuses)
        )

    def pending_for_user(self, user_id: int) -> int:
        return self._count("status IN ('queued', 'running') AND user_id = ?", [user_id])

    def pending_for_guild(self, guild_id: int) -> int:
        return self._count("status IN ('queued', 'running') AND guild_id = ?", [guild_id])

    def count_jobs(self) -> int:
        """Rows in `jobs`, whatever their status (tests: "nothing was written")."""
        return self._count("1", [])

    def _count(self, where: str, params: list[Any]) -> int:
        return self.conn.execute(f"SELECT COUNT(*) FROM jobs WHERE {where}", params).fetchone()[0]

    def pending_jobs_for_user(self, user_id: int) -> list[Job]:
        """The member's waiting and running jobs, oldest first."""
        return self._jobs(
            "SELECT * FROM jobs WHERE status IN ('queued', 'running') AND user_id = ? ORDER BY seq",
            [user_id],
        )

    def pending_child(self, parent_id: str, user_id: int) -> Job | None:
        """A waiting or running job made from `parent_id` by `user_id`, if any."""
        jobs = self._jobs(
            "SELECT * FROM jobs WHERE parent_id = ? AND user_id = ? "
            "AND status IN ('queued', 'running') ORDER BY seq LIMIT 1",
            [parent_id, user_id],
        )
        return jobs[0] if jobs else None

    def history(self, user_id: int, *, guild_id: int | None = None, limit: int = 10) -> list[Job]:
        """The member's most recent jobs (newest first), optionally only in one server."""
        if guild_id is None:
            return self._jobs(
                "SELECT * FROM jobs WHERE user_id = ? ORDER BY seq DESC LIMIT ?", [user_id, limit]
            )
        return self._jobs(
            "SELECT * FROM jobs WHERE user_id = ? AND guild_id = ? ORDER BY seq DESC LIMIT ?",
            [user_id, guild_id, limit],
        )

    def undelivered(self, statuses: Iterable[str] = ("done",)) -> list[Job]:
        """Finished jobs whose result (or failure notice) never reached the member."""
        statuses = tuple(statuses)
        marks = ", ".join("?" for _ in statuses)
        return self._jobs(
            f"SELECT * FROM jobs WHERE status IN ({marks}) AND delivered_at IS NULL ORDER BY seq",
            list(statuses),
        )

    def mark_result_deleted(self, job_id: str, *, message_id: int, at: float) -> bool:
        """Record that the result message `message_id` was deleted: its ids are cleared and
        `result_deleted_at` set. Guarded on the id, so deleting another copy of the clip (a
        /job re-post) changes nothing. Returns whether the row changed."""
        cursor = self.db.execute(
            "UPDATE jobs SET result_deleted_at = ?, result_message_id = NULL, "
            "result_channel_id = NULL WHERE id = ? AND result_message_id = ?",
            [at, job_id, message_id],
        )
        return cursor.rowcount == 1

    def restore_result(self, job_id: str, *, message_id: int, channel_id: int) -> bool:
        """Make a re-post the job's result message, only if its result had been deleted.
        Returns whether the row changed."""
        cursor = self.db.execute(
            "UPDATE jobs SET result_message_id = ?, result_channel_id = ?, "
            "result_deleted_at = NULL WHERE id = ? AND result_deleted_at IS NOT NULL",
            [message_id, channel_id, job_id],
        )
        return cursor.rowcount == 1

    def mark_shared(self, job_id: str, *, message_id: int, channel_id: int, at: float) -> bool:
        """Record the clip's showcase post; the first one wins. Returns whether it was new."""
        cursor = self.db.execute(
            "UPDATE jobs SET shared_message_id = ?, shared_channel_id = ?, shared_at = ? "
            "WHERE id = ? AND shared_message_id IS NULL",
            [message_id, channel_id, at, job_id],
        )
        return cursor.rowcount == 1

    def outputs_finished_before(self, ts: float) -> list[Job]:
        """Finished jobs with an output file on disk that finished before `ts`."""
        return self._jobs(
            "SELECT * FROM jobs WHERE status = 'done' AND finished_at < ? "
            "AND output_path IS NOT NULL ORDER BY seq",
            [ts],
        )

    # -- daily quota --------------------------------------------------------------------

    def daily_count(self, user_id: int, day: str) -> int:
        row = self.conn.execute(
            "SELECT count FROM daily_counts WHERE user_id = ? AND day = ?", [user_id, day]
        ).fetchone()
        return row[0] if row else 0

    def add_daily(self, user_id: int, day: str, delta: int) -> int:
        """Add `delta` (negative for a refund) to the member's count for `day`; never below 0."""
        self.db.execute(
            "INSERT INTO daily_counts (user_id, day, count) VALUES (?, ?, MAX(?, 0)) "
            "ON CONFLICT (user_id, day) DO UPDATE SET count = MAX(count + ?, 0)",
            [user_id, day, delta, delta],
        )
        return self.daily_count(user_id, day)

    def prune_daily_counts(self, before_day: str) -> None:
        self.db.execute("DELETE FROM daily_counts WHERE day < ?", [before_day])

    # -- generation times (ETAs) --------------------------------------------------------

    def record_gen_time(self, preset: str, seconds: float, at: float) -> None:
        with self.db.atomic():
            self.conn.execute(
                "INSERT INTO gen_times (preset, seconds, finished_at) VALUES (?, ?, ?)",
                [preset, seconds, at],
            )
            self.conn.execute(
                "DELETE FROM gen_times WHERE preset = ? AND id NOT IN "
                "(SELECT id FROM gen_times WHERE preset = ? ORDER BY id DESC LIMIT ?)",
                [preset, preset, GEN_TIMES_KEPT],
            )

    def recent_gen_times(self, preset: str, limit: int = 20) -> list[float]:
        """The last `limit` generation times of `preset`, newest first."""
        rows = self.conn.execute(
            "SELECT seconds FROM gen_times WHERE preset = ? ORDER BY id DESC LIMIT ?",
            [preset, limit],
        ).fetchall()
        return [row[0] for row in rows]

    # -- guild settings -----------------------------------------------------------------

    def get_guild_settings(self, guild_id: int) -> GuildSettings:
        """The server's settings (defaults if it never changed any)."""
        row = self.conn.execute(
            f"SELECT {', '.join(_SETTING_FIELDS)} FROM guild_settings WHERE guild_id = ?",
            [guild_id],
        ).fetchone()
        if row is None:
            return GuildSettings(guild_id=guild_id)
        data = dict(zip(_SETTING_FIELDS, row, strict=True))
        data["allowed_channel_ids"] = tuple(json.loads(data["allowed_channel_ids"]))
        data["allowed_presets"] = tuple(json.loads(data["allowed_presets"]))
        data["others_can_use_buttons"] = bool(data["others_can_use_buttons"])
        return GuildSettings(**data)

    def update_guild_settings(
        self, guild_id: int, /, *, now: float | None = None, **changes: Any
    ) -> GuildSettings:
        """Validate and save `changes`; a bad name or value raises BadOption, saving nothing.

        Limits take None to go back to the bot's default.
        """
        check_id("guild_id", guild_id)
        current = self.get_guild_settings(guild_id)
        for name in changes:
            if name in ("guild_id", "updated_at") or name not in _SETTING_FIELDS:
                raise BadOption(f"Unknown server setting {name!r}.")
        clean = {name: validate_setting(name, value) for name, value in changes.items()}
        updated = dataclasses.replace(current, **clean, updated_at=now)
        row = dataclasses.asdict(updated)
        row["allowed_channel_ids"] = json.dumps(list(updated.allowed_channel_ids))
        row["allowed_presets"] = json.dumps(list(updated.allowed_presets))
        row["others_can_use_buttons"] = int(updated.others_can_use_buttons)
        columns = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        self.db.execute(
            f"INSERT OR REPLACE INTO guild_settings ({columns}) VALUES ({marks})",
            list(row.values()),
        )
        return updated
