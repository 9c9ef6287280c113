"""The MAR encoder as trained inside Harmon, read from a `harmon_*.pth` file, before or after `proj_in`.

Probing it beside the original MAR release shows what multimodal training did to the encoder. Features:
`projected=False` (default) gives the MAR encoder output (B, 64 + h*w, C_mar); `projected=True` applies Harmon's
`proj_in` MLP (Linear-SiLU-Linear, C_mar -> LLM width), i.e. what the LLM receives before the buffer reordering.
Harmon reads images at 512 px; pass `image_size=` to choose (256 px gives the MAR's native 16 x 16 grid).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from encoders.adapters.common import explain, resolve_layer
from encoders.adapters.mar import MAREncoder
from harmon.checkpoints import CheckpointError, check_keys, load_file
from harmon.layers import silu_mlp
from harmon.mar import MAR, mar_config
from harmon.mar_loading import infer_mar_config, mar_state_from_file
from harmon.vae import build_kl16, load_kl16


def projector(state: Mapping[str, torch.Tensor], what: str) -> nn.Sequential:
    """Harmon's proj_in (Linear, SiLU, Linear) loaded strictly from `proj_in.*` keys."""
    weights = {k[len("proj_in.") :]: v for k, v in state.items() if k.startswith("proj_in.")}
    if "0.weight" not in weights or "2.weight" not in weights:
        raise CheckpointError(f"{what} has no proj_in.0/proj_in.2 weights; is it a Harmon checkpoint?")
    hidden, width = weights["0.weight"].shape
    proj = silu_mlp(width, hidden, hidden)
    check_keys(proj, weights, f"{what} (proj_in)")
    proj.load_state_dict(weights)
    return proj


class HarmonMAREncoder(MAREncoder):
    """MAR encoder from a Harmon checkpoint; optionally followed by `proj_in`."""

    def __init__(self, name: str, mar: MAR, vae, proj_in: nn.Sequential | None, image_size: int):
        super().__init__(name, mar, vae, image_size)
        self.proj_in = proj_in.requires_grad_(False) if proj_in is not None else None

    def _encode(self, pixels: torch.Tensor, layers: Sequence[int | None], mask: torch.Tensor | None) -> list[torch.Tensor]:
        """The MAR encoder's layers; the last one through `proj_in` when projected."""
        sequences = super()._encode(pixels, layers, mask)
        if self.proj_in is None:
            return sequences
        last = self.num_layers() - 1
        return [self.proj_in(x) if resolve_layer(layer, self.num_layers(), self.name) == last else x
                for x, layer in zip(sequences, layers, strict=True)]

    def describe(self) -> dict:
        return {**super().describe(), "projected": self.proj_in is not None}


def build_harmon_mar(name: str, weights: str | os.PathLike | None, vae: str | os.PathLike | None,
                     projected: bool, image_size: int, config: Mapping[str, Any] | None,
                     vae_config: Mapping[str, Any] | None, size: str) -> HarmonMAREncoder:
    """weights: a Harmon-format checkpoint (the release, or one trained further such as RecA's), or "random"."""
    if weights == "random":
        variant, width = RANDOM_SHAPES[size]
        mar = MAR(mar_config(variant, **dict(config or {})))
        hidden = mar.config.encoder_embed_dim
        proj = silu_mlp(hidden, width, width) if projected else None
        kl16 = build_kl16(vae_config) if vae in (None, "random") else load_kl16(vae, vae_config)
        return HarmonMAREncoder(name, mar, kl16, proj, image_size)
    source = weights
    try:
        state = load_file(source)
        mar_state = mar_state_from_file(state)
        mar = MAR(infer_mar_config(mar_state, **dict(config or {})))
        check_keys(mar, mar_state, f"the mar.* part of {source}")
        mar.load_state_dict(mar_state)
        proj = projector(state, str(source)) if projected else None
        kl16 = build_kl16(vae_config) if vae == "random" else load_kl16(vae or "kl16", vae_config)
    except CheckpointError as err:
        raise explain(err, name, source) from err
    return HarmonMAREncoder(name, mar, kl16, proj, image_size)


# model size -> (MAR variant, LLM width) of the release, for random initialisation
RANDOM_SHAPES = {"0.5b": ("mar_base", 896), "1.5b": ("mar_huge", 1536)}


def build_harmon_05b(weights: str | None = None, vae: str | None = None, projected: bool = False,
                     image_size: int = 512, config: Mapping[str, Any] | None = None,
                     vae_config: Mapping[str, Any] | None = None, name: str = "harmon-0.5b-mar") -> HarmonMAREncoder:
    """The MAR-B encoder inside Harmon-0.5B or a model trained on from it (options: projected, image_size, vae)."""
    return build_harmon_mar(name, weights, vae, projected, image_size, config, vae_config, "0.5b")


def build_harmon_15b(weights: str | None = None, vae: str | None = None, projected: bool = False,
                     image_size: int = 512, config: Mapping[str, Any] | None = None,
                     vae_config: Mapping[str, Any] | None = None, name: str = "harmon-1.5b-mar") -> HarmonMAREncoder:
    """The MAR-H encoder inside Harmon-1.5B or a model trained on from it (options: projected, image_size, vae)."""
    return build_harmon_mar(name, weights, vae, projected, image_size, config, vae_config, "1.5b")
