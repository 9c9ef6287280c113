"""Shared base of the convolutional autoencoder encoders (VAE, VQGAN) built on a diffusers `Encoder` trunk."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from encoders.adapters.common import freeze, resolve_layer
from encoders.base import Encoder, Preprocess


class ConvLatentEncoder(Encoder):
    """Tokens are a (B, C, h, w) feature map flattened row-major over the latent grid (stride = 2^downsamplings).

    `layer=None` gives `feature`; `layer=k` gives the output of stage k of [*encoder.down_blocks,
    encoder.mid_block] (so -1 is the trunk after the mid block), average-pooled to the latent grid where the
    stage runs at a finer resolution; several layers come from one pass. Pooling: mean over the grid. No prefix
    tokens.
    """

    features: tuple[str, ...] = ("last_block",)

    def __init__(self, name: str, encoder: nn.Module, quant_conv: nn.Module | None, feature: str, image_size: int):
        if feature not in self.features:
            raise ValueError(f"{name}: feature={feature!r}; choose one of {self.features}")
        super().__init__(Preprocess(image_size=image_size, crop="center", mean=(0.5,) * 3, std=(0.5,) * 3))
        self.name = name
        self.feature = feature
        self.encoder = freeze(encoder)
        self.quant_conv = None if quant_conv is None else freeze(quant_conv)
        self.stride = 2 ** sum(block.downsamplers is not None for block in encoder.down_blocks)

    def latent(self, moments: torch.Tensor) -> torch.Tensor:
        """The chosen feature from the encoder output after quant_conv."""
        raise NotImplementedError

    def stages(self) -> list[nn.Module]:
        return [*self.encoder.down_blocks, self.encoder.mid_block]

    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        s = self.stride
        if height % s or width % s:
            fix = f"{max(s, round(height / s) * s)}x{max(s, round(width / s) * s)}"
            raise ValueError(f"{self.name}: a {height}x{width} image does not split into {s}-pixel latent cells; "
                             f"resize or crop it to multiples of {s} (e.g. {fix})")
        return height // s, width // s

    def num_layers(self) -> int:
        return len(self.stages())

    def cam_layer(self) -> nn.Module:
        if self.feature == "last_block":
            return self.encoder.mid_block
        return self.quant_conv if self.quant_conv is not None else self.encoder.conv_out

    def forward_layers(self, pixels: torch.Tensor, layers: Sequence[int | None]) -> list[torch.Tensor]:
        """One pass through the stages, up to the deepest one asked for (all of them for `None`)."""
        grid = self.grid_for(*pixels.shape[-2:])
        stages = self.stages()
        stops = [resolve_layer(layer, len(stages), self.name) for layer in layers]
        wanted = {stop for stop, layer in zip(stops, layers, strict=True) if layer is not None}
        h, maps = self.encoder.conv_in(pixels), {}
        for index, stage in enumerate(stages[: max(stops) + 1]):
            h = stage(h)
            if index in wanted:
                maps[index] = F.adaptive_avg_pool2d(h, grid) if h.shape[-2:] != grid else h
        if None in layers:
            maps[None] = self.final_feature(h)
        return [maps[layer if layer is None else stop].flatten(2).transpose(1, 2)
                for layer, stop in zip(layers, stops, strict=True)]

    def final_feature(self, h: torch.Tensor) -> torch.Tensor:
        """`feature` from the trunk output after the mid block."""
        if self.feature == "last_block":
            return h
        h = self.encoder.conv_out(self.encoder.conv_act(self.encoder.conv_norm_out(h)))
        return self.latent(h if self.quant_conv is None else self.quant_conv(h))

    def forward_sequence(self, pixels: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        return self.forward_layers(pixels, [layer])[0]

    def keep_decoder(self, autoencoder: nn.Module) -> None:
        """Keep the whole autoencoder for `reconstruct`, outside the module tree: the decoder is no part of the
        features, so it stays out of `state_dict`, the weights digest (feature-cache keys) and `.to()`."""
        self._autoencoder = (autoencoder.requires_grad_(False).eval(),)

    @property
    def has_decoder(self) -> bool:
        return getattr(self, "_autoencoder", None) is not None

    def autoencoder_on(self, pixels: torch.Tensor) -> nn.Module:
        """The kept autoencoder on the device of `pixels` (moved there on first use)."""
        if not self.has_decoder:
            raise self.no_decoder_error()
        return self._autoencoder[0].to(pixels.device)

    def describe(self) -> dict:
        return {**super().describe(), "feature": self.feature, "stride": self.stride,
                "layers": "stage k of down_blocks + mid_block, average-pooled to the latent grid"}
