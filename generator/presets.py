"""Model presets as plain data.

The bot imports this module to list presets and to check a member's choice, so it must stay
free of torch, diffusers and transformers at import time. Dtypes are therefore named by
string ("bfloat16"); `generator/pipeline.py` turns them into torch dtypes.

Hub ids, pipeline classes and LoRA files were checked against the diffusers 0.42 sources and
documentation; see the comment above each preset for what was verified.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

GIB = 1024**3
DURATIONS = ("short", "standard", "long")
# The most a seed may be: the job row keeps seeds in a signed 64-bit SQLite INTEGER.
MAX_SEED = 2**63 - 1


class PresetError(ValueError):
    """A preset name or a preset setting that does not exist or is out of range."""


class NeedsGPU(RuntimeError):
    """Real presets need a CUDA GPU with enough free memory."""


@dataclass(frozen=True, slots=True)
class LoraSpec:
    """A LoRA fused into one transformer at load time (e.g. a step-distillation LoRA)."""

    repo: str  # hub id, or a local folder that holds `weight_name`
    weight_name: str
    scale: float = 1.0
    adapter_name: str = "distill"
    # Which transformer it belongs to: Wan 2.2 A14B has two experts, "transformer" (high
    # noise) and "transformer_2" (low noise), each with its own distillation LoRA.
    component: str = "transformer"


# Bytes per parameter of each dtype name.
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


@dataclass(frozen=True)
class Preset:
    """Everything needed to load one model and turn an image into a clip with it."""

    name: str
    hub_id: str  # or a local folder path for models loaded from disk
    pipeline_class: str  # diffusers class name
    description: str
    pixel_budget: int  # width * height the input is scaled to (aspect ratio kept)
    size_multiple: int  # width and height are multiples of this (VAE stride * patch size)
    frame_rule: int  # k in "k * n + 1": frame counts the VAE accepts
    frames: Mapping[str, int]  # default frame count per duration ("short", "standard", "long")
    max_clip_frames: int  # most frames one generation may ask for
    max_frames: int  # cap on a clip's total length after extends
    fps: int
    steps: int
    guidance: float
    # Exact parameter count per component, from the published configs built on the meta
    # device (generator/configs/<configs>/; tests/test_realsize.py checks every figure).
    params: Mapping[str, int] = field(default_factory=dict)
    # Activations, VAE decode and CUDA workspace on top of the weights: an ESTIMATE until
    # bench/gpu_check.py measures the peak on a real GPU (then BENCHMARKS.md has the figure).
    headroom_gb: float = 0.0
    configs: str | None = None  # folder under generator/configs with the real configs
    loras: tuple[LoraSpec, ...] = ()
    # Scheduler shift (flow matching); None: the folder's own.
    flow_shift: float | None = None
    # A distilled model's own schedule on the 0..1000 grid, len == steps. LTX gets it as the
    # pipeline's `timesteps`; Wan samples Euler on sigmas t/1000, shifted by `flow_shift`
    # (LightX2V's step-distill scheduler does exactly this).
    timesteps: tuple[float, ...] | None = None
    call_kwargs: Mapping[str, Any] = field(default_factory=dict)  # extra pipeline arguments
    dtype: str = "bfloat16"  # default dtype of every component on CUDA
    # Per-component dtypes that differ from `dtype` (on CUDA; on CPU everything is float32).
    component_dtypes: Mapping[str, str] = field(default_factory=dict)
    # Speed-ups; pipeline.py applies them only where they can run and reports which it did.
    compile_repeated_blocks: bool = False
    first_block_cache: float | None = None  # threshold, or None for off
    attention_backend: str | None = None  # diffusers attention backend name, or None (SDPA)
    vae_tiling: bool = False  # decode in tiles from the start (LTX's docs do)
    offload: bool = False  # model CPU offload from the start (set by choose_auto when tight)
    auto: bool = True  # whether `auto` may pick it (else only by name)
    reference_size: tuple[int, int] = (16, 9)  # the model's native landscape shape, for display

    @property
    def default_size(self) -> tuple[int, int]:
        """(width, height) a landscape input of the model's native shape becomes."""
        return snap_size(*self.reference_size, self.pixel_budget, self.size_multiple)

    def frames_for(self, duration: str | None) -> int:
        """Default frame count for a duration name (None means "standard")."""
        key = "standard" if duration is None else duration
        if key not in self.frames:
            raise PresetError(f"duration must be one of {', '.join(DURATIONS)}, not {duration!r}")
        return self.frames[key]

    def weight_bytes(self, component: str | None = None) -> int:
        """Bytes of the weights on CUDA (one component, or all), from the exact counts."""
        names = self.params if component is None else {component: self.params[component]}
        return sum(
            n * DTYPE_BYTES[self.component_dtypes.get(name, self.dtype)]
            for name, n in names.items()
        )

    @property
    def vram_gb(self) -> float:
        """GiB of free GPU memory needed with everything resident: weights + headroom."""
        return self.weight_bytes() / GIB + self.headroom_gb

    @property
    def offload_vram_gb(self) -> float:
        """GiB needed with model CPU offload: the largest component at a time + headroom."""
        largest = max((self.weight_bytes(c) for c in self.params), default=0)
        return largest / GIB + self.headroom_gb


