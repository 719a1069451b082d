"""Admission: limits, quotas, refusals, prechecks and held places (bot/admission.py through JobService)."""

from __future__ import annotations

import pytest

from bot.admission import Limits
from bot.errors import (
    AlreadyPending,
    BadImage,
    BadOption,
    BadPrompt,
    ContentRefused,
    LimitReached,
    NotAllowed,
    QueueFull,
    QuotaExceeded,
)
from generator.safety import RULE_MINORS
from tests.jobs_backend import FakeBackend
from tests.jobs_env import NOON


async def test_limits_refuse_with_readable_messages(make_env) -> None:
    """Per-member, per-server and global limits refuse with a message; guilds override."""
    backend = FakeBackend()
    backend.hold()
    env = await make_env(backend, Limits(max_queue=6))
    await env.submit(user_id=1)
    await env.submit(user_id=1)
    with pytest.raises(LimitReached) as info:
        await env.submit(user_id=1, guild_id=2)
    assert info.value.message == (
        "You already have 2 clips in the queue — wait for one to finish or /cancel one."
    )
    env.service.update_guild_settings(1, max_pending_per_guild=3, max_pending_per_user=1)
    with pytest.raises(LimitReached, match="already have 2 clips"):
        await env.submit(user_id=1)
    await env.submit(user_id=2)
    with pytest.raises(QueueFull, match="This server already has 3 clips in the queue"):
        await env.submit(user_id=3)
    for user in (4, 5, 6):
        await env.submit(user_id=user, guild_id=None)  # DMs: each its own "server"
    with pytest.raises(QueueFull, match="Zoetrope's queue is full"):
        await env.submit(user_id=7, guild_id=9)
    assert len(env.store.jobs_with_status("queued", "running")) == 6


async def test_daily_quota_and_refund(make_env) -> None:
    """The daily quota counts clips, a failed clip is refunded, and it resets at midnight."""
    backend = FakeBackend()
    env = await make_env(backend, Limits(daily_per_user=2))
    first = await env.wait((await env.submit()).id)
    assert first.status == "done"
    backend.script("error")
    failed = await env.wait((await env.submit()).id)
    assert failed.status == "failed" and failed.quota_day is None
    assert env.store.daily_count(100, "2026-11-26") == 1  # the failure was refunded
    await env.wait((await env.submit()).id)
    with pytest.raises(QuotaExceeded) as info:
        await env.submit()
    assert "You've made 2 clips today" in info.value.message
    assert f"<t:{int(NOON) // 86400 * 86400 + 86400}:R>" in info.value.message
    env.service.update_guild_settings(1, daily_limit_per_user=0)  # this server: no limit
    await env.wait((await env.submit()).id)
    env.service.update_guild_settings(1, daily_limit_per_user=None)
    env.clock.now += 12 * 3600  # the next UTC day
    assert (await env.submit()).quota_day == "2026-11-27"


async def test_bad_options_are_refused_and_nothing_is_written(make_env) -> None:
    """Bad channel, preset, camera, duration, seed, prompt or image: typed errors, no rows."""
    env = await make_env()
    env.service.update_guild_settings(1, allowed_channel_ids=[77], allowed_presets=["ltx-fast"])
    cases = [
        (dict(channel_id=10), NotAllowed, "isn't enabled in this channel. Try <#77>."),
        (dict(channel_id=77, preset="wan22-5b"), NotAllowed, "preset isn't allowed"),
        (dict(preset="nope"), BadOption, "Unknown preset 'nope'"),
        (dict(camera="dolly zoom"), BadOption, "Camera must be one of static, push in"),
        (dict(duration="epic"), BadOption, "Duration must be one of short, standard, long"),
        (dict(seed=-1), BadOption, "seed must be a whole number"),
        (dict(prompt="\u200b "), BadPrompt, "empty"),
        (dict(prompt="x" * 601), BadPrompt, "limit is 600"),
        (dict(image_sha256="f" * 64), BadImage, "attach it again"),
        (dict(image_sha256="../x"), BadImage, "attach it again"),
    ]
    for kwargs, error, text in cases:
        with pytest.raises(error) as info:
            await env.submit(**kwargs)
        assert text in info.value.message, info.value.message
    with pytest.raises(BadOption, match="Unknown preset"):
        env.service.update_guild_settings(1, allowed_presets=["mine"])
    assert env.store.jobs_with_status("queued", "running", "failed") == []
    assert (await env.submit(channel_id=77, preset="ltx-fast")).preset == "ltx-fast"


