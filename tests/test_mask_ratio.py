"""MAR under masking: seeded masks, the masked encoder against MAR's own masked forward, pooling over visible
tokens and buffers, ratio 0 equal to no mask, masked caches, and clear errors for bad ratios and other encoders."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from encoders.masking import check_mask_ratio, hidden_count, token_masks
from harmon.vae import encode
from probe.conditions import Conditions
from probe.feature_cache import CachePlan
from probe.features import ExtractOptions, extract_features, extract_layer_features
from tests.test_encoders import tiny
from tests.test_layers import Images

OPTIONS = ExtractOptions(batch_size=7, num_workers=0, device="cpu", progress=False)


def mar_reference(encoder, x: torch.Tensor, mask: torch.Tensor | None, blocks: int) -> torch.Tensor:
    """MAR's own masked encoder forward, as its generation calls it, with label-free buffers."""
    tokens = encoder.mar.patchify(encode(encoder.vae, x, scale=encoder.latent_scale))
    buffers = encoder.mar.fake_latent.expand(len(x), -1)
    return encoder.mar.forward_mae_encoder(tokens, mask, buffers, encoder.grid_for(*x.shape[-2:]), blocks)


def test_masks_are_seeded_nested_and_hide_floor_r_n():
    first = token_masks([3, 5, 8], 64, 0.5, seed=1)
    assert first.dtype == torch.bool and first.shape == (3, 64) and (first.sum(1) == 32).all()
    torch.testing.assert_close(first, token_masks([3, 5, 8], 64, 0.5, seed=1), rtol=0, atol=0)
    torch.testing.assert_close(first[1:2], token_masks([5], 64, 0.5, seed=1), rtol=0, atol=0)  # batch-independent
    assert not torch.equal(first, token_masks([3, 5, 8], 64, 0.5, seed=2))
    assert not torch.equal(first[0], first[1])
    wider = token_masks([3, 5, 8], 64, 0.9, seed=1)
    assert (wider | first).equal(wider) and int(wider[0].sum()) == math.floor(0.9 * 64) == 57
    order = np.random.default_rng([1, 3]).permutation(64)  # numpy's generator seeded with (seed, image index)
    assert set(np.flatnonzero(first[0].numpy())) == set(order[:32].tolist())
    assert hidden_count(0.0, 16) == 0 and hidden_count(0.3, 10) == 3 and hidden_count(0.29, 100) == 29
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"outside \[0, 1\)"):
            check_mask_ratio(bad)


@pytest.mark.parametrize("name", ["mar-b", "harmon-0.5b-mar"])
def test_masked_mar_matches_mars_forward_and_pools_visible_tokens(name):
    encoder, x = tiny(name)
    count, cells, p = encoder.num_layers(), 16, encoder.num_prefix_tokens
    mask = token_masks([0, 1], cells, 0.75, seed=0)
    with torch.no_grad():
        layers = [0, count - 1]
        masked = encoder.layer_features(x, layers, "mean", mask)
        buffers = encoder.layer_features(x, layers, "buffer_mean", mask)
        for layer, features, buffered in zip(layers, masked, buffers, strict=True):
            expected = mar_reference(encoder, x, mask, layer + 1)
            if layer == count - 1 and getattr(encoder, "proj_in", None) is not None:
                expected = encoder.proj_in(expected)
            assert features.tokens.shape[1] == cells - 12 and features.mask is mask
            torch.testing.assert_close(torch.cat([features.prefix, features.tokens], 1), expected)
            kept = [expected[b, p:].mean(0) for b in range(2)]  # the mean over each image's kept tokens
            torch.testing.assert_close(features.pooled, torch.stack(kept))
            torch.testing.assert_close(buffered.pooled, expected[:, :p].mean(1))
        unmasked = encoder.layer_features(x, layers, "mean")
        assert not torch.allclose(unmasked[-1].pooled, masked[-1].pooled)
        nothing_hidden = encoder.layer_features(x, layers, "mean", torch.zeros(2, cells, dtype=torch.bool))
        for plain, zero in zip(unmasked, nothing_hidden, strict=True):
            torch.testing.assert_close(zero.tokens, plain.tokens, rtol=0, atol=1e-6)
            torch.testing.assert_close(zero.pooled, plain.pooled, rtol=0, atol=1e-6)