# Exact parameter counts (generator/configs, built on the meta device; checked by
# tests/test_realsize.py). The text encoder and VAE of the Wan models are the same files.
_UMT5_XXL = 5_680_910_336  # google/umt5-xxl encoder
_WAN21_VAE = 126_892_531
_WAN21_I2V_PARAMS = {
    "transformer": 16_394_878_784,
    "text_encoder": _UMT5_XXL,
    "image_encoder": 632_076_800,  # CLIP ViT-H/14 vision tower + projection
    "vae": _WAN21_VAE,
}
_WAN22_A14B_PARAMS = {
    "transformer": 14_288_901_184,  # high-noise expert
    "transformer_2": 14_288_901_184,  # low-noise expert
    "text_encoder": _UMT5_XXL,
    "vae": _WAN21_VAE,
}
_LTX_13B_PARAMS = {
    "transformer": 13_042_569_344,
    "text_encoder": 4_762_310_656,  # google/t5-v1_1-xxl encoder
    "vae": 1_246_913_522,
}
_WAN22_5B_PARAMS = {"transformer": 4_999_787_712, "text_encoder": _UMT5_XXL, "vae": 704_688_668}

# LightX2V's Wan step distillation, read in ModelTC/LightX2V (commit f8aee98):
# configs/distill/wan21/wan_i2v_distill_lora_4step_cfg.json and
# configs/distill/wan22/wan_moe_i2v_distill_with_lora.json both say "sample_shift": 5,
# "denoising_step_list": [1000, 750, 500, 250], "enable_cfg": false (guidance 1), whatever the
# resolution. Their scheduler (lightx2v/models/schedulers/wan/step_distill/scheduler.py) takes
# sigma = t/1000, shifts it by 5 and steps Euler to the next sigma (the last to 0).
_LIGHTX2V_SHIFT = 5.0
_LIGHTX2V_STEPS = (1000.0, 750.0, 500.0, 250.0)
# Wan 2.2 A14B: LightX2V runs steps 0-1 on the high-noise expert ("boundary_step_index": 2).
# Shifted, the steps are t = 1000, 937.5, 833.3, 625; the diffusers folder's boundary_ratio 0.9
# (scripts/convert_wan_to_diffusers.py) switches experts below t = 900: the same split.
_LIGHTX2V_WAN22_LORAS = (
    # The LoRA files LightX2V's own configs name in its hub repo (the "_1022" release).
    LoraSpec(
        repo="lightx2v/Wan2.2-Distill-Loras",
        weight_name="wan2.2_i2v_A14b_high_noise_lora_rank64_lightx2v_4step_1022.safetensors",
        adapter_name="distill_high",
        component="transformer",
    ),
    LoraSpec(
        repo="lightx2v/Wan2.2-Distill-Loras",
        weight_name="wan2.2_i2v_A14b_low_noise_lora_rank64_lightx2v_4step_1022.safetensors",
        adapter_name="distill_low",
        component="transformer_2",
    ),
)

