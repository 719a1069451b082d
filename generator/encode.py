"""Frames -> H.264 MP4 that plays inline in Discord, under a byte budget.

Torch-free on purpose (numpy, Pillow and imageio-ffmpeg's bundled ffmpeg only): the bot imports
this module for the Loop button (ping-pong re-encode) and for fitting a clip under an upload
limit, and the bot process never imports torch.

Every file is H.264 (libx264), yuv420p, with the `moov` box in front (`+faststart`, so Discord
can start playing before the download ends), with even width and height (yuv420p halves the
chroma planes; odd sizes are cropped by one pixel at the right/bottom edge, which loses one
row or column instead of inventing one). Files are written to a temp name beside the target
and `os.replace`d, so a reader never sees a half-written clip.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import imageio_ffmpeg
import numpy as np
from PIL import Image

from generator.mp4 import (  # noqa: F401  (re-exported: callers use encode.probe etc.)
    EncodeError,
    _existing,
    _payload_bytes,
    _read_log,
    _sample_count,
    last_frame,
    probe,
    read_frames,
)

DEFAULT_BYTE_BUDGET = 10 * 1024 * 1024  # Discord's default upload limit since January 2025
# From bench/encode.py's preset x CRF sweep (BENCHMARKS.md, "Encoding"). CRF 20 is the highest
# CRF at which tiny frames (which get "medium", below) keep the quality floor of
# tests/test_encode.py, and one CRF serves every size. At CRF 20 and real clip sizes, the fastest
# x264 preset whose PSNR is at least diffusers' export_to_video's (medium, CRF 25) on the same
# frames, at no more than 4x its bytes, is "veryfast": about 0.4x its time, 3.2x its bytes.
DEFAULT_CRF = 20
DEFAULT_X264_PRESET = "veryfast"  # x264 speed/size trade-off (not a model preset)
# Below this many pixels per frame an encode takes milliseconds whatever the preset, and x264's
# fast presets lose the most there (few macroblocks to search): such clips get "medium".
SMALL_FRAME_PIXELS = 320 * 240
SMALL_FRAME_X264_PRESET = "medium"
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow")
X264_PRESETS += ("slower", "veryslow")
# Past this quantizer, smaller frames look better than coarser ones: an over-budget clip whose
# bitrate would need more is downscaled, down to MIN_SHORT_SIDE.
SOFT_MAX_CRF = 32
MAX_CRF = 51  # libx264's ceiling
MIN_SHORT_SIDE = 144  # below this a clip is not worth posting; report "cannot fit" instead
# The bitrate-targeted encode aims this far under the budget, on top of the VBV bound below
# (x264 keeps that bound unless even QP 51 cannot, which _next_setting sends to the smallest).
BUDGET_MARGIN = 0.95
# VBV buffer length: the file is at most maxrate * (duration + this). 1 s landed closest to the
# budget in bench/encode.py (0.5 s and 2 s both left more unused).
VBV_SECONDS = 1.0
MAX_ATTEMPTS = 4  # CRF pass, bitrate pass, and two rescues that the tests never see used

PathLike = str | os.PathLike[str]


@dataclass(slots=True, frozen=True)
class EncodeResult:
    """What was written. `fits` is False when no setting brought the file under the budget:
    the file is then the smallest one we could make, and `note` says why it is still too big.
    `note` also explains a downscale done to fit. `crf` is None when the source was copied
    unchanged (fit_to_budget on a clip that already fits); for a bitrate-targeted encode
    (`kbps` set) it is the average quantizer x264 settled on, on the same 0-51 scale."""

    path: str
    bytes: int
    crf: int | None
    width: int
    height: int
    frames: int
    fps: float
    fits: bool
    note: str | None
    attempts: int = 1
    seconds: float = 0.0
    kbps: int | None = None  # the bitrate cap of a bitrate-targeted encode, else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- writing ------------------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class _Setting:
    """One encode: a constant quality (`crf`) or a capped bitrate (`kbps`), at a frame size."""

    width: int
    height: int
    crf: int | None = None
    kbps: int | None = None


def encode_mp4(
    frames: np.ndarray | Iterable[np.ndarray],
    path: PathLike,
    *,
    fps: float,
    byte_budget: int = DEFAULT_BYTE_BUDGET,
    crf: int = DEFAULT_CRF,
    x264_preset: str | None = None,
) -> EncodeResult:
    """Encode uint8 RGB frames (F, H, W, 3) to an H.264 MP4 at `path` under `byte_budget`.

    `frames` may be an array or any iterable of (H, W, 3) frames; an iterable is fed to ffmpeg
    as it yields, so the encode runs while the frames are still being made.

    The first encode is at `crf`. A file over budget gets exactly one more encode, at the
    bitrate the budget allows for the clip's duration (capped by a VBV buffer, so the size is
    bounded rather than hoped for), downscaled first when that bitrate would need a quantizer
    past SOFT_MAX_CRF. Never over budget silently: `fits` is False with a `note` when even the
    smallest file (MIN_SHORT_SIDE, CRF 51) is too big.
    """
    started = time.perf_counter()
    fps = _check_fps(fps)
    byte_budget = _check_budget(byte_budget)
    if not (isinstance(crf, int) and 0 <= crf <= MAX_CRF):
        raise ValueError(f"crf must be an int from 0 to {MAX_CRF}, got {crf!r}")
    if x264_preset is not None and x264_preset not in X264_PRESETS:
        raise ValueError(
            f"x264_preset must be one of {', '.join(X264_PRESETS)}, got {x264_preset!r}"
        )
    if isinstance(frames, np.ndarray):
        frames = _crop_even(_as_frames(frames))
    return _encode(frames, Path(path), fps, byte_budget, crf, x264_preset, started)


_Tried = tuple["_Setting", int, float, int]  # (setting, bytes, average QP, bytes of coded frames)


def _encode(
    frames: np.ndarray | Iterable[np.ndarray],
    target: Path,
    fps: float,
    byte_budget: int,
    crf: int,
    x264_preset: str | None,
    started: float,
    prior: _Tried | None = None,
) -> EncodeResult:
    """encode_mp4's work. `prior` is an encode already measured (fit_to_budget's source): the
    first encode is then skipped and the bitrate encode follows from it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    stem = f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}"
    trial, best = target.with_name(stem + ".try"), target.with_name(stem + ".best")
    tried: list[_Tried] = [prior] if prior else []
    kept: _Tried | None = None

    def keep(setting: _Setting, size: int, qp: float) -> None:
        """Keep the file if it is the best so far: the last one that fits (each later encode
        only happens because an earlier one did not), or while none fits, the smallest."""
        nonlocal kept
        tried.append((setting, size, qp, _payload_bytes(trial) or size))
        if kept is None or size <= byte_budget or (kept[1] > byte_budget and size < kept[1]):
            os.replace(trial, best)
            kept = tried[-1]

    try:
        if prior is None:
            video, first, size, qp = _encode_first(frames, trial, fps, crf, x264_preset)
            keep(first, size, qp)
        else:
            assert isinstance(frames, np.ndarray)
            video = frames
        count, height, width = video.shape[:3]
        duration = count / fps
        while (kept is None or kept[1] > byte_budget) and len(tried) < MAX_ATTEMPTS:
            setting = _next_setting(tried, byte_budget, duration)
            if setting is None:
                break
            size, qp = _write(video, trial, fps=fps, setting=setting, x264_preset=x264_preset)
            keep(setting, size, qp)
        assert kept is not None
        os.replace(best, target)
    finally:
        for leftover in (trial, best):
            leftover.unlink(missing_ok=True)

    setting, size, qp, _ = kept
    fits = size <= byte_budget
    out_w, out_h = setting.width, setting.height
    # For a bitrate-targeted file, the quantizer x264 settled on (the same 0-51 scale as CRF).
    used_crf = setting.crf if setting.crf is not None else min(MAX_CRF, round(qp))
    note = None
    if not fits:
        note = (
            f"cannot fit {_human(byte_budget)}: the smallest encode ({out_w}x{out_h}, "
            f"CRF {used_crf}) is {_human(size)}"
        )
    elif (out_w, out_h) != (width, height):
        note = f"downscaled from {width}x{height} to {out_w}x{out_h} to fit {_human(byte_budget)}"
    return EncodeResult(
        path=str(target),
        bytes=size,
        crf=used_crf,
        width=out_w,
        height=out_h,
        frames=count,
        fps=fps,
        fits=fits,
        note=note,
        attempts=len(tried) - (prior is not None),
        seconds=time.perf_counter() - started,
        kbps=setting.kbps,
    )


