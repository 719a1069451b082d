"""LoRA state dicts in LightX2V's published Wan layout, with synthetic tensors.

LightX2V's Wan distillation LoRAs are the SVD of (distilled - base) per weight, written by its
`tools/extract/lora_extractor.py` (ModelTC/LightX2V, commit f8aee98) under the original Wan
(`WanModel`) parameter names, prefixed `diffusion_model.`:

- a 2-D `.weight` with at least 1e6 entries -> `.lora_up.weight` (out, rank) and
  `.lora_down.weight` (rank, in);
- anything 1-D or smaller -> the full difference: `.weight` -> `.diff`, `.bias` -> `.diff_b`,
  a `modulation` parameter -> `.diff_m`.

`wan_original_params(config)` lists the original Wan parameter names and shapes for a diffusers
`WanTransformer3DModel` config (the module layout of Wan-Video's `wan/modules/model.py`), so a
test can build the LoRA a real-size or tiny transformer would get and check where diffusers'
converter puts each key.
"""

from __future__ import annotations

import math
from typing import Any

import torch

SVD_MIN_PARAMS = 1_000_000  # lora_extractor.py: smaller weights are stored as a plain diff


def wan_original_params(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """{original Wan parameter name: shape} of the model a diffusers Wan config describes."""
    dim = config["num_attention_heads"] * config["attention_head_dim"]
    ffn, freq, text = config["ffn_dim"], config["freq_dim"], config["text_dim"]
    patch = tuple(config["patch_size"])
    image_dim = config.get("image_dim")
    shapes: dict[str, tuple[int, ...]] = {
        "patch_embedding.weight": (dim, config["in_channels"], *patch),
        "patch_embedding.bias": (dim,),
        "text_embedding.0.weight": (dim, text),
        "text_embedding.0.bias": (dim,),
        "text_embedding.2.weight": (dim, dim),
        "text_embedding.2.bias": (dim,),
        "time_embedding.0.weight": (dim, freq),
        "time_embedding.0.bias": (dim,),
        "time_embedding.2.weight": (dim, dim),
        "time_embedding.2.bias": (dim,),
        "time_projection.1.weight": (6 * dim, dim),
        "time_projection.1.bias": (6 * dim,),
        "head.modulation": (1, 2, dim),
        "head.head.weight": (config["out_channels"] * math.prod(patch), dim),
        "head.head.bias": (config["out_channels"] * math.prod(patch),),
    }
    for i in range(config["num_layers"]):
        b = f"blocks.{i}"
        shapes[f"{b}.modulation"] = (1, 6, dim)
        attention = ["self_attn", "cross_attn"]
        for attn in attention:
            for proj in ("q", "k", "v", "o"):
                shapes[f"{b}.{attn}.{proj}.weight"] = (dim, dim)
                shapes[f"{b}.{attn}.{proj}.bias"] = (dim,)
            shapes[f"{b}.{attn}.norm_q.weight"] = (dim,)
            shapes[f"{b}.{attn}.norm_k.weight"] = (dim,)
        if image_dim:
            for proj in ("k_img", "v_img"):
                shapes[f"{b}.cross_attn.{proj}.weight"] = (dim, dim)
                shapes[f"{b}.cross_attn.{proj}.bias"] = (dim,)
            shapes[f"{b}.cross_attn.norm_k_img.weight"] = (dim,)
        if config.get("cross_attn_norm"):
            shapes[f"{b}.norm3.weight"] = (dim,)
            shapes[f"{b}.norm3.bias"] = (dim,)
        shapes[f"{b}.ffn.0.weight"] = (ffn, dim)
        shapes[f"{b}.ffn.0.bias"] = (ffn,)
        shapes[f"{b}.ffn.2.weight"] = (dim, ffn)
        shapes[f"{b}.ffn.2.bias"] = (dim,)
    if image_dim:
        shapes.update(
            {
                "img_emb.proj.0.weight": (image_dim,),
                "img_emb.proj.0.bias": (image_dim,),
                "img_emb.proj.1.weight": (image_dim, image_dim),
                "img_emb.proj.1.bias": (image_dim,),
                "img_emb.proj.3.weight": (dim, image_dim),
                "img_emb.proj.3.bias": (dim,),
                "img_emb.proj.4.weight": (dim,),
                "img_emb.proj.4.bias": (dim,),
            }
        )
    return shapes


def lightx2v_lora(
    config: dict[str, Any],
    *,
    rank: int = 64,
    device: str = "meta",
    svd_min_params: int = SVD_MIN_PARAMS,
    seed: int = 0,
    scale: float = 1.0,
) -> dict[str, torch.Tensor]:
    """A LoRA in LightX2V's layout for the Wan model of `config` (random values; meta: none)."""
    generator = torch.Generator().manual_seed(seed) if device != "meta" else None

    def tensor(*shape: int) -> torch.Tensor:
        if device == "meta":
            return torch.empty(shape, device="meta")
        return torch.randn(shape, generator=generator) * scale

    lora: dict[str, torch.Tensor] = {}
    for name, shape in wan_original_params(config).items():
        key = f"diffusion_model.{name}"
        if len(shape) == 2 and math.prod(shape) >= svd_min_params and name.endswith(".weight"):
            base = key.removesuffix(".weight")
            lora[f"{base}.lora_up.weight"] = tensor(shape[0], rank)
            lora[f"{base}.lora_down.weight"] = tensor(rank, shape[1])
        elif name.endswith(".weight"):
            lora[key.removesuffix(".weight") + ".diff"] = tensor(*shape)
        elif name.endswith(".bias"):
            lora[key.removesuffix(".bias") + ".diff_b"] = tensor(*shape)
        else:  # a modulation table
            lora[key.replace(".modulation", ".diff_m")] = tensor(*shape)
    return lora