# Wan 2.2 I2V A14B, verified: `Wan-AI/Wan2.2-I2V-A14B-Diffusers` with `WanImageToVideoPipeline`
# (diffusers docs api/pipelines/wan.md; two transformers, boundary_ratio 0.9, no CLIP image
# encoder). Its LightX2V 4-step LoRAs go one into each expert (see above). diffusers 0.42's
# `_convert_non_diffusers_wan_lora_to_diffusers` reads their key layout (tests/test_realsize.py).
_WAN22_A14B_480P = Preset(
    name="wan22-a14b-480p",
    hub_id="Wan-AI/Wan2.2-I2V-A14B-Diffusers",
    pipeline_class="WanImageToVideoPipeline",
    description="Wan 2.2 I2V A14B (two experts) at 480p, LightX2V 4 steps: best quality per second.",
    pixel_budget=832 * 480,
    reference_size=(832, 480),
    size_multiple=16,
    frame_rule=4,
    # Wan was trained on 81 frames: "long" stays at 81, longer clips come from extend.
    frames={"short": 49, "standard": 81, "long": 81},
    max_clip_frames=81,
    max_frames=241,
    fps=16,
    steps=4,
    guidance=1.0,
    params=_WAN22_A14B_PARAMS,
    headroom_gb=12.0,  # estimate: 81 frames at 832x480, VAE decode untiled
    configs="wan22-i2v-a14b",
    loras=_LIGHTX2V_WAN22_LORAS,
    flow_shift=_LIGHTX2V_SHIFT,
    timesteps=_LIGHTX2V_STEPS,
    component_dtypes={"vae": "float32"},
    compile_repeated_blocks=True,
)

# The same model at 720p (1280x720, LightX2V's own target size for these LoRAs). About 2.3x
# the pixels of 480p and slower per clip, so `auto` leaves it to be picked by name.
_WAN22_A14B_720P = dataclasses.replace(
    _WAN22_A14B_480P,
    name="wan22-a14b-720p",
    description="Wan 2.2 I2V A14B (two experts) at 720p, LightX2V 4 steps: sharpest, slower.",
    pixel_budget=1280 * 720,
    reference_size=(1280, 720),
    headroom_gb=20.0,  # estimate: 81 frames at 1280x720 (2.3x the 480p tokens)
    auto=False,
)

# Wan 2.1 I2V 14B 480P, verified: `Wan-AI/Wan2.1-I2V-14B-480P-Diffusers` with
# `WanImageToVideoPipeline` (diffusers docs and pipeline_wan_i2v.py). The distiller's own LoRA:
# LightX2V's configs/distill/wan21/wan_i2v_distill_lora_4step_cfg.json names
# `lightx2v/Wan2.1-Distill-Loras/wan2.1_i2v_lora_rank64_lightx2v_4step.safetensors`; its
# schedule is LightX2V's shift 5 on 1000/750/500/250 (above), not Wan's base 480p shift 3.
# Wan's VAE and CLIP image encoder stay in float32 (decoding quality).
_WAN_480P_FAST = dataclasses.replace(
    _WAN22_A14B_480P,  # same sizes, frames and LightX2V schedule
    name="wan-480p-fast",
    hub_id="Wan-AI/Wan2.1-I2V-14B-480P-Diffusers",
    description="Wan 2.1 I2V 14B at 480p with the LightX2V 4-step LoRA: strong motion, 5 s clips.",
    params=_WAN21_I2V_PARAMS,
    configs="wan21-i2v-14b-480p",
    loras=(
        LoraSpec(
            repo="lightx2v/Wan2.1-Distill-Loras",
            weight_name="wan2.1_i2v_lora_rank64_lightx2v_4step.safetensors",
        ),
    ),
    component_dtypes={"vae": "float32", "image_encoder": "float32"},
)

