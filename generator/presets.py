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
    """A LoRA fused into the transformer at load time (e.g. a step-distillation LoRA)."""

    repo: str  # hub id, or a local folder that holds `weight_name`
    weight_name: str
    scale: float = 1.0
    adapter_name: str = "distill"


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
    vram_gb: float  # approximate free GPU memory needed with everything resident
    offload_vram_gb: float  # approximate need with model CPU offload and VAE tiling
    lora: LoraSpec | None = None
    flow_shift: float | None = None  # scheduler shift (flow matching); None: the folder's
    timesteps: tuple[float, ...] | None = None  # custom schedule (distilled LTX); len == steps
    call_kwargs: Mapping[str, Any] = field(default_factory=dict)  # extra pipeline arguments
    dtype: str = "bfloat16"  # default dtype of every component on CUDA
    # Per-component dtypes that differ from `dtype` (on CUDA; on CPU everything is float32).
    component_dtypes: Mapping[str, str] = field(default_factory=dict)
    # Speed-ups; pipeline.py applies them only where they can run and reports which it did.
    compile_repeated_blocks: bool = False
    first_block_cache: float | None = None  # threshold, or None for off
    attention_backend: str | None = None  # diffusers attention backend name, or None (SDPA)
    offload: bool = False  # model CPU offload from the start (set by choose_auto when tight)
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


# Wan 2.1 I2V 14B 480P, verified: `Wan-AI/Wan2.1-I2V-14B-480P-Diffusers` with
# `WanImageToVideoPipeline` (diffusers docs and pipeline_wan_i2v.py). The LightX2V
# CFG + step distillation LoRA, verified in Kijai/WanVideo_comfy's file list:
# `Lightx2v/lightx2v_I2V_14B_480p_cfg_step_distill_rank64_bf16.safetensors` (738 MB), made for
# 4 steps at guidance 1.0. Wan's VAE and CLIP image encoder stay in float32 (decoding quality).
_WAN_480P_FAST = Preset(
    name="wan-480p-fast",
    hub_id="Wan-AI/Wan2.1-I2V-14B-480P-Diffusers",
    pipeline_class="WanImageToVideoPipeline",
    description="Wan 2.1 I2V 14B at 480p with the LightX2V 4-step LoRA: best motion, 5 s clips.",
    pixel_budget=832 * 480,
    reference_size=(832, 480),
    size_multiple=16,
    frame_rule=4,
    # Wan 2.1 was trained on 81 frames: "long" stays at 81, longer clips come from extend.
    frames={"short": 49, "standard": 81, "long": 81},
    max_clip_frames=81,
    max_frames=241,
    fps=16,
    steps=4,
    guidance=1.0,
    vram_gb=56,
    offload_vram_gb=40,
    lora=LoraSpec(
        repo="Kijai/WanVideo_comfy",
        weight_name="Lightx2v/lightx2v_I2V_14B_480p_cfg_step_distill_rank64_bf16.safetensors",
    ),
    flow_shift=3.0,
    component_dtypes={"vae": "float32", "image_encoder": "float32"},
    compile_repeated_blocks=True,
)

# LTX-Video 0.9.7 distilled (13B transformer), verified: the diffusers LTX docs load
# `Lightricks/LTX-Video-0.9.7-distilled` with `LTXConditionPipeline` and give its schedule
# (guidance 1.0, these 8 timesteps, decode_timestep 0.05, decode_noise_scale 0.025,
# image_cond_noise_scale 0.0). No 2B distilled checkpoint in diffusers format could be
# verified, so this preset needs more memory than DESIGN.md's 12-24 GB estimate.
_LTX_FAST = Preset(
    name="ltx-fast",
    hub_id="Lightricks/LTX-Video-0.9.7-distilled",
    pipeline_class="LTXConditionPipeline",
    description="LTX-Video 0.9.7 distilled at 768x512, 8 steps: the quickest clips.",
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
    vram_gb=40,
    offload_vram_gb=30,
    timesteps=(1000.0, 993.0, 987.0, 981.0, 975.0, 909.0, 725.0, 0.03),
    call_kwargs={
        "decode_timestep": 0.05,
        "decode_noise_scale": 0.025,
        "image_cond_noise_scale": 0.0,
    },
    compile_repeated_blocks=True,
)

