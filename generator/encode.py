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

import math
import os
import re
import secrets
import shutil
import struct
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import imageio_ffmpeg
import numpy as np
from PIL import Image

DEFAULT_BYTE_BUDGET = 10 * 1024 * 1024  # Discord's default upload limit since January 2025
DEFAULT_CRF = 20  # visually clean for generated clips; the budget loop raises it when needed
DEFAULT_X264_PRESET = "medium"  # x264 speed/size trade-off (not a model preset)
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow")
X264_PRESETS += ("slower", "veryslow")
# Raising the CRF past this point costs more visible quality than downscaling does, so the
# budget loop switches to smaller frames here and only goes further once at the minimum size.
SOFT_MAX_CRF = 32
MAX_CRF = 51  # libx264's ceiling
MIN_SHORT_SIDE = 144  # below this a clip is not worth posting; report "cannot fit" instead
MAX_ATTEMPTS = 10

PathLike = str | os.PathLike[str]


class EncodeError(Exception):
    """ffmpeg could not write or read a clip. `message` is fit to show to a user."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(slots=True, frozen=True)
class EncodeResult:
    """What was written. `fits` is False when no setting brought the file under the budget:
    the file is then the smallest one we could make, and `note` says why it is still too big.
    `note` also explains a downscale done to fit. `crf` is None when the source was copied
    unchanged (fit_to_budget on a clip that already fits)."""

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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- writing ------------------------------------------------------------------------------------


def encode_mp4(
    frames: np.ndarray | Sequence[np.ndarray],
    path: PathLike,
    *,
    fps: float,
    byte_budget: int = DEFAULT_BYTE_BUDGET,
    crf: int = DEFAULT_CRF,
    x264_preset: str = DEFAULT_X264_PRESET,
) -> EncodeResult:
    """Encode uint8 RGB frames (F, H, W, 3) to an H.264 MP4 at `path` under `byte_budget`.

    Starts at `crf`; while the file is over budget, raises the CRF (up to SOFT_MAX_CRF), then
    downscales (down to MIN_SHORT_SIDE on the short side), then raises the CRF up to MAX_CRF.
    Never over budget silently: the result's `fits` is False with a `note` when it cannot fit.
    """
    started = time.perf_counter()
    video = _as_frames(frames)
    fps = _check_fps(fps)
    byte_budget = _check_budget(byte_budget)
    if not (isinstance(crf, int) and 0 <= crf <= MAX_CRF):
        raise ValueError(f"crf must be an int from 0 to {MAX_CRF}, got {crf!r}")
    if x264_preset not in X264_PRESETS:
        raise ValueError(
            f"x264_preset must be one of {', '.join(X264_PRESETS)}, got {x264_preset!r}"
        )
    video = _crop_even(video)
    count, height, width = video.shape[:3]

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    stem = f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}"
    trial = target.with_name(stem + ".try")
    best = target.with_name(stem + ".best")
    best_size: int | None = None
    best_setting = (crf, width, height)
    out_w, out_h, attempts = width, height, 0
    too_big: int | None = None  # the highest CRF seen over budget at the current size

    def attempt(crf: int) -> int:
        """Encode once; keep the file if it is the best so far: the lowest CRF that fits,
        or while nothing fits, the smallest file."""
        nonlocal attempts, best_size, best_setting
        attempts += 1
        size = _write(video, trial, fps=fps, crf=crf, x264_preset=x264_preset, size=(out_w, out_h))
        fits, had_fit = size <= byte_budget, best_size is not None and best_size <= byte_budget
        if (
            best_size is None
            or (fits and (not had_fit or crf < best_setting[0]))
            or (not had_fit and size < best_size)
        ):
            os.replace(trial, best)
            best_size, best_setting = size, (crf, out_w, out_h)
        return size

    try:
        while True:
            size = attempt(crf)
            if size <= byte_budget or attempts >= MAX_ATTEMPTS:
                break
            ratio = size / byte_budget
            # x264's bitrate roughly halves for every +6 CRF: jump straight to the estimate.
            bump = max(2, math.ceil(6 * math.log2(ratio)) + 1)
            short = min(out_w, out_h)
            if crf < SOFT_MAX_CRF:
                too_big, crf = crf, min(SOFT_MAX_CRF, crf + bump)
            elif short > MIN_SHORT_SIDE:
                # Bytes scale with area: shrink each side by sqrt(1/ratio), a little more for
                # margin, at most by half per attempt and never under the minimum side.
                factor = max(0.5, min(0.9, 0.95 / math.sqrt(ratio)), MIN_SHORT_SIDE / short)
                out_w, out_h = _even(out_w * factor), _even(out_h * factor)
                too_big = None
            elif crf < MAX_CRF:
                too_big, crf = crf, min(MAX_CRF, crf + bump)
            else:
                break
        # The jump above is deliberately pessimistic; when it landed well under the budget,
        # bisect back towards the CRF that was too big (two tries at most) for better quality.
        for _ in range(2):
            assert best_size is not None
            if too_big is None or best_size > 0.8 * byte_budget:
                break
            fitting = best_setting[0]
            if fitting - too_big <= 2 or attempts >= MAX_ATTEMPTS:
                break
            middle = (too_big + fitting) // 2
            if attempt(middle) > byte_budget:
                too_big = middle
        os.replace(best, target)
    finally:
        for leftover in (trial, best):
            leftover.unlink(missing_ok=True)

    assert best_size is not None
    crf, out_w, out_h = best_setting
    fits = best_size <= byte_budget
    note = None
    if not fits:
        note = (
            f"cannot fit {_human(byte_budget)}: the smallest encode ({out_w}x{out_h}, CRF {crf}) "
            f"is {_human(best_size)}"
        )
    elif (out_w, out_h) != (width, height):
        note = f"downscaled from {width}x{height} to {out_w}x{out_h} to fit {_human(byte_budget)}"
    return EncodeResult(
        path=str(target),
        bytes=best_size,
        crf=crf,
        width=out_w,
        height=out_h,
        frames=count,
        fps=fps,
        fits=fits,
        note=note,
        attempts=attempts,
        seconds=time.perf_counter() - started,
    )


def _write(
    video: np.ndarray, path: Path, *, fps: float, crf: int, x264_preset: str, size: tuple[int, int]
) -> int:
    """One ffmpeg run; returns the file size. Checks the output, because imageio-ffmpeg does
    not look at ffmpeg's exit status."""
    height, width = video.shape[1:3]
    params = ["-crf", str(crf), "-preset", x264_preset, "-movflags", "+faststart", "-f", "mp4"]
    if size != (width, height):
        # "area" averages source pixels: the cleanest filter for shrinking.
        params += ["-vf", f"scale={size[0]}:{size[1]}:flags=area"]
    path.unlink(missing_ok=True)
    writer = imageio_ffmpeg.write_frames(
        str(path),
        (width, height),
        fps=fps,
        codec="libx264",
        pix_fmt_in="rgb24",
        pix_fmt_out="yuv420p",
        quality=None,  # otherwise imageio adds its own -crf before ours
        macro_block_size=2,  # even sizes pass untouched; we never let it rescale
        ffmpeg_log_level="error",
        output_params=params,
    )
    try:
        writer.send(None)
        for frame in video:
            writer.send(np.ascontiguousarray(frame))
    except OSError as exc:
        raise EncodeError(f"ffmpeg failed while encoding {path.name}: {exc}") from exc
    finally:
        writer.close()
    written = _sample_count(path) if path.exists() else None
    if written != len(video):
        raise EncodeError(
            f"ffmpeg wrote {written} of {len(video)} frames to {path.name} (see the log above)"
        )
    return path.stat().st_size


