"""Grad-CAM++ on every registered encoder (tiny, random weights) and every pooling it offers: maps are never
constant, with a probe logit and with a cosine-similarity target; constant maps are detected."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probe.cam import (
    CosineTarget,
    PooledFeatures,
    compute_cams,
    compute_similarity_cams,
    constant_maps,
    run_grad_cam,
)
from probe.linear import LinearProbeHead
from tests.test_encoders import NAMES, tiny

CASES = [(name, pooling) for name in NAMES for pooling in tiny(name)[0].poolings]


def head_for(dim: int, classes: int = 3) -> LinearProbeHead:
    torch.manual_seed(2)
    head = LinearProbeHead(dim, classes)
    with torch.no_grad():
        head.linear.weight.normal_()
    return head.eval()


def patch_gradient(encoder, x: torch.Tensor, pooling: str) -> torch.Tensor:
    """|d pooled / d patch activations| at the CAM layer, per image: the patch tokens the map is drawn on."""
    captured = []
    layer = encoder.cam_layer_for(pooling)

    def keep(module, args, out) -> None:
        out.retain_grad()
        captured.append(out)

    handle = layer.register_forward_hook(keep)
    x = x.clone().requires_grad_(True)  # frozen encoders: activations need grad through the input
    try:
        pooled = encoder(x, pooling=pooling).pooled
    finally:
        handle.remove()
    (pooled * torch.randn_like(pooled)).sum().backward()
    patches = encoder.cam_reshape(*x.shape[-2:])(captured[-1].grad)
    return patches.abs().flatten(1).sum(1)


@pytest.mark.parametrize(("name", "pooling"), CASES)
def test_pooled_output_depends_on_the_cam_layer_patches(name, pooling):
    encoder, x = tiny(name)
    assert (patch_gradient(encoder, x, pooling) > 0).all(), f"{name} / {pooling}: no gradient reaches the patches"


@pytest.mark.parametrize(("name", "pooling"), CASES)
def test_probe_logit_maps_are_not_constant(name, pooling):
    """Grad-CAM++ keeps only positive evidence, so one class logit may give an all-negative (blank) map; a map
    that is blank for every class means the target never sees the patch tokens."""
    encoder, x = tiny(name)
    with torch.no_grad():
        dim = encoder(x, pooling=pooling).pooled.shape[1]
    head = head_for(dim)
    blank = [set(constant_maps(compute_cams(encoder, head, x, c, pooling=pooling, batch_size=2)))
             for c in range(3)]
    assert not set.intersection(*blank), f"{name} / {pooling}: constant maps for every class"


@pytest.mark.parametrize(("name", "pooling"), CASES)
def test_cosine_similarity_maps_are_not_constant(name, pooling):
    encoder, x = tiny(name)
    with torch.no_grad():
        pooled = encoder(x, pooling=pooling).pooled
    other = pooled.flip(0)  # each image explained against the other image's feature, and away from it
    blank = [set(constant_maps(compute_similarity_cams(encoder, x, ref, pooling=pooling, batch_size=2)))
             for ref in (other, -other)]
    assert not set.intersection(*blank), f"{name} / {pooling}: constant similarity maps"


def test_the_last_block_gives_blank_cls_maps_and_they_are_detected():
    """The measured failure: with CLS pooling the last block's patch outputs do not reach the CLS token, so
    Grad-CAM++ at that block is exactly zero; `constant_maps` flags it and the adapter picks another layer."""
    encoder, x = tiny("timm")
    assert encoder.default_pooling == "cls"
    model = PooledFeatures(encoder, "cls")
    with torch.no_grad():
        reference = model(x).flip(0)
    class LastBlock(type(encoder)):  # the old choice: blocks[-1] whatever the pooling
        def cam_layer_for(self, pooling=None):
            return self.model.blocks[-1]

    encoder.__class__ = LastBlock
    blank = run_grad_cam(model, encoder, x, [CosineTarget(r) for r in reference], "cls")
    assert constant_maps(blank) == [0, 1] and np.all(blank == 0)
    encoder.__class__ = LastBlock.__mro__[1]
    assert encoder.cam_layer_for("cls") is not encoder.model.blocks[-1]
    assert encoder.cam_layer_for("mean") is encoder.model.blocks[-1]
    maps = run_grad_cam(model, encoder, x, [CosineTarget(r) for r in reference], "cls")
    assert constant_maps(maps) == []


def test_constant_maps_flags_zero_constant_and_nan():
    maps = np.random.default_rng(0).random((4, 8, 8)).astype(np.float32)
    maps[1] = 0.0
    maps[2] = 0.5
    maps[3, 0, 0] = np.nan
    assert constant_maps(maps) == [1, 2, 3]
