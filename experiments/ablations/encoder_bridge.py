"""Any `encoders.base.Encoder` as the `VisualEncoder` Harmon's understanding seam takes (Table 5's encoder swap).

Harmon hands the seam pixels (B, 3, S, S) in [-1, 1]; `EncoderTokens` maps them to the encoder's own input (its
preprocess size and normalisation) and returns its full token sequence, prefix tokens included.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.fx.experimental._config as fx_config
import torch.nn.functional as F
from rich.console import Console
from torch import nn

from encoders.base import Encoder
from encoders.registry import create_encoder
from experiments.figure2_mini import MiniScale, pretrain_encoders, scale_preset, wrap_encoders
from harmon.model import Harmon
from harmon.understanding import PluggedEncoder

TABLE5_ENCODERS = ("SigLIP", "VQGAN", "VAE", "MAR")
PAPER_ENCODERS = {"SigLIP": "siglip-b16", "VQGAN": "vqgan", "VAE": "vae-kl16", "MAR": "mar-b"}
_MODES = {"bicubic": "bicubic", "bilinear": "bilinear", "nearest": "nearest", "box": "area"}


class EncoderTokens(nn.Module):
    """Harmon pixels in [-1, 1] -> the encoder's token sequence (B, P + N, D); `embed_dim` = D.

    Frozen (the default): no parameter takes gradients, the encoder stays in eval mode under `.train()` and runs
    without autograd. `trainable=True` trains every parameter of the encoder.
    """

    def __init__(self, encoder: Encoder, trainable: bool = False):
        super().__init__()
        self.encoder = encoder.requires_grad_(trainable)
        self.trainable = trainable
        self.encoder.train(trainable and self.training)
        size = encoder.preprocess.image_size
        reference = next(encoder.parameters(), None)
        probe = torch.zeros(1, 3, size, size, device=reference.device if reference is not None else None,
                            dtype=reference.dtype if reference is not None else None)
        # on the meta device, boolean row selection (MAR's unmasked rows) is shaped as if every row were kept
        with torch.no_grad(), fx_config.patch(meta_nonzero_assume_all_nonzero=probe.is_meta):
            self.embed_dim = int(encoder.forward_sequence(probe).shape[-1])

    def train(self, mode: bool = True) -> EncoderTokens:
        super().train(mode)
        self.encoder.train(mode and self.trainable)
        return self

    def to_encoder_input(self, pixels: torch.Tensor) -> torch.Tensor:
        """[-1, 1] pixels -> [0, 1], resized (and centre-cropped as its preprocess does) to the encoder's size,
        then normalised with its mean/std."""
        pre = self.encoder.preprocess
        x = (pixels.float() + 1) / 2
        if x.shape[-1] != pre.image_size or x.shape[-2] != pre.image_size:
            mode = _MODES[pre.interpolation]
            resize = round(pre.image_size / pre.crop_pct) if pre.crop == "center" else pre.image_size
            smooth = {"antialias": True} if mode in ("bilinear", "bicubic") else {}
            x = F.interpolate(x, size=(resize, resize), mode=mode, **smooth).clamp(0, 1)
            start = (resize - pre.image_size) // 2
            x = x[..., start:start + pre.image_size, start:start + pre.image_size]
        mean = torch.tensor(pre.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(pre.std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        reference = next(self.encoder.parameters(), None)
        x = self.to_encoder_input(pixels)
        if reference is not None:
            x = x.to(device=reference.device, dtype=reference.dtype)
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            return self.encoder.forward_sequence(x)


def plug_encoder(model: Harmon, encoder: EncoderTokens) -> Harmon:
    """Make `encoder` (through a fresh projector to the LLM width) Harmon's understanding encoder; returns `model`."""
    plugged = PluggedEncoder(encoder, model.config.llm.hidden_size)
    model.understanding = plugged.to(device=model.device, dtype=model.dtype)
    return model


def tiny_encoders(scale: str | MiniScale, root: str | os.PathLike, seed: int = 0, console: Console | None = None,
                  trainable: bool = False) -> dict[str, EncoderTokens]:
    """The four mini-Figure-2 encoders ("SigLIP", "VQGAN", "VAE", "MAR"), pretrained under `root` or reloaded from
    there; `scale` is a `scale_preset` name ("mini", "micro") or a `MiniScale`."""
    preset = scale_preset(scale, seed) if isinstance(scale, str) else scale
    pretrained, _ = pretrain_encoders(preset, Path(root), console or Console(quiet=True))
    wrapped = wrap_encoders(pretrained)
    return {label: EncoderTokens(wrapped[label][0], trainable) for label in TABLE5_ENCODERS}


def paper_encoder(name: str, weights: str | None = None, trainable: bool = False, **options) -> EncoderTokens:
    """A paper-size encoder by Table 5 label ("SigLIP", "VQGAN", "VAE", "MAR") or registry name; `weights` and
    `options` go to `create_encoder` (weights="random" builds it without downloading)."""
    return EncoderTokens(create_encoder(PAPER_ENCODERS.get(name, name), weights, **options), trainable)
