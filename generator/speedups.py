"""Speed-ups applied once at load: attention backend, First Block Cache, regional compile.

Each function applies one speed-up to a loaded transformer and says what it did, so that the
worker's ready info reports what actually runs, not what the preset asked for. Nothing here
fails a load: a speed-up that cannot run is left off with one log line.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

# Fastest first, among the backends of diffusers 0.42's attention_dispatch that need no
# download: FlashAttention 3 (Hopper), FlashAttention 2, cuDNN SDPA, then torch's own SDPA.
# The `*_hub` backends fetch kernels from the Hub at run time, and GPU boxes run offline.
ATTENTION_BACKENDS = ("_flash_3", "flash", "_native_cudnn", "native")
NATIVE = "native"


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def probe_attention_backend(
    name: str, *, device: str, dtype: torch.dtype, head_dim: int, with_mask: bool
) -> str | None:
    """None when backend `name` runs attention on `device` in `dtype`, else why it cannot.

    A real call on small tensors, not only the import check: a package can import and still
    have no kernel for this GPU or dtype. `with_mask`: the model passes attention masks
    (LTX's text padding), which FlashAttention does not take.
    """
    from diffusers.models.attention_dispatch import (
        AttentionBackendName,
        _AttentionBackendRegistry,
        _check_attention_backend_requirements,
        dispatch_attention_fn,
    )

    if name.endswith("_hub"):
        return "downloads its kernels from the Hub at run time"
    try:
        backend = AttentionBackendName(name)
        _check_attention_backend_requirements(backend)
    except (ValueError, RuntimeError, ImportError) as exc:
        return one_line(exc)
    if with_mask and "attn_mask" not in _AttentionBackendRegistry._supported_arg_names[backend]:
        return "takes no attention mask"
    # (batch, sequence, heads, head_dim): the layout dispatch_attention_fn expects.
    query = torch.randn(1, 16, 2, head_dim, device=device, dtype=dtype)
    mask = torch.zeros(1, 1, 16, 16, device=device, dtype=dtype) if with_mask else None
    try:
        out = dispatch_attention_fn(query, query, query, attn_mask=mask, backend=backend)
    except Exception as exc:  # any failure means "not here"; the next backend is tried
        return one_line(exc)
    if not bool(torch.isfinite(out).all()):
        return "gives non-finite values"
    return None


def choose_attention_backend(
    transformer: Any, *, device: str, wanted: str | None, with_mask: bool
) -> str:
    """Set the fastest attention backend that runs here (`wanted` first) and return its name."""
    dtype = next(transformer.parameters()).dtype
    head_dim = int(transformer.config.attention_head_dim)
    candidates = [wanted] if wanted else []
    candidates += [name for name in ATTENTION_BACKENDS if name != wanted]
    for name in candidates:
        reason = probe_attention_backend(
            name, device=device, dtype=dtype, head_dim=head_dim, with_mask=with_mask
        )
        if reason is None:
            if name != NATIVE:  # native is the default; setting it only logs a warning
                transformer.set_attention_backend(name)
            return name
        if name == wanted:
            log.warning("attention backend %r cannot run here (%s); choosing another", name, reason)
        else:
            log.debug("attention backend %r: %s", name, reason)
    return NATIVE


def enable_first_block_cache(transformer: Any, threshold: float) -> None:
    """Turn on First Block Cache (skip the other blocks when the first barely changed)."""
    from diffusers.hooks import FirstBlockCacheConfig

    # The hook compares the first block's output against the rest; with a single block there
    # is no "rest" and diffusers fails with an IndexError at the first step.
    if transformer.config.num_layers < 2:
        raise ValueError("First Block Cache needs a transformer with at least 2 blocks")
    transformer.enable_cache(FirstBlockCacheConfig(threshold=threshold))


def inductor_cache_dir() -> Path:
    """Where inductor keeps compiled kernels: under the data dir, so a restart starts warm.

    TORCHINDUCTOR_CACHE_DIR set by the operator wins; otherwise it is set to
    `$ZOETROPE_DATA_DIR/cache/torchinductor` (Triton's cache lives inside it by default).
    """
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        data_dir = Path(os.environ.get("ZOETROPE_DATA_DIR", "").strip() or "data")
        path = (data_dir / "cache" / "torchinductor").expanduser().resolve()
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])


def compile_blocks(transformer: Any, *, with_cache_hook: bool) -> None:
    """Compile the transformer's repeated blocks (regional compile) with dynamic shapes.

    torch.compile builds lazily: nothing is built until the first call, so the caller warms
    up before it trusts the compile, and calls `uncompile` if that fails. Dynamic shapes,
    because each new aspect ratio or frame count would otherwise recompile. No fullgraph
    where a cache hook (First Block Cache) wraps the blocks: dynamo cannot trace the hook's
    `hasattr` calls into one graph, and every call would fail.
    """
    inductor_cache_dir()
    transformer.compile_repeated_blocks(fullgraph=not with_cache_hook, dynamic=True)


def uncompile(transformer: Any) -> None:
    """Undo `compile_repeated_blocks`: blocks call their eager forward again."""
    # nn.Module.compile() keeps the compiled callable in `_compiled_call_impl`; with None,
    # Module.__call__ goes back to the plain implementation.
    for module in transformer.modules():
        if getattr(module, "_compiled_call_impl", None) is not None:
            module._compiled_call_impl = None
    torch._dynamo.reset()


def compiled_graphs() -> int:
    """How many graphs dynamo has compiled in this process (a recompile adds one)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])
