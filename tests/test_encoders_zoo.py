"""The DINOv2, MAE, SigLIP 2, VA-VAE, REPA-E, RAE and RecA-Harmon encoders: names checked against the installed
timm, tiny files in each real format loaded through `create_encoder` and compared with the library's own model,
and offline behaviour (one line naming the file and the download command, no retries)."""

from __future__ import annotations

import time

import huggingface_hub.constants
import pytest
import timm
import torch
from diffusers import AutoencoderKL, AutoencoderRAE
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
from safetensors.torch import load_file, save_file
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn
from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

from encoders.adapters.timm_generic import hub_source
from encoders.adapters.vae_zoo import vavae_config
from encoders.registry import create_encoder, list_encoders
from harmon import checkpoints
from harmon.checkpoints import CheckpointError
from harmon.mar import MAR, mar_config
from harmon.vae import build_kl16, diffusers_to_ldm, save_kl16_safetensors, tiny_kl16_config
from tests.test_encoders import (
    TINY_DIFFUSERS_KL,
    TINY_HF_DINOV2,
    TINY_MAR,
    TINY_RAE_DINOV2,
    TINY_RAE_MAE,
    TINY_VIT14,
)

HEADS = {"encoder_num_heads": 2, "decoder_num_heads": 2}


def images(size: int, count: int = 2) -> torch.Tensor:
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(3)) * 2 - 1


def jitter(module: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return module.eval()


def test_timm_entries_use_pretrained_tags_of_the_installed_timm():
    tagged = set(timm.list_models(pretrained=True))
    entries = [e for e in list_encoders() if dict(e.options).get("model_name")]
    assert {e.family for e in entries} == {"dinov2", "mae", "siglip"} and len(entries) == 14
    for entry in entries:
        model_name = dict(entry.options)["model_name"]
        assert model_name in tagged, model_name
        assert entry.weights == hub_source(model_name)  # timm's own pretrained cfg says where the file is
    with torch.device("meta"):
        dino, reg, mae, siglip2 = (create_encoder(n, weights="random")
                                   for n in ("dinov2-s", "dinov2-s-reg", "mae-b16", "siglip2-b16"))
    assert (dino.num_prefix_tokens, reg.num_prefix_tokens, mae.num_prefix_tokens, siglip2.num_prefix_tokens) == (1, 5, 1, 0)
    assert dino.grid_for(224, 224) == (16, 16) and mae.grid_for(224, 224) == (14, 14)
    assert siglip2.grid_for(256, 256) == (16, 16) and siglip2.poolings == ("map", "mean")
    assert dino.poolings == ("cls", "mean") and dino.default_pooling == "cls" and mae.default_pooling == "cls"
    assert dino.preprocess.mean == IMAGENET_DEFAULT_MEAN and dino.preprocess.std == IMAGENET_DEFAULT_STD
    assert siglip2.preprocess.mean == (0.5,) * 3 and dino.preprocess.image_size == 224


def test_timm_dinov2_with_registers_file(tmp_path):
    torch.manual_seed(0)
    vit = jitter(timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, img_size=56, **TINY_VIT14), 1)
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(tmp_path / "model.safetensors"))
    encoder = create_encoder("dinov2-s-reg", weights=str(tmp_path / "model.safetensors"), config=TINY_VIT14,
                             image_size=56)
    x = images(56)
    with torch.no_grad():
        final = vit.forward_features(x)
        f = encoder(x)
    assert f.prefix.shape[1] == 5 and f.grid == (4, 4)
    torch.testing.assert_close(f.tokens, final[:, 5:])
    torch.testing.assert_close(f.pooled, final[:, 0])


