"""render.py: what members read, from plain job rows (no Discord client involved)."""

from __future__ import annotations

import re

import discord
import pytest

from bot import render
from bot.render import QueueInfo
from bot.store import Job


def make_job(**changes: object) -> Job:
    base: dict[str, object] = dict(
        id="abcdefghij",
        kind="animate",
        status="queued",
        guild_id=10,
        channel_id=20,
        user_id=111111111111111111,
        prompt="waves roll in, camera slowly pushes forward",
        input_sha256="0" * 64,
        seed=42,
        created_at=1_700_000_000.0,
    )
    base.update(changes)
    return Job(**base)  # type: ignore[arg-type]


def test_result_buttons_are_the_full_set_in_valid_rows() -> None:
    """The result carries all nine buttons, at most five per row."""
    actions = [spec.action for spec in render.RESULT_BUTTONS]
    assert actions == [
        "reroll", "vary-subtle", "vary-strong", "edit", "extend",
        "loop", "share", "info", "delete",
    ]  # fmt: skip
    rows: dict[int, int] = {}
    for spec in render.RESULT_BUTTONS:
        rows[spec.row] = rows.get(spec.row, 0) + 1
    assert max(rows.values()) <= 5


@pytest.mark.parametrize(
    "prompt",
    ["@everyone look", "@here now", "<@123456789012345678> hi", "<@&123456789012345678> role"],
)
def test_prompt_mentions_are_defused(prompt: str) -> None:
    """Mentions in a prompt are broken with a zero-width space so they never ping."""
    shown = render.quote_prompt(prompt)
    assert "@everyone" not in shown and "@here" not in shown
    assert not re.search(r"<@[!&]?\d", shown)
    assert "\u200b" in shown


def test_prompt_markdown_is_escaped() -> None:
    """Markdown in a prompt renders as typed: each special character is backslashed."""
    shown = render.quote_prompt("**bold** _it_ `code` ~~x~~ ||spoiler||")
    assert "\\*\\*bold\\*\\*" in shown and "\\`code\\`" in shown and "\\|\\|" in shown


def test_long_prompt_is_cut_and_message_fits() -> None:
    """A huge prompt is shortened; every message stays within Discord's 2000 characters."""
    job = make_job(prompt="word " * 2000, status="done", gen_seconds=3.0, num_frames=81, fps=16)
    assert len(render.result_content(job)) <= 2000
    assert len(render.progress_content(job)) <= 2000
    assert "…" in render.quote_prompt(job.prompt)


def test_progress_bar_bounds() -> None:
    """The bar is empty at 0, full at total, and clamps out-of-range steps."""
    assert render.progress_bar(0, 10, width=10).startswith("▱" * 10)
    assert render.progress_bar(10, 10, width=10).startswith("▰" * 10)
    assert render.progress_bar(5, 10, width=10) == "▰" * 5 + "▱" * 5 + "  50%"
    assert render.progress_bar(15, 10, width=4).startswith("▰" * 4)
    assert render.progress_bar(3, 0, width=4).startswith("▱" * 4)


def test_progress_states() -> None:
    """Queued shows position and a relative ETA; load shows warming up; denoise a bar."""
    queued = render.progress_content(make_job(), QueueInfo(position=3, eta=1_700_000_120.2))
    assert "position 3" in queued and "<t:1700000121:R>" in queued
    warming = render.progress_content(make_job(status="running", stage="load"))
    assert "Warming up" in warming
    first_while_loading = render.progress_content(
        make_job(), QueueInfo(position=1, warming_up=True)
    )
    assert "Warming up" in first_while_loading
    running = render.progress_content(
        make_job(status="running", stage="denoise", progress_step=3, progress_total=4)
    )
    assert "75%" in running and "step 3/4" in running
    assert "Encoding" in render.progress_content(make_job(status="running", stage="encode"))
    failed = render.progress_content(make_job(status="failed", error="out of **memory**"))
    assert "Failed" in failed and "\\*\\*memory" in failed
    assert render.progress_buttons(make_job()) == render.PROGRESS_BUTTONS
    assert render.progress_buttons(make_job(status="done")) == ()


