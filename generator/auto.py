"""`auto` for a worker with several model copies: measured once, one preset for every copy.

Each copy choosing for itself would measure the memory the earlier copies already took and
could pick a smaller preset than the one the worker advertises. So a worker resolves `auto`
once, on the device it runs on, for all its copies together (resident only: offloaded copies
would fight over one PCIe link and host memory), and every copy loads that preset by name.
"""

from __future__ import annotations

from collections.abc import Callable

from generator.presets import choose_auto


def free_bytes(device: str | None) -> int | None:
    """Free memory of the CUDA device `device` (None: the current one), or None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    if device is not None and not device.startswith("cuda"):
        return None
    free, _total = torch.cuda.mem_get_info(torch.device(device or "cuda"))
    return int(free)


def resolve_for_copies(
    model: str,
    device: str | None,
    copies: int,
    *,
    measure: Callable[[str | None], int | None] = free_bytes,
) -> str:
    """The model every copy loads: `model` itself unless it is "auto" with several copies.

    One copy keeps "auto", so the pipeline may still choose model CPU offload when tight.
    Raises NeedsGPU (no GPU, or the copies do not fit) with a message saying what to change.
    """
    if model != "auto" or copies == 1:
        return model
    return choose_auto(measure(device), copies=copies).name