async def test_precheck_refuses_what_submit_would_and_writes_nothing(make_env) -> None:
    """precheck raises submit's own error and message for each limit that needs no image (channel, preset, member and server pending, daily quota, queue size) and writes nothing."""
    backend = FakeBackend()
    backend.hold()
    env = await make_env(backend, Limits(max_queue=5, daily_per_user=3))
    env.service.update_guild_settings(1, allowed_channel_ids=[10], allowed_presets=["ltx-fast"])

    async def same_refusal(error: type, text: str, **where) -> None:
        where = {"guild_id": 1, "channel_id": 10, "user_id": 100, **where}
        rows = env.store.count_jobs()
        with pytest.raises(error) as early:
            env.service.precheck(**where)
        with pytest.raises(error) as late:
            await env.submit(**where)
        assert type(early.value) is type(late.value)
        assert early.value.message == late.value.message and text in early.value.message
        assert env.store.count_jobs() == rows

    assert env.service.precheck(guild_id=1, channel_id=10, user_id=100, preset="ltx-fast") is None
    assert env.store.daily_count(100, "2026-11-26") == 0  # a precheck counts nothing
    await same_refusal(NotAllowed, "isn't enabled in this channel", channel_id=11)
    await same_refusal(NotAllowed, "preset isn't allowed", preset="wan22-5b")
    await env.submit()
    await env.until(lambda: backend.started_ids)  # held while running: the rest wait
    await env.submit()
    await same_refusal(LimitReached, "You already have 2 clips in the queue")
    env.service.update_guild_settings(1, max_pending_per_guild=3)
    await env.submit(user_id=101)
    await same_refusal(QueueFull, "This server already has 3 clips", user_id=102)
    env.store.add_daily(103, "2026-11-26", 3)
    await same_refusal(QuotaExceeded, "You've made 3 clips today", guild_id=2, user_id=103)
    for user in (104, 105, 106):  # DMs: each its own "server"; 1 running + 5 waiting
        await env.submit(guild_id=None, user_id=user)
    await same_refusal(QueueFull, "Zoetrope's queue is full", guild_id=None, user_id=107)
    backend.release()


async def test_check_extend_refuses_before_the_last_frame_is_read(make_env) -> None:
    """Extend's limit, duplicate and length refusals come from check_extend without reading the clip; extend() gives the same ones before it extracts and stores the last frame."""
    backend = FakeBackend(real_video=True)
    env = await make_env(backend, Limits(pending_per_user=2))
    parent = await env.wait((await env.submit(preset="wan-480p-fast", duration="short")).id)
    assert env.service.check_extend(parent.id, user_id=100).id == parent.id
    inputs = sorted((env.tmp / "inputs").iterdir())
    backend.hold()
    await env.submit()
    await env.submit()
    with pytest.raises(LimitReached, match="You already have 2 clips"):
        env.service.check_extend(parent.id, user_id=100)
    with pytest.raises(LimitReached, match="You already have 2 clips"):
        await env.service.extend(parent.id, user_id=100)
    assert sorted((env.tmp / "inputs").iterdir()) == inputs  # no last frame was stored
    await env.service.reroll(parent.id, user_id=200)
    with pytest.raises(AlreadyPending, match="already have a clip from this one"):
        env.service.check_extend(parent.id, user_id=200)
    env.store.update_job(parent.id, num_frames=241)  # wan-480p-fast's cap on the total
    with pytest.raises(LimitReached, match="already as long as it can get"):
        env.service.check_extend(parent.id, user_id=300)
    env.store.update_job(parent.id, num_frames=parent.num_frames)
    env.service.update_guild_settings(1, others_can_use_buttons=False)
    with pytest.raises(NotAllowed, match="only the clip's owner"):
        env.service.check_extend(parent.id, user_id=300, channel_id=11)
    backend.release()


