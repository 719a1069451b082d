"""The preset line-up on tiny models and a fake hub cache: schedules, LoRAs, auto, weights.

- The LightX2V schedule (shift 5 on 1000/750/500/250) is what a Wan pipeline samples, and the
  Wan 2.2 A14B expert split is LightX2V's.
- A LoRA with LightX2V's real key names loads, fuses (W + up @ down, bias + diff_b) and unloads
  on the tiny Wan 2.1 model, and one LoRA per expert on the tiny Wan 2.2 A14B model.
- `auto` walks the line-up by measured need, and resolves once for several copies.
- Weights: only the files a pipeline loads are pulled; a half pull is not "cached"; the worker
  loads the cached folder offline or says which `models pull` to run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from generator import weights
from generator.auto import resolve_for_copies
from generator.distill import FixedSchedule
from generator.pipeline import VideoGenerator
from generator.presets import (
    GIB,
    PRESETS,
    LoraSpec,
    NeedsGPU,
    PresetError,
    apply_overrides,
    auto_order,
    choose_auto,
)
from generator.protocol import GenerationRequest
from tests.lightx2v_layout import lightx2v_lora
from tests.tiny_models import TINY_SETTINGS, build_tiny_model

ROOT = Path(__file__).resolve().parent.parent
LIGHTX2V = {"steps": 4, "timesteps": [1000, 750, 500, 250], "flow_shift": 5.0}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {layout: build_tiny_model(layout, root / layout) for layout in ("wan21", "wan22a14b")}


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("img") / "square.png"
    pixels = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return str(path)


def request(image_path: str, seed: int = 7) -> GenerationRequest:
    return GenerationRequest(
        job_id="j", image_path=image_path, prompt="waves roll in", output_path="x", seed=seed
    )


def test_lightx2v_schedule_is_what_the_scheduler_samples():
    """Shift 5 on 1000/750/500/250 gives LightX2V's sigmas; the A14B split is 2 + 2 steps."""
    for name in ("wan-480p-fast", "wan22-a14b-480p", "wan22-a14b-720p"):
        preset = PRESETS[name]
        assert (preset.flow_shift, preset.timesteps, preset.guidance) == (
            5.0,
            (1000.0, 750.0, 500.0, 250.0),
            1.0,
        )
        scheduler = FixedSchedule.for_preset(preset)
        scheduler.set_timesteps(4)
        # LightX2V step_distill/scheduler.py: sigma = shift*s / (1 + (shift-1)*s), s = t/1000.
        expected = [5 * s / (1 + 4 * s) for s in (1.0, 0.75, 0.5, 0.25)]
        np.testing.assert_allclose(scheduler.sigmas.numpy(), [*expected, 0.0], rtol=1e-6)
        np.testing.assert_allclose(scheduler.timesteps.numpy(), np.array(expected) * 1000)
        with pytest.raises(ValueError, match="4 steps, not 8"):
            scheduler.set_timesteps(8)
    # diffusers: t >= boundary_ratio * 1000 runs `transformer` (high noise); LightX2V's
    # boundary_step_index 2 runs steps 0 and 1 on the high-noise expert.
    scheduler.set_timesteps(4)
    assert [bool(t >= 0.9 * 1000) for t in scheduler.timesteps] == [True, True, False, False]


@pytest.mark.timeout(300)
def test_a_wan_folder_samples_the_distilled_schedule(tiny, image):
    """A Wan folder given the LightX2V settings denoises on exactly those 4 timesteps."""
    gen = VideoGenerator.load(str(tiny["wan21"]), **LIGHTX2V)
    assert isinstance(gen.pipe.scheduler, FixedSchedule)
    seen: list[float] = []
    original_step = gen.pipe.scheduler.step

    def step(model_output, timestep, sample, **kwargs):
        seen.append(float(timestep))
        return original_step(model_output, timestep, sample, **kwargs)

    gen.pipe.scheduler.step = step  # records the real scheduler's calls, changes nothing
    clip = gen.generate(request(image))
    np.testing.assert_allclose(seen, [1000.0, 937.5, 833.3333, 625.0], rtol=1e-5)
    assert clip.meta["steps"] == 4
    again = gen.generate(request(image))
    np.testing.assert_array_equal(clip.frames, again.frames)


def _save(state: dict[str, torch.Tensor], folder: Path, name: str) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, folder / name)
    return {"repo": str(folder), "weight_name": name}