@pytest.mark.parametrize("registers", [False, True])
def test_transformers_dinov2_folder(tmp_path, registers):
    model_cls, config_cls = ((Dinov2WithRegistersModel, Dinov2WithRegistersConfig) if registers
                             else (Dinov2Model, Dinov2Config))
    torch.manual_seed(0)
    model = jitter(model_cls(config_cls(**TINY_HF_DINOV2)), 2)
    model.save_pretrained(tmp_path / "dinov2")
    name = "dinov2-s-reg-hf" if registers else "dinov2-s-hf"
    encoder = create_encoder(name, weights=str(tmp_path / "dinov2"), image_size=56)
    x = images(56)
    with torch.no_grad():
        out = model(pixel_values=x, output_hidden_states=True)
        f, first = encoder(x), encoder(x, layer=0)
    prefix = 5 if registers else 1
    assert encoder.num_prefix_tokens == prefix and f.grid == (4, 4)
    torch.testing.assert_close(f.tokens, out.last_hidden_state[:, prefix:])
    torch.testing.assert_close(f.pooled, out.last_hidden_state[:, 0])
    torch.testing.assert_close(first.tokens, out.hidden_states[1][:, prefix:])
    state = load_file(str(tmp_path / "dinov2" / "model.safetensors"))
    state.pop("encoder.layer.1.mlp.fc2.weight")
    save_file(state, str(tmp_path / "dinov2" / "model.safetensors"))
    with pytest.raises(CheckpointError, match="fc2"):
        create_encoder(name, weights=str(tmp_path / "dinov2"))


TINY_VAVAE_CONFIG = vavae_config(block_out_channels=(4, 4, 8, 8, 16), norm_num_groups=2, sample_size=64)


def test_vavae_ldm_checkpoint(tmp_path):
    torch.manual_seed(0)
    reference = jitter(AutoencoderKL(**TINY_VAVAE_CONFIG), 3)
    ldm = diffusers_to_ldm(reference.state_dict(), 5)
    converted = convert_ldm_vae_checkpoint(ldm, dict(reference.config))  # diffusers' converter reads it back
    shared = [k for k in reference.state_dict() if k in converted]  # (it skips attention inside down blocks)
    assert len(shared) > 0.8 * len(converted) and all(torch.equal(converted[k], reference.state_dict()[k])
                                                       for k in shared)
    extras = {"loss.logvar": torch.zeros(()), "linear_proj.weight": torch.randn(768, 32, 1, 1)}
    torch.save({"state_dict": {**ldm, **extras}, "epoch": 50}, tmp_path / "vavae.pt")
    config = dict(block_out_channels=(4, 4, 8, 8, 16), norm_num_groups=2, sample_size=64)
    encoder = create_encoder("vavae", weights=str(tmp_path / "vavae.pt"), config=config)
    x = images(64)
    with torch.no_grad():
        mean = reference.encode(x).latent_dist.mean
        f = encoder(x)
    assert mean.shape[1] == 32 and f.grid == (4, 4)
    torch.testing.assert_close(f.tokens, mean.flatten(2).transpose(1, 2))
    torch.save({"state_dict": {**ldm, "teacher.head.weight": torch.zeros(2)}}, tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match="teacher"):
        create_encoder("vavae", weights=str(tmp_path / "odd.pt"), config=config)


def test_repae_diffusers_folder(tmp_path):
    torch.manual_seed(0)
    vae = jitter(AutoencoderKL(**TINY_DIFFUSERS_KL), 4)
    vae.save_pretrained(tmp_path / "e2e-vavae-hf")
    encoder = create_encoder("vae-repae-vavae", weights=str(tmp_path / "e2e-vavae-hf"), image_size=32)
    x = images(32)
    with torch.no_grad():
        torch.testing.assert_close(encoder(x).tokens, vae.encode(x).latent_dist.mean.flatten(2).transpose(1, 2))
    assert encoder.weights_digest() != create_encoder("vae-repae-vavae", weights="random",
                                                      config=TINY_DIFFUSERS_KL).weights_digest()


