"""Our encoder vs diffusers.utils.export_to_video on the same frames, in the same run.

    .venv/bin/python bench/encode.py [--frames 81] [--width 832] [--height 480] [--repeat 3]

The frames are synthetic but move like a clip: a drifting colour gradient, a few shapes
sliding and growing across it, and a little seeded noise (generated video is never clean).
All timings are medians of --repeat interleaved runs. Four parts, one run:

1. export_to_video (the reference) and our default encode: seconds, bytes, PSNR, faststart.
2. A sweep of x264 preset x CRF: the fastest setting whose PSNR is at least the reference's, at
   no more than MAX_BYTES_RATIO times its bytes (how DEFAULT_X264_PRESET was chosen; the
   default CRF is held at 20 by the small-frame quality floor, see generator/encode.py).
3. Budgets that the default encode overshoots: how many encodes each took (the bitrate pass
   is the only retry) and how close to the budget the file landed.
4. Streaming: frames fed to ffmpeg while they are being produced vs. produced first, for a
   CPU-bound producer (the pipeline's float -> uint8 conversion, frame by frame) and an idle-CPU
   one (a GPU-side VAE decode, modelled as a sleep per frame).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from generator import encode  # noqa: E402

SWEEP_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "medium")
SWEEP_CRFS = (18, 20, 22, 25)
BUDGETS = (600_000, 300_000, 150_000, 60_000)
# A pick may make at most this many times the reference's bytes: ultrafast and superfast buy
# their speed by coding the noise at 4-30x the bytes, which costs upload time and budget.
MAX_BYTES_RATIO = 4.0


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


def quality(path: Path, frames: np.ndarray) -> float:
    decoded, _ = encode.read_frames(path)
    if decoded.shape != frames.shape:
        return float("nan")  # downscaled to fit: not comparable pixel for pixel
    return psnr(decoded, frames)


def table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--fps", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--produce-ms", type=float, default=20.0, help="idle producer, per frame")
    args = parser.parse_args()

    from diffusers.utils import export_to_video  # bench only: the bot never imports diffusers

    frames = synthetic_clip(args.frames, args.height, args.width)
    # export_to_video takes PIL images or floats in [0, 1]; PIL keeps the pixels identical.
    pil_frames = [Image.fromarray(f) for f in frames]
    print(
        f"{args.frames} frames {args.width}x{args.height} @ {args.fps} fps, median of "
        f"{args.repeat} interleaved runs, {os.cpu_count()} CPU cores, "
        f"ffmpeg {Path(encode.imageio_ffmpeg.get_ffmpeg_exe()).name}\n"
    )

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        ref_path, ours_path = out / "ref.mp4", out / "ours.mp4"
        runs: list[Callable[[], object]] = [
            lambda: export_to_video(pil_frames, str(ref_path), fps=args.fps),
            lambda: encode.encode_mp4(frames, ours_path, fps=args.fps),
        ]
        sweep = [(p, c) for p in SWEEP_PRESETS for c in SWEEP_CRFS]
        for i, (preset, crf) in enumerate(sweep):
            runs.append(
                lambda i=i, preset=preset, crf=crf: encode.encode_mp4(
                    frames, out / f"s{i}.mp4", fps=args.fps, crf=crf, x264_preset=preset
                )
            )
        medians = timed(runs, args.repeat)
        ref_s, ours_s = medians[0], medians[1]
        ref_info, ours_info = encode.probe(ref_path), encode.probe(ours_path)
        ref_q, ours_q = quality(ref_path, frames), quality(ours_path, frames)
        base = ref_info["bytes"]
        default_preset = encode.x264_preset_for(args.width, args.height)
        print("1. reference vs default")
        rows = []
        for name, secs, info, q in (
            ("diffusers export_to_video (medium, CRF 25)", ref_s, ref_info, ref_q),
            (
                f"ours, default ({default_preset}, CRF {encode.DEFAULT_CRF})",
                ours_s,
                ours_info,
                ours_q,
            ),
        ):
            rows.append([name, f"{secs:.2f}", f"{secs / ref_s:.2f}", f"{info['bytes']:,}",
                         f"{info['bytes'] / base:.2f}", f"{q:.2f}",
                         "yes" if info["faststart"] else "no"])  # fmt: skip
        print(table(["encoder", "s", "time ratio", "bytes", "bytes ratio", "PSNR dB",
                     "faststart"], rows))  # fmt: skip

        print(
            f"\n2. sweep (PSNR >= reference and bytes <= {MAX_BYTES_RATIO:g}x marked *, "
            f"the fastest of those at CRF {encode.DEFAULT_CRF} is the pick)"
        )
        results = []
        for i, ((preset, crf), secs) in enumerate(zip(sweep, medians[2:], strict=True)):
            path = out / f"s{i}.mp4"
            results.append((preset, crf, secs, path.stat().st_size, quality(path, frames)))
        good = [r for r in results if r[4] >= ref_q and r[3] <= MAX_BYTES_RATIO * base]
        fastest = min(good, key=lambda r: r[2]) if good else None
        # The default CRF is one for every frame size (held at DEFAULT_CRF by small frames):
        # the preset is picked at that CRF.
        at_default = [r for r in good if r[1] == encode.DEFAULT_CRF]
        pick = min(at_default, key=lambda r: r[2]) if at_default else None
        rows = [
            [p, str(c), f"{s:.2f}", f"{s / ref_s:.2f}", f"{b:,}", f"{b / base:.2f}", f"{q:.2f}",
             ("*" if r in good else "") + (" <- pick" if r is pick else "")
             + (" (fastest)" if r is fastest else "")]
            for r in results
            for p, c, s, b, q in [r]
        ]  # fmt: skip
        print(table(["preset", "CRF", "s", "time ratio", "bytes", "bytes ratio", "PSNR dB",
                     "pick"], rows))  # fmt: skip

        print(f"\n3. budgets below the default's {ours_info['bytes']:,} bytes")
        budgets = [b for b in BUDGETS if b < ours_info["bytes"]]
        fits = [
            lambda b=b: encode.encode_mp4(frames, out / f"b{b}.mp4", fps=args.fps, byte_budget=b)
            for b in budgets
        ]
        fit_s = timed(fits, args.repeat)
        rows = []
        for budget, fn, secs in zip(budgets, fits, fit_s, strict=True):
            result = fn()
            assert isinstance(result, encode.EncodeResult)
            rows.append([f"{budget:,}", str(result.attempts), f"{secs:.2f}", f"{result.bytes:,}",
                         f"{result.bytes / budget:.3f}", f"{result.width}x{result.height}",
                         str(result.kbps), str(result.crf), "yes" if result.fits else "NO",
                         f"{quality(Path(result.path), frames):.2f}"])  # fmt: skip
        print(table(["budget", "encodes", "s", "bytes", "of budget", "size", "kbps cap",
                     "avg QP", "fits", "PSNR dB"], rows))  # fmt: skip

        print("\n4. streaming: produce + encode, frames fed as made vs. all made first")
        floats = frames.astype(np.float32) / 255.0  # what the pipeline's output_type="np" gives

        def convert() -> Iterator[np.ndarray]:
            for f in floats:  # the pipeline's own conversion, one frame at a time
                yield (f * 255.0).round().clip(0, 255).astype(np.uint8)

        def idle() -> Iterator[np.ndarray]:
            for f in frames:
                time.sleep(args.produce_ms / 1000)
                yield f

        path = out / "stream.mp4"
        pairs = [
            ("CPU-bound producer (float -> uint8)", convert),
            (f"idle producer ({args.produce_ms:g} ms/frame, like a GPU decode)", idle),
        ]
        fns: list[Callable[[], object]] = []
        for _, producer in pairs:
            fns.append(
                lambda p=producer: encode.encode_mp4(np.stack(list(p())), path, fps=args.fps)
            )
            fns.append(lambda p=producer: encode.encode_mp4(p(), path, fps=args.fps))
        stream_s = timed(fns, args.repeat)
        rows = [
            [name, f"{stream_s[2 * i]:.2f}", f"{stream_s[2 * i + 1]:.2f}",
             f"{stream_s[2 * i] - stream_s[2 * i + 1]:+.2f}"]
            for i, (name, _) in enumerate(pairs)
        ]  # fmt: skip
        print(table(["producer", "made first, s", "streamed, s", "saved, s"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
