"""The GPU path's speed-ups and memory handling, run as far as a CPU runs them, on tiny models.

Attention backend choice, VAE tiling, pipeline size rules, default negative prompts, OOM
classification and the degraded path after an injected OOM, loading with a device map, and
the allocator setting. The compile tests (inductor on this CPU) are in test_compile.py.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from generator import memory, speedups
from generator.pipeline import OutOfMemory, VideoGenerator
from generator.plan import DEFAULT_NEGATIVE_PROMPTS
from generator.presets import GIB, choose_auto
from generator.protocol import GenerationRequest, Progress
from generator.resolve import resolve
from tests.tiny_models import build_tiny_model

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-models")
    return {layout: build_tiny_model(layout, root / layout) for layout in ("wan21", "ltx")}


@pytest.fixture(scope="module")
def generators(model_dirs: dict[str, Path]) -> dict[str, VideoGenerator]:
    return {layout: VideoGenerator.load(str(path)) for layout, path in model_dirs.items()}


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("images") / "in.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(path)
    return str(path)


def make_request(image_path: str, **fields) -> GenerationRequest:
    fields.setdefault("seed", 7)
    return GenerationRequest(
        job_id="job-1", image_path=image_path, prompt="waves roll in", output_path="x", **fields
    )


# -- attention backend --------------------------------------------------------------------


def test_attention_backend_is_chosen_at_load_and_is_native_on_cpu(generators):
    """The fastest backend that runs here is chosen at load: on a CPU that is native SDPA."""
    for gen in generators.values():
        assert gen.attention_backend == "native"
        assert "attention:native" in gen.speedups


@pytest.mark.parametrize("name", ["_flash_3", "flash", "_native_cudnn"])
def test_gpu_attention_backends_are_probed_and_refused_on_cpu(name):
    """Each faster backend is probed with a real call; on a CPU each says why it cannot run."""
    reason = speedups.probe_attention_backend(
        name, device="cpu", dtype=torch.float32, head_dim=12, with_mask=False
    )
    assert isinstance(reason, str) and reason
    assert (
        speedups.probe_attention_backend(
            "native", device="cpu", dtype=torch.float32, head_dim=12, with_mask=True
        )
        is None
    )


def test_hub_attention_backends_are_never_used():
    """A *_hub backend (downloads kernels at run time) is refused without being tried."""
    reason = speedups.probe_attention_backend(
        "flash_hub", device="cpu", dtype=torch.float32, head_dim=12, with_mask=False
    )
    assert reason == "downloads its kernels from the Hub at run time"


def test_a_preset_attention_backend_that_cannot_run_falls_back(model_dirs, caplog):
    """A backend set per preset that cannot run here logs why and falls back to native."""
    with caplog.at_level(logging.WARNING, logger="generator.speedups"):
        gen = VideoGenerator.load(str(model_dirs["wan21"]), attention_backend="_native_cudnn")
    assert gen.attention_backend == "native"
    assert "attention backend '_native_cudnn' cannot run here" in caplog.text


# -- VAE tiling, size rules, negative prompts ---------------------------------------------


def test_ltx_decodes_with_vae_tiling_and_keeps_it_after_a_degraded_clip(generators, image):
    """LTX loads with VAE tiling on (as its docs do) and a degraded clip does not turn it off."""
    ltx, wan = generators["ltx"], generators["wan21"]
    assert ltx.pipe.vae.use_tiling is True and "vae_tiling" in ltx.speedups
    assert wan.pipe.vae.use_tiling is False and "vae_tiling" not in wan.speedups
    ltx.generate(make_request(image, degraded=True))
    assert ltx.pipe.vae.use_tiling is True


def _ltx_with_4x_vae(folder: Path) -> Path:
    """The tiny LTX layout with a 4x spatial VAE (two scaling stages, patch 1)."""
    from diffusers import AutoencoderKLLTXVideo

    build_tiny_model("ltx", folder)
    torch.manual_seed(4)
    vae = AutoencoderKLLTXVideo(
        latent_channels=8,
        block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, False, False),
        decoder_spatio_temporal_scaling=(True, True, False, False),
        decoder_inject_noise=(False, False, False, False, False),
        upsample_residual=(False, False, False, False),
        upsample_factor=(1, 1, 1, 1),
        timestep_conditioning=True,
        patch_size=1,
        patch_size_t=1,
    )
    vae.save_pretrained(folder / "vae")
    settings = json.loads((folder / "zoetrope.json").read_text())
    settings["pixel_budget"] = 68 * 88
    (folder / "zoetrope.json").write_text(json.dumps(settings))
    return folder


def test_an_ltx_folder_with_a_4x_vae_gets_sizes_the_ltx_pipeline_accepts(tmp_path):
    """A 4x-VAE LTX folder would get 68x88; the LTX pipelines' multiple of 32 is kept."""
    gen = VideoGenerator.load(str(_ltx_with_4x_vae(tmp_path / "ltx4")))
    assert gen.pipe.vae_spatial_compression_ratio == 4
    assert gen.preset.size_multiple == 32
    path = tmp_path / "in.png"
    Image.fromarray(np.full((88, 68, 3), 120, dtype=np.uint8)).save(path)
    clip = gen.generate(make_request(str(path)))
    frames, height, width, _ = clip.frames.shape
    assert height % 32 == 0 and width % 32 == 0 and height * width <= 68 * 88


