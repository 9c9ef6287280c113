"""The MAR encoder over KL-16 latents (MAR-B / L / H), as Harmon reads images.

Pixels in [-1, 1] -> KL-16 posterior mode x 0.2325 -> patchify -> the unmasked MAR encoder with all buffer slots
filled with `fake_latent` (no class label enters). Output (B, 64 + h*w, D): the 64 buffer tokens are the prefix,
then the 16 x 16 image tokens at 256 px (D = 768 / 1024 / 1280). Poolings: "mean" of the image tokens (default) and
"buffer_mean". Other sizes that are multiples of 16 give other grids (position embeddings resized bilinearly).
Several layers come from one pass. With a token mask (`forward_masked_layers`) the hidden tokens are dropped before
the encoder blocks as in MAR's generation; "mean" then averages the visible image tokens.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from diffusers import AutoencoderKL
from torch import nn

from encoders.adapters.capture import block_outputs
from encoders.adapters.common import explain, freeze, resolve_layer
from encoders.base import Encoder, Preprocess
from harmon.checkpoints import CheckpointError
from harmon.mar import MAR, mar_config
from harmon.mar_loading import load_mar
from harmon.vae import KL16_SCALE, build_kl16, encode, load_kl16

# MAR parts that image features never use: the class table, the decoder and the diffusion head
UNUSED = ("class_emb", "decoder_embed", "mask_token", "decoder_pos_embed_learned", "decoder_blocks", "decoder_norm",
          "diffusion_pos_embed_learned", "diffloss")


class MAREncoder(Encoder):
    """KL-16 encoder + MAR encoder; the MAR decoder, diffusion head and class embeddings are dropped.

    With `vae=None` the MAR reads pixel patches directly (an MAE-style model over pixels: `vae_stride` 1, the
    patch size as token size, 3 input channels).
    """

    poolings = ("mean", "buffer_mean")
    default_pooling = "mean"
    masks_tokens = True

    def __init__(self, name: str, mar: MAR, vae: AutoencoderKL | None, image_size: int | None = None,
                 latent_scale: float = KL16_SCALE):
        channels = 3 if vae is None else vae.config.latent_channels
        if channels != mar.config.vae_embed_dim:
            source = "pixels have" if vae is None else "the VAE has"
            raise ValueError(f"{name}: {source} {channels} channels, the MAR expects {mar.config.vae_embed_dim}")
        super().__init__(Preprocess(image_size=image_size or mar.config.img_size, crop="center",
                                    mean=(0.5,) * 3, std=(0.5,) * 3))
        self.name = name
        self.latent_scale = latent_scale
        for part in UNUSED:
            delattr(mar, part)
        self.mar = freeze(mar)
        self.vae = None
        if vae is not None:
            vae.decoder = vae.post_quant_conv = None
            self.vae = freeze(vae)
        self.num_prefix_tokens = mar.buffer_size
        vae_stride = 1 if vae is None else 2 ** (len(vae.config.block_out_channels) - 1)
        self.stride = vae_stride * mar.config.patch_size

    def no_decoder_error(self) -> ValueError:
        return ValueError(f"encoder {self.name!r} (MAR) cannot reconstruct images: its features never decode to "
                          "pixels, and its generative path (the MAR decoder and diffusion head, dropped here) samples "
                          "latents rather than reconstructing them; measure its VAE instead (e.g. vae-kl16)")

    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        s = self.stride
        if height % s or width % s:
            fix = f"{max(s, round(height / s) * s)}x{max(s, round(width / s) * s)}"
            raise ValueError(f"{self.name}: a {height}x{width} image does not split into {s}-pixel tokens (VAE "
                             f"stride x MAR patch); resize or crop it to multiples of {s} (e.g. {fix})")
        return height // s, width // s

    def num_layers(self) -> int:
        return len(self.mar.encoder_blocks)

    def cam_layer(self) -> nn.Module:
        return self.mar.encoder_blocks[-1]

    def cam_layer_for(self, pooling: str | None = None) -> nn.Module:
        """The last encoder block; for "buffer_mean" its input norm, since the last block's buffer outputs do not
        depend on that block's own image-token outputs."""
        if (pooling or self.default_pooling) == "buffer_mean":
            return self.mar.encoder_blocks[-1].norm1
        return self.cam_layer()

    def forward_sequence(self, pixels: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        """Tokens after encoder block `layer` (the last one is followed by encoder_norm)."""
        return self.forward_layers(pixels, [layer])[0]

    def forward_layers(self, pixels: torch.Tensor, layers: Sequence[int | None]) -> list[torch.Tensor]:
        return self._encode(pixels, layers, None)

    def forward_masked_layers(self, pixels: torch.Tensor, layers: Sequence[int | None],
                              mask: torch.Tensor) -> list[torch.Tensor]:
        """The encoder as MAR's generation runs it: the tokens where `mask` is True are dropped before the
        blocks, the buffers hold `fake_latent`; (B, 64 + visible, D)."""
        return self._encode(pixels, layers, mask.to(device=pixels.device, dtype=torch.bool))

    def _encode(self, pixels: torch.Tensor, layers: Sequence[int | None], mask: torch.Tensor | None) -> list[torch.Tensor]:
        """One pass up to the deepest block asked for, the earlier ones recorded by hooks."""
        grid = self.grid_for(*pixels.shape[-2:])
        indices = [resolve_layer(layer, self.num_layers(), self.name) for layer in layers]
        deepest = max(indices)
        latents = pixels if self.vae is None else encode(self.vae, pixels, scale=self.latent_scale)
        tokens = self.mar.patchify(latents)
        buffers = self.mar.fake_latent.expand(len(tokens), -1)
        inner = sorted(set(indices) - {deepest})
        with block_outputs([self.mar.encoder_blocks[i] for i in inner]) as captured:
            found = {deepest: self.mar.forward_mae_encoder(tokens, mask, buffers, grid, num_blocks=deepest + 1)}
        found.update({index: captured[position] for position, index in enumerate(inner)})
        return [found[index] for index in indices]

    def describe(self) -> dict:
        latents = "pixel patches" if self.vae is None else f"posterior mode x {self.latent_scale}"
        return {**super().describe(), "mar": self.mar.config.to_dict(), "latents": latents,
                "buffers": "fake_latent", "default_pooling": self.default_pooling,
                "layers": "encoder_blocks[k]; the last block followed by encoder_norm"}


def build_mar(name: str, variant: str, weights: str | os.PathLike | None, vae: str | os.PathLike | None,
              config: Mapping[str, Any] | None, vae_config: Mapping[str, Any] | None, ema: bool,
              image_size: int | None) -> MAREncoder:
    """weights: a checkpoint path / known name (the registry passes the official release), or "random".

    config: MARConfig overrides (with a file, the structure is read off the file and `config` adds what shapes do
    not tell, e.g. head counts). vae: KL-16 source (default "kl16", or "random" when weights="random").
    """
    config = dict(config or {})
    if weights == "random":
        mar = MAR(mar_config(variant, **config))
    else:
        source = weights
        try:
            mar = load_mar(source, variant=None if config else variant, ema=ema, **config)
        except CheckpointError as err:
            raise explain(err, name, source) from err
    vae = vae or ("random" if weights == "random" else "kl16")
    if vae == "random":
        kl16 = build_kl16(vae_config)
    else:
        try:
            kl16 = load_kl16(vae, vae_config)
        except CheckpointError as err:
            raise explain(err, f"{name} (vae=)", vae) from err
    return MAREncoder(name, mar, kl16, image_size)


def build_mar_b(weights: str | None = None, vae: str | None = None, config: Mapping[str, Any] | None = None,
                vae_config: Mapping[str, Any] | None = None, ema: bool = True,
                image_size: int | None = None) -> MAREncoder:
    """MAR-B (encoder 768 x 12). See `build_mar` for the options."""
    return build_mar("mar-b", "mar_base", weights, vae, config, vae_config, ema, image_size)


def build_mar_l(weights: str | None = None, vae: str | None = None, config: Mapping[str, Any] | None = None,
                vae_config: Mapping[str, Any] | None = None, ema: bool = True,
                image_size: int | None = None) -> MAREncoder:
    """MAR-L (encoder 1024 x 16). See `build_mar` for the options."""
    return build_mar("mar-l", "mar_large", weights, vae, config, vae_config, ema, image_size)


def build_mar_h(weights: str | None = None, vae: str | None = None, config: Mapping[str, Any] | None = None,
                vae_config: Mapping[str, Any] | None = None, ema: bool = True,
                image_size: int | None = None) -> MAREncoder:
    """MAR-H (encoder 1280 x 20). See `build_mar` for the options."""
    return build_mar("mar-h", "mar_huge", weights, vae, config, vae_config, ema, image_size)
