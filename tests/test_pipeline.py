"""The generator engine on tiny Wan 2.1, Wan 2.2 and LTX pipelines, plus the preset rules."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from generator.pipeline import (
    BadRequest,
    ClipResult,
    GenerationCancelled,
    ModelLoadError,
    OutOfMemory,
    VideoGenerator,
    slerp,
)
from generator.presets import (
    GIB,
    PRESETS,
    NeedsGPU,
    PresetError,
    apply_overrides,
    choose_auto,
    get_preset,
    snap_frames,
    snap_size,
)
from generator.protocol import GenerationRequest, Progress
from tests.tiny_models import LAYOUTS, TINY_SETTINGS, build_tiny_model

SEED = 7


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-models")
    return {layout: build_tiny_model(layout, root / layout) for layout in LAYOUTS}


@pytest.fixture(scope="module")
def generators(model_dirs: dict[str, Path]) -> dict[str, VideoGenerator]:
    return {layout: VideoGenerator.load(str(path)) for layout, path in model_dirs.items()}


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = {}
    for name, (w, h) in {"square": (96, 96), "square2": (96, 96), "portrait": (60, 100)}.items():
        paths[name] = str(root / f"{name}.png")
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(paths[name])
    return paths


def make_request(image_path: str, **fields) -> GenerationRequest:
    fields.setdefault("seed", SEED)
    return GenerationRequest(
        job_id="job-1",
        image_path=image_path,
        prompt="waves roll in, camera slowly push in",
        output_path="unused.mp4",
        **fields,
    )


@pytest.fixture(scope="module")
def baseline(
    generators: dict[str, VideoGenerator], images: dict[str, str]
) -> dict[str, tuple[ClipResult, list[Progress]]]:
    """One plain clip per layout (seed 7, square image) and the progress it reported."""
    results = {}
    for layout, gen in generators.items():
        seen: list[Progress] = []
        results[layout] = (
            gen.generate(make_request(images["square"]), on_progress=seen.append),
            seen,
        )
    return results


@pytest.mark.parametrize("layout", LAYOUTS)
def test_loads_from_disk_and_makes_frames_of_the_planned_shape(layout, generators, baseline):
    """A save_pretrained folder loads through VideoGenerator.load and yields uint8 (F, H, W, 3)."""
    gen = generators[layout]
    clip, progress = baseline[layout]
    assert gen.preset.name == f"local:{layout}"
    assert gen.preset.steps == TINY_SETTINGS["steps"]
    assert gen.preset.pixel_budget == TINY_SETTINGS["pixel_budget"]
    assert clip.frames.dtype == np.uint8
    assert clip.frames.shape == (9, 64, 64, 3)
    assert clip.fps == TINY_SETTINGS["fps"]
    assert clip.frames.std() > 0  # not a blank clip
    meta = clip.meta
    assert (meta["seed"], meta["variation_seed"], meta["variation_strength"]) == (SEED, None, 0.0)
    assert (meta["width"], meta["height"], meta["num_frames"], meta["steps"]) == (64, 64, 9, 2)
    assert meta["preset"] == gen.preset.name and meta["degraded"] is False
    assert meta["gen_seconds"] >= 0 and isinstance(meta["speedups"], list)
    assert progress == [
        Progress(0, 2, "denoise"),
        Progress(1, 2, "denoise"),
        Progress(2, 2, "denoise"),
        Progress(0, 1, "decode"),
        Progress(1, 1, "decode"),
    ]


def test_layouts_have_the_real_models_strides(generators):
    """Size multiples and frame rules come from the loaded configs and match the real models'."""
    rules = {
        layout: (g.preset.size_multiple, g.preset.frame_rule) for layout, g in generators.items()
    }
    assert rules == {"wan21": (16, 4), "wan22": (32, 4), "wan22a14b": (16, 4), "ltx": (32, 8)}
    assert generators["wan22"].latent_shape(64, 64, 9) == (1, 48, 3, 4, 4)  # z_dim 48, 16x
    assert generators["wan21"].latent_shape(64, 48, 9) == (1, 16, 3, 6, 8)  # z_dim 16, 8x
    assert generators["ltx"].latent_shape(64, 64, 17) == (1, 8, 3, 2, 2)  # 32x, 8x temporal