# LTX-Video 0.9.8 13B distilled, verified: the diffusers LTX docs (api/pipelines/ltx_video.md)
# load `Lightricks/LTX-Video-0.9.8-13B-distilled` with `LTXConditionPipeline`, turn on VAE
# tiling, and sample it like 0.9.7 distilled: guidance 1.0, these 8 timesteps,
# decode_timestep 0.05, decode_noise_scale 0.025, image_cond_noise_scale 0.0 (Lightricks'
# configs/ltxv-13b-0.9.8-distilled.yaml has the same first 7 steps and decode settings).
# No smaller distilled LTX checkpoint in diffusers folder form could be verified: the
# ltxv-2b-0.9.8-distilled weights exist only as a single LTX-format file.
_LTX_FAST = Preset(
    name="ltx-fast",
    hub_id="Lightricks/LTX-Video-0.9.8-13B-distilled",
    pipeline_class="LTXConditionPipeline",
    description="LTX-Video 0.9.8 13B distilled at 768x512, 8 steps: the quickest clips.",
    pixel_budget=768 * 512,
    reference_size=(768, 512),
    size_multiple=32,
    frame_rule=8,
    frames={"short": 49, "standard": 97, "long": 161},
    max_clip_frames=257,
    max_frames=481,
    fps=24,
    steps=8,
    guidance=1.0,
    params=_LTX_13B_PARAMS,
    headroom_gb=6.0,  # estimate: 97 frames at 768x512, VAE decode tiled
    configs="ltx-0.9.8-13b",
    timesteps=(1000.0, 993.0, 987.0, 981.0, 975.0, 909.0, 725.0, 0.03),
    call_kwargs={
        "decode_timestep": 0.05,
        "decode_noise_scale": 0.025,
        "image_cond_noise_scale": 0.0,
    },
    compile_repeated_blocks=True,
    vae_tiling=True,
)

# Wan 2.2 TI2V 5B, verified: `Wan-AI/Wan2.2-TI2V-5B-Diffusers` runs image-to-video through
# `WanImageToVideoPipeline` with `expand_timesteps=True` (set in the folder's model_index.json;
# the first latent frame is the image, no CLIP encoder). Its VAE has z_dim 48 and a 16x spatial
# stride, the transformer a 2x2 patch: sizes are multiples of 32. 720p (1280x704), 121 frames at
# 24 fps, 50 steps, guidance 5.0, flow shift 5.0 per Wan's own TI2V-5B settings.
# Kept as the <= 32 GB tier until a step-distilled model replaces it: HunyuanVideo-1.5's 480p
# I2V step-distilled folder (hunyuanvideo-community/HunyuanVideo-1.5-Diffusers-480p_i2v_step_distilled,
# diffusers PR #12802) is verified, but its pipeline family is not wired into pipeline.py yet.
_WAN22_5B = Preset(
    name="wan22-5b",
    hub_id="Wan-AI/Wan2.2-TI2V-5B-Diffusers",
    pipeline_class="WanImageToVideoPipeline",
    description="Wan 2.2 TI2V 5B at 720p, 24 fps: sharp, slower (50 steps).",
    pixel_budget=1280 * 704,
    reference_size=(1280, 704),
    size_multiple=32,
    frame_rule=4,
    frames={"short": 73, "standard": 121, "long": 121},
    max_clip_frames=121,
    max_frames=361,
    fps=24,
    steps=50,
    guidance=5.0,
    params=_WAN22_5B_PARAMS,
    headroom_gb=10.0,  # estimate: 121 frames at 1280x704, VAE decode untiled
    configs="wan22-ti2v-5b",
    flow_shift=5.0,
    component_dtypes={"vae": "float32"},
    # 50 steps with CFG: skipping near-identical transformer passes pays here.
    first_block_cache=0.05,
)

PRESETS: dict[str, Preset] = {
    p.name: p for p in (_WAN22_A14B_480P, _WAN22_A14B_720P, _WAN_480P_FAST, _LTX_FAST, _WAN22_5B)
}


def get_preset(name: str) -> Preset:
    """The preset called `name`; an unknown name raises PresetError listing the valid ones."""
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise PresetError(
            f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)} "
            "(or 'auto', or a local diffusers folder)"
        ) from None


def auto_order() -> list[Preset]:
    """The presets `auto` may pick, best first: the largest measured need first.

    The line-up is built so that a larger need buys a better clip; ties keep PRESETS' order.
    """
    candidates = [p for p in PRESETS.values() if p.auto]
    return sorted(candidates, key=lambda p: -p.vram_gb)


