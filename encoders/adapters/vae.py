"""KL autoencoders as encoders: MAR's KL-16 and the Stable Diffusion VAE (ft-EMA / ft-MSE).

Features: "posterior_mean" (default; the latent mean, unscaled: KL-16 16 x 16 x 16, SD 4 x 32 x 32 at 256 px) or
"last_block" (the encoder trunk after the mid block, before norm_out / conv_out: 512 channels at the same grid).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL

from encoders.adapters.common import (
    explain,
    family,
    family_error,
    is_hub_id,
    load_diffusers,
    looks_like,
    unwrap,
)
from encoders.adapters.conv import ConvLatentEncoder
from harmon.checkpoints import CheckpointError, check_keys, load_file, resolve, tensors_only
from harmon.vae import build_kl16, diffusers_to_ldm, ldm_to_diffusers, load_kl16


class VAEEncoder(ConvLatentEncoder):
    """The encoder half of a diffusers `AutoencoderKL`; the decoder is kept only for `reconstruct`."""

    features = ("posterior_mean", "last_block")

    def __init__(self, name: str, vae: AutoencoderKL, feature: str = "posterior_mean", image_size: int = 256):
        super().__init__(name, vae.encoder, vae.quant_conv, feature, image_size)
        self.latent_channels = vae.config.latent_channels
        self.keep_decoder(vae)

    @torch.no_grad()
    def reconstruct(self, pixels: torch.Tensor) -> torch.Tensor:
        """Decode the posterior mean (no sampling), as reconstruction metrics of a KL autoencoder are taken."""
        vae = self.autoencoder_on(pixels)
        return vae.decode(vae.encode(pixels).latent_dist.mode()).sample

    def latent(self, moments: torch.Tensor) -> torch.Tensor:
        return moments[:, : self.latent_channels]


def sd_vae_config(**overrides: Any) -> dict:
    """diffusers `AutoencoderKL` arguments of the SD VAE (f8, 4 latent channels); block types follow the widths."""
    config: dict[str, Any] = dict(
        in_channels=3, out_channels=3, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
        latent_channels=4, norm_num_groups=32, act_fn="silu", sample_size=256, scaling_factor=0.18215,
    )
    config.update(overrides)
    levels = len(config["block_out_channels"])
    config.setdefault("down_block_types", ("DownEncoderBlock2D",) * levels)
    config.setdefault("up_block_types", ("UpDecoderBlock2D",) * levels)
    return config


def _sd_from_file(name: str, source: str, config: dict) -> AutoencoderKL:
    """An original-layout (LDM) or diffusers-layout single file: `{"state_dict": ...}` or bare, prefixes stripped."""
    path = resolve(source)
    raw = load_file(path)
    state = dict(unwrap(raw, ("state_dict", "model")))
    for prefix in ("first_stage_model.", "vae."):
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    state = {k: v for k, v in state.items() if not k.startswith("loss.")}
    kind = family(state)
    if kind not in ("ldm-kl", "diffusers-kl"):
        raise family_error(name, path, raw, "an SD VAE state dict")
    state = tensors_only(state, f"{name} weights in {path}")
    vae = AutoencoderKL(**config)
    what, hint = f"{name} weights in {path}", looks_like(state) + " (the SD VAE: 4 latent channels, 4 levels)"
    if kind == "diffusers-kl":
        check_keys(vae, state, what, looks_like=hint)
    else:
        levels = len(vae.config.block_out_channels)
        check_keys(diffusers_to_ldm(vae.state_dict(), levels), state, what, looks_like=hint)
        state = ldm_to_diffusers(state, levels)
    vae.load_state_dict(state, strict=True)
    return vae


def build_sd_vae(name: str, weights: str | None, config: dict | None) -> AutoencoderKL:
    """weights: a diffusers directory or hub id, an original .ckpt/.safetensors, "random"."""
    if weights == "random":
        return AutoencoderKL(**sd_vae_config(**(config or {})))
    source = os.path.expanduser(weights)
    if Path(source).is_dir() or is_hub_id(source):
        return load_diffusers(AutoencoderKL, source)
    return _sd_from_file(name, source, sd_vae_config(**(config or {})))


def build_vae_kl16(weights: str | None = None, feature: str = "posterior_mean", config: dict | None = None,
                   image_size: int = 256) -> VAEEncoder:
    """MAR's KL-16. config: `harmon.vae.kl16_config`-style AutoencoderKL arguments (e.g. `tiny_kl16_config()`)."""
    if weights == "random":
        return VAEEncoder("vae-kl16", build_kl16(config), feature, image_size)
    source = weights
    try:
        vae = load_kl16(source, config)
    except CheckpointError as err:
        raise explain(err, "vae-kl16", source) from err
    return VAEEncoder("vae-kl16", vae, feature, image_size)


def build_vae_sd_ema(weights: str | None = None, feature: str = "posterior_mean", config: dict | None = None,
                     image_size: int = 256) -> VAEEncoder:
    """SD VAE ft-EMA. config: overrides of `sd_vae_config()` (random init and single-file loading only)."""
    return VAEEncoder("vae-sd-ema", build_sd_vae("vae-sd-ema", weights, config), feature, image_size)


def build_vae_sd_mse(weights: str | None = None, feature: str = "posterior_mean", config: dict | None = None,
                     image_size: int = 256) -> VAEEncoder:
    """SD VAE ft-MSE. config: overrides of `sd_vae_config()` (random init and single-file loading only)."""
    return VAEEncoder("vae-sd-mse", build_sd_vae("vae-sd-mse", weights, config), feature, image_size)