@pytest.mark.parametrize("layout", LAYOUTS)
def test_same_seed_gives_identical_frames(layout, generators, baseline, images):
    """Generating again with the same seed reproduces the clip bit for bit."""
    again = generators[layout].generate(make_request(images["square"]))
    np.testing.assert_array_equal(again.frames, baseline[layout][0].frames)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_variation_strength_zero_is_the_plain_seed(layout, generators, baseline, images):
    """Strength 0 with any variation seed gives exactly the seed's clip."""
    clip = generators[layout].generate(
        make_request(images["square"], variation_seed=1234, variation_strength=0.0)
    )
    np.testing.assert_array_equal(clip.frames, baseline[layout][0].frames)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_variation_strength_changes_the_clip_reproducibly(layout, generators, baseline, images):
    """Strength > 0 moves away from the seed's clip, and the same variation repeats exactly."""
    req = make_request(images["square"], variation_seed=1234, variation_strength=0.6)
    first = generators[layout].generate(req)
    second = generators[layout].generate(req)
    assert not np.array_equal(first.frames, baseline[layout][0].frames)
    np.testing.assert_array_equal(first.frames, second.frames)
    assert (first.meta["variation_seed"], first.meta["variation_strength"]) == (1234, 0.6)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_input_image_conditions_the_clip(layout, generators, baseline, images):
    """Another image with the same seed gives another clip: the image reaches the model."""
    clip = generators[layout].generate(make_request(images["square2"]))
    assert not np.array_equal(clip.frames, baseline[layout][0].frames)


def test_other_seed_gives_another_clip(generators, baseline, images):
    """A different seed gives a different clip (the seed reaches the noise)."""
    clip = generators["wan21"].generate(make_request(images["square"], seed=SEED + 1))
    assert not np.array_equal(clip.frames, baseline["wan21"][0].frames)


def test_slerp_keeps_the_ends_and_the_norm():
    """slerp returns its ends exactly and keeps Gaussian noise at the same norm in between."""
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(4096, generator=gen), torch.randn(4096, generator=gen)
    assert slerp(a, b, 0.0) is a and slerp(a, b, 1.0) is b
    mid = slerp(a, b, 0.5)
    assert abs(mid.norm() / a.norm() - 1) < 0.05
    assert abs(torch.lerp(a, b, 0.5).norm() / a.norm() - 1) > 0.2  # what slerp avoids


@pytest.mark.parametrize("layout", LAYOUTS)
def test_cancel_stops_within_one_step_and_leaks_nothing(layout, model_dirs, images):
    """Cancel asked during step 2 of 4 stops there; the next clip equals a fresh run's."""
    # First Block Cache on: its per-call state is what a cancelled run could leak. (Checked:
    # without maybe_free_model_hooks() after the cancel, the wan21 case fails at 0.05.)
    gen = VideoGenerator.load(str(model_dirs[layout]), steps=4, first_block_cache=0.05)
    assert any(s.startswith("first_block_cache") for s in gen.speedups)
    request = make_request(images["square"])
    fresh = gen.generate(request)

    seen: list[Progress] = []
    cancel = False

    def on_progress(p: Progress) -> None:
        nonlocal cancel
        seen.append(p)
        if p.stage == "denoise" and p.step == 2:
            cancel = True

    with pytest.raises(GenerationCancelled, match="after step 2"):
        gen.generate(request, on_progress=on_progress, should_cancel=lambda: cancel)
    assert [p.step for p in seen] == [0, 1, 2]
    assert all(p.stage == "denoise" for p in seen)

    after = gen.generate(request)
    np.testing.assert_array_equal(after.frames, fresh.frames)


def test_out_of_memory_frees_and_leaves_the_generator_usable(generators, baseline, images):
    """A CUDA OOM mid-run becomes OutOfMemory; the next clip equals the plain one."""

    def on_progress(p: Progress) -> None:
        # No GPU here: raise the error CUDA would raise, at the point a step would raise it.
        if p.step == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")

    gen = generators["wan22"]
    with pytest.raises(OutOfMemory, match="ran out of memory making 9 frames at 64x64"):
        gen.generate(make_request(images["square"]), on_progress=on_progress)
    again = gen.generate(make_request(images["square"]))
    np.testing.assert_array_equal(again.frames, baseline["wan22"][0].frames)


def test_a_lora_is_loaded_and_fused(model_dirs, baseline, images, tmp_path):
    """A preset's LoRA (here a tiny local one) is fused into the transformer at load time."""
    from safetensors.torch import save_file

    gen = VideoGenerator.load(str(model_dirs["wan21"]))
    torch.manual_seed(0)
    weights = {}
    for name in ("blocks.0.attn1.to_q", "blocks.1.attn1.to_v"):
        linear = gen.pipe.transformer.get_submodule(name)
        weights[f"transformer.{name}.lora_A.weight"] = torch.randn(2, linear.in_features)
        weights[f"transformer.{name}.lora_B.weight"] = torch.randn(linear.out_features, 2)
    save_file(weights, tmp_path / "tiny_lora.safetensors")

    lora = {"repo": str(tmp_path), "weight_name": "tiny_lora.safetensors"}
    with_lora = VideoGenerator.load(str(model_dirs["wan21"]), lora=lora)
    modules = [n for n, _ in with_lora.pipe.transformer.named_modules()]
    assert not any("lora" in n for n in modules)  # fused, adapters unloaded
    clip = with_lora.generate(make_request(images["square"]))
    assert clip.meta["lora"] == f"{tmp_path}/tiny_lora.safetensors"
    assert not np.array_equal(clip.frames, baseline["wan21"][0].frames)