def choose_auto(free_vram_bytes: int | None, *, copies: int = 1) -> Preset:
    """The best preset that fits `free_vram_bytes` of free GPU memory, `copies` times over.

    Tries every preset fully resident first, then (for one copy) with model CPU offload
    (returned with `offload=True`): offloaded copies would share one PCIe link and host
    memory, so several copies are only ever resident. None means there is no CUDA GPU.
    """
    if free_vram_bytes is None:
        raise NeedsGPU(
            "generation needs a CUDA GPU: no GPU was found. Pass a local diffusers folder "
            "(--model DIR) to run a small model on the CPU."
        )
    if isinstance(copies, bool) or not isinstance(copies, int) or copies < 1:
        raise PresetError(f"copies must be a positive integer, not {copies!r}")
    order = auto_order()
    for preset in order:
        if copies * preset.vram_gb * GIB <= free_vram_bytes:
            return preset
    if copies == 1:
        for preset in order:
            if preset.offload_vram_gb * GIB <= free_vram_bytes:
                return dataclasses.replace(preset, offload=True)
        smallest = min(p.offload_vram_gb for p in order)
        raise NeedsGPU(
            f"the GPU has {free_vram_bytes / GIB:.1f} GiB free; the smallest preset needs about "
            f"{smallest:.0f} GiB. Free GPU memory or pass a local model folder (--model DIR)."
        )
    smallest = min(p.vram_gb for p in order)
    raise NeedsGPU(
        f"the GPU has {free_vram_bytes / GIB:.1f} GiB free; {copies} copies of the smallest "
        f"preset need about {copies * smallest:.0f} GiB. Use fewer slots (--slots)."
    )