async def test_a_held_place_counts_until_it_is_spent_or_released(make_env) -> None:
    """reserve() checks once and holds the place: later checks count it like a written clip (pending and daily); submit spends it, release gives it back, a ticket of another request is refused."""
    env = await make_env(FakeBackend(), Limits(pending_per_user=3, daily_per_user=2))
    env.backend.hold()
    where = dict(guild_id=1, channel_id=10, user_id=100)
    first = env.service.reserve(**where)
    second = env.service.reserve(**where)
    with pytest.raises(QuotaExceeded, match="You've made 2 clips today"):
        env.service.reserve(**where)
    with pytest.raises(ValueError, match="another request"):
        await env.submit(user_id=101, ticket=first)
    assert env.store.count_jobs() == 0
    job = await env.submit(ticket=first)
    env.service.release(first)  # spent: a no-op
    assert env.store.count_jobs() == 1 and env.store.daily_count(100, "2026-11-26") == 1
    with pytest.raises(QuotaExceeded, match="You've made 2 clips today"):
        env.service.reserve(guild_id=2, channel_id=20, user_id=100)
    env.service.release(second)
    env.service.release(second)  # idempotent
    env.service.release(env.service.reserve(**where))  # the place is free again
    with pytest.raises(RuntimeError, match="already used or released"):
        await env.submit(ticket=second)
    assert env.store.count_jobs() == 1 and (await env.wait(job.id, "running")).id == job.id
    env.backend.release()


async def test_an_extend_click_is_checked_once(make_env) -> None:
    """reserve_extend() runs the admission rules once and extend(ticket=...) writes the row without running them again; while the ticket is held a second Extend of the same clip is refused."""
    backend = FakeBackend(real_video=True)
    env = await make_env(backend, Limits(pending_per_user=3))
    parent = await env.wait((await env.submit(preset="wan-480p-fast", duration="short")).id)
    admission = env.service.admission
    holds: list[dict] = []
    real_hold = admission.hold

    def counted_hold(**kw):
        holds.append(kw)
        return real_hold(**kw)

    admission.hold = counted_hold  # a spy on the real object: counts, changes nothing
    ticket = env.service.reserve_extend(parent.id, user_id=100)
    with pytest.raises(AlreadyPending, match="already have a clip from this one"):
        env.service.reserve_extend(parent.id, user_id=100)
    child = await env.service.extend(parent.id, user_id=100, ticket=ticket)
    assert child.kind == "extend" and child.parent_id == parent.id
    assert len(holds) == 2  # the click, and the refused second click; none in extend()
    with pytest.raises(AlreadyPending):
        env.service.check_extend(parent.id, user_id=100)  # the row now counts instead
    assert (await env.wait(child.id)).status == "done"


BLOCKED_PROMPT = "a nude child"  # names a minor and a sexual term: the built-in block


async def test_the_prompt_screen_refuses_before_anything_is_held_or_counted(make_env) -> None:
    """A prompt the built-in block refuses is refused by reserve() and by submit() with a
    clear message (ContentRefused, rule "minors"), whatever the server's settings; nothing is
    written, queued, held or counted. A ticket screened for another prompt is no way round."""
    env = await make_env(FakeBackend(), Limits(pending_per_user=1, daily_per_user=5))
    where = dict(guild_id=1, channel_id=10, user_id=100)
    for attempt in range(3):
        with pytest.raises(ContentRefused) as info:
            env.service.reserve(**where, prompt=BLOCKED_PROMPT)
        assert info.value.rule == RULE_MINORS and "never allowed, in any channel" in str(info.value)
        with pytest.raises(ContentRefused):
            await env.submit(prompt=f"  {BLOCKED_PROMPT.upper()} #{attempt}")
    ticket = env.service.reserve(**where, prompt="a calm lake")  # one place: none was held
    with pytest.raises(ContentRefused):
        await env.submit(prompt=BLOCKED_PROMPT, ticket=ticket)
    env.service.release(ticket)
    assert env.store.count_jobs() == 0 and env.store.daily_count(100, "2026-11-26") == 0
    # Words that are harmless apart pass, and the negative prompt is never screened.
    job = await env.submit(prompt="a child flying a kite", negative_prompt="nude, nsfw")
    assert job.status == "queued" and env.store.daily_count(100, "2026-11-26") == 1


async def test_edit_with_a_refused_prompt_makes_no_child(make_env) -> None:
    """Edit's new prompt goes through the same screen when the child is admitted: refused
    privately (ContentRefused), no child row, no daily count; a benign edit goes through."""
    env = await make_env(FakeBackend(), Limits(daily_per_user=5))
    parent = await env.wait((await env.submit()).id)
    counted = env.store.daily_count(100, "2026-11-26")
    rows = env.store.count_jobs()
    with pytest.raises(ContentRefused) as info:
        await env.service.edit(parent.id, user_id=100, prompt=f"waves, {BLOCKED_PROMPT}")
    assert info.value.rule == RULE_MINORS
    assert env.store.count_jobs() == rows and env.store.daily_count(100, "2026-11-26") == counted
    child = await env.service.edit(parent.id, user_id=100, prompt="waves roll out")
    assert child.kind == "edit" and child.prompt == "waves roll out"