def test_cancel_before_start_runs_nothing(generators, images):
    """A job cancelled before it starts raises at once and reports no progress."""
    seen: list[Progress] = []
    with pytest.raises(GenerationCancelled, match="before it started"):
        generators["ltx"].generate(
            make_request(images["square"]), on_progress=seen.append, should_cancel=lambda: True
        )
    assert seen == []


def test_degraded_request_halves_the_frames(generators, images):
    """A degraded retry makes about half the frames, snapped, at the budgeted size."""
    gen = generators["ltx"]
    clip = gen.generate(make_request(images["portrait"], duration="long", degraded=True))
    # long = 17 frames; half of it snapped to 8k+1 is 9. Portrait 60x100 keeps its shape.
    w, h = snap_size(60, 100, gen.preset.pixel_budget, gen.preset.size_multiple)
    assert clip.frames.shape == (9, h, w, 3)
    assert clip.meta["degraded"] is True
    assert gen.generate(make_request(images["portrait"], duration="long")).frames.shape[0] == 17


def test_explicit_frame_count_is_snapped_to_the_frame_rule(generators, images):
    """num_frames is snapped to the model's k*n+1 grid (Wan: 4k+1)."""
    clip = generators["wan21"].generate(make_request(images["square"], num_frames=12))
    assert clip.frames.shape[0] == 13


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"num_frames": 0}, "num_frames must be a positive integer, not 0"),
        ({"num_frames": 1000}, "num_frames 1000"),
        ({"variation_strength": 1.5, "variation_seed": 3}, "variation_strength .* not 1.5"),
        ({"variation_strength": float("nan"), "variation_seed": 3}, "variation_strength .* nan"),
        ({"variation_strength": 0.5}, "variation_strength 0.5 needs a variation_seed"),
        ({"seed": -1}, "seed must be .* not -1"),
        ({"variation_seed": "x"}, "variation_seed must be .* not 'x'"),
        ({"duration": "epic"}, "duration must be one of short, standard, long, not 'epic'"),
        ({"preset": "ltx-fast"}, "preset 'ltx-fast' was asked for but this worker serves"),
        ({"image_path": "/nonexistent/in.png"}, "image_path '/nonexistent/in.png'"),
    ],
)
def test_bad_values_are_refused_naming_the_value(fields, match, generators, images):
    """Bad request values raise BadRequest whose message names the argument and value."""
    fields = {"image_path": images["square"], **fields}
    with pytest.raises(BadRequest, match=match):
        generators["wan21"].generate(make_request(**fields))


def test_a_non_image_file_is_a_bad_request(generators, tmp_path):
    """A file that is not an image is refused as a BadRequest naming the path."""
    bogus = tmp_path / "notes.png"
    bogus.write_text("not an image")
    with pytest.raises(BadRequest, match="notes.png"):
        generators["wan21"].generate(make_request(str(bogus)))


def test_unknown_preset_is_named_with_the_valid_ones():
    """An unknown preset name is refused, naming it and listing the presets."""
    with pytest.raises(PresetError, match="unknown preset 'warp-9'.*wan-480p-fast, ltx-fast"):
        get_preset("warp-9")
    with pytest.raises(PresetError, match="'warp-9'"):
        VideoGenerator.load("warp-9", device="cpu")


def test_missing_folder_and_unsupported_folders_are_clear_errors(tmp_path):
    """A missing folder, a non-diffusers folder and a text-to-video Wan folder are refused."""
    with pytest.raises(ModelLoadError, match="does not exist"):
        VideoGenerator.load(str(tmp_path / "nope") + "/", device="cpu")
    with pytest.raises(ModelLoadError, match="no model_index.json"):
        VideoGenerator.load(str(tmp_path), device="cpu")
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline"}))
    with pytest.raises(ModelLoadError, match="text-to-video"):
        VideoGenerator.load(str(tmp_path), device="cpu")
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(ModelLoadError, match="unsupported pipeline class 'FluxPipeline'"):
        VideoGenerator.load(str(tmp_path), device="cpu")


