"""Reading MP4s without torch: probe a clip, decode its frames, read its box tables.

generator/encode.py writes clips and re-exports these; the tables here are what ffmpeg's banner
does not say exactly (faststart order, frame count, coded bytes per frame).
"""

from __future__ import annotations

import os
import re
import struct
import subprocess
import tempfile
from pathlib import Path
from typing import IO, Any

import imageio_ffmpeg
import numpy as np
from PIL import Image

PathLike = str | os.PathLike[str]


class EncodeError(Exception):
    """ffmpeg could not write or read a clip. `message` is fit to show to a user."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _existing(path: PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise EncodeError(f"{path}: no such file")
    return path


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


def _stsz(path: Path) -> tuple[int, int] | None:
    """The video track's (sample count, total sample bytes) from its `stsz` box."""
    found = _video_stbl(path)
    if found is None:
        return None
    _, start, end, _ = found
    for kind, payload, _ in _boxes(path, start, end):
        if kind == "stsz":
            # version/flags (4), sample_size (4), sample_count (4), then per-sample sizes
            size, count = struct.unpack(">II", _read(path, payload + 4, 8))
            if size:
                return count, size * count
            table = np.frombuffer(_read(path, payload + 12, 4 * count), ">u4")
            return count, int(table.sum(dtype=np.int64))
    return None


def _payload_bytes(path: Path) -> int | None:
    """Bytes of coded frames in the video track (the file less its container overhead)."""
    found = _stsz(path)
    return found[1] if found else None


def _sample_count(path: Path) -> int | None:
    """Frames in the video track, from its `stsz` box (exact, no decoding)."""
    found = _stsz(path)
    return found[0] if found else None


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
