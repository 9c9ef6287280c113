"""Encoder adapters: the contract on every registered encoder (tiny, random weights), official-format checkpoints
written here and loaded through `create_encoder`, exactness against independent references, and clear errors."""

from __future__ import annotations

import argparse
from pathlib import Path

import huggingface_hub.constants
import pytest
import timm
import torch
import torch.nn.functional as F
import yaml
from diffusers import AutoencoderKL, VQModel
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
from safetensors.torch import save_file
from torch import nn

from encoders.adapters.vae import sd_vae_config
from encoders.adapters.vqgan import (
    LLAMAGEN_VQ16,
    ldm_names,
    llamagen_model,
    rename_llamagen,
    taming_model,
    taming_params,
)
from encoders.registry import create_encoder, list_encoders
from harmon.checkpoints import CheckpointError
from harmon.mar import MAR, mar_config
from harmon.vae import KL16_SCALE, build_kl16, diffusers_to_ldm, tiny_kl16_config

TINY_KL = tiny_kl16_config()
TINY_SD = dict(block_out_channels=(8, 16), norm_num_groups=4)
TINY_TAMING = {"embed_dim": 8, "n_embed": 32, "ddconfig": {"ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1,
                                                            "attn_resolutions": [16], "resolution": 32,
                                                            "z_channels": 32}}
TINY_LLAMAGEN = dict(ch=32, encoder_ch_mult=[1, 2], decoder_ch_mult=[1, 2], z_channels=32, codebook_size=64,
                     codebook_embed_dim=8, num_res_blocks=1)
TINY_VQ = dict(block_out_channels=(8, 16), norm_num_groups=4, latent_channels=4, num_vq_embeddings=16, vq_embed_dim=4,
               down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
TINY_MAR = dict(img_size=64, encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2, decoder_embed_dim=32,
                decoder_depth=2, decoder_num_heads=2, diffloss_d=2, diffloss_w=32, buffer_size=4, class_num=10)
TINY_VIT = dict(depth=2, embed_dim=32, num_heads=2, img_size=64)
MAR_HEADS = dict(encoder_num_heads=2, decoder_num_heads=2)
TINY_VIT14 = dict(depth=2, embed_dim=32, num_heads=2)
TINY_HF_DINOV2 = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=56,
                      patch_size=14)
