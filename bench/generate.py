"""Our worker's overhead over a direct pipeline call, on the same model, in the same run.

    .venv/bin/python bench/generate.py [--layout wan21|wan22|ltx] [--clips 5] [--frames 17]

On a machine without a GPU this uses a tiny random model (tests/tiny_models.py): the pipeline
itself costs little, so what shows is what our path adds around it — the JSON protocol over
pipes, the worker's event relay, progress callbacks and the asyncio side of LocalBackend.
Both sides encode the MP4 the same way (generator.encode), so the encode is in both.

  direct  VideoGenerator.load once, then generate + encode_mp4 per clip, in this process
  worker  LocalBackend (a child process, loaded once), submit per clip, wait for Done

Prints seconds per clip (median) for each and their ratio, plus the one-off load times.
Timing on a real GPU with real-size models is not part of this script (see BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from generator import encode  # noqa: E402
from generator.backends import LocalBackend  # noqa: E402
from generator.protocol import Done, Failed, GenerationRequest  # noqa: E402


def make_request(work: Path, i: int, frames: int) -> GenerationRequest:
    return GenerationRequest(
        job_id=f"bench{i}",
        image_path=str(work / "input.png"),
        prompt="waves roll in, camera slowly pushes forward",
        output_path=str(work / f"clip{i}.mp4"),
        seed=1000 + i,
        num_frames=frames,
    )


def bench_direct(model: Path, work: Path, clips: int, frames: int) -> tuple[float, list[float]]:
    from generator.pipeline import VideoGenerator

    started = time.perf_counter()
    generator = VideoGenerator.load(str(model))
    load = time.perf_counter() - started
    times = []
    for i in range(clips):
        request = make_request(work, i, frames)
        t0 = time.perf_counter()
        clip = generator.generate(request)
        encode.encode_mp4(clip.frames, request.output_path, fps=clip.fps)
        times.append(time.perf_counter() - t0)
    return load, times


async def bench_worker(
    model: Path, work: Path, clips: int, frames: int
) -> tuple[float, list[float]]:
    backend = LocalBackend(str(model))
    started = time.perf_counter()
    await backend.start()
    await backend.wait_ready()
    load = time.perf_counter() - started
    times = []
    try:
        for i in range(clips):
            request = make_request(work, i, frames)
            t0 = time.perf_counter()
            result = None
            async for event in backend.submit(request):
                if isinstance(event, Done | Failed):
                    result = event
            if not isinstance(result, Done):
                raise SystemExit(f"worker failed: {result}")
            times.append(time.perf_counter() - t0)
    finally:
        await backend.close()
    return load, times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layout", default="wan21", choices=["wan21", "wan22", "ltx"])
    parser.add_argument("--clips", type=int, default=5)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()

    from tests.tiny_models import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = build_tiny_model(args.layout, work / "model")
        settings = json.loads((model / "zoetrope.json").read_text())
        settings.update({"steps": args.steps, "pixel_budget": 128 * 128})
        (model / "zoetrope.json").write_text(json.dumps(settings))
        y, x = np.mgrid[0:96, 0:128]
        rgb = np.stack([x * 2, y * 2, (x + y) % 256], axis=-1).astype(np.uint8)
        Image.fromarray(rgb).save(work / "input.png")

        # One untimed warm-up clip each, then interleave nothing else: the direct side runs
        # first in this process, the worker side in its own process afterwards.
        direct_load, direct = bench_direct(model, work, args.clips + 1, args.frames)
        worker_load, worker = asyncio.run(bench_worker(model, work, args.clips + 1, args.frames))

    d, w = statistics.median(direct[1:]), statistics.median(worker[1:])
    print(f"tiny {args.layout} model, {args.frames} frames, {args.steps} steps, {args.clips} clips")
    print(f"{'path':<8} {'load s':>8} {'s/clip':>8} {'ratio':>6}")
    print(f"{'direct':<8} {direct_load:>8.2f} {d:>8.3f} {1.0:>6.2f}")
    print(f"{'worker':<8} {worker_load:>8.2f} {w:>8.3f} {w / d:>6.2f}")
    print(f"worker overhead per clip: {(w - d) * 1000:+.0f} ms")


if __name__ == "__main__":
    main()
