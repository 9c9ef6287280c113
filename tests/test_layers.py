"""Many layers in one pass: `forward_layers` against one layer at a time and independent references for every
adapter family, each block run once, one cache per layer filled in one extraction pass, resumed and reused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from encoders.adapters.conv import ConvLatentEncoder
from encoders.adapters.harmon_mar import HarmonMAREncoder
from encoders.adapters.hf_dinov2 import HFDinov2Encoder
from encoders.adapters.mar import MAREncoder
from encoders.adapters.pixels import PixelEncoder
from encoders.adapters.rae import RAEEncoder
from encoders.adapters.timm_generic import TimmEncoder
from encoders.registry import create_encoder
from harmon.vae import encode
from probe.datasets import ArrayImageDataset
from probe.feature_cache import CachePlan
from probe.features import ExtractOptions, extract_features, extract_layer_features
from tests.test_encoders import NAMES, tiny

FAMILIES = ["siglip-b16", "dinov2-s", "vae-kl16", "vqgan-taming-f16-16384", "mar-b", "harmon-0.5b-mar", "pixels",
            "dinov2-s-hf", "rae-dinov2-b"]


def every_layer(encoder) -> list[int | None]:
    return [None, *range(encoder.num_layers()), -1]


def blocks_of(encoder) -> list[nn.Module]:
    """The modules `layer=k` indexes, per adapter family."""
    if isinstance(encoder, TimmEncoder):
        return list(encoder.model.blocks)
    if isinstance(encoder, ConvLatentEncoder):
        return encoder.stages()
    if isinstance(encoder, MAREncoder):
        return list(encoder.mar.encoder_blocks)
    if isinstance(encoder, HFDinov2Encoder):
        return list(encoder.model.encoder.layer)
    if isinstance(encoder, RAEEncoder):
        return list(encoder.layers())
    if isinstance(encoder, PixelEncoder):
        return [encoder.identity]
    raise AssertionError(f"no block list for {type(encoder).__name__}")


def reference_sequence(encoder, x: torch.Tensor, index: int, final: bool) -> torch.Tensor:
    """The sequence after block `index` from the wrapped library's own API (`final`: the encoder's final
    features), computed without the adapter's layer code."""
    if isinstance(encoder, TimmEncoder):
        if final or index == encoder.num_layers() - 1:
            return encoder.model.forward_features(x)
        (out,) = encoder.model.forward_intermediates(x, indices=[index], return_prefix_tokens=True, norm=False,
                                                     output_fmt="NLC", intermediates_only=True)
        return torch.cat([out[1], out[0]], 1) if isinstance(out, tuple) else out
    if isinstance(encoder, MAREncoder):
        tokens = encoder.mar.patchify(encode(encoder.vae, x, scale=encoder.latent_scale))
        out = encoder.mar.encode_features(tokens, encoder.grid_for(*x.shape[-2:]), num_blocks=index + 1)
        last = index == encoder.num_layers() - 1
        return encoder.proj_in(out) if isinstance(encoder, HarmonMAREncoder) and encoder.proj_in and last else out
    if isinstance(encoder, ConvLatentEncoder):
        h = encoder.encoder.conv_in(x)
        for stage in encoder.stages()[: index + 1]:
            h = stage(h)
        if final:
            return encoder.final_feature(h).flatten(2).transpose(1, 2)
        return F.adaptive_avg_pool2d(h, encoder.grid_for(*x.shape[-2:])).flatten(2).transpose(1, 2)
    if isinstance(encoder, HFDinov2Encoder):
        out = encoder.model(pixel_values=x, output_hidden_states=True)
        return out.last_hidden_state if index == encoder.num_layers() - 1 else out.hidden_states[index + 1]
    if isinstance(encoder, PixelEncoder):
        return F.avg_pool2d(x, encoder.patch).flatten(2).transpose(1, 2)
    raise AssertionError(f"no reference for {type(encoder).__name__}")


@pytest.mark.parametrize("name", NAMES)
def test_forward_layers_equal_one_layer_at_a_time(name):
    encoder, x = tiny(name)
    layers = every_layer(encoder)
    with torch.no_grad():
        together = encoder.forward_layers(x, layers)
        for layer, sequence in zip(layers, together, strict=True):
            torch.testing.assert_close(sequence, encoder.forward_sequence(x, layer), rtol=0, atol=0)
        for pooling in encoder.poolings:
            for layer, features in zip(layers, encoder.layer_features(x, layers, pooling), strict=True):
                torch.testing.assert_close(features.pooled, encoder(x, layer=layer, pooling=pooling).pooled)


