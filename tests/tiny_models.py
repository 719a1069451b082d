"""Tiny random image-to-video pipelines in the layouts of the real presets.

`build_tiny_model(layout, out_dir)` writes a diffusers folder (`save_pretrained`) that
`VideoGenerator.load(str(out_dir))` loads through the same code as real weights. Every part is
built from a config with seeded random weights: no download, no network. The tokenizer is a
Unigram vocabulary built in memory (`T5Tokenizer(vocab=..., extra_ids=0)`).

Layouts:
- "wan21": Wan 2.1 I2V (WanImageToVideoPipeline): UMT5 text encoder, CLIP vision encoder,
  VAE with z_dim 16 and 8x/4x compression, transformer with image cross-attention.
- "wan22": Wan 2.2 TI2V-5B (saved as WanPipeline with expand_timesteps, like the hub folder):
  residual VAE with z_dim 48 and 16x spatial compression, no image encoder.
- "wan22a14b": Wan 2.2 I2V A14B (WanImageToVideoPipeline with two experts): `transformer` (high
  noise) and `transformer_2` (low noise), boundary_ratio 0.9, VAE as Wan 2.1's, no image encoder.
- "ltx": LTX-Video (LTXConditionPipeline): T5 text encoder, VAE with 32x/8x compression and a
  timestep-conditioned decoder, as 0.9.5+ checkpoints have.

Each folder also gets a zoetrope.json with small settings (64x64 pixels, 2 steps) so that
`python main.py animate img.png "x" --model DIR` finishes in about a second on a CPU.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

LAYOUTS = ("wan21", "wan22", "wan22a14b", "ltx")
TEXT_DIM = 32  # text encoder d_model == transformer text_dim / caption_channels

# Settings written to the folder's zoetrope.json (read by VideoGenerator.load).
TINY_SETTINGS: dict[str, Any] = {
    "pixel_budget": 64 * 64,
    "steps": 2,
    "fps": 8,
    "frames": {"short": 9, "standard": 9, "long": 17},
    "max_clip_frames": 33,
    "max_frames": 65,
    "description": "tiny random test model",
}

_WORDS = ("a", "the", "of", "and", "in", "on", "with", "to", "is", "camera", "slowly", "push")
_WORDS += ("pull", "pan", "left", "right", "orbit", "zoom", "out", "waves", "roll", "sea", "sky")
_WORDS += ("cat", "dog", "walks", "city", "night", "light", "moves", "forward", "motion", "static")


def tiny_tokenizer():
    """A T5 Unigram tokenizer over a few words and single letters, built without files."""
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [(chr(c), -3.0) for c in range(ord("a"), ord("z") + 1)]
    vocab += [(f"\u2581{w}", -1.0) for w in _WORDS]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def _text_encoder(kind: str, vocab_size: int):
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    common = {
        "vocab_size": vocab_size,
        "d_model": TEXT_DIM,
        "d_kv": 8,
        "d_ff": 32,
        "num_layers": 1,
        "num_heads": 2,
        "relative_attention_num_buckets": 8,
        "relative_attention_max_distance": 16,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "decoder_start_token_id": 0,
    }
    if kind == "umt5":
        return UMT5EncoderModel(UMT5Config(**common)).eval()
    return T5EncoderModel(T5Config(**common)).eval()


def _wan21_components(vocab_size: int) -> tuple[type, dict[str, Any]]:
    from diffusers import (
        AutoencoderKLWan,
        UniPCMultistepScheduler,
        WanImageToVideoPipeline,
        WanTransformer3DModel,
    )
    from transformers import CLIPVisionConfig, CLIPVisionModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    heads, head_dim = 2, 12
    vision = CLIPVisionConfig(
        hidden_size=8,
        projection_dim=8,
        intermediate_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=16,
        patch_size=8,
    )
    return WanImageToVideoPipeline, {
        "vae": AutoencoderKLWan(
            base_dim=3,
            z_dim=16,
            dim_mult=[1, 1, 1, 1],
            num_res_blocks=1,
            temperal_downsample=[False, True, True],
        ),
        "transformer": WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=heads,
            attention_head_dim=head_dim,
            in_channels=16 + 4 + 16,  # noise + first-frame mask + image latents
            out_channels=16,
            text_dim=TEXT_DIM,
            freq_dim=32,
            ffn_dim=32,
            num_layers=2,
            image_dim=vision.hidden_size,
            added_kv_proj_dim=heads * head_dim,
            rope_max_seq_len=32,
        ),
        "text_encoder": _text_encoder("umt5", vocab_size),
        "image_encoder": CLIPVisionModel(vision).eval(),
        "image_processor": CLIPImageProcessorPil(
            size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}
        ),
        "scheduler": UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
        ),
    }


def _wan22_components(vocab_size: int) -> tuple[type, dict[str, Any]]:
    from diffusers import (
        AutoencoderKLWan,
        UniPCMultistepScheduler,
        WanPipeline,
        WanTransformer3DModel,
    )

    z_dim = 48
    return WanPipeline, {
        "vae": AutoencoderKLWan(
            base_dim=8,
            decoder_base_dim=8,
            z_dim=z_dim,
            dim_mult=[1, 1, 1, 1],
            num_res_blocks=1,
            temperal_downsample=[False, True, True],
            is_residual=True,
            in_channels=12,
            out_channels=12,
            patch_size=2,
            scale_factor_spatial=16,
            scale_factor_temporal=4,
            latents_mean=[0.0] * z_dim,
            latents_std=[1.0] * z_dim,
        ),
        "transformer": WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=2,
            attention_head_dim=12,
            in_channels=z_dim,
            out_channels=z_dim,
            text_dim=TEXT_DIM,
            freq_dim=32,
            ffn_dim=32,
            num_layers=2,
            rope_max_seq_len=32,
        ),
        "transformer_2": None,
        "text_encoder": _text_encoder("umt5", vocab_size),
        "scheduler": UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0
        ),
        "expand_timesteps": True,
    }


def _wan22_a14b_components(vocab_size: int) -> tuple[type, dict[str, Any]]:
    from diffusers import (
        AutoencoderKLWan,
        UniPCMultistepScheduler,
        WanImageToVideoPipeline,
        WanTransformer3DModel,
    )

    def expert() -> WanTransformer3DModel:
        return WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=2,
            attention_head_dim=12,
            in_channels=16 + 4 + 16,  # noise + first-frame mask + image latents
            out_channels=16,
            text_dim=TEXT_DIM,
            freq_dim=32,
            ffn_dim=32,
            num_layers=2,
            rope_max_seq_len=32,
        )

    # As scripts/convert_wan_to_diffusers.py builds Wan2.2-I2V-A14B: two experts, no image
    # encoder, boundary_ratio 0.9, UniPC at shift 3.
    return WanImageToVideoPipeline, {
        "vae": AutoencoderKLWan(
            base_dim=3,
            z_dim=16,
            dim_mult=[1, 1, 1, 1],
            num_res_blocks=1,
            temperal_downsample=[False, True, True],
        ),
        "transformer": expert(),
        "transformer_2": expert(),
        "text_encoder": _text_encoder("umt5", vocab_size),
        "image_encoder": None,
        "image_processor": None,
        "scheduler": UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
        ),
        "boundary_ratio": 0.9,
    }


def _ltx_components(vocab_size: int) -> tuple[type, dict[str, Any]]:
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXConditionPipeline,
        LTXVideoTransformer3DModel,
    )

    latent_channels = 8
    return LTXConditionPipeline, {
        "vae": AutoencoderKLLTXVideo(
            latent_channels=latent_channels,
            block_out_channels=(8, 8, 8, 8),
            decoder_block_out_channels=(8, 8, 8, 8),
            layers_per_block=(1, 1, 1, 1, 1),
            decoder_layers_per_block=(1, 1, 1, 1, 1),
            # 3 scaling stages x patch 4: 32x spatial, 8x temporal, as the real VAE.
            spatio_temporal_scaling=(True, True, True, False),
            decoder_spatio_temporal_scaling=(True, True, True, False),
            decoder_inject_noise=(False, False, False, False, False),
            upsample_residual=(False, False, False, False),
            upsample_factor=(1, 1, 1, 1),
            timestep_conditioning=True,
            patch_size=4,
            patch_size_t=1,
        ),
        "transformer": LTXVideoTransformer3DModel(
            in_channels=latent_channels,
            out_channels=latent_channels,
            patch_size=1,
            patch_size_t=1,
            num_attention_heads=2,
            attention_head_dim=12,
            cross_attention_dim=24,
            num_layers=2,
            caption_channels=TEXT_DIM,
        ),
        "text_encoder": _text_encoder("t5", vocab_size),
        "scheduler": FlowMatchEulerDiscreteScheduler(),
    }


_BUILDERS = {
    "wan21": _wan21_components,
    "wan22": _wan22_components,
    "wan22a14b": _wan22_a14b_components,
    "ltx": _ltx_components,
}


def build_tiny_model(layout: str, out_dir: Path) -> Path:
    """Write a tiny random pipeline of `layout` (one of LAYOUTS) to `out_dir`."""
    if layout not in _BUILDERS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
    out_dir = Path(out_dir)
    tokenizer = tiny_tokenizer()
    # Seeded per layout: the same folder every time, whatever was built before.
    torch.manual_seed({"wan21": 21, "wan22": 22, "wan22a14b": 14, "ltx": 7}[layout])
    pipeline_class, components = _BUILDERS[layout](len(tokenizer))
    pipe = pipeline_class(tokenizer=tokenizer, **components)
    pipe.save_pretrained(out_dir)
    (out_dir / "zoetrope.json").write_text(json.dumps(TINY_SETTINGS, indent=2) + "\n")
    return out_dir


if __name__ == "__main__":  # python -m tests.tiny_models LAYOUT DIR: make a model for the CLI
    import sys

    if len(sys.argv) != 3:
        raise SystemExit(f"usage: python -m tests.tiny_models {{{','.join(LAYOUTS)}}} OUT_DIR")
    print(build_tiny_model(sys.argv[1], Path(sys.argv[2])))
