"""generator/encode.py with the real ffmpeg (imageio-ffmpeg's binary): format, budget, clip ops."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from generator import encode


def moving_frames(count: int, height: int, width: int, *, seed: int = 0) -> np.ndarray:
    """A smooth gradient that slides, with a bright square moving across it: easy to compress,
    and each frame differs, so frame order and counts are checkable after a lossy round trip."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    frames = np.empty((count, height, width, 3), np.uint8)
    for i in range(count):
        frames[i, ..., 0] = (x * 255 // max(1, width - 1) + 8 * i) % 256
        frames[i, ..., 1] = y * 255 // max(1, height - 1)
        frames[i, ..., 2] = 128
        side = max(2, min(height, width) // 4)
        left = (i * 3) % max(1, width - side)
        frames[i, height // 3 : height // 3 + side, left : left + side] = 250
    noise = rng.integers(-3, 4, frames.shape)
    return np.clip(frames.astype(np.int16) + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    frames = moving_frames(17, 64, 96)
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    encode.encode_mp4(frames, path, fps=16)
    return path, frames


def test_encode_writes_h264_yuv420p_faststart_with_every_frame(tmp_path: Path) -> None:
    """An encode is H.264/yuv420p, moov before mdat, exact frame count, size and fps."""
    frames = moving_frames(21, 64, 96)
    result = encode.encode_mp4(frames, tmp_path / "out.mp4", fps=16)
    info = encode.probe(result.path)
    assert info["codec"] == "h264"
    assert info["pix_fmt"] == "yuv420p"
    assert info["faststart"] is True
    assert info["boxes"].index("moov") < info["boxes"].index("mdat")
    assert (info["width"], info["height"], info["frames"], info["fps"]) == (96, 64, 21, 16)
    assert result.fits and result.note is None and result.crf == encode.DEFAULT_CRF
    assert result.bytes == Path(result.path).stat().st_size == info["bytes"]
    decoded, fps = encode.read_frames(result.path)
    assert decoded.shape == frames.shape and fps == 16
    # Lossy but close: CRF 20 on smooth content.
    assert np.abs(decoded.astype(int) - frames.astype(int)).mean() < 4
    # No temp files are left beside the output.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]


def test_odd_sizes_are_cropped_to_even(tmp_path: Path) -> None:
    """A 45x31 clip becomes 44x30 by dropping the last column and row (not rescaled)."""
    frames = moving_frames(5, 31, 45)
    result = encode.encode_mp4(frames, tmp_path / "odd.mp4", fps=8)
    assert (result.width, result.height) == (44, 30)
    decoded, fps = encode.read_frames(result.path)
    assert decoded.shape == (5, 30, 44, 3) and fps == 8
    assert np.abs(decoded.astype(int) - frames[:, :30, :44].astype(int)).mean() < 5


def test_noise_fits_a_small_budget(tmp_path: Path) -> None:
    """81 frames of 256x256 noise (incompressible) still come out under 300 KB."""
    frames = np.random.default_rng(1).integers(0, 256, (81, 256, 256, 3), dtype=np.uint8)
    result = encode.encode_mp4(frames, tmp_path / "noise.mp4", fps=16, byte_budget=300_000)
    assert result.fits
    assert Path(result.path).stat().st_size == result.bytes <= 300_000
    assert result.crf > encode.DEFAULT_CRF and result.attempts > 1
    assert encode.probe(result.path)["frames"] == 81


def test_impossible_budget_says_so(tmp_path: Path) -> None:
    """A budget smaller than any possible file gives fits=False, a note, and the smallest file."""
    frames = np.random.default_rng(2).integers(0, 256, (41, 160, 160, 3), dtype=np.uint8)
    result = encode.encode_mp4(frames, tmp_path / "tiny.mp4", fps=16, byte_budget=500)
    assert result.fits is False
    assert result.note and "cannot fit" in result.note
    assert result.bytes > 500 and result.crf == encode.MAX_CRF
    assert min(result.width, result.height) <= encode.MIN_SHORT_SIDE
    assert encode.probe(result.path)["frames"] == 41


def test_pingpong_has_2f_minus_2_frames(clip: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    """Ping-pong plays forward then back without repeating the turn-around frames."""
    path, frames = clip
    result = encode.pingpong(path, tmp_path / "loop.mp4")
    assert result.frames == 2 * len(frames) - 2 == encode.probe(result.path)["frames"]
    decoded, _ = encode.read_frames(result.path)
    forward, _ = encode.read_frames(path)
    # The second half is the first half reversed, minus both ends: frame F is F-2, etc.
    f = len(frames)
    errors = [
        np.abs(decoded[f + k].astype(int) - forward[f - 2 - k].astype(int)).mean() for k in range(3)
    ]
    assert max(errors) < 4


def test_join_drops_the_seam_frame(clip: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    """Extend joins F1 + F2 - 1 frames: the second clip's first frame (the seam) is dropped."""
    path, frames = clip
    second = moving_frames(9, 64, 96, seed=5)[::-1].copy()
    second_path = tmp_path / "second.mp4"
    encode.encode_mp4(second, second_path, fps=16)
    result = encode.join(path, second_path, tmp_path / "joined.mp4")
    assert result.frames == len(frames) + len(second) - 1 == encode.probe(result.path)["frames"]
    decoded, _ = encode.read_frames(result.path)
    assert np.abs(decoded[len(frames)].astype(int) - second[1].astype(int)).mean() < 5


def test_join_scales_the_second_clip_to_the_first(
    clip: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    """Clips of different sizes join at the first clip's size."""
    path, frames = clip
    other = tmp_path / "other.mp4"
    encode.encode_mp4(moving_frames(5, 32, 48), other, fps=16)
    result = encode.join(path, other, tmp_path / "joined.mp4")
    info = encode.probe(result.path)
    assert (info["width"], info["height"], info["frames"]) == (96, 64, len(frames) + 4)


def test_last_frame_is_the_last_frame(clip: tuple[Path, np.ndarray]) -> None:
    """last_frame returns the final frame (within codec loss), as an RGB image."""
    path, frames = clip
    image = encode.last_frame(path)
    assert image.mode == "RGB" and image.size == (96, 64)
    pixels = np.asarray(image).astype(int)
    assert np.abs(pixels - frames[-1].astype(int)).mean() < 4
    assert (
        np.abs(pixels - frames[-2].astype(int)).mean()
        > np.abs(pixels - frames[-1].astype(int)).mean()
    )


def test_fit_to_budget_shrinks_or_copies(tmp_path: Path) -> None:
    """fit_to_budget re-encodes an oversize clip under the limit and copies one that fits."""
    frames = np.random.default_rng(3).integers(0, 256, (17, 128, 128, 3), dtype=np.uint8)
    big = encode.encode_mp4(frames, tmp_path / "big.mp4", fps=16)
    limit = big.bytes // 4
    small = encode.fit_to_budget(big.path, tmp_path / "small.mp4", limit)
    assert small.fits and small.bytes <= limit and small.crf is not None
    assert encode.probe(small.path)["frames"] == 17
    same = encode.fit_to_budget(big.path, tmp_path / "copy.mp4", big.bytes)
    assert same.fits and same.crf is None and same.bytes == big.bytes
    assert (tmp_path / "copy.mp4").read_bytes() == Path(big.path).read_bytes()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"frames": np.zeros((3, 8, 8, 3), np.float32)}, "uint8"),
        ({"frames": np.zeros((3, 8, 8), np.uint8)}, "shape"),
        ({"frames": np.zeros((0, 8, 8, 3), np.uint8)}, "empty"),
        ({"frames": np.zeros((2, 1, 8, 3), np.uint8)}, "2x2"),
        ({"fps": 0}, "fps"),
        ({"byte_budget": -1}, "byte_budget"),
        ({"crf": 60}, "crf"),
        ({"x264_preset": "turbo"}, "x264_preset"),
    ],
)
def test_bad_arguments_are_named(tmp_path: Path, kwargs: dict, match: str) -> None:
    """Bad arguments raise ValueError naming the argument; nothing is written."""
    args = {"frames": np.zeros((3, 8, 8, 3), np.uint8), "fps": 16, **kwargs}
    frames = args.pop("frames")
    with pytest.raises(ValueError, match=match):
        encode.encode_mp4(frames, tmp_path / "x.mp4", **args)
    assert list(tmp_path.iterdir()) == []


def test_unreadable_files_raise_encode_error(tmp_path: Path) -> None:
    """A missing file or a file that is not a video gives EncodeError with a short message."""
    with pytest.raises(encode.EncodeError, match="no such file"):
        encode.probe(tmp_path / "missing.mp4")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 10)
    with pytest.raises(encode.EncodeError, match="cannot read"):
        encode.read_frames(junk)


def test_encode_module_does_not_import_torch() -> None:
    """The bot imports encode and backends: neither may pull in torch at import time."""
    code = (
        "import sys, generator.encode, generator.backends, generator.protocol; "
        "bad = [m for m in ('torch', 'diffusers', 'transformers', 'discord') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


# -- speed and budget (issue 8, "Encoding, measured") -------------------------------------------


@pytest.fixture
def encodes(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Every libx264 ffmpeg run started while the test runs (the real ffmpeg still runs)."""
    started: list[list[str]] = []
    real = subprocess.Popen

    def counting(cmd: list[str], *args: object, **kwargs: object) -> subprocess.Popen:
        if "libx264" in cmd:
            started.append(list(cmd))
        return real(cmd, *args, **kwargs)

    monkeypatch.setattr(encode.subprocess, "Popen", counting)
    return started


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    ("kind", "share"),
    [("moving", 0.5), ("moving", 0.25), ("noise", 0.5), ("noise", 0.2), ("noise", 0.04)],
)
def test_budget_is_met_in_at_most_two_encodes(
    tmp_path: Path, encodes: list[list[str]], kind: str, share: float
) -> None:
    """An over-budget clip fits after one more encode (bitrate-capped, downscaled when the
    budget is far below the first file), counted at ffmpeg."""
    if kind == "moving":
        frames = moving_frames(33, 240, 320, seed=7)
    else:
        frames = np.random.default_rng(4).integers(0, 256, (33, 240, 320, 3), dtype=np.uint8)
    first = encode.encode_mp4(frames, tmp_path / "first.mp4", fps=16)
    encodes.clear()
    budget = int(first.bytes * share)
    result = encode.encode_mp4(frames, tmp_path / "fit.mp4", fps=16, byte_budget=budget)
    assert len(encodes) == result.attempts == 2
    assert result.fits and Path(result.path).stat().st_size == result.bytes <= budget
    assert result.kbps is not None and "-maxrate" in encodes[1]
    assert encode.probe(result.path)["frames"] == 33
    # Close to the budget, not far under it: the bitrate pass uses what it is given.
    assert result.bytes > 0.6 * budget


def test_a_clip_that_fits_is_encoded_once(tmp_path: Path, encodes: list[list[str]]) -> None:
    """Within budget, one CRF encode at the default preset for the frame size, no bitrate."""
    frames = moving_frames(17, 240, 320)
    result = encode.encode_mp4(frames, tmp_path / "once.mp4", fps=16)
    assert len(encodes) == result.attempts == 1
    assert result.kbps is None and result.crf == encode.DEFAULT_CRF
    command = encodes[0]
    assert command[command.index("-preset") + 1] == encode.DEFAULT_X264_PRESET
    small = encode.encode_mp4(moving_frames(5, 64, 96), tmp_path / "small.mp4", fps=16)
    assert small.attempts == 1 and len(encodes) == 2
    assert encodes[1][encodes[1].index("-preset") + 1] == encode.SMALL_FRAME_X264_PRESET


def test_impossible_budget_takes_two_encodes(tmp_path: Path, encodes: list[list[str]]) -> None:
    """A budget below any possible file goes straight to the smallest encode: two in all."""
    frames = np.random.default_rng(2).integers(0, 256, (41, 160, 160, 3), dtype=np.uint8)
    result = encode.encode_mp4(frames, tmp_path / "tiny.mp4", fps=16, byte_budget=500)
    assert len(encodes) == result.attempts == 2
    assert result.fits is False and result.crf == encode.MAX_CRF


def test_fit_to_budget_re_encodes_once(tmp_path: Path, encodes: list[list[str]]) -> None:
    """fit_to_budget takes the source as the measured first pass: one bitrate encode."""
    frames = moving_frames(33, 240, 320, seed=3)
    big = encode.encode_mp4(frames, tmp_path / "big.mp4", fps=16)
    encodes.clear()
    limit = big.bytes // 3
    small = encode.fit_to_budget(big.path, tmp_path / "small.mp4", limit)
    assert len(encodes) == small.attempts == 1
    assert small.fits and small.bytes <= limit and small.kbps is not None


def test_default_psnr_is_at_least_export_to_videos(tmp_path: Path) -> None:
    """On the same frames our default encode is no worse than diffusers' export_to_video."""
    from diffusers.utils import export_to_video
    from PIL import Image

    frames = moving_frames(33, 240, 320, seed=11)
    ref = tmp_path / "ref.mp4"
    export_to_video([Image.fromarray(f) for f in frames], str(ref), fps=16)
    ours = encode.encode_mp4(frames, tmp_path / "ours.mp4", fps=16)

    def psnr(path: Path | str) -> float:
        decoded, _ = encode.read_frames(path)
        mse = np.mean((decoded.astype(np.float64) - frames.astype(np.float64)) ** 2)
        return float(10 * np.log10(255.0**2 / mse))

    assert encode.probe(ref)["codec"] == "h264"
    assert psnr(ours.path) >= psnr(ref)


def test_frames_can_be_streamed_while_they_are_made(tmp_path: Path) -> None:
    """An iterable of frames encodes as it yields, to the same clip as the whole array."""
    frames = moving_frames(17, 64, 96)
    made: list[int] = []

    def produce():
        for i, frame in enumerate(frames):
            made.append(i)
            yield frame

    streamed = encode.encode_mp4(produce(), tmp_path / "s.mp4", fps=16)
    whole = encode.encode_mp4(frames, tmp_path / "w.mp4", fps=16)
    assert made == list(range(17)) and streamed.frames == 17
    np.testing.assert_array_equal(
        encode.read_frames(streamed.path)[0], encode.read_frames(whole.path)[0]
    )
    # Over budget, the kept frames feed the second encode.
    larger = moving_frames(33, 240, 320, seed=2)
    budget = encode.encode_mp4(larger, tmp_path / "l.mp4", fps=16).bytes // 2
    tight = encode.encode_mp4(iter(larger), tmp_path / "t.mp4", fps=16, byte_budget=budget)
    assert tight.attempts == 2 and tight.fits and encode.probe(tight.path)["frames"] == 33


def test_a_bad_frame_mid_stream_writes_nothing(tmp_path: Path) -> None:
    """A frame of another shape stops the stream with ValueError and leaves no file behind."""
    frames = list(moving_frames(4, 64, 96)) + [np.zeros((32, 48, 3), np.uint8)]
    with pytest.raises(ValueError, match="first frame's shape"):
        encode.encode_mp4(iter(frames), tmp_path / "bad.mp4", fps=16)
    with pytest.raises(ValueError, match="empty"):
        encode.encode_mp4(iter([]), tmp_path / "none.mp4", fps=16)
    assert list(tmp_path.iterdir()) == []
