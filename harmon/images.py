"""Image tensors in [-1, 1] to PIL images and grids."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from harmon.utils.files import atomic_write


def to_uint8(images: torch.Tensor, rounding: str = "mar") -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8.

    'mar': round((x + 1) / 2 * 255) as MAR's evaluation; 'harmon': truncate(127.5 x + 128) as Harmon's scripts.
    """
    x = images.detach().float().cpu()
    if rounding == "mar":
        x = torch.round(((x + 1) / 2 * 255).clamp(0, 255))
    elif rounding == "harmon":
        x = (127.5 * x + 128).clamp(0, 255)
    else:
        raise ValueError(f"rounding={rounding!r}; use 'mar' or 'harmon'")
    return x.to(torch.uint8).permute(0, 2, 3, 1).numpy()


def to_pil(images: torch.Tensor, rounding: str = "mar") -> list[Image.Image]:
    return [Image.fromarray(a) for a in to_uint8(images, rounding)]


def save_image_grid(
    images: torch.Tensor, path: str | os.PathLike, rows: int = 1, column_major: bool = False, rounding: str = "mar",
) -> Path:
    """Tile a batch into a rows x cols grid and write it atomically; column_major fills columns first."""
    arrays = to_uint8(images, rounding)
    n, h, w, _ = arrays.shape
    cols = -(-n // rows)
    grid = np.zeros((rows * h, cols * w, 3), dtype=np.uint8)
    for i, a in enumerate(arrays):
        r, c = (i % rows, i // rows) if column_major else divmod(i, cols)
        grid[r * h : (r + 1) * h, c * w : (c + 1) * w] = a
    path = Path(path)
    fmt = (path.suffix.lstrip(".") or "png").upper().replace("JPG", "JPEG")
    return atomic_write(path, lambda handle: Image.fromarray(grid).save(handle, format=fmt))
