"""MAR: masked autoregressive encoder/decoder ViTs over continuous latent tokens, with a diffusion head.

Parameter names and shapes equal the official release, so `load_state_dict(official, strict=True)` works.
Masks use 1 = masked (unknown), 0 = visible. Token grids are row-major; 64 buffer tokens come first.
Other grids than the construction grid (e.g. 32x32 latents at 512 px, or non-square) bilinearly resize the
image part of the learned position embeddings on the fly, as Harmon does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from functools import partial

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import nn
from torch.utils.checkpoint import checkpoint

from harmon.diffloss import DiffLoss


@dataclass(frozen=True)
class MARConfig:
    """Architecture and training hyper-parameters of a MAR model (defaults: MAR-B as released)."""

    img_size: int = 256
    vae_stride: int = 16
    patch_size: int = 1
    encoder_embed_dim: int = 768
    encoder_depth: int = 12
    encoder_num_heads: int = 12
    decoder_embed_dim: int = 768
    decoder_depth: int = 12
    decoder_num_heads: int = 12
    mlp_ratio: float = 4.0
    vae_embed_dim: int = 16
    mask_ratio_min: float = 0.7
    label_drop_prob: float = 0.1
    class_num: int = 1000
    attn_dropout: float = 0.1
    proj_dropout: float = 0.1
    buffer_size: int = 64
    diffloss_d: int = 6
    diffloss_w: int = 1024
    num_sampling_steps: str = "100"
    diffusion_batch_mul: int = 4
    grad_checkpointing: bool = False

    @property
    def grid_size(self) -> int:
        return self.img_size // self.vae_stride // self.patch_size

    @property
    def seq_len(self) -> int:
        return self.grid_size**2

    @property
    def token_embed_dim(self) -> int:
        return self.vae_embed_dim * self.patch_size**2

    def to_dict(self) -> dict:
        return asdict(self)


MAR_VARIANTS: dict[str, MARConfig] = {
    "mar_base": MARConfig(),
    "mar_large": MARConfig(
        encoder_embed_dim=1024, encoder_depth=16, encoder_num_heads=16,
        decoder_embed_dim=1024, decoder_depth=16, decoder_num_heads=16, diffloss_d=8, diffloss_w=1280,
    ),
    "mar_huge": MARConfig(
        encoder_embed_dim=1280, encoder_depth=20, encoder_num_heads=16,
        decoder_embed_dim=1280, decoder_depth=20, decoder_num_heads=16, diffloss_d=12, diffloss_w=1536,
    ),
}


def mar_config(variant: str, **overrides) -> MARConfig:
    """The released config of `variant` ('mar_base', 'mar_large', 'mar_huge') with optional field overrides."""
    if variant not in MAR_VARIANTS:
        raise ValueError(f"unknown MAR variant {variant!r}; choose one of {sorted(MAR_VARIANTS)}")
    unknown = set(overrides) - set(MARConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown MARConfig fields {sorted(unknown)}; valid: {sorted(MARConfig.__dataclass_fields__)}")
    return replace(MAR_VARIANTS[variant], **overrides)


def resize_grid_embedding(pos: torch.Tensor, grid: tuple[int, int], prefix: int) -> torch.Tensor:
    """Bilinearly resize the image part of a (1, prefix + s*s, C) embedding to `grid`; prefix rows stay as they are."""
    head, body = pos[:, :prefix], pos[:, prefix:]
    side = math.isqrt(body.shape[1])
    if (side, side) == tuple(grid):
        return pos
    body = body.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    body = F.interpolate(body, size=tuple(grid), mode="bilinear", align_corners=False)
    body = body.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1)
    return torch.cat([head, body], dim=1)


def kept_index(keep: torch.Tensor, count: int) -> torch.Tensor:
    """(B, count) positions where `keep` (B, T) is true, in increasing order, when every row keeps `count`
    (found by a stable sort, so no device-to-host copy is needed)."""
    return torch.argsort((~keep).to(torch.uint8), dim=1, stable=True)[:, :count]


def _keep_rows(x: torch.Tensor, keep: torch.Tensor, count: int | None = None) -> torch.Tensor:
    """Select the rows where `keep` is true, preserving order; every sample keeps the same number of rows
    (`count`, when known: then without a device-to-host copy)."""
    if count is None:
        return x[keep.nonzero(as_tuple=True)].reshape(x.shape[0], -1, x.shape[-1])
    return x.gather(1, kept_index(keep, count)[..., None].expand(-1, -1, x.shape[-1]))


class MARBlock(Block):
    """timm's ViT block (same parameters) that can run at some rows only: given `rows` (B, k), keys and values come
    from every row of x (B, N, C) while queries, projection and MLP run on those k rows; returns (B, k, C)."""

    def forward(self, x: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        if rows is None:
            return super().forward(x)
        attn, (b, n, c) = self.attn, x.shape
        h = self.norm1(x)
        kv = F.linear(h, attn.qkv.weight[c:], attn.qkv.bias[c:])
        k, v = kv.reshape(b, n, 2, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        picked = rows[..., None].expand(-1, -1, c)
        q = F.linear(h.gather(1, picked), attn.qkv.weight[:c], attn.qkv.bias[:c])
        q = q.reshape(b, -1, attn.num_heads, attn.head_dim).transpose(1, 2)
        q, k = attn.q_norm(q), attn.k_norm(k)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=attn.attn_drop.p if attn.training else 0.0)
        out = attn.proj_drop(attn.proj(attn.norm(out.transpose(1, 2).reshape(b, -1, c))))
        x = x.gather(1, picked) + self.drop_path1(self.ls1(out))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class MAR(nn.Module):
    """MAR encoder, decoder and diffusion head with the official parameter names."""

    def __init__(self, config: MARConfig):
        super().__init__()
        c = config
        self.config = c
        self.buffer_size = c.buffer_size
        self.seq_len = c.seq_len
        self.token_embed_dim = c.token_embed_dim
        norm = partial(nn.LayerNorm, eps=1e-6)

        def blocks(dim: int, depth: int, heads: int) -> nn.ModuleList:
            return nn.ModuleList(
                MARBlock(dim, heads, c.mlp_ratio, qkv_bias=True, norm_layer=norm,
                         proj_drop=c.proj_dropout, attn_drop=c.attn_dropout)
                for _ in range(depth)
            )

        self.class_emb = nn.Embedding(c.class_num, c.encoder_embed_dim)
        self.fake_latent = nn.Parameter(torch.zeros(1, c.encoder_embed_dim))
        self.z_proj = nn.Linear(c.token_embed_dim, c.encoder_embed_dim)
        self.z_proj_ln = norm(c.encoder_embed_dim)
        self.encoder_pos_embed_learned = nn.Parameter(torch.zeros(1, c.seq_len + c.buffer_size, c.encoder_embed_dim))
        self.encoder_blocks = blocks(c.encoder_embed_dim, c.encoder_depth, c.encoder_num_heads)
        self.encoder_norm = norm(c.encoder_embed_dim)

        self.decoder_embed = nn.Linear(c.encoder_embed_dim, c.decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.decoder_embed_dim))
        self.decoder_pos_embed_learned = nn.Parameter(torch.zeros(1, c.seq_len + c.buffer_size, c.decoder_embed_dim))
        self.decoder_blocks = blocks(c.decoder_embed_dim, c.decoder_depth, c.decoder_num_heads)
        self.decoder_norm = norm(c.decoder_embed_dim)
        self.diffusion_pos_embed_learned = nn.Parameter(torch.zeros(1, c.seq_len, c.decoder_embed_dim))

        self.diffloss = DiffLoss(c.token_embed_dim, c.decoder_embed_dim, c.diffloss_d, c.diffloss_w,
                                 c.num_sampling_steps, c.grad_checkpointing)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        for p in (self.class_emb.weight, self.fake_latent, self.mask_token, self.encoder_pos_embed_learned,
                  self.decoder_pos_embed_learned, self.diffusion_pos_embed_learned):
            nn.init.normal_(p, std=0.02)
        for name, module in self.named_modules():
            if name.startswith("diffloss"):
                continue
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    # ----- layout helpers -------------------------------------------------------------------------------------
    def default_grid(self) -> tuple[int, int]:
        return (self.config.grid_size, self.config.grid_size)

    def patchify(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) latents -> (B, H/p * W/p, C*p*p) tokens, row-major."""
        b, c, h, w = latents.shape
        p = self.config.patch_size
        x = latents.reshape(b, c, h // p, p, w // p, p)
        x = torch.einsum("nchpwq->nhwcpq", x)
        return x.reshape(b, (h // p) * (w // p), c * p * p)

    def unpatchify(self, tokens: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """(B, h*w, C*p*p) tokens -> (B, C, h*p, w*p) latents."""
        h, w = grid or self.default_grid()
        p, c = self.config.patch_size, self.config.vae_embed_dim
        x = tokens.reshape(tokens.shape[0], h, w, c, p, p)
        x = torch.einsum("nhwcpq->nchpwq", x)
        return x.reshape(tokens.shape[0], c, h * p, w * p)

    def _check_grid(self, tokens: torch.Tensor, grid: tuple[int, int]) -> None:
        if grid[0] * grid[1] != tokens.shape[1]:
            raise ValueError(f"{tokens.shape[1]} tokens do not fill a {grid[0]}x{grid[1]} grid; pass image_shape=(h, w)")

    def _run(self, blocks: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
        use_ckpt = self.config.grad_checkpointing and self.training and torch.is_grad_enabled()
        for block in blocks:
            x = checkpoint(block, x, use_reentrant=False) if use_ckpt else block(x)
        return x

    # ----- encoder / decoder ------------------------------------------------------------------------------------
    def forward_mae_encoder(
        self, tokens: torch.Tensor, mask: torch.Tensor | None, class_embedding: torch.Tensor,
        image_shape: tuple[int, int] | None = None, num_blocks: int | None = None, visible: int | None = None,
    ) -> torch.Tensor:
        """Encode the visible tokens (`mask` (B, L), 1 = masked; None: every token). Returns
        (B, buffer + #visible, C), buffers first. `visible`, when known, is how many tokens every row keeps (the
        rows are then picked without a device-to-host copy, as sampling does).

        `class_embedding` (B, C) fills all buffer slots; pass `fake_latent` rows for label-free features.
        In training mode, each sample's class embedding is replaced by `fake_latent` with `label_drop_prob`.
        `num_blocks` stops after that many blocks (the final `encoder_norm` only follows the last block).
        """
        grid = image_shape or self.default_grid()
        self._check_grid(tokens, grid)
        x = self.z_proj(tokens)
        b, _, dim = x.shape
        buffers = class_embedding.to(x.dtype)
        if self.training and self.config.label_drop_prob > 0:
            drop = (torch.rand(b, device=x.device) < self.config.label_drop_prob).unsqueeze(-1).to(x.dtype)
            buffers = drop * self.fake_latent + (1 - drop) * buffers
        x = torch.cat([buffers.unsqueeze(1).expand(b, self.buffer_size, dim), x], dim=1)
        x = x + resize_grid_embedding(self.encoder_pos_embed_learned, grid, self.buffer_size)
        x = self.z_proj_ln(x)
        if mask is not None:
            keep = torch.cat([torch.ones(b, self.buffer_size, device=x.device, dtype=torch.bool), ~mask.bool()], dim=1)
            x = _keep_rows(x, keep, None if visible is None else self.buffer_size + visible)
        blocks = self.encoder_blocks if num_blocks is None else self.encoder_blocks[:num_blocks]
        x = self._run(blocks, x)
        return self.encoder_norm(x) if len(blocks) == len(self.encoder_blocks) else x

    def forward_mae_decoder(
        self, x: torch.Tensor, mask: torch.Tensor, image_shape: tuple[int, int] | None = None,
        x_con: torch.Tensor | None = None, visible: int | None = None, rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Decode encoder outputs to per-token conditions (B, L, C_dec) for the diffusion head.

        Masked positions hold `mask_token`, or `decoder_embed(x_con)` when a full-length `x_con` is given;
        `visible` as in `forward_mae_encoder`. `rows` (B, k) token positions return only those conditions,
        (B, k, C_dec), with the last block run at those rows alone (as sampling needs them).
        """
        grid = image_shape or self.default_grid()
        x = self.decoder_embed(x)
        b = x.shape[0]
        keep = torch.cat([torch.ones(b, self.buffer_size, device=x.device, dtype=torch.bool), ~mask.bool()], dim=1)
        if x_con is None:
            full = self.mask_token.to(x.dtype).expand(b, keep.shape[1], -1).clone()
        else:
            full = self.decoder_embed(x_con).to(x.dtype)
        if visible is None:
            full[keep.nonzero(as_tuple=True)] = x.reshape(-1, x.shape[-1])
        else:
            index = kept_index(keep, self.buffer_size + visible)
            full = full.scatter(1, index[..., None].expand(-1, -1, x.shape[-1]), x)
        x = full + resize_grid_embedding(self.decoder_pos_embed_learned, grid, self.buffer_size)
        position = resize_grid_embedding(self.diffusion_pos_embed_learned, grid, 0)
        if rows is None:
            return self.decoder_norm(self._run(self.decoder_blocks, x))[:, self.buffer_size :] + position
        x = self._run(self.decoder_blocks[:-1], x)
        x = self.decoder_norm(self.decoder_blocks[-1](x, rows + self.buffer_size))
        return x + position[0, rows]

    def encode_features(
        self, tokens: torch.Tensor, image_shape: tuple[int, int] | None = None, num_blocks: int | None = None,
    ) -> torch.Tensor:
        """Unmasked encoder features with `fake_latent` buffers (no label enters): (B, buffer + L, C)."""
        buffers = self.fake_latent.expand(tokens.shape[0], -1)
        return self.forward_mae_encoder(tokens, None, buffers, image_shape, num_blocks)

    # ----- training ---------------------------------------------------------------------------------------------
    def sample_orders(self, bsz: int, seq_len: int, generator: torch.Generator | None = None,
                      device: torch.device | str = "cpu") -> torch.Tensor:
        """One random permutation of 0..seq_len-1 per sample."""
        return torch.rand(bsz, seq_len, generator=generator, device=device).argsort(dim=1)

    def sample_mask_ratio(self, generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> float:
        """Mask ratio ~ N(1, 0.25^2) truncated to [mask_ratio_min, 1], by inverse CDF."""
        normal = torch.distributions.Normal(0.0, 1.0)
        lo = normal.cdf(torch.tensor((self.config.mask_ratio_min - 1.0) / 0.25))
        hi = torch.tensor(0.5)
        u = torch.rand((), generator=generator, device=device).cpu()
        return float(1.0 + 0.25 * torch.special.ndtri(lo + u * (hi - lo)))

    def forward_loss(self, z: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                     generator: torch.Generator | None = None, t: torch.Tensor | None = None,
                     noise: torch.Tensor | None = None) -> torch.Tensor:
        """Diffusion loss over masked tokens, each (target, condition) pair repeated `diffusion_batch_mul` times.

        Rows are ordered (repeat, sample, token); `t` (rows,) and `noise` (rows, C) in that order replace the draws.
        """
        rep = self.config.diffusion_batch_mul
        target = target.reshape(-1, target.shape[-1]).repeat(rep, 1)
        z = z.reshape(-1, z.shape[-1]).repeat(rep, 1)
        return self.diffloss(target, z, mask.reshape(-1).repeat(rep).to(target.dtype), generator=generator,
                             t=t, noise=noise)

    def forward(self, latents: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Class-conditional MAR training loss for (B, C, H, W) latents (already scaled) and integer labels."""
        tokens = self.patchify(latents)
        grid = (latents.shape[2] // self.config.patch_size, latents.shape[3] // self.config.patch_size)
        b, seq_len, _ = tokens.shape
        orders = self.sample_orders(b, seq_len, generator, tokens.device)
        num_masked = math.ceil(seq_len * self.sample_mask_ratio(generator, tokens.device))
        mask = mask_from_orders(orders, num_masked)
        x = self.forward_mae_encoder(tokens, mask, self.class_emb(labels), grid)
        z = self.forward_mae_decoder(x, mask, grid)
        return self.forward_loss(z, tokens.detach(), mask, generator)

    # ----- generation -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample_tokens(
        self, bsz: int, num_iter: int = 64, cfg: float = 1.0, cfg_schedule: str = "linear",
        labels: torch.Tensor | None = None, temperature: float = 1.0, seed: int | None = None,
        image_shape: tuple[int, int] | None = None, progress: bool = False,
    ) -> torch.Tensor:
        """Class-conditional generation; returns latents (B, C, h*p, w*p) (divide by the VAE scale to decode).

        Each step reveals tokens from the end of a random order, following the cosine mask schedule.
        With cfg != 1 the batch is doubled with `fake_latent` as the unconditional class embedding.
        """
        decoding = MaskedDecoding(num_iter, cfg, cfg_schedule, temperature)
        device, dtype = self.fake_latent.device, self.fake_latent.dtype
        grid = image_shape or self.default_grid()
        seq_len = grid[0] * grid[1]
        generator = torch.Generator(device=device)
        generator.manual_seed(torch.seed() if seed is None else seed)
        orders = self.sample_orders(bsz, seq_len, generator, device)
        cond = self.class_emb(labels.to(device)) if labels is not None else self.fake_latent.expand(bsz, -1)
        if decoding.guided:
            cond = torch.cat([cond, self.fake_latent.expand(bsz, -1)])

        def condition(tokens: torch.Tensor, mask: torch.Tensor, visible: int, rows: torch.Tensor) -> torch.Tensor:
            x = self.forward_mae_encoder(tokens, mask, cond, grid, visible=visible)
            return self.forward_mae_decoder(x, mask, grid, visible=visible, rows=rows)

        tokens = torch.zeros(bsz, seq_len, self.token_embed_dim, device=device, dtype=dtype)
        tokens = decoding.decode(condition, self.diffloss, tokens, orders, generator,
                                 "MAR sampling" if progress else None)
        return self.unpatchify(tokens, grid)


def mask_from_orders(orders: torch.Tensor, num_masked: int) -> torch.Tensor:
    """Boolean mask with the first `num_masked` positions of each order set to True (masked)."""
    mask = torch.zeros(orders.shape, dtype=torch.bool, device=orders.device)
    return mask.scatter(1, orders[:, :num_masked], True)


def mask_schedule(seq_len: int, num_iter: int) -> list[int]:
    """Cosine schedule: the number of tokens left masked after each step (clamped to [1, masked - 1]).

    At the last step all remaining tokens are revealed anyway, whatever this number says.
    """
    masked, counts = seq_len, []
    for step in range(num_iter):
        target = math.floor(seq_len * math.cos(math.pi / 2.0 * (step + 1) / num_iter))
        masked = max(1, min(masked - 1, target))
        counts.append(masked)
    return counts


@dataclass(frozen=True)
class MaskedDecoding:
    """Masked autoregressive decoding: steps, guidance scale and its schedule, diffusion temperature.

    Shared by MAR's class-conditional sampling and Harmon's text-to-image generation.
    """

    num_iter: int = 64
    cfg: float = 1.0
    cfg_schedule: str = "linear"
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.cfg_schedule not in ("constant", "linear"):
            raise ValueError(f"cfg_schedule={self.cfg_schedule!r}; use 'constant' (Harmon) or 'linear' (MAR)")
        if self.num_iter < 1:
            raise ValueError(f"num_iter={self.num_iter} must be at least 1")

    @property
    def guided(self) -> bool:
        """Whether rows are doubled with unconditional copies (cfg != 1)."""
        return float(self.cfg) != 1.0

    def cfg_at(self, seq_len: int, masked_after: int) -> float:
        """Guidance scale of one step: constant, or linear in the share of revealed tokens (MAR's rule)."""
        if self.cfg_schedule == "constant":
            return self.cfg
        return 1 + (self.cfg - 1) * (seq_len - masked_after) / seq_len

    def decode(
        self, condition: Callable[[torch.Tensor, torch.Tensor, int, torch.Tensor], torch.Tensor], diffloss: DiffLoss,
        tokens: torch.Tensor, orders: torch.Tensor, generator: torch.Generator, progress: str | None = None,
    ) -> torch.Tensor:
        """Reveal `tokens` (B, L, C), all masked at first, along `orders` (B, L); returns them filled in place.

        Each step `condition(tokens, mask, visible, rows)` gives the diffusion head's conditions (B, k, C) of the
        tokens at positions `rows` (B, k), those leaving the mask (all that are left at the last step); `visible`
        is how many tokens of every row are unmasked. When guided, all tensors are the batch twice, as rows
        [conditional | unconditional]. The tokens at `rows` are then sampled from `diffloss`. Counts come from the
        schedule and rows are indexed through `orders`, so the loop never waits for the device. `progress` names a
        progress bar.
        """
        guided = self.guided

        def both(t: torch.Tensor) -> torch.Tensor:
            return torch.cat([t, t]) if guided else t

        seq_len = orders.shape[1]
        mask = torch.ones(orders.shape, device=tokens.device, dtype=torch.bool)
        schedule = mask_schedule(seq_len, self.num_iter)
        steps: Iterable[int] = range(self.num_iter)
        if progress:
            from rich.progress import track

            steps = track(steps, description=progress)
        masked = seq_len
        for step in steps:
            left = 0 if step == self.num_iter - 1 else schedule[step]
            revealed = orders[:, left:masked].sort(dim=1).values  # (B, k), in token order as the rows are drawn
            picked = condition(both(tokens), both(mask), seq_len - masked, both(revealed)).flatten(0, 1)
            masked, mask = schedule[step], mask_from_orders(orders, schedule[step])
            scale = self.cfg_at(seq_len, schedule[step]) if guided else 1.0
            sampled = diffloss.sample(picked, self.temperature, scale, generator=generator)
            rows = sampled[: revealed.numel()].to(tokens.dtype).reshape(*revealed.shape, tokens.shape[-1])
            tokens.scatter_(1, revealed[..., None].expand(-1, -1, tokens.shape[-1]), rows)
        return tokens
