"""MAR networks: official layout, masking, position-embedding resize, training loss and generation."""

from __future__ import annotations

import math

import pytest
import torch

from harmon.mar import MAR, mar_config, mask_from_orders, mask_schedule, resize_grid_embedding


@pytest.mark.parametrize(
    ("variant", "tensors", "params_m"),
    [("mar_base", 364, 207.92), ("mar_large", 476, 478.33), ("mar_huge", 604, 942.40)],
)
def test_released_variants_have_official_layout(variant, tensors, params_m):
    with torch.device("meta"):
        model = MAR(mar_config(variant))
    state = model.state_dict()
    assert len(state) == tensors
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(params_m, abs=0.01)
    dim = model.config.encoder_embed_dim
    assert state["encoder_pos_embed_learned"].shape == (1, 320, dim)
    assert state["diffusion_pos_embed_learned"].shape == (1, 256, dim)
    assert state["diffloss.net.final_layer.linear.weight"].shape == (32, model.config.diffloss_w)
    assert "diffloss.net.final_layer.norm_final.weight" not in state


def test_unknown_variant_and_field_are_named():
    with pytest.raises(ValueError, match="mar_base"):
        mar_config("mar_tiny")
    with pytest.raises(ValueError, match="diffloss_depth"):
        mar_config("mar_base", diffloss_depth=3)


def _reference_encoder(model: MAR, tokens: torch.Tensor) -> torch.Tensor:
    """The encoder written out without any masking machinery."""
    b = tokens.shape[0]
    x = model.z_proj(tokens)
    buffers = model.fake_latent.expand(b, -1)[:, None].expand(b, model.buffer_size, -1)
    x = torch.cat([buffers, x], 1) + model.encoder_pos_embed_learned
    x = model.z_proj_ln(x)
    for block in model.encoder_blocks:
        x = block(x)
    return model.encoder_norm(x)


def test_empty_mask_equals_unmasked_path(tiny_mar_config):
    model = MAR(tiny_mar_config).eval()
    tokens = torch.randn(3, 16, 16)
    features = model.forward_mae_encoder(tokens, torch.zeros(3, 16), model.fake_latent.expand(3, -1))
    torch.testing.assert_close(features, _reference_encoder(model, tokens))
    torch.testing.assert_close(model.encode_features(tokens), features)


def test_masked_tokens_are_dropped_in_order(tiny_mar_config):
    model = MAR(tiny_mar_config).eval()
    tokens = torch.randn(2, 16, 16)
    orders = torch.stack([torch.randperm(16) for _ in range(2)])
    mask = mask_from_orders(orders, 10)
    out = model.forward_mae_encoder(tokens, mask, model.fake_latent.expand(2, -1))
    assert out.shape == (2, model.buffer_size + 6, 32)
    # Changing a masked token must not change anything; changing a visible one must.
    changed = tokens.clone()
    changed[mask] += 5.0
    torch.testing.assert_close(model.forward_mae_encoder(changed, mask, model.fake_latent.expand(2, -1)), out)
    changed = tokens.clone()
    changed[~mask] += 5.0
    assert not torch.allclose(model.forward_mae_encoder(changed, mask, model.fake_latent.expand(2, -1)), out)


def test_pos_embed_resize_identity_at_native_grid_and_bilinear_elsewhere():
    pos = torch.randn(1, 64 + 256, 8)
    assert resize_grid_embedding(pos, (16, 16), 64) is pos
    big = resize_grid_embedding(pos, (32, 32), 64)
    assert big.shape == (1, 64 + 1024, 8)
    torch.testing.assert_close(big[:, :64], pos[:, :64])
    wide = resize_grid_embedding(pos, (24, 40), 64)
    assert wide.shape == (1, 64 + 960, 8)
    # Constant image part stays constant under bilinear resizing.
    flat = torch.cat([pos[:, :64], torch.ones(1, 256, 8)], 1)
    torch.testing.assert_close(resize_grid_embedding(flat, (32, 32), 64)[:, 64:], torch.ones(1, 1024, 8))


def test_non_square_grid_runs_through_encoder_and_decoder(tiny_mar_config):
    model = MAR(tiny_mar_config).eval()
    tokens = torch.randn(2, 6 * 3, 16)
    mask = torch.zeros(2, 18)
    x = model.forward_mae_encoder(tokens, mask, model.fake_latent.expand(2, -1), image_shape=(6, 3))
    z = model.forward_mae_decoder(x, mask, image_shape=(6, 3))
    assert z.shape == (2, 18, 32)
    with pytest.raises(ValueError, match="image_shape"):
        model.forward_mae_encoder(tokens, mask, model.fake_latent.expand(2, -1))


