"""What a step-distilled preset needs at load time: its LoRAs fused, its trained schedule.

A distillation LoRA only works on the schedule it was trained with: LightX2V's Wan LoRAs were
trained on 4 fixed Euler steps at shift 5 (see generator/presets.py for the sources). The Wan
pipelines take no schedule argument, so the schedule lives in the scheduler: `FixedSchedule`
samples the preset's timesteps whatever `set_timesteps` is asked for.

Wan 2.2 A14B has two experts; each LoRA names the transformer it belongs to
(`transformer` = high noise, `transformer_2` = low noise) and is fused into that one.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from generator.presets import LoraSpec, Preset

log = logging.getLogger(__name__)


class LoraLoadError(RuntimeError):
    """A LoRA file is missing, unreadable or does not fit the transformer."""


class FixedSchedule(FlowMatchEulerDiscreteScheduler):
    """Flow-matching Euler on a fixed list of timesteps (a distilled model's schedule).

    `trained_timesteps` are on the 0..1000 grid before the shift; each becomes sigma t/1000,
    shifted by the scheduler's `shift` like any sigma (LightX2V's step-distill scheduler does
    the same), and Euler steps from one sigma to the next, the last one to 0.
    """

    trained_timesteps: tuple[float, ...] = ()

    @classmethod
    def for_preset(cls, preset: Preset) -> FixedSchedule:
        if not preset.timesteps or preset.flow_shift is None:
            raise ValueError(f"preset {preset.name!r} has no fixed schedule (timesteps, shift)")
        scheduler = cls(num_train_timesteps=1000, shift=preset.flow_shift)
        scheduler.trained_timesteps = tuple(preset.timesteps)
        return scheduler

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        sigmas: list[float] | None = None,
        mu: float | None = None,
        timesteps: list[float] | None = None,
    ) -> None:
        trained = self.trained_timesteps
        if trained and sigmas is None and timesteps is None:
            if num_inference_steps not in (None, len(trained)):
                raise ValueError(
                    f"this distilled schedule has {len(trained)} steps, not {num_inference_steps}"
                )
            sigmas = [t / self.config.num_train_timesteps for t in trained]
            num_inference_steps = None
        super().set_timesteps(
            num_inference_steps, device=device, sigmas=sigmas, mu=mu, timesteps=timesteps
        )


def use_trained_schedule(pipe: Any, preset: Preset, family: str) -> bool:
    """Give a Wan pipeline the preset's fixed schedule; True if it did.

    LTX takes its schedule as a call argument instead, so only Wan is changed here.
    """
    if family != "wan" or not preset.timesteps:
        return False
    pipe.scheduler = FixedSchedule.for_preset(preset)
    return True


def fuse_loras(pipe: Any, loras: tuple[LoraSpec, ...]) -> list[str]:
    """Load each LoRA into its transformer, fuse them all, drop the adapters; their names.

    Fused weights cost nothing per step; unloading removes the now-unused adapter layers.
    """
    if not loras:
        return []
    loaded: list[str] = []
    for lora in loras:
        if getattr(pipe, lora.component, None) is None:
            raise LoraLoadError(
                f"LoRA {lora.weight_name} is for {lora.component}, which this model does not have"
            )
        try:
            pipe.load_lora_weights(
                lora.repo,
                weight_name=lora.weight_name,
                adapter_name=lora.adapter_name,
                load_into_transformer_2=lora.component == "transformer_2",
            )
        except (OSError, ValueError, KeyError, ImportError) as exc:
            raise LoraLoadError(f"cannot load LoRA {lora.repo}/{lora.weight_name}: {exc}") from exc
        loaded.append(f"{lora.repo}/{lora.weight_name}")
    # Adapter by adapter: each expert's LoRA may have its own scale.
    for lora in loras:
        pipe.fuse_lora(
            lora_scale=lora.scale, components=[lora.component], adapter_names=[lora.adapter_name]
        )
    pipe.unload_lora_weights()
    log.info("fused %s", ", ".join(loaded))
    return loaded
