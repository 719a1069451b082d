"""Image-to-video generation with diffusers: load once, then make clips on request.

This is the only module of Zoetrope that imports torch and diffusers; only the worker process
imports it. A `VideoGenerator` owns one loaded pipeline and runs one clip at a time.

Two pipeline families are supported:

- Wan (`WanImageToVideoPipeline`): Wan 2.1 I2V (CLIP image embeddings plus a first-frame
  condition) and Wan 2.2 TI2V-5B (`expand_timesteps`: the first latent frame is the image).
  Its `latents` argument is the unpacked noise (1, z_dim, frames', height', width').
- LTX (`LTXConditionPipeline`): the image is a frame-0 condition. Its `latents` argument is
  also unpacked noise of shape (1, in_channels, frames', height', width'); see
  `_LTXConditionPipeline` for why a small subclass is needed to have it used.

Seeds are explicit: the initial noise is built here from `seed` (and, for a variation, slerped
towards `variation_seed`'s noise), so strength 0 reproduces the seed's clip exactly.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import LTXConditionPipeline, WanImageToVideoPipeline
from diffusers.pipelines.ltx.pipeline_ltx_condition import linear_quadratic_schedule
from PIL import Image, UnidentifiedImageError

from generator import distill, weights
from generator.presets import (
    DURATIONS,
    MAX_SEED,
    OVERRIDE_KEYS,
    PRESETS,
    NeedsGPU,
    Preset,
    PresetError,
    apply_overrides,
    choose_auto,
    get_preset,
    snap_frames,
    snap_size,
)
from generator.protocol import GenerationRequest, Progress

log = logging.getLogger(__name__)


class _DropMessage(logging.Filter):
    def __init__(self, start: str) -> None:
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.start)


# LTXConditionPipeline always hands the scheduler timesteps without sigmas, and the scheduler
# logs a warning about it on every clip; the schedule is the intended one, so drop that line.
logging.getLogger("diffusers.schedulers.scheduling_flow_match_euler_discrete").addFilter(
    _DropMessage("`timesteps` were passed without `sigmas`")
)

# A local model folder may hold this file: JSON overrides of the preset settings (keys in
# presets.OVERRIDE_KEYS, e.g. {"steps": 2, "pixel_budget": 4096}); "preset" names a preset
# whose settings are the starting point instead of the generic ones for the folder's family.
OVERRIDES_FILE = "zoetrope.json"


class GenerationCancelled(Exception):
    """The job was cancelled between two denoising steps."""


class OutOfMemory(Exception):
    """The GPU ran out of memory; memory was freed and the generator stays usable."""


class BadRequest(ValueError):
    """A request value that cannot be generated; the message names the argument and value."""


class ModelLoadError(RuntimeError):
    """The model could not be loaded (missing folder, unsupported pipeline, failed download)."""


@dataclass
class ClipResult:
    frames: np.ndarray  # uint8, shape (F, H, W, 3)
    fps: int
    meta: dict[str, Any] = field(default_factory=dict)


class _LTXConditionPipeline(LTXConditionPipeline):
    """`LTXConditionPipeline` that starts denoising from the `latents` it is given.

    Upstream only uses `latents` for video-to-video (`denoise_strength` < 1) and otherwise
    draws its own noise from the generator, which leaves no way to pass variation noise. Its
    `prepare_latents` computes `sigma * own_noise + (1 - sigma) * latents`; with sigma = 0
    that is exactly the given latents, while image conditioning and packing stay upstream's.
    The expected shape is the unpacked (batch, in_channels, frames', height', width').
    """

    def prepare_latents(self, *args: Any, sigma: Any = None, latents: Any = None, **kwargs: Any):
        if latents is not None and sigma is None:
            sigma = torch.zeros((), dtype=torch.float32)
        return super().prepare_latents(*args, sigma=sigma, latents=latents, **kwargs)


# Pipeline class names found in model_index.json -> (family, class used to load the folder).
_WAN_CLASSES = {"WanImageToVideoPipeline", "WanPipeline"}
_LTX_CLASSES = {"LTXConditionPipeline", "LTXImageToVideoPipeline", "LTXPipeline"}
_LOADERS: dict[str, type] = {"wan": WanImageToVideoPipeline, "ltx": _LTXConditionPipeline}

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def free_vram_bytes() -> int | None:
    """Free memory on the current CUDA device, or None without CUDA."""
    if not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info()
    return int(free)


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


def _family_of(class_name: str, model_index: dict[str, Any]) -> str:
    if class_name in _WAN_CLASSES:
        if class_name == "WanPipeline" and not model_index.get("expand_timesteps"):
            raise ModelLoadError(
                "this Wan folder is a text-to-video model (WanPipeline without "
                "expand_timesteps); Zoetrope needs an image-to-video model"
            )
        return "wan"
    if class_name in _LTX_CLASSES:
        return "ltx"
    supported = ", ".join(sorted(_WAN_CLASSES | _LTX_CLASSES))
    raise ModelLoadError(f"unsupported pipeline class {class_name!r}; supported: {supported}")


def _local_base_preset(family: str, model_index: dict[str, Any]) -> Preset:
    """Generic settings for a local folder: the closest preset, minus hub-only parts.

    The LoRA and the distilled schedules belong to the hub presets' weights: a local folder
    gets its base model's usual settings instead (a zoetrope.json can name a preset).
    """
    if family == "wan" and model_index.get("expand_timesteps"):
        return PRESETS["wan22-5b"]
    if family == "wan":
        return dataclasses.replace(
            PRESETS["wan-480p-fast"],
            loras=(),
            timesteps=None,
            flow_shift=3.0,
            steps=40,
            guidance=5.0,
        )
    return dataclasses.replace(PRESETS["ltx-fast"], timesteps=None, steps=40, guidance=3.0)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} must hold a JSON object")
    return data


def _resolve(model: str, device: str, overrides: dict[str, Any]) -> tuple[Preset, str, str]:
    """(preset, family, source) for a preset name, "auto" or a local folder."""
    unknown = set(overrides) - set(OVERRIDE_KEYS)
    if unknown:
        raise PresetError(
            f"unknown setting(s) {sorted(unknown)}; known: {', '.join(OVERRIDE_KEYS)}"
        )
    path = Path(model).expanduser()
    if path.is_dir():
        index_path = path / "model_index.json"
        if not index_path.is_file():
            raise ModelLoadError(f"{path} has no model_index.json: not a diffusers folder")
        model_index = _read_json(index_path)
        class_name = str(model_index.get("_class_name"))
        family = _family_of(class_name, model_index)
        settings: dict[str, Any] = {}
        if (path / OVERRIDES_FILE).is_file():
            settings.update(_read_json(path / OVERRIDES_FILE))
        settings.update(overrides)
        base_name = settings.pop("preset", None)
        if base_name is not None:
            preset = get_preset(base_name)
            if _family_of(preset.pipeline_class, {"expand_timesteps": True}) != family:
                raise PresetError(f"preset {base_name!r} does not fit a {class_name} folder")
        else:
            preset = _local_base_preset(family, model_index)
        preset = dataclasses.replace(
            preset, name=f"local:{path.name}", hub_id=str(path), pipeline_class=class_name
        )
        return apply_overrides(preset, settings), family, str(path)

    if model != "auto" and model not in PRESETS:
        if "/" in model or model.startswith((".", "~")):
            raise ModelLoadError(f"model folder {model!r} does not exist")
        get_preset(model)  # raises, naming the model and listing the presets
    if device != "cuda":
        raise NeedsGPU(
            f"preset {model!r} needs a CUDA GPU (device is {device!r}); pass a local diffusers "
            "folder (--model DIR) to run a small model on the CPU"
        )
    settings = dict(overrides)
    if "preset" in settings:
        raise PresetError("the 'preset' setting is for local folders; pass the preset as model")
    preset = choose_auto(free_vram_bytes()) if model == "auto" else get_preset(model)
    preset = apply_overrides(preset, settings)
    return preset, _family_of(preset.pipeline_class, {"expand_timesteps": True}), preset.hub_id


class VideoGenerator:
    """One loaded image-to-video pipeline, kept warm, generating one clip at a time."""

    def __init__(self, pipe: Any, preset: Preset, family: str, device: str, source: str) -> None:
        self.pipe = pipe
        self.preset = preset
        self.family = family
        self.device = device
        self.source = source
        self.speedups: list[str] = []  # speed-ups actually applied, for meta and logs
        self.lora: str | None = None  # the fused LoRA, if any
        self._offloaded = False

    @classmethod
    def load(
        cls,
        model: str,
        *,
        device: str | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        **overrides: Any,
    ) -> VideoGenerator:
        """Load `model`: a preset name, "auto", or a local diffusers folder.

        Keyword overrides (see presets.OVERRIDE_KEYS, e.g. steps=2, pixel_budget=4096) change
        the preset's settings; a local folder's zoetrope.json is read first.
        """
        report = on_progress or (lambda p: None)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise NeedsGPU(f"device {device!r} was asked for but CUDA is not available")
        kind = "cuda" if device.startswith("cuda") else device
        preset, family, source = _resolve(model, kind, overrides)
        if not Path(source).is_dir():
            # A hub preset loads its pulled snapshot, never downloads inside a job.
            try:
                source, preset = weights.local_snapshot(preset)
            except weights.WeightsMissing as exc:
                raise ModelLoadError(str(exc)) from None
        report(Progress(0, 1, "load"))

        on_cuda = kind == "cuda"
        # bf16 on CPU is slow and gains nothing here: everything runs in float32 there.
        default = _DTYPES[preset.dtype] if on_cuda else torch.float32
        dtypes: dict[str, torch.dtype] = {"default": default}
        for component, name in preset.component_dtypes.items():
            dtypes[component] = _DTYPES[name] if on_cuda else torch.float32
        started = time.perf_counter()
        try:
            pipe = _LOADERS[family].from_pretrained(source, dtype=dtypes)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot load {source!r}: {exc}") from exc
        pipe.set_progress_bar_config(disable=True)  # progress goes through our callback

        generator = cls(pipe, preset, family, device, source)
        generator._configure()
        seconds = time.perf_counter() - started
        log.info("loaded %s from %s on %s in %.1fs", preset.name, source, device, seconds)
        report(Progress(1, 1, "load"))
        return generator

    # -- loading helpers ---------------------------------------------------------------

    def _configure(self) -> None:
        pipe, preset = self.pipe, self.preset
        # Size and frame rules come from the loaded components, not from the preset's
        # constants, so a local folder with another VAE stride still gets valid sizes.
        if self.family == "wan":
            temporal = pipe.vae_scale_factor_temporal
            transformer = pipe.transformer or pipe.transformer_2
            multiple = pipe.vae_scale_factor_spatial * transformer.config.patch_size[1]
        else:
            temporal = pipe.vae_temporal_compression_ratio
            multiple = pipe.vae_spatial_compression_ratio * pipe.transformer_spatial_patch_size
        if (temporal, multiple) != (preset.frame_rule, preset.size_multiple):
            log.info("%s: frame rule %d, size multiple %d", preset.name, temporal, multiple)
        self.preset = preset = dataclasses.replace(
            preset, frame_rule=temporal, size_multiple=multiple
        )

        if preset.flow_shift is not None:
            config = pipe.scheduler.config
            key = "flow_shift" if "flow_shift" in config else "shift" if "shift" in config else None
            if key is None:
                log.warning("scheduler %s has no flow shift setting", type(pipe.scheduler).__name__)
            else:
                pipe.scheduler = type(pipe.scheduler).from_config(
                    config, **{key: preset.flow_shift}
                )
        distill.use_trained_schedule(pipe, preset, self.family)

        on_cuda = self.device.startswith("cuda")
        if on_cuda and preset.offload:
            pipe.enable_model_cpu_offload(device=self.device)
            self._enable_vae_tiling(True)
            self._offloaded = True
        else:
            pipe.to(self.device)
        if preset.vae_tiling:
            self._enable_vae_tiling(True)

        try:
            fused = distill.fuse_loras(pipe, preset.loras)
        except distill.LoraLoadError as exc:
            raise ModelLoadError(str(exc)) from exc
        self.lora = ", ".join(fused) or None

        self._apply_speedups(on_cuda)

    def _apply_speedups(self, on_cuda: bool) -> None:
        preset, transformer = self.preset, self.pipe.transformer
        if preset.attention_backend and on_cuda:
            name = preset.attention_backend
            if "hub" in name:
                # *_hub backends download kernels at run time: no network on GPU boxes.
                log.warning("attention backend %r downloads kernels; not applied", name)
            else:
                try:
                    transformer.set_attention_backend(name)
                    self.speedups.append(f"attention:{name}")
                except (ImportError, RuntimeError, ValueError) as exc:
                    log.warning("attention backend %r not available: %s", name, exc)
        # First Block Cache is plain torch and runs on any device, so it is applied wherever a
        # preset or override enables it (the CPU tests rely on it to check cancel leaks nothing).
        if preset.first_block_cache is not None:
            from diffusers.hooks import FirstBlockCacheConfig

            if transformer.config.num_layers < 2:
                raise ModelLoadError("First Block Cache needs a transformer with >= 2 blocks")
            transformer.enable_cache(FirstBlockCacheConfig(threshold=preset.first_block_cache))
            self.speedups.append(f"first_block_cache:{preset.first_block_cache:g}")
        # Compiling needs a working inductor toolchain and is slow to warm up: CUDA only.
        if preset.compile_repeated_blocks and on_cuda:
            transformer.compile_repeated_blocks(fullgraph=True)
            self.speedups.append("compile_repeated_blocks")

    def _enable_vae_tiling(self, on: bool) -> None:
        vae = self.pipe.vae
        for method in ("tiling", "slicing"):
            name = f"{'enable' if on else 'disable'}_{method}"
            if hasattr(vae, name):
                getattr(vae, name)()

    # -- generation ----------------------------------------------------------------------

    def _plan(self, request: GenerationRequest) -> dict[str, Any]:
        """Validate a request against this model; every error names the value."""
        preset = self.preset
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
        width, height = snap_size(
            image.width, image.height, preset.pixel_budget, preset.size_multiple
        )
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

    def latent_shape(self, width: int, height: int, num_frames: int) -> tuple[int, ...]:
        """Shape of the initial noise the pipeline expects for this clip size."""
        pipe = self.pipe
        if self.family == "wan":
            temporal, spatial = pipe.vae_scale_factor_temporal, pipe.vae_scale_factor_spatial
            channels = pipe.vae.config.z_dim
        else:
            temporal, spatial = (
                pipe.vae_temporal_compression_ratio,
                pipe.vae_spatial_compression_ratio,
            )
            channels = pipe.transformer.config.in_channels
        return (1, channels, (num_frames - 1) // temporal + 1, height // spatial, width // spatial)

    def initial_latents(
        self, shape: tuple[int, ...], seed: int, variation_seed: int | None, strength: float
    ) -> torch.Tensor:
        """The seed's noise, slerped towards the variation seed's noise by `strength`."""

        def noise(s: int) -> torch.Tensor:
            gen = torch.Generator(device=self.device).manual_seed(s)
            return torch.randn(shape, generator=gen, device=self.device, dtype=torch.float32)

        latents = noise(seed)
        if strength > 0:
            assert variation_seed is not None  # checked in _plan
            latents = slerp(latents, noise(variation_seed), strength)
        return latents

    def generate(
        self,
        request: GenerationRequest,
        *,
        on_progress: Callable[[Progress], None] = lambda p: None,
        should_cancel: Callable[[], bool] = lambda: False,
    ) -> ClipResult:
        """Generate one clip. Raises BadRequest, GenerationCancelled or OutOfMemory."""
        started = time.perf_counter()
        preset, pipe = self.preset, self.pipe
        plan = self._plan(request)
        width, height, frames = plan["width"], plan["height"], plan["frames"]
        total = len(preset.timesteps) if preset.timesteps else preset.steps

        def on_step_end(_pipe: Any, i: int, _t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            on_progress(Progress(i + 1, total, "denoise"))
            # Raising here stops at once; pipe._interrupt would still run the VAE decode.
            if should_cancel():
                raise GenerationCancelled(f"job {request.job_id} cancelled after step {i + 1}")
            if i + 1 == total:
                on_progress(Progress(0, 1, "decode"))
            return tensors

        if should_cancel():
            raise GenerationCancelled(f"job {request.job_id} cancelled before it started")

        on_progress(Progress(0, total, "denoise"))
        offloaded_here = out_of_memory = False
        with_offload = self._offloaded
        try:
            if request.degraded:
                self._enable_vae_tiling(True)
                if self.device.startswith("cuda") and not self._offloaded:
                    pipe.enable_model_cpu_offload(device=self.device)
                    self._offloaded = offloaded_here = with_offload = True
            # Arguments built inline: no local name keeps the noise alive after an OOM.
            output = pipe(**self._call_kwargs(request, plan, total, on_step_end))
        except torch.cuda.OutOfMemoryError:
            out_of_memory = True  # handled below, once the traceback's tensors are released
        finally:
            # Cache hooks (First Block Cache) and offload hooks keep per-call state; an
            # aborted call must reset them or they leak into the next clip.
            pipe.maybe_free_model_hooks()
            if request.degraded:
                self._restore_after_degraded(offloaded_here)
        if out_of_memory:
            gc.collect()
            torch.cuda.empty_cache()
            raise OutOfMemory(
                f"the GPU ran out of memory making {frames} frames at {width}x{height}"
                + (" even with model CPU offload" if with_offload else "")
            )

        video = np.asarray(output.frames[0])  # (F, H, W, 3) floats in [0, 1]
        del output
        clip = (video * 255.0).round().clip(0, 255).astype(np.uint8)
        on_progress(Progress(1, 1, "decode"))
        meta = {
            "seed": plan["seed"],
            "variation_seed": plan["variation_seed"],
            "variation_strength": plan["strength"],
            "preset": preset.name,
            "model": self.source,
            "width": int(clip.shape[2]),
            "height": int(clip.shape[1]),
            "num_frames": int(clip.shape[0]),
            "fps": preset.fps,
            "steps": total,
            "guidance": preset.guidance,
            "gen_seconds": round(time.perf_counter() - started, 3),
            "degraded": bool(request.degraded),
            "device": self.device,
            "speedups": list(self.speedups),
            "lora": self.lora,
        }
        return ClipResult(frames=clip, fps=preset.fps, meta=meta)

    def _call_kwargs(
        self,
        request: GenerationRequest,
        plan: dict[str, Any],
        total: int,
        on_step_end: Callable[..., dict[str, Any]],
    ) -> dict[str, Any]:
        """The pipeline's arguments for one clip, its initial noise included."""
        preset = self.preset
        width, height, frames = plan["width"], plan["height"], plan["frames"]
        latents = self.initial_latents(
            self.latent_shape(width, height, frames),
            plan["seed"],
            plan["variation_seed"],
            plan["strength"],
        )
        kwargs: dict[str, Any] = {
            "image": plan["image"],
            "prompt": request.prompt,
            "negative_prompt": request.negative_prompt or None,
            "height": height,
            "width": width,
            "num_frames": frames,
            "num_inference_steps": total,
            "guidance_scale": preset.guidance,
            # The pipeline's own draws (VAE sampling, LTX decode noise) are seeded too.
            "generator": torch.Generator(device=self.device).manual_seed(plan["seed"]),
            "latents": latents,
            "output_type": "np",
            "callback_on_step_end": on_step_end,
            "callback_on_step_end_tensor_inputs": ["latents"],
        }
        if self.family == "ltx":
            kwargs["frame_rate"] = preset.fps
            # Without timesteps upstream builds its default schedule as a tensor, which the
            # scheduler's np.array() turns into a numpy 2 DeprecationWarning; the same
            # schedule as a list of floats does not.
            kwargs["timesteps"] = (
                list(preset.timesteps)
                if preset.timesteps
                else (linear_quadratic_schedule(total) * 1000).tolist()
            )
        kwargs.update(preset.call_kwargs)
        return kwargs

    def _restore_after_degraded(self, offloaded_here: bool) -> None:
        if not (self.preset.offload or self.preset.vae_tiling):
            self._enable_vae_tiling(False)
        if offloaded_here:
            try:
                self.pipe.remove_all_hooks()
                self.pipe.to(self.device)
                self._offloaded = False
            except torch.cuda.OutOfMemoryError:
                # Memory is still short: stay offloaded rather than fail the next clip.
                self.pipe.enable_model_cpu_offload(device=self.device)
                gc.collect()
                torch.cuda.empty_cache()
                log.warning("GPU memory still short: model CPU offload stays on")