def test_result_content_details_and_credit() -> None:
    """The result names requester, seed, preset, length and time, and credits the original."""
    job = make_job(
        status="done",
        kind="reroll",
        preset="wan-480p-fast",
        num_frames=81,
        fps=16.0,
        gen_seconds=38.24,
        user_id=222222222222222222,
        credit_user_id=111111111111111111,
    )
    text = render.result_content(job)
    assert text.startswith("<@222222222222222222>")
    assert "from a clip by <@111111111111111111>" in text
    assert "seed `42`" in text and "wan-480p-fast" in text and "5.1 s clip" in text
    assert "38.2 s" in text


def test_result_says_it_is_ai_generated_and_by_which_model() -> None:
    """The result and the Share repost say visibly that the clip is AI-generated, naming the
    model its mark names (meta `ai_model`), else the preset; a long prompt never cuts it."""
    job = make_job(status="done", preset="wan-480p-fast", meta={"ai_model": "local:wan*21"})
    text = render.result_content(job)
    assert "-# 🤖 AI-generated video · made with local:wan\\*21" in text
    share = render.showcase_content(job, original_url=None, sharer_id=999)
    assert "AI-generated video · made with local:wan\\*21" in share
    plain = make_job(status="done", preset="wan-480p-fast")
    assert "AI-generated video · made with wan-480p-fast" in render.result_content(plain)
    long = make_job(status="done", prompt="word " * 2000, meta={"ai_model": "ltx-fast"})
    assert "AI-generated video · made with ltx-fast" in render.result_content(long)


def test_info_embed_fields() -> None:
    """Info lists what reproduces the clip: seed, preset, size, frames, steps."""
    job = make_job(
        status="done", preset="ltx-fast", width=768, height=512, num_frames=49, fps=24.0,
        steps=8, gen_seconds=12.0, variation_seed=7, variation_strength=0.25,
    )  # fmt: skip
    embed = render.info_embed(job)
    assert isinstance(embed, discord.Embed)
    fields = {f.name: f.value for f in embed.fields}
    assert fields["Seed"] == "42" and fields["Preset"] == "ltx-fast"
    assert fields["Size"] == "768×512" and fields["Frames"] == "49 @ 24 fps"
    assert fields["Variation"] == "7 × 0.25" and fields["Steps"] == "8"


def test_showcase_and_history() -> None:
    """Share credits the author with a link; history links finished clips."""
    job = make_job(status="done", result_channel_id=20, result_message_id=30)
    url = render.result_url(job)
    assert url == "https://discord.com/channels/10/20/30"
    share = render.showcase_content(job, original_url=url, sharer_id=999)
    assert "by <@111111111111111111>" in share and "shared by <@999>" in share and url in share
    history = render.history_content([job, make_job(id="k2", status="failed")])
    assert url in history and "failed" in history
    assert "no clips" in render.history_content([])


def test_queue_content() -> None:
    """/queue lists the member's jobs with positions and the server's counts."""
    text = render.queue_content(
        [(make_job(), QueueInfo(position=2, eta=1_700_000_060.0))], guild_waiting=5, guild_running=1
    )
    assert "5 waiting" in text and "position 2" in text and "<t:1700000060:R>" in text


def test_backend_note_replaces_warming_up() -> None:
    """A backend's own reason (Redis: "waiting for a worker") is shown on a queued job."""
    text = render.progress_content(make_job(), QueueInfo(position=2, note="waiting for a worker"))
    assert "waiting for a worker" in text and "position 2" in text


def test_done_line_links_or_explains() -> None:
    """Done links the result; a DM delivery and an undeliverable clip are said in words."""
    posted = make_job(status="done", result_channel_id=20, result_message_id=30, delivered_at=1.0)
    assert "https://discord.com/channels/10/20/30" in render.progress_content(posted)
    by_dm = make_job(status="done", result_channel_id=99, result_message_id=30, delivered_at=1.0)
    assert "by DM" in render.progress_content(by_dm)
    nowhere = make_job(status="done", delivered_at=1.0)
    assert "DMs are closed" in render.progress_content(nowhere)
