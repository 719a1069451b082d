"""Device memory: the allocator's settings, free memory of the device in use, OOM detection.

Imported by `generator/pipeline.py` before anything imports torch: the CUDA caching allocator
reads its settings from the environment once, when torch sets it up, so they must be in place
before that.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
from collections.abc import Iterator

log = logging.getLogger(__name__)

# Expandable segments let the allocator grow a segment instead of failing when memory is
# fragmented (clips of varying size on one long-lived process fragment it); PyTorch's CUDA
# memory-management notes recommend it for exactly this case. An operator's own setting wins.
ALLOCATOR_SETTING = "expandable_segments:True"
_ALLOCATOR_ENV = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")  # old and new name (torch 2.9+)


def set_allocator_defaults() -> None:
    """Set PYTORCH_CUDA_ALLOC_CONF to expandable segments unless the operator set either name."""
    if any(name in os.environ for name in _ALLOCATOR_ENV):
        return
    os.environ["PYTORCH_CUDA_ALLOC_CONF"] = ALLOCATOR_SETTING


set_allocator_defaults()

import torch  # noqa: E402  (after the allocator settings, see the module docstring)

# Allocation failures that do not arrive as torch.OutOfMemoryError: cuDNN and cuBLAS (and the
# other CUDA libraries) report a failed workspace allocation as a plain RuntimeError carrying
# their status name, and a failed cudaMalloc outside the caching allocator says "out of memory".
_OOM_MARKERS = (
    "out of memory",
    "CUDNN_STATUS_ALLOC_FAILED",
    "CUBLAS_STATUS_ALLOC_FAILED",
    "CUFFT_ALLOC_FAILED",
    "CUSOLVER_STATUS_ALLOC_FAILED",
    "CUSPARSE_STATUS_ALLOC_FAILED",
)
_OOM_TYPES: tuple[type[BaseException], ...] = (
    getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError),
    torch.cuda.OutOfMemoryError,
)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` means the device ran out of memory (any of the ways CUDA says so)."""
    if isinstance(exc, _OOM_TYPES):
        return True
    if not isinstance(exc, RuntimeError):
        return False
    text = str(exc)
    return any(marker.lower() in text.lower() for marker in _OOM_MARKERS)


def free_vram_bytes(device: str) -> int | None:
    """Free memory on `device` ("cuda", "cuda:1"), or None when it is not a CUDA device.

    `torch.cuda.mem_get_info()` without an argument measures the current device (GPU 0 in a
    fresh process), not the one the worker runs on: the device is always passed.
    """
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info(torch.device(device))
    return int(free)


def release_memory() -> None:
    """Drop unreachable tensors and give cached blocks back, after an OOM or a failed call."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextlib.contextmanager
def load_placement(device: str, offload: bool) -> Iterator[str | None]:
    """The `device_map` that loads the weights straight onto `device` (None: to host RAM).

    Loading to the host and then `.to(device)` needs the whole model in host RAM first (about
    47 GB for Wan 14B). diffusers 0.42's pipeline loader takes "balanced", its accelerator's
    type ("cuda") or "cpu" as `device_map`, not "cuda:1": an indexed GPU gets "cuda" while it
    is torch's current device, which is where "cuda" places the weights. Model CPU offload
    wants the weights in host RAM.
    """
    if offload:
        yield None
    elif device.startswith("cuda"):
        with torch.cuda.device(torch.device(device)):
            yield "cuda"
    else:
        yield device