# Wan 2.2 TI2V 5B, verified: `Wan-AI/Wan2.2-TI2V-5B-Diffusers` runs image-to-video through
# `WanImageToVideoPipeline` with `expand_timesteps=True` (set in the folder's model_index.json;
# the first latent frame is the image, no CLIP encoder). Its VAE has z_dim 48 and a 16x spatial
# stride, the transformer a 2x2 patch: sizes are multiples of 32. 720p (1280x704), 121 frames at
# 24 fps, 50 steps, guidance 5.0, flow shift 5.0 per Wan's own TI2V-5B settings.
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
    vram_gb=32,
    offload_vram_gb=24,
    flow_shift=5.0,
    component_dtypes={"vae": "float32"},
    # 50 steps with CFG: skipping near-identical transformer passes pays here.
    first_block_cache=0.05,
)

# Best first: `choose_auto` walks this order.
PRESETS: dict[str, Preset] = {p.name: p for p in (_WAN_480P_FAST, _LTX_FAST, _WAN22_5B)}


def get_preset(name: str) -> Preset:
    """The preset called `name`; an unknown name raises PresetError listing the valid ones."""
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise PresetError(
            f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)} "
            "(or 'auto', or a local diffusers folder)"
        ) from None


def choose_auto(free_vram_bytes: int | None) -> Preset:
    """The best preset that fits `free_vram_bytes` of free GPU memory.

    Tries every preset fully resident first, then with model CPU offload (returned with
    `offload=True`). None means there is no CUDA GPU.
    """
    if free_vram_bytes is None:
        raise NeedsGPU(
            "generation needs a CUDA GPU: no GPU was found. Pass a local diffusers folder "
            "(--model DIR) to run a small model on the CPU."
        )
    for preset in PRESETS.values():
        if preset.vram_gb * GIB <= free_vram_bytes:
            return preset
    for preset in PRESETS.values():
        if preset.offload_vram_gb * GIB <= free_vram_bytes:
            return dataclasses.replace(preset, offload=True)
    smallest = min(p.offload_vram_gb for p in PRESETS.values())
    raise NeedsGPU(
        f"the GPU has {free_vram_bytes / GIB:.1f} GiB free; the smallest preset needs about "
        f"{smallest:g} GiB. Free GPU memory or pass a local model folder (--model DIR)."
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
            if value is None:
                changes[key] = None
            elif isinstance(value, Mapping) and {"repo", "weight_name"} <= set(value):
                try:
                    changes[key] = LoraSpec(**value)
                except TypeError as exc:
                    raise PresetError(f"lora has unknown fields: {value!r} ({exc})") from None
            else:
                raise PresetError(
                    f"lora must be {{'repo': ..., 'weight_name': ...}}, not {value!r}"
                )
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


def weights_cached(preset: Preset) -> bool:
    """Whether the preset's weights (and its LoRA) are in the local Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(preset.hub_id, "model_index.json")
    if not isinstance(found, str):
        return False
    if preset.lora is not None:
        lora = try_to_load_from_cache(preset.lora.repo, preset.lora.weight_name)
        return isinstance(lora, str)
    return True


def pull_weights(preset: Preset) -> list[str]:
    """Download the preset's weights (and LoRA) into the Hugging Face cache; returns paths."""
    from huggingface_hub import hf_hub_download, snapshot_download

    paths = [snapshot_download(preset.hub_id)]
    if preset.lora is not None:
        paths.append(hf_hub_download(preset.lora.repo, preset.lora.weight_name))
    return paths
