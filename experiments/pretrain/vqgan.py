"""A tiny VQ autoencoder (diffusers `VQModel`, stride 8: 64 px -> 8 x 8 codes) trained with the VQ-VAE objective:
reconstruction (L1 + MSE) + codebook loss + beta x commitment loss (beta 0.25), straight-through gradients.
VQGAN's perceptual and adversarial terms are left out."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from diffusers import VQModel
from rich.console import Console

from experiments.pretrain.common import OptimConfig, Pretrained, reuse_or_train, summary, train
from experiments.pretrain.data import PREPROCESS, StreamConfig, batches, cached_stream, identity


@dataclass(frozen=True)
class TinyVQConfig:
    """Architecture (`VQModel` arguments), commitment weight, optimisation and data of the tiny VQ autoencoder."""

    block_out_channels: tuple[int, ...] = (8, 16, 32, 32)
    layers_per_block: int = 1
    latent_channels: int = 16
    codebook_size: int = 512
    code_dim: int = 16
    norm_num_groups: int = 4
    beta: float = 0.25
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(steps=200, batch_size=12, lr=2e-3))
    data: StreamConfig = field(default_factory=StreamConfig)

    def architecture(self) -> dict:
        levels = len(self.block_out_channels)
        return dict(in_channels=3, out_channels=3, block_out_channels=self.block_out_channels,
                    down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
                    layers_per_block=self.layers_per_block, latent_channels=self.latent_channels,
                    num_vq_embeddings=self.codebook_size, vq_embed_dim=self.code_dim,
                    norm_num_groups=self.norm_num_groups, sample_size=PREPROCESS.image_size)


def build_vq(config: TinyVQConfig) -> VQModel:
    return VQModel(**config.architecture())


def vq_losses(model: VQModel, pixels: torch.Tensor, beta: float) -> dict[str, torch.Tensor]:
    """Reconstruction, codebook (codes pulled to the encoder outputs), commitment (outputs pulled to their codes),
    and the perplexity of the code usage in the batch (not optimised)."""
    latents = model.encode(pixels).latents
    flat = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    codebook = model.quantize.embedding.weight
    distance = flat.pow(2).sum(1, keepdim=True) + codebook.pow(2).sum(1) - 2 * flat @ codebook.t()
    indices = distance.argmin(1)
    codes = model.quantize.embedding(indices).view(*latents.shape[:1], *latents.shape[2:], -1).permute(0, 3, 1, 2)
    codebook_loss = F.mse_loss(codes, latents.detach())
    commitment = F.mse_loss(latents, codes.detach())
    quantized = latents + (codes - latents).detach()
    decoded = model.decoder(model.post_quant_conv(quantized))
    reconstruction = F.l1_loss(decoded, pixels) + F.mse_loss(decoded, pixels)
    usage = torch.bincount(indices, minlength=len(codebook)).float() / len(indices)
    perplexity = torch.exp(-(usage * (usage + 1e-10).log()).sum())
    return {"loss": reconstruction + codebook_loss + beta * commitment, "reconstruction": reconstruction,
            "codebook": codebook_loss, "commitment": commitment, "perplexity": perplexity}


@torch.no_grad()
def init_codebook(model: VQModel, pixels: torch.Tensor, generator: torch.Generator) -> None:
    """Start the codebook from encoder outputs of a batch (plus small noise), so that no code starts unused."""
    latents = model.encode(pixels).latents
    flat = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    weight = model.quantize.embedding.weight
    repeats = math.ceil(len(weight) / len(flat))
    picked = flat.repeat(repeats, 1)[torch.randperm(len(flat) * repeats, generator=generator)[: len(weight)]]
    weight.copy_(picked + 0.01 * flat.std() * torch.randn(picked.shape, generator=generator))


def pretrain_vqgan(config: TinyVQConfig, root: str | os.PathLike, console: Console | None = None) -> Pretrained:
    """Train the tiny VQ autoencoder, or load it from `root` when this configuration was trained before."""
    torch.manual_seed(config.optim.seed)
    model = build_vq(config)

    def fit() -> dict:
        stream = cached_stream(config.data, console)
        generator = torch.Generator().manual_seed(config.optim.seed)
        first = torch.randperm(len(stream), generator=generator)[: config.optim.batch_size * 4]
        init_codebook(model, stream.pixels(first), generator)
        curves, seconds = train(
            model.parameters(), lambda idx: vq_losses(model, stream.pixels(idx), config.beta),
            batches(len(stream), config.optim.batch_size, config.optim.steps, config.optim.seed), config.optim,
            "pretraining tiny VQGAN", console)
        return {"architecture": config.architecture(), "preprocess": PREPROCESS.to_dict(), "training": asdict(config),
                "stream": stream.counts(), "parameters": sum(p.numel() for p in model.parameters()),
                "seconds": seconds, "losses": summary(curves), "curves": curves}

    return reuse_or_train("vqgan", identity(config), {"vq": model}, root, fit)
