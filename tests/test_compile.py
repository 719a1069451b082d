"""Regional compile on this CPU (inductor builds real C++ kernels here): warm-up at load, no
recompiles across aspect ratios, First Block Cache together with compile, the inductor cache
under the data dir, and the eager fallback when the compiler is missing (a real worker).

Slow on 2 cores (minutes per compile under load): each test carries its own timeout. The
inductor cache of the first test makes the second one warm, as a restart of the worker is.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from generator import speedups
from generator.pipeline import VideoGenerator
from generator.protocol import GenerationRequest
from tests.tiny_models import build_tiny_model

ROOT = Path(__file__).resolve().parent.parent

# Inductor's own modules still touch `torch.jit.script_method` while compiling (torch 2.13);
# that deprecation is torch's to fix, and as an error it would make every compile fall back.
pytestmark = pytest.mark.filterwarnings(
    "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"
)


@pytest.fixture(scope="module")
def wan21(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model("wan21", tmp_path_factory.mktemp("models") / "wan21")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(1)
    paths = {}
    for name, (w, h) in {"landscape": (100, 60), "portrait": (60, 100)}.items():
        paths[name] = str(root / f"{name}.png")
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(paths[name])
    return paths


def make_request(image_path: str) -> GenerationRequest:
    return GenerationRequest(
        job_id="job-c", image_path=image_path, prompt="waves roll in", output_path="x", seed=3
    )


@pytest.fixture
def inductor_env(monkeypatch: pytest.MonkeyPatch, data_dir: Path) -> Path:
    """The worker's environment: a data dir, no TORCHINDUCTOR_CACHE_DIR of the operator's."""
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("ZOETROPE_DATA_DIR", str(data_dir))
    torch._dynamo.reset()
    return data_dir / "cache" / "torchinductor"


@pytest.mark.timeout(1800)
def test_compile_with_first_block_cache_warms_up_at_load_and_never_recompiles(
    wan21, images, inductor_env
):
    """Compile + First Block Cache builds and warms up inside load (no fullgraph under the
    cache hook), keeps kernels under the data dir, and two aspect ratios add no graph."""
    gen = VideoGenerator.load(str(wan21), compile_repeated_blocks=True, first_block_cache=0.05)
    assert (gen.compile, gen.compile_error) == ("on", None)
    assert "compile_repeated_blocks" in gen.speedups
    assert "first_block_cache:0.05" in gen.speedups
    assert Path(os.environ["TORCHINDUCTOR_CACHE_DIR"]) == inductor_env.resolve()
    assert any(inductor_env.rglob("*.py"))  # generated kernels are cached there

    graphs = speedups.compiled_graphs()
    assert graphs > 0
    shapes = set()
    for name in ("landscape", "portrait"):
        clip = gen.generate(make_request(images[name]))
        shapes.add(clip.frames.shape)
        assert clip.frames.std() > 0
    assert len(shapes) == 2  # two aspect ratios, neither of them a warm-up shape
    assert speedups.compiled_graphs() == graphs  # dynamic shapes: no recompile


def _cache_hits() -> int:
    from torch._dynamo.utils import counters

    # AOTAutograd's cache sits in front of inductor's FX graph cache; a hit in either means
    # the kernels were not built again.
    return (
        counters["aot_autograd"]["autograd_cache_hit"] + counters["inductor"]["fxgraph_cache_hit"]
    )


@pytest.mark.timeout(1800)
def test_a_restart_finds_the_kernels_in_the_cache_and_matches_eager(wan21, images, inductor_env):
    """A second load (dynamo reset, as in a new process) reads the kernels from the cache
    under the data dir; its clip matches the eager one."""
    hits = _cache_hits()
    gen = VideoGenerator.load(str(wan21), compile_repeated_blocks=True, first_block_cache=0.05)
    assert gen.compile == "on"
    assert _cache_hits() > hits
    compiled = gen.generate(make_request(images["landscape"]))
    eager = VideoGenerator.load(str(wan21), first_block_cache=0.05)
    assert eager.compile is None
    reference = eager.generate(make_request(images["landscape"]))
    diff = np.abs(compiled.frames.astype(int) - reference.frames.astype(int))
    assert diff.max() <= 2  # float32 kernels: only rounding differs


@pytest.mark.timeout(900)
def test_a_compile_that_cannot_build_falls_back_to_eager_and_says_so(tmp_path, wan21):
    """With no usable C++ compiler the warm-up in load fails: the worker logs one line, runs
    eagerly, says compile "off" in its ready info, and its jobs succeed."""
    folder = tmp_path / "wan21-compile"
    build_tiny_model("wan21", folder)
    settings = json.loads((folder / "zoetrope.json").read_text())
    settings["compile_repeated_blocks"] = True
    (folder / "zoetrope.json").write_text(json.dumps(settings))
    missing = str(tmp_path / "no-such-c++")
    env = {
        **os.environ,
        "CXX": missing,  # inductor's C++ compiler for CPU kernels
        "CC": missing,
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"),  # empty: nothing prebuilt
        "ZOETROPE_DATA_DIR": str(tmp_path / "data"),
    }
    image = tmp_path / "in.png"
    Image.fromarray(np.full((64, 64, 3), 90, dtype=np.uint8)).save(image)
    req = GenerationRequest(
        job_id="eager-1",
        image_path=str(image),
        prompt="waves roll in",
        output_path=str(tmp_path / "out.mp4"),
        seed=5,
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "generator.worker", "--model", str(folder)],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        while ready.get("type") == "loading":
            ready = json.loads(proc.stdout.readline())
        assert ready["type"] == "ready", ready
        assert ready["compile"] == "off"
        assert "compile_repeated_blocks" not in ready["speedups"]
        assert ready["attention_backend"] == "native"
        assert "InvalidCxxCompiler" in ready["compile_error"] and missing in ready["compile_error"]

        proc.stdin.write(json.dumps({"op": "generate", "request": dataclasses.asdict(req)}) + "\n")
        proc.stdin.flush()
        event: dict = {}
        while event.get("type") not in ("done", "failed"):
            event = json.loads(proc.stdout.readline())["event"]
        assert event["type"] == "done", event
        assert Path(event["path"]).stat().st_size > 0
        proc.stdin.write(json.dumps({"op": "shutdown"}) + "\n")
        proc.stdin.flush()
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
    fallback_lines = [line for line in err.splitlines() if "running eagerly" in line]
    assert len(fallback_lines) == 1, err[-3000:]
