"""The fast sampling loops against plain reference loops written from the definitions: the diffusion head's
ancestral sampler (per-row timesteps, schedule gathered every step) and masked decoding (boolean masks); and
that the loops make no device-to-host copy (no `nonzero`, `item`, ...)."""

from __future__ import annotations

import sys
import traceback
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from harmon.diffloss import DiffLoss
from harmon.generation import generate_latents
from harmon.mar import MAR, mask_from_orders, mask_schedule
from harmon.tiny import TINY_MAR, tiny_harmon

SYNCING = {"nonzero", "item", "tolist", "__bool__", "__int__", "__float__", "__index__", "numpy", "cpu"}


def reference_head_sample(head: DiffLoss, z: torch.Tensor, cfg: float, temperature: float,
                          generator: torch.Generator) -> torch.Tensor:
    """DDPM with learned-range variance: per row t, every coefficient gathered from float64 tables at each step."""
    d, channels = head.gen_diffusion, head.in_channels
    guided = cfg != 1.0
    rows = len(z) // 2 if guided else len(z)
    x = torch.randn(rows, channels, generator=generator)
    x = torch.cat([x, x]) if guided else x

    def coef(values: np.ndarray, i: int) -> torch.Tensor:
        return torch.full((len(x), 1), float(values[i]), dtype=torch.float64).float()

    for i in reversed(range(d.num_timesteps)):
        t = torch.full((len(x),), int(d.timestep_map[i]))
        out = head.net(torch.cat([x[:rows], x[:rows]]) if guided else x, t, z)
        eps, v = out[:, :channels], out[:, channels:]
        if guided:
            cond, uncond = eps.chunk(2)
            eps = torch.cat([uncond + cfg * (cond - uncond)] * 2)
        frac = (v + 1) / 2
        log_var = frac * coef(d.log_betas, i) + (1 - frac) * coef(d.posterior_log_variance_clipped, i)
        x0 = coef(d.sqrt_recip_alphas_cumprod, i) * x - coef(d.sqrt_recipm1_alphas_cumprod, i) * eps
        mean = coef(d.posterior_mean_coef1, i) * x0 + coef(d.posterior_mean_coef2, i) * x
        noise = torch.randn(x.shape, generator=generator)
        x = mean + (1.0 if i > 0 else 0.0) * torch.exp(0.5 * log_var) * noise * temperature
    return x


def trained_looking(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter redrawn (the released init zeroes the output layers, which would hide errors)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for p in module.parameters():
            torch.nn.init.normal_(p, std=0.05)
    return module.eval()


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_head_sampler_equals_the_reference_loop(cfg):
    head = trained_looking(DiffLoss(16, 32, depth=2, width=64, num_sampling_steps="25"))
    z = torch.randn(10 if cfg != 1.0 else 5, 32)
    fast = head.sample(z, temperature=0.8, cfg=cfg, generator=torch.Generator().manual_seed(3))
    slow = reference_head_sample(head, z, cfg, 0.8, torch.Generator().manual_seed(3))
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5 * slow.abs().max().item())
    assert fast.abs().max() > 0.1  # a real sample, not a collapsed one


def reference_decode(mar: MAR, bsz: int, num_iter: int, cfg: float, labels: torch.Tensor, seed: int,
                     temperature: float) -> torch.Tensor:
    """Masked decoding with boolean masks and row selection by mask, MAR's linear guidance schedule."""
    generator = torch.Generator().manual_seed(seed)
    seq_len = mar.config.seq_len
    orders = mar.sample_orders(bsz, seq_len, generator)
    cond = torch.cat([mar.class_emb(labels), mar.fake_latent.expand(bsz, -1)])
    tokens = torch.zeros(bsz, seq_len, mar.token_embed_dim)
    mask = torch.ones(bsz, seq_len, dtype=torch.bool)
    schedule = mask_schedule(seq_len, num_iter)
    for step in range(num_iter):
        x = mar.forward_mae_encoder(torch.cat([tokens, tokens]), torch.cat([mask, mask]), cond)
        z = mar.forward_mae_decoder(x, torch.cat([mask, mask]))
        mask_next = mask_from_orders(orders, schedule[step])
        to_pred = mask if step == num_iter - 1 else mask & ~mask_next
        mask = mask_next
        scale = 1 + (cfg - 1) * (seq_len - schedule[step]) / seq_len
        picked = z[torch.cat([to_pred, to_pred])]
        sampled = mar.diffloss.sample(picked, temperature, scale, generator=generator)
        tokens[to_pred] = sampled[: int(to_pred.sum())]
    return mar.unpatchify(tokens)


def test_masked_decoding_equals_the_reference_loop():
    mar = trained_looking(MAR(replace(TINY_MAR, num_sampling_steps="10")))
    labels = torch.tensor([1, 4, 7])
    fast = mar.sample_tokens(3, num_iter=6, cfg=2.5, labels=labels, temperature=0.9, seed=11)
    slow = reference_decode(mar, 3, 6, 2.5, labels, 11, 0.9)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5 * slow.abs().max().item())