@pytest.mark.timeout(300)
def test_a_lightx2v_layout_lora_loads_fuses_and_unloads(tiny, image, tmp_path):
    """Real LightX2V key names on the tiny Wan 2.1 model: fused W + up@down, b + diff_b."""
    base = VideoGenerator.load(str(tiny["wan21"]), **LIGHTX2V)
    config = dict(base.pipe.transformer.config)
    # Tiny weights are all under LightX2V's 1e6 threshold: SVD every 2-D weight instead.
    lora = lightx2v_lora(config, rank=2, device="cpu", svd_min_params=0, scale=0.05)
    spec = _save(lora, tmp_path / "lora", "wan21_tiny_lightx2v.safetensors")

    fused = VideoGenerator.load(str(tiny["wan21"]), **LIGHTX2V, lora=spec)
    transformer, original = fused.pipe.transformer, base.pipe.transformer
    assert not any("lora" in n for n, _ in transformer.named_modules())  # adapters unloaded
    assert not getattr(transformer, "peft_config", None)
    up = lora["diffusion_model.blocks.1.self_attn.q.lora_up.weight"]
    down = lora["diffusion_model.blocks.1.self_attn.q.lora_down.weight"]
    diff_b = lora["diffusion_model.blocks.1.self_attn.q.diff_b"]
    q, q0 = transformer.blocks[1].attn1.to_q, original.blocks[1].attn1.to_q
    torch.testing.assert_close(q.weight, q0.weight + up @ down)
    torch.testing.assert_close(q.bias, q0.bias + diff_b)
    img = transformer.blocks[0].attn2.add_k_proj  # the I2V image cross-attention too
    assert not torch.equal(img.weight, original.blocks[0].attn2.add_k_proj.weight)
    clip = fused.generate(request(image))
    assert clip.meta["lora"] == f"{spec['repo']}/{spec['weight_name']}"
    assert not np.array_equal(clip.frames, base.generate(request(image)).frames)


@pytest.mark.timeout(300)
def test_one_lora_per_expert_fuses_into_each_transformer(tiny, image, tmp_path):
    """Wan 2.2 A14B: the high-noise LoRA fuses into `transformer`, the low-noise one into `transformer_2`."""
    base = VideoGenerator.load(str(tiny["wan22a14b"]), **LIGHTX2V)
    config = dict(base.pipe.transformer.config)
    specs = []
    for seed, (component, name) in enumerate((("transformer", "high"), ("transformer_2", "low"))):
        state = lightx2v_lora(config, rank=2, device="cpu", svd_min_params=0, seed=seed, scale=0.05)
        spec = _save(state, tmp_path / name, f"{name}_noise.safetensors")
        specs.append({**spec, "component": component, "adapter_name": f"distill_{name}"})
        expected = (
            state["diffusion_model.blocks.0.ffn.0.lora_up.weight"]
            @ state["diffusion_model.blocks.0.ffn.0.lora_down.weight"]
        )
        specs[-1]["_expected"] = expected
    loras = [{k: v for k, v in s.items() if k != "_expected"} for s in specs]
    gen = VideoGenerator.load(str(tiny["wan22a14b"]), **LIGHTX2V, lora=loras)
    for spec in specs:
        name = spec["component"]
        fused_delta = (
            getattr(gen.pipe, name).blocks[0].ffn.net[0].proj.weight
            - getattr(base.pipe, name).blocks[0].ffn.net[0].proj.weight
        )
        torch.testing.assert_close(fused_delta, spec["_expected"])
        assert not any("lora" in n for n, _ in getattr(gen.pipe, name).named_modules())
    assert gen.lora.count("noise.safetensors") == 2
    clip = gen.generate(request(image))
    assert clip.frames.shape == (9, 64, 64, 3)
    assert not np.array_equal(clip.frames, base.generate(request(image)).frames)


def test_lora_settings_are_validated():
    """A LoRA for an unknown component, or with unknown fields, is refused by name."""
    preset = PRESETS["wan-480p-fast"]
    with pytest.raises(PresetError, match="component must be 'transformer' or 'transformer_2'"):
        apply_overrides(preset, {"lora": {"repo": "x", "weight_name": "y", "component": "vae"}})
    with pytest.raises(PresetError, match="unknown fields"):
        apply_overrides(preset, {"lora": [{"repo": "x", "weight_name": "y", "rank": 4}]})
    assert apply_overrides(preset, {"lora": None}).loras == ()


