"""A tiny KL autoencoder (diffusers `AutoencoderKL`, stride 8: 64 px -> 8 x 8 latents) trained with an L1 + MSE
reconstruction loss and a small KL term, as VAEs of latent generative models are (without their perceptual and
adversarial terms)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from rich.console import Console

from experiments.pretrain.common import OptimConfig, Pretrained, reuse_or_train, summary, train
from experiments.pretrain.data import PREPROCESS, StreamConfig, batches, cached_stream, identity


@dataclass(frozen=True)
class TinyVAEConfig:
    """Architecture (`AutoencoderKL` arguments), KL weight, optimisation and data of the tiny VAE."""

    block_out_channels: tuple[int, ...] = (8, 16, 32, 32)
    layers_per_block: int = 1
    latent_channels: int = 16
    norm_num_groups: int = 4
    kl_weight: float = 1e-5
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(steps=200, batch_size=12, lr=2e-3))
    data: StreamConfig = field(default_factory=StreamConfig)

    def architecture(self) -> dict:
        levels = len(self.block_out_channels)
        return dict(in_channels=3, out_channels=3, block_out_channels=self.block_out_channels,
                    down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
                    layers_per_block=self.layers_per_block, latent_channels=self.latent_channels,
                    norm_num_groups=self.norm_num_groups, sample_size=PREPROCESS.image_size)


def build_vae(config: TinyVAEConfig) -> AutoencoderKL:
    return AutoencoderKL(**config.architecture())


def vae_losses(vae: AutoencoderKL, pixels: torch.Tensor, kl_weight: float,
               generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Reconstruction (L1 + MSE of a posterior sample's decoding) and KL to N(0, I) per latent element."""
    posterior = vae.encode(pixels).latent_dist
    decoded = vae.decode(posterior.sample(generator=generator)).sample
    reconstruction = F.l1_loss(decoded, pixels) + F.mse_loss(decoded, pixels)
    kl = posterior.kl().mean() / posterior.mean[0].numel()
    return {"loss": reconstruction + kl_weight * kl, "reconstruction": reconstruction, "kl": kl}


def pretrain_vae(config: TinyVAEConfig, root: str | os.PathLike, console: Console | None = None) -> Pretrained:
    """Train the tiny VAE, or load it from `root` when this configuration was trained before."""
    torch.manual_seed(config.optim.seed)
    vae = build_vae(config)

    def fit() -> dict:
        stream = cached_stream(config.data, console)
        generator = torch.Generator().manual_seed(config.optim.seed)
        curves, seconds = train(
            vae.parameters(), lambda idx: vae_losses(vae, stream.pixels(idx), config.kl_weight, generator),
            batches(len(stream), config.optim.batch_size, config.optim.steps, config.optim.seed), config.optim,
            "pretraining tiny VAE", console)
        return {"architecture": config.architecture(), "preprocess": PREPROCESS.to_dict(), "training": asdict(config),
                "stream": stream.counts(), "parameters": sum(p.numel() for p in vae.parameters()),
                "seconds": seconds, "losses": summary(curves), "curves": curves}

    return reuse_or_train("vae", identity(config), {"vae": vae}, root, fit)