@pytest.mark.parametrize("layout", ["wan21", "ltx"])
def test_cfg_presets_use_the_models_default_negative_prompt(layout, generators, image):
    """With CFG and no negative prompt, the model's documented default is used (same clip)."""
    gen = generators[layout]
    assert gen.preset.guidance > 1.0
    default = DEFAULT_NEGATIVE_PROMPTS[gen.family]
    plain = gen.generate(make_request(image))
    explicit = gen.generate(make_request(image, negative_prompt=default))
    other = gen.generate(make_request(image, negative_prompt="static, dull"))
    assert plain.meta["negative_prompt"] == default
    np.testing.assert_array_equal(plain.frames, explicit.frames)
    assert not np.array_equal(plain.frames, other.frames)
    assert other.meta["negative_prompt"] == "static, dull"


def test_guidance_one_needs_no_negative_prompt(model_dirs, image):
    """At guidance 1 (no unconditional pass) no default negative prompt is added."""
    gen = VideoGenerator.load(str(model_dirs["wan21"]), guidance=1.0)
    assert gen.generate(make_request(image)).meta["negative_prompt"] is None


# -- memory -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "exc",
    [
        torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("CUDA error: out of memory"),
        RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"),
        RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
    ],
)
def test_allocation_failures_of_every_cuda_library_count_as_out_of_memory(exc):
    """The caching allocator's error and cuDNN/cuBLAS allocation RuntimeErrors are all OOM."""
    assert memory.is_out_of_memory(exc)


@pytest.mark.parametrize(
    "exc",
    [
        RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)"),
        ValueError("`height` and `width` have to be divisible by 32 but are 68 and 88."),
        KeyError("out of memory"),
    ],
)
def test_other_errors_are_not_out_of_memory(exc):
    """Errors that are not allocation failures are not mistaken for OOM."""
    assert not memory.is_out_of_memory(exc)


