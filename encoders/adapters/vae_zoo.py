"""Representation-aligned KL autoencoders: VA-VAE (LightningDiT's f16d32, an LDM checkpoint) and the REPA-E
end-to-end VAEs (diffusers `AutoencoderKL` folders on the hub).

VA-VAE: `{"state_dict": ...}` with LDM names for encoder / decoder / quant_conv / post_quant_conv (the KL-16 layout:
ch 128, ch_mult 1-1-2-2-4, 2 ResNets per level, attention at 16 x 16, here 32 latent channels) beside training-only
entries (`loss.*`, `foundation_model.*`, `linear_proj.*`) that are left out; renamed to diffusers as
`harmon.vae` renames KL-16 and loaded strictly. Features as for every VAE: "posterior_mean" (32 x 16 x 16 at
256 px) or "last_block". No prefix tokens; pooling "mean".
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from diffusers import AutoencoderKL

from encoders.adapters.common import family, family_error, is_hub_id, load_diffusers, looks_like, unwrap
from encoders.adapters.vae import VAEEncoder
from harmon.checkpoints import CheckpointError, check_keys, load_file, resolve, tensors_only
from harmon.vae import build_kl16, diffusers_to_ldm, kl16_config, ldm_to_diffusers

VAE_PARTS = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")
TRAINING_ONLY = ("loss.", "foundation_model.", "linear_proj.")


def vavae_config(**overrides: Any) -> dict:
    """diffusers `AutoencoderKL` arguments of VA-VAE f16d32 (KL-16's geometry with 32 latent channels)."""
    return kl16_config(**{"latent_channels": 32, "scaling_factor": 1.0, **overrides})


def load_vavae(source: str | os.PathLike, config: dict | None = None) -> AutoencoderKL:
    """Strictly load a VA-VAE LDM checkpoint (training-only entries are left out, anything else must match)."""
    path = resolve(source)
    raw = load_file(path)
    state = dict(unwrap(raw, ("state_dict", "model")))
    if family(state) != "ldm-kl":
        raise family_error("vae-vavae-f16d32", path, raw, "a VA-VAE (LDM AutoencoderKL) checkpoint")
    unknown = sorted({k.split(".")[0] for k in state if not k.startswith(VAE_PARTS + TRAINING_ONLY)})
    if unknown:
        raise CheckpointError(f"vae-vavae-f16d32: {path} has entries {unknown} that are neither the autoencoder "
                              f"({', '.join(VAE_PARTS)}) nor training-only ({', '.join(TRAINING_ONLY)})")
    state = tensors_only({k: v for k, v in state.items() if k.startswith(VAE_PARTS)}, f"VA-VAE weights in {path}")
    vae = build_kl16(vavae_config(**(config or {})))
    levels = len(vae.config.block_out_channels)
    check_keys(diffusers_to_ldm(vae.state_dict(), levels), state, f"VA-VAE weights in {path}",
               looks_like=looks_like(state) + " (VA-VAE f16d32: 32 latent channels, 5 levels)")
    vae.load_state_dict(ldm_to_diffusers(state, levels), strict=True)
    return vae


def build_vavae(weights: str | None = None, feature: str = "posterior_mean", config: dict | None = None,
                image_size: int = 256) -> VAEEncoder:
    """VA-VAE f16d32 (weights: its .pt file, or "random"; config: overrides of `vavae_config()`)."""
    vae = build_kl16(vavae_config(**(config or {}))) if weights == "random" else load_vavae(weights, config)
    return VAEEncoder("vae-vavae-f16d32", vae, feature, image_size)


def build_diffusers_kl(weights: str | None = None, name: str = "vae-diffusers", feature: str = "posterior_mean",
                       config: dict | None = None, image_size: int = 256) -> VAEEncoder:
    """Any diffusers `AutoencoderKL` folder or hub id (the REPA-E VAEs); "random" builds one from `config`
    (AutoencoderKL keyword arguments)."""
    if weights is None:
        raise CheckpointError(f"{name}: no default weights; pass a diffusers AutoencoderKL folder or hub id")
    if weights == "random":
        return VAEEncoder(name, AutoencoderKL(**dict(config or {})), feature, image_size)
    source = os.path.expanduser(weights)
    if not (Path(source).is_dir() or is_hub_id(source)):
        raise CheckpointError(f"{name}: {weights!r} is not a diffusers AutoencoderKL folder or hub id "
                              "(config.json + diffusion_pytorch_model.safetensors)")
    return VAEEncoder(name, load_diffusers(AutoencoderKL, source), feature, image_size)
