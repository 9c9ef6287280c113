"""Where and how to compute: the device, compute dtypes by name, bf16 autocast, this process's rank under a
launcher and how many worker processes fit on this machine. torch is imported on first use, so command-line
`--help` stays fast."""

from __future__ import annotations

import os
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

DTYPE_NAMES = ("fp32", "bf16", "fp16")


def __getattr__(name: str) -> Any:
    if name == "DTYPES":  # {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
        import torch

        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def cpu_count() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def default_workers(limit: int = 4) -> int:
    """Worker processes for data loading: `limit`, but never more than the CPU cores available."""
    return min(limit, cpu_count())


def rank() -> int:
    """This process's rank under `torchrun` / `accelerate launch` (0 otherwise)."""
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    """This process's rank on its machine (0 without a launcher)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    """How many processes the launcher started (1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """None or "auto": CUDA when available, else CPU; anything else as given. Under a multi-process launch,
    "auto" and a bare "cuda" mean this process's GPU (`cuda:LOCAL_RANK`)."""
    import torch

    if device is None or device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    chosen = torch.device(device)
    if chosen.type == "cuda" and chosen.index is None and world_size() > 1:
        return torch.device("cuda", local_rank())
    return chosen


def dtype_by_name(name: str, allowed: tuple[str, ...] = DTYPE_NAMES) -> torch.dtype:
    """The torch dtype of "fp32", "bf16" or "fp16" (restricted to `allowed`)."""
    if name not in allowed:
        raise ValueError(f"dtype {name!r} is not supported; use one of {', '.join(allowed)}")
    return __getattr__("DTYPES")[name]


def dtype_name(dtype: str | torch.dtype | None) -> str:
    """"fp32", "bf16" or "fp16" for a name or torch dtype (None means fp32)."""
    import torch

    if dtype is None:
        return "fp32"
    if isinstance(dtype, torch.dtype):
        names = {v: k for k, v in __getattr__("DTYPES").items()}
        if dtype not in names:
            raise ValueError(f"dtype {dtype} is not supported; use one of {', '.join(DTYPE_NAMES)}")
        return names[dtype]
    dtype_by_name(dtype)
    return dtype


def bf16_autocast(device: str | torch.device, enabled: bool = True) -> AbstractContextManager:
    """bf16 autocast on `device`'s type when `enabled` (weights keep their dtype), else a context that does
    nothing."""
    import torch

    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=enabled)