def x264_preset_for(width: int, height: int) -> str:
    """The x264 preset used when none is given: by frame size (see SMALL_FRAME_PIXELS)."""
    return SMALL_FRAME_X264_PRESET if width * height < SMALL_FRAME_PIXELS else DEFAULT_X264_PRESET


def _encode_first(
    frames: np.ndarray | Iterable[np.ndarray], path: Path, fps: float, crf: int, preset: str | None
) -> tuple[np.ndarray, _Setting, int, float]:
    """The CRF encode, fed frame by frame; returns the frames (kept for a second encode)."""
    if isinstance(frames, np.ndarray):
        setting = _Setting(frames.shape[2], frames.shape[1], crf=crf)
        return (
            frames,
            setting,
            *_write(frames, path, fps=fps, setting=setting, x264_preset=preset),
        )
    kept: list[np.ndarray] = []
    writer: _Writer | None = None
    try:
        for frame in frames:
            if writer is None:
                first = _crop_even(_as_frames(np.asarray(frame)[None]))[0]
                setting = _Setting(first.shape[1], first.shape[0], crf=crf)
                writer = _Writer(path, first.shape[1], first.shape[0], fps, setting, preset)
            frame = _check_frame(frame, kept[0] if kept else first)
            writer.send(frame)
            kept.append(frame)
        if writer is None:
            raise ValueError("frames is empty")
        size, qp = writer.finish(len(kept))
    except BaseException:
        if writer is not None:
            writer.abort()
        path.unlink(missing_ok=True)
        raise
    return np.stack(kept), setting, size, qp


