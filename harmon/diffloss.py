"""MAR's diffusion head: an AdaLN-conditioned MLP noise predictor and the loss/sampler around it.

Parameter names match the official `diffloss.net.*` keys, so released weights load strictly.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from harmon.diffusion import GaussianDiffusion, StepFn
from harmon.layers import silu_mlp


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer steps, [cos | sin] order, no rescaling of t."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class TimestepEmbedder(nn.Module):
    def __init__(self, width: int, frequency_dim: int = 256):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = silu_mlp(frequency_dim, width, width)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        weight = self.mlp[0].weight
        return self.mlp(timestep_embedding(t, self.frequency_dim).to(weight.dtype))


class ResBlock(nn.Module):
    """x + gate * MLP(LN(x) * (1 + scale) + shift), with (shift, scale, gate) from the condition."""

    def __init__(self, width: int):
        super().__init__()
        self.in_ln = nn.LayerNorm(width, eps=1e-6)
        self.mlp = silu_mlp(width, width, width)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.adaLN_modulation(y).chunk(3, dim=-1)
        return x + gate * self.mlp(modulate(self.in_ln(x), shift, scale))


class FinalLayer(nn.Module):
    def __init__(self, width: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(width, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(y).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class SimpleMLPAdaLN(nn.Module):
    """Predicts [epsilon | variance value] for noisy tokens x_t at step t, conditioned on c."""

    def __init__(self, in_channels: int, width: int, z_channels: int, depth: int, grad_checkpointing: bool = False):
        super().__init__()
        self.in_channels = in_channels
        self.grad_checkpointing = grad_checkpointing
        self.time_embed = TimestepEmbedder(width)
        self.cond_embed = nn.Linear(z_channels, width)
        self.input_proj = nn.Linear(in_channels, width)
        self.res_blocks = nn.ModuleList(ResBlock(width) for _ in range(depth))
        self.final_layer = FinalLayer(width, 2 * in_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.time_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.time_embed.mlp[2].weight, std=0.02)
        zero_layers = [block.adaLN_modulation[-1] for block in self.res_blocks]
        zero_layers += [self.final_layer.adaLN_modulation[-1], self.final_layer.linear]
        for layer in zero_layers:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        dtype = self.input_proj.weight.dtype
        return self.denoise(self.input_proj(x.to(dtype)), self.time_embed(t) + self.cond_embed(c.to(dtype)))

    def denoise(self, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The residual blocks and output layer on projected tokens `h` under conditioning `y` (both (N, width))."""
        for block in self.res_blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                h = checkpoint(block, h, y, use_reentrant=False)
            else:
                h = block(h, y)
        return self.final_layer(h, y)

    def forward_with_cfg(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor, cfg_scale: float) -> torch.Tensor:
        """Rows [cond | uncond]: run both halves on the first half's x, guide epsilon only, copy to both halves."""
        half = x[: len(x) // 2]
        return guide(self.forward(torch.cat([half, half]), t, c), self.in_channels, cfg_scale)

    def sampling_step(self, c: torch.Tensor, timesteps: torch.Tensor, cfg_scale: float | None = None) -> StepFn:
        """`step(x, i)`: the prediction for x at chain index i (original step `timesteps[i]`), for the conditions
        `c` of a whole sampling loop. The condition and the step embeddings are computed once here, not at each
        step; with `cfg_scale` the rows are [cond | uncond], both on the first half's x, guided as
        `forward_with_cfg` guides (the guided rows also share the input projection)."""
        dtype = self.input_proj.weight.dtype
        condition = self.cond_embed(c.to(dtype))
        steps = self.time_embed(timesteps.to(c.device))

        def step(x: torch.Tensor, i: int) -> torch.Tensor:
            y = steps[i] + condition
            if cfg_scale is None:
                return self.denoise(self.input_proj(x.to(dtype)), y)
            h = self.input_proj(x[: len(x) // 2].to(dtype))
            return guide(self.denoise(torch.cat([h, h]), y), self.in_channels, cfg_scale)

        return step


def guide(out: torch.Tensor, channels: int, cfg_scale: float) -> torch.Tensor:
    """Classifier-free guidance of rows [cond | uncond]: epsilon = uncond + scale (cond - uncond), copied to both
    halves; the variance channels stay per row."""
    eps, rest = out[:, :channels], out[:, channels:]
    cond_eps, uncond_eps = eps.chunk(2, dim=0)
    guided = uncond_eps + cfg_scale * (cond_eps - uncond_eps)
    return torch.cat([torch.cat([guided, guided]), rest], dim=1)


class DiffLoss(nn.Module):
    """Per-token diffusion loss and sampler; `net` holds all parameters (keys `net.*`)."""

    def __init__(
        self, target_channels: int, z_channels: int, depth: int, width: int, num_sampling_steps: str = "100",
        grad_checkpointing: bool = False,
    ):
        super().__init__()
        self.in_channels = target_channels
        self.net = SimpleMLPAdaLN(target_channels, width, z_channels, depth, grad_checkpointing)
        self.train_diffusion = GaussianDiffusion("")
        self.gen_diffusion = GaussianDiffusion(num_sampling_steps)

    def forward(
        self, target: torch.Tensor, z: torch.Tensor, mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None, t: torch.Tensor | None = None, noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean loss over rows (rows with mask 0 excluded when a mask is given).

        Timesteps `t` (rows,) and `noise` (rows, C) are drawn from `generator` unless given.
        """
        if t is None:
            t = torch.randint(0, self.train_diffusion.num_timesteps, (target.shape[0],), device=target.device,
                              generator=generator)
        if noise is None:
            noise = torch.randn(target.shape, device=target.device, generator=generator, dtype=target.dtype)
        loss = self.train_diffusion.training_losses(self.net, target, t, {"c": z}, noise=noise)["loss"]
        if mask is not None:
            return (loss * mask).sum() / mask.sum()
        return loss.mean()

    @torch.no_grad()
    def sample(
        self, z: torch.Tensor, temperature: float = 1.0, cfg: float = 1.0, generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Sample one token per row of z. With cfg != 1, z is [cond | uncond] and both halves share x_T."""
        guided = float(cfg) != 1.0
        rows = z.shape[0] // 2 if guided else z.shape[0]
        if noise is None:
            noise = torch.randn(rows, self.in_channels, generator=generator, device=z.device)
        if guided:
            noise = torch.cat([noise, noise])
        diffusion = self.gen_diffusion
        step = self.net.sampling_step(z, diffusion.timestep_map, float(cfg) if guided else None)
        return diffusion.p_sample_loop(step, noise, temperature=temperature, generator=generator)
