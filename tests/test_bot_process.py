"""The bot as a real `python main.py bot` process against the local Discord server: one bot per
data dir, a result posted just before the bot is killed, a Delete clicked while the result is
being posted. Each bot process runs its own worker with the tiny Wan 2.1 model.

Every test ends with no spec violation, no unimplemented route and no server error.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from bot import buttons
from tests.bot_process import ROOT, BotProcess, read_jobs
from tests.discord_server import FakeDiscord, Guild, Interaction, Message, User
from tests.discord_spec import load_spec
from tests.test_bot_e2e import _spec_path, png

RESULT_POST = r"^/channels/\d+/messages$"
# Two bot starts (each loads the tiny model in its worker) and a clip or two, on a loaded
# 2-core machine.
PROCESS_TEST = pytest.mark.timeout(420)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Wan 2.1 model the bots' workers load, built once for the module."""
    out = tmp_path_factory.mktemp("models") / "wan21"
    subprocess.run(
        [sys.executable, "-m", "tests.tiny_models", "wan21", str(out)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=120,
    )
    return out


class World:
    """A FakeDiscord with one server (#general) and alice; bots live in `data`."""

    def __init__(self, server: FakeDiscord, data: Path) -> None:
        self.server = server
        self.data = data
        self.guild: Guild = server.add_guild("Zoetrope Test", channels=("general",))
        self.alice: User = server.add_user("alice")
        server.add_member(self.guild, self.alice)
        self.bots: list[BotProcess] = []

    @property
    def channel(self) -> Any:
        return self.guild.channel("general")

    async def bot(self, name: str, model_dir: Path, *, connect: bool = True) -> BotProcess:
        bot = await BotProcess.start(self.server, self.data, model_dir=model_dir, name=name)
        self.bots.append(bot)
        if connect:
            await bot.connected(self.server, self.guild)
        return bot

    async def animate(
        self, prompt: str = "waves roll in, the camera pushes forward"
    ) -> Interaction:
        ix = await self.server.slash(
            self.guild,
            self.channel,
            self.alice,
            "animate",
            options={"prompt": prompt},
            attachments=[("photo.png", png(), "image/png")],
        )
        assert await ix.acknowledged() == 5
        return ix

    def results(self) -> list[Message]:
        return [m for m in self.server.messages(self.channel) if m.attachments]

    async def job(
        self, ix: Interaction, *, timeout: float = 240, until: str = "1"
    ) -> dict[str, Any]:
        """The job row of an interaction's progress message, once `until` (SQL) holds."""

        def find() -> dict[str, Any] | None:
            if ix.original is None:
                return None
            try:
                rows = read_jobs(
                    self.data, f"progress_message_id = ? AND ({until})", (ix.original.id,)
                )
            except sqlite3.OperationalError:  # not created yet
                return None
            return rows[0] if rows else None

        return await self.server.wait_for(find, timeout=timeout, what=f"a job where {until}")


@pytest_asyncio.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    path = _spec_path()
    async with FakeDiscord(spec=load_spec(path) if path else None) as server:
        world = World(server, tmp_path / "data")
        try:
            yield world
        finally:
            for bot in world.bots:
                await bot.stop()
        assert server.errors == [], server.errors
        assert server.unhandled == [], server.unhandled
        assert server.spec_violations == [], [str(v) for v in server.spec_violations]


@PROCESS_TEST
async def test_second_bot_on_a_data_dir_exits_at_once_and_touches_nothing(
    world: World, model_dir: Path
) -> None:
    """A second `main.py bot` on a data dir in use exits at once (exit 2) with one line naming the first bot's pid and start time, before it logs in; the first bot's clip, jobs and lock are untouched, and its job in flight is made once and delivered."""
    first = await world.bot("first", model_dir)
    made = await world.job(await world.animate(), until="delivered_at IS NOT NULL")
    clip = Path(made["output_path"])
    clip_bytes = clip.read_bytes()
    in_flight = await world.animate("a second clip, in flight")
    logins = len(world.server.requests_for("GET", r"^/users/@me$"))
    identifies = world.server.identify_count

    second = await world.bot("second", model_dir, connect=False)
    code = await second.wait(60)
    took = time.monotonic() - second.started
    lines = second.log.strip().splitlines()
    assert code == 2, second.log
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: another Zoetrope bot (pid {first.proc.pid}, started "), (
        lines
    )
    assert str(world.data) in lines[0] and "UTC" in lines[0]
    assert took < 30, took  # python and discord.py's import: no login, no model load
    assert world.server.identify_count == identifies
    assert len(world.server.requests_for("GET", r"^/users/@me$")) == logins

    assert clip.read_bytes() == clip_bytes
    assert (world.data / "zoetrope.lock").read_text().startswith(f"pid {first.proc.pid} ")
    again = read_jobs(world.data, "id = ?", (made["id"],))[0]
    assert (again["status"], again["result_message_id"]) == ("done", made["result_message_id"])
    later = await world.job(in_flight, until="delivered_at IS NOT NULL")
    assert later["status"] == "done" and later["attempts"] == 0  # not taken over
    assert [m.id for m in world.results()] == [
        made["result_message_id"],
        later["result_message_id"],
    ]
    assert first.proc.returncode is None


@PROCESS_TEST
async def test_result_posted_just_before_a_kill_is_not_posted_again_after_the_nonce_window(
    world: World, model_dir: Path
) -> None:
    """A bot killed (SIGKILL) after Discord made its result message but before it recorded it, restarted after Discord's 5-minute nonce window: the new bot finds that message in the channel, records it, and posts nothing again."""
    first = await world.bot("first", model_dir)
    held = world.server.hold("POST", RESULT_POST, after=True)
    ix = await world.animate()
    await held.reached(timeout=240)
    [posted] = world.results()
    await first.kill()
    held.release()
    row = await world.job(ix)
    assert row["status"] == "done" and row["delivered_at"] is None, row
    assert row["result_post_started_at"] is not None

    world.server.clock.advance(6 * 60)  # past the nonce window: Discord would post it again
    await world.bot("restarted", model_dir)
    row = await world.job(ix, until="delivered_at IS NOT NULL", timeout=60)
    assert row["result_message_id"] == posted.id
    assert [m.id for m in world.results()] == [posted.id]
    assert len(world.server.requests_for("POST", RESULT_POST)) == 1
    assert world.server.requests_for("GET", RESULT_POST)  # it looked in the channel
    await world.server.wait_for(
        lambda: str(posted.id) in ix.original.content, what="the progress message's link"
    )


@PROCESS_TEST
async def test_delete_clicked_while_the_result_is_posted_is_honoured(
    world: World, model_dir: Path
) -> None:
    """Delete clicked on the result while the bot still waits for Discord's answer to its post: the message goes, the job records it as deleted once the post lands, the progress message says so without a dead link, and /job posts the clip again and links to that."""
    await world.bot("bot", model_dir)
    held = world.server.hold("POST", RESULT_POST, after=True)
    ix = await world.animate()
    await held.reached(timeout=240)
    [posted] = world.results()
    job_id = posted.custom_ids[0].rsplit(":", 1)[1]
    click = await world.server.click(posted, buttons.custom_id("delete", job_id), world.alice)
    await world.server.wait_for(lambda: posted.deleted, what="the result deleted by the click")
    assert click.acknowledged_ok
    held.release()

    row = await world.job(ix, until="delivered_at IS NOT NULL", timeout=60)
    assert row["result_deleted_at"] is not None and row["result_message_id"] is None, row
    assert row["status"] == "done" and Path(row["output_path"]).is_file()
    progress = ix.original
    await world.server.wait_for(lambda: "was deleted" in progress.content, what="'was deleted'")
    assert str(posted.id) not in progress.content and f"/job {job_id}" in progress.content

    repost = await world.server.slash(
        world.guild, world.channel, world.alice, "job", {"id": job_id}
    )
    assert await repost.acknowledged() == 5
    await world.server.wait_for(lambda: repost.original.attachments, what="the re-post")
    back = await world.job(ix, until="result_message_id IS NOT NULL", timeout=30)
    assert back["result_message_id"] == repost.original.id and back["result_deleted_at"] is None
    await world.server.wait_for(
        lambda: str(repost.original.id) in progress.content, what="the link to the re-post"
    )