def snap_frames(n: int, rule: int) -> int:
    """The frame count of the form `rule * k + 1` (k >= 1) nearest to `n` (ties round up)."""
    if isinstance(rule, bool) or not isinstance(rule, int) or rule < 1:
        raise PresetError(f"frame rule must be a positive integer, not {rule!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise PresetError(f"frame count must be a positive integer, not {n!r}")
    k = max(1, (n - 1 + rule // 2) // rule)
    return rule * k + 1


def snap_size(width: int, height: int, budget: int, multiple: int) -> tuple[int, int]:
    """Scale (width, height) to about `budget` pixels, keeping the aspect ratio.

    Each side becomes a multiple of `multiple` within one multiple of its exact scaled
    length; the area never exceeds the budget, except that each side is at least one
    `multiple` (so a budget below multiple**2 gives multiple x multiple).
    """
    for name, value in (("width", width), ("height", height), ("budget", budget)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise PresetError(f"{name} must be a positive integer, not {value!r}")
    if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
        raise PresetError(f"size multiple must be a positive integer, not {multiple!r}")
    scale = math.sqrt(budget / (width * height))
    target_w, target_h = width * scale, height * scale
    aspect = math.log(width / height)

    def snapped(x: float) -> tuple[int, int]:
        # The small epsilon keeps an exact fit (832 of 832) from flooring a step down.
        low = max(multiple, int(x / multiple + 1e-9) * multiple)
        return low, low + multiple

    # Of the multiples just below and above each target side, the pair that fits the budget
    # and keeps the aspect ratio best (then the larger one).
    fitting = [(w, h) for w in snapped(target_w) for h in snapped(target_h) if w * h <= budget]
    if fitting:
        w, h = min(fitting, key=lambda s: (abs(math.log(s[0] / s[1]) - aspect), -s[0] * s[1]))
    else:
        # Only when a side had to be raised to one multiple (extreme aspect ratio, or a
        # budget under multiple**2): keep that side at one multiple, fit the other.
        w, h = snapped(target_w)[0], snapped(target_h)[0]
        if h == multiple:
            w = max(multiple, budget // (h * multiple) * multiple)
        else:
            h = max(multiple, budget // (w * multiple) * multiple)
    return w, h


# Settings a local folder's zoetrope.json, or keyword overrides to VideoGenerator.load, may set.
OVERRIDE_KEYS = (
    "preset",
    "pixel_budget",
    "steps",
    "guidance",
    "fps",
    "frames",
    "max_clip_frames",
    "max_frames",
    "flow_shift",
    "timesteps",
    "call_kwargs",
    "first_block_cache",
    "compile_repeated_blocks",
    "attention_backend",
    "lora",
    "description",
)


def _positive_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PresetError(f"{key} must be a positive integer, not {value!r}")
    return value


def _number(key: str, value: Any, *, low: float, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise PresetError(f"{key} must be a number in [{low:g}, {high:g}], not {value!r}")
    return float(value)


def _lora_spec(value: Any) -> LoraSpec:
    if not isinstance(value, Mapping) or not {"repo", "weight_name"} <= set(value):
        raise PresetError(f"lora must be {{'repo': ..., 'weight_name': ...}}, not {value!r}")
    try:
        spec = LoraSpec(**value)
    except TypeError as exc:
        raise PresetError(f"lora has unknown fields: {value!r} ({exc})") from None
    if spec.component not in ("transformer", "transformer_2"):
        raise PresetError(
            f"lora component must be 'transformer' or 'transformer_2', not {spec.component!r}"
        )
    return spec


def apply_overrides(preset: Preset, overrides: Mapping[str, Any]) -> Preset:
    """A copy of `preset` with validated overrides (keys in OVERRIDE_KEYS; "preset" excluded).

    Overriding `steps` without `timesteps` drops a custom schedule of another length.
    """
    changes: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in OVERRIDE_KEYS or key == "preset":
            raise PresetError(f"unknown setting {key!r}; known: {', '.join(OVERRIDE_KEYS[1:])}")
        if key in ("pixel_budget", "steps", "fps", "max_clip_frames", "max_frames"):
            changes[key] = _positive_int(key, value)
        elif key == "guidance":
            changes[key] = _number(key, value, low=0.0, high=100.0)
        elif key == "flow_shift":
            changes[key] = None if value is None else _number(key, value, low=0.01, high=100.0)
        elif key == "first_block_cache":
            changes[key] = None if value is None else _number(key, value, low=0.0, high=1.0)
        elif key == "compile_repeated_blocks":
            if not isinstance(value, bool):
                raise PresetError(f"compile_repeated_blocks must be true or false, not {value!r}")
            changes[key] = value
        elif key in ("attention_backend", "description"):
            if value is not None and not isinstance(value, str):
                raise PresetError(f"{key} must be a string, not {value!r}")
            changes[key] = value if key == "attention_backend" else str(value)
        elif key == "frames":
            if not isinstance(value, Mapping) or not set(value) <= set(DURATIONS):
                raise PresetError(
                    f"frames must map {', '.join(DURATIONS)} to counts, not {value!r}"
                )
            merged = dict(preset.frames)
            merged.update({d: _positive_int(f"frames[{d!r}]", n) for d, n in value.items()})
            changes[key] = merged
        elif key == "timesteps":
            if value is not None:
                if not isinstance(value, list | tuple) or not value:
                    raise PresetError(f"timesteps must be a list of numbers, not {value!r}")
                value = tuple(_number("timesteps[]", t, low=0.0, high=1000.0) for t in value)
            changes[key] = value
        elif key == "call_kwargs":
            if not isinstance(value, Mapping):
                raise PresetError(f"call_kwargs must be a mapping, not {value!r}")
            changes[key] = dict(value)
        elif key == "lora":
            specs = [] if value is None else [value] if isinstance(value, Mapping) else value
            if not isinstance(specs, list | tuple):
                raise PresetError(
                    f"lora must be {{'repo': ..., 'weight_name': ...}} or a list of them, "
                    f"not {value!r}"
                )
            changes["loras"] = tuple(_lora_spec(spec) for spec in specs)
    if (
        "steps" in changes
        and "timesteps" not in changes
        and preset.timesteps is not None
        and len(preset.timesteps) != changes["steps"]
    ):
        changes["timesteps"] = None
    result = dataclasses.replace(preset, **changes)
    if result.timesteps is not None and len(result.timesteps) != result.steps:
        if "steps" in changes:
            raise PresetError(
                f"timesteps has {len(result.timesteps)} entries but steps is {result.steps}"
            )
        result = dataclasses.replace(result, steps=len(result.timesteps))
    return result