def test_auto_walks_the_line_up_by_measured_need():
    """auto tries the presets best first (largest need first), 720p only by name."""
    order = auto_order()
    assert [p.name for p in order] == ["wan22-a14b-480p", "wan-480p-fast", "ltx-fast", "wan22-5b"]
    assert [p.vram_gb for p in order] == sorted((p.vram_gb for p in order), reverse=True)
    assert not PRESETS["wan22-a14b-720p"].auto
    for preset in order:  # each fits exactly when its measured need is free
        assert choose_auto(int(preset.vram_gb * GIB) + 1) == preset


def test_several_copies_resolve_auto_once_for_all():
    """`--slots N` with auto picks one preset that fits N times, resident; every copy loads it."""
    ltx, wan = PRESETS["ltx-fast"], PRESETS["wan-480p-fast"]
    free = int(2 * ltx.vram_gb * GIB) + 1  # two LTX copies fit; one Wan 14B would, too
    assert choose_auto(free) == PRESETS["wan22-a14b-480p"]
    assert choose_auto(free, copies=2) == ltx
    assert resolve_for_copies("auto", "cuda:1", 2, measure=lambda device: free) == "ltx-fast"
    assert resolve_for_copies("auto", "cuda:1", 1, measure=lambda device: free) == "auto"
    assert resolve_for_copies("wan-480p-fast", None, 3, measure=lambda d: 0) == wan.name
    with pytest.raises(NeedsGPU, match="4 copies of the smallest preset.*--slots"):
        choose_auto(free, copies=4)
    with pytest.raises(NeedsGPU, match="no GPU"):
        resolve_for_copies("auto", None, 2, measure=lambda device: None)


# -- weights: a fake Hugging Face cache with the real layout --------------------------------


def _add_to_cache(cache: Path, repo: str, files: dict[str, Path], commit: str = "0" * 40) -> Path:
    """Files into `cache` as huggingface_hub stores them: blobs, snapshot links, refs/main."""
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    snapshot = root / "snapshots" / commit
    for name, source in files.items():
        data = source.read_bytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)  # a resumed pull re-links what it already had
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snapshot


def _folder_files(folder: Path) -> dict[str, Path]:
    return {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.is_file()}


def _hub_preset(tiny_dir: Path, lora_name: str) -> tuple[object, dict[str, Path]]:
    preset = dataclasses.replace(
        PRESETS["wan-480p-fast"],
        hub_id="zoetrope-test/tiny-wan21",
        loras=(LoraSpec(repo="zoetrope-test/loras", weight_name=f"sub/{lora_name}"),),
    )
    files = {k: v for k, v in _folder_files(tiny_dir).items() if k != "zoetrope.json"}
    return preset, files


def test_only_the_files_the_pipeline_loads_are_pulled():
    """From a Wan-like listing: model_index, configs, tokenizer, the index's shards; not the
    original .pth checkpoints, variants or unused shards."""
    model_index = {
        "_class_name": "WanImageToVideoPipeline",
        "boundary_ratio": None,
        "transformer": ["diffusers", "WanTransformer3DModel"],
        "transformer_2": [None, None],
        "text_encoder": ["transformers", "UMT5EncoderModel"],
        "tokenizer": ["transformers", "T5TokenizerFast"],
        "scheduler": ["diffusers", "UniPCMultistepScheduler"],
        "vae": ["diffusers", "AutoencoderKLWan"],
    }
    shards = [f"diffusion_pytorch_model-0000{i}-of-00002.safetensors" for i in (1, 2)]
    listing = [
        "model_index.json",
        "README.md",
        "Wan2.1_VAE.pth",
        "models_t5_umt5-xxl-enc-bf16.pth",
        "transformer/config.json",
        "transformer/diffusion_pytorch_model.safetensors.index.json",
        *(f"transformer/{s}" for s in shards),
        "transformer/diffusion_pytorch_model-old.safetensors",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "text_encoder/model.fp16.safetensors",
        "tokenizer/tokenizer.json",
        "tokenizer/spiece.model",
        "tokenizer/tokenizer_config.json",
        "scheduler/scheduler_config.json",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
    ]
    index = {"weight_map": {"a.weight": shards[0], "b.weight": shards[1], "c.weight": shards[1]}}
    needed = weights.needed_files(model_index, listing, lambda f: index)
    assert needed == sorted(
        [
            "model_index.json",
            "transformer/config.json",
            "transformer/diffusion_pytorch_model.safetensors.index.json",
            *(f"transformer/{s}" for s in shards),
            "text_encoder/config.json",
            "text_encoder/model.safetensors",
            "tokenizer/tokenizer.json",
            "tokenizer/spiece.model",
            "tokenizer/tokenizer_config.json",
            "scheduler/scheduler_config.json",
            "vae/config.json",
            "vae/diffusion_pytorch_model.safetensors",
        ]
    )
    # A model folder with only variant weights cannot load as is: reported, not skipped.
    variant_only = [f for f in listing if f != "text_encoder/model.safetensors"]
    assert "text_encoder/*.safetensors" in weights.needed_files(
        model_index, variant_only, lambda f: index
    )


