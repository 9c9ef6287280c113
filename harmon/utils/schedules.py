"""The learning-rate schedule every training loop here uses: linear warm-up, then half-cycle cosine."""

from __future__ import annotations

import math

import torch


def warmup_cosine(step: float, total: float, warmup: float, peak: float | torch.Tensor = 1.0, start: float = 0.0,
                  floor: float = 0.0) -> float | torch.Tensor:
    """The rate at `step` (updates, or fractional epochs): linear from `start` to `peak` over the first `warmup`
    steps, then half-cycle cosine from `peak` down to `floor` at `total` (held there after)."""
    if step < warmup:
        return start + (peak - start) * step / warmup
    progress = min(1.0, (step - warmup) / max(1.0, total - warmup))
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
