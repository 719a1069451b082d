"""Our encoder vs diffusers.utils.export_to_video on the same frames, in the same run.

    .venv/bin/python bench/encode.py [--frames 81] [--width 832] [--height 480] [--repeat 3]

The frames are synthetic but move like a clip: a drifting colour gradient, a few shapes
sliding and growing across it, and a little seeded noise (generated video is never clean).
Prints seconds (median of --repeat interleaved runs), bytes, bytes relative to diffusers, PSNR of the
decoded clip against the source frames, and whether `moov` is in front (faststart).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from generator import encode  # noqa: E402


def synthetic_clip(frames: int, height: int, width: int, *, seed: int = 0) -> np.ndarray:
    """uint8 (F, H, W, 3): moving gradient + moving shapes + mild noise, seeded."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    shapes = [
        (rng.uniform(0, width), rng.uniform(0, height), rng.uniform(-6, 6), rng.uniform(-4, 4),
         rng.uniform(20, 90), rng.integers(0, 256, 3))
        for _ in range(6)
    ]  # fmt: skip
    clip = np.empty((frames, height, width, 3), np.uint8)
    for i in range(frames):
        t = i / max(1, frames - 1)
        img = np.empty((height, width, 3), np.float32)
        img[..., 0] = 127 + 100 * np.sin((x + 14 * i) / 90.0)
        img[..., 1] = 127 + 100 * np.cos((y - 6 * i) / 70.0 + t)
        img[..., 2] = 127 + 90 * np.sin((x + y) / 150.0 + 2 * t)
        for k, (cx, cy, vx, vy, r, colour) in enumerate(shapes):
            px, py = (cx + vx * i) % width, (cy + vy * i) % height
            radius = r * (1 + 0.3 * np.sin(t * 6 + k))
            if k % 2:  # discs
                mask = (x - px) ** 2 + (y - py) ** 2 < radius**2
            else:  # squares
                mask = (np.abs(x - px) < radius) & (np.abs(y - py) < radius)
            img[mask] = colour
        img += rng.normal(0, 3.0, img.shape).astype(np.float32)
        clip[i] = np.clip(img, 0, 255).astype(np.uint8)
    return clip


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def timed(fns: list[Callable[[], object]], repeat: int) -> list[float]:
    """Median seconds of each function; runs are interleaved so that load from other
    processes on the machine spreads over all encoders alike."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            started = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - started)
    return [statistics.median(t) for t in times]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--fps", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    from diffusers.utils import export_to_video  # bench only: the bot never imports diffusers

    frames = synthetic_clip(args.frames, args.height, args.width)
    # export_to_video takes PIL images or floats in [0, 1]; PIL keeps the pixels identical.
    pil_frames = [Image.fromarray(f) for f in frames]
    tight = 200_000  # between what CRF 25 and CRF 20 give here: the loop must work

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        runs: list[tuple[str, Callable[[], object], Path]] = [
            (
                "diffusers export_to_video (CRF 25)",
                lambda: export_to_video(pil_frames, str(out / "d.mp4"), fps=args.fps),
                out / "d.mp4",
            ),
            (
                f"ours, default (CRF {encode.DEFAULT_CRF}, 10 MiB budget)",
                lambda: encode.encode_mp4(frames, out / "a.mp4", fps=args.fps),
                out / "a.mp4",
            ),
            (
                "ours, CRF 25 (same CRF as diffusers)",
                lambda: encode.encode_mp4(frames, out / "b.mp4", fps=args.fps, crf=25),
                out / "b.mp4",
            ),
            (
                "ours, 200 kB budget (budget loop)",
                lambda: encode.encode_mp4(frames, out / "c.mp4", fps=args.fps, byte_budget=tight),
                out / "c.mp4",
            ),
        ]
        rows = []
        medians = timed([fn for _, fn, _ in runs], args.repeat)
        for (name, fn, path), seconds in zip(runs, medians, strict=True):
            info = encode.probe(path)
            decoded, _ = encode.read_frames(path)
            quality = (
                psnr(decoded, frames[:, : decoded.shape[1], : decoded.shape[2]])
                if decoded.shape == frames.shape
                else float("nan")  # downscaled to fit: not comparable pixel for pixel
            )
            crf = fn() if name.startswith("ours") else None  # one more run, for its CRF
            rows.append((name, seconds, info, quality, crf))

    base = rows[0][2]["bytes"]
    print(
        f"{args.frames} frames {args.width}x{args.height} @ {args.fps} fps, "
        f"median of {args.repeat}, {os.cpu_count()} CPU cores, "
        f"ffmpeg {Path(encode.imageio_ffmpeg.get_ffmpeg_exe()).name}"
    )
    header = f"{'encoder':<42} {'seconds':>8} {'bytes':>10} {'ratio':>6} {'PSNR dB':>8} {'size':>9} {'frames':>6} {'faststart':>9} {'CRF':>4}"
    print(header)
    print("-" * len(header))
    for name, seconds, info, quality, result in rows:
        crf = str(result.crf) if isinstance(result, encode.EncodeResult) else "25"
        print(
            f"{name:<42} {seconds:>8.2f} {info['bytes']:>10,} {info['bytes'] / base:>6.2f} "
            f"{quality:>8.2f} {str(info['width']) + 'x' + str(info['height']):>9} "
            f"{info['frames']:>6} {'yes' if info['faststart'] else 'no':>9} {crf:>4}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
