"""Raw pixels as features: the baseline every probing study needs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from encoders.base import Encoder, Preprocess
from encoders.registry import register


class PixelEncoder(Encoder):
    """Average-pools pixels into `patch` x `patch` cells; each cell's RGB values are one token."""

    name = "pixels"
    poolings = ("flatten", "mean")
    default_pooling = "flatten"

    def __init__(self, image_size: int = 32, patch: int = 4):
        super().__init__(Preprocess(image_size=image_size, crop="center", mean=(0.5,) * 3, std=(0.5,) * 3))
        self.patch = patch
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
        self.grid_for(*pixels.shape[-2:])
        cells = self.identity(F.avg_pool2d(pixels, self.patch) if self.patch > 1 else pixels)
        return cells.flatten(2).transpose(1, 2)

    def describe(self) -> dict:
        return {**super().describe(), "patch": self.patch}


@register("pixels", family="pixels", source="no weights: resized raw pixels", aliases=("raw",))
def build_pixels(weights: str | None = None, image_size: int = 32, patch: int = 4) -> PixelEncoder:
    if weights not in (None, "random"):
        raise ValueError("the pixels encoder has no weights; drop --weights")
    return PixelEncoder(image_size, patch)
