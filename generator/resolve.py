"""What a model argument names: a preset, "auto", or a local diffusers folder.

Plain decisions on names, configs and the device's free memory; loading the weights is
`generator/pipeline.py`'s job.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from generator.memory import free_vram_bytes
from generator.presets import (
    OVERRIDE_KEYS,
    PRESETS,
    NeedsGPU,
    Preset,
    PresetError,
    apply_overrides,
    choose_auto,
    get_preset,
)

# A local model folder may hold this file: JSON overrides of the preset settings (keys in
# presets.OVERRIDE_KEYS, e.g. {"steps": 2, "pixel_budget": 4096}); "preset" names a preset
# whose settings are the starting point instead of the generic ones for the folder's family.
OVERRIDES_FILE = "zoetrope.json"

# Pipeline class names found in model_index.json, per family.
WAN_CLASSES = {"WanImageToVideoPipeline", "WanPipeline"}
LTX_CLASSES = {"LTXConditionPipeline", "LTXImageToVideoPipeline", "LTXPipeline"}


class ModelLoadError(RuntimeError):
    """The model could not be loaded (missing folder, unsupported pipeline, failed download)."""


def family_of(class_name: str, model_index: dict[str, Any]) -> str:
    """ "wan" or "ltx" for a pipeline class name; anything else is a ModelLoadError."""
    if class_name in WAN_CLASSES:
        if class_name == "WanPipeline" and not model_index.get("expand_timesteps"):
            raise ModelLoadError(
                "this Wan folder is a text-to-video model (WanPipeline without "
                "expand_timesteps); Zoetrope needs an image-to-video model"
            )
        return "wan"
    if class_name in LTX_CLASSES:
        return "ltx"
    supported = ", ".join(sorted(WAN_CLASSES | LTX_CLASSES))
    raise ModelLoadError(f"unsupported pipeline class {class_name!r}; supported: {supported}")


def _local_base_preset(family: str, model_index: dict[str, Any]) -> Preset:
    """Generic settings for a local folder: the closest preset, minus hub-only parts.

    The LoRA and the distilled schedules belong to the hub presets' weights: a local folder
    gets its base model's usual settings instead (a zoetrope.json can name a preset). Compile
    is off unless asked for: its warm-up costs minutes on a CPU, where local folders run.
    """
    if family == "wan" and model_index.get("expand_timesteps"):
        base = PRESETS["wan22-5b"]
    elif family == "wan":
        base = dataclasses.replace(
            PRESETS["wan-480p-fast"],
            loras=(),
            timesteps=None,
            flow_shift=3.0,
            steps=40,
            guidance=5.0,
        )
    else:
        base = dataclasses.replace(PRESETS["ltx-fast"], timesteps=None, steps=40, guidance=3.0)
    return dataclasses.replace(base, compile_repeated_blocks=False)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} must hold a JSON object")
    return data


def resolve(model: str, device: str, overrides: dict[str, Any]) -> tuple[Preset, str, str]:
    """(preset, family, source) for a preset name, "auto" or a local folder.

    `device` is the full device string ("cuda:1"): `auto` measures that device's free memory.
    """
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
        family = family_of(class_name, model_index)
        settings: dict[str, Any] = {}
        if (path / OVERRIDES_FILE).is_file():
            settings.update(_read_json(path / OVERRIDES_FILE))
        settings.update(overrides)
        base_name = settings.pop("preset", None)
        if base_name is not None:
            preset = get_preset(base_name)
            if family_of(preset.pipeline_class, {"expand_timesteps": True}) != family:
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
    if not device.startswith("cuda"):
        raise NeedsGPU(
            f"preset {model!r} needs a CUDA GPU (device is {device!r}); pass a local diffusers "
            "folder (--model DIR) to run a small model on the CPU"
        )
    settings = dict(overrides)
    if "preset" in settings:
        raise PresetError("the 'preset' setting is for local folders; pass the preset as model")
    preset = choose_auto(free_vram_bytes(device)) if model == "auto" else get_preset(model)
    preset = apply_overrides(preset, settings)
    return preset, family_of(preset.pipeline_class, {"expand_timesteps": True}), preset.hub_id