def test_other_encoders_refuse_masks_and_bad_masks_are_named():
    pixels, x = tiny("pixels")
    with pytest.raises(ValueError, match="'pixels' cannot hide tokens.*MAR-family"):
        pixels.layer_features(x, [0], mask=torch.zeros(2, 64, dtype=torch.bool))
    mar, y = tiny("mar-b")
    with pytest.raises(ValueError, match=r"token mask has shape \(2, 15\), expected \(2, 16\)"):
        mar.layer_features(y, [0], mask=torch.zeros(2, 15, dtype=torch.bool))
    uneven = torch.zeros(2, 16, dtype=torch.bool)
    uneven[0, 0] = True
    with pytest.raises(ValueError, match="as many tokens"):
        mar.layer_features(y, [0], mask=uneven)
    with pytest.raises(ValueError, match="--mask-ratio: mask ratio 1.0 is outside"):
        Conditions(mask_ratios=(0.5, 1.0))
    with pytest.raises(ValueError, match="--mask-ratio: pixels cannot hide tokens"):
        Conditions(mask_ratios=(0.5,)).layers_of(pixels, "pixels", None)
    with pytest.raises(ValueError, match="--layers 9: mar-b has 2 blocks"):
        Conditions(layers=(0, 9)).layers_of(mar, "mar-b", None)
    assert Conditions.parse("all", "default").mask_ratios == (0.0, 0.25, 0.5, 0.75, 0.9)
    assert Conditions(layers=(0, -1, 1)).layers_of(mar, "mar-b", None) == [0, 1]


def test_masked_caches_are_seeded_per_image_and_ratio_zero_is_the_unmasked_cache(tmp_path):
    encoder, _ = tiny("mar-b")
    subset = np.arange(3, 40, 2)
    plan = CachePlan(tmp_path, "val", subset=subset, mask_ratio=0.5, mask_seed=4)
    masked, first = extract_layer_features(encoder, Images(), plan, [0, None], OPTIONS)
    pixels = torch.stack([encoder.preprocess(Images()[int(i)][0]) for i in subset])
    mask = token_masks(subset.tolist(), 16, 0.5, seed=4)  # seeded by the index in the full dataset
    with torch.no_grad():
        expected = encoder.layer_features(pixels, [0, None], mask=mask)
    np.testing.assert_allclose(masked.features, expected[0].pooled.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(first.features, expected[1].pooled.numpy(), rtol=1e-5, atol=1e-6)
    assert masked.manifest["key"]["mask"]["ratio"] == 0.5 and masked.manifest["key"]["mask"]["seed"] == 4
    rebatched = extract_features(encoder, Images(), CachePlan(tmp_path / "other", "val", layer=0, subset=subset,
                                                              mask_ratio=0.5, mask_seed=4),
                                 ExtractOptions(batch_size=5, num_workers=0, device="cpu", progress=False))
    np.testing.assert_array_equal(rebatched.features, masked.features)
    again = extract_features(encoder, Images(), replace(plan, layer=0), OPTIONS)
    assert again.path == masked.path and again.stats["computed"] == 0
    reseeded = extract_features(encoder, Images(), CachePlan(tmp_path, "val", layer=0, subset=subset, mask_ratio=0.5,
                                                             mask_seed=5), OPTIONS)
    assert reseeded.path != masked.path and not np.allclose(reseeded.features, masked.features)
    zero = extract_features(encoder, Images(), CachePlan(tmp_path, "val", layer=0, subset=subset, mask_ratio=0.0),
                            OPTIONS)
    plain = extract_features(encoder, Images(), CachePlan(tmp_path, "val", layer=0, subset=subset), OPTIONS)
    assert zero.path == plain.path and "mask" not in plain.manifest["key"] and plain.stats["computed"] == 0
    pixels_encoder, _ = tiny("pixels")
    with pytest.raises(ValueError, match="cannot hide tokens"):
        extract_features(pixels_encoder, Images(), CachePlan(tmp_path, "val", mask_ratio=0.5), OPTIONS)
