"""Probing numbers by hand: every pooling of every registered encoder against its definition (with prefix token
counts known from the architectures), and the CAM method against Grad-CAM++'s formula (Chattopadhay et al.
2018) on a case where plain Grad-CAM gives a different map."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from encoders.adapters.pixels import PixelEncoder
from probe.cam import compute_cams
from tests.test_encoders import NAMES, tiny

TINY_BUFFERS = 4  # the tiny MAR configurations' buffer_size (64 in the released MARs)


def prefix_tokens(name: str) -> int:
    """Tokens before the patch grid, from the architectures: MAR buffers, one CLS token (ViT, DINOv2, MAE), CLS +
    4 registers (DINOv2 "-reg", and the DINOv2 encoder of RAE), none for SigLIP, conv latents and pixels."""
    if name.startswith(("mar-", "harmon-")):
        return TINY_BUFFERS
    if name.startswith("siglip"):
        return 0
    if "-reg" in name or name.startswith("rae-dinov2"):
        return 5
    if name.startswith(("dinov2", "mae-", "timm", "rae-mae")):
        return 1
    return 0


def by_hand(sequence: torch.Tensor, prefix: int, pooling: str) -> torch.Tensor:
    patches = sequence[:, prefix:]
    return {"mean": lambda: patches.mean(1), "cls": lambda: sequence[:, 0],
            "buffer_mean": lambda: sequence[:, :prefix].mean(1),
            "flatten": lambda: patches.reshape(len(sequence), -1)}[pooling]()


@pytest.mark.parametrize("name", NAMES)
def test_pooled_features_are_their_definition(name):
    encoder, x = tiny(name)
    prefix = prefix_tokens(name)
    assert encoder.num_prefix_tokens == prefix
    with torch.no_grad():
        sequence = encoder.forward_sequence(x)
        for pooling in encoder.poolings:
            f = encoder(x, pooling=pooling)
            torch.testing.assert_close(f.prefix, sequence[:, :prefix])
            torch.testing.assert_close(f.tokens, sequence[:, prefix:])
            if pooling != "map":  # the attention-pooling head is checked against timm's own head elsewhere
                torch.testing.assert_close(f.pooled, by_hand(sequence, prefix, pooling), msg=f"{name} {pooling}")


@pytest.mark.parametrize("name", ["mar-b", "timm", "dinov2-s-reg", "pixels"])
def test_pool_on_a_numbered_sequence(name):
    """Row r of a (1, P + 4, 2) sequence holds (2r, 2r + 1): mean over rows P..P+3 is (2P + 3, 2P + 4), the mean
    of the P prefix rows (P - 1, P), the CLS row (0, 1), the flattened patches 2P .. 2P + 7."""
    encoder, _ = tiny(name)
    p = encoder.num_prefix_tokens
    sequence = torch.arange(2 * (p + 4), dtype=torch.float32).reshape(1, p + 4, 2)
    expected = {"mean": [2 * p + 3, 2 * p + 4], "cls": [0, 1], "buffer_mean": [p - 1, p],
                "flatten": list(range(2 * p, 2 * p + 8))}
    for pooling in encoder.poolings:
        assert encoder.pool(sequence, pooling)[0].tolist() == expected[pooling], pooling


# ----- Grad-CAM++ -----------------------------------------------------------------------------------------------
def _normalise(cam: np.ndarray) -> np.ndarray:
    cam = np.maximum(cam, 0)
    return (cam - cam.min()) / (cam.max() - cam.min() + 1e-7)


def _case() -> tuple[torch.Tensor, np.ndarray]:
    """8x8 pixels as their own tokens (3 channels): channel 0 a left-right ramp, 1 a top-bottom ramp, 2 constant.
    The logit's gradient on channel 0 is +1 at one pixel and -0.2 elsewhere, +0.1 on channel 1, 0 on channel 2."""
    ramp = torch.arange(8, dtype=torch.float64) / 7
    activation = torch.stack([ramp.expand(8, 8), ramp[:, None].expand(8, 8), torch.full((8, 8), 0.5)])
    grad = np.zeros((3, 8, 8))
    grad[0] = -0.2
    grad[0, 2, 5] = 1.0
    grad[1] = 0.1
    return activation, grad


def grad_cam_plus_plus(activation: np.ndarray, grad: np.ndarray) -> np.ndarray:
    """alpha = g^2 / (2 g^2 + sum(A) g^3) where g != 0, w_c = sum alpha relu(g), map = relu(sum_c w_c A_c)."""
    total = activation.sum(axis=(1, 2), keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha = np.where(grad != 0, grad**2 / (2 * grad**2 + total * grad**3), 0.0)
    weights = (alpha * np.maximum(grad, 0)).sum(axis=(1, 2))
    return _normalise(np.tensordot(weights, activation, axes=1))


def grad_cam(activation: np.ndarray, grad: np.ndarray) -> np.ndarray:
    """w_c = mean(g), map = relu(sum_c w_c A_c)."""
    return _normalise(np.tensordot(grad.mean(axis=(1, 2)), activation, axes=1))


def test_cam_is_grad_cam_plus_plus_not_grad_cam():
    activation, grad = _case()
    encoder = PixelEncoder(image_size=8, patch=1)
    head = nn.Linear(3 * 64, 2, bias=False)
    with torch.no_grad():  # flattened tokens are (row, column, channel): feature (8 i + j) * 3 + c
        head.weight.zero_()
        head.weight[0] = torch.from_numpy(grad.transpose(1, 2, 0).reshape(-1)).float()
        head.weight[1] = 1.0
    maps = compute_cams(encoder, head, activation[None].float(), 0)
    plus = grad_cam_plus_plus(activation.numpy(), grad)
    plain = grad_cam(activation.numpy(), grad)
    assert maps.shape == (1, 8, 8)
    np.testing.assert_allclose(maps[0], plus, atol=1e-4)
    assert np.abs(plus - plain).max() > 0.5  # the case tells the two methods apart
    assert np.abs(maps[0] - plain).max() > 0.5


def test_each_image_is_explained_for_its_own_class():
    """With one class per image, every map is the one that image gets alone for its class (Grad-CAM++ by hand)."""
    activation, grad = _case()
    other = grad[[1, 0, 2]].copy()  # class 1: the evidence of channels 0 and 1 swapped
    encoder = PixelEncoder(image_size=8, patch=1)
    head = nn.Linear(3 * 64, 2, bias=False)
    with torch.no_grad():
        head.weight[0] = torch.from_numpy(grad.transpose(1, 2, 0).reshape(-1)).float()
        head.weight[1] = torch.from_numpy(other.transpose(1, 2, 0).reshape(-1)).float()
    images = torch.stack([activation, activation.flip(-1)]).float()
    maps = compute_cams(encoder, head, images, [0, 1])
    np.testing.assert_allclose(maps[0], grad_cam_plus_plus(images[0].double().numpy(), grad), atol=1e-4)
    np.testing.assert_allclose(maps[1], grad_cam_plus_plus(images[1].double().numpy(), other), atol=1e-4)
    assert np.abs(maps[1] - compute_cams(encoder, head, images[1:], 0)[0]).max() > 0.1