def test_a_cudnn_alloc_failure_mid_clip_is_oom_and_the_degraded_retry_runs(generators, image):
    """An injected cuDNN allocation failure becomes OutOfMemory; the degraded retry (VAE
    tiling, half the frames) runs, then the next plain clip equals one made before."""
    gen = generators["wan21"]
    before = gen.generate(make_request(image, duration="long"))

    def fail_at_step_one(p: Progress) -> None:
        if p.stage == "denoise" and p.step == 1:
            raise RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED")

    with pytest.raises(OutOfMemory, match="ran out of memory making 17 frames at 64x64"):
        gen.generate(make_request(image, duration="long"), on_progress=fail_at_step_one)

    tiled_during: list[bool] = []
    retry = gen.generate(
        make_request(image, duration="long", degraded=True),
        on_progress=lambda p: (
            p.stage == "denoise" and p.step >= 1 and tiled_during.append(gen.pipe.vae.use_tiling)
        ),
    )
    assert retry.meta["degraded"] is True and retry.frames.shape[0] == 9
    assert tiled_during == [True, True]  # on at both denoising steps (and the decode after)
    assert gen.pipe.vae.use_tiling is False  # back to the normal path afterwards
    after = gen.generate(make_request(image, duration="long"))
    np.testing.assert_array_equal(after.frames, before.frames)


def test_errors_that_are_not_oom_pass_through_unchanged(generators, image):
    """A RuntimeError that is not an allocation failure is not turned into OutOfMemory."""

    def fail(p: Progress) -> None:
        if p.step == 1:
            raise RuntimeError("an unrelated failure")

    with pytest.raises(RuntimeError, match="an unrelated failure"):
        generators["wan21"].generate(make_request(image), on_progress=fail)


def test_weights_load_with_a_device_map_onto_the_device(generators):
    """Weights are loaded with device_map set to the device (here "cpu"), not moved after."""
    gen = generators["wan21"]
    assert gen.pipe.hf_device_map == "cpu"
    with memory.load_placement("cpu", offload=False) as device_map:
        assert device_map == "cpu"
    with memory.load_placement("cuda:1", offload=True) as device_map:
        assert device_map is None  # model CPU offload wants the weights in host RAM
    assert {p.device.type for p in gen.pipe.transformer.parameters()} == {"cpu"}


def test_auto_measures_the_device_in_use(monkeypatch):
    """`auto` on cuda:1 measures cuda:1's free memory (not GPU 0's) and chooses by it."""
    asked: list[torch.device] = []

    def mem_get_info(device=None):
        asked.append(device)
        return (60 * GIB, 80 * GIB) if device == torch.device("cuda:1") else (1 * GIB, 80 * GIB)

    # No GPU here: torch's CUDA queries answer as a box whose GPU 1 has 60 GiB free would.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    preset, _family, _source = resolve("auto", "cuda:1", {})
    assert asked == [torch.device("cuda:1")]
    assert preset == choose_auto(60 * GIB)
    assert memory.free_vram_bytes("cpu") is None


def test_the_allocator_gets_expandable_segments_unless_the_operator_set_it():
    """Importing the pipeline sets expandable segments before torch; an operator's value stays."""
    code = "import os, generator.pipeline; print(os.environ.get('PYTORCH_CUDA_ALLOC_CONF'))"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")
    }

    def run(extra: dict[str, str]) -> str:
        out = subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        return out.stdout.strip()

    assert run({}) == "expandable_segments:True"
    assert run({"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:128"}) == "max_split_size_mb:128"
    assert run({"PYTORCH_ALLOC_CONF": "expandable_segments:False"}) == "None"


def test_bf16_weights_with_an_fp32_vae_make_a_clip(model_dirs, image):
    """The GPU's dtypes (bf16 transformer and text encoder, fp32 VAE and image encoder) load
    and make a clip on the tiny Wan model."""
    gen = VideoGenerator.load(str(model_dirs["wan21"]), preset_dtypes=True)
    assert gen.pipe.transformer.dtype == torch.bfloat16
    assert gen.pipe.text_encoder.dtype == torch.bfloat16
    assert gen.pipe.vae.dtype == torch.float32
    assert gen.pipe.image_encoder.dtype == torch.float32
    clip = gen.generate(make_request(image))
    assert clip.frames.shape == (9, 64, 64, 3) and clip.frames.std() > 0
