"""What the content check costs: time per input image and per clip, event-loop lag while checks
run, and the bot's resident memory with the check client vs without.

    .venv/bin/python bench/safety.py [--repeat 5] [--concurrent 100]

Images are the shipped safe photos (tests/data/photos), also resized to 832x480 and 1280x720
(typical inputs). The clip is 81 frames of 832x480 at 16 fps built from those photos with
generator/encode.py; a clip check samples 8 frames. Memory is measured in fresh processes
(psutil RSS): the bot side imports the client and runs one check, the model lives in the child.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.safety_client import SafetyClient  # noqa: E402
from generator import encode, provenance, safety  # noqa: E402
from generator.safety import STANDARD, OpenNsfwClassifier  # noqa: E402

PHOTOS = sorted((ROOT / "tests" / "data" / "photos").glob("*.jpg"))


def median_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def photo_clip(path: Path, frames: int = 81, size: tuple[int, int] = (832, 480)) -> Path:
    images = [np.asarray(Image.open(p).convert("RGB").resize(size)) for p in PHOTOS]
    video = np.stack([images[i * len(images) // frames] for i in range(frames)])
    encode.encode_mp4(video, path, fps=16)
    return path


def in_process(repeat: int, clip: Path) -> dict[str, float]:
    started = time.perf_counter()
    model = OpenNsfwClassifier()
    load_ms = (time.perf_counter() - started) * 1000
    images = [Image.open(p).convert("RGB") for p in PHOTOS]
    figures = {"load_ms": load_ms}
    for label, size in (("native", None), ("832x480", (832, 480)), ("1280x720", (1280, 720))):
        batch = [im if size is None else im.resize(size) for im in images]
        figures[f"image_{label}_ms"] = statistics.median(
            median_ms(lambda im=im: model.classify(im), repeat) for im in batch
        )
    figures["clip_sample_8_frames_ms"] = median_ms(lambda: safety.sample_frames(clip, 8), repeat)
    figures["clip_check_8_frames_ms"] = median_ms(
        lambda: safety.check_clip(clip, STANDARD, False, classifier=model), repeat
    )
    return figures


async def through_client(repeat: int, clip: Path, concurrent: int, tmp: Path) -> dict[str, float]:
    image = tmp / "input.png"
    Image.open(PHOTOS[0]).convert("RGB").resize((832, 480)).save(image)
    figures: dict[str, float] = {}
    started = time.perf_counter()
    async with SafetyClient(max_pending=concurrent, timeout_s=600) as client:
        figures["client_start_ms"] = (time.perf_counter() - started) * 1000
        for kind, check, target in (
            ("image", client.check_image, image),
            ("clip", client.check_clip, clip),
        ):
            times = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                verdict = await check(target, STANDARD, False)
                times.append((time.perf_counter() - t0) * 1000)
                assert verdict.allowed, verdict
            figures[f"client_{kind}_ms"] = statistics.median(times)

        lags: list[float] = []
        stop = asyncio.Event()

        async def ticker() -> None:
            while not stop.is_set():
                t0 = time.perf_counter()
                await asyncio.sleep(0.01)
                lags.append((time.perf_counter() - t0 - 0.01) * 1000)

        tick = asyncio.create_task(ticker())
        t0 = time.perf_counter()
        verdicts = await asyncio.gather(
            *(client.check_image(image, STANDARD, False) for _ in range(concurrent))
        )
        figures["burst_seconds"] = time.perf_counter() - t0
        stop.set()
        await tick
        assert all(v.allowed for v in verdicts), {v.rule for v in verdicts}
        lags.sort()
        figures["loop_lag_p50_ms"] = lags[len(lags) // 2]
        figures["loop_lag_p99_ms"] = lags[min(len(lags) - 1, int(len(lags) * 0.99))]
        figures["loop_lag_max_ms"] = lags[-1]
    return figures


def marking(repeat: int, clip: Path, tmp: Path) -> dict[str, float]:
    """Provenance on the same clip: tags remux + C2PA signing (+ the verify inside), and a
    read back. The identity is made before timing (first use only)."""
    data_dir = tmp / "data"
    started = time.perf_counter()
    provenance.signing_identity(data_dir)
    figures = {"identity_first_use_ms": (time.perf_counter() - started) * 1000}
    copies = [tmp / f"mark{i}.mp4" for i in range(repeat)]
    for copy in copies:
        copy.write_bytes(clip.read_bytes())
    times = []
    for copy in copies:
        t0 = time.perf_counter()
        provenance.mark_clip(copy, model="bench-model", data_dir=data_dir)
        times.append((time.perf_counter() - t0) * 1000)
    figures["mark_clip_ms"] = statistics.median(times)
    figures["read_provenance_ms"] = median_ms(
        lambda: provenance.read_provenance(copies[0], data_dir=data_dir), repeat
    )
    figures["bytes_added"] = copies[0].stat().st_size - clip.stat().st_size
    return figures


# -- memory, each in a fresh process ----------------------------------------------------------------

RSS_CODE = {
    "bare": "import bot.safety_client\n",
    "client": (
        "import asyncio, bot.safety_client as sc\n"
        "from generator.safety import STANDARD\n"
        "async def main():\n"
        "    c = sc.SafetyClient()\n"
        "    await c.start()\n"
        "    v = await c.check_image(PHOTO, STANDARD, False)\n"
        "    assert v.allowed, v\n"
        "    extra['child_rss'] = psutil.Process(c.child_pid).memory_info().rss\n"
        "    extra['rss_with_client'] = psutil.Process().memory_info().rss\n"
        "    await c.close()\n"
        "asyncio.run(main())\n"
    ),
    "marking": (
        "import shutil, tempfile, pathlib\n"
        "from generator import provenance\n"
        "tmp = pathlib.Path(tempfile.mkdtemp())\n"
        "shutil.copy(CLIP, tmp / 'c.mp4')\n"
        "extra['before_mark'] = psutil.Process().memory_info().rss\n"
        "provenance.mark_clip(tmp / 'c.mp4', model='bench', data_dir=tmp / 'data')\n"
    ),
    "in_process": (
        "from PIL import Image\n"
        "from generator.safety import OpenNsfwClassifier\n"
        "OpenNsfwClassifier().classify(Image.open(PHOTO))\n"
    ),
}


def rss_of(mode: str, clip: Path) -> dict[str, int]:
    code = (
        "import json, sys, psutil\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        f"PHOTO = {str(PHOTOS[0])!r}\n"
        f"CLIP = {str(clip)!r}\n"
        "extra = {}\n" + RSS_CODE[mode] + "extra['rss'] = psutil.Process().memory_info().rss\n"
        "print(json.dumps(extra))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    if out.returncode != 0:
        raise SystemExit(f"{mode}: {out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--concurrent", type=int, default=100)
    args = parser.parse_args()
    mib = 1024 * 1024
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        clip = photo_clip(tmp / "clip.mp4")
        local = in_process(args.repeat, clip)
        remote = asyncio.run(through_client(args.repeat, clip, args.concurrent, tmp))
        marks = marking(args.repeat, clip, tmp)
        bare, client = rss_of("bare", clip), rss_of("client", clip)
        inproc, marked = rss_of("in_process", clip), rss_of("marking", clip)
    print("## in process (threads=1)")
    for key, value in local.items():
        print(f"{key:<28} {value:9.1f}")
    print("## through SafetyClient (spawned child)")
    for key, value in remote.items():
        print(f"{key:<28} {value:9.1f}")
    print("## provenance (81 frames 832x480)")
    for key, value in marks.items():
        print(f"{key:<28} {value:9.1f}")
    print("## resident memory (MiB)")
    print(f"{'bot side, client imported':<40} {bare['rss'] / mib:7.1f}")
    print(f"{'bot side, client started + 1 check':<40} {client['rss_with_client'] / mib:7.1f}")
    print(f"{'the check child':<40} {client['child_rss'] / mib:7.1f}")
    print(f"{'model loaded in-process instead':<40} {inproc['rss'] / mib:7.1f}")
    print(
        f"{'marking in-process: before / after':<40} {marked['before_mark'] / mib:7.1f} / "
        f"{marked['rss'] / mib:.1f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
