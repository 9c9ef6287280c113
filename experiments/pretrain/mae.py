"""The MAE-on-pixels arm: the tiny MAR's encoder and decoder ViTs, masked the same way, but reading 8 x 8 pixel
patches and regressing the masked patches (per-patch normalised pixels, MAE's target) with a linear head instead of
a diffusion head on VAE latents. Beside MAR-on-latents it separates what masked modelling learns from what the
latent space and the diffusion loss add."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field

import torch
from rich.console import Console
from torch import nn

from experiments.pretrain.common import OptimConfig, Pretrained, reuse_or_train, summary, train
from experiments.pretrain.data import PREPROCESS, StreamConfig, batches, cached_stream, identity
from experiments.pretrain.mar import TinyMARConfig
from harmon.mar import MAR, MARConfig, mask_from_orders


@dataclass(frozen=True)
class TinyMAEConfig:
    """The ViTs of a `TinyMARConfig` (`vit`: encoder, decoder and buffer sizes; its diffusion-head fields are
    unused), the pixel patch size, optimisation and data."""

    vit: TinyMARConfig = field(default_factory=TinyMARConfig)
    patch_size: int = 8
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(steps=250, batch_size=32, lr=1e-3,
                                                                    weight_decay=0.02))
    data: StreamConfig = field(default_factory=StreamConfig)

    @property
    def decoder_embed_dim(self) -> int:
        return self.vit.decoder_embed_dim

    def architecture(self) -> MARConfig:
        v = self.vit
        return MARConfig(
            img_size=PREPROCESS.image_size, vae_stride=1, patch_size=self.patch_size, vae_embed_dim=3,
            encoder_embed_dim=v.encoder_embed_dim, encoder_depth=v.encoder_depth, encoder_num_heads=v.encoder_num_heads,
            decoder_embed_dim=v.decoder_embed_dim, decoder_depth=v.decoder_depth, decoder_num_heads=v.decoder_num_heads,
            buffer_size=v.buffer_size, class_num=1, label_drop_prob=1.0, attn_dropout=v.dropout,
            proj_dropout=v.dropout, diffloss_d=1, diffloss_w=8, diffusion_batch_mul=1)


def build_mae(config: TinyMAEConfig) -> tuple[MAR, nn.Linear]:
    """The masked ViTs (a MAR over pixel patches; its diffusion head is unused) and the pixel regression head."""
    mar = MAR(config.architecture())
    head = nn.Linear(config.decoder_embed_dim, mar.token_embed_dim)
    nn.init.xavier_uniform_(head.weight)
    nn.init.zeros_(head.bias)
    return mar, head


def mae_loss(mar: MAR, head: nn.Linear, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mean squared error on the masked patches against per-patch normalised pixels; mask ratio drawn as MAR's."""
    tokens = mar.patchify(pixels)
    b, seq_len, _ = tokens.shape
    orders = mar.sample_orders(b, seq_len, generator)
    mask = mask_from_orders(orders, math.ceil(seq_len * mar.sample_mask_ratio(generator)))
    buffers = mar.fake_latent.expand(b, -1)
    z = mar.forward_mae_decoder(mar.forward_mae_encoder(tokens, mask, buffers), mask)
    mean, var = tokens.mean(-1, keepdim=True), tokens.var(-1, keepdim=True)
    target = (tokens - mean) / (var + 1e-6).sqrt()
    error = (head(z) - target).pow(2).mean(-1)
    return (error * mask).sum() / mask.sum()


def pretrain_mae(config: TinyMAEConfig, root: str | os.PathLike, console: Console | None = None) -> Pretrained:
    """Train the tiny MAE on the stream's pixels, or load it from `root`. Modules: "mar" and "head"."""
    torch.manual_seed(config.optim.seed)
    mar, head = build_mae(config)

    def fit() -> dict:
        stream = cached_stream(config.data, console)
        generator = torch.Generator().manual_seed(config.optim.seed)
        curves, seconds = train(
            [*mar.parameters(), *head.parameters()],
            lambda idx: {"loss": mae_loss(mar, head, stream.pixels(idx), generator)},
            batches(len(stream), config.optim.batch_size, config.optim.steps, config.optim.seed), config.optim,
            "pretraining tiny MAE (pixels)", console)
        return {"architecture": config.architecture().to_dict(), "preprocess": PREPROCESS.to_dict(),
                "training": asdict(config), "stream": stream.counts(),
                "parameters": sum(p.numel() for p in mar.parameters()), "seconds": seconds,
                "losses": summary(curves), "curves": curves}

    return reuse_or_train("mae", identity(config), {"mar": mar, "head": head}, root, fit)