# -- reading ------------------------------------------------------------------------------------
# Decoding runs ffmpeg directly rather than through imageio_ffmpeg.read_frames: that generator
# leaves the ffmpeg process's pipes open when ffmpeg has already exited (a ResourceWarning and a
# leaked file descriptor per read, which a long-running bot cannot afford).


def read_frames(path: PathLike) -> tuple[np.ndarray, float]:
    """Decode a clip to uint8 RGB frames (F, H, W, 3) and its frame rate."""
    path = _existing(path)
    header = _header(path)
    width, height = header["width"], header["height"]
    with tempfile.TemporaryFile() as log, _decoder(path, log) as proc:
        assert proc.stdout is not None
        data = proc.stdout.read()
        proc.wait()
        errors = _read_log(log)
    frame_size = width * height * 3
    if proc.returncode != 0 or not data or len(data) % frame_size:
        raise EncodeError(f"cannot decode {path.name}: {_tail(errors)}")
    frames = np.frombuffer(data, np.uint8).reshape(-1, height, width, 3)
    return frames, _fps_of(path, header)


def last_frame(path: PathLike) -> Image.Image:
    """The clip's last frame as an RGB image (the start of an Extend)."""
    path = _existing(path)
    header = _header(path)
    width, height = header["width"], header["height"]
    frame_size = width * height * 3
    last = b""
    with tempfile.TemporaryFile() as log, _decoder(path, log) as proc:
        assert proc.stdout is not None
        while chunk := proc.stdout.read(frame_size):  # one frame in memory, not the clip
            if len(chunk) == frame_size:
                last = chunk
        proc.wait()
        errors = _read_log(log)
    if proc.returncode != 0 or not last:
        raise EncodeError(f"cannot decode {path.name}: {_tail(errors)}")
    return Image.frombytes("RGB", (width, height), last)


