"""One prepared check for a lent GPU (written for an H200 with no network), and its CPU twin.

    python bench/gpu_check.py --out OUT              # real-size presets on CUDA, <= 7 minutes
    python bench/gpu_check.py --out OUT --tiny       # the same code on tiny models, on a CPU

Sections run in priority order, each in its own process with its own time cap (a hung or
out-of-memory section cannot take the rest down, and its peak memory is its own). After every
section OUT/gpu_check.json and OUT/gpu_check.md are rewritten, and a section writes its own
OUT/<section>.json after each step, so a cap that cuts one short keeps what it measured.

  env              versions, device, free memory, compiler, which attention backends run
  preset:<name>    per preset: its transformer(s), VAE and encoders built from the real configs
                   (generator/configs/<folder>/<component>.json; in --tiny mode the configs of
                   tests/tiny_models.py) with random weights in the preset's dtypes; parameter
                   counts and weight bytes; per-step time, VAE encode/decode time and peak
                   memory per phase for a plain diffusers call; then the project's own path
                   (the same weights saved as a folder, WorkerCore.load + run, a synthetic LoRA
                   in LightX2V's key layout where the preset has a LoRA, whatever compile
                   warm-up and attention choice the project makes); dynamo's graph count across
                   two aspect ratios; measured peak against the preset's vram_gb
  nvenc            h264_nvenc against our libx264 default, where the bundled ffmpeg has it

Speed does not depend on weight values, so real-size times with random weights are real. The
tokenizer is the tiny offline one (no network): prompts pad to the pipelines' fixed lengths,
so the text encoder's cost is the same. CPU (--tiny) figures are not GPU figures.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from generator.presets import PRESETS, Preset  # noqa: E402  (torch-free)

CONFIGS = ROOT / "generator" / "configs"
TOTAL_S = 420  # the whole run: 7 minutes
CAPS = {"env": 45, "preset": 150, "nvenc": 45}  # per section, seconds (real mode)
TINY_CAPS = {"env": 90, "preset": 180, "nvenc": 90}  # 2 shared CPU cores importing torch
MODEL_COMPONENTS = ("transformer", "transformer_2", "vae", "text_encoder", "image_encoder")
VERSIONED = ("torch", "diffusers", "transformers", "peft", "accelerate", "safetensors", "numpy")
VERSIONED += ("imageio_ffmpeg", "triton")
ATTENTION = ("_flash_3", "flash", "_native_cudnn", "_native_flash", "_native_efficient")
ATTENTION += ("sage", "flex", "native")


# -- the parent: sections in order, each capped --------------------------------------------------


def sections(presets: list[str]) -> list[str]:
    # nvenc takes seconds: it goes before the presets so that they cannot crowd it out.
    return ["env", "nvenc", *(f"preset:{name}" for name in presets)]


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    caps = TINY_CAPS if args.tiny else CAPS
    deadline = time.monotonic() + args.total_s
    report: dict[str, Any] = {"mode": "tiny-cpu" if args.tiny else "real", "sections": {}}
    for name in sections(args.presets):
        left = deadline - time.monotonic()
        cap = min(caps[name.split(":")[0]], left)
        entry: dict[str, Any] = {"cap_s": round(cap, 1)}
        if cap < 5:
            entry.update(status="skipped", reason="the run's time budget is spent")
        else:
            entry.update(run_section(name, args, out, cap))
        report["sections"][name] = entry
        write_report(report, out)
    return report


def run_section(name: str, args: argparse.Namespace, out: Path, cap: float) -> dict[str, Any]:
    piece = out / f"{safe(name)}.json"
    piece.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--section", name, "--out", str(out)]
    cmd += ["--steps", str(args.steps)] + (["--tiny"] if args.tiny else [])
    started = time.monotonic()
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc: int | None = proc.wait(timeout=cap)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)  # the section's own process group: it and its children
            proc.wait()
            rc = None
        log.seek(0)
        tail = log.read().decode("utf-8", "replace").strip().splitlines()[-6:]
    result: dict[str, Any] = {"seconds": round(time.monotonic() - started, 2)}
    if piece.exists():
        result["data"] = json.loads(piece.read_text())
    result["status"] = "timeout" if rc is None else "ok" if rc == 0 else f"error rc={rc}"
    if rc != 0:
        result["log_tail"] = tail
    return result


def safe(name: str) -> str:
    return name.replace(":", "-")


def write_report(report: dict[str, Any], out: Path) -> None:
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    lines = [f"# gpu_check ({report['mode']})", ""]
    for name, entry in report["sections"].items():
        lines += [f"## {name}: {entry['status']} ({entry.get('seconds', 0)} s of "
                  f"{entry['cap_s']} s)", "", "| key | value |", "|---|---|"]  # fmt: skip
        for key, value in flatten(entry.get("data", {})):
            lines.append(f"| {key} | {cell(value)} |")
        for line in entry.get("log_tail", []):
            lines.append(f"| log | {cell(line)} |")
        lines.append("")
    (out / "gpu_check.md").write_text("\n".join(lines))


def cell(value: Any) -> str:
    return " ".join(str(value).split()).replace("|", "/")


def flatten(data: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(data, dict):
        for key, value in data.items():
            yield from flatten(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, data


# -- a section, in its own process ---------------------------------------------------------------


class Piece:
    """A section's results, written to disk after every step (a cap keeps what is done)."""

    def __init__(self, path: Path) -> None:
        self.path, self.data = path, {}

    def __setitem__(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.path.write_text(json.dumps(self.data, indent=2, default=str) + "\n")

    @contextlib.contextmanager
    def step(self, key: str) -> Iterator[dict[str, Any]]:
        """Run one step; its figures, or its error, land under `key`; the section goes on."""
        found: dict[str, Any] = {}
        started = time.perf_counter()
        try:
            yield found
        except Exception as exc:  # a failing step is a finding, not the end of the check
            found["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        found.setdefault("seconds", round(time.perf_counter() - started, 3))
        self[key] = found


def device_of(tiny: bool) -> str:
    import torch

    if tiny:
        return "cpu"
    if not torch.cuda.is_available():
        raise SystemExit("real mode needs CUDA; use --tiny on a CPU")
    return "cuda:0"


class Peak:
    """Peak memory of one phase: CUDA allocator peak, or on a CPU the process's peak RSS
    (VmHWM, reset through /proc/self/clear_refs)."""

    def __init__(self, device: str) -> None:
        self.device = device

    def reset(self) -> None:
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            with contextlib.suppress(OSError):
                Path("/proc/self/clear_refs").write_text("5")

    def gib(self) -> float:
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize(self.device)
            return round(torch.cuda.max_memory_allocated(self.device) / 2**30, 3)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 2**20, 3)
        return float("nan")


def ffmpeg_exe() -> str | None:
    """The ffmpeg imageio-ffmpeg finds (its own, IMAGEIO_FFMPEG_EXE or PATH), or None: the GPU
    machine gets imageio-ffmpeg without its 172 MB binary (see scripts/gpu_wheels)."""
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        return None


def section_env(piece: Piece, tiny: bool) -> None:
    import torch

    versions = {"python": platform.python_version()}
    for module in VERSIONED:
        try:
            versions[module] = getattr(importlib.import_module(module), "__version__", "?")
        except Exception as exc:
            versions[module] = f"missing ({type(exc).__name__})"
    versions["cuda"] = torch.version.cuda
    piece["versions"] = versions
    piece["ffmpeg"] = ffmpeg_exe() or "none: clips are generated but not encoded"
    device = device_of(tiny)
    with piece.step("device") as found:
        found["name"] = torch.cuda.get_device_name(device) if device != "cpu" else "cpu"
        if device != "cpu":
            free, total = torch.cuda.mem_get_info(device)
            found.update(free_gib=round(free / 2**30, 2), total_gib=round(total / 2**30, 2))
            found["capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
        found["cpu_cores"] = os.cpu_count()
    with piece.step("compiler") as found:
        cc = shutil.which("cc") or shutil.which("gcc")
        found["cc"] = cc
        if cc:
            done = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=20)
            found["cc_version"] = done.stdout.splitlines()[0] if done.stdout else done.stderr
    with piece.step("attention") as found:
        found.update(probe_attention(device))


def probe_attention(device: str) -> dict[str, Any]:
    """Each diffusers attention backend: does it run here, and how long one call takes."""
    import torch
    from diffusers.models import attention_dispatch as ad

    dtype = torch.bfloat16 if device != "cpu" else torch.float32
    q, k, v = (torch.randn(1, 1024, 8, 64, device=device, dtype=dtype) for _ in range(3))
    found: dict[str, Any] = {}
    for name in ATTENTION:
        try:
            backend = ad.AttentionBackendName(name)
            ad._check_attention_backend_requirements(backend)
            ad.dispatch_attention_fn(q, k, v, backend=backend)  # first call: warm-up
            started = time.perf_counter()
            for _ in range(5):
                ad.dispatch_attention_fn(q, k, v, backend=backend)
            if device != "cpu":
                torch.cuda.synchronize(device)
            found[name] = f"ok {1000 * (time.perf_counter() - started) / 5:.3f} ms"
        except Exception as exc:
            found[name] = f"no: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    return found


# -- presets -------------------------------------------------------------------------------------


def layout_of(preset: Preset) -> str:
    """The tests/tiny_models.py layout of the preset's pipeline family."""
    if preset.pipeline_class.startswith("LTX"):
        return "ltx"
    if "A14B" in preset.hub_id:
        return "wan22a14b"
    return "wan22" if "TI2V" in preset.hub_id else "wan21"


def real_configs(preset: Preset) -> tuple[dict[str, dict[str, Any]], str]:
    """The preset's published configs, per component, and the folder they came from. The
    folder is the preset's `configs` attribute where it has one, else its name."""
    folder = CONFIGS / (getattr(preset, "configs", None) or preset.name)
    shown = folder.relative_to(ROOT) if folder.is_relative_to(ROOT) else folder
    if not folder.is_dir():
        raise FileNotFoundError(f"no config folder {shown}")
    found = {}
    for component in MODEL_COMPONENTS:
        path = folder / f"{component}.json"
        if path.is_file():
            found[component] = json.loads(path.read_text())
    return found, str(shown)


def tiny_configs(layout: str) -> tuple[dict[str, dict[str, Any]], dict[str, Any], type]:
    """The tiny layout's configs (the real path then builds from them) and its other parts."""
    from tests.tiny_models import _BUILDERS, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    pipeline_class, parts = _BUILDERS[layout](len(tokenizer))
    parts["tokenizer"] = tokenizer
    configs = {}
    for component in MODEL_COMPONENTS:
        module = parts.get(component)
        if module is not None:
            config = module.config
            fields = config.to_dict() if hasattr(config, "to_dict") else dict(config)
            configs[component] = {"_class_name": type(module).__name__, **fields}
    return configs, parts, pipeline_class


def build(config: dict[str, Any], device: str, dtype: Any) -> Any:
    """A model from its config with random weights, made on `device` in `dtype`."""
    import diffusers
    import torch
    import transformers

    fields = {k: v for k, v in config.items() if not k.startswith("_")}
    name = config["_class_name"]
    with torch.device(device):
        if hasattr(diffusers, name):
            model = getattr(diffusers, name).from_config(fields)
        else:
            cls = getattr(transformers, name)
            fields.pop("architectures", None)
            fields.pop("transformers_version", None)
            model = cls(cls.config_class(**fields))
    model = model.to(dtype)
    # As from_pretrained does: the modules a model names stay in float32 (Wan: norms, rope...).
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    if dtype != torch.float32 and keep:
        for name, module in model.named_modules():
            if any(part in keep for part in name.split(".")):
                module.to(torch.float32)
    return model.eval()


def section_preset(piece: Piece, name: str, tiny: bool, steps: int) -> None:
    import torch

    preset = PRESETS[name]
    device = device_of(tiny)
    peak = Peak(device)
    layout = layout_of(preset)
    tiny_cfg, parts, pipeline_class = tiny_configs(layout)
    if tiny:
        configs, source = tiny_cfg, f"tests/tiny_models.py:{layout}"
    else:
        try:
            configs, source = real_configs(preset)
        except FileNotFoundError as exc:
            piece["configs"] = f"missing: {exc}"
            return
    piece["configs"] = {"source": source, "components": sorted(configs)}
    on_cuda = device != "cpu"
    dtypes = {c: torch.float32 for c in configs}
    if on_cuda:
        named = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
        dtypes = {c: named[preset.component_dtypes.get(c, preset.dtype)] for c in configs}

    with piece.step("build") as found:
        peak.reset()
        for component, config in configs.items():
            started = time.perf_counter()
            model = build(config, device, dtypes[component])
            parts[component] = model
            params = sum(p.numel() for p in model.parameters())
            size = sum(p.numel() * p.element_size() for p in model.parameters())
            found[component] = {"class": config["_class_name"], "params": params,
                                "gib": round(size / 2**30, 3), "dtype": str(dtypes[component]),
                                "build_s": round(time.perf_counter() - started, 2)}  # fmt: skip
        found["weights_gib"] = round(sum(v["gib"] for v in found.values()), 3)
        found["peak_gib"] = peak.gib()
    if "transformer_2" in configs:
        # Wan 2.2 A14B's hub folder (model_index.json) switches experts at boundary_ratio 0.9.
        parts["boundary_ratio"] = 0.9
    if not tiny and "image_encoder" in configs and "image_processor" in parts:
        # The tiny processor crops to the tiny encoder's size; the real CLIP takes its own.
        side = configs["image_encoder"].get("image_size", 224)
        parts["image_processor"] = type(parts["image_processor"])(
            size={"shortest_edge": side}, crop_size={"height": side, "width": side}
        )
    # The class the project loads this preset with (Wan 2.2 5B: the I2V class, no image encoder).
    pipeline_class = getattr(importlib.import_module("diffusers"), preset.pipeline_class)
    accepted = pipeline_signature(pipeline_class)
    pipe = pipeline_class(**{k: v for k, v in parts.items() if k in accepted})
    parts.clear()
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)

    width, height = (64, 64) if tiny else preset.default_size
    frames = 9 if tiny else preset.frames["short"]
    piece["shape"] = {"width": width, "height": height, "frames": frames, "steps": steps}
    image = test_image(width, height)
    with piece.step("plain_diffusers") as found:
        found.update(plain_call(pipe, preset, image, width, height, frames, steps, peak))
    with piece.step("vae") as found:
        found.update(vae_times(pipe, layout, width, height, frames, device, peak))
    with tempfile.TemporaryDirectory(dir=os.environ.get("GPU_CHECK_TMP")) as tmp:
        folder = Path(tmp) / "model"
        with piece.step("save") as found:
            found.update(save_folder(pipe, preset, layout, folder, width, height, frames, steps))
        del pipe  # the project loads its own copy: only one may be resident
        gc_collect(device)
        with piece.step("project") as found:
            found.update(project_path(folder, width, height, frames, device, peak))
    measured = [piece.data.get(k, {}).get("peak_gib") for k in ("plain_diffusers", "project")]
    measured = [m for m in measured if isinstance(m, float)]
    if measured:
        piece["peak_vs_vram_gb"] = {"peak_gib": max(measured), "vram_gb": preset.vram_gb,
                                    "ratio": round(max(measured) * 2**30 / 1e9 / preset.vram_gb,
                                                   3)}  # fmt: skip


