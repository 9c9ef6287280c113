"""Seeded token masks as MAR's generation draws them: a random order of the grid cells per image, of which the
first floor(r * N) are hidden (MAR reveals tokens from the end of its order). Each image's order comes from
numpy's generator seeded with (seed, image index), so a mask does not depend on the batch it is drawn in, and the
cells hidden at a lower ratio are hidden at every higher one."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from harmon.mar import mask_from_orders

DEFAULT_MASK_RATIOS = (0.0, 0.25, 0.5, 0.75, 0.9)


def check_mask_ratio(ratio: float) -> float:
    """`ratio` when it lies in [0, 1) (at least one token stays visible), else a ValueError."""
    if not 0 <= ratio < 1:
        raise ValueError(f"mask ratio {ratio} is outside [0, 1); it is the fraction of tokens hidden, and at least "
                         "one token must stay visible")
    return float(ratio)


def hidden_count(ratio: float, cells: int) -> int:
    """How many of `cells` tokens a ratio hides: floor(ratio * cells), as MAR's mask schedule counts them."""
    return math.floor(check_mask_ratio(ratio) * cells + 1e-9)


def token_masks(image_ids: Sequence[int], cells: int, ratio: float, seed: int) -> torch.Tensor:
    """(len(image_ids), cells) bool, True = hidden from the encoder."""
    if seed < 0 or any(int(i) < 0 for i in image_ids):
        raise ValueError(f"mask seeds and image indices must be non-negative, got seed {seed}")
    orders = np.stack([np.random.default_rng([seed, int(i)]).permutation(cells) for i in image_ids])
    return mask_from_orders(torch.from_numpy(orders), hidden_count(ratio, cells))