@pytest.mark.parametrize("name, config", [("rae-dinov2-b", TINY_RAE_DINOV2), ("rae-mae-b16", TINY_RAE_MAE)])
def test_rae_folder(tmp_path, name, config):
    torch.manual_seed(0)
    rae = jitter(AutoencoderRAE(**config, latents_mean=[0.1], latents_std=[2.0], scaling_factor=0.5), 5)
    rae.save_pretrained(tmp_path / "rae")
    encoder = create_encoder(name, weights=str(tmp_path / "rae"))
    size = config["encoder_input_size"]
    unit = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1))  # RAE.encode reads [0, 1]
    mean, std = torch.tensor(encoder.preprocess.mean).view(1, 3, 1, 1), torch.tensor(encoder.preprocess.std).view(1, 3, 1, 1)
    with torch.no_grad():
        latent = rae.encode(unit).latent
        f = encoder((unit - mean) / std)
    assert f.grid == latent.shape[-2:] and encoder.num_prefix_tokens == (5 if "dinov2" in name else 1)
    torch.testing.assert_close(f.tokens, latent.flatten(2).transpose(1, 2))


def fake_hub_file(cache, repo_id: str, filename: str, payload_path) -> None:
    """Put a file into the Hugging Face cache layout (refs/main -> snapshots/<commit>/<file>)."""
    commit = "0" * 40
    folder = cache / f"models--{repo_id.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    (folder / "snapshots" / commit).mkdir(parents=True)
    (folder / "snapshots" / commit / filename).write_bytes(payload_path.read_bytes())


def test_reca_harmon_from_its_hub_repo(tmp_path, monkeypatch):
    torch.manual_seed(0)
    mar = MAR(mar_config("mar_base", **TINY_MAR))
    state = {f"mar.{k}": v for k, v in jitter(mar, 6).state_dict().items()}
    state.update({"proj_in.0.weight": torch.randn(48, 32), "proj_in.0.bias": torch.zeros(48),
                  "proj_in.2.weight": torch.randn(48, 48), "proj_in.2.bias": torch.zeros(48),
                  "llm.model.norm.weight": torch.ones(48)})
    torch.save(state, tmp_path / "harmon.pth")
    save_kl16_safetensors(build_kl16(tiny_kl16_config()), tmp_path / "vae.safetensors")
    fake_hub_file(tmp_path / "hub", "sanaka87/Harmon-0.5B-RecA", "harmon_0.5b_reca.pth", tmp_path / "harmon.pth")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    options = dict(vae=str(tmp_path / "vae.safetensors"), image_size=64, config=HEADS)
    reca = create_encoder("harmon-0.5b-reca-mar", **options)
    same = create_encoder("harmon-0.5b-mar", weights=str(tmp_path / "harmon.pth"), **options)
    x = images(64)
    assert reca.name == "harmon-0.5b-reca-mar"
    torch.testing.assert_close(reca(x).tokens, same(x).tokens)


NEW_DEFAULTS = ("dinov2-s", "dinov2-b-reg", "mae-b16", "siglip2-b16", "dinov2-s-hf", "vae-vavae-f16d32",
                "vae-repae-vavae", "rae-dinov2-b", "harmon-1.5b-reca-mar")


def test_offline_defaults_fail_in_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    for name in NEW_DEFAULTS:
        with pytest.raises(CheckpointError) as caught:
            create_encoder(name)
        message = str(caught.value)
        assert "\n" not in message and "huggingface-cli download" in message and "HF_HUB_OFFLINE=1" in message, name


def test_unreachable_hub_fails_fast(monkeypatch, tmp_path):
    """A hub name that cannot resolve (the `.invalid` domain never does) used to cost ~24 s of retries."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "https://hub.invalid")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    checkpoints._reachable.cache_clear()
    start = time.perf_counter()
    for name in ("siglip2-b16", "vae-repae-vavae", "dinov2-s-hf", "vae-kl16"):
        with pytest.raises(CheckpointError, match="hub is unreachable.*huggingface-cli download"):
            create_encoder(name)
    checkpoints._reachable.cache_clear()
    assert time.perf_counter() - start < 8
