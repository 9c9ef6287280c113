"""The diffusion maths against closed forms and the facts of the released schedule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from harmon.diffloss import DiffLoss, SimpleMLPAdaLN, timestep_embedding
from harmon.diffusion import GaussianDiffusion, cosine_betas, normal_kl, space_timesteps


def test_cosine_schedule_numbers():
    betas = cosine_betas()
    alphas_cumprod = np.cumprod(1 - betas)
    assert len(betas) == 1000
    assert betas[0] == pytest.approx(4.128e-5, rel=1e-3)
    assert betas[999] == 0.999 and (betas[:999] < 0.999).all()
    assert alphas_cumprod[0] == pytest.approx(0.99996, abs=2e-6)
    assert alphas_cumprod[999] == pytest.approx(2.43e-9, rel=1e-2)


def test_respacing_kept_steps():
    kept = sorted(space_timesteps(1000, "100"))
    assert kept[:7] == [0, 10, 20, 30, 40, 50, 61] and kept[-4:] == [969, 979, 989, 999] and len(kept) == 100
    assert sorted(space_timesteps(1000, "50"))[:5] == [0, 20, 41, 61, 82]
    assert sorted(space_timesteps(1000, "ddim10")) == list(range(0, 1000, 100))
    assert len(space_timesteps(1000, "10,20")) == 30
    with pytest.raises(ValueError, match="num_sampling_steps"):
        space_timesteps(1000, "fast")


def test_respacing_keeps_alphas_cumprod_at_kept_steps():
    full, spaced = GaussianDiffusion(""), GaussianDiffusion("100")
    steps = spaced.timestep_map.numpy()
    np.testing.assert_allclose(spaced.alphas_cumprod, full.alphas_cumprod[steps], rtol=1e-9)
    assert spaced.betas[0] == pytest.approx(4.128e-5, rel=1e-3)
    assert spaced.betas[-1] == pytest.approx(0.99999, abs=1e-5)


def test_q_sample_closed_form():
    d = GaussianDiffusion("")
    x0, noise = torch.randn(5, 16), torch.randn(5, 16)
    t = torch.tensor([0, 10, 500, 900, 999])
    ab = torch.tensor(d.alphas_cumprod[t.numpy()], dtype=torch.float32)[:, None]
    expected = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    torch.testing.assert_close(d.q_sample(x0, t, noise), expected)


def test_posterior_mean_and_variance_closed_form():
    d = GaussianDiffusion("")
    x0, xt = torch.randn(4, 16), torch.randn(4, 16)
    t = torch.tensor([1, 50, 400, 999])
    ab = d.alphas_cumprod[t.numpy()]
    ab_prev = d.alphas_cumprod[t.numpy() - 1]
    beta = 1 - ab / ab_prev
    mean_x0 = torch.tensor(np.sqrt(ab_prev) * beta / (1 - ab), dtype=torch.float32)[:, None]
    mean_xt = torch.tensor(np.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab), dtype=torch.float32)[:, None]
    variance = torch.tensor(beta * (1 - ab_prev) / (1 - ab), dtype=torch.float32)[:, None]
    mean, log_var = d.q_posterior(x0, xt, t)
    torch.testing.assert_close(mean, mean_x0 * x0 + mean_xt * xt)
    torch.testing.assert_close(log_var.exp().expand_as(mean), variance.expand_as(mean), rtol=1e-5, atol=1e-12)


def test_learned_range_variance_interpolates_between_bounds():
    d = GaussianDiffusion("100")
    x = torch.randn(3, 16)
    t = torch.tensor([5, 50, 99])
    low = d.p_mean_variance(torch.cat([torch.zeros(3, 16), -torch.ones(3, 16)], 1), x, t)["log_variance"]
    high = d.p_mean_variance(torch.cat([torch.zeros(3, 16), torch.ones(3, 16)], 1), x, t)["log_variance"]
    torch.testing.assert_close(low[:, :1], torch.tensor(d.posterior_log_variance_clipped[t], dtype=torch.float32)[:, None])
    torch.testing.assert_close(high[:, :1], torch.tensor(np.log(d.betas[t]), dtype=torch.float32)[:, None])


def test_normal_kl_is_zero_for_equal_and_matches_formula():
    m, lv = torch.randn(10), torch.randn(10)
    torch.testing.assert_close(normal_kl(m, lv, m, lv), torch.zeros(10))
    kl = normal_kl(torch.tensor(0.0), torch.tensor(0.0), torch.tensor(1.0), torch.tensor(math.log(4.0)))
    assert float(kl) == pytest.approx(math.log(2.0) + (1 + 1) / 8 - 0.5, rel=1e-6)


def test_training_loss_is_mse_plus_vb():
    torch.manual_seed(0)
    net = SimpleMLPAdaLN(16, 32, 8, 2)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.1)
    d = GaussianDiffusion("")
    x0, noise, c = torch.randn(6, 16), torch.randn(6, 16), torch.randn(6, 8)
    t = torch.tensor([0, 1, 10, 100, 500, 999])
    out = d.training_losses(net, x0, t, {"c": c}, noise=noise)
    eps = net(d.q_sample(x0, t, noise), t, c)[:, :16]
    torch.testing.assert_close(out["mse"], ((noise - eps) ** 2).mean(1))
    torch.testing.assert_close(out["loss"], out["mse"] + out["vb"])
    assert (out["vb"] >= 0).all()


def test_timestep_embedding_cos_then_sin():
    emb = timestep_embedding(torch.tensor([0, 7]), 256)
    assert emb.shape == (2, 256)
    torch.testing.assert_close(emb[0, :128], torch.ones(128))
    torch.testing.assert_close(emb[0, 128:], torch.zeros(128))
    torch.testing.assert_close(emb[1, 0], torch.cos(torch.tensor(7.0)))


def test_cfg_guides_epsilon_only_and_shares_start_noise():
    head = DiffLoss(16, 8, depth=2, width=32, num_sampling_steps="5")
    for p in head.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x, c, t = torch.randn(4, 16), torch.randn(4, 8), torch.tensor([3, 3, 3, 3])
    guided = head.net.forward_with_cfg(x, t, c, cfg_scale=2.5)
    plain = head.net(torch.cat([x[:2], x[:2]]), t, c)
    eps = plain[2:, :16] + 2.5 * (plain[:2, :16] - plain[2:, :16])
    torch.testing.assert_close(guided[:2, :16], eps)
    torch.testing.assert_close(guided[2:, :16], eps)
    torch.testing.assert_close(guided[:, 16:], plain[:, 16:])
    g = torch.Generator().manual_seed(1)
    samples = head.sample(c, cfg=2.5, generator=g)
    assert samples.shape == (4, 16) and torch.isfinite(samples).all()


def test_sampling_is_deterministic_and_temperature_scales_step_noise():
    head = DiffLoss(16, 8, depth=1, width=16, num_sampling_steps="4")
    c, noise = torch.randn(3, 8), torch.randn(3, 16)
    a = head.sample(c, generator=torch.Generator().manual_seed(0), noise=noise)
    b = head.sample(c, generator=torch.Generator().manual_seed(0), noise=noise)
    torch.testing.assert_close(a, b)
    cold = head.sample(c, temperature=0.0, generator=torch.Generator().manual_seed(5), noise=noise)
    cold2 = head.sample(c, temperature=0.0, generator=torch.Generator().manual_seed(6), noise=noise)
    torch.testing.assert_close(cold, cold2)
