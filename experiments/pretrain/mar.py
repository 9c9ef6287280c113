"""A tiny MAR (harmon `MAR`: encoder / decoder ViTs and a diffusion MLP head) trained with its masked diffusion
loss on the tiny VAE's latents (posterior mode x a scale that makes their standard deviation 1). Unconditional:
one class, every label 0, and every buffer slot holds `fake_latent` (label drop probability 1), which is exactly
how the encoder is read for features, so no label information enters."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import torch
from diffusers import AutoencoderKL
from rich.console import Console
from rich.progress import track

from experiments.pretrain.common import OptimConfig, Pretrained, reuse_or_train, summary, train
from experiments.pretrain.data import PREPROCESS, ImageStream, StreamConfig, batches, cached_stream, identity
from harmon.mar import MAR, MARConfig


@dataclass(frozen=True)
class TinyMARConfig:
    """Sizes of the tiny MAR, optimisation and data; latent channels and stride come from the VAE."""

    encoder_embed_dim: int = 96
    encoder_depth: int = 4
    encoder_num_heads: int = 4
    decoder_embed_dim: int = 64
    decoder_depth: int = 2
    decoder_num_heads: int = 4
    buffer_size: int = 8
    diffloss_d: int = 2
    diffloss_w: int = 128
    diffusion_batch_mul: int = 1
    dropout: float = 0.0
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(steps=250, batch_size=32, lr=1e-3,
                                                                    weight_decay=0.02))
    data: StreamConfig = field(default_factory=StreamConfig)

    def architecture(self, latent_channels: int, vae_stride: int) -> MARConfig:
        return MARConfig(
            img_size=PREPROCESS.image_size, vae_stride=vae_stride, patch_size=1, vae_embed_dim=latent_channels,
            encoder_embed_dim=self.encoder_embed_dim, encoder_depth=self.encoder_depth,
            encoder_num_heads=self.encoder_num_heads, decoder_embed_dim=self.decoder_embed_dim,
            decoder_depth=self.decoder_depth, decoder_num_heads=self.decoder_num_heads, buffer_size=self.buffer_size,
            class_num=1, label_drop_prob=1.0, attn_dropout=self.dropout, proj_dropout=self.dropout,
            diffloss_d=self.diffloss_d, diffloss_w=self.diffloss_w, diffusion_batch_mul=self.diffusion_batch_mul)


@torch.no_grad()
def posterior_modes(vae: AutoencoderKL, stream: ImageStream, batch_size: int = 256,
                    console: Console | None = None) -> torch.Tensor:
    """Unscaled posterior modes (N, C, h, w) of every image of the stream."""
    starts = track(range(0, len(stream), batch_size), description="encoding the stream with the VAE", console=console)
    chunks = [vae.encode(stream.pixels(torch.arange(i, min(i + batch_size, len(stream))))).latent_dist.mode()
              for i in starts]
    return torch.cat(chunks)


def pretrain_mar(config: TinyMARConfig, vae: Pretrained, root: str | os.PathLike,
                 console: Console | None = None) -> Pretrained:
    """Train the tiny MAR on latents of `vae` (a tiny VAE from `pretrain_vae`), or load it from `root`.

    The record holds `latent_scale`: MAR tokens are `posterior mode x latent_scale`.
    """
    autoencoder = vae.modules["vae"]
    stride = 2 ** (len(autoencoder.config.block_out_channels) - 1)
    architecture = config.architecture(autoencoder.config.latent_channels, stride)
    torch.manual_seed(config.optim.seed)
    model = MAR(architecture)

    def fit() -> dict:
        stream = cached_stream(config.data, console)
        modes = posterior_modes(autoencoder, stream, console=console)
        scale = float(1.0 / modes.std())
        latents = modes * scale
        labels = torch.zeros(config.optim.batch_size, dtype=torch.long)
        generator = torch.Generator().manual_seed(config.optim.seed)
        curves, seconds = train(
            model.parameters(), lambda idx: {"loss": model(latents[idx], labels[: len(idx)], generator)},
            batches(len(stream), config.optim.batch_size, config.optim.steps, config.optim.seed), config.optim,
            "pretraining tiny MAR", console)
        return {"architecture": architecture.to_dict(), "preprocess": PREPROCESS.to_dict(), "training": asdict(config),
                "latent_scale": scale, "latent_std_unscaled": float(modes.std()), "stream": stream.counts(),
                "parameters": sum(p.numel() for p in model.parameters()), "seconds": seconds,
                "losses": summary(curves), "curves": curves}

    parts = {"config": identity(config), "vae": vae.record["config_hash"], "vae_weights": vae.record["weights_digest"]}
    return reuse_or_train("mar", parts, {"mar": model}, root, fit)