def _check_frame(frame: np.ndarray, first: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame)
    height, width = first.shape[:2]
    if frame.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 RGB, got dtype {frame.dtype}")
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.shape[0] < height or frame.shape[1] < width:
        raise ValueError(f"every frame must have the first frame's shape, got {frame.shape}")
    return frame[:height, :width]


def _next_setting(tried: list[_Tried], budget: int, duration: float) -> _Setting | None:
    """What to encode after an over-budget file: the bitrate the budget allows, from the first
    encode's measured size. None when the smallest encode has already been tried."""
    setting, size, _, coded = tried[-1]
    first_setting, first_size, first_qp, first_payload = tried[0]
    smallest = _smallest(first_setting.width, first_setting.height)
    if setting == smallest:
        return None
    # What the container costs besides the frames (moov, sample tables), measured on the file.
    overhead = max(0, size - coded)
    payload = int((budget - overhead) * BUDGET_MARGIN) - 1024
    if setting.kbps is not None:
        # A rescue (not expected): the VBV cap was overshot, scale the rate down by the miss.
        payload = int(payload * min(0.9, budget / size))
    if payload <= 0:
        return smallest
    # x264's bits roughly halve for every +6 quantizer: the QP this budget needs at this size.
    need = first_qp + 6 * math.log2(max(1, first_payload) / payload)
    out_w, out_h = first_setting.width, first_setting.height
    if need > SOFT_MAX_CRF:
        # Bytes scale about with area at a given quantizer: shrink until SOFT_MAX_CRF would do,
        # never under MIN_SHORT_SIDE.
        area = 2 ** (-(need - SOFT_MAX_CRF) / 6)
        factor = max(math.sqrt(area), MIN_SHORT_SIDE / min(out_w, out_h))
        if factor < 1:
            out_w, out_h = _even(out_w * factor), _even(out_h * factor)
            need -= 6 * math.log2(1 / (factor * factor))
    if need > MAX_CRF + 6:
        return smallest  # even QP 51 makes twice the bytes allowed: no bitrate will do
    # VBV bound: bits <= maxrate * duration + bufsize, so this maxrate keeps the file in budget.
    kbps = max(1, int(payload * 8 / (duration + VBV_SECONDS) / 1000))
    return _Setting(out_w, out_h, kbps=kbps)


def _smallest(width: int, height: int) -> _Setting:
    factor = min(1.0, MIN_SHORT_SIDE / min(width, height))
    return _Setting(_even(width * factor), _even(height * factor), crf=MAX_CRF)