def pipeline_signature(pipeline_class: type) -> set[str]:
    import inspect

    return set(inspect.signature(pipeline_class.__init__).parameters)


def test_image(width: int, height: int) -> Any:
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // max(1, width - 1), y * 255 // max(1, height - 1),
                       np.full_like(x, 128)], -1).astype(np.uint8)  # fmt: skip
    return Image.fromarray(pixels)


def timed_steps(run: Callable[[Callable[..., Any]], Any], device: str) -> tuple[Any, list[float]]:
    """Call `run(callback)`; the callback marks the end of every denoising step."""
    import torch

    marks = [time.perf_counter()]

    def on_step_end(_pipe: Any, _i: int, _t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        if device != "cpu":
            torch.cuda.synchronize(device)
        marks.append(time.perf_counter())
        return tensors

    result = run(on_step_end)
    return result, [round(b - a, 4) for a, b in zip(marks, marks[1:], strict=False)]


def plain_call(
    pipe: Any, preset: Preset, image: Any, width: int, height: int, frames: int, steps: int,
    peak: Peak,
) -> dict[str, Any]:  # fmt: skip
    """The pipeline as diffusers' docs call it, no project code around it."""
    peak.reset()
    started = time.perf_counter()

    def run(callback: Callable[..., Any]) -> Any:
        return pipe(image=image, prompt="waves roll in, camera slowly pushes forward",
                    height=height, width=width, num_frames=frames, num_inference_steps=steps,
                    guidance_scale=preset.guidance, output_type="np",
                    callback_on_step_end=callback)  # fmt: skip

    output, step_s = timed_steps(run, peak.device)
    total = time.perf_counter() - started
    shape = list(getattr(output.frames[0], "shape", ()))
    return {"seconds_total": round(total, 3), "step_s": step_s,
            "step_s_after_first": round(sum(step_s[1:]) / max(1, len(step_s) - 1), 4),
            "frames_shape": shape, "peak_gib": peak.gib()}  # fmt: skip


def vae_times(
    pipe: Any, layout: str, width: int, height: int, frames: int, device: str, peak: Peak
) -> dict[str, Any]:
    """VAE encode of the condition (all frames for Wan, one for LTX) and decode of a clip."""
    import torch

    vae = pipe.vae
    dtype = next(vae.parameters()).dtype
    found: dict[str, Any] = {}
    cond_frames = 1 if layout == "ltx" else frames
    video = torch.randn(1, 3, cond_frames, height, width, device=device, dtype=dtype)
    with torch.no_grad():
        peak.reset()
        started = time.perf_counter()
        latent = vae.encode(video).latent_dist.mode()
        sync(device)
        found["encode"] = {"s": round(time.perf_counter() - started, 3), "peak_gib": peak.gib()}
        if layout == "ltx":
            spatial, temporal = (
                pipe.vae_spatial_compression_ratio,
                pipe.vae_temporal_compression_ratio,
            )
        else:
            spatial, temporal = pipe.vae_scale_factor_spatial, pipe.vae_scale_factor_temporal
        shape = (
            1,
            latent.shape[1],
            (frames - 1) // temporal + 1,
            height // spatial,
            width // spatial,
        )
        z = torch.randn(shape, device=device, dtype=dtype)
        kwargs = {}
        if getattr(vae.config, "timestep_conditioning", False):
            kwargs["temb"] = torch.tensor([0.05], device=device, dtype=dtype)
        peak.reset()
        started = time.perf_counter()
        decoded = vae.decode(z, return_dict=False, **kwargs)[0]
        sync(device)
        found["decode"] = {"s": round(time.perf_counter() - started, 3), "peak_gib": peak.gib(),
                           "latent": list(shape), "video": list(decoded.shape)}  # fmt: skip
    return found


def sync(device: str) -> None:
    import torch

    if device != "cpu":
        torch.cuda.synchronize(device)


def synthetic_wan_lora(transformer: Any, path: Path, rank: int = 64) -> int:
    """A LoRA with random tensors under LightX2V's key names for Wan
    (`diffusion_model.blocks.N.<self_attn|cross_attn>.<q|k|v|o|k_img|v_img>` and `ffn.0/2`,
    `lora_down`/`lora_up`/`alpha`; the `diff` keys for norms are left out). Returns the key count."""
    import torch
    from safetensors.torch import save_file

    tensors: dict[str, Any] = {}
    for i, block in enumerate(transformer.blocks):
        targets = {"self_attn.q": block.attn1.to_q, "self_attn.k": block.attn1.to_k,
                   "self_attn.v": block.attn1.to_v, "self_attn.o": block.attn1.to_out[0],
                   "cross_attn.q": block.attn2.to_q, "cross_attn.k": block.attn2.to_k,
                   "cross_attn.v": block.attn2.to_v, "cross_attn.o": block.attn2.to_out[0],
                   "ffn.0": block.ffn.net[0].proj, "ffn.2": block.ffn.net[2]}  # fmt: skip
        if getattr(block.attn2, "add_k_proj", None) is not None:
            targets["cross_attn.k_img"] = block.attn2.add_k_proj
            targets["cross_attn.v_img"] = block.attn2.add_v_proj
        for name, linear in targets.items():
            r = min(rank, linear.in_features, linear.out_features)
            key = f"diffusion_model.blocks.{i}.{name}"
            tensors[f"{key}.lora_down.weight"] = torch.randn(r, linear.in_features) * 0.01
            tensors[f"{key}.lora_up.weight"] = torch.randn(linear.out_features, r) * 0.01
            tensors[f"{key}.alpha"] = torch.tensor(float(r))
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in tensors.items()}, str(path))
    return len(tensors)


