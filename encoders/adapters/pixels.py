"""Raw pixels as features: the baseline every probing study needs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from encoders.adapters.common import resolve_layer
from encoders.base import Encoder, Preprocess


class PixelEncoder(Encoder):
    """Splits pixels into `patch` x `patch` cells; each cell is one token: its mean RGB (`cells="mean"`, 3 values)
    or all its pixels (`cells="raw"`, 3 * patch * patch values, channel-major as in a ViT's patch embedding)."""

    name = "pixels"
    poolings = ("flatten", "mean")
    default_pooling = "flatten"

    def __init__(self, image_size: int = 32, patch: int = 4, cells: str = "mean"):
        super().__init__(Preprocess(image_size=image_size, crop="center", mean=(0.5,) * 3, std=(0.5,) * 3))
        if cells not in ("mean", "raw"):
            raise ValueError(f"cells={cells!r}; use 'mean' (mean RGB per cell) or 'raw' (every pixel of the cell)")
        self.patch = patch
        self.cells = cells
        self.identity = nn.Identity()

    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        if height % self.patch or width % self.patch:
            raise ValueError(f"pixels: a {height}x{width} image does not split into {self.patch}-pixel cells; "
                             f"use a size that is a multiple of {self.patch}")
        return height // self.patch, width // self.patch

    def num_layers(self) -> int:
        return 1

    def cam_layer(self) -> nn.Module:
        return self.identity

    def forward_sequence(self, pixels: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        return self.forward_layers(pixels, [layer])[0]

    def forward_layers(self, pixels: torch.Tensor, layers: Sequence[int | None]) -> list[torch.Tensor]:
        """The cells, computed once (the one layer, however often it is asked for)."""
        self.grid_for(*pixels.shape[-2:])
        for layer in layers:
            resolve_layer(layer, 1, self.name)
        if self.cells == "raw":
            cells = self.identity(F.pixel_unshuffle(pixels, self.patch))
        else:
            cells = self.identity(F.avg_pool2d(pixels, self.patch) if self.patch > 1 else pixels)
        return [cells.flatten(2).transpose(1, 2)] * len(layers)

    def describe(self) -> dict:
        return {**super().describe(), "patch": self.patch, "cells": self.cells}


def build_pixels(weights: str | None = None, image_size: int = 32, patch: int = 4) -> PixelEncoder:
    if weights not in (None, "random"):
        raise ValueError("the pixels encoder has no weights; drop --weights")
    return PixelEncoder(image_size, patch)
