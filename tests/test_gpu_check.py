"""bench/gpu_check.py in its tiny CPU mode: the same code the GPU run uses, on tiny models."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from generator.presets import PRESETS

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("gpu_check")
    cmd = [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--tiny", "--out", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.md").read_text()


@pytest.mark.timeout(960)
def test_every_section_ran_in_order(report: tuple[dict, str]) -> None:
    """Environment, NVENC, then one section per preset, each finished inside its own cap."""
    data, markdown = report
    assert data["mode"] == "tiny-cpu"
    names = list(data["sections"])
    assert names == ["env", "nvenc", *(f"preset:{p}" for p in PRESETS)]
    for name, entry in data["sections"].items():
        assert entry["status"] == "ok", (name, entry)
        assert 0 < entry["seconds"] <= entry["cap_s"]
        assert f"## {name}: ok" in markdown


def test_environment_is_measured(report: tuple[dict, str]) -> None:
    """Versions are the installed ones; the CPU, the compiler and attention backends are probed."""
    env = report[0]["sections"]["env"]["data"]
    assert env["versions"]["torch"] == version("torch")
    assert env["versions"]["diffusers"] == version("diffusers")
    assert env["device"]["name"] == "cpu" and env["device"]["cpu_cores"] >= 1
    assert env["compiler"]["cc_version"]
    assert env["attention"]["native"].startswith("ok ")
    # Backends missing here say why instead of passing silently.
    assert env["attention"]["flash"].startswith(("ok ", "no: "))


def test_each_preset_is_built_timed_and_run_through_the_worker(report: tuple[dict, str]) -> None:
    """Per preset: parameter counts of the tiny models, timed steps, VAE and two worker jobs."""
    import torch

    from tests.tiny_models import _BUILDERS, tiny_tokenizer

    sections = report[0]["sections"]
    for name in PRESETS:
        piece = sections[f"preset:{name}"]["data"]
        layout = piece["configs"]["source"].split(":")[1]
        _, parts = _BUILDERS[layout](len(tiny_tokenizer()))
        for component, facts in piece["build"].items():
            if isinstance(facts, dict):
                expected = sum(p.numel() for p in parts[component].parameters())
                assert facts["params"] == expected, (name, component)
                assert facts["dtype"] == str(torch.float32)
        plain = piece["plain_diffusers"]
        assert "error" not in plain, (name, plain)
        assert plain["frames_shape"] == [9, 64, 64, 3]
        assert len(plain["step_s"]) == piece["shape"]["steps"] == 2
        assert all(s > 0 for s in plain["step_s"]) and plain["peak_gib"] > 0
        assert piece["vae"]["decode"]["video"] == [1, 3, 9, 64, 64]
        assert piece["vae"]["encode"]["s"] > 0
        project = piece["project"]
        assert "error" not in project, (name, project)
        for job in ("job0", "job1"):
            assert "failed" not in project[job], (name, project[job])
            assert project[job]["bytes"] > 0 and project[job]["timings"]["generate"] > 0
        assert project["job0"]["size"] == "64x64"
        assert project["info"]["device"] == "cpu"
        assert project["recompiles_for_second_aspect"] >= 0
        if PRESETS[name].loras:
            # One synthetic LoRA in LightX2V's key layout per expert, loaded and fused.
            assert piece["save"]["lora_keys"] > 0
            assert project["lora"].count("lora_transformer") == len(PRESETS[name].loras)
        assert piece["peak_vs_vram_gb"]["vram_gb"] == PRESETS[name].vram_gb
        assert piece["peak_vs_vram_gb"]["peak_gib"] > 0


def test_nvenc_section_compares_with_libx264(report: tuple[dict, str]) -> None:
    """libx264's default is measured; NVENC is tried where ffmpeg has it (no GPU here: an error)."""
    nvenc = report[0]["sections"]["nvenc"]["data"]
    assert nvenc["libx264_default"]["bytes"] > 0 and nvenc["libx264_default"]["psnr"] > 25
    if nvenc["ffmpeg_has_h264_nvenc"]:
        assert "bytes" in nvenc["h264_nvenc"] or "error" in nvenc["h264_nvenc"]
    markdown = report[1]
    assert "| libx264_default.psnr |" in markdown


def test_real_configs_are_read_per_preset_and_a_missing_folder_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real-size loader reads generator/configs/<folder>/<component>.json and builds from it
    (here on the meta device); a preset without a folder is reported, not a crash."""
    import importlib.util

    import torch

    from tests.tiny_models import _BUILDERS, tiny_tokenizer

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    assert spec is not None and spec.loader is not None
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    monkeypatch.setattr(gpu_check, "CONFIGS", tmp_path)
    preset = PRESETS["wan-480p-fast"]
    with pytest.raises(FileNotFoundError, match="no config folder"):
        gpu_check.real_configs(preset)

    _, parts = _BUILDERS["wan21"](len(tiny_tokenizer()))
    folder = tmp_path / (getattr(preset, "configs", None) or preset.name)
    folder.mkdir()
    transformer = parts["transformer"]
    config = {"_class_name": type(transformer).__name__, **dict(transformer.config)}
    (folder / "transformer.json").write_text(json.dumps(config))
    configs, shown = gpu_check.real_configs(preset)
    assert list(configs) == ["transformer"] and shown == str(folder)
    built = gpu_check.build(configs["transformer"], "meta", torch.bfloat16)
    assert sum(p.numel() for p in built.parameters()) == sum(
        p.numel() for p in transformer.parameters()
    )
    assert next(built.parameters()).dtype == torch.bfloat16