def save_folder(
    pipe: Any, preset: Preset, layout: str, folder: Path, width: int, height: int, frames: int,
    steps: int,
) -> dict[str, Any]:  # fmt: skip
    """The built pipeline as a diffusers folder whose zoetrope.json names the preset, with a
    synthetic LoRA in LightX2V's layout where the preset has a LoRA (no network for the real)."""
    found: dict[str, Any] = {}
    pipe.save_pretrained(folder)
    settings: dict[str, Any] = {"preset": preset.name, "steps": steps,
                                "frames": {"short": frames, "standard": frames, "long": frames},
                                "max_clip_frames": max(frames, preset.max_clip_frames),
                                "pixel_budget": width * height}  # fmt: skip
    if preset.timesteps is not None:
        settings["timesteps"] = list(preset.timesteps[:steps])
    if preset.loras and layout != "ltx":
        # One synthetic LoRA per expert the preset distils (Wan 2.2 A14B has two).
        found["lora_keys"] = 0
        settings["lora"] = []
        for spec in preset.loras:
            name = f"lora_{spec.component}.safetensors"
            found["lora_keys"] += synthetic_wan_lora(getattr(pipe, spec.component), folder / name)
            settings["lora"].append(
                {"repo": str(folder), "weight_name": name, "component": spec.component,
                 "adapter_name": spec.adapter_name}  # fmt: skip
            )
    (folder / "zoetrope.json").write_text(json.dumps(settings))
    found["gib_on_disk"] = round(sum(f.stat().st_size for f in folder.rglob("*")) / 2**30, 3)
    return found