@pytest.mark.timeout(300)
def test_a_half_pull_is_not_cached_and_a_full_one_loads_offline(tiny, image, tmp_path):
    """Cached means every needed file is in the cache; then the snapshot loads offline."""
    cache = tmp_path / "hub"
    preset, files = _hub_preset(tiny["wan21"], "lora.safetensors")
    assert weights.missing(preset, cache_dir=str(cache)) == [
        "zoetrope-test/tiny-wan21/model_index.json",
        "zoetrope-test/loras/sub/lora.safetensors",
    ]
    # A pull that stopped after the small files: configs, no weights.
    small = {k: v for k, v in files.items() if not k.endswith(".safetensors")}
    _add_to_cache(cache, preset.hub_id, small)
    gaps = weights.missing(preset, cache_dir=str(cache))
    assert "zoetrope-test/tiny-wan21/transformer/*.safetensors" in gaps
    assert not weights.weights_cached(preset, cache_dir=str(cache))
    with pytest.raises(
        weights.WeightsMissing, match="run `python main.py models pull wan-480p-fast`"
    ):
        weights.local_snapshot(preset, cache_dir=str(cache))

    snapshot = _add_to_cache(cache, preset.hub_id, files)
    assert weights.missing(preset, cache_dir=str(cache)) == [
        "zoetrope-test/loras/sub/lora.safetensors"
    ]
    gen = VideoGenerator.load(str(tiny["wan21"]))
    lora_file = tmp_path / "lora.safetensors"
    name = "blocks.0.attn1.to_q"
    linear = gen.pipe.transformer.get_submodule(name)
    save_file(
        {
            f"transformer.{name}.lora_A.weight": torch.randn(2, linear.in_features),
            f"transformer.{name}.lora_B.weight": torch.randn(linear.out_features, 2),
        },
        lora_file,
    )
    _add_to_cache(cache, "zoetrope-test/loras", {"sub/lora.safetensors": lora_file})
    assert weights.weights_cached(preset, cache_dir=str(cache))
    folder, local = weights.local_snapshot(preset, cache_dir=str(cache))
    assert Path(folder) == snapshot
    (lora,) = local.loras
    assert Path(lora.repo, lora.weight_name).read_bytes() == lora_file.read_bytes()

    # The cached folder loads with no network, LoRA included.
    loaded = VideoGenerator.load(folder, **TINY_SETTINGS, lora=dataclasses.asdict(lora))
    assert loaded.lora == f"{lora.repo}/{lora.weight_name}"
    assert loaded.generate(request(image)).frames.shape == (9, 64, 64, 3)

    # A shard whose blob went missing (a cleaned cache) is a gap again.
    blob = (snapshot / "transformer" / "diffusion_pytorch_model.safetensors").resolve()
    blob.unlink()
    assert not weights.weights_cached(preset, cache_dir=str(cache))


@pytest.mark.timeout(120)
def test_worker_with_nothing_pulled_says_which_pull_to_run(tmp_path):
    """`main.py worker --preset NAME` with an empty cache refuses before loading anything."""
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    args = ["worker", "--redis", "redis://127.0.0.1:1/0", "--preset", "ltx-fast"]
    result = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert result.returncode == 2, result.stderr
    assert "run `python main.py models pull ltx-fast`" in result.stderr
    assert "Lightricks/LTX-Video-0.9.8-13B-distilled/model_index.json" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "hub").exists()  # nothing was downloaded or created
