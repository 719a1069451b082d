"""`python main.py` as a user runs it: a real subprocess, a real worker, real ffmpeg."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from generator import encode

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ZOETROPE_DATA_DIR": str(cwd / "data"), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, str(ROOT / "main.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("models") / "ltx"
    cmd = [sys.executable, "-m", "tests.tiny_models", "ltx", str(folder)]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, timeout=120)
    return folder


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    y, x = np.mgrid[0:96, 0:128]
    rgb = np.stack([x * 2, y * 2, (x + y) % 256], axis=-1).astype(np.uint8)
    path = tmp_path / "photo.jpg"
    Image.fromarray(rgb).save(path, quality=90)
    return path


@pytest.mark.timeout(300)
def test_animate_writes_a_playable_faststart_h264_mp4(
    tiny_model: Path, photo: Path, tmp_path: Path
):
    """`main.py animate` on a tiny model writes an H.264/yuv420p faststart MP4 and reports it."""
    out = tmp_path / "clip.mp4"
    args = ("animate", str(photo), "waves roll in", "--model", str(tiny_model), "--seed", "7")
    result = run_cli(*args, "--frames", "17", "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert str(out) in result.stdout
    assert "seed 7" in result.stdout
    assert "generating" in result.stderr  # the progress bar went through the denoise steps
    info = encode.probe(out)
    assert info["codec"] == "h264"
    assert info["pix_fmt"] == "yuv420p"
    assert info["faststart"] is True
    assert info["frames"] == 17
    assert info["width"] % 2 == 0 and info["height"] % 2 == 0
    frames, fps = encode.read_frames(out)
    assert frames.shape == (17, info["height"], info["width"], 3)
    assert fps == 8  # the tiny model's zoetrope.json


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda d: d / "missing.png", "no such file"),
        (lambda d: _write(d / "text.png", b"this is not a picture"), "isn't an image"),
        (lambda d: _write(d / "empty.jpg", b""), "empty"),
        (lambda d: _truncated_png(d / "cut.png"), "damaged or incomplete"),
    ],
    ids=["missing", "not-an-image", "empty", "truncated"],
)
def test_animate_bad_image_is_one_line_and_exit_code_2(
    tiny_model: Path, tmp_path: Path, make, expected: str
):
    """A missing, non-image, empty or truncated input is one clear line, exit code 2, no files."""
    image = make(tmp_path)
    result = run_cli("animate", str(image), "a prompt", "--model", str(tiny_model), cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert expected in lines[0].lower()
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data" / "inputs").exists() or not any(
        (tmp_path / "data" / "inputs").iterdir()
    )


@pytest.mark.timeout(60)
def test_animate_bad_options_are_refused_before_anything_is_stored(photo: Path, tmp_path: Path):
    """Bad options (strength out of range, unknown preset, not a model folder) exit 2, store nothing."""
    cases = [
        (["--variation-seed", "1", "--variation-strength", "1.5"], "--variation-strength 1.5"),
        (["--variation-strength", "0.5"], "needs --variation-seed"),
        (["--preset", "nope"], "--preset nope"),
        (["--model", str(tmp_path)], "no model_index.json"),
        (["--frames", "0"], "--frames 0"),
    ]
    for extra, expected in cases:
        result = run_cli("animate", str(photo), "a prompt", *extra, cwd=tmp_path)
        assert result.returncode == 2, (extra, result.stderr)
        assert expected in result.stderr, (extra, result.stderr)
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()


@pytest.mark.timeout(60)
def test_models_list_shows_every_preset_with_its_memory_need(tmp_path: Path):
    """`models list` prints each preset with its GPU memory need and whether it is cached."""
    from generator.presets import PRESETS

    result = run_cli("models", "list", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for name, preset in PRESETS.items():
        line = next(line for line in result.stdout.splitlines() if line.startswith(name))
        assert f"{preset.vram_gb:.0f}GB" in line
        assert line.split()[4] in {"yes", "no"}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _truncated_png(path: Path) -> Path:
    rgb = np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.timeout(120)
def test_animate_without_gpu_says_a_gpu_or_local_model_is_needed(photo: Path, tmp_path: Path):
    """On a machine without CUDA, `animate` with the default `auto` says clearly what it needs."""
    result = run_cli("animate", str(photo), "waves", "--out", str(tmp_path / "c.mp4"), cwd=tmp_path)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "needs a CUDA GPU" in errors[0] and "--model DIR" in errors[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "c.mp4").exists()