def probe(path: PathLike) -> dict[str, Any]:
    """What a clip is: codec, pix_fmt, width, height, frames, fps, bytes, and faststart (True
    when the `moov` box comes before `mdat`, read from the file's own top-level boxes)."""
    path = _existing(path)
    header = _header(path)
    order = [kind for kind, _, _ in _boxes(path, 0, path.stat().st_size)]
    faststart = "moov" in order and "mdat" in order and order.index("moov") < order.index("mdat")
    return {
        "codec": header["codec"],
        "pix_fmt": header["pix_fmt"],
        "width": header["width"],
        "height": header["height"],
        "frames": _sample_count(path),
        "fps": _fps_of(path, header),
        "bytes": path.stat().st_size,
        "faststart": faststart,
        "boxes": order,
    }


def _decoder(path: Path, log: IO[bytes]) -> subprocess.Popen[bytes]:
    # ffmpeg's messages go to a file, not a pipe: a damaged clip can print more than a pipe
    # holds while we are blocked reading frames, and both sides would wait forever.
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error", "-i", str(path)]
    cmd += ["-map", "0:v:0", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log)


def _read_log(log: IO[bytes]) -> bytes:
    log.seek(0)
    return log.read()


# "Stream #0:0[0x1](und): Video: h264 (High) (avc1 / 0x31637661), yuv420p(progressive), 44x30,
#  12 kb/s, 16 fps, 16 tbr, 16384 tbn (default)"
_VIDEO_LINE = re.compile(r"Stream #\S+: Video: (?P<rest>.*)")
_SIZE = re.compile(r"(?<![\w/])(\d+)x(\d+)(?=[\s,\[]|$)")
_FPS = re.compile(r"([\d.]+) fps")


def _header(path: Path) -> dict[str, Any]:
    """The first video stream as ffmpeg's banner describes it."""
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-hide_banner", "-i", str(path)]
    # ffmpeg exits 1 ("no output file") after printing what it found: that is expected.
    done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    text = done.stderr.decode("utf-8", "replace")
    match = _VIDEO_LINE.search(text)
    if match is None:
        raise EncodeError(f"cannot read {path.name} as a video: {_tail(done.stderr)}")
    rest = match["rest"]
    # split on commas outside parentheses: "yuv420p(tv, bt709)" stays one part
    parts = [p.strip() for p in re.split(r",\s*(?![^()]*\))", rest)]
    size = _SIZE.search(rest)
    fps = _FPS.search(rest)
    if size is None:
        raise EncodeError(f"cannot read {path.name} as a video: no frame size in {rest!r}")
    return {
        "codec": parts[0].split(" ", 1)[0],
        "pix_fmt": parts[1].split("(", 1)[0].strip() if len(parts) > 1 else "",
        "width": int(size[1]),
        "height": int(size[2]),
        "fps": float(fps[1]) if fps else 0.0,
    }