def project_path(
    folder: Path, width: int, height: int, frames: int, device: str, peak: Peak
) -> dict[str, Any]:
    """The saved weights through the worker: WorkerCore.load (with whatever warm-up and
    attention choice the project makes there), then two jobs at two aspect ratios, dynamo's
    graph counter read after each."""
    from torch._dynamo.utils import counters

    from generator.protocol import Done, GenerationRequest
    from generator.worker import WorkerCore

    found: dict[str, Any] = {}
    peak.reset()
    started = time.perf_counter()
    core = WorkerCore.load(str(folder), device=device)
    found["load_s"] = round(time.perf_counter() - started, 2)
    found["load_peak_gib"] = peak.gib()
    found["info"] = core.info()
    found["speedups"] = list(getattr(core.generator, "speedups", []))
    found["lora"] = getattr(core.generator, "lora", None)
    encodes = ffmpeg_exe() is not None
    graphs: list[int] = []
    for i, (w, h) in enumerate(((width, height), (height, width))):
        image_path = folder.parent / f"in{i}.png"
        test_image(w, h).save(image_path)
        request = GenerationRequest(job_id=f"check{i}", image_path=str(image_path),
                                    prompt="waves roll in, camera slowly pushes forward",
                                    output_path=str(folder.parent / f"out{i}.mp4"), seed=i,
                                    num_frames=frames)  # fmt: skip
        peak.reset()
        started = time.perf_counter()
        if encodes:
            event = core.run(request)
        else:  # no ffmpeg here: the same generation, without the worker's encode step
            clip = core.generator.generate(request)
        run: dict[str, Any] = {"s": round(time.perf_counter() - started, 3),
                               "peak_gib": peak.gib()}  # fmt: skip
        if not encodes:
            run.update(size=f"{clip.frames.shape[2]}x{clip.frames.shape[1]}", encode="no ffmpeg")
        elif isinstance(event, Done):
            facts = event.facts
            run.update(size=f"{facts.video_width}x{facts.video_height}",
                       timings=facts.timings, bytes=facts.bytes)  # fmt: skip
        else:
            run["failed"] = f"{event.kind}: {event.message}"
        graphs.append(int(counters["stats"]["unique_graphs"]))
        found[f"job{i}"] = run
    found["peak_gib"] = max(found["job0"]["peak_gib"], found["job1"]["peak_gib"])
    found["dynamo_graphs_after_each_job"] = graphs
    found["recompiles_for_second_aspect"] = graphs[1] - graphs[0]
    return found


