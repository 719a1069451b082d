"""Image-to-video generation with diffusers: load once, then make clips on request.

This module and its helpers (`resolve`, `plan`, `memory`, `speedups`) are the only ones of
Zoetrope that import torch and diffusers; only the worker process imports them. A
`VideoGenerator` owns one loaded pipeline and runs one clip at a time.

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

# First: sets the CUDA allocator's settings before torch is imported (see generator/memory.py).
from generator import memory

# isort: split
import dataclasses
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
from PIL import Image

from generator import distill, speedups, weights
from generator.plan import BadRequest, negative_prompt, plan_request, slerp
from generator.presets import NeedsGPU, Preset, snap_frames
from generator.protocol import GenerationRequest, Progress
from generator.resolve import ModelLoadError, resolve

__all__ = [
    "BadRequest",
    "ClipResult",
    "GenerationCancelled",
    "ModelLoadError",
    "OutOfMemory",
    "VideoGenerator",
    "slerp",
]

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

class GenerationCancelled(Exception):
    """The job was cancelled between two denoising steps."""


class OutOfMemory(Exception):
    """The GPU ran out of memory; memory was freed and the generator stays usable."""


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


_LOADERS: dict[str, type] = {"wan": WanImageToVideoPipeline, "ltx": _LTXConditionPipeline}

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}

# Each pipeline's own size rule, from its check_inputs in diffusers 0.42: Wan I2V wants
# multiples of 16, the LTX pipelines multiples of 32 whatever the VAE's stride.
_PIPELINE_SIZE_RULE = {"wan": 16, "ltx": 32}


class VideoGenerator:
    """One loaded image-to-video pipeline, kept warm, generating one clip at a time."""

    def __init__(self, pipe: Any, preset: Preset, family: str, device: str, source: str) -> None:
        self.pipe = pipe
        self.preset = preset
        self.family = family
        self.device = device
        self.source = source
        self.speedups: list[str] = []  # speed-ups actually applied, for meta and logs
        self.attention_backend: str | None = None  # the one chosen at load
        self.compile: str | None = None  # "on", "off" (failed, eager) or None (not asked)
        self.compile_error: str | None = None  # why compile fell back to eager
        self.lora: str | None = None  # the fused LoRA, if any
        self._offloaded = False
        self._vae_tiling = False  # tiling wanted for every clip, not only degraded ones

    @property
    def transformers(self) -> list[Any]:
        """The denoisers (Wan 2.2 A14B has two experts; the others one)."""
        found = [getattr(self.pipe, n, None) for n in ("transformer", "transformer_2")]
        return [t for t in found if t is not None]

    @classmethod
    def load(
        cls,
        model: str,
        *,
        device: str | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        preset_dtypes: bool | None = None,
        **overrides: Any,
    ) -> VideoGenerator:
        """Load `model`: a preset name, "auto", or a local diffusers folder.

        Keyword overrides (see presets.OVERRIDE_KEYS, e.g. steps=2, pixel_budget=4096) change
        the preset's settings; a local folder's zoetrope.json is read first. `preset_dtypes`:
        load in the preset's dtypes (bf16 weights, fp32 VAE) also off CUDA; None: on CUDA only. A compile asked
        for is built and warmed up here, so the first job does not pay for it (or fail by it).
        """
        report = on_progress or (lambda p: None)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise NeedsGPU(f"device {device!r} was asked for but CUDA is not available")
        preset, family, source = resolve(model, device, overrides)
        if not Path(source).is_dir():
            # A hub preset loads its pulled snapshot, never downloads inside a job.
            try:
                source, preset = weights.local_snapshot(preset)
            except weights.WeightsMissing as exc:
                raise ModelLoadError(str(exc)) from None
        report(Progress(0, 1, "load"))

        on_cuda = device.startswith("cuda")
        # bf16 on CPU is slow and gains nothing here: everything runs in float32 there,
        # unless the preset's own dtypes are asked for (the tests run the GPU's dtypes so).
        exact = on_cuda if preset_dtypes is None else preset_dtypes
        default = _DTYPES[preset.dtype] if exact else torch.float32
        dtypes: dict[str, torch.dtype] = {"default": default}
        for component, name in preset.component_dtypes.items():
            dtypes[component] = _DTYPES[name] if exact else torch.float32
        started = time.perf_counter()
        try:
            with memory.load_placement(device, on_cuda and preset.offload) as device_map:
                pipe = _LOADERS[family].from_pretrained(source, dtype=dtypes, device_map=device_map)
        except (OSError, ValueError, NotImplementedError) as exc:
            raise ModelLoadError(f"cannot load {source!r}: {exc}") from exc
        pipe.set_progress_bar_config(disable=True)  # progress goes through our callback

        generator = cls(pipe, preset, family, device, source)
        generator._configure()
        seconds = time.perf_counter() - started
        log.info(
            "loaded %s from %s on %s in %.1fs (%s)",
            preset.name,
            source,
            device,
            seconds,
            ", ".join(generator.speedups) or "no speed-ups",
        )
        report(Progress(1, 1, "load"))
        return generator

    # -- loading helpers ---------------------------------------------------------------

    def _configure(self) -> None:
        pipe, preset = self.pipe, self.preset
        # Size and frame rules come from the loaded components, not from the preset's
        # constants, so a local folder with another VAE stride still gets valid sizes; the
        # pipeline's own rule (LTX: 32 whatever the stride) is kept as well.
        if self.family == "wan":
            temporal = pipe.vae_scale_factor_temporal
            patch = self.transformers[0].config.patch_size[1]
            stride = pipe.vae_scale_factor_spatial * patch
        else:
            temporal = pipe.vae_temporal_compression_ratio
            stride = pipe.vae_spatial_compression_ratio * pipe.transformer_spatial_patch_size
        multiple = math.lcm(stride, _PIPELINE_SIZE_RULE[self.family])
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

        # LTX decodes with VAE tiling on, as diffusers' LTX-Video docs do in their 0.9.7 and
        # 0.9.8 distilled examples (`pipeline.vae.enable_tiling()`).
        self._vae_tiling = preset.vae_tiling or self.family == "ltx"
        on_cuda = self.device.startswith("cuda")
        if on_cuda and preset.offload:
            pipe.enable_model_cpu_offload(device=self.device)
            self._vae_tiling = self._offloaded = True
        else:
            pipe.to(self.device)  # a no-op where the weights were loaded onto the device
        if self._vae_tiling:
            self._enable_vae_tiling(True)
            self.speedups.append("vae_tiling")

        try:
            fused = distill.fuse_loras(pipe, preset.loras)
        except distill.LoraLoadError as exc:
            raise ModelLoadError(str(exc)) from exc
        self.lora = ", ".join(fused) or None

        self._apply_speedups()

    def _apply_speedups(self) -> None:
        preset = self.preset
        for transformer in self.transformers:
            self.attention_backend = speedups.choose_attention_backend(
                transformer,
                device=self.device,
                wanted=preset.attention_backend,
                with_mask=self.family == "ltx",  # LTX masks the text padding
            )
        self.speedups.append(f"attention:{self.attention_backend}")
        # First Block Cache is plain torch and runs on any device, so it is applied wherever a
        # preset or override enables it (the CPU tests rely on it to check cancel leaks nothing).
        if preset.first_block_cache is not None:
            for transformer in self.transformers:
                try:
                    speedups.enable_first_block_cache(transformer, preset.first_block_cache)
                except ValueError as exc:
                    raise ModelLoadError(str(exc)) from None
            self.speedups.append(f"first_block_cache:{preset.first_block_cache:g}")
        if preset.compile_repeated_blocks:
            self._compile()

    def _compile(self) -> None:
        """Regional compile of every transformer, warmed up now; eager if it cannot build."""
        started, graphs = time.perf_counter(), speedups.compiled_graphs()
        try:
            for transformer in self.transformers:
                speedups.compile_blocks(
                    transformer, with_cache_hook=self.preset.first_block_cache is not None
                )
            self._warm_up()  # torch.compile builds lazily: a missing toolchain fails here
        except Exception as exc:  # a compile fails in many ways (C compiler, Triton, dynamo)
            self.compile, self.compile_error = "off", speedups.one_line(exc)
            for transformer in self.transformers:
                speedups.uncompile(transformer)
            memory.release_memory()
            log.warning("compile failed, running eagerly: %s", self.compile_error)
            return
        self.compile = "on"
        self.speedups.append("compile_repeated_blocks")
        log.info(
            "compiled and warmed up in %.1fs (%d graphs)",
            time.perf_counter() - started,
            speedups.compiled_graphs() - graphs,
        )

    def _warm_up(self) -> None:
        """Run the shapes the bot makes (landscape and portrait of the preset's size), denoise
        only, so that compiling happens at load and not in a member's job."""
        preset = self.preset
        width, height = preset.default_size
        frames = snap_frames(min(preset.frames.values()), preset.frame_rule)
        # Two steps: First Block Cache computes every block at the first step and may skip at
        # the next, so both paths are compiled.
        steps = min(2, len(preset.timesteps) if preset.timesteps else preset.steps)
        for w, h in ((width, height), (height, width)):
            plan = {
                "seed": 0,
                "variation_seed": None,
                "strength": 0.0,
                "frames": frames,
                "width": w,
                "height": h,
                "image": Image.new("RGB", (w, h), (128, 128, 128)),
            }
            kwargs = self._call_kwargs("", None, plan, steps, None)
            kwargs["output_type"] = "latent"  # the VAE decode is not compiled
            try:
                self.pipe(**kwargs)
            finally:
                self.pipe.maybe_free_model_hooks()  # no cache-hook state into the first clip

    def _enable_vae_tiling(self, on: bool) -> None:
        vae = self.pipe.vae
        for method in ("tiling", "slicing"):
            name = f"{'enable' if on else 'disable'}_{method}"
            if hasattr(vae, name):
                getattr(vae, name)()

    # -- generation ----------------------------------------------------------------------

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
        plan = plan_request(request, preset)
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
            output = pipe(
                **self._call_kwargs(
                    request.prompt, request.negative_prompt, plan, total, on_step_end
                )
            )
        except Exception as exc:
            if not memory.is_out_of_memory(exc):  # cuDNN/cuBLAS failures are RuntimeErrors
                raise
            out_of_memory = True  # handled below, once the traceback's tensors are released
        finally:
            # Cache hooks (First Block Cache) and offload hooks keep per-call state; an
            # aborted call must reset them or they leak into the next clip.
            pipe.maybe_free_model_hooks()
            if request.degraded:
                self._restore_after_degraded(offloaded_here)
        if out_of_memory:
            memory.release_memory()
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
            "negative_prompt": negative_prompt(
                self.family, preset.guidance, request.negative_prompt
            ),
            "gen_seconds": round(time.perf_counter() - started, 3),
            "degraded": bool(request.degraded),
            "device": self.device,
            "speedups": list(self.speedups),
            "lora": self.lora,
        }
        return ClipResult(frames=clip, fps=preset.fps, meta=meta)

    def _call_kwargs(
        self,
        prompt: str,
        negative: str | None,
        plan: dict[str, Any],
        total: int,
        on_step_end: Callable[..., dict[str, Any]] | None,
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
            "prompt": prompt,
            "negative_prompt": negative_prompt(self.family, preset.guidance, negative),
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
                if preset.timesteps and len(preset.timesteps) == total
                else (linear_quadratic_schedule(total) * 1000).tolist()
            )
        kwargs.update(preset.call_kwargs)
        return kwargs

    def _restore_after_degraded(self, offloaded_here: bool) -> None:
        if not self._vae_tiling:
            self._enable_vae_tiling(False)
        if offloaded_here:
            try:
                self.pipe.remove_all_hooks()
                self.pipe.to(self.device)
                self._offloaded = False
            except Exception as exc:
                if not memory.is_out_of_memory(exc):
                    raise
                # Memory is still short: stay offloaded rather than fail the next clip.
                self.pipe.enable_model_cpu_offload(device=self.device)
                memory.release_memory()
                log.warning("GPU memory still short: model CPU offload stays on")
