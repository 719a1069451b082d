"""What one clip will be: a request checked against the loaded model, and its noise.

Plain values in, plain values out (the image is a PIL image, the noise a torch tensor): every
bad value raises BadRequest naming the argument and the value.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError

from generator.presets import DURATIONS, MAX_SEED, Preset, snap_frames, snap_size
from generator.protocol import GenerationRequest


class BadRequest(ValueError):
    """A request value that cannot be generated; the message names the argument and value."""


# Default negative prompts for CFG presets when the member gives none (at guidance 1 the
# pipelines make no unconditional pass and a negative prompt does nothing).
# Wan: `sample_neg_prompt` in Wan-Video/Wan2.1 wan/configs/shared_config.py, the prompt Wan's
# own sampler uses (diffusers' Wan I2V example uses an English rendering of it).
# LTX: the negative prompt of the LTXConditionPipeline example in diffusers 0.42's docs.
DEFAULT_NEGATIVE_PROMPTS = {
    "wan": (
        "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，"
        "最差质量，低质量，JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，"
        "画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，"
        "三条腿，背景人很多，倒着走"
    ),
    "ltx": "worst quality, inconsistent motion, blurry, jittery, distorted",
}


def negative_prompt(family: str, guidance: float, given: str | None) -> str | None:
    """The member's negative prompt, else the model's documented default where CFG runs."""
    if given:
        return given
    if guidance > 1.0:
        return DEFAULT_NEGATIVE_PROMPTS[family]
    return None


def plan_request(request: GenerationRequest, preset: Preset) -> dict[str, Any]:
    """Check a request against the loaded model's preset; every error names the value.

    Returns seed, variation_seed, strength, frames, width, height and the resized image.
    """
    if request.preset not in (None, "", "auto", preset.name):
        raise BadRequest(
            f"preset {request.preset!r} was asked for but this worker serves {preset.name!r}"
        )
    seed = request.seed
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise BadRequest(f"seed must be an integer in [0, {MAX_SEED}], not {seed!r}")
    strength = request.variation_strength
    if (
        isinstance(strength, bool)
        or not isinstance(strength, int | float)
        or not 0.0 <= strength <= 1.0  # also false for NaN
    ):
        raise BadRequest(f"variation_strength must be in [0, 1], not {strength!r}")
    vseed = request.variation_seed
    if strength > 0 and vseed is None:
        raise BadRequest(f"variation_strength {strength!r} needs a variation_seed")
    if vseed is not None and (
        isinstance(vseed, bool) or not isinstance(vseed, int) or not 0 <= vseed <= MAX_SEED
    ):
        raise BadRequest(f"variation_seed must be an integer in [0, {MAX_SEED}], not {vseed!r}")
    if not isinstance(request.prompt, str):
        raise BadRequest(f"prompt must be text, not {request.prompt!r}")

    if request.num_frames is not None:
        n = request.num_frames
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise BadRequest(f"num_frames must be a positive integer, not {n!r}")
        if n > preset.max_clip_frames:
            raise BadRequest(
                f"num_frames {n} is more than {preset.name} makes in one clip "
                f"({preset.max_clip_frames})"
            )
        frames = snap_frames(n, preset.frame_rule)
        if frames > preset.max_clip_frames:  # snapped up past the cap: take the step below
            frames -= preset.frame_rule
    else:
        if request.duration not in (None, *DURATIONS):
            raise BadRequest(
                f"duration must be one of {', '.join(DURATIONS)}, not {request.duration!r}"
            )
        frames = snap_frames(preset.frames_for(request.duration), preset.frame_rule)
    if request.degraded:
        # About half the frames: the retry after an OOM must need clearly less memory.
        frames = snap_frames(max(1, (frames - 1) // 2 + 1), preset.frame_rule)

    try:
        with Image.open(request.image_path) as img:
            img.load()
            image = img.convert("RGB")
    except (FileNotFoundError, UnidentifiedImageError, OSError, ValueError) as exc:
        raise BadRequest(
            f"image_path {request.image_path!r} is not a readable image: {exc}"
        ) from None
    width, height = snap_size(image.width, image.height, preset.pixel_budget, preset.size_multiple)
    if (width, height) != image.size:
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    return {
        "seed": seed,
        "variation_seed": vseed,
        "strength": float(strength),
        "frames": frames,
        "width": width,
        "height": height,
        "image": image,
    }


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation from `a` (t=0, returned unchanged) to `b` (t=1).

    Gaussian noise lives near a sphere; slerp keeps the mix at the same norm, where a plain
    lerp would shrink it and wash the clip out.
    """
    if t == 0:
        return a
    if t == 1:
        return b
    a64, b64 = a.double().flatten(), b.double().flatten()
    cos = torch.dot(a64, b64) / (a64.norm() * b64.norm())
    theta = math.acos(float(cos.clamp(-1.0, 1.0)))
    if theta < 1e-4:  # (almost) parallel: slerp degenerates to lerp
        return torch.lerp(a, b, t)
    sin = math.sin(theta)
    wa, wb = math.sin((1 - t) * theta) / sin, math.sin(t * theta) / sin
    return (wa * a.double() + wb * b.double()).to(a.dtype)
