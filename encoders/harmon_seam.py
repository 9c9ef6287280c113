"""Any `encoders.base.Encoder` as the `VisualEncoder` Harmon's understanding seam takes (Table 5's encoder swap).

Harmon hands the seam pixels (B, 3, S, S) in [-1, 1]; `EncoderTokens` maps them to the encoder's own input (its
preprocess size and normalisation) and returns its full token sequence, prefix tokens included, optionally
layer-normalised (no affine parameters) so that every encoder reaches its projector at the same scale. The width is
read off one forward pass of a blank image, which also works on the meta device (architecture only).
`BlindTokens` is the blind baseline of an encoder: zeros of the shape its tokens have, whatever the image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from encoders.base import Encoder
from harmon.model import Harmon
from harmon.understanding import PluggedEncoder

_MODES = {"bicubic": "bicubic", "bilinear": "bilinear", "nearest": "nearest", "box": "area"}


class EncoderTokens(nn.Module):
    """Harmon pixels in [-1, 1] -> the encoder's token sequence (B, P + N, D); `embed_dim` = D.

    Frozen (the default): no parameter takes gradients, the encoder stays in eval mode under `.train()` and runs
    without autograd. `trainable=True` trains every parameter of the encoder. `layer_norm=True` normalises each
    token over its D channels (zero mean, unit variance, no affine parameters) before it leaves.
    """

    def __init__(self, encoder: Encoder, trainable: bool = False, layer_norm: bool = False):
        super().__init__()
        self.encoder = encoder.requires_grad_(trainable)
        self.trainable = trainable
        self.encoder.train(trainable and self.training)
        size = encoder.preprocess.image_size
        reference = next(encoder.parameters(), None)
        probe = torch.zeros(1, 3, size, size, device=reference.device if reference is not None else None,
                            dtype=reference.dtype if reference is not None else None)
        with torch.no_grad():
            self.embed_dim = int(encoder.forward_sequence(probe).shape[-1])
        self.norm = nn.LayerNorm(self.embed_dim, elementwise_affine=False) if layer_norm else nn.Identity()

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
            return self.norm(self.encoder.forward_sequence(x))


class BlindTokens(nn.Module):
    """The blind baseline of `tokens`: zeros (B, N, D) of the shape `tokens` returns, for any pixels (B, 3, S, S).

    It holds no encoder and no parameters; only the shape is read off one forward pass of a blank image.
    """

    def __init__(self, tokens: EncoderTokens):
        super().__init__()
        size = tokens.encoder.preprocess.image_size
        with torch.no_grad():
            shape = tokens(torch.zeros(1, 3, size, size)).shape
        self.count, self.embed_dim = int(shape[1]), int(shape[2])

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels.new_zeros(pixels.shape[0], self.count, self.embed_dim)


def plug_encoder(model: Harmon, encoder: EncoderTokens | BlindTokens) -> Harmon:
    """Make `encoder` (through a fresh projector to the LLM width) Harmon's understanding encoder; returns `model`."""
    plugged = PluggedEncoder(encoder, model.config.llm.hidden_size)
    model.understanding = plugged.to(device=model.device, dtype=model.dtype)
    return model
