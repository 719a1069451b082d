"""A preset's weights in the local Hugging Face cache: which files, whether all are there, pull.

A diffusers hub repo holds more than its pipeline loads (Wan's also hold the original fp32
checkpoints, ~90 GB), so `pull` fetches only what loading needs: `model_index.json`, and for
each component in it its config/tokenizer files plus the weight shards its
`*.safetensors.index.json` names (or its single `.safetensors`), and the preset's LoRA files.
`missing` checks the same list in the cache, so a half-finished pull is not "cached" (the hub
cache only links a file into its snapshot once it is complete).

The worker never downloads: `local_snapshot` hands the pipeline the cached folder (so loading is
offline) or raises `WeightsMissing` saying which `models pull` to run.

No torch here: `main.py models` and the bot may use it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from generator.presets import Preset

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".msgpack", ".h5", ".onnx")
WEIGHT_NAMES = ("diffusion_pytorch_model", "model")  # diffusers', transformers' file stems


class WeightsMissing(RuntimeError):
    """A preset's weights are not (completely) in the local cache."""


def pull_hint(preset: Preset) -> str:
    return f"run `python main.py models pull {preset.name}` first"


def components(model_index: dict[str, Any]) -> dict[str, str]:
    """{component folder: class name} of the parts a pipeline loads (None entries skipped)."""
    found = {}
    for key, value in model_index.items():
        if key.startswith("_") or not isinstance(value, list | tuple) or len(value) != 2:
            continue
        library, class_name = value
        if library is not None and class_name is not None:
            found[key] = str(class_name)
    return found


def carries_weights(class_name: str) -> bool:
    """Models carry weights; tokenizers, schedulers, processors and guiders do not."""
    return "Model" in class_name or class_name.startswith("Autoencoder")


def _is_weight_file(name: str) -> bool:
    return name.endswith(WEIGHT_SUFFIXES) or name.endswith(".index.json")


def needed_files(
    model_index: dict[str, Any],
    listing: Iterable[str],
    read_json: Callable[[str], dict[str, Any]],
) -> list[str]:
    """The repo files a pipeline loads, from its listing (repo-relative paths, "/" separated).

    `read_json(path)` reads a file of the listing (a weight index). A weight-carrying
    component needs its index and every shard it names, or else its single weight file; a
    component with weight files only under a variant name ("model.fp16.safetensors") or with
    none at all is reported as a missing file, so the caller can say what is wrong.
    """
    files = set(listing)
    needed = {"model_index.json"}
    for folder, class_name in components(model_index).items():
        inside = sorted(f for f in files if f.startswith(f"{folder}/") and f.count("/") == 1)
        needed.update(f for f in inside if not _is_weight_file(f))
        if not carries_weights(class_name):
            continue
        needed.add(f"{folder}/config.json")
        for stem in WEIGHT_NAMES:
            index = f"{folder}/{stem}.safetensors.index.json"
            single = f"{folder}/{stem}.safetensors"
            if index in files:
                weight_map = read_json(index).get("weight_map", {})
                needed.add(index)
                needed.update(f"{folder}/{shard}" for shard in set(weight_map.values()))
                break
            if single in files:
                needed.add(single)
                break
        else:
            # Nothing loadable (none, or only variant files): name what a complete folder has.
            needed.add(f"{folder}/*.safetensors")
    return sorted(needed)


def _snapshot(repo: str, cache_dir: str | None) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, "model_index.json", cache_dir=cache_dir)
    return Path(found).parent if isinstance(found, str) else None


def _cached_file(repo: str, filename: str, cache_dir: str | None) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, filename, cache_dir=cache_dir)
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


def _local_listing(root: Path) -> list[str]:
    # A snapshot's files are links to complete blobs; a link whose blob is gone is not a file.
    return [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]


def missing(preset: Preset, *, cache_dir: str | None = None) -> list[str]:
    """The files of `preset` (repo/file) not in the cache; empty when it can load offline."""
    root = _snapshot(preset.hub_id, cache_dir)
    if root is None:
        gaps = [f"{preset.hub_id}/model_index.json"]
    else:
        index = json.loads((root / "model_index.json").read_text(encoding="utf-8"))
        listing = _local_listing(root)
        needed = needed_files(index, listing, lambda f: json.loads((root / f).read_text("utf-8")))
        present = set(listing)
        gaps = [f"{preset.hub_id}/{f}" for f in needed if f not in present]
    for lora in preset.loras:
        if _cached_file(lora.repo, lora.weight_name, cache_dir) is None:
            gaps.append(f"{lora.repo}/{lora.weight_name}")
    return gaps


def weights_cached(preset: Preset, *, cache_dir: str | None = None) -> bool:
    """Whether every file the preset loads (its LoRAs included) is in the local cache."""
    return not missing(preset, cache_dir=cache_dir)


def local_snapshot(preset: Preset, *, cache_dir: str | None = None) -> tuple[str, Preset]:
    """(cached folder, preset with its LoRAs pointing at cached folders) for an offline load.

    Raises WeightsMissing naming what is missing and the `models pull` command to run.
    """
    gaps = missing(preset, cache_dir=cache_dir)
    if gaps:
        more = f" and {len(gaps) - 1} more" if len(gaps) > 1 else ""
        raise WeightsMissing(
            f"the weights of {preset.name} are not downloaded ({gaps[0]}{more} missing): "
            f"{pull_hint(preset)}"
        )
    root = _snapshot(preset.hub_id, cache_dir)
    assert root is not None  # missing() found it
    loras = []
    for lora in preset.loras:
        path = _cached_file(lora.repo, lora.weight_name, cache_dir)
        assert path is not None
        folder = path.parents[len(Path(lora.weight_name).parts) - 1]
        loras.append(dataclasses.replace(lora, repo=str(folder)))
    return str(root), dataclasses.replace(preset, loras=tuple(loras))


def pull(preset: Preset, *, cache_dir: str | None = None) -> list[str]:
    """Download what `preset` loads (progress bars on stderr); the local paths, LoRAs last."""
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download

    def read_json(filename: str) -> dict[str, Any]:
        path = hf_hub_download(preset.hub_id, filename, cache_dir=cache_dir)
        return json.loads(Path(path).read_text(encoding="utf-8"))

    listing = HfApi().list_repo_files(preset.hub_id)
    needed = needed_files(read_json("model_index.json"), listing, read_json)
    unavailable = [f for f in needed if f not in set(listing)]
    if unavailable:
        raise WeightsMissing(
            f"{preset.hub_id} lacks files its pipeline loads: {', '.join(unavailable)}"
        )
    paths = [snapshot_download(preset.hub_id, allow_patterns=needed, cache_dir=cache_dir)]
    for lora in preset.loras:
        paths.append(hf_hub_download(lora.repo, lora.weight_name, cache_dir=cache_dir))
    return paths