class Calls(TorchFunctionMode):
    """Names of the torch functions and tensor methods called inside the block; `syncing` keeps those of
    SYNCING called from the project's own files (not from torch or installed libraries)."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()
        self.syncing: set[tuple[str, str, int]] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        self.names.add(name)
        if name in SYNCING:
            caller = traceback.extract_stack()[-2]
            if "site-packages" not in caller.filename and not caller.filename.startswith(sys.prefix):
                self.syncing.add((name, caller.filename, caller.lineno))
        return func(*args, **(kwargs or {}))


def test_sampling_loops_never_copy_to_the_host():
    mar = trained_looking(MAR(replace(TINY_MAR, num_sampling_steps="5")))
    with Calls() as calls:
        mar.sample_tokens(2, num_iter=4, cfg=2.0, labels=torch.tensor([0, 1]), seed=0)
    assert "gather" in calls.names and "scatter_" in calls.names  # the mode sees the loop's calls
    assert not calls.names & SYNCING, calls.names & SYNCING
    model = tiny_harmon()
    with Calls() as calls:
        generate_latents(model, ["a red circle"], steps=3, cfg=2.0, seed=0, image_size=64)
    assert "gather" in calls.names and not calls.syncing, calls.syncing


def test_the_sync_detector_sees_selection_by_mask_in_the_project():
    """Positive control: without the known count, MAR's encoder selects rows by `nonzero`, and it is seen."""
    mar = MAR(TINY_MAR).eval()
    mask = mask_from_orders(mar.sample_orders(2, TINY_MAR.seq_len, torch.Generator().manual_seed(0)), 3)
    with Calls() as calls:
        mar.forward_mae_encoder(torch.zeros(2, TINY_MAR.seq_len, mar.token_embed_dim), mask,
                                mar.fake_latent.expand(2, -1))
    assert {name for name, file, _ in calls.syncing if file.endswith("harmon/mar.py")} == {"nonzero"}


def test_mask_with_known_count_selects_the_same_rows_as_the_boolean_mask():
    mar = trained_looking(MAR(TINY_MAR))
    tokens = torch.randn(3, TINY_MAR.seq_len, mar.token_embed_dim)
    orders = mar.sample_orders(3, TINY_MAR.seq_len, torch.Generator().manual_seed(0))
    mask = mask_from_orders(orders, 5)
    cond = mar.fake_latent.expand(3, -1)
    visible = TINY_MAR.seq_len - 5
    by_mask = mar.forward_mae_encoder(tokens, mask, cond)
    by_count = mar.forward_mae_encoder(tokens, mask, cond, visible=visible)
    assert torch.equal(by_mask, by_count) and by_mask.shape[1] == mar.buffer_size + visible
    assert torch.equal(mar.forward_mae_decoder(by_mask, mask), mar.forward_mae_decoder(by_mask, mask,
                                                                                        visible=visible))


@pytest.mark.parametrize("options", [{}, {"qk_norm": True, "scale_attn_norm": True, "init_values": 0.5}],
                         ids=["as-in-MAR", "every-norm-and-layer-scale"])
def test_block_at_some_rows_equals_the_timm_block_at_those_rows(options):
    from timm.models.vision_transformer import Block

    from harmon.mar import MARBlock

    block = MARBlock(16, 4, qkv_bias=True, **options).eval()
    torch.manual_seed(0)
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.5)  # large enough that every norm and scale changes the attention
    plain = Block(16, 4, qkv_bias=True, **options).eval()
    plain.load_state_dict(block.state_dict(), strict=True)  # the same parameters under timm's own forward
    x = torch.randn(3, 9, 16)
    rows = torch.tensor([[0, 4], [8, 2], [5, 5]])  # any order, repeats allowed
    expected = plain(x).gather(1, rows[..., None].expand(-1, -1, 16))
    torch.testing.assert_close(block(x, rows), expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(block(x), plain(x))


@pytest.mark.parametrize("with_x_con", [False, True])
def test_decoder_at_some_rows_equals_the_whole_decoder_at_those_rows(with_x_con):
    mar = trained_looking(MAR(TINY_MAR))
    grid, b = (6, 3), 2  # non-square: the position embeddings are resized
    tokens = torch.randn(b, 18, mar.token_embed_dim)
    mask = mask_from_orders(mar.sample_orders(b, 18, torch.Generator().manual_seed(1)), 11)
    x = mar.forward_mae_encoder(tokens, mask, mar.fake_latent.expand(b, -1), grid, visible=7)
    x_con = torch.randn(b, mar.buffer_size + 18, x.shape[-1]) if with_x_con else None
    rows = torch.tensor([[17, 0, 3], [2, 9, 16]])
    whole = mar.forward_mae_decoder(x, mask, grid, x_con, visible=7)
    expected = whole.gather(1, rows[..., None].expand(-1, -1, whole.shape[-1]))
    torch.testing.assert_close(mar.forward_mae_decoder(x, mask, grid, x_con, visible=7, rows=rows), expected,
                               rtol=1e-5, atol=1e-6)