@pytest.mark.parametrize("name", [n for n in FAMILIES if n != "rae-dinov2-b"])
def test_forward_layers_match_the_library_references(name):
    encoder, x = tiny(name)
    count = encoder.num_layers()
    layers = every_layer(encoder)
    with torch.no_grad():
        for layer, sequence in zip(layers, encoder.forward_layers(x, layers), strict=True):
            index = count - 1 if layer is None else layer % count
            torch.testing.assert_close(sequence, reference_sequence(encoder, x, index, final=layer is None),
                                       atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", FAMILIES)
def test_every_block_runs_once_for_all_layers(name):
    encoder, x = tiny(name)
    calls = [0] * len(blocks_of(encoder))
    handles = [block.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
               for i, block in enumerate(blocks_of(encoder))]
    try:
        with torch.no_grad():
            encoder.forward_layers(x, every_layer(encoder))
            assert calls == [1] * len(calls)
            calls[:] = [0] * len(calls)
            encoder.forward_layers(x, [0])  # an early layer alone stops there (pixels: its one layer)
    finally:
        for handle in handles:
            handle.remove()
    stops_early = not isinstance(encoder, (RAEEncoder, HFDinov2Encoder))
    assert calls[0] == 1 and (sum(calls) == 1 or not stops_early)


def test_bad_layers_name_the_block_count():
    encoder, x = tiny("mar-b")
    with pytest.raises(IndexError, match="layer=2 is out of range"):
        encoder.forward_layers(x, [0, 2])
    with pytest.raises(IndexError, match="out of range"):
        create_encoder("pixels").forward_layers(torch.zeros(1, 3, 32, 32), [1])


# ------------------------------------------------------------------------------------------------ the cache


class Images:
    """40 random 16x16 images; reading index `fail_at` raises (a killed extraction)."""

    cache_id = "random-16x16-images-for-layer-tests"

    def __init__(self, fail_at: int | None = None) -> None:
        images = np.random.default_rng(0).integers(0, 256, (40, 16, 16), dtype=np.uint8)
        self.data = ArrayImageDataset(images, [i % 4 for i in range(40)], list("abcd"))
        self.classes, self.targets = self.data.classes, self.data.targets
        self.fail_at = fail_at

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        if index == self.fail_at:
            raise RuntimeError("interrupted")
        return self.data[index]


def vit():
    from timm.models.vision_transformer import VisionTransformer

    from encoders.adapters.timm_generic import TimmEncoder

    torch.manual_seed(0)
    model = VisionTransformer(img_size=16, patch_size=4, embed_dim=16, depth=3, num_heads=2, num_classes=0)
    return TimmEncoder("tiny-vit", model, "vit-16px")


def direct(encoder, dataset, layer):
    pixels = torch.stack([encoder.preprocess(dataset[i][0]) for i in range(len(dataset))])
    with torch.no_grad():
        return encoder(pixels, layer=layer).pooled.numpy()


def test_one_pass_fills_one_cache_per_layer_resumes_and_reuses(tmp_path):
    encoder, options = vit(), ExtractOptions(batch_size=8, num_workers=0, device="cpu", checkpoint_every=1,
                                             progress=False)
    plan = CachePlan(tmp_path, "train")
    embeds = [0]
    encoder.model.patch_embed.register_forward_hook(lambda *_: embeds.__setitem__(0, embeds[0] + 1))
    first = extract_layer_features(encoder, Images(), plan, [0], options)[0]
    assert first.stats["computed"] == 40 and embeds[0] == 1 + 5  # shapes from one image, then 5 batches
    with pytest.raises(RuntimeError, match="interrupted"):
        extract_layer_features(encoder, Images(fail_at=20), plan, [0, 1, None], options)
    embeds[0] = 0
    caches = extract_layer_features(encoder, Images(), plan, [0, 1, None, 1], options)
    assert embeds[0] == 3  # rows 16..39 (the batch holding row 20 failed): three batches, every layer at once
    assert [c.stats["computed"] for c in caches] == [0, 24, 24, 24]
    assert [c.stats["reused"] for c in caches] == [40, 16, 16, 16]
    assert len({c.path for c in caches}) == 3 and caches[1].path == caches[3].path
    for layer, cache in zip([0, 1, None], caches[:3], strict=True):
        np.testing.assert_allclose(cache.features, direct(encoder, Images(), layer), rtol=1e-5, atol=1e-6)
        alone = extract_features(encoder, Images(), CachePlan(tmp_path, "train", layer=layer), options)
        assert alone.path == cache.path and alone.stats["computed"] == 0
    embeds[0] = 0
    again = extract_layer_features(encoder, Images(), plan, [0, 1, None], options)
    assert embeds[0] == 0 and all(c.stats["computed"] == 0 for c in again)
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 3