def gc_collect(device: str) -> None:
    import gc

    import torch

    gc.collect()
    if device != "cpu":
        torch.cuda.empty_cache()


def section_nvenc(piece: Piece, tiny: bool) -> None:
    import importlib.util

    from generator import encode

    spec = importlib.util.spec_from_file_location("bench_encode", ROOT / "bench" / "encode.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    count, height, width = (17, 240, 320) if tiny else (81, 480, 832)
    frames = bench.synthetic_clip(count, height, width)
    exe = ffmpeg_exe()
    piece["ffmpeg"] = exe or "none"
    if exe is None:
        return
    listed = subprocess.run([exe, "-hide_banner", "-encoders"], capture_output=True, text=True)
    piece["ffmpeg_has_h264_nvenc"] = "h264_nvenc" in listed.stdout
    with tempfile.TemporaryDirectory() as tmp:
        with piece.step("libx264_default") as found:
            result = encode.encode_mp4(frames, Path(tmp) / "x264.mp4", fps=16)
            decoded, _ = encode.read_frames(result.path)
            found.update(bytes=result.bytes, psnr=round(bench.psnr(decoded, frames), 2))
        if not piece.data["ffmpeg_has_h264_nvenc"]:
            return
        with piece.step("h264_nvenc") as found:
            path = Path(tmp) / "nvenc.mp4"
            cmd = [exe, "-hide_banner", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt",
                   "rgb24", "-s", f"{width}x{height}", "-r", "16", "-i", "-", "-c:v",
                   "h264_nvenc", "-preset", "p4", "-cq", "23", "-pix_fmt", "yuv420p",
                   "-movflags", "+faststart", str(path)]  # fmt: skip
            done = subprocess.run(cmd, input=frames.tobytes(), capture_output=True, timeout=60)
            if done.returncode != 0:
                raise RuntimeError(done.stderr.decode("utf-8", "replace").strip()[-200:])
            decoded, _ = encode.read_frames(path)
            found.update(bytes=path.stat().st_size, psnr=round(bench.psnr(decoded, frames), 2))


def run_one(args: argparse.Namespace) -> None:
    name = args.section
    piece = Piece(Path(args.out) / f"{safe(name)}.json")
    if name == "env":
        section_env(piece, args.tiny)
    elif name.startswith("preset:"):
        section_preset(piece, name.split(":", 1)[1], args.tiny, args.steps)
    elif name == "nvenc":
        section_nvenc(piece, args.tiny)
    else:
        raise SystemExit(f"unknown section {name!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for gpu_check.json/.md")
    parser.add_argument("--tiny", action="store_true", help="tiny models on the CPU (CI)")
    parser.add_argument("--presets", nargs="*", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--steps", type=int, default=2, help="denoising steps per timed call")
    parser.add_argument("--total-s", type=float, default=TOTAL_S)
    parser.add_argument("--section", help=argparse.SUPPRESS)  # a child process runs one
    args = parser.parse_args(argv)
    if args.section:
        run_one(args)
        return 0
    report = run_all(args)
    print((Path(args.out) / "gpu_check.md").read_text())
    return 0 if all(s["status"] == "ok" for s in report["sections"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