TINY_VAVAE = dict(block_out_channels=(4, 4, 8, 8, 16), norm_num_groups=2, sample_size=64)
TINY_DIFFUSERS_KL = dict(block_out_channels=(8, 16), norm_num_groups=4, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
_RAE = dict(encoder_hidden_size=64, encoder_num_hidden_layers=2, decoder_hidden_size=32, decoder_num_hidden_layers=1,
            decoder_num_attention_heads=2, decoder_intermediate_size=64, patch_size=4)
TINY_RAE_DINOV2 = dict(_RAE, encoder_type="dinov2", encoder_patch_size=14, encoder_input_size=56)
TINY_RAE_MAE = dict(_RAE, encoder_type="mae", encoder_patch_size=16, encoder_input_size=64)

# registered name -> (create_encoder options for a tiny random model, input size)
TINY = {
    "pixels": (dict(image_size=32), 32),
    "vae-kl16": (dict(config=TINY_KL), 64),
    "vae-sd-ema": (dict(config=TINY_SD), 32),
    "vae-sd-mse": (dict(config=TINY_SD, feature="last_block"), 32),
    "vqgan-taming-f16-16384": (dict(config=TINY_TAMING), 32),
    "vqgan-llamagen-vq16": (dict(config=TINY_LLAMAGEN, feature="quantized"), 32),
    "vqgan-diffusers": (dict(config=TINY_VQ), 32),
    "mar-b": (dict(config=TINY_MAR, vae_config=TINY_KL), 64),
    "mar-l": (dict(config=TINY_MAR, vae_config=TINY_KL), 64),
    "mar-h": (dict(config=TINY_MAR, vae_config=TINY_KL), 64),
    "harmon-0.5b-mar": (dict(config=TINY_MAR, vae_config=TINY_KL, image_size=64, projected=True), 64),
    "harmon-1.5b-mar": (dict(config=TINY_MAR, vae_config=TINY_KL, image_size=64), 64),
    "siglip-b16": (dict(config=TINY_VIT), 64),
    "siglip-l16": (dict(config=TINY_VIT), 64),
    "timm": (dict(model_name="vit_small_patch16_224.dino", config=TINY_VIT), 64),
    **{f"dinov2-{size}{reg}": (dict(config=TINY_VIT14, image_size=56), 56) for size in "sblg" for reg in ("", "-reg")},
    "mae-b16": (dict(config=TINY_VIT), 64),
    "mae-l16": (dict(config=TINY_VIT), 64),
    "mae-h14": (dict(config={**TINY_VIT, "img_size": 56}), 56),
    "siglip2-b16": (dict(config=TINY_VIT), 64),
    "siglip2-l16": (dict(config=TINY_VIT), 64),
    "siglip2-so400m16": (dict(config=TINY_VIT), 64),
    **{f"dinov2-{size}{reg}-hf": (dict(config=TINY_HF_DINOV2, image_size=56), 56) for size in "sb" for reg in ("", "-reg")},
    "vae-vavae-f16d32": (dict(config=TINY_VAVAE), 64),
    "vae-repae-vavae": (dict(config=TINY_DIFFUSERS_KL), 32),
    "vae-repae-sdvae": (dict(config=TINY_DIFFUSERS_KL, feature="last_block"), 32),
    "vae-repae-invae": (dict(config=TINY_DIFFUSERS_KL), 32),
    "rae-dinov2-b": (dict(config=TINY_RAE_DINOV2), 56),
    "rae-dinov2-s": (dict(config=TINY_RAE_DINOV2), 56),
    "rae-dinov2-l": (dict(config=TINY_RAE_DINOV2), 56),
    "rae-mae-b16": (dict(config=TINY_RAE_MAE), 64),
    "harmon-0.5b-reca-mar": (dict(config=TINY_MAR, vae_config=TINY_KL, image_size=64), 64),
    "harmon-1.5b-reca-mar": (dict(config=TINY_MAR, vae_config=TINY_KL, image_size=64, projected=True), 64),
}
NAMES = [entry.name for entry in list_encoders()]



def tiny(name: str):
    if name not in TINY:
        pytest.fail(f"add a tiny configuration for the registered encoder {name!r} to TINY")
    options, size = TINY[name]
    torch.manual_seed(0)
    encoder = create_encoder(name, weights="random", **options)
    with torch.no_grad():  # random but non-trivial norms, biases and embeddings
        for p in encoder.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return encoder, torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1


def randomised(state: dict[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: v + 0.05 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v for k, v in state.items()}


# ---- the contract, on every registered encoder ----------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_shapes_and_poolings(name):
    encoder, x = tiny(name)
    assert not encoder.training
    h, w = encoder.grid_for(*x.shape[-2:])
    p = encoder.num_prefix_tokens
    for pooling in encoder.poolings:
        f = encoder(x, pooling=pooling)
        b, n, d = f.tokens.shape
        assert (b, n) == (2, h * w) and f.grid == (h, w)
        pooled_dim = n * d if pooling == "flatten" else d
        assert f.prefix.shape == (2, p, d) and f.pooled.shape == (2, pooled_dim) and f.pooling == pooling
    assert encoder(x).pooling == encoder.default_pooling in encoder.poolings
    with pytest.raises(ValueError, match="pooling 'nope' is not available"):
        encoder(x, pooling="nope")


@pytest.mark.parametrize("name", NAMES)
def test_layers_and_determinism(name):
    encoder, x = tiny(name)
    first, last = encoder(x, layer=0), encoder(x, layer=-1)
    assert first.grid == last.grid == encoder(x).grid
    if encoder.num_layers() > 1:
        assert first.tokens.shape != last.tokens.shape or not torch.allclose(first.tokens, last.tokens)
        with pytest.raises(IndexError, match="out of range"):
            encoder(x, layer=encoder.num_layers())
    torch.testing.assert_close(encoder(x).tokens, encoder(x).tokens, rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_pixels(name):
    encoder, x = tiny(name)
    x.requires_grad_(True)
    encoder(x).pooled.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0 and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", NAMES)
def test_cam_layer_and_reshape(name):
    encoder, x = tiny(name)
    captured = []
    handle = encoder.cam_layer().register_forward_hook(lambda module, args, out: captured.append(out))
    f = encoder(x)
    handle.remove()
    activation = captured[-1]
    h, w = f.grid
    maps = encoder.cam_reshape(*x.shape[-2:])(activation)
    assert maps.shape[0] == 2 and maps.shape[2:] == (h, w)
    if activation.ndim == 3:  # token sequences: the prefix is dropped, patch tokens laid out row-major
        p = encoder.num_prefix_tokens
        assert activation.shape[1] == p + h * w and maps.shape[1] == activation.shape[2]
        torch.testing.assert_close(maps[:, :, 1, 0], activation[:, p + w])


@pytest.mark.parametrize("name", NAMES)
def test_weights_digest_and_size_errors(name):
    encoder, x = tiny(name)
    size = x.shape[-1]
    with pytest.raises(ValueError, match=f"{size + 1}x{size + 1}"):
        encoder(torch.zeros(1, 3, size + 1, size + 1))
    before = encoder.weights_digest()
    assert before == encoder.weights_digest()
    params = list(encoder.parameters())
    if params:
        with torch.no_grad():
            params[len(params) // 2].add_(1.0)
        assert encoder.weights_digest() != before
    assert encoder.describe()["name"] == encoder.name


def test_cam_drops_exactly_the_prefix():
    mar, x = tiny("mar-b")
    assert mar.num_prefix_tokens == TINY_MAR["buffer_size"]
    vit, y = tiny("timm")
    assert vit.num_prefix_tokens == 1 and vit.poolings == ("cls", "mean") and vit.default_pooling == "cls"
    for encoder, pixels in ((mar, x), (vit, y)):
        sequence = torch.randn(2, encoder.num_prefix_tokens + 16, 8)
        maps = encoder.cam_reshape(*pixels.shape[-2:])(sequence)
        torch.testing.assert_close(maps.flatten(2).transpose(1, 2), sequence[:, encoder.num_prefix_tokens:])


def test_registry_names_sources_and_features():
    entries = {e.name: e for e in list_encoders()}
    assert entries["siglip-b16"].source == "hf://timm/vit_base_patch16_siglip_256.webli/model.safetensors"
    assert "heibox.uni-heidelberg.de" in entries["vqgan-taming-f16-16384"].source
    assert entries["vqgan-llamagen-vq16"].source.startswith("hf://FoundationVision/LlamaGen/vq_ds16_c2i.pt")
    assert "local path required" in entries["vqgan-diffusers"].source
    aliases = [a for e in entries.values() for a in e.aliases]
    assert {"vae", "kl16", "vqgan", "siglip", "mar"} <= set(aliases) and len(aliases) == len(set(aliases))
    with pytest.raises(ValueError, match="feature='nope'"):
        create_encoder("vae", weights="random", config=TINY_KL, feature="nope")
    with pytest.raises(ValueError, match="not a timm SigLIP model"):
        create_encoder("siglip", weights="random", model_name="vit_small_patch16_224.dino")
    with pytest.raises(CheckpointError, match="no default weights"):
        create_encoder("vqgan-diffusers")


def test_official_architectures_on_meta():
    """The official sizes: tensor / parameter counts of the released files, grids and widths at 256 px."""
    with torch.device("meta"):
        taming = ldm_names(taming_model(taming_params(None, None)))
        llamagen = rename_llamagen(ldm_names(llamagen_model({})), 5, to_ldm=False)
        kl16 = diffusers_to_ldm(build_kl16().state_dict())
        sd = AutoencoderKL(**sd_vae_config())
        siglip_b, siglip_l = (create_encoder(n, weights="random") for n in ("siglip-b16", "siglip-l16"))
        mar = create_encoder("mar-b", weights="random")
    def count(state: dict) -> tuple[int, int]:
        return len(state), sum(v.numel() for v in state.values())

    assert count(taming) == (343, 76_073_859)
    assert count(llamagen) == (343, 71_883_403)  # + quantize.codebook_used in the file
    assert taming["quantize.embedding.weight"].shape == (16384, 256)
    assert llamagen["quantize.embedding.weight"].shape == (16384, 8)
    assert {"encoder.down.4.attn.1.q.weight", "decoder.up.4.attn.2.q.weight", "decoder.up.1.upsample.conv.weight"
            } <= set(taming)
    assert {"encoder.conv_blocks.4.attn.1.q.weight", "decoder.conv_blocks.0.attn.2.q.weight",
            "decoder.conv_blocks.3.upsample.conv.weight", "encoder.mid.1.proj_out.weight"} <= set(llamagen)
    assert not any(k.startswith(("decoder.conv_blocks.4.upsample", "decoder.conv_blocks.1.attn")) for k in llamagen)
    assert count(kl16) == (312, 66_456_019)
    assert sum(p.numel() for p in sd.parameters()) == 83_653_863
    assert sum(p.numel() for p in siglip_b.model.parameters()) == 92_930_304
    assert sum(p.numel() for p in siglip_l.model.parameters()) == 315_956_224
    assert siglip_b.preprocess.image_size == 256 and siglip_b.preprocess.mean == (0.5,) * 3
    assert siglip_b.poolings == ("map", "mean") and siglip_b.default_pooling == "map"
    assert (siglip_b.grid_for(256, 256), siglip_b.num_layers(), siglip_l.num_layers()) == ((16, 16), 12, 24)
    assert (mar.num_prefix_tokens, mar.grid_for(256, 256), mar.num_layers()) == (64, (16, 16), 12)
    with pytest.raises(ValueError, match="takes 256x256 images, got 224x224"):
        siglip_b.grid_for(224, 224)


def test_default_sources_fail_clearly_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HARMON_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    for name in ("siglip-b16", "vqgan", "vqgan-llamagen-vq16", "vae-kl16", "mar-b", "vae-sd-ema"):
        with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE"):
            create_encoder(name)


# ---- official-format tiny checkpoints -------------------------------------------------------------------------------
class RefResnet(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(32, cin, eps=1e-6), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = nn.GroupNorm(32, cout, eps=1e-6), nn.Conv2d(cout, cout, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(F.silu(self.norm2(self.conv1(F.silu(self.norm1(x))))))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class RefAttn(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.norm = nn.GroupNorm(32, c, eps=1e-6)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (layer(y).flatten(2) for layer in (self.q, self.k, self.v))
        weights = torch.softmax(q.transpose(1, 2) @ k * c**-0.5, dim=-1)
        return x + self.proj_out((v @ weights.transpose(1, 2)).reshape(b, c, h, w))


class RefDown(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class RefEncoder(nn.Module):
    """The taming / LlamaGen encoder with its official parameter names (attention only in the last level)."""

    def __init__(self, ch: int, ch_mult: list[int], blocks: int, z_channels: int, llamagen: bool):
        super().__init__()
        self.llamagen = llamagen
        self.conv_in = nn.Conv2d(3, ch, 3, padding=1)
        levels, c = nn.ModuleList(), ch
        for i, mult in enumerate(ch_mult):
            level, last = nn.Module(), i == len(ch_mult) - 1
            res = nn.ModuleList(RefResnet(c if j == 0 else ch * mult, ch * mult) for j in range(blocks))
            c = ch * mult
            setattr(level, "res" if llamagen else "block", res)
            level.attn = nn.ModuleList(RefAttn(c) for _ in range(blocks if last else 0))
            if not last:
                level.downsample = RefDown(c)
            levels.append(level)
        setattr(self, "conv_blocks" if llamagen else "down", levels)
        if llamagen:
            self.mid = nn.ModuleList([RefResnet(c, c), RefAttn(c), RefResnet(c, c)])
        else:
            self.mid = nn.Module()
            self.mid.block_1, self.mid.attn_1, self.mid.block_2 = RefResnet(c, c), RefAttn(c), RefResnet(c, c)
        self.norm_out, self.conv_out = nn.GroupNorm(32, c, eps=1e-6), nn.Conv2d(c, z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(trunk after the mid block, encoder output)."""
        h = self.conv_in(x)
        for level in self.conv_blocks if self.llamagen else self.down:
            for j, block in enumerate(level.res if self.llamagen else level.block):
                h = block(h)
                h = level.attn[j](h) if len(level.attn) else h
            h = level.downsample(h) if hasattr(level, "downsample") else h
        mid = list(self.mid) if self.llamagen else [self.mid.block_1, self.mid.attn_1, self.mid.block_2]
        for block in mid:
            h = block(h)
        return h, self.conv_out(F.silu(self.norm_out(h)))


def load_ref(state: dict[str, torch.Tensor], embed_dim: int, **kwargs) -> tuple[RefEncoder, nn.Conv2d]:
    ref = RefEncoder(**kwargs)
    ref.load_state_dict({k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}, strict=True)
    quant_conv = nn.Conv2d(kwargs["z_channels"], embed_dim, 1)
    quant_conv.load_state_dict({"weight": state["quant_conv.weight"], "bias": state["quant_conv.bias"]})
    return ref, quant_conv


def to_ldm(vae: AutoencoderKL) -> dict[str, torch.Tensor]:
    return diffusers_to_ldm(vae.state_dict(), len(vae.config.block_out_channels))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """One tiny file per official format (and the models they were made from)."""
    root = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(0)
    out: dict = {}
    kl16 = build_kl16(TINY_KL)
    kl16.load_state_dict(randomised(kl16.state_dict()))
    out["kl16_model"], out["kl16"] = kl16.eval(), root / "kl16.ckpt"
    torch.save({"model": to_ldm(kl16)}, out["kl16"])

    sd = AutoencoderKL(**sd_vae_config(**TINY_SD))
    sd.load_state_dict(randomised(sd.state_dict(), 1))
    out["sd_model"], out["sd_ckpt"], out["sd_dir"] = sd.eval(), root / "sd.ckpt", root / "sd-vae"
    torch.save({"state_dict": to_ldm(sd)}, out["sd_ckpt"])
    sd.save_pretrained(out["sd_dir"])

    taming = randomised(ldm_names(taming_model(taming_params(TINY_TAMING, None))), 2)
    (root / "taming" / "ckpts").mkdir(parents=True)
    (root / "taming" / "configs").mkdir()
    out["taming_state"], out["taming"] = taming, root / "taming" / "ckpts" / "last.ckpt"
    torch.save({"state_dict": {**taming, "loss.discriminator.main.0.weight": torch.zeros(2)}, "epoch": 3,
                "global_step": 100}, out["taming"])
    params = {**TINY_TAMING, "lossconfig": {"target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator"}}
    (root / "taming" / "configs" / "model.yaml").write_text(
        yaml.safe_dump({"model": {"base_learning_rate": 4.5e-6, "target": "taming.models.vqgan.VQModel",
                                  "params": params}}))

    llamagen = rename_llamagen(ldm_names(llamagen_model(TINY_LLAMAGEN)), 2, to_ldm=False)
    llamagen = {**randomised(llamagen, 3), "quantize.codebook_used": torch.zeros(65536)}
    out["llamagen_state"], out["llamagen"] = llamagen, root / "vq_ds16_c2i.pt"
    torch.save({"model": llamagen}, out["llamagen"])

    vq = VQModel(**TINY_VQ)
    vq.load_state_dict(randomised(vq.state_dict(), 4))
    out["vq_model"], out["vq_dir"] = vq.eval(), root / "vqmodel"
    vq.save_pretrained(out["vq_dir"])

    mar = MAR(mar_config("mar_base", **TINY_MAR))
    ema = randomised(mar.state_dict(), 5)
    out["mar_ema"], out["mar"] = ema, root / "checkpoint-last.pth"
    args = argparse.Namespace(model="mar_base", img_size=64, vae_embed_dim=16)
    torch.save({"model": mar.state_dict(), "model_ema": ema, "args": args, "epoch": 399}, out["mar"])
    for name, change in (("mar_classes", "class_emb.weight"), ("mar_fake", "fake_latent")):
        changed = {**ema, change: torch.randn_like(ema[change])}
        out[name] = root / f"{name}.pth"
        torch.save({"model": mar.state_dict(), "model_ema": changed, "args": args, "epoch": 399}, out[name])

    vit = timm.create_model("vit_base_patch16_siglip_256", pretrained=False, **TINY_VIT)
    vit.load_state_dict(randomised(vit.state_dict(), 6))
    out["siglip_model"], out["siglip"] = vit.eval(), root / "model.safetensors"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(out["siglip"]))
    out["open_clip"] = root / "open_clip.safetensors"
    save_file({f"visual.trunk.{k}": v.contiguous() for k, v in vit.state_dict().items()}, str(out["open_clip"]))
    return out


def pixels(size: int) -> torch.Tensor:
    return torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(7)) * 2 - 1


def test_kl16_file(files):
    x = pixels(64)
    encoder = create_encoder("vae-kl16", weights=files["kl16"], config=TINY_KL)
    hooked = []
    files["kl16_model"].encoder.mid_block.register_forward_hook(lambda m, a, out: hooked.append(out))
    with torch.no_grad():
        mean = files["kl16_model"].encode(x).latent_dist.mean
        torch.testing.assert_close(encoder(x).tokens, mean.flatten(2).transpose(1, 2))
        trunk = create_encoder("kl16", weights=files["kl16"], config=TINY_KL, feature="last_block")(x)
    torch.testing.assert_close(trunk.tokens, hooked[-1].flatten(2).transpose(1, 2))
    assert encoder.describe()["feature"] == "posterior_mean"


def test_sd_vae_original_and_diffusers_layouts(files):
    sd = files["sd_model"]
    converted = convert_ldm_vae_checkpoint(to_ldm(sd), dict(sd.config))  # diffusers' own converter agrees
    assert converted.keys() == sd.state_dict().keys()
    assert all(torch.equal(converted[k], v) for k, v in sd.state_dict().items())
    with torch.device("meta"):  # ... also on the official 4-level layout
        official = AutoencoderKL(**sd_vae_config())
        converted = convert_ldm_vae_checkpoint(to_ldm(official), dict(official.config))
    assert {k: v.shape for k, v in converted.items()} == {k: v.shape for k, v in official.state_dict().items()}
    x = pixels(32)
    with torch.no_grad():
        mean = sd.encode(x).latent_dist.mean.flatten(2).transpose(1, 2)
        for weights in (files["sd_ckpt"], files["sd_dir"]):
            encoder = create_encoder("vae-sd-mse", weights=weights, config=TINY_SD)
            torch.testing.assert_close(encoder(x).tokens, mean)
    with pytest.raises(CheckpointError, match="holds a diffusers VQModel, not a AutoencoderKL"):
        create_encoder("vae-sd-ema", weights=files["vq_dir"])


def test_taming_file_and_yaml(files):
    x = pixels(32)
    state = files["taming_state"]
    encoder = create_encoder("vqgan", weights=files["taming"])  # configs/model.yaml is found beside ckpts/
    ref, quant_conv = load_ref(state, 8, ch=32, ch_mult=[1, 2], blocks=1, z_channels=32, llamagen=False)
    with torch.no_grad():
        trunk, z = ref(x)
        prequant = quant_conv(z)
        torch.testing.assert_close(encoder(x).tokens, prequant.flatten(2).transpose(1, 2), atol=1e-5, rtol=1e-4)
        last = create_encoder("vqgan", weights=files["taming"], feature="last_block")(x)
        torch.testing.assert_close(last.tokens, trunk.flatten(2).transpose(1, 2), atol=1e-5, rtol=1e-4)
        codes = create_encoder("vqgan", weights=files["taming"], feature="quantized")(x).tokens
    codebook = state["quantize.embedding.weight"]
    flat = prequant.flatten(2).transpose(1, 2)
    torch.testing.assert_close(codes, codebook[torch.cdist(flat, codebook.expand(2, -1, -1)).argmin(-1)])
    explicit = create_encoder("vqgan", weights=files["taming"], config=files["taming"].parents[1] / "configs" /
                              "model.yaml")
    assert explicit.weights_digest() == encoder.weights_digest()
    standalone = files["taming"].parents[2] / "last.ckpt"
    standalone.write_bytes(files["taming"].read_bytes())
    with pytest.raises(CheckpointError, match="wrong shape"):  # no yaml: the official f16-16384 sizes
        create_encoder("vqgan", weights=standalone)


def test_llamagen_file(files):
    x = pixels(32)
    state = files["llamagen_state"]
    ref, quant_conv = load_ref(state, 8, ch=32, ch_mult=[1, 2], blocks=1, z_channels=32, llamagen=True)
    with torch.no_grad():
        prequant = quant_conv(ref(x)[1]).flatten(2).transpose(1, 2)
        encoder = create_encoder("vqgan-llamagen-vq16", weights=files["llamagen"], config=TINY_LLAMAGEN)
        torch.testing.assert_close(encoder(x).tokens, prequant, atol=1e-5, rtol=1e-4)
        codes = create_encoder("vqgan-llamagen-vq16", weights=files["llamagen"], config=TINY_LLAMAGEN,
                               feature="quantized")(x).tokens
    codebook = F.normalize(state["quantize.embedding.weight"], dim=1)
    nearest = torch.cdist(F.normalize(prequant, dim=-1), codebook.expand(2, -1, -1)).argmin(-1)
    torch.testing.assert_close(codes, codebook[nearest])
    assert set(LLAMAGEN_VQ16) >= set(TINY_LLAMAGEN)


def test_diffusers_vqmodel_dir(files):
    vq, x = files["vq_model"], pixels(32)
    encoder = create_encoder("vqgan-diffusers", weights=str(files["vq_dir"]), feature="quantized")
    with torch.no_grad():
        latents = vq.encode(x).latents
        quantized = vq.quantize(latents)[0]
        torch.testing.assert_close(encoder(x).tokens, quantized.flatten(2).transpose(1, 2))
        prequant = create_encoder("vqgan-diffusers", weights=str(files["vq_dir"]))(x).tokens
    torch.testing.assert_close(prequant, latents.flatten(2).transpose(1, 2))
    with pytest.raises(CheckpointError, match="holds a diffusers AutoencoderKL, not a VQModel"):
        create_encoder("vqgan-diffusers", weights=str(files["sd_dir"]))


def mar_encoder(files, weights: str = "mar", **options):
    return create_encoder("mar-b", weights=files[weights], vae=files["kl16"], config=MAR_HEADS,
                          vae_config=TINY_KL, **options)


def test_mar_file_uses_ema_and_fake_latent(files):
    x = pixels(64)
    encoder = mar_encoder(files)
    assert encoder.num_prefix_tokens == 4 and encoder.grid_for(64, 64) == (4, 4)
    reference = MAR(mar_config("mar_base", **TINY_MAR))
    reference.load_state_dict(files["mar_ema"])
    reference.eval()
    with torch.no_grad():
        latents = files["kl16_model"].encode(x).latent_dist.mode() * KL16_SCALE
        tokens = reference.patchify(latents)
        expected = reference.encode_features(tokens, image_shape=(4, 4))
        f = encoder(x)
        torch.testing.assert_close(torch.cat([f.prefix, f.tokens], 1), expected, atol=1e-5, rtol=1e-4)
        first = reference.encode_features(tokens, image_shape=(4, 4), num_blocks=1)
        torch.testing.assert_close(encoder.forward_sequence(x, layer=0), first, atol=1e-5, rtol=1e-4)
        plain = mar_encoder(files, ema=False)(x)
        classes = mar_encoder(files, "mar_classes")
        fake = mar_encoder(files, "mar_fake")(x)
        assert not torch.allclose(plain.tokens, f.tokens)
        torch.testing.assert_close(classes(x).tokens, f.tokens, rtol=0, atol=0)  # no label reaches the features
        assert classes.weights_digest() == encoder.weights_digest()
        assert not torch.allclose(fake.prefix, f.prefix)
    assert not any(k.startswith(("mar.diffloss", "mar.decoder", "mar.class_emb", "vae.decoder"))
                   for k in encoder.state_dict())
    with pytest.raises(ValueError, match="mar-b: a 72x72 image"):
        encoder(torch.zeros(1, 3, 72, 72))


def test_siglip_files(files):
    vit, x = files["siglip_model"], pixels(64)
    for weights in (files["siglip"], files["open_clip"]):
        encoder = create_encoder("siglip", weights=weights, config=TINY_VIT)
        with torch.no_grad():
            final = vit.forward_features(x)
            f = encoder(x)
            torch.testing.assert_close(f.tokens, final)
            torch.testing.assert_close(f.pooled, vit.forward_head(final, pre_logits=True))
    hooked = []
    vit.blocks[0].register_forward_hook(lambda m, a, out: hooked.append(out))
    with torch.no_grad():
        vit.forward_features(x)
        torch.testing.assert_close(encoder(x, layer=0).tokens, hooked[-1], rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="does not fit timm"):
        create_encoder("siglip", weights=files["siglip"], config={**TINY_VIT, "depth": 3})


@pytest.mark.parametrize("name, weights, found", [
    ("vae-kl16", "taming", "taming-transformers VQGAN"),
    ("vae-sd-ema", "llamagen", "LlamaGen VQ tokenizer"),
    ("vqgan", "llamagen", "LlamaGen VQ tokenizer"),
    ("vqgan-llamagen-vq16", "kl16", "LDM KL autoencoder .*16 latent channels"),
    ("mar-b", "kl16", "LDM KL autoencoder"),
    ("siglip", "mar", "MAR checkpoint"),
    ("timm:vit_small_patch16_224.dino", "taming", "taming-transformers VQGAN"),
])
def test_wrong_family_is_named(files, name, weights, found):
    with pytest.raises(CheckpointError, match=found):
        create_encoder(name, weights=files[weights])