class _Writer:
    """One ffmpeg libx264 run, fed raw RGB frames through a pipe as they come.

    ffmpeg's log goes to a temp file, not a pipe (a pipe nobody reads can fill and block
    ffmpeg while we block writing frames); it gives the error line and x264's average QP."""

    def __init__(
        self, path: Path, width: int, height: int, fps: float, setting: _Setting, preset: str | None
    ) -> None:
        rate = Fraction(fps).limit_denominator(1001)
        cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostats", "-y"]
        cmd += ["-loglevel", "level+info", "-f", "rawvideo", "-pix_fmt", "rgb24"]
        cmd += ["-s", f"{width}x{height}", "-r", str(rate), "-i", "-", "-an"]
        if (setting.width, setting.height) != (width, height):
            # "area" averages source pixels: the cleanest filter for shrinking.
            cmd += ["-vf", f"scale={setting.width}:{setting.height}:flags=area"]
        preset = preset or x264_preset_for(setting.width, setting.height)
        cmd += ["-c:v", "libx264", "-preset", preset, "-pix_fmt", "yuv420p"]
        if setting.kbps is None:
            cmd += ["-crf", str(setting.crf)]
        else:
            rate_k = f"{setting.kbps}k"
            buffer_k = f"{max(1, int(setting.kbps * VBV_SECONDS))}k"
            cmd += ["-b:v", rate_k, "-maxrate", rate_k, "-bufsize", buffer_k]
        cmd += ["-movflags", "+faststart", "-f", "mp4", str(path)]
        path.unlink(missing_ok=True)
        self._path = path
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 -- closed in finish() or abort()
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._log
        )

    def send(self, frame: np.ndarray) -> None:
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write(memoryview(np.ascontiguousarray(frame)).cast("B"))
        except (BrokenPipeError, OSError) as exc:
            self.abort()
            raise EncodeError(f"ffmpeg failed while encoding {self._path.name}: {exc}") from exc

    def finish(self, count: int) -> tuple[int, float]:
        """Close the pipe, wait for ffmpeg; the file's size and x264's average QP."""
        assert self._proc.stdin is not None
        with contextlib.suppress(OSError):  # ffmpeg already gone: its status and log say why
            self._proc.stdin.close()
        self._proc.wait()
        log = _read_log(self._log).decode("utf-8", "replace")
        self._log.close()
        written = _sample_count(self._path) if self._path.exists() else None
        if self._proc.returncode != 0 or written != count:
            errors = [ln for ln in log.splitlines() if "[error]" in ln or "[fatal]" in ln]
            reason = errors[-1].split("]", 2)[-1].strip() if errors else "see the log"
            raise EncodeError(
                f"ffmpeg wrote {written} of {count} frames to {self._path.name} ({reason})"
            )
        return self._path.stat().st_size, _average_qp(log)

    def abort(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        if self._proc.stdin is not None:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()
        self._proc.wait()
        self._log.close()
        self._path.unlink(missing_ok=True)


def _write(
    video: np.ndarray, path: Path, *, fps: float, setting: _Setting, x264_preset: str | None
) -> tuple[int, float]:
    """One encode of a whole clip; returns the file size and x264's average QP."""
    count, height, width = video.shape[:3]
    writer = _Writer(path, width, height, fps, setting, x264_preset)
    try:
        for frame in video:
            writer.send(frame)
    except BaseException:
        writer.abort()
        raise
    return writer.finish(count)


# x264's closing stats: "frame I:1     Avg QP:20.02  size: 40104", one line per frame type.
_QP_LINE = re.compile(r"frame ([IPB]):(\d+)\s+Avg QP:\s*([\d.]+)")


def _average_qp(log: str) -> float:
    total = weighted = 0.0
    for _, count, qp in _QP_LINE.findall(log):
        total += int(count)
        weighted += int(count) * float(qp)
    return weighted / total if total else float("nan")


# -- clip operations (no GPU) -------------------------------------------------------------------


def pingpong(
    src: PathLike,
    dst: PathLike,
    *,
    byte_budget: int = DEFAULT_BYTE_BUDGET,
    crf: int = DEFAULT_CRF,
    x264_preset: str | None = None,
) -> EncodeResult:
    """Loop a clip forwards then backwards. The turn-around frames (last and first) are not
    repeated, so the loop has no stutter: F frames become 2F - 2."""
    frames, fps = read_frames(src)
    if len(frames) < 2:
        raise ValueError(f"src {str(src)!r} has {len(frames)} frame; ping-pong needs at least 2")
    looped = np.concatenate([frames, frames[-2:0:-1]])
    return encode_mp4(
        looped, dst, fps=fps, byte_budget=byte_budget, crf=crf, x264_preset=x264_preset
    )


def join(
    first: PathLike,
    second: PathLike,
    dst: PathLike,
    *,
    byte_budget: int = DEFAULT_BYTE_BUDGET,
    crf: int = DEFAULT_CRF,
    x264_preset: str | None = None,
) -> EncodeResult:
    """Append `second` to `first` for Extend. `second` starts on `first`'s last frame, so that
    seam frame is dropped: F1 + F2 - 1 frames. `second` is scaled to `first`'s size when they
    differ; the result keeps `first`'s frame rate."""
    head, fps = read_frames(first)
    tail, _ = read_frames(second)
    height, width = head.shape[1:3]
    if tail.shape[1:3] != (height, width):
        tail = np.stack(
            [
                np.asarray(Image.fromarray(f).resize((width, height), Image.Resampling.LANCZOS))
                for f in tail
            ]
        )
    joined = np.concatenate([head, tail[1:]])
    return encode_mp4(
        joined, dst, fps=fps, byte_budget=byte_budget, crf=crf, x264_preset=x264_preset
    )


def fit_to_budget(
    src: PathLike,
    dst: PathLike,
    byte_budget: int,
    *,
    x264_preset: str | None = None,
) -> EncodeResult:
    """Make an existing clip fit `byte_budget` (an upload limit). A clip that already fits is
    copied unchanged (crf None); otherwise it is re-encoded with a higher CRF or smaller."""
    started = time.perf_counter()
    byte_budget = _check_budget(byte_budget)
    source = _existing(src)
    size = source.stat().st_size
    if size <= byte_budget:
        info = probe(source)
        target = Path(dst)
        if target.resolve() != source.resolve():
            target.parent.mkdir(parents=True, exist_ok=True)
            temp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.copy")
            try:
                shutil.copyfile(source, temp)
                os.replace(temp, target)
            finally:
                temp.unlink(missing_ok=True)
        return EncodeResult(
            path=str(target),
            bytes=size,
            crf=None,
            width=info["width"],
            height=info["height"],
            frames=info["frames"],
            fps=info["fps"],
            fits=True,
            note=None,
            attempts=0,
            seconds=time.perf_counter() - started,
        )
    frames, fps = read_frames(source)
    frames = _crop_even(frames)
    # The source is the first encode: its size and coded bytes are measured; its quantizer is
    # not stored in the file, so take the default CRF that our clips are made at.
    first = _Setting(frames.shape[2], frames.shape[1], crf=DEFAULT_CRF)
    prior = (first, size, float(DEFAULT_CRF), _payload_bytes(source) or size)
    return _encode(frames, Path(dst), fps, byte_budget, DEFAULT_CRF, x264_preset, started, prior)


# -- helpers ------------------------------------------------------------------------------------


def _as_frames(video: np.ndarray) -> np.ndarray:
    if video.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 RGB, got dtype {video.dtype}")
    if video.ndim != 4 or video.shape[3] != 3:
        raise ValueError(f"frames must have shape (F, H, W, 3), got {video.shape}")
    if video.shape[0] < 1:
        raise ValueError("frames is empty")
    if video.shape[1] < 2 or video.shape[2] < 2:
        raise ValueError(
            f"frames must be at least 2x2 pixels, got {video.shape[2]}x{video.shape[1]}"
        )
    return video


def _crop_even(video: np.ndarray) -> np.ndarray:
    height, width = video.shape[1:3]
    return video[:, : height - height % 2, : width - width % 2]


def _even(value: float) -> int:
    return max(2, int(round(value / 2)) * 2)


def _check_fps(fps: float) -> float:
    if isinstance(fps, bool) or not isinstance(fps, int | float) or not 0 < fps <= 240:
        raise ValueError(f"fps must be a number in (0, 240], got {fps!r}")
    return fps


def _check_budget(byte_budget: int) -> int:
    if isinstance(byte_budget, bool) or not isinstance(byte_budget, int) or byte_budget <= 0:
        raise ValueError(f"byte_budget must be a positive int, got {byte_budget!r}")
    return byte_budget


def _human(size: int) -> str:
    if size >= 1024 * 1024:
        return f"{size / (1024 * 1024):.1f} MiB"
    if size >= 1024:
        return f"{size / 1024:.1f} KiB"
    return f"{size} bytes"
