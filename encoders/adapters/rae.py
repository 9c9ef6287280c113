"""RAE (representation autoencoders) through diffusers' `AutoencoderRAE`: the frozen DINOv2-with-registers,
SigLIP 2 or MAE encoder of a released RAE and its latent normalisation; the ViT decoder is dropped.

Tokens: the RAE latent (B, C, h, w) flattened row-major, i.e. the encoder's patch tokens normalised with the
checkpoint's latent mean / std and scaled by its scaling factor (what the diffusion model reads). Prefix: the
tokens RAE strips (DINOv2: CLS + 4 registers, MAE: CLS, SigLIP 2: none), unnormalised. Pooling "mean". Grid: encoder_input_size / encoder_patch_size (16 x 16 for the
released 224 px DINOv2 and 256 px SigLIP 2 models). Preprocessing: resize to the encoder input size, the
checkpoint's encoder mean / std. `layer=k` gives the raw output of encoder layer k (patch tokens only); several
layers come from one pass.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers import AutoencoderRAE
from torch import nn

from encoders.adapters.capture import block_outputs
from encoders.adapters.common import freeze, is_hub_id, load_diffusers, resolve_layer
from encoders.base import Encoder, Preprocess
from harmon.checkpoints import CheckpointError

# encoder_type -> prefix tokens the RAE strips from the transformer output
STRIPPED = {"dinov2": 5, "siglip2": 0, "mae": 1}


class RAEEncoder(Encoder):
    """The encoder half of an `AutoencoderRAE`."""

    poolings = ("mean",)
    default_pooling = "mean"

    def __init__(self, name: str, rae: AutoencoderRAE):
        config = rae.config
        super().__init__(Preprocess(image_size=config.encoder_input_size, crop="resize",
                                    mean=tuple(rae.encoder_mean.flatten().tolist()),
                                    std=tuple(rae.encoder_std.flatten().tolist()), interpolation="bicubic"))
        self.name = name
        self.kind = config.encoder_type
        rae.decoder = None
        self.rae = freeze(rae)
        self.patch = config.encoder_patch_size
        self.num_prefix_tokens = STRIPPED[self.kind]

    def layers(self) -> nn.ModuleList:
        model = self.rae.encoder
        for path in ("encoder.layer", "layers", "vision_model.encoder.layers", "encoder.layers"):
            found = model
            for part in path.split("."):
                found = getattr(found, part, None)
            if isinstance(found, nn.ModuleList):
                return found
        raise RuntimeError(f"{self.name}: no transformer layer list found in {type(model).__name__}")

    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        size = self.rae.config.encoder_input_size
        if (height, width) != (size, size):
            raise ValueError(f"{self.name}: takes {size}x{size} images (its encoder input size), got {height}x{width}; "
                             f"resize to {size}x{size}")
        return size // self.patch, size // self.patch

    def num_layers(self) -> int:
        return len(self.layers())

    def cam_layer(self) -> nn.Module:
        return self.layers()[-1]

    def _transformer(self, pixels: torch.Tensor) -> torch.Tensor:
        model = self.rae.encoder
        if self.kind == "siglip2":
            return model(pixels, interpolate_pos_encoding=True).last_hidden_state
        if self.kind == "mae":  # RAE's MAE forward: the identity order as "noise", so no token is masked
            count = (pixels.shape[-2] // self.patch) * (pixels.shape[-1] // self.patch)
            noise = torch.arange(count, device=pixels.device, dtype=pixels.dtype).expand(len(pixels), -1)
            return model(pixels, noise, interpolate_pos_encoding=True).last_hidden_state
        return model(pixels).last_hidden_state

    def forward_sequence(self, pixels: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        return self.forward_layers(pixels, [layer])[0]

    def forward_layers(self, pixels: torch.Tensor, layers: Sequence[int | None]) -> list[torch.Tensor]:
        """One pass of the transformer; earlier layers recorded by hooks, the last one as the RAE latent."""
        grid = self.grid_for(*pixels.shape[-2:])
        last = self.num_layers() - 1
        indices = [resolve_layer(layer, self.num_layers(), self.name) for layer in layers]
        inner = sorted(set(indices) - {last})
        with block_outputs([self.layers()[i] for i in inner]) as captured:
            sequence = self._transformer(pixels)
        found = {index: captured[position] for position, index in enumerate(inner)}
        if last in indices:
            strip = self.num_prefix_tokens
            tokens = sequence[:, strip:]
            z = tokens.transpose(1, 2).reshape(len(tokens), -1, *grid)
            z = self.rae._normalize_latents(z) * self.rae.config.scaling_factor
            found[last] = torch.cat([sequence[:, :strip], z.flatten(2).transpose(1, 2)], dim=1)
        return [found[index] for index in indices]

    def describe(self) -> dict:
        return {**super().describe(), "encoder_type": self.kind, "scaling_factor": self.rae.config.scaling_factor,
                "layers": "encoder layer k raw output (patch tokens); the last one as the normalised RAE latent"}


def build_rae(weights: str | None = None, name: str = "rae", config: dict | None = None) -> RAEEncoder:
    """weights: a diffusers AutoencoderRAE folder or hub id, or "random" (config: AutoencoderRAE arguments)."""
    if weights is None:
        raise CheckpointError(f"{name}: no default weights; pass an AutoencoderRAE folder or hub id")
    if weights == "random":
        return RAEEncoder(name, AutoencoderRAE(**dict(config or {})))
    source = os.path.expanduser(weights)
    if not (Path(source).is_dir() or is_hub_id(source)):
        raise CheckpointError(f"{name}: {weights!r} is not a diffusers AutoencoderRAE folder or hub id")
    return RAEEncoder(name, load_diffusers(AutoencoderRAE, source))
