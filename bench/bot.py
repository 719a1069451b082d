"""Benchmark the Discord side against the local Discord-compatible server.

    python bench/bot.py [--burst 100] [--steps 300] [--lag-seconds 5]

Figures printed:
- interaction-to-acknowledge latency (p50, p99, max) with `--burst` concurrent /animate, as
  the server measures it: from sending INTERACTION_CREATE to receiving the callback;
- event-loop lag of the bot's process (p99, max) at idle, during the burst, and while a
  generation runs (the tiny model with `--steps` steps, in the real worker process);
- resident memory of the bot process (idle after start, peak), and of its worker.

The server runs in this process; the bot runs in a child process (a real `ZoetropeBot`), so
its loop lag and memory are its own. The child samples its loop lag every 10 ms and writes the
samples to a file when it stops.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LAG_INTERVAL = 0.01


# -- the bot process ------------------------------------------------------------------------------


def run_child(out_path: str) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import discord  # noqa: F401

    from bot.app import ZoetropeBot
    from bot.config import load_settings
    from generator.backends import LocalBackend

    samples: list[tuple[float, float]] = []  # (wall time, lag in seconds)

    async def monitor() -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(LAG_INTERVAL)
            samples.append((time.time(), loop.time() - before - LAG_INTERVAL))

    async def main() -> None:
        settings = load_settings(env_file=None)
        backend = LocalBackend(settings.model)
        bot = ZoetropeBot(settings, backend=backend, guild_ready_timeout=0.05)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        lag = asyncio.create_task(monitor())
        runner = asyncio.create_task(bot.start(settings.discord_token))
        await stop.wait()
        lag.cancel()
        await bot.close()
        with contextlib.suppress(Exception):
            await runner
        await backend.close()
        Path(out_path).write_text(json.dumps(samples))

    asyncio.run(main())
    return 0


# -- the driver -----------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def png(seed: int) -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray((rng.random((96, 128, 3)) * 255).astype("uint8")).save(buffer, format="PNG")
    return buffer.getvalue()


def rss(pid: int) -> tuple[int, int]:
    """(bot process RSS, its children's RSS) in bytes."""
    import psutil

    proc = psutil.Process(pid)
    children = 0
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):  # a short-lived ffmpeg
            children += child.memory_info().rss
    return proc.memory_info().rss, children