RELEASED_REVEALS_256 = [
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 3, 2, 2, 3, 3, 3, 3, 3, 3, 4, 3, 4, 4, 4, 4, 4, 4, 4,
    5, 5, 4, 5, 5, 5, 5, 5, 6, 5, 5, 6, 5, 6, 6, 6, 5, 6, 6, 6, 6, 6, 6, 7, 6, 6, 6, 6, 7, 6, 6, 6,
]


def _reveals(seq_len: int, num_iter: int) -> list[int]:
    still_masked = [seq_len] + mask_schedule(seq_len, num_iter)[:-1] + [0]
    return [a - b for a, b in zip(still_masked[:-1], still_masked[1:], strict=True)]


def test_mask_schedule_matches_released_reveal_counts():
    assert _reveals(256, 64) == RELEASED_REVEALS_256
    big = _reveals(1024, 64)
    assert big[:8] == [1, 1, 1, 2, 3, 4, 4, 4] and big[-3:] == [25, 25, 25] and sum(big) == 1024


def test_mask_ratio_is_truncated_normal(tiny_mar_config):
    model = MAR(tiny_mar_config)
    g = torch.Generator().manual_seed(0)
    ratios = torch.tensor([model.sample_mask_ratio(g) for _ in range(4000)])
    assert ratios.min() >= 0.7 and ratios.max() <= 1.0
    assert float(ratios.mean()) == pytest.approx(0.867, abs=0.006)
    assert float(ratios.std()) == pytest.approx(0.0835, abs=0.005)


def test_forward_loss_tiles_pairs_and_counts_only_masked(tiny_mar_config):
    model = MAR(tiny_mar_config)
    z, target = torch.randn(2, 16, 32), torch.randn(2, 16, 16)
    mask = torch.zeros(2, 16)
    mask[:, :5] = 1
    loss = model.forward_loss(z, target, mask, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    rep = model.config.diffusion_batch_mul
    manual = model.diffloss(target.reshape(32, 16).repeat(rep, 1), z.reshape(32, 32).repeat(rep, 1),
                            mask.reshape(32).repeat(rep), generator=g)
    torch.testing.assert_close(loss, manual)


def test_training_lowers_the_loss(tiny_mar_config):
    torch.manual_seed(0)
    model = MAR(tiny_mar_config).train()
    latents = torch.randn(8, 16, 4, 4) * 0.3 + torch.linspace(-1, 1, 16)[None, :, None, None]
    labels = torch.arange(8) % 10
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)

    def mean_loss() -> float:
        with torch.no_grad():
            g_eval = torch.Generator().manual_seed(123)
            return sum(float(model(latents, labels, g_eval)) for _ in range(8)) / 8

    before = mean_loss()
    for _ in range(60):
        opt.zero_grad()
        model(latents, labels, g).backward()
        opt.step()
    assert mean_loss() < 0.8 * before


def test_generation_is_deterministic_and_reveals_all_tokens(tiny_mar_config):
    model = MAR(tiny_mar_config).eval()
    labels = torch.tensor([1, 7])
    a = model.sample_tokens(2, num_iter=6, cfg=3.0, labels=labels, seed=11)
    b = model.sample_tokens(2, num_iter=6, cfg=3.0, labels=labels, seed=11)
    c = model.sample_tokens(2, num_iter=6, cfg=3.0, labels=labels, seed=12)
    assert a.shape == (2, 16, 4, 4)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    # Tokens start at zero; a revealed token is a diffusion sample, never exactly zero everywhere.
    assert (a.abs().sum(dim=1) > 0).all()
    const = model.sample_tokens(2, num_iter=4, cfg=2.0, cfg_schedule="constant", seed=0, image_shape=(2, 6))
    assert const.shape == (2, 16, 2, 6) and (const.abs().sum(dim=1) > 0).all()
    with pytest.raises(ValueError, match="cfg_schedule"):
        model.sample_tokens(1, cfg_schedule="cosine")


def test_generation_single_step_reveals_everything(tiny_mar_config):
    model = MAR(tiny_mar_config).eval()
    out = model.sample_tokens(3, num_iter=1, seed=0)
    assert (out.abs().sum(dim=1) > 0).all()
    assert math.prod(out.shape) == 3 * 16 * 16
