"""Reconstruction metrics, the Fréchet distance and Pareto non-dominance against closed forms and hand data; the
LPIPS plumbing with a locally built backbone (the pretrained one is a download, refused offline); `reconstruct` of
the VAE / VQ adapters against diffusers' own forward passes on tiny real models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision
from diffusers import AutoencoderKL, VQModel

from encoders.adapters.vae import VAEEncoder
from encoders.adapters.vqgan import VQEncoder
from encoders.registry import create_encoder
from harmon.checkpoints import CheckpointError
from probe.frechet import frechet_distance, frechet_distance_features
from probe.pareto import non_dominated, plot_pareto
from probe.reconstruction import ALEXNET_URL, lpips, lpips_network, psnr, ssim

TINY_CONV = dict(block_out_channels=(4, 8), layers_per_block=1, latent_channels=4, norm_num_groups=2,
                 down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)


def test_psnr_of_constant_offsets() -> None:
    reference = torch.zeros(2, 3, 8, 8)
    images = torch.stack([torch.full((3, 8, 8), 0.1), torch.full((3, 8, 8), 0.5)])
    # MSE 0.01 -> 10 log10(1 / 0.01) = 20 dB; MSE 0.25 -> 10 log10(4) dB
    assert psnr(images, reference).tolist() == pytest.approx([20.0, 10 * math.log10(4)], abs=1e-4)


def test_ssim_closed_forms() -> None:
    x = torch.rand(1, 3, 24, 24)
    assert ssim(x, x).item() == pytest.approx(1.0, abs=1e-5)
    # constant images: no variance, so SSIM = (2 a b + C1) / (a^2 + b^2 + C1), C1 = (0.01 * 1)^2
    a, b, c1 = 0.2, 0.6, 0.01**2
    value = ssim(torch.full((1, 3, 24, 24), a), torch.full((1, 3, 24, 24), b)).item()
    assert value == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), abs=1e-4)


def test_frechet_distance_of_diagonal_and_rotated_gaussians() -> None:
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    s1, s2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    # diagonal covariances: |mu1 - mu2|^2 + sum (sqrt(s1) - sqrt(s2))^2 = 7.25 + 4 + 1 + 0
    expected = 7.25 + 4.0 + 1.0
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-9)
    rotation, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))  # same eigenvectors for both
    rotated = [rotation @ np.diag(s) @ rotation.T for s in (s1, s2)]
    assert frechet_distance(mu1, rotated[0], mu2, rotated[1]) == pytest.approx(expected, rel=1e-7)


def test_frechet_distance_of_shifted_samples_is_the_squared_shift() -> None:
    features = np.random.default_rng(1).normal(size=(50, 80))  # fewer samples than dimensions: singular covariance
    shift = np.zeros(80)
    shift[:2] = (3.0, 4.0)
    assert frechet_distance_features(features, features) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance_features(features, features + shift) == pytest.approx(25.0, abs=1e-6)
    with pytest.raises(ValueError, match="do not match"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


def test_pareto_front_on_hand_data(tmp_path) -> None:
    points = [(1.0, 1.0), (2.0, 0.5), (0.5, 2.0), (0.9, 0.9), (2.0, 0.5), (1.0, 0.5), (0.5, 1.0)]
    # (0.9, 0.9) < (1, 1); (1, 0.5) < (2, 0.5) on x; (0.5, 1) < (1, 1) on x; equal points both stay
    assert non_dominated(points) == [True, True, True, False, True, False, False]
    written = plot_pareto(points, [str(i) for i in range(len(points))], tmp_path / "front", "PSNR", "top-1")
    assert [p.suffix for p in written] == [".png", ".pdf"] and all(p.stat().st_size > 0 for p in written)


def test_lpips_plumbing_with_a_local_backbone() -> None:
    backbone = torchvision.models.alexnet()  # random weights: the pretrained ones are a download
    network = lpips_network(backbone)
    assert torch.equal(network.net.slice1[0].weight, backbone.features[0].weight)
    assert torch.equal(getattr(network.net.slice5, "10").weight, backbone.features[10].weight)
    images = torch.rand(2, 3, 32, 32)
    other = (images + 0.3 * torch.randn_like(images)).clamp(0, 1)
    assert lpips(images, images, network).tolist() == pytest.approx([0.0, 0.0], abs=1e-6)
    distances = lpips(other, images, network)
    assert distances.shape == (2,) and bool((distances > 0).all())


def test_lpips_pretrained_backbone_is_refused_offline() -> None:
    with pytest.raises(CheckpointError, match="alexnet-owt-7be5be79.pth.*HF_HUB_OFFLINE=1") as caught:
        lpips_network()
    assert ALEXNET_URL in str(caught.value)


def test_vae_reconstruct_is_the_autoencoders_own_forward() -> None:
    vae = AutoencoderKL(**TINY_CONV).eval()
    encoder = VAEEncoder("tiny", vae, image_size=16)
    pixels = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        expected = vae(pixels, sample_posterior=False).sample  # decode(posterior mode)
    assert encoder.has_decoder
    torch.testing.assert_close(encoder.reconstruct(pixels), expected)


def test_vq_reconstruct_is_the_vq_models_own_forward() -> None:
    model = VQModel(**TINY_CONV, num_vq_embeddings=16, vq_embed_dim=4).eval()
    encoder = VQEncoder("tiny", model, image_size=16)
    pixels = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        expected = model(pixels).sample  # nearest-code quantisation inside diffusers' decode
    torch.testing.assert_close(encoder.reconstruct(pixels), expected)


def test_the_kept_decoder_is_no_part_of_the_feature_identity() -> None:
    first, second = AutoencoderKL(**TINY_CONV), AutoencoderKL(**TINY_CONV)
    second.encoder.load_state_dict(first.encoder.state_dict())
    second.quant_conv.load_state_dict(first.quant_conv.state_dict())  # same encoder half, different decoder
    a, b = VAEEncoder("tiny", first, image_size=16), VAEEncoder("tiny", second, image_size=16)
    assert not any(key.startswith(("decoder", "post_quant")) for key in a.state_dict())
    assert a.weights_digest() == b.weights_digest()
    assert not torch.equal(a.reconstruct(torch.zeros(1, 3, 16, 16)), b.reconstruct(torch.zeros(1, 3, 16, 16)))


def test_encoders_without_a_decoder_say_so() -> None:
    pixels = create_encoder("pixels", image_size=16, patch=4)
    assert not pixels.has_decoder
    with pytest.raises(ValueError, match="'pixels' has no decoder"):
        pixels.reconstruct(torch.zeros(1, 3, 16, 16))
    vae = create_encoder("vae-kl16", "random", seed=0, config=dict(TINY_CONV), image_size=16)
    assert vae.has_decoder and vae.reconstruct(torch.zeros(1, 3, 16, 16)).shape == (1, 3, 16, 16)
