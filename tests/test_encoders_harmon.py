"""The MAR encoder inside a Harmon checkpoint, before and after proj_in."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from encoders.registry import create_encoder
from harmon.checkpoints import CheckpointError
from harmon.mar import MAR
from harmon.vae import build_kl16, save_kl16_safetensors, tiny_kl16_config

HEADS = {"encoder_num_heads": 2, "decoder_num_heads": 2}


@pytest.fixture
def harmon_files(tmp_path, tiny_mar_config):
    torch.manual_seed(0)
    mar = MAR(tiny_mar_config)
    proj_in = nn.Sequential(nn.Linear(32, 48), nn.SiLU(), nn.Linear(48, 48))
    state = {f"mar.{k}": v for k, v in mar.state_dict().items()}
    state.update({f"proj_in.{k}": v for k, v in proj_in.state_dict().items()})
    state["llm.model.norm.weight"] = torch.ones(48)
    torch.save(state, tmp_path / "harmon_tiny.pth")
    save_kl16_safetensors(build_kl16(tiny_kl16_config()), tmp_path / "vae.safetensors")
    return tmp_path / "harmon_tiny.pth", tmp_path / "vae.safetensors", mar, proj_in


def test_features_before_and_after_proj_in(harmon_files):
    path, vae, mar, proj_in = harmon_files
    pixels = torch.rand(2, 3, 64, 64) * 2 - 1
    plain = create_encoder("harmon-0.5b-mar", weights=str(path), vae=str(vae), image_size=64, config=HEADS)
    projected = create_encoder("harmon-0.5b-mar", weights=str(path), vae=str(vae), image_size=64, config=HEADS,
                               projected=True)
    f_plain, f_proj = plain(pixels), projected(pixels)
    assert f_plain.tokens.shape == (2, 16, 32) and f_plain.prefix.shape == (2, 4, 32) and f_plain.grid == (4, 4)
    assert f_proj.tokens.shape == (2, 16, 48)
    full = torch.cat([f_plain.prefix, f_plain.tokens], 1)
    torch.testing.assert_close(torch.cat([f_proj.prefix, f_proj.tokens], 1), proj_in(full))
    # The same MAR weights through the plain MAR adapter give the same features.
    original = create_encoder("mar-b", weights=str(path), vae=str(vae), config=HEADS, image_size=64)
    torch.testing.assert_close(original(pixels).tokens, f_plain.tokens)
    assert plain.describe()["projected"] is False and projected.describe()["projected"] is True


def test_intermediate_layers_are_not_projected(harmon_files):
    path, vae, _, _ = harmon_files
    encoder = create_encoder("harmon-0.5b-mar", weights=str(path), vae=str(vae), image_size=64, config=HEADS,
                             projected=True)
    assert encoder(torch.zeros(1, 3, 64, 64), layer=0).tokens.shape[-1] == 32


def test_file_without_proj_in_is_explained(harmon_files, tmp_path):
    path, vae, _, _ = harmon_files
    state = {k: v for k, v in torch.load(path, weights_only=True).items() if not k.startswith("proj_in.")}
    torch.save(state, tmp_path / "no_proj.pth")
    with pytest.raises(CheckpointError, match="proj_in"):
        create_encoder("harmon-0.5b-mar", weights=str(tmp_path / "no_proj.pth"), vae=str(vae), config=HEADS,
                       projected=True)
