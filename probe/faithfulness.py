"""Faithfulness of attribution maps: ROAD (remove and debias; pytorch-grad-cam's `ROADCombined`).

For each image the pixels a map ranks most relevant (MoRF) or least relevant (LeRF) are replaced by a noisy
linear infill at several percentiles, and the target score is measured again. The combined score is
(mean LeRF change - mean MoRF change) / 2: positive when removing what the map highlights hurts the target more
than removing what it ignores. Constant maps rank nothing, so they get no score (NaN).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from probe.cam import constant_maps

PERCENTILES = (20, 40, 60, 80)


def road_scores(model: nn.Module, images: torch.Tensor, maps: np.ndarray, targets: Sequence[Callable],
                percentiles: Sequence[int] = PERCENTILES, batch_size: int = 16, seed: int = 0) -> np.ndarray:
    """ROAD-combined score per image (NaN for constant maps); the infill noise is drawn from `seed`."""
    from pytorch_grad_cam.metrics.road import ROADCombined

    if len(maps) != len(images) or len(targets) != len(images):
        raise ValueError(f"{len(images)} images, {len(maps)} maps and {len(targets)} targets; give one of each per image")
    metric = ROADCombined(percentiles=list(percentiles))
    device = next(model.parameters()).device
    scores = np.full(len(images), np.nan, dtype=np.float64)
    blank = set(constant_maps(maps))
    keep = [i for i in range(len(images)) if i not in blank]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for start in range(0, len(keep), batch_size):
            rows = keep[start : start + batch_size]
            batch = images[rows].to(device)
            values = metric(batch, np.asarray(maps)[rows], [targets[i] for i in rows], model)
            scores[rows] = np.asarray(values, dtype=np.float64).reshape(-1)
    return scores


def summarise(scores: np.ndarray) -> float | None:
    """Mean over the images that have a score (None when none has)."""
    finite = np.asarray(scores, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    return float(finite.mean()) if len(finite) else None