def _tail(stderr: bytes) -> str:
    lines = [ln for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    return lines[-1].strip() if lines else "ffmpeg gave no reason"


# -- clip operations (no GPU) -------------------------------------------------------------------


def pingpong(
    src: PathLike,
    dst: PathLike,
    *,
    byte_budget: int = DEFAULT_BYTE_BUDGET,
    crf: int = DEFAULT_CRF,
    x264_preset: str = DEFAULT_X264_PRESET,
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
    x264_preset: str = DEFAULT_X264_PRESET,
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
    x264_preset: str = DEFAULT_X264_PRESET,
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
    # Assume the source was made at our default CRF and start where the size estimate lands,
    # so the first attempt is not a copy of the file that was already too big.
    start = min(SOFT_MAX_CRF, DEFAULT_CRF + max(2, math.ceil(6 * math.log2(size / byte_budget))))
    result = encode_mp4(
        frames, dst, fps=fps, byte_budget=byte_budget, crf=start, x264_preset=x264_preset
    )
    return _replace_seconds(result, time.perf_counter() - started)


# -- helpers ------------------------------------------------------------------------------------


def _as_frames(frames: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    video = frames if isinstance(frames, np.ndarray) else np.stack(list(frames))
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


def _existing(path: PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise EncodeError(f"{path}: no such file")
    return path


def _human(size: int) -> str:
    if size >= 1024 * 1024:
        return f"{size / (1024 * 1024):.1f} MiB"
    if size >= 1024:
        return f"{size / 1024:.1f} KiB"
    return f"{size} bytes"


def _replace_seconds(result: EncodeResult, seconds: float) -> EncodeResult:
    data = result.to_dict()
    data["seconds"] = seconds
    return EncodeResult(**data)


# -- MP4 boxes ----------------------------------------------------------------------------------
# An MP4 is a tree of boxes: 4-byte big-endian size, 4-byte type, payload (size 1: a 64-bit size
# follows; size 0: to the end of the file). We read only what ffmpeg's banner does not say
# exactly: the order of the top-level boxes (faststart) and the video track's sample table.

_CONTAINERS = {"moov", "trak", "mdia", "minf", "stbl"}


def _boxes(path: Path, start: int, end: int) -> list[tuple[str, int, int]]:
    """(type, payload offset, payload end) of the boxes between `start` and `end`."""
    found = []
    with path.open("rb") as fh:
        offset = start
        while offset + 8 <= end:
            fh.seek(offset)
            size, kind = struct.unpack(">I4s", fh.read(8))
            header = 8
            if size == 1:
                (size,) = struct.unpack(">Q", fh.read(8))
                header = 16
            elif size == 0:
                size = end - offset
            if size < header or offset + size > end:
                break  # truncated or corrupt: report what came before
            found.append((kind.decode("latin-1"), offset + header, offset + size))
            offset += size
    return found


def _read(path: Path, offset: int, length: int) -> bytes:
    with path.open("rb") as fh:
        fh.seek(offset)
        return fh.read(length)


def _video_stbl(path: Path) -> tuple[Path, int, int, int] | None:
    """The video track's sample table box and its media timescale."""
    top = _boxes(path, 0, path.stat().st_size)
    for kind, start, end in top:
        if kind != "moov":
            continue
        for trak in (b for b in _boxes(path, start, end) if b[0] == "trak"):
            for mdia in (b for b in _boxes(path, trak[1], trak[2]) if b[0] == "mdia"):
                children = {b[0]: b for b in _boxes(path, mdia[1], mdia[2])}
                hdlr, mdhd, minf = children.get("hdlr"), children.get("mdhd"), children.get("minf")
                if not (hdlr and mdhd and minf):
                    continue
                # hdlr: version/flags (4), pre_defined (4), handler_type (4)
                if _read(path, hdlr[1] + 8, 4) != b"vide":
                    continue
                version = _read(path, mdhd[1], 1)[0]
                # mdhd v0: flags 3, created 4, modified 4, timescale 4; v1 has 8-byte times
                timescale_at = mdhd[1] + (20 if version == 1 else 12)
                (timescale,) = struct.unpack(">I", _read(path, timescale_at, 4))
                for stbl in (b for b in _boxes(path, minf[1], minf[2]) if b[0] == "stbl"):
                    return path, stbl[1], stbl[2], timescale
    return None


def _sample_count(path: Path) -> int | None:
    """Frames in the video track, from its `stsz` box (exact, no decoding)."""
    found = _video_stbl(path)
    if found is None:
        return None
    _, start, end, _ = found
    for kind, payload, _ in _boxes(path, start, end):
        if kind == "stsz":
            # version/flags (4), sample_size (4), sample_count (4)
            (count,) = struct.unpack(">I", _read(path, payload + 8, 4))
            return count
    return None


def _fps_of(path: Path, header: dict[str, Any]) -> float:
    """Frames per second from the sample durations (`stts`), else ffmpeg's banner."""
    found = _video_stbl(path)
    if found is not None:
        _, start, end, timescale = found
        for kind, payload, _ in _boxes(path, start, end):
            if kind != "stts" or not timescale:
                continue
            (entries,) = struct.unpack(">I", _read(path, payload + 4, 4))
            table = _read(path, payload + 8, 8 * entries)
            samples = duration = 0
            for i in range(entries):
                count, delta = struct.unpack_from(">II", table, 8 * i)
                samples += count
                duration += count * delta
            if samples and duration:
                fps = samples * timescale / duration
                return int(round(fps)) if abs(fps - round(fps)) < 1e-6 else round(fps, 3)
    return float(header.get("fps") or 0.0)