async def drive(args: argparse.Namespace, work: Path) -> None:
    from tests.discord_server import FakeDiscord

    model = work / "model"
    print("building the tiny model…", flush=True)
    subprocess.run(
        [sys.executable, "-m", "tests.tiny_models", "wan21", str(model)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    settings_file = model / "zoetrope.json"
    tiny = json.loads(settings_file.read_text())
    tiny["steps"] = args.steps
    settings_file.write_text(json.dumps(tiny))

    async with FakeDiscord(spec=None) as server:
        guilds = [server.add_guild(f"Guild {i}") for i in range(10)]
        users = []
        for guild in guilds:
            for n in range(10):
                user = server.add_user(f"{guild.name}-{n}")
                server.add_member(guild, user)
                users.append((guild, user))
        samples_path = work / "lag.json"
        env = {
            **os.environ,
            "DISCORD_TOKEN": server.token,
            "ZOETROPE_DATA_DIR": str(work / "data"),
            "ZOETROPE_MODEL": str(model),
            "DISCORD_API_BASE": server.api_base,
            "DISCORD_GATEWAY_URL": server.gateway_url,
            "DISCORD_CDN_HOSTS": server.url.removeprefix("http://"),
            "ZOETROPE_MAX_QUEUE": "10000",
            "ZOETROPE_LOG_LEVEL": "WARNING",
        }
        child = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--child", str(samples_path)],
            cwd=ROOT,
            env=env,
        )
        try:
            await server.wait_for(lambda: server.connected, timeout=60, what="the bot")
            await asyncio.sleep(1.0)
            idle_rss, _ = rss(child.pid)
            # One clip first, so the burst measures the bot and not the model's cold start.
            guild, user = users[-1]
            warm = await server.slash(
                guild,
                guild.text_channels[0],
                user,
                "animate",
                options={"prompt": "warm-up"},
                attachments=[("photo.png", png(99), "image/png")],
            )
            await warm.acknowledged(timeout=30)
            await server.wait_for(
                lambda: any(m.attachments for m in server.messages(guild.text_channels[0])),
                timeout=300,
                what="the warm-up clip",
            )
            await asyncio.sleep(1.5)
            idle = (time.time() - 1.0, time.time())

            images = [png(i) for i in range(8)]
            burst_start = time.time()
            interactions = await asyncio.gather(
                *(
                    server.slash(
                        guild,
                        guild.text_channels[0],
                        user,
                        "animate",
                        options={"prompt": f"clip {i}"},
                        attachments=[("photo.png", images[i % len(images)], "image/png")],
                    )
                    for i, (guild, user) in enumerate(users[: args.burst])
                )
            )
            await asyncio.gather(*(ix.acknowledged(timeout=30) for ix in interactions))
            acks = [ix.responded_after * 1000 for ix in interactions if ix.responded_after]
            # Every job admitted: each progress message got its first edit.
            peak_rss = idle_rss
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                peak_rss = max(peak_rss, rss(child.pid)[0])
                if all(ix.original is not None and ix.original.edits for ix in interactions):
                    break
                await asyncio.sleep(0.1)
            burst = (burst_start, time.time())
            # A generation runs now (the queue holds the rest); measure the loop meanwhile.
            await asyncio.sleep(0.5)
            gen_start = time.time()
            while time.time() - gen_start < args.lag_seconds:
                peak_rss = max(peak_rss, rss(child.pid)[0])
                await asyncio.sleep(0.1)
            generating = (gen_start, time.time())
            bot_rss, worker_rss = rss(child.pid)
            failed = sum(1 for ix in interactions if ix.failed)
        finally:
            child.send_signal(signal.SIGTERM)
            await asyncio.to_thread(child.wait, 60)

    samples = json.loads(samples_path.read_text())

    def window(span: tuple[float, float]) -> list[float]:
        return [lag * 1000 for t, lag in samples if span[0] <= t <= span[1]]

    print()
    print(f"{args.burst} concurrent /animate (server-measured interaction -> acknowledgement):")
    print(
        f"  p50 {percentile(acks, 50):.0f} ms · p99 {percentile(acks, 99):.0f} ms · "
        f"max {max(acks):.0f} ms · failed (>3 s) {failed}"
    )
    print("event-loop lag of the bot process (10 ms timer overshoot):")
    for name, span in (("idle", idle), ("burst", burst), ("generating", generating)):
        lags = window(span)
        print(
            f"  {name:<11} p50 {percentile(lags, 50):5.1f} ms · p99 {percentile(lags, 99):5.1f} ms"
            f" · max {max(lags, default=float('nan')):5.1f} ms ({len(lags)} samples)"
        )
    print("resident memory:")
    print(
        f"  bot process idle {idle_rss / 2**20:.0f} MiB · peak {peak_rss / 2**20:.0f} MiB · "
        f"end {bot_rss / 2**20:.0f} MiB; worker process {worker_rss / 2**20:.0f} MiB"
    )
    print(
        f"  ({statistics.mean(acks):.0f} ms mean ack over {len(acks)} interactions; all "
        f"{args.burst} jobs queued with a first progress edit {burst[1] - burst[0]:.1f} s after "
        "the burst began)"
    )


def main() -> int:
    if len(sys.argv) >= 3 and sys.argv[1] == "--child":
        return run_child(sys.argv[2])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--burst", type=int, default=100, help="concurrent /animate (max 100)")
    parser.add_argument("--steps", type=int, default=300, help="steps of the tiny model")
    parser.add_argument("--lag-seconds", type=float, default=5.0)
    args = parser.parse_args()
    if not 1 <= args.burst <= 100:
        parser.error(f"--burst must be 1..100, got {args.burst}")
    with tempfile.TemporaryDirectory(prefix="zoetrope-bench-") as tmp:
        asyncio.run(drive(args, Path(tmp)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
