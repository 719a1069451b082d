"""Real-size model components built from their published configs, with no weights.

`generator/configs/<model>/<component>.json` holds each preset's published component configs
(each names its source in a `_source` key). Built on the `meta` device they take no memory
and build in seconds, yet have the real modules and exact parameter counts: the tests derive
every preset's weight bytes from them, check latent shapes and LoRA key coverage, and
`bench/gpu_check.py` can build them on a GPU with random weights to time real-size steps.

Imports torch, diffusers and transformers: the worker, tests and benchmarks use it, never the bot.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

CONFIG_DIR = Path(__file__).parent / "configs"


def models() -> list[str]:
    """The model folders under generator/configs."""
    return sorted(p.name for p in CONFIG_DIR.iterdir() if p.is_dir())


def components(model: str) -> list[str]:
    """The component names (transformer, vae, ...) that `model` has configs for."""
    folder = CONFIG_DIR / model
    if not folder.is_dir():
        raise ValueError(f"no configs for model {model!r}; known: {', '.join(models())}")
    return sorted(p.stem for p in folder.glob("*.json"))


def load_config(model: str, component: str) -> tuple[str, dict[str, Any]]:
    """(class name, config) of one component; keys starting with "_" are notes, dropped."""
    path = CONFIG_DIR / model / f"{component}.json"
    if not path.is_file():
        raise ValueError(f"no config {component!r} for model {model!r}: {path} is missing")
    raw = json.loads(path.read_text(encoding="utf-8"))
    return raw["_class_name"], {k: v for k, v in raw.items() if not k.startswith("_")}


def build(model: str, component: str, *, device: str | torch.device = "meta") -> torch.nn.Module:
    """The component built from its config on `device` (random weights unless on meta)."""
    import diffusers
    import transformers

    class_name, config = load_config(model, component)
    with torch.device(device):
        if hasattr(diffusers, class_name):
            cls = getattr(diffusers, class_name)
            return cls.from_config(config)
        cls = getattr(transformers, class_name)
        config_cls = cls.config_class
        if class_name.startswith("CLIPVision"):
            # The vision tower's config is its own class inside a CLIP config.
            config_cls = transformers.CLIPVisionConfig
        return cls._from_config(config_cls(**config))


def parameter_count(module: torch.nn.Module) -> int:
    """Parameters of `module`, each shared (tied) tensor counted once."""
    seen: set[int] = set()
    total = 0
    for param in module.parameters():
        if id(param) not in seen:
            seen.add(id(param))
            total += param.numel()
    return total


def parameter_counts(model: str) -> dict[str, int]:
    """Exact parameter count of every component of `model`, from meta-device builds."""
    return {name: parameter_count(build(model, name)) for name in components(model)}