def test_presets_and_auto_need_a_gpu_on_cpu():
    """On the CPU, real presets and auto refuse with a message that says a GPU is needed."""
    with pytest.raises(NeedsGPU, match="needs a CUDA GPU.*local diffusers folder"):
        VideoGenerator.load("ltx-fast", device="cpu")
    with pytest.raises(NeedsGPU, match="GPU"):
        VideoGenerator.load("auto", device="cpu")


def test_overrides_are_validated(model_dirs, tmp_path):
    """Unknown or out-of-range settings (keyword or zoetrope.json) are refused by name."""
    with pytest.raises(PresetError, match="'warp'"):
        VideoGenerator.load(str(model_dirs["ltx"]), warp=9)
    with pytest.raises(PresetError, match="steps must be a positive integer, not 0"):
        VideoGenerator.load(str(model_dirs["ltx"]), steps=0)
    with pytest.raises(PresetError, match="timesteps has 8 entries but steps is 3"):
        apply_overrides(PRESETS["ltx-fast"], {"steps": 3, "timesteps": [1000.0] * 8})
    # Fewer steps than a preset's custom schedule drops the schedule.
    assert apply_overrides(PRESETS["ltx-fast"], {"steps": 2}).timesteps is None


def test_choose_auto_picks_the_best_preset_that_fits():
    """auto takes the best preset resident, else the best with offload, else says why not."""
    assert choose_auto(80 * GIB) == PRESETS["wan22-a14b-480p"]
    assert choose_auto(60 * GIB) == PRESETS["wan-480p-fast"]
    assert choose_auto(48 * GIB) == PRESETS["ltx-fast"]
    picked = choose_auto(26 * GIB)
    assert (picked.name, picked.offload) == ("wan22-5b", True)
    with pytest.raises(NeedsGPU, match=r"8\.0 GiB free"):
        choose_auto(8 * GIB)
    with pytest.raises(NeedsGPU, match="needs a CUDA GPU.*--model DIR"):
        choose_auto(None)


def test_presets_follow_their_models_rules():
    """Every preset's defaults lie on its frame grid and within its caps."""
    for preset in PRESETS.values():
        for frames in preset.frames.values():
            assert snap_frames(frames, preset.frame_rule) == frames <= preset.max_clip_frames
        assert preset.max_clip_frames <= preset.max_frames
        assert preset.timesteps is None or len(preset.timesteps) == preset.steps
        assert preset.default_size == preset.reference_size
        assert preset.default_size[0] * preset.default_size[1] == preset.pixel_budget
    assert snap_size(832, 480, PRESETS["wan-480p-fast"].pixel_budget, 16) == (832, 480)
    assert snap_size(480, 832, PRESETS["wan-480p-fast"].pixel_budget, 16) == (480, 832)
    assert snap_size(1536, 1024, PRESETS["ltx-fast"].pixel_budget, 32) == (768, 512)


@given(n=st.integers(1, 2000), rule=st.sampled_from([1, 2, 4, 8, 16]))
def test_snap_frames_gives_the_nearest_valid_count(n, rule):
    """snap_frames returns rule*k+1 (k >= 1), and no valid count is nearer to n."""
    snapped = snap_frames(n, rule)
    assert (snapped - 1) % rule == 0 and snapped >= rule + 1
    for other in (snapped - rule, snapped + rule):
        if other >= rule + 1:
            assert abs(snapped - n) <= abs(other - n)


@pytest.mark.parametrize("bad", [0, -4, 2.5, True, None])
def test_snap_frames_refuses_bad_counts(bad):
    """A non-positive or non-integer frame count is refused, naming the value."""
    with pytest.raises(PresetError, match=f"not {bad!r}"):
        snap_frames(bad, 4)


@given(
    w=st.integers(1, 8000),
    h=st.integers(1, 8000),
    budget=st.integers(64, 2_000_000),
    multiple=st.sampled_from([8, 16, 32]),
)
def test_snap_size_fits_the_budget_and_keeps_the_shape(w, h, budget, multiple):
    """snap_size: multiples, at least one multiple a side, within budget, aspect kept."""
    sw, sh = snap_size(w, h, budget, multiple)
    assert sw % multiple == 0 and sh % multiple == 0
    assert sw >= multiple and sh >= multiple
    assert sw * sh <= max(budget, multiple * multiple)
    scale = math.sqrt(budget / (w * h))
    target_w, target_h = w * scale, h * scale
    if target_w >= multiple and target_h >= multiple:
        # Each side within one multiple of its exact scaled length.
        assert abs(sw - target_w) <= multiple + 1e-6
        assert abs(sh - target_h) <= multiple + 1e-6
